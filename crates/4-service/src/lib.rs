//! Stage 4 of cj: the daemon.
//!
//! [`run`] = [`Daemon::start`] (state directory, journal recovery, the
//! capture -> normalisation -> journal pipeline ([`pipeline`]), the stored
//! roots, the start gaps ([`start`]), the reconciler), [`Daemon::serve`]
//! (the Unix socket server, [`server`]), and at SIGTERM or SIGINT
//! [`Daemon::stop`] (drain, commit, clean-stop marker).
//!
//! Modules, leaves first: `shared` (what threads publish), `inbox` (the
//! reconciler's requests and status), `port` (the reconciler's view of the
//! writer), `conn` (client bounds), `state` (state files), `start` (start
//! gaps); then `pipeline`, `reconciler`, `query`, `server`, `daemon`.

pub mod access;
mod clock;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod consumers;
pub mod daemon;
mod error;
pub mod inbox;
mod logging;
pub mod pipeline;
pub mod port;
pub mod query;
pub mod reconciler;
pub mod sd;
pub mod server;
pub mod shared;
pub mod start;
pub mod state;
pub mod summary;
pub mod watchman;
mod writer;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

pub use cj_reconcile;

pub use config::{
    Config, BASELINE_REFRESH_DEFAULT_SECS, DEFAULT_SOCKET, DEFAULT_STATE_DIR, STOP_REFRESH_WAIT,
};
pub use daemon::Daemon;
use error::io;
pub use error::Error;
use pipeline::Exit;

/// Runs the daemon in the foreground until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), Error> {
    let signals = block_signals();
    let socket = config.socket.clone();
    let daemon = Daemon::start(config)?;
    let exit = daemon.exit_sender();
    std::thread::Builder::new()
        .name("cj-signals".into())
        .spawn(move || wait_signals(signals, exit))
        .map_err(io(&socket, "start signal thread"))?;
    let mut daemon = daemon;
    daemon.serve(bind_socket(&socket)?)?;
    if let Some(w) = daemon.watchman_socket() {
        daemon.serve_watchman(bind_socket(&w)?)?;
    }
    loop {
        match daemon.wait() {
            Exit::Reload => daemon.reload(),
            exit => return daemon.stop(exit),
        }
    }
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
    // socket is created 0666 (every local user may connect; the daemon
    // decides what each may ask: SO_PEERCRED and the grants, access.rs).
    let old = unsafe { libc::umask(0o111) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io(path, "bind socket"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
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
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signals(set: libc::sigset_t, exit: mpsc::SyncSender<Exit>) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            if sig == libc::SIGHUP {
                let _ = exit.try_send(Exit::Reload);
                continue;
            }
            let _ = exit.try_send(Exit::Signal(sig));
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
