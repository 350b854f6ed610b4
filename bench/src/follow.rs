//! Follow-stream benchmarks (issue 11), run by `bench/follow`.
//!
//! `cj-bench-follow latency SOCKET DIR RATE SECONDS`: creates files in DIR at
//! RATE per second (paced every millisecond), each named after the moment it
//! was created, while a follower (the Rust client's iterator) receives the
//! stream; prints the change-to-follower latency of every file:
//! `rate_achieved p50_ms p99_ms max_ms samples`.
//!
//! `cj-bench-follow backlog SOCKET CURSOR MODE`: reads the stream from CURSOR
//! up to the present and prints `records seconds records_per_s`. MODE `client`
//! parses every line into a typed `FollowLine` (the Rust client); `raw` only
//! splits lines (what the daemon and the socket deliver).
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use cj_client::{Follow, FollowLine, FollowOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("latency") => latency(
            Path::new(&args[2]),
            Path::new(&args[3]),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        Some("backlog") => backlog(Path::new(&args[2]), &args[3], &args[4]),
        _ => {
            eprintln!("usage: cj-bench-follow latency SOCKET DIR RATE SECONDS | backlog SOCKET CURSOR client|raw");
            std::process::exit(2);
        }
    }
}

fn latency(socket: &Path, dir: &Path, rate: u64, secs: f64) {
    let t0 = Instant::now();
    let mut stream = Follow::start(socket, FollowOptions::now()).unwrap();
    // The stream starts with history_done: from here on it is live.
    let first = stream.next().unwrap().unwrap();
    assert!(matches!(first, FollowLine::HistoryDone { .. }));
    let follower = std::thread::spawn(move || {
        let mut samples = Vec::new();
        for line in stream {
            let Ok(FollowLine::Change { change, .. }) = line else {
                continue;
            };
            let name = change.path.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
            if name == b"stop" {
                break;
            }
            let Some(ns) = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.strip_prefix("f-"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if change.changes.iter().any(|c| c.as_str() == "created") {
                let now = t0.elapsed().as_nanos() as u64;
                samples.push(now.saturating_sub(ns) as f64 / 1e6);
            }
        }
        samples
    });
    let total = (rate as f64 * secs) as u64;
    let mut made = 0u64;
    while made < total {
        let due = ((t0.elapsed().as_secs_f64()) * rate as f64) as u64;
        while made < due.min(total) {
            let ns = t0.elapsed().as_nanos() as u64;
            let _ = std::fs::File::create(dir.join(format!("f-{ns}"))).unwrap();
            made += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let achieved = made as f64 / t0.elapsed().as_secs_f64();
    // The last file tells the follower to stop.
    std::fs::File::create(dir.join("stop")).unwrap();
    let mut samples = follower.join().unwrap();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{:.0} {:.2} {:.2} {:.2} {}",
        achieved,
        p(0.5),
        p(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

fn backlog(socket: &Path, cursor: &str, mode: &str) {
    let t = Instant::now();
    let mut records = 0u64;
    if mode == "raw" {
        let mut s = UnixStream::connect(socket).unwrap();
        writeln!(s, r#"{{"op":"follow","since":"{cursor}"}}"#).unwrap();
        let mut r = BufReader::with_capacity(1 << 20, s);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap() == 0 {
                break;
            }
            if line.starts_with(b"{\"path") {
                records += 1;
            }
            // The history_done marker ends the backlog.
            if !line.starts_with(b"{\"path") && contains(&line, b"\"history_done\"") {
                break;
            }
        }
    } else {
        let stream = Follow::start(socket, FollowOptions::since(cursor)).unwrap();
        for line in stream {
            match line.unwrap() {
                FollowLine::Change { .. } => records += 1,
                FollowLine::HistoryDone { .. } => break,
                _ => {}
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{records} {secs:.3} {:.0}", records as f64 / secs);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
