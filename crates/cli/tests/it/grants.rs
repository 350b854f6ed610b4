//! Ordinary users (issue 12): real users and a group, created by the test
//! (and removed, also on failure), granted paths in the configuration. A
//! granted user sees exactly the changes under its paths; a path outside
//! its grants appears nowhere in what it gets; a user without a grant is
//! refused.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Fs, Mount, CJ};

/// A user (and with `group`, a group it is in) that exist for the test.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    group: Option<String>,
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl TestUser {
    fn new(tag: &str, group: Option<&str>) -> TestUser {
        let name = format!("cjt{tag}{}", std::process::id() % 100_000);
        let group = group.map(|g| format!("cjg{g}{}", std::process::id() % 100_000));
        if let Some(g) = &group {
            let _ = Command::new("groupadd").arg(g).status();
        }
        let mut cmd = Command::new("useradd");
        cmd.args(["-M", "-N", "-s", "/usr/sbin/nologin"]);
        if let Some(g) = &group {
            cmd.args(["-G", g]);
        }
        let st = cmd.arg(&name).status().unwrap();
        assert!(st.success(), "useradd {name}");
        TestUser {
            uid: id_of("-u", &name),
            gid: id_of("-g", &name),
            name,
            group,
        }
    }

    fn cj(&self, d: &Daemon, args: &[&str]) -> Output {
        Command::new(CJ)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        if let Some(g) = &self.group {
            let _ = Command::new("groupdel").arg(g).status();
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Lets every user reach the socket and the tree (temp dirs are 0700).
fn open_up(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = path.to_path_buf();
    loop {
        if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
        if !p.pop() {
            break;
        }
    }
}

#[test]
fn grants_show_each_user_exactly_its_paths_and_nothing_else() {
    let m = Mount::new(Fs::Tmpfs);
    let t = m.mnt.join("tree");
    for d in ["alice", "bob", "shared"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("bob/secret"), b"s").unwrap();
    std::fs::write(t.join("alice/out"), b"o").unwrap();
    let alice = TestUser::new("a", None);
    let bob = TestUser::new("b", Some("g"));
    let carol = TestUser::new("c", None);
    let conf = m.dir.path().join("cj.toml");
    std::fs::write(
        &conf,
        format!(
            "[[grant]]\nuser = \"{}\"\npaths = [\"{}\"]\n\n[[grant]]\ngroup = \"{}\"\npaths = [\"{}\"]\n",
            alice.name,
            t.join("alice").display(),
            bob.group.as_ref().unwrap(),
            t.join("shared").display()
        ),
    )
    .unwrap();
    let dir = m.dir.path().join("daemon");
    let d = Daemon::start(&dir, &["--config", conf.to_str().unwrap()]);
    open_up(&dir);
    open_up(&t);
    d.track(&t);
    d.reconciled();
    let cursor = |u: &TestUser| {
        let o = u.cj(&d, &["cursor"]);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let (ca, cb) = (cursor(&alice), cursor(&bob));
    std::fs::write(t.join("alice/a1"), b"1").unwrap();
    std::fs::write(t.join("bob/b1"), b"1").unwrap();
    std::fs::write(t.join("shared/s1"), b"1").unwrap();
    std::fs::rename(t.join("bob/secret"), t.join("alice/moved")).unwrap();
    std::fs::rename(t.join("alice/out"), t.join("bob/out2")).unwrap();
    d.cursor();

    // alice: her tree only; renames across its edge are a creation and a
    // deletion; bob's paths appear nowhere.
    let o = alice.cj(&d, &["changes", "--json", "--since", &ca]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(!out.contains("/bob") && !out.contains("/shared"), "{out}");
    let entry = |name: &str| -> serde_json::Value {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} missing: {out}"))
    };
    assert!(entry("/alice/a1").is_object());
    let moved = entry("/alice/moved");
    assert!(moved["changes"].to_string().contains("created"), "{moved}");
    assert!(moved.get("renamed_from").is_none(), "{moved}");
    let out_entry = entry("/alice/out");
    assert!(
        out_entry["changes"].to_string().contains("deleted"),
        "{out_entry}"
    );
    assert!(out_entry.get("renamed_to").is_none(), "{out_entry}");
    // The same through a follow stream.
    let mut child = Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .args(["follow", "--json", "--since", &ca, "--no-reconnect"])
        .uid(alice.uid)
        .gid(alice.gid)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = String::new();
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.contains("history_done") && Instant::now() < deadline {
        use std::io::BufRead;
        if r.read_line(&mut lines).unwrap() == 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.contains("/alice/a1") && lines.contains("/alice/moved"),
        "{lines}"
    );
    assert!(
        !lines.contains("/bob") && !lines.contains("/shared"),
        "{lines}"
    );

    // bob, through his group: the shared tree only.
    let o = bob.cj(&d, &["changes", "--json", "--since", &cb]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("/shared/s1"), "{out}");
    assert!(!out.contains("/alice") && !out.contains("/bob"), "{out}");

    // Outside a grant, and what only root may do: refused.
    let o = alice.cj(
        &d,
        &["changes", "--since", &ca, t.join("bob").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not granted"), "{}", text(&o));
    for args in [&["status"][..], &["track", "/tmp"][..]] {
        let o = alice.cj(&d, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(text(&o).contains("only root"), "{}", text(&o));
    }
    // No grant at all.
    let o = carol.cj(&d, &["cursor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no grant"), "{}", text(&o));

    // Consumers belong to their user.
    let o = alice.cj(&d, &["consumer", "add", "mine"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bob.cj(&d, &["consumer", "list", "--json"]);
    assert!(!text(&o).contains("mine"), "{}", text(&o));
    let o = bob.cj(&d, &["consumer", "remove", "mine"]);
    assert_eq!(o.status.code(), Some(1));
    let o = alice.cj(&d, &["changes", "--consumer", "mine"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The Watchman endpoint under the same grants (issue 14): a user watches
/// and queries only what is granted, and gets content hashes only of files
/// it could read itself.
#[test]
fn watchman_clients_see_only_their_grants() {
    let m = Mount::new(Fs::Tmpfs);
    let t = m.mnt.join("tree");
    for d in ["alice", "bob"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::write(t.join("alice/mine.js"), b"m").unwrap();
    std::fs::write(t.join("alice/root-only"), b"secret").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(t.join("alice/root-only"), p).unwrap();
    }
    std::fs::write(t.join("bob/theirs.js"), b"t").unwrap();
    let alice = TestUser::new("w", None);
    let conf = m.dir.path().join("cj.toml");
    std::fs::write(
        &conf,
        format!(
            "[[grant]]\nuser = \"{}\"\npaths = [\"{}\"]\n",
            alice.name,
            t.join("alice").display()
        ),
    )
    .unwrap();
    let dir = m.dir.path().join("daemon");
    let wm_sock = m.dir.path().join("wm.sock");
    let d = Daemon::start(
        &dir,
        &[
            "--config",
            conf.to_str().unwrap(),
            "--watchman-socket",
            wm_sock.to_str().unwrap(),
        ],
    );
    let bin = m.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(CJ, bin.join("watchman")).unwrap();
    open_up(&dir);
    open_up(&bin);
    open_up(&t);
    d.track(&t);
    d.reconciled();
    let ask = |cmd: &str| -> serde_json::Value {
        let mut c = Command::new(bin.join("watchman"));
        c.args(["-j", "--no-pretty"])
            .env("WATCHMAN_SOCK", &wm_sock)
            .uid(alice.uid)
            .gid(alice.gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cmd.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd}: {e}: {}", text(&out)))
    };
    let a = t.join("alice");
    let b = t.join("bob");
    let w = ask(&format!("[\"watch-project\", \"{}\"]", a.display()));
    assert_eq!(w["watch"], a.to_str().unwrap(), "{w}");
    let refused = ask(&format!("[\"watch-project\", \"{}\"]", b.display()));
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or("")
            .contains("permission denied"),
        "{refused}"
    );
    let q = ask(&format!(
        "[\"query\", \"{}\", {{\"fields\": [\"name\", \"content.sha1hex\"]}}]",
        a.display()
    ));
    let files = q["files"].to_string();
    assert!(
        files.contains("mine.js") && !files.contains("theirs"),
        "{q}"
    );
    let hidden = q["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "root-only")
        .unwrap();
    assert!(hidden["content.sha1hex"]["error"].is_string(), "{q}");
    let clock = ask(&format!("[\"clock\", \"{}\"]", a.display()))["clock"].clone();
    std::fs::write(b.join("new-bob"), b"1").unwrap();
    std::fs::write(a.join("new-alice"), b"1").unwrap();
    let since = ask(&format!(
        "[\"query\", \"{}\", {{\"since\": {clock}, \"fields\": [\"name\"]}}]",
        a.display()
    ));
    let files = since["files"].to_string();
    assert!(
        files.contains("new-alice") && !files.contains("bob"),
        "{since}"
    );
    assert_eq!(since["is_fresh_instance"], false, "{since}");
}
