//! The workload: N x (create, write 100 bytes, close), then N unlinks.
//! Usage: cj-bench-workload DIR [N]. Prints the wall time in seconds.
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: cj-bench-workload DIR [N]"));
    let n: usize = args
        .get(2)
        .map(|s| s.parse().expect("N"))
        .unwrap_or(200_000);
    let payload = [b'x'; 100];
    let start = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(dir.join(format!("f{i:07}"))).unwrap();
        f.write_all(&payload).unwrap();
    }
    for i in 0..n {
        std::fs::remove_file(dir.join(format!("f{i:07}"))).unwrap();
    }
    println!("{:.3}", start.elapsed().as_secs_f64());
}
