//! The daemon's log lines (stderr; journald adds the time).

/// One log line. Paths in messages go through `cj_types::log_path`; as a
/// last defence, a line break in a message is escaped, so nothing a user
/// names can forge a log line (issue 9, defect 10).
pub(crate) fn log(msg: impl std::fmt::Display) {
    let text = msg.to_string().replace('\n', "\\n");
    eprintln!("cj daemon: {text}");
}
