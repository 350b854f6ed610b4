//! System calls every stage shares: path calls that work at any depth
//! (issue 9, defects 1 and 2) and the wall clock.
//!
//! The kernel refuses a path argument of `PATH_MAX` (4096) bytes or more
//! (`ENAMETOOLONG`), and `readlink(/proc/self/fd/N)` fails the same way for a
//! descriptor whose path is that long. A user who can write in a tracked tree
//! can nest directories past it, so every path cj opens is opened in pieces
//! shorter than the limit, each relative to the descriptor of the previous
//! one, with the caller's `RESOLVE_*` flags on every piece (no symlink is
//! followed anywhere); and a descriptor's path is found by climbing `..`
//! when the kernel cannot print it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pieces of a path opened with one `openat2` are at most this long: well
/// below `PATH_MAX`, and above `NAME_MAX`, so every piece holds a name.
const PATH_PIECE_BYTES_MAX: usize = 2048;
const _: () = assert!(PATH_PIECE_BYTES_MAX < libc::PATH_MAX as usize);
const _: () = assert!(PATH_PIECE_BYTES_MAX > 2 * 256);
/// Ancestors climbed to name one descriptor: a path of `PATH_BYTES_MAX`
/// bytes has at most half as many components.
const ANCESTORS_CLIMBED_MAX: usize = crate::PATH_BYTES_MAX / 2;

/// Wall-clock time, ns since the Unix epoch (0 if the clock is before it).
/// The one wall clock of cj: record times, gap starts, marks.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The filesystems cj names, by `statfs` magic: the one table of cj.
pub mod fs_magic {
    pub const EXT4: u64 = 0xef53;
    pub const XFS: u64 = 0x5846_5342;
    pub const BTRFS: u64 = 0x9123_683e;
    pub const TMPFS: u64 = 0x0102_1994;
    pub const OVERLAYFS: u64 = 0x794c_7630;
    pub const FUSE: u64 = 0x6573_5546;
    pub const NFS: u64 = 0x6969;

    /// A name for people (`cj status`, errors).
    pub fn name(magic: u64) -> String {
        match magic {
            EXT4 => "ext4".into(),
            XFS => "xfs".into(),
            BTRFS => "btrfs".into(),
            TMPFS => "tmpfs".into(),
            OVERLAYFS => "overlayfs".into(),
            FUSE => "FUSE".into(),
            NFS => "NFS".into(),
            other => format!("type {other:#x}"),
        }
    }
}

/// `statx(dir, name, flags, mask)`: the one statx wrapper of cj. Callers
/// pass `AT_SYMLINK_NOFOLLOW` (or `AT_EMPTY_PATH` with an empty name): no
/// caller of cj follows a symlink here.
pub fn statx(
    dir: RawFd,
    name: &std::ffi::CStr,
    flags: libc::c_int,
    mask: libc::c_uint,
) -> io::Result<libc::statx> {
    // SAFETY: statx is plain old data; the call fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor (or AT_FDCWD), C string and output buffer.
    if unsafe { libc::statx(dir, name.as_ptr(), flags, mask, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The `statfs` magic of the filesystem holding `fd`.
pub fn fs_magic_of(fd: RawFd) -> io::Result<u64> {
    // SAFETY: statfs is plain old data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and output pointer.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64)
}

fn one_openat2(dir: RawFd, path: &[u8], flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain old data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: a valid descriptor (or AT_FDCWD), C string and open_how of the
    // size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// `openat2(dir, path, flags, resolve)` for a path of any length. `path`
/// may be absolute (then `dir` is ignored, as by the kernel). Pieces before
/// the last are opened `O_PATH | O_DIRECTORY` with the same `resolve` flags,
/// so `RESOLVE_BENEATH` and `RESOLVE_NO_SYMLINKS` hold for the whole path.
pub fn openat2(dir: RawFd, path: &[u8], flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    if path.len() < PATH_PIECE_BYTES_MAX {
        return one_openat2(dir, path, flags, resolve);
    }
    let pieces = split_pieces(path)?;
    let mut held: Option<OwnedFd> = None;
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let at = held.as_ref().map_or(dir, |fd| fd.as_raw_fd());
        let f = if i == last {
            flags
        } else {
            libc::O_PATH | libc::O_DIRECTORY
        };
        held = Some(one_openat2(at, piece, f, resolve)?);
    }
    held.ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Splits `path` at slashes into pieces shorter than `PATH_PIECE_BYTES_MAX`.
/// The first piece keeps a leading `/`.
fn split_pieces(path: &[u8]) -> io::Result<Vec<&[u8]>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < path.len() {
        let rest = &path[start..];
        if rest.len() < PATH_PIECE_BYTES_MAX {
            pieces.push(rest);
            break;
        }
        // The last slash that leaves the piece short enough (not the very
        // first byte, which is the root of an absolute path).
        let window = &rest[..PATH_PIECE_BYTES_MAX];
        let cut = window
            .iter()
            .rposition(|&b| b == b'/')
            .filter(|&c| c > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        pieces.push(&rest[..cut]);
        start += cut + 1;
        while path.get(start) == Some(&b'/') {
            start += 1;
        }
    }
    if pieces.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(pieces)
}

/// The absolute path of an open descriptor. `None` for an object that has
/// been deleted or is not reachable from this process's root. Paths the
/// kernel cannot print (`ENAMETOOLONG`) are found by climbing `..` to the
/// nearest ancestor it can print.
pub fn fd_path(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    match readlink_fd(fd) {
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => climb(fd),
        r => r,
    }
}

fn readlink_fd(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    let link = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 64];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::readlink(link.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    if buf.ends_with(b" (deleted)") || !buf.starts_with(b"/") {
        return Ok(None);
    }
    Ok(Some(buf))
}

fn dev_ino(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: plain old data filled by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and output buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_dev, st.st_ino))
}

/// Names a directory descriptor by climbing: the name of each directory is
/// found in its parent's listing (by inode, checked with `fstatat` without
/// following symlinks), until an ancestor's path can be printed.
fn climb(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut child: OwnedFd = one_openat2(fd, b".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
    for _ in 0..ANCESTORS_CLIMBED_MAX {
        let parent = one_openat2(
            child.as_raw_fd(),
            b"..",
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let (dev, ino) = dev_ino(child.as_raw_fd())?;
        if dev_ino(parent.as_raw_fd())? == (dev, ino) {
            return Ok(None); // the root: it would have printed
        }
        let Some(name) = name_in(&parent, dev, ino)? else {
            return Ok(None); // moved or removed meanwhile
        };
        names.push(name);
        match readlink_fd(parent.as_raw_fd()) {
            Ok(Some(mut path)) => {
                for name in names.iter().rev() {
                    if path.last() != Some(&b'/') {
                        path.push(b'/');
                    }
                    path.extend_from_slice(name);
                }
                return Ok(Some(path));
            }
            Ok(None) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => child = parent,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

/// The name under which `(dev, ino)` appears in the directory `dir`.
fn name_in(dir: &OwnedFd, dev: u64, ino: u64) -> io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    // Listing through a fresh descriptor of our own: read_dir of the magic
    // link re-opens the same directory object.
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    for entry in listing {
        let entry = entry?;
        use std::os::unix::fs::DirEntryExt;
        if entry.ino() != ino {
            continue;
        }
        let name = entry.file_name();
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: plain old data filled by the call.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and output buffer.
        let rc = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 && st.st_dev == dev && st.st_ino == ino {
            return Ok(Some(name.as_bytes().to_vec()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds `depth` nested directories with 200-byte names below `base`,
    /// using directory descriptors (the path is longer than PATH_MAX).
    fn deep(base: &std::path::Path, depth: usize) -> (Vec<u8>, OwnedFd) {
        use std::os::unix::ffi::OsStrExt;
        let name = vec![b'd'; 200];
        let mut path = base.as_os_str().as_bytes().to_vec();
        let mut fd =
            one_openat2(libc::AT_FDCWD, &path, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let c = CString::new(name.clone()).unwrap();
        for _ in 0..depth {
            // SAFETY: valid descriptor and C string.
            assert_eq!(
                unsafe { libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o755) },
                0
            );
            fd = one_openat2(fd.as_raw_fd(), &name, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
            path.push(b'/');
            path.extend_from_slice(&name);
        }
        (path, fd)
    }

    #[test]
    fn paths_longer_than_path_max_open_and_print() {
        let dir = tempfile::tempdir().unwrap();
        let (path, fd) = deep(dir.path(), 45);
        assert!(path.len() > 2 * libc::PATH_MAX as usize);
        // The kernel alone cannot do either.
        assert_eq!(
            readlink_fd(fd.as_raw_fd()).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        assert_eq!(fd_path(fd.as_raw_fd()).unwrap(), Some(path.clone()));
        let opened = openat2(
            libc::AT_FDCWD,
            &path,
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .unwrap();
        assert_eq!(
            dev_ino(opened.as_raw_fd()).unwrap(),
            dev_ino(fd.as_raw_fd()).unwrap()
        );
    }

    #[test]
    fn a_symlink_deep_in_a_long_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, fd) = deep(dir.path(), 12);
        let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid descriptor and C strings.
        assert_eq!(
            unsafe { libc::symlinkat(target.as_ptr(), fd.as_raw_fd(), c"link".as_ptr()) },
            0
        );
        let mut via = path.clone();
        via.extend_from_slice(b"/link");
        let err = openat2(
            libc::AT_FDCWD,
            &via,
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS,
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn pieces_split_at_slashes_and_rejoin() {
        let name = "n".repeat(255);
        let path = format!("/{}", vec![name.as_str(); 40].join("/"));
        let pieces = split_pieces(path.as_bytes()).unwrap();
        assert!(pieces.iter().all(|p| p.len() < PATH_PIECE_BYTES_MAX));
        let joined: Vec<u8> = pieces.join(&b'/');
        assert_eq!(joined, path.as_bytes());
        assert!(split_pieces(&vec![b'x'; PATH_PIECE_BYTES_MAX + 1]).is_err());
    }
}
