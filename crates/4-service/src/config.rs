//! The daemon's settings and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use cj_capture::QueueLimit;

use crate::pipeline;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cj";
pub const DEFAULT_SOCKET: &str = "/run/cj/cj.sock";
/// How long a clean stop waits for the last quiet baseline refresh
/// (`Queue::refresh_before_stop`).
pub const STOP_REFRESH_WAIT: Duration = Duration::from_secs(20);
/// Default for how often idle baselines are refreshed.
pub const BASELINE_REFRESH_DEFAULT_SECS: u64 = 600;
/// Default: a durable consumer unused this many days stops pinning.
pub const CONSUMER_IDLE_DEFAULT_DAYS: u64 = 30;

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// The Watchman-protocol socket, if any (docs/watchman.md).
    pub watchman_socket: Option<PathBuf>,
    /// `KernelDefault` only to force overflows in tests.
    pub queue: QueueLimit,
    pub journal: cj_journal::Options,
    /// Minimum time between fdatasyncs when no client waits (the bound on
    /// how long a change may stay in memory only).
    pub commit_interval: Duration,
    /// Never use the XFS/btrfs fast paths to reconcile (always walk).
    pub reconcile_walk_only: bool,
    /// How often idle baselines are refreshed quietly
    /// (`None`: never).
    pub baseline_refresh: Option<Duration>,
    /// A follower that takes no byte for this long is cut off.
    pub follow_stall: Duration,
    /// A durable consumer not used for this long stops pinning the journal
    /// (`None`: never).
    pub consumer_idle: Option<Duration>,
    /// Where SIGHUP reads the configuration again from, and the flags that
    /// override it (`None`: SIGHUP only says there is nothing to reload).
    pub reload: Option<Reload>,
    /// Paths ordinary users may ask about (`[[grant]]`).
    pub grants: Vec<crate::access::Grant>,
    /// Testing only: a reconciliation of a gap waits this long before it
    /// looks at the tree (as a big walk would take), interruptible by a
    /// scoped request.
    pub test_reconcile_delay: Duration,
    /// Testing only: walks spill runs of this many bytes, always.
    pub test_spill_bytes: Option<usize>,
}

/// How to build the configuration again on SIGHUP.
#[derive(Clone, Debug)]
pub struct Reload {
    pub file: PathBuf,
    pub flags: crate::config_file::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            watchman_socket: None,
            queue: QueueLimit::Unlimited,
            journal: cj_journal::Options::default(),
            commit_interval: Duration::from_millis(pipeline::COMMIT_INTERVAL_DEFAULT_MS),
            reconcile_walk_only: false,
            baseline_refresh: Some(Duration::from_secs(BASELINE_REFRESH_DEFAULT_SECS)),
            follow_stall: crate::server::FOLLOW_STALL_DEFAULT,
            consumer_idle: Some(Duration::from_secs(CONSUMER_IDLE_DEFAULT_DAYS * 86_400)),
            reload: None,
            grants: Vec::new(),
            test_reconcile_delay: Duration::ZERO,
            test_spill_bytes: None,
        }
    }
}

/// What differs between the running configuration and a reloaded one:
/// lines for what a reload applies, and the keys that need a restart.
pub fn differences(old: &Config, new: &Config) -> (Vec<String>, Vec<&'static str>) {
    let mut said = Vec::new();
    let mut note = |key: &str, a: String, b: String| {
        if a != b {
            said.push(format!("{key} {a} -> {b}"));
        }
    };
    let mib = |b: u64| format!("{}", b >> 20);
    let days = |d: Duration| format!("{}", d.as_secs() / 86_400);
    let opt_secs = |d: Option<Duration>| d.map_or("off".to_string(), |d| d.as_secs().to_string());
    note(
        "retain_mib",
        mib(old.journal.retain_bytes),
        mib(new.journal.retain_bytes),
    );
    note(
        "retain_days",
        days(old.journal.retain_age),
        days(new.journal.retain_age),
    );
    note(
        "consumer_cap_mib",
        mib(old.journal.pinned_cap_bytes),
        mib(new.journal.pinned_cap_bytes),
    );
    note(
        "consumer_idle_days",
        old.consumer_idle.map_or("off".into(), days),
        new.consumer_idle.map_or("off".into(), days),
    );
    note(
        "follow_stall_ms",
        old.follow_stall.as_millis().to_string(),
        new.follow_stall.as_millis().to_string(),
    );
    note(
        "baseline_refresh_secs",
        opt_secs(old.baseline_refresh),
        opt_secs(new.baseline_refresh),
    );
    if old.grants != new.grants {
        said.push(format!(
            "grants: {} -> {}",
            old.grants.len(),
            new.grants.len()
        ));
    }
    let mut restart = Vec::new();
    if old.state_dir != new.state_dir {
        restart.push("state_dir");
    }
    if old.socket != new.socket {
        restart.push("socket");
    }
    if old.watchman_socket != new.watchman_socket {
        restart.push("watchman_socket");
    }
    if old.commit_interval != new.commit_interval {
        restart.push("commit_interval_ms");
    }
    if old.reconcile_walk_only != new.reconcile_walk_only {
        restart.push("reconcile");
    }
    (said, restart)
}

impl Config {
    /// The settings as `status` shows them (`config`).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.reload.as_ref().map(|r| r.file.display().to_string()),
            "state_dir": self.state_dir.display().to_string(),
            "retain_mib": self.journal.retain_bytes >> 20,
            "retain_days": self.journal.retain_age.as_secs() / 86_400,
            "consumer_cap_mib": self.journal.pinned_cap_bytes >> 20,
            "consumer_idle_days": self.consumer_idle.map(|d| d.as_secs() / 86_400),
            "follow_stall_ms": self.follow_stall.as_millis() as u64,
            "baseline_refresh_secs": self.baseline_refresh.map(|d| d.as_secs()),
            "commit_interval_ms": self.commit_interval.as_millis() as u64,
            "reconcile": if self.reconcile_walk_only { "walk" } else { "auto" },
        })
    }
}
