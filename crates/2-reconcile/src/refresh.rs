//! Bringing a baseline up to date from a set of changed inodes, without a
//! walk (the XFS and btrfs fast paths, `crate::fast`).
//!
//! Why it is complete: every change to a directory's entries (create,
//! unlink, rename in or out, link) moves that directory's ctime and, on
//! btrfs, rewrites its inode item; every change to a file or directory
//! itself does the same for its inode. So with `changed` holding every
//! inode changed since the baseline's walk started:
//! - a directory not in `changed` has exactly the entries the baseline
//!   lists, so only directories in `changed` are read again;
//! - an entry not in `changed` still has the baseline's stat;
//! - a name that appears in a re-read directory and is new (or names
//!   another inode) is looked at, and if it is a directory, walked whole
//!   (a new or moved-in subtree: its inodes need not have changed).
//!
//! Directories are re-read in path order, so a parent is settled before its
//! children; a path that a parent's re-read removed is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::ops::Bound;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use crate::entries::Entries;
use crate::pwalk::walk_below;
use crate::runs::Spill;
use crate::snapshot::Snapshot;
use crate::walk::{gone, join, open_beneath, read_entries, stat_root, statx_at};
use crate::walk::{WalkError, WalkProgress};
use cj_types::Stat;

/// Paths whose stat changed: (stat in the baseline, stat now); `None` means
/// absent.
pub type Transitions = BTreeMap<Vec<u8>, (Option<Stat>, Option<Stat>)>;

const S_IFMT: u32 = 0o170000;
/// Size of the changed-inode prefilter in `refresh` (64-bit words).
const INO_FILTER_WORDS: usize = 4096;
const S_IFDIR: u32 = 0o040000;

fn is_dir(s: &Stat) -> bool {
    s.mode & S_IFMT == S_IFDIR
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

/// `[lo, hi)`: the keys strictly below `dir`.
fn below_range(dir: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let base = dir.strip_suffix(b"/").unwrap_or(dir);
    let mut lo = base.to_vec();
    lo.push(b'/');
    let mut hi = base.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

struct Refresher<'a> {
    map: &'a mut Entries,
    root_fd: &'a OwnedFd,
    root: &'a [u8],
    mnt: u64,
    excluded: &'a [Vec<u8>],
    progress: &'a WalkProgress,
    changed: &'a HashSet<u64>,
    changes: Transitions,
}

impl Refresher<'_> {
    fn set(&mut self, path: &[u8], now: Option<Stat>) {
        let was = self.map.get(path);
        if was == now {
            return;
        }
        self.changes.entry(path.to_vec()).or_insert((was, None)).1 = now;
        match now {
            Some(s) => {
                self.map.insert(path.to_vec(), s);
            }
            None => {
                self.map.remove(path);
            }
        }
    }

    /// Removes `path` and everything below it.
    fn remove_subtree(&mut self, path: &[u8]) {
        let (lo, hi) = below_range(path);
        let below: Vec<Vec<u8>> = self
            .map
            .range(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in below {
            self.set(&k, None);
        }
        self.set(path, None);
    }

    /// Settles `parent/name` against the filesystem, seen from `dir` (the
    /// open `parent`).
    fn settle_child(&mut self, dir: RawFd, parent: &[u8], name: &[u8]) -> Result<(), WalkError> {
        let path = join(parent, name);
        if self.excluded.iter().any(|e| crate::walk::below(&path, e)) {
            return Ok(());
        }
        let cname = CString::new(name).map_err(|_| WalkError::Directory {
            path: path.clone(),
            source: einval(),
        })?;
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        let (now, mnt) = match statx_at(dir, &cname, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.remove_subtree(&path);
                return Ok(());
            }
            Err(source) => return Err(WalkError::Directory { path, source }),
        };
        if mnt != self.mnt {
            // Now a mount point: not captured, like the walk.
            self.remove_subtree(&path);
            return Ok(());
        }
        match self.map.get(&path) {
            Some(was) if was.ino == now.ino && (was.mode ^ now.mode) & S_IFMT == 0 => {
                self.set(&path, Some(now));
            }
            was => {
                if was.is_some() {
                    self.remove_subtree(&path);
                }
                self.set(&path, Some(now));
                if is_dir(&now) {
                    self.walk_new(&path, now)?;
                }
            }
        }
        Ok(())
    }

    /// A directory the baseline does not know (new, moved in or replaced):
    /// everything below it is new.
    fn walk_new(&mut self, path: &[u8], now: Stat) -> Result<(), WalkError> {
        let below = walk_below(
            self.root_fd,
            self.root,
            (path, now),
            self.mnt,
            self.excluded,
            self.progress,
            Spill::memory(),
        )?;
        for (k, v) in below.iter() {
            self.set(k, Some(v));
        }
        Ok(())
    }

    /// Reads directory `path` (open as `fd`) again and settles its entries.
    fn reread(&mut self, fd: &OwnedFd, path: &[u8], buf: &mut [u8]) -> Result<(), WalkError> {
        self.progress.directories.fetch_add(1, Ordering::Relaxed);
        let names = match read_entries(fd.as_raw_fd(), buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(source) => {
                return Err(WalkError::Directory {
                    path: path.to_vec(),
                    source,
                })
            }
        };
        let present: HashSet<&[u8]> = names.iter().map(|(n, _)| &n[..]).collect();
        let known: HashMap<Vec<u8>, u64> = self
            .map
            .children(path)
            .into_iter()
            .map(|(name, st)| (name, st.ino))
            .collect();
        for old in known.keys() {
            if !present.contains(&old[..]) {
                self.remove_subtree(&join(path, old));
            }
        }
        for (name, ino) in &names {
            // The same inode under the same name, and not changed itself:
            // the baseline's stat is still right; no need to look.
            if !self.changed.contains(ino) && known.get(name) == Some(ino) {
                continue;
            }
            self.settle_child(fd.as_raw_fd(), path, name)?;
        }
        Ok(())
    }

    fn rel<'p>(&self, path: &'p [u8]) -> &'p [u8] {
        let r = &path[self.root.len().min(path.len())..];
        r.strip_prefix(b"/").unwrap_or(r)
    }

    /// Settles one path named by a changed inode: re-reads it if it is
    /// still the same directory, else settles it from its parent.
    fn settle(
        &mut self,
        root_fd: RawFd,
        path: &[u8],
        was: Stat,
        buf: &mut [u8],
    ) -> Result<(), WalkError> {
        if is_dir(&was) {
            if let Ok(fd) = open_beneath(root_fd, self.rel(path)) {
                if let Ok((now, mnt)) =
                    statx_at(fd.as_raw_fd(), &CString::default(), libc::AT_EMPTY_PATH)
                {
                    if now.ino == was.ino && is_dir(&now) && mnt == self.mnt {
                        self.set(path, Some(now));
                        return self.reread(&fd, path, buf);
                    }
                }
            }
        }
        if path == self.root {
            return Err(WalkError::Root {
                path: path.to_vec(),
                source: std::io::Error::from_raw_os_error(libc::ESTALE),
            });
        }
        let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (parent, name) = (&path[..cut.max(1)], &path[cut + 1..]);
        match open_beneath(root_fd, self.rel(parent)) {
            Ok(pfd) => self.settle_child(pfd.as_raw_fd(), parent, name),
            // The parent is gone or moved: its own (changed) parent has
            // settled it, or it is unreachable now.
            Err(e) if gone(&e) => {
                self.remove_subtree(path);
                Ok(())
            }
            Err(source) => Err(WalkError::Directory {
                path: parent.to_vec(),
                source,
            }),
        }
    }
}

/// The inodes a refresh must look at again when `paths` are all the paths
/// the journal names (created, deleted, renamed from or to, changed)
/// since `snap`'s walk started: each path's inode in the baseline, and the
/// baseline inode of its nearest ancestor the baseline holds (the directory
/// whose entries changed, or the new subtree's nearest known ancestor, whose
/// re-read finds and walks it).
///
/// Why this is enough when that journal range has no gap: every change to
/// an entry or an inode below the root is a record naming its path (design
/// section 4), so a directory none of whose entries is named has the
/// baseline's entries, and an entry not named has the baseline's stat.
pub fn changed_by_paths<'p>(
    snap: &Snapshot,
    paths: impl IntoIterator<Item = &'p [u8]>,
) -> HashSet<u64> {
    let mut out = HashSet::new();
    for path in paths {
        if !crate::walk::below(path, &snap.root) {
            continue;
        }
        if let Some(s) = snap.entries.get(path) {
            out.insert(s.ino);
        }
        let mut p = path;
        while p.len() > snap.root.len() {
            let cut = p.iter().rposition(|&b| b == b'/').unwrap_or(0);
            p = &p[..cut.max(1)];
            if let Some(s) = snap.entries.get(p) {
                out.insert(s.ino);
                break;
            }
        }
    }
    out
}

/// Brings `snap` up to date given every inode changed since its walk
/// started, and returns what changed. `root_fd` is the open root.
pub fn refresh(
    snap: &mut Snapshot,
    root_fd: &OwnedFd,
    excluded: &[Vec<u8>],
    changed: &HashSet<u64>,
    progress: &WalkProgress,
) -> Result<Transitions, WalkError> {
    let root = snap.root.clone();
    let (_, mnt) = stat_root(root_fd, &root)?;
    // Directories first (path order: parents before children), then files.
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    // A bitmap of inode numbers' low bits rejects almost every unchanged
    // entry before the hash lookup (a million entries per refresh).
    let mut maybe = vec![0u64; INO_FILTER_WORDS];
    let bit = |ino: u64| (ino % (INO_FILTER_WORDS as u64 * 64)) as usize;
    for &ino in changed {
        let b = bit(ino);
        maybe[b / 64] |= 1 << (b % 64);
    }
    for (path, st) in snap.entries.iter() {
        let b = bit(st.ino);
        if maybe[b / 64] & (1 << (b % 64)) != 0 && changed.contains(&st.ino) {
            if is_dir(&st) {
                dirs.push((path.to_vec(), st));
            } else {
                files.push((path.to_vec(), st));
            }
        }
    }
    let mut r = Refresher {
        map: &mut snap.entries,
        root_fd,
        root: &root,
        mnt,
        excluded,
        progress,
        changed,
        changes: BTreeMap::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    for (path, was) in dirs.into_iter().chain(files) {
        // Settled already by a parent's re-read (removed or replaced).
        match r.map.get(&path) {
            Some(s) if s.ino == was.ino => {}
            _ => continue,
        }
        r.settle(root_fd.as_raw_fd(), &path, was, &mut buf)?;
    }
    Ok(r.changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn inos(map: &Entries) -> HashSet<u64> {
        map.iter().map(|(_, s)| s.ino).collect()
    }

    /// With every inode marked changed, a refresh must reach exactly what a
    /// fresh walk sees.
    #[test]
    fn refresh_with_everything_changed_equals_a_walk() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b/c")).unwrap();
        std::fs::create_dir_all(r.join("x")).unwrap();
        std::fs::write(r.join("a/b/c/f"), b"1").unwrap();
        std::fs::write(r.join("a/g"), b"1").unwrap();
        std::fs::write(r.join("a b"), b"1").unwrap();
        let root = r.as_os_str().as_bytes().to_vec();
        let p = WalkProgress::default();
        let mut snap = Snapshot::new(root.clone());
        snap.entries = crate::pwalk::walk(&root, &[], &p, Spill::memory()).unwrap();
        let mut changed = inos(&snap.entries);
        // Move a tree, replace a file by a directory, add, remove.
        std::fs::rename(r.join("a/b"), r.join("x/moved")).unwrap();
        std::fs::remove_file(r.join("a/g")).unwrap();
        std::fs::create_dir(r.join("a/g")).unwrap();
        std::fs::write(r.join("a/g/inside"), b"2").unwrap();
        std::fs::write(r.join("a b"), b"22").unwrap();
        std::fs::create_dir_all(r.join("new/deep")).unwrap();
        let fresh = crate::pwalk::walk(&root, &[], &p, Spill::memory())
            .unwrap()
            .to_map();
        changed.extend(fresh.values().map(|s| s.ino));
        let fd = crate::walk::open_root(&root).unwrap();
        let t = refresh(&mut snap, &fd, &[], &changed, &p).unwrap();
        assert_eq!(snap.entries.to_map(), fresh);
        assert!(t.contains_key(&join(&root, b"x/moved/c/f")));
        assert_eq!(t[&join(&root, b"a/b/c/f")].1, None);
    }

    /// Driven by the paths a journal would name (each change's own path,
    /// both sides of a rename, nothing below a moved directory), a refresh
    /// reaches exactly what a fresh walk sees.
    #[test]
    fn refresh_from_named_paths_equals_a_walk() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b/c")).unwrap();
        std::fs::create_dir_all(r.join("x/y")).unwrap();
        std::fs::create_dir_all(r.join("quiet/q")).unwrap();
        std::fs::write(r.join("a/b/c/f"), b"1").unwrap();
        std::fs::write(r.join("a/g"), b"1").unwrap();
        std::fs::write(r.join("x/y/h"), b"1").unwrap();
        std::fs::write(r.join("quiet/q/z"), b"1").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("in/deep")).unwrap();
        std::fs::write(outside.path().join("in/deep/k"), b"1").unwrap();
        let root = r.as_os_str().as_bytes().to_vec();
        let p = WalkProgress::default();
        let mut snap = Snapshot::new(root.clone());
        snap.entries = crate::pwalk::walk(&root, &[], &p, Spill::memory()).unwrap();
        let named: Vec<&[u8]> = vec![
            b"a/b", b"x/moved", b"a/g", b"x/y/h", b"new", b"new/f", b"in",
        ];
        std::fs::rename(r.join("a/b"), r.join("x/moved")).unwrap();
        std::fs::remove_file(r.join("a/g")).unwrap();
        std::fs::create_dir(r.join("a/g")).unwrap();
        std::fs::write(r.join("x/y/h"), b"22").unwrap();
        std::fs::create_dir(r.join("new")).unwrap();
        std::fs::write(r.join("new/f"), b"1").unwrap();
        std::fs::rename(outside.path().join("in"), r.join("in")).unwrap();
        let named: Vec<Vec<u8>> = named.iter().map(|n| join(&root, n)).collect();
        let changed = changed_by_paths(&snap, named.iter().map(|n| &n[..]));
        let quiet = snap.entries.get(&join(&root, b"quiet/q")).unwrap().ino;
        assert!(!changed.contains(&quiet));
        let fd = crate::walk::open_root(&root).unwrap();
        let t = refresh(&mut snap, &fd, &[], &changed, &p).unwrap();
        let fresh = crate::pwalk::walk(&root, &[], &p, Spill::memory())
            .unwrap()
            .to_map();
        assert_eq!(snap.entries.to_map(), fresh);
        assert!(t.contains_key(&join(&root, b"in/deep/k")));
        assert!(!t.contains_key(&join(&root, b"quiet/q/z")));
    }

    /// Only the changed directory is read: an unchanged directory's new
    /// entry (impossible on a real filesystem) stays unseen.
    #[test]
    fn unchanged_directories_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("quiet")).unwrap();
        std::fs::create_dir_all(r.join("busy")).unwrap();
        let root = r.as_os_str().as_bytes().to_vec();
        let p = WalkProgress::default();
        let mut snap = Snapshot::new(root.clone());
        snap.entries = crate::pwalk::walk(&root, &[], &p, Spill::memory()).unwrap();
        std::fs::write(r.join("quiet/f"), b"1").unwrap();
        std::fs::write(r.join("busy/f"), b"1").unwrap();
        let busy = snap.entries.get(&join(&root, b"busy")).unwrap().ino;
        let fd = crate::walk::open_root(&root).unwrap();
        let t = refresh(&mut snap, &fd, &[], &[busy].into_iter().collect(), &p).unwrap();
        assert!(t.contains_key(&join(&root, b"busy/f")));
        assert!(!snap.entries.contains_key(&join(&root, b"quiet/f")));
    }
}
