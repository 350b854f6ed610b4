//! Scoped catch-up (design 11.8, issue 13): after a gap, a query for a
//! subtree with `--wait` is answered once that subtree is reconciled, while
//! its root is still being reconciled. The root's reconciliation is made
//! slow (`--test-reconcile-delay-ms`, as a walk of a big tree would be).

use std::path::Path;

use serde_json::Value;

use crate::harness::{Daemon, Fs, Mount};

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
}

fn catchups(d: &Daemon) -> u64 {
    let v: Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    fn find(v: &Value) -> Option<u64> {
        match v {
            Value::Object(m) => m
                .get("scoped_catchups")
                .and_then(Value::as_u64)
                .or_else(|| m.values().find_map(find)),
            _ => None,
        }
    }
    find(&v).expect("status has scoped_catchups")
}

fn a_subtree_is_answered_before_its_root(fs: Fs) {
    let m = Mount::new(fs);
    let mut d = Daemon::start(
        &m.dir.path().join("daemon"),
        &["--test-reconcile-delay-ms", "120000"],
    );
    let root = m.mnt.join("tree");
    let wt = root.join("wt");
    let other = root.join("other");
    std::fs::create_dir_all(wt.join("sub")).unwrap();
    std::fs::create_dir_all(wt.join("keep/deep")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    for p in ["a", "b", "sub/c", "keep/deep/d"] {
        write(&wt.join(p), b"1");
    }
    write(&other.join("x"), b"1");
    d.track(&root);
    d.reconciled();
    let c0 = d.cursor();
    d.stop();
    // While the daemon is down.
    write(&wt.join("a"), b"22");
    write(&wt.join("new"), b"1");
    std::fs::remove_file(wt.join("b")).unwrap();
    std::fs::rename(wt.join("sub"), wt.join("sub2")).unwrap();
    std::fs::create_dir_all(wt.join("made/deep")).unwrap();
    write(&wt.join("keep/deep/d"), b"333");
    std::fs::rename(other.join("x"), wt.join("x-moved-in")).unwrap();
    write(&other.join("y"), b"1");
    d.spawn();
    let a = d.changes_args(&c0, Some(&wt), &["--wait", "100"]);
    assert_eq!(a.code, 0, "{}\n{}", a.dump(), d.log_text());
    for p in [
        "a",
        "new",
        "b",
        "sub",
        "sub2",
        "made",
        "keep/deep/d",
        "x-moved-in",
    ] {
        assert!(a.get(&wt.join(p)).is_some(), "{p} missing:\n{}", a.dump());
    }
    let sub2 = a.get(&wt.join("sub2")).unwrap();
    assert_eq!(sub2["subtree"], true, "{}", a.dump());
    assert!(catchups(&d) >= 1);
    // The root's own reconciliation is still running: its answer is
    // incomplete, and names the rest of the root for rescan.
    let r = d.changes(&c0, None);
    assert_eq!(r.code, 3, "{}", r.dump());
    assert!(r.get(&other.join("y")).is_none(), "{}", r.dump());
    // A query for the subtree without waiting is complete now too, and a
    // sibling subtree is not.
    assert_eq!(d.changes(&c0, Some(&wt)).code, 0);
    assert_eq!(d.changes(&c0, Some(&other)).code, 3);
}

#[test]
fn a_subtree_is_answered_before_its_root_ext4() {
    a_subtree_is_answered_before_its_root(Fs::Ext4);
}

#[test]
fn a_subtree_is_answered_before_its_root_xfs() {
    a_subtree_is_answered_before_its_root(Fs::Xfs);
}
