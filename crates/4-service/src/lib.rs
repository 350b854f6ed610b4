//! Stage 4 of cj: the daemon.
//!
//! [`run`] opens the state directory and the journal (recovering it), records
//! a gap for the time the daemon was down, starts the capture ->
//! normalisation -> journal pipeline ([`pipeline`]), re-arms the stored
//! roots, and answers clients on a Unix socket ([`server`]) until SIGTERM or
//! SIGINT, when it drains the kernel queue, commits, and leaves a clean-stop
//! marker.

mod clock;
pub mod conn;
mod error;
pub mod pipeline;
pub mod query;
pub mod reconciler;
pub mod server;
pub mod state;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cj_capture::{Fanotify, QueueLimit};
use cj_normalize::Normalizer;
use cj_types::{GapReason, GapRecord, RecordBody};

pub use cj_reconcile;

use error::io;
pub use error::Error;
use pipeline::{Ctl, Exit, Pipeline};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cj";
pub const DEFAULT_SOCKET: &str = "/run/cj/cj.sock";
/// How long a clean stop waits for the last quiet baseline refresh
/// (`Queue::refresh_before_stop`).
pub const STOP_REFRESH_WAIT: Duration = Duration::from_secs(20);
/// Default for how often idle baselines are refreshed.
pub const BASELINE_REFRESH_DEFAULT_SECS: u64 = 600;

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// `KernelDefault` only to force overflows in tests.
    pub queue: QueueLimit,
    pub journal: cj_journal::Options,
    /// Minimum time between fdatasyncs when no client waits (the bound on
    /// how long a change may stay in memory only).
    pub commit_interval: Duration,
    /// Never use the XFS/btrfs fast paths to reconcile (always walk).
    pub reconcile_walk_only: bool,
    /// How often idle baselines are refreshed quietly
    /// (`None`: never).
    pub baseline_refresh: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            queue: QueueLimit::Unlimited,
            journal: cj_journal::Options::default(),
            commit_interval: Duration::from_millis(pipeline::COMMIT_INTERVAL_DEFAULT_MS),
            reconcile_walk_only: false,
            baseline_refresh: Some(Duration::from_secs(BASELINE_REFRESH_DEFAULT_SECS)),
        }
    }
}

/// One log line. Paths in messages go through `cj_types::log_path`; as a
/// last defence, a line break in a message is escaped, so nothing a user
/// names can forge a log line (issue 9, defect 10).
fn log(msg: impl std::fmt::Display) {
    let text = msg.to_string().replace('\n', "\\n");
    eprintln!("cj daemon: {text}");
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), Error> {
    let signals = block_signals();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .map_err(io(&config.state_dir, "create state directory"))?;
    let state_dir = fs::canonicalize(&config.state_dir)
        .map_err(io(&config.state_dir, "resolve state directory"))?;
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700))
        .map_err(io(&state_dir, "chmod"))?;
    let roots = state::load_roots(&state_dir)?;
    let snapshots = state_dir.join("snapshots");
    let journal_options = cj_journal::Options {
        seq_floor: seq_floor(&state_dir, &snapshots, &roots),
        ..config.journal.clone()
    };
    let (writer, reader, recovery) = cj_journal::open(&state_dir.join("journal"), journal_options)?;
    if let Some((a, b)) = recovery.lost {
        log(format!(
            "journal records {a}..={b} were acknowledged but are missing (the journal's tail was \
             cut or its last segment removed); numbering continues at {}, and queries from \
             cursors before {b} will ask for a rescan (journal_damaged)",
            b + 1
        ));
    }
    if recovery.truncated_bytes > 0 {
        log(format!(
            "recovered the journal: cut {} bytes of unacknowledged tail",
            recovery.truncated_bytes
        ));
    }
    for (a, b) in &recovery.damaged {
        log(format!(
            "journal records {a}..={b} are damaged; queries spanning them will ask for a rescan"
        ));
    }
    let stale = cj_reconcile::Snapshot::remove_others(&snapshots, &roots);
    if stale > 0 {
        log(format!(
            "removed {stale} baseline(s) of roots no longer tracked"
        ));
    }
    let clean_stop = state::take_clean_stop(&state_dir)?;
    // Not knowing the last boot only makes the start gap `new_boot` where
    // it may have been `daemon_down`: both are gaps. A full disk must not
    // stop the daemon here.
    let new_boot =
        state::swap_boot_id(&state_dir, &cj_reconcile::fast::boot_id()).unwrap_or_else(|e| {
            log(format!("{e}; the start is treated as a new boot"));
            true
        });
    raise_fd_limit();
    limit_malloc_arenas();
    let fan = Fanotify::new(config.queue).map_err(Error::Fanotify)?;
    let excluded = vec![state_dir.as_os_str().as_bytes().to_vec()];
    // SAFETY: getpid has no preconditions.
    let normalizer = Normalizer::new(unsafe { libc::getpid() }, excluded);
    let (exit_tx, exit_rx) = mpsc::sync_channel::<Exit>(16);
    let pipeline = Pipeline::start(
        config.commit_interval,
        fan,
        normalizer,
        writer,
        exit_tx.clone(),
        state_dir.clone(),
    )
    .map_err(io(&state_dir, "start threads"))?;
    for root in &roots {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = pipeline.send(Ctl::Track {
            path: root.clone(),
            journal: false,
            reply: tx,
        });
        if let Ok(Err(e)) = rx.recv() {
            log(format!(
                "root {} is not captured for now: {e}",
                cj_types::log_path(root)
            ));
        }
    }
    if !recovery.created {
        // Marks are in place before this record, so every change after it
        // is captured; everything between the last record and here is not.
        let clean =
            recovery.lost.is_none() && clean_stop.is_some_and(|c| c.last_seq == recovery.last_seq);
        // Every stat journaled before this gap predates it (design 11.7).
        let quiescent = clean && clean_stop.is_some_and(|c| c.quiescent);
        let (reason, detail) = match (clean, new_boot) {
            (true, false) => (GapReason::DaemonDown, "the daemon was stopped"),
            (true, true) => (
                GapReason::NewBoot,
                "the machine restarted since the daemon last ran",
            ),
            (false, false) => (
                GapReason::UncleanStop,
                "the daemon stopped without a clean shutdown (crash or kill -9)",
            ),
            (false, true) => (
                GapReason::UncleanStop,
                "the machine restarted without a clean daemon shutdown (crash or power loss)",
            ),
        };
        let mut gaps = vec![RecordBody::Gap(GapRecord {
            reason,
            fsid: 0,
            scope: Vec::new(),
            start_time_ns: recovery.last_time_ns,
            flags: if quiescent {
                cj_types::GAP_FLAG_QUIESCENT
            } else {
                0
            },
            detail: detail.as_bytes().to_vec(),
        })];
        // A root whose filesystem is not the one its baseline was taken on
        // (mkfs, another device mounted there) is compared entry by entry.
        for root in &roots {
            let Some(then) = cj_reconcile::Snapshot::load_marks(&state_dir.join("snapshots"), root)
            else {
                continue;
            };
            let Ok(fd) = cj_reconcile::open_root(root) else {
                continue;
            };
            let now = cj_reconcile::fast::fs_uuid(std::os::fd::AsRawFd::as_raw_fd(&fd));
            if now != then.fs_uuid {
                log(format!(
                    "root {} is on another filesystem than its baseline (new UUID); \
                     it is reconciled entry by entry",
                    cj_types::log_path(root)
                ));
                gaps.push(RecordBody::Gap(GapRecord {
                    reason: GapReason::FsChanged,
                    fsid: 0,
                    scope: root.clone(),
                    start_time_ns: recovery.last_time_ns,
                    flags: 0,
                    detail: b"the filesystem under the root changed identity".to_vec(),
                }));
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = pipeline.send(Ctl::Records(gaps));
        let _ = pipeline.send(Ctl::Barrier(tx));
        match rx.recv() {
            Ok(Ok(_)) => {}
            // The state disk is full: the writer waits for room and then
            // journals a gap from the last record on, which covers this one.
            Ok(Err(e)) if pipeline.shared.disk_full.lock().is_ok_and(|f| f.is_some()) => {
                log(format!("start gap not journaled yet: {e}"))
            }
            Ok(Err(e)) => return Err(Error::WriterFailed(e)),
            Err(_) => return Err(Error::WriterFailed("pipeline stopped".into())),
        }
    }
    let reconciler = reconciler::Reconciler {
        shared: pipeline.shared.clone(),
        reader: reader.clone(),
        ctl: pipeline.ctl.clone(),
        waker: pipeline.waker.clone(),
        snapshots: snapshots.clone(),
        excluded: vec![state_dir.as_os_str().as_bytes().to_vec()],
        walk_only: config.reconcile_walk_only,
        refresh_every: config.baseline_refresh,
    };
    let fatal = exit_tx.clone();
    std::thread::Builder::new()
        .name("cj-reconcile".into())
        .spawn(move || {
            // A bug here must not leave gaps silently open forever.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reconciler.run())).is_err()
            {
                let _ = fatal.try_send(Exit::Fatal(
                    "internal error: the reconciler panicked".into(),
                ));
            }
        })
        .map_err(io(&state_dir, "start reconciler thread"))?;
    // Roots without a usable baseline (none, a damaged header, another
    // format version) get one, so that later gaps can be closed.
    let missing: Vec<reconciler::Request> = roots
        .iter()
        .filter(|r| cj_reconcile::Snapshot::load_marks(&snapshots, r).is_none())
        .map(|r| reconciler::Request {
            seq: 0,
            scope: Some(r.clone()),
            fsid: None,
            baseline: true,
        })
        .collect();
    pipeline.shared.reconcile.push(missing);
    let listener = bind_socket(&config.socket)?;
    let ctx = Arc::new(server::Context {
        reader,
        ctl: pipeline.ctl.clone(),
        waker: pipeline.waker.clone(),
        shared: pipeline.shared.clone(),
        state_dir: state_dir.clone(),
        snapshots,
        socket: config.socket.clone(),
        started: Instant::now(),
        roots_lock: Mutex::new(()),
        slots: conn::Slots::default(),
    });
    let ctx2 = ctx.clone();
    std::thread::Builder::new()
        .name("cj-accept".into())
        .spawn(move || server::serve(listener, ctx2))
        .map_err(io(&config.socket, "start server thread"))?;
    let exit_signal = exit_tx.clone();
    std::thread::Builder::new()
        .name("cj-signals".into())
        .spawn(move || wait_signals(signals, exit_signal))
        .map_err(io(&config.socket, "start signal thread"))?;
    log(format!(
        "ready: journal {} at seq {}, socket {}, {} root(s)",
        ctx.reader.journal_id(),
        ctx.reader.durable_seq(),
        config.socket.display(),
        roots.len()
    ));
    let exit = exit_rx
        .recv()
        .unwrap_or(Exit::Fatal("exit channel closed".into()));
    let _ = fs::remove_file(&config.socket);
    match exit {
        Exit::Signal(sig) => {
            log(format!("signal {sig}: bringing baselines up to date"));
            // Quiet refreshes off (`--baseline-refresh-secs 0`): none here
            // either.
            if config.baseline_refresh.is_some()
                && !pipeline
                    .shared
                    .reconcile
                    .refresh_before_stop(STOP_REFRESH_WAIT)
            {
                log("baselines not brought up to date in time; the next start may report already journaled changes again");
            }
            log("draining and committing");
            let shared = pipeline.shared.clone();
            let last = pipeline.shutdown().map_err(Error::WriterFailed)?;
            let quiescent = shared.quiescent.load(std::sync::atomic::Ordering::SeqCst);
            state::write_clean_stop(
                &state_dir,
                state::CleanStop {
                    last_seq: last,
                    quiescent,
                },
            )?;
            log(format!(
                "stopped cleanly at seq {last}{}",
                if quiescent {
                    ""
                } else {
                    " (changes kept coming: the next start compares with the baseline only)"
                }
            ));
            Ok(())
        }
        Exit::Fatal(e) => Err(Error::WriterFailed(e)),
    }
}

/// The durable marks outside the journal that bound where its numbering may
/// continue (design 7 step 5a): the clean-stop marker's last seq and every
/// baseline's seqs (both were durable when written).
fn seq_floor(state_dir: &Path, snapshots: &Path, roots: &[Vec<u8>]) -> u64 {
    let stop = state::peek_clean_stop(state_dir).map_or(0, |c| c.last_seq);
    roots
        .iter()
        .filter_map(|r| cj_reconcile::Snapshot::load_seqs(snapshots, r))
        .map(|(through, valid_after)| through.max(valid_after))
        .fold(stop, u64::max)
}

fn bind_socket(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io(dir, "create socket directory"))?;
        }
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::BadState {
                path: path.to_path_buf(),
                detail: "exists and is not a socket".into(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::SocketInUse {
                path: path.to_path_buf(),
            });
        }
        fs::remove_file(path).map_err(io(path, "remove stale socket"))?;
    }
    // SAFETY: umask only changes this process's file creation mask; the
    // socket is created 0660 with no window where it is wider.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io(path, "bind socket"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io(path, "chmod socket"))?;
    Ok(listener)
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; blocking in the main thread
    // before any thread starts makes every thread inherit the mask, so only
    // the signal thread receives them (through sigwait).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signals(set: libc::sigset_t, exit: mpsc::SyncSender<Exit>) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            let _ = exit.try_send(Exit::Signal(sig));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Client threads would each get a malloc arena of their own, and every
/// arena keeps the high-water mark of the answers built in it: 40 clients
/// of 6 MB answers left 400 MB resident. A few shared arenas keep the
/// daemon's memory near what it uses (issue 9, defect 5).
const MALLOC_ARENAS_MAX: libc::c_int = 4;

fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; called before the
    // daemon's threads start.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_MAX) };
}

fn raise_fd_limit() {
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
