//! Thin, safe wrappers over the fanotify system calls.

use std::fmt;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Everything cj asks the kernel to report on a filesystem mark.
pub const EVENT_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_MOVE_SELF
    | libc::FAN_RENAME
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ONDIR;

/// How many events the kernel may queue before it overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLimit {
    /// `FAN_UNLIMITED_QUEUE`: no overflow while memory lasts. The default.
    Unlimited,
    /// The kernel's default bound (`/proc/sys/fs/fanotify/max_queued_events`).
    /// Only for tests that must force an overflow.
    KernelDefault,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// Not root / no CAP_SYS_ADMIN.
    PermissionDenied,
    /// The kernel lacks fanotify or the FID reporting cj needs (5.17+).
    Unsupported(io::Error),
    Io(io::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::PermissionDenied => f.write_str(
                "fanotify_init: permission denied; the cj daemon needs CAP_SYS_ADMIN: run it as root",
            ),
            InitError::Unsupported(e) => write!(
                f,
                "fanotify_init: {e}; cj needs Linux 5.17 or later with fanotify and FAN_REPORT_TARGET_FID"
            ),
            InitError::Io(e) => write!(f, "fanotify_init: {e}"),
        }
    }
}

impl std::error::Error for InitError {}

/// Why a filesystem could not be marked. Each says what to do instead.
#[derive(Debug)]
#[non_exhaustive]
pub enum MarkError {
    /// A btrfs subvolume other than the top-level one.
    BtrfsSubvolume {
        path: PathBuf,
    },
    /// FUSE and other filesystems without an fsid.
    NoFsid {
        path: PathBuf,
        fs_type: String,
    },
    /// overlayfs without `nfs_export=on` (or another filesystem without
    /// file handle support).
    NoFileHandles {
        path: PathBuf,
        fs_type: String,
    },
    PermissionDenied {
        path: PathBuf,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for MarkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MarkError::BtrfsSubvolume { path } => write!(
                f,
                "{} is inside a btrfs subvolume that is not the top-level one, and the kernel \
                 refuses filesystem marks there (EXDEV). Mount the top-level subvolume \
                 (mount -o subvolid=5 DEVICE /some/dir) and track the same tree through that \
                 mount: events inside child subvolumes are reported there.",
                path.display()
            ),
            MarkError::NoFsid { path, fs_type } => write!(
                f,
                "{} is on a {fs_type} filesystem, which has no filesystem id; fanotify cannot \
                 watch it (ENODEV). FUSE filesystems cannot be tracked by cj.",
                path.display()
            ),
            MarkError::NoFileHandles { path, fs_type } => write!(
                f,
                "{} is on a {fs_type} filesystem that does not export file handles \
                 (EOPNOTSUPP). For overlayfs, mount it with -o index=on,nfs_export=on; \
                 otherwise track the underlying filesystem.",
                path.display()
            ),
            MarkError::PermissionDenied { path } => write!(
                f,
                "marking {}: permission denied; the cj daemon must run as root",
                path.display()
            ),
            MarkError::Io { path, source } => write!(f, "marking {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for MarkError {}

/// A fanotify group in FID mode.
pub struct Fanotify {
    fd: OwnedFd,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Fanotify {
    pub fn new(queue: QueueLimit) -> Result<Fanotify, InitError> {
        let mut flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME_TARGET;
        if queue == QueueLimit::Unlimited {
            flags |= libc::FAN_UNLIMITED_QUEUE;
        }
        // SAFETY: plain syscall with constant flags.
        let rc = unsafe {
            libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint)
        };
        match cvt(rc) {
            // SAFETY: the kernel just returned this new descriptor to us.
            Ok(fd) => Ok(Fanotify {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(InitError::PermissionDenied),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(InitError::Unsupported(e)),
            Err(e) => Err(InitError::Io(e)),
        }
    }

    /// Takes over a group created by an earlier run of the daemon (handed
    /// back by systemd's descriptor store), with its marks and its queued
    /// events. Refused unless the descriptor is a fanotify group reporting
    /// what [`Fanotify::new`] asks for.
    pub fn adopt(fd: OwnedFd) -> io::Result<Fanotify> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("fanotify flags:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a fanotify group"))?;
        let want = libc::FAN_REPORT_DFID_NAME_TARGET;
        if flags & want != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a fanotify group without file handles and names (flags {flags:x})"),
            ));
        }
        // SAFETY: fcntl on a descriptor we own.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if fl < 0
            || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Fanotify { fd })
    }

    /// The group's descriptor (to hand to systemd's descriptor store).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Adds (or, with `remove`, removes) a filesystem mark on the filesystem
    /// holding the directory `dir` (an open descriptor: no path is resolved
    /// again, so a symlink swapped in meanwhile cannot redirect the mark).
    pub fn mark_filesystem(&self, dir: RawFd, path: &Path, remove: bool) -> Result<(), MarkError> {
        let action = if remove {
            libc::FAN_MARK_REMOVE
        } else {
            libc::FAN_MARK_ADD
        };
        // SAFETY: `dir` is a valid descriptor owned by the caller; "." is
        // looked up relative to it (an O_PATH descriptor is accepted as a
        // directory fd, not as the object itself), and "." is never a symlink.
        let rc = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                action | libc::FAN_MARK_FILESYSTEM | libc::FAN_MARK_DONT_FOLLOW,
                EVENT_MASK,
                dir,
                c".".as_ptr(),
            )
        };
        let Err(e) = cvt(rc) else { return Ok(()) };
        let path = path.to_path_buf();
        let fs_type = fs_type_name(dir);
        Err(match e.raw_os_error() {
            Some(libc::EXDEV) => MarkError::BtrfsSubvolume { path },
            Some(libc::ENODEV) => MarkError::NoFsid { path, fs_type },
            Some(libc::EOPNOTSUPP) => MarkError::NoFileHandles { path, fs_type },
            Some(libc::EPERM) => MarkError::PermissionDenied { path },
            _ => MarkError::Io { path, source: e },
        })
    }

    /// Reads as many events as fit into `buf`. Returns 0 when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the pointer and length describe `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(0),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Waits until events are queued, `waker` is woken, or `timeout_ms`
    /// passes (-1: forever). Returns (events ready, woken).
    pub fn wait(&self, waker: &Waker, timeout_ms: i32) -> io::Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: waker.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok((false, false));
            }
            return Err(e);
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }
}

impl Fanotify {
    /// Sleeps up to `timeout_ms` unless `waker` is woken (events are not
    /// looked at: this is the nap that lets a batch build up).
    pub fn wait_waker_only(&self, waker: &Waker, timeout_ms: i32) -> io::Result<bool> {
        let mut fds = [libc::pollfd {
            fd: waker.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(fds[0].revents != 0)
    }
}

/// Wakes a thread blocked in [`Fanotify::wait`] (an eventfd).
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: new descriptor from the kernel.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN)
        // already means "woken".
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN means nothing to drain.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

fn statfs_fd(fd: RawFd) -> io::Result<libc::statfs> {
    // SAFETY: statfs is plain old data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatfs(fd, &mut st) })?;
    Ok(st)
}

/// The fsid fanotify reports for the filesystem holding `fd`, in the same
/// encoding as [`crate::Fid::fsid`].
pub fn fsid_of(fd: RawFd) -> io::Result<u64> {
    let st = statfs_fd(fd)?;
    // SAFETY: fsid_t is two c_ints (8 bytes) with private fields.
    let raw: [u8; 8] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(u64::from_ne_bytes(raw))
}

fn fs_type_name(fd: RawFd) -> String {
    cj_types::sys::fs_magic_of(fd)
        .map(cj_types::sys::fs_magic::name)
        .unwrap_or_else(|_| "unknown".into())
}
