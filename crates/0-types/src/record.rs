//! What the journal holds. The on-disk encoding is in `cj-journal`.

/// `MAX_HANDLE_SZ` in the kernel: no file handle is longer.
pub const HANDLE_BYTES_MAX: usize = 128;
/// `NAME_MAX`: no directory entry name is longer.
pub const NAME_BYTES_MAX: usize = 255;
/// The longest path a record may carry. Longer paths (possible in deep trees:
/// the kernel's PATH_MAX only limits single syscalls) are rejected at
/// normalisation and reported as an unresolved scope instead of truncated.
pub const PATH_BYTES_MAX: usize = 32 * 1024;

/// An opaque kernel file handle (`struct file_handle`), as fanotify reports it
/// and `name_to_handle_at` returns it. Compared byte for byte; for the
/// filesystems cj supports it includes the inode generation, so a recycled
/// inode number gives a different handle.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
}

impl FileHandle {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The kind of filesystem object a record is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[repr(u8)]
pub enum ObjectKind {
    #[default]
    Unknown = 0,
    File = 1,
    Dir = 2,
    Symlink = 3,
    /// Device nodes, FIFOs, sockets.
    Other = 4,
}

impl ObjectKind {
    pub fn from_u8(v: u8) -> Option<ObjectKind> {
        Some(match v {
            0 => ObjectKind::Unknown,
            1 => ObjectKind::File,
            2 => ObjectKind::Dir,
            3 => ObjectKind::Symlink,
            4 => ObjectKind::Other,
            _ => return None,
        })
    }

    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> ObjectKind {
        match mode & 0o170000 {
            0o100000 => ObjectKind::File,
            0o040000 => ObjectKind::Dir,
            0o120000 => ObjectKind::Symlink,
            0 => ObjectKind::Unknown,
            _ => ObjectKind::Other,
        }
    }

    /// From the wire name; `Unknown` for anything else.
    pub fn parse(name: &str) -> ObjectKind {
        [
            ObjectKind::File,
            ObjectKind::Dir,
            ObjectKind::Symlink,
            ObjectKind::Other,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
        .unwrap_or(ObjectKind::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Unknown => "unknown",
            ObjectKind::File => "file",
            ObjectKind::Dir => "dir",
            ObjectKind::Symlink => "symlink",
            ObjectKind::Other => "other",
        }
    }
}

/// What happened to a path, as a bit set. Several bits are common: the kernel
/// merges events, and queries coalesce records per path.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Changes(pub u32);

impl Changes {
    pub const CREATED: Changes = Changes(1 << 0);
    pub const DELETED: Changes = Changes(1 << 1);
    /// Content changed (write, truncate, mmap store seen at close, ...).
    pub const MODIFIED: Changes = Changes(1 << 2);
    /// Metadata changed: mode, owner, times, xattrs, link count.
    pub const ATTRIB: Changes = Changes(1 << 3);
    /// The path is the old name of a rename.
    pub const RENAMED_FROM: Changes = Changes(1 << 4);
    /// The path is the new name of a rename.
    pub const RENAMED_TO: Changes = Changes(1 << 5);
    /// A file opened for writing was closed.
    pub const CLOSE_WRITE: Changes = Changes(1 << 6);
    /// The object that had this name was replaced (a rename over it).
    pub const REPLACED: Changes = Changes(1 << 7);
    /// Reconciliation found this change by scanning (not live capture).
    pub const RECONCILED: Changes = Changes(1 << 8);

    pub const NAMES: [(Changes, &'static str); 9] = [
        (Changes::CREATED, "created"),
        (Changes::DELETED, "deleted"),
        (Changes::MODIFIED, "modified"),
        (Changes::ATTRIB, "attrib"),
        (Changes::RENAMED_FROM, "renamed_from"),
        (Changes::RENAMED_TO, "renamed_to"),
        (Changes::CLOSE_WRITE, "close_write"),
        (Changes::REPLACED, "replaced"),
        (Changes::RECONCILED, "reconciled"),
    ];

    pub fn contains(self, other: Changes) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn intersects(self, other: Changes) -> bool {
        self.0 & other.0 != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Changes::NAMES
            .into_iter()
            .filter(move |(bit, _)| self.contains(*bit))
            .map(|(_, name)| name)
    }
}

impl std::ops::BitOr for Changes {
    type Output = Changes;
    fn bitor(self, rhs: Changes) -> Changes {
        Changes(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Changes {
    type Output = Changes;
    fn bitand(self, rhs: Changes) -> Changes {
        Changes(self.0 & rhs.0)
    }
}

/// The changes of `self` that are not in `rhs`.
impl std::ops::Sub for Changes {
    type Output = Changes;
    fn sub(self, rhs: Changes) -> Changes {
        Changes(self.0 & !rhs.0)
    }
}

impl std::ops::BitOrAssign for Changes {
    fn bitor_assign(&mut self, rhs: Changes) {
        self.0 |= rhs.0;
    }
}

/// Normalisation looked at the name after the event and found an object there.
pub const EVENT_FLAG_VERIFIED_PRESENT: u8 = 1 << 0;
/// ... and it was the very object the event was about (same handle).
pub const EVENT_FLAG_VERIFIED_SAME: u8 = 1 << 1;
/// The event concerned an object whose path could not be determined (a
/// handle-only event on a file with no known name). `path` is empty; queries
/// must treat the whole filesystem's tracked roots as needing a rescan.
pub const EVENT_FLAG_PATH_UNKNOWN: u8 = 1 << 2;

/// What `statx` (without following symlinks) said about a path: the fields
/// reconciliation compares. Journaled with an event (`EventRecord::stat`)
/// and stored per entry in baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stat {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stat {
    /// The fields of a `statx` result (asked for at least `STATX_BASIC_STATS`
    /// minus atime and blocks). Times in ns since the epoch, saturating
    /// rather than overflowing on absurd values.
    pub fn from_statx(st: &libc::statx) -> Stat {
        let ns = |t: libc::statx_timestamp| {
            t.tv_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::from(t.tv_nsec))
        };
        Stat {
            ino: st.stx_ino,
            mode: u32::from(st.stx_mode),
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: st.stx_nlink,
            size: st.stx_size,
            mtime_ns: ns(st.stx_mtime),
            ctime_ns: ns(st.stx_ctime),
        }
    }
}

/// One normalised change, as journaled.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EventRecord {
    pub changes: Changes,
    pub kind: ObjectKind,
    /// `EVENT_FLAG_*` bits.
    pub flags: u8,
    /// The filesystem (fanotify fsid: both 32-bit words of `f_fsid`).
    pub fsid: u64,
    /// The object the event is about, if the kernel reported it.
    pub object: FileHandle,
    /// Parent directory and name. For a rename: the new parent and name.
    pub dir: FileHandle,
    pub name: Vec<u8>,
    /// For a rename: the old parent directory and name. Empty otherwise.
    pub old_dir: FileHandle,
    pub old_name: Vec<u8>,
    /// Absolute path when normalised (new path for a rename).
    pub path: Vec<u8>,
    /// For a rename: the old absolute path. Empty otherwise.
    pub old_path: Vec<u8>,
    /// What was at `path` when normalisation looked (after the event), if
    /// anything: lets reconciliation tell a change it already journaled
    /// from one made during a gap.
    pub stat: Option<Stat>,
    /// For a reconciled record: the seq of the newest gap (or unknown-path)
    /// record below its root that the reconciliation closed; 0 otherwise.
    pub gap_seq: u64,
}

/// Why history has a hole.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum GapReason {
    /// The daemon was stopped cleanly and started again.
    DaemonDown = 1,
    /// The daemon died without a clean stop (crash, kill -9, power loss).
    UncleanStop = 2,
    /// The kernel queue overflowed and dropped events.
    QueueOverflow = 3,
    /// A tracked filesystem was unmounted or remounted (the mark is lost).
    Unmounted = 4,
    /// The journal could not be read for part of the range.
    JournalDamaged = 5,
    /// Capture could not keep up or failed internally.
    CaptureError = 6,
    /// The machine booted since the daemon last ran (it was stopped cleanly
    /// before; an unclean stop before a new boot is `UncleanStop`).
    NewBoot = 7,
    /// A tracked root now holds another filesystem (new mkfs, another
    /// device) than when its baseline was taken.
    FsChanged = 8,
    /// The wall clock was set: time-based comparisons since are void, so
    /// the next reconciliation compares every entry.
    ClockStep = 9,
    /// The state directory's filesystem was full: changes from the gap's
    /// start until this record could not be journaled (format 2).
    StateDiskFull = 10,
}

impl GapReason {
    pub fn from_u8(v: u8) -> Option<GapReason> {
        Some(match v {
            1 => GapReason::DaemonDown,
            2 => GapReason::UncleanStop,
            3 => GapReason::QueueOverflow,
            4 => GapReason::Unmounted,
            5 => GapReason::JournalDamaged,
            6 => GapReason::CaptureError,
            7 => GapReason::NewBoot,
            8 => GapReason::FsChanged,
            9 => GapReason::ClockStep,
            10 => GapReason::StateDiskFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::DaemonDown => "daemon_down",
            GapReason::UncleanStop => "unclean_stop",
            GapReason::QueueOverflow => "queue_overflow",
            GapReason::Unmounted => "unmounted",
            GapReason::JournalDamaged => "journal_damaged",
            GapReason::CaptureError => "capture_error",
            GapReason::NewBoot => "new_boot",
            GapReason::FsChanged => "fs_changed",
            GapReason::ClockStep => "clock_step",
            GapReason::StateDiskFull => "state_disk_full",
        }
    }
}

/// A hole in history: changes under `scope` between `start_time_ns` and this
/// record may be missing from the journal.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GapRecord {
    pub reason: GapReason,
    /// 0 when the gap concerns every tracked filesystem.
    pub fsid: u64,
    /// The path below which history is incomplete; empty means every root.
    pub scope: Vec<u8>,
    /// Wall-clock time the gap began (last durable point, unmount time, ...).
    pub start_time_ns: u64,
    /// Human-readable detail.
    pub detail: Vec<u8>,
    /// `GAP_FLAG_*` bits.
    pub flags: u8,
}

/// A start gap after a clean stop that ended quiescent: every stat in the
/// journal before this record was taken before the gap began (a read found
/// the kernel queue empty after the last one). Reconciliation may then
/// compare with the journal's view (design 11.7).
pub const GAP_FLAG_QUIESCENT: u8 = 1 << 0;

/// A root started or stopped being tracked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RootRecord {
    pub fsid: u64,
    pub path: Vec<u8>,
}

/// Reconciliation closed the gaps (and unknown-path records) with
/// `after_seq < seq <= through_seq` below `scope`: the changes they hid are
/// the `reconciled` records journaled before this one. Gaps at or before
/// `after_seq` predate the baseline the walk was compared with, so this
/// record says nothing about them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResolvedRecord {
    pub after_seq: u64,
    pub through_seq: u64,
    pub fsid: u64,
    /// A tracked root.
    pub scope: Vec<u8>,
    /// How many reconciled records the walk produced.
    pub records: u64,
}

/// A drain mark: every event the kernel queued before a read that found
/// the queue empty has its record before this one, and every stat in the
/// records before this one was taken before that read started (ordered by
/// the monotonic clock). `drained_before_ns` is that read's wall-clock start,
/// for people; reconciliation after a crash or an overflow uses the mark's
/// position (design 11.7).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MarkRecord {
    pub drained_before_ns: u64,
}

/// The payload of one journal record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RecordBody {
    Event(EventRecord),
    Gap(GapRecord),
    Mark(MarkRecord),
    Track(RootRecord),
    Untrack(RootRecord),
    Resolved(ResolvedRecord),
}

/// One journal record: the payload plus what the journal assigned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub seq: u64,
    /// Wall-clock time (ns since the Unix epoch) the record was appended.
    pub time_ns: u64,
    pub body: RecordBody,
}
