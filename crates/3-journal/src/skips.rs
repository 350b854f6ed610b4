//! Where records start, sampled: for each segment, the offset of one frame
//! every [`SKIP_INTERVAL_BYTES`] (design 5.10). A scan that begins in the
//! middle of a segment starts at the nearest mark at or before its first
//! record instead of reading the segment from its header, so an answer
//! over the last thousand records costs a thousand records, not a segment.
//!
//! A mark is a hint derived from the segments, kept in memory only: it is
//! made by the writer for frames it has just made durable and by readers
//! for frames whose checksum and seq they checked, and a scan that starts
//! at one checks that frame again (checksum and expected seq) before
//! trusting it; if that fails it reads the segment from its start. Losing
//! every mark (a restart) costs time, never records.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Bytes of segment between two marks: at most one mark per this many
/// bytes, so marks cost 16 bytes per 64 KiB of journal (2 MiB for 8 GiB).
pub(crate) const SKIP_INTERVAL_BYTES: u64 = 64 << 10;

/// The frame of record `seq` starts at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub seq: u64,
    pub offset: u64,
}

/// Marks per segment, keyed by the segment's first seq.
#[derive(Default)]
pub(crate) struct Skips {
    by_segment: Mutex<BTreeMap<u64, Vec<Mark>>>,
}

impl Skips {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<Mark>>> {
        self.by_segment.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last mark at or before record `seq` of `segment`.
    pub fn before(&self, segment: u64, seq: u64) -> Option<Mark> {
        let map = self.lock();
        let marks = map.get(&segment)?;
        let i = marks.partition_point(|m| m.seq <= seq);
        i.checked_sub(1).map(|i| marks[i])
    }

    /// The offset past which the next mark of `segment` is worth taking
    /// (the segment's start when it has none).
    pub fn next_at(&self, segment: u64) -> u64 {
        let map = self.lock();
        map.get(&segment)
            .and_then(|m| m.last())
            .map_or(0, |m| m.offset + SKIP_INTERVAL_BYTES)
    }

    /// Records that record `seq` starts at `offset`, if that is far enough
    /// past the segment's last mark (marks only grow, so a scan that
    /// started at a mark extends them without gaps). Returns the offset
    /// past which the next mark is worth taking.
    pub fn note(&self, segment: u64, seq: u64, offset: u64) -> u64 {
        let mut map = self.lock();
        let marks = map.entry(segment).or_default();
        match marks.last() {
            Some(last) if offset < last.offset + SKIP_INTERVAL_BYTES => {}
            // Frames of one segment only grow in seq with their offset; a
            // mark that would say otherwise is not taken.
            Some(last) if seq <= last.seq => {}
            Some(_) => marks.push(Mark { seq, offset }),
            None => marks.push(Mark { seq, offset }),
        }
        marks.last().map_or(0, |m| m.offset + SKIP_INTERVAL_BYTES)
    }

    /// Forgets the marks of segments that begin before `first_seq` (deleted
    /// by retention), and of a segment cut back after a failed commit.
    pub fn forget_before(&self, first_seq: u64) {
        self.lock().retain(|&segment, _| segment >= first_seq);
    }

    /// Forgets the marks of `segment` at or past `offset`.
    pub fn cut(&self, segment: u64, offset: u64) {
        if let Some(marks) = self.lock().get_mut(&segment) {
            marks.retain(|m| m.offset < offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_before_a_seq_is_the_last_one_at_or_before_it() {
        let s = Skips::default();
        assert_eq!(s.before(1, 10), None);
        s.note(1, 1, 64);
        s.note(1, 5, 64 + 100); // too close to the first: not kept
        s.note(1, 700, 64 + SKIP_INTERVAL_BYTES);
        s.note(1, 1400, 64 + 2 * SKIP_INTERVAL_BYTES);
        assert_eq!(s.before(1, 0), None);
        assert_eq!(s.before(1, 699).map(|m| m.seq), Some(1));
        assert_eq!(s.before(1, 700).map(|m| m.seq), Some(700));
        assert_eq!(s.before(1, 99_999).map(|m| m.seq), Some(1400));
        s.cut(1, 64 + 2 * SKIP_INTERVAL_BYTES);
        assert_eq!(s.before(1, 99_999).map(|m| m.seq), Some(700));
        s.forget_before(2);
        assert_eq!(s.before(1, 99_999), None);
    }
}
