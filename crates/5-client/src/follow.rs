//! A blocking iterator over a `follow` stream, with reconnection.
//!
//! ```no_run
//! use cj_client::{Follow, FollowLine, FollowOptions};
//! let opts = FollowOptions::since("cj1.<id>.<seq>.<check>");
//! for line in Follow::start(&cj_client::socket_path(), opts)? {
//!     match line? {
//!         FollowLine::Change { change, cursor, .. } => { /* change.path ... */ }
//!         FollowLine::Rescan { scopes, .. } => { /* rescan each scope.path */ }
//!         FollowLine::HistoryDone { .. } => { /* caught up: live from here */ }
//!         _ => {}
//!     }
//! }
//! # Ok::<(), cj_client::Error>(())
//! ```
//!
//! When the daemon goes away (restart, crash, a cut-off for reading too
//! slowly) the iterator reconnects and resumes after the last line it
//! returned, so a line is never skipped nor returned twice. With
//! [`FollowOptions::reconnect`] off it ends with the error instead.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cj_types::follow::{Decoded, FollowLine};
use serde_json::{Map, Value};

use crate::client::{Client, Error, RESPONSE_LINE_BYTES_MAX};

/// First wait before reconnecting; doubled up to `RECONNECT_WAIT_MAX`.
pub const RECONNECT_WAIT_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_WAIT_MAX: Duration = Duration::from_secs(2);

/// What to follow and from where.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// Replay from this cursor first (`None`: start at the present, or at
    /// the consumer's acknowledged cursor).
    pub since: Option<String>,
    /// A durable consumer: its scope, and its cursor unless `since` is set.
    pub consumer: Option<String>,
    /// Only changes at or below this absolute path.
    pub path: Option<Vec<u8>>,
    /// Reconnect and resume when the daemon goes away (default on).
    pub reconnect: bool,
    /// Ask for a heartbeat line this often when nothing happens.
    pub heartbeat: Option<Duration>,
}

impl FollowOptions {
    /// From the present on.
    pub fn now() -> FollowOptions {
        FollowOptions {
            reconnect: true,
            ..FollowOptions::default()
        }
    }

    /// Everything after `cursor`, then live.
    pub fn since(cursor: &str) -> FollowOptions {
        FollowOptions {
            since: Some(cursor.to_string()),
            ..FollowOptions::now()
        }
    }

    /// A durable consumer's stream: after its acknowledged cursor, in its
    /// scope.
    pub fn consumer(name: &str) -> FollowOptions {
        FollowOptions {
            consumer: Some(name.to_string()),
            ..FollowOptions::now()
        }
    }

    /// The request line's object, resuming after `resume` if set.
    pub fn request(&self, resume: Option<&str>) -> Map<String, Value> {
        let mut req = Client::with_path("follow", self.path.as_deref());
        if let Some(c) = resume.or(self.since.as_deref()) {
            req.insert("since".into(), Value::from(c));
        }
        if let Some(n) = &self.consumer {
            req.insert("consumer".into(), Value::from(n.as_str()));
        }
        if let Some(h) = self.heartbeat {
            req.insert("heartbeat_ms".into(), Value::from(h.as_millis() as u64));
        }
        req
    }
}

/// Whether a daemon error ends a stream for good, or the stream may be
/// resumed from its cursor.
pub fn resumable(code: &str) -> bool {
    matches!(code, "shutting_down" | "slow_consumer" | "busy" | "timeout")
}

/// Errors after which resuming cannot help.
pub(crate) fn is_final(e: &Error) -> bool {
    match e {
        Error::Daemon { code, .. } => !resumable(code),
        Error::PermissionDenied { .. } => true,
        _ => false,
    }
}

/// One line as read (with its newline): the follow line, `Ok(None)` for a
/// kind this version does not know, or why the stream ended (a daemon
/// error line, the end of the connection, a line cut short). Keeps
/// `cursor` at the last line's.
pub(crate) fn decode_line(
    line: &[u8],
    cursor: &mut Option<String>,
) -> Result<Option<FollowLine>, Error> {
    if line.last() != Some(&b'\n') {
        // A line cut short is not a line: it is read again on resume.
        return Err(Error::Protocol("the daemon closed the connection".into()));
    }
    match cj_types::follow::decode(line).map_err(Error::Protocol)? {
        Decoded::Error { code, message } => Err(Error::Daemon { code, message }),
        Decoded::Line { line, cursor: c } => {
            if c.is_some() {
                *cursor = c;
            }
            Ok(line)
        }
    }
}

/// A follow stream. Iterate it for lines.
pub struct Follow {
    socket: PathBuf,
    options: FollowOptions,
    reader: Option<BufReader<std::os::unix::net::UnixStream>>,
    /// The cursor of the last line returned.
    cursor: Option<String>,
    /// Why the stream was last resumed, until [`Follow::take_notice`].
    notice: Option<String>,
    done: bool,
    line: Vec<u8>,
}

impl Follow {
    /// Connects and sends the request. A daemon that is not running is an
    /// error here; a refused request (an unknown consumer, a path not
    /// tracked) is the first item, whatever `reconnect` says.
    pub fn start(socket: &Path, options: FollowOptions) -> Result<Follow, Error> {
        let mut f = Follow {
            socket: socket.to_path_buf(),
            options,
            reader: None,
            cursor: None,
            notice: None,
            done: false,
            line: Vec::new(),
        };
        f.connect()?;
        Ok(f)
    }

    /// The cursor of the last line returned: resume after it.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Whether more input is already buffered (the next line is at hand):
    /// a printer may wait with flushing until it is not.
    pub fn pending(&self) -> bool {
        self.reader.as_ref().is_some_and(|r| !r.buffer().is_empty())
    }

    /// Why the stream was resumed on a new connection since the last call
    /// (the daemon restarted, or cut this reader off for reading slowly).
    pub fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }

    fn connect(&mut self) -> Result<(), Error> {
        let mut client = Client::connect(&self.socket)?;
        let req = self.options.request(self.cursor.as_deref());
        client.request(Value::Object(req))?;
        self.reader = Some(client.reader);
        Ok(())
    }

    /// One step: a line, or an error that may be resumed.
    fn step(&mut self) -> Result<Option<FollowLine>, Error> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| Error::Protocol("not connected".into()))?;
        self.line.clear();
        reader
            .by_ref()
            .take(RESPONSE_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut self.line)?;
        decode_line(&self.line, &mut self.cursor)
    }

    /// Reconnects until it works (waiting longer each time), unless the
    /// error is final.
    fn resume(&mut self, why: Error) -> Result<(), Error> {
        if is_final(&why) || !self.options.reconnect {
            return Err(why);
        }
        self.reader = None;
        let mut wait = RECONNECT_WAIT_MIN;
        loop {
            std::thread::sleep(wait);
            match self.connect() {
                Ok(()) => {
                    self.notice = Some(format!("resumed after: {why}"));
                    return Ok(());
                }
                Err(e @ (Error::Daemon { .. } | Error::PermissionDenied { .. })) if !matches!(&e, Error::Daemon { code, .. } if resumable(code)) => {
                    return Err(e)
                }
                Err(_) => wait = (wait * 2).min(RECONNECT_WAIT_MAX),
            }
        }
    }
}

impl Iterator for Follow {
    type Item = Result<FollowLine, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.step() {
                Ok(Some(line)) => return Some(Ok(line)),
                // A kind of line this version does not know.
                Ok(None) => {}
                Err(e) => {
                    if let Err(e) = self.resume(e) {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cut_short_errors_and_unknown_kinds_are_told_apart() {
        let mut cursor = None;
        let whole = b"{\"history_done\":true,\"cursor\":\"c1\"}\n";
        let got = decode_line(whole, &mut cursor).unwrap();
        assert_eq!(
            got,
            Some(FollowLine::HistoryDone {
                cursor: "c1".into()
            })
        );
        assert_eq!(cursor.as_deref(), Some("c1"));
        // Cut short: not a line, and the cursor stays.
        assert!(decode_line(&whole[..10], &mut cursor).is_err());
        assert!(decode_line(b"", &mut cursor).is_err());
        assert_eq!(cursor.as_deref(), Some("c1"));
        // A newer kind of line: skipped, its cursor kept.
        let newer = b"{\"something_new\":1,\"cursor\":\"c2\"}\n";
        assert_eq!(decode_line(newer, &mut cursor).unwrap(), None);
        assert_eq!(cursor.as_deref(), Some("c2"));
        let cut = b"{\"error\":\"slow\",\"code\":\"slow_consumer\"}\n";
        let e = decode_line(cut, &mut cursor).unwrap_err();
        assert!(!is_final(&e), "{e}");
        let bad = b"{\"error\":\"who\",\"code\":\"unknown_consumer\"}\n";
        assert!(is_final(&decode_line(bad, &mut cursor).unwrap_err()));
    }
}
