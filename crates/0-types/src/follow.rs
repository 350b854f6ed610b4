//! The lines of a `follow` stream (`docs/protocol.md`, "follow"): one JSON
//! object per line, each carrying the cursor to resume after it.
//!
//! The daemon writes change lines with [`write_change`], which builds the
//! line directly in the output buffer (a follower reading a backlog gets
//! about a million of them a second); every other line and every reader go
//! through [`FollowLine`].

use std::borrow::Cow;
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

/// A line as read from the wire: a follow line (`None` for a kind this
/// version does not know) with the cursor it carries, or a daemon error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Line {
        line: Option<FollowLine>,
        cursor: Option<String>,
    },
    Error {
        code: String,
        message: String,
    },
}

/// One line's fields, read without building a map (a client reading a
/// backlog decodes several hundred thousand lines a second this way).
#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path_b64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    changes: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    renamed_from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    renamed_from_b64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    renamed_to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    renamed_to_b64: Option<Cow<'a, str>>,
    #[serde(default)]
    subtree: bool,
    gap: Option<u64>,
    seq: Option<u64>,
    #[serde(borrow)]
    cursor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rescan: Option<Vec<WireScope<'a>>>,
    #[serde(borrow)]
    resolved: Option<Vec<WireScope<'a>>>,
    through: Option<u64>,
    #[serde(default)]
    history_done: bool,
    #[serde(default)]
    heartbeat: bool,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct WireScope<'a> {
    #[serde(borrow)]
    path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path_b64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
}

/// `F` or `F_b64` of a line (both: an error).
fn wire_path(
    text: &Option<Cow<'_, str>>,
    b64: &Option<Cow<'_, str>>,
) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(_), Some(_)) => Err("a path is given both as text and as base64".into()),
        (Some(t), None) => Ok(Some(t.as_bytes().to_vec())),
        (None, Some(b)) => PathText::Base64(b.to_string())
            .to_bytes()
            .map(Some)
            .ok_or_else(|| "a _b64 path is not valid base64".to_string()),
        (None, None) => Ok(None),
    }
}

/// Decodes one line of a follow stream (without or with its newline).
pub fn decode(line: &[u8]) -> Result<Decoded, String> {
    let w: Wire<'_> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if let Some(message) = w.error {
        return Ok(Decoded::Error {
            code: w.code.map(Cow::into_owned).unwrap_or_default(),
            message: message.into_owned(),
        });
    }
    let cursor = w.cursor.map(Cow::into_owned);
    let Some(c) = cursor.clone() else {
        return Err("follow line without a cursor".into());
    };
    let scopes = |list: Vec<WireScope<'_>>| -> Result<Vec<Rescan>, String> {
        list.into_iter()
            .map(|s| {
                Ok(Rescan {
                    path: wire_path(&s.path, &s.path_b64)?.ok_or("a scope without path")?,
                    reasons: RescanReason::parse_list(s.reason.as_deref().unwrap_or("")),
                })
            })
            .collect()
    };
    let line = if let Some(path) = wire_path(&w.path, &w.path_b64)? {
        Some(FollowLine::Change {
            change: Change {
                path,
                kind: ObjectKind::parse(w.kind.as_deref().unwrap_or("")),
                exists: false,
                changes: w
                    .changes
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|k| ChangeKind::parse(k))
                    .collect(),
                renamed_from: wire_path(&w.renamed_from, &w.renamed_from_b64)?,
                renamed_to: wire_path(&w.renamed_to, &w.renamed_to_b64)?,
                subtree: w.subtree,
                gap: w.gap,
            },
            seq: w.seq.ok_or("change line without a seq")?,
            cursor: c,
        })
    } else if let Some(list) = w.rescan {
        Some(FollowLine::Rescan {
            scopes: scopes(list)?,
            cursor: c,
        })
    } else if let Some(list) = w.resolved {
        Some(FollowLine::Resolved {
            scopes: scopes(list)?.into_iter().map(|r| r.path).collect(),
            through: w.through.unwrap_or(0),
            cursor: c,
        })
    } else if w.history_done {
        Some(FollowLine::HistoryDone { cursor: c })
    } else if w.heartbeat {
        Some(FollowLine::Heartbeat { cursor: c })
    } else {
        None
    };
    Ok(Decoded::Line { line, cursor })
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
            assert_eq!(FollowLine::from_json(&m).unwrap(), Some(typed.clone()));
            assert_eq!(
                decode(&out).unwrap(),
                Decoded::Line {
                    line: Some(typed),
                    cursor: Some("cj1.c".into())
                }
            );
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
            let Decoded::Line { line, .. } = decode(&text).unwrap() else {
                panic!("not a line")
            };
            assert_eq!(line.as_ref(), Some(&l));
            assert_eq!(back.unwrap().cursor(), l.cursor());
        }
        let unknown = parse(br#"{"something_new":1,"cursor":"c"}"#);
        assert_eq!(FollowLine::from_json(&unknown).unwrap(), None);
        assert_eq!(
            decode(br#"{"something_new":1,"cursor":"c"}"#).unwrap(),
            Decoded::Line {
                line: None,
                cursor: Some("c".into())
            }
        );
        assert_eq!(
            decode(br#"{"error":"gone","code":"slow_consumer"}"#).unwrap(),
            Decoded::Error {
                code: "slow_consumer".into(),
                message: "gone".into()
            }
        );
        assert!(decode(br#"{"path":"/a","path_b64":"L2E=","seq":1,"cursor":"c"}"#).is_err());
        assert!(FollowLine::from_json(&parse(br#"{"heartbeat":true}"#)).is_err());
    }
}
