//! Bad input gets a clear error that says what to do, and loses nothing.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::harness::{Daemon, Fs, Mount, CJ};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CJ)
        .arg("--socket")
        .arg(dir.path().join("nothing.sock"))
        .arg("cursor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("daemon is not running"),
        "{}",
        stderr(&out)
    );
    // CJ_SOCKET is honoured too.
    let out = Command::new(CJ)
        .env("CJ_SOCKET", dir.path().join("other.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("other.sock"), "{}", stderr(&out));
}

#[test]
fn client_that_is_not_root() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt, &[]);
    // Anyone may connect (0666); a user without a grant is refused.
    let out = Command::new(CJ)
        .arg("--socket")
        .arg(&d.socket)
        .arg("cursor")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no grant") && stderr(&out).contains("root"),
        "{}",
        stderr(&out)
    );
    let mode = fs::metadata(&d.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o666);
    let journal = d.state.join("journal");
    assert_eq!(
        fs::metadata(&journal).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in fs::read_dir(&journal).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o077,
            0,
            "{}",
            p.display()
        );
    }
}

#[test]
fn malformed_foreign_and_future_cursors_ask_for_a_rescan() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt, &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    d.track(&t);
    let good = d.cursor();
    let out = d.cj(&["changes", "--since", "not-a-cursor"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("malformed cursor"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rescan\tmalformed_cursor"));
    // A cursor of another journal.
    let m2 = Mount::new(Fs::Tmpfs);
    let d2 = Daemon::start(&m2.mnt, &[]);
    let foreign = d2.cursor();
    let a = d.changes(&foreign, None);
    assert_eq!(a.code, 3);
    assert_eq!(a.rescans()[0].1, "foreign_cursor");
    // A cursor from the future (a restored backup of the state directory).
    let future = cj_types::Cursor {
        seq: 1 << 40,
        ..cj_types::Cursor::parse(&good).unwrap()
    }
    .encode();
    let a = d.changes(&future, None);
    assert_eq!(a.code, 3);
    assert_eq!(a.rescans()[0].1, "unknown_cursor");
    // -0 mode: the cursor first, rescan scopes with a trailing slash.
    let out = d.cj(&["changes", "-0", "--since", &foreign]);
    assert_eq!(out.status.code(), Some(3));
    let items: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
    assert!(items[0].starts_with(b"cj1."));
    assert!(
        items.iter().any(|i| i.ends_with(b"/tree/")),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // --cursor-file
    let file = m.dir.path().join("cursor.txt");
    let out = d.cj(&[
        "changes",
        "-0",
        "--since",
        &good,
        "--cursor-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let saved = fs::read_to_string(&file).unwrap();
    assert!(out.stdout.starts_with(saved.trim().as_bytes()));
}

#[test]
fn paths_that_are_not_tracked() {
    let m = Mount::new(Fs::Tmpfs);
    let d = Daemon::start(&m.mnt, &[]);
    let t = m.mnt.join("tree");
    fs::create_dir(&t).unwrap();
    let out = d.cj(&["cursor", t.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cj track"), "{}", stderr(&out));
    let out = d.cj(&["track", m.mnt.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    fs::write(m.mnt.join("file"), b"").unwrap();
    let out = d.cj(&["track", m.mnt.join("file").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

#[test]
fn btrfs_child_subvolume_mount_explains_the_top_level() {
    let m = Mount::new(Fs::Btrfs);
    let d = Daemon::start(&m.dir.path().join("state-outside"), &[]);
    let sv = m.mnt.join("sv");
    let out = Command::new("btrfs")
        .args(["-q", "subvolume", "create"])
        .arg(&sv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Mount only the child subvolume: no top-level dentry is reachable.
    let child = m.dir.path().join("child");
    fs::create_dir(&child).unwrap();
    let dev = String::from_utf8(
        Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&m.mnt)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ok = Command::new("mount")
        .args(["-o", "subvol=sv", dev.trim()])
        .arg(&child)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = d.cj(&["track", child.to_str().unwrap()]);
    let _ = Command::new("umount").arg(&child).status();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("top-level"), "{}", stderr(&out));
    // Nothing was lost: the daemon still answers.
    d.cursor();
}

#[test]
fn overlayfs_without_nfs_export_explains_the_fix() {
    let base = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        base.path().join("lower"),
        base.path().join("upper"),
        base.path().join("work"),
        base.path().join("merged"),
    );
    for p in [&lower, &upper, &work, &merged] {
        fs::create_dir(p).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap()
        .success();
    if !mounted {
        eprintln!("overlayfs not available here; skipping");
        return;
    }
    let d = Daemon::start(&base.path().join("d"), &[]);
    let out = d.cj(&["track", merged.to_str().unwrap()]);
    drop(d);
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nfs_export"), "{}", stderr(&out));
}
