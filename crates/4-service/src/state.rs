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

/// Written after the last commit of a clean shutdown: the last durable seq.
/// Its absence (or a different seq) at start means the stop was unclean.
pub fn write_clean_stop(state_dir: &Path, last_seq: u64) -> Result<(), Error> {
    let mut b = last_seq.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c_of(&b).to_le_bytes());
    write_atomic(&state_dir.join(CLEAN_STOP_FILE), &b)
}

/// Reads and removes the clean-stop marker (durably, before anything new is
/// journaled, so a later crash is not mistaken for a clean stop).
pub fn take_clean_stop(state_dir: &Path) -> Result<Option<u64>, Error> {
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
    if b.len() != 12 || u32::from_le_bytes([b[8], b[9], b[10], b[11]]) != crc32c_of(&b[..8]) {
        return Ok(None);
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[..8]);
    Ok(Some(u64::from_le_bytes(s)))
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
    fn clean_stop_marker_is_taken_once() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(take_clean_stop(d.path()).unwrap(), None);
        write_clean_stop(d.path(), 42).unwrap();
        assert_eq!(take_clean_stop(d.path()).unwrap(), Some(42));
        assert_eq!(take_clean_stop(d.path()).unwrap(), None);
    }

    #[test]
    fn crc_matches_known_vector() {
        assert_eq!(crc32c_of(b"123456789"), 0xe306_9283);
    }
}
