//! Snapshot differ for the oracle: records every path under a directory with
//! inode, type, size, mode, uid/gid, mtime, ctime, xattrs and a content hash
//! (the target for symlinks), without following symlinks.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    /// Inode generation (`FS_IOC_GETVERSION`) where the filesystem has one.
    pub generation: u64,
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub content: u64,
}

pub type Snapshot = BTreeMap<PathBuf, Entry>;

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `_IOR('v', 1, long)`.
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;

fn generation(path: &Path, is_file_or_dir: bool) -> u64 {
    use std::os::unix::io::AsRawFd;
    if !is_file_or_dir {
        return 0;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return 0;
    };
    let mut v: libc::c_long = 0;
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETVERSION, &mut v) } != 0 {
        return 0;
    }
    v as u64
}

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        val.truncate(m.max(0) as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    out
}

pub fn take(root: &Path) -> Snapshot {
    let mut snap = Snapshot::new();
    walk(root, &mut snap);
    snap
}

fn walk(path: &Path, snap: &mut Snapshot) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let ft = meta.file_type();
    let content = if ft.is_file() {
        std::fs::read(path).map(|b| fnv(&b)).unwrap_or(0)
    } else if ft.is_symlink() {
        std::fs::read_link(path)
            .map(|t| fnv(t.as_os_str().as_bytes()))
            .unwrap_or(0)
    } else {
        0
    };
    snap.insert(
        path.to_path_buf(),
        Entry {
            ino: meta.ino(),
            generation: generation(path, ft.is_file() || ft.is_dir()),
            mode: meta.mode(),
            size: if ft.is_dir() { 0 } else { meta.size() },
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            xattrs: xattrs(path),
            content,
        },
    );
    if ft.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            let mut children: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            children.sort();
            for c in children {
                walk(&c, snap);
            }
        }
    }
}

/// Every path created, deleted or changed in any recorded field.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => out.push(p.clone()),
            Some(a) if a != e => out.push(p.clone()),
            _ => {}
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            out.push(p.clone());
        }
    }
    out.sort();
    out
}
