use std::fmt;
use std::path::PathBuf;

/// Errors of the journal. Each names the file concerned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A file's bytes are not what cj wrote: a damaged header, or a
    /// segment that belongs to another journal.
    Corrupt { path: PathBuf, detail: String },
    /// An earlier write or sync failed. The writer refuses further appends
    /// until the journal is reopened, which re-runs recovery: after a failed
    /// fdatasync the page cache may no longer match the disk.
    Poisoned,
    /// The journal directory is locked by another running daemon.
    Locked { path: PathBuf },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => {
                write!(f, "journal {op} failed on {}: {source}", path.display())
            }
            Error::Corrupt { path, detail } => write!(
                f,
                "journal file {} is damaged: {detail}; move it aside to start a new journal \
                 (clients will be told to rescan)",
                path.display()
            ),
            Error::Poisoned => f.write_str(
                "journal writer stopped after an earlier write error; restart the daemon to recover",
            ),
            Error::Locked { path } => write!(
                f,
                "journal {} is in use by another cj daemon; stop it first or use another --state-dir",
                path.display()
            ),
        }
    }
}

impl Error {
    /// The state filesystem is full (or the quota is reached): the one
    /// failure the daemon waits out instead of stopping.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn io(
    path: impl Into<PathBuf>,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, op, source }
}
