//! The reconciler thread: turns gaps in history into ordinary records.
//!
//! The writer queues a request for every committed gap record and every
//! unknown-path record. For each affected root the reconciler
//! 1. syncs (a barrier): every gap being resolved is journaled, and the
//!    marks are in place, so any change from now on is captured live;
//! 2. walks the root and diffs the walk against the root's snapshot;
//! 3. journals the differences as `reconciled` records, then a `Resolved`
//!    record closing everything up to the barrier's seq;
//! 4. only then (records durable) replaces the snapshot -- and only if no
//!    new gap arrived during the walk, because a walk that overlapped a gap
//!    may already contain what the gap hid and so cannot be its baseline.
//!
//! A root without a snapshot cannot be reconciled: the walk becomes its
//! baseline and its open gaps stay open (queries keep asking for a rescan).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cj_journal::Item;
use cj_reconcile::fast::{self, FsMarks, Method};
use cj_reconcile::fold::{Fold, Step, TOUCHED_PATHS_MAX};
use cj_reconcile::{
    changed_by_paths, diff, diff_scope, diff_transitions, open_root, refresh, refresh_records,
    walk, walk_scope, Snapshot, Spill, Touched,
};
use cj_types::path::{is_at_or_below, overlaps};
use cj_types::{RecordBody, ResolvedRecord};
use std::collections::{HashMap, HashSet};

use crate::inbox::{Queue, Request, Status, PREEMPTIONS_MAX};
use crate::port::JournalPort;
use crate::shared::Shared;

/// What a journal range says about a root (`Reconciler::journal_paths`).
enum JournalPaths {
    Incomplete,
    TooMany,
    Complete(HashSet<Vec<u8>>),
}

/// Inodes to re-read (`None`: a walk), how they were found, and the
/// journal's view of the range.
type RefreshPlan = (Option<HashSet<u64>>, &'static str, Touched);

/// The first retry of a failed reconciliation waits this long; each further
/// failure doubles the wait, up to `RECONCILE_RETRY_MAX`.
pub const RECONCILE_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RECONCILE_RETRY_MAX: Duration = Duration::from_secs(300);

/// What the reconciler does next.
enum Work {
    Stop,
    /// A clean stop's last quiet refresh; told when done.
    FinalRefresh(std::sync::mpsc::SyncSender<()>),
    QuietRefresh,
    /// Subtrees a waiting query asked for (design 11.8).
    Scoped(Vec<Vec<u8>>),
    Batch(Vec<Request>),
}

/// Failed reconciliations waiting for their next attempt (at most one per
/// root), and the consecutive failures per root.
#[derive(Default)]
struct Retries {
    pending: Vec<(Instant, Request)>,
    failures: HashMap<Vec<u8>, u32>,
}

impl Retries {
    /// Moves the retries that are due into the request queue.
    fn take_due(&mut self, now: Instant, queue: &mut Vec<Request>) {
        self.pending.retain(|(due, r)| {
            if *due <= now {
                queue.push(r.clone());
            }
            *due > now
        });
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|(due, _)| *due).min()
    }

    fn cancel(&mut self, root: &[u8]) {
        self.pending
            .retain(|(_, r)| r.scope.as_deref() != Some(root));
    }

    fn forget(&mut self, root: &[u8]) {
        self.failures.remove(root);
    }

    /// Schedules the next attempt; returns its number and time.
    fn schedule(&mut self, request: Request) -> (u32, Instant) {
        let root = request.scope.clone().unwrap_or_default();
        let n = self.failures.entry(root).or_insert(0);
        *n = n.saturating_add(1);
        let due = Instant::now() + retry_delay(*n);
        self.pending.push((due, request));
        (*n, due)
    }
}

fn retry_delay(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (RECONCILE_RETRY_FIRST * (1u32 << shift)).min(RECONCILE_RETRY_MAX)
}

pub struct Reconciler {
    pub shared: Arc<Shared>,
    pub reader: cj_journal::Reader,
    pub journal: Arc<dyn JournalPort>,
    pub snapshots: PathBuf,
    pub excluded: Vec<Vec<u8>>,
    /// Never use a filesystem fast path (`--reconcile walk`).
    pub walk_only: bool,
    /// Testing only (`Config::test_reconcile_delay`).
    pub test_delay: Duration,
    /// Testing only (`Config::test_spill_bytes`).
    pub test_spill_bytes: Option<usize>,
}

impl Reconciler {
    fn sync(&self) -> Result<u64, String> {
        self.journal.sync()
    }

    fn records(&self, recs: Vec<RecordBody>) -> Result<(), String> {
        self.journal.append(recs)
    }

    fn queue(&self) -> &Queue {
        &self.shared.reconcile
    }

    pub fn run(self) {
        // How often idle baselines are brought up to date without records
        // (a reload may change it).
        let every = || self.shared.tunables.refresh_every();
        let mut next_refresh = every().map(|every| Instant::now() + every);
        let mut retries = Retries::default();
        loop {
            match self.next_work(&mut retries, next_refresh) {
                Work::Stop => return,
                Work::FinalRefresh(done) => {
                    self.refresh_all(true);
                    let _ = done.send(());
                }
                Work::QuietRefresh => {
                    self.refresh_all(false);
                    next_refresh = every().map(|every| Instant::now() + every);
                }
                Work::Scoped(scopes) => {
                    self.status(|s| s.running = Some(Vec::new()));
                    self.serve_scoped(scopes);
                    self.status(|s| s.running = None);
                }
                Work::Batch(batch) => {
                    if !self.run_batch(&batch, &mut retries) {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for work: requests (or retries that are due), a refresh that
    /// is due, a clean stop's last refresh, or the stop.
    fn next_work(&self, retries: &mut Retries, next_refresh: Option<Instant>) -> Work {
        let queue = self.queue();
        let mut q = queue.requests.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            retries.take_due(now, &mut q);
            if !q.is_empty()
                || queue.scoped_waiting()
                || queue.stop.load(Ordering::SeqCst)
                || queue.final_refresh_asked()
                || next_refresh.is_some_and(|at| now >= at)
            {
                break;
            }
            q = match retries.next_due().into_iter().chain(next_refresh).min() {
                None => queue.cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    queue
                        .cv
                        .wait_timeout(q, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        if queue.stop.load(Ordering::SeqCst) {
            return Work::Stop;
        }
        if let Some(done) = queue
            .final_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Work::FinalRefresh(done);
        }
        if queue.scoped_waiting() {
            drop(q);
            return Work::Scoped(queue.take_scoped());
        }
        if q.is_empty() {
            return Work::QuietRefresh;
        }
        // Busy from the moment requests leave the queue, so that a waiting
        // query never sees "idle" in between.
        self.status(|s| s.running = Some(Vec::new()));
        let top = q.iter().map(|r| r.seq).max().unwrap_or(0);
        queue.taken_through.fetch_max(top, Ordering::SeqCst);
        Work::Batch(std::mem::take(&mut *q))
    }

    /// Quiet refreshes of every baseline (the last one at a clean stop).
    fn refresh_all(&self, last: bool) {
        self.status(|s| s.running = Some(Vec::new()));
        self.refresh_baselines(last);
        self.status(|s| s.running = None);
    }

    /// Reconciles every root the batch concerns; a failure is retried
    /// later. False if the daemon is stopping.
    fn run_batch(&self, batch: &[Request], retries: &mut Retries) -> bool {
        let top = batch.iter().map(|r| r.seq).max().unwrap_or(0);
        for (root, baseline) in self.roots_for(batch) {
            if self.queue().stop.load(Ordering::SeqCst) {
                return false;
            }
            // This pass replaces any retry still waiting for the root.
            retries.cancel(&root);
            let mut preemptions = 0;
            let result = loop {
                if self.queue().stop.load(Ordering::SeqCst) {
                    return false;
                }
                self.queue().progress.cancel.store(false, Ordering::SeqCst);
                // A query waiting for a subtree of a big root may interrupt
                // its walk, a few times (design 11.8).
                self.queue()
                    .preemptible
                    .store(preemptions < PREEMPTIONS_MAX, Ordering::SeqCst);
                if preemptions < PREEMPTIONS_MAX && self.queue().scoped_waiting() {
                    // Asked for before this root began: served first.
                    self.queue().preemptible.store(false, Ordering::SeqCst);
                    self.queue().preempted.store(false, Ordering::SeqCst);
                    preemptions += 1;
                    self.serve_scoped(self.queue().take_scoped());
                    continue;
                }
                let result = self.reconcile(&root, baseline);
                self.queue().preemptible.store(false, Ordering::SeqCst);
                if !self.queue().preempted.swap(false, Ordering::SeqCst) {
                    break result;
                }
                preemptions += 1;
                self.serve_scoped(self.queue().take_scoped());
                if result.is_ok() {
                    break result;
                }
                // Interrupted: this root again, not a failure.
            };
            if self.tracked_fsid(&root).is_none() {
                // Untracked meanwhile: nothing to retry or report.
                retries.forget(&root);
                continue;
            }
            match result {
                Ok(()) => {
                    retries.forget(&root);
                    self.status(|s| {
                        if s.retry.as_ref().is_some_and(|(r, _, _)| *r == root) {
                            s.retry = None;
                        }
                    })
                }
                Err(e) => self.failed(&root, baseline, top, &e, retries),
            }
        }
        self.queue().completed.fetch_add(1, Ordering::SeqCst);
        self.status(|s| s.running = None);
        true
    }

    /// Scoped catch-up (design 11.8): each subtree is walked and compared
    /// with its part of the root's baseline, the differences journaled,
    /// then a `Resolved` record for the subtree alone. The baseline is not
    /// replaced: the root's own reconciliation still follows, and reports
    /// the subtree's differences again at worst (false positives). A
    /// subtree that cannot be done this way (no baseline, another mount, an
    /// unreadable journal range) waits for its root.
    fn serve_scoped(&self, scopes: Vec<Vec<u8>>) {
        let roots: Vec<(Vec<u8>, u64)> = self
            .shared
            .roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.unavailable.is_none())
            .map(|r| (r.path.clone(), r.fsid))
            .collect();
        // (root, fsid) and its subtrees asked for.
        type ByRoot = ((Vec<u8>, u64), Vec<Vec<u8>>);
        let mut by_root: Vec<ByRoot> = Vec::new();
        for scope in scopes {
            let Some(root) = roots
                .iter()
                .filter(|(r, _)| is_at_or_below(&scope, r) && scope != *r)
                .max_by_key(|(r, _)| r.len())
            else {
                continue;
            };
            match by_root.iter_mut().find(|(r, _)| r == root) {
                Some((_, list)) => list.push(scope),
                None => by_root.push((root.clone(), vec![scope])),
            }
        }
        for ((root, fsid), list) in by_root {
            let started = Instant::now();
            if let Err(e) = self.scoped_root(&root, fsid, &list) {
                crate::logging::warn(format!(
                    "scoped catch-up below {}: {e}; the query waits for the whole root",
                    cj_types::log_path(&root)
                ));
            }
            self.status(|s| s.last_scoped_ms = started.elapsed().as_millis() as u64);
            self.queue().completed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn scoped_root(&self, root: &[u8], fsid: u64, scopes: &[Vec<u8>]) -> Result<(), String> {
        let Some(base) = Snapshot::load(&self.snapshots, root).map_err(|e| e.to_string())? else {
            return Err("no baseline yet".into());
        };
        let through = self.sync()?;
        let (touched, _) = self.touched(root, base.through_seq, through, &base)?;
        for scope in scopes {
            // The subtree, or, if it is gone, the deepest directory above
            // it that is there (a subtree the baseline does not know was
            // empty then: everything in it is reported created).
            self.status(|s| s.running = Some(scope.clone()));
            self.queue().progress.cancel.store(false, Ordering::SeqCst);
            let mut at = scope.as_slice();
            let walked = loop {
                if at == root {
                    break None;
                }
                match walk_scope(
                    root,
                    at,
                    &self.excluded,
                    &self.queue().progress,
                    self.spill(),
                ) {
                    Ok(w) => break Some(w),
                    Err(cj_reconcile::WalkError::Root { source, .. })
                        if matches!(
                            source.raw_os_error(),
                            Some(libc::ENOENT) | Some(libc::ENOTDIR)
                        ) =>
                    {
                        at = match cj_normalize::sys::split_parent(at) {
                            Some((parent, _)) if is_at_or_below(parent, root) => parent,
                            _ => root,
                        };
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            let Some(walked) = walked else {
                continue;
            };
            let recs = diff_scope(&base, walked, at, &touched, fsid);
            let count = recs.len() as u64;
            self.records(recs)?;
            self.records(vec![RecordBody::Resolved(ResolvedRecord {
                after_seq: base.valid_after_seq,
                through_seq: through,
                fsid,
                scope: at.to_vec(),
                records: count,
            })])?;
            self.sync()?;
            self.status(|s| {
                s.scoped_catchups += 1;
                s.reconciled_records += count;
            });
            crate::logging::log(format!(
                "reconciled {} ahead of {}: {count} records",
                cj_types::log_path(at),
                cj_types::log_path(root)
            ));
        }
        Ok(())
    }

    fn failed(&self, root: &[u8], baseline: bool, seq: u64, e: &str, retries: &mut Retries) {
        let (attempts, due) = retries.schedule(Request {
            seq,
            scope: Some(root.to_vec()),
            fsid: None,
            baseline,
        });
        let shown = cj_types::log_path(root);
        crate::logging::warn(format!(
            "reconcile {shown} failed (attempt {attempts}, retrying in {} s): {e}",
            due.saturating_duration_since(Instant::now()).as_secs()
        ));
        self.status(|s| {
            s.last_error = Some(format!("{shown}: {e}"));
            s.retry = Some((root.to_vec(), attempts, due));
        });
    }

    /// The captured roots the requests concern; `true` = baseline only.
    fn roots_for(&self, batch: &[Request]) -> Vec<(Vec<u8>, bool)> {
        let roots = self
            .shared
            .roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out: Vec<(Vec<u8>, bool)> = Vec::new();
        for r in roots.iter().filter(|r| r.unavailable.is_none()) {
            let mut hit = None;
            for req in batch {
                let covers = match (&req.scope, req.fsid) {
                    (Some(s), _) => overlaps(&r.path, s),
                    (None, Some(f)) => r.fsid == f || !roots.iter().any(|x| x.fsid == f),
                    (None, None) => true,
                };
                if covers {
                    hit = Some(hit.unwrap_or(true) && req.baseline);
                }
            }
            if let Some(baseline) = hit {
                out.push((r.path.clone(), baseline));
            }
        }
        out
    }

    fn gaps_arrived(&self, root: &[u8]) -> bool {
        let q = self
            .queue()
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.iter().any(|r| {
            !r.baseline
                && match &r.scope {
                    Some(s) => overlaps(root, s),
                    None => true,
                }
        })
    }

    /// What the journal says about the paths below `root` in
    /// `(after, upto]` (`cj_reconcile::fold`). Fails if that range cannot
    /// be read completely: the baseline could then miss a path that was
    /// created and removed, and the gap stays open.
    fn touched(
        &self,
        root: &[u8],
        after: u64,
        upto: u64,
        baseline: &Snapshot,
    ) -> Result<(Touched, Option<&'static str>), String> {
        if after + 1 < self.reader.first_seq() {
            return Err("the journal since the baseline has expired; the next walk becomes the new baseline".into());
        }
        let mut fold = Fold::new(root, baseline);
        self.reader
            .scan(after, upto, |item| match item {
                Item::Record(r) => fold.step(Step::Record(&r)),
                Item::Damaged { .. } => fold.step(Step::Damaged),
            })
            .map_err(|e| e.to_string())?;
        let folded = fold.finish().map_err(|e| e.to_string())?;
        if folded.too_many {
            crate::logging::warn(format!(
                "reconcile {}: the journal since the baseline names more than the \
                 fold follows; the whole root is reported",
                cj_types::log_path(root)
            ));
        }
        Ok((folded.touched, folded.forced_walk))
    }

    /// Quiet refreshes of every captured root's baseline. `last`: the
    /// refresh before a clean stop, which runs even with requests pending
    /// (their roots are skipped as incomplete) and only when the journal
    /// names few enough paths (never a walk or a fast path: a stop must be
    /// quick).
    fn refresh_baselines(&self, last: bool) {
        let roots: Vec<Vec<u8>> = self
            .shared
            .roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.unavailable.is_none())
            .map(|r| r.path.clone())
            .collect();
        for root in roots {
            if self.queue().stop.load(Ordering::SeqCst) || (!last && self.queue().pending() > 0) {
                return;
            }
            let refreshed = self.refresh_baseline(&root, last);
            give_back_memory();
            match refreshed {
                Ok(true) => self.status(|s| s.baseline_refreshes += 1),
                Ok(false) => {}
                Err(e) => crate::logging::warn(format!(
                    "refreshing the baseline of {}: {e}",
                    cj_types::log_path(&root)
                )),
            }
        }
    }

    /// True if the journal in `(after, upto]` holds anything that makes it
    /// incomplete below `root` (a gap, an unknown path, damage), or cannot
    /// be read.
    fn incomplete(&self, root: &[u8], after: u64, upto: u64) -> bool {
        matches!(
            self.journal_paths(root, after, upto, false),
            JournalPaths::Incomplete
        )
    }

    /// What the journal in `(after, upto]` says below `root`: incomplete
    /// (a gap, an unknown path, damage, or a range that cannot be read),
    /// or complete, with every path it names (old and new sides of
    /// renames) when `collect` is set.
    fn journal_paths(&self, root: &[u8], after: u64, upto: u64, collect: bool) -> JournalPaths {
        if after + 1 < self.reader.first_seq() {
            return JournalPaths::Incomplete;
        }
        let mut bad = false;
        let mut paths: HashSet<Vec<u8>> = HashSet::new();
        let mut too_many = false;
        let scanned = self.reader.scan(after, upto, |item| {
            match item {
                Item::Record(r) => match r.body {
                    RecordBody::Gap(g) => bad = g.scope.is_empty() || overlaps(root, &g.scope),
                    RecordBody::Event(e) => {
                        bad = e.flags & cj_types::EVENT_FLAG_PATH_UNKNOWN != 0;
                        if collect && !too_many {
                            for p in [e.path, e.old_path] {
                                if !p.is_empty() && is_at_or_below(&p, root) {
                                    paths.insert(p);
                                }
                            }
                            too_many = paths.len() > TOUCHED_PATHS_MAX;
                        }
                    }
                    _ => {}
                },
                Item::Damaged { .. } => bad = true,
            };
            !bad
        });
        if bad || scanned.is_err() {
            JournalPaths::Incomplete
        } else if too_many {
            JournalPaths::TooMany
        } else {
            JournalPaths::Complete(paths)
        }
    }

    /// Brings the baseline of `root` up to date without journaling
    /// anything: allowed only when the journal since the baseline is
    /// complete for the root (no gap, no unknown path), so every change in
    /// between is already a record. Later gaps are then compared with a
    /// recent state, and changes journaled before it are not reported again
    /// (fewer false positives). `Ok(false)`: skipped.
    ///
    /// The journal itself says what to look at again (the paths it names,
    /// `changed_by_paths`), on every filesystem. Only when it names more
    /// than [`TOUCHED_PATHS_MAX`] paths does a fast path (XFS, btrfs) or a
    /// walk find them instead.
    fn refresh_baseline(&self, root: &[u8], journal_only: bool) -> Result<bool, String> {
        use std::os::fd::AsRawFd;
        let Ok(root_fd) = open_root(root) else {
            return Ok(false);
        };
        let Some(mut base) = Snapshot::load(&self.snapshots, root).ok().flatten() else {
            return Ok(false);
        };
        let through = self.sync()?;
        if through <= base.valid_after_seq {
            return Ok(false);
        }
        let marks = fast::marks(root_fd.as_raw_fd());
        let Some((changed, how, touched)) =
            self.refresh_plan(root, &root_fd, &base, &marks, through, journal_only)?
        else {
            return Ok(false);
        };
        self.status(|s| s.running = Some(root.to_vec()));
        let fsid = self.tracked_fsid(root).unwrap_or(0);
        // What left without a record naming it, and directories whose
        // contents nobody named (design 11.9): journaled before the
        // baseline that no longer holds them is saved.
        let records = match changed {
            Some(changed) => {
                let transitions = refresh(
                    &mut base,
                    &root_fd,
                    &self.excluded,
                    &changed,
                    &self.queue().progress,
                )
                .map_err(|e| e.to_string())?;
                refresh_records(diff_transitions(&transitions, &base, &touched, fsid))
            }
            None => {
                let old = Snapshot::load(&self.snapshots, root)
                    .map_err(|e| e.to_string())?
                    .ok_or("the baseline vanished")?;
                base.entries = self.walk(root)?;
                refresh_records(diff(&old, &base, &touched, fsid))
            }
        };
        let walk_end = self.sync()?;
        if self.gaps_arrived(root) || self.incomplete(root, through, walk_end) {
            return Ok(false);
        }
        if !records.is_empty() {
            self.records(records)?;
            self.sync()?;
        }
        base.marks = marks;
        base.through_seq = through;
        base.valid_after_seq = walk_end;
        self.save_baseline(root, &base)?;
        self.status(|s| s.last_refresh = how);
        Ok(true)
    }

    /// What a refresh looks at again ([`Reconciler::refresh_baseline`]):
    /// the inodes to re-read (`None`: a walk), how they were found, and the
    /// journal's view of the range. `None`: no refresh.
    fn refresh_plan(
        &self,
        root: &[u8],
        root_fd: &std::os::fd::OwnedFd,
        base: &Snapshot,
        marks: &FsMarks,
        through: u64,
        journal_only: bool,
    ) -> Result<Option<RefreshPlan>, String> {
        use std::os::fd::AsRawFd;
        // What to look at again: the paths the journal names, or what a
        // fast path finds; `None`: a walk. With the journal's view of the
        // range (the fold; past its bounds, or past `TOUCHED_PATHS_MAX`
        // paths, the baseline's alone).
        let plan = match self.journal_paths(root, base.through_seq, through, true) {
            JournalPaths::Incomplete => return Ok(None),
            JournalPaths::Complete(paths) if paths.is_empty() => return Ok(None),
            JournalPaths::Complete(paths) => {
                // The inodes first, and the paths dropped before the fold
                // holds its own view of them (peak memory).
                let changed = changed_by_paths(base, paths.iter().map(|p| &p[..]));
                drop(paths);
                let (mut touched, _) = self.touched(root, base.through_seq, through, base)?;
                if touched.cover.iter().any(|c| c == root) {
                    // Past the fold's bounds: not a cover of the whole
                    // root for a quiet refresh (design 11.9).
                    touched = Touched::default();
                }
                (Some(changed), "journal", touched)
            }
            JournalPaths::TooMany if journal_only => return Ok(None),
            JournalPaths::TooMany => match self.method(root_fd, base, marks, None) {
                Ok(method) => (
                    Some(
                        fast::changed_inodes(root_fd.as_raw_fd(), method, &base.marks)
                            .map_err(|e| e.to_string())?,
                    ),
                    method.as_str(),
                    Touched::default(),
                ),
                Err(_) => (None, Method::Walk.as_str(), Touched::default()),
            },
        };
        Ok(Some(plan))
    }

    fn reconcile(&self, root: &[u8], baseline_only: bool) -> Result<(), String> {
        // Timed from here: loading the baseline is part of what a waiting
        // client waits for.
        let started = Instant::now();
        self.status(|s| {
            s.running = Some(root.to_vec());
            s.expected_entries = 0;
            s.timings.clear();
        });
        self.enter("loading baseline");
        let fsid = {
            let roots = self.shared.roots.lock().unwrap_or_else(|e| e.into_inner());
            roots
                .iter()
                .find(|r| r.path == root)
                .map(|r| r.fsid)
                .unwrap_or(0)
        };
        let old = if baseline_only {
            Snapshot::remove(&self.snapshots, root);
            None
        } else {
            match Snapshot::load(&self.snapshots, root) {
                Ok(s) => s,
                Err(e) => {
                    crate::logging::warn(format!("{e}"));
                    None
                }
            }
        };
        let expected = old.as_ref().map_or(0, |o| o.entries.len() as u64);
        self.status(|s| s.expected_entries = expected);
        self.queue().progress.entries.store(0, Ordering::Relaxed);
        self.queue()
            .progress
            .directories
            .store(0, Ordering::Relaxed);
        let delayed = match old {
            Some(_) => self.test_delay(),
            None => Ok(()),
        };
        let result = delayed.and_then(|()| self.walk_and_record(root, fsid, old, started));
        give_back_memory();
        self.enter("");
        {
            let st = self
                .queue()
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let parts: Vec<String> = st
                .timings
                .iter()
                .map(|(p, ms)| format!("{p} {ms} ms"))
                .collect();
            let how = match &result {
                Ok(_) => format!(
                    "reconciled {} by {}",
                    cj_types::log_path(root),
                    st.last_method
                ),
                Err(e) => format!("reconciling {} stopped ({e})", cj_types::log_path(root)),
            };
            crate::logging::warn(format!("{how}: {}", parts.join(", ")));
        }
        self.status(|s| s.last_timings = std::mem::take(&mut s.timings));
        let mut s = self
            .queue()
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.running = Some(Vec::new());
        s.walks += 1;
        s.last_walk_ms = started.elapsed().as_millis() as u64;
        if let Ok(n) = &result {
            s.reconciled_records += *n;
            s.last_error = None;
        }
        result.map(|_| ())
    }

    /// Which way to bring `old` up to date, or why it must be a walk.
    fn method(
        &self,
        root_fd: &std::os::fd::OwnedFd,
        old: &Snapshot,
        marks: &FsMarks,
        forced: Option<&'static str>,
    ) -> Result<Method, String> {
        use std::os::fd::AsRawFd;
        if self.walk_only {
            return Err("fast paths are off (--reconcile walk)".into());
        }
        if let Some(why) = forced {
            return Err(why.into());
        }
        let method = fast::probe(root_fd.as_raw_fd());
        if let Some(why) = fast::distrust(method, &old.marks, marks) {
            return Err(why.into());
        }
        if method == Method::Btrfs
            && old
                .entries
                .iter()
                .any(|(p, s)| s.ino == fast::BTRFS_SUBVOLUME_ROOT_INO && p != old.root.as_slice())
        {
            // Nested subvolumes have trees (and inode numbers) of their own.
            return Err("the tree holds nested btrfs subvolumes".into());
        }
        Ok(method)
    }

    fn walk_and_record(
        &self,
        root: &[u8],
        fsid: u64,
        old: Option<Snapshot>,
        started: Instant,
    ) -> Result<u64, String> {
        use std::os::fd::AsRawFd;
        self.status(|s| s.last_walk_reason.clear());
        self.enter("syncing");
        let through = self.sync()?;
        let root_fd = open_root(root)
            .map_err(|e| format!("cannot open root {}: {e}", cj_types::log_path(root)))?;
        let marks = fast::marks(root_fd.as_raw_fd());
        // What the journal names between the baseline and now; computed
        // before the baseline is brought up to date in place.
        let touched = old
            .as_ref()
            .map(|o| self.touched(root, o.through_seq, through, o));
        let mut old = old;
        if let (Some(base), Some(Ok((touched, forced)))) = (old.as_mut(), &touched) {
            match self.method(&root_fd, base, &marks, *forced) {
                Ok(method) => match self.fast_pass(fsid, base, touched, method, &root_fd) {
                    Ok(recs) => {
                        self.status(|s| s.last_method = method.as_str());
                        let after = base.valid_after_seq;
                        let base = old.take().ok_or("baseline vanished")?;
                        return self.finish(root, fsid, base, after, recs, marks, through, started);
                    }
                    Err(e) => {
                        crate::logging::warn(format!(
                            "reconcile {}: {} failed ({e}); walking instead",
                            cj_types::log_path(root),
                            method.as_str()
                        ));
                        // The baseline was partly brought up to date: read
                        // it again for the walk's diff.
                        old = Snapshot::load(&self.snapshots, root).ok().flatten();
                    }
                },
                Err(why) => self.status(|s| s.last_walk_reason = why.clone()),
            }
        }
        self.status(|s| s.last_method = Method::Walk.as_str());
        self.enter("walking");
        let entries = self.walk(root)?;
        let new = Snapshot {
            root: root.to_vec(),
            marks,
            through_seq: through,
            valid_after_seq: 0,
            entries,
        };
        self.enter("comparing");
        match (old, touched) {
            (Some(old), Some(Ok((touched, _)))) => {
                let recs = diff(&old, &new, &touched, fsid);
                self.finish(
                    root,
                    fsid,
                    new,
                    old.valid_after_seq,
                    recs,
                    marks,
                    through,
                    started,
                )
            }
            (_, touched) => {
                // No usable baseline: the gap stays open; the walk becomes
                // the baseline for later gaps.
                self.finish_baseline(root, new)?;
                match touched {
                    Some(Err(e)) => Err(e),
                    _ => Ok(0),
                }
            }
        }
    }

    /// A walk of the whole of `root`, its sorted runs spilled next to the
    /// baselines (design 11.4).
    fn walk(&self, root: &[u8]) -> Result<cj_reconcile::Entries, String> {
        walk(root, &self.excluded, &self.queue().progress, self.spill()).map_err(|e| e.to_string())
    }

    /// Where and when walks spill (design 11.4).
    fn spill(&self) -> Spill<'_> {
        match self.test_spill_bytes {
            Some(n) => Spill::with_bounds(&self.snapshots, n, 0),
            None => Spill::to(&self.snapshots),
        }
    }

    /// `--test-reconcile-delay-ms`: waits as a walk of a big tree would,
    /// interruptible like one.
    fn test_delay(&self) -> Result<(), String> {
        let until = Instant::now() + self.test_delay;
        while Instant::now() < until {
            if self.queue().progress.cancel.load(Ordering::SeqCst)
                || self.queue().stop.load(Ordering::SeqCst)
                || self.queue().final_refresh_asked()
            {
                return Err("interrupted".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The XFS or btrfs fast path (design 11.1): brings `base` up to date
    /// in place from the changed inodes and returns the records of what
    /// changed.
    fn fast_pass(
        &self,
        fsid: u64,
        base: &mut Snapshot,
        touched: &Touched,
        method: Method,
        root_fd: &std::os::fd::OwnedFd,
    ) -> Result<Vec<RecordBody>, String> {
        use std::os::fd::AsRawFd;
        // A fast path costs what changed, about what a scoped walk would:
        // it is not interrupted for one (design 11.8).
        self.queue().preemptible.store(false, Ordering::SeqCst);
        self.enter("finding changed inodes");
        let changed = fast::changed_inodes(root_fd.as_raw_fd(), method, &base.marks)
            .map_err(|e| e.to_string())?;
        self.status(|s| s.last_changed_inodes = changed.len() as u64);
        self.enter("re-reading changed entries");
        let transitions = refresh(
            base,
            root_fd,
            &self.excluded,
            &changed,
            &self.queue().progress,
        )
        .map_err(|e| e.to_string())?;
        self.enter("comparing");
        Ok(diff_transitions(&transitions, base, touched, fsid))
    }

    /// Ends the current phase (recording its duration) and starts `phase`
    /// ("" ends the last one).
    fn enter(&self, phase: &'static str) {
        self.status(|s| {
            let now = Instant::now();
            if let Some(t) = s.phase_started.take() {
                if !s.phase.is_empty() {
                    let ms = now.duration_since(t).as_millis() as u64;
                    s.timings.push((s.phase, ms));
                }
            }
            s.phase = phase;
            s.phase_started = (!phase.is_empty()).then_some(now);
        });
    }

    fn status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self
            .queue()
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// Saves a walk as the new baseline, unless a gap arrived meanwhile.
    /// Saves a baseline ([`save_baseline`]) and publishes its
    /// multiply-linked names to normalisation (`LinkIndex`).
    fn save_baseline(&self, root: &[u8], snap: &Snapshot) -> Result<(), String> {
        let Some(fsid) = self.tracked_fsid(root) else {
            return Err("the root was untracked; its baseline is dropped".into());
        };
        save_baseline(root, snap, &self.snapshots)?;
        if self.tracked_fsid(root).is_none() {
            // Untracked while saving (issue 9, defect 8): no snapshot of an
            // untracked root stays behind.
            Snapshot::remove(&self.snapshots, root);
            self.shared.links.forget(root);
            return Err("the root was untracked; its baseline is dropped".into());
        }
        {
            let linked = snap
                .entries
                .iter()
                .filter(|(_, st)| st.nlink > 1 && st.mode & 0o170000 != 0o040000)
                .map(|(p, st)| (st.ino, p.to_vec()));
            self.shared.links.publish(root, fsid, linked);
        }
        Ok(())
    }

    fn tracked_fsid(&self, root: &[u8]) -> Option<u64> {
        self.shared
            .roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.path == root)
            .map(|r| r.fsid)
    }

    fn finish_baseline(&self, root: &[u8], mut new: Snapshot) -> Result<(), String> {
        self.enter("saving baseline");
        new.valid_after_seq = self.sync()?;
        // A walk that overlapped a new gap may hold part of what it hid, so
        // it is only a baseline if there is no other.
        if !self.gaps_arrived(root) || !Snapshot::file_for(&self.snapshots, root).exists() {
            self.save_baseline(root, &new)?;
        }
        Ok(())
    }

    /// Journals the differences and the `Resolved` record, then (records
    /// durable) replaces the baseline.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        root: &[u8],
        fsid: u64,
        mut new: Snapshot,
        after: u64,
        recs: Vec<RecordBody>,
        marks: FsMarks,
        through: u64,
        started: Instant,
    ) -> Result<u64, String> {
        self.enter("journaling");
        let walk_end = self.sync()?;
        let overlapped = self.gaps_arrived(root);
        let count = recs.len() as u64;
        self.records(recs)?;
        self.records(vec![RecordBody::Resolved(ResolvedRecord {
            after_seq: after,
            through_seq: through,
            fsid,
            scope: root.to_vec(),
            records: count,
        })])?;
        // The records must be durable before the baseline moves on.
        self.sync()?;
        self.status(|s| s.last_resolve_ms = started.elapsed().as_millis() as u64);
        self.enter("saving baseline");
        if !overlapped {
            new.marks = marks;
            new.through_seq = through;
            new.valid_after_seq = walk_end;
            self.save_baseline(root, &new)?;
        }
        Ok(count)
    }
}

/// Returns the memory a walk's threads freed to the system: the C
/// allocator keeps freed memory in each thread's arena, and an idle daemon
/// would otherwise keep the peak of its last walk (design 11.4).
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Saves a baseline once everything it reflects is durable on the tracked
/// filesystem (`syncfs`): a crash of the machine can then never roll the
/// filesystem back behind its baseline, which the fast paths rely on.
fn save_baseline(root: &[u8], new: &Snapshot, dir: &std::path::Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fd = open_root(root).map_err(|e| format!("cannot open root: {e}"))?;
    // SAFETY: a valid descriptor.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } != 0 {
        return Err(format!(
            "syncfs before saving the baseline: {}",
            std::io::Error::last_os_error()
        ));
    }
    new.save(dir).map_err(|e| e.to_string())
}
