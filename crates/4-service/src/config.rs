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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: DEFAULT_STATE_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            queue: QueueLimit::Unlimited,
            journal: cj_journal::Options::default(),
            commit_interval: Duration::from_millis(pipeline::COMMIT_INTERVAL_DEFAULT_MS),
            reconcile_walk_only: false,
            baseline_refresh: Some(Duration::from_secs(BASELINE_REFRESH_DEFAULT_SECS)),
            follow_stall: crate::server::FOLLOW_STALL_DEFAULT,
            consumer_idle: Some(Duration::from_secs(CONSUMER_IDLE_DEFAULT_DAYS * 86_400)),
        }
    }
}
