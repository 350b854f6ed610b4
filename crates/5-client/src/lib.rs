//! Stage 5 of cj: the client library.
//!
//! ```no_run
//! let mut client = cj_client::Client::connect_default()?;
//! let cursor = client.cursor(None)?;
//! // ... later, even after a reboot:
//! let answer = client.changes(&cursor, None)?;
//! if !answer.complete {
//!     for r in &answer.rescan { /* rescan r.path recursively */ }
//! }
//! for change in &answer.entries { /* look at change.path */ }
//! let next = answer.cursor; // store it for the next call
//! # Ok::<(), cj_client::Error>(())
//! ```
//!
//! Paths are bytes (`Vec<u8>`): Linux names need not be UTF-8.

#[cfg(feature = "async")]
pub mod r#async;
mod client;
mod follow;

pub use cj_types::follow::FollowLine;
pub use cj_types::protocol::{Answer, Change, ChangeKind, Rescan, RescanReason};
pub use cj_types::protocol::{EXIT_COMPLETE, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_USAGE};
pub use cj_types::ObjectKind;
pub use client::{
    parse_change, parse_final, socket_path, Client, Error, Hello, Since, DEFAULT_SOCKET,
    RESPONSE_LINE_BYTES_MAX,
};
pub use follow::{Follow, FollowOptions};
