//! The seam under the writer: the file operations a commit needs. The
//! real implementation is a `File`; tests put a failing one in its place
//! to prove what happens on EIO and ENOSPC (`tests.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The active segment, as the writer uses it.
pub trait SegmentFile: Send {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn sync_all(&self) -> io::Result<()>;
}

impl SegmentFile for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// Opens segment files for appending.
pub trait Storage: Send + Sync {
    fn open_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
}

/// The real files.
pub struct Files;

impl Storage for Files {
    fn open_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        Ok(Box::new(f))
    }
}
