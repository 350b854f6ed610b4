//! The parallel tree walk used for whole-root reconciliation.
//!
//! Workers take directories from a shared stack, open each one below the
//! root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` (so no symlink is ever followed
//! and no other mount entered, even if the tree changes under the walk),
//! read it with `getdents64` and `statx` every entry relative to it. Only
//! paths wait on the stack, never descriptors: each worker holds one
//! directory open at a time. Several directories in flight keep the disk
//! busy on a cold cache and both cores busy on a warm one.

use std::ffi::CString;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};

use crate::entries::Entries;
use crate::runs::{Run, Runs, Spill};
use crate::walk::{
    below, gone, join, open_beneath, open_root, read_names, stat_root, statx_at,
    DIRENT_BUFFER_BYTES,
};
use crate::walk::{WalkError, WalkProgress};
use cj_types::Stat;

/// Worker threads of one walk.
pub const WALK_THREADS: usize = 4;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;

struct Work {
    /// Directories still to read.
    stack: Vec<Vec<u8>>,
    /// Workers reading a directory right now (they may add more).
    active: usize,
    failed: Option<WalkError>,
}

struct Shared<'a> {
    work: Mutex<Work>,
    cv: Condvar,
    root: &'a [u8],
    root_fd: &'a OwnedFd,
    mnt: u64,
    excluded: &'a [Vec<u8>],
    progress: &'a WalkProgress,
}

impl Shared<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rel<'p>(&self, path: &'p [u8]) -> &'p [u8] {
        let r = &path[self.root.len().min(path.len())..];
        r.strip_prefix(b"/").unwrap_or(r)
    }

    /// Reads directory `dir`: its entries go to `out` (handed to `runs`
    /// whenever it is full, even within a directory of millions), its
    /// subdirectories to `subdirs`.
    fn read(
        &self,
        dir: &[u8],
        buf: &mut [u8],
        (out, runs): (&mut Run, &Runs<'_>),
        subdirs: &mut Vec<Vec<u8>>,
    ) -> Result<(), WalkError> {
        #[cfg(test)]
        if dir.ends_with(b"/inject-a-panic") {
            panic!("injected panic in a walk worker");
        }
        let fd = match open_beneath(self.root_fd.as_raw_fd(), self.rel(dir)) {
            Ok(fd) => fd,
            // Gone, replaced by a non-directory or a mount point since it
            // was listed: the live capture has the change.
            Err(e) if gone(&e) => return Ok(()),
            Err(source) => {
                return Err(WalkError::Directory {
                    path: dir.to_vec(),
                    source,
                })
            }
        };
        self.progress.directories.fetch_add(1, Ordering::Relaxed);
        let names = match read_names(fd.as_raw_fd(), buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(source) => {
                return Err(WalkError::Directory {
                    path: dir.to_vec(),
                    source,
                })
            }
        };
        for name in names {
            let child = join(dir, &name);
            if self.excluded.iter().any(|e| below(&child, e)) {
                continue;
            }
            let Ok(cname) = CString::new(name) else {
                continue;
            };
            let (stat, mnt) = match statx_at(fd.as_raw_fd(), &cname, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(source) => {
                    return Err(WalkError::Directory {
                        path: child,
                        source,
                    })
                }
            };
            self.progress.entries.fetch_add(1, Ordering::Relaxed);
            if mnt != self.mnt {
                continue; // another mount: not captured, not walked
            }
            out.push(&child, &stat);
            if runs.is_full(out) {
                runs.add(std::mem::take(out))?;
            }
            if stat.mode & S_IFMT == S_IFDIR {
                subdirs.push(child);
            }
        }
        Ok(())
    }

    /// Reads directories until there are none left; each full run of
    /// entries goes to `runs`, the last one is returned.
    fn worker(&self, runs: &Runs<'_>) -> Run {
        let mut out = Run::default();
        let mut buf = vec![0u8; DIRENT_BUFFER_BYTES];
        let mut subdirs = Vec::new();
        loop {
            let dir = {
                let mut w = self.lock();
                loop {
                    if w.failed.is_none() && self.progress.cancel.load(Ordering::Relaxed) {
                        w.failed = Some(WalkError::Cancelled);
                        self.cv.notify_all();
                    }
                    if w.failed.is_some() {
                        return out;
                    }
                    if let Some(d) = w.stack.pop() {
                        w.active += 1;
                        break d;
                    }
                    if w.active == 0 {
                        return out;
                    }
                    w = self.cv.wait(w).unwrap_or_else(|e| e.into_inner());
                }
            };
            // If `read` panics (a bug), the guard still gives the directory
            // back as failed, so the other workers stop instead of waiting
            // for `active` to reach zero forever.
            let guard = Active { shared: self };
            let r = self.read(&dir, &mut buf, (&mut out, runs), &mut subdirs);
            std::mem::forget(guard);
            let mut w = self.lock();
            w.active -= 1;
            match r {
                Ok(()) => w.stack.append(&mut subdirs),
                Err(e) => {
                    w.failed.get_or_insert(e);
                }
            }
            self.cv.notify_all();
        }
    }
}

/// Held while a worker reads a directory; dropped only by a panic.
struct Active<'s, 'a> {
    shared: &'s Shared<'a>,
}

impl Drop for Active<'_, '_> {
    fn drop(&mut self) {
        let mut w = self.shared.lock();
        w.active -= 1;
        w.failed.get_or_insert(WalkError::Directory {
            path: Vec::new(),
            source: std::io::Error::other("a walk worker panicked (a bug in cj)"),
        });
        self.shared.cv.notify_all();
    }
}

/// Walks `root` with [`WALK_THREADS`] workers and returns every path below
/// it (and the root) with its stat. Paths at or below an `excluded` prefix
/// are left out; entries that vanish during the walk are skipped (the live
/// capture sees their removal).
pub fn walk(
    root: &[u8],
    excluded: &[Vec<u8>],
    progress: &WalkProgress,
    spill: Spill<'_>,
) -> Result<Entries, WalkError> {
    let root_fd = open_root(root).map_err(|source| WalkError::Root {
        path: root.to_vec(),
        source,
    })?;
    let (root_stat, mnt) = stat_root(&root_fd, root)?;
    walk_below(
        &root_fd,
        root,
        (root, root_stat),
        mnt,
        excluded,
        progress,
        spill,
    )
}

/// [`walk`] of the subtree `scope` of `root` only (scoped catch-up,
/// design 11.8): `scope` and every path below it, with their stats.
/// `scope` is opened below `root` without following a symlink or crossing
/// into another mount; it must be a directory and not excluded.
pub fn walk_scope(
    root: &[u8],
    scope: &[u8],
    excluded: &[Vec<u8>],
    progress: &WalkProgress,
    spill: Spill<'_>,
) -> Result<Entries, WalkError> {
    let failed = |source: std::io::Error| WalkError::Root {
        path: scope.to_vec(),
        source,
    };
    if !below(scope, root) {
        return Err(failed(std::io::Error::other("not below the root")));
    }
    let rel = &scope[root.len()..];
    let rel = rel.strip_prefix(b"/").unwrap_or(rel);
    if excluded.iter().any(|x| below(scope, x)) {
        return Err(failed(std::io::Error::other("excluded from capture")));
    }
    let root_fd = open_root(root).map_err(|source| WalkError::Root {
        path: root.to_vec(),
        source,
    })?;
    let (_, mnt) = stat_root(&root_fd, root)?;
    let scope_fd = open_beneath(root_fd.as_raw_fd(), rel).map_err(failed)?;
    let (scope_stat, scope_mnt) = stat_root(&scope_fd, scope)?;
    if scope_mnt != mnt {
        return Err(failed(std::io::Error::from_raw_os_error(libc::EXDEV)));
    }
    walk_below(
        &root_fd,
        root,
        (scope, scope_stat),
        mnt,
        excluded,
        progress,
        spill,
    )
}

/// `start` (a directory at or below `root`, open as `root_fd`, on mount
/// `mnt`, with its stat) and every path below it with its stat, sorted by
/// path: sorted runs, spilled as `spill` allows, merged.
pub(crate) fn walk_below(
    root_fd: &OwnedFd,
    root: &[u8],
    start: (&[u8], Stat),
    mnt: u64,
    excluded: &[Vec<u8>],
    progress: &WalkProgress,
    spill: Spill<'_>,
) -> Result<Entries, WalkError> {
    let shared = Shared {
        work: Mutex::new(Work {
            stack: vec![start.0.to_vec()],
            active: 0,
            failed: None,
        }),
        cv: Condvar::new(),
        root,
        root_fd,
        mnt,
        excluded,
        progress,
    };
    let runs = Runs::new(spill);
    let mut first = Run::default();
    first.push(start.0, &start.1);
    runs.add(first)?;
    let last: Vec<Result<(), WalkError>> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..WALK_THREADS)
            .map(|_| sc.spawn(|| runs.add(shared.worker(&runs)).map_err(WalkError::from)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(Ok(())))
            .collect()
    });
    let work = shared.work.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = work.failed {
        return Err(e);
    }
    if work.active != 0 || !work.stack.is_empty() {
        // A worker died (panicked) with work left: the walk is incomplete.
        return Err(WalkError::Directory {
            path: start.0.to_vec(),
            source: std::io::Error::other("a walk worker stopped unexpectedly"),
        });
    }
    last.into_iter().collect::<Result<(), WalkError>>()?;
    Ok(runs.merge()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Spill;
    use std::os::unix::ffi::OsStrExt;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::create_dir_all(dir.path().join(format!("d{i}/e"))).unwrap();
        }
        dir
    }

    #[test]
    fn a_panicking_worker_fails_the_walk_instead_of_hanging() {
        let dir = tree();
        std::fs::create_dir(dir.path().join("d3/inject-a-panic")).unwrap();
        let root = dir.path().as_os_str().as_bytes();
        let err = walk(root, &[], &WalkProgress::default(), Spill::memory()).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }

    #[test]
    fn a_scoped_walk_equals_the_subtree_of_a_full_walk() {
        let dir = tree();
        for i in 0..30 {
            std::fs::write(dir.path().join(format!("d4/e/f{i}")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("d40"), b"x").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("d4/link")).unwrap();
        let root = dir.path().as_os_str().as_bytes();
        let mut scope = root.to_vec();
        scope.extend_from_slice(b"/d4");
        let p = WalkProgress::default();
        let full = walk(root, &[], &p, Spill::memory()).unwrap();
        let expected: Vec<_> = full
            .iter()
            .filter(|(path, _)| below(path, &scope))
            .map(|(path, st)| (path.to_vec(), st))
            .collect();
        let scoped: Vec<_> = walk_scope(root, &scope, &[], &p, Spill::memory())
            .unwrap()
            .iter()
            .map(|(path, st)| (path.to_vec(), st))
            .collect();
        assert_eq!(scoped, expected);
        assert_eq!(scoped.len(), 33);
        // The root itself, a symlink, a file, something outside or
        // excluded: refused or the same as the full walk.
        assert_eq!(
            walk_scope(root, root, &[], &p, Spill::memory())
                .unwrap()
                .len(),
            full.len()
        );
        let mut link = scope.clone();
        link.extend_from_slice(b"/link");
        assert!(walk_scope(root, &link, &[], &p, Spill::memory()).is_err());
        assert!(walk_scope(root, b"/etc", &[], &p, Spill::memory()).is_err());
        assert!(walk_scope(
            root,
            &scope,
            std::slice::from_ref(&scope),
            &p,
            Spill::memory()
        )
        .is_err());
    }

    #[test]
    fn a_cancelled_walk_stops() {
        let dir = tree();
        let root = dir.path().as_os_str().as_bytes();
        let progress = WalkProgress::default();
        progress.cancel.store(true, Ordering::Relaxed);
        assert!(matches!(
            walk(root, &[], &progress, Spill::memory()),
            Err(WalkError::Cancelled)
        ));
        progress.cancel.store(false, Ordering::Relaxed);
        assert!(walk(root, &[], &progress, Spill::memory()).unwrap().len() > 40);
    }

    /// A walk sorted in tiny runs (down to one entry each: 1,300 runs,
    /// merged 64 at a time), spilled to files and merged into a mapped
    /// file, equals the same walk held in memory, entry for entry; the
    /// spill leaves no file behind.
    #[test]
    fn a_spilled_walk_equals_a_walk_in_memory() {
        let dir = tree();
        for i in 0..600 {
            std::fs::write(dir.path().join(format!("d{}/f{i}", i % 20)), b"x").unwrap();
            std::fs::write(dir.path().join(format!("d{}/e/g\n{i}", i % 7)), b"y").unwrap();
        }
        let root = dir.path().as_os_str().as_bytes();
        let p = WalkProgress::default();
        let want = walk(root, &[], &p, Spill::memory()).unwrap();
        assert!(want.len() > 1200);
        let spill = tempfile::tempdir().unwrap();
        for (run_bytes, in_memory) in [(4096, 0), (4096, usize::MAX), (1, 0), (1 << 20, 0)] {
            let got = walk(
                root,
                &[],
                &p,
                Spill::with_bounds(spill.path(), run_bytes, in_memory),
            )
            .unwrap();
            assert_eq!(
                got.store_kind(),
                if in_memory == 0 { "mapped" } else { "memory" }
            );
            assert_eq!(got, want, "runs of {run_bytes} bytes");
            assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
        }
        let mut scope = root.to_vec();
        scope.extend_from_slice(b"/d3");
        let spilled = walk_scope(
            root,
            &scope,
            &[],
            &p,
            Spill::with_bounds(spill.path(), 512, 0),
        );
        let in_memory = walk_scope(root, &scope, &[], &p, Spill::memory());
        assert_eq!(spilled.unwrap(), in_memory.unwrap());
    }
}
