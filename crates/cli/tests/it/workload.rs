//! Seeded random filesystem operations for the oracle.
//!
//! Each worker owns a model of the paths it believes exist (a hint for
//! choosing operands, not a source of truth: operations that fail because
//! another worker or an earlier failure changed things are simply skipped).
//! With one worker and the same seed on a fresh filesystem the run is
//! reproducible, which is what shrinking relies on.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// splitmix64.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Create(PathBuf),
    Write {
        path: PathBuf,
        offset: u64,
        len: usize,
        append: bool,
    },
    Truncate(PathBuf, u64),
    OTrunc(PathBuf),
    Chmod(PathBuf, u32),
    Chown(PathBuf, u32, u32),
    Utimes(PathBuf, i64),
    SetXattr(PathBuf, u8),
    RemoveXattr(PathBuf),
    Rename(PathBuf, PathBuf),
    Link(PathBuf, PathBuf),
    Unlink(PathBuf),
    Symlink(PathBuf),
    Mkdir(PathBuf),
    RmTree(PathBuf),
    Mmap(PathBuf),
    Churn(PathBuf),
}

pub struct Model {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    /// Directories outside the tracked tree (for renames in and out).
    pub outside: Vec<PathBuf>,
}

fn name(rng: &mut Rng) -> PathBuf {
    const NAMES: [&[u8]; 12] = [
        b"a",
        b"b",
        b"c",
        b"d",
        b"e",
        b"f",
        b"g",
        b"h",
        b"with space",
        b"new\nline",
        b"bad\xff",
        b"tab\tx",
    ];
    let base = NAMES[rng.below(NAMES.len())];
    let mut n = base.to_vec();
    n.extend_from_slice(format!("{}", rng.below(6)).as_bytes());
    PathBuf::from(OsStr::from_bytes(&n))
}

impl Model {
    pub fn new(dirs: Vec<PathBuf>, outside: Vec<PathBuf>) -> Model {
        Model {
            files: Vec::new(),
            dirs,
            outside,
        }
    }

    fn any_file(&self, rng: &mut Rng) -> Option<PathBuf> {
        (!self.files.is_empty()).then(|| self.files[rng.below(self.files.len())].clone())
    }

    fn new_path(&self, rng: &mut Rng, allow_outside: bool) -> PathBuf {
        let dir = if allow_outside && rng.chance(15) && !self.outside.is_empty() {
            &self.outside[rng.below(self.outside.len())]
        } else {
            &self.dirs[rng.below(self.dirs.len())]
        };
        dir.join(name(rng))
    }

    pub fn gen(&self, rng: &mut Rng) -> Op {
        let file = self.any_file(rng);
        let choice = rng.below(20);
        let Some(f) = file else {
            return Op::Create(self.new_path(rng, false));
        };
        match choice {
            0 | 1 => Op::Create(self.new_path(rng, false)),
            2 => Op::Write {
                path: f,
                offset: 0,
                len: 1 + rng.below(200),
                append: false,
            },
            3 => Op::Write {
                path: f,
                offset: 0,
                len: 1 + rng.below(200),
                append: true,
            },
            4 => Op::Write {
                path: f,
                offset: 4096 * (1 + rng.below(64) as u64),
                len: 1 + rng.below(100),
                append: false,
            },
            5 => Op::Truncate(f, rng.below(300) as u64),
            6 => Op::OTrunc(f),
            7 => Op::Chmod(f, [0o600, 0o644, 0o755, 0o400][rng.below(4)]),
            8 => Op::Chown(
                f,
                [0, 1000, 65534][rng.below(3)],
                [0, 1000, 65534][rng.below(3)],
            ),
            9 => Op::Utimes(f, 1_000_000 + rng.below(1_000_000) as i64),
            10 => {
                if rng.chance(70) {
                    Op::SetXattr(f, rng.below(256) as u8)
                } else {
                    Op::RemoveXattr(f)
                }
            }
            11 | 12 => {
                // Rename a file or (sometimes) a directory, maybe over an
                // existing file, maybe in or out of the tracked tree.
                let from = if rng.chance(20) && self.dirs.len() > 1 {
                    self.dirs[1 + rng.below(self.dirs.len() - 1)].clone()
                } else if rng.chance(10) && !self.outside.is_empty() {
                    self.outside[rng.below(self.outside.len())].join(name(rng))
                } else {
                    f
                };
                let to = if rng.chance(30) {
                    self.any_file(rng)
                        .unwrap_or_else(|| self.new_path(rng, true))
                } else {
                    self.new_path(rng, true)
                };
                Op::Rename(from, to)
            }
            13 => Op::Link(f, self.new_path(rng, false)),
            14 => Op::Unlink(f),
            15 => Op::Symlink(self.new_path(rng, false)),
            16 => Op::Mkdir(self.new_path(rng, false)),
            17 => {
                if self.dirs.len() > 2 && rng.chance(30) {
                    Op::RmTree(self.dirs[1 + rng.below(self.dirs.len() - 1)].clone())
                } else {
                    Op::Churn(self.new_path(rng, false))
                }
            }
            18 => Op::Mmap(f),
            _ => Op::Churn(self.new_path(rng, false)),
        }
    }

    pub fn update(&mut self, op: &Op) {
        match op {
            Op::Create(p) | Op::Symlink(p) | Op::Churn(p) => self.add_file(p),
            Op::Link(_, to) => self.add_file(to),
            Op::Unlink(p) => self.files.retain(|f| f != p),
            Op::Mkdir(p) => self.dirs.push(p.clone()),
            Op::RmTree(p) => {
                self.files.retain(|f| !f.starts_with(p));
                self.dirs.retain(|d| !d.starts_with(p));
            }
            Op::Rename(from, to) => {
                let moved = |x: &PathBuf| -> PathBuf {
                    match x.strip_prefix(from) {
                        Ok(rest) if rest.as_os_str().is_empty() => to.clone(),
                        Ok(rest) => to.join(rest),
                        Err(_) => x.clone(),
                    }
                };
                self.files.retain(|f| f != to);
                self.files = self.files.iter().map(moved).collect();
                if self.dirs.contains(from) {
                    self.dirs = self.dirs.iter().map(moved).collect();
                } else {
                    self.add_file(to);
                }
            }
            _ => {}
        }
    }

    fn add_file(&mut self, p: &Path) {
        if !self.files.iter().any(|f| f == p) {
            self.files.push(p.to_path_buf());
        }
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Applies one operation. Returns whether it succeeded.
pub fn apply(op: &Op) -> bool {
    use std::fs;
    let r: std::io::Result<()> = (|| match op {
        Op::Create(p) => fs::write(p, b"created"),
        Op::Write {
            path,
            offset,
            len,
            append,
        } => {
            let data = vec![b'w'; *len];
            if *append {
                fs::OpenOptions::new()
                    .append(true)
                    .open(path)?
                    .write_all(&data)
            } else {
                fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .write_all_at(&data, *offset)
            }
        }
        Op::Truncate(p, len) => fs::OpenOptions::new().write(true).open(p)?.set_len(*len),
        Op::OTrunc(p) => fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p)
            .map(|_| ()),
        Op::Chmod(p, mode) => {
            if fs::symlink_metadata(p)?.file_type().is_symlink() {
                return Ok(());
            }
            fs::set_permissions(p, fs::Permissions::from_mode(*mode))
        }
        Op::Chown(p, u, g) => std::os::unix::fs::lchown(p, Some(*u), Some(*g)),
        Op::Utimes(p, secs) => {
            let ts = [
                libc::timespec {
                    tv_sec: *secs,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: *secs,
                    tv_nsec: 0,
                },
            ];
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    cstr(p).as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Op::SetXattr(p, v) => {
            let rc = unsafe {
                libc::lsetxattr(
                    cstr(p).as_ptr(),
                    c"user.k".as_ptr(),
                    [*v].as_ptr().cast(),
                    1,
                    0,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Op::RemoveXattr(p) => {
            let rc = unsafe { libc::lremovexattr(cstr(p).as_ptr(), c"user.k".as_ptr()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        Op::Rename(a, b) => fs::rename(a, b),
        Op::Link(a, b) => fs::hard_link(a, b),
        Op::Unlink(p) => fs::remove_file(p),
        Op::Symlink(p) => std::os::unix::fs::symlink("target/../x", p),
        Op::Mkdir(p) => fs::create_dir(p),
        Op::RmTree(p) => fs::remove_dir_all(p),
        Op::Mmap(p) => mmap_store(p),
        Op::Churn(p) => {
            fs::write(p, b"1")?;
            fs::remove_file(p)?;
            fs::write(p, b"2")
        }
    })();
    r.is_ok()
}

fn mmap_store(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    // Never through a symlink: its target may be another worker's file,
    // truncated between the size check and the store (SIGBUS).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    if !f.metadata()?.is_file() || f.metadata()?.len() == 0 {
        return Ok(());
    }
    survive_sigbus();
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if m == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        *(m as *mut u8) ^= 0x20;
        drop(f);
        libc::munmap(m, 1);
    }
    Ok(())
}

/// Another worker can truncate the file (through a hard link in a shared
/// directory) between the size check and the store; the store then faults
/// with SIGBUS, which killed the worker process in two soaks. The handler
/// puts an anonymous page where the file page was and returns, so the
/// store lands there and is lost, as it would be in the truncated file
/// anyway: the oracle compares snapshots, not intentions.
fn survive_sigbus() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO; mmap is
        // a plain system call, safe in a signal handler.
        unsafe {
            let page = 4096usize;
            let addr = ((*info).si_addr() as usize) & !(page - 1);
            libc::mmap(
                addr as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
        }
    }
    ONCE.call_once(|| {
        // SAFETY: installing a handler with a zeroed, then filled, sigaction.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// Runs `ops` generated operations; returns the log of those that succeeded.
pub fn run(rng: &mut Rng, model: &mut Model, ops: usize) -> Vec<Op> {
    let mut log = Vec::new();
    for _ in 0..ops {
        let op = model.gen(rng);
        if apply(&op) {
            model.update(&op);
            log.push(op);
        }
    }
    log
}

/// Replays a recorded log (for shrinking). Failures are ignored.
pub fn replay(ops: &[Op]) {
    for op in ops {
        apply(op);
    }
}

/// The SIGBUS the soak met: a store into a mapping whose file was truncated
/// meanwhile. The worker survives it.
#[test]
fn a_store_into_a_truncated_mapping_survives() {
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, vec![1u8; 4096]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    survive_sigbus();
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            1,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(m, libc::MAP_FAILED);
        f.set_len(0).unwrap();
        std::ptr::write_volatile(m as *mut u8, 7);
        libc::munmap(m, 1);
    }
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
}
