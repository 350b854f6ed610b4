//! The daemon's life: [`Daemon::start`] (state, journal recovery, capture,
//! roots, start gaps, reconciler), [`Daemon::serve`] (the socket server on
//! a listener the caller bound), [`Daemon::wait`] and [`Daemon::stop`]
//! (last refresh, drain, commit, clean-stop marker).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cj_capture::Fanotify;
use cj_normalize::Normalizer;
use cj_types::RecordBody;

use crate::config::{Config, STOP_REFRESH_WAIT};
use crate::error::io;
use crate::error::Error;
use crate::logging::log;
use crate::pipeline::{Ctl, Exit, Pipeline};
use crate::start::{start_gaps, StartFacts};
use crate::{conn, inbox, pipeline, reconciler, sd, server, state};

/// Messages the exit channel holds (signals and fatal errors).
const EXIT_QUEUE_MAX: usize = 16;
/// How often the consumers' retention pin is recomputed (idle policy).
const PIN_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Daemon {
    config: Config,
    state_dir: PathBuf,
    pipeline: Pipeline,
    ctx: Arc<server::Context>,
    exit_tx: SyncSender<Exit>,
    exit_rx: Receiver<Exit>,
    roots: usize,
    shutdown: Arc<AtomicBool>,
}

impl Daemon {
    /// Opens the state directory and recovers the journal, starts capture,
    /// re-arms the stored roots, journals the start gaps and starts the
    /// reconciler. Clients are served once [`Daemon::serve`] is called.
    pub fn start(config: Config) -> Result<Daemon, Error> {
        let state_dir = open_state_dir(&config.state_dir)?;
        let roots = state::load_roots(&state_dir)?;
        let snapshots = state_dir.join("snapshots");
        let options = cj_journal::Options {
            seq_floor: seq_floor(&state_dir, &snapshots, &roots),
            ..config.journal.clone()
        };
        let (writer, reader, recovery) = cj_journal::open(&state_dir.join("journal"), options)?;
        log_recovery(&recovery);
        let stale = cj_reconcile::Snapshot::remove_others(&snapshots, &roots);
        if stale > 0 {
            log(format!(
                "removed {stale} baseline(s) of roots no longer tracked"
            ));
        }
        let consumers = Arc::new(crate::consumers::Consumers::load(
            &state_dir,
            config.consumer_idle,
        )?);
        let clean_stop = state::take_clean_stop(&state_dir)?;
        // Not knowing the last boot only makes the start gap `new_boot`
        // where it may have been `daemon_down`: both are gaps. A full disk
        // must not stop the daemon here.
        let new_boot = state::swap_boot_id(&state_dir, &cj_reconcile::fast::boot_id())
            .unwrap_or_else(|e| {
                log(format!("{e}; the start is treated as a new boot"));
                true
            });
        raise_fd_limit();
        limit_malloc_arenas();
        let (exit_tx, exit_rx) = mpsc::sync_channel::<Exit>(EXIT_QUEUE_MAX);
        let clean = crate::start::was_clean(recovery.lost.is_some(), clean_stop, recovery.last_seq);
        let (pipeline, inherited_group) =
            start_capture(&config, &state_dir, writer, exit_tx.clone(), &roots, clean)?;
        pipeline.shared.tunables.set(&config);
        *pipeline
            .shared
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(config.grants.clone());
        *pipeline
            .shared
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = config.summary();
        let facts = StartFacts {
            created: recovery.created,
            last_seq: recovery.last_seq,
            last_time_ns: recovery.last_time_ns,
            lost: recovery.lost.is_some(),
            clean_stop,
            new_boot,
            changed_fs: changed_filesystems(&snapshots, &roots),
            inherited_group,
        };
        journal_start_gaps(&pipeline, &facts)?;
        start_reconciler(&config, &state_dir, &pipeline, &reader, exit_tx.clone())?;
        request_missing_baselines(&pipeline, &snapshots, &roots);
        let shutdown = Arc::new(AtomicBool::new(false));
        let ctx = context(&config, &state_dir, reader, &pipeline, consumers, &shutdown);
        Ok(Daemon {
            config,
            state_dir,
            pipeline,
            ctx,
            exit_tx,
            exit_rx,
            roots: roots.len(),
            shutdown,
        })
    }

    /// Answers clients on `listener` (already bound) from a thread of its
    /// own, until [`Daemon::stop`].
    pub fn serve(&self, listener: UnixListener) -> Result<(), Error> {
        let ctx = self.ctx.clone();
        let shutdown = self.shutdown.clone();
        std::thread::Builder::new()
            .name("cj-accept".into())
            .spawn(move || server::serve(listener, ctx, &shutdown))
            .map_err(io(&self.config.socket, "start server thread"))?;
        // Idle consumers stop pinning without anyone asking.
        let ctx = self.ctx.clone();
        std::thread::Builder::new()
            .name("cj-consumers".into())
            .spawn(move || {
                while !ctx.stopping.load(Ordering::SeqCst) {
                    server::refresh_pin(&ctx);
                    std::thread::sleep(PIN_REFRESH_INTERVAL);
                }
            })
            .map_err(io(&self.config.socket, "start consumer thread"))?;
        // Sealed segments get their summaries in the background (5.11).
        crate::summary::spawn(self.ctx.reader.clone(), self.ctx.stopping.clone())
            .map_err(io(&self.config.socket, "start summary thread"))?;
        let ready = format!(
            "ready: journal {} at seq {}, socket {}, {} root(s)",
            self.ctx.reader.journal_id(),
            self.ctx.reader.durable_seq(),
            self.config.socket.display(),
            self.roots
        );
        log(&ready);
        if let Err(e) = sd::notify(&format!("READY=1\nSTATUS={ready}"), &[]) {
            log(format!("cannot tell systemd the daemon is ready: {e}"));
        }
        if let Some(interval) = sd::watchdog_interval() {
            let ctx = self.ctx.clone();
            std::thread::Builder::new()
                .name("cj-watchdog".into())
                .spawn(move || watchdog(&ctx, interval))
                .map_err(io(&self.config.socket, "start watchdog thread"))?;
        }
        Ok(())
    }

    /// The Watchman-protocol socket to serve, if configured.
    pub fn watchman_socket(&self) -> Option<std::path::PathBuf> {
        self.config.watchman_socket.clone()
    }

    /// Answers Watchman clients on `listener` (issue 14).
    pub fn serve_watchman(&self, listener: UnixListener) -> Result<(), Error> {
        let Some(path) = self.config.watchman_socket.clone() else {
            return Ok(());
        };
        let ep = Arc::new(crate::watchman::Endpoint::new(
            self.ctx.clone(),
            path.clone(),
            vec![self.ctx.state_dir.as_os_str().as_bytes().to_vec()],
        ));
        let shutdown = self.shutdown.clone();
        std::thread::Builder::new()
            .name("cj-wm-accept".into())
            .spawn(move || crate::watchman::serve(listener, ep, &shutdown))
            .map_err(io(&path, "start the Watchman thread"))?;
        log(format!("Watchman protocol on {}", path.display()));
        Ok(())
    }

    /// Where signals and fatal errors are sent to end [`Daemon::wait`].
    pub fn exit_sender(&self) -> SyncSender<Exit> {
        self.exit_tx.clone()
    }

    /// Blocks until a signal or a fatal error.
    pub fn wait(&self) -> Exit {
        self.exit_rx
            .recv()
            .unwrap_or(Exit::Fatal("exit channel closed".into()))
    }

    /// SIGHUP: reads the configuration file again and applies what can
    /// change while running (retention, the consumer cap and idle policy,
    /// the follower stall limit, quiet refreshes), saying what changed. A
    /// file that is not valid changes nothing (the running configuration
    /// stays); settings that need a restart are named.
    pub fn reload(&mut self) {
        let Some(r) = self.config.reload.clone() else {
            log("SIGHUP: no configuration file in use (start with --config FILE); nothing to reload");
            return;
        };
        let settings = match crate::config_file::Settings::load(&r.file) {
            Ok(s) => s.overridden_by(&r.flags),
            Err(e) => {
                log(format!("SIGHUP: {e}; the running configuration stays"));
                return;
            }
        };
        let new = settings.to_config();
        let (said, restart) = crate::config::differences(&self.config, &new);
        let old = &mut self.config;
        old.journal.retain_bytes = new.journal.retain_bytes;
        old.journal.retain_age = new.journal.retain_age;
        old.journal.pinned_cap_bytes = new.journal.pinned_cap_bytes;
        old.follow_stall = new.follow_stall;
        old.consumer_idle = new.consumer_idle;
        old.baseline_refresh = new.baseline_refresh;
        old.grants = new.grants.clone();
        *self
            .ctx
            .shared
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(new.grants.clone());
        self.ctx.reader.set_retention(
            old.journal.retain_bytes,
            old.journal.retain_age,
            old.journal.pinned_cap_bytes,
        );
        self.ctx.shared.tunables.set(old);
        *self
            .ctx
            .shared
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = old.summary();
        server::refresh_pin(&self.ctx);
        let what = if said.is_empty() {
            "nothing changed".to_string()
        } else {
            said.join(", ")
        };
        log(format!("SIGHUP: reloaded {}: {what}", r.file.display()));
        for key in restart {
            log(format!(
                "SIGHUP: {key} changed in {}; restart the daemon to apply it",
                r.file.display()
            ));
        }
    }

    /// Stops serving; after a signal, stops cleanly: a last quiet refresh,
    /// drain and commit, and the clean-stop marker.
    pub fn stop(self, exit: Exit) -> Result<(), Error> {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = sd::notify("STOPPING=1", &[]);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.config.socket);
        let _ = fs::remove_file(&self.config.socket);
        if let Some(w) = &self.config.watchman_socket {
            let _ = std::os::unix::net::UnixStream::connect(w);
            let _ = fs::remove_file(w);
        }
        let sig = match exit {
            Exit::Signal(sig) => sig,
            Exit::Reload => 0,
            Exit::Fatal(e) => return Err(Error::WriterFailed(e)),
        };
        log(format!("signal {sig}: bringing baselines up to date"));
        // Quiet refreshes off (`--baseline-refresh-secs 0`): none here either.
        if self.ctx.shared.tunables.refresh_every().is_some()
            && !self
                .pipeline
                .shared
                .reconcile
                .refresh_before_stop(STOP_REFRESH_WAIT)
        {
            log("baselines not brought up to date in time; the next start may report already journaled changes again");
        }
        log("draining and committing");
        let shared = self.pipeline.shared.clone();
        let last = self.pipeline.shutdown().map_err(Error::WriterFailed)?;
        let quiescent = shared.quiescent.load(Ordering::SeqCst);
        state::write_clean_stop(
            &self.state_dir,
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
}

/// Pings systemd's watchdog while the pipeline answers barriers (capture,
/// normalisation and the writer all alive), or while it waits out a full
/// state disk.
fn watchdog(ctx: &server::Context, interval: std::time::Duration) {
    while !ctx.stopping.load(Ordering::SeqCst) {
        let healthy = ctx.sync_within(interval / 2).is_ok()
            || ctx.shared.disk_full.lock().is_ok_and(|d| d.is_some());
        if healthy {
            let _ = sd::notify("WATCHDOG=1", &[]);
        }
        std::thread::sleep(interval / 3);
    }
}

fn open_state_dir(dir: &Path) -> Result<PathBuf, Error> {
    cj_types::fsutil::create_private_dir(dir).map_err(io(dir, "create state directory"))?;
    let state_dir = fs::canonicalize(dir).map_err(io(dir, "resolve state directory"))?;
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700))
        .map_err(io(&state_dir, "chmod"))?;
    Ok(state_dir)
}

fn log_recovery(recovery: &cj_journal::Recovery) {
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

/// What the server's threads share.
fn context(
    config: &Config,
    state_dir: &Path,
    reader: cj_journal::Reader,
    pipeline: &Pipeline,
    consumers: Arc<crate::consumers::Consumers>,
    shutdown: &Arc<AtomicBool>,
) -> Arc<server::Context> {
    let ctx = Arc::new(server::Context {
        reader,
        ctl: pipeline.ctl.clone(),
        waker: pipeline.waker.clone(),
        shared: pipeline.shared.clone(),
        state_dir: state_dir.to_path_buf(),
        snapshots: state_dir.join("snapshots"),
        socket: config.socket.clone(),
        started: Instant::now(),
        roots_lock: Mutex::new(()),
        slots: conn::Slots::default(),
        admin_uid: 0,
        consumers,
        stopping: shutdown.clone(),
    });
    server::refresh_pin(&ctx);
    ctx
}

/// Capture, normalisation and the writer, with the roots re-armed. Returns
/// whether the fanotify group was taken over from the last run.
fn start_capture(
    config: &Config,
    state_dir: &Path,
    writer: cj_journal::Writer,
    exit: SyncSender<Exit>,
    roots: &[Vec<u8>],
    clean: bool,
) -> Result<(Pipeline, bool), Error> {
    let (fan, inherited) = fanotify_group(config)?;
    // The names the last run handed off are only good for the events its
    // group still holds: after a clean stop, with that group (5.9).
    let names = take_names_handoff(state_dir).filter(|_| inherited && clean);
    // A group taken over already holds events: they are read only once the
    // roots are known again (else they would be dropped as outside them).
    let pipeline = start_pipeline(config, state_dir, fan, names, writer, exit, inherited)?;
    rearm(&pipeline, roots);
    let _ = pipeline.send(Ctl::Resume);
    Ok((pipeline, inherited))
}

/// The fanotify group: the one systemd's descriptor store hands back (with
/// its marks, and the events queued while no daemon ran), or a new one,
/// then given to the store. Returns whether it was handed back.
fn fanotify_group(config: &Config) -> Result<(Fanotify, bool), Error> {
    for (name, fd) in sd::take_listen_fds() {
        if name != sd::FANOTIFY_FD_NAME {
            log(format!(
                "ignoring a descriptor named {name:?} passed by systemd"
            ));
            continue;
        }
        match Fanotify::adopt(fd) {
            Ok(fan) => {
                log("took over the fanotify group kept by systemd: no events were lost while the daemon was down");
                return Ok((fan, true));
            }
            Err(e) => {
                log(format!(
                    "the descriptor systemd kept is not usable ({e}); starting a new fanotify group"
                ));
                let forget = format!("FDSTOREREMOVE=1\nFDNAME={}", sd::FANOTIFY_FD_NAME);
                let _ = sd::notify(&forget, &[]);
            }
        }
    }
    let fan = Fanotify::new(config.queue).map_err(Error::Fanotify)?;
    let store = format!("FDSTORE=1\nFDNAME={}", sd::FANOTIFY_FD_NAME);
    if let Err(e) = sd::notify(&store, &[fan.raw_fd()]) {
        log(format!(
            "cannot hand the fanotify group to systemd ({e}): a restart will record a gap"
        ));
    }
    Ok((fan, false))
}

/// Reads and removes the names the last run left (5.9): a file present at
/// a start is always the last run's.
fn take_names_handoff(state_dir: &Path) -> Option<Vec<u8>> {
    let file = state_dir.join(pipeline::NAMES_HANDOFF_FILE);
    let bytes = fs::read(&file).ok();
    let _ = fs::remove_file(&file);
    bytes
}

fn start_pipeline(
    config: &Config,
    state_dir: &Path,
    fan: Fanotify,
    names: Option<Vec<u8>>,
    writer: cj_journal::Writer,
    exit: SyncSender<Exit>,
    hold: bool,
) -> Result<Pipeline, Error> {
    let excluded = vec![state_dir.as_os_str().as_bytes().to_vec()];
    // SAFETY: getpid has no preconditions.
    let mut normalizer = Normalizer::new(unsafe { libc::getpid() }, excluded);
    if let Some(bytes) = names {
        if !normalizer.take_names_handoff(&bytes) {
            log("the names left by the last run are damaged; unknown names will be reconciled");
        }
    }
    Pipeline::start(
        config.commit_interval,
        fan,
        normalizer,
        writer,
        exit,
        state_dir.to_path_buf(),
        hold,
    )
    .map_err(io(state_dir, "start threads"))
}

/// Marks the stored roots again; one that cannot be marked now is reported
/// and stays unavailable (its gaps stay open).
fn rearm(pipeline: &Pipeline, roots: &[Vec<u8>]) {
    for root in roots {
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
}

/// Roots whose filesystem is another than their baseline's (new UUID).
fn changed_filesystems(snapshots: &Path, roots: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut changed = Vec::new();
    for root in roots {
        let Some(then) = cj_reconcile::Snapshot::load_marks(snapshots, root) else {
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
            changed.push(root.clone());
        }
    }
    changed
}

/// Journals the start gaps (after the marks are in place) and waits until
/// they are durable.
fn journal_start_gaps(pipeline: &Pipeline, facts: &StartFacts) -> Result<(), Error> {
    let gaps: Vec<RecordBody> = start_gaps(facts).into_iter().map(RecordBody::Gap).collect();
    if gaps.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let _ = pipeline.send(Ctl::Records(gaps));
    let _ = pipeline.send(Ctl::Barrier(tx));
    match rx.recv() {
        Ok(Ok(_)) => Ok(()),
        // The state disk is full: the writer waits for room and then
        // journals a gap from the last record on, which covers this one.
        Ok(Err(e)) if pipeline.shared.disk_full.lock().is_ok_and(|f| f.is_some()) => {
            log(format!("start gap not journaled yet: {e}"));
            Ok(())
        }
        Ok(Err(e)) => Err(Error::WriterFailed(e)),
        Err(_) => Err(Error::WriterFailed("pipeline stopped".into())),
    }
}

fn start_reconciler(
    config: &Config,
    state_dir: &Path,
    pipeline: &Pipeline,
    reader: &cj_journal::Reader,
    fatal: SyncSender<Exit>,
) -> Result<(), Error> {
    let reconciler = reconciler::Reconciler {
        shared: pipeline.shared.clone(),
        reader: reader.clone(),
        journal: Arc::new(pipeline::PipelinePort {
            ctl: pipeline.ctl.clone(),
            waker: pipeline.waker.clone(),
        }),
        snapshots: state_dir.join("snapshots"),
        excluded: vec![state_dir.as_os_str().as_bytes().to_vec()],
        walk_only: config.reconcile_walk_only,
        test_delay: config.test_reconcile_delay,
        test_spill_bytes: config.test_spill_bytes,
    };
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
        .map_err(io(state_dir, "start reconciler thread"))?;
    Ok(())
}

/// Roots without a usable baseline (none, a damaged header, another format
/// version) get one, so that later gaps can be closed.
fn request_missing_baselines(pipeline: &Pipeline, snapshots: &Path, roots: &[Vec<u8>]) {
    let missing: Vec<inbox::Request> = roots
        .iter()
        .filter(|r| cj_reconcile::Snapshot::load_marks(snapshots, r).is_none())
        .map(|r| inbox::Request {
            seq: 0,
            scope: Some(r.clone()),
            fsid: None,
            baseline: true,
        })
        .collect();
    pipeline.shared.reconcile.push(missing);
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
