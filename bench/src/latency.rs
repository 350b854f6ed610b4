//! Measures how long `cursor` takes while a workload runs: the time until
//! every change made before the call is durable in the journal, i.e. an upper
//! bound of the change-to-durable-record latency of the last change.
//! Usage: cj-bench-latency SOCKET SECONDS. Prints p50 p99 max in ms.
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = std::path::PathBuf::from(&args[1]);
    let secs: f64 = args[2].parse().unwrap();
    let mut client = cj_client::Client::connect(&socket).unwrap();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        client.cursor(None).unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{:.2} {:.2} {:.2} {}",
        p(0.5),
        p(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}
