//! A Watchman-protocol endpoint (issue 14, docs/watchman.md): the tools that
//! speak Watchman (Jest, Metro, Sapling, Buck2, editors) get cj's journal,
//! and their clocks stay valid across daemon restarts and reboots.
//!
//! It listens on its own socket (`--watchman-socket`), speaks JSON and
//! BSER (versions 1 and 2, `serde_bser`), and answers under the same
//! access rules as cj's own socket (a user sees only what is granted).
//! Queries are answered from the journal ([`query`]); subscriptions follow
//! it ([`subscribe`]).

pub mod expr;
pub mod files;
pub mod pdu;
pub mod query;
mod run;
mod subscribe;
pub mod value;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::access::Client;
use crate::server::Context;
use pdu::Encoding;
use value::Val;

/// Connections served at once; one more is told so and closed.
pub const WATCHMAN_CLIENTS_MAX: usize = 64;
/// Subscriptions one connection may hold.
pub const SUBSCRIPTIONS_MAX: usize = 64;
/// An answer listing this many files is followed by `malloc_trim`, so the
/// daemon's resident memory goes back down after it.
pub const TRIM_AFTER_FILES: usize = 100_000;
/// Watched roots kept (a watch is also a tracked tree or inside one).
pub const WATCHES_MAX: usize = 1024;

/// The version answered: Watchman's own numbering of the release whose
/// features this endpoint offers.
pub const VERSION: &str = "2024.01.01.00";

/// What this endpoint can do (`version` with `capabilities`).
pub const CAPABILITIES: &[&str] = &[
    "bser-v2",
    "clock-sync-timeout",
    "cmd-clock",
    "cmd-find",
    "cmd-flush-subscriptions",
    "cmd-get-config",
    "cmd-get-sockname",
    "cmd-list-capabilities",
    "cmd-query",
    "cmd-since",
    "cmd-state-enter",
    "cmd-state-leave",
    "cmd-subscribe",
    "cmd-unsubscribe",
    "cmd-version",
    "cmd-watch",
    "cmd-watch-del",
    "cmd-watch-list",
    "cmd-watch-project",
    "dedup_results",
    "field-cclock",
    "field-content.sha1hex",
    "field-ctime",
    "field-ctime_f",
    "field-ctime_ms",
    "field-ctime_ns",
    "field-ctime_us",
    "field-dev",
    "field-exists",
    "field-gid",
    "field-ino",
    "field-mode",
    "field-mtime",
    "field-mtime_f",
    "field-mtime_ms",
    "field-mtime_ns",
    "field-mtime_us",
    "field-name",
    "field-new",
    "field-nlink",
    "field-oclock",
    "field-size",
    "field-symlink_target",
    "field-type",
    "field-uid",
    "glob_generator",
    "relative_root",
    "suffix-set",
    "term-allof",
    "term-anyof",
    "term-dirname",
    "term-empty",
    "term-exists",
    "term-false",
    "term-idirname",
    "term-imatch",
    "term-iname",
    "term-match",
    "term-name",
    "term-not",
    "term-since",
    "term-size",
    "term-suffix",
    "term-true",
    "term-type",
    "wildmatch",
    "wildmatch-multislash",
];

/// A state asserted on a root: its name and the connection that did.
pub type Asserted = (String, u64);

/// State shared by every Watchman connection.
pub struct Endpoint {
    pub ctx: Arc<Context>,
    pub socket: std::path::PathBuf,
    pub watches: Mutex<Vec<Vec<u8>>>,
    /// Asserted states per root: (name, connection).
    pub states: Mutex<HashMap<Vec<u8>, Vec<Asserted>>>,
    /// Live subscriptions, for state notifications: (connection, root, name).
    pub subscribers: Mutex<Vec<subscribe::Handle>>,
    pub sha1: files::Sha1Cache,
    pub excluded: Vec<Vec<u8>>,
    clients: AtomicUsize,
    next_conn: AtomicU64,
}

impl Endpoint {
    pub fn new(ctx: Arc<Context>, socket: std::path::PathBuf, excluded: Vec<Vec<u8>>) -> Endpoint {
        Endpoint {
            ctx,
            socket,
            watches: Mutex::new(Vec::new()),
            states: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            sha1: files::Sha1Cache::default(),
            excluded,
            clients: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        }
    }
}

/// One client connection: who it is, how it speaks, where answers go.
pub struct Conn {
    pub id: u64,
    pub client: Client,
    /// Groups of the client (content hashes are computed only for files it
    /// could read).
    pub gids: Vec<u32>,
    pub out: Mutex<(BufWriter<UnixStream>, Encoding)>,
    pub closed: AtomicBool,
}

impl Conn {
    /// Sends one PDU (a response or a unilateral one) in the client's
    /// encoding.
    pub fn send(&self, v: &Val) -> std::io::Result<()> {
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let enc = g.1;
        pdu::write(&mut g.0, v, enc)
    }
}

/// Serves the Watchman socket until `shutdown`.
pub fn serve(listener: UnixListener, ep: Arc<Endpoint>, shutdown: &AtomicBool) {
    for stream in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if ep.clients.fetch_add(1, Ordering::SeqCst) >= WATCHMAN_CLIENTS_MAX {
            ep.clients.fetch_sub(1, Ordering::SeqCst);
            let mut w = BufWriter::new(stream);
            let _ = pdu::write(
                &mut w,
                &error(format!("too many clients ({WATCHMAN_CLIENTS_MAX}); retry")),
                Encoding::Json,
            );
            continue;
        }
        let ep2 = ep.clone();
        let spawned = std::thread::Builder::new()
            .name("cj-watchman".into())
            .spawn(move || {
                connection(&ep2, stream);
                ep2.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            ep.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub fn error(msg: impl Into<String>) -> Val {
    Val::obj([("version", Val::str(VERSION)), ("error", Val::str(msg))])
}

fn connection(ep: &Arc<Endpoint>, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let id = ep.next_conn.fetch_add(1, Ordering::SeqCst);
    let client = match crate::server::client_of(&stream, &ep.ctx) {
        Ok(c) => c,
        Err(message) => {
            let mut w = BufWriter::new(write_half);
            let _ = pdu::write(&mut w, &error(message), Encoding::Json);
            return;
        }
    };
    let gids = crate::access::groups_of(client.uid);
    let conn = Arc::new(Conn {
        id,
        client,
        gids,
        out: Mutex::new((BufWriter::new(write_half), Encoding::Json)),
        closed: AtomicBool::new(false),
    });
    let mut input = BufReader::new(stream);
    loop {
        let (req, enc) = match pdu::read(&mut input) {
            Ok(Some(r)) => r,
            Ok(None) | Err(pdu::ReadError::Io(_)) => break,
            Err(pdu::ReadError::Bad(m)) => {
                let _ = conn.send(&error(m));
                break;
            }
        };
        conn.out.lock().unwrap_or_else(|e| e.into_inner()).1 = enc;
        let answer = match run::command(ep, &conn, &req) {
            // Answered by the command itself (`subscribe`).
            Ok(Val::Null) => continue,
            Ok(mut v) => {
                if v.get("version").is_none() {
                    if let Val::Object(m) = &mut v {
                        m.insert(0, ("version".into(), Val::str(VERSION)));
                    }
                }
                v
            }
            Err(e) => error(e),
        };
        let big = answer
            .get("files")
            .and_then(Val::as_array)
            .is_some_and(|f| f.len() >= TRIM_AFTER_FILES);
        let sent = conn.send(&answer);
        if big {
            drop(answer);
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe { libc::malloc_trim(0) };
        }
        if sent.is_err() {
            break;
        }
    }
    conn.closed.store(true, Ordering::SeqCst);
    subscribe::connection_closed(ep, id);
}
