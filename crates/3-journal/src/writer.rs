//! The single appender. Group commit: `append` only encodes into memory;
//! `commit` writes everything pending with one `write` and makes it durable
//! with one `fdatasync`, then publishes the new durable sequence number.
//! Nothing is acknowledged before its `fdatasync` returned.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cj_types::{JournalId, RecordBody};

use crate::error::{io, Error};
use crate::format::{encode_record, SegmentHeader, RECORD_ALIGN, SEGMENT_HEADER_LEN};
use crate::shared::{fsync_dir, now_ns, segment_path, Options, SegMeta, Shared};
use crate::storage::{SegmentFile, Storage};

/// Creates a new segment file holding only its header, durably (file and
/// directory entry), before any record may go into it. Returns its creation time.
pub(crate) fn create_segment(dir: &Path, id: JournalId, first_seq: u64) -> Result<u64, Error> {
    let path = segment_path(dir, first_seq);
    let created_ns = now_ns();
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(&path, "create segment"))?;
    write_header(&f, &path, id, first_seq, created_ns)?;
    fsync_dir(dir)?;
    Ok(created_ns)
}

/// Rewrites the header of a segment that holds no record yet with this
/// build's format version, durably.
pub(crate) fn rewrite_header(
    path: &Path,
    id: JournalId,
    first_seq: u64,
    created_ns: u64,
) -> Result<(), Error> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path, "open segment"))?;
    write_header(&f, path, id, first_seq, created_ns)
}

/// Writes this build's segment header at offset 0 and fsyncs the file.
fn write_header(
    f: &File,
    path: &Path,
    id: JournalId,
    first_seq: u64,
    created_ns: u64,
) -> Result<(), Error> {
    let header = SegmentHeader {
        journal_id: id.0,
        first_seq,
        created_ns,
        version: crate::format::FORMAT_VERSION,
    };
    FileExt::write_all_at(f, &header.encode(), 0).map_err(io(path, "write segment header"))?;
    f.sync_all().map_err(io(path, "fsync segment"))
}

/// The one appender of a journal. Not `Sync`: owned by the writer thread.
pub struct Writer {
    shared: Arc<Shared>,
    file: Box<dyn SegmentFile>,
    _lock: File,
    storage: std::sync::Arc<dyn Storage>,
    highwater: crate::highwater::HighWater,
    seg_first_seq: u64,
    /// Bytes in the active segment file (all durable after each commit).
    file_len: u64,
    next_seq: u64,
    /// Encoded frames not yet written.
    pending: Vec<u8>,
    pending_records: u64,
    scratch: Vec<u8>,
    poisoned: bool,
    options: Options,
}

impl Writer {
    // Called once, by `open`, with everything recovery found: a struct for
    // it would only repeat these fields.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        storage: std::sync::Arc<dyn Storage>,
        file: Box<dyn SegmentFile>,
        lock: File,
        highwater: crate::highwater::HighWater,
        seg_first_seq: u64,
        file_len: u64,
        next_seq: u64,
        options: Options,
    ) -> Writer {
        Writer {
            shared,
            file,
            _lock: lock,
            storage,
            highwater,
            seg_first_seq,
            file_len,
            next_seq,
            pending: Vec::with_capacity(1 << 20),
            pending_records: 0,
            scratch: Vec::new(),
            poisoned: false,
            options,
        }
    }

    /// The sequence number the next appended record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes appended but not yet committed.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Encodes one record into the pending batch and returns its sequence
    /// number. It is durable only once a later [`Writer::commit`] returns.
    pub fn append(&mut self, time_ns: u64, body: &RecordBody) -> Result<u64, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        self.scratch.clear();
        let seq = self.next_seq;
        let len = encode_record(seq, time_ns, body, &mut self.scratch);
        let projected = self.file_len + (self.pending.len() + len) as u64;
        let segment_has_records =
            self.file_len > SEGMENT_HEADER_LEN as u64 || !self.pending.is_empty();
        if projected > self.options.segment_bytes && segment_has_records {
            self.commit()?;
            self.rotate()?;
        }
        self.pending.extend_from_slice(&self.scratch);
        self.pending_records += 1;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Writes and syncs everything pending. Returns the durable sequence number.
    pub fn commit(&mut self) -> Result<u64, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if self.pending.is_empty() {
            return Ok(self.next_seq - 1);
        }
        assert!(self.pending.len().is_multiple_of(RECORD_ALIGN));
        assert!(self.file_len.is_multiple_of(RECORD_ALIGN as u64));
        let path = segment_path(&self.shared.dir, self.seg_first_seq);
        let result = self
            .file
            .write_all_at(&self.pending, self.file_len)
            .map_err(io(&path, "append"))
            .and_then(|()| self.file.sync_data().map_err(io(&path, "fdatasync")));
        if let Err(e) = result {
            // After a failed fdatasync the kernel may have dropped the dirty
            // pages: retrying could report data durable that is not. Stop.
            self.poisoned = true;
            return Err(e);
        }
        self.note_marks();
        self.file_len += self.pending.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        let durable = self.next_seq - 1;
        self.publish(durable);
        // After publishing: the mark is a lower bound, so lagging is safe
        // (design 7 step 5a says how much), and a failure to write it only
        // leaves it lower; it is tried again at the next commit.
        if let Err(e) = self.highwater.advance(durable, false) {
            tracing::warn!("cj daemon: {e} (the mark stays at an older seq)");
        }
        Ok(durable)
    }

    /// Samples where the frames just written start (`crate::skips`), before
    /// they are published as durable.
    fn note_marks(&self) {
        let skips = &self.shared.skips;
        let mut next = skips.next_at(self.seg_first_seq);
        let mut o = 0usize;
        while o + 16 <= self.pending.len() {
            let len = u32::from_le_bytes(self.pending[o..o + 4].try_into().unwrap_or([0; 4]));
            let seq = u64::from_le_bytes(self.pending[o + 8..o + 16].try_into().unwrap_or([0; 8]));
            let at = self.file_len + o as u64;
            if at >= next {
                next = skips.note(self.seg_first_seq, seq, at);
            }
            let framed = (len as usize).div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
            assert!(framed > 0, "a pending frame of length zero");
            o += framed;
        }
    }

    /// Writes the high-water mark for everything durable now (a clean stop
    /// calls this after its last commit).
    pub fn sync_highwater(&mut self) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let durable = self.next_seq - 1;
        self.highwater.advance(durable, true)
    }

    /// After a failed commit: drops everything not yet durable (none of it
    /// was acknowledged), cuts the active segment back to its durable
    /// length and syncs it, so the file holds exactly what was durable
    /// before; then the writer takes appends again. This is what makes a
    /// retry safe after a failed `fdatasync`: the pages whose fate is
    /// unknown are removed, not trusted. If the cut fails too, the writer
    /// stays poisoned (restart and recovery decide).
    pub fn recover_after_failure(&mut self) -> Result<(), Error> {
        let path = segment_path(&self.shared.dir, self.seg_first_seq);
        // A segment whose creation failed half-way is not in the list.
        let stray = segment_path(&self.shared.dir, self.next_seq_durable() + 1);
        if stray != path {
            match fs::remove_file(&stray) {
                Ok(()) => fsync_dir(&self.shared.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&stray, "remove a half-created segment")(e)),
            }
        }
        self.file
            .set_len(self.file_len)
            .map_err(io(&path, "cut back to the durable length"))?;
        self.file
            .sync_all()
            .map_err(io(&path, "fsync after cutting back"))?;
        self.shared.skips.cut(self.seg_first_seq, self.file_len);
        self.pending.clear();
        self.pending_records = 0;
        self.next_seq = self.next_seq_durable() + 1;
        self.poisoned = false;
        Ok(())
    }

    fn next_seq_durable(&self) -> u64 {
        self.shared
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .durable_seq
    }

    fn publish(&self, durable: u64) {
        {
            let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
            if let Some(seg) = state.segments.last_mut() {
                assert_eq!(seg.first_seq, self.seg_first_seq);
                seg.durable_len = self.file_len;
            }
            assert!(durable >= state.durable_seq, "durable seq went backwards");
            state.durable_seq = durable;
        }
        let mut d = self
            .shared
            .durable_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *d = durable;
        self.shared.durable_cv.notify_all();
    }

    fn rotate(&mut self) -> Result<(), Error> {
        assert!(self.pending.is_empty());
        let first_seq = self.next_seq;
        let created_ns = create_segment(&self.shared.dir, self.shared.id, first_seq)?;
        let path = segment_path(&self.shared.dir, first_seq);
        self.file = self
            .storage
            .open_segment(&path)
            .map_err(io(&path, "open new segment"))?;
        self.seg_first_seq = first_seq;
        self.file_len = SEGMENT_HEADER_LEN as u64;
        let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
        state.segments.push(SegMeta {
            first_seq,
            path,
            durable_len: self.file_len,
            created_ns,
        });
        drop(state);
        self.enforce_retention(now_ns())?;
        Ok(())
    }

    /// Deletes the oldest closed segments while the journal is over its size
    /// budget or their newest record is past the age limit. The active
    /// segment is never deleted. Returns how many segments were removed.
    pub fn enforce_retention(&mut self, now_ns: u64) -> Result<usize, Error> {
        let age_ns = duration_ns(Duration::from_secs(
            self.shared.retain_age_secs.load(Ordering::SeqCst),
        ));
        let retain_bytes = self.shared.retain_bytes.load(Ordering::SeqCst);
        let pinned_cap = self.shared.pinned_cap_bytes.load(Ordering::SeqCst);
        let mut removed = 0;
        loop {
            let victim = {
                let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
                let total: u64 = state.segments.iter().map(|s| s.durable_len).sum();
                if state.segments.len() < 2 {
                    None
                } else {
                    // A segment's newest record is older than the next
                    // segment's creation.
                    let newest_ns = state.segments[1].created_ns;
                    let too_old = newest_ns != 0 && now_ns.saturating_sub(newest_ns) > age_ns;
                    // Records a consumer still needs go only past the cap.
                    let last_seq = state.segments[1].first_seq - 1;
                    let pinned = last_seq > self.shared.pin.load(Ordering::SeqCst);
                    let over = if pinned {
                        total > pinned_cap.max(retain_bytes)
                    } else {
                        total > retain_bytes || too_old
                    };
                    over.then(|| state.segments[0].path.clone())
                }
            };
            let Some(path) = victim else { break };
            // Readers take the segment list first, so drop it from the list
            // before unlinking: a reader that already opened the file keeps
            // reading it; one that has not sees the range as expired.
            {
                let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
                state.segments.remove(0);
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        path,
                        op: "delete expired segment",
                        source: e,
                    })
                }
            }
            removed += 1;
        }
        if removed > 0 {
            let first = {
                let state = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
                state.segments.first().map_or(0, |s| s.first_seq)
            };
            self.shared.skips.forget_before(first);
            fsync_dir(&self.shared.dir)?;
        }
        Ok(removed)
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
