//! Named durable consumers (issue 11): a place in the journal that
//! survives restarts and holds back retention.
//!
//! Each consumer has a name, an optional scope (a path) and the cursor it
//! acknowledged last. Retention keeps every record after the lowest
//! acknowledged seq of the consumers in use, up to the journal's
//! `pinned_cap_bytes`; past the cap the oldest records go anyway, and the
//! consumer's next answer says `cursor_expired` for its scope. A consumer
//! not used (no ack, follow or changes) for longer than the idle policy
//! stops pinning; it stays listed, marked `idle`.
//!
//! Stored in `<state>/consumers.json`, replaced atomically on every change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cj_types::protocol::{get_path, put_path};
use cj_types::{Cursor, JournalId};
use serde_json::{json, Map, Value};

use crate::error::{io, Error};

/// Consumers a daemon keeps.
pub const CONSUMERS_MAX: usize = 256;
/// Longest consumer name.
pub const NAME_BYTES_MAX: usize = 64;
/// How often use (follow, changes) is written down when nothing else
/// changes, for the idle policy.
const SEEN_SAVE_INTERVAL_NS: u64 = 3600 * 1_000_000_000;
const FILE: &str = "consumers.json";
/// Longest note a consumer may leave (longer ones are cut).
pub const NOTE_BYTES_MAX: usize = 256;
const FORMAT_VERSION: u64 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    /// Only changes at or below this path.
    pub scope: Option<Vec<u8>>,
    /// The cursor acknowledged last (where the consumer resumes).
    pub cursor: Cursor,
    pub created_ns: u64,
    /// Last ack, follow or changes (wall clock).
    pub seen_ns: u64,
    /// The uid that added it: only that user (and root) may use it.
    pub owner: u32,
}

/// Why a consumer operation was refused.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    BadName(String),
    Exists(String),
    Unknown(String),
    TooMany,
    Save(String),
}

impl Refusal {
    /// The protocol's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadName(_) => "bad_request",
            Refusal::Exists(_) => "consumer_exists",
            Refusal::Unknown(_) => "unknown_consumer",
            Refusal::TooMany => "busy",
            Refusal::Save(_) => "failed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadName(n) => write!(
                f,
                "bad consumer name {n:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
            ),
            Refusal::Exists(n) => write!(
                f,
                "consumer {n:?} exists already (`cj consumer list`; remove it first to start over)"
            ),
            Refusal::Unknown(n) => write!(
                f,
                "no consumer named {n:?}; add it with `cj consumer add {n} [PATH]` (`cj consumer list` shows them)"
            ),
            Refusal::TooMany => write!(
                f,
                "too many consumers ({CONSUMERS_MAX}); remove unused ones with `cj consumer remove NAME`"
            ),
            Refusal::Save(e) => write!(f, "cannot save the consumers: {e}"),
        }
    }
}

/// `by`: the uid asking (`None`: root, who may use every consumer).
/// Another user's consumer is as unknown as one that does not exist.
fn owned(c: &Consumer, by: Option<u32>) -> bool {
    by.is_none_or(|uid| c.owner == uid)
}

pub fn check_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadName(
            name.chars().take(NAME_BYTES_MAX + 8).collect(),
        ))
    }
}

pub struct Consumers {
    file: PathBuf,
    list: Mutex<Vec<Consumer>>,
    idle_expire: Mutex<Option<Duration>>,
    /// What each consumer last said about itself (`consumer_ack` with a
    /// note): in memory only, at most one per consumer.
    notes: Mutex<HashMap<String, Note>>,
}

/// A consumer's word about its own state, e.g. an exporter whose sink is
/// down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    /// When this text was first given (repeating it keeps the time).
    pub since_ns: u64,
}

impl Consumers {
    /// Reads `<state_dir>/consumers.json` (none yet: no consumers).
    pub fn load(state_dir: &Path, idle_expire: Option<Duration>) -> Result<Consumers, Error> {
        let file = state_dir.join(FILE);
        let list = match std::fs::read(&file) {
            Ok(bytes) => decode(&bytes).map_err(|detail| Error::BadState {
                path: file.clone(),
                detail: format!(
                    "{detail} (removing it forgets every durable consumer and what they pin)"
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&file, "read")(e)),
        };
        Ok(Consumers {
            file,
            list: Mutex::new(list),
            idle_expire: Mutex::new(idle_expire),
            notes: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Consumer>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, list: &[Consumer]) -> Result<(), Refusal> {
        cj_types::fsutil::write_atomic(&self.file, &encode(list))
            .map_err(|e| Refusal::Save(format!("{} {}: {}", e.op, e.path.display(), e.source)))
    }

    /// Changes the list under its lock; saved before anyone sees it.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut Vec<Consumer>) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let mut list = self.lock();
        let mut next = list.clone();
        let out = f(&mut next)?;
        self.save(&next)?;
        *list = next;
        Ok(out)
    }

    pub fn add(
        &self,
        name: &str,
        scope: Option<Vec<u8>>,
        at: Cursor,
        owner: u32,
    ) -> Result<(), Refusal> {
        check_name(name)?;
        let now = cj_types::sys::now_ns();
        self.update(|list| {
            if list.iter().any(|c| c.name == name) {
                return Err(Refusal::Exists(name.into()));
            }
            if list.len() >= CONSUMERS_MAX {
                return Err(Refusal::TooMany);
            }
            list.push(Consumer {
                name: name.into(),
                scope,
                cursor: at,
                created_ns: now,
                seen_ns: now,
                owner,
            });
            Ok(())
        })
    }

    pub fn remove(&self, name: &str, by: Option<u32>) -> Result<(), Refusal> {
        self.update(|list| {
            let before = list.len();
            list.retain(|c| !(c.name == name && owned(c, by)));
            if list.len() == before {
                return Err(Refusal::Unknown(name.into()));
            }
            let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
            notes.remove(name);
            Ok(())
        })
    }

    /// Moves the consumer's place to `cursor` (durably).
    pub fn ack(&self, name: &str, cursor: Cursor, by: Option<u32>) -> Result<(), Refusal> {
        let now = cj_types::sys::now_ns();
        self.update(|list| {
            let c = list
                .iter_mut()
                .find(|c| c.name == name && owned(c, by))
                .ok_or_else(|| Refusal::Unknown(name.into()))?;
            c.cursor = cursor;
            c.seen_ns = now;
            Ok(())
        })
    }

    /// Sets (or with `""` clears) the consumer's note.
    pub fn set_note(&self, name: &str, text: &str, by: Option<u32>) -> Result<(), Refusal> {
        if !self.lock().iter().any(|c| c.name == name && owned(c, by)) {
            return Err(Refusal::Unknown(name.into()));
        }
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if text.is_empty() {
            notes.remove(name);
            return Ok(());
        }
        let mut end = text.len().min(NOTE_BYTES_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text: String = text[..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if notes.get(name).is_none_or(|n| n.text != text) {
            let since_ns = cj_types::sys::now_ns();
            notes.insert(name.into(), Note { text, since_ns });
        }
        Ok(())
    }

    pub fn note(&self, name: &str) -> Option<Note> {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.get(name).cloned()
    }

    /// The consumer, marked as used now.
    pub fn use_(&self, name: &str, by: Option<u32>) -> Result<Consumer, Refusal> {
        let now = cj_types::sys::now_ns();
        let stale = {
            let mut list = self.lock();
            let c = list
                .iter_mut()
                .find(|c| c.name == name && owned(c, by))
                .ok_or_else(|| Refusal::Unknown(name.into()))?;
            let stale = now.saturating_sub(c.seen_ns) > SEEN_SAVE_INTERVAL_NS;
            c.seen_ns = now;
            (stale, c.clone())
        };
        if stale.0 {
            // Best effort: only the idle policy reads it.
            let list = self.lock().clone();
            let _ = self.save(&list);
        }
        Ok(stale.1)
    }

    pub fn list(&self) -> Vec<Consumer> {
        self.lock().clone()
    }

    /// Not used for longer than the idle policy allows: pins nothing.
    /// Changes the idle policy (a configuration reload).
    pub fn set_idle_expire(&self, d: Option<Duration>) {
        *self.idle_expire.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    pub fn idle(&self, c: &Consumer, now_ns: u64) -> bool {
        let d = *self.idle_expire.lock().unwrap_or_else(|e| e.into_inner());
        d.is_some_and(|d| {
            now_ns.saturating_sub(c.seen_ns) > u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// The lowest acknowledged seq of this journal's consumers in use:
    /// retention keeps every record after it (while it can).
    pub fn pin(&self, journal: JournalId, now_ns: u64) -> Option<u64> {
        self.lock()
            .iter()
            .filter(|c| c.cursor.journal_id == journal && !self.idle(c, now_ns))
            .map(|c| c.cursor.seq)
            .min()
    }
}

fn encode(list: &[Consumer]) -> Vec<u8> {
    let items: Vec<Value> = list
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("name".into(), Value::from(c.name.clone()));
            if let Some(s) = &c.scope {
                put_path(&mut m, "path", s);
            }
            m.insert("cursor".into(), Value::from(c.cursor.encode()));
            m.insert("created_ns".into(), Value::from(c.created_ns));
            m.insert("seen_ns".into(), Value::from(c.seen_ns));
            m.insert("owner".into(), Value::from(c.owner));
            Value::Object(m)
        })
        .collect();
    let mut out =
        serde_json::to_vec_pretty(&json!({"version": FORMAT_VERSION, "consumers": items}))
            .unwrap_or_default();
    out.push(b'\n');
    out
}

fn decode(bytes: &[u8]) -> Result<Vec<Consumer>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if v["version"].as_u64() != Some(FORMAT_VERSION) {
        return Err(format!(
            "version {} is not {FORMAT_VERSION} (written by another cj version?)",
            v["version"]
        ));
    }
    let mut out = Vec::new();
    for item in v["consumers"].as_array().ok_or("no \"consumers\" list")? {
        let m = item.as_object().ok_or("a consumer is not an object")?;
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a consumer has no name")?
            .to_string();
        check_name(&name).map_err(|e| e.to_string())?;
        let cursor = m
            .get("cursor")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("consumer {name:?} has no cursor"))?;
        out.push(Consumer {
            cursor: Cursor::parse(cursor).map_err(|e| format!("consumer {name:?}: {e}"))?,
            scope: get_path(m, "path")?,
            created_ns: m.get("created_ns").and_then(Value::as_u64).unwrap_or(0),
            seen_ns: m.get("seen_ns").and_then(Value::as_u64).unwrap_or(0),
            owner: m
                .get("owner")
                .and_then(Value::as_u64)
                .and_then(|o| u32::try_from(o).ok())
                .unwrap_or(0),
            name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(seq: u64) -> Cursor {
        Cursor {
            journal_id: JournalId([7; 16]),
            seq,
        }
    }

    #[test]
    fn consumers_survive_a_reload_and_pin_the_lowest_acknowledged_seq() {
        let dir = tempfile::tempdir().unwrap();
        let c = Consumers::load(dir.path(), None).unwrap();
        c.add("backup", Some(b"/srv/\xff".to_vec()), cursor(5), 0)
            .unwrap();
        c.add("index", None, cursor(9), 1000).unwrap();
        // Another user's consumer is unknown to a user; root sees it.
        assert_eq!(
            c.use_("index", Some(1001)).err(),
            Some(Refusal::Unknown("index".into()))
        );
        assert!(c.use_("index", Some(1000)).is_ok() && c.use_("index", None).is_ok());
        assert_eq!(
            c.add("index", None, cursor(1), 0),
            Err(Refusal::Exists("index".into()))
        );
        assert!(matches!(
            c.add("a/b", None, cursor(1), 0),
            Err(Refusal::BadName(_))
        ));
        assert_eq!(c.pin(JournalId([7; 16]), 0), Some(5));
        c.ack("backup", cursor(12), None).unwrap();
        assert_eq!(c.pin(JournalId([7; 16]), 0), Some(9));
        // Another journal's cursors pin nothing in this one.
        assert_eq!(c.pin(JournalId([8; 16]), 0), None);
        let again = Consumers::load(dir.path(), None).unwrap();
        assert_eq!(again.list(), c.list());
        again.remove("index", None).unwrap();
        assert_eq!(
            again.remove("index", None),
            Err(Refusal::Unknown("index".into()))
        );
        assert_eq!(again.pin(JournalId([7; 16]), 0), Some(12));
    }

    #[test]
    fn an_idle_consumer_stops_pinning_until_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let c = Consumers::load(dir.path(), Some(Duration::from_secs(60))).unwrap();
        c.add("old", None, cursor(3), 0).unwrap();
        let later = cj_types::sys::now_ns() + 120 * 1_000_000_000;
        assert_eq!(c.pin(JournalId([7; 16]), later), None);
        assert!(c.idle(&c.list()[0], later));
        c.use_("old", None).unwrap();
        assert_eq!(c.pin(JournalId([7; 16]), cj_types::sys::now_ns()), Some(3));
    }

    #[test]
    fn a_damaged_file_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"version\":1,\"consumers\":[{}]}").unwrap();
        let e = Consumers::load(dir.path(), None).err().unwrap().to_string();
        assert!(
            e.contains("consumers.json") && e.contains("removing it"),
            "{e}"
        );
    }

    #[test]
    fn a_note_is_bounded_printable_kept_in_memory_and_owned() {
        let dir = tempfile::tempdir().unwrap();
        let c = Consumers::load(dir.path(), None).unwrap();
        c.add("exp", None, cursor(1), 1000).unwrap();
        assert_eq!(
            c.set_note("nope", "x", None),
            Err(Refusal::Unknown("nope".into()))
        );
        assert_eq!(
            c.set_note("exp", "x", Some(1001)),
            Err(Refusal::Unknown("exp".into()))
        );
        let long = format!("down\n\u{1b}[2J{}", "é".repeat(400));
        c.set_note("exp", &long, Some(1000)).unwrap();
        let n = c.note("exp").unwrap();
        assert!(
            n.text.len() <= NOTE_BYTES_MAX && n.text.starts_with("down  [2J"),
            "{n:?}"
        );
        // The same text again keeps its time; "" clears it.
        c.set_note("exp", &long, None).unwrap();
        assert_eq!(c.note("exp").unwrap().since_ns, n.since_ns);
        c.set_note("exp", "", None).unwrap();
        assert_eq!(c.note("exp"), None);
        // Not saved: a reload has no note.
        c.set_note("exp", "down", None).unwrap();
        let again = Consumers::load(dir.path(), None).unwrap();
        assert_eq!(again.note("exp"), None);
        // Removing the consumer drops its note.
        c.remove("exp", None).unwrap();
        assert_eq!(c.note("exp"), None);
    }
}
