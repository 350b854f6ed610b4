//! Captures the raw bytes fanotify returns for a scripted set of operations,
//! to refresh the parser's fixtures. Run as root:
//! `cargo run -p cj-capture --example dump -- DIR OUT.bin`
//! where DIR is an empty directory on a scratch filesystem.
use std::fs;
use std::os::unix::io::AsRawFd;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let fan = cj_capture::Fanotify::new(cj_capture::QueueLimit::Unlimited).unwrap();
    let d = fs::File::open(&dir).unwrap();
    fan.mark_filesystem(d.as_raw_fd(), &dir, false).unwrap();
    fs::write(dir.join("a"), b"x").unwrap();
    fs::rename(dir.join("a"), dir.join("b")).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/victim"), b"v").unwrap();
    fs::rename(dir.join("b"), dir.join("sub/victim")).unwrap();
    fs::write(dir.join("name\nwith newline \u{e9}"), b"").unwrap();
    std::os::unix::fs::symlink("target", dir.join("link")).unwrap();
    fs::remove_file(dir.join("link")).unwrap();
    fs::remove_file(dir.join("sub/victim")).unwrap();
    fs::remove_dir(dir.join("sub")).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = fan.read(&mut buf).unwrap();
    fs::write(&args[2], &buf[..n]).unwrap();
    for e in cj_capture::parse(&buf[..n]) {
        println!("{:?}", e.unwrap());
    }
}
