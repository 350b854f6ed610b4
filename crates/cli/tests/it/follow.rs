//! Follow streams and durable consumers against a real daemon (issue 11):
//! the oracle over a follow stream across the replay/live seam and across
//! a kill -9, consumer retention and its cap, the Python example client,
//! and a load test with slow followers.

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Answer, Daemon, Fs, Mount, CJ};
use crate::oracle::{self, check};
use crate::snapshot;
use crate::workload::Rng;

fn seq_of(cursor: &str) -> u64 {
    cj_types::Cursor::parse(cursor).unwrap().seq
}

/// `cj follow --json ...` in a child process; its lines are collected by a
/// thread.
struct CliFollower {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl CliFollower {
    fn start(d: &Daemon, args: &[&str]) -> CliFollower {
        let mut child = Command::new(CJ)
            .arg("--socket")
            .arg(&d.socket)
            .args(["follow", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).split(b'\n') {
                let Ok(l) = l else { return };
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&l).unwrap());
            }
        });
        CliFollower { child, lines }
    }

    /// Every line so far, once a line's cursor reaches `seq`.
    fn until(&self, seq: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            let reached = lines
                .iter()
                .any(|l| l["cursor"].as_str().is_some_and(|c| seq_of(c) >= seq));
            if reached {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the follower never reached seq {seq}; last lines: {:?}",
                &lines[lines.len().saturating_sub(3)..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CliFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parent(p: &[u8]) -> Option<Vec<u8>> {
    let i = p.iter().rposition(|b| *b == b'/')?;
    Some(if i == 0 {
        b"/".to_vec()
    } else {
        p[..i].to_vec()
    })
}

/// What a consumer knows from a follow stream, as an answer the oracle can
/// judge: each line's path, both names of a rename, the parent directory
/// of every name added, removed or renamed (docs/protocol.md: follow does
/// not send those as lines of their own), and every rescan scope that no
/// later `resolved` line closed.
pub fn as_answer(lines: &[Value]) -> Answer {
    let mut entries: Vec<Value> = Vec::new();
    let mut changes = Vec::new();
    let mut add = |path: Vec<u8>, subtree: bool| {
        let mut m = serde_json::Map::new();
        cj_types::protocol::put_path(&mut m, "path", &path);
        m.insert("kind".into(), Value::from("unknown"));
        m.insert("changes".into(), Value::from(vec!["modified"]));
        m.insert("exists".into(), Value::from(true));
        if subtree {
            m.insert("subtree".into(), Value::from(true));
        }
        changes.push(cj_client::parse_change(&m).unwrap());
        entries.push(Value::Object(m));
    };
    let mut rescans: Vec<(u64, Vec<u8>, String)> = Vec::new();
    let mut resolved: Vec<(u64, Vec<u8>)> = Vec::new();
    for l in lines {
        let Some(line) = cj_client::FollowLine::from_json(l.as_object().unwrap()).unwrap() else {
            continue;
        };
        match line {
            cj_client::FollowLine::Change { change, .. } => {
                let entry_change = change.changes.iter().any(|c| {
                    matches!(
                        c.as_str(),
                        "created" | "deleted" | "renamed_from" | "renamed_to" | "replaced"
                    )
                });
                let names = [
                    Some(change.path.clone()),
                    change.renamed_from,
                    change.renamed_to,
                ];
                for p in names.into_iter().flatten() {
                    if entry_change {
                        if let Some(dir) = parent(&p) {
                            add(dir, false);
                        }
                    }
                    add(p, change.subtree);
                }
            }
            cj_client::FollowLine::Rescan { scopes, cursor } => {
                for r in scopes {
                    rescans.push((
                        seq_of(&cursor),
                        r.path,
                        cj_client::RescanReason::join(&r.reasons),
                    ))
                }
            }
            cj_client::FollowLine::Resolved {
                scopes, through, ..
            } => resolved.extend(scopes.into_iter().map(|s| (through, s))),
            _ => {}
        }
    }
    let below = |p: &[u8], root: &[u8]| {
        p == root || (p.starts_with(root) && p.get(root.len()) == Some(&b'/'))
    };
    let open: Vec<cj_client::Rescan> = rescans
        .into_iter()
        .filter(|(seq, path, _)| {
            !resolved
                .iter()
                .any(|(through, scope)| through >= seq && below(path, scope))
        })
        .map(|(_, path, reason)| cj_client::Rescan {
            path,
            reasons: cj_client::RescanReason::parse_list(&reason),
        })
        .collect();
    let typed = cj_client::Answer {
        entries: changes,
        cursor: String::new(),
        complete: open.is_empty(),
        rescan: open,
    };
    Answer {
        entries,
        last: Value::Null,
        code: 0,
        typed,
    }
}

/// Change lines' seqs: strictly increasing (each record once, in order).
fn change_seqs(lines: &[Value]) -> Vec<u64> {
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "a record out of order or twice: {w:?}");
    }
    seqs
}

fn follow_oracle(fs: Fs, kill: bool, seed: u64) {
    let mut s = oracle::setup(fs, &[], false, seed);
    let mut rng = Rng(seed);
    let mut models = oracle::populate(&mut rng, &s.tree, &s.outside, oracle::WORKERS);
    let c0 = s.d.cursor();
    let before = snapshot::take(&s.tree);
    let follower = std::thread::scope(|sc| {
        let models = &mut models;
        let h = sc.spawn(move || oracle::run_workers(seed, models, 150));
        // The follower starts mid-workload: its replay and the live
        // records meet while changes keep coming.
        std::thread::sleep(Duration::from_millis(100 + rng.below(200) as u64));
        let f = CliFollower::start(&s.d, &["--since", &c0]);
        if kill {
            std::thread::sleep(Duration::from_millis(rng.below(300) as u64));
            s.d.kill9();
            std::thread::sleep(Duration::from_millis(200));
            s.d.spawn();
        }
        h.join().unwrap();
        f
    });
    let after = snapshot::take(&s.tree);
    // Everything journaled, gaps closed by reconciliation.
    let end = s.d.changes_wait(&c0, 120).cursor();
    let lines = follower.until(seq_of(&end));
    change_seqs(&lines);
    let answer = as_answer(&lines);
    let out = check(&before, &after, &answer);
    assert!(
        out.misses.is_empty(),
        "seed {seed}: the follow stream missed {:?}\nlines:\n{}\ndaemon log:\n{}",
        out.misses,
        lines
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        s.d.log_text()
    );
    assert!(
        answer.typed.rescan.is_empty(),
        "seed {seed}: unresolved rescans {:?}",
        answer.typed.rescan
    );
    let done = lines.iter().filter(|l| l["history_done"] == true).count();
    assert!(done >= 1, "no history_done marker");
    if kill {
        assert!(
            lines
                .iter()
                .any(|l| l["rescan"].is_array() || l["resolved"].is_array()),
            "a kill -9 leaves a gap the stream reports"
        );
    }
    drop(follower);
    drop(s.d);
    drop(s.m);
}

#[test]
fn follow_covers_every_change_across_the_replay_live_seam() {
    for seed in oracle::seeds(&[11, 12]) {
        follow_oracle(Fs::Ext4, false, seed);
    }
}

#[test]
fn a_follower_rides_through_kill9_and_sees_every_change_with_reconciliation() {
    for seed in oracle::seeds(&[21]) {
        follow_oracle(Fs::Ext4, true, seed);
        follow_oracle(Fs::Btrfs, true, seed);
    }
}

#[test]
fn no_reconnect_exits_with_the_cursor_to_resume_from() {
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&m.dir.path().join("daemon"), &[]);
    d.track(&m.mnt);
    let child = Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .args(["follow", "--no-reconnect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cj follow --since cj1."), "{err}");
}

fn status(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["status", "--json"])).unwrap()
}

fn make_files(dir: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}-{i:06}")), b"x").unwrap();
    }
}

#[test]
fn consumers_hold_records_past_retention_until_the_cap_then_hear_cursor_expired() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(
        &m.dir.path().join("daemon"),
        &[
            "--test-segment-bytes",
            "65536",
            "--test-retain-bytes",
            "262144",
            "--test-consumer-cap-bytes",
            "1048576",
        ],
    );
    let tree = m.mnt.join("tree");
    std::fs::create_dir(&tree).unwrap();
    d.track(&tree);
    d.reconciled();
    let tree_s = tree.to_str().unwrap();
    d.ok(&["consumer", "add", "slow", tree_s]);
    let plain = d.cursor();
    make_files(&tree, "a", 4000);
    let _ = d.cursor();
    let st = status(&d);
    let bytes = st["journal"]["disk_bytes"].as_u64().unwrap();
    assert!(bytes > 262_144, "past the budget: {bytes}");
    // Held for the consumer: complete, from its place.
    let out = d.cj(&["changes", "--consumer", "slow", "-0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = d.changes(&plain, None);
    assert_eq!(
        a.code,
        0,
        "a plain cursor after it is kept too: {}",
        a.dump()
    );
    // Past the cap the oldest records go; the consumer is told.
    make_files(&tree, "b", 12_000);
    let _ = d.cursor();
    let bytes = status(&d)["journal"]["disk_bytes"].as_u64().unwrap();
    assert!(bytes <= 1_048_576 + 65_536, "capped: {bytes}");
    let out = d.cj(&["changes", "--consumer", "slow", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["rescan"][0]["reason"], "cursor_expired", "{last}");
    assert_eq!(last["rescan"][0]["path"], tree_s);
    let list: Value = serde_json::from_str(&d.ok(&["consumer", "list", "--json"])).unwrap();
    assert_eq!(list["consumers"][0]["expired"], true);
    // Acknowledging the answer's cursor puts it back on track.
    let cursor = last["cursor"].as_str().unwrap();
    d.ok(&["consumer", "ack", "slow", cursor]);
    let out = d.cj(&["changes", "--consumer", "slow", "--ack"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_python_example_client_follows_and_acks() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.dir.path().join("daemon"), &[]);
    d.track(&m.mnt);
    d.reconciled();
    d.ok(&["consumer", "add", "py", m.mnt.to_str().unwrap()]);
    for name in ["one", "two\nlines", "three"] {
        std::fs::write(m.mnt.join(name), b"x").unwrap();
    }
    let mut bad = m.mnt.as_os_str().as_bytes().to_vec();
    bad.extend_from_slice(b"/bad-\xff");
    std::fs::write(std::ffi::OsStr::from_bytes(&bad), b"x").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/follow_and_ack.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--socket", d.socket.to_str().unwrap()])
        .args(["--consumer", "py", "--stop-name", "STOP"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    // Live, after the replay.
    while !text.contains("history done") {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text += &line;
    }
    std::fs::write(m.mnt.join("STOP"), b"x").unwrap();
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        rest
    });
    let out = wait_output(child, Duration::from_secs(60));
    text += &rest.join().unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["/one", "/two\\nlines", "/three", "/bad-\\udcff", "/STOP"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // It acknowledged up to STOP: nothing but later changes remain.
    let out = d.cj(&["changes", "--consumer", "py", "-0"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = out.stdout;
    let after_cursor = &stdout[stdout.iter().position(|b| *b == 0).unwrap() + 1..];
    assert!(
        !after_cursor
            .split(|b| *b == 0)
            .any(|p| p.ends_with(b"/one") || p.ends_with(b"/STOP")),
        "{}",
        String::from_utf8_lossy(after_cursor)
    );
}

fn wait_output(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The load test of issue 11: 16 followers, two of them stop reading for a
/// while, as a workload produces events as fast as it can.
#[test]
fn sixteen_followers_two_slow_every_record_exactly_once() {
    const FOLLOWERS: usize = 16;
    const SLOW: usize = 2;
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.dir.path().join("daemon"), &["--follow-stall-ms", "300"]);
    let tree = m.mnt.join("tree");
    std::fs::create_dir(&tree).unwrap();
    d.track(&tree);
    d.reconciled();
    let c0 = d.cursor();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let handles: Vec<_> = (0..FOLLOWERS)
        .map(|k| {
            let socket = d.socket.clone();
            let c0 = c0.clone();
            let done = done.clone();
            std::thread::spawn(move || follower(k < SLOW, &socket, &c0, &done))
        })
        .collect();
    // As many events as the machine allows, for a while.
    let t0 = Instant::now();
    let mut made = 0usize;
    while t0.elapsed() < Duration::from_secs(3) {
        let dir = tree.join(format!("d{}", made / 1000));
        if made.is_multiple_of(1000) {
            std::fs::create_dir(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{made}")), b"x").unwrap();
        made += 1;
    }
    let end = seq_of(&d.cursor());
    done.store(end, std::sync::atomic::Ordering::SeqCst);
    let results: Vec<(Vec<u64>, Vec<PathBuf>, bool)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let reference = &results[SLOW].0;
    let files: std::collections::BTreeSet<&PathBuf> = results[SLOW].1.iter().collect();
    for i in 0..made {
        let p = tree.join(format!("d{}", i / 1000)).join(format!("f{i}"));
        assert!(
            files.contains(&p),
            "{} never reached a follower",
            p.display()
        );
    }
    for (k, (seqs, _, cut)) in results.iter().enumerate() {
        assert_eq!(seqs, reference, "follower {k} saw another sequence");
        if k < SLOW {
            assert!(cut, "slow follower {k} was never cut off");
        }
    }
    let st = status(&d);
    assert_eq!(st["capture"]["overflows"], 0);
    eprintln!(
        "load: {made} files in 3 s, {} records, {FOLLOWERS} followers",
        reference.len()
    );
}

/// Follows from `c0` until `done` holds a seq and a line reaches it.
/// Returns the change seqs, the paths, and whether it was cut off.
fn follower(
    slow: bool,
    socket: &Path,
    c0: &str,
    done: &std::sync::atomic::AtomicU64,
) -> (Vec<u64>, Vec<PathBuf>, bool) {
    let mut stream = cj_client::Follow::start(
        socket,
        cj_client::FollowOptions {
            heartbeat: Some(Duration::from_millis(100)),
            ..cj_client::FollowOptions::since(c0)
        },
    )
    .unwrap();
    let (mut seqs, mut paths, mut cut) = (Vec::new(), Vec::new(), false);
    let mut slept = false;
    for line in stream.by_ref() {
        let line = line.unwrap();
        if slow && !slept && seqs.len() >= 200 {
            slept = true;
            // Stops reading for well past the daemon's stall limit.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let at = seq_of(line.cursor());
        if let cj_client::FollowLine::Change { change, seq, .. } = line {
            seqs.push(seq);
            paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(&change.path)));
        }
        if at >= done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    if let Some(n) = stream.take_notice() {
        cut |= n.contains("cut off");
    }
    (seqs, paths, cut)
}
