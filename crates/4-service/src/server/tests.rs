//! The server in-process, without root: a journal in a temp dir, a fake
//! pipeline thread that journals what it is sent and answers barriers, and
//! a listener of the test's own. Requests go over the real socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use cj_types::{Changes, EventRecord, GapReason, GapRecord, ObjectKind, RecordBody};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    root: Vec<u8>,
    ctl: SyncSender<Ctl>,
    shutdown: Arc<AtomicBool>,
}

/// Stands in for capture, normalisation and the writer: records sent are
/// journaled in order; a barrier commits and answers with the durable seq.
fn fake_pipeline(mut writer: cj_journal::Writer, rx: mpsc::Receiver<Ctl>) {
    for msg in rx {
        match msg {
            Ctl::Records(recs) => {
                for r in recs {
                    writer.append(1, &r).unwrap();
                }
            }
            Ctl::Barrier(reply) => {
                let _ = reply.send(writer.commit().map_err(|e| e.to_string()));
            }
            Ctl::Track { reply, .. } | Ctl::Untrack { reply, .. } => {
                let _ = reply.send(Err("not in this test".into()));
            }
            Ctl::Resume => {}
            Ctl::Shutdown => return,
        }
    }
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader, _) =
        cj_journal::open(&dir.path().join("journal"), Default::default()).unwrap();
    let (ctl, rx) = mpsc::sync_channel(16);
    std::thread::spawn(move || fake_pipeline(writer, rx));
    let root = dir.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    let root = root.as_os_str().as_bytes().to_vec();
    let shared = Arc::new(Shared::default());
    shared
        .tunables
        .follow_stall_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    shared.roots.lock().unwrap().push(RootState {
        path: root.clone(),
        fsid: 1,
        fs_type: "test".into(),
        unavailable: None,
    });
    let socket = dir.path().join("cj.sock");
    let shutdown = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(Context {
        reader,
        ctl: ctl.clone(),
        waker: Arc::new(Waker::new().unwrap()),
        shared,
        state_dir: dir.path().to_path_buf(),
        snapshots: dir.path().join("snapshots"),
        socket: socket.clone(),
        started: Instant::now(),
        roots_lock: Mutex::new(()),
        slots: conn::Slots::default(),
        // SAFETY: getuid has no preconditions.
        admin_uid: unsafe { libc::getuid() },
        consumers: Arc::new(crate::consumers::Consumers::load(dir.path(), None).unwrap()),
        stopping: shutdown.clone(),
    });
    let listener = UnixListener::bind(&socket).unwrap();
    let stop = shutdown.clone();
    std::thread::spawn(move || serve(listener, ctx, &stop));
    Fixture {
        _dir: dir,
        socket,
        root,
        ctl,
        shutdown,
    }
}

impl Fixture {
    /// One request line; every answer line until the connection's answer
    /// ends (an error, an `ok`, a cursor, or a `changes` final line).
    fn ask(&self, request: &str) -> Vec<Value> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        BufReader::new(s)
            .split(b'\n')
            .map(|l| serde_json::from_slice(&l.unwrap()).unwrap())
            .collect()
    }

    fn path(&self, name: &str) -> Vec<u8> {
        let mut p = self.root.clone();
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
        p
    }

    fn journal(&self, records: Vec<RecordBody>) {
        self.ctl.send(Ctl::Records(records)).unwrap();
    }

    fn cursor(&self) -> String {
        let a = self.ask(r#"{"op":"cursor"}"#);
        a[0]["cursor"].as_str().unwrap().to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.socket);
        let _ = self.ctl.send(Ctl::Shutdown);
    }
}

fn created(path: Vec<u8>) -> RecordBody {
    RecordBody::Event(EventRecord {
        changes: Changes::CREATED | Changes::CLOSE_WRITE,
        kind: ObjectKind::File,
        fsid: 1,
        path,
        ..Default::default()
    })
}

fn changes(f: &Fixture, since: &str) -> (Vec<Value>, Value) {
    let mut a = f.ask(&format!(r#"{{"op":"changes","since":"{since}"}}"#));
    let last = a.pop().unwrap();
    (a, last)
}

#[test]
fn ping_cursor_and_changes_over_the_socket() {
    let f = start();
    let a = f.ask(r#"{"op":"ping"}"#);
    assert_eq!(a[0]["ok"], true);
    let c0 = f.cursor();
    assert!(c0.starts_with("cj1."), "{c0}");
    // A file that exists now, and one created and gone (ephemeral).
    std::fs::write(std::ffi::OsStr::from_bytes(&f.path("kept")), b"1").unwrap();
    f.journal(vec![created(f.path("kept")), created(f.path("gone"))]);
    let c1 = f.cursor();
    let (entries, last) = changes(&f, &c0);
    assert_eq!(last["complete"], true, "{last}");
    assert_eq!(last["cursor"], c1.as_str());
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let kept = String::from_utf8(f.path("kept")).unwrap();
    let root = String::from_utf8(f.root.clone()).unwrap();
    // The file, and its directory (whose listing changed).
    assert_eq!(paths, vec![root.as_str(), kept.as_str()], "{entries:?}");
    assert_eq!(entries[1]["exists"], true);
    // Nothing since the newest cursor.
    let (entries, last) = changes(&f, &c1);
    assert!(entries.is_empty() && last["complete"] == true);
}

#[test]
fn a_gap_in_range_asks_for_a_rescan_with_its_reason() {
    let f = start();
    let c0 = f.cursor();
    f.journal(vec![RecordBody::Gap(GapRecord {
        reason: GapReason::QueueOverflow,
        fsid: 0,
        scope: Vec::new(),
        start_time_ns: 0,
        flags: 0,
        detail: Vec::new(),
    })]);
    f.cursor();
    let (_, last) = changes(&f, &c0);
    assert_eq!(last["complete"], false);
    let rescan = &last["rescan"][0];
    assert_eq!(rescan["reason"], "queue_overflow");
    assert_eq!(
        rescan["path"].as_str().unwrap().as_bytes(),
        f.root.as_slice()
    );
}

#[test]
fn bad_requests_are_refused_and_the_connection_survives() {
    let f = start();
    for (request, needle) in [
        ("nonsense", "not a JSON object"),
        (r#"{"op":5}"#, "\"op\""),
        (r#"{"op":"explode"}"#, "unknown op"),
        (r#"{"op":"changes"}"#, "since"),
        (r#"{"op":"cursor","path":"relative"}"#, "absolute"),
        (r#"{"op":"cursor","path":"/elsewhere"}"#, "cj track"),
    ] {
        let a = f.ask(request);
        let msg = a[0]["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{request}: {a:?}");
    }
    // A malformed cursor is answered, as a rescan of everything.
    let (_, last) = changes(&f, "cj1.nonsense");
    assert_eq!(last["complete"], false);
    assert_eq!(last["rescan"][0]["reason"], "malformed_cursor");
    // Several requests on one connection.
    let mut s = UnixStream::connect(&f.socket).unwrap();
    s.write_all(b"{\"op\":\"ping\"}\n{\"op\":\"status\"}\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let lines: Vec<Value> = BufReader::new(s)
        .split(b'\n')
        .map(|l| serde_json::from_slice(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines[0]["ok"], true);
    assert!(lines[1]["journal"]["id"].is_string(), "{:?}", lines[1]);
}

mod follow;
