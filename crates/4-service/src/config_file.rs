//! The daemon's configuration file (`cj daemon --config FILE`, default
//! `/etc/cj/cj.toml` when present; `docs/configuration.md`). Every key is
//! optional: a command-line flag overrides the file, the file overrides the
//! built-in default. Unknown keys are errors (a typo must not be silently
//! ignored), reported with their line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/cj/cj.toml";
/// A configuration file larger than this is refused.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

/// The settings a file (or the command line) may give.
#[derive(Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// The Watchman-protocol socket (issue 14); none by default.
    pub watchman_socket: Option<PathBuf>,
    pub retain_mib: Option<u64>,
    pub retain_days: Option<u64>,
    pub commit_interval_ms: Option<u64>,
    pub reconcile: Option<String>,
    pub baseline_refresh_secs: Option<u64>,
    pub consumer_cap_mib: Option<u64>,
    pub consumer_idle_days: Option<u64>,
    pub follow_stall_ms: Option<u64>,
    /// `[[grant]]` tables: paths ordinary users may ask about.
    #[serde(default, rename = "grant")]
    pub grants: Vec<GrantSpec>,
    /// `[export.nats]`: the daemon's service also runs `cj export nats`
    /// (docs/export.md). Read by the `cj` binary, not by the daemon.
    #[serde(default)]
    pub export: Option<ExportSpec>,
}

/// The `[export]` section.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    pub nats: Option<NatsExportSpec>,
}

/// `[export.nats]`: what `cj export nats` takes.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NatsExportSpec {
    pub url: String,
    pub stream: String,
    pub subject: String,
    pub consumer: Option<String>,
    pub host: Option<String>,
    pub path: Option<PathBuf>,
}

/// One `[[grant]]`: `user = "alice"` or `group = "devs"`, and `paths`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    pub user: Option<String>,
    pub group: Option<String>,
    pub paths: Vec<PathBuf>,
}

/// A configuration file that cannot be used, and why (with the line).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        detail: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(
                    f,
                    "cannot read the configuration file {}: {source}",
                    path.display()
                )
            }
            ConfigError::Invalid { path, detail } => write!(
                f,
                "the configuration file {} is not valid: {detail} (docs/configuration.md lists \
                 every key)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                detail: format!("larger than {CONFIG_BYTES_MAX} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Settings::parse(&text).map_err(|detail| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        })
    }

    /// Parses and checks the text of a file. The error names the line.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let s: Settings = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        if let Some(r) = &s.reconcile {
            if r != "auto" && r != "walk" {
                let line = line_of(text, "reconcile");
                return Err(format!(
                    "line {line}: reconcile must be \"auto\" or \"walk\", not {r:?}"
                ));
            }
        }
        for (key, v, min) in [
            ("commit_interval_ms", s.commit_interval_ms, 1),
            ("follow_stall_ms", s.follow_stall_ms, 1),
        ] {
            if v.is_some_and(|v| v < min) {
                return Err(format!(
                    "line {}: {key} must be at least {min}",
                    line_of(text, key)
                ));
            }
        }
        for (i, g) in s.grants.iter().enumerate() {
            let at = line_of_nth(text, "[[grant]]", i);
            if g.user.is_some() == g.group.is_some() {
                return Err(format!(
                    "line {at}: a [[grant]] names exactly one of user = \"...\" or group = \"...\""
                ));
            }
            if g.paths.is_empty() || g.paths.iter().any(|p| !p.is_absolute()) {
                return Err(format!(
                    "line {at}: a [[grant]] needs paths = [...], each absolute"
                ));
            }
        }
        for (key, p) in [
            ("state_dir", &s.state_dir),
            ("socket", &s.socket),
            ("watchman_socket", &s.watchman_socket),
        ] {
            if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                return Err(format!(
                    "line {}: {key} must be an absolute path",
                    line_of(text, key)
                ));
            }
        }
        Ok(s)
    }

    /// `self` with every key `over` gives replaced (flags over the file).
    pub fn overridden_by(&self, over: &Settings) -> Settings {
        // Grants come from the file only.
        macro_rules! pick {
            ($($f:ident),*) => { Settings {
                $($f: over.$f.clone().or_else(|| self.$f.clone()),)*
                grants: self.grants.clone(),
                export: self.export.clone(),
            } };
        }
        pick!(
            state_dir,
            socket,
            watchman_socket,
            retain_mib,
            retain_days,
            commit_interval_ms,
            reconcile,
            baseline_refresh_secs,
            consumer_cap_mib,
            consumer_idle_days,
            follow_stall_ms
        )
    }

    /// The daemon's configuration: these settings over the defaults.
    pub fn to_config(&self) -> crate::Config {
        let d = crate::Config::default();
        let days = |n: u64| Duration::from_secs(n.saturating_mul(86_400));
        crate::Config {
            state_dir: self.state_dir.clone().unwrap_or(d.state_dir),
            socket: self.socket.clone().unwrap_or(d.socket),
            watchman_socket: self.watchman_socket.clone(),
            queue: d.queue,
            journal: cj_journal::Options {
                retain_bytes: self
                    .retain_mib
                    .map_or(d.journal.retain_bytes, |m| m.saturating_mul(1 << 20)),
                retain_age: self.retain_days.map_or(d.journal.retain_age, days),
                pinned_cap_bytes: self
                    .consumer_cap_mib
                    .map_or(d.journal.pinned_cap_bytes, |m| m.saturating_mul(1 << 20)),
                ..d.journal
            },
            commit_interval: self
                .commit_interval_ms
                .map_or(d.commit_interval, Duration::from_millis),
            reconcile_walk_only: self.reconcile.as_deref() == Some("walk"),
            baseline_refresh: match self.baseline_refresh_secs {
                Some(0) => None,
                Some(n) => Some(Duration::from_secs(n)),
                None => d.baseline_refresh,
            },
            follow_stall: self
                .follow_stall_ms
                .map_or(d.follow_stall, Duration::from_millis),
            consumer_idle: match self.consumer_idle_days {
                Some(0) => None,
                Some(n) => Some(days(n)),
                None => d.consumer_idle,
            },
            reload: None,
            test_reconcile_delay: d.test_reconcile_delay,
            test_spill_bytes: d.test_spill_bytes,
            grants: self
                .grants
                .iter()
                .map(|g| crate::access::Grant {
                    who: match (&g.user, &g.group) {
                        (Some(u), _) => crate::access::Who::User(u.clone()),
                        (None, g) => crate::access::Who::Group(g.clone().unwrap_or_default()),
                    },
                    paths: g
                        .paths
                        .iter()
                        .map(|p| {
                            use std::os::unix::ffi::OsStrExt;
                            p.as_os_str().as_bytes().to_vec()
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The line of the `n`th (from 0) occurrence of `marker`.
fn line_of_nth(text: &str, marker: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(marker))
        .nth(n)
        .map_or(1, |(i, _)| i + 1)
}

/// The line where `key` is set (1 if not found).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map_or(1, |i| i + 1)
}

/// toml's multi-line message (with a source excerpt) as one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| "|^ ".contains(c)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_flags_do_not() {
        let file = Settings::parse(
            "# comment\nretain_mib = 100\nreconcile = \"walk\"\nbaseline_refresh_secs = 0\nfollow_stall_ms = 500\n",
        )
        .unwrap();
        let flags = Settings {
            retain_mib: Some(7),
            ..Settings::default()
        };
        let c = file.overridden_by(&flags).to_config();
        assert_eq!(c.journal.retain_bytes, 7 << 20);
        assert!(c.reconcile_walk_only);
        assert_eq!(c.baseline_refresh, None);
        assert_eq!(c.follow_stall, Duration::from_millis(500));
        assert_eq!(c.state_dir, crate::Config::default().state_dir);
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        for (text, needle) in [
            ("retain_mib = 1\nretian_days = 3\n", "line 2"),
            ("retain_mib = \"lots\"\n", "line 1"),
            ("\n\nreconcile = \"fast\"\n", "line 3"),
            ("socket = \"relative.sock\"\n", "absolute"),
            ("commit_interval_ms = 0\n", "at least 1"),
            (
                "[[grant]]\nuser = \"a\"\npaths = [\"/x\"]\n\n[[grant]]\npaths = [\"/y\"]\n",
                "line 5",
            ),
            ("[[grant]]\ngroup = \"g\"\npaths = [\"rel\"]\n", "absolute"),
            (
                "[[grant]]\nuser = \"a\"\npaths = [\"/x\"]\nwho = 1\n",
                "line 4",
            ),
        ] {
            let e = Settings::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
