//! The journal fold: what the journal says about the paths below a root
//! between a baseline and a gap (design 11, step 3, and 11.7).
//!
//! A pure function of the records, in journal order: no I/O, so every rule
//! is table-tested (below). The reconciler feeds it what a reader scans.
//!
//! Per path it keeps what the last record saw there: gone (deleted or
//! renamed away) or present, with the stat normalisation took. Renames are
//! followed: a path below a renamed directory (named by the journal or
//! present in the baseline) also counts under its new name, which is where
//! it was when the gap began. The view is `exact` unless the range holds a
//! gap other than a start or an overflow, or an unknown path; at a start or
//! an overflow that was not a quiescent stop, paths last set by records
//! after the newest drain mark lose their stat.
//!
//! Directories moved into the root from outside it (or from a place the
//! record could not name) are followed too: the journal never named what
//! they held. One of them from which something may have left without a
//! record naming it (a removal or a rename away at or below it, or a gap,
//! after it moved in) is covered whole (`Touched::cover`, design 11.9):
//! what it held then is known to nobody.
//!
//! Bounded (issue 9, defect 6) but never stuck: past `RENAMES_FOLLOWED_MAX`
//! directory renames or `RENAME_MOVES_MAX` moved entries, renamed
//! directories are covered whole (`Touched::cover`); past
//! `COVERED_DIRS_MAX` of those or `TOUCHED_PATHS_MAX` paths, the view is
//! dropped and the root itself is covered.

use std::collections::BTreeMap;

use cj_types::path::{is_at_or_below, overlaps};
use cj_types::{Changes, GapReason, ObjectKind, Record, RecordBody, Stat};

use crate::diff::{Seen, Touched};
use crate::snapshot::Snapshot;

/// Distinct paths the fold keeps for one reconciliation.
pub const TOUCHED_PATHS_MAX: usize = 4_000_000;
/// Directory renames followed for one reconciliation (each costs a range
/// of the fold and of the baseline). Renames of other objects cost one
/// lookup and are always followed.
pub const RENAMES_FOLLOWED_MAX: usize = 100_000;
/// Entries moved by followed directory renames, in all.
pub const RENAME_MOVES_MAX: usize = 20_000_000;
/// Directories reported whole past the rename bounds; past it the root is.
pub const COVERED_DIRS_MAX: usize = 10_000;

/// The bounds of one fold (the constants above; tests shrink them).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub paths: usize,
    pub dir_renames: usize,
    pub moves: usize,
    pub covered: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            paths: TOUCHED_PATHS_MAX,
            dir_renames: RENAMES_FOLLOWED_MAX,
            moves: RENAME_MOVES_MAX,
            covered: COVERED_DIRS_MAX,
        }
    }
}

/// One step of a journal scan.
pub enum Step<'r> {
    Record(&'r Record),
    /// Records that exist but cannot be read.
    Damaged,
}

/// Why the fold cannot be used: the gap stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FoldError {
    Damaged,
}

impl std::fmt::Display for FoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoldError::Damaged => f.write_str(
                "the journal since the baseline is damaged; the next walk becomes the new baseline",
            ),
        }
    }
}

/// What the fold found: the journal's view, and, when the range says the
/// fast paths cannot be trusted, why.
pub struct Folded {
    pub touched: Touched,
    pub forced_walk: Option<&'static str>,
    /// The bounds were passed: the root is covered whole.
    pub too_many: bool,
    /// Directories moved in from outside the root in the range, where
    /// they are at its end: the journal never named what they held.
    pub moved_in: Vec<Vec<u8>>,
}

pub struct Fold<'b> {
    root: Vec<u8>,
    baseline: &'b Snapshot,
    bounds: Bounds,
    /// Ordered, so a directory rename moves a range, not a scan.
    seen: BTreeMap<Vec<u8>, Seen>,
    cover: Vec<Vec<u8>>,
    /// Directories moved in from outside, where they are now, and whether
    /// something may have left them since.
    foreign: Vec<(Vec<u8>, bool)>,
    /// Paths set by records after the newest drain mark so far.
    uncovered: Vec<Vec<u8>>,
    moves: usize,
    dir_renames: usize,
    exact: bool,
    gap_seq: u64,
    damaged: bool,
    too_many: bool,
    forced: Option<&'static str>,
}

impl<'b> Fold<'b> {
    pub fn new(root: &[u8], baseline: &'b Snapshot) -> Fold<'b> {
        Fold::with_bounds(root, baseline, Bounds::default())
    }

    pub fn with_bounds(root: &[u8], baseline: &'b Snapshot, bounds: Bounds) -> Fold<'b> {
        Fold {
            root: root.to_vec(),
            baseline,
            bounds,
            seen: BTreeMap::new(),
            cover: Vec::new(),
            foreign: Vec::new(),
            uncovered: Vec::new(),
            moves: 0,
            dir_renames: 0,
            exact: true,
            gap_seq: 0,
            damaged: false,
            too_many: false,
            forced: None,
        }
    }

    /// Takes one step; false once the rest of the range cannot matter
    /// (damage).
    pub fn step(&mut self, step: Step<'_>) -> bool {
        match step {
            Step::Damaged => self.damaged = true,
            Step::Record(r) if self.too_many => self.note_gap_seq(r),
            Step::Record(r) => match &r.body {
                RecordBody::Gap(g) => {
                    self.note_gap_seq(r);
                    self.gap(g.reason, g.flags);
                    // What left a directory moved in from outside during
                    // the gap is named by nothing.
                    if g.scope.is_empty() || overlaps(&self.root, &g.scope) {
                        for (_, left) in &mut self.foreign {
                            *left = true;
                        }
                    }
                }
                RecordBody::Mark(_) => self.uncovered.clear(),
                RecordBody::Event(e) => {
                    self.note_gap_seq(r);
                    if e.flags & cj_types::EVENT_FLAG_PATH_UNKNOWN != 0 {
                        self.exact = false;
                    }
                    self.event(e);
                }
                _ => {}
            },
        }
        if !self.too_many
            && (self.seen.len() > self.bounds.paths || self.uncovered.len() > self.bounds.paths)
        {
            self.give_up();
        }
        !self.damaged
    }

    /// The seq of the newest gap or unknown-path record concerning the root.
    fn note_gap_seq(&mut self, r: &Record) {
        let concerns = match &r.body {
            RecordBody::Gap(g) => g.scope.is_empty() || overlaps(&self.root, &g.scope),
            RecordBody::Event(e) => e.flags & cj_types::EVENT_FLAG_PATH_UNKNOWN != 0,
            _ => false,
        };
        if concerns {
            self.gap_seq = r.seq;
        }
    }

    fn gap(&mut self, reason: GapReason, flags: u8) {
        match reason {
            GapReason::ClockStep => self.forced = Some("the clock was set since the baseline"),
            GapReason::FsChanged => self.forced = Some("the filesystem changed identity"),
            _ => {}
        }
        // Where events were lost (design 11.7), a stat journaled after the
        // newest drain mark may include a change whose record is missing:
        // such paths fall back to the baseline. A quiescent clean stop
        // proved every stat older than itself. Other gaps: the baseline
        // alone.
        match reason {
            _ if flags & cj_types::GAP_FLAG_QUIESCENT != 0 => {}
            GapReason::DaemonDown
            | GapReason::NewBoot
            | GapReason::UncleanStop
            | GapReason::QueueOverflow => {
                for p in self.uncovered.drain(..) {
                    if let Some(Seen::Present(k, Some(_))) = self.seen.get(&p) {
                        let k = *k;
                        self.seen.insert(p, Seen::Present(k, None));
                    }
                }
            }
            _ => self.exact = false,
        }
    }

    fn event(&mut self, e: &cj_types::EventRecord) {
        let root = self.root.as_slice();
        let old_inside = !e.old_path.is_empty() && is_at_or_below(&e.old_path, root);
        let new_inside = !e.path.is_empty() && is_at_or_below(&e.path, root);
        self.follow_foreign(e, old_inside, new_inside);
        if old_inside && new_inside {
            self.rename(e);
            if self.too_many {
                return;
            }
        }
        if old_inside {
            self.seen.insert(e.old_path.clone(), Seen::Gone);
        }
        if new_inside {
            // Deleted or renamed away (a MOVED_FROM entry event names only
            // the old side).
            let gone = e
                .changes
                .intersects(Changes::DELETED | Changes::RENAMED_FROM)
                && !e
                    .changes
                    .intersects(Changes::CREATED | Changes::RENAMED_TO | Changes::REPLACED);
            let seen = if gone {
                Seen::Gone
            } else {
                Seen::Present(e.kind, e.stat)
            };
            if e.stat.is_some() {
                self.uncovered.push(e.path.clone());
            }
            self.seen.insert(e.path.clone(), seen);
        }
    }

    fn rename(&mut self, e: &cj_types::EventRecord) {
        let dir = matches!(e.kind, ObjectKind::Dir | ObjectKind::Unknown);
        if dir {
            self.dir_renames += 1;
        }
        let within = self.dir_renames <= self.bounds.dir_renames && self.moves <= self.bounds.moves;
        if !dir || within {
            let moved = follow_rename(&mut self.seen, self.baseline, &e.old_path, &e.path, dir);
            self.moves += moved.len();
            self.uncovered.extend(moved);
        } else if self.cover.len() < self.bounds.covered {
            self.cover.push(e.path.clone());
        } else {
            self.give_up();
        }
    }

    /// Keeps `foreign` up to date with one record: a directory rename
    /// from outside adds one; renames within move them (and what moves
    /// out of one is one too); what leaves one marks it.
    fn follow_foreign(&mut self, e: &cj_types::EventRecord, old_inside: bool, new_inside: bool) {
        let rename = e
            .changes
            .contains(Changes::RENAMED_FROM | Changes::RENAMED_TO);
        let dir = matches!(e.kind, ObjectKind::Dir | ObjectKind::Unknown);
        if rename && dir && new_inside && !old_inside {
            self.foreign.push((e.path.clone(), false));
        }
        let left = |p: &[u8], f: &[u8]| !p.is_empty() && is_at_or_below(p, f);
        // What leaves: a rename's old side (and what its new side replaced);
        // any other record's path when it was removed or renamed away.
        let leaves = if rename {
            e.changes.contains(Changes::REPLACED)
        } else {
            e.changes
                .intersects(Changes::DELETED | Changes::RENAMED_FROM | Changes::REPLACED)
        };
        let mut moved_out = Vec::new();
        for (f, dirty) in &mut self.foreign {
            if left(&e.old_path, f) || (leaves && left(&e.path, f)) {
                *dirty = true;
            }
            if rename && old_inside && new_inside {
                let old = e.old_path.as_slice();
                if is_at_or_below(f, old) {
                    let mut to = e.path.clone();
                    to.extend_from_slice(&f[old.len()..]);
                    *f = to;
                } else if is_at_or_below(old, f) && dir {
                    moved_out.push((e.path.clone(), false));
                }
            }
        }
        self.foreign.extend(moved_out);
        if self.foreign.len() > self.bounds.covered {
            self.give_up();
        }
    }

    /// Past the bounds: the view is dropped, the root is walked and
    /// compared with the baseline alone, and covered whole.
    fn give_up(&mut self) {
        self.too_many = true;
        self.seen.clear();
        self.uncovered.clear();
        self.cover.clear();
        self.foreign.clear();
    }

    pub fn finish(mut self) -> Result<Folded, FoldError> {
        if self.damaged {
            return Err(FoldError::Damaged);
        }
        let mut moved_in = Vec::new();
        for (f, left) in std::mem::take(&mut self.foreign) {
            moved_in.push(f.clone());
            if left && !self.too_many && !self.cover.contains(&f) {
                if self.cover.len() >= self.bounds.covered {
                    self.give_up();
                } else {
                    self.cover.push(f);
                }
            }
        }
        if self.too_many {
            return Ok(Folded {
                touched: Touched {
                    seen: Default::default(),
                    exact: false,
                    gap_seq: self.gap_seq,
                    cover: vec![self.root],
                },
                forced_walk: Some("the journal since the baseline is too large to follow"),
                too_many: true,
                moved_in: Vec::new(),
            });
        }
        Ok(Folded {
            touched: Touched {
                seen: self.seen.into_iter().collect(),
                exact: self.exact,
                gap_seq: self.gap_seq,
                cover: self.cover,
            },
            forced_walk: self.forced,
            too_many: false,
            moved_in,
        })
    }
}

/// Moves, in `seen`, every path at or below `from` (known to the journal or
/// present in the baseline) to the same path below `to`, keeping its state
/// (a baseline entry keeps its stat: a directory's rename changes only the
/// directory); the old paths are gone. Returns the new paths.
fn follow_rename(
    seen: &mut BTreeMap<Vec<u8>, Seen>,
    baseline: &Snapshot,
    from: &[u8],
    to: &[u8],
    dir: bool,
) -> Vec<Vec<u8>> {
    let baseline_seen = |st: Stat| Seen::Present(ObjectKind::from_mode(st.mode), Some(st));
    let mut moved: Vec<(Vec<u8>, Seen)> = Vec::new();
    if dir {
        // Everything at or below `from`: a range in both ordered sets
        // (paths continuing `from` with a byte below '/' are filtered).
        let mut hi = from.to_vec();
        hi.push(b'/' + 1);
        let range = (
            std::ops::Bound::Included(from),
            std::ops::Bound::Excluded(&hi[..]),
        );
        moved.extend(
            seen.range::<[u8], _>(range)
                .filter(|(p, _)| is_at_or_below(p, from))
                .map(|(p, s)| (p.clone(), *s)),
        );
        moved.extend(
            baseline
                .entries
                .range(range.0, range.1)
                .filter(|(p, _)| is_at_or_below(p, from) && !seen.contains_key(*p))
                .map(|(p, st)| (p.to_vec(), baseline_seen(st))),
        );
    } else if let Some(s) = seen.get(from) {
        moved.push((from.to_vec(), *s));
    } else if let Some(st) = baseline.entries.get(from) {
        moved.push((from.to_vec(), baseline_seen(st)));
    }
    let mut new_paths = Vec::with_capacity(moved.len());
    for (p, s) in moved {
        let mut n = to.to_vec();
        n.extend_from_slice(&p[from.len()..]);
        seen.insert(p, Seen::Gone);
        seen.insert(n.clone(), s);
        new_paths.push(n);
    }
    new_paths
}

#[cfg(test)]
mod tests;
