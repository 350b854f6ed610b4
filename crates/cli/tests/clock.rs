//! A clock step while the daemon runs. Its own test binary: setting the
//! clock is seen by every daemon on the machine, and cargo runs test
//! binaries one after another, so no other test's daemon sees it.

#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Daemon, Fs, Mount};

/// Sets the wall clock to the time it already shows: a step of a few
/// microseconds, harmless, but a `clock_settime` all the same. `false` if
/// this machine does not let us (a container without CAP_SYS_TIME).
fn step_clock() -> bool {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock ids and pointers.
    let rc = unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
        libc::clock_settime(libc::CLOCK_REALTIME, &now)
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "clock_settime: {e}");
        eprintln!("SKIPPED: the clock cannot be set here ({e})");
        return false;
    }
    true
}

#[test]
fn a_clock_step_is_a_gap_closed_by_a_full_comparison() {
    let m = Mount::new(Fs::Xfs);
    let mut d = Daemon::start(&m.mnt, &[]);
    let t = m.mnt.join("tree");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("a"), b"1").unwrap();
    d.track(&t);
    d.reconciled();
    let c0 = d.cursor();
    if !step_clock() {
        return;
    }
    std::fs::write(t.join("b"), b"1").unwrap();
    // The step becomes a gap record within a housekeeping round.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.ok(&["status", "--json"]);
        if st.contains("the clock was set") {
            assert!(st.contains("\"last_method\":\"walk\""), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no clock-step walk: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = d.changes_wait(&c0, 60);
    assert_eq!(a.code, 0, "{}", a.dump());
    assert!(a.get(&t.join("b")).is_some(), "{}", a.dump());
    // The walk's baseline makes the fast path usable again (once saved:
    // the answer above comes when its records are durable, before that).
    d.reconciled();
    let c1 = d.cursor();
    d.kill9();
    d.spawn();
    let b = d.changes_wait(&c1, 60);
    assert_eq!(b.code, 0, "{}", b.dump());
    let st = d.ok(&["status", "--json"]);
    assert!(st.contains("\"last_method\":\"xfs-bulkstat\""), "{st}");
}
