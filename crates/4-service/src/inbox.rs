//! The reconciler's inbox and what it reports: requests queued by the
//! journal writer (a gap or an unknown-path record became durable), the
//! status `cj status` shows, and the recent gaps. A leaf: the writer, the
//! reconciler and the server all use it, and it uses none of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cj_reconcile::WalkProgress;
use cj_types::path::overlaps;
use cj_types::RecordBody;

/// Requests kept before they are merged into one "everything" request.
pub const RECONCILE_REQUESTS_MAX: usize = 4096;
/// Subtrees waiting for a scoped catch-up (design 11.8); past it a query
/// waits for its root like before.
pub const SCOPED_REQUESTS_MAX: usize = 64;
/// Times one root's reconciliation may be interrupted for scoped
/// catch-ups; after that, scoped requests wait until it is done, so the
/// root is never starved.
pub const PREEMPTIONS_MAX: u32 = 8;

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
    /// From the start of the last reconciliation to its `Resolved` record
    /// being durable (what a waiting client waits).
    pub last_resolve_ms: u64,
    /// `walk`, `xfs-bulkstat` or `btrfs-tree-search`.
    pub last_method: &'static str,
    /// Baselines brought up to date quietly (no gap in the journal).
    pub baseline_refreshes: u64,
    /// How the last quiet refresh found what changed: `journal` (the paths
    /// the journal names), a fast path, or `walk`.
    pub last_refresh: &'static str,
    /// Why the last reconciliation walked instead of a fast path.
    pub last_walk_reason: String,
    /// Subtrees reconciled ahead of their root (scoped catch-up).
    pub scoped_catchups: u64,
    /// From taking the last scoped request to its `Resolved` record being
    /// durable.
    pub last_scoped_ms: u64,
    /// Inodes the last fast path found changed.
    pub last_changed_inodes: u64,
    /// What the running reconciliation is doing.
    pub phase: &'static str,
    /// Entries in the baseline of the running reconciliation (a walk's
    /// expected size).
    pub expected_entries: u64,
    pub phase_started: Option<Instant>,
    /// Milliseconds per phase of the running reconciliation.
    pub timings: Vec<(&'static str, u64)>,
    /// ... and of the last finished one.
    pub last_timings: Vec<(&'static str, u64)>,
    pub last_error: Option<String>,
    /// A failed reconciliation waiting for its next attempt: root, attempt
    /// number, when (issue 9, defect 2: failures are retried, never left).
    pub retry: Option<(Vec<u8>, u32, Instant)>,
}

/// Recent gaps kept for `cj status`.
pub const GAPS_SHOWN_MAX: usize = 32;

/// A gap the daemon journaled, and the roots a `Resolved` record has closed
/// it for since.
#[derive(Clone, Debug)]
pub struct GapEntry {
    pub seq: u64,
    pub reason: &'static str,
    /// Empty: every root.
    pub scope: Vec<u8>,
    pub start_time_ns: u64,
    pub resolved_for: Vec<Vec<u8>>,
}

#[derive(Default)]
pub struct Queue {
    /// The last [`GAPS_SHOWN_MAX`] gaps (written by the journal writer).
    pub gaps: Mutex<std::collections::VecDeque<GapEntry>>,
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
    /// A clean stop asked for a last quiet refresh; told when it is done.
    pub final_refresh: Mutex<Option<SyncSender<()>>>,
    /// Subtrees a waiting query wants reconciled before the rest of their
    /// root (scoped catch-up, design 11.8), at most
    /// [`SCOPED_REQUESTS_MAX`].
    pub scoped: Mutex<Vec<Vec<u8>>>,
    /// Set by the reconciler while the running root reconciliation may be
    /// interrupted for a scoped request.
    pub preemptible: AtomicBool,
    /// A scoped request interrupted the running root reconciliation (which
    /// is then run again, not counted as a failure).
    pub preempted: AtomicBool,
}

impl Queue {
    /// Keeps the status's gap list up to date with a record just journaled.
    pub fn note(&self, seq: u64, r: &RecordBody) {
        // Events (nearly every record) take no lock.
        if !matches!(r, RecordBody::Gap(_) | RecordBody::Resolved(_)) {
            return;
        }
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            RecordBody::Gap(g) => {
                if gaps.len() >= GAPS_SHOWN_MAX {
                    gaps.pop_front();
                }
                gaps.push_back(GapEntry {
                    seq,
                    reason: g.reason.as_str(),
                    scope: g.scope.clone(),
                    start_time_ns: g.start_time_ns,
                    resolved_for: Vec::new(),
                });
            }
            RecordBody::Resolved(rr) => {
                for g in gaps.iter_mut() {
                    let covers = g.scope.is_empty() || overlaps(&g.scope, &rr.scope);
                    if rr.after_seq < g.seq
                        && g.seq <= rr.through_seq
                        && covers
                        && !g.resolved_for.contains(&rr.scope)
                    {
                        g.resolved_for.push(rr.scope.clone());
                    }
                }
            }
            _ => {}
        }
    }

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

    /// Asks for a scoped catch-up of `scope` (a directory below a root)
    /// and interrupts the running root reconciliation if it may be. False
    /// if too many are waiting.
    pub fn ask_scope(&self, scope: &[u8]) -> bool {
        {
            let mut q = self.scoped.lock().unwrap_or_else(|e| e.into_inner());
            if !q.iter().any(|s| s == scope) {
                if q.len() >= SCOPED_REQUESTS_MAX {
                    return false;
                }
                q.push(scope.to_vec());
            }
        }
        if self.preemptible.swap(false, Ordering::SeqCst) {
            self.preempted.store(true, Ordering::SeqCst);
            self.progress.cancel.store(true, Ordering::SeqCst);
        }
        self.cv.notify_all();
        true
    }

    pub(crate) fn take_scoped(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.scoped.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn scoped_waiting(&self) -> bool {
        !self
            .scoped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
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

    /// Asks the reconciler, at a clean stop, to bring every baseline up to
    /// date from the journal (design 11.5) while capture still runs, so the
    /// next start compares with the state at the stop and reports only what
    /// changed while the daemon was down. Waits at most `wait` (a running
    /// reconciliation finishes first); `false` if it did not happen in time,
    /// which costs only false positives later.
    pub fn refresh_before_stop(&self, wait: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        *self.final_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.cv.notify_all();
        rx.recv_timeout(wait).is_ok()
    }

    pub(crate) fn final_refresh_asked(&self) -> bool {
        self.final_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}
