//! The lines of a `follow` stream (`docs/protocol.md`, "follow"): one JSON
//! object per line, each carrying the cursor to resume after it.
//!
//! The daemon writes change lines with [`write_change`], which builds the
//! line directly in the output buffer (a follower reading a backlog gets
//! about a million of them a second); every other line and every reader go
//! through [`FollowLine`].

use std::io::Write;

use serde_json::{Map, Value};

use crate::protocol::{get_path, put_path, Change, ChangeKind, Rescan, RescanReason};
use crate::{Changes, ObjectKind, PathText};

/// One line of a follow stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FollowLine {
    /// One journal record in scope. `change.exists` is not sent (always
    /// false here): the record says what happened, not what is there now.
    Change {
        change: Change,
        seq: u64,
        cursor: String,
    },
    /// History is broken for these scopes (overflow, downtime, a damaged
    /// range, an unusable cursor ...): rescan each recursively, or wait for
    /// a `Resolved` line covering it. Records found by reconciliation
    /// follow as ordinary changes.
    Rescan { scopes: Vec<Rescan>, cursor: String },
    /// Reconciliation has journaled every change hidden by the gaps
    /// reported so far under these scopes (up to the gap seq `through`):
    /// the changes lines since then cover them.
    Resolved {
        scopes: Vec<Vec<u8>>,
        through: u64,
        cursor: String,
    },
    /// The replay from the starting cursor has reached the present; what
    /// follows is live.
    HistoryDone { cursor: String },
    /// Nothing in scope happened lately; the position moved on to `cursor`.
    Heartbeat { cursor: String },
}

impl FollowLine {
    /// The cursor to resume after this line.
    pub fn cursor(&self) -> &str {
        match self {
            FollowLine::Change { cursor, .. }
            | FollowLine::Rescan { cursor, .. }
            | FollowLine::Resolved { cursor, .. }
            | FollowLine::HistoryDone { cursor }
            | FollowLine::Heartbeat { cursor } => cursor,
        }
    }

    /// The line's object.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        match self {
            FollowLine::Change {
                change,
                seq,
                cursor: _,
            } => {
                m = change.to_json();
                m.remove("exists");
                m.insert("seq".into(), Value::from(*seq));
            }
            FollowLine::Rescan { scopes, .. } => {
                m.insert("rescan".into(), rescan_json(scopes));
            }
            FollowLine::Resolved {
                scopes, through, ..
            } => {
                let list = scopes.iter().map(|p| {
                    let mut o = Map::new();
                    put_path(&mut o, "path", p);
                    Value::Object(o)
                });
                m.insert("resolved".into(), Value::Array(list.collect()));
                m.insert("through".into(), Value::from(*through));
            }
            FollowLine::HistoryDone { .. } => {
                m.insert("history_done".into(), Value::from(true));
            }
            FollowLine::Heartbeat { .. } => {
                m.insert("heartbeat".into(), Value::from(true));
            }
        }
        m.insert("cursor".into(), Value::from(self.cursor()));
        m
    }

    /// Reads a line's object. `Ok(None)` for a kind of line this version
    /// does not know (a newer daemon may add some: skip them, but keep
    /// their cursor if you track one).
    pub fn from_json(m: &Map<String, Value>) -> Result<Option<FollowLine>, String> {
        let cursor = m
            .get("cursor")
            .and_then(Value::as_str)
            .ok_or("follow line without a cursor")?
            .to_string();
        if m.contains_key("path") || m.contains_key("path_b64") {
            let seq = m
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or("change line without a seq")?;
            return Ok(Some(FollowLine::Change {
                change: Change::from_json(m)?,
                seq,
                cursor,
            }));
        }
        if let Some(list) = m.get("rescan") {
            let mut scopes = Vec::new();
            for r in list.as_array().ok_or("\"rescan\" is not an array")? {
                let obj = r.as_object().ok_or("a rescan scope is not an object")?;
                scopes.push(Rescan {
                    path: get_path(obj, "path")?.ok_or("rescan scope without path")?,
                    reasons: RescanReason::parse_list(
                        obj.get("reason").and_then(Value::as_str).unwrap_or(""),
                    ),
                });
            }
            return Ok(Some(FollowLine::Rescan { scopes, cursor }));
        }
        if let Some(list) = m.get("resolved") {
            let mut scopes = Vec::new();
            for r in list.as_array().ok_or("\"resolved\" is not an array")? {
                let obj = r.as_object().ok_or("a resolved scope is not an object")?;
                scopes.push(get_path(obj, "path")?.ok_or("resolved scope without path")?);
            }
            let through = m.get("through").and_then(Value::as_u64).unwrap_or(0);
            return Ok(Some(FollowLine::Resolved {
                scopes,
                through,
                cursor,
            }));
        }
        if m.get("history_done").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(FollowLine::HistoryDone { cursor }));
        }
        if m.get("heartbeat").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(FollowLine::Heartbeat { cursor }));
        }
        Ok(None)
    }
}

/// The `rescan` array of scopes, as in a `changes` answer's final line.
pub fn rescan_json(scopes: &[Rescan]) -> Value {
    Value::Array(
        scopes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                put_path(&mut o, "path", &r.path);
                o.insert("reason".into(), Value::from(RescanReason::join(&r.reasons)));
                Value::Object(o)
            })
            .collect(),
    )
}

/// One change line as the daemon sends it, written straight into `out`
/// (with its newline). Equal to `FollowLine::Change{..}.to_json()` as
/// text; see the test below.
#[allow(clippy::too_many_arguments)]
pub fn write_change(
    out: &mut Vec<u8>,
    path: &[u8],
    kind: ObjectKind,
    changes: Changes,
    renamed_from: Option<&[u8]>,
    renamed_to: Option<&[u8]>,
    subtree: bool,
    gap: Option<u64>,
    seq: u64,
    cursor: &str,
) {
    out.push(b'{');
    write_path(out, "path", path);
    let _ = write!(out, ",\"kind\":\"{}\",\"changes\":[", kind.as_str());
    for (i, k) in ChangeKind::of(changes).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "\"{}\"", k.as_str());
    }
    out.push(b']');
    if let Some(f) = renamed_from.filter(|f| !f.is_empty()) {
        out.push(b',');
        write_path(out, "renamed_from", f);
    }
    if let Some(t) = renamed_to {
        out.push(b',');
        write_path(out, "renamed_to", t);
    }
    if subtree {
        out.extend_from_slice(b",\"subtree\":true");
    }
    if let Some(g) = gap {
        let _ = write!(out, ",\"gap\":{g}");
    }
    let _ = writeln!(out, ",\"seq\":{seq},\"cursor\":\"{cursor}\"}}");
}

/// `"stem":"text"` or `"stem_b64":"base64"`.
fn write_path(out: &mut Vec<u8>, stem: &str, path: &[u8]) {
    match std::str::from_utf8(path) {
        Ok(s) => {
            let _ = write!(out, "\"{stem}\":");
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Err(_) => {
            let t = PathText::from_bytes(path);
            let _ = write!(out, "\"{stem}_b64\":\"{}\"", t.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Map<String, Value> {
        match serde_json::from_slice(line).unwrap() {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn the_fast_change_writer_equals_the_typed_line() {
        type Case<'a> = (
            &'a [u8],
            Option<&'a [u8]>,
            Option<&'a [u8]>,
            bool,
            Option<u64>,
        );
        let cases: [Case; 4] = [
            (b"/r/a \"q\"\n\t\\", None, None, false, None),
            (b"/r/\xff\xfe", Some(b"/r/old\x01"), None, true, Some(7)),
            (b"/r/gone", None, Some(b"/r/\xc3"), false, None),
            (b"/r/x", Some(b""), None, false, None),
        ];
        for (path, from, to, subtree, gap) in cases {
            let changes = Changes::CREATED | Changes::RENAMED_TO | Changes::RECONCILED;
            let mut out = Vec::new();
            write_change(
                &mut out,
                path,
                ObjectKind::Dir,
                changes,
                from,
                to,
                subtree,
                gap,
                42,
                "cj1.c",
            );
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            let typed = FollowLine::Change {
                change: Change {
                    path: path.to_vec(),
                    kind: ObjectKind::Dir,
                    exists: false,
                    changes: ChangeKind::of(changes).collect(),
                    renamed_from: from.filter(|f| !f.is_empty()).map(<[u8]>::to_vec),
                    renamed_to: to.map(<[u8]>::to_vec),
                    subtree,
                    gap,
                },
                seq: 42,
                cursor: "cj1.c".into(),
            };
            let m = parse(&out);
            assert_eq!(m, typed.to_json());
            assert_eq!(FollowLine::from_json(&m).unwrap(), Some(typed));
        }
    }

    #[test]
    fn every_line_kind_round_trips() {
        let lines = [
            FollowLine::Rescan {
                scopes: vec![Rescan {
                    path: b"/r/\xff".to_vec(),
                    reasons: vec![RescanReason::CursorExpired],
                }],
                cursor: "c1".into(),
            },
            FollowLine::Resolved {
                scopes: vec![b"/r".to_vec()],
                through: 9,
                cursor: "c2".into(),
            },
            FollowLine::HistoryDone {
                cursor: "c3".into(),
            },
            FollowLine::Heartbeat {
                cursor: "c4".into(),
            },
        ];
        for l in lines {
            let text = serde_json::to_vec(&Value::Object(l.to_json())).unwrap();
            let back = FollowLine::from_json(&parse(&text)).unwrap();
            assert_eq!(back.as_ref(), Some(&l));
            assert_eq!(back.unwrap().cursor(), l.cursor());
        }
        let unknown = parse(br#"{"something_new":1,"cursor":"c"}"#);
        assert_eq!(FollowLine::from_json(&unknown).unwrap(), None);
        assert!(FollowLine::from_json(&parse(br#"{"heartbeat":true}"#)).is_err());
    }
}
