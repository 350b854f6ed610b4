//! Table tests of the journal fold: each case is a baseline, a list of
//! records and what the fold must conclude.

use super::*;
use cj_types::{EventRecord, GapRecord, MarkRecord, GAP_FLAG_QUIESCENT};

fn st(ino: u64) -> Stat {
    Stat {
        ino,
        mode: 0o100644,
        nlink: 1,
        ctime_ns: ino as i64,
        ..Default::default()
    }
}

fn dir_st(ino: u64) -> Stat {
    Stat {
        mode: 0o040755,
        ..st(ino)
    }
}

fn ev(path: &str, changes: Changes, kind: ObjectKind, stat: Option<Stat>) -> RecordBody {
    RecordBody::Event(EventRecord {
        changes,
        kind,
        path: path.as_bytes().to_vec(),
        stat,
        ..Default::default()
    })
}

fn created(path: &str, ino: u64) -> RecordBody {
    ev(path, Changes::CREATED, ObjectKind::File, Some(st(ino)))
}

fn deleted(path: &str) -> RecordBody {
    ev(path, Changes::DELETED, ObjectKind::File, None)
}

fn rename(from: &str, to: &str, kind: ObjectKind) -> RecordBody {
    RecordBody::Event(EventRecord {
        changes: Changes::RENAMED_FROM | Changes::RENAMED_TO,
        kind,
        path: to.as_bytes().to_vec(),
        old_path: from.as_bytes().to_vec(),
        ..Default::default()
    })
}

fn gap(reason: GapReason, flags: u8, scope: &str) -> RecordBody {
    RecordBody::Gap(GapRecord {
        reason,
        fsid: 0,
        scope: scope.as_bytes().to_vec(),
        start_time_ns: 0,
        flags,
        detail: Vec::new(),
    })
}

fn mark() -> RecordBody {
    RecordBody::Mark(MarkRecord {
        drained_before_ns: 0,
    })
}

fn unknown() -> RecordBody {
    RecordBody::Event(EventRecord {
        flags: cj_types::EVENT_FLAG_PATH_UNKNOWN,
        ..Default::default()
    })
}

fn baseline(entries: &[(&str, Stat)]) -> Snapshot {
    let mut s = Snapshot::new(b"/r".to_vec());
    for (p, stat) in entries {
        s.entries.insert(p.as_bytes().to_vec(), *stat);
    }
    s
}

fn fold_with(
    base: &Snapshot,
    bodies: Vec<RecordBody>,
    bounds: Bounds,
) -> Result<Folded, FoldError> {
    let mut f = Fold::with_bounds(b"/r", base, bounds);
    for (i, body) in bodies.into_iter().enumerate() {
        let r = Record {
            seq: i as u64 + 1,
            time_ns: 0,
            body,
        };
        if !f.step(Step::Record(&r)) {
            break;
        }
    }
    f.finish()
}

fn fold(base: &Snapshot, bodies: Vec<RecordBody>) -> Folded {
    fold_with(base, bodies, Bounds::default()).unwrap()
}

fn seen(f: &Folded, path: &str) -> Option<Seen> {
    f.touched.seen.get(path.as_bytes()).copied()
}

fn present(stat: Option<Stat>) -> Option<Seen> {
    Some(Seen::Present(ObjectKind::File, stat))
}

#[test]
fn created_then_deleted_is_gone_and_outside_paths_are_ignored() {
    let f = fold(
        &baseline(&[]),
        vec![created("/r/a", 1), deleted("/r/a"), created("/x/a", 2)],
    );
    assert_eq!(seen(&f, "/r/a"), Some(Seen::Gone));
    assert_eq!(seen(&f, "/x/a"), None);
    assert!(f.touched.exact);
    assert_eq!(f.touched.gap_seq, 0);
}

#[test]
fn a_directory_rename_moves_journal_and_baseline_paths() {
    let base = baseline(&[("/r/d", dir_st(1)), ("/r/d/f", st(2)), ("/r/d.x", st(3))]);
    let f = fold(
        &base,
        vec![
            created("/r/d/g", 4),
            rename("/r/d", "/r/e", ObjectKind::Dir),
        ],
    );
    for gone in ["/r/d", "/r/d/f", "/r/d/g"] {
        assert_eq!(seen(&f, gone), Some(Seen::Gone), "{gone}");
    }
    // The rename record's own view of the new name wins (it carries the
    // stat normalisation took there; none here).
    assert_eq!(seen(&f, "/r/e"), Some(Seen::Present(ObjectKind::Dir, None)));
    assert_eq!(seen(&f, "/r/e/f"), present(Some(st(2))));
    assert_eq!(seen(&f, "/r/e/g"), present(Some(st(4))));
    // A sibling that only shares the prefix does not move.
    assert_eq!(seen(&f, "/r/e.x"), None);
    assert_eq!(seen(&f, "/r/d.x"), None);
}

#[test]
fn a_file_rename_moves_only_the_file() {
    let base = baseline(&[("/r/a", st(1)), ("/r/a/b", st(2))]);
    let f = fold(&base, vec![rename("/r/a", "/r/b", ObjectKind::File)]);
    assert_eq!(seen(&f, "/r/a"), Some(Seen::Gone));
    assert_eq!(seen(&f, "/r/b"), present(None));
    assert_eq!(seen(&f, "/r/b/b"), None);
    assert_eq!(seen(&f, "/r/a/b"), None);
}

#[test]
fn stats_after_the_newest_mark_fall_back_at_an_unclean_stop() {
    let f = fold(
        &baseline(&[]),
        vec![
            created("/r/a", 1),
            mark(),
            created("/r/b", 2),
            gap(GapReason::UncleanStop, 0, ""),
            created("/r/c", 3),
        ],
    );
    assert_eq!(seen(&f, "/r/a"), present(Some(st(1))));
    assert_eq!(seen(&f, "/r/b"), present(None));
    // After the gap: in the range of every client before it.
    assert_eq!(seen(&f, "/r/c"), present(Some(st(3))));
    assert!(f.touched.exact);
    assert_eq!(f.touched.gap_seq, 4);
}

#[test]
fn a_quiescent_stop_keeps_every_stat() {
    let f = fold(
        &baseline(&[]),
        vec![
            created("/r/b", 2),
            gap(GapReason::DaemonDown, GAP_FLAG_QUIESCENT, ""),
        ],
    );
    assert_eq!(seen(&f, "/r/b"), present(Some(st(2))));
    assert!(f.touched.exact);
}

#[test]
fn other_gaps_and_unknown_paths_make_the_view_inexact() {
    for (body, forced) in [
        (gap(GapReason::Unmounted, 0, "/r"), None),
        (
            gap(GapReason::ClockStep, 0, ""),
            Some("the clock was set since the baseline"),
        ),
        (
            gap(GapReason::FsChanged, 0, "/r"),
            Some("the filesystem changed identity"),
        ),
        (unknown(), None),
    ] {
        let f = fold(&baseline(&[]), vec![created("/r/a", 1), body]);
        assert!(!f.touched.exact);
        assert_eq!(f.touched.gap_seq, 2);
        assert_eq!(f.forced_walk, forced);
    }
}

#[test]
fn a_gap_of_another_root_is_not_this_roots_gap() {
    let f = fold(&baseline(&[]), vec![gap(GapReason::Unmounted, 0, "/other")]);
    assert_eq!(f.touched.gap_seq, 0);
}

#[test]
fn past_the_rename_bound_renamed_directories_are_covered() {
    let bounds = Bounds {
        dir_renames: 1,
        ..Bounds::default()
    };
    let f = fold_with(
        &baseline(&[]),
        vec![
            rename("/r/a", "/r/b", ObjectKind::Dir),
            rename("/r/c", "/r/d", ObjectKind::Dir),
            rename("/r/x", "/r/y", ObjectKind::File),
        ],
        bounds,
    )
    .unwrap();
    assert_eq!(f.touched.cover, vec![b"/r/d".to_vec()]);
    assert!(!f.too_many);
    // File renames are always followed.
    assert_eq!(seen(&f, "/r/x"), Some(Seen::Gone));
}

#[test]
fn past_every_bound_the_root_is_covered_and_the_gap_still_named() {
    let bounds = Bounds {
        dir_renames: 0,
        covered: 0,
        ..Bounds::default()
    };
    let f = fold_with(
        &baseline(&[]),
        vec![
            rename("/r/a", "/r/b", ObjectKind::Dir),
            created("/r/z", 1),
            gap(GapReason::UncleanStop, 0, ""),
        ],
        bounds,
    )
    .unwrap();
    assert!(f.too_many);
    assert_eq!(f.touched.cover, vec![b"/r".to_vec()]);
    assert!(f.touched.seen.is_empty());
    assert!(!f.touched.exact);
    assert_eq!(f.touched.gap_seq, 3);
    assert!(f.forced_walk.is_some());
    let f = fold_with(
        &baseline(&[]),
        vec![created("/r/a", 1), created("/r/b", 2)],
        Bounds {
            paths: 1,
            ..Bounds::default()
        },
    )
    .unwrap();
    assert!(f.too_many);
}

#[test]
fn damage_leaves_the_gap_open() {
    let base = baseline(&[]);
    let mut f = Fold::new(b"/r", &base);
    assert!(!f.step(Step::Damaged));
    assert_eq!(f.finish().err(), Some(FoldError::Damaged));
}

/// A directory moved in from outside is covered once something may have
/// left it without a record naming it: a removal or a rename away at or
/// below it, or a gap; followed through renames within the root; what
/// moves out of one is one too. Left alone, it is not covered: its
/// contents now include what it held (design 11.9).
#[test]
fn directories_moved_in_from_outside_are_covered_once_something_left_them() {
    let dir = ObjectKind::Dir;
    let base = baseline(&[]);
    let cover = |bodies: Vec<RecordBody>| {
        let mut c = fold(&base, bodies).touched.cover;
        c.sort();
        c.into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
    };
    // Left alone, or only added to.
    assert!(cover(vec![rename("/x/in", "/r/in", dir), created("/r/in/new", 5)]).is_empty());
    // Something removed below it, even after it was renamed.
    assert_eq!(
        cover(vec![
            rename("/x/in", "/r/in", dir),
            rename("/r/in", "/r/in2", dir),
            ev("/r/in2/sub", Changes::DELETED, dir, None),
        ]),
        vec!["/r/in2"]
    );
    // Itself deleted; from an unknown place (no old path).
    assert_eq!(
        cover(vec![
            rename("", "/r/u", dir),
            ev("/r/u", Changes::DELETED, dir, None),
        ]),
        vec!["/r/u"]
    );
    // Something renamed out of it: both it and what moved out.
    assert_eq!(
        cover(vec![
            rename("/x/in", "/r/in", dir),
            rename("/r/in/d", "/r/d", dir),
        ]),
        vec!["/r/in"]
    );
    assert_eq!(
        cover(vec![
            rename("/x/in", "/r/in", dir),
            rename("/r/in/d", "/r/d", dir),
            deleted("/r/d/f"),
        ]),
        vec!["/r/d", "/r/in"]
    );
    // A gap of this root after it moved in; not one of another root.
    assert_eq!(
        cover(vec![
            rename("/x/in", "/r/in", dir),
            gap(GapReason::DaemonDown, 0, ""),
        ]),
        vec!["/r/in"]
    );
    assert!(cover(vec![
        rename("/x/in", "/r/in", dir),
        gap(GapReason::QueueOverflow, 0, "/other"),
    ])
    .is_empty());
    // A file moved in is not a directory's contents; entry events (one
    // side) add nothing.
    assert!(cover(vec![
        rename("/x/f", "/r/f", ObjectKind::File),
        deleted("/r/f"),
        ev("/r/g", Changes::RENAMED_TO, dir, None),
        ev("/r/g", Changes::DELETED, dir, None),
    ])
    .is_empty());
}
