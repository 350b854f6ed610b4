//! Concurrent readers of the durable prefix.
//!
//! A reader never trusts bytes past a segment's durable length, and never
//! stops at damage: it reports the unreadable range as [`Item::Damaged`] and
//! resynchronises on the next frame whose checksum and sequence number are
//! right, so one bad sector costs only the records on it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cj_types::{JournalId, Record};

use crate::error::{io, Error};
use crate::format::{
    self, check_frame, decode_record, SegmentHeader, RECORD_BYTES_MAX, SEGMENT_HEADER_LEN,
};
use crate::shared::Shared;

/// One step of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record(Box<Record>),
    /// Records `first..=last` exist but cannot be read.
    Damaged {
        first: u64,
        last: u64,
    },
}

/// Bytes read from a segment per `pread`.
const READ_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(READ_CHUNK_BYTES > RECORD_BYTES_MAX);

#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
}

struct SegView {
    first_seq: u64,
    /// Last sequence number this segment can hold.
    last_seq: u64,
    path: PathBuf,
    durable_len: u64,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>) -> Reader {
        Reader { shared }
    }

    pub fn journal_id(&self) -> JournalId {
        self.shared.id
    }

    /// The oldest sequence number still retained. A cursor below
    /// `first_seq() - 1` has expired.
    pub fn first_seq(&self) -> u64 {
        let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        state.segments.first().map(|s| s.first_seq).unwrap_or(1)
    }

    /// The highest sequence number known durable.
    pub fn durable_seq(&self) -> u64 {
        self.shared
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .durable_seq
    }

    /// Bytes on disk in all segments.
    pub fn disk_bytes(&self) -> u64 {
        let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        state.segments.iter().map(|s| s.durable_len).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.shared
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .segments
            .len()
    }

    /// Keeps the records above `after` (a durable consumer's acknowledged
    /// seq) past the usual retention limits, up to
    /// `Options::pinned_cap_bytes`. `None` releases the pin.
    pub fn set_pin(&self, after: Option<u64>) {
        self.shared.pin.store(
            after.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Changes the retention limits from now on (a configuration reload);
    /// the writer applies them at its next retention pass.
    pub fn set_retention(&self, retain_bytes: u64, retain_age: Duration, pinned_cap_bytes: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.retain_bytes.store(retain_bytes, SeqCst);
        self.shared
            .retain_age_secs
            .store(retain_age.as_secs(), SeqCst);
        self.shared.pinned_cap_bytes.store(pinned_cap_bytes, SeqCst);
    }

    /// The sampled frame at or before `seq` in the segment beginning at
    /// `segment`, as (seq, offset).
    #[cfg(test)]
    pub(crate) fn mark_before(&self, segment: u64, seq: u64) -> Option<(u64, u64)> {
        let m = self.shared.skips.before(segment, seq)?;
        Some((m.seq, m.offset))
    }

    /// Waits until `seq` is durable. False on timeout.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut d = self
            .shared
            .durable_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *d < seq {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            d = self
                .shared
                .durable_cv
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The journal's directory (derived data of the layers above may live
    /// in a subdirectory of it).
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// `(first_seq, last_seq)` of every segment, oldest first; the last
    /// one (being written) ends at the durable seq.
    pub fn segment_ranges(&self) -> Vec<(u64, u64)> {
        self.views()
            .iter()
            .map(|v| (v.first_seq, v.last_seq))
            .collect()
    }

    fn views(&self) -> Vec<SegView> {
        let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        let n = state.segments.len();
        (0..n)
            .map(|i| {
                let s = &state.segments[i];
                let last_seq = if i + 1 < n {
                    state.segments[i + 1].first_seq - 1
                } else {
                    state.durable_seq
                };
                SegView {
                    first_seq: s.first_seq,
                    last_seq,
                    path: s.path.clone(),
                    durable_len: s.durable_len,
                }
            })
            .collect()
    }

    /// Calls `f` for every record with `after < seq <= upto`, in order, and
    /// for every damaged range overlapping it. `f` returns false to stop.
    /// Records below [`Reader::first_seq`] are silently absent: check expiry
    /// first.
    pub fn scan(&self, after: u64, upto: u64, f: impl FnMut(Item) -> bool) -> Result<(), Error> {
        self.scan_at(after, upto, &mut None, f)
    }

    /// [`Reader::scan`] that starts at `at` when it names the place right
    /// after `after` (as left by the previous call), instead of reading its
    /// segment from the start, and leaves in `at` where this scan stopped.
    /// A reader tailing the journal (a follower) pays for what it reads,
    /// not for the segment's size.
    pub fn scan_at(
        &self,
        after: u64,
        upto: u64,
        at: &mut Option<Position>,
        mut f: impl FnMut(Item) -> bool,
    ) -> Result<(), Error> {
        self.scan_raw(after, upto, at, &mut |raw| {
            f(match raw {
                Raw::Frame(seq, bytes) => match decode_record(bytes) {
                    Ok((record, _)) => Item::Record(Box::new(record)),
                    Err(_) => Item::Damaged {
                        first: seq,
                        last: seq,
                    },
                },
                Raw::Damaged { first, last } => Item::Damaged { first, last },
            })
        })
    }

    /// [`Reader::scan`] that hands event records over as views into the
    /// bytes read ([`format::EventView`]), without copying them; other
    /// records and damage come as [`Item`]s. For folding big ranges.
    pub fn scan_view(
        &self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(View<'_>) -> bool,
    ) -> Result<(), Error> {
        self.scan_raw(after, upto, &mut None, &mut |raw| match raw {
            Raw::Frame(seq, bytes) => match format::view_event(bytes) {
                Ok(Some(event)) => f(View::Event {
                    seq,
                    event,
                    frame: bytes,
                }),
                Ok(None) => f(View::Other(match decode_record(bytes) {
                    Ok((record, _)) => Item::Record(Box::new(record)),
                    Err(_) => Item::Damaged {
                        first: seq,
                        last: seq,
                    },
                })),
                Err(_) => f(View::Other(Item::Damaged {
                    first: seq,
                    last: seq,
                })),
            },
            Raw::Damaged { first, last } => f(View::Other(Item::Damaged { first, last })),
        })
    }

    fn scan_raw(
        &self,
        after: u64,
        upto: u64,
        at: &mut Option<Position>,
        f: &mut dyn FnMut(Raw<'_>) -> bool,
    ) -> Result<(), Error> {
        for view in self.views() {
            if view.last_seq <= after || view.first_seq > upto || view.last_seq < view.first_seq {
                continue;
            }
            let start = at
                .filter(|p| {
                    p.segment == view.first_seq
                        && p.next_seq == after + 1
                        && p.offset <= view.durable_len
                })
                .map(Start::Known)
                .or_else(|| {
                    // The nearest sampled frame (a hint, checked at use).
                    let m = self.shared.skips.before(view.first_seq, after + 1)?;
                    (m.offset < view.durable_len).then_some(Start::Mark(Position {
                        segment: view.first_seq,
                        offset: m.offset,
                        next_seq: m.seq,
                    }))
                });
            let (go_on, next) = scan_segment(&view, &self.shared.skips, after, upto, start, f)?;
            *at = next;
            if !go_on {
                break;
            }
        }
        Ok(())
    }
}

/// A place in a segment: the record `next_seq` starts at `offset` of the
/// segment whose first seq is `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    segment: u64,
    offset: u64,
    next_seq: u64,
}

/// One step of a scan through [`Reader::scan_view`].
pub enum View<'a> {
    /// An event record, as a view into its frame (`frame`: the whole
    /// frame, for [`format::decode_record`] when the owned record is
    /// needed).
    Event {
        seq: u64,
        event: format::EventView<'a>,
        frame: &'a [u8],
    },
    /// Any other record, or damage.
    Other(Item),
}

/// A checked frame (its seq and bytes) or a damaged range.
enum Raw<'a> {
    Frame(u64, &'a [u8]),
    Damaged { first: u64, last: u64 },
}

/// Where a segment scan begins, when not at the header.
#[derive(Clone, Copy)]
enum Start {
    /// Left by the previous scan of this reader: trusted.
    Known(Position),
    /// A sampled frame (`crate::skips`): checked before it is used.
    Mark(Position),
}

/// Sliding window over the durable prefix of one segment file.
struct Window {
    file: File,
    path: PathBuf,
    limit: u64,
    base: u64,
    buf: Vec<u8>,
}

impl Window {
    /// The bytes from `off` on (at least `RECORD_BYTES_MAX` of them unless the
    /// durable end is nearer).
    fn at(&mut self, off: u64) -> Result<&[u8], Error> {
        let want_end = (off + RECORD_BYTES_MAX as u64).min(self.limit);
        let have_end = self.base + self.buf.len() as u64;
        if off < self.base || want_end > have_end {
            let len = (READ_CHUNK_BYTES as u64).min(self.limit.saturating_sub(off)) as usize;
            self.buf.resize(len, 0);
            let mut got = 0;
            while got < len {
                match self.file.read_at(&mut self.buf[got..], off + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(&self.path, "read")(e)),
                }
            }
            self.buf.truncate(got);
            self.base = off;
        }
        let start = (off - self.base) as usize;
        Ok(&self.buf[start.min(self.buf.len())..])
    }
}

/// Scans one segment (from `start` when given: a place found by an earlier
/// scan of this segment, whose header was checked then). Returns whether
/// to go on with the next segment, and the place after the last record
/// read (when the scan read records cleanly up to it).
fn scan_segment(
    view: &SegView,
    skips: &crate::skips::Skips,
    after: u64,
    upto: u64,
    start: Option<Start>,
    f: &mut dyn FnMut(Raw<'_>) -> bool,
) -> Result<(bool, Option<Position>), Error> {
    let place = |off: u64, next_seq: u64| {
        Some(Position {
            segment: view.first_seq,
            offset: off,
            next_seq,
        })
    };
    let damaged_all = |f: &mut dyn FnMut(Raw<'_>) -> bool, first: u64| {
        let first = first.max(after + 1);
        let last = view.last_seq.min(upto);
        if first <= last {
            f(Raw::Damaged { first, last })
        } else {
            true
        }
    };
    let file = match File::open(&view.path) {
        Ok(file) => file,
        // Deleted by retention after we listed it: the range has expired,
        // which the caller detects through first_seq().
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((true, None)),
        Err(e) => return Err(io(&view.path, "open segment")(e)),
    };
    let mut w = Window {
        file,
        path: view.path.clone(),
        limit: view.durable_len,
        base: 0,
        buf: Vec::new(),
    };
    let start = match start {
        Some(Start::Mark(p)) => {
            let ok = check_frame(w.at(p.offset)?).is_ok_and(|(seq, _)| seq == p.next_seq);
            ok.then_some(p)
        }
        Some(Start::Known(p)) => Some(p),
        None => None,
    };
    let mut next_mark = skips.next_at(view.first_seq);
    let (mut off, mut expected) = match start {
        Some(p) => (p.offset, p.next_seq),
        None => {
            let header_ok = SegmentHeader::decode(w.at(0)?)
                .map(|h| h.first_seq == view.first_seq)
                .unwrap_or(false);
            if !header_ok {
                return Ok((damaged_all(f, view.first_seq), None));
            }
            (SEGMENT_HEADER_LEN as u64, view.first_seq)
        }
    };
    while expected <= view.last_seq && expected <= upto {
        let bytes = w.at(off)?;
        if bytes.is_empty() {
            // The durable end came before the last seq this segment should
            // hold: the rest is unreadable.
            return Ok((damaged_all(f, expected), None));
        }
        match check_frame(bytes) {
            Ok((seq, len)) if seq == expected => {
                if off >= next_mark {
                    next_mark = skips.note(view.first_seq, seq, off);
                }
                let next = off + len as u64;
                if seq > after && !f(Raw::Frame(seq, &bytes[..len])) {
                    return Ok((false, place(next, seq + 1)));
                }
                expected = seq + 1;
                off = next;
            }
            _ => {
                // Damage: find the next good frame in this segment.
                match resync_window(&mut w, off, expected, view.last_seq)? {
                    Some((at, seq)) => {
                        let (first, last) = (expected.max(after + 1), (seq - 1).min(upto));
                        if first <= last && !f(Raw::Damaged { first, last }) {
                            return Ok((false, None));
                        }
                        expected = seq;
                        off = at;
                    }
                    None => return Ok((damaged_all(f, expected), None)),
                }
            }
        }
    }
    Ok((expected <= upto, place(off, expected)))
}

fn resync_window(
    w: &mut Window,
    from: u64,
    min_seq: u64,
    max_seq: u64,
) -> Result<Option<(u64, u64)>, Error> {
    let mut at = from + format::RECORD_ALIGN as u64;
    while at + format::RECORD_HEADER_LEN as u64 <= w.limit {
        let bytes = w.at(at)?;
        if let Ok((seq, _)) = check_frame(bytes) {
            if seq >= min_seq && seq <= max_seq {
                return Ok(Some((at, seq)));
            }
        }
        at += format::RECORD_ALIGN as u64;
    }
    Ok(None)
}
