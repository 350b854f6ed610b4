//! Answers `changes since CURSOR`: reads the journal range, coalesces records
//! per path, and decides whether the answer is complete.
//!
//! An answer is complete only if nothing in the range can hide a change: no
//! gap record, no damaged journal range, no record whose path is unknown, no
//! root that started or stopped being tracked, and no root in scope that is
//! currently not captured. Each such finding adds a rescan scope (a
//! directory, to be rescanned recursively) with its reason, and the answer is
//! then incomplete (exit 3). Every record that could be read is still
//! reported.

use cj_journal::format::EventView;
use cj_journal::{Item, Reader, View};
use cj_normalize::sys as nsys;
use cj_types::path::is_at_or_below;
use cj_types::protocol::RescanReason;
use cj_types::{Changes, Cursor, GapReason, ObjectKind, RecordBody, EVENT_FLAG_PATH_UNKNOWN};

use crate::shared::RootState;

/// Changes to a directory entry (as opposed to the object behind it).
const ENTRY_CHANGES: Changes = Changes(
    Changes::CREATED.0
        | Changes::DELETED.0
        | Changes::RENAMED_FROM.0
        | Changes::RENAMED_TO.0
        | Changes::REPLACED.0,
);

/// Distinct paths one answer may hold. Past this the scope is reported for
/// rescan instead of growing memory without bound.
pub const QUERY_PATHS_MAX: usize = 2_000_000;

/// A scope to rescan: the protocol's own type.
pub use cj_types::protocol::Rescan;

#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The changes of the first record in the range that named this path.
    pub first: Changes,
    pub path: Vec<u8>,
    pub kind: ObjectKind,
    pub exists: bool,
    pub changes: Changes,
    pub renamed_from: Option<Vec<u8>>,
    pub renamed_to: Option<Vec<u8>>,
    /// A directory was created, deleted or renamed at this path during the
    /// range: everything below it may have changed and is not listed one by
    /// one (whatever `kind` the path holds now).
    pub subtree: bool,
    /// The gap the latest reconciled record for this path belongs to (the
    /// seq of its gap or unknown-path record).
    pub gap: Option<u64>,
    /// What the records folded into this entry did that a later fold
    /// must know to give the same result as folding them one by one
    /// (`Builder::absorb`, crate::summary).
    pub(crate) trace: Trace,
}

/// See [`Entry::trace`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Trace {
    /// A rename record set `renamed_to` (possibly to nothing).
    pub renamed_to_set: bool,
    /// A rename record set `renamed_from`.
    pub renamed_from_set: bool,
    /// A child's creation, deletion or rename made this a directory.
    pub parent: bool,
    /// A record of a kind that may have a subtree named this path.
    pub subtree_kind: bool,
}

/// Changes that, on a directory, cover its whole subtree.
const SUBTREE_CHANGES: Changes = Changes(
    Changes::CREATED.0 | Changes::DELETED.0 | Changes::RENAMED_FROM.0 | Changes::RENAMED_TO.0,
);

/// Records folded already: one entry per path and the records that are not
/// about one path (a segment summary, crate::summary).
#[derive(Debug, Default)]
pub struct Summary {
    /// By path, in byte order.
    pub(crate) entries: Vec<(Vec<u8>, Entry)>,
    /// Records that are not about one path (gaps, resolutions, tracking,
    /// records whose path is unknown), by seq.
    pub(crate) raw: Vec<(u64, RecordBody)>,
}

/// Parts of the journal folded already, which an answer folds instead of
/// reading their records (crate::summary keeps them on disk).
pub trait Folds {
    /// `(first, last)` of the parts an answer over `(after, end]` folds,
    /// in order, none overlapping.
    fn plan(&self, reader: &Reader, after: u64, end: u64) -> Vec<(u64, u64)>;
    /// The part `first..=last`, if it can be had.
    fn load(&self, reader: &Reader, first: u64, last: u64) -> Option<Summary>;
}

/// No folded parts: every record is read.
pub struct NoFolds;

impl Folds for NoFolds {
    fn plan(&self, _: &Reader, _: u64, _: u64) -> Vec<(u64, u64)> {
        Vec::new()
    }

    fn load(&self, _: &Reader, _: u64, _: u64) -> Option<Summary> {
        None
    }
}

pub struct Answer {
    pub entries: Vec<Entry>,
    pub rescans: Vec<Rescan>,
    pub cursor: Cursor,
    /// The highest seq of a gap or unknown-path record in the range that no
    /// reconciliation has closed (yet).
    pub open_seq: Option<u64>,
}

/// The narrower of two nested paths, or `None` if they are disjoint.
pub fn intersect(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    if is_at_or_below(a, b) {
        Some(a.to_vec())
    } else if is_at_or_below(b, a) {
        Some(b.to_vec())
    } else {
        None
    }
}

pub(crate) struct Builder<'a> {
    scope: Option<&'a [u8]>,
    roots: &'a [RootState],
    /// Folding a sealed segment for its summary (crate::summary): every
    /// path counts, whatever the roots; records that are not about one
    /// path are kept as they are in `raw`, and damage is only noted.
    all: bool,
    raw: Vec<(u64, RecordBody)>,
    damaged: bool,
    /// By path; sorted when the answer is made.
    paths: hashbrown::HashMap<Vec<u8>, Entry, FastHash>,
    rescans: Vec<Rescan>,
    overflowed: bool,
    /// (seq, scope, reason) of gaps and unknown-path records.
    pending: Vec<(u64, Vec<u8>, RescanReason)>,
    /// (after_seq, through_seq, scope) of resolution records.
    resolutions: Vec<(u64, u64, Vec<u8>)>,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(roots: &'a [RootState], scope: Option<&'a [u8]>, all: bool) -> Builder<'a> {
        Builder {
            scope,
            roots,
            all,
            raw: Vec::new(),
            damaged: false,
            paths: hashbrown::HashMap::with_hasher(FastHash),
            rescans: Vec::new(),
            overflowed: false,
            pending: Vec::new(),
            resolutions: Vec::new(),
        }
    }

    /// Folds the records `(after, upto]`.
    pub(crate) fn scan(
        &mut self,
        reader: &Reader,
        after: u64,
        upto: u64,
    ) -> Result<(), cj_journal::Error> {
        if after >= upto {
            return Ok(());
        }
        reader.scan_view(after, upto, |v| {
            match v {
                View::Event { seq, event, frame } => self.add_event(seq, event, Some(frame)),
                View::Other(item) => self.add(item),
            }
            true
        })
    }

    /// What folding `(first, last]` of a sealed segment left (its
    /// summary), or `None` if it cannot stand for the records: damage, or
    /// more paths than an answer may hold.
    pub(crate) fn into_summary(self) -> Option<Summary> {
        if self.damaged || self.overflowed {
            return None;
        }
        Some(Summary {
            entries: sorted(self.paths),
            raw: self.raw,
        })
    }

    /// Folds a later part of the range that was folded already (a sealed
    /// segment's summary): the result is what folding its records one by
    /// one would give (`a_summary_answers_what_its_records_answer`).
    pub(crate) fn absorb(&mut self, later: Summary) {
        for (path, e) in later.entries {
            if self.in_scope(&path) {
                self.absorb_entry(&path, e);
            }
        }
        for (seq, body) in later.raw {
            self.add(Item::Record(Box::new(cj_types::Record {
                seq,
                time_ns: 0,
                body,
            })));
        }
    }

    fn absorb_entry(&mut self, path: &[u8], later: Entry) {
        let Some(en) = self.entry(path) else { return };
        if en.changes.is_empty() {
            en.first = later.first;
        }
        let before = en.changes;
        en.changes |= later.changes;
        // A child's change makes the path a directory for good; otherwise
        // the first kind seen stays.
        if later.trace.parent {
            en.kind = ObjectKind::Dir;
            en.trace.parent = true;
        } else if en.kind == ObjectKind::Unknown {
            en.kind = later.kind;
        }
        if later.subtree || (later.trace.subtree_kind && before.intersects(SUBTREE_CHANGES)) {
            en.subtree = true;
        }
        en.trace.subtree_kind |= later.trace.subtree_kind;
        if later.trace.renamed_to_set {
            en.renamed_to = later.renamed_to;
            en.trace.renamed_to_set = true;
        }
        if later.trace.renamed_from_set {
            en.renamed_from = later.renamed_from;
            en.trace.renamed_from_set = true;
        }
        if later.gap.is_some() {
            en.gap = later.gap;
        }
    }

    /// Inside the query path and inside a tracked root: the other side of a
    /// rename out of the roots is not reported.
    fn in_scope(&self, path: &[u8]) -> bool {
        if self.all {
            return !path.is_empty();
        }
        !path.is_empty()
            && self.scope.is_none_or(|s| is_at_or_below(path, s))
            && self.roots.iter().any(|r| is_at_or_below(path, &r.path))
    }

    fn rescan(&mut self, path: &[u8], reason: RescanReason) {
        let clipped = match self.scope {
            Some(s) => intersect(path, s),
            None => Some(path.to_vec()),
        };
        if let Some(path) = clipped {
            self.rescans.push(Rescan {
                path,
                reasons: vec![reason],
            });
        }
    }

    /// The tracked roots (those on `fsid`, when given and known).
    fn targets(&self, fsid: Option<u64>) -> Vec<Vec<u8>> {
        let on_fs: Vec<Vec<u8>> = self
            .roots
            .iter()
            .filter(|r| fsid.is_none_or(|f| r.fsid == f))
            .map(|r| r.path.clone())
            .collect();
        if on_fs.is_empty() {
            self.roots.iter().map(|r| r.path.clone()).collect()
        } else {
            on_fs
        }
    }

    /// A hole that reconciliation may close later in the range.
    fn resolvable(
        &mut self,
        seq: u64,
        scope: Option<&[u8]>,
        fsid: Option<u64>,
        reason: RescanReason,
    ) {
        let targets = match scope {
            Some(s) => vec![s.to_vec()],
            None => self.targets(fsid),
        };
        for t in targets {
            self.pending.push((seq, t, reason.clone()));
        }
    }

    /// Open holes become rescans unless a `Resolved` record in the range
    /// closed them.
    fn settle(&mut self) -> Option<u64> {
        let mut open = None;
        for (seq, path, reason) in std::mem::take(&mut self.pending) {
            // Only the part inside the query's scope matters: a subtree
            // reconciled ahead of its root (design 11.8) closes a root's
            // gap for queries inside it.
            let Some(path) = self
                .scope
                .map_or(Some(path.clone()), |s| intersect(&path, s))
            else {
                continue;
            };
            let closed = self.resolutions.iter().any(|(after, through, scope)| {
                *after < seq && seq <= *through && is_at_or_below(&path, scope)
            });
            if !closed {
                open = open.max(Some(seq));
                self.rescan(&path, reason);
            }
        }
        open
    }

    /// Every tracked root in scope (or those on `fsid`, when given and known).
    fn rescan_roots(&mut self, fsid: Option<u64>, reason: RescanReason) {
        for t in self.targets(fsid) {
            self.rescan(&t, reason.clone());
        }
        if self.roots.is_empty() {
            if let Some(s) = self.scope {
                let s = s.to_vec();
                self.rescan(&s, reason);
            }
        }
    }

    fn entry(&mut self, path: &[u8]) -> Option<&mut Entry> {
        let full = self.paths.len() >= QUERY_PATHS_MAX;
        match self.paths.entry_ref(path) {
            hashbrown::hash_map::EntryRef::Occupied(o) => Some(o.into_mut()),
            hashbrown::hash_map::EntryRef::Vacant(_) if full => {
                self.overflowed = true;
                None
            }
            // The entry's own `path` is filled from its key at the end.
            hashbrown::hash_map::EntryRef::Vacant(v) => Some(v.insert(Entry::default())),
        }
    }

    /// Adding, removing or renaming an entry changes its directory (the
    /// listing, mtime and ctime): the parent is reported as modified.
    fn parent_modified(&mut self, path: &[u8]) {
        let Some((parent, _)) = nsys::split_parent(path) else {
            return;
        };
        if !self.in_scope(parent) {
            return;
        }
        if let Some(en) = self.entry(parent) {
            if en.changes.is_empty() {
                en.first = Changes::MODIFIED;
            }
            en.changes |= Changes::MODIFIED;
            en.kind = ObjectKind::Dir;
            en.trace.parent = true;
        }
    }

    /// One event record: its path (both sides of a rename) and parents.
    /// `frame`: the record's frame, decoded only to keep a record whose
    /// path is unknown in a summary.
    fn add_event(&mut self, seq: u64, e: EventView<'_>, frame: Option<&[u8]>) {
        if e.flags & EVENT_FLAG_PATH_UNKNOWN != 0 && self.all {
            if let Some(Ok((r, _))) = frame.map(cj_journal::format::decode_record) {
                self.raw.push((seq, r.body));
            } else {
                // A frame that checked out decodes; if not, the summary
                // must not stand for this segment.
                self.damaged = true;
            }
            return;
        }
        if e.flags & EVENT_FLAG_PATH_UNKNOWN != 0 {
            self.resolvable(seq, None, Some(e.fsid), RescanReason::UnresolvedObject);
            return;
        }
        if e.changes.intersects(ENTRY_CHANGES) {
            self.parent_modified(e.path);
            self.parent_modified(e.old_path);
        }
        let rename = e
            .changes
            .contains(Changes::RENAMED_FROM | Changes::RENAMED_TO)
            && !e.old_path.is_empty();
        if rename {
            if self.in_scope(e.old_path) {
                let to = (!e.path.is_empty()).then(|| e.path.to_vec());
                if let Some(en) = self.entry(e.old_path) {
                    if en.changes.is_empty() {
                        en.first = Changes::RENAMED_FROM;
                    }
                    en.changes |= Changes::RENAMED_FROM | (e.changes & Changes::RECONCILED);
                    en.renamed_to = to;
                    en.trace.renamed_to_set = true;
                    merge_kind(en, e.kind);
                    note_gap(en, e.gap_seq);
                }
            }
            if self.in_scope(e.path) {
                let from = e.old_path.to_vec();
                if let Some(en) = self.entry(e.path) {
                    if en.changes.is_empty() {
                        en.first = Changes::RENAMED_TO;
                    }
                    // A reconciled rename also carries what
                    // happened to the object meanwhile.
                    en.changes |= Changes::RENAMED_TO
                        | (e.changes & (Changes::RECONCILED | Changes::MODIFIED | Changes::ATTRIB));
                    en.renamed_from = Some(from);
                    en.trace.renamed_from_set = true;
                    merge_kind(en, e.kind);
                    note_gap(en, e.gap_seq);
                }
            }
        } else if self.in_scope(e.path) {
            let changes = if e.old_path.is_empty() && e.path.is_empty() {
                return;
            } else {
                e.changes
            };
            if let Some(en) = self.entry(e.path) {
                if en.changes.is_empty() {
                    en.first = changes;
                }
                en.changes |= changes;
                merge_kind(en, e.kind);
                note_gap(en, e.gap_seq);
            }
        }
    }

    pub(crate) fn add(&mut self, item: Item) {
        match item {
            Item::Record(r) if self.all && !matches!(r.body, RecordBody::Event(_)) => {
                self.raw.push((r.seq, r.body));
            }
            Item::Damaged { .. } if self.all => self.damaged = true,
            Item::Record(r) => match r.body {
                RecordBody::Event(e) if self.all && e.flags & EVENT_FLAG_PATH_UNKNOWN != 0 => {
                    self.raw.push((r.seq, RecordBody::Event(e)))
                }
                RecordBody::Event(e) => self.add_event(r.seq, EventView::of(&e), None),
                RecordBody::Gap(g) => {
                    let scope = (!g.scope.is_empty()).then_some(g.scope.as_slice());
                    self.resolvable(r.seq, scope, None, RescanReason::Gap(g.reason));
                }
                RecordBody::Resolved(res) => {
                    self.resolutions
                        .push((res.after_seq, res.through_seq, res.scope))
                }
                RecordBody::Track(t) => self.rescan(&t.path, RescanReason::TrackingStarted),
                RecordBody::Untrack(t) => self.rescan(&t.path, RescanReason::Untracked),
                // Only reconciliation reads drain marks.
                RecordBody::Mark(_) => {}
            },
            Item::Damaged { .. } => {
                self.rescan_roots(None, RescanReason::Gap(GapReason::JournalDamaged))
            }
        }
    }
}

/// The folded paths in byte order.
fn sorted(paths: hashbrown::HashMap<Vec<u8>, Entry, FastHash>) -> Vec<(Vec<u8>, Entry)> {
    let mut v: Vec<(Vec<u8>, Entry)> = paths.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A quick, not collision-resistant hash for the paths of one answer (the
/// multiply-rotate of rustc's FxHasher over 8-byte words, then murmur3's
/// final mix): paths come from the journal, and a path that collides only
/// costs time.
#[derive(Clone, Copy, Default)]
pub(crate) struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

pub(crate) struct FastHasher(u64);

impl FastHasher {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
    }

    fn write_usize(&mut self, n: usize) {
        self.word(n as u64);
    }

    fn finish(&self) -> u64 {
        // A final mix (murmur3's): the table uses both the low bits (the
        // bucket) and the top 7 bits (the tag), and paths that differ only
        // in their last bytes must differ in both.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A path that did not exist at the cursor and does not exist now: its first
/// record in the range created an object there and says nothing else left
/// it, and nothing is there now. An object that was at the path at the
/// cursor would have had to leave through a `DELETE` or `RENAME` event,
/// which is queued before any creation at the same name, or merged into the
/// same record, so the first record would say so.
fn ephemeral(e: &Entry) -> bool {
    // Only if the first record says nothing else left the path: a merged
    // record does not say in which order its bits happened. The object at
    // the cursor can leave (renamed away), come back under the same name
    // (a link: CREATE with the same target) and leave again, all merged
    // into one CREATE|MOVED_FROM event (found by the oracle soak). A merged
    // create-then-delete is therefore reported (a false positive). A
    // *reconciled* "created" is relative to a snapshot that may be older than
    // the cursor, so it says nothing about the path at the cursor.
    !e.exists
        && e.first.contains(Changes::CREATED)
        && !e.first.intersects(
            Changes::DELETED | Changes::RENAMED_FROM | Changes::REPLACED | Changes::RECONCILED,
        )
}

/// A directory, or an object whose kind nobody saw (it may have been one:
/// covering a subtree that was not there costs a client nothing).
fn may_have_subtree(kind: ObjectKind) -> bool {
    matches!(kind, ObjectKind::Dir | ObjectKind::Unknown)
}

fn note_gap(en: &mut Entry, gap_seq: u64) {
    if gap_seq != 0 {
        en.gap = Some(gap_seq);
    }
}

fn merge_kind(en: &mut Entry, kind: ObjectKind) {
    if en.kind == ObjectKind::Unknown {
        en.kind = kind;
    }
    if may_have_subtree(kind) {
        en.trace.subtree_kind = true;
        if en.changes.intersects(SUBTREE_CHANGES) {
            en.subtree = true;
        }
    }
}

/// Removes rescan scopes below another scope and exact duplicates (keeping
/// every distinct reason of an exact duplicate).
pub fn dedupe(mut rescans: Vec<Rescan>) -> Vec<Rescan> {
    rescans.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: Vec<Rescan> = Vec::new();
    for r in rescans {
        if let Some(last) = out.last_mut() {
            if last.path == r.path {
                for reason in r.reasons {
                    if !last.reasons.contains(&reason) {
                        last.reasons.push(reason);
                    }
                }
                continue;
            }
        }
        if out.iter().any(|o| is_at_or_below(&r.path, &o.path)) {
            continue;
        }
        out.push(r);
    }
    out
}

/// Builds the answer for records `(since.seq, end]`. `since` is `Err` with a
/// reason when the cursor is unusable; the answer is then a full rescan of
/// the scope.
pub fn answer(
    reader: &Reader,
    roots: &[RootState],
    since: Result<Cursor, RescanReason>,
    scope: Option<&[u8]>,
    end: u64,
) -> Result<Answer, cj_journal::Error> {
    answer_with(reader, roots, since, scope, end, &NoFolds)
}

/// [`answer`], folding the parts of the range `folds` has instead of
/// reading their records.
pub fn answer_with(
    reader: &Reader,
    roots: &[RootState],
    since: Result<Cursor, RescanReason>,
    scope: Option<&[u8]>,
    end: u64,
    folds: &dyn Folds,
) -> Result<Answer, cj_journal::Error> {
    let cursor = Cursor {
        journal_id: reader.journal_id(),
        seq: end,
    };
    let mut b = Builder::new(roots, scope, false);
    if let Some(c) = usable_cursor(reader, since, end, &mut b) {
        // Segments (or their durable prefixes) wholly inside the range are
        // folded from their summaries (crate::summary); the rest is read.
        let mut from = c.seq;
        for (first, last) in folds.plan(reader, c.seq, end) {
            if let Some(sum) = folds.load(reader, first, last) {
                b.scan(reader, from, first - 1)?;
                b.absorb(sum);
                from = last;
            }
        }
        b.scan(reader, from, end)?;
        // A segment deleted by retention while we scanned.
        if c.seq + 1 < reader.first_seq() {
            b.rescan_roots(None, RescanReason::CursorExpired);
        }
    }
    let open_seq = b.settle();
    if b.overflowed {
        b.rescan_roots(None, RescanReason::TooManyChanges);
    }
    for r in roots {
        if let Some(why) = &r.unavailable {
            let path = r.path.clone();
            b.rescan(&path, RescanReason::RootUnavailable(why.clone()));
        }
    }
    let rescans = dedupe(std::mem::take(&mut b.rescans));
    let entries = as_now(
        sorted(b.paths)
            .into_iter()
            .map(|(path, e)| Entry { path, ..e })
            .collect(),
    );
    Ok(Answer {
        entries,
        rescans,
        cursor,
        open_seq,
    })
}

/// [`answer`] for several disjoint scopes at once (a user's grants), with
/// one cursor; `None`: everything.
pub fn answer_scopes(
    reader: &Reader,
    roots: &[RootState],
    since: Result<Cursor, RescanReason>,
    scopes: Option<&[Vec<u8>]>,
    end: u64,
    folds: &dyn Folds,
) -> Result<Answer, cj_journal::Error> {
    let Some(scopes) = scopes else {
        return answer_with(reader, roots, since, None, end, folds);
    };
    let mut merged: Option<Answer> = None;
    for scope in scopes {
        let a = answer_with(reader, roots, since.clone(), Some(scope), end, folds)?;
        merged = Some(match merged {
            None => a,
            Some(mut m) => {
                m.entries.extend(a.entries);
                m.rescans.extend(a.rescans);
                m.open_seq = m.open_seq.max(a.open_seq);
                m
            }
        });
    }
    let mut m = merged.unwrap_or(Answer {
        entries: Vec::new(),
        rescans: Vec::new(),
        cursor: Cursor {
            journal_id: reader.journal_id(),
            seq: end,
        },
        open_seq: None,
    });
    m.entries.sort_by(|a, b| a.path.cmp(&b.path));
    m.entries.dedup_by(|a, b| a.path == b.path);
    m.rescans = dedupe(std::mem::take(&mut m.rescans));
    Ok(m)
}

/// For a client that may not see every path: a rename from or to a path
/// it may not see shows as a creation or a deletion, and nothing it may
/// not see stays in the answer.
pub fn hide_outside(answer: &mut Answer, sees: impl Fn(&[u8]) -> bool) {
    for e in &mut answer.entries {
        if e.renamed_from.as_deref().is_some_and(|f| !sees(f)) {
            e.renamed_from = None;
            if e.changes.contains(Changes::RENAMED_TO) {
                e.changes = (e.changes - Changes::RENAMED_TO) | Changes::CREATED;
            }
        }
        if e.renamed_to.as_deref().is_some_and(|t| !sees(t)) {
            e.renamed_to = None;
            if e.changes.contains(Changes::RENAMED_FROM) {
                e.changes = (e.changes - Changes::RENAMED_FROM) | Changes::DELETED;
            }
        }
    }
    answer.entries.retain(|e| sees(&e.path));
    answer.rescans.retain(|r| sees(&r.path));
}

/// The cursor if the range `(cursor, end]` can be answered from this
/// journal; otherwise the reason is a rescan of every root.
fn usable_cursor(
    reader: &Reader,
    since: Result<Cursor, RescanReason>,
    end: u64,
    b: &mut Builder<'_>,
) -> Option<Cursor> {
    let why = match since {
        Err(reason) => reason,
        Ok(c) if c.journal_id != reader.journal_id() => RescanReason::ForeignCursor,
        Ok(c) if c.seq > end => RescanReason::UnknownCursor,
        Ok(c) if c.seq + 1 < reader.first_seq() => RescanReason::CursorExpired,
        Ok(c) => return Some(c),
    };
    b.rescan_roots(None, why);
    None
}

/// Looks at each path now (exists, kind; no symlink followed) and drops
/// the ephemeral ones (section 10).
fn as_now(mut entries: Vec<Entry>) -> Vec<Entry> {
    // A big answer looks in two threads (one lookup is a few microseconds
    // of kernel time; 100k of them are worth a second core).
    if entries.len() >= AS_NOW_SPLIT_MIN {
        let half = entries.len() / 2;
        let (a, b) = entries.split_at_mut(half);
        let first_half = std::sync::Mutex::new(Some(a));
        let take = || first_half.lock().unwrap_or_else(|e| e.into_inner()).take();
        std::thread::scope(|s| {
            let other = std::thread::Builder::new()
                .name("cj-look".into())
                .spawn_scoped(s, || take().map(look_now));
            // No thread to be had (a process limit): this one does both.
            if other.is_err() {
                if let Some(a) = take() {
                    look_now(a);
                }
            }
            look_now(b);
        });
    } else {
        look_now(&mut entries);
    }
    entries.retain(|e| !ephemeral(e));
    entries
}

/// Entries at or above this many are looked at in two threads.
const AS_NOW_SPLIT_MIN: usize = 8192;

fn look_now(entries: &mut [Entry]) {
    let mut look = nsys::StatNofollow::default();
    for e in entries {
        if may_have_subtree(e.kind) && e.changes.intersects(SUBTREE_CHANGES) {
            e.subtree = true;
        }
        if let Ok(Some(st)) = look.stat(&e.path) {
            e.exists = true;
            e.kind = st.kind;
        }
        if e.kind == ObjectKind::Dir && e.changes.intersects(SUBTREE_CHANGES) {
            e.subtree = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cj_types::{EventRecord, GapReason, GapRecord, JournalId, ResolvedRecord};

    const ROOT: &[u8] = b"/cj-query-test-root-that-does-not-exist";

    fn p(rel: &str) -> Vec<u8> {
        let mut v = ROOT.to_vec();
        v.extend_from_slice(rel.as_bytes());
        v
    }

    fn ev(path: &[u8], changes: Changes) -> RecordBody {
        RecordBody::Event(EventRecord {
            changes,
            kind: ObjectKind::File,
            fsid: 1,
            path: path.to_vec(),
            ..Default::default()
        })
    }

    fn roots() -> Vec<RootState> {
        vec![RootState {
            path: ROOT.to_vec(),
            fsid: 1,
            fs_type: "test".into(),
            unavailable: None,
        }]
    }

    /// Journals `bodies` after a first record, and answers since that record.
    fn ask(bodies: Vec<RecordBody>) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, _) = cj_journal::open(dir.path(), cj_journal::Options::default()).unwrap();
        let c = w.append(1, &ev(&p("/before"), Changes::CREATED)).unwrap();
        for b in &bodies {
            w.append(2, b).unwrap();
        }
        let end = w.commit().unwrap();
        let cursor = Cursor {
            journal_id: r.journal_id(),
            seq: c,
        };
        answer(&r, &roots(), Ok(cursor), None, end).unwrap()
    }

    fn changes_of(a: &Answer, path: &[u8]) -> Option<Changes> {
        a.entries.iter().find(|e| e.path == path).map(|e| e.changes)
    }

    /// A big answer looks at its paths in two threads: every entry is
    /// looked at once, in path order.
    #[test]
    fn a_big_answer_is_looked_at_in_two_halves() {
        let n = AS_NOW_SPLIT_MIN + 101;
        let bodies = (0..n)
            .map(|i| ev(&p(&format!("/d{}/f{i:06}", i % 7)), Changes::MODIFIED))
            .collect();
        let a = ask(bodies);
        assert_eq!(a.entries.len(), n, "every path once");
        assert!(a.entries.windows(2).all(|w| w[0].path < w[1].path));
        assert!(a
            .entries
            .iter()
            .all(|e| !e.exists && e.kind == ObjectKind::File));
    }

    #[test]
    fn created_then_gone_is_left_out_but_not_when_merged_or_reconciled() {
        let a = ask(vec![
            ev(&p("/tmp1"), Changes::CREATED | Changes::MODIFIED),
            ev(&p("/tmp1"), Changes::DELETED),
            ev(&p("/rec"), Changes::CREATED | Changes::RECONCILED),
            ev(&p("/rec"), Changes::RENAMED_FROM),
            // One merged record: the object at the cursor renamed away,
            // linked back under the same name and renamed away again (the
            // order of merged bits is unknown), or a create then a delete.
            ev(&p("/merged"), Changes::CREATED | Changes::RENAMED_FROM),
            ev(&p("/merged2"), Changes::CREATED | Changes::DELETED),
        ]);
        assert!(changes_of(&a, &p("/tmp1")).is_none());
        for m in ["/merged", "/merged2"] {
            assert!(
                changes_of(&a, &p(m)).is_some(),
                "{m}: a merged first record may hide the cursor's object"
            );
        }
        let rec =
            changes_of(&a, &p("/rec")).expect("a reconciled create says nothing about the cursor");
        assert!(rec.contains(Changes::RENAMED_FROM));
        // The parent of every entry change is reported as modified.
        assert!(changes_of(&a, ROOT).unwrap().contains(Changes::MODIFIED));
    }

    #[test]
    fn gaps_close_only_with_a_covering_resolution() {
        let gap = RecordBody::Gap(GapRecord {
            reason: GapReason::DaemonDown,
            fsid: 0,
            scope: Vec::new(),
            start_time_ns: 0,
            flags: 0,
            detail: Vec::new(),
        });
        let open = ask(vec![gap.clone()]);
        assert_eq!(open.rescans.len(), 1);
        assert_eq!(
            open.rescans[0].reasons,
            vec![RescanReason::Gap(GapReason::DaemonDown)]
        );
        assert_eq!(open.rescans[0].path, ROOT);
        // The gap is seq 2 (after the cursor's record): through 1 is too low.
        let low = ask(vec![
            gap.clone(),
            RecordBody::Resolved(ResolvedRecord {
                after_seq: 0,
                through_seq: 1,
                fsid: 1,
                scope: ROOT.to_vec(),
                records: 0,
            }),
        ]);
        assert_eq!(low.rescans.len(), 1);
        let other_scope = ask(vec![
            gap.clone(),
            RecordBody::Resolved(ResolvedRecord {
                after_seq: 0,
                through_seq: 9,
                fsid: 1,
                scope: p("/sub"),
                records: 0,
            }),
        ]);
        assert_eq!(
            other_scope.rescans.len(),
            1,
            "a resolution below the root does not close it"
        );
        let stale_baseline = ask(vec![
            gap.clone(),
            RecordBody::Resolved(ResolvedRecord {
                after_seq: 2,
                through_seq: 9,
                fsid: 1,
                scope: ROOT.to_vec(),
                records: 0,
            }),
        ]);
        assert_eq!(
            stale_baseline.rescans.len(),
            1,
            "a baseline taken after the gap cannot close it"
        );
        let closed = ask(vec![
            gap,
            ev(&p("/found"), Changes::CREATED | Changes::RECONCILED),
            RecordBody::Resolved(ResolvedRecord {
                after_seq: 0,
                through_seq: 9,
                fsid: 1,
                scope: ROOT.to_vec(),
                records: 1,
            }),
        ]);
        assert!(closed.rescans.is_empty());
        assert!(changes_of(&closed, &p("/found")).is_some());
    }

    #[test]
    fn renames_report_both_sides_inside_the_roots_only() {
        let rename = |from: &[u8], to: &[u8]| {
            RecordBody::Event(EventRecord {
                changes: Changes::RENAMED_FROM | Changes::RENAMED_TO,
                kind: ObjectKind::File,
                fsid: 1,
                path: to.to_vec(),
                old_path: from.to_vec(),
                ..Default::default()
            })
        };
        let a = ask(vec![
            rename(&p("/a"), &p("/b")),
            rename(&p("/c"), b"/elsewhere/c"),
            rename(b"/elsewhere/d", &p("/d")),
        ]);
        assert!(changes_of(&a, &p("/a"))
            .unwrap()
            .contains(Changes::RENAMED_FROM));
        assert!(changes_of(&a, &p("/b"))
            .unwrap()
            .contains(Changes::RENAMED_TO));
        assert!(changes_of(&a, &p("/c"))
            .unwrap()
            .contains(Changes::RENAMED_FROM));
        assert!(changes_of(&a, &p("/d"))
            .unwrap()
            .contains(Changes::RENAMED_TO));
        assert!(
            a.entries.iter().all(|e| is_at_or_below(&e.path, ROOT)),
            "outside paths leaked"
        );
        assert!(a.rescans.is_empty());
    }

    #[test]
    fn unusable_cursors_rescan_every_root() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, _) = cj_journal::open(dir.path(), cj_journal::Options::default()).unwrap();
        w.append(1, &ev(&p("/x"), Changes::CREATED)).unwrap();
        let end = w.commit().unwrap();
        let foreign = Cursor {
            journal_id: JournalId([9; 16]),
            seq: 0,
        };
        let a = answer(&r, &roots(), Ok(foreign), None, end).unwrap();
        assert_eq!(a.rescans[0].reasons, vec![RescanReason::ForeignCursor]);
        let future = Cursor {
            journal_id: r.journal_id(),
            seq: end + 10,
        };
        assert_eq!(
            answer(&r, &roots(), Ok(future), None, end).unwrap().rescans[0].reasons,
            vec![RescanReason::UnknownCursor]
        );
        let bad = answer(&r, &roots(), Err(RescanReason::MalformedCursor), None, end).unwrap();
        assert_eq!(bad.rescans[0].reasons, vec![RescanReason::MalformedCursor]);
        assert_eq!(
            bad.cursor.seq, end,
            "a fresh cursor comes with every answer"
        );
    }

    #[test]
    fn dedupe_keeps_outermost_scopes() {
        let r = |p: &str, why: &str| Rescan {
            path: p.as_bytes().to_vec(),
            reasons: RescanReason::parse_list(why),
        };
        let out = dedupe(vec![
            r("/a/b", "x"),
            r("/a", "y"),
            r("/a", "z"),
            r("/ab", "x"),
        ]);
        assert_eq!(out, vec![r("/a", "y,z"), r("/ab", "x")]);
    }

    #[test]
    fn intersect_nested_and_disjoint() {
        assert_eq!(intersect(b"/a/b", b"/a"), Some(b"/a/b".to_vec()));
        assert_eq!(intersect(b"/a", b"/a/b"), Some(b"/a/b".to_vec()));
        assert_eq!(intersect(b"/a", b"/b"), None);
    }

    /// Found by the oracle: a directory renamed out of the root and then
    /// replaced by a symlink was reported with kind `symlink` only, so its
    /// former contents looked covered by nothing.
    #[test]
    fn a_directory_replaced_by_another_kind_still_covers_its_subtree() {
        let mut moved_out = ev(&p("/h2"), Changes::RENAMED_FROM | Changes::RENAMED_TO);
        if let RecordBody::Event(e) = &mut moved_out {
            e.kind = ObjectKind::Dir;
            e.old_path = p("/h2");
            e.path = b"/elsewhere/h2".to_vec();
        }
        let mut link = ev(&p("/h2"), Changes::CREATED);
        if let RecordBody::Event(e) = &mut link {
            e.kind = ObjectKind::Symlink;
        }
        let a = ask(vec![moved_out, link]);
        let e = a.entries.iter().find(|e| e.path == p("/h2")).unwrap();
        assert!(e.subtree, "subtree not flagged");
        let plain = ask(vec![ev(&p("/f"), Changes::CREATED)]);
        assert!(!plain.entries.iter().any(|e| e.subtree));
    }
}
