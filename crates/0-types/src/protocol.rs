//! The wire protocol between the daemon and its clients: one JSON object per
//! line over a Unix stream socket. `docs/protocol.md` is the reference.
//!
//! Paths are bytes: every path field `F` is sent as `F` (a JSON string) when
//! the bytes are valid UTF-8, and as `F_b64` (standard base64) otherwise.

use serde_json::{Map, Value};

use crate::PathText;

/// Protocol revision, sent in `status` and checked by clients.
pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused.
pub const REQUEST_BYTES_MAX: usize = 256 * 1024;

/// Exit status / answer completeness classes, shared by daemon and CLI.
pub const EXIT_COMPLETE: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INCOMPLETE: i32 = 3;

/// Inserts a byte path under `stem` (or `stem_b64`).
pub fn put_path(obj: &mut Map<String, Value>, stem: &str, bytes: &[u8]) {
    let t = PathText::from_bytes(bytes);
    obj.insert(t.key(stem), Value::String(t.value().to_owned()));
}

/// Reads a byte path from `stem` or `stem_b64`. `Ok(None)` if absent,
/// `Err` if `stem_b64` is not valid base64.
pub fn get_path(obj: &Map<String, Value>, stem: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(Value::String(s)) = obj.get(stem) {
        return Ok(Some(s.as_bytes().to_vec()));
    }
    if let Some(Value::String(s)) = obj.get(&format!("{stem}_b64")) {
        return PathText::Base64(s.clone())
            .to_bytes()
            .map(Some)
            .ok_or_else(|| format!("{stem}_b64 is not valid base64"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
