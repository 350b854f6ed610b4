//! Small state files next to the journal: the tracked roots and the
//! clean-stop marker. Both are replaced atomically (write, fsync, rename,
//! fsync directory) and created 0600.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use cj_types::protocol::{get_path, put_path};
use serde_json::{Map, Value};

use crate::error::{io, Error};

pub const ROOTS_FILE: &str = "roots.json";
pub const CLEAN_STOP_FILE: &str = "clean-stop";
/// The kernel boot id the daemon last ran under (32 hex digits).
pub const BOOT_ID_FILE: &str = "boot-id";
/// No more roots than this may be tracked (each costs a prefix check per event).
pub const ROOTS_MAX: usize = 64;

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    cj_types::fsutil::write_atomic(path, bytes).map_err(|e| io(&e.path, e.op)(e.source))
}

pub fn load_roots(state_dir: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let path = state_dir.join(ROOTS_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path, "read")(e)),
    };
    let bad = |detail: String| Error::BadState {
        path: path.clone(),
        detail,
    };
    let v: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let roots = v
        .get("roots")
        .and_then(|r| r.as_array())
        .ok_or_else(|| bad("no \"roots\" array".into()))?;
    let mut out = Vec::new();
    for r in roots.iter().take(ROOTS_MAX) {
        let obj = r
            .as_object()
            .ok_or_else(|| bad("root is not an object".into()))?;
        match get_path(obj, "path").map_err(bad)? {
            Some(p) => out.push(p),
            None => return Err(bad("root without path".into())),
        }
    }
    Ok(out)
}

pub fn save_roots(state_dir: &Path, roots: &[Vec<u8>]) -> Result<(), Error> {
    let list: Vec<Value> = roots
        .iter()
        .map(|p| {
            let mut m = Map::new();
            put_path(&mut m, "path", p);
            Value::Object(m)
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("version".into(), Value::from(1));
    doc.insert("roots".into(), Value::Array(list));
    let mut text = serde_json::to_vec_pretty(&Value::Object(doc)).expect("json");
    text.push(b'\n');
    write_atomic(&state_dir.join(ROOTS_FILE), &text)
}

/// What a clean shutdown left behind (`clean-stop`, design 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanStop {
    /// The last durable seq.
    pub last_seq: u64,
    /// The stop ended quiescent (`Capture::quiesce`): every stat in the
    /// journal predates the stop.
    pub quiescent: bool,
}

/// Flag bit of the clean-stop file's flags field.
const CLEAN_STOP_QUIESCENT: u32 = 1;

/// Written after the last commit of a clean shutdown. Its absence (or a
/// different seq) at start means the stop was unclean.
///
/// 16 bytes: last seq u64, flags u32, crc32c of the first 12 bytes u32. The
/// 12-byte form of format 1 (last seq, crc32c) is still read (not quiescent).
pub fn write_clean_stop(state_dir: &Path, stop: CleanStop) -> Result<(), Error> {
    let mut b = stop.last_seq.to_le_bytes().to_vec();
    let flags = if stop.quiescent {
        CLEAN_STOP_QUIESCENT
    } else {
        0
    };
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&crc32c_of(&b).to_le_bytes());
    write_atomic(&state_dir.join(CLEAN_STOP_FILE), &b)
}

/// Reads the clean-stop marker without removing it (its seq bounds where
/// the journal's numbering may continue, so it is read before the journal
/// is opened).
pub fn peek_clean_stop(state_dir: &Path) -> Option<CleanStop> {
    parse_clean_stop(&fs::read(state_dir.join(CLEAN_STOP_FILE)).ok()?)
}

/// Reads and removes the clean-stop marker (durably, before anything new is
/// journaled, so a later crash is not mistaken for a clean stop). A marker
/// that does not check out counts as none (an unclean stop: conservative).
pub fn take_clean_stop(state_dir: &Path) -> Result<Option<CleanStop>, Error> {
    let path: PathBuf = state_dir.join(CLEAN_STOP_FILE);
    let b = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path, "read")(e)),
    };
    fs::remove_file(&path).map_err(io(&path, "remove"))?;
    File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(state_dir, "fsync directory"))?;
    Ok(parse_clean_stop(&b))
}

fn parse_clean_stop(b: &[u8]) -> Option<CleanStop> {
    let u32_at = |at: usize| cj_types::bytes::le_u32(b, at).unwrap_or(0);
    let body = match b.len() {
        12 | 16 => &b[..b.len() - 4],
        _ => return None,
    };
    if u32_at(b.len() - 4) != crc32c_of(body) {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    let flags = if b.len() == 16 { u32_at(8) } else { 0 };
    Some(CleanStop {
        last_seq: u64::from_le_bytes(s),
        quiescent: flags & CLEAN_STOP_QUIESCENT != 0,
    })
}

/// Records `now` as the boot the daemon runs under and returns whether the
/// previous run was under another boot (`false` when unknown).
pub fn swap_boot_id(state_dir: &Path, now: &[u8; 16]) -> Result<bool, Error> {
    let path = state_dir.join(BOOT_ID_FILE);
    let hex: String = now.iter().map(|b| format!("{b:02x}")).collect();
    let before = match fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&path, "read")(e)),
    };
    let changed = before
        .as_deref()
        .is_some_and(|b| b.trim_ascii() != hex.as_bytes());
    if before.as_deref().map(|b| b.trim_ascii()) != Some(hex.as_bytes()) {
        write_atomic(&path, format!("{hex}\n").as_bytes())?;
    }
    Ok(changed && *now != [0; 16])
}

fn crc32c_of(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_round_trip_with_odd_bytes() {
        let d = tempfile::tempdir().unwrap();
        let roots = vec![b"/a".to_vec(), b"/b\n\xff".to_vec()];
        save_roots(d.path(), &roots).unwrap();
        assert_eq!(load_roots(d.path()).unwrap(), roots);
    }

    #[test]
    fn clean_stop_marker_is_taken_once_and_reads_the_old_form() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(take_clean_stop(d.path()).unwrap(), None);
        for quiescent in [false, true] {
            let stop = CleanStop {
                last_seq: 42,
                quiescent,
            };
            write_clean_stop(d.path(), stop).unwrap();
            assert_eq!(take_clean_stop(d.path()).unwrap(), Some(stop));
            assert_eq!(take_clean_stop(d.path()).unwrap(), None);
        }
        let mut old = 7u64.to_le_bytes().to_vec();
        old.extend_from_slice(&crc32c_of(&old).to_le_bytes());
        let want = CleanStop {
            last_seq: 7,
            quiescent: false,
        };
        assert_eq!(parse_clean_stop(&old), Some(want));
        let mut bad = old.clone();
        bad[0] ^= 1;
        assert_eq!(parse_clean_stop(&bad), None);
        assert_eq!(parse_clean_stop(&old[..11]), None);
    }

    #[test]
    fn crc_matches_known_vector() {
        assert_eq!(crc32c_of(b"123456789"), 0xe306_9283);
    }
}
