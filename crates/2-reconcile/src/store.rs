//! Where encoded entries live: in memory, or in a file mapped read-only.
//!
//! A mapped file costs page cache, not the daemon's own memory, and the
//! pages a sequential read has passed are given back ([`Store::release`]):
//! a baseline of ten million entries is read end to end without the
//! daemon's resident size following it (design 11.4).
//!
//! Every file mapped here is one cj wrote and never changes in place: a
//! snapshot file (replaced by rename, never rewritten; the state directory
//! is the daemon's own, mode 0700) or an unnamed spill file (`O_TMPFILE`,
//! which no other process can reach). A mapping of a file that shrank
//! would fault; these files do not shrink.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// A read-only shared mapping of a whole file.
pub(crate) struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and never remapped; `&[u8]` views of it
// are as shareable as any immutable bytes.
unsafe impl Send for Map {}
// SAFETY: as above.
unsafe impl Sync for Map {}

impl Map {
    /// Maps the first `len` bytes of `file` (`len > 0`), read-only.
    fn of(file: &File, len: usize) -> std::io::Result<Map> {
        if len == 0 {
            return Err(std::io::Error::other("cannot map an empty file"));
        }
        // SAFETY: a fresh mapping chosen by the kernel; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap"))?;
        Ok(Map { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `of`; no view outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Encoded entries' bytes.
#[derive(Clone)]
pub(crate) enum Store {
    Owned(Vec<u8>),
    Mapped(Arc<Map>),
}

impl Default for Store {
    fn default() -> Store {
        Store::Owned(Vec::new())
    }
}

/// Bytes a sequential reader passes before it gives them back.
pub(crate) const RELEASE_BYTES: usize = 8 << 20;

impl Store {
    /// The first `len` bytes of `file`: mapped, or read into memory where
    /// the filesystem cannot map it (the bytes are the same either way).
    pub(crate) fn of_file(file: &File, len: usize) -> std::io::Result<Store> {
        if len == 0 {
            return Ok(Store::default());
        }
        match Map::of(file, len) {
            Ok(m) => Ok(Store::Mapped(Arc::new(m))),
            Err(_) => {
                use std::os::unix::fs::FileExt;
                let mut b = vec![0u8; len];
                file.read_exact_at(&mut b, 0)?;
                Ok(Store::Owned(b))
            }
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Store::Owned(b) => b,
            Store::Mapped(m) => m.bytes(),
        }
    }

    /// Says that `[from, to)` will not be read again soon: a mapping's
    /// whole pages in it leave the daemon's resident memory (they stay in
    /// the page cache, and a later read maps them again). Nothing for bytes
    /// in memory. Never changes what the bytes read as.
    pub(crate) fn release(&self, from: usize, to: usize) {
        let Store::Mapped(m) = self else { return };
        let page = page_size();
        let start = from.div_ceil(page) * page;
        let end = (to.min(m.len) / page) * page;
        if end > start {
            // SAFETY: a page-aligned range inside the mapping; DONTNEED on a
            // read-only shared file mapping only drops page-table entries,
            // the next access faults the same file bytes back in.
            unsafe {
                libc::madvise(
                    m.ptr.as_ptr().add(start).cast(),
                    end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

/// The window the kernel maps around a faulting page of a file mapping
/// when those pages are cached (`fault_around_bytes`, 64 KiB by default).
const FAULT_AROUND_BYTES: usize = 64 << 10;

impl Store {
    /// [`Store::release`] of `[from, to)` widened to the fault-around
    /// windows that hold it: after a lookup touched a few entries, every
    /// page the kernel mapped for it leaves again.
    pub(crate) fn release_around(&self, from: usize, to: usize) {
        // The kernel's window is aligned in the address space, the mapping
        // only to a page: one more window on each side covers it.
        let w = FAULT_AROUND_BYTES;
        self.release((from / w).saturating_sub(1) * w, (to.div_ceil(w) + 1) * w);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}
