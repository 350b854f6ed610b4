//! Integration tests. They need root (fanotify filesystem marks, loop
//! devices) and mkfs.ext4, mkfs.xfs and mkfs.btrfs; `.ci/run` installs them.

mod bad_input;
mod export;
mod follow;
mod git;
mod grants;
mod hardening;
mod harness;
mod operations;
mod oracle;
mod precision;
mod restarts;
mod scoped;
mod service;
mod snapshot;
mod unmount;
mod watchman;
mod workload;
