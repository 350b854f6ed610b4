//! Stage 1 of cj: kernel capture.
//!
//! One fanotify group in FID mode (`FAN_REPORT_DFID_NAME_TARGET`) with a
//! filesystem mark per tracked filesystem: no watch per directory, and the
//! kernel reports directory handles and names instead of open files.
//!
//! This crate only talks to the kernel and parses what it says. It does not
//! interpret events: the kernel merges and reorders them (see
//! `../shared/notes/kernel.md` and `docs/design.md`), so they are hints that
//! stage 2 (`cj-normalize`) checks against the filesystem.

mod parse;
mod sys;

pub use parse::{parse, DirEntry, Event, Events, Fid, ParseError, METADATA_LEN};
pub use sys::{fsid_of, Fanotify, InitError, MarkError, QueueLimit, Waker, EVENT_MASK};

/// Mask bits, re-exported so later stages need not depend on `libc`.
pub mod mask {
    pub const ACCESS: u64 = libc::FAN_ACCESS;
    pub const MODIFY: u64 = libc::FAN_MODIFY;
    pub const ATTRIB: u64 = libc::FAN_ATTRIB;
    pub const CLOSE_WRITE: u64 = libc::FAN_CLOSE_WRITE;
    pub const MOVED_FROM: u64 = libc::FAN_MOVED_FROM;
    pub const MOVED_TO: u64 = libc::FAN_MOVED_TO;
    pub const CREATE: u64 = libc::FAN_CREATE;
    pub const DELETE: u64 = libc::FAN_DELETE;
    pub const DELETE_SELF: u64 = libc::FAN_DELETE_SELF;
    pub const MOVE_SELF: u64 = libc::FAN_MOVE_SELF;
    pub const RENAME: u64 = libc::FAN_RENAME;
    pub const Q_OVERFLOW: u64 = libc::FAN_Q_OVERFLOW;
    pub const ONDIR: u64 = libc::FAN_ONDIR;
}
