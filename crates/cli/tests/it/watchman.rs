//! The Watchman endpoint with the real clients (issue 14): pywatchman
//! (BSER v2), fb-watchman (BSER v1, the client Jest uses), the
//! `watchman_client` crate (BSER v2, a dev-dependency) and
//! jest-haste-map, installed by `scripts/test-clients` (which
//! `scripts/test` runs). Each watches a tree, takes a clock, and gets
//! answers since it that cover every change (an oracle over random
//! operations, checked against snapshots), across a kill -9 and a clean
//! restart with changes made while the daemon was down, without a fresh
//! instance.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Daemon, Fs, Mount, CJ};
use crate::snapshot;
use crate::workload::{self, Model, Rng};

fn clients_dir() -> PathBuf {
    let d = std::env::var_os("CJ_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-clients"));
    assert!(
        d.join("venv/bin/python").exists() && d.join("node_modules/fb-watchman").exists(),
        "the Watchman clients are not installed in {}: run scripts/test-clients \
         (scripts/test does)",
        d.display()
    );
    d
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/clients")
        .join(name)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Python,
    Node,
    /// The `watchman_client` crate (crates.io).
    Rust,
}

fn client(kind: Kind, sock: &Path, args: &[&str]) -> Value {
    if let Kind::Rust = kind {
        return rust_client(sock, args);
    }
    let dir = clients_dir();
    let mut cmd = match kind {
        Kind::Python => {
            let mut c = Command::new(dir.join("venv/bin/python"));
            c.arg(script("wm.py")).arg(sock);
            c
        }
        Kind::Node => {
            let mut c = Command::new("node");
            c.arg(script("wm.js"));
            c
        }
        Kind::Rust => unreachable!(),
    };
    let out = cmd
        .args(args)
        .env("WATCHMAN_SOCK", sock)
        .env("CJ_TEST_CLIENTS", &dir)
        .output()
        .expect("python3 and node are installed (.ci/run)");
    assert!(
        out.status.success(),
        "{kind:?} client {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap()
}

/// Names as bytes: the crate's own `NameField` is a `PathBuf`, which
/// serde fills only from UTF-8, and the workload makes other names too.
#[derive(serde::Deserialize, Debug, Clone)]
struct NameExists {
    name: serde_bytes::ByteBuf,
    #[allow(dead_code)]
    exists: bool,
}

impl watchman_client::prelude::QueryFieldList for NameExists {
    fn field_list() -> Vec<&'static str> {
        vec!["name", "exists"]
    }
}

/// The commands of `clients/wm.py`, through the `watchman_client` crate.
fn rust_client(sock: &Path, args: &[&str]) -> Value {
    use watchman_client::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: Result<Value, Box<dyn std::error::Error>> = rt.block_on(async {
        let client = Connector::new().unix_domain_socket(sock).connect().await?;
        let root = client
            .resolve_root(CanonicalPath::canonicalize(args[1])?)
            .await?;
        let clock_of = |c: Clock| match c {
            Clock::Spec(ClockSpec::StringClock(s)) => s,
            other => panic!("unexpected clock {other:?}"),
        };
        let since = |c: &str| Some(Clock::Spec(ClockSpec::StringClock(c.to_string())));
        match args[0] {
            "clock" => {
                let c = client.clock(&root, SyncTimeout::Default).await?;
                Ok(serde_json::json!({"clock": clock_of(Clock::Spec(c))}))
            }
            "query" => {
                let r = client
                    .query::<NameExists>(
                        &root,
                        QueryRequestCommon {
                            since: since(args[2]),
                            ..Default::default()
                        },
                    )
                    .await?;
                let files: Vec<String> = r
                    .files
                    .unwrap_or_default()
                    .iter()
                    .map(|f| f.name.iter().map(|b| format!("{b:02x}")).collect())
                    .collect();
                Ok(serde_json::json!({"fresh": r.is_fresh_instance, "clock": clock_of(r.clock), "files": files}))
            }
            "subscribe" => {
                let (mut sub, _) = client
                    .subscribe::<NameOnly>(
                        &root,
                        SubscribeRequest {
                            since: since(args[2]),
                            ..Default::default()
                        },
                    )
                    .await?;
                std::fs::write(Path::new(args[1]).join(args[3]), "x")?;
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
                let mut seen = false;
                while !seen {
                    let next = tokio::time::timeout_at(deadline, sub.next()).await;
                    let Ok(Ok(data)) = next else { break };
                    if let watchman_client::SubscriptionData::FilesChanged(r) = data {
                        seen = r
                            .files
                            .unwrap_or_default()
                            .iter()
                            .any(|f| *f.name == Path::new(args[3]));
                    }
                }
                Ok(serde_json::json!({"seen": seen}))
            }
            other => panic!("unknown command {other}"),
        }
    });
    result.unwrap_or_else(|e| panic!("watchman_client {args:?}: {e}"))
}

/// The names of an answer (hex in the clients' output), as bytes.
fn names(answer: &Value) -> BTreeSet<Vec<u8>> {
    answer["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| unhex(n.as_str().unwrap()))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Every path that differs between the snapshots, relative to `root`,
/// is named by the answer (fb-watchman reads names as UTF-8: compared
/// lossily for it).
#[allow(clippy::too_many_arguments)]
fn assert_covers(
    kind: Kind,
    root: &Path,
    before: &snapshot::Snapshot,
    after: &snapshot::Snapshot,
    since: &str,
    answer: &Value,
    what: &str,
    d: &Daemon,
) {
    // A fresh instance only where the journal cannot know what a
    // directory held (design 16): it then lists every file that exists.
    let fresh = answer["fresh"] == true;
    if fresh {
        let log = d.log_text();
        assert!(
            log.contains("watchman: a fresh instance") && log.contains(FRESH_FOREIGN),
            "{what}: a fresh instance: {answer}\n{log}"
        );
        eprintln!("oracle: {what}: a fresh instance, accepted: {FRESH_FOREIGN}");
    }
    let names = names(answer);
    let mut missed = Vec::new();
    for p in snapshot::diff(before, after) {
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        let rel = rel.as_os_str().as_bytes();
        if rel.is_empty() || (fresh && after.get(&p).is_none()) {
            continue;
        }
        let want = match kind {
            Kind::Python | Kind::Rust => rel.to_vec(),
            Kind::Node => String::from_utf8_lossy(rel).as_bytes().to_vec(),
        };
        if !names.contains(&want) {
            missed.push(format!(
                "{} (before {:?}, after {:?})",
                String::from_utf8_lossy(rel),
                before.get(&p),
                after.get(&p)
            ));
        }
    }
    if !missed.is_empty() {
        let since = since.strip_prefix("c:").unwrap_or(since);
        let journal = d.ok(&[
            "changes",
            "--json",
            "--since",
            since,
            root.to_str().unwrap(),
        ]);
        panic!(
            "{what}: {kind:?} missed {missed:?}\nanswer: {answer}\ncj's answer:\n{journal}\n{}",
            d.log_text()
        );
    }
}

/// What the daemon logs for the one fresh instance the oracle accepts
/// (`cj_service::watchman::query::UNKNOWN_CONTENTS`).
const FRESH_FOREIGN: &str = "held one whose contents the journal never named";

fn models(rng: &mut Rng, proj: &Path, outside: &Path) -> Vec<Model> {
    (0..2)
        .map(|k| {
            let own = proj.join(format!("w{k}"));
            std::fs::create_dir_all(own.join("sub")).unwrap();
            std::fs::create_dir_all(outside).unwrap();
            let mut m = Model::new(
                vec![own.clone(), own.join("sub"), proj.join("shared")],
                vec![outside.to_path_buf()],
            );
            workload::run(rng, &mut m, 10);
            m
        })
        .collect()
}

fn batch(rng: &mut Rng, models: &mut [Model], ops: usize) {
    for m in models.iter_mut() {
        workload::run(rng, m, ops);
    }
}

fn oracle(kind: Kind, fs: Fs, seed: u64) {
    let m = Mount::new(fs);
    let sock = m.dir.path().join("wm.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let mut d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--watchman-socket", &sock_s],
    );
    let proj = m.mnt.join("proj");
    std::fs::create_dir_all(proj.join("shared")).unwrap();
    std::fs::write(proj.join(".watchmanconfig"), "{}").unwrap();
    let p = proj.to_str().unwrap();
    // The first watch tracks the project; the baseline, then the clock.
    client(kind, &sock, &["clock", p]);
    d.reconciled();
    let mut rng = Rng(seed);
    let mut models = models(&mut rng, &proj, &m.mnt.join("outside"));
    let c0 = client(kind, &sock, &["clock", p]);
    let before = snapshot::take(&proj);
    batch(&mut rng, &mut models, 25);
    let after1 = snapshot::take(&proj);
    let q1 = client(kind, &sock, &["query", p, c0["clock"].as_str().unwrap()]);

    let c0 = c0["clock"].as_str().unwrap().to_string();
    assert_covers(kind, &proj, &before, &after1, &c0, &q1, "while up", &d);
    // CJ_ORACLE_HISTORY=1: cj's own answer since the first clock, for
    // finding where a later phase's miss came from.
    if std::env::var_os("CJ_ORACLE_HISTORY").is_some() {
        let c = c0.strip_prefix("c:").unwrap_or(&c0);
        eprintln!(
            "oracle: cj's answer since the first clock:\n{}",
            d.ok(&["changes", "--json", "--since", c, p])
        );
    }
    // Killed, changes while down, started: the old clock still answers.
    d.kill9();
    batch(&mut rng, &mut models, 25);
    d.spawn();
    let after2 = snapshot::take(&proj);
    let q2 = client(kind, &sock, &["query", p, q1["clock"].as_str().unwrap()]);
    let c1 = q1["clock"].as_str().unwrap();
    assert_covers(kind, &proj, &after1, &after2, c1, &q2, "after kill -9", &d);
    // A clean stop, changes while down, a start.
    d.stop();
    batch(&mut rng, &mut models, 25);
    d.spawn();
    let after3 = snapshot::take(&proj);
    let q3 = client(kind, &sock, &["query", p, q2["clock"].as_str().unwrap()]);
    let c2 = q2["clock"].as_str().unwrap();
    assert_covers(
        kind,
        &proj,
        &after2,
        &after3,
        c2,
        &q3,
        "after a downtime",
        &d,
    );
    // A subscription sees a new file.
    let s = client(
        kind,
        &sock,
        &[
            "subscribe",
            p,
            q3["clock"].as_str().unwrap(),
            "subscribed.js",
        ],
    );
    assert_eq!(s["seen"], true, "{s}\n{}", d.log_text());
}

#[test]
fn pywatchman_answers_cover_every_change_across_restarts() {
    for seed in crate::oracle::seeds(&[61]) {
        oracle(Kind::Python, Fs::Ext4, seed);
    }
}

#[test]
fn watchman_client_crate_answers_cover_every_change_across_restarts() {
    for seed in crate::oracle::seeds(&[63]) {
        oracle(Kind::Rust, Fs::Btrfs, seed);
    }
}

#[test]
fn fb_watchman_answers_cover_every_change_across_restarts() {
    for seed in crate::oracle::seeds(&[62]) {
        oracle(Kind::Node, Fs::Xfs, seed);
    }
}

fn haste(bin: &Path, sock: &Path, proj: &Path, crawler: &str, cache: &Path) -> Vec<String> {
    std::fs::create_dir_all(cache).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("node")
        .arg(script("haste.js"))
        .arg(proj)
        .arg(crawler)
        .arg(cache)
        .env("PATH", path)
        .env("WATCHMAN_SOCK", sock)
        .env("CJ_TEST_CLIENTS", clients_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jest-haste-map ({crawler}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(
        out.stdout
            .trim_ascii_end()
            .rsplit(|b| *b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap()
}

fn watchman_stats(d: &Daemon) -> (u64, u64) {
    let v: Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    (
        v["watchman"]["queries"].as_u64().unwrap(),
        v["watchman"]["fresh_instances"].as_u64().unwrap(),
    )
}

#[test]
fn jest_haste_map_crawls_through_cj_and_stays_incremental_across_a_restart() {
    let m = Mount::new(Fs::Ext4);
    let sock = m.dir.path().join("wm.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let mut d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--watchman-socket", &sock_s],
    );
    // `watchman` on PATH is cj (jest runs `watchman --version` first).
    let bin = m.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(CJ, bin.join("watchman")).unwrap();
    let proj = m.mnt.join("proj");
    for dir in ["src/a", "src/b", "lib", "node_modules/dep"] {
        std::fs::create_dir_all(proj.join(dir)).unwrap();
    }
    std::fs::write(proj.join(".watchmanconfig"), "{}").unwrap();
    std::fs::write(proj.join("package.json"), "{\"name\": \"p\"}").unwrap();
    for (i, f) in [
        "src/a/one.js",
        "src/b/two.js",
        "lib/three.js",
        "node_modules/dep/index.js",
        "src/a/data.json",
        "src/a/skip.txt",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(proj.join(f), format!("module.exports = {i};\n")).unwrap();
    }
    let cache = m.dir.path().join("cache");
    let first = haste(&bin, &sock, &proj, "watchman", &cache);
    d.reconciled();
    let node = haste(&bin, &sock, &proj, "node", &m.dir.path().join("n1"));
    assert_eq!(first, node);
    assert!(first.contains(&"src/a/one.js".to_string()), "{first:?}");
    // Killed; changes while down; started: jest asks since its clock.
    d.kill9();
    std::fs::write(proj.join("src/b/new.js"), "1").unwrap();
    std::fs::remove_file(proj.join("lib/three.js")).unwrap();
    std::fs::rename(proj.join("src/a"), proj.join("src/renamed")).unwrap();
    d.spawn();
    let second = haste(&bin, &sock, &proj, "watchman", &cache);
    let node = haste(&bin, &sock, &proj, "node", &m.dir.path().join("n2"));
    assert_eq!(second, node);
    assert!(
        second.contains(&"src/renamed/one.js".to_string()),
        "{second:?}"
    );
    let (queries, fresh) = watchman_stats(&d);
    assert!(queries >= 1, "jest did not query cj");
    assert_eq!(
        fresh,
        0,
        "jest's clock gave a fresh instance after the restart\n{}",
        d.log_text()
    );
}

#[test]
fn the_watchman_command_is_cj_under_that_name() {
    let m = Mount::new(Fs::Tmpfs);
    let sock = m.dir.path().join("wm.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let _d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--watchman-socket", &sock_s],
    );
    let bin = m.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(CJ, bin.join("watchman")).unwrap();
    let wm = |args: &[&str]| {
        Command::new(bin.join("watchman"))
            .args(args)
            .env("WATCHMAN_SOCK", &sock)
            .output()
            .unwrap()
    };
    let v = wm(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).trim().starts_with("20"));
    let s = wm(&["--no-pretty", "get-sockname"]);
    let j: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(j["sockname"], sock_s.as_str());
    let p = m.mnt.to_str().unwrap();
    let w = wm(&["--no-pretty", "watch-project", p]);
    let j: Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(j["watch"], p, "{j}");
    // Refused politely, with what to do instead.
    let r = wm(&["shutdown-server"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stdout).contains("refused"));
    // A bad request is an error answer, not a dropped connection.
    let e = wm(&["--no-pretty", "query", p, "not-an-object"]);
    assert!(!e.status.success());
    let j: Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(j["error"].is_string(), "{j}");
}

/// A directory renamed twice since the clock (d -> t -> u): its old
/// names are listed (exists: false) from where the tree is now, through
/// every name on the way.
#[test]
fn a_directory_renamed_twice_lists_its_old_names() {
    let m = Mount::new(Fs::Tmpfs);
    let sock = m.dir.path().join("wm.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--watchman-socket", &sock_s],
    );
    let proj = m.mnt.join("proj");
    std::fs::create_dir_all(proj.join("d/sub")).unwrap();
    std::fs::write(proj.join(".watchmanconfig"), "{}").unwrap();
    std::fs::write(proj.join("d/x"), "1").unwrap();
    std::fs::write(proj.join("d/sub/y"), "1").unwrap();
    let p = proj.to_str().unwrap();
    client(Kind::Python, &sock, &["clock", p]);
    d.reconciled();
    let c = client(Kind::Python, &sock, &["clock", p]);
    std::fs::rename(proj.join("d"), proj.join("t")).unwrap();
    std::fs::rename(proj.join("t"), proj.join("u")).unwrap();
    let q = client(
        Kind::Python,
        &sock,
        &["query", p, c["clock"].as_str().unwrap()],
    );
    assert_eq!(q["fresh"], false, "{q}");
    let names = names(&q);
    for want in ["d", "d/x", "d/sub", "d/sub/y", "u/x", "u/sub/y"] {
        assert!(names.contains(want.as_bytes()), "{want} missing: {q}");
    }
}

/// A daemon with a Watchman socket that watches `proj` (which has its
/// `.watchmanconfig`), refreshes baselines every `refresh_secs`, and was
/// restarted after its first baseline: it has resolved none of the
/// directories below (their events are read cold).
fn cold_watchman(m: &Mount, proj: &Path, refresh_secs: &str) -> (Daemon, PathBuf) {
    let sock = m.dir.path().join("wm.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    std::fs::write(proj.join(".watchmanconfig"), "{}").unwrap();
    let args = [
        "--watchman-socket",
        &sock_s,
        "--baseline-refresh-secs",
        refresh_secs,
    ];
    let mut d = Daemon::start(&m.dir.path().join("daemon"), &args);
    client(Kind::Python, &sock, &["clock", proj.to_str().unwrap()]);
    d.reconciled();
    d.stop();
    d.spawn();
    d.reconciled();
    (d, sock)
}

/// Directories emptied and removed faster than the daemon reads their
/// events (cold: none of them touched since it started): each file's
/// removal is folded into its directory's record, and the Watchman answer
/// still lists every file, from the baseline, not a fresh instance; after
/// a quiet refresh (which journals those removals, design 11.9) too.
#[test]
fn files_of_directories_removed_at_once_are_listed() {
    const DIRS: usize = 300;
    let m = Mount::new(Fs::Ext4);
    let proj = m.mnt.join("proj");
    for i in 0..DIRS {
        std::fs::create_dir_all(proj.join(format!("d{i}"))).unwrap();
        std::fs::write(proj.join(format!("d{i}/f")), "1").unwrap();
    }
    let (d, sock) = cold_watchman(&m, &proj, "2");
    let p = proj.to_str().unwrap();
    let c = client(Kind::Python, &sock, &["clock", p]);
    let c = c["clock"].as_str().unwrap().to_string();
    for i in 0..DIRS {
        std::fs::remove_file(proj.join(format!("d{i}/f"))).unwrap();
        std::fs::remove_dir(proj.join(format!("d{i}"))).unwrap();
    }
    let check = |when: &str| {
        let q = client(Kind::Python, &sock, &["query", p, &c]);
        assert_eq!(q["fresh"], false, "{when}: {q}\n{}", d.log_text());
        let names = names(&q);
        for i in 0..DIRS {
            let f = format!("d{i}/f");
            assert!(names.contains(f.as_bytes()), "{when}: {f} missing: {q}");
        }
    };
    check("before a refresh");
    crate::restarts::wait_for_refresh_past(&d, crate::restarts::cursor_seq(&d.cursor()));
    check("after a refresh");
    let st: Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    eprintln!(
        "{} removals were folded into their directory's",
        st["capture"]["gone_directories"]
    );
}

/// A directory renamed after the clock, a quiet refresh (the baseline then
/// holds its files under the new name), then its subdirectories emptied
/// and removed at once (removals folded): the files it held at the clock
/// are listed under their old names, not a fresh instance.
#[test]
fn a_directory_renamed_then_emptied_after_a_refresh_lists_its_old_files() {
    const DIRS: usize = 100;
    let m = Mount::new(Fs::Ext4);
    let proj = m.mnt.join("proj");
    for i in 0..DIRS {
        std::fs::create_dir_all(proj.join(format!("f/s{i}"))).unwrap();
        std::fs::write(proj.join(format!("f/s{i}/y")), "1").unwrap();
    }
    let (d, sock) = cold_watchman(&m, &proj, "1");
    let p = proj.to_str().unwrap();
    let c = client(Kind::Python, &sock, &["clock", p]);
    let c = c["clock"].as_str().unwrap().to_string();
    std::fs::rename(proj.join("f"), proj.join("g")).unwrap();
    crate::restarts::wait_for_refresh_past(&d, crate::restarts::cursor_seq(&d.cursor()));
    for i in 0..DIRS {
        std::fs::remove_file(proj.join(format!("g/s{i}/y"))).unwrap();
        std::fs::remove_dir(proj.join(format!("g/s{i}"))).unwrap();
    }
    let q = client(Kind::Python, &sock, &["query", p, &c]);
    assert_eq!(q["fresh"], false, "{q}\n{}", d.log_text());
    let names = names(&q);
    for i in 0..DIRS {
        let f = format!("f/s{i}/y");
        assert!(names.contains(f.as_bytes()), "{f} missing: {q}");
    }
}
