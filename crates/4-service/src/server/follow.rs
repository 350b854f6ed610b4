//! The `follow` stream (issue 11): replay from a cursor, then live, both
//! read from the durable journal on disk.
//!
//! Replay and live are one loop over sequence numbers: the follower reads
//! `(after, durable]`, sends it, and waits for the durable seq to move. So
//! nothing is lost or sent twice at the seam, a follower sees only records
//! that survive a crash, and capture and commit never wait for a follower:
//! a slow one just reads older pages of the journal. What a follower holds
//! is bounded by `FOLLOW_BUFFER_BYTES` (plus the socket's own buffer); one
//! that takes no byte for the stall limit is cut off with an error line
//! telling it to resume from its last cursor.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cj_journal::Item;
use cj_types::follow::{write_change, FollowLine};
use cj_types::path::is_at_or_below;
use cj_types::protocol::{Request, Rescan, RescanReason};
use cj_types::{Changes, Cursor, EventRecord, GapReason, ObjectKind, RecordBody};
use serde_json::{json, Value};

use super::{fail, Context, Failure};
use crate::access::{Access, Client};
use crate::conn::Budget;
use crate::query;
use crate::shared::RootState;

/// Followers at once (the other connection slots stay for queries).
pub const FOLLOWERS_MAX: usize = 48;
/// Encoded lines a follower holds before it writes them to its socket.
pub const FOLLOW_BUFFER_BYTES: usize = 256 << 10;
/// Default: a quiet stream sends a heartbeat line this often.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval a client may ask for.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(50);
/// Default: a follower that takes no byte for this long is cut off.
pub const FOLLOW_STALL_DEFAULT: Duration = Duration::from_secs(30);
/// After the cut-off, how long the error line waits for the client to
/// read what is ahead of it.
pub const CUTOFF_GRACE: Duration = Duration::from_secs(10);
/// How often a waiting follower looks for the daemon stopping.
const WAKE: Duration = Duration::from_millis(200);

static FOLLOWERS: Budget = Budget::new(FOLLOWERS_MAX);

/// Changes that, on a directory, cover its whole subtree.
const SUBTREE_CHANGES: Changes = Changes(
    Changes::CREATED.0 | Changes::DELETED.0 | Changes::RENAMED_FROM.0 | Changes::RENAMED_TO.0,
);

/// Where a stream starts and what it covers.
struct Start {
    /// `None`: everything (root without a path).
    scopes: Option<Vec<Vec<u8>>>,
    /// Records after this seq are sent.
    after: u64,
    /// The seq that was durable when the request came: the replay is
    /// done once it is sent.
    present: u64,
    /// A rescan to send first (an unusable cursor).
    first: Option<RescanReason>,
}

/// Serves a follow request until the client goes, is cut off, or the
/// daemon stops. Errors before the stream starts are returned.
pub(super) fn serve(
    stream: &UnixStream,
    req: &Request,
    ctx: &Context,
    client: &Client,
) -> Result<(), Failure> {
    let _permit = FOLLOWERS.try_take(1).ok_or_else(|| {
        fail(
            "busy",
            format!("too many followers ({FOLLOWERS_MAX}); retry later"),
        )
    })?;
    let start = start(req, ctx, client)?;
    let heartbeat = req
        .heartbeat_ms
        .map(Duration::from_millis)
        .unwrap_or(HEARTBEAT_DEFAULT)
        .max(HEARTBEAT_MIN);
    let mut f = Follower {
        ctx,
        stream,
        scopes: start.scopes,
        access: client.access.clone(),
        roots: Vec::new(),
        out: Vec::with_capacity(FOLLOW_BUFFER_BYTES + 4096),
        after: start.after,
        at: None,
        cursors: cj_types::CursorEncoder::new(ctx.reader.journal_id()),
        stall: ctx.shared.tunables.follow_stall(),
    };
    if let Some(reason) = start.first {
        f.roots = ctx.roots();
        let scopes = f.all_roots(reason);
        f.line(FollowLine::Rescan {
            scopes,
            cursor: f.cursor(f.after),
        });
    }
    f.run(start.present, heartbeat);
    Ok(())
}

/// The scope and the starting point of a request (consumer, cursor or now).
fn start(req: &Request, ctx: &Context, client: &Client) -> Result<Start, Failure> {
    let (since, scope) = match &req.consumer {
        Some(name) => {
            let (since, scope) =
                super::consumer_start(ctx, name, req.since.as_deref(), req.path.clone(), client)?;
            (Some(since), scope)
        }
        None => (req.since.clone(), req.path.clone()),
    };
    let scopes = super::client_scopes(ctx, client, scope.as_deref())?;
    let present = ctx.sync().unwrap_or_else(|_| ctx.reader.durable_seq());
    let Some(text) = since else {
        return Ok(Start {
            scopes,
            after: present,
            present,
            first: None,
        });
    };
    let (after, first) = match Cursor::parse(&text) {
        Err(_) => (present, Some(RescanReason::MalformedCursor)),
        Ok(c) if c.journal_id != ctx.reader.journal_id() => {
            (present, Some(RescanReason::ForeignCursor))
        }
        Ok(c) if c.seq > present => (present, Some(RescanReason::UnknownCursor)),
        // What is still there is sent after the rescan.
        Ok(c) if c.seq + 1 < ctx.reader.first_seq() => (
            ctx.reader.first_seq() - 1,
            Some(RescanReason::CursorExpired),
        ),
        Ok(c) => (c.seq, None),
    };
    Ok(Start {
        scopes,
        after,
        present,
        first,
    })
}

struct Follower<'a> {
    ctx: &'a Context,
    stream: &'a UnixStream,
    /// `None`: everything.
    scopes: Option<Vec<Vec<u8>>>,
    /// What this client may see (renames from or to elsewhere are shown
    /// as creations and deletions).
    access: Access,
    roots: Vec<RootState>,
    out: Vec<u8>,
    /// Every record up to this seq has been looked at (and, if in scope,
    /// put in `out`).
    after: u64,
    /// Where in the journal the record after `after` is.
    at: Option<cj_journal::Position>,
    cursors: cj_types::CursorEncoder,
    stall: Duration,
}

/// Why a stream ends.
enum End {
    /// The client went away or was cut off.
    Client,
    Stopping,
}

impl Follower<'_> {
    fn cursor(&self, seq: u64) -> String {
        let mut buf = [0u8; cj_types::CURSOR_LEN];
        self.cursors.encode(seq, &mut buf).to_string()
    }

    fn line(&mut self, l: FollowLine) {
        let _ = writeln!(self.out, "{}", Value::Object(l.to_json()));
    }

    // long: the loop's states (replay, seam, live, heartbeat, stop) read best together
    fn run(&mut self, present: u64, heartbeat: Duration) {
        let mut history_done = false;
        let mut last_sent = Instant::now();
        let end = loop {
            if self.ctx.stopping.load(Ordering::SeqCst) {
                break End::Stopping;
            }
            let durable = self.ctx.reader.durable_seq();
            let first = self.ctx.reader.first_seq();
            if self.after + 1 < first {
                // Retention dropped records this follower had not read.
                self.roots = self.ctx.roots();
                let scopes = self.all_roots(RescanReason::CursorExpired);
                self.after = first - 1;
                self.line(FollowLine::Rescan {
                    scopes,
                    cursor: self.cursor(self.after),
                });
            }
            if self.after < durable {
                if let Err(e) = self.read(durable) {
                    let _ = writeln!(
                        self.out,
                        "{}",
                        json!({"error": format!("reading the journal: {e}"), "code": "failed"})
                    );
                    let _ = self.send();
                    return;
                }
            }
            if !history_done && self.after >= present {
                history_done = true;
                self.line(FollowLine::HistoryDone {
                    cursor: self.cursor(self.after),
                });
            }
            if self.out.is_empty() && last_sent.elapsed() >= heartbeat {
                self.line(FollowLine::Heartbeat {
                    cursor: self.cursor(self.after),
                });
            }
            if !self.out.is_empty() {
                if self.send().is_err() {
                    break End::Client;
                }
                last_sent = Instant::now();
            }
            if self.after >= self.ctx.reader.durable_seq() {
                let wait = heartbeat.saturating_sub(last_sent.elapsed()).min(WAKE);
                self.ctx
                    .reader
                    .wait_durable(self.after + 1, wait.max(Duration::from_millis(1)));
            }
        };
        if let End::Stopping = end {
            let _ = writeln!(
                self.out,
                "{}",
                json!({"error": "the daemon is stopping; resume from your last cursor", "code": "shutting_down"})
            );
            let _ = self.send();
        }
    }

    /// Reads records after `self.after` (up to `durable`) until the
    /// buffer is full.
    fn read(&mut self, durable: u64) -> Result<(), cj_journal::Error> {
        self.roots = self.ctx.roots();
        let reader = self.ctx.reader.clone();
        let mut last = self.after;
        let mut at = self.at.take();
        reader.scan_at(self.after, durable, &mut at, |item| {
            match item {
                Item::Record(r) => {
                    last = r.seq;
                    self.record(r.seq, r.body);
                }
                Item::Damaged { last: l, .. } => {
                    last = l;
                    let scopes = self.all_roots(RescanReason::Gap(GapReason::JournalDamaged));
                    self.line(FollowLine::Rescan {
                        scopes,
                        cursor: self.cursor(l),
                    });
                }
            }
            self.out.len() < FOLLOW_BUFFER_BYTES
        })?;
        self.at = at;
        // Nothing at all was readable (a segment gone under us): the
        // expiry check at the top of the loop says so next time round.
        self.after = last.max(self.after);
        if last == self.after && self.after < durable && self.out.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn record(&mut self, seq: u64, body: RecordBody) {
        match body {
            RecordBody::Event(e) => self.event(seq, e),
            RecordBody::Gap(g) => {
                let scopes = if g.scope.is_empty() {
                    self.all_roots(RescanReason::Gap(g.reason))
                } else {
                    self.clipped(vec![g.scope], RescanReason::Gap(g.reason))
                };
                self.rescan(scopes, seq);
            }
            RecordBody::Track(t) => {
                let scopes = self.clipped(vec![t.path], RescanReason::TrackingStarted);
                self.rescan(scopes, seq);
            }
            RecordBody::Untrack(t) => {
                let scopes = self.clipped(vec![t.path], RescanReason::Untracked);
                self.rescan(scopes, seq);
            }
            RecordBody::Resolved(r) => {
                let paths = if r.scope.is_empty() {
                    self.roots.iter().map(|x| x.path.clone()).collect()
                } else {
                    vec![r.scope]
                };
                let scopes = self.clip(paths);
                if !scopes.is_empty() {
                    let cursor = self.cursor(seq);
                    self.line(FollowLine::Resolved {
                        scopes,
                        through: r.through_seq,
                        cursor,
                    });
                }
            }
            // Only reconciliation reads drain marks.
            RecordBody::Mark(_) => {}
        }
    }

    /// One event: a line if its path (either name of a rename) is in scope.
    fn event(&mut self, seq: u64, e: EventRecord) {
        if e.flags & cj_types::EVENT_FLAG_PATH_UNKNOWN != 0 {
            let scopes = self.roots_on(e.fsid, RescanReason::UnresolvedObject);
            self.rescan(scopes, seq);
            return;
        }
        let rename = e
            .changes
            .contains(Changes::RENAMED_FROM | Changes::RENAMED_TO)
            && !e.old_path.is_empty();
        let gap = (e.changes.contains(Changes::RECONCILED) && e.gap_seq != 0).then_some(e.gap_seq);
        let subtree = matches!(e.kind, ObjectKind::Dir | ObjectKind::Unknown)
            && e.changes.intersects(SUBTREE_CHANGES);
        let mut buf = [0u8; cj_types::CURSOR_LEN];
        let cursor = self.cursors.encode(seq, &mut buf);
        if rename {
            if self.in_scope(&e.path) {
                // The new name, coming from the old one (for a client that
                // may not see the old one: a creation).
                let mut changes = e.changes - Changes::RENAMED_FROM;
                let from = self
                    .access
                    .sees(&e.old_path)
                    .then_some(e.old_path.as_slice());
                if from.is_none() {
                    changes = (changes - Changes::RENAMED_TO) | Changes::CREATED;
                }
                write_change(
                    &mut self.out,
                    &e.path,
                    e.kind,
                    changes,
                    from,
                    None,
                    subtree,
                    gap,
                    seq,
                    cursor,
                );
            } else if self.in_scope(&e.old_path) {
                // Moved out of scope: the old name, and where it went.
                let mut changes = (e.changes - Changes::RENAMED_TO)
                    & (Changes::RENAMED_FROM | Changes::RECONCILED);
                let hidden = !e.path.is_empty() && !self.access.sees(&e.path);
                let to = (!e.path.is_empty() && !hidden).then_some(e.path.as_slice());
                if hidden {
                    changes = (changes - Changes::RENAMED_FROM) | Changes::DELETED;
                }
                write_change(
                    &mut self.out,
                    &e.old_path,
                    e.kind,
                    changes,
                    None,
                    to,
                    subtree,
                    gap,
                    seq,
                    cursor,
                );
            }
        } else if self.in_scope(&e.path) {
            write_change(
                &mut self.out,
                &e.path,
                e.kind,
                e.changes,
                None,
                None,
                subtree,
                gap,
                seq,
                cursor,
            );
        }
    }

    /// Inside the stream's scope and inside a tracked root.
    fn in_scope(&self, path: &[u8]) -> bool {
        !path.is_empty()
            && self
                .scopes
                .as_ref()
                .is_none_or(|list| list.iter().any(|s| is_at_or_below(path, s)))
            && self.roots.iter().any(|r| is_at_or_below(path, &r.path))
    }

    fn rescan(&mut self, scopes: Vec<Rescan>, seq: u64) {
        if !scopes.is_empty() {
            let cursor = self.cursor(seq);
            self.line(FollowLine::Rescan { scopes, cursor });
        }
    }

    /// `paths` clipped to the stream's scopes, those outside dropped.
    fn clip(&self, paths: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = paths
            .into_iter()
            .flat_map(|p| match &self.scopes {
                Some(list) => list
                    .iter()
                    .filter_map(|s| query::intersect(&p, s))
                    .collect::<Vec<_>>(),
                None => vec![p],
            })
            .collect();
        out.dedup();
        out
    }

    /// Rescan scopes for `paths` (clipped), with `reason`.
    fn clipped(&self, paths: Vec<Vec<u8>>, reason: RescanReason) -> Vec<Rescan> {
        self.clip(paths)
            .into_iter()
            .map(|path| Rescan {
                path,
                reasons: vec![reason.clone()],
            })
            .collect()
    }

    /// Every tracked root in scope (the scope itself when none is).
    fn all_roots(&self, reason: RescanReason) -> Vec<Rescan> {
        let roots: Vec<Vec<u8>> = self.roots.iter().map(|r| r.path.clone()).collect();
        if roots.is_empty() {
            let scopes = self.scopes.clone().unwrap_or_default();
            return self.clipped(scopes, reason);
        }
        query::dedupe(self.clipped(roots, reason))
    }

    /// The roots on filesystem `fsid` (all of them if none is known).
    fn roots_on(&self, fsid: u64, reason: RescanReason) -> Vec<Rescan> {
        let on: Vec<Vec<u8>> = self
            .roots
            .iter()
            .filter(|r| r.fsid == fsid)
            .map(|r| r.path.clone())
            .collect();
        if on.is_empty() {
            return self.all_roots(reason);
        }
        self.clipped(on, reason)
    }

    /// Writes the buffer. A client that takes no byte for the stall limit
    /// is cut off: it gets the rest and an error line if it reads within
    /// `CUTOFF_GRACE`, then the connection closes.
    fn send(&mut self) -> Result<(), ()> {
        let mut stream = self.stream;
        let _ = stream.set_write_timeout(Some(self.stall));
        let mut done = 0;
        let result = loop {
            if done == self.out.len() {
                break Ok(());
            }
            match stream.write(&self.out[done..]) {
                Ok(0) => break Err(false),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Err(true)
                }
                Err(_) => break Err(false),
            }
        };
        match result {
            Ok(()) => {
                self.out.clear();
                Ok(())
            }
            Err(true) => {
                let mut rest = self.out.split_off(done);
                let _ = writeln!(
                    rest,
                    "{}",
                    json!({
                        "error": format!(
                            "this follower took nothing for {} ms and was cut off; \
                             reconnect and resume from the last cursor you processed",
                            self.stall.as_millis()
                        ),
                        "code": "slow_consumer",
                    })
                );
                let _ = stream.set_write_timeout(Some(CUTOFF_GRACE));
                let _ = stream.write_all(&rest);
                Err(())
            }
            Err(false) => Err(()),
        }
    }
}
