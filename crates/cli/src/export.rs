//! `cj export nats`: publishes the journal to NATS JetStream as a durable
//! consumer (docs/export.md). Runs until SIGTERM or SIGINT; a restart
//! resumes from the consumer's acknowledged cursor.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use cj_export::nats::NatsSink;

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// Publish every record to a NATS JetStream stream, exactly once per
    /// (journal, seq), in order; gaps in history as `rescan` messages.
    Nats(NatsArgs),
}

#[derive(clap::Args, Debug)]
pub struct NatsArgs {
    /// The NATS server, e.g. nats://127.0.0.1:4222
    #[arg(long)]
    url: String,
    /// The JetStream stream (created if missing: file storage, 24 h
    /// duplicate window)
    #[arg(long)]
    stream: String,
    /// The subject each record is published on
    #[arg(long)]
    subject: String,
    /// The durable consumer to read as [default: export-nats-STREAM]
    #[arg(long)]
    consumer: Option<String>,
    /// The host name put in every message [default: this machine's]
    #[arg(long)]
    host: Option<String>,
    /// Only this subtree (when the consumer is created)
    path: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// SIGTERM/SIGINT end `cj export` at once: its place is the consumer's
/// acknowledged cursor, so stopping anywhere loses nothing (a kill -9 is
/// tested to be safe), while waiting for a follow stream that reconnects
/// to a stopped daemon could take arbitrarily long.
extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn run(socket: &Path, cmd: ExportCommand) -> Result<i32> {
    let ExportCommand::Nats(a) = cmd;
    let path = match &a.path {
        Some(p) => Some(std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let opts = cj_export::Options {
        socket: socket.to_path_buf(),
        consumer: a
            .consumer
            .clone()
            .unwrap_or_else(|| format!("export-nats-{}", a.stream)),
        path: path.map(|p| {
            use std::os::unix::ffi::OsStrExt;
            p.as_os_str().as_bytes().to_vec()
        }),
        host: a.host.clone().unwrap_or_else(hostname),
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    cj_export::lower_priority();
    let mut sink = NatsSink::new(&a.url, &a.stream, &a.subject)?;
    let progress = Arc::new(cj_export::Progress::default());
    eprintln!(
        "cj export: consumer {} -> {} stream {} subject {}",
        opts.consumer, a.url, a.stream, a.subject
    );
    cj_export::run(&opts, &mut sink, &STOP, &progress)?;
    eprintln!(
        "cj export: stopped after {} records (last seq {})",
        progress.published.load(Ordering::SeqCst),
        progress.published_seq.load(Ordering::SeqCst)
    );
    Ok(0)
}

/// `[export.nats]` in the configuration: the daemon's process also runs
/// the exporter, in a thread that waits for the socket and starts again
/// (with backoff) whenever it stops with an error.
pub fn in_daemon(socket: PathBuf, spec: cj_service::config_file::NatsExportSpec) -> Result<()> {
    let opts = cj_export::Options {
        socket,
        consumer: spec
            .consumer
            .clone()
            .unwrap_or_else(|| format!("export-nats-{}", spec.stream)),
        path: spec.path.as_ref().map(|p| {
            use std::os::unix::ffi::OsStrExt;
            p.as_os_str().as_bytes().to_vec()
        }),
        host: spec.host.clone().unwrap_or_else(hostname),
    };
    let mut sink = NatsSink::new(&spec.url, &spec.stream, &spec.subject)?;
    std::thread::Builder::new()
        .name("cj-export".into())
        .spawn(move || {
            cj_export::lower_priority();
            let progress = Arc::new(cj_export::Progress::default());
            let mut wait = cj_export::RETRY_FIRST;
            loop {
                match cj_export::run(&opts, &mut sink, &STOP, &progress) {
                    Ok(()) => wait = cj_export::RETRY_FIRST,
                    Err(e) => {
                        tracing::warn!("cj export: {e}; starting again in {} ms", wait.as_millis());
                        wait = (wait * 2).min(cj_export::RETRY_MAX);
                    }
                }
                std::thread::sleep(wait);
            }
        })
        .context("starting the exporter thread")?;
    Ok(())
}
