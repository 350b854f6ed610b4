//! Parser for the records `read(2)` returns from a FID-mode fanotify group.
//!
//! Layout (all native-endian, which is little-endian on every platform cj
//! builds for): a 24-byte `fanotify_event_metadata`, then info records
//! `{u8 type, u8 pad, u16 len}` + 8-byte fsid + `struct file_handle {u32
//! bytes, i32 type, data}`, and for the *DFID_NAME types a NUL-terminated name
//! padded to 4 bytes.
//!
//! Records are not 8-byte aligned (a 124-byte event was observed), so nothing
//! here casts the buffer to a C struct: every field is read with an unaligned
//! byte copy, and every length is checked before use. The parser never panics
//! on any input (tested on arbitrary bytes).

use std::fmt;

/// `sizeof(struct fanotify_event_metadata)`.
pub const METADATA_LEN: usize = 24;
const INFO_HEADER_LEN: usize = 4;
const FSID_LEN: usize = 8;
const HANDLE_HEADER_LEN: usize = 8;
const METADATA_VERSION: u8 = 3;
/// `MAX_HANDLE_SZ`.
const HANDLE_BYTES_MAX: usize = 128;

const INFO_FID: u8 = 1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const INFO_OLD_DFID_NAME: u8 = 10;
const INFO_NEW_DFID_NAME: u8 = 12;

/// A filesystem id plus a file handle, borrowed from the read buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fid<'a> {
    /// Both 32-bit words of the kernel's `__kernel_fsid_t`, little-endian.
    pub fsid: u64,
    pub handle_type: i32,
    pub handle: &'a [u8],
}

/// A directory handle plus a name in it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DirEntry<'a> {
    pub dir: Fid<'a>,
    /// Without the NUL. `b"."` when the event is about the directory itself.
    pub name: &'a [u8],
}

/// One parsed event.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Event<'a> {
    pub mask: u64,
    pub pid: i32,
    /// The object itself (`FAN_EVENT_INFO_TYPE_FID`).
    pub fid: Option<Fid<'a>>,
    /// A directory without a name (`FAN_EVENT_INFO_TYPE_DFID`).
    pub dfid: Option<Fid<'a>>,
    pub dfid_name: Option<DirEntry<'a>>,
    /// Rename source and target (`FAN_RENAME`).
    pub old: Option<DirEntry<'a>>,
    pub new: Option<DirEntry<'a>>,
}

/// What is wrong with a record. The iterator skips a bad event when its
/// length is trustworthy and stops when it is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The header's length fields do not fit the buffer; parsing stops.
    BadFrame { offset: usize, detail: &'static str },
    /// This event's info records are malformed; the event is skipped.
    BadInfo { offset: usize, detail: &'static str },
    /// A metadata version this parser does not know; parsing stops.
    Version(u8),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::BadFrame { offset, detail } => {
                write!(f, "bad fanotify record at byte {offset}: {detail}")
            }
            ParseError::BadInfo { offset, detail } => {
                write!(f, "bad fanotify info record at byte {offset}: {detail}")
            }
            ParseError::Version(v) => write!(
                f,
                "fanotify metadata version {v}; cj understands version {METADATA_VERSION}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Iterates over the events in one `read(2)` result.
pub fn parse(buf: &[u8]) -> Events<'_> {
    Events {
        buf,
        offset: 0,
        done: false,
    }
}

pub struct Events<'a> {
    buf: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.offset >= self.buf.len() {
            return None;
        }
        let at = self.offset;
        let rest = &self.buf[at..];
        let fail = |detail| ParseError::BadFrame { offset: at, detail };
        if rest.len() < METADATA_LEN {
            self.done = true;
            return Some(Err(fail("shorter than the event header")));
        }
        let event_len = u32_at(rest, 0) as usize;
        let version = rest[4];
        let metadata_len = u16_at(rest, 6) as usize;
        if version != METADATA_VERSION {
            self.done = true;
            return Some(Err(ParseError::Version(version)));
        }
        if event_len < METADATA_LEN || event_len > rest.len() {
            self.done = true;
            return Some(Err(fail("event length outside the buffer")));
        }
        if metadata_len < METADATA_LEN || metadata_len > event_len {
            self.done = true;
            return Some(Err(fail("metadata length outside the event")));
        }
        self.offset += event_len;
        let mut event = Event {
            mask: u64_at(rest, 8),
            pid: u32_at(rest, 20) as i32,
            ..Event::default()
        };
        let infos = &rest[metadata_len..event_len];
        match parse_infos(infos, &mut event) {
            Ok(()) => Some(Ok(event)),
            Err(detail) => Some(Err(ParseError::BadInfo {
                offset: at + metadata_len,
                detail,
            })),
        }
    }
}

fn parse_infos<'a>(mut infos: &'a [u8], event: &mut Event<'a>) -> Result<(), &'static str> {
    while !infos.is_empty() {
        if infos.len() < INFO_HEADER_LEN {
            return Err("truncated info header");
        }
        let info_type = infos[0];
        let len = u16_at(infos, 2) as usize;
        if len < INFO_HEADER_LEN || len > infos.len() {
            return Err("info length outside the event");
        }
        let body = &infos[INFO_HEADER_LEN..len];
        infos = &infos[len..];
        match info_type {
            INFO_FID => event.fid = Some(parse_fid(body)?.0),
            INFO_DFID => event.dfid = Some(parse_fid(body)?.0),
            INFO_DFID_NAME => event.dfid_name = Some(parse_dir_entry(body)?),
            INFO_OLD_DFID_NAME => event.old = Some(parse_dir_entry(body)?),
            INFO_NEW_DFID_NAME => event.new = Some(parse_dir_entry(body)?),
            // PIDFD, ERROR, RANGE, MNT and future types: not used by cj.
            _ => {}
        }
    }
    Ok(())
}

/// Returns the fid and the bytes after the handle.
fn parse_fid(body: &[u8]) -> Result<(Fid<'_>, &[u8]), &'static str> {
    if body.len() < FSID_LEN + HANDLE_HEADER_LEN {
        return Err("fid record too short");
    }
    let fsid = u64_at(body, 0);
    let handle_bytes = u32_at(body, FSID_LEN) as usize;
    let handle_type = u32_at(body, FSID_LEN + 4) as i32;
    let start = FSID_LEN + HANDLE_HEADER_LEN;
    if handle_bytes > HANDLE_BYTES_MAX || handle_bytes > body.len() - start {
        return Err("file handle longer than its record");
    }
    let handle = &body[start..start + handle_bytes];
    Ok((
        Fid {
            fsid,
            handle_type,
            handle,
        },
        &body[start + handle_bytes..],
    ))
}

fn parse_dir_entry(body: &[u8]) -> Result<DirEntry<'_>, &'static str> {
    let (dir, rest) = parse_fid(body)?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or("name without NUL terminator")?;
    let name = &rest[..nul];
    if name.is_empty() {
        return Err("empty name");
    }
    Ok(DirEntry { dir, name })
}

// Kernel structures, native byte order; every length is checked before a
// read, and a field past the end reads as 0 (cj_types::bytes).
fn u16_at(b: &[u8], at: usize) -> u16 {
    cj_types::bytes::ne_u16(b, at).unwrap_or(0)
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    cj_types::bytes::ne_u32(b, at).unwrap_or(0)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    cj_types::bytes::ne_u64(b, at).unwrap_or(0)
}

#[cfg(test)]
#[path = "parse/tests.rs"]
mod tests;
