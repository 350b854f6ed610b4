//! The records that close a gap: the differences between a baseline and
//! the tree now (a walk's [`diff`], or a refresh's [`diff_transitions`]),
//! with what the journal says about the same paths ([`Touched`]).

use std::borrow::Cow;
use std::collections::HashSet;

use cj_types::{Changes, EventRecord, ObjectKind, RecordBody};

use crate::entries::Entries;
use crate::refresh::Transitions;
use crate::snapshot::Snapshot;
use cj_types::path::is_at_or_below;
use cj_types::Stat;

/// What the journal last saw at a path it names between a baseline and a
/// gap (renames followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Deleted or renamed away.
    Gone,
    /// There, of this kind, with the stat normalisation took after the
    /// event when the record carries one.
    Present(ObjectKind, Option<Stat>),
}

/// What the journal says about the paths below a root between a baseline
/// and a gap.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub seen: std::collections::HashMap<Vec<u8>, Seen>,
    /// The journal's last view of each path stands for its state when the
    /// gap began: every gap in the range is one where the daemon was not
    /// running, so every stat journaled before it was taken before it
    /// (design 11.7). Then a path whose current state equals what the
    /// journal last saw did not change during the gap, and one the journal
    /// saw removed was already gone: neither is reported again.
    pub exact: bool,
    /// The seq of the newest gap or unknown-path record in the range that
    /// concerns the root: the id the records of this reconciliation carry.
    pub gap_seq: u64,
    /// Directories whose whole subtree is reported (a record that covers
    /// it), because the journal named more than the fold follows
    /// (issue 9, defect 6): the destinations of directory renames past
    /// `RENAMES_FOLLOWED_MAX`, or the root itself past `TOUCHED_PATHS_MAX`.
    /// False positives, never a gap left open.
    pub cover: Vec<Vec<u8>>,
}

impl Touched {
    /// Paths only, as the journal last saw them existing, not exact.
    pub fn present<I: IntoIterator<Item = (Vec<u8>, ObjectKind)>>(paths: I) -> Touched {
        Touched {
            seen: paths
                .into_iter()
                .map(|(p, k)| (p, Seen::Present(k, None)))
                .collect(),
            exact: false,
            gap_seq: 0,
            cover: Vec::new(),
        }
    }

    /// The baseline's view of `path` (`was`), replaced by the journal's
    /// when that is exact and known.
    fn was(&self, path: &[u8], was: Option<Stat>) -> Option<Stat> {
        if !self.exact {
            return was;
        }
        match self.seen.get(path) {
            Some(Seen::Gone) => None,
            Some(Seen::Present(_, Some(s))) => Some(*s),
            _ => was,
        }
    }

    /// Paths the journal last saw existing, with their kind.
    fn present_paths(&self) -> impl Iterator<Item = (&Vec<u8>, ObjectKind)> {
        self.seen.iter().filter_map(|(p, s)| match s {
            Seen::Present(k, _) => Some((p, *k)),
            Seen::Gone => None,
        })
    }
}

/// One difference found, with the stats it was found from.
struct Found<'a> {
    path: Cow<'a, [u8]>,
    changes: Changes,
    kind: ObjectKind,
    was: Option<Stat>,
    now: Option<Stat>,
}

impl<'a> Found<'a> {
    /// The difference at `path` between what was there (the baseline's
    /// stat, or the journal's when its view is exact) and `now`, if any.
    fn between(
        path: &'a [u8],
        was: Option<Stat>,
        now: Option<Stat>,
        touched: &Touched,
    ) -> Option<Found<'a>> {
        let was = touched.was(path, was);
        let (changes, kind) = classify(was.as_ref(), now.as_ref())?;
        Some(Found {
            path: Cow::Borrowed(path),
            changes,
            kind,
            was,
            now,
        })
    }

    fn into_owned(self) -> Found<'static> {
        Found {
            path: Cow::Owned(self.path.into_owned()),
            ..self
        }
    }

    /// A path the journal saw existing that neither side holds: it was
    /// created after the baseline and removed during the gap. `kind` is what
    /// the journal last saw there (a directory's record covers its subtree).
    fn vanished(path: &'a [u8], kind: ObjectKind) -> Found<'a> {
        Found {
            path: Cow::Borrowed(path),
            changes: Changes::DELETED,
            kind,
            was: None,
            now: None,
        }
    }
}

/// Turns differences into records. A path that vanished and another that
/// appeared with the same inode (the only name of it on both sides, same
/// type) become one rename record, carrying `modified`/`attrib` when the
/// inode changed too; everything else is created/deleted/modified/attrib.
fn records(found: Vec<Found<'_>>, fsid: u64, gap_seq: u64) -> Vec<RecordBody> {
    use std::collections::HashMap;
    let single =
        |s: &Option<Stat>| s.is_some_and(|s| s.nlink <= 1 || s.mode & 0o170000 == 0o040000);
    let mut gone: HashMap<u64, Option<usize>> = HashMap::new();
    let mut came: HashMap<u64, Option<usize>> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        let table = if f.changes == Changes::DELETED && single(&f.was) {
            f.was.map(|s| (&mut gone, s.ino))
        } else if f.changes == Changes::CREATED && single(&f.now) {
            f.now.map(|s| (&mut came, s.ino))
        } else {
            None
        };
        if let Some((t, ino)) = table {
            // Two candidates for one inode: ambiguous, no pairing.
            t.entry(ino).and_modify(|v| *v = None).or_insert(Some(i));
        }
    }
    let mut pair_of: HashMap<usize, usize> = HashMap::new();
    let mut paired: HashSet<usize> = HashSet::new();
    for (ino, g) in &gone {
        if let (Some(g), Some(Some(c))) = (g, came.get(ino)) {
            let (w, n) = (found[*g].was, found[*c].now);
            if let (Some(w), Some(n)) = (w, n) {
                if (w.mode ^ n.mode) & 0o170000 == 0 {
                    pair_of.insert(*c, *g);
                    paired.insert(*g);
                }
            }
        }
    }
    // Directory renames, new path -> old path: an entry that moved along
    // with its directory, unchanged, is implied by the directory's record
    // (which covers its subtree) and not listed.
    let dir_moves: HashMap<&[u8], &[u8]> = pair_of
        .iter()
        .filter(|(c, _)| found[**c].kind == ObjectKind::Dir)
        .map(|(c, g)| (&*found[*c].path, &*found[*g].path))
        .collect();
    let implied = |from: &[u8], to: &[u8]| {
        let mut at = to.len();
        while let Some(cut) = to[..at].iter().rposition(|&b| b == b'/') {
            at = cut;
            if let Some(old_dir) = dir_moves.get(&to[..at]) {
                let rest = &to[at..];
                return from.len() == old_dir.len() + rest.len()
                    && from.starts_with(old_dir)
                    && from.ends_with(rest);
            }
        }
        false
    };
    let mut out = Vec::with_capacity(found.len());
    for (i, f) in found.iter().enumerate() {
        if paired.contains(&i) {
            continue; // emitted with its new name
        }
        if let Some(&g) = pair_of.get(&i) {
            let from = &found[g];
            if from.was == f.now && implied(&from.path, &f.path) {
                continue;
            }
            let (w, n) = (from.was.unwrap_or_default(), f.now.unwrap_or_default());
            let mut c = Changes::RENAMED_FROM | Changes::RENAMED_TO;
            if w.size != n.size || w.mtime_ns != n.mtime_ns {
                c |= Changes::MODIFIED;
            }
            if w.mode != n.mode || w.uid != n.uid || w.gid != n.gid || w.nlink != n.nlink {
                c |= Changes::ATTRIB;
            }
            let mut r = record(&f.path, c, f.kind, fsid, gap_seq);
            if let RecordBody::Event(e) = &mut r {
                e.old_path = from.path.to_vec();
            }
            out.push(r);
        } else {
            out.push(record(&f.path, f.changes, f.kind, fsid, gap_seq));
        }
    }
    out
}

fn record(path: &[u8], changes: Changes, kind: ObjectKind, fsid: u64, gap_seq: u64) -> RecordBody {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
    RecordBody::Event(EventRecord {
        changes: changes | Changes::RECONCILED,
        kind,
        fsid,
        name,
        path: path.to_vec(),
        gap_seq,
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
pub fn diff(old: &Snapshot, new: &Snapshot, touched: &Touched, fsid: u64) -> Vec<RecordBody> {
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
        // Copied now, while the entry's page is mapped: reading it again
        // later would map it again (and the pages around it).
        out.extend(Found::between(path, was, now, touched).map(Found::into_owned));
    }
    for (path, kind) in touched.present_paths() {
        if !new.entries.contains_key(path) && !old.entries.contains_key(path) {
            out.push(Found::vanished(path, kind));
        }
    }
    let mut recs = records(out, fsid, touched.gap_seq);
    recs.extend(cover_records(touched, fsid));
    recs
}

/// [`diff`] of the subtree `scope` only (scoped catch-up, design 11.8):
/// `walked` is a walk of `scope` ([`crate::walk_scope`]); the baseline and
/// the journal's view are cut to `scope`. A rename across the edge of
/// `scope` shows as a creation or a deletion; a covered directory that
/// holds `scope` covers `scope`.
pub fn diff_scope(
    old: &Snapshot,
    walked: Entries,
    scope: &[u8],
    touched: &Touched,
    fsid: u64,
) -> Vec<RecordBody> {
    let inside = |p: &[u8]| is_at_or_below(p, scope);
    let mut hi = scope.to_vec();
    hi.push(0xff);
    let mut cut = Snapshot::new(scope.to_vec());
    cut.entries = Entries::from_sorted(
        old.entries
            .range(
                std::ops::Bound::Included(scope),
                std::ops::Bound::Included(&hi[..]),
            )
            .filter(|(p, _)| inside(p))
            .map(|(p, st)| (p.to_vec(), st))
            .collect(),
    );
    let mut now = Snapshot::new(scope.to_vec());
    now.entries = walked;
    let mut cover: Vec<Vec<u8>> = touched
        .cover
        .iter()
        .filter_map(|c| {
            if inside(c) {
                Some(c.clone())
            } else {
                is_at_or_below(scope, c).then(|| scope.to_vec())
            }
        })
        .collect();
    cover.sort();
    cover.dedup();
    let touched = Touched {
        seen: touched
            .seen
            .iter()
            .filter(|(p, _)| inside(p))
            .map(|(p, s)| (p.clone(), *s))
            .collect(),
        exact: touched.exact,
        gap_seq: touched.gap_seq,
        cover,
    };
    diff(&cut, &now, &touched, fsid)
}

/// One record per directory of `touched.cover`: created and deleted, kind
/// directory, so every answer spanning the gap covers its subtree.
fn cover_records(touched: &Touched, fsid: u64) -> impl Iterator<Item = RecordBody> + '_ {
    touched.cover.iter().map(move |path| {
        record(
            path,
            Changes::CREATED | Changes::DELETED,
            ObjectKind::Dir,
            fsid,
            touched.gap_seq,
        )
    })
}

/// Records for the transitions of a [`refresh`] of the baseline, which is
/// now `current`; `touched` as for [`diff`].
pub fn diff_transitions(
    transitions: &Transitions,
    current: &Snapshot,
    touched: &Touched,
    fsid: u64,
) -> Vec<RecordBody> {
    let mut out: Vec<Found<'_>> = Vec::new();
    for (path, (was, now)) in transitions {
        out.extend(Found::between(path, *was, *now, touched));
    }
    for (path, kind) in touched.present_paths() {
        let in_old = match transitions.get(path) {
            Some((was, _)) => was.is_some(),
            None => current.entries.contains_key(path),
        };
        if !in_old && !current.entries.contains_key(path) {
            out.push(Found::vanished(path, kind));
        }
    }
    let mut recs = records(out, fsid, touched.gap_seq);
    recs.extend(cover_records(touched, fsid));
    recs
}

/// What a quiet refresh journals (design 11.9) of a diff's records
/// ([`diff_transitions`] or [`diff`] against the journal's view): what left
/// without a record naming it (removed, replaced, or renamed away) and the
/// covers of directories whose contents nobody named. Not what appeared or
/// changed: a record named each of those already, or covers it.
pub fn refresh_records(records: Vec<RecordBody>) -> Vec<RecordBody> {
    records
        .into_iter()
        .filter(|r| {
            matches!(r, RecordBody::Event(e)
                if e.changes.intersects(Changes::DELETED | Changes::RENAMED_FROM))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refresh journals what left without a record naming it: not what a
    /// record named, not what moved with a renamed directory, not what
    /// appeared or changed; and what the journal saw appear that is gone.
    #[test]
    fn a_refresh_names_only_the_silent_removals() {
        use crate::fold::{Fold, Step};
        let p = |s: &str| s.as_bytes().to_vec();
        let dir = |ino| Stat {
            mode: 0o040755,
            ..st(ino, 1)
        };
        let mut base = Snapshot::new(p("/r"));
        for (path, stat) in [
            ("/r/g", dir(1)),
            ("/r/g/c", st(2, 1)),
            ("/r/g/named", st(3, 1)),
            ("/r/old", dir(4)),
            ("/r/old/x", st(5, 1)),
            ("/r/kept", st(6, 1)),
        ] {
            base.entries.insert(p(path), stat);
        }
        let ev = |path: &str, old: &str, changes: Changes, kind: ObjectKind, stat| EventRecord {
            changes,
            kind,
            path: p(path),
            old_path: p(old),
            stat,
            ..Default::default()
        };
        let renamed = Changes::RENAMED_FROM | Changes::RENAMED_TO;
        let journal = [
            ev("/r/g/named", "", Changes::DELETED, ObjectKind::File, None),
            ev("/r/new", "/r/old", renamed, ObjectKind::Dir, None),
            ev("/r/g", "", Changes::DELETED, ObjectKind::Dir, None),
            ev(
                "/r/h",
                "",
                Changes::CREATED,
                ObjectKind::File,
                Some(st(7, 1)),
            ),
            ev(
                "/r/kept",
                "",
                Changes::MODIFIED,
                ObjectKind::File,
                Some(st(6, 2)),
            ),
        ];
        let mut fold = Fold::new(b"/r", &base);
        for (i, e) in journal.into_iter().enumerate() {
            let r = cj_types::Record {
                seq: i as u64 + 1,
                time_ns: 0,
                body: RecordBody::Event(e),
            };
            fold.step(Step::Record(&r));
        }
        let touched = fold.finish().unwrap().touched;
        // What the refresh found (/r/h was removed after its record, its
        // removal folded).
        let mut t = Transitions::new();
        t.insert(p("/r/g"), (Some(dir(1)), None));
        t.insert(p("/r/g/c"), (Some(st(2, 1)), None));
        t.insert(p("/r/g/named"), (Some(st(3, 1)), None));
        t.insert(p("/r/old"), (Some(dir(4)), None));
        t.insert(p("/r/old/x"), (Some(st(5, 1)), None));
        t.insert(p("/r/new"), (None, Some(dir(4))));
        t.insert(p("/r/new/x"), (None, Some(st(5, 1))));
        t.insert(p("/r/kept"), (Some(st(6, 1)), Some(st(6, 2))));
        let mut now = Snapshot::new(p("/r"));
        now.entries.insert(p("/r/new"), dir(4));
        now.entries.insert(p("/r/new/x"), st(5, 1));
        now.entries.insert(p("/r/kept"), st(6, 2));
        let recs = refresh_records(diff_transitions(&t, &now, &touched, 7));
        let mut named: Vec<(String, Changes)> = recs
            .iter()
            .map(|r| match r {
                RecordBody::Event(e) => (String::from_utf8(e.path.clone()).unwrap(), e.changes),
                _ => panic!("not an event"),
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let deleted = Changes::DELETED | Changes::RECONCILED;
        assert_eq!(
            named,
            vec![
                ("/r/g/c".to_string(), deleted),
                ("/r/h".to_string(), deleted)
            ]
        );
    }

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
        let touched = Touched::present([
            (b"/r/born_and_gone".to_vec(), ObjectKind::Dir),
            (b"/r/new".to_vec(), ObjectKind::File),
        ]);
        let recs = diff(&old, &new, &touched, 7);
        // A vanished path keeps the kind the journal last saw there.
        assert!(recs.iter().any(|r| matches!(r,
            RecordBody::Event(e) if e.path == b"/r/born_and_gone" && e.kind == ObjectKind::Dir)));
        let mut got: Vec<(Vec<u8>, Changes)> = recs
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

    /// Model equivalence: every path inside the scope that the diff of the
    /// whole root names, the scoped diff names too, and nothing outside.
    #[test]
    fn a_scoped_diff_names_what_the_full_diff_names_inside_the_scope() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = [
            "/r", "/r/s", "/r/s/a", "/r/s/b", "/r/s/d", "/r/s/d/x", "/r/s-x", "/r/t", "/r/t/y",
        ];
        let dir = |ino| Stat {
            mode: 0o040755,
            ..st(ino, 1)
        };
        for round in 0..500 {
            let mut old = Snapshot::new(b"/r".to_vec());
            let mut new = Snapshot::new(b"/r".to_vec());
            for (i, n) in names.iter().enumerate() {
                let is_dir = matches!(*n, "/r" | "/r/s" | "/r/s/d" | "/r/t");
                let make = |ino: u64, c: i64| if is_dir { dir(ino) } else { st(ino, c) };
                if i == 0 || rnd(4) > 0 {
                    old.entries
                        .insert(n.as_bytes().to_vec(), make(i as u64 + 1, 1));
                }
                match rnd(4) {
                    0 if i > 0 => {}
                    1 => new
                        .entries
                        .insert(n.as_bytes().to_vec(), make(i as u64 + 1, 2)),
                    // A rename: another name's inode.
                    2 => new
                        .entries
                        .insert(n.as_bytes().to_vec(), make(rnd(9) + 1, 1)),
                    _ => new
                        .entries
                        .insert(n.as_bytes().to_vec(), make(i as u64 + 1, 1)),
                }
            }
            let mut touched = Touched::present([(b"/r/s/gone".to_vec(), ObjectKind::File)]);
            if round % 3 == 0 {
                touched.cover = vec![b"/r".to_vec()];
            }
            let scope = &b"/r/s"[..];
            let named = |recs: Vec<RecordBody>| -> std::collections::BTreeSet<Vec<u8>> {
                recs.into_iter()
                    .flat_map(|r| match r {
                        RecordBody::Event(e) => [e.path, e.old_path],
                        _ => unreachable!(),
                    })
                    .filter(|p| !p.is_empty())
                    .collect()
            };
            let full: std::collections::BTreeSet<Vec<u8>> = named(diff(&old, &new, &touched, 1))
                .into_iter()
                .filter(|p| is_at_or_below(p, scope))
                .collect();
            let walked = Entries::from_sorted(
                new.entries
                    .iter()
                    .filter(|(p, _)| is_at_or_below(p, scope))
                    .map(|(p, s)| (p.to_vec(), s))
                    .collect(),
            );
            let scoped = named(diff_scope(&old, walked, scope, &touched, 1));
            assert!(
                scoped.iter().all(|p| is_at_or_below(p, scope)),
                "round {round}: {scoped:?}"
            );
            assert!(
                full.is_subset(&scoped),
                "round {round}: {full:?} vs {scoped:?}"
            );
        }
    }

    #[test]
    fn a_moved_inode_becomes_one_rename_record() {
        let mut old = Snapshot::new(b"/r".to_vec());
        old.entries.insert(b"/r/a".to_vec(), st(7, 1));
        old.entries.insert(b"/r/x".to_vec(), st(8, 1));
        let mut new = Snapshot::new(b"/r".to_vec());
        let mut grown = st(7, 2);
        grown.size = 99;
        new.entries.insert(b"/r/b".to_vec(), grown);
        // Two new names for one old inode: ambiguous, left as they are.
        new.entries.insert(b"/r/y".to_vec(), st(8, 2));
        new.entries.insert(b"/r/z".to_vec(), st(8, 2));
        let recs = diff(&old, &new, &Touched::default(), 1);
        let events: Vec<&EventRecord> = recs
            .iter()
            .map(|r| match r {
                RecordBody::Event(e) => e,
                _ => unreachable!(),
            })
            .collect();
        let rename = events.iter().find(|e| e.path == b"/r/b").unwrap();
        assert_eq!(rename.old_path, b"/r/a");
        assert_eq!(
            rename.changes,
            Changes::RENAMED_FROM | Changes::RENAMED_TO | Changes::MODIFIED | Changes::RECONCILED
        );
        assert!(!events.iter().any(|e| e.path == b"/r/a"));
        assert_eq!(events.len(), 4, "{events:?}");
    }

    /// Past the fold's bounds (issue 9, defect 6) a covered directory gets
    /// a record whose kind and bits cover its subtree in every answer.
    #[test]
    fn covered_directories_get_a_subtree_record() {
        let old = Snapshot::new(b"/r".to_vec());
        let new = Snapshot::new(b"/r".to_vec());
        let t = Touched {
            cover: vec![b"/r".to_vec(), b"/r/moved".to_vec()],
            gap_seq: 7,
            ..Touched::default()
        };
        let recs = diff(&old, &new, &t, 1);
        let covered: Vec<_> = recs
            .iter()
            .filter_map(|r| match r {
                RecordBody::Event(e) => Some((e.path.clone(), e.kind, e.changes, e.gap_seq)),
                _ => None,
            })
            .collect();
        let bits = Changes::CREATED | Changes::DELETED | Changes::RECONCILED;
        assert_eq!(
            covered,
            vec![
                (b"/r".to_vec(), ObjectKind::Dir, bits, 7),
                (b"/r/moved".to_vec(), ObjectKind::Dir, bits, 7)
            ]
        );
    }

    #[test]
    fn entries_moved_with_their_directory_are_implied() {
        let dir = |ino| Stat {
            mode: 0o040755,
            ..st(ino, 1)
        };
        let mut old = Snapshot::new(b"/r".to_vec());
        old.entries.insert(b"/r/d".to_vec(), dir(10));
        old.entries.insert(b"/r/d/same".to_vec(), st(11, 1));
        old.entries.insert(b"/r/d/grew".to_vec(), st(12, 1));
        let mut new = Snapshot::new(b"/r".to_vec());
        new.entries.insert(b"/r/e".to_vec(), dir(10));
        new.entries.insert(b"/r/e/same".to_vec(), st(11, 1));
        let mut grew = st(12, 1);
        grew.size = 5;
        new.entries.insert(b"/r/e/grew".to_vec(), grew);
        let paths: Vec<(Vec<u8>, Vec<u8>)> = diff(&old, &new, &Touched::default(), 1)
            .into_iter()
            .map(|r| match r {
                RecordBody::Event(e) => (e.old_path, e.path),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            paths,
            vec![
                (b"/r/d".to_vec(), b"/r/e".to_vec()),
                (b"/r/d/grew".to_vec(), b"/r/e/grew".to_vec()),
            ]
        );
    }

    /// With an exact journal view, what the journal already holds is not
    /// reported again; what changed after it is. Without, the baseline
    /// decides (false positives, never misses).
    #[test]
    fn an_exact_journal_view_stands_for_the_state_at_the_gap() {
        let mut old = Snapshot::new(b"/r".to_vec());
        old.entries.insert(b"/r/a".to_vec(), st(1, 1));
        old.entries.insert(b"/r/b".to_vec(), st(2, 1));
        old.entries.insert(b"/r/c".to_vec(), st(3, 1));
        let mut new = Snapshot::new(b"/r".to_vec());
        new.entries.insert(b"/r/a".to_vec(), st(1, 2)); // journaled: st(1, 2)
        new.entries.insert(b"/r/c".to_vec(), st(3, 3)); // journaled st(3, 2), then the gap
        new.entries.insert(b"/r/d".to_vec(), st(4, 2)); // created, journaled
        new.entries.insert(b"/r/e".to_vec(), st(5, 3)); // created in the gap
        let seen = [
            (
                &b"/r/a"[..],
                Seen::Present(ObjectKind::File, Some(st(1, 2))),
            ),
            (b"/r/b", Seen::Gone),
            (b"/r/c", Seen::Present(ObjectKind::File, Some(st(3, 2)))),
            (b"/r/d", Seen::Present(ObjectKind::File, Some(st(4, 2)))),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_vec(), s))
        .collect();
        let paths = |exact| {
            let t = Touched {
                seen: Clone::clone(&seen),
                exact,
                gap_seq: 9,
                cover: Vec::new(),
            };
            let mut v: Vec<Vec<u8>> = diff(&old, &new, &t, 1)
                .into_iter()
                .filter_map(|r| match r {
                    // Every reconciled record names the gap it closes.
                    RecordBody::Event(e) if e.gap_seq == 9 => Some(e.path),
                    _ => None,
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(paths(true), vec![b"/r/c".to_vec(), b"/r/e".to_vec()]);
        assert_eq!(paths(false).len(), 5);
    }
}
