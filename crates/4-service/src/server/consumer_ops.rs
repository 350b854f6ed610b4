//! `hello` and the durable consumer requests (`docs/protocol.md`).

use cj_types::protocol::{put_path, Op, Request, PROTOCOL_VERSION};
use cj_types::Cursor;
use serde_json::{json, Map, Value};

use super::{check_tracked, fail, Context, Failure};
use crate::access::Client;
use crate::consumers::{check_name, Consumer};

/// What this daemon can do, for clients to check before relying on it.
pub const CAPABILITIES: &[&str] = &[
    "changes",
    "changes_wait",
    "cursor",
    "track",
    "status",
    "follow",
    "follow_heartbeat",
    "consumers",
    "paths_b64",
];

pub(super) fn hello() -> Value {
    json!({
        "ok": true,
        "protocol": PROTOCOL_VERSION,
        "server": format!("cj {}", env!("CARGO_PKG_VERSION")),
        "capabilities": CAPABILITIES,
        "limits": {
            "connections": crate::conn::CONNECTIONS_MAX,
            "followers": super::FOLLOWERS_MAX,
            "request_bytes": cj_types::protocol::REQUEST_BYTES_MAX,
            "consumers": crate::consumers::CONSUMERS_MAX,
        },
    })
}

pub(super) fn handle(req: &Request, ctx: &Context, client: &Client) -> Result<Value, Failure> {
    let by = client.owner_filter();
    let name = req
        .consumer
        .as_deref()
        .ok_or_else(|| fail("bad_request", "this request needs \"consumer\" (a name)"));
    let refused = |e: crate::consumers::Refusal| fail(e.code(), e.to_string());
    let answer = match req.op {
        Op::ConsumerAdd => {
            let name = name?;
            check_name(name).map_err(refused)?;
            // A user's consumer covers its grants (or a path inside one).
            client
                .access
                .scopes(req.path.as_deref())
                .map_err(|e| fail("permission_denied", e))?;
            if let Some(p) = &req.path {
                check_tracked(ctx, p)?;
            }
            let at = match &req.cursor {
                Some(text) => acceptable(ctx, text)?,
                None => Cursor {
                    journal_id: ctx.reader.journal_id(),
                    seq: ctx.sync()?,
                },
            };
            ctx.consumers
                .add(name, req.path.clone(), at, client.uid)
                .map_err(refused)?;
            json!({"ok": true, "cursor": at.encode()})
        }
        Op::ConsumerAck => {
            let name = name?;
            let text = match (&req.cursor, &req.note) {
                (Some(text), _) => Some(text.as_str()),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(fail(
                        "bad_request",
                        "consumer_ack needs \"cursor\" (the cursor to acknowledge) or \"note\"",
                    ))
                }
            };
            if let Some(text) = text {
                let at = acceptable(ctx, text)?;
                ctx.consumers.ack(name, at, by).map_err(refused)?;
            }
            if let Some(note) = &req.note {
                ctx.consumers.set_note(name, note, by).map_err(refused)?;
            }
            json!({"ok": true})
        }
        Op::ConsumerRemove => {
            ctx.consumers.remove(name?, by).map_err(refused)?;
            json!({"ok": true})
        }
        _ => list(ctx, by),
    };
    refresh_pin(ctx);
    Ok(answer)
}

/// A cursor a consumer may be moved to: of this journal and not past
/// what is durable.
fn acceptable(ctx: &Context, text: &str) -> Result<Cursor, Failure> {
    let c = Cursor::parse(text).map_err(|e| fail("bad_request", e.to_string()))?;
    if c.journal_id != ctx.reader.journal_id() {
        return Err(fail(
            "bad_request",
            "that cursor is from another journal (another machine, or a state directory that \
             was reset); give a cursor from this daemon",
        ));
    }
    if c.seq > ctx.reader.durable_seq() {
        return Err(fail(
            "bad_request",
            "that cursor is ahead of the journal; give a cursor this daemon handed out",
        ));
    }
    Ok(c)
}

/// Tells retention what the consumers in use still need.
pub(crate) fn refresh_pin(ctx: &Context) {
    let now = cj_types::sys::now_ns();
    ctx.consumers
        .set_idle_expire(ctx.shared.tunables.consumer_idle());
    ctx.reader
        .set_pin(ctx.consumers.pin(ctx.reader.journal_id(), now));
}

/// For `status`: how many consumers, what they hold back, and the cap.
pub(super) fn summary(ctx: &Context) -> Value {
    let now = cj_types::sys::now_ns();
    let first = ctx.reader.first_seq();
    let list = ctx.consumers.list();
    let expired: Vec<&str> = list
        .iter()
        .filter(|c| c.cursor.journal_id != ctx.reader.journal_id() || c.cursor.seq + 1 < first)
        .map(|c| c.name.as_str())
        .collect();
    let durable = ctx.reader.durable_seq();
    let each: Vec<Value> = list
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("name".into(), Value::from(c.name.clone()));
            lag(ctx, c, now, durable, &mut m);
            Value::Object(m)
        })
        .collect();
    json!({
        "count": list.len(),
        "list": each,
        "pin_seq": ctx.consumers.pin(ctx.reader.journal_id(), now),
        "cap_bytes": ctx.shared.tunables.consumer_cap_bytes.load(std::sync::atomic::Ordering::SeqCst),
        "expired": expired,
    })
}

fn list(ctx: &Context, by: Option<u32>) -> Value {
    let now = cj_types::sys::now_ns();
    let durable = ctx.reader.durable_seq();
    let first = ctx.reader.first_seq();
    let items: Vec<Value> = ctx
        .consumers
        .list()
        .iter()
        .filter(|c| by.is_none_or(|uid| c.owner == uid))
        .map(|c| Value::Object(describe(ctx, c, now, durable, first)))
        .collect();
    json!({
        "consumers": items,
        "cap_bytes": ctx.shared.tunables.consumer_cap_bytes.load(std::sync::atomic::Ordering::SeqCst),
        "idle_expire_s": ctx.shared.tunables.consumer_idle().map(|d| d.as_secs()),
    })
}

fn describe(ctx: &Context, c: &Consumer, now: u64, durable: u64, first: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(c.name.clone()));
    if let Some(s) = &c.scope {
        put_path(&mut m, "path", s);
    }
    let ours = c.cursor.journal_id == ctx.reader.journal_id();
    m.insert("cursor".into(), Value::from(c.cursor.encode()));
    m.insert("seq".into(), Value::from(c.cursor.seq));
    lag(ctx, c, now, durable, &mut m);
    let idle = ctx.consumers.idle(c, now);
    m.insert("idle".into(), Value::from(idle));
    m.insert("pinning".into(), Value::from(ours && !idle));
    m.insert(
        "expired".into(),
        Value::from(!ours || c.cursor.seq + 1 < first),
    );
    m.insert("created_ns".into(), Value::from(c.created_ns));
    m.insert("seen_ns".into(), Value::from(c.seen_ns));
    m
}

/// `lag_records` (records after the consumer's cursor), `lag_s` (how old
/// the oldest of them is; 0 when there are none) and the consumer's note
/// (`note`, `note_since_ns`).
fn lag(ctx: &Context, c: &Consumer, now: u64, durable: u64, m: &mut Map<String, Value>) {
    let ours = c.cursor.journal_id == ctx.reader.journal_id();
    let behind = if ours {
        durable.saturating_sub(c.cursor.seq)
    } else {
        durable
    };
    m.insert("lag_records".into(), Value::from(behind));
    let mut oldest = None;
    if behind > 0 {
        let after = if ours { c.cursor.seq } else { 0 };
        let after = after.max(ctx.reader.first_seq().saturating_sub(1));
        let _ = ctx.reader.scan(after, after + 1, |item| {
            if let cj_journal::Item::Record(r) = item {
                oldest = Some(r.time_ns);
            }
            false
        });
    }
    let lag_ns = oldest.map_or(0, |t| now.saturating_sub(t));
    m.insert("lag_s".into(), Value::from(lag_ns as f64 / 1e9));
    if let Some(n) = ctx.consumers.note(&c.name) {
        m.insert("note".into(), Value::from(n.text));
        m.insert("note_since_ns".into(), Value::from(n.since_ns));
    }
}
