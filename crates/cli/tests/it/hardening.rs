//! Issue 9: the defects an adversarial probe found, each with a regression
//! test that failed before its fix.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::harness::{Answer, Daemon, Fs, Mount};
use crate::restarts::{reasons, segments};

fn damaged(a: &Answer) -> bool {
    a.code == 3 && reasons(a).iter().any(|r| r.contains("journal_damaged"))
}

/// Defect 3: records at or before a handed-out cursor are lost (the last
/// segment cut or deleted while the daemon is down). Numbering must not
/// restart below the cursor, and an old cursor must be told to rescan
/// (`journal_damaged`), never answered "complete" without the new changes.
fn lost_tail(kind: &str, kill: bool) {
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&m.mnt, &["--test-segment-bytes", "4096"]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    d.reconciled();
    let c_early = d.cursor();
    for i in 0..60 {
        fs::write(t.join(format!("f{i:03}")), b"1").unwrap();
        d.cursor();
    }
    let c = d.cursor();
    if kill {
        // Let the high-water mark (written at most once a second, at a
        // commit) reach into the last segment, which is deleted below:
        // other commits (drain marks, reconciliation) may take the
        // once-a-second turn, so look rather than guess.
        let mark = d.state.join("journal/highwater");
        for i in 0.. {
            assert!(i < 20, "the high-water mark never reached the last segment");
            std::thread::sleep(std::time::Duration::from_millis(1100));
            fs::write(t.join("nudge"), b"1").unwrap();
            d.cursor();
            let bytes = fs::read(&mark).unwrap();
            let marked = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
            let last = segments(&d.state).last().unwrap().clone();
            let stem = last.file_stem().unwrap().to_str().unwrap().to_string();
            let first = u64::from_str_radix(&stem, 16).unwrap();
            if marked >= first {
                break;
            }
        }
        d.kill9();
    } else {
        d.stop();
    }
    let segs = segments(&d.state);
    let last = segs.last().unwrap();
    match kind {
        "truncate" => {
            let f = fs::OpenOptions::new().write(true).open(last).unwrap();
            f.set_len(64).unwrap(); // header only: every record of it gone
        }
        _ => fs::remove_file(last).unwrap(),
    }
    d.spawn();
    assert!(
        d.log_text().contains("acknowledged but are missing"),
        "{}",
        d.log_text()
    );
    fs::write(t.join("after"), b"1").unwrap();
    // The cursor at the end of what was lost: numbering went on above it,
    // so the new change is in its answer (with the bug, "after" got a seq
    // at or below the cursor and was silently missing).
    let a = d.changes_wait(&c, 30);
    assert!(a.get(&t.join("after")).is_some(), "{}", a.dump());
    if kill {
        // Lost records after the cursor too (the nudge): not complete.
        assert!(damaged(&a), "{}", a.dump());
    }
    // A cursor before the lost records: told to rescan, for good.
    let e = d.changes_wait(&c_early, 30);
    assert_eq!(e.code, 3, "{}", e.dump());
    assert!(damaged(&e), "{}", e.dump());
    assert!(e.get(&t.join("after")).is_some(), "{}", e.dump());
    // New cursors are complete again.
    let c2 = d.cursor();
    fs::write(t.join("later"), b"1").unwrap();
    let b = d.changes(&c2, None);
    assert_eq!(b.code, 0, "{}", b.dump());
    assert!(b.get(&t.join("later")).is_some(), "{}", b.dump());
}

#[test]
fn issue9_truncated_tail_after_a_clean_stop_never_reuses_seqs() {
    lost_tail("truncate", false);
}

#[test]
fn issue9_deleted_last_segment_after_a_clean_stop_never_reuses_seqs() {
    lost_tail("delete", false);
}

#[test]
fn issue9_deleted_last_segment_after_kill9_never_reuses_seqs() {
    lost_tail("delete", true);
}

/// A directory descriptor and the path it stands for, built below `base`
/// with `mkdirat` so that no call sees the whole (too long) path.
struct Deep {
    fds: Vec<std::os::fd::OwnedFd>,
    path: Vec<u8>,
}

const DEEP_NAME_BYTES: usize = 252;

fn dir_at(fd: i32, name: &[u8]) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid descriptor and C string.
    let rc = unsafe { libc::openat(fd, c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    assert!(rc >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(rc) }
}

impl Deep {
    fn new(base: &Path, depth: usize) -> Deep {
        use std::os::fd::AsRawFd;
        let mut d = Deep {
            fds: vec![dir_at(libc::AT_FDCWD, base.as_os_str().as_bytes())],
            path: base.as_os_str().as_bytes().to_vec(),
        };
        for i in 0..depth {
            let mut name = vec![b'a' + (i % 26) as u8; DEEP_NAME_BYTES];
            name[0] = b'D';
            let fd = d.fds.last().unwrap().as_raw_fd();
            d.mkdir(fd, &name);
            d.fds.push(dir_at(fd, &name));
            d.path.push(b'/');
            d.path.extend_from_slice(&name);
        }
        d
    }

    fn mkdir(&self, fd: i32, name: &[u8]) {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid descriptor and C string.
        assert_eq!(unsafe { libc::mkdirat(fd, c.as_ptr(), 0o755) }, 0);
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fds.last().unwrap().as_raw_fd()
    }

    fn write(&self, name: &str) {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid descriptor and C string.
        let fd = unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a descriptor we own.
        unsafe {
            libc::write(fd, b"x".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }

    fn symlink(&self, name: &str) {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid descriptor and C strings.
        assert_eq!(
            unsafe { libc::symlinkat(c"/etc/passwd".as_ptr(), self.fd(), c.as_ptr()) },
            0
        );
    }

    fn child(&self, name: &str) -> PathBuf {
        let mut p = self.path.clone();
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
        PathBuf::from(std::ffi::OsStr::from_bytes(&p))
    }
}

/// Defect 1: changes deeper than PATH_MAX are journaled and answered.
fn deeper_than_path_max(kind: Fs) {
    let m = Mount::new(kind);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    let deep = Deep::new(&t, 17);
    assert!(deep.path.len() > libc::PATH_MAX as usize);
    deep.write("existing");
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    deep.write("file");
    deep.mkdir(deep.fd(), b"dir");
    deep.symlink("link");
    deep.write("existing"); // modified, still there
    let a = d.changes(&c, None);
    assert_eq!(a.code, 0, "{}", a.dump());
    for (name, kind) in [("file", "file"), ("dir", "dir"), ("link", "symlink")] {
        let e = a
            .get(&deep.child(name))
            .unwrap_or_else(|| panic!("{name} missing: {}", a.dump()));
        assert_eq!(e["kind"], kind, "{}", a.dump());
        assert_eq!(e["exists"], true, "{}", a.dump());
        assert!(a
            .changes_of(&deep.child(name))
            .contains(&"created".to_string()));
    }
    let e = a.get(&deep.child("existing")).expect("existing");
    assert_eq!(
        e["exists"],
        true,
        "reported gone although it exists: {}",
        a.dump()
    );
}

#[test]
fn issue9_changes_deeper_than_path_max_ext4() {
    deeper_than_path_max(Fs::Ext4);
}

#[test]
fn issue9_changes_deeper_than_path_max_tmpfs() {
    deeper_than_path_max(Fs::Tmpfs);
}

/// Defect 2: reconciliation walks a tree deeper than PATH_MAX, and the
/// changes made there while the daemon was down are reported.
fn reconcile_deeper_than_path_max(kind: Fs, walk: bool) {
    let m = Mount::new(kind);
    let extra: &[&str] = if walk { &["--reconcile", "walk"] } else { &[] };
    let mut d = Daemon::start(&m.mnt.join("daemon"), extra);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    let deep = Deep::new(&t, 18);
    deep.write("existing");
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    d.stop();
    deep.write("while_down");
    d.spawn();
    let a = d.changes_wait(&c, 60);
    assert_eq!(a.code, 0, "{}\n{}", a.dump(), d.log_text());
    assert!(a.get(&deep.child("while_down")).is_some(), "{}", a.dump());
    assert!(a.get(&deep.child("existing")).is_none(), "{}", a.dump());
}

#[test]
fn issue9_reconcile_deeper_than_path_max_ext4() {
    reconcile_deeper_than_path_max(Fs::Ext4, true);
}

#[test]
fn issue9_reconcile_deeper_than_path_max_xfs() {
    reconcile_deeper_than_path_max(Fs::Xfs, false);
}

#[test]
fn issue9_reconcile_deeper_than_path_max_btrfs() {
    reconcile_deeper_than_path_max(Fs::Btrfs, false);
}

fn chattr(flag: &str, path: &Path) {
    let out = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Defect 2, second half: a reconciliation that fails is retried with
/// backoff, and `cj status` says why; once the cause is gone the gap closes.
#[test]
fn issue9_a_failed_reconciliation_is_retried_and_shown() {
    let m = Mount::new(Fs::Ext4);
    let mut d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    d.stop();
    fs::write(t.join("while_down"), b"1").unwrap();
    // The baseline cannot be replaced: the snapshots directory is immutable.
    let snaps = d.state.join("snapshots");
    chattr("+i", &snaps);
    d.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let st = loop {
        let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
        if st["reconcile"]["retry"]["attempts"].as_u64().unwrap_or(0) >= 2 {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry: {st}\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(st["reconcile"]["last_error"].as_str().is_some(), "{st}");
    let text = d.ok(&["status"]);
    assert!(text.contains("retrying in"), "{text}");
    chattr("-i", &snaps);
    let a = d.changes_wait(&c, 60);
    assert!(a.get(&t.join("while_down")).is_some(), "{}", a.dump());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
        if st["reconcile"]["retry"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still retrying: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Defect 6: kill -9 after a rename storm (more renames than the fold used
/// to follow) must still be reconciled: the gap closes, nothing is missed.
#[test]
fn issue9_kill9_after_a_rename_storm_is_reconciled() {
    let m = Mount::new(Fs::Ext4);
    let mut d = Daemon::start(&m.mnt.join("daemon"), &["--baseline-refresh-secs", "0"]);
    let t = m.mnt.join("tree");
    fs::create_dir_all(t.join("sub")).unwrap();
    for i in 0..100 {
        fs::write(t.join(format!("f{i:03}")), b"1").unwrap();
    }
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    for round in 0..120 {
        for i in 0..100 {
            let (a, b) = if round % 2 == 0 {
                (format!("f{i:03}"), format!("g{i:03}"))
            } else {
                (format!("g{i:03}"), format!("f{i:03}"))
            };
            fs::rename(t.join(a), t.join(b)).unwrap();
        }
        // Directory renames too.
        let (a, b) = if round % 2 == 0 {
            ("sub", "bus")
        } else {
            ("bus", "sub")
        };
        fs::rename(t.join(a), t.join(b)).unwrap();
    }
    fs::write(t.join("sub").join("inner"), b"1").unwrap();
    d.cursor();
    d.kill9();
    fs::remove_file(t.join("f007")).unwrap();
    fs::remove_file(t.join("sub").join("inner")).unwrap();
    d.spawn();
    let a = d.changes_wait(&c, 120);
    assert_eq!(a.code, 0, "{}\n{}", a.dump(), d.log_text());
    assert!(a.get(&t.join("f007")).is_some(), "{}", a.dump());
    assert!(a.get(&t.join("sub").join("inner")).is_some() || a.get(&t.join("sub")).is_some());
}

/// Defect 7: a change through one name of a file whose other names the
/// daemon never saw in an event is resolved from the baseline (no rescan
/// of the root), on every filesystem.
fn hard_links_known_from_the_baseline(kind: Fs) {
    let m = Mount::new(kind);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir_all(t.join("x")).unwrap();
    fs::create_dir_all(t.join("y")).unwrap();
    fs::write(t.join("x/a"), b"1").unwrap();
    fs::hard_link(t.join("x/a"), t.join("y/b")).unwrap();
    fs::hard_link(t.join("x/a"), t.join("c")).unwrap();
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    fs::write(t.join("x/a"), b"22").unwrap();
    let a = d.changes(&c, None);
    assert_eq!(a.code, 0, "{}", a.dump());
    for p in ["x/a", "y/b", "c"] {
        assert!(a.get(&t.join(p)).is_some(), "{p} missing: {}", a.dump());
    }
}

#[test]
fn issue9_hard_links_known_from_the_baseline_tmpfs() {
    hard_links_known_from_the_baseline(Fs::Tmpfs);
}

#[test]
fn issue9_hard_links_known_from_the_baseline_ext4() {
    hard_links_known_from_the_baseline(Fs::Ext4);
}

fn snapshots_in(state: &Path) -> Vec<PathBuf> {
    fs::read_dir(state.join("snapshots"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Defect 8: untracking stops a running baseline walk and leaves no
/// snapshot behind; stale snapshots are removed at start.
#[test]
fn issue9_untrack_during_the_first_walk_leaves_no_baseline() {
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    for i in 0..200 {
        let sub = t.join(format!("d{i:03}"));
        fs::create_dir_all(&sub).unwrap();
        for j in 0..100 {
            fs::write(sub.join(format!("f{j:03}")), b"").unwrap();
        }
    }
    d.track(&t);
    d.ok(&["untrack", t.to_str().unwrap()]);
    d.reconciled();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        snapshots_in(&d.state),
        Vec::<PathBuf>::new(),
        "{}",
        d.log_text()
    );
    // A stale baseline left by an older version is removed at start.
    d.track(&t);
    d.reconciled();
    assert_eq!(snapshots_in(&d.state).len(), 1);
    fs::write(d.state.join("snapshots/00000000deadbeef.snap"), b"old").unwrap();
    d.stop();
    d.spawn();
    let left = snapshots_in(&d.state);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left[0].ends_with("00000000deadbeef.snap"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Defect 4: idle connections cannot lock clients out, and a full table
/// of busy ones gives the CLI the server's reason, not "Broken pipe".
#[test]
fn issue9_idle_and_trickling_clients_cannot_lock_others_out() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let idle: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(&d.socket).ok())
        .collect();
    assert!(idle.len() >= 64);
    // Idle slots are reclaimed: the CLI gets through at once.
    let started = std::time::Instant::now();
    d.cursor();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(idle);
    // Trickling clients: each started a request and sends a byte now and
    // then. They are busy, so a new client is told to retry...
    let busy_connection = || {
        let mut s = UnixStream::connect(&d.socket).ok()?;
        s.write_all(b"{").ok()?;
        Some(s)
    };
    let mut busy: Vec<UnixStream> = (0..64).filter_map(|_| busy_connection()).collect();
    // A connection admitted while the dropped idle ones still held their
    // slots may have been closed as idle before its thread read the "{":
    // replace those until 64 busy connections stay open.
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        busy.retain(still_open);
        if busy.len() >= 64 {
            break;
        }
        busy.extend((busy.len()..64).filter_map(|_| busy_connection()));
    }
    assert_eq!(busy.len(), 64, "could not hold 64 busy connections");
    let out = d.cj(&["cursor"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("too many clients"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    // ... and they lose their slots at the request deadline however they
    // pace their bytes.
    for _ in 0..12 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for s in &mut busy {
            let _ = s.write_all(b" ");
        }
    }
    d.cursor();
}

/// Whether the server still holds `s` open (it sent nothing and has not
/// closed it).
fn still_open(s: &std::os::unix::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv writes at most one byte into `b`.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Defect 5: clients that never read their (large) answers hold neither a
/// thread for good nor unbounded memory, and others are still answered.
#[test]
fn issue9_clients_that_never_read_do_not_exhaust_memory() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    d.reconciled();
    let c = d.cursor();
    let long = "n".repeat(200);
    for i in 0..20_000 {
        fs::write(t.join(format!("{long}{i:05}")), b"").unwrap();
    }
    let pid = d.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let req = format!("{{\"op\":\"changes\",\"since\":\"{c}\"}}\n");
    let stuck: Vec<UnixStream> = (0..40)
        .filter_map(|_| {
            let mut s = UnixStream::connect(&d.socket).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(stuck.len(), 40);
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Another client is answered meanwhile.
    let asked = std::time::Instant::now();
    let a = d.changes(&c, None);
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(30),
        "answered only after {:?}",
        asked.elapsed()
    );
    assert_eq!(a.entries.len(), 20_001, "{}", a.last);
    let after = rss_kib(pid);
    eprintln!("daemon RSS {before} KiB before, {after} KiB with 40 stuck clients");
    // 40 answers of about 6 MB each, held until their writers time out,
    // were gigabytes before the bounds (4.7 GB with 64 clients); the
    // budget keeps them to a few at a time (about 100 MB measured here).
    assert!(
        after < before + 200 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(stuck);
}

/// One raw request line over the socket; the answer lines.
fn raw(d: &Daemon, request: &[u8]) -> Vec<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.write_all(request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::io::BufReader::new(s)
        .split(b'\n')
        .map(|l| serde_json::from_slice(&l.unwrap()).unwrap())
        .collect()
}

fn bad_request_naming(d: &Daemon, request: &str, field: &str) {
    let a = raw(d, format!("{request}\n").as_bytes());
    assert_eq!(a.len(), 1, "{request}: {a:?}");
    assert_eq!(a[0]["code"], "bad_request", "{request}: {a:?}");
    let msg = a[0]["error"].as_str().unwrap();
    assert!(msg.contains(&format!("\"{field}\"")), "{request}: {msg}");
}

/// Defect 11: fields of the wrong type are refused, naming the field; and
/// the hostile requests the probe found handled stay handled.
#[test]
fn issue9_wrong_types_and_hostile_requests_are_refused_clearly() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    let c = d.cursor();
    bad_request_naming(&d, r#"{"op":5}"#, "op");
    bad_request_naming(&d, r#"{"op":"cursor","path":5}"#, "path");
    bad_request_naming(
        &d,
        &format!(r#"{{"op":"changes","since":"{c}","path":5}}"#),
        "path",
    );
    bad_request_naming(
        &d,
        &format!(r#"{{"op":"changes","since":"{c}","wait_ms":"9"}}"#),
        "wait_ms",
    );
    bad_request_naming(
        &d,
        &format!(r#"{{"op":"changes","since":"{c}","wait_ms":-1}}"#),
        "wait_ms",
    );
    bad_request_naming(&d, r#"{"op":"changes","since":7}"#, "since");
    bad_request_naming(&d, r#"{"op":"track","path_b64":"%%%"}"#, "path_b64");
    // Not JSON, not an object, no op, an unknown op, an oversized line.
    for req in [
        &b"nonsense\n"[..],
        b"[1,2]\n",
        b"{}\n",
        b"{\"op\":\"explode\"}\n",
        b"\xff\xfe\n",
    ] {
        let a = raw(&d, req);
        assert_eq!(
            a[0]["code"],
            "bad_request",
            "{:?}: {a:?}",
            String::from_utf8_lossy(req)
        );
    }
    let mut huge = vec![b'x'; 300 * 1024];
    huge.push(b'\n');
    let a = raw(&d, &huge);
    assert_eq!(a[0]["code"], "bad_request");
    // A relative path, a forged cursor.
    let a = raw(&d, b"{\"op\":\"cursor\",\"path\":\"tree\"}\n");
    assert_eq!(a[0]["code"], "bad_request");
    let last = if c.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &c[..c.len() - 1]);
    let a = raw(
        &d,
        format!("{{\"op\":\"changes\",\"since\":\"{forged}\"}}\n").as_bytes(),
    );
    assert_eq!(a.last().unwrap()["complete"], false, "{a:?}");
    // The daemon is fine afterwards.
    fs::write(t.join("after"), b"1").unwrap();
    let ans = d.changes(&c, None);
    assert_eq!(ans.code, 0, "{}", ans.dump());
    // `cj track` of something that does not exist says so.
    let out = d.cj(&["track", "/nonexistent/cj-test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
}

/// Defect 9: a full stdout is an error message and exit 1, never a panic.
#[test]
fn issue9_a_full_stdout_is_an_error_not_a_panic() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    let c = d.cursor();
    let tree = t.to_str().unwrap().to_string();
    for args in [
        vec!["cursor"],
        vec!["track", tree.as_str()],
        vec!["status"],
        vec!["status", "--json"],
        vec!["changes", "--since", c.as_str()],
        vec!["changes", "--json", "--since", c.as_str()],
        vec!["changes", "-0", "--since", c.as_str()],
    ] {
        let out = std::process::Command::new(crate::harness::CJ)
            .arg("--socket")
            .arg(&d.socket)
            .args(&args)
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("No space left"), "{args:?}: {err}");
    }
}

/// Defect 10: a name with a line break cannot inject a line into the
/// daemon's log, and long paths are shortened there.
#[test]
fn issue9_hostile_names_cannot_forge_log_lines() {
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree\ncj daemon: FORGED");
    fs::create_dir(&t).unwrap();
    let deep = Deep::new(&t, 3);
    d.track(&t);
    d.track(Path::new(std::ffi::OsStr::from_bytes(&deep.path)));
    d.stop();
    // Both roots are gone at the next start: the daemon logs them.
    fs::rename(&t, m.mnt.join("moved")).unwrap();
    d.spawn();
    d.stop();
    let log = d.log_text();
    assert!(log.contains("tree\\ncj daemon: FORGED"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("cj daemon: FORGED")),
        "{log}"
    );
    assert!(log.lines().all(|l| l.len() < 1024), "{log}");
}

/// Fills `dir`'s filesystem with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// Defect 12: a full state disk stops journaling, not the daemon. Queries
/// answer what is durable and say the rest is unknown; the daemon also
/// starts on a full disk; once there is room, the interval becomes a gap
/// that reconciliation closes.
#[test]
fn issue9_a_full_state_disk_is_waited_out() {
    let state = Mount::small_tmpfs("3m");
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&state.mnt, &["--commit-interval-ms", "10"]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    d.reconciled();
    let c0 = d.cursor();
    fs::write(t.join("before"), b"1").unwrap();
    d.cursor();
    let filler = fill(&state.mnt);
    // Enough records to need more room than is left.
    for i in 0..3000 {
        fs::write(t.join(format!("while_full{i:04}")), b"1").unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
        if st["journal"]["disk_full_since_ns"].is_u64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{st}\n{}",
            d.log_text()
        );
        fs::write(t.join("more"), b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The daemon is up; a cursor is refused with advice that works.
    let out = d.cj(&["cursor"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is full") && err.contains("Free space"),
        "{err}"
    );
    assert!(d.ok(&["status"]).contains("STOPPED"));
    // Queries answer what is durable, and ask for a rescan.
    let a = d.changes(&c0, None);
    assert_eq!(a.code, 3, "{}", a.dump());
    assert!(
        reasons(&a).iter().any(|r| r.contains("state_disk_full")),
        "{}",
        a.dump()
    );
    assert!(a.get(&t.join("before")).is_some(), "{}", a.dump());
    // A restart on the full disk comes up too.
    d.kill9();
    d.spawn();
    let a = d.changes(&c0, None);
    assert_eq!(a.code, 3, "{}", a.dump());
    // Room again: journaling resumes by itself and the gap closes.
    fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.cj(&["cursor"]).status.code() != Some(0) {
        assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let w = d.changes_wait(&c0, 60);
    assert_eq!(w.code, 0, "{}\n{}", w.dump(), d.log_text());
    assert!(w.get(&t.join("while_full2999")).is_some(), "{}", w.dump());
    assert!(w.get(&t.join("before")).is_some(), "{}", w.dump());
}

/// Probe cases that passed, kept passing: hostile names round-trip through
/// every output format.
#[test]
fn issue9_hostile_names_round_trip_in_every_format() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt.join("daemon"), &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    let c = d.cursor();
    let name: &[u8] = b"a\nb\tc\\d\xff\"e";
    let path = t.join(std::ffi::OsStr::from_bytes(name));
    fs::write(&path, b"1").unwrap();
    let want = path.as_os_str().as_bytes().to_vec();
    // JSON: path_b64 for a name that is not UTF-8.
    let a = d.changes(&c, None);
    assert!(a.get(&path).is_some(), "{}", a.dump());
    // -0: raw bytes.
    let out = d.cj(&["changes", "-0", "--since", &c]);
    assert!(out.stdout.split(|&b| b == 0).any(|p| p == want.as_slice()));
    // Text: one line per path, escaped, reversible.
    let out = d.cj(&["changes", "--since", &c]);
    let text = String::from_utf8(out.stdout).unwrap();
    let found = text.lines().any(|l| {
        l.rsplit('\t')
            .next()
            .and_then(cj_types::unescape_path)
            .is_some_and(|p| p == want)
    });
    assert!(found, "{text}");
}

/// Probe case that passed: a read-only state directory is a clear error at
/// start, not a crash or a silent run.
#[test]
fn issue9_a_read_only_state_directory_is_a_clear_error() {
    let mut state = Mount::new(Fs::Tmpfs);
    let out = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&state.mnt)
        .status()
        .unwrap();
    assert!(out.success());
    let out = std::process::Command::new(crate::harness::CJ)
        .arg("daemon")
        .arg("--state-dir")
        .arg(state.mnt.join("state"))
        .arg("--socket")
        .arg(state.dir.path().join("cj.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    state.unmount();
}
