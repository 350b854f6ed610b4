//! Paths are bytes. These helpers render them losslessly for text and JSON.
//!
//! Linux file names may hold any byte but `/` and NUL, including newlines and
//! sequences that are not UTF-8. Every cj output format must round-trip them:
//! - JSON: `path` when the bytes are valid UTF-8, else `path_b64` (standard
//!   base64 with padding) -- see `docs/protocol.md`.
//! - Text: a C-style escape (`\\`, `\n`, `\t`, `\r`, `\xHH`) that
//!   [`unescape_path`] reverses exactly.
//! - `-0`: raw bytes, NUL-separated.

use base64::Engine;

/// True if `path` is `dir` or lies below it (byte paths, absolute). A
/// trailing slash on `dir` is ignored; `/` contains every absolute path.
/// The one "is below" rule of cj: captures, answers, walks and gaps agree.
pub fn is_at_or_below(path: &[u8], dir: &[u8]) -> bool {
    let dir = match dir {
        b"/" => return path.starts_with(b"/"),
        [rest @ .., b'/'] => rest,
        _ => dir,
    };
    path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
}

/// True if one of two scopes contains the other (they share paths).
pub fn overlaps(a: &[u8], b: &[u8]) -> bool {
    is_at_or_below(a, b) || is_at_or_below(b, a)
}

/// `dir` joined with one `name`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A path as JSON carries it: text if it is UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathText {
    Utf8(String),
    Base64(String),
}

impl PathText {
    pub fn from_bytes(bytes: &[u8]) -> PathText {
        match std::str::from_utf8(bytes) {
            Ok(s) => PathText::Utf8(s.to_owned()),
            Err(_) => PathText::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    /// Decodes the base64 form; `None` if it is not valid base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            PathText::Utf8(s) => Some(s.as_bytes().to_vec()),
            PathText::Base64(b) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
        }
    }

    /// The JSON key for this form, with `stem` as the field name
    /// (`path` / `path_b64`, `renamed_from` / `renamed_from_b64`, ...).
    pub fn key(&self, stem: &str) -> String {
        match self {
            PathText::Utf8(_) => stem.to_owned(),
            PathText::Base64(_) => format!("{stem}_b64"),
        }
    }

    pub fn value(&self) -> &str {
        match self {
            PathText::Utf8(s) | PathText::Base64(s) => s,
        }
    }
}

/// Paths in log lines and error messages are cut to about this many bytes.
pub const LOG_PATH_BYTES_MAX: usize = 200;

/// A path for a log line or an error message: escaped exactly like the text
/// output (so a name with a newline cannot inject a line), and, past
/// `LOG_PATH_BYTES_MAX`, shortened to its start and end around `...`
/// with the full length (issue 9, defect 10).
pub fn log_path(bytes: &[u8]) -> String {
    if bytes.len() <= LOG_PATH_BYTES_MAX {
        return escape_path(bytes);
    }
    let head = &bytes[..LOG_PATH_BYTES_MAX / 4];
    let tail = &bytes[bytes.len() - LOG_PATH_BYTES_MAX * 3 / 4..];
    format!(
        "{}...{} ({} bytes)",
        escape_path(head),
        escape_path(tail),
        bytes.len()
    )
}

/// Escapes a path for line-oriented text output. Reversible by [`unescape_path`].
pub fn escape_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                escape_str(valid, &mut out);
                break;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                // SAFETY-free: `valid_up_to` guarantees this prefix is UTF-8.
                escape_str(std::str::from_utf8(valid).unwrap_or(""), &mut out);
                let bad = err.error_len().unwrap_or(after.len()).max(1);
                for b in &after[..bad] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &after[bad..];
            }
        }
    }
    out
}

fn escape_str(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
}

/// Reverses [`escape_path`]. `None` on an escape it never produces.
pub fn unescape_path(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips_every_byte() {
        let mut cases: Vec<Vec<u8>> = vec![
            b"/plain/path".to_vec(),
            b"/with space/and\nnewline".to_vec(),
            b"/bad\xff\xfeutf8".to_vec(),
            "/caf\u{e9}/\u{1f600}".as_bytes().to_vec(),
            b"/back\\slash\\x41".to_vec(),
            b"/\x01\x7f\t\r".to_vec(),
        ];
        cases.push((1..=255u8).collect());
        for case in cases {
            let escaped = escape_path(&case);
            assert!(!escaped.contains('\n'), "{escaped}");
            assert_eq!(unescape_path(&escaped).unwrap(), case);
            let json = PathText::from_bytes(&case);
            assert_eq!(json.to_bytes().unwrap(), case);
        }
    }

    #[test]
    fn json_form_picks_key() {
        assert_eq!(PathText::from_bytes(b"/a").key("path"), "path");
        assert_eq!(PathText::from_bytes(b"/\xff").key("path"), "path_b64");
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn below_and_overlap_at_the_edges() {
        assert!(is_at_or_below(b"/a", b"/a"));
        assert!(is_at_or_below(b"/a/b", b"/a"));
        assert!(is_at_or_below(b"/a/b", b"/a/"));
        assert!(!is_at_or_below(b"/ab", b"/a"));
        assert!(!is_at_or_below(b"/a", b"/a/b"));
        assert!(is_at_or_below(b"/x", b"/"));
        assert!(is_at_or_below(b"/", b"/"));
        assert!(!is_at_or_below(b"", b"/"));
        assert!(overlaps(b"/a", b"/a/b") && overlaps(b"/a/b", b"/a"));
        assert!(!overlaps(b"/a/b", b"/a/c"));
        assert_eq!(join(b"/", b"x"), b"/x");
        assert_eq!(join(b"/a", b"x"), b"/a/x");
    }

    #[test]
    fn log_paths_are_escaped_and_short() {
        assert_eq!(log_path(b"/a\nb"), escape_path(b"/a\nb"));
        assert!(!log_path(b"/x\ninjected").contains('\n'));
        let long = vec![b'a'; 5000];
        let shown = log_path(&long);
        assert!(shown.len() < LOG_PATH_BYTES_MAX + 40, "{shown}");
        assert!(shown.ends_with("(5000 bytes)"));
    }
}
