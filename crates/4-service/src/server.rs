//! The Unix socket server: one thread per connection, at most
//! `CONNECTIONS_MAX` at once. Requests and answers are JSON lines
//! (`docs/protocol.md`). Only root may ask (checked with SO_PEERCRED).
//!
//! Connections never touch the capture path: a query reads the journal with
//! its own reader, and a slow client only blocks its own thread.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cj_capture::Waker;
use cj_journal::Reader;
use cj_types::path::{is_at_or_below, overlaps};
use cj_types::protocol::{
    self, decode_request, put_path, Change, ChangeKind, Op, Request, RescanReason,
    PROTOCOL_VERSION, REQUEST_BYTES_MAX,
};
use cj_types::Cursor;
use serde_json::{json, Map, Value};

use crate::access::{self, Client};
use crate::conn;
use crate::pipeline::Ctl;
use crate::query;
use crate::shared::{RootState, Shared};
use crate::state;

/// A sync (barrier) taking longer than this fails the request.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `wait_ms` a `changes` request may ask for.
pub const WAIT_MAX_MS: u64 = 3_600_000;
const WAIT_POLL: Duration = Duration::from_millis(100);
/// Answers being built at once, and encoded answer bytes held.
static BUILDING: conn::Budget = conn::Budget::new(conn::ANSWERS_BUILDING_MAX);
static ANSWER_BYTES: conn::Budget = conn::Budget::new(conn::ANSWER_BYTES_MAX);
/// An answer this big is followed by `malloc_trim`, so the daemon's
/// resident memory goes back down after it.
const ANSWER_TRIM_BYTES: usize = 1 << 20;

pub struct Context {
    pub reader: Reader,
    pub ctl: SyncSender<Ctl>,
    pub waker: Arc<Waker>,
    pub shared: Arc<Shared>,
    pub state_dir: PathBuf,
    pub snapshots: PathBuf,
    pub socket: PathBuf,
    pub started: Instant,
    /// Serialises track/untrack so roots.json matches the pipeline.
    pub roots_lock: Mutex<()>,
    pub slots: conn::Slots,
    /// The uid answered (root; tests that run as another user set theirs).
    pub admin_uid: u32,
    /// Durable consumers (issue 11).
    pub consumers: Arc<crate::consumers::Consumers>,
    /// Set when the daemon stops: followers say so and end.
    pub stopping: Arc<AtomicBool>,
}

mod consumer_ops;
mod follow;

pub(crate) use consumer_ops::refresh_pin;
pub use follow::{FOLLOWERS_MAX, FOLLOW_BUFFER_BYTES, FOLLOW_STALL_DEFAULT, HEARTBEAT_DEFAULT};

pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

pub(crate) fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl Context {
    fn send(&self, msg: Ctl) -> Result<(), Failure> {
        self.ctl
            .send(msg)
            .map_err(|_| fail("shutting_down", "the daemon is shutting down"))?;
        self.waker.wake();
        Ok(())
    }

    fn wait(&self, rx: mpsc::Receiver<Result<u64, String>>) -> Result<u64, Failure> {
        match rx.recv_timeout(SYNC_TIMEOUT) {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(fail("failed", e)),
            Err(_) => Err(fail(
                "timeout",
                "the daemon did not catch up with the kernel queue in time; retry",
            )),
        }
    }

    /// Waits until every change made before this call is journaled durably,
    /// and returns the sequence number that covers them.
    pub(crate) fn sync(&self) -> Result<u64, Failure> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Ctl::Barrier(tx))?;
        self.wait(rx)
    }

    /// [`Context::sync`] with a shorter deadline (the watchdog's).
    pub(crate) fn sync_within(&self, limit: Duration) -> Result<u64, ()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Ctl::Barrier(tx)).map_err(|_| ())?;
        match rx.recv_timeout(limit) {
            Ok(Ok(seq)) => Ok(seq),
            _ => Err(()),
        }
    }

    /// Since when the state disk is full, if it is.
    fn disk_full(&self) -> Option<u64> {
        *self
            .shared
            .disk_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn roots(&self) -> Vec<RootState> {
        self.shared
            .roots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Accepts connections until `shutdown` is set (checked after each
/// accept: whoever sets it connects once to wake the loop).
pub fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: &AtomicBool) {
    for stream in listener.incoming() {
        if shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let root = peer_uid(&stream) == Some(ctx.admin_uid);
        let id = match ctx.slots.admit(&stream, root) {
            Ok(id) => id,
            Err(conn::Refused::Busy) => {
                // Said before the client writes, so it reads the reason even
                // if its write then fails (the CLI prints it).
                let mut s = stream;
                let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = writeln!(
                    s,
                    "{}",
                    json!({"error": format!("too many clients ({} connections busy); retry", conn::CONNECTIONS_MAX), "code": "busy"})
                );
                continue;
            }
        };
        let ctx2 = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("cj-client".into())
            .spawn(move || {
                let _ = connection(stream, &ctx2, id);
                ctx2.slots.release(id);
            });
        if spawned.is_err() {
            ctx.slots.release(id);
        }
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    peer_cred(stream).map(|(uid, _)| uid)
}

/// `(uid, gid)` of the peer, from `SO_PEERCRED`.
fn peer_cred(stream: &UnixStream) -> Option<(u32, u32)> {
    // SAFETY: ucred is plain old data; getsockopt fills at most `len` bytes.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((cred.uid, cred.gid))
}

/// Who the peer is and what it may see; `Err` with the refusal if it
/// may see nothing.
pub(crate) fn client_of(stream: &UnixStream, ctx: &Context) -> Result<Client, String> {
    let (uid, gid) = peer_cred(stream).ok_or("permission denied: cannot tell who you are")?;
    let grants = ctx
        .shared
        .grants
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match access::of_peer(uid, gid, ctx.admin_uid, &grants) {
        Some(access) => Ok(Client { uid, access }),
        None => {
            let name = access::user_name(uid).unwrap_or_else(|| uid.to_string());
            Err(format!(
                "permission denied: user {name} has no grant on this cj daemon; run the \
                 command as root, or ask the administrator to add [[grant]] user = \"{name}\" \
                 with the paths you need to /etc/cj/cj.toml (docs/configuration.md)"
            ))
        }
    }
}

fn connection(stream: UnixStream, ctx: &Context, slot: u64) -> std::io::Result<()> {
    let mut out = BufWriter::new(conn::DeadlineWriter::new(stream.try_clone()?));
    let client = match client_of(&stream, ctx) {
        Ok(c) => c,
        Err(message) => {
            writeln!(
                out,
                "{}",
                json!({"error": message, "code": "permission_denied"})
            )?;
            return out.flush();
        }
    };
    let mut input = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        ctx.slots.set_idle(slot, true);
        let got = conn::read_request(&mut input, &mut line, REQUEST_BYTES_MAX, || {
            ctx.slots.set_idle(slot, false)
        })?;
        out.get_mut().restart();
        match got {
            conn::Request::End => return Ok(()),
            conn::Request::TooLong => {
                writeln!(
                    out,
                    "{}",
                    json!({"error": format!("request longer than {REQUEST_BYTES_MAX} bytes"), "code": "bad_request"})
                )?;
                out.flush()?;
                // Closing with unread input would reset the connection and
                // could destroy the answer before the client reads it.
                conn::drain(&mut input);
                return Ok(());
            }
            conn::Request::Line => {}
        }
        let result = match decode_request(&line) {
            Ok(req) if req.op == Op::Follow => {
                // The stream is the rest of this connection.
                out.flush()?;
                return match follow::serve(out.get_ref().stream(), &req, ctx, &client) {
                    Ok(()) => Ok(()),
                    Err(f) => {
                        writeln!(out, "{}", json!({"error": f.message, "code": f.code}))?;
                        out.flush()
                    }
                };
            }
            Ok(req) => dispatch(req, ctx, &client, &mut out),
            Err(e) => Err(fail("bad_request", e)),
        };
        if let Err(f) = result {
            writeln!(out, "{}", json!({"error": f.message, "code": f.code}))?;
        }
        out.flush()?;
    }
}

fn dispatch(
    req: Request,
    ctx: &Context,
    client: &Client,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let path = req.path.clone();
    if matches!(req.op, Op::Track | Op::Untrack | Op::Status) && !client.access.is_admin() {
        return Err(fail(
            "permission_denied",
            "permission denied: only root may track, untrack or see the daemon's status",
        ));
    }
    let w = |out: &mut dyn Write, v: Value| {
        let _ = writeln!(out, "{v}");
    };
    match req.op {
        Op::Ping => {
            w(out, json!({"ok": true, "protocol": PROTOCOL_VERSION}));
            Ok(())
        }
        Op::Cursor => {
            client
                .access
                .scopes(path.as_deref())
                .map_err(|e| fail("permission_denied", e))?;
            if let Some(p) = &path {
                check_tracked(ctx, p)?;
            }
            let seq = ctx.sync()?;
            let cursor = Cursor {
                journal_id: ctx.reader.journal_id(),
                seq,
            };
            w(out, json!({"cursor": cursor.encode()}));
            Ok(())
        }
        Op::Changes => changes(&req, path, ctx, client, out),
        Op::Track => {
            let p = path.ok_or_else(|| fail("bad_request", "track needs a path"))?;
            track(ctx, p, true)?;
            w(out, json!({"ok": true}));
            Ok(())
        }
        Op::Untrack => {
            let p = path.ok_or_else(|| fail("bad_request", "untrack needs a path"))?;
            track(ctx, p, false)?;
            w(out, json!({"ok": true}));
            Ok(())
        }
        Op::Status => {
            w(out, status(ctx));
            Ok(())
        }
        Op::Hello => {
            w(out, consumer_ops::hello());
            Ok(())
        }
        Op::ConsumerAdd | Op::ConsumerList | Op::ConsumerAck | Op::ConsumerRemove => {
            w(out, consumer_ops::handle(&req, ctx, client)?);
            Ok(())
        }
        _ => Err(fail(
            "bad_request",
            "this daemon does not implement that op",
        )),
    }
}

pub(crate) fn check_tracked(ctx: &Context, path: &[u8]) -> Result<(), Failure> {
    let roots = ctx.roots();
    let covered = roots.iter().any(|r| overlaps(path, &r.path));
    if covered {
        return Ok(());
    }
    Err(fail(
        "not_tracked",
        format!(
            "{} is not in a tracked tree; run `cj track DIR` first (`cj status` lists roots)",
            cj_types::log_path(path)
        ),
    ))
}

pub(crate) fn track(ctx: &Context, path: Vec<u8>, add: bool) -> Result<(), Failure> {
    let _guard = ctx.roots_lock.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = mpsc::sync_channel(1);
    let msg = if add {
        Ctl::Track {
            path: path.clone(),
            journal: true,
            reply: tx,
        }
    } else {
        Ctl::Untrack {
            path: path.clone(),
            reply: tx,
        }
    };
    ctx.send(msg)?;
    ctx.wait(rx)?;
    if !add {
        // Stop a walk of this root (issue 9, defect 8); the reconciler
        // drops whatever it would have saved.
        let running = ctx
            .shared
            .reconcile
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running
            .clone();
        if running.is_some_and(|r| r == path) {
            ctx.shared
                .reconcile
                .progress
                .cancel
                .store(true, Ordering::SeqCst);
        }
        ctx.shared.links.forget(&path);
    }
    // A snapshot from an earlier tracking period says nothing about the time
    // in between: drop it, and take a fresh baseline when tracking starts.
    cj_reconcile::Snapshot::remove(&ctx.snapshots, &path);
    if add {
        ctx.shared.reconcile.push([crate::inbox::Request {
            seq: 0,
            scope: Some(path.clone()),
            fsid: None,
            baseline: true,
        }]);
    }
    let mut stored =
        state::load_roots(&ctx.state_dir).map_err(|e| fail("failed", e.to_string()))?;
    stored.retain(|p| *p != path);
    if add {
        stored.push(path);
    }
    state::save_roots(&ctx.state_dir, &stored).map_err(|e| fail("failed", e.to_string()))
}

fn changes(
    req: &Request,
    scope: Option<Vec<u8>>,
    ctx: &Context,
    client: &Client,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let (since_text, scope) = match &req.consumer {
        Some(name) => consumer_start(ctx, name, req.since.as_deref(), scope, client)?,
        None => (
            req.since
                .clone()
                .ok_or_else(|| fail("bad_request", "changes needs \"since\" (a cursor)"))?,
            scope,
        ),
    };
    let since_text = since_text.as_str();
    let scopes = client_scopes(ctx, client, scope.as_deref())?;
    // The CLI prints the parse error itself; the answer carries a short reason.
    let since = Cursor::parse(since_text).map_err(|_| RescanReason::MalformedCursor);
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0).min(WAIT_MAX_MS));
    let deadline = Instant::now() + wait;
    // An answer holds a building permit until its encoded bytes are counted
    // in the budget of bytes being sent: memory for all clients stays
    // bounded whatever they do (conn.rs).
    let (mut answer, building) = answer_when_ready(ctx, since, scopes.as_deref(), deadline)?;
    if !client.access.is_admin() {
        query::hide_outside(&mut answer, |p| client.access.sees(p));
    }
    let encoded = encode_answer(answer);
    let _held = ANSWER_BYTES
        .take(encoded.len())
        .ok_or_else(|| fail("busy", "the daemon is sending other large answers; retry"))?;
    drop(building);
    let result = out.write_all(&encoded);
    if encoded.len() >= ANSWER_TRIM_BYTES {
        drop(encoded);
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe { libc::malloc_trim(0) };
    }
    // A client that does not take its answer loses its connection.
    result.map_err(|e| fail("failed", format!("writing the answer: {e}")))
}

/// The scopes a request covers for this client: the requested path (which
/// must be granted to it, and tracked), or all its grants that are
/// tracked; `None` for root without a path (everything).
pub(crate) fn client_scopes(
    ctx: &Context,
    client: &Client,
    requested: Option<&[u8]>,
) -> Result<Option<Vec<Vec<u8>>>, Failure> {
    let scopes = client
        .access
        .scopes(requested)
        .map_err(|e| fail("permission_denied", e))?;
    if let Some(p) = requested {
        check_tracked(ctx, p)?;
        return Ok(scopes);
    }
    let Some(mut scopes) = scopes else {
        return Ok(None);
    };
    let roots = ctx.roots();
    scopes.retain(|s| roots.iter().any(|r| overlaps(s, &r.path)));
    if scopes.is_empty() {
        return Err(fail(
            "not_tracked",
            "none of the paths granted to you is in a tracked tree; ask the administrator to track it",
        ));
    }
    Ok(Some(scopes))
}

/// A consumer's starting cursor (unless `since` is given) and its scope
/// narrowed to `path`.
pub(crate) fn consumer_start(
    ctx: &Context,
    name: &str,
    since: Option<&str>,
    path: Option<Vec<u8>>,
    client: &Client,
) -> Result<(String, Option<Vec<u8>>), Failure> {
    let c = ctx
        .consumers
        .use_(name, client.owner_filter())
        .map_err(|e| fail(e.code(), e.to_string()))?;
    let scope = match (path, c.scope) {
        (Some(p), Some(s)) => Some(query::intersect(&p, &s).ok_or_else(|| {
            fail(
                "bad_request",
                format!(
                    "{} is outside consumer {name:?}'s scope {}",
                    cj_types::log_path(&p),
                    cj_types::log_path(&s)
                ),
            )
        })?),
        (p, s) => p.or(s),
    };
    let since = since
        .map(str::to_owned)
        .unwrap_or_else(|| c.cursor.encode());
    Ok((since, scope))
}

/// The answer for `(since, now]`, once the gaps in range are closed, the
/// reconciler has nothing left to do, or `deadline` has passed.
pub(crate) fn answer_when_ready(
    ctx: &Context,
    since: Result<Cursor, RescanReason>,
    scopes: Option<&[Vec<u8>]>,
    deadline: Instant,
) -> Result<(query::Answer, conn::Permit<'static>), Failure> {
    let mut asked_scoped = false;
    loop {
        let completed = ctx
            .shared
            .reconcile
            .completed
            .load(std::sync::atomic::Ordering::SeqCst);
        // While the state disk is full nothing new can be made durable:
        // answer what is, and say that the rest is unknown (design 6a).
        let (end, full) = match ctx.sync() {
            Ok(end) => (end, false),
            Err(_) if ctx.disk_full().is_some() => (ctx.reader.durable_seq(), true),
            Err(f) => return Err(f),
        };
        let roots = ctx.roots();
        let building = BUILDING
            .take(1)
            .ok_or_else(|| fail("busy", "the daemon is building other large answers; retry"))?;
        let folds = crate::summary::OnDisk;
        let mut answer =
            query::answer_scopes(&ctx.reader, &roots, since.clone(), scopes, end, &folds)
                .map_err(|e| fail("failed", e.to_string()))?;
        if full {
            for r in &roots {
                let paths: Vec<Vec<u8>> = match scopes {
                    Some(list) => list
                        .iter()
                        .filter_map(|s| query::intersect(s, &r.path))
                        .collect(),
                    None => vec![r.path.clone()],
                };
                for path in paths {
                    answer.rescans.push(query::Rescan {
                        path,
                        reasons: vec![RescanReason::StateDiskFull],
                    });
                }
            }
            answer.rescans = query::dedupe(std::mem::take(&mut answer.rescans));
            return Ok((answer, building));
        }
        let q = &ctx.shared.reconcile;
        // Work remains while the reconciler runs, or while an open gap lies
        // above every request it has taken (its request is on its way).
        let untaken = answer
            .open_seq
            .is_some_and(|s| s > q.taken_through.load(std::sync::atomic::Ordering::SeqCst));
        // A batch that finished after `completed` was read journaled its
        // records past `end`: look again.
        let finished_since = q.completed.load(std::sync::atomic::Ordering::SeqCst) != completed;
        if answer.rescans.is_empty()
            || Instant::now() >= deadline
            || !(q.busy() || untaken || finished_since)
        {
            return Ok((answer, building));
        }
        if !asked_scoped {
            asked_scoped = true;
            ask_scoped_catchup(q, &answer, &roots);
        }
        drop((answer, building));
        std::thread::sleep(WAIT_POLL);
    }
}

/// A waiting query whose rescans are subtrees of a root (a worktree in a
/// big filesystem) asks for them to be reconciled first (design 11.8).
fn ask_scoped_catchup(q: &crate::inbox::Queue, answer: &query::Answer, roots: &[RootState]) {
    let closable = |r: &RescanReason| match r {
        RescanReason::Gap(g) => *g != cj_types::GapReason::JournalDamaged,
        RescanReason::UnresolvedObject => true,
        _ => false,
    };
    for r in &answer.rescans {
        let below_a_root = roots.iter().any(|x| {
            x.unavailable.is_none() && is_at_or_below(&r.path, &x.path) && r.path != x.path
        });
        if below_a_root && r.reasons.iter().all(closable) {
            q.ask_scope(&r.path);
        }
    }
}

/// The answer as the JSON lines `docs/protocol.md` describes.
fn encode_answer(answer: query::Answer) -> Vec<u8> {
    let mut out = Vec::new();
    for e in answer.entries {
        let change = Change {
            changes: ChangeKind::of(e.changes).collect(),
            path: e.path,
            kind: e.kind,
            exists: e.exists,
            renamed_from: e.renamed_from,
            renamed_to: e.renamed_to,
            subtree: e.subtree,
            gap: e.gap,
        };
        change.write_json(&mut out);
        out.push(b'\n');
    }
    let last = protocol::Answer {
        entries: Vec::new(),
        cursor: answer.cursor.encode(),
        complete: answer.rescans.is_empty(),
        rescan: answer.rescans,
    };
    let _ = writeln!(out, "{}", Value::Object(last.final_json()));
    out
}

fn status(ctx: &Context) -> Value {
    let roots: Vec<Value> = ctx
        .roots()
        .iter()
        .map(|r| {
            let mut m = Map::new();
            put_path(&mut m, "path", &r.path);
            m.insert("filesystem".into(), Value::from(r.fs_type.clone()));
            m.insert("fsid".into(), Value::from(format!("{:016x}", r.fsid)));
            m.insert("captured".into(), Value::from(r.unavailable.is_none()));
            if let Some(u) = &r.unavailable {
                m.insert("problem".into(), Value::from(u.clone()));
            }
            Value::Object(m)
        })
        .collect();
    let n = *ctx
        .shared
        .normalize
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let c = ctx
        .shared
        .commit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut lat: Vec<u64> = c.recent_us.iter().copied().collect();
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p) as usize]
        }
    };
    json!({
        "protocol": PROTOCOL_VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_s": ctx.started.elapsed().as_secs(),
        "socket": ctx.socket.display().to_string(),
        "state_dir": ctx.state_dir.display().to_string(),
        "journal": {
            "disk_full_since_ns": ctx.disk_full(),
            "problem": ctx.disk_full().map(|_| crate::shared::disk_full_message(&ctx.state_dir)),
            "id": ctx.reader.journal_id().to_hex(),
            "first_seq": ctx.reader.first_seq(),
            "last_seq": ctx.reader.durable_seq(),
            "disk_bytes": ctx.reader.disk_bytes(),
            "segments": ctx.reader.segment_count(),
        },
        "commit": {
            "commits": c.commits,
            "records": c.records,
            "latency_us_p50": pct(0.5),
            "latency_us_p99": pct(0.99),
            "latency_us_max": lat.last().copied().unwrap_or(0),
        },
        "capture": {
            "events": n.events,
            "records": n.records,
            "dropped_self": n.dropped_self,
            "dropped_outside_roots": n.dropped_outside,
            "gone_directories": n.gone_dirs,
            "unresolved_objects": n.unknown_paths,
            "overflows": n.overflows,
            "parse_errors": n.parse_errors,
        },
        "roots": roots,
        "consumers": consumer_ops::summary(ctx),
        "config": ctx.shared.config.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        "gaps": gaps_status(ctx),
        "reconcile": reconcile_status(ctx),
        "watchman": {
            "queries": crate::shared::WATCHMAN_QUERIES.load(Ordering::Relaxed),
            "fresh_instances": crate::shared::WATCHMAN_FRESH.load(Ordering::Relaxed),
        },
    })
}

/// The recent gaps, oldest first, with the roots each is closed for.
fn gaps_status(ctx: &Context) -> Value {
    let gaps = ctx
        .shared
        .reconcile
        .gaps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Value::Array(
        gaps.into_iter()
            .map(|g| {
                let mut m = Map::new();
                m.insert("seq".into(), Value::from(g.seq));
                m.insert("reason".into(), Value::from(g.reason));
                put_path(&mut m, "scope", &g.scope);
                m.insert("start_time_ns".into(), Value::from(g.start_time_ns));
                let resolved: Vec<Value> = g
                    .resolved_for
                    .iter()
                    .map(|p| {
                        let mut r = Map::new();
                        put_path(&mut r, "path", p);
                        Value::Object(r)
                    })
                    .collect();
                m.insert("resolved_for".into(), Value::Array(resolved));
                Value::Object(m)
            })
            .collect(),
    )
}

fn reconcile_status(ctx: &Context) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let q = &ctx.shared.reconcile;
    let st = q.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut m = Map::new();
    m.insert("busy".into(), Value::from(q.busy()));
    m.insert("pending_requests".into(), Value::from(q.pending()));
    if let Some(r) = st.running.as_ref().filter(|r| !r.is_empty()) {
        put_path(&mut m, "walking", r);
        m.insert("phase".into(), Value::from(st.phase));
        m.insert("expected_entries".into(), Value::from(st.expected_entries));
    }
    m.insert(
        "entries_walked".into(),
        Value::from(q.progress.entries.load(Relaxed)),
    );
    m.insert(
        "directories_walked".into(),
        Value::from(q.progress.directories.load(Relaxed)),
    );
    m.insert("walks".into(), Value::from(st.walks));
    m.insert(
        "reconciled_records".into(),
        Value::from(st.reconciled_records),
    );
    m.insert("last_walk_ms".into(), Value::from(st.last_walk_ms));
    m.insert("last_resolve_ms".into(), Value::from(st.last_resolve_ms));
    m.insert("scoped_catchups".into(), Value::from(st.scoped_catchups));
    m.insert("last_scoped_ms".into(), Value::from(st.last_scoped_ms));
    m.insert(
        "baseline_refreshes".into(),
        Value::from(st.baseline_refreshes),
    );
    m.insert("last_method".into(), Value::from(st.last_method));
    if !st.last_refresh.is_empty() {
        m.insert("last_refresh".into(), Value::from(st.last_refresh));
    }
    if !st.last_walk_reason.is_empty() {
        m.insert("last_walk_reason".into(), Value::from(st.last_walk_reason));
    }
    let mut t = Map::new();
    for (phase, ms) in &st.last_timings {
        t.insert((*phase).into(), Value::from(*ms));
    }
    m.insert("last_timings_ms".into(), Value::Object(t));
    m.insert(
        "last_changed_inodes".into(),
        Value::from(st.last_changed_inodes),
    );
    if let Some(e) = st.last_error {
        m.insert("last_error".into(), Value::from(e));
    }
    if let Some((root, attempts, due)) = st.retry {
        m.insert(
            "retry".into(),
            serde_json::json!({
                "root": cj_types::log_path(&root),
                "attempts": attempts,
                "in_ms": due.saturating_duration_since(Instant::now()).as_millis() as u64,
            }),
        );
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests;
