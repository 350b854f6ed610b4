//! The journal writer thread: group commit, reconcile triggers, retention,
//! and waiting out a full state disk (design 6, 6a).

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cj_journal::Writer;
use cj_types::sys::now_ns;
use cj_types::{GapReason, GapRecord, RecordBody};

use crate::inbox::Request;
use crate::shared::{Completion, Exit, Shared};

/// A commit is started once this many bytes are pending, even if more
/// records are queued.
pub const COMMIT_BYTES_MAX: usize = 8 << 20;
/// Commit latencies kept for the status percentiles.
pub const COMMIT_SAMPLES_MAX: usize = 1024;
/// Retention runs at most this often (and when idle this long).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// While the state disk is full, the writer tries to resume this often...
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(1);
/// ... once at least this much is free again (resuming at the first free
/// block would fail again at once: the journal writes in batches).
pub const DISK_FULL_RESUME_FREE_BYTES: u64 = 1 << 20;

pub(crate) enum WriteMsg {
    Records(Vec<RecordBody>),
    /// Every event queued before this time has its records sent already,
    /// and every record sent so far was made (its stat taken) before it.
    Drained(u64),
    Barrier(Completion),
    Shutdown,
}

/// What one group commit appended.
#[derive(Default)]
struct Batch {
    appended: u64,
    /// Reconciliation requests for the gap and unknown-path records in it,
    /// pushed once they are durable.
    triggers: Vec<Request>,
}

pub(crate) struct WriterThread {
    commit_interval: Duration,
    writer: Writer,
    input: Receiver<WriteMsg>,
    shared: Arc<Shared>,
    fatal: SyncSender<Exit>,
    /// Barriers answered after the next commit.
    waiting: Vec<Completion>,
    shutdown: bool,
    /// A write failed for good: every later barrier gets this error.
    failed: Option<String>,
    last_commit: Instant,
    /// Wall clock of the last successful commit (a full disk's gap starts
    /// there).
    last_durable_ns: u64,
    last_retention: Instant,
    full: DiskFull,
}

impl WriterThread {
    pub(crate) fn new(
        commit_interval: Duration,
        writer: Writer,
        input: Receiver<WriteMsg>,
        shared: Arc<Shared>,
        fatal: SyncSender<Exit>,
    ) -> WriterThread {
        WriterThread {
            commit_interval,
            writer,
            input,
            shared,
            fatal,
            waiting: Vec::new(),
            shutdown: false,
            failed: None,
            last_commit: Instant::now(),
            last_durable_ns: now_ns(),
            last_retention: Instant::now(),
            full: DiskFull::default(),
        }
    }

    pub(crate) fn run(mut self, done: SyncSender<Result<u64, String>>) {
        while !self.shutdown {
            let Some(first) = self.next_message() else {
                continue;
            };
            if self.full.since.is_some() {
                // Nothing can be journaled: records are dropped (the gap
                // written on resuming covers them) and barriers refused,
                // never left hanging or answered as if durable.
                self.full.absorb(first, &mut self.shutdown);
                continue;
            }
            let batch = self.gather(first);
            self.commit(batch);
            if self.last_retention.elapsed() > RETENTION_INTERVAL {
                self.retention();
            }
        }
        let result = match (self.failed, self.full.since) {
            (Some(e), _) => Err(e),
            (None, Some(_)) => Err(self.full.message.clone()),
            (None, None) => self.writer.commit().map_err(|e| e.to_string()),
        };
        let _ = done.send(result);
    }

    fn retention(&mut self) {
        if let Err(e) = self.writer.enforce_retention(now_ns()) {
            crate::logging::warn(format!("retention: {e}"));
        }
        self.last_retention = Instant::now();
    }

    /// The next message; `None` after a timeout (retention, or a retry to
    /// resume after a full disk) or when the input is gone (shutdown).
    fn next_message(&mut self) -> Option<WriteMsg> {
        if self.full.since.is_some() && self.full.try_resume(&mut self.writer, &self.shared) {
            self.last_commit = Instant::now();
        }
        let wait = if self.full.since.is_some() {
            DISK_FULL_RETRY
        } else {
            RETENTION_INTERVAL
        };
        match self.input.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => {
                if self.full.since.is_none() {
                    self.retention();
                }
                None
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.shutdown = true;
                None
            }
        }
    }

    /// Group commit: takes everything already queued, up to a byte budget.
    /// Pacing: an fdatasync on a journaling filesystem also commits the
    /// filesystem's own journal, which stalls writers on it; so unless a
    /// client waits for durability, it gathers until the commit interval
    /// has passed.
    fn gather(&mut self, first: WriteMsg) -> Batch {
        let mut batch = Batch::default();
        let pace_until = self.last_commit + self.commit_interval;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriteMsg::Records(recs) => {
                    let time = now_ns();
                    for r in &recs {
                        self.append(time, r, &mut batch);
                    }
                }
                // Right behind the records it covers.
                WriteMsg::Drained(t) => self.append(
                    now_ns(),
                    &RecordBody::Mark(cj_types::MarkRecord {
                        drained_before_ns: t,
                    }),
                    &mut Batch::default(),
                ),
                WriteMsg::Barrier(c) => self.waiting.push(c),
                WriteMsg::Shutdown => self.shutdown = true,
            }
            if self.writer.pending_bytes() < COMMIT_BYTES_MAX && !self.shutdown {
                next = self.input.try_recv().ok();
                if next.is_none() && self.waiting.is_empty() {
                    let now = Instant::now();
                    if now < pace_until {
                        next = self.input.recv_timeout(pace_until - now).ok();
                    }
                }
            }
        }
        batch
    }

    fn append(&mut self, time: u64, r: &RecordBody, batch: &mut Batch) {
        if self.failed.is_some() {
            return;
        }
        match self.writer.append(time, r) {
            Ok(seq) => {
                self.shared.reconcile.note(seq, r);
                batch.triggers.extend(reconcile_trigger(seq, r));
            }
            Err(e) => {
                self.full.last_error_no_space = e.is_no_space();
                self.failed = Some(e.to_string());
            }
        }
        batch.appended += 1;
    }

    /// Writes and syncs the batch, then answers the barriers behind it.
    fn commit(&mut self, batch: Batch) {
        self.last_commit = Instant::now();
        let started = Instant::now();
        let result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => self.writer.commit().map_err(|e| {
                self.full.last_error_no_space = e.is_no_space();
                e.to_string()
            }),
        };
        match &result {
            Ok(_) => self.committed(batch, started),
            Err(e)
                if self
                    .full
                    .enter(&mut self.writer, &self.shared, e, self.last_durable_ns) =>
            {
                self.failed = None
            }
            Err(e) => {
                self.failed = Some(e.clone());
                let _ = self
                    .fatal
                    .try_send(Exit::Fatal(format!("journal write failed: {e}")));
            }
        }
        let result = match (&result, self.full.since) {
            (Err(_), Some(_)) => Err(self.full.message.clone()),
            _ => result,
        };
        for c in self.waiting.drain(..) {
            let _ = c.send(result.clone());
        }
    }

    fn committed(&mut self, batch: Batch, started: Instant) {
        self.last_durable_ns = now_ns();
        if !batch.triggers.is_empty() {
            self.shared.reconcile.push(batch.triggers);
        }
        let mut s = self.shared.commit.lock().unwrap_or_else(|e| e.into_inner());
        s.commits += 1;
        s.records += batch.appended;
        if s.recent_us.len() >= COMMIT_SAMPLES_MAX {
            s.recent_us.pop_front();
        }
        s.recent_us.push_back(started.elapsed().as_micros() as u64);
    }
}

fn reconcile_trigger(seq: u64, r: &RecordBody) -> Option<Request> {
    match r {
        RecordBody::Gap(g) if g.reason != GapReason::JournalDamaged => Some(Request {
            seq,
            scope: (!g.scope.is_empty()).then(|| g.scope.clone()),
            fsid: None,
            baseline: false,
        }),
        RecordBody::Event(e) if e.flags & cj_types::EVENT_FLAG_PATH_UNKNOWN != 0 => Some(Request {
            seq,
            scope: None,
            fsid: Some(e.fsid),
            baseline: false,
        }),
        _ => None,
    }
}

/// The writer's state while the state filesystem is full (design 6a).
#[derive(Default)]
struct DiskFull {
    /// Wall-clock ns of the last successful commit before the first one
    /// that failed for lack of space (where the gap starts).
    since: Option<u64>,
    /// Records dropped since.
    dropped: u64,
    last_error_no_space: bool,
    message: String,
}

impl DiskFull {
    /// After a failed commit: if it failed for lack of space and the
    /// segment could be cut back to what is durable, waits the disk out
    /// instead of stopping the daemon. True if so.
    /// `last_durable_ns`: when the last commit succeeded; the dropped
    /// records (and the changes they stood for) all came after it, so the
    /// gap starts there.
    fn enter(
        &mut self,
        writer: &mut Writer,
        shared: &Shared,
        error: &str,
        last_durable_ns: u64,
    ) -> bool {
        if !self.last_error_no_space {
            return false;
        }
        if let Err(e) = writer.recover_after_failure() {
            crate::logging::warn(format!(
                "cannot cut the journal back after a failed write: {e}"
            ));
            return false;
        }
        if self.since.is_none() {
            let now = now_ns();
            self.since = Some(last_durable_ns);
            self.message = crate::shared::disk_full_message(&shared.state_dir);
            *shared.disk_full.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
            crate::logging::warn(format!("journal write failed ({error}); {}", self.message));
        }
        true
    }

    fn absorb(&mut self, msg: WriteMsg, shutdown: &mut bool) {
        match msg {
            WriteMsg::Records(recs) => self.dropped += recs.len() as u64,
            WriteMsg::Drained(_) => {}
            WriteMsg::Barrier(c) => {
                let _ = c.send(Err(self.message.clone()));
            }
            WriteMsg::Shutdown => *shutdown = true,
        }
    }

    /// Makes room where retention allows, then journals the gap that
    /// covers the time nothing could be journaled. True once it is durable.
    fn try_resume(&mut self, writer: &mut Writer, shared: &Shared) -> bool {
        let Some(since) = self.since else {
            return true;
        };
        if let Err(e) = writer.enforce_retention(now_ns()) {
            crate::logging::warn(format!("retention: {e}"));
        }
        if free_bytes(&shared.state_dir).is_some_and(|b| b < DISK_FULL_RESUME_FREE_BYTES) {
            return false;
        }
        let gap = RecordBody::Gap(GapRecord {
            reason: GapReason::StateDiskFull,
            fsid: 0,
            scope: Vec::new(),
            start_time_ns: since,
            flags: 0,
            detail: format!(
                "the state filesystem was full; {} records could not be journaled",
                self.dropped
            )
            .into_bytes(),
        });
        let committed = writer
            .append(now_ns(), &gap)
            .and_then(|seq| writer.commit().map(|_| seq));
        match committed {
            Ok(seq) => {
                shared.reconcile.note(seq, &gap);
                if let Some(t) = reconcile_trigger(seq, &gap) {
                    shared.reconcile.push([t]);
                }
                crate::logging::warn(format!(
                    "the state filesystem has room again; journaling resumed \
                     ({} records dropped meanwhile are covered by gap {seq})",
                    self.dropped
                ));
                *shared.disk_full.lock().unwrap_or_else(|e| e.into_inner()) = None;
                *self = DiskFull::default();
                true
            }
            Err(e) => {
                if !e.is_no_space() || writer.recover_after_failure().is_err() {
                    crate::logging::warn(format!("cannot resume journaling: {e}"));
                }
                false
            }
        }
    }
}

/// Bytes available to the daemon on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: plain old data filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and output buffer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}
