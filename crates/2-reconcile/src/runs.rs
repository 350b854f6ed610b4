//! Sorted runs: a walk's entries are sorted in pieces of bounded size,
//! spilled to unnamed files in the state directory once a bound is passed,
//! and merged into one sorted [`Entries`] (design 11.4). A walk of ten
//! million entries then holds a few runs in memory, not the tree.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::entries::{
    encode_entry, next_off, path_at, Entries, Index, IndexBuilder, ENTRY_FIXED_LEN,
};
use crate::store::Store;
use cj_types::Stat;

/// Bytes of encoded entries a walk worker sorts at a time.
pub const RUN_BYTES_MAX: usize = 8 << 20;
/// A walk whose entries fit in this many bytes is merged in memory; a
/// bigger one is merged into an unnamed file that is then mapped.
pub const IN_MEMORY_BYTES_MAX: usize = 32 << 20;
/// Read buffer per spilled run while merging (a run per 8 MiB of entries:
/// 140 runs, 9 MiB of buffers, for ten million entries).
const RUN_READ_BUFFER_BYTES: usize = 64 << 10;
/// Spilled runs that are merged into one before more are made.
const SPILLED_RUNS_MAX: usize = 64;
/// Write buffer of a spilled run or a merged file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Where and when a walk's entries leave memory.
#[derive(Clone, Copy, Debug)]
pub struct Spill<'a> {
    dir: Option<&'a Path>,
    run_bytes: usize,
    in_memory_bytes: usize,
}

impl<'a> Spill<'a> {
    /// Everything stays in memory (small trees, tests).
    pub fn memory() -> Spill<'static> {
        Spill {
            dir: None,
            run_bytes: RUN_BYTES_MAX,
            in_memory_bytes: usize::MAX,
        }
    }

    /// Past the bounds, runs and the merged result go to unnamed files in
    /// `dir` (they vanish when closed, even after a crash).
    pub fn to(dir: &'a Path) -> Spill<'a> {
        Spill::with_bounds(dir, RUN_BYTES_MAX, IN_MEMORY_BYTES_MAX)
    }

    /// [`Spill::to`] with other bounds (tests make them tiny).
    pub fn with_bounds(dir: &'a Path, run_bytes: usize, in_memory_bytes: usize) -> Spill<'a> {
        Spill {
            dir: Some(dir),
            run_bytes: run_bytes.max(1),
            in_memory_bytes,
        }
    }

    fn error(&self, source: std::io::Error) -> SpillError {
        SpillError {
            dir: self.dir.map(Path::to_path_buf).unwrap_or_default(),
            source,
        }
    }
}

/// Writing or reading a spilled run failed.
#[derive(Debug)]
pub struct SpillError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// Entries being collected, unsorted, up to the run bound.
#[derive(Default)]
pub(crate) struct Run {
    bytes: Vec<u8>,
    /// Where each entry starts (a run stays far below 4 GiB).
    offs: Vec<u32>,
}

impl Run {
    pub(crate) fn push(&mut self, path: &[u8], st: &Stat) {
        self.offs.push(self.bytes.len() as u32);
        encode_entry(&mut self.bytes, path, st);
    }

    fn is_empty(&self) -> bool {
        self.offs.is_empty()
    }

    /// Writes the entries sorted by path, back to back.
    fn write_sorted<W: Write>(mut self, w: &mut W) -> std::io::Result<()> {
        let b = &self.bytes;
        let path = |o: u32| path_at(b, o as usize);
        self.offs.sort_unstable_by(|&x, &y| path(x).cmp(path(y)));
        for &o in &self.offs {
            let o = o as usize;
            w.write_all(&b[o..next_off(b, o)])?;
        }
        Ok(())
    }
}

enum Sorted {
    Memory(Vec<u8>),
    File(File),
}

/// The sorted runs of one walk, from every worker.
pub(crate) struct Runs<'a> {
    spill: Spill<'a>,
    done: Mutex<Vec<Sorted>>,
    bytes: AtomicUsize,
}

impl<'a> Runs<'a> {
    pub(crate) fn new(spill: Spill<'a>) -> Runs<'a> {
        Runs {
            spill,
            done: Mutex::new(Vec::new()),
            bytes: AtomicUsize::new(0),
        }
    }

    /// Whether a worker's run has reached the bound.
    pub(crate) fn is_full(&self, run: &Run) -> bool {
        run.bytes.len() >= self.spill.run_bytes
    }

    /// Sorts `run` and keeps it: in a file when spilling is allowed and the
    /// walk has outgrown memory, else in memory.
    pub(crate) fn add(&self, run: Run) -> Result<(), SpillError> {
        if run.is_empty() {
            return Ok(());
        }
        let n = run.bytes.len();
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        let kept = match self.spill.dir {
            Some(dir) if total > self.spill.in_memory_bytes => {
                let spilled = || {
                    let mut w = spill_writer(dir)?;
                    run.write_sorted(&mut w)?;
                    rewound(w)
                };
                Sorted::File(spilled().map_err(|e| self.spill.error(e))?)
            }
            _ => {
                let mut v = Vec::with_capacity(n);
                run.write_sorted(&mut v).map_err(|e| self.spill.error(e))?;
                Sorted::Memory(v)
            }
        };
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.push(kept);
        let spilled = done.iter().filter(|r| matches!(r, Sorted::File(_))).count();
        match self.spill.dir {
            Some(dir) if spilled >= SPILLED_RUNS_MAX => {
                compact(&mut done, dir).map_err(|e| self.spill.error(e))
            }
            _ => Ok(()),
        }
    }

    /// Merges every run into one sorted [`Entries`]; a path found twice
    /// (a directory listed twice while it changed) is kept once.
    pub(crate) fn merge(self) -> Result<Entries, SpillError> {
        let spill = self.spill;
        let total = self.bytes.load(Ordering::Relaxed);
        let runs = self.done.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut heads = heads(runs).map_err(|e| spill.error(e))?;
        let mut out = match spill.dir {
            Some(dir) if total > spill.in_memory_bytes => {
                Out::File(spill_writer(dir).map_err(|e| spill.error(e))?, 0)
            }
            _ => Out::Memory(Vec::with_capacity(total)),
        };
        let index = merge_into(&mut heads, &mut out).map_err(|e| spill.error(e))?;
        let store = match out {
            Out::Memory(b) => Store::Owned(b),
            Out::File(w, at) => {
                let f = w.into_inner().map_err(|e| spill.error(e.into_error()))?;
                Store::of_file(&f, at).map_err(|e| spill.error(e))?
            }
        };
        Ok(Entries::from_store(store, index))
    }
}

/// Merges the spilled runs of `done` into one spilled run, so a merge
/// never holds more than [`SPILLED_RUNS_MAX`] files open (a walk of 100M
/// files makes about 1,400 runs).
fn compact(done: &mut Vec<Sorted>, dir: &Path) -> std::io::Result<()> {
    let (files, memory): (Vec<Sorted>, Vec<Sorted>) = std::mem::take(done)
        .into_iter()
        .partition(|r| matches!(r, Sorted::File(_)));
    *done = memory;
    let mut heads = heads(files)?;
    let mut out = Out::File(spill_writer(dir)?, 0);
    merge_into(&mut heads, &mut out)?;
    if let Out::File(w, _) = out {
        done.push(Sorted::File(rewound(w)?));
    }
    Ok(())
}

/// A buffered writer to a new unnamed file in `dir`.
fn spill_writer(dir: &Path) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::with_capacity(
        WRITE_BUFFER_BYTES,
        unnamed_file(dir)?,
    ))
}

/// The file `w` wrote, flushed and read again from its start.
fn rewound(w: BufWriter<File>) -> std::io::Result<File> {
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.rewind()?;
    Ok(f)
}

/// Each run with its first entry read (empty runs left out).
fn heads(runs: Vec<Sorted>) -> std::io::Result<Vec<Head>> {
    let mut heads = Vec::with_capacity(runs.len());
    for run in runs {
        let mut h = Head {
            source: match run {
                Sorted::Memory(b) => Source::Memory(b, 0),
                Sorted::File(f) => Source::File(BufReader::with_capacity(RUN_READ_BUFFER_BYTES, f)),
            },
            cur: Vec::new(),
        };
        if h.advance()? {
            heads.push(h);
        }
    }
    Ok(heads)
}

/// K-way merge of `heads` (a binary heap by current path) into `out`;
/// returns the merged entries' index.
fn merge_into(heads: &mut [Head], out: &mut Out) -> std::io::Result<Index> {
    let mut heap: Vec<usize> = (0..heads.len()).collect();
    for i in (0..heap.len() / 2).rev() {
        sift_down(&mut heap, heads, i);
    }
    let mut index = IndexBuilder::default();
    let mut last: Vec<u8> = Vec::new();
    while let Some(&top) = heap.first() {
        let h = &mut heads[top];
        let first = index.len() == 0;
        if first || h.path() != last.as_slice() {
            // The heap hands out paths in order; anything else is a bug,
            // and a baseline out of order would hide differences.
            assert!(
                first || h.path() > last.as_slice(),
                "merged runs out of order"
            );
            index.push(out.at() as u64, h.path());
            out.write(&h.cur)?;
            last.clear();
            last.extend_from_slice(h.path());
        }
        if !h.advance()? {
            let end = heap.len() - 1;
            heap.swap(0, end);
            heap.pop();
        }
        sift_down(&mut heap, heads, 0);
    }
    Ok(index.finish())
}

fn sift_down(heap: &mut [usize], heads: &[Head], mut i: usize) {
    let less = |a: usize, b: usize| heads[a].path() < heads[b].path();
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < heap.len() && less(heap[l], heap[m]) {
            m = l;
        }
        if r < heap.len() && less(heap[r], heap[m]) {
            m = r;
        }
        if m == i {
            return;
        }
        heap.swap(i, m);
        i = m;
    }
}

enum Source {
    Memory(Vec<u8>, usize),
    File(BufReader<File>),
}

/// One run being merged, with its current entry.
struct Head {
    source: Source,
    /// The current encoded entry.
    cur: Vec<u8>,
}

impl Head {
    fn path(&self) -> &[u8] {
        path_at(&self.cur, 0)
    }

    /// Reads the next entry into `cur`; `false` at the end of the run.
    fn advance(&mut self) -> std::io::Result<bool> {
        self.cur.clear();
        match &mut self.source {
            Source::Memory(b, at) => {
                if *at >= b.len() {
                    return Ok(false);
                }
                let end = next_off(b, *at).min(b.len());
                self.cur.extend_from_slice(&b[*at..end]);
                *at = end;
                Ok(true)
            }
            Source::File(r) => {
                let mut len = [0u8; 4];
                match r.read_exact(&mut len) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                    Err(e) => return Err(e),
                }
                let n = u32::from_le_bytes(len) as usize + ENTRY_FIXED_LEN;
                self.cur.extend_from_slice(&len);
                self.cur.resize(4 + n, 0);
                r.read_exact(&mut self.cur[4..])?;
                Ok(true)
            }
        }
    }
}

enum Out {
    Memory(Vec<u8>),
    /// The writer and the bytes written.
    File(BufWriter<File>, usize),
}

impl Out {
    fn at(&self) -> usize {
        match self {
            Out::Memory(b) => b.len(),
            Out::File(_, at) => *at,
        }
    }

    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Memory(v) => v.extend_from_slice(b),
            Out::File(w, at) => {
                w.write_all(b)?;
                *at += b.len();
            }
        }
        Ok(())
    }
}

/// A file in `dir` with no name (`O_TMPFILE`): it disappears when the last
/// descriptor or mapping of it goes, so a crash leaves nothing behind.
/// Where the filesystem cannot make one, a named file removed at once.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    cj_types::fsutil::create_private_dir(dir)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
    {
        Ok(f) => Ok(f),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = dir.join(format!(
                "spill-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}
