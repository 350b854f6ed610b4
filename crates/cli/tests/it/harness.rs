//! Test harness: loop-mounted filesystems and daemons in temp directories.
//!
//! Every filesystem is made in a sparse image file inside the test's own temp
//! directory, mounted with `-o loop` (autoclear: unmounting detaches the loop
//! device), and unmounted in `Drop` -- also when the test fails. Nothing
//! outside the temp directory is touched. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CJ: &str = env!("CARGO_BIN_EXE_cj");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Xfs,
    Btrfs,
    Tmpfs,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A mounted scratch filesystem.
pub struct Mount {
    pub fs: Fs,
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    image: PathBuf,
    mounted: bool,
    /// tmpfs only: its size (`size=` mount option).
    tmpfs_size: &'static str,
}

impl Mount {
    pub fn new(fs: Fs) -> Mount {
        Mount::new_in(fs, &std::env::temp_dir())
    }

    /// A tmpfs of `size` (e.g. "4m"), to fill up.
    pub fn small_tmpfs(size: &'static str) -> Mount {
        let mut m = Mount::new(Fs::Tmpfs);
        m.unmount();
        m.tmpfs_size = size;
        m.mount();
        m
    }

    /// A filesystem whose image file lives in a fresh temp dir below `parent`.
    pub fn new_in(fs: Fs, parent: &Path) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("cj-it-")
            .tempdir_in(parent)
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let image = dir.path().join("fs.img");
        let mut m = Mount {
            fs,
            dir,
            mnt,
            image,
            mounted: false,
            tmpfs_size: "512m",
        };
        m.make();
        m.mount();
        m
    }

    fn make(&self) {
        if self.fs == Fs::Tmpfs {
            return;
        }
        let f = std::fs::File::create(&self.image).unwrap();
        f.set_len(512 << 20).unwrap();
        let img = self.image.to_str().unwrap();
        match self.fs {
            // Room for storms of small files (the default is 32,768 inodes).
            Fs::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F", "-N", "262144", img])),
            Fs::Xfs => run(Command::new("mkfs.xfs").args(["-q", "-f", "-m", "reflink=1", img])),
            Fs::Btrfs => run(Command::new("mkfs.btrfs").args(["-q", "-f", img])),
            Fs::Tmpfs => unreachable!(),
        };
    }

    pub fn mount(&mut self) {
        let mnt = self.mnt.to_str().unwrap();
        match self.fs {
            Fs::Tmpfs => {
                let size = format!("size={}", self.tmpfs_size);
                run(Command::new("mount").args(["-t", "tmpfs", "-o", &size, "cj-test", mnt]))
            }
            // nouuid: an xfs crash copy has its original's UUID.
            Fs::Xfs => run(Command::new("mount").args([
                "-o",
                "loop,nouuid",
                self.image.to_str().unwrap(),
                mnt,
            ])),
            _ => run(Command::new("mount").args(["-o", "loop", self.image.to_str().unwrap(), mnt])),
        };
        self.mounted = true;
    }

    /// Makes a new filesystem (new UUID) in the image; must be unmounted.
    pub fn reformat(&mut self) {
        assert!(!self.mounted);
        self.make();
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Mounts `image` (a crash copy) at this mount's directory in place of
    /// the original, which must be unmounted.
    pub fn mount_image(&mut self, image: &Path) {
        assert!(!self.mounted);
        self.image = image.to_path_buf();
        self.mount();
    }

    /// The test unmounted it itself.
    pub fn mark_unmounted(&mut self) {
        self.mounted = false;
    }

    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .map(|s| s.success());
            if ok.unwrap_or(false) {
                self.mounted = false;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Last resort: detach lazily; the loop device is freed once unused.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// A daemon with its own state directory and socket.
pub struct Daemon {
    pub state: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    extra: Vec<String>,
    pub log: PathBuf,
    /// More environment for the daemon (NOTIFY_SOCKET, ...).
    pub env: Vec<(String, String)>,
    /// A descriptor passed as systemd would (fd 3, LISTEN_FDS=1,
    /// LISTEN_FDNAMES=fanotify, LISTEN_PID = the daemon's pid).
    pub pass_fd: Option<std::os::fd::RawFd>,
}

impl Daemon {
    /// State and socket live in `dir` (which may be on a tracked filesystem).
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon::unstarted(dir, extra);
        d.spawn();
        d
    }

    /// A daemon that is not started yet (set `env` / `pass_fd`, then spawn).
    pub fn unstarted(dir: &Path, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        Daemon {
            state: dir.join("state"),
            socket: dir.join("cj.sock"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: dir.join("daemon.log"),
            env: Vec::new(),
            pass_fd: None,
        }
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.pass_fd {
            None => Command::new(CJ),
            Some(fd) => {
                // LISTEN_PID must be the daemon's own pid: a shell sets it
                // to its pid, then becomes the daemon (exec keeps the pid).
                let mut c = Command::new("sh");
                c.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", CJ])
                    .env("LISTEN_FDS", "1")
                    .env("LISTEN_FDNAMES", "fanotify");
                use std::os::unix::process::CommandExt;
                // SAFETY: dup2 is async-signal-safe; fd 3 is not
                // close-on-exec after it.
                unsafe {
                    c.pre_exec(move || {
                        // dup2 onto itself would keep close-on-exec.
                        let rc = if fd == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(fd, 3)
                        };
                        if rc < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                c
            }
        };
        let child = cmd
            .arg("daemon")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not start: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().unwrap();
            assert!(status.success(), "clean stop failed: {}", self.log_text());
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cj(&self, args: &[&str]) -> Output {
        Command::new(CJ)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cj(args);
        assert!(
            out.status.success(),
            "cj {args:?} failed ({}): {}{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn track(&self, dir: &Path) {
        self.ok(&["track", dir.to_str().unwrap()]);
    }

    pub fn cursor(&self) -> String {
        self.ok(&["cursor"]).trim().to_string()
    }

    /// Waits until the reconciler is idle (baselines taken, gaps closed).
    pub fn reconciled(&self) {
        self.ok(&["reconcile", "--wait"]);
    }

    /// `cj changes --json --wait SECS`.
    pub fn changes_wait(&self, since: &str, secs: u64) -> Answer {
        self.changes_args(since, None, &["--wait", &secs.to_string()])
    }

    /// `cj changes --json`: (entries, final object, exit code).
    pub fn changes(&self, since: &str, path: Option<&Path>) -> Answer {
        self.changes_args(since, path, &[])
    }

    pub fn changes_args(&self, since: &str, path: Option<&Path>, extra: &[&str]) -> Answer {
        let mut args = vec!["changes", "--json", "--since", since];
        args.extend_from_slice(extra);
        let p;
        if let Some(path) = path {
            p = path.to_str().unwrap().to_string();
            args.push(&p);
        }
        let out = self.cj(&args);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 3,
            "changes failed ({code}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let mut entries = Vec::new();
        let mut last = Value::Null;
        for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            if v.get("cursor").is_some() {
                last = v;
            } else {
                entries.push(v);
            }
        }
        // The same lines through the client library's parsers: the one
        // reading of the wire format (issue 10).
        let changes: Vec<cj_client::Change> = entries
            .iter()
            .map(|e| cj_client::parse_change(e.as_object().unwrap()).unwrap())
            .collect();
        let typed = cj_client::parse_final(last.as_object().unwrap(), changes).unwrap();
        Answer {
            entries,
            last,
            code,
            typed,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Answer {
    /// The raw JSON lines (for what a test checks of the wire itself).
    pub entries: Vec<Value>,
    pub last: Value,
    pub code: i32,
    /// The answer as the client library reads it.
    pub typed: cj_client::Answer,
}

impl Answer {
    pub fn path_bytes(v: &Value, stem: &str) -> Option<Vec<u8>> {
        cj_types::protocol::get_path(v.as_object()?, stem)
            .ok()
            .flatten()
    }

    /// The entry for `path`, if any.
    pub fn get(&self, path: &Path) -> Option<&Value> {
        use std::os::unix::ffi::OsStrExt;
        let want = path.as_os_str().as_bytes();
        let i = self.typed.entries.iter().position(|e| e.path == want)?;
        self.entries.get(i)
    }

    pub fn changes_of(&self, path: &Path) -> Vec<String> {
        use std::os::unix::ffi::OsStrExt;
        let want = path.as_os_str().as_bytes();
        self.typed
            .entries
            .iter()
            .find(|e| e.path == want)
            .map(|e| e.changes.iter().map(|c| c.as_str().to_string()).collect())
            .unwrap_or_default()
    }

    pub fn rescans(&self) -> Vec<(Vec<u8>, String)> {
        self.typed
            .rescan
            .iter()
            .map(|r| (r.path.clone(), cj_client::RescanReason::join(&r.reasons)))
            .collect()
    }

    pub fn cursor(&self) -> String {
        self.typed.cursor.clone()
    }

    pub fn dump(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            s.push_str(&e.to_string());
            s.push('\n');
        }
        s.push_str(&self.last.to_string());
        s
    }
}
