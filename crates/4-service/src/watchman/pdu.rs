//! Framing of Watchman PDUs: a JSON value on one line, or a BSER PDU
//! (version 1: `00 01`, length; version 2: `00 02`, capabilities, length).
//! A client is answered in the encoding (and BSER version) it used.

use std::io::{self, BufRead, Read, Write};

use super::value::Val;

/// Longest request accepted (Watchman's own limit is far larger, but a
/// request is a command and a query: small).
pub const REQUEST_BYTES_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Bser1,
    Bser2,
}

#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// Not a PDU: the connection cannot go on (the message says why).
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// The next request, `None` at the end of the stream.
pub fn read(input: &mut impl BufRead) -> Result<Option<(Val, Encoding)>, ReadError> {
    loop {
        let first = match input.fill_buf()?.first() {
            None => return Ok(None),
            Some(b) => *b,
        };
        if first == 0 {
            return read_bser(input).map(Some);
        }
        let mut line = Vec::new();
        let n = input
            .by_ref()
            .take(REQUEST_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n > REQUEST_BYTES_MAX {
            return Err(ReadError::Bad(format!(
                "request longer than {REQUEST_BYTES_MAX} bytes"
            )));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            if n == 0 || !line.ends_with(b"\n") {
                return Ok(None);
            }
            continue;
        }
        return serde_json::from_slice::<Val>(&line)
            .map(|v| Some((v, Encoding::Json)))
            .map_err(|e| ReadError::Bad(format!("invalid JSON request: {e}")));
    }
}

fn read_bser(input: &mut impl BufRead) -> Result<(Val, Encoding), ReadError> {
    let mut magic = [0u8; 2];
    input.read_exact(&mut magic)?;
    let (encoding, caps) = match magic[1] {
        1 => (Encoding::Bser1, [0u8; 4]),
        2 => {
            let mut caps = [0u8; 4];
            input.read_exact(&mut caps)?;
            (Encoding::Bser2, caps)
        }
        v => return Err(ReadError::Bad(format!("unknown BSER version {v}"))),
    };
    let mut kind = [0u8; 1];
    input.read_exact(&mut kind)?;
    let width = match kind[0] {
        0x03 => 1,
        0x04 => 2,
        0x05 => 4,
        0x06 => 8,
        k => return Err(ReadError::Bad(format!("BSER length of type {k:#x}"))),
    };
    let mut raw = [0u8; 8];
    input.read_exact(&mut raw[..width])?;
    let len = match width {
        1 => i64::from(raw[0] as i8),
        2 => i64::from(i16::from_le_bytes([raw[0], raw[1]])),
        4 => i64::from(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
        _ => i64::from_le_bytes(raw),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= REQUEST_BYTES_MAX)
        .ok_or_else(|| ReadError::Bad(format!("BSER PDU of {len} bytes")))?;
    // serde_bser reads version 2 only: the same body behind a v2 header.
    let mut pdu = Vec::with_capacity(len + 16);
    pdu.extend_from_slice(&[0, 2]);
    pdu.extend_from_slice(&caps);
    pdu.push(kind[0]);
    pdu.extend_from_slice(&raw[..width]);
    let body = pdu.len();
    pdu.resize(body + len, 0);
    input.read_exact(&mut pdu[body..])?;
    serde_bser::from_slice::<Val>(&pdu)
        .map(|v| (v, encoding))
        .map_err(|e| ReadError::Bad(format!("invalid BSER request: {e}")))
}

/// Encodes one response.
pub fn encode(v: &Val, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Json => {
            let mut out = serde_json::to_vec(&v.to_json()).unwrap_or_default();
            out.push(b'\n');
            out
        }
        Encoding::Bser2 | Encoding::Bser1 => {
            let encoded = if encoding == Encoding::Bser1 {
                serde_bser::ser::serialize(Vec::new(), super::value::AsV1(v))
            } else {
                serde_bser::ser::serialize(Vec::new(), v)
            };
            let Ok(mut out) = encoded else {
                return encode(&Val::obj([("error", Val::str("cannot encode"))]), encoding);
            };
            if encoding == Encoding::Bser1 && out.len() >= 6 {
                // 00 02 CAPS(4) LEN BODY -> 00 01 LEN BODY
                out.drain(2..6);
                out[1] = 1;
            }
            out
        }
    }
}

pub fn write(out: &mut impl Write, v: &Val, encoding: Encoding) -> io::Result<()> {
    out.write_all(&encode(v, encoding))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: &Val, enc: Encoding) -> Val {
        let bytes = encode(v, enc);
        let (back, got) = read(&mut io::BufReader::new(&bytes[..])).unwrap().unwrap();
        assert_eq!(got, enc);
        back
    }

    #[test]
    fn every_encoding_round_trips() {
        let v = Val::Array(vec![
            Val::str("query"),
            Val::str("/r"),
            Val::obj([("fields", Val::Array(vec![Val::str("name")]))]),
        ]);
        for enc in [Encoding::Json, Encoding::Bser1, Encoding::Bser2] {
            assert_eq!(round(&v, enc), v, "{enc:?}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &b"\x00\x07"[..],
            b"\x00\x01\x05\xff\xff\xff\x7f",
            b"\x00\x01\x03\x05ab",
            b"{nope\n",
            b"\x00\x02\x00\x00\x00\x00\x03\x02\x0d\x03",
        ] {
            assert!(read(&mut io::BufReader::new(bad)).is_err(), "{bad:?}");
        }
        assert!(read(&mut io::BufReader::new(&b""[..])).unwrap().is_none());
        assert!(read(&mut io::BufReader::new(&b"\n\n"[..]))
            .unwrap()
            .is_none());
    }
}
