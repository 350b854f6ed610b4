//! cj's durable journal: an append-only log of checksummed records kept in
//! segment files, written with group commit.
//!
//! Why not a database: every embedded store keeps its own write-ahead log, so
//! a change would be written twice; and cj only ever appends and scans ranges.
//! The format (`docs/design.md`, "On-disk format") is small enough to check by
//! eye, and recovery is one rule: the tail of the last segment is kept up to
//! the last record whose checksum and sequence number are right; anything
//! after it was never acknowledged and is cut off.
//!
//! One [`Writer`] (one thread) appends; any number of [`Reader`]s scan the
//! durable prefix concurrently.

mod error;
pub mod format;
mod highwater;
mod reader;
mod shared;
mod skips;
pub mod storage;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use cj_types::JournalId;

pub use error::Error;
pub use highwater::HIGHWATER_INTERVAL;
pub use reader::{Item, Position, Reader, View};
pub use shared::Options;
use shared::{now_ns, segment_path, SegMeta, Shared, State, LOCK_FILE, SEGMENT_SUFFIX};
pub use writer::Writer;

use format::{check_frame, DecodeError, SegmentHeader, RECORD_ALIGN, SEGMENT_HEADER_LEN};

/// What [`open`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The journal did not exist and was created.
    pub created: bool,
    /// Bytes cut from the end of the last segment (a torn, unacknowledged tail).
    pub truncated_bytes: u64,
    /// Sequence number of the last record kept (0 if none).
    pub last_seq: u64,
    /// Wall-clock time of the last record kept (0 if none).
    pub last_time_ns: u64,
    /// Ranges of sequence numbers in the last segment that could not be read
    /// but are followed by readable records (corruption, not a torn tail).
    pub damaged: Vec<(u64, u64)>,
    /// A last segment whose header was unreadable was moved aside.
    pub quarantined: Vec<PathBuf>,
    /// Acknowledged records `first..=last` are missing: the journal ends
    /// below a durable high-water mark (its tail was cut or its last
    /// segment deleted). Numbering continues above `last`; readers report
    /// the range as damaged.
    pub lost: Option<(u64, u64)>,
}

/// Opens (creating if needed) the journal in `dir`, recovers it and returns
/// its single writer and a reader. The steps are design 7's.
pub fn open(dir: &Path, options: Options) -> Result<(Writer, Reader, Recovery), Error> {
    open_with(dir, options, Arc::new(storage::Files))
}

/// [`open`], with the writer's segment files opened through `storage` (the
/// seam for failure tests).
pub fn open_with(
    dir: &Path,
    options: Options,
    storage: Arc<dyn storage::Storage>,
) -> Result<(Writer, Reader, Recovery), Error> {
    cj_types::fsutil::create_private_dir(dir).map_err(error::io(dir, "create directory"))?;
    let lock = lock_dir(dir)?;
    let mut r = Recovering {
        dir,
        recovery: Recovery::default(),
        id: read_id_file(dir),
        segments: Vec::new(),
        last_version: format::FORMAT_VERSION,
    };
    let names = r.segment_names()?;
    for (i, &first_seq) in names.iter().enumerate() {
        r.add_segment(first_seq, i + 1 == names.len())?;
    }
    let id = r.id.ok_or_else(|| Error::Corrupt {
        path: dir.to_path_buf(),
        detail: "no segment has a readable header".into(),
    })?;
    if read_id_file(dir) != Some(id) {
        write_id_file(dir, id)?;
    }
    let mut durable_seq = r.recover_last()?;
    durable_seq = r.apply_floor(id, durable_seq, options.seq_floor)?;
    let mut highwater = highwater::HighWater::open(dir, id, 0)?;
    // The mark never goes down, and is at least what was just recovered.
    // Failing to raise it (a full disk) leaves it lower: allowed.
    if let Err(e) = highwater.advance(durable_seq, true) {
        tracing::warn!("cj daemon: {e} (the mark stays at an older seq)");
    }
    r.upgrade_last(id, durable_seq)?;
    let Recovering {
        recovery, segments, ..
    } = r;
    let last = segments.last().expect("at least one segment exists");
    let file = storage
        .open_segment(&last.path)
        .map_err(error::io(&last.path, "open for append"))?;
    let (file_len, seg_first_seq) = (last.durable_len, last.first_seq);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        id,
        state: RwLock::new(State {
            segments,
            durable_seq,
        }),
        durable_lock: Mutex::new(durable_seq),
        durable_cv: Condvar::new(),
        pin: std::sync::atomic::AtomicU64::new(u64::MAX),
        retain_bytes: std::sync::atomic::AtomicU64::new(options.retain_bytes),
        retain_age_secs: std::sync::atomic::AtomicU64::new(options.retain_age.as_secs()),
        pinned_cap_bytes: std::sync::atomic::AtomicU64::new(options.pinned_cap_bytes),
        skips: Default::default(),
    });
    let writer = Writer::new(
        shared.clone(),
        storage,
        file,
        lock,
        highwater,
        seg_first_seq,
        file_len,
        durable_seq + 1,
        options,
    );
    Ok((writer, Reader::new(shared), recovery))
}

/// The state of [`open`] while it recovers.
struct Recovering<'d> {
    dir: &'d Path,
    recovery: Recovery,
    id: Option<JournalId>,
    segments: Vec<SegMeta>,
    /// Version of the last segment's header (this build's for a new one).
    last_version: u32,
}

impl Recovering<'_> {
    /// The segments' first seqs, in order; a new journal gets its first.
    fn segment_names(&mut self) -> Result<Vec<u64>, Error> {
        let mut names = list_segments(self.dir)?;
        if names.is_empty() {
            // No segment: a new journal. An id file without segments means
            // the history is gone, so it gets a new identity too: old
            // cursors must read as foreign, never as valid positions in an
            // empty journal.
            self.recovery.created = true;
            let new_id = JournalId::random().map_err(error::io(self.dir, "getrandom"))?;
            write_id_file(self.dir, new_id)?;
            writer::create_segment(self.dir, new_id, 1)?;
            self.id = Some(new_id);
            names.push(1);
        }
        Ok(names)
    }

    /// Checks one segment's header (step 3) and adds it.
    fn add_segment(&mut self, first_seq: u64, is_last: bool) -> Result<(), Error> {
        let path = segment_path(self.dir, first_seq);
        let len = fs::metadata(&path).map_err(error::io(&path, "stat"))?.len();
        match read_header(&path) {
            Ok(h) => {
                if h.first_seq != first_seq {
                    return Err(Error::Corrupt {
                        path,
                        detail: format!(
                            "header says first seq {} but name says {first_seq}",
                            h.first_seq
                        ),
                    });
                }
                match self.id {
                    None => self.id = Some(JournalId(h.journal_id)),
                    Some(JournalId(known)) if known != h.journal_id => {
                        return Err(Error::Corrupt {
                            path,
                            detail: "segment belongs to another journal".into(),
                        })
                    }
                    Some(_) => {}
                }
                if is_last {
                    self.last_version = h.version;
                }
                self.push(first_seq, len, h.created_ns);
            }
            Err(detail) if is_last => self.quarantine_last(path, first_seq, len, detail)?,
            // A middle segment with a bad header: readers report its whole
            // range as damaged; nothing here to repair.
            Err(_) => self.push(first_seq, len, 0),
        }
        Ok(())
    }

    fn push(&mut self, first_seq: u64, durable_len: u64, created_ns: u64) {
        self.segments.push(SegMeta {
            first_seq,
            path: segment_path(self.dir, first_seq),
            durable_len,
            created_ns,
        });
    }

    /// Starts a new, empty segment at `first_seq`.
    fn new_segment(&mut self, id: JournalId, first_seq: u64) -> Result<(), Error> {
        let created_ns = writer::create_segment(self.dir, id, first_seq)?;
        self.push(first_seq, SEGMENT_HEADER_LEN as u64, created_ns);
        Ok(())
    }

    /// Step 6: a torn segment creation, or a damaged header on the active
    /// segment. Moved aside; the next segment starts past every sequence
    /// number the damaged file could hold (each record is at least one
    /// header long), so no number is ever reused.
    fn quarantine_last(
        &mut self,
        path: PathBuf,
        first_seq: u64,
        len: u64,
        detail: String,
    ) -> Result<(), Error> {
        let aside = path.with_extension(format!("damaged-{}", now_ns()));
        fs::rename(&path, &aside).map_err(error::io(&path, "rename aside"))?;
        self.recovery.quarantined.push(aside);
        let next = first_seq + len / format::RECORD_HEADER_LEN as u64 + 1;
        if len > SEGMENT_HEADER_LEN as u64 {
            self.recovery.damaged.push((first_seq, next - 1));
        }
        let id = match self.id {
            Some(id) => id,
            None if self.segments.is_empty() && len <= SEGMENT_HEADER_LEN as u64 => {
                self.recovery.created = true;
                let id = JournalId::random().map_err(error::io(self.dir, "getrandom"))?;
                self.id = Some(id);
                id
            }
            None => return Err(Error::Corrupt { path, detail }),
        };
        self.new_segment(id, next)
    }

    /// Steps 4-5: scans the last segment, cuts a torn tail; returns the
    /// last durable seq.
    fn recover_last(&mut self) -> Result<u64, Error> {
        let last = self
            .segments
            .last_mut()
            .expect("at least one segment exists");
        let tail = recover_tail(last, &mut self.recovery)?;
        let durable_seq = tail.last_seq.max(last.first_seq - 1);
        self.recovery.last_seq = durable_seq;
        self.recovery.last_time_ns = tail.last_time_ns;
        Ok(durable_seq)
    }

    /// Step 5a: if acknowledged records are gone, never hand their numbers
    /// out again: the next segment starts above the floor, and readers see
    /// the missing range as damage (the previous segment "should" hold it).
    fn apply_floor(&mut self, id: JournalId, durable_seq: u64, floor: u64) -> Result<u64, Error> {
        if self.recovery.created {
            return Ok(durable_seq);
        }
        let floor = floor.max(highwater::read(self.dir, id).unwrap_or(0));
        if floor <= durable_seq {
            return Ok(durable_seq);
        }
        self.new_segment(id, floor + 1)?;
        self.recovery.lost = Some((durable_seq + 1, floor));
        self.last_version = format::FORMAT_VERSION;
        Ok(floor)
    }

    /// A last segment written by an older cj: records of this version go
    /// into a segment of this version, so an older cj reading the journal
    /// refuses a segment it does not know instead of taking new records for
    /// damage. One without records gets its header rewritten in place (a
    /// torn rewrite is a damaged last header, which recovery handles).
    fn upgrade_last(&mut self, id: JournalId, durable_seq: u64) -> Result<(), Error> {
        if self.last_version >= format::FORMAT_VERSION {
            return Ok(());
        }
        let last = self.segments.last().expect("at least one segment exists");
        if last.durable_len > SEGMENT_HEADER_LEN as u64 {
            self.new_segment(id, durable_seq + 1)
        } else {
            writer::rewrite_header(&last.path, id, last.first_seq, last.created_ns)
        }
    }
}

const ID_FILE: &str = "journal.id";

/// The journal id is also kept in its own small file (16 bytes + CRC-32C), so
/// that a damaged header on the only segment does not lose the identity that
/// every client cursor carries.
fn read_id_file(dir: &Path) -> Option<JournalId> {
    let b = fs::read(dir.join(ID_FILE)).ok()?;
    if b.len() != 20 || format::u32_at(&b, 16) != crc32c::crc32c(&b[..16]) {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[..16]);
    Some(JournalId(id))
}

fn write_id_file(dir: &Path, id: JournalId) -> Result<(), Error> {
    let mut b = id.0.to_vec();
    b.extend_from_slice(&crc32c::crc32c(&id.0).to_le_bytes());
    cj_types::fsutil::write_atomic(&dir.join(ID_FILE), &b)
        .map_err(|e| error::io(&e.path, e.op)(e.source))
}

fn lock_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(error::io(&path, "open lock file"))?;
    // SAFETY: flock on a valid, owned descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked { path });
        }
        return Err(Error::Io {
            path,
            op: "lock",
            source: err,
        });
    }
    Ok(f)
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(error::io(dir, "list"))? {
        let entry = entry.map_err(error::io(dir, "list"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() == 16 {
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                out.push(seq);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn read_header(path: &Path) -> Result<SegmentHeader, String> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    let mut got = 0;
    while got < b.len() {
        match f.read_at(&mut b[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    SegmentHeader::decode(&b[..got])
}

struct Tail {
    last_seq: u64,
    last_time_ns: u64,
}

/// Scans the last segment, records damaged spans, and truncates a torn tail.
fn recover_tail(seg: &mut SegMeta, recovery: &mut Recovery) -> Result<Tail, Error> {
    let bytes = fs::read(&seg.path).map_err(error::io(&seg.path, "read"))?;
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = seg.first_seq;
    let mut tail = Tail {
        last_seq: 0,
        last_time_ns: 0,
    };
    let mut good_end = off;
    while off < bytes.len() {
        match check_frame(&bytes[off..]) {
            Ok((seq, len)) if seq == expected => {
                tail.last_seq = seq;
                tail.last_time_ns = format::u64_at(&bytes, off + 16);
                expected = seq + 1;
                off += len;
                good_end = off;
            }
            Ok(_) | Err(DecodeError::Invalid(_)) | Err(DecodeError::Truncated) => {
                match resync(&bytes, off + RECORD_ALIGN, expected) {
                    Some((at, seq)) => {
                        recovery.damaged.push((expected, seq - 1));
                        expected = seq;
                        off = at;
                    }
                    None => break,
                }
            }
        }
    }
    let cut = bytes.len() - good_end;
    if cut > 0 {
        // Assert before cutting: the kept prefix must end on a frame boundary.
        assert!(good_end.is_multiple_of(RECORD_ALIGN) && good_end >= SEGMENT_HEADER_LEN);
        let f = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(error::io(&seg.path, "open for truncate"))?;
        f.set_len(good_end as u64)
            .map_err(error::io(&seg.path, "truncate torn tail"))?;
        f.sync_all()
            .map_err(error::io(&seg.path, "fsync after truncate"))?;
        recovery.truncated_bytes = cut as u64;
    }
    seg.durable_len = good_end as u64;
    Ok(tail)
}

/// Finds the next aligned offset at or after `from` holding a valid frame with
/// a sequence number at or above `min_seq`. Such a frame proves the bytes
/// before it are damage, not a torn tail.
pub(crate) fn resync(bytes: &[u8], from: usize, min_seq: u64) -> Option<(usize, u64)> {
    let mut at = from.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    while at + format::RECORD_HEADER_LEN <= bytes.len() {
        if let Ok((seq, _)) = check_frame(&bytes[at..]) {
            if seq >= min_seq {
                return Some((at, seq));
            }
        }
        at += RECORD_ALIGN;
    }
    None
}

#[cfg(test)]
mod tests;
