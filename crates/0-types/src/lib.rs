//! The vocabulary every cj stage speaks: journal records, cursors, file
//! handles, change flags and object kinds.
//!
//! Its only I/O is small helpers every stage shares (`fsutil`, `sys`:
//! atomic state files, path calls at any depth). The byte layout of records on disk lives in
//! `cj-journal` (see `docs/design.md`); the types here are what flows between
//! the stages: capture -> normalisation -> journal -> service -> client.

pub mod bytes;
mod cursor;
pub mod follow;
pub mod fsutil;
pub mod path;
pub mod protocol;
mod record;
pub mod sys;

pub use cursor::{Cursor, CursorEncoder, CursorError, JournalId, CURSOR_LEN};
pub use path::{escape_path, log_path, unescape_path, PathText, LOG_PATH_BYTES_MAX};
pub use record::{
    Changes, EventRecord, FileHandle, GapReason, GapRecord, MarkRecord, ObjectKind, Record,
    RecordBody, ResolvedRecord, RootRecord, Stat, EVENT_FLAG_PATH_UNKNOWN,
    EVENT_FLAG_VERIFIED_PRESENT, EVENT_FLAG_VERIFIED_SAME, GAP_FLAG_QUIESCENT, HANDLE_BYTES_MAX,
    NAME_BYTES_MAX, PATH_BYTES_MAX,
};
