//! A tracked filesystem unmounts with a plain `umount` while the daemon
//! runs (issue 12): the daemon holds no descriptor on it while the kernel
//! queue is empty. The unmount is an `unmounted` gap; changes made while
//! it was unmounted (here: through another mount point) are answered once
//! it is mounted again.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Fs, Mount};

fn captured(d: &Daemon) -> bool {
    d.ok(&["status", "--json"]).contains("\"captured\":true")
}

fn wait_captured(d: &Daemon, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while captured(d) != want {
        assert!(
            Instant::now() < deadline,
            "captured never became {want}: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn plain_umount_while_tracked(fs: Fs) {
    let mut m = Mount::new(fs);
    let d = Daemon::start(&m.dir.path().join("daemon"), &[]);
    let t = m.mnt.join("tree");
    std::fs::create_dir_all(t.join("dir")).unwrap();
    d.track(&t);
    d.reconciled();
    let c0 = d.cursor();
    std::fs::write(t.join("before"), b"1").unwrap();
    d.cursor();
    // A plain umount (no -l). The daemon lets go of the filesystem as soon
    // as it has read the queue empty: a few tries at most.
    let mut ok = false;
    for _ in 0..20 {
        let status = Command::new("umount").arg(&m.mnt).status().unwrap();
        if status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ok,
        "umount {} failed while tracked: {}",
        m.mnt.display(),
        d.log_text()
    );
    m.mark_unmounted();
    wait_captured(&d, false);
    // Changes while it is not mounted where cj tracks it.
    let other = m.dir.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let mut opts = vec!["-o".to_string(), "loop".to_string()];
    if fs == Fs::Xfs {
        opts[1] = "loop,nouuid".into();
    }
    let st = Command::new("mount")
        .args(&opts)
        .arg(m.image())
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(other.join("tree/during"), b"1").unwrap();
    std::fs::remove_dir(other.join("tree/dir")).unwrap();
    assert!(Command::new("umount")
        .arg(&other)
        .status()
        .unwrap()
        .success());
    m.mount();
    wait_captured(&d, true);
    let a = d.changes_wait(&c0, 60);
    assert_eq!(a.code, 0, "{}", a.dump());
    for p in ["before", "during", "dir"] {
        assert!(a.get(&t.join(p)).is_some(), "{p} missing: {}", a.dump());
    }
    // And it can be unmounted again after that.
    d.cursor();
    let mut ok = false;
    for _ in 0..20 {
        if Command::new("umount")
            .arg(&m.mnt)
            .status()
            .unwrap()
            .success()
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "second umount failed");
    m.mark_unmounted();
}

#[test]
fn a_plain_umount_of_a_tracked_ext4_succeeds_and_the_gap_closes() {
    plain_umount_while_tracked(Fs::Ext4);
}

#[test]
fn a_plain_umount_of_a_tracked_xfs_succeeds_and_the_gap_closes() {
    plain_umount_while_tracked(Fs::Xfs);
}

#[test]
fn a_plain_umount_of_a_tracked_btrfs_succeeds_and_the_gap_closes() {
    plain_umount_while_tracked(Fs::Btrfs);
}
