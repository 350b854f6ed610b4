//! Stage 2 of cj: normalisation.
//!
//! fanotify events are hints, not a log: the kernel merges events on the same
//! object and name (even ones far apart in the queue), so `CREATE|DELETE` on a
//! name says nothing about the end state, and a file handle of a non-directory
//! may resolve to "/". This stage therefore:
//! - maps *directory* handles to paths through a bounded cache that is
//!   invalidated on directory renames and removals, and builds file paths as
//!   directory path + name (never from a file's own handle);
//! - looks at the current state of each (directory, name) with `statx` and
//!   `name_to_handle_at` relative to the directory descriptor, and compares
//!   handles (generation included) to tell the same object from a replacement;
//! - drops the daemon's own events (by pid and by the state directory path)
//!   and events outside every tracked root;
//! - turns the result into [`RecordBody`] values for the journal.
//!
//! The answer to a query is a superset of what changed: a record may name a
//! path whose change was undone before it was read (a false positive), never
//! the reverse. `docs/design.md` ("Normalisation") argues each case.

mod cache;
pub mod fs;
mod links;
pub mod sys;

use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use cj_capture::{mask, parse, DirEntry, Event, Fid};
use cj_types::{
    Changes, EventRecord, FileHandle, GapReason, GapRecord, ObjectKind, RecordBody,
    EVENT_FLAG_PATH_UNKNOWN, EVENT_FLAG_VERIFIED_PRESENT, EVENT_FLAG_VERIFIED_SAME, NAME_BYTES_MAX,
    PATH_BYTES_MAX,
};

pub use cache::{is_at_or_below, DIR_CACHE_ENTRIES_MAX, NAME_CACHE_ENTRIES_MAX};
use cache::{key_into, DirCache, NameCache};
pub use links::{LinkIndex, LINKED_PATHS_MAX};

/// Counters, for `cj status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub events: u64,
    pub records: u64,
    pub dropped_self: u64,
    pub dropped_outside: u64,
    /// Events on directories that were gone when read (covered by the
    /// removal of an ancestor, which is journaled).
    pub gone_dirs: u64,
    pub parse_errors: u64,
    pub overflows: u64,
    pub unknown_paths: u64,
}

/// A tracked root.
pub struct Root {
    pub path: Vec<u8>,
    pub fsid: u64,
    /// The root directory, open while events are processed (closed by
    /// [`Normalizer::release_descriptors`], opened again when needed).
    mount: Option<Arc<OwnedFd>>,
}

pub struct Normalizer {
    self_pid: i32,
    excluded: Vec<Vec<u8>>,
    roots: Vec<Root>,
    /// fsid -> a descriptor on that filesystem, for `open_by_handle_at`.
    mounts: HashMap<u64, Arc<OwnedFd>>,
    dirs: DirCache,
    names: NameCache,
    key: Vec<u8>,
    /// Targets of the latest renames (bounded by `RECENT_TARGETS_MAX`): a
    /// handle-only DELETE_SELF of a known name among them is a rename victim.
    recent_targets: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// Multiply-linked objects whose names were not all proven yet.
    pending: Vec<Pending>,
    /// Counts `process` calls, to age `recent_targets`.
    batch_no: u64,
    /// Whether the current batch's names were pre-scanned into `names`.
    batch_names_loaded: bool,
    /// Multiply-linked names from the baselines (published by the
    /// reconciler).
    links: Arc<LinkIndex>,
    /// Every question asked of the filesystem goes through here.
    fs: Box<dyn fs::Fs>,
    pub stats: Stats,
}

/// Deferred objects at most (each then counts as an unknown path).
pub const PENDING_ALIASES_MAX: usize = 4096;

struct Pending {
    fsid: u64,
    object: FileHandle,
    changes: Changes,
}

struct Verified {
    kind: ObjectKind,
    flags: u8,
    nlink: u32,
    /// What is at the name now (journaled with the record).
    stat: Option<cj_types::Stat>,
}

fn fid_handle(f: &Fid<'_>) -> FileHandle {
    FileHandle {
        handle_type: f.handle_type,
        bytes: f.handle.to_vec(),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The record bits for an event mask (the kernel's bits are not stable API
/// for clients, ours are).
fn changes_of(m: u64) -> Changes {
    let mut c = Changes::default();
    for (bit, change) in [
        (mask::CREATE, Changes::CREATED),
        (mask::DELETE, Changes::DELETED),
        (mask::DELETE_SELF, Changes::DELETED),
        (mask::MODIFY, Changes::MODIFIED),
        (mask::ATTRIB, Changes::ATTRIB),
        // A store through a shared mmap gives no MODIFY, only CLOSE_WRITE at
        // the last fput: a close after writing may have changed the content.
        (mask::CLOSE_WRITE, Changes::CLOSE_WRITE | Changes::MODIFIED),
        (mask::MOVED_FROM, Changes::RENAMED_FROM),
        (mask::MOVED_TO, Changes::RENAMED_TO),
    ] {
        if m & bit != 0 {
            c |= change;
        }
    }
    c
}

/// Rename targets remembered to recognise rename victims.
pub const RECENT_TARGETS_MAX: usize = 4096;

const NAME_CHANGING: u64 = mask::CREATE | mask::DELETE | mask::MOVED_FROM | mask::MOVED_TO;

impl Normalizer {
    /// `excluded`: path prefixes whose changes are never reported (the
    /// daemon's state directory).
    pub fn new(self_pid: i32, excluded: Vec<Vec<u8>>) -> Normalizer {
        Normalizer {
            self_pid,
            excluded,
            roots: Vec::new(),
            mounts: HashMap::new(),
            dirs: DirCache::default(),
            names: NameCache::default(),
            key: Vec::new(),
            batch_names_loaded: false,
            recent_targets: std::collections::VecDeque::new(),
            batch_no: 0,
            pending: Vec::new(),
            links: Arc::default(),
            fs: Box::new(fs::RealFs),
            stats: Stats::default(),
        }
    }

    /// Asks `fs` instead of the kernel (tests).
    pub fn with_fs(mut self, fs: Box<dyn fs::Fs>) -> Normalizer {
        self.fs = fs;
        self
    }

    /// Takes the names of multiply-linked files from `links` too.
    /// The names this run has seen (file handle -> names), for the next
    /// run when it takes over this run's fanotify group: the events still
    /// queued in it may name files only by handle.
    pub fn names_handoff(&self) -> Vec<u8> {
        self.names.encode()
    }

    /// Starts from the names an earlier run handed off (see
    /// [`Normalizer::names_handoff`]). False (and nothing changed) if the
    /// bytes are not a valid handoff.
    pub fn take_names_handoff(&mut self, bytes: &[u8]) -> bool {
        match cache::NameCache::decode(bytes) {
            Some(names) => {
                self.names = names;
                true
            }
            None => false,
        }
    }

    pub fn with_links(mut self, links: Arc<LinkIndex>) -> Normalizer {
        self.links = links;
        self
    }

    /// The names that may be `fid`'s (inode `ino`): those seen in events,
    /// then those the baselines hold. Each is proven before it is used.
    fn candidates(&mut self, fid: &Fid<'_>, ino: u64) -> Vec<Vec<u8>> {
        key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
        let mut out: Vec<Vec<u8>> = self.names.get(&self.key).to_vec();
        for p in self.links.names(fid.fsid, ino) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Starts reporting changes below `path`. `mount` is a descriptor on
    /// its filesystem (the root directory itself).
    pub fn add_root(&mut self, path: Vec<u8>, fsid: u64, mount: OwnedFd) {
        self.roots.retain(|r| r.path != path);
        self.roots.push(Root {
            path,
            fsid,
            mount: Some(Arc::new(mount)),
        });
    }

    pub fn remove_root(&mut self, path: &[u8]) {
        let gone: Vec<u64> = self
            .roots
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.fsid)
            .collect();
        self.roots.retain(|r| r.path != path);
        // An unmounted filesystem must be freed: nothing may stay open on it.
        self.release_descriptors();
        for fsid in gone {
            if !self.roots.iter().any(|r| r.fsid == fsid) {
                self.dirs.clear_fs(fsid);
            }
        }
    }

    /// Closes every descriptor held on tracked filesystems (root and
    /// directory descriptors; paths stay cached). Called whenever the
    /// kernel queue is found empty, so that a plain `umount` of a tracked
    /// filesystem succeeds while the daemon runs (issue 12); they are
    /// opened again by the next events.
    pub fn release_descriptors(&mut self) {
        for r in &mut self.roots {
            r.mount = None;
        }
        self.mounts.clear();
        self.dirs.drop_fds();
    }

    /// Root `i`'s directory, opened again if released, and only if it is
    /// still the filesystem the root was marked on.
    fn root_mount(&mut self, i: usize) -> Option<Arc<OwnedFd>> {
        if self.roots[i].mount.is_none() {
            let fd = self.fs.open_root(&self.roots[i].path).ok()?;
            if self.fs.fsid(fd.as_raw_fd()).ok()? != self.roots[i].fsid {
                return None;
            }
            self.roots[i].mount = Some(Arc::new(fd));
        }
        self.roots[i].mount.clone()
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    fn in_roots(&self, path: &[u8]) -> bool {
        self.roots.iter().any(|r| is_at_or_below(path, &r.path))
    }

    fn excluded(&self, path: &[u8]) -> bool {
        self.excluded.iter().any(|e| is_at_or_below(path, e))
    }

    /// Normalises every event in one `read(2)` result, appending records.
    pub fn process(&mut self, buf: &[u8], out: &mut Vec<RecordBody>) {
        self.batch_names_loaded = false;
        if !buf.is_empty() {
            self.batch_no += 1;
        }
        // Objects deferred by the previous batch, now that this batch's
        // names are known. Still unproven after a second look: unknown.
        self.flush(buf, true, out);
        self.batch_names_loaded = false;
        let before = out.len();
        for event in parse(buf) {
            let event = match event {
                Ok(e) => e,
                Err(_) => {
                    self.stats.parse_errors += 1;
                    continue;
                }
            };
            self.stats.events += 1;
            if event.mask & mask::Q_OVERFLOW != 0 {
                self.stats.overflows += 1;
                out.push(RecordBody::Gap(GapRecord {
                    reason: GapReason::QueueOverflow,
                    fsid: 0,
                    scope: Vec::new(),
                    start_time_ns: now_ns(),
                    flags: 0,
                    detail: b"the kernel event queue overflowed and dropped events".to_vec(),
                }));
                continue;
            }
            if event.pid == self.self_pid {
                self.stats.dropped_self += 1;
                continue;
            }
            self.one(buf, &event, out);
        }
        self.stats.records += (out.len() - before) as u64;
    }

    fn one(&mut self, buf: &[u8], event: &Event<'_>, out: &mut Vec<RecordBody>) {
        if event.mask & mask::RENAME != 0 {
            if let (Some(old), Some(new)) = (event.old, event.new) {
                self.rename(event, old, new, out);
            }
        } else if let Some(de) = event.dfid_name {
            if de.name == b"." {
                self.dir_self(event, de, out);
            } else {
                self.entry(buf, event, de, out);
            }
        } else if let Some(fid) = event.fid {
            self.handle_only(buf, event, fid, out);
        }
    }

    fn mount_fd(&mut self, fid: &Fid<'_>) -> Option<RawFd> {
        if let Some(m) = self.mounts.get(&fid.fsid) {
            return Some(m.as_raw_fd());
        }
        // A root on this filesystem first: any of them whose directory can
        // still be opened (one may have been renamed away or removed; the
        // others' events must still be named).
        for i in 0..self.roots.len() {
            if self.roots[i].fsid != fid.fsid {
                continue;
            }
            if let Some(m) = self.root_mount(i) {
                let fd = m.as_raw_fd();
                self.mounts.insert(fid.fsid, m);
                return Some(fd);
            }
        }
        // An fsid we have not seen (btrfs reports events inside child
        // subvolumes with the top-level fsid): find a root whose descriptor
        // decodes this handle, and remember it.
        for i in 0..self.roots.len() {
            let Some(m) = self.root_mount(i) else {
                continue;
            };
            if self
                .fs
                .open_by_handle(m.as_raw_fd(), fid.handle_type, fid.handle)
                .is_ok()
            {
                let fd = m.as_raw_fd();
                self.mounts.insert(fid.fsid, m);
                return Some(fd);
            }
        }
        None
    }

    /// The current path of a directory handle. `None` if it is gone.
    fn dir_path(&mut self, fid: &Fid<'_>) -> Option<Vec<u8>> {
        key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
        if let Some(d) = self.dirs.get(&self.key) {
            return Some(d.path.clone());
        }
        let mount = self.mount_fd(fid)?;
        let fd = self
            .fs
            .open_by_handle(mount, fid.handle_type, fid.handle)
            .ok()?;
        let path = self.fs.fd_path(fd.as_raw_fd()).ok().flatten()?;
        key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
        let key = std::mem::take(&mut self.key);
        self.dirs.insert(&key, path.clone(), Some(fd));
        self.key = key;
        Some(path)
    }

    /// A descriptor for a directory handle (opened on demand).
    fn dir_fd(&mut self, fid: &Fid<'_>) -> Option<RawFd> {
        key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
        let has_fd = self.dirs.get(&self.key).map(|d| d.fd.is_some());
        match has_fd {
            Some(true) => {}
            Some(false) => {
                let mount = self.mount_fd(fid)?;
                let fd = self
                    .fs
                    .open_by_handle(mount, fid.handle_type, fid.handle)
                    .ok()?;
                key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
                if !self.dirs.set_fd(&self.key, fd) {
                    return None;
                }
            }
            None => {
                self.dir_path(fid)?;
                key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
            }
        }
        self.dirs
            .get(&self.key)
            .and_then(|d| d.fd.as_ref())
            .map(|fd| fd.as_raw_fd())
    }

    /// Looks at what `name` in the directory is now.
    fn verify(
        &mut self,
        dir: &Fid<'_>,
        name: &[u8],
        object: Option<Fid<'_>>,
        compare: bool,
    ) -> Verified {
        let none = Verified {
            kind: ObjectKind::Unknown,
            flags: 0,
            nlink: 0,
            stat: None,
        };
        let Some(fd) = self.dir_fd(dir) else {
            return none;
        };
        let Ok(Some(st)) = self.fs.stat_at(fd, name) else {
            return none; // absent: no handle to compare
        };
        let mut flags = EVENT_FLAG_VERIFIED_PRESENT;
        let same = match (compare, object) {
            (true, Some(obj)) => matches!(
                self.fs.handle_at(fd, name),
                Ok(Some(h)) if h.handle_type == obj.handle_type && h.bytes == obj.handle
            ),
            // Not asked to compare: a modify/attrib event on an existing name.
            _ => true,
        };
        if same {
            flags |= EVENT_FLAG_VERIFIED_SAME;
        }
        Verified {
            kind: st.kind,
            flags,
            nlink: st.nlink,
            stat: Some(st.full),
        }
    }

    fn push_event(&mut self, out: &mut Vec<RecordBody>, record: EventRecord) {
        // The journal refuses records past its bounds (an assertion on the
        // write path). A path that long is journaled as its nearest
        // ancestor that fits, as a directory created and deleted: every
        // answer then covers that ancestor's subtree, the nearest scope
        // that can be named (issue 9, defect 1). Names longer than a name
        // can be (never from the kernel) become an unknown-path record.
        if record.name.len() > NAME_BYTES_MAX || record.old_name.len() > NAME_BYTES_MAX {
            self.unknown(out, record.fsid, fid_from(&record.object));
            return;
        }
        let too_long = |p: &[u8]| p.len() > PATH_BYTES_MAX;
        if too_long(&record.path) || too_long(&record.old_path) {
            for p in [&record.path, &record.old_path] {
                if p.is_empty() {
                    continue;
                }
                let Some(scope) = nearest_ancestor_within(p, PATH_BYTES_MAX) else {
                    self.unknown(out, record.fsid, fid_from(&record.object));
                    continue;
                };
                out.push(RecordBody::Event(EventRecord {
                    changes: Changes::CREATED | Changes::DELETED,
                    kind: ObjectKind::Dir,
                    fsid: record.fsid,
                    name: sys::split_parent(&scope)
                        .map(|(_, n)| n.to_vec())
                        .unwrap_or_default(),
                    path: scope,
                    ..Default::default()
                }));
            }
            return;
        }
        out.push(RecordBody::Event(record));
    }

    /// Pushes a record for `path`, its name taken from the path.
    #[allow(clippy::too_many_arguments)]
    fn push_named(
        &mut self,
        out: &mut Vec<RecordBody>,
        path: Vec<u8>,
        changes: Changes,
        kind: ObjectKind,
        flags: u8,
        fsid: u64,
        object: FileHandle,
    ) {
        let name = sys::split_parent(&path)
            .map(|(_, n)| n.to_vec())
            .unwrap_or_default();
        self.push_event(
            out,
            EventRecord {
                changes,
                kind,
                flags,
                fsid,
                object,
                name,
                path,
                ..Default::default()
            },
        );
    }

    /// A change on an object whose path cannot be named: queries must treat
    /// every root on the filesystem as needing a rescan.
    fn unknown(&mut self, out: &mut Vec<RecordBody>, fsid: u64, object: FileHandle) {
        self.stats.unknown_paths += 1;
        out.push(RecordBody::Event(EventRecord {
            changes: Changes::ATTRIB | Changes::MODIFIED,
            flags: EVENT_FLAG_PATH_UNKNOWN,
            fsid,
            object,
            ..Default::default()
        }));
    }

    fn entry(
        &mut self,
        buf: &[u8],
        event: &Event<'_>,
        de: DirEntry<'_>,
        out: &mut Vec<RecordBody>,
    ) {
        let Some(dir_path) = self.dir_path(&de.dir) else {
            self.stats.gone_dirs += 1;
            return;
        };
        let path = join(&dir_path, de.name);
        if !self.in_roots(&path) {
            self.stats.dropped_outside += 1;
            return;
        }
        if self.excluded(&path) {
            self.stats.dropped_self += 1;
            return;
        }
        let changes = changes_of(event.mask);
        if changes.is_empty() {
            return;
        }
        let ondir = event.mask & mask::ONDIR != 0;
        let compare = event.mask & NAME_CHANGING != 0;
        let v = self.verify(&de.dir, de.name, event.fid, compare);
        let same = v.flags & EVENT_FLAG_VERIFIED_SAME != 0;
        let kind = if ondir {
            ObjectKind::Dir
        } else if same {
            v.kind
        } else if event.mask & mask::MODIFY != 0 {
            ObjectKind::File
        } else {
            ObjectKind::Unknown
        };
        let gone = event.mask & (mask::DELETE | mask::MOVED_FROM) != 0;
        if let Some(fid) = event.fid {
            key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
            let key = std::mem::take(&mut self.key);
            if ondir {
                if gone {
                    self.dirs.remove(&key);
                    // A removed directory was empty: only one that moved away
                    // has cached descendants (a scan of the whole cache).
                    if event.mask & mask::MOVED_FROM != 0 {
                        self.dirs.invalidate_below(fid.fsid, &path);
                    }
                } else if same && event.mask & mask::CREATE != 0 {
                    self.dirs.insert(&key, path.clone(), None);
                }
            } else if gone && !same {
                self.names.remove_name(&key, &path);
            } else {
                self.names.add(&key, &path);
            }
            self.key = key;
        }
        let object = event.fid.as_ref().map(fid_handle).unwrap_or_default();
        self.push_event(
            out,
            EventRecord {
                changes,
                kind,
                flags: v.flags,
                fsid: de.dir.fsid,
                object,
                dir: fid_handle(&de.dir),
                name: de.name.to_vec(),
                path: path.clone(),
                stat: v.stat,
                ..Default::default()
            },
        );
        if !ondir && same && v.nlink > 1 {
            if let Some(fid) = event.fid {
                let alias_changes = changes & (Changes::MODIFIED | Changes::ATTRIB);
                let ino = v.stat.map_or(0, |s| s.ino);
                self.aliases(
                    buf,
                    fid,
                    &path,
                    (v.nlink, ino),
                    alias_changes | Changes::ATTRIB,
                    out,
                );
            }
        }
    }

    /// The other names of a multiply-linked file changed too (content, mode
    /// and ctime are per inode). Reports every name it can prove; if fewer
    /// than `nlink` are known, reports the filesystem as needing a rescan.
    fn aliases(
        &mut self,
        buf: &[u8],
        fid: Fid<'_>,
        known: &[u8],
        (nlink, ino): (u32, u64),
        changes: Changes,
        out: &mut Vec<RecordBody>,
    ) {
        if !self.batch_names_loaded {
            self.load_batch_names(buf);
        }
        let candidates = self.candidates(&fid, ino);
        let mut proven: Vec<Vec<u8>> = Vec::new();
        if !known.is_empty() {
            proven.push(known.to_vec());
        }
        for path in candidates {
            // Names outside every root count towards nlink but are not reported.
            if !proven.contains(&path) && name_is(self.fs.as_ref(), &path, &fid) {
                proven.push(path);
            }
        }
        for path in &proven {
            if path.as_slice() == known || !self.in_roots(path) || self.excluded(path) {
                continue;
            }
            let Some((_, name)) = sys::split_parent(path) else {
                continue;
            };
            let name = name.to_vec();
            self.push_event(
                out,
                EventRecord {
                    changes,
                    kind: ObjectKind::File,
                    flags: EVENT_FLAG_VERIFIED_PRESENT | EVENT_FLAG_VERIFIED_SAME,
                    fsid: fid.fsid,
                    object: fid_handle(&fid),
                    name,
                    path: path.clone(),
                    ..Default::default()
                },
            );
        }
        if (proven.len() as u64) < u64::from(nlink) {
            // A name made after this event (a link) is often only in the
            // next read; look again then, or at the next barrier.
            if self.pending.len() < PENDING_ALIASES_MAX {
                self.pending.push(Pending {
                    fsid: fid.fsid,
                    object: fid_handle(&fid),
                    changes,
                });
            } else {
                self.unknown(out, fid.fsid, fid_handle(&fid));
            }
        }
    }

    /// Re-checks deferred multiply-linked objects. With `last`, whatever is
    /// still unproven becomes an unknown-path record (called before a
    /// barrier passes, so no cursor is issued past an unresolved change).
    pub fn flush(&mut self, buf: &[u8], last: bool, out: &mut Vec<RecordBody>) {
        if self.pending.is_empty() {
            return;
        }
        if !self.batch_names_loaded && !buf.is_empty() {
            self.load_batch_names(buf);
        }
        for p in std::mem::take(&mut self.pending) {
            let fid = Fid {
                fsid: p.fsid,
                handle_type: p.object.handle_type,
                handle: &p.object.bytes,
            };
            let Some(mount) = self.mount_fd(&fid) else {
                continue;
            };
            let Ok(fd) = self.fs.open_by_handle(mount, fid.handle_type, fid.handle) else {
                continue; // gone: every name's removal is an event of its own
            };
            let Ok(Some(st)) = self.fs.stat_fd(fd.as_raw_fd()) else {
                continue;
            };
            let candidates = self.candidates(&fid, st.ino);
            let proven: Vec<Vec<u8>> = candidates
                .into_iter()
                .filter(|c| name_is(self.fs.as_ref(), c, &fid))
                .collect();
            if (proven.len() as u64) < u64::from(st.nlink) {
                if last {
                    self.unknown(out, fid.fsid, p.object.clone());
                } else {
                    self.pending.push(p);
                }
                continue;
            }
            for path in proven {
                if !self.in_roots(&path) || self.excluded(&path) {
                    continue;
                }
                self.push_named(
                    out,
                    path,
                    p.changes,
                    st.kind,
                    EVENT_FLAG_VERIFIED_PRESENT | EVENT_FLAG_VERIFIED_SAME,
                    fid.fsid,
                    p.object.clone(),
                );
            }
        }
    }

    /// Remembers every (file handle -> path) the current batch mentions, so
    /// a handle-only event early in the batch can use names reported later.
    fn load_batch_names(&mut self, buf: &[u8]) {
        self.batch_names_loaded = true;
        for event in parse(buf).flatten() {
            if event.mask & mask::ONDIR != 0 || event.pid == self.self_pid {
                continue;
            }
            let pairs = [event.dfid_name, event.new];
            for de in pairs.into_iter().flatten() {
                let (Some(fid), false) = (event.fid, de.name == b".") else {
                    continue;
                };
                if let Some(dir) = self.dir_path(&de.dir) {
                    let path = join(&dir, de.name);
                    key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
                    let key = std::mem::take(&mut self.key);
                    self.names.add(&key, &path);
                    self.key = key;
                }
            }
        }
    }

    fn rename(
        &mut self,
        event: &Event<'_>,
        old: DirEntry<'_>,
        new: DirEntry<'_>,
        out: &mut Vec<RecordBody>,
    ) {
        let old_path = self.dir_path(&old.dir).map(|d| join(&d, old.name));
        let new_path = self.dir_path(&new.dir).map(|d| join(&d, new.name));
        let in_old = old_path
            .as_deref()
            .is_some_and(|p| self.in_roots(p) && !self.excluded(p));
        let in_new = new_path
            .as_deref()
            .is_some_and(|p| self.in_roots(p) && !self.excluded(p));
        let ondir = event.mask & mask::ONDIR != 0;
        if let Some(fid) = event.fid {
            key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
            let key = std::mem::take(&mut self.key);
            if ondir {
                if let Some(p) = &old_path {
                    self.dirs.invalidate_below(fid.fsid, p);
                    match &new_path {
                        Some(n) => self.names.move_below(p, n),
                        None => self.names.forget_below(p),
                    }
                }
                self.dirs.remove(&key);
                if let Some(p) = &new_path {
                    self.dirs.insert(&key, p.clone(), None);
                }
            } else {
                if let Some(p) = &old_path {
                    self.names.remove_name(&key, p);
                }
                if let Some(p) = &new_path {
                    self.names.add(&key, p);
                }
            }
            self.key = key;
        }
        if !in_old && !in_new {
            self.stats.dropped_outside += 1;
            return;
        }
        if let (Some(p), false) = (&new_path, ondir) {
            if self.recent_targets.len() >= RECENT_TARGETS_MAX {
                self.recent_targets.pop_front();
            }
            self.recent_targets.push_back((self.batch_no, p.clone()));
        }
        let v = self.verify(&new.dir, new.name, event.fid, true);
        let kind = if ondir {
            ObjectKind::Dir
        } else if v.flags & EVENT_FLAG_VERIFIED_SAME != 0 {
            v.kind
        } else {
            ObjectKind::Unknown
        };
        self.push_event(
            out,
            EventRecord {
                changes: Changes::RENAMED_FROM | Changes::RENAMED_TO,
                kind,
                flags: v.flags,
                fsid: new.dir.fsid,
                object: event.fid.as_ref().map(fid_handle).unwrap_or_default(),
                dir: fid_handle(&new.dir),
                name: new.name.to_vec(),
                old_dir: fid_handle(&old.dir),
                old_name: old.name.to_vec(),
                path: new_path.unwrap_or_default(),
                old_path: old_path.unwrap_or_default(),
                stat: v.stat,
                gap_seq: 0,
            },
        );
    }

    fn dir_self(&mut self, event: &Event<'_>, de: DirEntry<'_>, out: &mut Vec<RecordBody>) {
        let changes = changes_of(event.mask & !(mask::MOVE_SELF));
        if changes.is_empty() {
            return;
        }
        key_into(
            &mut self.key,
            de.dir.fsid,
            de.dir.handle_type,
            de.dir.handle,
        );
        let cached = self.dirs.get(&self.key).map(|d| d.path.clone());
        let path = if event.mask & mask::DELETE_SELF != 0 {
            // Gone: only a cached path can name it; the parent's DELETE
            // event names it anyway.
            let key = std::mem::take(&mut self.key);
            self.dirs.remove(&key);
            self.key = key;
            cached
        } else {
            self.dir_path(&de.dir)
        };
        let Some(path) = path else {
            self.stats.gone_dirs += 1;
            return;
        };
        if !self.in_roots(&path) || self.excluded(&path) {
            self.stats.dropped_outside += 1;
            return;
        }
        let (dir_name, name) = match sys::split_parent(&path) {
            Some((_, n)) => (fid_handle(&de.dir), n.to_vec()),
            None => (fid_handle(&de.dir), Vec::new()),
        };
        self.push_event(
            out,
            EventRecord {
                changes,
                kind: ObjectKind::Dir,
                flags: 0,
                fsid: de.dir.fsid,
                object: dir_name,
                name,
                path,
                ..Default::default()
            },
        );
    }

    fn mark_recent_targets_replaced(&mut self, fid: Fid<'_>, out: &mut Vec<RecordBody>) {
        let oldest = self.batch_no.saturating_sub(1);
        let targets: Vec<Vec<u8>> = self
            .recent_targets
            .iter()
            .filter(|(batch, _)| *batch >= oldest)
            .map(|(_, p)| p.clone())
            .collect();
        self.recent_targets.retain(|(batch, _)| *batch < oldest);
        for path in targets {
            if !self.in_roots(&path) || self.excluded(&path) {
                continue;
            }
            self.push_named(
                out,
                path,
                Changes::DELETED | Changes::REPLACED,
                ObjectKind::Unknown,
                0,
                fid.fsid,
                fid_handle(&fid),
            );
        }
    }

    /// Events that carry only the object's handle: link-count changes
    /// (ATTRIB) and DELETE_SELF / MOVE_SELF of non-directories.
    fn handle_only(
        &mut self,
        buf: &[u8],
        event: &Event<'_>,
        fid: Fid<'_>,
        out: &mut Vec<RecordBody>,
    ) {
        key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
        if event.mask & mask::DELETE_SELF != 0 {
            // The last name went away through a DELETE or a rename over it,
            // and that event names the path. Known names get a record too,
            // so that a rename victim is reported as replaced.
            if !self.batch_names_loaded && self.names.get(&self.key).is_empty() {
                self.load_batch_names(buf);
                key_into(&mut self.key, fid.fsid, fid.handle_type, fid.handle);
            }
            let key = std::mem::take(&mut self.key);
            let names = self.names.take(&key);
            self.key = key;
            if names.is_empty() && event.mask & mask::ONDIR == 0 {
                // No name known even after reading this batch: an unlink
                // would have named it (DELETE carries the object), so this is
                // most likely the victim of a rename over a file the daemon
                // never saw. Every recent rename target is reported as
                // replaced: a false positive for the others, never a miss.
                self.mark_recent_targets_replaced(fid, out);
                return;
            }
            for path in names {
                // An ordinary unlink's DELETE event already named the path;
                // only a name that was the target of a recent rename lost
                // its object without a DELETE of its own.
                if !self.recent_targets.iter().any(|(_, t)| *t == path)
                    || !self.in_roots(&path)
                    || self.excluded(&path)
                {
                    continue;
                }
                let changes = Changes::DELETED | Changes::REPLACED;
                self.push_named(
                    out,
                    path,
                    changes,
                    ObjectKind::Unknown,
                    0,
                    fid.fsid,
                    fid_handle(&fid),
                );
            }
            return;
        }
        if event.mask & (mask::ATTRIB | mask::MODIFY) == 0 {
            return; // MOVE_SELF alone: the RENAME event carries the paths.
        }
        let Some(mount) = self.mount_fd(&fid) else {
            return;
        };
        let fd = match self.fs.open_by_handle(mount, fid.handle_type, fid.handle) {
            Ok(fd) => fd,
            Err(_) => return, // gone since: its DELETE names it
        };
        let Ok(Some(st)) = self.fs.stat_fd(fd.as_raw_fd()) else {
            return;
        };
        if st.nlink == 0 {
            return;
        }
        // The descriptor's own path is one name, if the dentry is connected.
        let own = self
            .fs
            .fd_path(fd.as_raw_fd())
            .ok()
            .flatten()
            .filter(|p| p.as_slice() != b"/" && self.in_roots(p))
            .filter(|p| name_is(self.fs.as_ref(), p, &fid));
        let changes = changes_of(event.mask) | Changes::ATTRIB;
        match own {
            Some(p) => {
                self.push_named(
                    out,
                    p.clone(),
                    changes,
                    st.kind,
                    EVENT_FLAG_VERIFIED_PRESENT | EVENT_FLAG_VERIFIED_SAME,
                    fid.fsid,
                    fid_handle(&fid),
                );
                self.aliases(buf, fid, &p, (st.nlink, st.ino), changes, out);
            }
            None => self.aliases(buf, fid, &[], (st.nlink, st.ino), changes, out),
        }
    }
}

/// True if `path` names the object `fid` right now (no symlink followed).
/// `path` itself if it fits in `max` bytes, else its nearest ancestor
/// that does (`None` only for a path with no slash in reach).
fn nearest_ancestor_within(path: &[u8], max: usize) -> Option<Vec<u8>> {
    if path.len() <= max {
        return Some(path.to_vec());
    }
    let cut = path[..=max].iter().rposition(|&b| b == b'/')?;
    Some(if cut == 0 {
        b"/".to_vec()
    } else {
        path[..cut].to_vec()
    })
}

fn name_is(fs: &dyn fs::Fs, path: &[u8], fid: &Fid<'_>) -> bool {
    let Some((parent, name)) = sys::split_parent(path) else {
        return false;
    };
    let Ok(dir) = fs.open_dir(parent) else {
        return false;
    };
    matches!(
        fs.handle_at(dir.as_raw_fd(), name),
        Ok(Some(h)) if h.handle_type == fid.handle_type && h.bytes == fid.handle
    )
}

fn fid_from(h: &FileHandle) -> FileHandle {
    h.clone()
}

use cj_types::sys::now_ns;

#[cfg(test)]
mod tests;
