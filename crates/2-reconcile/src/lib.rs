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

mod entries;
pub mod fast;
mod pwalk;
mod refresh;
mod snapshot;
mod walk;

pub use entries::{Entries, Range};
pub use pwalk::{walk, WALK_THREADS};
pub use refresh::{refresh, Transitions};
pub use snapshot::{Snapshot, SnapshotError, Stat};
pub use walk::{open_root, walk_sequential, WalkError, WalkProgress};

use std::collections::HashSet;

use cj_types::{Changes, EventRecord, ObjectKind, RecordBody};

fn record(path: &[u8], changes: Changes, kind: ObjectKind, fsid: u64) -> RecordBody {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
    RecordBody::Event(EventRecord {
        changes: changes | Changes::RECONCILED,
        kind,
        fsid,
        name,
        path: path.to_vec(),
        ..Default::default()
    })
}

/// What changed between two stats of one path (`None`: absent).
fn classify(was: Option<&Stat>, now: Option<&Stat>) -> Option<(Changes, ObjectKind)> {
    match (was, now) {
        (None, None) => None,
        (None, Some(n)) => Some((Changes::CREATED, ObjectKind::from_mode(n.mode))),
        (Some(w), None) => Some((Changes::DELETED, ObjectKind::from_mode(w.mode))),
        (Some(w), Some(n)) if w.ino != n.ino || (w.mode ^ n.mode) & 0o170000 != 0 => Some((
            Changes::DELETED | Changes::CREATED | Changes::REPLACED,
            ObjectKind::from_mode(n.mode),
        )),
        (Some(w), Some(n)) => {
            let mut c = Changes::default();
            if w.size != n.size || w.mtime_ns != n.mtime_ns {
                c |= Changes::MODIFIED;
            }
            if w.ctime_ns != n.ctime_ns
                || w.mode != n.mode
                || w.uid != n.uid
                || w.gid != n.gid
                || w.nlink != n.nlink
            {
                c |= Changes::ATTRIB;
            }
            (!c.is_empty()).then_some((c, ObjectKind::from_mode(n.mode)))
        }
    }
}

/// Records for every difference between a baseline and a fresh walk.
///
/// `touched`: every path the journal names between the baseline's walk and
/// the gap. A path created after the baseline and removed during the gap is
/// in neither snapshot; it is reported deleted because the journal saw it.
pub fn diff(
    old: &Snapshot,
    new: &Snapshot,
    touched: &HashSet<Vec<u8>>,
    fsid: u64,
) -> Vec<RecordBody> {
    let mut out = Vec::new();
    // Both maps are sorted: one merge pass.
    let mut a = old.entries.iter().peekable();
    let mut b = new.entries.iter().peekable();
    loop {
        let (path, was, now) = match (a.peek().copied(), b.peek().copied()) {
            (None, None) => break,
            (Some((p, w)), None) => {
                a.next();
                (p, Some(w), None)
            }
            (None, Some((p, n))) => {
                b.next();
                (p, None, Some(n))
            }
            (Some((pa, w)), Some((pb, n))) => match pa.cmp(pb) {
                std::cmp::Ordering::Less => {
                    a.next();
                    (pa, Some(w), None)
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                    (pb, None, Some(n))
                }
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next();
                    (pa, Some(w), Some(n))
                }
            },
        };
        if let Some((c, k)) = classify(was.as_ref(), now.as_ref()) {
            out.push(record(path, c, k, fsid));
        }
    }
    for path in touched {
        if !new.entries.contains_key(path) && !old.entries.contains_key(path) {
            out.push(record(path, Changes::DELETED, ObjectKind::Unknown, fsid));
        }
    }
    out
}

/// Records for the transitions of a [`refresh`] of the baseline, which is
/// now `current`; `touched` as for [`diff`].
pub fn diff_transitions(
    transitions: &Transitions,
    current: &Snapshot,
    touched: &HashSet<Vec<u8>>,
    fsid: u64,
) -> Vec<RecordBody> {
    let mut out = Vec::new();
    for (path, (was, now)) in transitions {
        if let Some((c, k)) = classify(was.as_ref(), now.as_ref()) {
            out.push(record(path, c, k, fsid));
        }
    }
    for path in touched {
        let in_old = match transitions.get(path) {
            Some((was, _)) => was.is_some(),
            None => current.entries.contains_key(path),
        };
        if !in_old && !current.entries.contains_key(path) {
            out.push(record(path, Changes::DELETED, ObjectKind::Unknown, fsid));
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
