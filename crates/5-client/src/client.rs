//! The request/answer client and its errors.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use cj_types::protocol::put_path;
use cj_types::protocol::{Answer, Change};
use serde_json::{json, Map, Value};

/// Where the daemon listens unless `CJ_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cj/cj.sock";
/// One answer line longer than this is a protocol error.
pub const RESPONSE_LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Nothing listens on the socket.
    NotRunning {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The socket or the daemon refused us.
    PermissionDenied {
        socket: PathBuf,
        detail: String,
    },
    /// The daemon answered with an error.
    Daemon {
        code: String,
        message: String,
    },
    /// The daemon's answer was not understood.
    Protocol(String),
    Io(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotRunning { socket, source } => write!(
                f,
                "the cj daemon is not running (cannot connect to {}: {source}); start it with \
                 `cj daemon`, or set CJ_SOCKET / --socket if it listens elsewhere",
                socket.display()
            ),
            Error::PermissionDenied { socket, detail } => {
                write!(f, "the cj daemon at {} refused: {detail}", socket.display())
            }
            Error::Daemon { message, .. } => f.write_str(message),
            Error::Protocol(e) => write!(f, "unexpected answer from the cj daemon: {e}"),
            Error::Io(e) => write!(f, "talking to the cj daemon: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

pub struct Client {
    socket: PathBuf,
    pub(crate) reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// The socket path: `CJ_SOCKET` if set, else the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("CJ_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

impl Client {
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(&socket_path())
    }

    pub fn connect(socket: &Path) -> Result<Client, Error> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                socket: socket.to_path_buf(),
                detail: e.to_string(),
            },
            _ => Error::NotRunning {
                socket: socket.to_path_buf(),
                source: e,
            },
        })?;
        Ok(Client {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub(crate) fn request(&mut self, req: Value) -> Result<(), Error> {
        let mut line = serde_json::to_vec(&req).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            // The daemon may have refused the connection before reading
            // (too many clients): its reason is waiting to be read.
            return Err(match self.line() {
                Err(refused @ (Error::Daemon { .. } | Error::PermissionDenied { .. })) => refused,
                _ => Error::Io(e),
            });
        }
        Ok(())
    }

    /// Reads one answer line; daemon errors become `Err`.
    pub(crate) fn line(&mut self) -> Result<Map<String, Value>, Error> {
        let mut buf = Vec::new();
        self.line_bytes(&mut buf)?;
        self.parse_line(&buf)
    }

    /// The next line's bytes, into `buf` (cleared first).
    fn line_bytes(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.clear();
        let n = std::io::Read::take(&mut self.reader, RESPONSE_LINE_BYTES_MAX as u64)
            .read_until(b'\n', buf)?;
        if n == 0 {
            return Err(Error::Protocol("the daemon closed the connection".into()));
        }
        Ok(())
    }

    fn parse_line(&self, buf: &[u8]) -> Result<Map<String, Value>, Error> {
        let v: Value = serde_json::from_slice(buf).map_err(|e| Error::Protocol(e.to_string()))?;
        let Value::Object(m) = v else {
            return Err(Error::Protocol("answer is not an object".into()));
        };
        if let Some(msg) = m.get("error").and_then(|e| e.as_str()) {
            let code = m
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string();
            if code == "permission_denied" {
                return Err(Error::PermissionDenied {
                    socket: self.socket.clone(),
                    detail: msg.to_string(),
                });
            }
            return Err(Error::Daemon {
                code,
                message: msg.to_string(),
            });
        }
        Ok(m)
    }

    pub(crate) fn with_path(op: &str, path: Option<&[u8]>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("op".into(), Value::from(op));
        if let Some(p) = path {
            put_path(&mut m, "path", p);
        }
        m
    }

    /// The handshake: the daemon's protocol version, name and
    /// capabilities (`docs/protocol.md`).
    pub fn hello(&mut self) -> Result<Hello, Error> {
        self.request(json!({"op": "hello", "protocol": cj_types::protocol::PROTOCOL_VERSION}))?;
        let m = self.line()?;
        Ok(Hello {
            protocol: m.get("protocol").and_then(Value::as_u64).unwrap_or(0),
            server: m
                .get("server")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            capabilities: m
                .get("capabilities")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Adds a durable consumer, starting now (or at `since`), optionally
    /// limited to `path`. Returns its starting cursor.
    pub fn consumer_add(
        &mut self,
        name: &str,
        path: Option<&[u8]>,
        since: Option<&str>,
    ) -> Result<String, Error> {
        let mut req = Client::with_path("consumer_add", path);
        req.insert("consumer".into(), Value::from(name));
        if let Some(c) = since {
            req.insert("cursor".into(), Value::from(c));
        }
        self.request(Value::Object(req))?;
        let m = self.line()?;
        Ok(m.get("cursor")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Records that the consumer has processed everything up to `cursor`
    /// (durably: retention may now drop what came before).
    pub fn consumer_ack(&mut self, name: &str, cursor: &str) -> Result<(), Error> {
        self.request(json!({"op": "consumer_ack", "consumer": name, "cursor": cursor}))?;
        self.line().map(|_| ())
    }

    /// Leaves a note about the consumer's state (for example why it is not
    /// moving), shown by `cj status` and `consumer_list` until the next
    /// note; `""` clears it. The consumer's place does not move.
    pub fn consumer_note(&mut self, name: &str, note: &str) -> Result<(), Error> {
        self.request(json!({"op": "consumer_ack", "consumer": name, "note": note}))?;
        self.line().map(|_| ())
    }

    pub fn consumer_remove(&mut self, name: &str) -> Result<(), Error> {
        self.request(json!({"op": "consumer_remove", "consumer": name}))?;
        self.line().map(|_| ())
    }

    /// The consumers and their places (`consumer_list` in the protocol).
    pub fn consumers(&mut self) -> Result<Map<String, Value>, Error> {
        self.request(json!({"op": "consumer_list"}))?;
        self.line()
    }

    /// Every change since the consumer's acknowledged cursor, in its scope
    /// (narrowed to `path`). Acknowledge the answer's cursor once the
    /// changes are processed.
    pub fn consumer_changes(
        &mut self,
        name: &str,
        path: Option<&[u8]>,
        wait: Option<std::time::Duration>,
    ) -> Result<Answer, Error> {
        let mut entries = Vec::new();
        let last = self.changes_raw(Since::Consumer(name), path, wait, |m| {
            entries.push(parse_change(m)?);
            Ok(())
        })?;
        parse_final(&last, entries)
    }

    pub fn ping(&mut self) -> Result<(), Error> {
        self.request(json!({"op": "ping"}))?;
        self.line().map(|_| ())
    }

    /// A cursor covering every change made before this call.
    pub fn cursor(&mut self, path: Option<&[u8]>) -> Result<String, Error> {
        self.request(Value::Object(Client::with_path("cursor", path)))?;
        let m = self.line()?;
        m.get("cursor")
            .and_then(|c| c.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol("no cursor in answer".into()))
    }

    /// Streams the raw answer lines of `changes since` to `f` (entries, then
    /// the final object holding `cursor`). Returns the final object.
    ///
    /// With `wait`, the daemon first waits (up to that long) for
    /// reconciliation to close the gaps in the range, so that an answer
    /// spanning a restart or an overflow can still be complete.
    pub fn changes_raw(
        &mut self,
        from: Since<'_>,
        path: Option<&[u8]>,
        wait: Option<std::time::Duration>,
        mut f: impl FnMut(&Map<String, Value>) -> Result<(), Error>,
    ) -> Result<Map<String, Value>, Error> {
        self.request(Value::Object(Client::changes_request(from, path, wait)))?;
        loop {
            let m = self.line()?;
            if m.contains_key("cursor") {
                return Ok(m);
            }
            f(&m)?;
        }
    }

    /// [`Client::changes_raw`] that hands over each entry as a [`Change`],
    /// read straight from its line (no JSON map per line); returns the
    /// final line's object.
    pub fn changes_each(
        &mut self,
        from: Since<'_>,
        path: Option<&[u8]>,
        wait: Option<std::time::Duration>,
        mut f: impl FnMut(Change) -> Result<(), Error>,
    ) -> Result<Map<String, Value>, Error> {
        self.request(Value::Object(Client::changes_request(from, path, wait)))?;
        let mut buf = Vec::new();
        loop {
            self.line_bytes(&mut buf)?;
            if let Some(change) = Change::from_json_line(&buf) {
                f(change)?;
                continue;
            }
            let m = self.parse_line(&buf)?;
            if m.contains_key("cursor") {
                return Ok(m);
            }
            f(parse_change(&m)?)?;
        }
    }

    fn changes_request(
        from: Since<'_>,
        path: Option<&[u8]>,
        wait: Option<std::time::Duration>,
    ) -> Map<String, Value> {
        let mut req = Client::with_path("changes", path);
        match from {
            Since::Cursor(since) => req.insert("since".into(), Value::from(since)),
            Since::Consumer(name) => req.insert("consumer".into(), Value::from(name)),
        };
        if let Some(w) = wait {
            req.insert("wait_ms".into(), Value::from(w.as_millis() as u64));
        }
        req
    }

    /// Every change since `since`, coalesced per path.
    pub fn changes(&mut self, since: &str, path: Option<&[u8]>) -> Result<Answer, Error> {
        self.changes_wait(since, path, None)
    }

    /// [`Client::changes`], waiting up to `wait` for reconciliation.
    pub fn changes_wait(
        &mut self,
        since: &str,
        path: Option<&[u8]>,
        wait: Option<std::time::Duration>,
    ) -> Result<Answer, Error> {
        let mut entries = Vec::new();
        let last = self.changes_each(Since::Cursor(since), path, wait, |c| {
            entries.push(c);
            Ok(())
        })?;
        parse_final(&last, entries)
    }

    pub fn track(&mut self, path: &[u8]) -> Result<(), Error> {
        self.request(Value::Object(Client::with_path("track", Some(path))))?;
        self.line().map(|_| ())
    }

    pub fn untrack(&mut self, path: &[u8]) -> Result<(), Error> {
        self.request(Value::Object(Client::with_path("untrack", Some(path))))?;
        self.line().map(|_| ())
    }

    /// The daemon's status document (see `docs/protocol.md`).
    pub fn status(&mut self) -> Result<Map<String, Value>, Error> {
        self.request(json!({"op": "status"}))?;
        self.line()
    }
}

/// Where a `changes` answer starts.
#[derive(Debug, Clone, Copy)]
pub enum Since<'a> {
    /// After this cursor.
    Cursor(&'a str),
    /// After the durable consumer's acknowledged cursor, in its scope.
    Consumer(&'a str),
}

/// The answer to `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u64,
    /// `cj <version>`.
    pub server: String,
    /// Named features (`follow`, `consumers`, ...).
    pub capabilities: Vec<String>,
}

impl Hello {
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

pub fn parse_change(m: &Map<String, Value>) -> Result<Change, Error> {
    Change::from_json(m).map_err(Error::Protocol)
}

pub fn parse_final(m: &Map<String, Value>, entries: Vec<Change>) -> Result<Answer, Error> {
    Answer::from_final_json(m, entries).map_err(Error::Protocol)
}
