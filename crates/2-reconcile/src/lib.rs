//! Reconciliation: finding exactly what changed while history had a gap.
//!
//! The generic method works on every filesystem: a walk of the tracked tree
//! (directory descriptors, `statx` relative to them, no symlink ever
//! followed) is compared with the [`Snapshot`] taken by the previous walk.
//! Every difference becomes an ordinary journal record marked `reconciled`.
//!
//! Why a difference is never missed: every change to an entry moves its
//! ctime (which user space cannot set), and a snapshot records the ctime it
//! saw with `statx`, after which the kernel gives the next change a distinct
//! timestamp (multigrain timestamps). So an entry that changed after the
//! snapshot's walk differs in ctime, inode, type or presence. The service
//! uses a snapshot only as the baseline for gaps that began after its walk
//! ended (`docs/design.md`, "Reconciliation").

mod diff;
mod entries;
pub mod fast;
pub mod fold;
mod pwalk;
mod refresh;
mod runs;
mod snapshot;
mod store;
mod walk;

pub use diff::{diff, diff_scope, diff_transitions, refresh_records, Seen, Touched};
pub use entries::{Entries, Range};
pub use pwalk::{walk, walk_scope, WALK_THREADS};
pub use refresh::{changed_by_paths, refresh, Transitions};
pub use runs::{Spill, IN_MEMORY_BYTES_MAX, RUN_BYTES_MAX};
pub use snapshot::{Snapshot, SnapshotError, Stat};
pub use walk::{open_root, WalkError, WalkProgress};
