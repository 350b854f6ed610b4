//! Subscriptions (docs: "subscribe"): a thread per subscription follows the
//! journal and sends what its query finds since its last clock, as a
//! unilateral PDU. States (`state-enter`/`state-leave`) are told to the
//! root's subscribers; a subscription defers (`defer`, `defer_vcs`) or
//! drops (`drop`) what changes while a named state is asserted.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use cj_types::path::is_at_or_below;
use cj_types::Cursor;

use super::query::{Since, Spec};
use super::run::{clock_of, root_of, run_query};
use super::value::Val;
use super::{Conn, Endpoint, SUBSCRIPTIONS_MAX, VERSION};

/// Events queued per subscription; a state change past it is not told to
/// that subscriber (its results are still correct).
pub const SUBSCRIPTION_EVENTS_MAX: usize = 64;
/// How long a subscription waits for more changes before it answers
/// (Watchman's settle period).
pub const SETTLE: Duration = Duration::from_millis(20);
/// States that `defer_vcs` (on by default) defers for.
const VCS_STATES: [&str; 2] = ["hg.update", "hg.transaction"];

pub enum Event {
    State {
        enter: bool,
        name: String,
        metadata: Option<Val>,
        clock: String,
        abandoned: bool,
    },
    /// Answer now; tell whether something was sent.
    Flush(SyncSender<bool>),
    Stop,
}

pub struct Handle {
    pub conn: u64,
    pub root: Vec<u8>,
    pub name: String,
    pub tx: SyncSender<Event>,
}

struct Sub {
    ep: Arc<Endpoint>,
    conn: Arc<Conn>,
    root: Vec<u8>,
    name: String,
    spec: Spec,
    defer: Vec<String>,
    drop: Vec<String>,
    clock: Cursor,
    /// States asserted now that this subscription defers or drops for.
    deferring: Vec<String>,
    dropping: Vec<String>,
}

fn names(v: Option<&Val>) -> Vec<String> {
    v.and_then(Val::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn subscribe(ep: &Arc<Endpoint>, conn: &Arc<Conn>, args: &[Val]) -> Result<Val, String> {
    let root = root_of(ep, conn, args.get(1).ok_or("subscribe: missing root")?)?;
    let name = args
        .get(2)
        .and_then(Val::as_str)
        .ok_or("subscribe: missing name")?
        .to_string();
    let q = args.get(3).ok_or("subscribe: missing query")?;
    let spec = Spec::parse(q)?;
    let mut defer = names(q.get("defer"));
    if q.get("defer_vcs").and_then(Val::as_bool).unwrap_or(true) {
        defer.extend(VCS_STATES.iter().map(|s| s.to_string()));
    }
    let drop = names(q.get("drop"));
    {
        let subs = ep.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let mine = subs.iter().filter(|h| h.conn == conn.id).count();
        if mine >= SUBSCRIPTIONS_MAX {
            return Err(format!(
                "more than {SUBSCRIPTIONS_MAX} subscriptions on one connection"
            ));
        }
    }
    remove(ep, |h| {
        h.conn == conn.id && h.root == root && h.name == name
    });
    // The first answer: since the query's clock, or every file.
    let (first, clock) = run_query(ep, conn, &root, &spec)?;
    let (tx, rx) = mpsc::sync_channel(SUBSCRIPTION_EVENTS_MAX);
    let mut sub = Sub {
        ep: ep.clone(),
        conn: conn.clone(),
        root: root.clone(),
        name: name.clone(),
        spec,
        defer,
        drop,
        clock,
        deferring: Vec::new(),
        dropping: Vec::new(),
    };
    let fresh =
        sub.spec.since.is_none() || first.get("is_fresh_instance") == Some(&Val::Bool(true));
    let initial = sub.unilateral(first, fresh);
    // Asserted states are known from the start.
    let asserted: Vec<String> = ep
        .states
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&root)
        .map(|v| v.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    for s in asserted {
        sub.note_state(true, &s);
    }
    ep.subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Handle {
            conn: conn.id,
            root: root.clone(),
            name: name.clone(),
            tx,
        });
    // The response first, then the initial files, then the thread.
    let response = Val::obj([
        ("version", Val::str(VERSION)),
        ("subscribe", Val::str(name)),
        ("clock", Val::str(clock_of(&clock))),
    ]);
    conn.send(&response).map_err(|e| e.to_string())?;
    conn.send(&initial).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("cj-wm-sub".into())
        .spawn(move || sub.run(rx))
        .map_err(|e| format!("cannot start the subscription: {e}"))?;
    // Already answered.
    Ok(Val::Null)
}

impl Sub {
    fn unilateral(&self, mut answer: Val, fresh: bool) -> Val {
        answer.set("subscription", Val::str(self.name.clone()));
        answer.set("root", Val::path(&self.root));
        answer.set("unilateral", Val::Bool(true));
        answer.set("is_fresh_instance", Val::Bool(fresh));
        answer
    }

    fn note_state(&mut self, enter: bool, name: &str) {
        let (d, p) = (
            self.defer.iter().any(|x| x == name),
            self.drop.iter().any(|x| x == name),
        );
        for (wanted, list) in [(d, &mut self.deferring), (p, &mut self.dropping)] {
            if !wanted {
                continue;
            }
            if enter {
                list.push(name.to_string());
            } else if let Some(i) = list.iter().position(|x| x == name) {
                list.remove(i);
            }
        }
    }

    /// Looks for changes since the clock; sends them unless deferred.
    /// True if something was sent.
    fn check(&mut self) -> bool {
        if !self.deferring.is_empty() {
            return false;
        }
        let mut spec_since = Some(Since::Clock(clock_of(&self.clock)));
        std::mem::swap(&mut self.spec.since, &mut spec_since);
        let result = run_query(&self.ep, &self.conn, &self.root, &self.spec);
        std::mem::swap(&mut self.spec.since, &mut spec_since);
        let Ok((answer, clock)) = result else {
            return false;
        };
        self.clock = clock;
        if !self.dropping.is_empty() {
            return false;
        }
        let fresh = answer.get("is_fresh_instance") == Some(&Val::Bool(true));
        let empty = answer
            .get("files")
            .and_then(Val::as_array)
            .is_none_or(<[Val]>::is_empty);
        if empty && !fresh {
            return false;
        }
        let v = self.unilateral(answer, fresh);
        self.conn.send(&v).is_ok()
    }

    fn run(mut self, rx: Receiver<Event>) {
        let reader = self.ep.ctx.reader.clone();
        loop {
            if self.conn.closed.load(Ordering::SeqCst)
                || self.ep.ctx.stopping.load(Ordering::SeqCst)
            {
                return;
            }
            match rx.try_recv() {
                Ok(Event::Stop) | Err(TryRecvError::Disconnected) => return,
                Ok(Event::Flush(reply)) => {
                    let sent = self.check();
                    let _ = reply.send(sent);
                    continue;
                }
                Ok(Event::State {
                    enter,
                    name,
                    metadata,
                    clock,
                    abandoned,
                }) => {
                    let key = if enter { "state-enter" } else { "state-leave" };
                    let mut v = Val::obj([
                        ("version", Val::str(VERSION)),
                        ("subscription", Val::str(self.name.clone())),
                        ("root", Val::path(&self.root)),
                        (key, Val::str(name.clone())),
                        ("clock", Val::str(clock)),
                        ("unilateral", Val::Bool(true)),
                    ]);
                    if let Some(m) = metadata {
                        v.set("metadata", m);
                    }
                    if abandoned {
                        v.set("abandoned", Val::Bool(true));
                    }
                    if enter && self.drop.contains(&name) {
                        // What changed before the state is still told.
                        self.check();
                    }
                    if self.conn.send(&v).is_err() {
                        return;
                    }
                    let was_dropping = !self.dropping.is_empty();
                    self.note_state(enter, &name);
                    if !enter && was_dropping && self.dropping.is_empty() {
                        // Skip what changed during the dropped state.
                        if let Ok(end) = self.ep.ctx.sync() {
                            self.clock.seq = self.clock.seq.max(end);
                        }
                    }
                    if !enter {
                        self.check();
                    }
                    continue;
                }
                Err(TryRecvError::Empty) => {}
            }
            if reader.wait_durable(self.clock.seq + 1, Duration::from_millis(100)) {
                std::thread::sleep(SETTLE);
                self.check();
            }
        }
    }
}

/// Removes (and stops) the subscriptions `which` selects; returns their
/// names.
fn remove(ep: &Endpoint, which: impl Fn(&Handle) -> bool) -> Vec<String> {
    let mut subs = ep.subscribers.lock().unwrap_or_else(|e| e.into_inner());
    let mut gone = Vec::new();
    subs.retain(|h| {
        if which(h) {
            let _ = h.tx.try_send(Event::Stop);
            gone.push(h.name.clone());
            false
        } else {
            true
        }
    });
    gone
}

pub fn unsubscribe(ep: &Arc<Endpoint>, conn: &Arc<Conn>, args: &[Val]) -> Result<Val, String> {
    let root = root_of(ep, conn, args.get(1).ok_or("unsubscribe: missing root")?)?;
    let name = args
        .get(2)
        .and_then(Val::as_str)
        .ok_or("unsubscribe: missing name")?
        .to_string();
    let gone = remove(ep, |h| {
        h.conn == conn.id && h.root == root && h.name == name
    });
    Ok(Val::obj([
        ("unsubscribe", Val::str(name)),
        ("deleted", Val::Bool(!gone.is_empty())),
    ]))
}

pub fn flush(ep: &Arc<Endpoint>, conn: &Arc<Conn>, args: &[Val]) -> Result<Val, String> {
    let root = root_of(
        ep,
        conn,
        args.get(1).ok_or("flush-subscriptions: missing root")?,
    )?;
    let opts = args.get(2);
    let wanted = opts.map(|o| names(o.get("subscriptions")));
    let timeout = opts
        .and_then(|o| o.get("sync_timeout"))
        .and_then(Val::as_i64)
        .map_or(60_000, |t| t.clamp(0, 3_600_000) as u64);
    let targets: Vec<(String, SyncSender<Event>)> = ep
        .subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|h| h.conn == conn.id && h.root == root)
        .filter(|h| {
            wanted
                .as_ref()
                .is_none_or(|w| w.is_empty() || w.contains(&h.name))
        })
        .map(|h| (h.name.clone(), h.tx.clone()))
        .collect();
    let (mut synced, mut no_sync, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
    for (name, tx) in targets {
        let (rtx, rrx) = mpsc::sync_channel(1);
        if tx.try_send(Event::Flush(rtx)).is_err() {
            dropped.push(Val::str(name));
            continue;
        }
        match rrx.recv_timeout(Duration::from_millis(timeout)) {
            Ok(true) => synced.push(Val::str(name)),
            Ok(false) => no_sync.push(Val::str(name)),
            Err(_) => dropped.push(Val::str(name)),
        }
    }
    Ok(Val::obj([
        ("synced", Val::Array(synced)),
        ("no_sync_needed", Val::Array(no_sync)),
        ("dropped", Val::Array(dropped)),
    ]))
}

/// `state-enter` / `state-leave ROOT NAME|{name, metadata}`.
pub fn state(
    ep: &Arc<Endpoint>,
    conn: &Arc<Conn>,
    args: &[Val],
    enter: bool,
) -> Result<Val, String> {
    let root = root_of(ep, conn, args.get(1).ok_or("missing root")?)?;
    let arg = args.get(2).ok_or("missing state name")?;
    let (name, metadata) = match arg {
        Val::Object(_) => (
            arg.get("name")
                .and_then(Val::as_str)
                .ok_or("missing state name")?
                .to_string(),
            arg.get("metadata").cloned(),
        ),
        other => (
            other
                .as_str()
                .ok_or("a state name is a string")?
                .to_string(),
            None,
        ),
    };
    {
        let mut states = ep.states.lock().unwrap_or_else(|e| e.into_inner());
        let list = states.entry(root.clone()).or_default();
        if enter {
            if list.iter().any(|(n, _)| *n == name) {
                return Err(format!("state {name} is already asserted"));
            }
            list.push((name.clone(), conn.id));
        } else {
            let Some(i) = list.iter().position(|(n, _)| *n == name) else {
                return Err(format!("state {name} is not asserted"));
            };
            list.remove(i);
        }
    }
    let end = ep.ctx.sync().map_err(|f| f.message)?;
    let clock = clock_of(&Cursor {
        journal_id: ep.ctx.reader.journal_id(),
        seq: end,
    });
    tell(ep, &root, enter, &name, metadata, &clock, false);
    let key = if enter { "state-enter" } else { "state-leave" };
    Ok(Val::obj([
        ("root", Val::path(&root)),
        (key, Val::str(name)),
        ("clock", Val::str(clock)),
    ]))
}

fn tell(
    ep: &Endpoint,
    root: &[u8],
    enter: bool,
    name: &str,
    md: Option<Val>,
    clock: &str,
    abandoned: bool,
) {
    let subs = ep.subscribers.lock().unwrap_or_else(|e| e.into_inner());
    for h in subs
        .iter()
        .filter(|h| is_at_or_below(&h.root, root) || is_at_or_below(root, &h.root))
    {
        let _ = h.tx.try_send(Event::State {
            enter,
            name: name.to_string(),
            metadata: md.clone(),
            clock: clock.to_string(),
            abandoned,
        });
    }
}

/// A connection ended: its subscriptions stop and its states are left
/// (told as abandoned).
pub fn connection_closed(ep: &Endpoint, conn: u64) {
    remove(ep, |h| h.conn == conn);
    let mut left = Vec::new();
    {
        let mut states = ep.states.lock().unwrap_or_else(|e| e.into_inner());
        for (root, list) in states.iter_mut() {
            list.retain(|(n, c)| {
                if *c == conn {
                    left.push((root.clone(), n.clone()));
                }
                *c != conn
            });
        }
    }
    for (root, name) in left {
        let clock = clock_of(&Cursor {
            journal_id: ep.ctx.reader.journal_id(),
            seq: ep.ctx.reader.durable_seq(),
        });
        tell(ep, &root, false, &name, None, &clock, true);
    }
}
