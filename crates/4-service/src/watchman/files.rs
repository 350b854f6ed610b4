//! What a Watchman query reports about one file, read now: `statx` below
//! a directory opened without following any symlink, the target of a
//! symlink, and a content hash computed on demand and cached.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use cj_normalize::sys as nsys;

/// Content hashes kept (by device, inode, ctime and size); the cache is
/// emptied when it is full.
pub const SHA1_CACHE_MAX: usize = 100_000;
/// Files larger than this get an error instead of a hash (reading them
/// would hold a client's answer for too long).
pub const SHA1_FILE_BYTES_MAX: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Info {
    pub fn kind(&self) -> u8 {
        kind_of(self.mode)
    }
}

pub fn kind_of(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => b'f',
        libc::S_IFDIR => b'd',
        libc::S_IFLNK => b'l',
        libc::S_IFBLK => b'b',
        libc::S_IFCHR => b'c',
        libc::S_IFIFO => b'p',
        libc::S_IFSOCK => b's',
        _ => b'?',
    }
}

fn ns(t: libc::statx_timestamp) -> i64 {
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.tv_nsec))
}

fn info_of(st: &libc::statx) -> Info {
    Info {
        mode: u32::from(st.stx_mode),
        uid: st.stx_uid,
        gid: st.stx_gid,
        ino: st.stx_ino,
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        nlink: st.stx_nlink,
        size: st.stx_size,
        mtime_ns: ns(st.stx_mtime),
        ctime_ns: ns(st.stx_ctime),
    }
}

/// The file at absolute `path` now, without following a symlink anywhere
/// on the way; `None` if it is not there.
pub fn stat(path: &[u8]) -> Option<Info> {
    let (parent, name) = nsys::split_parent(path)?;
    let dir = nsys::open_dir_nofollow(parent).ok()?;
    let name = CString::new(name).ok()?;
    let st = cj_types::sys::statx(
        dir.as_raw_fd(),
        &name,
        libc::AT_SYMLINK_NOFOLLOW,
        libc::STATX_BASIC_STATS,
    )
    .ok()?;
    Some(info_of(&st))
}

/// The target of the symlink at `path` (never followed).
pub fn symlink_target(path: &[u8]) -> Option<Vec<u8>> {
    let (parent, name) = nsys::split_parent(path)?;
    let dir = nsys::open_dir_nofollow(parent).ok()?;
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a valid descriptor, C string and buffer of that length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// True if a directory has no entries.
pub fn dir_is_empty(path: &[u8]) -> bool {
    let Ok(fd) = cj_types::sys::openat2(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    ) else {
        return false;
    };
    // SAFETY: fdopendir takes ownership of a valid directory descriptor.
    let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dir.is_null() {
        return false;
    }
    std::mem::forget(fd);
    let mut empty = true;
    loop {
        // SAFETY: a valid DIR stream.
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            empty = false;
            break;
        }
    }
    // SAFETY: closes the stream (and its descriptor) once.
    unsafe { libc::closedir(dir) };
    empty
}

/// May user `uid` (in groups `gids`) read a file with this owner and mode?
/// (The daemon reads as root; it hashes only what the asker could read.)
pub fn may_read(info: &Info, uid: u32, gids: &[u32]) -> bool {
    uid == 0
        || (info.uid == uid && info.mode & 0o400 != 0)
        || (info.uid != uid && gids.contains(&info.gid) && info.mode & 0o040 != 0)
        || (info.uid != uid && !gids.contains(&info.gid) && info.mode & 0o004 != 0)
}

type Key = (u64, u64, i64, u64);

/// SHA-1 of file contents by (device, inode, ctime, size).
#[derive(Default)]
pub struct Sha1Cache {
    map: Mutex<HashMap<Key, [u8; 20]>>,
}

impl Sha1Cache {
    /// The hex SHA-1 of the regular file at `path` whose stat is `info`,
    /// or why there is none.
    pub fn hex(&self, path: &[u8], info: &Info) -> Result<String, String> {
        if info.kind() != b'f' {
            return Err("not a regular file".into());
        }
        if info.size > SHA1_FILE_BYTES_MAX {
            return Err(format!("larger than {SHA1_FILE_BYTES_MAX} bytes"));
        }
        let key = (info.dev, info.ino, info.ctime_ns, info.size);
        let cached = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let sum = match cached {
            Some(s) => s,
            None => {
                let s = sha1_of(path)?;
                let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= SHA1_CACHE_MAX {
                    m.clear();
                }
                m.insert(key, s);
                s
            }
        };
        Ok(sum.iter().map(|b| format!("{b:02x}")).collect())
    }
}

fn sha1_of(path: &[u8]) -> Result<[u8; 20], String> {
    use sha1::Digest;
    let fd = cj_types::sys::openat2(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| e.to_string())?;
    let mut f = std::fs::File::from(fd);
    let mut h = sha1::Sha1::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn stat_symlink_and_hash() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        let fb = f.as_os_str().as_bytes();
        let i = stat(fb).unwrap();
        assert_eq!((i.kind(), i.size), (b'f', 3));
        let l = d.path().join("l");
        let lb = l.as_os_str().as_bytes();
        assert_eq!(stat(lb).unwrap().kind(), b'l');
        assert_eq!(symlink_target(lb).unwrap(), b"f");
        let c = Sha1Cache::default();
        assert_eq!(
            c.hex(fb, &i).unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert!(c.hex(lb, &stat(lb).unwrap()).is_err());
        assert!(!dir_is_empty(d.path().as_os_str().as_bytes()));
        std::fs::create_dir(d.path().join("e")).unwrap();
        assert!(dir_is_empty(d.path().join("e").as_os_str().as_bytes()));
        assert!(stat(d.path().join("nope").as_os_str().as_bytes()).is_none());
    }

    #[test]
    fn reading_is_checked_for_the_asker() {
        let i = Info {
            uid: 1000,
            gid: 100,
            mode: 0o100640,
            ..Info::default()
        };
        assert!(may_read(&i, 1000, &[]));
        assert!(may_read(&i, 1001, &[100]));
        assert!(!may_read(&i, 1001, &[5]));
        assert!(may_read(&i, 0, &[]));
    }
}
