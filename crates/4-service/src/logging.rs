//! The daemon's log lines, through `tracing` (the `cj` binary installs a
//! subscriber writing one line per event to stderr; under systemd each line
//! carries its priority for the journal, which adds the time).

/// One log line. Paths in messages go through `cj_types::log_path`; as a
/// last defence, a line break in a message is escaped, so nothing a user
/// names can forge a log line (issue 9, defect 10).
pub(crate) fn log(msg: impl std::fmt::Display) {
    tracing::info!("cj daemon: {}", escaped(msg));
}

/// A problem the daemon works around (it goes on).
pub(crate) fn warn(msg: impl std::fmt::Display) {
    tracing::warn!("cj daemon: {}", escaped(msg));
}

fn escaped(msg: impl std::fmt::Display) -> String {
    msg.to_string().replace('\n', "\\n")
}
