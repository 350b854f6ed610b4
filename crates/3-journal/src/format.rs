//! The byte layout of segment files. `docs/design.md` ("On-disk format") is
//! the reference; the offsets below are checked against it at compile time.
//!
//! Every integer is fixed-width little-endian. Every record carries a CRC-32C.

use cj_types::{
    Changes, EventRecord, FileHandle, GapReason, GapRecord, MarkRecord, ObjectKind, Record,
    RecordBody, ResolvedRecord, RootRecord, Stat, HANDLE_BYTES_MAX, NAME_BYTES_MAX, PATH_BYTES_MAX,
};

pub const SEGMENT_MAGIC: [u8; 8] = *b"CJJOURNL";
/// Bumped on any incompatible change of the layout below. Version 2 added
/// the optional stat block of event records (`EVENT_STAT_FLAG`); version 1
/// segments never hold one and are read as they are.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest segment version this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const RECORD_HEADER_LEN: usize = 32;
/// Record frames start at multiples of this, so a reader resynchronising after
/// corruption only tries aligned offsets.
pub const RECORD_ALIGN: usize = 8;
const EVENT_FIXED_LEN: usize = 48;
/// Event flag bit (payload byte 5) saying a stat block ends the payload.
/// A layout detail: decoding clears it and fills `EventRecord::stat`.
pub const EVENT_STAT_FLAG: u8 = 1 << 3;
/// ino u64, mode u32, uid u32, gid u32, nlink u32, size u64, mtime i64,
/// ctime i64.
pub const EVENT_STAT_LEN: usize = 48;
/// Event flag bit saying the payload ends with the gap seq a reconciled
/// record belongs to (u64, after the stat block if any). Cleared on decode
/// like `EVENT_STAT_FLAG`.
pub const EVENT_GAP_FLAG: u8 = 1 << 4;
pub const EVENT_GAP_LEN: usize = 8;
const GAP_FIXED_LEN: usize = 32;
const ROOT_FIXED_LEN: usize = 16;
/// No valid record is longer: two paths, two names, three handles, headers.
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_LEN
    + EVENT_FIXED_LEN
    + 3 * HANDLE_BYTES_MAX
    + 2 * NAME_BYTES_MAX
    + 2 * PATH_BYTES_MAX
    + EVENT_STAT_LEN
    + EVENT_GAP_LEN
    + RECORD_ALIGN;

const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_HEADER_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(HANDLE_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(NAME_BYTES_MAX <= u16::MAX as usize);

pub const RECORD_TYPE_EVENT: u8 = 1;
pub const RECORD_TYPE_GAP: u8 = 2;
pub const RECORD_TYPE_TRACK: u8 = 3;
pub const RECORD_TYPE_UNTRACK: u8 = 4;
pub const RECORD_TYPE_RESOLVED: u8 = 5;
/// Format 2.
pub const RECORD_TYPE_MARK: u8 = 6;
const MARK_LEN: usize = 16;
const RESOLVED_FIXED_LEN: usize = 40;

/// The fixed header at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub journal_id: [u8; 16],
    pub first_seq: u64,
    pub created_ns: u64,
    /// Format version (`FORMAT_VERSION` when written by this build).
    pub version: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.journal_id);
        b[32..40].copy_from_slice(&self.first_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_ns.to_le_bytes());
        // 48..60 reserved, zero.
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!(
                "header is {} bytes, expected {SEGMENT_HEADER_LEN}",
                b.len()
            ));
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("not a cj journal segment (bad magic)".into());
        }
        let crc = u32_at(b, 60);
        if crc != crc32c::crc32c(&b[0..60]) {
            return Err("segment header checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "segment format version {version}; this cj reads versions \
                 {FORMAT_VERSION_MIN} to {FORMAT_VERSION} (written by a newer cj? upgrade cj)"
            ));
        }
        if u32_at(b, 12) as usize != SEGMENT_HEADER_LEN {
            return Err("unexpected segment header length".into());
        }
        let mut journal_id = [0u8; 16];
        journal_id.copy_from_slice(&b[16..32]);
        Ok(SegmentHeader {
            journal_id,
            first_seq: u64_at(b, 32),
            created_ns: u64_at(b, 40),
            version,
        })
    }
}

pub fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Why bytes are not a valid record. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame needs: a torn tail, or the end of data.
    Truncated,
    /// The bytes are there but wrong: checksum, lengths or type.
    Invalid(&'static str),
}

/// Appends the frame of one record to `out`. Returns the frame length.
///
/// Panics (in release too) if the record breaks a documented bound: the
/// normaliser must never produce such a record, and writing it would make the
/// journal unreadable.
pub fn encode_record(seq: u64, time_ns: u64, body: &RecordBody, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    let record_type = match body {
        RecordBody::Event(e) => {
            encode_event(e, out);
            RECORD_TYPE_EVENT
        }
        RecordBody::Gap(g) => {
            encode_gap(g, out);
            RECORD_TYPE_GAP
        }
        RecordBody::Track(r) => {
            encode_root(r, out);
            RECORD_TYPE_TRACK
        }
        RecordBody::Untrack(r) => {
            encode_root(r, out);
            RECORD_TYPE_UNTRACK
        }
        RecordBody::Resolved(r) => {
            encode_resolved(r, out);
            RECORD_TYPE_RESOLVED
        }
        RecordBody::Mark(m) => {
            let mut f = [0u8; MARK_LEN];
            f[0..8].copy_from_slice(&m.drained_before_ns.to_le_bytes());
            out.extend_from_slice(&f);
            RECORD_TYPE_MARK
        }
    };
    let len = out.len() - start;
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds RECORD_BYTES_MAX"
    );
    let h = &mut out[start..start + RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&time_ns.to_le_bytes());
    h[24] = record_type;
    // 25..32 reserved, zero.
    let crc = crc32c::crc32c(&out[start + 8..start + len]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + align_up(len), 0);
    out.len() - start
}

fn put_handle_meta(h: &FileHandle, type_at: usize, len_at: usize, fixed: &mut [u8]) {
    assert!(h.bytes.len() <= HANDLE_BYTES_MAX, "file handle too long");
    fixed[type_at..type_at + 4].copy_from_slice(&h.handle_type.to_le_bytes());
    fixed[len_at] = h.bytes.len() as u8;
}

fn encode_event(e: &EventRecord, out: &mut Vec<u8>) {
    assert!(e.name.len() <= NAME_BYTES_MAX && e.old_name.len() <= NAME_BYTES_MAX);
    assert!(e.path.len() <= PATH_BYTES_MAX && e.old_path.len() <= PATH_BYTES_MAX);
    let mut f = [0u8; EVENT_FIXED_LEN];
    f[0..4].copy_from_slice(&e.changes.0.to_le_bytes());
    f[4] = e.kind as u8;
    f[5] = (e.flags & !(EVENT_STAT_FLAG | EVENT_GAP_FLAG))
        | if e.stat.is_some() { EVENT_STAT_FLAG } else { 0 }
        | if e.gap_seq != 0 { EVENT_GAP_FLAG } else { 0 };
    f[8..16].copy_from_slice(&e.fsid.to_le_bytes());
    put_handle_meta(&e.object, 16, 28, &mut f);
    put_handle_meta(&e.dir, 20, 29, &mut f);
    put_handle_meta(&e.old_dir, 24, 30, &mut f);
    f[32..34].copy_from_slice(&(e.name.len() as u16).to_le_bytes());
    f[34..36].copy_from_slice(&(e.old_name.len() as u16).to_le_bytes());
    f[36..40].copy_from_slice(&(e.path.len() as u32).to_le_bytes());
    f[40..44].copy_from_slice(&(e.old_path.len() as u32).to_le_bytes());
    out.extend_from_slice(&f);
    for part in [
        &e.object.bytes,
        &e.dir.bytes,
        &e.old_dir.bytes,
        &e.name,
        &e.old_name,
        &e.path,
        &e.old_path,
    ] {
        out.extend_from_slice(part);
    }
    if let Some(st) = &e.stat {
        out.extend_from_slice(&encode_stat(st));
    }
    if e.gap_seq != 0 {
        out.extend_from_slice(&e.gap_seq.to_le_bytes());
    }
}

fn encode_stat(s: &Stat) -> [u8; EVENT_STAT_LEN] {
    let mut b = [0u8; EVENT_STAT_LEN];
    b[0..8].copy_from_slice(&s.ino.to_le_bytes());
    b[8..12].copy_from_slice(&s.mode.to_le_bytes());
    b[12..16].copy_from_slice(&s.uid.to_le_bytes());
    b[16..20].copy_from_slice(&s.gid.to_le_bytes());
    b[20..24].copy_from_slice(&s.nlink.to_le_bytes());
    b[24..32].copy_from_slice(&s.size.to_le_bytes());
    b[32..40].copy_from_slice(&s.mtime_ns.to_le_bytes());
    b[40..48].copy_from_slice(&s.ctime_ns.to_le_bytes());
    b
}

fn decode_stat(b: &[u8]) -> Stat {
    Stat {
        ino: u64_at(b, 0),
        mode: u32_at(b, 8),
        uid: u32_at(b, 12),
        gid: u32_at(b, 16),
        nlink: u32_at(b, 20),
        size: u64_at(b, 24),
        mtime_ns: u64_at(b, 32) as i64,
        ctime_ns: u64_at(b, 40) as i64,
    }
}

fn encode_gap(g: &GapRecord, out: &mut Vec<u8>) {
    assert!(g.scope.len() <= PATH_BYTES_MAX && g.detail.len() <= PATH_BYTES_MAX);
    let mut f = [0u8; GAP_FIXED_LEN];
    f[0] = g.reason as u8;
    f[1] = g.flags;
    f[4..8].copy_from_slice(&(g.scope.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&g.fsid.to_le_bytes());
    f[16..24].copy_from_slice(&g.start_time_ns.to_le_bytes());
    f[24..28].copy_from_slice(&(g.detail.len() as u32).to_le_bytes());
    out.extend_from_slice(&f);
    out.extend_from_slice(&g.scope);
    out.extend_from_slice(&g.detail);
}

fn encode_root(r: &RootRecord, out: &mut Vec<u8>) {
    assert!(r.path.len() <= PATH_BYTES_MAX);
    let mut f = [0u8; ROOT_FIXED_LEN];
    f[0..8].copy_from_slice(&r.fsid.to_le_bytes());
    f[8..12].copy_from_slice(&(r.path.len() as u32).to_le_bytes());
    out.extend_from_slice(&f);
    out.extend_from_slice(&r.path);
}

fn encode_resolved(r: &ResolvedRecord, out: &mut Vec<u8>) {
    assert!(r.scope.len() <= PATH_BYTES_MAX);
    let mut f = [0u8; RESOLVED_FIXED_LEN];
    f[0..8].copy_from_slice(&r.through_seq.to_le_bytes());
    f[8..16].copy_from_slice(&r.fsid.to_le_bytes());
    f[16..20].copy_from_slice(&(r.scope.len() as u32).to_le_bytes());
    f[24..32].copy_from_slice(&r.records.to_le_bytes());
    f[32..40].copy_from_slice(&r.after_seq.to_le_bytes());
    out.extend_from_slice(&f);
    out.extend_from_slice(&r.scope);
}

fn decode_resolved(p: &[u8]) -> Result<ResolvedRecord, DecodeError> {
    if p.len() < RESOLVED_FIXED_LEN {
        return Err(DecodeError::Invalid("resolved payload too short"));
    }
    reserved_zero(&p[20..24], "resolved reserved bytes 20..24 not zero")?;
    let [scope] = split_exact(&p[RESOLVED_FIXED_LEN..], [u32_at(p, 16) as usize])?;
    Ok(ResolvedRecord {
        after_seq: u64_at(p, 32),
        through_seq: u64_at(p, 0),
        fsid: u64_at(p, 8),
        scope: scope.to_vec(),
        records: u64_at(p, 24),
    })
}

/// Reads just the length and seq of a frame after checking its checksum.
/// Returns `(seq, frame_len_aligned)`.
pub fn check_frame(b: &[u8]) -> Result<(u64, usize), DecodeError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let len = u32_at(b, 0) as usize;
    if len < RECORD_HEADER_LEN {
        return Err(DecodeError::Invalid("record length below header size"));
    }
    if len > RECORD_BYTES_MAX {
        return Err(DecodeError::Invalid("record length above maximum"));
    }
    let framed = align_up(len);
    if b.len() < framed {
        return Err(DecodeError::Truncated);
    }
    if u32_at(b, 4) != crc32c::crc32c(&b[8..len]) {
        return Err(DecodeError::Invalid("record checksum mismatch"));
    }
    if b[len..framed].iter().any(|&x| x != 0) {
        return Err(DecodeError::Invalid("non-zero padding"));
    }
    // Reserved bytes are written as zero (design 5.3); anything else was
    // not written by this format (found by the decoder fuzz test).
    if b[25..32].iter().any(|&x| x != 0) {
        return Err(DecodeError::Invalid("non-zero reserved header bytes"));
    }
    Ok((u64_at(b, 8), framed))
}

/// Decodes one frame at the start of `b`. Returns the record and the frame
/// length (aligned). Never panics, whatever the bytes.
pub fn decode_record(b: &[u8]) -> Result<(Record, usize), DecodeError> {
    let (seq, framed) = check_frame(b)?;
    let len = u32_at(b, 0) as usize;
    let time_ns = u64_at(b, 16);
    let payload = &b[RECORD_HEADER_LEN..len];
    let body = match b[24] {
        RECORD_TYPE_EVENT => RecordBody::Event(decode_event(payload)?),
        RECORD_TYPE_GAP => RecordBody::Gap(decode_gap(payload)?),
        RECORD_TYPE_TRACK => RecordBody::Track(decode_root(payload)?),
        RECORD_TYPE_UNTRACK => RecordBody::Untrack(decode_root(payload)?),
        RECORD_TYPE_RESOLVED => RecordBody::Resolved(decode_resolved(payload)?),
        RECORD_TYPE_MARK => {
            if payload.len() != MARK_LEN || u64_at(payload, 8) != 0 {
                return Err(DecodeError::Invalid("bad mark payload"));
            }
            RecordBody::Mark(MarkRecord {
                drained_before_ns: u64_at(payload, 0),
            })
        }
        _ => return Err(DecodeError::Invalid("unknown record type")),
    };
    Ok((Record { seq, time_ns, body }, framed))
}

/// Reserved fields are written as zero; anything else was not written by
/// this format (design 5; found by the decoder fuzz test).
fn reserved_zero(b: &[u8], what: &'static str) -> Result<(), DecodeError> {
    if b.iter().any(|&x| x != 0) {
        return Err(DecodeError::Invalid(what));
    }
    Ok(())
}

/// Splits `p` into consecutive parts of the given lengths; all bytes must be used.
fn split_exact<const N: usize>(mut p: &[u8], lens: [usize; N]) -> Result<[&[u8]; N], DecodeError> {
    let mut parts: [&[u8]; N] = [&[]; N];
    for (slot, len) in parts.iter_mut().zip(lens) {
        if p.len() < len {
            return Err(DecodeError::Invalid("payload shorter than its lengths"));
        }
        let (head, tail) = p.split_at(len);
        *slot = head;
        p = tail;
    }
    if !p.is_empty() {
        return Err(DecodeError::Invalid("payload longer than its lengths"));
    }
    Ok(parts)
}

/// The fields of an event record that an answer folds, borrowed from the
/// frame: reading a range without copying every handle, name and path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    pub changes: Changes,
    pub kind: ObjectKind,
    pub flags: u8,
    pub fsid: u64,
    pub path: &'a [u8],
    pub old_path: &'a [u8],
    pub gap_seq: u64,
}

impl<'a> EventView<'a> {
    pub fn of(e: &'a EventRecord) -> EventView<'a> {
        EventView {
            changes: e.changes,
            kind: e.kind,
            flags: e.flags,
            fsid: e.fsid,
            path: &e.path,
            old_path: &e.old_path,
            gap_seq: e.gap_seq,
        }
    }
}

/// An event frame's view, if `b` starts with a whole, valid event frame
/// (checked exactly as [`decode_record`] checks it); `Ok(None)` for a
/// valid frame of another type.
pub fn view_event(b: &[u8]) -> Result<Option<EventView<'_>>, DecodeError> {
    check_frame(b)?;
    if b[24] != RECORD_TYPE_EVENT {
        return Ok(None);
    }
    let len = u32_at(b, 0) as usize;
    let e = parse_event(&b[RECORD_HEADER_LEN..len])?;
    Ok(Some(EventView {
        changes: Changes(u32_at(e.fixed, 0)),
        kind: e.kind,
        flags: e.fixed[5] & !(EVENT_STAT_FLAG | EVENT_GAP_FLAG),
        fsid: u64_at(e.fixed, 8),
        path: e.parts[5],
        old_path: e.parts[6],
        gap_seq: e.gap_seq,
    }))
}

/// An event payload, checked and cut into its parts.
struct EventParts<'a> {
    fixed: &'a [u8],
    kind: ObjectKind,
    /// object, dir, old_dir handles, name, old name, path, old path.
    parts: [&'a [u8]; 7],
    stat: Option<Stat>,
    gap_seq: u64,
}

fn decode_event(p: &[u8]) -> Result<EventRecord, DecodeError> {
    let e = parse_event(p)?;
    let f = e.fixed;
    let [object, dir, old_dir, name, old_name, path, old_path] = e.parts;
    let handle = |t: usize, bytes: &[u8]| FileHandle {
        handle_type: i32_at(f, t),
        bytes: bytes.to_vec(),
    };
    Ok(EventRecord {
        changes: Changes(u32_at(f, 0)),
        kind: e.kind,
        flags: f[5] & !(EVENT_STAT_FLAG | EVENT_GAP_FLAG),
        fsid: u64_at(f, 8),
        object: handle(16, object),
        dir: handle(20, dir),
        old_dir: handle(24, old_dir),
        name: name.to_vec(),
        old_name: old_name.to_vec(),
        path: path.to_vec(),
        old_path: old_path.to_vec(),
        stat: e.stat,
        gap_seq: e.gap_seq,
    })
}

fn parse_event(p: &[u8]) -> Result<EventParts<'_>, DecodeError> {
    if p.len() < EVENT_FIXED_LEN {
        return Err(DecodeError::Invalid("event payload too short"));
    }
    let f = &p[..EVENT_FIXED_LEN];
    reserved_zero(&f[6..8], "event reserved bytes 6..8 not zero")?;
    reserved_zero(&f[31..32], "event reserved byte 31 not zero")?;
    reserved_zero(&f[44..48], "event reserved bytes 44..48 not zero")?;
    let lens = [
        f[28] as usize,
        f[29] as usize,
        f[30] as usize,
        u16_at(f, 32) as usize,
        u16_at(f, 34) as usize,
        u32_at(f, 36) as usize,
        u32_at(f, 40) as usize,
    ];
    if lens[0..3].iter().any(|&l| l > HANDLE_BYTES_MAX)
        || lens[3] > NAME_BYTES_MAX
        || lens[4] > NAME_BYTES_MAX
        || lens[5] > PATH_BYTES_MAX
        || lens[6] > PATH_BYTES_MAX
    {
        return Err(DecodeError::Invalid("event field length out of range"));
    }
    let has_stat = f[5] & EVENT_STAT_FLAG != 0;
    let mut rest = &p[EVENT_FIXED_LEN..];
    let gap_seq = if f[5] & EVENT_GAP_FLAG != 0 {
        let Some(cut) = rest.len().checked_sub(EVENT_GAP_LEN) else {
            return Err(DecodeError::Invalid(
                "event payload shorter than its gap seq",
            ));
        };
        let seq = u64_at(rest, cut);
        if seq == 0 {
            return Err(DecodeError::Invalid("event gap seq is zero"));
        }
        rest = &rest[..cut];
        seq
    } else {
        0
    };
    let stat = if has_stat {
        let Some(cut) = rest.len().checked_sub(EVENT_STAT_LEN) else {
            return Err(DecodeError::Invalid(
                "event payload shorter than its stat block",
            ));
        };
        let st = decode_stat(&rest[cut..]);
        rest = &rest[..cut];
        Some(st)
    } else {
        None
    };
    let parts = split_exact(rest, lens)?;
    let kind = ObjectKind::from_u8(f[4]).ok_or(DecodeError::Invalid("unknown object kind"))?;
    Ok(EventParts {
        fixed: f,
        kind,
        parts,
        stat,
        gap_seq,
    })
}

fn decode_gap(p: &[u8]) -> Result<GapRecord, DecodeError> {
    if p.len() < GAP_FIXED_LEN {
        return Err(DecodeError::Invalid("gap payload too short"));
    }
    let reason = GapReason::from_u8(p[0]).ok_or(DecodeError::Invalid("unknown gap reason"))?;
    reserved_zero(&p[2..4], "gap reserved bytes 2..4 not zero")?;
    reserved_zero(&p[28..32], "gap reserved bytes 28..32 not zero")?;
    let lens = [u32_at(p, 4) as usize, u32_at(p, 24) as usize];
    let [scope, detail] = split_exact(&p[GAP_FIXED_LEN..], lens)?;
    Ok(GapRecord {
        reason,
        fsid: u64_at(p, 8),
        scope: scope.to_vec(),
        start_time_ns: u64_at(p, 16),
        detail: detail.to_vec(),
        flags: p[1],
    })
}

fn decode_root(p: &[u8]) -> Result<RootRecord, DecodeError> {
    if p.len() < ROOT_FIXED_LEN {
        return Err(DecodeError::Invalid("root payload too short"));
    }
    reserved_zero(&p[12..16], "root reserved bytes 12..16 not zero")?;
    let [path] = split_exact(&p[ROOT_FIXED_LEN..], [u32_at(p, 8) as usize])?;
    Ok(RootRecord {
        fsid: u64_at(p, 0),
        path: path.to_vec(),
    })
}

// Callers check lengths first: a field past the end reads as 0 here, so a
// logic slip cannot turn bad input into a panic (cj_types::bytes).
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    cj_types::bytes::le_u16(b, at).unwrap_or(0)
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    cj_types::bytes::le_u32(b, at).unwrap_or(0)
}
pub(crate) fn i32_at(b: &[u8], at: usize) -> i32 {
    cj_types::bytes::le_i32(b, at).unwrap_or(0)
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    cj_types::bytes::le_u64(b, at).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_event(i: u64) -> RecordBody {
        RecordBody::Event(EventRecord {
            changes: Changes::CREATED | Changes::MODIFIED,
            kind: ObjectKind::File,
            flags: 1,
            fsid: 0x1122_3344_5566_7788,
            object: FileHandle {
                handle_type: 1,
                bytes: i.to_le_bytes().to_vec(),
            },
            dir: FileHandle {
                handle_type: 1,
                bytes: vec![9; 8],
            },
            name: format!("file-{i}").into_bytes(),
            path: format!("/mnt/dir/file-{i}\n\u{1}").into_bytes(),
            // Every other record with a stat block (format version 2).
            stat: (i % 2 == 1).then_some(cj_types::Stat {
                ino: i,
                mode: 0o100644,
                uid: 1,
                gid: 2,
                nlink: 1,
                size: 3,
                mtime_ns: -4,
                ctime_ns: i as i64,
            }),
            // Every third with a gap seq (a reconciled record).
            gap_seq: if i.is_multiple_of(3) { i + 1 } else { 0 },
            ..Default::default()
        })
    }

    #[test]
    fn header_offsets_match_design_doc() {
        let h = SegmentHeader {
            journal_id: [0xab; 16],
            first_seq: 42,
            created_ns: 7,
            version: FORMAT_VERSION,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"CJJOURNL");
        assert_eq!(u32_at(&b, 8), 2);
        assert_eq!(u64_at(&b, 32), 42);
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[33] ^= 1;
        assert!(SegmentHeader::decode(&bad).is_err());
        // Version 1 segments are still read; a newer version is refused.
        let old = SegmentHeader { version: 1, ..h };
        assert_eq!(SegmentHeader::decode(&old.encode()).unwrap(), old);
        let newer = SegmentHeader { version: 3, ..h };
        assert!(SegmentHeader::decode(&newer.encode())
            .unwrap_err()
            .contains("upgrade cj"));
    }

    #[test]
    fn every_body_round_trips() {
        let bodies = vec![
            sample_event(3),
            RecordBody::Gap(GapRecord {
                reason: GapReason::UncleanStop,
                fsid: 0,
                scope: b"/mnt".to_vec(),
                start_time_ns: 99,
                flags: 1,
                detail: b"kill -9".to_vec(),
            }),
            RecordBody::Track(RootRecord {
                fsid: 5,
                path: b"/mnt/\xff".to_vec(),
            }),
            RecordBody::Untrack(RootRecord {
                fsid: 5,
                path: b"/".to_vec(),
            }),
            RecordBody::Resolved(ResolvedRecord {
                after_seq: 5,
                through_seq: 77,
                fsid: 3,
                scope: b"/srv".to_vec(),
                records: 12,
            }),
            RecordBody::Mark(MarkRecord {
                drained_before_ns: 1_700_000_000_000_000_000,
            }),
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let mut buf = Vec::new();
            let n = encode_record(i as u64 + 1, 1000 + i as u64, &body, &mut buf);
            assert_eq!(n, buf.len());
            assert_eq!(n % RECORD_ALIGN, 0);
            let (rec, used) = decode_record(&buf).unwrap();
            assert_eq!(used, n);
            assert_eq!(rec.seq, i as u64 + 1);
            assert_eq!(rec.body, body);
        }
    }

    #[test]
    fn any_damage_is_detected_never_panics() {
        let mut buf = Vec::new();
        encode_record(1, 2, &sample_event(1), &mut buf);
        // The view reads what the decoder reads, and refuses what it refuses.
        let (whole, _) = decode_record(&buf).unwrap();
        let RecordBody::Event(e) = &whole.body else {
            panic!("not an event")
        };
        assert_eq!(view_event(&buf).unwrap(), Some(EventView::of(e)));
        for cut in 0..buf.len() {
            assert!(decode_record(&buf[..cut]).is_err());
            assert!(view_event(&buf[..cut]).is_err());
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(decode_record(&b).is_err(), "flip at {i}.{bit} undetected");
                assert!(view_event(&b).is_err(), "flip at {i}.{bit} viewed");
            }
        }
        // Arbitrary bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_record(&bytes);
            let _ = view_event(&bytes);
        }
    }
}
