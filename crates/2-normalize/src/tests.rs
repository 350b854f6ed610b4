//! The normaliser's decisions, table-tested without root: an in-memory
//! filesystem behind the `Fs` seam, and fanotify event buffers built the
//! way the kernel lays them out (`crates/1-capture/src/parse.rs`).

use std::collections::HashMap;
use std::io;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use cj_capture::mask;
use cj_types::{Changes, FileHandle, ObjectKind, RecordBody, EVENT_FLAG_PATH_UNKNOWN};

use super::*;
use crate::fs::Fs;
use crate::sys::Stat;

const FSID: u64 = 7;
const HANDLE_TYPE: i32 = 1;
const PID: i32 = 4242;

/// One object of the fake filesystem.
#[derive(Clone)]
struct Obj {
    ino: u64,
    kind: ObjectKind,
    nlink: u32,
}

#[derive(Default)]
struct Tree {
    /// Directory inode -> its path now (`None`: removed).
    dirs: HashMap<u64, Option<Vec<u8>>>,
    /// (directory inode, name) -> object.
    names: HashMap<(u64, Vec<u8>), Obj>,
    /// Open descriptor number -> the directory inode it stands for.
    open: HashMap<RawFd, u64>,
}

/// An in-memory filesystem: handles are inode numbers (8 bytes).
#[derive(Clone, Default)]
struct FakeFs(Arc<Mutex<Tree>>);

fn handle(ino: u64) -> Vec<u8> {
    ino.to_le_bytes().to_vec()
}

fn token() -> OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

fn stat(o: &Obj) -> Stat {
    let mode = match o.kind {
        ObjectKind::Dir => 0o040755,
        ObjectKind::Symlink => 0o120777,
        _ => 0o100644,
    };
    Stat {
        kind: o.kind,
        nlink: o.nlink,
        ino: o.ino,
        full: cj_types::Stat {
            ino: o.ino,
            mode,
            nlink: o.nlink,
            ..Default::default()
        },
    }
}

impl FakeFs {
    fn mkdir(&self, parent: u64, name: &str, ino: u64) {
        let mut t = self.0.lock().unwrap();
        let base = t.dirs[&parent].clone().unwrap();
        let path = crate::join(&base, name.as_bytes());
        t.dirs.insert(ino, Some(path));
        t.names.insert(
            (parent, name.as_bytes().to_vec()),
            Obj {
                ino,
                kind: ObjectKind::Dir,
                nlink: 2,
            },
        );
    }

    fn root(&self, path: &str, ino: u64) {
        self.0
            .lock()
            .unwrap()
            .dirs
            .insert(ino, Some(path.as_bytes().to_vec()));
    }

    fn file(&self, dir: u64, name: &str, ino: u64, nlink: u32) {
        self.0.lock().unwrap().names.insert(
            (dir, name.as_bytes().to_vec()),
            Obj {
                ino,
                kind: ObjectKind::File,
                nlink,
            },
        );
    }

    fn remove(&self, dir: u64, name: &str) {
        self.0
            .lock()
            .unwrap()
            .names
            .remove(&(dir, name.as_bytes().to_vec()));
    }

    fn rmdir(&self, parent: u64, name: &str, ino: u64) {
        let mut t = self.0.lock().unwrap();
        t.names.remove(&(parent, name.as_bytes().to_vec()));
        t.dirs.insert(ino, None);
    }

    fn rename_dir(&self, parent: u64, from: &str, to: &str, ino: u64) {
        let mut t = self.0.lock().unwrap();
        let o = t.names.remove(&(parent, from.as_bytes().to_vec())).unwrap();
        t.names.insert((parent, to.as_bytes().to_vec()), o);
        let base = t.dirs[&parent].clone().unwrap();
        t.dirs.insert(ino, Some(crate::join(&base, to.as_bytes())));
    }

    fn dir_of(&self, fd: RawFd) -> io::Result<u64> {
        let t = self.0.lock().unwrap();
        t.open
            .get(&fd)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl Fs for FakeFs {
    fn open_by_handle(&self, _mount: RawFd, _t: i32, h: &[u8]) -> io::Result<OwnedFd> {
        let ino = u64::from_le_bytes(
            h.try_into()
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        );
        let mut t = self.0.lock().unwrap();
        let live_dir = matches!(t.dirs.get(&ino), Some(Some(_)));
        let live_file = t.names.values().any(|o| o.ino == ino);
        if !live_dir && !live_file {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let fd = token();
        t.open.insert(fd.as_raw_fd(), ino);
        Ok(fd)
    }
    fn fd_path(&self, fd: RawFd) -> io::Result<Option<Vec<u8>>> {
        let ino = self.dir_of(fd)?;
        let t = self.0.lock().unwrap();
        // A file's own handle decodes to a disconnected dentry: "/".
        Ok(match t.dirs.get(&ino) {
            Some(p) => p.clone(),
            None => Some(b"/".to_vec()),
        })
    }
    fn stat_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<Stat>> {
        let d = self.dir_of(dir)?;
        let t = self.0.lock().unwrap();
        Ok(t.names.get(&(d, name.to_vec())).map(stat))
    }
    fn stat_fd(&self, fd: RawFd) -> io::Result<Option<Stat>> {
        let ino = self.dir_of(fd)?;
        let t = self.0.lock().unwrap();
        let file = t.names.values().find(|o| o.ino == ino).cloned();
        Ok(Some(stat(&file.unwrap_or(Obj {
            ino,
            kind: ObjectKind::Dir,
            nlink: 2,
        }))))
    }
    fn handle_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<FileHandle>> {
        let d = self.dir_of(dir)?;
        let t = self.0.lock().unwrap();
        Ok(t.names.get(&(d, name.to_vec())).map(|o| FileHandle {
            handle_type: HANDLE_TYPE,
            bytes: handle(o.ino),
        }))
    }
    fn fsid(&self, _fd: RawFd) -> io::Result<u64> {
        Ok(FSID)
    }
    fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        let mut t = self.0.lock().unwrap();
        let ino = t
            .dirs
            .iter()
            .find(|(_, p)| p.as_deref() == Some(path))
            .map(|(i, _)| *i)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let fd = token();
        t.open.insert(fd.as_raw_fd(), ino);
        Ok(fd)
    }
}

/// Builds fanotify event buffers (FID mode), laid out as the kernel does.
#[derive(Default)]
struct Events(Vec<u8>);

fn fid_info(kind: u8, ino: u64, name: Option<&str>) -> Vec<u8> {
    let mut body = FSID.to_ne_bytes().to_vec();
    body.extend_from_slice(&8u32.to_ne_bytes());
    body.extend_from_slice(&HANDLE_TYPE.to_ne_bytes());
    body.extend_from_slice(&handle(ino));
    if let Some(n) = name {
        body.extend_from_slice(n.as_bytes());
        body.push(0);
        while !(body.len() + 4).is_multiple_of(4) {
            body.push(0);
        }
    }
    let mut info = vec![kind, 0];
    info.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
    info.extend_from_slice(&body);
    info
}

impl Events {
    fn event(mut self, m: u64, pid: i32, infos: &[Vec<u8>]) -> Events {
        let len = 24 + infos.iter().map(Vec::len).sum::<usize>();
        self.0.extend_from_slice(&(len as u32).to_ne_bytes());
        self.0.push(3); // version
        self.0.push(0);
        self.0.extend_from_slice(&24u16.to_ne_bytes());
        self.0.extend_from_slice(&m.to_ne_bytes());
        self.0.extend_from_slice(&(-1i32).to_ne_bytes());
        self.0.extend_from_slice(&pid.to_ne_bytes());
        for i in infos {
            self.0.extend_from_slice(i);
        }
        self
    }

    /// An entry event: `name` in directory `dir`, object `obj`.
    fn entry(self, m: u64, dir: u64, name: &str, obj: Option<u64>) -> Events {
        let mut infos = vec![fid_info(2, dir, Some(name))];
        if let Some(o) = obj {
            infos.push(fid_info(1, o, None));
        }
        self.event(m, PID, &infos)
    }

    fn rename(self, from: (u64, &str), to: (u64, &str), obj: u64, ondir: bool) -> Events {
        let m = mask::RENAME | if ondir { mask::ONDIR } else { 0 };
        let infos = vec![
            fid_info(10, from.0, Some(from.1)),
            fid_info(12, to.0, Some(to.1)),
            fid_info(1, obj, None),
        ];
        self.event(m, PID, &infos)
    }
}

const ROOT: u64 = 1;
const SUB: u64 = 2;
const ROOT_PATH: &str = "/r";

fn setup() -> (FakeFs, Normalizer) {
    let fs = FakeFs::default();
    fs.root(ROOT_PATH, ROOT);
    fs.mkdir(ROOT, "sub", SUB);
    let mut n = Normalizer::new(99, vec![b"/r/state".to_vec()]).with_fs(Box::new(fs.clone()));
    n.add_root(ROOT_PATH.as_bytes().to_vec(), FSID, token());
    (fs, n)
}

fn run(n: &mut Normalizer, ev: Events) -> Vec<cj_types::EventRecord> {
    let mut out = Vec::new();
    n.process(&ev.0, &mut out);
    n.flush(&[], true, &mut out);
    out.into_iter()
        .filter_map(|r| match r {
            RecordBody::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn paths(recs: &[cj_types::EventRecord]) -> Vec<String> {
    recs.iter()
        .map(|r| String::from_utf8_lossy(&r.path).into_owned())
        .collect()
}

#[test]
fn a_created_file_is_named_from_its_directory_and_verified() {
    let (fs, mut n) = setup();
    fs.file(SUB, "f", 10, 1);
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE | mask::CLOSE_WRITE, SUB, "f", Some(10)),
    );
    assert_eq!(paths(&recs), vec!["/r/sub/f"]);
    let r = &recs[0];
    assert!(r
        .changes
        .contains(Changes::CREATED | Changes::CLOSE_WRITE | Changes::MODIFIED));
    assert_eq!(r.kind, ObjectKind::File);
    assert_eq!(
        r.flags & (EVENT_FLAG_VERIFIED_PRESENT | EVENT_FLAG_VERIFIED_SAME),
        3
    );
    assert_eq!(r.stat.map(|s| s.ino), Some(10));
}

#[test]
fn after_releasing_every_descriptor_events_are_named_as_before() {
    let (fs, mut n) = setup();
    fs.file(SUB, "f", 10, 1);
    let ev = || Events::default().entry(mask::CREATE | mask::CLOSE_WRITE, SUB, "f", Some(10));
    assert_eq!(paths(&run(&mut n, ev())), vec!["/r/sub/f"]);
    // The queue was empty: nothing stays open (a umount must succeed) ...
    n.release_descriptors();
    // ... and the next events open what they need again.
    let recs = run(&mut n, ev());
    assert_eq!(paths(&recs), vec!["/r/sub/f"]);
    assert_eq!(
        recs[0].flags & (EVENT_FLAG_VERIFIED_PRESENT | EVENT_FLAG_VERIFIED_SAME),
        3
    );
}

#[test]
fn a_root_whose_directory_is_gone_does_not_stop_another_root_on_its_filesystem() {
    let (fs, mut n) = setup();
    // Another root on the same filesystem, first in the list, whose
    // directory cannot be opened any more (renamed away or removed).
    let mut roots = vec![b"/gone".to_vec()];
    roots.extend(n.roots().iter().map(|r| r.path.clone()));
    let mut m = Normalizer::new(99, vec![b"/r/state".to_vec()]).with_fs(Box::new(fs.clone()));
    for r in roots {
        m.add_root(r, FSID, token());
    }
    n = m;
    n.release_descriptors();
    fs.file(SUB, "f", 10, 1);
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE | mask::CLOSE_WRITE, SUB, "f", Some(10)),
    );
    assert_eq!(paths(&recs), vec!["/r/sub/f"]);
}

#[test]
fn a_name_gone_or_replaced_by_another_object_is_not_verified_as_the_same() {
    let (fs, mut n) = setup();
    // Created, then gone before normalisation looked: named, not present.
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE, SUB, "gone", Some(11)),
    );
    assert_eq!(paths(&recs), vec!["/r/sub/gone"]);
    assert_eq!(recs[0].flags & EVENT_FLAG_VERIFIED_PRESENT, 0);
    assert_eq!(recs[0].stat, None);
    // Created as object 12; another object (13) holds the name now.
    fs.file(SUB, "again", 13, 1);
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE, SUB, "again", Some(12)),
    );
    assert_eq!(
        recs[0].flags & EVENT_FLAG_VERIFIED_PRESENT,
        EVENT_FLAG_VERIFIED_PRESENT
    );
    assert_eq!(recs[0].flags & EVENT_FLAG_VERIFIED_SAME, 0);
}

#[test]
fn own_events_paths_outside_the_roots_and_the_state_dir_are_dropped() {
    let (fs, mut n) = setup();
    fs.mkdir(ROOT, "state", 3);
    fs.root("/elsewhere", 50);
    fs.file(SUB, "f", 10, 1);
    let own = Events::default().event(
        mask::CREATE,
        99,
        &[fid_info(2, SUB, Some("f")), fid_info(1, 10, None)],
    );
    assert!(run(&mut n, own).is_empty());
    assert_eq!(n.stats.dropped_self, 1);
    let outside = Events::default().entry(mask::CREATE, 50, "x", None);
    assert!(run(&mut n, outside).is_empty());
    let state = Events::default().entry(mask::MODIFY, 3, "journal", None);
    assert!(run(&mut n, state).is_empty());
}

#[test]
fn a_directory_rename_is_one_record_and_later_events_use_the_new_path() {
    let (fs, mut n) = setup();
    // The directory's path is learnt (cached) from a first event.
    fs.file(SUB, "f", 10, 1);
    run(
        &mut n,
        Events::default().entry(mask::MODIFY, SUB, "f", Some(10)),
    );
    fs.rename_dir(ROOT, "sub", "moved", SUB);
    let recs = run(
        &mut n,
        Events::default().rename((ROOT, "sub"), (ROOT, "moved"), SUB, true),
    );
    assert_eq!(paths(&recs), vec!["/r/moved"]);
    assert_eq!(recs[0].old_path, b"/r/sub");
    assert!(recs[0]
        .changes
        .contains(Changes::RENAMED_FROM | Changes::RENAMED_TO));
    // The cache followed the rename.
    let recs = run(
        &mut n,
        Events::default().entry(mask::MODIFY, SUB, "f", Some(10)),
    );
    assert_eq!(paths(&recs), vec!["/r/moved/f"]);
}

#[test]
fn events_in_a_removed_directory_are_dropped_and_counted() {
    let (fs, mut n) = setup();
    fs.mkdir(ROOT, "d", 20);
    fs.rmdir(ROOT, "d", 20);
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE, 20, "x", Some(21)),
    );
    assert!(recs.is_empty());
    assert_eq!(n.stats.gone_dirs, 1);
}

#[test]
fn a_change_to_a_multiply_linked_file_names_every_proven_name() {
    let (fs, mut n) = setup();
    fs.file(SUB, "a", 30, 2);
    fs.file(ROOT, "b", 30, 2);
    // Both names are in the batch: both are reported.
    let ev = Events::default()
        .entry(mask::CREATE, ROOT, "b", Some(30))
        .entry(mask::MODIFY, SUB, "a", Some(30));
    let got: std::collections::BTreeSet<String> = paths(&run(&mut n, ev)).into_iter().collect();
    assert!(got.contains("/r/b") && got.contains("/r/sub/a"), "{got:?}");
}

#[test]
fn an_unprovable_other_name_is_an_unknown_path_and_the_link_index_proves_it() {
    let (fs, mut n) = setup();
    fs.file(SUB, "a", 40, 2);
    fs.file(ROOT, "never_seen", 40, 2);
    let ev = || Events::default().entry(mask::MODIFY, SUB, "a", Some(40));
    let recs = run(&mut n, ev());
    assert!(
        recs.iter().any(|r| r.flags & EVENT_FLAG_PATH_UNKNOWN != 0),
        "{:?}",
        paths(&recs)
    );
    // A baseline knows the other name: it is proven and reported instead.
    let links = Arc::new(LinkIndex::default());
    links.publish(
        b"/r",
        FSID,
        vec![(40, b"/r/never_seen".to_vec())].into_iter(),
    );
    let (fs2, n2) = setup();
    fs2.file(SUB, "a", 40, 2);
    fs2.file(ROOT, "never_seen", 40, 2);
    let mut n2 = n2.with_links(links);
    let recs = run(&mut n2, ev());
    assert!(recs.iter().all(|r| r.flags & EVENT_FLAG_PATH_UNKNOWN == 0));
    let got: std::collections::BTreeSet<String> = paths(&recs).into_iter().collect();
    assert!(
        got.contains("/r/never_seen") && got.contains("/r/sub/a"),
        "{got:?}"
    );
    drop(fs);
}

#[test]
fn an_overflow_is_a_gap_for_every_root() {
    let (_fs, mut n) = setup();
    let ev = Events::default().event(mask::Q_OVERFLOW, 0, &[]);
    let mut out = Vec::new();
    n.process(&ev.0, &mut out);
    assert!(matches!(
        &out[..],
        [RecordBody::Gap(g)] if g.reason == cj_types::GapReason::QueueOverflow && g.scope.is_empty()
    ));
    assert_eq!(n.stats.overflows, 1);
}

#[test]
fn a_deleted_name_is_reported_deleted_and_absent() {
    let (fs, mut n) = setup();
    fs.file(SUB, "f", 10, 1);
    run(
        &mut n,
        Events::default().entry(mask::CREATE, SUB, "f", Some(10)),
    );
    fs.remove(SUB, "f");
    let recs = run(
        &mut n,
        Events::default().entry(mask::DELETE, SUB, "f", Some(10)),
    );
    assert_eq!(paths(&recs), vec!["/r/sub/f"]);
    assert!(recs[0].changes.contains(Changes::DELETED));
    assert_eq!(recs[0].flags & EVENT_FLAG_VERIFIED_PRESENT, 0);
}

/// Issue 9, defect 1: a path longer than the journal's bound is journaled
/// as its nearest ancestor that fits, covering its subtree.
#[test]
fn a_path_past_the_journal_bound_is_named_by_its_nearest_ancestor() {
    let (fs, mut n) = setup();
    let long = "d".repeat(200);
    let mut parent = SUB;
    let mut ino = 100;
    let mut path = b"/r/sub".to_vec();
    while path.len() <= cj_types::PATH_BYTES_MAX {
        fs.mkdir(parent, &long, ino);
        path.push(b'/');
        path.extend_from_slice(long.as_bytes());
        parent = ino;
        ino += 1;
    }
    fs.file(parent, "f", 9999, 1);
    let recs = run(
        &mut n,
        Events::default().entry(mask::CREATE, parent, "f", Some(9999)),
    );
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert!(r.path.len() <= cj_types::PATH_BYTES_MAX);
    assert!(path.starts_with(&r.path) && path[r.path.len()] == b'/');
    assert_eq!(r.kind, ObjectKind::Dir);
    assert!(r.changes.contains(Changes::CREATED | Changes::DELETED));
    assert_eq!(r.flags & EVENT_FLAG_PATH_UNKNOWN, 0);
}

#[test]
fn nearest_ancestor_within_a_bound() {
    assert_eq!(
        nearest_ancestor_within(b"/a/bb/ccc", 20).unwrap(),
        b"/a/bb/ccc"
    );
    assert_eq!(nearest_ancestor_within(b"/a/bb/ccc", 6).unwrap(), b"/a/bb");
    assert_eq!(nearest_ancestor_within(b"/a/bb/ccc", 5).unwrap(), b"/a/bb");
    assert_eq!(nearest_ancestor_within(b"/a/bb/ccc", 4).unwrap(), b"/a");
    assert_eq!(nearest_ancestor_within(b"/aaaa", 2).unwrap(), b"/");
}
