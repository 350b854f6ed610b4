//! The pieces every walk and refresh is made of: symlink-safe directory
//! opens (`openat2` without following any symlink, never leaving the root or
//! its mount, `O_NOATIME`), `getdents64` listings and `statx` relative to a
//! directory descriptor. The walk itself is in `pwalk.rs`.

use std::ffi::CString;
use std::fmt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;

use cj_types::Stat;

/// `getdents64` buffer size.
pub(crate) const DIRENT_BUFFER_BYTES: usize = 64 * 1024;

/// Counters a status request can read while a walk runs.
#[derive(Default, Debug)]
pub struct WalkProgress {
    pub entries: AtomicU64,
    pub directories: AtomicU64,
    /// Set to stop the running walk (its root was untracked): the walk
    /// fails with [`WalkError::Cancelled`] at the next directory.
    pub cancel: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum WalkError {
    /// The root could not be opened (unmounted, removed, a symlink).
    Root {
        path: Vec<u8>,
        source: std::io::Error,
    },
    /// A directory could not be read: its contents cannot be verified.
    Directory {
        path: Vec<u8>,
        source: std::io::Error,
    },
    /// Stopped through [`WalkProgress::cancel`].
    Cancelled,
    /// The walk's sorted runs could not be written to or read from the
    /// state directory (design 11.4).
    Spill {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl From<crate::runs::SpillError> for WalkError {
    fn from(e: crate::runs::SpillError) -> WalkError {
        WalkError::Spill {
            dir: e.dir,
            source: e.source,
        }
    }
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::Root { path, source } => {
                write!(f, "cannot open root {}: {source}", cj_types::log_path(path))
            }
            WalkError::Directory { path, source } => {
                write!(
                    f,
                    "cannot read directory {}: {source}",
                    cj_types::log_path(path)
                )
            }
            WalkError::Spill { dir, source } => write!(
                f,
                "cannot keep the walk's sorted entries in {}: {source} (a walk of a big tree \
                 needs free space there, about 110 bytes per entry)",
                dir.display()
            ),
            WalkError::Cancelled => {
                f.write_str("the walk was interrupted (a scoped catch-up, an untrack or a stop)")
            }
        }
    }
}

impl std::error::Error for WalkError {}

pub(crate) fn statx_at(
    dir: RawFd,
    name: &CString,
    flags: libc::c_int,
) -> std::io::Result<(Stat, u64)> {
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
    let st = cj_types::sys::statx(dir, name, flags | libc::AT_STATX_SYNC_AS_STAT, mask)?;
    Ok((Stat::from_statx(&st), st.stx_mnt_id))
}

/// `openat2` of a directory for reading, with `O_NOATIME` when allowed:
/// reading directories must not change their access times (users see them,
/// and on btrfs each atime update rewrites the inode item, which would make
/// every directory look changed to the next fast reconciliation).
fn open_dir(dir: RawFd, path: &[u8], flags: libc::c_int, resolve: u64) -> std::io::Result<OwnedFd> {
    // Any depth: opened in pieces below PATH_MAX (issue 9, defect 2).
    let attempt = |noatime: libc::c_int| {
        cj_types::sys::openat2(
            dir,
            path,
            libc::O_RDONLY | libc::O_DIRECTORY | flags | noatime,
            resolve,
        )
    };
    match attempt(libc::O_NOATIME) {
        // O_NOATIME needs ownership or CAP_FOWNER (tests as a user).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => attempt(0),
        r => r,
    }
}

/// The stat and mount id of an open root (`path` names it in errors).
pub(crate) fn stat_root(fd: &OwnedFd, path: &[u8]) -> Result<(Stat, u64), WalkError> {
    statx_at(fd.as_raw_fd(), &CString::default(), libc::AT_EMPTY_PATH).map_err(|source| {
        WalkError::Root {
            path: path.to_vec(),
            source,
        }
    })
}

/// Opens a root directory by absolute path without following any symlink.
pub fn open_root(path: &[u8]) -> std::io::Result<OwnedFd> {
    open_dir(
        libc::AT_FDCWD,
        path,
        0,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

const BENEATH: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// Opens `rel` (relative, no leading slash; empty for `dir` itself) below
/// `dir`: no symlink, no magic link, no other mount, never outside `dir`.
pub(crate) fn open_beneath(dir: RawFd, rel: &[u8]) -> std::io::Result<OwnedFd> {
    let rel = if rel.is_empty() { &b"."[..] } else { rel };
    open_dir(dir, rel, libc::O_NOFOLLOW, BENEATH)
}

/// "Not there any more as a directory" (removed, replaced by something
/// else, or now a mount point): the change is someone else's to report.
pub(crate) fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP) | Some(libc::EXDEV)
    )
}

/// Names in a directory (without "." and "..").
pub(crate) fn read_names(dir: RawFd, buf: &mut [u8]) -> std::io::Result<Vec<Vec<u8>>> {
    Ok(read_entries(dir, buf)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Names in a directory (without "." and "..") with their inode numbers
/// (`d_ino`).
pub(crate) fn read_entries(dir: RawFd, buf: &mut [u8]) -> std::io::Result<Vec<(Vec<u8>, u64)>> {
    let mut names = Vec::new();
    loop {
        // SAFETY: the buffer is writable for its length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(names);
        }
        let chunk = &buf[..n as usize];
        let mut off = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while off + 19 <= chunk.len() {
            let reclen = u16::from_ne_bytes([chunk[off + 16], chunk[off + 17]]) as usize;
            if reclen < 19 || off + reclen > chunk.len() {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            let raw = &chunk[off + 19..off + reclen];
            let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
            if name != b"." && name != b".." && !name.is_empty() {
                let mut ino = [0u8; 8];
                ino.copy_from_slice(&chunk[off..off + 8]);
                names.push((name.to_vec(), u64::from_ne_bytes(ino)));
            }
            off += reclen;
        }
    }
}

pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

pub(crate) use cj_types::path::is_at_or_below as below;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Spill;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn wide_directories_do_not_hold_a_descriptor_each() {
        const WIDE: usize = 4196;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().as_os_str().as_bytes().to_vec();
        for i in 0..WIDE {
            std::fs::create_dir(d.path().join(format!("d{i}"))).unwrap();
        }
        let got =
            crate::pwalk::walk(&root, &[], &WalkProgress::default(), Spill::memory()).unwrap();
        assert_eq!(got.len(), WIDE + 1);
    }

    #[test]
    fn walks_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), b"x").unwrap();
        std::fs::write(r.join("a/new\nline"), b"x").unwrap();
        std::os::unix::fs::symlink("/", r.join("a/to_root")).unwrap();
        std::fs::create_dir(r.join("skip")).unwrap();
        std::fs::write(r.join("skip/x"), b"x").unwrap();
        let root = r.as_os_str().as_bytes().to_vec();
        let excluded = vec![join(&root, b"skip")];
        let p = WalkProgress::default();
        let got = crate::pwalk::walk(&root, &excluded, &p, Spill::memory())
            .unwrap()
            .to_map();
        let mut names: Vec<Vec<u8>> = got.keys().map(|k| k[root.len()..].to_vec()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                b"".to_vec(),
                b"/a".to_vec(),
                b"/a/b".to_vec(),
                b"/a/b/f".to_vec(),
                b"/a/new\nline".to_vec(),
                b"/a/to_root".to_vec()
            ]
        );
        assert_eq!(got[&join(&root, b"a/to_root")].mode & 0o170000, 0o120000);
    }

    #[test]
    fn walks_leave_directory_access_times_alone() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("f"), b"x").unwrap();
        // An access time long before the modification time: any read of
        // the directory would move it (relatime).
        let c = CString::new(sub.as_os_str().as_bytes()).unwrap();
        let times = [
            libc::timespec {
                tv_sec: 1000,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        // SAFETY: valid path and times.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
            0
        );
        let root = d.path().as_os_str().as_bytes().to_vec();
        crate::pwalk::walk(&root, &[], &WalkProgress::default(), Spill::memory()).unwrap();
        assert_eq!(std::fs::metadata(&sub).unwrap().atime(), 1000);
    }
}
