//! Creates files at a steady rate: every millisecond, RATE/1000 files are
//! created (create, write 100 bytes, close), for SECONDS; then removes
//! them. Prints the rate reached (files per second).
//! Usage: cj-bench-paced DIR RATE SECONDS
use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir =
        std::path::PathBuf::from(args.get(1).expect("usage: cj-bench-paced DIR RATE SECONDS"));
    let rate: f64 = args.get(2).and_then(|s| s.parse().ok()).expect("RATE");
    let secs: f64 = args.get(3).and_then(|s| s.parse().ok()).expect("SECONDS");
    let payload = [b'x'; 100];
    let start = Instant::now();
    let mut made = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while made < due {
            let mut f = std::fs::File::create(dir.join(format!("p{made:08}"))).unwrap();
            f.write_all(&payload).unwrap();
            made += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let took = start.elapsed().as_secs_f64();
    for i in 0..made {
        let _ = std::fs::remove_file(dir.join(format!("p{i:08}")));
    }
    println!("{:.0}", made as f64 / took);
}
