//! `cj export nats` with a real `nats-server -js` (Debian's nats-server,
//! started by the test on loopback, issue 15): the stream holds exactly
//! one message per journal record, in seq order, whatever happens to the
//! exporter (kill -9), the NATS server (stopped and started again) or the
//! daemon (a downtime: the rescan, the reconciled records and the resolved
//! message arrive in order).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Daemon, Fs, Mount, CJ};
use crate::workload::{self, Model, Rng};

struct Nats {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Nats {
            port,
            store: dir.join("jetstream"),
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Exporter {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Exporter {
    fn start(d: &Daemon, nats: &Nats, consumer: &str, log: &Path) -> Exporter {
        let mut e = Exporter {
            args: vec![
                "--socket".into(),
                d.socket.to_str().unwrap().into(),
                "export".into(),
                "nats".into(),
                "--url".into(),
                nats.url(),
                "--stream".into(),
                "CJ".into(),
                "--subject".into(),
                "cj.fleet.test".into(),
                "--consumer".into(),
                consumer.into(),
                "--host".into(),
                "testhost".into(),
            ],
            log: log.to_path_buf(),
            child: None,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(CJ)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// (journal seq from the message id, the message) for every message of
/// the stream, in stream order.
fn stream_messages(url: &str) -> Vec<(u64, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut s = match js.get_stream("CJ").await {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        let last = s.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for n in 1..=last {
            let m = s.get_raw_message(n).await.unwrap();
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap_or_else(|| panic!("no Nats-Msg-Id in {:?}", m.headers))
                .as_str()
                .to_string();
            let seq: u64 = id.rsplit('.').next().unwrap().parse().unwrap();
            out.push((seq, serde_json::from_slice(&m.payload).unwrap()));
        }
        out
    })
}

/// The seqs of the records the consumer's stream holds from `since` to
/// now (what the exporter must publish).
fn journal_records(d: &Daemon, since: &str) -> Vec<u64> {
    let mut f =
        cj_client::Follow::start(&d.socket, cj_client::FollowOptions::since(since)).unwrap();
    let mut out = Vec::new();
    for line in f.by_ref() {
        let line = line.unwrap();
        if let cj_client::FollowLine::HistoryDone { .. } = line {
            break;
        }
        if let Some(m) = cj_export::message(&line, "x") {
            out.push(m.seq);
        }
    }
    out
}

/// Waits until the stream holds every record up to now, then checks it
/// holds exactly those, once each, in order.
fn assert_exactly_once(d: &Daemon, nats: &Nats, since: &str, log: &Path) -> Vec<(u64, Value)> {
    d.cursor();
    let want = journal_records(d, since);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = stream_messages(&nats.url());
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        if seqs == want {
            return got;
        }
        if Instant::now() > deadline {
            let dups = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
            panic!(
                "the stream does not hold each record once in order: {} messages, {} records, \
                 {dups} out of order or twice\nfirst differences: {:?}\nexporter log:\n{}\n{}",
                seqs.len(),
                want.len(),
                seqs.iter()
                    .zip(&want)
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .collect::<Vec<_>>(),
                std::fs::read_to_string(log).unwrap_or_default(),
                d.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `examples/fleet_reader.py` (nats-py, installed by scripts/test-clients).
fn fleet_reader(nats: &Nats, state: &Path) -> Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-clients");
    let clients = std::env::var_os("CJ_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or(clients);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/fleet_reader.py");
    let out = Command::new(clients.join("venv/bin/python"))
        .arg(script)
        .arg(nats.url())
        .arg("CJ")
        .arg(state)
        .output()
        .expect("run scripts/test-clients (scripts/test does)");
    assert!(
        out.status.success(),
        "fleet_reader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn consumer_cursor(d: &Daemon, name: &str) -> String {
    let out = d.ok(&["consumer", "add", name]);
    out.split_whitespace()
        .find(|w| w.starts_with("cj1."))
        .unwrap_or_else(|| panic!("no cursor in {out:?}"))
        .to_string()
}

fn status(d: &Daemon) -> Value {
    serde_json::from_str(&d.ok(&["status", "--json"])).unwrap()
}

/// The `status` entry of consumer `name`.
fn consumer_status(d: &Daemon, name: &str) -> Value {
    let s = status(d);
    s["consumers"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no consumer {name} in {s}"))
}

/// Waits until `cj status` shows consumer `name` in a state `ok` accepts.
fn wait_status(d: &Daemon, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let c = consumer_status(d, name);
        if ok(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "status never showed {what}: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kill points of the exporter, in ms after the round's changes began:
/// at once (while it reconnects), early and late in publishing.
const KILL_SWEEP_MS: [u64; 6] = [0, 3, 10, 25, 60, 150];

#[test]
fn every_record_once_in_order_across_exporter_kills_and_a_nats_restart() {
    let m = Mount::new(Fs::Ext4);
    let d = Daemon::start(&m.dir.path().join("daemon"), &[]);
    let tree = m.mnt.join("tree");
    std::fs::create_dir_all(tree.join("w/sub")).unwrap();
    d.track(&tree);
    d.reconciled();
    let mut nats = Nats::start(m.dir.path());
    let c0 = consumer_cursor(&d, "fleet");
    let before = crate::snapshot::take(&tree);
    let log = m.dir.path().join("export.log");
    let mut exp = Exporter::start(&d, &nats, "fleet", &log);
    let mut rng = Rng(151);
    let mut model = Model::new(vec![tree.join("w"), tree.join("w/sub")], Vec::new());
    for (round, kill_ms) in KILL_SWEEP_MS.iter().enumerate() {
        let ops = workload::run(&mut rng, &mut model, 60);
        assert!(!ops.is_empty());
        // The exporter killed mid-stream at each point of the sweep.
        std::thread::sleep(Duration::from_millis(*kill_ms));
        exp.kill9();
        workload::run(&mut rng, &mut model, 30);
        exp.spawn();
        // Once, the server down for a while: the exporter waits and says
        // so in `cj status`, then goes on.
        if round == 3 {
            nats.kill();
            workload::run(&mut rng, &mut model, 30);
            let c = wait_status(&d, "fleet", "the outage", |c| {
                c["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("unavailable"))
                    && c["lag_records"].as_u64() > Some(0)
                    && c["lag_s"].as_f64() > Some(0.0)
            });
            let text = d.ok(&["status"]);
            assert!(
                text.contains("fleet: ")
                    && text.contains("records (")
                    && text.contains("unavailable"),
                "{text}\n{c}"
            );
            nats.spawn();
        }
    }
    let got = assert_exactly_once(&d, &nats, &c0, &log);
    assert!(got.len() > 100, "{}", got.len());
    // After the outage the note is gone and the lag is back to nothing.
    wait_status(&d, "fleet", "the consumer caught up", |c| {
        c["note"].is_null() && c["lag_records"] == 0 && c["lag_s"] == 0.0
    });
    // The stream alone covers every change a snapshot sees (the oracle of
    // the follow tests, on the exported messages).
    let after = crate::snapshot::take(&tree);
    let lines: Vec<Value> = got.iter().map(|(_, v)| v.clone()).collect();
    let out = crate::oracle::check(&before, &after, &crate::follow::as_answer(&lines));
    assert!(out.misses.is_empty(), "the stream missed {:?}", out.misses);
    let first = &got[0].1;
    assert_eq!(first["host"], "testhost");
    assert!(
        first["journal"].is_string() && first["cursor"].is_string(),
        "{first}"
    );
    // The example reader builds its table from the stream, then resumes
    // with nothing new to read.
    let state = m.dir.path().join("reader");
    let r1 = fleet_reader(&nats, &state);
    assert_eq!(r1["read"], got.len() as u64, "{r1}");
    assert_eq!(r1["out_of_order"], 0, "{r1}");
    assert!(r1["paths"]["testhost"].as_u64().unwrap_or(0) > 10, "{r1}");
    let r2 = fleet_reader(&nats, &state);
    assert_eq!(r2["read"], 0, "{r2}");
}

#[test]
fn a_downtime_arrives_as_a_rescan_then_the_reconciled_records_then_resolved() {
    let m = Mount::new(Fs::Tmpfs);
    let mut d = Daemon::start(&m.dir.path().join("daemon"), &[]);
    let tree = m.mnt.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("before"), b"1").unwrap();
    d.track(&tree);
    d.reconciled();
    let nats = Nats::start(m.dir.path());
    let c0 = consumer_cursor(&d, "fleet");
    let log = m.dir.path().join("export.log");
    let mut exp = Exporter::start(&d, &nats, "fleet", &log);
    std::fs::write(tree.join("live"), b"1").unwrap();
    d.cursor();
    std::thread::sleep(Duration::from_millis(300));
    exp.kill9();
    d.stop();
    std::fs::write(tree.join("while-down"), b"1").unwrap();
    std::fs::remove_file(tree.join("before")).unwrap();
    d.spawn();
    d.reconciled();
    exp.spawn();
    let got = assert_exactly_once(&d, &nats, &c0, &log);
    let pos = |f: &dyn Fn(&Value) -> bool| got.iter().position(|(_, v)| f(v));
    let named =
        |name: &'static str| move |v: &Value| v["path"].as_str().is_some_and(|p| p.ends_with(name));
    let rescan = pos(&|v| v["rescan"].is_array()).expect("a rescan message");
    let down = pos(&named("/while-down")).expect("the reconciled creation");
    let gone = pos(&named("/before")).expect("the reconciled deletion");
    let resolved = pos(&|v| v["resolved"].is_array()).expect("a resolved message");
    let live = pos(&named("/live")).expect("the live creation");
    assert!(live < rescan && rescan < down && rescan < gone, "{got:?}");
    assert!(down < resolved && gone < resolved, "{got:?}");
    assert!(got[down].1["changes"].to_string().contains("reconciled"));
}

/// `[export.nats]` in the configuration: the daemon's own process exports.
#[test]
fn the_daemon_runs_the_exporter_from_its_configuration() {
    let m = Mount::new(Fs::Tmpfs);
    let nats = Nats::start(m.dir.path());
    let conf = m.dir.path().join("cj.toml");
    std::fs::write(
        &conf,
        format!(
            "[export.nats]\nurl = \"{}\"\nstream = \"CJ\"\nsubject = \"cj.fleet.test\"\nconsumer = \"fleet\"\nhost = \"testhost\"\n",
            nats.url()
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--config", conf.to_str().unwrap()],
    );
    let tree = m.mnt.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    d.track(&tree);
    d.reconciled();
    // The exporter's consumer starts when it is first created: after that,
    // nothing is missed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.ok(&["consumer", "list"]).contains("fleet") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(tree.join("exported"), b"1").unwrap();
    d.cursor();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stream_messages(&nats.url());
        if got
            .iter()
            .any(|(_, v)| v["path"].as_str().is_some_and(|p| p.ends_with("/exported")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}
