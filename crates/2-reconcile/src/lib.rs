//! Reconciliation: finding exactly what changed while history had a gap.
//!
//! The generic method works on every filesystem: a walk of the tracked tree
//! (directory descriptors, `statx` relative to them, no symlink ever
//! followed) is compared with the [`Snapshot`] taken by the previous walk.
//! Every difference becomes an ordinary journal record marked `reconciled`.
//!
//! Why a difference is never missed: every change to an entry moves its
//! ctime (which user space cannot set), and a snapshot records the ctime it
//! saw with `statx`, after which the kernel gives the next change a distinct
//! timestamp (multigrain timestamps). So an entry that changed after the
//! snapshot's walk differs in ctime, inode, type or presence. The service
//! uses a snapshot only as the baseline for gaps that began after its walk
//! ended (`docs/design.md`, "Reconciliation").

mod snapshot;
mod walk;

pub use snapshot::{Snapshot, SnapshotError, Stat};
pub use walk::{walk, WalkError, WalkProgress};

use cj_types::{Changes, EventRecord, ObjectKind, RecordBody};

/// Records for every difference between a baseline and a fresh walk.
///
/// `touched`: every path the journal names between the baseline's walk and
/// the gap. A path created after the baseline and removed during the gap is
/// in neither snapshot; it is reported deleted because the journal saw it.
pub fn diff(
    old: &Snapshot,
    new: &Snapshot,
    touched: &std::collections::HashSet<Vec<u8>>,
    fsid: u64,
) -> Vec<RecordBody> {
    let mut out = Vec::new();
    let record = |path: &[u8], changes: Changes, kind: ObjectKind| {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
        RecordBody::Event(EventRecord {
            changes: changes | Changes::RECONCILED,
            kind,
            fsid,
            name,
            path: path.to_vec(),
            ..Default::default()
        })
    };
    for (path, now) in &new.entries {
        let kind = ObjectKind::from_mode(now.mode);
        match old.entries.get(path) {
            None => out.push(record(path, Changes::CREATED, kind)),
            Some(was) if was.ino != now.ino || (was.mode ^ now.mode) & 0o170000 != 0 => {
                out.push(record(
                    path,
                    Changes::DELETED | Changes::CREATED | Changes::REPLACED,
                    kind,
                ))
            }
            Some(was) => {
                let mut c = Changes::default();
                if was.size != now.size || was.mtime_ns != now.mtime_ns {
                    c |= Changes::MODIFIED;
                }
                if was.ctime_ns != now.ctime_ns
                    || was.mode != now.mode
                    || was.uid != now.uid
                    || was.gid != now.gid
                    || was.nlink != now.nlink
                {
                    c |= Changes::ATTRIB;
                }
                if !c.is_empty() {
                    out.push(record(path, c, kind));
                }
            }
        }
    }
    for (path, was) in &old.entries {
        if !new.entries.contains_key(path) {
            out.push(record(
                path,
                Changes::DELETED,
                ObjectKind::from_mode(was.mode),
            ));
        }
    }
    for path in touched {
        if !new.entries.contains_key(path) && !old.entries.contains_key(path) {
            out.push(record(path, Changes::DELETED, ObjectKind::Unknown));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64, ctime: i64) -> Stat {
        Stat {
            ino,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 1,
            mtime_ns: 1,
            ctime_ns: ctime,
        }
    }

    #[test]
    fn diff_finds_every_kind_of_difference() {
        let mut old = Snapshot::new(b"/r".to_vec());
        old.entries.insert(b"/r/same".to_vec(), st(1, 1));
        old.entries.insert(b"/r/gone".to_vec(), st(2, 1));
        old.entries.insert(b"/r/touched".to_vec(), st(3, 1));
        old.entries.insert(b"/r/replaced".to_vec(), st(4, 1));
        let mut new = Snapshot::new(b"/r".to_vec());
        new.entries.insert(b"/r/same".to_vec(), st(1, 1));
        new.entries.insert(b"/r/touched".to_vec(), st(3, 2));
        new.entries.insert(b"/r/replaced".to_vec(), st(9, 1));
        new.entries.insert(b"/r/new".to_vec(), st(5, 1));
        let touched: std::collections::HashSet<Vec<u8>> =
            [b"/r/born_and_gone".to_vec(), b"/r/new".to_vec()]
                .into_iter()
                .collect();
        let mut got: Vec<(Vec<u8>, Changes)> = diff(&old, &new, &touched, 7)
            .into_iter()
            .map(|r| match r {
                RecordBody::Event(e) => (e.path, e.changes),
                _ => unreachable!(),
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let r = Changes::RECONCILED;
        assert_eq!(
            got,
            vec![
                (b"/r/born_and_gone".to_vec(), Changes::DELETED | r),
                (b"/r/gone".to_vec(), Changes::DELETED | r),
                (b"/r/new".to_vec(), Changes::CREATED | r),
                (
                    b"/r/replaced".to_vec(),
                    Changes::DELETED | Changes::CREATED | Changes::REPLACED | r
                ),
                (b"/r/touched".to_vec(), Changes::ATTRIB | r),
            ]
        );
    }
}
