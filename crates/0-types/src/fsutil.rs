//! Durable, atomic replacement of a small state file, shared by every
//! crate that keeps one (journal id, roots, baselines).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates `dir` and any missing parents, mode 0700 (state the daemon
/// alone reads: journal, baselines, their spill files).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The buffer of [`write_atomic_with`].
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Which step of [`write_atomic`] failed, on which file.
#[derive(Debug)]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes`: a temp file next to it (`<name>.tmp`,
/// created 0600 without following symlinks), written and fsynced, renamed
/// over `path`, and the directory fsynced. A crash leaves the old or the
/// new file, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes, through a buffer: a big file
/// is never held in memory whole.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&File>) -> std::io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let fail = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { path, op, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(fail(&tmp, "create"))?;
    {
        let mut w = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, &f);
        write(&mut w)
            .and_then(|()| w.flush())
            .map_err(fail(&tmp, "write"))?;
    }
    f.sync_all().map_err(fail(&tmp, "fsync"))?;
    fs::rename(&tmp, path).map_err(fail(path, "rename"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail(dir, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_mode_0600_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        fs::write(&p, b"old").unwrap();
        fs::write(d.path().join("state.json.tmp"), b"stale").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!d.path().join("state.json.tmp").exists());
        let e = write_atomic(&d.path().join("missing/x"), b"x").unwrap_err();
        assert_eq!(e.op, "create");
    }
}
