//! Applies N changes spread over a benchmark tree (while cj is down):
//! writes, chmods, creates, unlinks and renames in random directories.
//! Usage: cj-bench-mutate ROOT N SEED. Prints how many succeeded.
use std::os::unix::fs::PermissionsExt;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let root = std::path::PathBuf::from(&a[1]);
    let n: usize = a[2].parse().unwrap();
    let mut x: u64 = a[3].parse().unwrap();
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let tops: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut ok = 0;
    for i in 0..n {
        let top = &tops[(next() as usize) % tops.len()];
        let dirs: Vec<_> = std::fs::read_dir(top)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let dir = &dirs[(next() as usize) % dirs.len()];
        let file = dir.join(format!("f{:04}", next() % 10));
        let r = match i % 5 {
            0 => std::fs::write(&file, b"changed"),
            1 => std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)),
            2 => std::fs::write(dir.join(format!("new{i}")), b"x"),
            3 => std::fs::remove_file(&file),
            _ => std::fs::rename(&file, dir.join(format!("moved{i}"))),
        };
        ok += usize::from(r.is_ok());
    }
    println!("{ok}");
}
