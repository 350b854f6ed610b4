//! Cursors: the opaque token a client keeps between two queries.
//!
//! A cursor names one journal (its random 128-bit identity) and one sequence
//! number in it. Every change journaled with a sequence number at or below the
//! cursor's is covered by it; `since` answers everything above it.
//!
//! Text form: `cj1.<32 hex journal id>.<16 hex seq>.<8 hex crc32c>` -- printable
//! ASCII without spaces, so it survives shells, JSON and file names. The
//! checksum turns a mistyped or truncated cursor into a clear "malformed"
//! error instead of a silently wrong position.

use std::fmt;

/// The random identity of one journal. A cursor from another journal (another
/// machine, or a state directory that was wiped) is foreign and answers exit 3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct JournalId(pub [u8; 16]);

impl JournalId {
    /// Reads 16 bytes from the kernel's random source.
    pub fn random() -> std::io::Result<JournalId> {
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
            let n = unsafe {
                libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            filled += n as usize;
        }
        Ok(JournalId(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for JournalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A position in one journal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cursor {
    pub journal_id: JournalId,
    /// Every record with `seq <= self.seq` is covered.
    pub seq: u64,
}

/// Why a cursor string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CursorError {
    /// Not of the form `cj1.<id>.<seq>.<check>`.
    Malformed(String),
    /// The form is right but the check digits do not match: a typo or a
    /// truncated copy.
    BadChecksum,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::Malformed(why) => write!(
                f,
                "malformed cursor ({why}); a cursor looks like cj1.<32 hex>.<16 hex>.<8 hex>: \
                 pass exactly what `cj cursor` or `cj changes` printed"
            ),
            CursorError::BadChecksum => f.write_str(
                "cursor checksum mismatch: the cursor was altered or truncated; \
                 pass exactly what `cj cursor` or `cj changes` printed",
            ),
        }
    }
}

impl std::error::Error for CursorError {}

const CURSOR_PREFIX: &str = "cj1";

/// Length of a cursor's text.
pub const CURSOR_LEN: usize = 3 + 1 + 32 + 1 + 16 + 1 + 8;

/// Encodes many cursors of one journal quickly: the journal's part and its
/// checksum state are computed once (a follow stream sends one cursor per
/// record). Gives exactly [`Cursor::encode`]'s text.
#[derive(Clone, Debug)]
pub struct CursorEncoder {
    prefix: [u8; 37],
    prefix_crc: u32,
}

impl CursorEncoder {
    pub fn new(journal_id: JournalId) -> CursorEncoder {
        let mut prefix = [0u8; 37];
        let text = format!("{CURSOR_PREFIX}.{}.", journal_id.to_hex());
        prefix.copy_from_slice(text.as_bytes());
        CursorEncoder {
            prefix,
            prefix_crc: crc32c::crc32c(&prefix),
        }
    }

    /// The cursor for `seq`, written into `buf`.
    pub fn encode<'a>(&self, seq: u64, buf: &'a mut [u8; CURSOR_LEN]) -> &'a str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[..37].copy_from_slice(&self.prefix);
        for i in 0..16 {
            buf[37 + i] = HEX[((seq >> (60 - 4 * i)) & 0xf) as usize];
        }
        let check = crc32c::crc32c_append(self.prefix_crc, &buf[37..53]);
        buf[53] = b'.';
        for i in 0..8 {
            buf[54 + i] = HEX[((check >> (28 - 4 * i)) & 0xf) as usize];
        }
        // Only ASCII was written.
        std::str::from_utf8(&buf[..]).unwrap_or_default()
    }
}

impl Cursor {
    fn body(&self) -> String {
        format!(
            "{CURSOR_PREFIX}.{}.{:016x}",
            self.journal_id.to_hex(),
            self.seq
        )
    }

    pub fn encode(&self) -> String {
        let body = self.body();
        let check = crc32c::crc32c(body.as_bytes());
        format!("{body}.{check:08x}")
    }

    pub fn parse(text: &str) -> Result<Cursor, CursorError> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 4 {
            return Err(CursorError::Malformed(format!(
                "expected 4 dot-separated parts, found {}",
                parts.len()
            )));
        }
        if parts[0] != CURSOR_PREFIX {
            return Err(CursorError::Malformed(format!(
                "unknown cursor version {:?}",
                truncate_for_message(parts[0])
            )));
        }
        let id = unhex::<16>(parts[1])
            .ok_or_else(|| CursorError::Malformed("journal id is not 32 hex digits".into()))?;
        let seq = unhex::<8>(parts[2])
            .map(u64::from_be_bytes)
            .ok_or_else(|| CursorError::Malformed("sequence is not 16 hex digits".into()))?;
        let check = unhex::<4>(parts[3])
            .map(u32::from_be_bytes)
            .ok_or_else(|| CursorError::Malformed("check is not 8 hex digits".into()))?;
        let cursor = Cursor {
            journal_id: JournalId(id),
            seq,
        };
        if crc32c::crc32c(cursor.body().as_bytes()) != check {
            return Err(CursorError::BadChecksum);
        }
        Ok(cursor)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(16).collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_fast_encoder_writes_what_encode_writes() {
        let id = JournalId([0xa5; 16]);
        let enc = CursorEncoder::new(id);
        let mut buf = [0u8; CURSOR_LEN];
        for seq in [0, 1, 0xfff, u64::MAX, 0x0123_4567_89ab_cdef] {
            let c = Cursor {
                journal_id: id,
                seq,
            };
            assert_eq!(enc.encode(seq, &mut buf), c.encode());
            assert_eq!(Cursor::parse(enc.encode(seq, &mut buf)), Ok(c));
        }
    }

    use super::*;

    #[test]
    fn round_trip() {
        let c = Cursor {
            journal_id: JournalId([7; 16]),
            seq: 0xdead_beef_0102,
        };
        let s = c.encode();
        assert!(s.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(Cursor::parse(&s).unwrap(), c);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let good = Cursor {
            journal_id: JournalId([1; 16]),
            seq: 5,
        }
        .encode();
        for bad in ["", "cj1", "cj1...", "x.y.z.w", "cj1.zz.00.00", "cj1.é.é.é"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        // Every single-character change is caught.
        for i in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let s = String::from_utf8(bytes).unwrap();
            if s != good {
                assert!(Cursor::parse(&s).is_err(), "{s}");
            }
        }
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(JournalId::random().unwrap(), JournalId::random().unwrap());
    }
}
