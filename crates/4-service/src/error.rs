use std::fmt;
use std::path::PathBuf;

/// Errors that stop the daemon (start-up or a fatal runtime failure).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    Journal(cj_journal::Error),
    Fanotify(cj_capture::InitError),
    /// A state file is not what cj wrote.
    BadState {
        path: PathBuf,
        detail: String,
    },
    /// Another daemon answers on the socket.
    SocketInUse {
        path: PathBuf,
    },
    /// The journal writer failed; durability can no longer be promised.
    WriterFailed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => write!(f, "{op} {}: {source}", path.display()),
            Error::Journal(e) => write!(f, "{e}"),
            Error::Fanotify(e) => write!(f, "{e}"),
            Error::BadState { path, detail } => write!(
                f,
                "state file {} is damaged: {detail}; fix or remove it (removing roots.json \
                 forgets the tracked roots; track them again)",
                path.display()
            ),
            Error::SocketInUse { path } => write!(
                f,
                "another cj daemon is answering on {}; stop it first or pass --socket",
                path.display()
            ),
            Error::WriterFailed(e) => write!(
                f,
                "journal writer failed ({e}); restart the daemon: recovery will truncate any \
                 unacknowledged tail and record a gap"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<cj_journal::Error> for Error {
    fn from(e: cj_journal::Error) -> Self {
        Error::Journal(e)
    }
}

pub(crate) fn io(
    path: impl Into<PathBuf>,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, op, source }
}
