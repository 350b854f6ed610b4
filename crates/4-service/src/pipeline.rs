//! The three threads data flows through, joined by bounded channels:
//!
//! ```text
//!  kernel --read()--> [capture] --buffers--> [normalise] --records--> [journal writer] --> disk
//!     ^                   |  ^                                              |
//!     marks           control (track, untrack, barrier)           durable seq, barrier replies
//! ```
//!
//! Back-pressure: the capture thread owns a fixed pool of read buffers. When
//! normalisation or the disk is slow, the pool runs dry and capture stops
//! reading; events then wait in the kernel's (unlimited) queue instead of in
//! our memory. Clients never sit on this path: queries read the journal files
//! through their own readers, so a slow client cannot stall capture.
//!
//! Barriers make `cj cursor` exact. A barrier registered before a read that
//! drained the kernel queue proves every event queued before the barrier was
//! read; it then travels behind those events through normalisation and is
//! answered by the writer with the durable sequence number that covers them.

use std::collections::HashMap;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cj_capture::{fsid_of, Fanotify, Waker};
use cj_journal::Writer;
use cj_normalize::{sys as nsys, Normalizer};
use cj_types::{GapReason, GapRecord, RecordBody, RootRecord};

use crate::shared::{RootState, Shared};
use crate::state::ROOTS_MAX;
use crate::writer::{WriteMsg, WriterThread};

/// Bytes per `read(2)` of the fanotify descriptor.
pub const READ_BUFFER_BYTES: usize = 512 * 1024;
/// Read buffers in flight between capture and normalisation.
pub const READ_BUFFERS: usize = 8;
/// No single fanotify event is longer (header + 3 handles + 2 names, padded).
pub const EVENT_BYTES_MAX: usize = 4096;
/// After draining the queue, capture waits this long before reading again,
/// so the next read returns a large batch (and the kernel merges more).
pub const NAP_MS: u64 = 10;
/// Period of root health checks (unmount detection, retries).
pub const HOUSEKEEPING_MS: u64 = 1000;
pub const CONTROL_QUEUE_MAX: usize = 256;
pub const NORMALIZE_QUEUE_MAX: usize = READ_BUFFERS + 64;
pub const WRITE_QUEUE_MAX: usize = 64;
/// Default minimum time between two fdatasyncs while nobody waits for
/// durability: the bound on the commit delay (`--commit-interval-ms`).
pub const COMMIT_INTERVAL_DEFAULT_MS: u64 = 100;
/// The normaliser's names, left by a clean stop for the next run (5.9).
pub const NAMES_HANDOFF_FILE: &str = "names-handoff";

/// For the next run, if it takes over the fanotify group (design 5.9);
/// without the file it reports unknown paths where names are missing.
fn save_names_handoff(normalizer: &Normalizer, state_dir: &std::path::Path) {
    let file = state_dir.join(NAMES_HANDOFF_FILE);
    if let Err(e) = cj_types::fsutil::write_atomic(&file, &normalizer.names_handoff()) {
        crate::logging::log(format!(
            "cannot save the names for the next run ({} {}: {})",
            e.op,
            e.path.display(),
            e.source
        ));
    }
}

/// Barriers waiting at once.
pub const BARRIERS_MAX: usize = 1024;
/// Drain marks are written at most this often (`normalize_loop`).
pub const MARK_INTERVAL: Duration = Duration::from_millis(50);
/// Read-and-settle rounds a clean stop tries before giving up on proving
/// quiescence (`Capture::quiesce`).
pub const QUIESCE_ROUNDS_MAX: usize = 8;
/// How long one such round may wait for normalisation and the commit.
pub const QUIESCE_WAIT: Duration = Duration::from_secs(10);

const _: () = assert!(EVENT_BYTES_MAX * 8 < READ_BUFFER_BYTES);

pub use crate::shared::{Completion, Exit};

pub enum Ctl {
    /// Start tracking a root. `journal`: write a Track record (false when
    /// re-arming roots at start-up).
    Track {
        path: Vec<u8>,
        journal: bool,
        reply: Completion,
    },
    Untrack {
        path: Vec<u8>,
        reply: Completion,
    },
    Barrier(Completion),
    /// Records to journal in order with captured events (start-up gaps).
    Records(Vec<RecordBody>),
    /// Start reading events (a pipeline started with `hold` waits for it:
    /// a group taken over from the last run already holds events, which
    /// must not be read before the roots are re-armed).
    Resume,
    Shutdown,
}

enum NormMsg {
    /// A buffer and the bytes read into it; with when the read started
    /// (monotonic, and wall clock for the journal) when it proved the kernel
    /// queue empty: every event queued before then is in this buffer or an
    /// earlier one.
    Events(Vec<u8>, usize, Option<(Instant, u64)>),
    AddRoot {
        path: Vec<u8>,
        fsid: u64,
        fd: OwnedFd,
    },
    RemoveRoot(Vec<u8>),
    Records(Vec<RecordBody>),
    Barrier(Completion),
    Shutdown,
}

/// Records per message sent into the pipeline by the port.
const RECORDS_PER_MESSAGE: usize = 4096;
/// A sync through the port taking longer fails (the reconciliation that
/// asked is retried).
pub const PORT_SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The reconciler's way into the journal (`port::JournalPort`): records and
/// barriers travel the control channel like any client's.
pub struct PipelinePort {
    pub ctl: SyncSender<Ctl>,
    pub waker: Arc<Waker>,
}

impl crate::port::JournalPort for PipelinePort {
    fn append(&self, records: Vec<RecordBody>) -> Result<(), String> {
        let mut recs = records;
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

    fn sync(&self) -> Result<u64, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ctl
            .send(Ctl::Barrier(tx))
            .map_err(|_| "pipeline stopped".to_string())?;
        self.waker.wake();
        match rx.recv_timeout(PORT_SYNC_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err("sync timed out".into()),
        }
    }
}

pub struct Pipeline {
    pub ctl: SyncSender<Ctl>,
    pub waker: Arc<Waker>,
    pub shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    done: Receiver<Result<u64, String>>,
}

impl Pipeline {
    pub fn start(
        commit_interval: Duration,
        fan: Fanotify,
        normalizer: Normalizer,
        writer: Writer,
        fatal: SyncSender<Exit>,
        state_dir: std::path::PathBuf,
        hold: bool,
    ) -> std::io::Result<Pipeline> {
        let waker = Arc::new(Waker::new()?);
        let shared = Arc::new(Shared {
            state_dir,
            ..Shared::default()
        });
        let normalizer = normalizer.with_links(shared.links.clone());
        let (ctl_tx, ctl_rx) = mpsc::sync_channel(CONTROL_QUEUE_MAX);
        let (norm_tx, norm_rx) = mpsc::sync_channel(NORMALIZE_QUEUE_MAX);
        let (write_tx, write_rx) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let (free_tx, free_rx) = mpsc::sync_channel(READ_BUFFERS);
        for _ in 0..READ_BUFFERS {
            free_tx
                .send(vec![0u8; READ_BUFFER_BYTES])
                .expect("pool has room");
        }
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let mut threads = Vec::new();
        let capture = Capture {
            fan,
            waker: waker.clone(),
            ctl: ctl_rx,
            out: norm_tx,
            free: free_rx,
            roots: HashMap::new(),
            marked: HashMap::new(),
            pending_barriers: Vec::new(),
            shared: shared.clone(),
            fatal: fatal.clone(),
            clock: crate::clock::ClockWatch::new().ok(),
            held: hold,
        };
        threads.push(spawn("cj-capture", fatal.clone(), move || capture.run())?);
        let sh = shared.clone();
        threads.push(spawn("cj-normalize", fatal.clone(), move || {
            normalize_loop(normalizer, norm_rx, write_tx, free_tx, sh)
        })?);
        let sh = shared.clone();
        let fatal2 = fatal.clone();
        threads.push(spawn("cj-writer", fatal2, move || {
            WriterThread::new(commit_interval, writer, write_rx, sh, fatal).run(done_tx)
        })?);
        Ok(Pipeline {
            ctl: ctl_tx,
            waker,
            shared,
            threads,
            done: done_rx,
        })
    }

    /// Sends a control message and wakes the capture thread.
    pub fn send(&self, msg: Ctl) -> Result<(), String> {
        self.ctl
            .send(msg)
            .map_err(|_| "the capture thread has stopped".to_string())?;
        self.waker.wake();
        Ok(())
    }

    /// Stops reading, drains what the kernel queued, commits it, and returns
    /// the last durable sequence number.
    pub fn shutdown(self) -> Result<u64, String> {
        let _ = self.send(Ctl::Shutdown);
        let result = self
            .done
            .recv()
            .unwrap_or_else(|_| Err("journal writer stopped without a result".into()));
        for t in self.threads {
            let _ = t.join();
        }
        result
    }
}

/// Starts a pipeline thread. If it panics (a bug), the daemon is told to
/// stop: a pipeline with a dead stage would silently stop journaling.
fn spawn(
    name: &str,
    fatal: SyncSender<Exit>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let label = name.to_string();
    thread::Builder::new().name(name.into()).spawn(move || {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            let _ = fatal.try_send(Exit::Fatal(format!(
                "internal error: thread {label} panicked"
            )));
        }
    })
}

struct MarkedRoot {
    fsid: u64,
    dev: u64,
}

struct Capture {
    fan: Fanotify,
    waker: Arc<Waker>,
    ctl: Receiver<Ctl>,
    out: SyncSender<NormMsg>,
    free: Receiver<Vec<u8>>,
    /// Tracked roots and the filesystem they were marked on.
    roots: HashMap<Vec<u8>, Option<MarkedRoot>>,
    /// fsid -> number of roots on it.
    marked: HashMap<u64, usize>,
    pending_barriers: Vec<Completion>,
    shared: Arc<Shared>,
    fatal: SyncSender<Exit>,
    /// `None` if the kernel refused a timerfd (then clock steps are only
    /// noticed across restarts, `docs/design.md`).
    clock: Option<crate::clock::ClockWatch>,
    /// Not reading events until `Ctl::Resume`.
    held: bool,
}

fn dev_of(path: &[u8]) -> Option<u64> {
    let fd = nsys::open_dir_nofollow(path).ok()?;
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some(st.st_dev)
}

fn fs_type_of(fd: &OwnedFd) -> String {
    cj_types::sys::fs_magic_of(fd.as_raw_fd())
        .map(cj_types::sys::fs_magic::name)
        .unwrap_or_else(|_| "unknown".into())
}

impl Capture {
    fn run(mut self) {
        let mut last_housekeeping = Instant::now();
        loop {
            let shutdown = self.control();
            if self.held && !shutdown {
                let _ = self
                    .fan
                    .wait_waker_only(&self.waker, HOUSEKEEPING_MS as i32);
                continue;
            }
            let armed = std::mem::take(&mut self.pending_barriers);
            if self.drain().is_none() {
                return;
            }
            for b in armed {
                if self.out.send(NormMsg::Barrier(b)).is_err() {
                    return;
                }
            }
            if shutdown {
                let quiet = self.quiesce();
                self.shared
                    .quiescent
                    .store(quiet, std::sync::atomic::Ordering::SeqCst);
                let _ = self.out.send(NormMsg::Shutdown);
                return;
            }
            if last_housekeeping.elapsed() >= Duration::from_millis(HOUSEKEEPING_MS) {
                self.housekeeping();
                last_housekeeping = Instant::now();
            }
            if !self.pending_barriers.is_empty() {
                continue;
            }
            // Nap (interruptible by control messages), then wait for events.
            let _ = self.fan.wait_waker_only(&self.waker, NAP_MS as i32);
            match self.fan.wait(&self.waker, HOUSEKEEPING_MS as i32) {
                Ok(_) => {}
                Err(e) => {
                    let _ = self
                        .fatal
                        .try_send(Exit::Fatal(format!("poll on fanotify failed: {e}")));
                    return;
                }
            }
        }
    }

    /// Reads until a read returns less than a full buffer, which proves the
    /// kernel queue was empty at that moment. False if the pipeline is gone.
    /// Reads until a read proves the queue empty. Returns the bytes of
    /// events read, `None` if the pipeline stopped or reading failed.
    fn drain(&mut self) -> Option<usize> {
        let mut total = 0;
        loop {
            let Ok(mut buf) = self.free.recv() else {
                return None;
            };
            let started = (Instant::now(), now_ns());
            let n = match self.fan.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = self
                        .fatal
                        .try_send(Exit::Fatal(format!("reading fanotify events failed: {e}")));
                    return None;
                }
            };
            total += n;
            let drained = n + EVENT_BYTES_MAX < buf.len();
            // An empty buffer goes back through the normaliser's pool
            // channel too.
            if self
                .out
                .send(NormMsg::Events(buf, n, drained.then_some(started)))
                .is_err()
            {
                return None;
            }
            if drained {
                return Some(total);
            }
        }
    }

    /// At a clean stop, after the last drain: proves that every stat
    /// normalisation journaled was taken before a read that found the
    /// queue empty, so every change made before any of those stats has its
    /// record in the journal (design 11.7). Each round waits until
    /// everything read so far is normalised and committed (a barrier), then
    /// reads again; a read that finds nothing ends it. Changes that keep
    /// coming for [`QUIESCE_ROUNDS_MAX`] rounds end it unproven.
    fn quiesce(&mut self) -> bool {
        for _ in 0..QUIESCE_ROUNDS_MAX {
            let (tx, rx) = mpsc::sync_channel(1);
            if self.out.send(NormMsg::Barrier(tx)).is_err() {
                return false;
            }
            match rx.recv_timeout(QUIESCE_WAIT) {
                Ok(Ok(_)) => {}
                _ => return false,
            }
            match self.drain() {
                Some(0) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
        false
    }

    /// Handles queued control messages. Returns true on shutdown.
    fn control(&mut self) -> bool {
        self.waker.drain();
        let mut shutdown = false;
        while let Ok(msg) = self.ctl.try_recv() {
            match msg {
                Ctl::Track {
                    path,
                    journal,
                    reply,
                } => self.track(path, journal, reply),
                Ctl::Untrack { path, reply } => self.untrack(path, reply),
                Ctl::Barrier(c) => {
                    if self.pending_barriers.len() >= BARRIERS_MAX {
                        let _ = c.send(Err("too many concurrent sync requests; retry".into()));
                    } else {
                        self.pending_barriers.push(c);
                    }
                }
                Ctl::Records(r) => {
                    let _ = self.out.send(NormMsg::Records(r));
                }
                Ctl::Resume => self.held = false,
                Ctl::Shutdown => shutdown = true,
            }
        }
        shutdown
    }

    fn set_root_state(&self, path: &[u8], fsid: u64, fs_type: String, unavailable: Option<String>) {
        let mut roots = self.shared.roots.lock().unwrap_or_else(|e| e.into_inner());
        roots.retain(|r| r.path != path);
        roots.push(RootState {
            path: path.to_vec(),
            fsid,
            fs_type,
            unavailable,
        });
        roots.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Marks the filesystem of `path` and tells normalisation. On success
    /// returns the root's fsid.
    fn arm(&mut self, path: &[u8]) -> Result<u64, String> {
        let show = cj_types::log_path(path);
        let fd = nsys::open_dir_for_handles(path).map_err(|e| {
            format!("cannot open {show} as a directory without following symlinks: {e}")
        })?;
        let fsid = fsid_of(fd.as_raw_fd()).map_err(|e| format!("statfs {show}: {e}"))?;
        if !self.marked.contains_key(&fsid) {
            self.fan
                .mark_filesystem(fd.as_raw_fd(), std::path::Path::new(&show), false)
                .map_err(|e| e.to_string())?;
        }
        *self.marked.entry(fsid).or_insert(0) += 1;
        let dev = dev_of(path).unwrap_or(0);
        self.roots
            .insert(path.to_vec(), Some(MarkedRoot { fsid, dev }));
        let fs_type = fs_type_of(&fd);
        self.set_root_state(path, fsid, fs_type, None);
        self.out
            .send(NormMsg::AddRoot {
                path: path.to_vec(),
                fsid,
                fd,
            })
            .map_err(|_| "pipeline stopped".to_string())?;
        Ok(fsid)
    }

    fn disarm(&mut self, path: &[u8]) {
        if let Some(Some(m)) = self.roots.get(path) {
            let fsid = m.fsid;
            if let Some(n) = self.marked.get_mut(&fsid) {
                *n -= 1;
                if *n == 0 {
                    self.marked.remove(&fsid);
                    if let Ok(fd) = nsys::open_dir_nofollow(path) {
                        // Fails harmlessly if the mark already vanished (unmount).
                        let _ = self.fan.mark_filesystem(
                            fd.as_raw_fd(),
                            std::path::Path::new(""),
                            true,
                        );
                    }
                }
            }
        }
        self.roots.insert(path.to_vec(), None);
        let _ = self.out.send(NormMsg::RemoveRoot(path.to_vec()));
    }

    fn track(&mut self, path: Vec<u8>, journal: bool, reply: Completion) {
        if matches!(self.roots.get(&path), Some(Some(_))) {
            let _ = self.out.send(NormMsg::Barrier(reply));
            return;
        }
        if self.roots.len() >= ROOTS_MAX && !self.roots.contains_key(&path) {
            let _ = reply.send(Err(format!("at most {ROOTS_MAX} roots can be tracked")));
            return;
        }
        match self.arm(&path) {
            Ok(fsid) => {
                if journal {
                    let rec = RecordBody::Track(RootRecord {
                        fsid,
                        path: path.clone(),
                    });
                    let _ = self.out.send(NormMsg::Records(vec![rec]));
                }
                let _ = self.out.send(NormMsg::Barrier(reply));
            }
            Err(e) => {
                if !journal {
                    // A stored root that cannot be armed at start-up stays
                    // listed as unavailable and is retried.
                    self.roots.insert(path.clone(), None);
                    self.set_root_state(&path, 0, "unknown".into(), Some(e.clone()));
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn untrack(&mut self, path: Vec<u8>, reply: Completion) {
        if !self.roots.contains_key(&path) {
            let show = cj_types::log_path(&path);
            let _ = reply.send(Err(format!(
                "{show} is not tracked; `cj status` lists the roots"
            )));
            return;
        }
        let fsid = self
            .roots
            .get(&path)
            .and_then(|m| m.as_ref().map(|m| m.fsid))
            .unwrap_or(0);
        self.disarm(&path);
        self.roots.remove(&path);
        {
            let mut roots = self.shared.roots.lock().unwrap_or_else(|e| e.into_inner());
            roots.retain(|r| r.path != path);
        }
        let rec = RecordBody::Untrack(RootRecord { fsid, path });
        let _ = self.out.send(NormMsg::Records(vec![rec]));
        let _ = self.out.send(NormMsg::Barrier(reply));
    }

    /// Detects roots whose filesystem went away (the kernel drops the mark
    /// silently on unmount) and re-arms roots that became available again.
    /// Each loss becomes a gap record for that root.
    fn housekeeping(&mut self) {
        if self.clock.as_ref().is_some_and(|c| c.stepped()) && !self.roots.is_empty() {
            let gap = RecordBody::Gap(GapRecord {
                reason: GapReason::ClockStep,
                fsid: 0,
                scope: Vec::new(),
                start_time_ns: now_ns(),
                flags: 0,
                detail:
                    b"the wall clock was set; ctime comparisons are void until every root is walked"
                        .to_vec(),
            });
            let _ = self.out.send(NormMsg::Records(vec![gap]));
        }
        let paths: Vec<Vec<u8>> = self.roots.keys().cloned().collect();
        for path in paths {
            let lost = match self.roots.get(&path) {
                Some(Some(m)) => dev_of(&path) != Some(m.dev),
                _ => false,
            };
            let unarmed = matches!(self.roots.get(&path), Some(None));
            if lost {
                self.disarm(&path);
                let reason = "the filesystem was unmounted or replaced";
                self.set_root_state(&path, 0, "unknown".into(), Some(reason.into()));
                self.gap(&path, reason);
            } else if unarmed && self.arm(&path).is_ok() {
                self.gap(&path, "the root was unavailable and is captured again");
            }
        }
    }

    fn gap(&self, scope: &[u8], detail: &str) {
        let gap = RecordBody::Gap(GapRecord {
            reason: GapReason::Unmounted,
            fsid: 0,
            scope: scope.to_vec(),
            start_time_ns: now_ns(),
            flags: 0,
            detail: detail.as_bytes().to_vec(),
        });
        let _ = self.out.send(NormMsg::Records(vec![gap]));
    }
}

/// Gap records and unknown-path records ask the reconciler to close them.
pub(crate) use cj_types::sys::now_ns;

/// One read's events. After a read that found the queue empty nothing
/// stays open on tracked filesystems, so that they can be unmounted.
fn normalize_events(
    normalizer: &mut Normalizer,
    buf: &[u8],
    drained: bool,
    out: &mut Vec<RecordBody>,
) {
    normalizer.process(buf, out);
    if drained {
        normalizer.release_descriptors();
    }
}

fn normalize_loop(
    mut normalizer: Normalizer,
    input: Receiver<NormMsg>,
    out: SyncSender<WriteMsg>,
    free: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut records = Vec::new();
    // When the newest records not yet covered by a drain mark were done
    // (their stats were all taken before it), and when the last mark went.
    // (Monotonic: a wall-clock step must not fake the order.)
    let mut uncovered_since: Option<Instant> = None;
    let mut last_mark: Option<Instant> = None;
    while let Ok(msg) = input.recv() {
        let forward = match msg {
            NormMsg::Events(buf, n, drained) => {
                normalize_events(&mut normalizer, &buf[..n], drained.is_some(), &mut records);
                let _ = free.send(buf);
                *shared.normalize.lock().unwrap_or_else(|e| e.into_inner()) = normalizer.stats;
                if !records.is_empty() {
                    uncovered_since = Some(Instant::now());
                    if out
                        .send(WriteMsg::Records(std::mem::take(&mut records)))
                        .is_err()
                    {
                        return;
                    }
                }
                // A drain mark: a read that started after every record
                // sent so far was done (so after all their stats) found the
                // queue empty (design 11.7). At most one per MARK_INTERVAL.
                match (drained, uncovered_since) {
                    (Some((read_at, t)), Some(done))
                        if read_at > done
                            && last_mark.is_none_or(|m| m.elapsed() >= MARK_INTERVAL) =>
                    {
                        uncovered_since = None;
                        last_mark = Some(Instant::now());
                        WriteMsg::Drained(t)
                    }
                    _ => continue,
                }
            }
            NormMsg::AddRoot { path, fsid, fd } => {
                normalizer.add_root(path, fsid, fd);
                continue;
            }
            NormMsg::RemoveRoot(path) => {
                normalizer.remove_root(&path);
                continue;
            }
            NormMsg::Records(r) => WriteMsg::Records(r),
            NormMsg::Barrier(c) => {
                // Nothing deferred may stay behind a cursor.
                normalizer.flush(&[], true, &mut records);
                if !records.is_empty()
                    && out
                        .send(WriteMsg::Records(std::mem::take(&mut records)))
                        .is_err()
                {
                    return;
                }
                WriteMsg::Barrier(c)
            }
            NormMsg::Shutdown => {
                normalizer.flush(&[], true, &mut records);
                if !records.is_empty() {
                    let _ = out.send(WriteMsg::Records(std::mem::take(&mut records)));
                }
                save_names_handoff(&normalizer, &shared.state_dir);
                let _ = out.send(WriteMsg::Shutdown);
                return;
            }
        };
        if out.send(forward).is_err() {
            return;
        }
    }
}
