//! The handle and stat calls normalisation needs, relative to directory fds.
//! Nothing here follows a symlink: names are looked up with
//! `AT_SYMLINK_NOFOLLOW` (statx) or without `AT_SYMLINK_FOLLOW`
//! (name_to_handle_at), and paths are opened with `openat2(RESOLVE_NO_SYMLINKS)`.

use std::ffi::CString;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use cj_types::{FileHandle, ObjectKind, HANDLE_BYTES_MAX};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
struct HandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; HANDLE_BYTES_MAX],
}

/// Opens the object a handle names, as an `O_PATH` descriptor.
pub fn open_by_handle(mount_fd: RawFd, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    if handle.len() > HANDLE_BYTES_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = HandleBuf {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; HANDLE_BYTES_MAX],
    };
    buf.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `buf` has the layout of `struct file_handle` with room for
    // MAX_HANDLE_SZ bytes.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd,
            (&mut buf as *mut HandleBuf).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path of an open descriptor (any length). `None` for an object that
/// has been deleted.
pub use cj_types::sys::fd_path;

/// What `statx` says about a name, without following symlinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: ObjectKind,
    pub nlink: u32,
    pub ino: u64,
    /// Everything reconciliation compares (journaled with the record).
    pub full: cj_types::Stat,
}

pub fn stat_at(dir: RawFd, name: &[u8]) -> io::Result<Option<Stat>> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    stat_at_c(
        dir,
        &cname,
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC,
    )
}

/// Stats the directory descriptor itself.
pub fn stat_fd(fd: RawFd) -> io::Result<Option<Stat>> {
    stat_at_c(fd, c"", libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC)
}

fn stat_at_c(dir: RawFd, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<Option<Stat>> {
    // Asking for ctime also makes the kernel give the next change of this
    // inode a distinct (fine-grained) ctime, so the stat journaled here
    // tells any later change apart.
    let mask = libc::STATX_TYPE
        | libc::STATX_MODE
        | libc::STATX_NLINK
        | libc::STATX_UID
        | libc::STATX_GID
        | libc::STATX_INO
        | libc::STATX_SIZE
        | libc::STATX_MTIME
        | libc::STATX_CTIME;
    let st = match cj_types::sys::statx(dir, name, flags, mask) {
        Ok(st) => st,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ESTALE) => Ok(None),
                _ => Err(e),
            }
        }
    };
    Ok(Some(Stat {
        kind: ObjectKind::from_mode(st.stx_mode as u32),
        nlink: st.stx_nlink,
        ino: st.stx_ino,
        full: cj_types::Stat::from_statx(&st),
    }))
}

/// The handle of the object `name` in `dir` (symlinks not followed).
pub fn handle_at(dir: RawFd, name: &[u8]) -> io::Result<Option<FileHandle>> {
    let cname = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = HandleBuf {
        handle_bytes: HANDLE_BYTES_MAX as u32,
        handle_type: 0,
        f_handle: [0; HANDLE_BYTES_MAX],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` has room for MAX_HANDLE_SZ bytes, as declared in it.
    let rc = unsafe {
        libc::name_to_handle_at(
            dir,
            cname.as_ptr(),
            (&mut buf as *mut HandleBuf).cast(),
            &mut mount_id,
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ESTALE) => Ok(None),
            _ => Err(e),
        };
    }
    let len = (buf.handle_bytes as usize).min(HANDLE_BYTES_MAX);
    Ok(Some(FileHandle {
        handle_type: buf.handle_type,
        bytes: buf.f_handle[..len].to_vec(),
    }))
}

/// Opens an absolute directory path with `openat2`, refusing every symlink
/// on the way (`RESOLVE_NO_SYMLINKS`) and magic links.
pub fn open_dir_nofollow(path: &[u8]) -> io::Result<OwnedFd> {
    open_nofollow(path, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
}

/// Like [`open_dir_nofollow`] but a real (not `O_PATH`) descriptor, as
/// `open_by_handle_at` needs for its mount argument.
pub fn open_dir_for_handles(path: &[u8]) -> io::Result<OwnedFd> {
    open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
}

fn open_nofollow(path: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    cj_types::sys::openat2(
        libc::AT_FDCWD,
        path,
        flags,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Splits an absolute path into (parent, name). `None` for "/".
pub fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let name = &path[slash + 1..];
    if name.is_empty() {
        return None;
    }
    let parent = if slash == 0 {
        &b"/"[..]
    } else {
        &path[..slash]
    };
    Some((parent, name))
}

/// [`stat_path_nofollow`] for many paths: the parent directory of the last
/// path stays open, so paths in byte order cost one directory open per
/// directory instead of one per path. For one answer's paths, looked at
/// within moments of each other (a directory renamed meanwhile is a later
/// change, which the journal reports after the answer).
#[derive(Default)]
pub struct StatNofollow {
    parent: Vec<u8>,
    /// The open parent (`None`: it could not be opened, so nothing below
    /// it is there); only meaningful once `parent` is set.
    fd: Option<Option<OwnedFd>>,
}

impl StatNofollow {
    pub fn stat(&mut self, path: &[u8]) -> io::Result<Option<Stat>> {
        let Some((parent, name)) = split_parent(path) else {
            return stat_path_nofollow(path);
        };
        if self.fd.is_none() || self.parent != parent {
            self.fd = None;
            let fd = match open_dir_nofollow(parent) {
                Ok(fd) => Some(fd),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                    ) =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            self.parent.clear();
            self.parent.extend_from_slice(parent);
            self.fd = Some(fd);
        }
        match self.fd.as_ref().and_then(|f| f.as_ref()) {
            Some(fd) => stat_at(fd.as_raw_fd(), name),
            None => Ok(None),
        }
    }
}

/// Stats an absolute path now, never following a symlink on the way or at
/// the end. `None` if nothing is there.
pub fn stat_path_nofollow(path: &[u8]) -> io::Result<Option<Stat>> {
    match split_parent(path) {
        None => {
            let fd = open_dir_nofollow(b"/")?;
            stat_fd(fd.as_raw_fd())
        }
        Some((parent, name)) => match open_dir_nofollow(parent) {
            Ok(fd) => stat_at(fd.as_raw_fd(), name),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}
