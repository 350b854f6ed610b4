//! The wire protocol between the daemon and its clients: one JSON object per
//! line over a Unix stream socket. `docs/protocol.md` is the reference.
//!
//! Paths are bytes: every path field `F` is sent as `F` (a JSON string) when
//! the bytes are valid UTF-8, and as `F_b64` (standard base64) otherwise.

use serde_json::{Map, Value};

use crate::{Changes, GapReason, ObjectKind, PathText};

/// Protocol revision, sent in `status` and checked by clients.
pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;

/// Exit status / answer completeness classes, shared by daemon and CLI.
pub const EXIT_COMPLETE: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INCOMPLETE: i32 = 3;

/// One kind of change an answer names for a path (`changes` in an entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ChangeKind {
    Created,
    Deleted,
    Modified,
    Attrib,
    RenamedFrom,
    RenamedTo,
    CloseWrite,
    Replaced,
    Reconciled,
}

impl ChangeKind {
    const ALL: [(ChangeKind, Changes); 9] = [
        (ChangeKind::Created, Changes::CREATED),
        (ChangeKind::Deleted, Changes::DELETED),
        (ChangeKind::Modified, Changes::MODIFIED),
        (ChangeKind::Attrib, Changes::ATTRIB),
        (ChangeKind::RenamedFrom, Changes::RENAMED_FROM),
        (ChangeKind::RenamedTo, Changes::RENAMED_TO),
        (ChangeKind::CloseWrite, Changes::CLOSE_WRITE),
        (ChangeKind::Replaced, Changes::REPLACED),
        (ChangeKind::Reconciled, Changes::RECONCILED),
    ];

    /// The kinds a change-bit set holds, in the order answers list them.
    pub fn of(changes: Changes) -> impl Iterator<Item = ChangeKind> {
        ChangeKind::ALL
            .into_iter()
            .filter(move |(_, bit)| changes.contains(*bit))
            .map(|(k, _)| k)
    }

    pub fn bit(self) -> Changes {
        ChangeKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or(Changes::default(), |(_, b)| *b)
    }

    /// The wire name (`docs/protocol.md`).
    pub fn as_str(self) -> &'static str {
        Changes::NAMES
            .iter()
            .find(|(bit, _)| *bit == self.bit())
            .map_or("?", |(_, name)| name)
    }

    pub fn parse(name: &str) -> Option<ChangeKind> {
        ChangeKind::ALL
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k.as_str() == name)
    }
}

/// Why an answer asks for a rescan of a scope. On the wire a scope's
/// reasons are one string, joined with commas (`docs/protocol.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RescanReason {
    /// A gap in history of this reason (`daemon_down`, `queue_overflow`, ...).
    Gap(GapReason),
    /// A change to an object whose path could not be named.
    UnresolvedObject,
    TrackingStarted,
    Untracked,
    TooManyChanges,
    /// The root is not captured right now, and why.
    RootUnavailable(String),
    ForeignCursor,
    UnknownCursor,
    CursorExpired,
    MalformedCursor,
    /// The state filesystem is full: changes since are not journaled yet.
    StateDiskFull,
    /// A reason this version does not know (a newer daemon).
    Other(String),
}

impl RescanReason {
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        Cow::Borrowed(match self {
            RescanReason::Gap(g) => g.as_str(),
            RescanReason::UnresolvedObject => "unresolved_object",
            RescanReason::TrackingStarted => "tracking_started",
            RescanReason::Untracked => "untracked",
            RescanReason::TooManyChanges => "too_many_changes",
            RescanReason::RootUnavailable(why) => {
                return Cow::Owned(format!("root_unavailable: {why}"))
            }
            RescanReason::ForeignCursor => "foreign_cursor",
            RescanReason::UnknownCursor => "unknown_cursor",
            RescanReason::CursorExpired => "cursor_expired",
            RescanReason::MalformedCursor => "malformed_cursor",
            RescanReason::StateDiskFull => "state_disk_full",
            RescanReason::Other(s) => return Cow::Owned(s.clone()),
        })
    }

    pub fn parse(text: &str) -> RescanReason {
        if let Some(why) = text.strip_prefix("root_unavailable: ") {
            return RescanReason::RootUnavailable(why.to_string());
        }
        match text {
            "unresolved_object" => RescanReason::UnresolvedObject,
            "tracking_started" => RescanReason::TrackingStarted,
            "untracked" => RescanReason::Untracked,
            "too_many_changes" => RescanReason::TooManyChanges,
            "foreign_cursor" => RescanReason::ForeignCursor,
            "unknown_cursor" => RescanReason::UnknownCursor,
            "cursor_expired" => RescanReason::CursorExpired,
            "malformed_cursor" => RescanReason::MalformedCursor,
            "state_disk_full" => RescanReason::StateDiskFull,
            other => (1..=u8::MAX)
                .filter_map(GapReason::from_u8)
                .find(|g| g.as_str() == other)
                .map_or_else(|| RescanReason::Other(other.to_string()), RescanReason::Gap),
        }
    }

    /// The reasons of one wire `reason` string.
    pub fn parse_list(text: &str) -> Vec<RescanReason> {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(RescanReason::parse)
            .collect()
    }

    /// The wire `reason` string of a scope's reasons.
    pub fn join(reasons: &[RescanReason]) -> String {
        reasons
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::fmt::Display for RescanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// One changed path of a `changes` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: Vec<u8>,
    /// What is at the path (or was, if it is gone).
    pub kind: ObjectKind,
    /// Whether the path exists now (when the answer was made).
    pub exists: bool,
    /// What happened, in the order the protocol lists it.
    pub changes: Vec<ChangeKind>,
    pub renamed_from: Option<Vec<u8>>,
    pub renamed_to: Option<Vec<u8>>,
    /// A directory was created, deleted or renamed at this path in the
    /// range: treat everything below it as changed.
    pub subtree: bool,
    /// For a change found by reconciliation (`changes` holds "reconciled"):
    /// the seq of the gap record it closes (see `cj status`).
    pub gap: Option<u64>,
}

/// A directory whose whole subtree must be rescanned, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescan {
    pub path: Vec<u8>,
    pub reasons: Vec<RescanReason>,
}

/// The answer to `changes since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub entries: Vec<Change>,
    /// Pass this to the next call.
    pub cursor: String,
    /// True when `entries` holds every change; false when `rescan` is not empty.
    pub complete: bool,
    pub rescan: Vec<Rescan>,
}

impl Change {
    /// The entry line's object (`docs/protocol.md`).
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        put_path(&mut m, "path", &self.path);
        m.insert("kind".into(), Value::from(self.kind.as_str()));
        m.insert("exists".into(), Value::from(self.exists));
        let names = self.changes.iter().map(|k| Value::from(k.as_str()));
        m.insert("changes".into(), Value::Array(names.collect()));
        if let Some(f) = self.renamed_from.as_ref().filter(|f| !f.is_empty()) {
            put_path(&mut m, "renamed_from", f);
        }
        if let Some(t) = &self.renamed_to {
            put_path(&mut m, "renamed_to", t);
        }
        if self.subtree {
            m.insert("subtree".into(), Value::from(true));
        }
        if let Some(g) = self.gap {
            m.insert("gap".into(), Value::from(g));
        }
        m
    }

    /// The entry line, as `Value::Object(self.to_json())` prints it (the
    /// same keys in the same order, the same escapes) but written straight
    /// into `out`, without building a map: a big answer is mostly these
    /// lines. No newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"changes\":[");
        for (i, k) in self.changes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k.as_str());
        }
        out.extend_from_slice(b"],\"exists\":");
        out.extend_from_slice(if self.exists { b"true" } else { b"false" });
        if let Some(g) = self.gap {
            out.extend_from_slice(b",\"gap\":");
            out.extend_from_slice(g.to_string().as_bytes());
        }
        out.extend_from_slice(b",\"kind\":");
        write_str(out, self.kind.as_str());
        write_path(out, "path", &self.path);
        if let Some(f) = self.renamed_from.as_ref().filter(|f| !f.is_empty()) {
            write_path(out, "renamed_from", f);
        }
        if let Some(t) = &self.renamed_to {
            write_path(out, "renamed_to", t);
        }
        if self.subtree {
            out.extend_from_slice(b",\"subtree\":true");
        }
        out.push(b'}');
    }

    /// Reads an entry line straight from its bytes, without building a
    /// map: `None` when the line is not a plain entry (the final line, an
    /// error, a field of an unexpected type: read those with
    /// [`Change::from_json`], which names what is wrong). Gives what
    /// `from_json` gives for every entry line (tested).
    pub fn from_json_line(line: &[u8]) -> Option<Change> {
        let l: EntryLine<'_> = serde_json::from_slice(line).ok()?;
        if l.cursor.is_some() || l.error.is_some() {
            return None;
        }
        let path = |plain: Option<std::borrow::Cow<'_, str>>,
                    b64: Option<std::borrow::Cow<'_, str>>|
         -> Option<Option<Vec<u8>>> {
            match (plain, b64) {
                (Some(_), Some(_)) => None,
                (Some(p), None) => Some(Some(p.as_bytes().to_vec())),
                (None, Some(b)) => PathText::Base64(b.into_owned()).to_bytes().map(Some),
                (None, None) => Some(None),
            }
        };
        Some(Change {
            path: path(l.path, l.path_b64)??,
            kind: ObjectKind::parse(l.kind.as_deref().unwrap_or("")),
            exists: l.exists.unwrap_or(false),
            changes: l
                .changes
                .unwrap_or_default()
                .iter()
                .filter_map(|c| ChangeKind::parse(c))
                .collect(),
            renamed_from: path(l.renamed_from, l.renamed_from_b64)?,
            renamed_to: path(l.renamed_to, l.renamed_to_b64)?,
            subtree: l.subtree.unwrap_or(false),
            gap: l.gap,
        })
    }

    /// Reads an entry line's object. A change kind this version does not
    /// know (a newer daemon) is left out.
    pub fn from_json(m: &Map<String, Value>) -> Result<Change, String> {
        let path = get_path(m, "path")?.ok_or("entry without path")?;
        let changes = m
            .get("changes")
            .and_then(|c| c.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().and_then(ChangeKind::parse))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Change {
            path,
            kind: ObjectKind::parse(m.get("kind").and_then(|k| k.as_str()).unwrap_or("")),
            exists: m.get("exists").and_then(|e| e.as_bool()).unwrap_or(false),
            changes,
            renamed_from: get_path(m, "renamed_from")?,
            renamed_to: get_path(m, "renamed_to")?,
            subtree: m.get("subtree").and_then(|v| v.as_bool()).unwrap_or(false),
            gap: m.get("gap").and_then(|v| v.as_u64()),
        })
    }
}

impl Answer {
    /// The final line's object (`cursor`, `complete`, `rescan`).
    pub fn final_json(&self) -> Map<String, Value> {
        let rescan = self.rescan.iter().map(|r| {
            let mut m = Map::new();
            put_path(&mut m, "path", &r.path);
            m.insert("reason".into(), Value::from(RescanReason::join(&r.reasons)));
            Value::Object(m)
        });
        let mut m = Map::new();
        m.insert("cursor".into(), Value::from(self.cursor.clone()));
        m.insert("complete".into(), Value::from(self.complete));
        m.insert("rescan".into(), Value::Array(rescan.collect()));
        m
    }

    /// Reads the final line's object, with the entries read before it.
    pub fn from_final_json(m: &Map<String, Value>, entries: Vec<Change>) -> Result<Answer, String> {
        let cursor = m
            .get("cursor")
            .and_then(|c| c.as_str())
            .ok_or("no cursor")?
            .to_string();
        let mut rescan = Vec::new();
        for r in m
            .get("rescan")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            let Some(obj) = r.as_object() else { continue };
            rescan.push(Rescan {
                path: get_path(obj, "path")?.unwrap_or_default(),
                reasons: RescanReason::parse_list(
                    obj.get("reason").and_then(|x| x.as_str()).unwrap_or(""),
                ),
            });
        }
        let complete = m.get("complete").and_then(|c| c.as_bool()).unwrap_or(false);
        Ok(Answer {
            entries,
            cursor,
            complete: rescan.is_empty() && complete,
            rescan,
        })
    }
}

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    Ping,
    Cursor,
    Changes,
    Track,
    Untrack,
    Status,
    Hello,
    Follow,
    ConsumerAdd,
    ConsumerList,
    ConsumerAck,
    ConsumerRemove,
}

impl Op {
    pub fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "ping" => Op::Ping,
            "cursor" => Op::Cursor,
            "changes" => Op::Changes,
            "track" => Op::Track,
            "untrack" => Op::Untrack,
            "status" => Op::Status,
            "hello" => Op::Hello,
            "follow" => Op::Follow,
            "consumer_add" => Op::ConsumerAdd,
            "consumer_list" => Op::ConsumerList,
            "consumer_ack" => Op::ConsumerAck,
            "consumer_remove" => Op::ConsumerRemove,
            _ => return None,
        })
    }
}

/// One request line, decoded and checked: every field the protocol knows
/// has the type it says (`docs/protocol.md`). Unknown fields are ignored
/// (later versions may add some).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Absolute, if given.
    pub path: Option<Vec<u8>>,
    /// `changes`: the cursor text (parsed by the daemon, which answers a
    /// malformed one with a rescan).
    pub since: Option<String>,
    /// `changes`: how long to wait for reconciliation.
    pub wait_ms: Option<u64>,
    /// `changes`, `follow` and the consumer ops: a durable consumer's name.
    pub consumer: Option<String>,
    /// `consumer_ack`: the cursor acknowledged.
    pub cursor: Option<String>,
    /// `follow`: how often a quiet stream sends a heartbeat line.
    pub heartbeat_ms: Option<u64>,
    /// `consumer_ack`: what the consumer says about itself (shown by
    /// `status` and `consumer_list`; `""` clears it).
    pub note: Option<String>,
}

/// Decodes one request line (without or with its newline). The error says
/// what is wrong, naming the field (issue 9, defect 11).
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > REQUEST_BYTES_MAX {
        return Err(format!("request longer than {REQUEST_BYTES_MAX} bytes"));
    }
    let map: Map<String, Value> = match serde_json::from_slice(line) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("request is not a JSON object".into()),
        Err(e) => return Err(format!("request is not a JSON object: {e}")),
    };
    let name = get_str(&map, "op")?.ok_or("the request has no \"op\" field")?;
    let op = Op::parse(name).ok_or_else(|| format!("unknown op {name:?}"))?;
    let path = get_path(&map, "path")?;
    if path.as_ref().is_some_and(|p| !p.starts_with(b"/")) {
        return Err("paths must be absolute".into());
    }
    Ok(Request {
        op,
        path,
        since: get_str(&map, "since")?.map(str::to_owned),
        wait_ms: get_u64(&map, "wait_ms")?,
        consumer: get_str(&map, "consumer")?.map(str::to_owned),
        cursor: get_str(&map, "cursor")?.map(str::to_owned),
        heartbeat_ms: get_u64(&map, "heartbeat_ms")?,
        note: get_str(&map, "note")?.map(str::to_owned),
    })
}

/// An entry line's fields, borrowed from the line where no escape forces a
/// copy ([`Change::from_json_line`]).
#[derive(serde::Deserialize)]
struct EntryLine<'a> {
    #[serde(borrow)]
    path: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    path_b64: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    exists: Option<bool>,
    #[serde(borrow)]
    changes: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow)]
    renamed_from: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    renamed_from_b64: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    renamed_to: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    renamed_to_b64: Option<std::borrow::Cow<'a, str>>,
    subtree: Option<bool>,
    gap: Option<u64>,
    cursor: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

/// A JSON string, escaped as serde_json escapes it.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `,"stem":"path"` (or `,"stem_b64":"..."`), as [`put_path`] names it.
fn write_path(out: &mut Vec<u8>, stem: &str, bytes: &[u8]) {
    out.push(b',');
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            write_str(out, stem);
            out.push(b':');
            write_str(out, text);
        }
        Err(_) => {
            let t = PathText::from_bytes(bytes);
            write_str(out, &t.key(stem));
            out.push(b':');
            write_str(out, t.value());
        }
    }
}

/// Inserts a byte path under `stem` (or `stem_b64`).
pub fn put_path(obj: &mut Map<String, Value>, stem: &str, bytes: &[u8]) {
    let t = PathText::from_bytes(bytes);
    obj.insert(t.key(stem), Value::String(t.value().to_owned()));
}

/// Reads a byte path from `stem` or `stem_b64`. `Ok(None)` if absent,
/// `Err` if `stem_b64` is not valid base64.
/// A field of another JSON type than the protocol says is an error naming
/// the field (issue 9, defect 11), never silently ignored.
pub fn get_path(obj: &Map<String, Value>, stem: &str) -> Result<Option<Vec<u8>>, String> {
    let b64 = format!("{stem}_b64");
    match (obj.get(stem), obj.get(&b64)) {
        (Some(_), Some(_)) => Err(format!("give either \"{stem}\" or \"{b64}\", not both")),
        (Some(Value::String(s)), None) => Ok(Some(s.as_bytes().to_vec())),
        (Some(other), None) => Err(wrong_type(stem, "a string", other)),
        (None, Some(Value::String(s))) => PathText::Base64(s.clone())
            .to_bytes()
            .map(Some)
            .ok_or_else(|| format!("\"{b64}\" is not valid base64")),
        (None, Some(other)) => Err(wrong_type(&b64, "a base64 string", other)),
        (None, None) => Ok(None),
    }
}

/// A string field: `Ok(None)` if absent, `Err` naming it if of another type.
pub fn get_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

/// A non-negative integer field: `Ok(None)` if absent, `Err` naming it if
/// of another type or out of range.
pub fn get_u64(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(other) => Err(wrong_type(field, "a non-negative integer", other)),
    }
}

fn wrong_type(field: &str, want: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("field \"{field}\" must be {want}, not {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct writer prints what the map prints, byte for byte, for
    /// every combination of optional fields, path bytes that are not
    /// UTF-8, control characters and quotes.
    #[test]
    fn an_entry_written_directly_equals_its_json_object() {
        let paths: [&[u8]; 5] = [
            b"/r/a",
            b"/r/new\nline \"q\" \\ \t\x01",
            b"/r/\xff\xfe",
            b"/r/caf\xc3\xa9/\xe2\x80\xa8",
            b"",
        ];
        let kinds = [ObjectKind::File, ObjectKind::Dir, ObjectKind::Unknown];
        let mut n = 0;
        for (i, path) in paths.iter().enumerate() {
            for (j, kind) in kinds.iter().enumerate() {
                for bits in 0u32..16 {
                    let other = paths[(i + j + 1) % paths.len()].to_vec();
                    let change = Change {
                        path: path.to_vec(),
                        kind: *kind,
                        exists: bits & 1 != 0,
                        changes: ChangeKind::ALL
                            .iter()
                            .map(|(k, _)| *k)
                            .filter(|k| !(*k as u32 + bits).is_multiple_of(3))
                            .collect(),
                        renamed_from: (bits & 2 != 0).then(|| other.clone()),
                        renamed_to: (bits & 4 != 0).then(|| other.clone()),
                        subtree: bits & 8 != 0,
                        gap: (bits % 5 == 0).then_some(u64::MAX - bits as u64),
                    };
                    let mut direct = Vec::new();
                    change.write_json(&mut direct);
                    let via_map = Value::Object(change.to_json()).to_string();
                    assert_eq!(String::from_utf8_lossy(&direct), via_map);
                    // Read back both ways: the same entry.
                    let map = Change::from_json(&change.to_json());
                    let fast = Change::from_json_line(&direct);
                    if change.path.is_empty() {
                        assert_eq!(fast, map.ok());
                    } else {
                        assert_eq!(fast, Some(map.unwrap()));
                    }
                    n += 1;
                }
            }
        }
        assert_eq!(n, 5 * 3 * 16);
        // Lines that are not plain entries are left to the map reader.
        for line in [
            &br#"{"cursor":"cj1.x","complete":true,"rescan":[]}"#[..],
            br#"{"error":"no","code":"failed"}"#,
            br#"{"path":5,"changes":[]}"#,
            br#"{"path":"/a","path_b64":"L2E="}"#,
            br#"{"path_b64":"!!"}"#,
            br#"{"kind":"file"}"#,
            b"not json",
        ] {
            assert_eq!(
                Change::from_json_line(line),
                None,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn answers_round_trip_through_their_json_lines() {
        let change = Change {
            path: b"/r/a\n\xff".to_vec(),
            kind: ObjectKind::Dir,
            exists: false,
            changes: vec![ChangeKind::RenamedFrom, ChangeKind::Reconciled],
            renamed_from: None,
            renamed_to: Some(b"/r/b".to_vec()),
            subtree: true,
            gap: Some(9),
        };
        let back = Change::from_json(&change.to_json()).unwrap();
        assert_eq!(back, change);
        let answer = Answer {
            entries: vec![change],
            cursor: "cj1.x".into(),
            complete: false,
            rescan: vec![Rescan {
                path: b"/r".to_vec(),
                reasons: vec![
                    RescanReason::Gap(GapReason::UncleanStop),
                    RescanReason::UnresolvedObject,
                ],
            }],
        };
        let back = Answer::from_final_json(&answer.final_json(), answer.entries.clone()).unwrap();
        assert_eq!(back, answer);
    }

    #[test]
    fn change_kinds_and_rescan_reasons_round_trip_their_wire_names() {
        for (bit, name) in Changes::NAMES {
            let k = ChangeKind::parse(name).unwrap();
            assert_eq!((k.as_str(), k.bit()), (name, bit));
        }
        let all = Changes::NAMES
            .iter()
            .fold(Changes::default(), |a, (b, _)| a | *b);
        assert_eq!(ChangeKind::of(all).count(), 9);
        for text in [
            "daemon_down",
            "queue_overflow",
            "journal_damaged",
            "state_disk_full",
            "unresolved_object",
            "tracking_started",
            "cursor_expired",
            "root_unavailable: unmounted",
            "something_new",
        ] {
            assert_eq!(RescanReason::parse(text).as_str(), text);
        }
        assert_eq!(
            RescanReason::parse("clock_step"),
            RescanReason::Gap(GapReason::ClockStep)
        );
        let list = RescanReason::parse_list("journal_damaged,unclean_stop");
        assert_eq!(list.len(), 2);
        assert_eq!(RescanReason::join(&list), "journal_damaged,unclean_stop");
    }

    #[test]
    fn fields_of_the_wrong_type_are_named() {
        let m: Map<String, Value> =
            serde_json::from_str(r#"{"op":5,"path":5,"wait_ms":"x","n":-1,"since":"c"}"#).unwrap();
        assert!(get_str(&m, "op").unwrap_err().contains("\"op\""));
        assert!(get_path(&m, "path").unwrap_err().contains("\"path\""));
        assert!(get_u64(&m, "wait_ms").unwrap_err().contains("\"wait_ms\""));
        assert!(get_u64(&m, "n").unwrap_err().contains("\"n\""));
        assert_eq!(get_str(&m, "since").unwrap(), Some("c"));
        assert_eq!(get_str(&m, "absent").unwrap(), None);
        let both: Map<String, Value> =
            serde_json::from_str(r#"{"path":"/a","path_b64":"L2E="}"#).unwrap();
        assert!(get_path(&both, "path").is_err());
    }

    #[test]
    fn paths_round_trip_through_json_text() {
        for p in [&b"/a b/c"[..], b"/new\nline", b"/\xff\xfe", b""] {
            let mut m = Map::new();
            put_path(&mut m, "path", p);
            let text = serde_json::to_string(&Value::Object(m)).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                get_path(back.as_object().unwrap(), "path")
                    .unwrap()
                    .unwrap(),
                p
            );
        }
    }
}
