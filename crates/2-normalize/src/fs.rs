//! The seam under normalisation: every question it asks the filesystem.
//! [`RealFs`] asks the kernel (`sys`); tests put an in-memory filesystem in
//! its place, so the normaliser's decisions (handle to path, verification,
//! hard links, directory moves) are table-tested without root. Directory
//! tokens are descriptors either way: the fake hands out descriptors of
//! `/dev/null` and keys its directories by their numbers.

use std::io;
use std::os::unix::io::{OwnedFd, RawFd};

use cj_types::FileHandle;

use crate::sys::{self, Stat};

pub trait Fs: Send {
    /// Opens the object `handle` names on the filesystem of `mount`.
    fn open_by_handle(&self, mount: RawFd, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd>;
    /// The path of an open directory; `None` if it was removed.
    fn fd_path(&self, fd: RawFd) -> io::Result<Option<Vec<u8>>>;
    /// What `name` in `dir` is now (no symlink followed); `None` if nothing.
    fn stat_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<Stat>>;
    /// What an open object is now.
    fn stat_fd(&self, fd: RawFd) -> io::Result<Option<Stat>>;
    /// The handle of `name` in `dir` now.
    fn handle_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<FileHandle>>;
    /// Opens a directory by absolute path, following no symlink.
    fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd>;
    /// The filesystem id of an open descriptor (as fanotify reports it).
    fn fsid(&self, fd: RawFd) -> io::Result<u64>;
    /// Opens a root directory for use as `open_by_handle_at`'s mount
    /// argument (a real descriptor, not `O_PATH`), following no symlink.
    fn open_root(&self, path: &[u8]) -> io::Result<OwnedFd> {
        self.open_dir(path)
    }
}

/// The kernel.
pub struct RealFs;

impl Fs for RealFs {
    fn open_by_handle(&self, mount: RawFd, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd> {
        sys::open_by_handle(mount, handle_type, handle)
    }
    fn fd_path(&self, fd: RawFd) -> io::Result<Option<Vec<u8>>> {
        sys::fd_path(fd)
    }
    fn stat_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<Stat>> {
        sys::stat_at(dir, name)
    }
    fn stat_fd(&self, fd: RawFd) -> io::Result<Option<Stat>> {
        sys::stat_fd(fd)
    }
    fn handle_at(&self, dir: RawFd, name: &[u8]) -> io::Result<Option<FileHandle>> {
        sys::handle_at(dir, name)
    }
    fn open_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        sys::open_dir_nofollow(path)
    }
    fn fsid(&self, fd: RawFd) -> io::Result<u64> {
        cj_capture::fsid_of(fd)
    }
    fn open_root(&self, path: &[u8]) -> io::Result<OwnedFd> {
        sys::open_dir_for_handles(path)
    }
}
