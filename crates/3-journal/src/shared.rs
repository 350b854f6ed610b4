//! What the writer and the readers share: the tunables, the list of
//! segments with their durable lengths, and the durable seq.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, RwLock};
use std::time::Duration;

use cj_types::JournalId;

use crate::error::{self, Error};

/// Tunables. The defaults suit a workstation or server; tests shrink them.
#[derive(Clone, Debug)]
pub struct Options {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Oldest segments are deleted while the journal is larger than this.
    pub retain_bytes: u64,
    /// Segments whose newest record is older than this are deleted.
    pub retain_age: Duration,
    /// A durable lower bound, known to the caller, on the highest sequence
    /// number ever acknowledged (the clean-stop marker, baselines' seqs).
    /// With the journal's own high-water mark it bounds where numbering may
    /// continue (design 7 step 5a): records lost below it are reported as
    /// damaged, never renumbered.
    pub seq_floor: u64,
    /// Records a durable consumer has not acknowledged (above the pin, see
    /// [`crate::Reader::set_pin`]) are kept past `retain_bytes` and
    /// `retain_age`, until the journal reaches this size.
    pub pinned_cap_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            retain_bytes: 2 << 30,
            retain_age: Duration::from_secs(30 * 24 * 3600),
            seq_floor: 0,
            pinned_cap_bytes: 8 << 30,
        }
    }
}

pub(crate) struct SegMeta {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Bytes known durable (fdatasync'ed) from the start of the file.
    pub durable_len: u64,
    pub created_ns: u64,
}

pub(crate) struct State {
    pub segments: Vec<SegMeta>,
    /// Sequence numbers of damaged segments that were quarantined: they are
    /// reported as damaged ranges forever after.
    pub durable_seq: u64,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub id: JournalId,
    pub state: RwLock<State>,
    pub durable_lock: Mutex<u64>,
    pub durable_cv: Condvar,
    /// Retention keeps every record above this seq while it can
    /// (`u64::MAX`: nothing pinned).
    pub pin: AtomicU64,
    /// The retention limits now (`Options` at open; changed by a reload):
    /// bytes, age in seconds, pinned cap in bytes.
    pub retain_bytes: AtomicU64,
    pub retain_age_secs: AtomicU64,
    pub pinned_cap_bytes: AtomicU64,
    /// Sampled record offsets per segment (a hint, `crate::skips`).
    pub skips: crate::skips::Skips,
}

pub(crate) const SEGMENT_SUFFIX: &str = ".cjseg";
pub(crate) const LOCK_FILE: &str = "lock";

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:016x}{SEGMENT_SUFFIX}"))
}

pub(crate) use cj_types::sys::now_ns;

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), Error> {
    let f = File::open(dir).map_err(error::io(dir, "open directory"))?;
    f.sync_all().map_err(error::io(dir, "fsync directory"))
}
