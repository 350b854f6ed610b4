//! Export of the journal to an existing distributed log (issue 15,
//! docs/export.md): the exporter reads the journal as a durable consumer
//! (a follow stream, docs/protocol.md) and hands each record to a [`Sink`]
//! in seq order; the consumer's cursor is acknowledged only after the sink
//! has acknowledged the records. After a crash it resumes from the
//! acknowledged cursor; what it publishes again carries the same message id
//! (`<journal id>.<seq>`), which the sink drops as a duplicate
//! ([`Sink::last_seq`] and JetStream's duplicate window).
//!
//! A client of cj, like any other: it depends on the client library only.
//! NATS JetStream is the first sink ([`nats`]); a Kafka sink would
//! implement the same trait.

pub mod nats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cj_client::{Client, Follow, FollowLine, FollowOptions};
use serde_json::Value;

/// Records handed to the sink at once.
pub const BATCH_MAX: usize = 512;
/// Bytes of message bodies in one batch.
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// The first retry after a sink failure waits this long; each further one
/// doubles, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// One record for the sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `<journal id>.<seq>`: unique per record, stable across republishing.
    pub id: String,
    pub seq: u64,
    /// The record as JSON (the object of `cj follow --json`, with `host`,
    /// `journal`, `seq` and `cursor`).
    pub body: Vec<u8>,
}

/// Why a sink could not take a batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum SinkError {
    /// Try again later (the server is down or unreachable); the exporter
    /// keeps its place and retries with backoff.
    Unavailable(String),
    /// The sink refuses (a stream configured in a way that breaks the
    /// contract, bad credentials): retrying does not help; the message
    /// says what to change.
    Refused(String),
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Unavailable(m) => write!(f, "unavailable: {m}"),
            SinkError::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

impl std::error::Error for SinkError {}

/// Where records go.
pub trait Sink {
    /// Publishes `batch` in order and returns once the sink has made every
    /// message durable (acknowledged), or an error; after an error some of
    /// the batch may be stored, and it is published again (same ids).
    fn publish(&mut self, batch: &[Message]) -> Result<(), SinkError>;
    /// The highest seq of `journal` the sink already holds, if it can tell
    /// (records at or below it are not published again).
    fn last_seq(&mut self, journal: &str) -> Result<Option<u64>, SinkError>;
}

/// What the exporter reads and how it names itself.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    /// The durable consumer (created if missing).
    pub consumer: String,
    /// Only this subtree (when the consumer is created).
    pub path: Option<Vec<u8>>,
    /// Put in every message (`host`).
    pub host: String,
}

/// How far the exporter is, for `cj export` and `cj status` of consumers.
#[derive(Debug, Default)]
pub struct Progress {
    /// The last seq the sink acknowledged.
    pub published_seq: AtomicU64,
    pub published: AtomicU64,
    /// Sink failures so far (each retried).
    pub failures: AtomicU64,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The daemon refused or failed (not running, unknown path ...).
    Daemon(cj_client::Error),
    /// The sink refuses for good.
    Sink(SinkError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Daemon(e) => write!(f, "the cj daemon: {e}"),
            Error::Sink(e) => write!(f, "the sink {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<cj_client::Error> for Error {
    fn from(e: cj_client::Error) -> Self {
        Error::Daemon(e)
    }
}

/// The message for one follow line; `None` for lines that are not records
/// (heartbeats, the end of the replay).
pub fn message(line: &FollowLine, host: &str) -> Option<Message> {
    if matches!(
        line,
        FollowLine::HistoryDone { .. } | FollowLine::Heartbeat { .. }
    ) {
        return None;
    }
    let cursor = line.cursor();
    let c = cj_types::Cursor::parse(cursor).ok()?;
    let journal = c.journal_id.to_string();
    let mut body = line.to_json();
    body.insert("host".into(), Value::from(host));
    body.insert("journal".into(), Value::from(journal.clone()));
    body.insert("seq".into(), Value::from(c.seq));
    body.insert("cursor".into(), Value::from(cursor));
    Some(Message {
        id: format!("{journal}.{}", c.seq),
        seq: c.seq,
        body: serde_json::to_vec(&Value::Object(body)).ok()?,
    })
}

/// How much the exporter lowers its thread's priority (nice): it catches up
/// after a burst instead of taking CPU from the work that makes the
/// changes, or from the daemon journaling them (docs/benchmarks.md).
pub const NICE: i32 = 10;

/// Lowers the calling thread's priority by [`NICE`] (best effort).
pub fn lower_priority() {
    // SAFETY: setpriority on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICE).min(19));
    }
}

/// Exports until `stop`: follows the consumer, publishes batches, and
/// acknowledges the consumer's cursor after each batch the sink took.
pub fn run(
    opts: &Options,
    sink: &mut dyn Sink,
    stop: &AtomicBool,
    progress: &Arc<Progress>,
) -> Result<(), Error> {
    let mut client = Client::connect(&opts.socket)?;
    ensure_consumer(&mut client, opts)?;
    let mut follow = Follow::start(&opts.socket, FollowOptions::consumer(&opts.consumer))?;
    tracing::info!("cj export: following consumer {}", opts.consumer);
    // The sink's state, as a note on the consumer (`cj status`), on its
    // own connection.
    let mut note = Noter {
        client: Client::connect(&opts.socket).ok(),
        consumer: opts.consumer.clone(),
        said: false,
    };
    let mut skip_through: Option<(String, u64)> = None;
    let mut batch: Vec<Message> = Vec::new();
    let mut bytes = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Some(line) = follow.next() else { break };
        let line = line?;
        let cursor = line.cursor().to_string();
        if let Some(m) = message(&line, &opts.host) {
            let journal = m.id.split('.').next().unwrap_or("").to_string();
            if skip_through.as_ref().is_none_or(|(j, _)| *j != journal) {
                let last = with_retry(stop, progress, &mut note, || sink.last_seq(&journal))?;
                skip_through = Some((journal, last.unwrap_or(0)));
            }
            if skip_through.as_ref().is_none_or(|(_, s)| m.seq > *s) {
                bytes += m.body.len();
                batch.push(m);
            }
        }
        let full = batch.len() >= BATCH_MAX || bytes >= BATCH_BYTES_MAX;
        if full || !follow.pending() {
            if !batch.is_empty() {
                with_retry(stop, progress, &mut note, || sink.publish(&batch))?;
                let top = batch.last().map_or(0, |m| m.seq);
                progress.published_seq.store(top, Ordering::SeqCst);
                progress
                    .published
                    .fetch_add(batch.len() as u64, Ordering::SeqCst);
                if let Some((_, s)) = skip_through.as_mut() {
                    *s = (*s).max(top);
                }
                batch.clear();
                bytes = 0;
            }
            client = ack(client, opts, &cursor)?;
        }
    }
    Ok(())
}

/// Acknowledges `cursor` for the consumer, reconnecting once if the daemon
/// restarted since.
fn ack(mut client: Client, opts: &Options, cursor: &str) -> Result<Client, Error> {
    if client.consumer_ack(&opts.consumer, cursor).is_ok() {
        return Ok(client);
    }
    let mut fresh = Client::connect(&opts.socket)?;
    fresh.consumer_ack(&opts.consumer, cursor)?;
    Ok(fresh)
}

fn ensure_consumer(client: &mut Client, opts: &Options) -> Result<(), Error> {
    let list = client.consumers()?;
    let exists = list
        .get("consumers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|c| c["name"] == opts.consumer.as_str()));
    if !exists {
        client.consumer_add(&opts.consumer, opts.path.as_deref(), None)?;
    }
    Ok(())
}

/// Tells the daemon what the sink is doing (best effort: a note is only
/// for people reading `cj status`).
struct Noter {
    client: Option<Client>,
    consumer: String,
    /// A note is standing.
    said: bool,
}

impl Noter {
    fn say(&mut self, text: &str) {
        if let Some(c) = self.client.as_mut() {
            if c.consumer_note(&self.consumer, text).is_err() {
                self.client = None;
            }
        }
        self.said = !text.is_empty();
    }
}

/// Runs `f` until it succeeds, the sink refuses, or `stop`; waits with
/// doubling backoff between attempts, and says so in the consumer's note
/// while it does.
fn with_retry<T>(
    stop: &AtomicBool,
    progress: &Progress,
    note: &mut Noter,
    mut f: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, Error> {
    let mut wait = RETRY_FIRST;
    loop {
        match f() {
            Ok(v) => {
                if note.said {
                    note.say("");
                }
                return Ok(v);
            }
            Err(SinkError::Refused(m)) => {
                note.say(&format!("stopped: the sink refused: {m}"));
                return Err(Error::Sink(SinkError::Refused(m)));
            }
            Err(SinkError::Unavailable(m)) => {
                if !note.said {
                    note.say(&format!("the sink is unavailable, retrying: {m}"));
                }
                progress.failures.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    "cj export: sink unavailable ({m}); retrying in {} ms",
                    wait.as_millis()
                );
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return Err(Error::Sink(SinkError::Unavailable(m)));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests;
