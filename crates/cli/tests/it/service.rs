//! Running under systemd (issue 12): the notify protocol and gapless
//! restarts through the descriptor store, with a harness that speaks the
//! protocol as systemd does (a `NOTIFY_SOCKET` datagram socket receiving
//! `SCM_RIGHTS`, then `LISTEN_FDS` on the next start), and the unit file
//! checked by `systemd-analyze verify`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Fs, Mount};
use crate::oracle::{self, check};
use crate::snapshot;
use crate::workload::{self, Model, Rng};

/// The service manager's side of `sd_notify`.
struct FakeSystemd {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    /// Descriptors stored with FDSTORE=1, by name.
    store: Vec<(String, OwnedFd)>,
    messages: Vec<String>,
}

impl FakeSystemd {
    fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd {
            sock,
            path,
            store: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Reads notifications until one says `want` (e.g. "READY=1").
    fn wait_for(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.messages.iter().any(|m| m.lines().any(|l| l == want)) {
            assert!(Instant::now() < deadline, "no {want}: {:?}", self.messages);
            let Some((text, fds)) = receive(&self.sock) else {
                continue;
            };
            if text.lines().any(|l| l == "FDSTORE=1") {
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                for fd in fds {
                    self.store.push((name.clone(), fd));
                }
            }
            self.messages.push(text);
        }
    }

    fn stored(&self, name: &str) -> RawFd {
        self.store
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .unwrap_or_else(|| panic!("nothing stored as {name}: {:?}", self.messages))
    }
}

/// A daemon started (in `dir`) as systemd would: with a notify socket
/// served by a [`FakeSystemd`] in `sd_dir`, once it says READY=1.
fn under_systemd(sd_dir: &Path, dir: &Path, extra: &[&str]) -> (FakeSystemd, Daemon) {
    let mut sd = FakeSystemd::new(sd_dir);
    let mut d = Daemon::unstarted(dir, extra);
    d.env = vec![(
        "NOTIFY_SOCKET".into(),
        sd.path.to_str().unwrap().to_string(),
    )];
    d.spawn();
    sd.wait_for("READY=1");
    (sd, d)
}

/// One datagram and the descriptors it carries (`None` on timeout).
fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    cj_service::sd::receive(sock).ok()
}

/// Each model's worker, concurrently.
fn run(seed: u64, models: &mut [Model]) {
    std::thread::scope(|s| {
        for (k, model) in models.iter_mut().enumerate() {
            s.spawn(move || {
                let mut rng = Rng(seed ^ (0x5eed + k as u64).wrapping_mul(0x9e37_79b9));
                workload::run(&mut rng, model, 120);
            });
        }
    });
}

/// The oracle's restart scenario through the descriptor store: changes
/// before, during and after a clean restart are answered complete (exit 0)
/// with no `reconciled` entry, and no gap is journaled.
fn restart_through_the_fd_store(fs: Fs, seed: u64) {
    let m = Mount::new(fs);
    // The state directory on the tracked filesystem, as /var/lib is on /.
    let (mut sd, mut d) = under_systemd(m.dir.path(), &m.mnt, &["--baseline-refresh-secs", "0"]);
    let group = sd.stored("fanotify");
    let tree = m.mnt.join("tree");
    let outside = m.mnt.join("outside");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    d.track(&tree);
    d.reconciled();
    // Workers inside the tree only: a file renamed out of every root keeps
    // names the daemon never saw, and its later changes ask for a rescan
    // (`unresolved_object`) with or without a restart; this test is about
    // the restart.
    let mut rng = Rng(seed);
    let mut models: Vec<Model> = (0..oracle::WORKERS)
        .map(|k| {
            let own = tree.join(format!("w{k}"));
            std::fs::create_dir_all(own.join("sub")).unwrap();
            let mut model = Model::new(vec![own.clone(), own.join("sub")], Vec::new());
            workload::run(&mut rng, &mut model, 15);
            model
        })
        .collect();
    let _ = &outside;
    let c0 = d.cursor();
    let before = snapshot::take(&tree);
    run(seed, &mut models);
    d.stop();
    sd.wait_for("STOPPING=1");
    // Changes while no daemon runs wait in the group systemd keeps.
    run(seed ^ 1, &mut models);
    d.pass_fd = Some(group);
    sd.messages.clear();
    d.spawn();
    sd.wait_for("READY=1");
    assert!(
        d.log_text().contains("took over the fanotify group"),
        "{}",
        d.log_text()
    );
    run(seed ^ 2, &mut models);
    let after = snapshot::take(&tree);
    let answer = d.changes(&c0, None);
    // Complete, or asking only what a daemon that never stopped can ask
    // too: a hard-linked file whose other name it never saw
    // (`unresolved_object`; seen without any restart in this workload).
    let reasons: Vec<String> = answer.rescans().into_iter().map(|r| r.1).collect();
    assert!(
        answer.code == 0 || reasons.iter().all(|r| r == "unresolved_object"),
        "seed {seed}: {}",
        answer.dump()
    );
    if answer.code == 0 {
        let reconciled: Vec<_> = answer
            .entries
            .iter()
            .filter(|e| e["changes"].to_string().contains("reconciled"))
            .collect();
        assert!(reconciled.is_empty(), "seed {seed}: {reconciled:?}");
    }
    let out = check(&before, &after, &answer);
    assert!(
        out.misses.is_empty(),
        "seed {seed}: missed {:?}\n{}\n{}",
        out.misses,
        answer.dump(),
        d.log_text()
    );
    let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    let gaps = st["gaps"].as_array().unwrap();
    assert!(
        !gaps
            .iter()
            .any(|g| g["reason"] == "daemon_down" || g["reason"] == "unclean_stop"),
        "no start gap: {st}"
    );
    // Without the store (a plain restart) the gap is there, as before.
    d.stop();
    d.pass_fd = None;
    d.env.clear();
    d.spawn();
    let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["gaps"][0]["reason"], "daemon_down", "{st}");
    drop(d);
    drop(m);
}

#[test]
fn a_restart_through_the_fd_store_loses_nothing_and_records_no_gap_ext4() {
    for seed in oracle::seeds(&[31]) {
        restart_through_the_fd_store(Fs::Ext4, seed);
    }
}

#[test]
fn a_restart_through_the_fd_store_loses_nothing_and_records_no_gap_xfs() {
    for seed in oracle::seeds(&[32]) {
        restart_through_the_fd_store(Fs::Xfs, seed);
    }
}

/// Ordinary changes while the daemon restarts through the store: the answer
/// is complete at once, without any reconciliation.
#[test]
fn a_restart_through_the_fd_store_is_complete_without_reconciliation() {
    let m = Mount::new(Fs::Ext4);
    let (sd, mut d) = under_systemd(m.dir.path(), &m.mnt, &["--baseline-refresh-secs", "0"]);
    let t = m.mnt.join("tree");
    std::fs::create_dir_all(t.join("keep/sub")).unwrap();
    std::fs::write(t.join("keep/sub/old"), b"1").unwrap();
    std::fs::write(t.join("keep/gone"), b"1").unwrap();
    d.track(&t);
    d.reconciled();
    let c0 = d.cursor();
    std::fs::write(t.join("before"), b"1").unwrap();
    d.stop();
    // While no daemon runs.
    std::fs::write(t.join("during"), b"1").unwrap();
    std::fs::write(t.join("keep/sub/old"), b"2").unwrap();
    std::fs::rename(t.join("keep/sub"), t.join("moved")).unwrap();
    std::fs::remove_file(t.join("keep/gone")).unwrap();
    std::fs::create_dir(t.join("newdir")).unwrap();
    std::fs::write(t.join("newdir/f"), b"1").unwrap();
    d.pass_fd = Some(sd.stored("fanotify"));
    d.spawn();
    std::fs::write(t.join("after"), b"1").unwrap();
    let a = d.changes(&c0, None);
    assert_eq!(a.code, 0, "{}", a.dump());
    for p in [
        "before",
        "during",
        "keep/sub",
        "moved",
        "keep/gone",
        "newdir",
        "newdir/f",
        "after",
    ] {
        let changes = a.changes_of(&t.join(p));
        assert!(!changes.is_empty(), "{p} missing: {}", a.dump());
        assert!(
            !changes.contains(&"reconciled".to_string()),
            "{p}: {changes:?}"
        );
    }
}

#[test]
fn a_killed_daemon_restarted_with_its_group_still_records_the_gap() {
    let m = Mount::new(Fs::Tmpfs);
    let (sd, mut d) = under_systemd(m.dir.path(), &m.dir.path().join("daemon"), &[]);
    d.track(&m.mnt);
    d.reconciled();
    let c0 = d.cursor();
    std::fs::write(m.mnt.join("a"), b"1").unwrap();
    d.kill9();
    d.pass_fd = Some(sd.stored("fanotify"));
    d.spawn();
    // What the killed daemon read but had not journaled is lost: the gap
    // is recorded, and reconciliation closes it.
    let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["gaps"][0]["reason"], "unclean_stop", "{st}");
    let w = d.changes_wait(&c0, 60);
    assert_eq!(w.code, 0, "{}", w.dump());
    assert!(w.get(&m.mnt.join("a")).is_some(), "{}", w.dump());
}

#[test]
fn a_descriptor_that_is_not_a_fanotify_group_is_refused() {
    let m = Mount::new(Fs::Tmpfs);
    let file = std::fs::File::open(m.dir.path()).unwrap();
    let mut d = Daemon::unstarted(&m.dir.path().join("daemon"), &[]);
    d.pass_fd = Some(file.as_raw_fd());
    d.spawn();
    d.track(&m.mnt);
    assert!(d.log_text().contains("not usable"), "{}", d.log_text());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: apt-get install systemd (.ci/run does)");
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd/cj.service"),
    )
    .unwrap();
    // The binary where the unit expects it, for the check.
    let unit = unit.replace("/usr/local/bin/cj", crate::harness::CJ);
    let path = dir.path().join("cj.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("cj.service"), "{err}");
}

#[test]
fn the_manual_page_and_completions_come_from_the_cli_definition() {
    let run = |what: &str| {
        let out = Command::new(crate::harness::CJ)
            .args(["generate", what])
            .output()
            .unwrap();
        assert!(out.status.success(), "{what}");
        String::from_utf8(out.stdout).unwrap()
    };
    let man = run("man");
    assert!(man.starts_with(".ie") && man.contains(".TH cj 1"), "{man}");
    for sub in ["follow", "consumer", "changes", "daemon"] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let text = run(shell);
        assert!(
            text.contains("consumer") && text.contains("follow"),
            "{shell}"
        );
    }
}

fn config_of(d: &Daemon) -> serde_json::Value {
    let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    st["config"].clone()
}

fn wait_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_config_file_sets_the_daemon_flags_override_it_and_sighup_reloads() {
    let m = Mount::new(Fs::Tmpfs);
    let file = m.dir.path().join("cj.toml");
    std::fs::write(
        &file,
        "# cj settings\nretain_mib = 100\nfollow_stall_ms = 5000\nconsumer_idle_days = 0\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--config", f, "--retain-days", "3"],
    );
    let c = config_of(&d);
    assert_eq!(c["retain_mib"], 100, "{c}");
    assert_eq!(c["retain_days"], 3, "a flag over the file: {c}");
    assert_eq!(c["follow_stall_ms"], 5000);
    assert_eq!(c["consumer_idle_days"], serde_json::Value::Null);
    // Reload: what can change does; a restart-only key is named.
    std::fs::write(
        &file,
        "retain_mib = 50\nretain_days = 9\nconsumer_cap_mib = 4096\ncommit_interval_ms = 20\n",
    )
    .unwrap();
    let pid = d.child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_log(&d, "SIGHUP: reloaded");
    let log = d.log_text();
    assert!(log.contains("retain_mib 100 -> 50"), "{log}");
    assert!(log.contains("follow_stall_ms 5000 -> 30000"), "{log}");
    assert!(!log.contains("retain_days 3"), "the flag still wins: {log}");
    assert!(log.contains("commit_interval_ms changed"), "{log}");
    let c = config_of(&d);
    assert_eq!(
        (c["retain_mib"].clone(), c["consumer_cap_mib"].clone()),
        (50.into(), 4096.into())
    );
    assert_eq!(c["retain_days"], 3);
    // A broken file changes nothing, and says where it is wrong.
    std::fs::write(&file, "retain_mib = 10\nretian_days = 2\n").unwrap();
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_log(&d, "the running configuration stays");
    assert!(d.log_text().contains("line 2"), "{}", d.log_text());
    assert_eq!(config_of(&d)["retain_mib"], 50);
    d.ok(&["status"]);
}

#[test]
fn a_bad_config_file_stops_the_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cj.toml");
    std::fs::write(&file, "retain_mib = 1\n\nreconcile = \"fast\"\n").unwrap();
    let out = Command::new(crate::harness::CJ)
        .args(["daemon", "--config", file.to_str().unwrap()])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("reconcile"), "{err}");
    let out = Command::new(crate::harness::CJ)
        .args(["daemon", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
