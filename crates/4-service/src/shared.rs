//! What the daemon's threads publish for each other, `status` and queries.
//! A leaf module: everything imports it, it imports only the inbox.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use cj_normalize::Stats;

/// Health of one tracked root, as shown by `status` and used by queries.
#[derive(Clone, Debug)]
pub struct RootState {
    pub path: Vec<u8>,
    pub fsid: u64,
    pub fs_type: String,
    /// `None` while events are captured; otherwise why not.
    pub unavailable: Option<String>,
}

#[derive(Default, Clone, Debug)]
pub struct CommitStats {
    pub commits: u64,
    pub records: u64,
    pub recent_us: VecDeque<u64>,
}

/// What the threads publish for `status` and queries.
#[derive(Default)]
pub struct Shared {
    pub roots: Mutex<Vec<RootState>>,
    pub reconcile: crate::inbox::Queue,
    pub normalize: Mutex<Stats>,
    pub commit: Mutex<CommitStats>,
    /// Set by a clean stop that ended quiescent (`Capture::quiesce`).
    pub quiescent: std::sync::atomic::AtomicBool,
    /// The state directory (named in messages).
    pub state_dir: std::path::PathBuf,
    /// Multiply-linked names of the baselines, for normalisation.
    pub links: Arc<cj_normalize::LinkIndex>,
    /// Set while the state filesystem is full (wall-clock ns since when):
    /// nothing is journaled, queries answer what is durable (design 6a).
    pub disk_full: Mutex<Option<u64>>,
    /// What a reload can change (docs/configuration.md).
    pub tunables: Tunables,
    /// The running configuration as `status` shows it.
    pub config: Mutex<serde_json::Value>,
    /// Paths ordinary users may ask about (replaced by a reload).
    pub grants: Mutex<Arc<Vec<crate::access::Grant>>>,
}

/// The settings a configuration reload (SIGHUP) can change while the
/// daemon runs; everyone reads them from here.
#[derive(Default)]
pub struct Tunables {
    pub follow_stall_ms: AtomicU64,
    pub consumer_cap_bytes: AtomicU64,
    /// 0: consumers never go idle.
    pub consumer_idle_secs: AtomicU64,
    /// 0: no quiet baseline refreshes.
    pub refresh_secs: AtomicU64,
}

impl Tunables {
    /// Takes the values of `c` (at start and at a reload).
    pub fn set(&self, c: &crate::Config) {
        let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_secs().max(1));
        self.follow_stall_ms
            .store(c.follow_stall.as_millis() as u64, SeqCst);
        self.consumer_cap_bytes.store(
            c.journal.pinned_cap_bytes.max(c.journal.retain_bytes),
            SeqCst,
        );
        self.consumer_idle_secs.store(secs(c.consumer_idle), SeqCst);
        self.refresh_secs.store(secs(c.baseline_refresh), SeqCst);
    }

    pub fn follow_stall(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.follow_stall_ms.load(SeqCst).max(1))
    }

    pub fn refresh_every(&self) -> Option<std::time::Duration> {
        let s = self.refresh_secs.load(SeqCst);
        (s > 0).then(|| std::time::Duration::from_secs(s))
    }

    pub fn consumer_idle(&self) -> Option<std::time::Duration> {
        let s = self.consumer_idle_secs.load(SeqCst);
        (s > 0).then(|| std::time::Duration::from_secs(s))
    }
}

/// What a client is told while the state disk is full.
pub fn disk_full_message(state_dir: &std::path::Path) -> String {
    format!(
        "the filesystem holding the cj state directory ({}) is full: new changes are not \
         journaled. Free space there (or lower --retain-mib); cj resumes by itself within a \
         second and records the interval as a gap, which reconciliation closes. Queries \
         still answer what is journaled.",
        state_dir.display()
    )
}

/// Why the daemon's main thread should stop.
pub enum Exit {
    /// SIGTERM or SIGINT: stop cleanly.
    Signal(i32),
    /// A pipeline thread hit an error it cannot recover from.
    Fatal(String),
    /// SIGHUP: read the configuration file again (the daemon goes on).
    Reload,
}

/// Answered with the durable sequence number that covers the request.
pub type Completion = SyncSender<Result<u64, String>>;

/// Watchman queries answered, and how many were fresh instances (`cj
/// status`: a client whose answers are often fresh instances rescans a
/// lot).
pub static WATCHMAN_QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static WATCHMAN_FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
