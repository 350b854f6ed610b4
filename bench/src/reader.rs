//! The physical limit: a minimal fanotify reader that only drains events.
//! Same group flags, mask and mark as cj, unlimited queue, 512 KiB reads, and
//! a 10 ms nap after a read that returned under half a buffer (the best
//! variant measured in shared/notes/kernel.md). Usage: cj-bench-reader DIR.
//! Runs until SIGTERM/SIGINT, then prints the number of events read.
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: cj-bench-reader DIR");
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let fan = cj_capture::Fanotify::new(cj_capture::QueueLimit::Unlimited).unwrap();
    let d = std::fs::File::open(&dir).unwrap();
    fan.mark_filesystem(d.as_raw_fd(), std::path::Path::new(&dir), false)
        .unwrap();
    println!("ready");
    let mut buf = vec![0u8; 512 * 1024];
    let mut events: u64 = 0;
    let mut bytes: u64 = 0;
    while !STOP.load(Ordering::SeqCst) {
        let n = fan.read(&mut buf).unwrap_or(0);
        bytes += n as u64;
        // Count events cheaply: walk the length fields only.
        let mut off = 0;
        while off + 4 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            if len == 0 {
                break;
            }
            events += 1;
            off += len;
        }
        if n < buf.len() / 2 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    eprintln!("events {events} bytes {bytes}");
}
