//! Issue 9: the defects an adversarial probe found, each with a regression
//! test that failed before its fix.

use std::fs;
use std::path::{Path, PathBuf};

use crate::harness::{Answer, Daemon, Fs, Mount};

fn reasons(a: &Answer) -> Vec<String> {
    a.rescans().into_iter().map(|(_, r)| r).collect()
}

fn damaged(a: &Answer) -> bool {
    a.code == 3 && reasons(a).iter().any(|r| r.contains("journal_damaged"))
}

fn segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(state.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cjseg"))
        .collect();
    v.sort();
    v
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
        // Let the high-water mark (written at most once a second) catch up.
        std::thread::sleep(std::time::Duration::from_millis(1200));
        fs::write(t.join("nudge"), b"1").unwrap();
        d.cursor();
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
