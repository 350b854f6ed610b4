//! Makes the reconciliation benchmark tree: FILES empty files spread over
//! DIRS directories, two levels deep (sqrt(DIRS) top-level directories).
//! Usage: cj-bench-tree ROOT FILES DIRS
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let root = std::path::PathBuf::from(&a[1]);
    let files: usize = a[2].parse().unwrap();
    let dirs: usize = a[3].parse().unwrap();
    let top = (dirs as f64).sqrt().ceil() as usize;
    let per_dir = files.div_ceil(dirs);
    let mut made = 0;
    for d in 0..dirs {
        let dir = root
            .join(format!("t{:04}", d % top))
            .join(format!("d{d:06}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            if made == files {
                break;
            }
            std::fs::File::create(dir.join(format!("f{f:04}"))).unwrap();
            made += 1;
        }
    }
    println!("{made} files in {dirs} directories");
}
