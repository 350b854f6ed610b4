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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cj_capture::Waker;
use cj_journal::Item;
use cj_normalize::is_at_or_below;
use cj_reconcile::{diff, walk, Snapshot, WalkProgress};
use cj_types::{RecordBody, ResolvedRecord};
use std::collections::HashSet;

use crate::pipeline::{now_ns, Ctl, Shared};

/// Requests kept before they are merged into one "everything" request.
pub const RECONCILE_REQUESTS_MAX: usize = 4096;
/// Distinct paths read from the journal for one reconciliation.
pub const TOUCHED_PATHS_MAX: usize = 4_000_000;
/// Renames followed for one reconciliation (each costs a pass over the
/// candidates and the baseline); past it the gap stays open.
pub const RENAMES_FOLLOWED_MAX: usize = 10_000;
/// Records per message sent into the pipeline.
const RECORDS_PER_MESSAGE: usize = 4096;
/// A sync taking longer fails the walk (it is retried by the next request).
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct Request {
    /// The journal seq of the gap or unknown-path record.
    pub seq: u64,
    /// A root path, or `None` for every root (or those on `fsid`).
    pub scope: Option<Vec<u8>>,
    pub fsid: Option<u64>,
    /// Only (re)build the baseline snapshot: nothing to resolve.
    pub baseline: bool,
}

#[derive(Default, Clone, Debug)]
pub struct Status {
    pub running: Option<Vec<u8>>,
    pub walks: u64,
    pub reconciled_records: u64,
    pub last_walk_ms: u64,
    pub last_error: Option<String>,
}

#[derive(Default)]
pub struct Queue {
    pub requests: Mutex<Vec<Request>>,
    pub cv: Condvar,
    pub status: Mutex<Status>,
    pub progress: WalkProgress,
    pub stop: AtomicBool,
    /// The highest seq among requests the reconciler has taken: gaps above
    /// it are not being worked on yet.
    pub taken_through: std::sync::atomic::AtomicU64,
    /// Batches finished: a waiting query that synced before a batch finished
    /// must look again (the batch's records lie past its answer).
    pub completed: std::sync::atomic::AtomicU64,
}

impl Queue {
    pub fn push(&self, reqs: impl IntoIterator<Item = Request>) {
        let mut q = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for r in reqs {
            if q.len() >= RECONCILE_REQUESTS_MAX {
                let seq = q.iter().map(|r| r.seq).max().unwrap_or(0).max(r.seq);
                q.clear();
                q.push(Request {
                    seq,
                    scope: None,
                    fsid: None,
                    baseline: false,
                });
            }
            q.push(r);
        }
        self.cv.notify_all();
    }

    /// True while a walk runs or requests wait.
    pub fn busy(&self) -> bool {
        let pending = !self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        pending
            || self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .running
                .is_some()
    }

    pub fn pending(&self) -> usize {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cv.notify_all();
    }
}

pub struct Reconciler {
    pub shared: Arc<Shared>,
    pub reader: cj_journal::Reader,
    pub ctl: SyncSender<Ctl>,
    pub waker: Arc<Waker>,
    pub snapshots: PathBuf,
    pub excluded: Vec<Vec<u8>>,
}

impl Reconciler {
    fn sync(&self) -> Result<u64, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ctl
            .send(Ctl::Barrier(tx))
            .map_err(|_| "pipeline stopped".to_string())?;
        self.waker.wake();
        match rx.recv_timeout(SYNC_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err("sync timed out".into()),
        }
    }

    fn records(&self, recs: Vec<RecordBody>) -> Result<(), String> {
        let mut recs = recs;
        while !recs.is_empty() {
            let rest = recs.split_off(recs.len().min(RECORDS_PER_MESSAGE));
            self.ctl
                .send(Ctl::Records(recs))
                .map_err(|_| "pipeline stopped".to_string())?;
            recs = rest;
        }
        self.waker.wake();
        Ok(())
    }

    fn queue(&self) -> &Queue {
        &self.shared.reconcile
    }

    pub fn run(self) {
        loop {
            let batch = {
                let mut q = self
                    .queue()
                    .requests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                while q.is_empty() && !self.queue().stop.load(Ordering::SeqCst) {
                    q = self.queue().cv.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                if self.queue().stop.load(Ordering::SeqCst) {
                    return;
                }
                // Busy from the moment requests leave the queue, so that a
                // waiting query never sees "idle" in between.
                self.queue()
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .running = Some(Vec::new());
                let top = q.iter().map(|r| r.seq).max().unwrap_or(0);
                self.queue().taken_through.fetch_max(top, Ordering::SeqCst);
                std::mem::take(&mut *q)
            };
            for (root, baseline) in self.roots_for(&batch) {
                if self.queue().stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = self.reconcile(&root, baseline) {
                    let mut s = self
                        .queue()
                        .status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    s.last_error = Some(format!("{}: {e}", String::from_utf8_lossy(&root)));
                    eprintln!(
                        "cj daemon: reconcile {}: {e}",
                        String::from_utf8_lossy(&root)
                    );
                }
            }
            self.queue().completed.fetch_add(1, Ordering::SeqCst);
            self.queue()
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .running = None;
        }
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
                    (Some(s), _) => is_at_or_below(&r.path, s) || is_at_or_below(s, &r.path),
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
                    Some(s) => is_at_or_below(root, s) || is_at_or_below(s, root),
                    None => true,
                }
        })
    }

    /// Paths below `root` named by journal records in `(after, upto]`.
    /// Fails if that range cannot be read completely: the baseline could then
    /// miss a path that was created and removed, and the gap stays open.
    ///
    /// Renames are followed: a path below a renamed directory (named by the
    /// journal or present in the baseline) also counts under its new name,
    /// in journal order -- that is where it was when the gap began.
    fn touched(
        &self,
        root: &[u8],
        after: u64,
        upto: u64,
        baseline: &Snapshot,
    ) -> Result<HashSet<Vec<u8>>, String> {
        if after + 1 < self.reader.first_seq() {
            return Err("the journal since the baseline has expired; the next walk becomes the new baseline".into());
        }
        let mut out: HashSet<Vec<u8>> = HashSet::new();
        let mut damaged = false;
        let mut too_many = false;
        let mut renames = 0usize;
        self.reader
            .scan(after, upto, |item| {
                match item {
                    Item::Record(r) => {
                        if let RecordBody::Event(e) = r.body {
                            let rename = !e.old_path.is_empty() && !e.path.is_empty();
                            if rename
                                && is_at_or_below(&e.old_path, root)
                                && is_at_or_below(&e.path, root)
                            {
                                renames += 1;
                                follow_rename(&mut out, baseline, &e.old_path, &e.path);
                            }
                            for p in [e.path, e.old_path] {
                                if !p.is_empty() && is_at_or_below(&p, root) {
                                    out.insert(p);
                                }
                            }
                        }
                    }
                    Item::Damaged { .. } => damaged = true,
                }
                too_many = out.len() > TOUCHED_PATHS_MAX || renames > RENAMES_FOLLOWED_MAX;
                !damaged && !too_many
            })
            .map_err(|e| e.to_string())?;
        if damaged {
            return Err(
                "the journal since the baseline is damaged; the next walk becomes the new baseline"
                    .into(),
            );
        }
        if too_many {
            return Err(format!(
                "more than {TOUCHED_PATHS_MAX} paths changed since the baseline"
            ));
        }
        Ok(out)
    }

    fn reconcile(&self, root: &[u8], baseline_only: bool) -> Result<(), String> {
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
                    eprintln!("cj daemon: {e}");
                    None
                }
            }
        };
        {
            let mut s = self
                .queue()
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            s.running = Some(root.to_vec());
        }
        self.queue().progress.entries.store(0, Ordering::Relaxed);
        self.queue()
            .progress
            .directories
            .store(0, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.walk_and_record(root, fsid, old);
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

    fn walk_and_record(
        &self,
        root: &[u8],
        fsid: u64,
        old: Option<Snapshot>,
    ) -> Result<u64, String> {
        let through = self.sync()?;
        let taken_ns = now_ns();
        let entries =
            walk(root, &self.excluded, &self.queue().progress).map_err(|e| e.to_string())?;
        let walk_end = self.sync()?;
        let overlapped = self.gaps_arrived(root);
        let new = Snapshot {
            root: root.to_vec(),
            taken_ns,
            through_seq: through,
            valid_after_seq: walk_end,
            entries,
        };
        let mut count = 0;
        let touched = match &old {
            Some(old) => match self.touched(root, old.through_seq, through, old) {
                Ok(t) => Some(t),
                Err(e) => {
                    // The gap stays open; the walk still becomes the baseline
                    // for later gaps.
                    if !overlapped {
                        new.save(&self.snapshots).map_err(|e| e.to_string())?;
                    }
                    return Err(e);
                }
            },
            None => None,
        };
        if let (Some(old), Some(touched)) = (&old, &touched) {
            let recs = diff(old, &new, touched, fsid);
            count = recs.len() as u64;
            self.records(recs)?;
            self.records(vec![RecordBody::Resolved(ResolvedRecord {
                after_seq: old.valid_after_seq,
                through_seq: through,
                fsid,
                scope: root.to_vec(),
                records: count,
            })])?;
            // The records must be durable before the snapshot moves on.
            self.sync()?;
        }
        if !overlapped || old.is_none() {
            new.save(&self.snapshots).map_err(|e| e.to_string())?;
        }
        Ok(count)
    }
}

/// Adds, for every candidate or baseline path at or below `from`, the same
/// path below `to`.
fn follow_rename(out: &mut HashSet<Vec<u8>>, baseline: &Snapshot, from: &[u8], to: &[u8]) {
    let moved: Vec<Vec<u8>> = out
        .iter()
        .chain(baseline.entries.keys())
        .filter(|p| is_at_or_below(p, from))
        .map(|p| {
            let mut n = to.to_vec();
            n.extend_from_slice(&p[from.len()..]);
            n
        })
        .collect();
    out.extend(moved);
}
