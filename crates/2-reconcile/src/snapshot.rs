//! Persistent stat snapshots of a tracked tree: the reconciliation baseline.
//!
//! File format (all little-endian; `docs/design.md`, "Snapshot files"):
//! a 128-byte header, the root path, then blocks of entries, each block with
//! its own CRC-32C. The file is replaced atomically (temp file, fsync,
//! rename, fsync directory), so a crash leaves the old or the new snapshot.

use crate::entries::{encode_entry, Entries, Index, IndexBuilder, ENTRY_FIXED_LEN, SAMPLE};
use crate::fast::FsMarks;
use crate::store::Store;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"CJSNAPSH";
const UNKNOWN_VERSION: &str = "unknown version";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 128;
/// Entries per checksummed block.
const BLOCK_ENTRIES_MAX: usize = 4096;
// A sample of entries (`SAMPLE`) never straddles two blocks.
const _: () = assert!(BLOCK_ENTRIES_MAX.is_multiple_of(SAMPLE));
/// A snapshot path longer than this is damage, not data. Twice the
/// journal's `cj_types::PATH_BYTES_MAX`: a walk may hold paths that records
/// cannot (those become unknown-path records), and a baseline must still
/// load.
const SNAPSHOT_PATH_BYTES_MAX: usize = 2 * cj_types::PATH_BYTES_MAX;

/// What a walk records per path (shared with journaled events).
pub use cj_types::Stat;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub root: Vec<u8>,
    /// The journal's durable seq when that walk started.
    pub through_seq: u64,
    /// The journal's durable seq when that walk ended: the snapshot is a
    /// valid baseline only for gaps after it (a gap during the walk may be
    /// partly contained in it).
    pub valid_after_seq: u64,
    pub entries: Entries,
    /// The filesystem and clocks when the walk started (fast paths).
    pub marks: FsMarks,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    Corrupt {
        path: PathBuf,
        detail: &'static str,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io { path, op, source } => {
                write!(f, "snapshot {op} {}: {source}", path.display())
            }
            SnapshotError::Corrupt { path, detail } if *detail == UNKNOWN_VERSION => write!(
                f,
                "snapshot {} was written by another version of cj; it will be replaced by \
                 the next walk, and gaps it would have closed stay open (clients are asked \
                 to rescan)",
                path.display()
            ),
            SnapshotError::Corrupt { path, detail } => write!(
                f,
                "snapshot {} is damaged ({detail}); it will be rebuilt by the next walk, and \
                 gaps it would have closed stay open (clients are asked to rescan)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

fn fnv64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

use cj_types::bytes::le_u32 as u32_at;
use cj_types::bytes::le_u64 as u64_at;

impl Snapshot {
    pub fn new(root: Vec<u8>) -> Snapshot {
        Snapshot {
            root,
            ..Snapshot::default()
        }
    }

    /// Where the snapshot of `root` lives in `dir`.
    pub fn file_for(dir: &Path, root: &[u8]) -> PathBuf {
        dir.join(format!("{:016x}.snap", fnv64(root)))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// Writes the file's bytes to `w`, one block at a time.
    pub fn write_to<W: std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        let mut out = vec![0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.marks.realtime_ns.to_le_bytes());
        out[24..32].copy_from_slice(&self.through_seq.to_le_bytes());
        out[32..40].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        out[40..44].copy_from_slice(&(self.root.len() as u32).to_le_bytes());
        let blocks = self.entries.len().div_ceil(BLOCK_ENTRIES_MAX) as u32;
        out[44..48].copy_from_slice(&blocks.to_le_bytes());
        out[48..56].copy_from_slice(&self.valid_after_seq.to_le_bytes());
        out[56..64].copy_from_slice(&self.marks.boottime_ns.to_le_bytes());
        out[64..80].copy_from_slice(&self.marks.boot_id);
        out[80..96].copy_from_slice(&self.marks.fs_uuid);
        out[96..104].copy_from_slice(&self.marks.generation.to_le_bytes());
        // 104..124 reserved (zero).
        let crc = crc32c::crc32c(&out[0..124]);
        out[124..128].copy_from_slice(&crc.to_le_bytes());
        w.write_all(&out)?;
        w.write_all(&self.root)?;
        let mut it = self.entries.iter().peekable();
        let mut body = Vec::new();
        let mut written = 0usize;
        while it.peek().is_some() {
            body.clear();
            let mut n = 0u32;
            for (p, st) in it.by_ref().take(BLOCK_ENTRIES_MAX) {
                encode_entry(&mut body, p, &st);
                n += 1;
            }
            written += n as usize;
            w.write_all(&n.to_le_bytes())?;
            w.write_all(&(body.len() as u32).to_le_bytes())?;
            w.write_all(&body)?;
            w.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
        }
        // The header's counts were taken from `len`: the entries must agree.
        assert_eq!(written, self.entries.len(), "snapshot entry count");
        Ok(())
    }

    /// Decodes a snapshot, keeping `b` as the entries' storage; `Err(detail)`
    /// on any damage. Never panics.
    pub fn decode(b: Vec<u8>) -> Result<Snapshot, &'static str> {
        let parsed = parse(&mut &b[..])?;
        Ok(parsed.into_snapshot(Store::Owned(b)))
    }

    /// Loads the snapshot of `root` from `dir`. `Ok(None)` if there is none.
    pub fn load(dir: &Path, root: &[u8]) -> Result<Option<Snapshot>, SnapshotError> {
        let path = Snapshot::file_for(dir, root);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| SnapshotError::Io { path, op, source }
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open")(e)),
        };
        // One checked pass through a buffer, then the file is mapped: its
        // bytes are read again only where the entries are used.
        let parsed = parse(&mut std::io::BufReader::with_capacity(
            LOAD_BUFFER_BYTES,
            &file,
        ))
        .map_err(|detail| SnapshotError::Corrupt {
            path: path.clone(),
            detail,
        })?;
        let len = if parsed.count == 0 { 0 } else { parsed.end };
        let store = Store::of_file(&file, len).map_err(io("map"))?;
        let snap = parsed.into_snapshot(store);
        if snap.root != root {
            return Err(SnapshotError::Corrupt {
                path,
                detail: "belongs to another root",
            });
        }
        Ok(Some(snap))
    }

    /// The marks of the snapshot of `root` in `dir`, reading only the
    /// header; `None` if there is none or it is damaged.
    pub fn load_marks(dir: &Path, root: &[u8]) -> Option<FsMarks> {
        use std::io::Read;
        let mut h = [0u8; HEADER_LEN];
        File::open(Snapshot::file_for(dir, root))
            .and_then(|mut f| f.read_exact(&mut h))
            .ok()?;
        if h[0..8] != MAGIC
            || u32_at(&h, 8) != Some(VERSION)
            || u32_at(&h, 124) != Some(crc32c::crc32c(&h[0..124]))
        {
            return None;
        }
        Some(FsMarks {
            realtime_ns: u64_at(&h, 16)?,
            boottime_ns: u64_at(&h, 56)?,
            boot_id: h[64..80].try_into().ok()?,
            fs_uuid: h[80..96].try_into().ok()?,
            generation: u64_at(&h, 96)?,
        })
    }

    /// The journal seqs a snapshot's header names (`through`, `valid
    /// after`): both were durable, so the journal's numbering must never
    /// restart below them (design 7 step 5a). `None` if the header is
    /// unreadable.
    pub fn load_seqs(dir: &Path, root: &[u8]) -> Option<(u64, u64)> {
        use std::io::Read;
        let mut h = [0u8; HEADER_LEN];
        File::open(Snapshot::file_for(dir, root))
            .and_then(|mut f| f.read_exact(&mut h))
            .ok()?;
        if h[0..8] != MAGIC || u32_at(&h, 124) != Some(crc32c::crc32c(&h[0..124])) {
            return None;
        }
        Some((u64_at(&h, 24)?, u64_at(&h, 48)?))
    }

    /// Replaces the snapshot file atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), SnapshotError> {
        let io = |path: &Path, op: &'static str| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, op, source }
        };
        cj_types::fsutil::create_private_dir(dir).map_err(io(dir, "create directory"))?;
        cj_types::fsutil::write_atomic_with(&Snapshot::file_for(dir, &self.root), |w| {
            self.write_to(w)
        })
        .map_err(|e| SnapshotError::Io {
            path: e.path,
            op: e.op,
            source: e.source,
        })
    }

    pub fn remove(dir: &Path, root: &[u8]) {
        let _ = fs::remove_file(Snapshot::file_for(dir, root));
    }

    /// Deletes every snapshot (and leftover temp file) in `dir` that is not
    /// the baseline of one of `roots` (issue 9, defect 8: baselines of
    /// untracked roots never stay behind). Returns how many were removed.
    pub fn remove_others(dir: &Path, roots: &[Vec<u8>]) -> usize {
        let keep: std::collections::HashSet<PathBuf> =
            roots.iter().map(|r| Snapshot::file_for(dir, r)).collect();
        let Ok(list) = fs::read_dir(dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in list.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name.ends_with(".snap") || name.ends_with(".snap.tmp");
            if ours && !keep.contains(&path) && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// Bytes read at a time while a snapshot is checked.
const LOAD_BUFFER_BYTES: usize = 1 << 20;

/// A checked snapshot file, its entries not yet attached.
struct Parsed {
    root: Vec<u8>,
    through_seq: u64,
    valid_after_seq: u64,
    marks: FsMarks,
    count: usize,
    index: Index,
    /// The file's length: where its last block ends.
    end: usize,
}

impl Parsed {
    fn into_snapshot(self, store: Store) -> Snapshot {
        Snapshot {
            root: self.root,
            through_seq: self.through_seq,
            valid_after_seq: self.valid_after_seq,
            marks: self.marks,
            entries: Entries::from_store(store, self.index),
        }
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), &'static str> {
    r.read_exact(buf).map_err(|_| what)
}

/// Checks a snapshot file read from `r` to its end, block by block:
/// `Err(detail)` on any damage. Never panics; holds one block at a time.
fn parse<R: Read>(r: &mut R) -> Result<Parsed, &'static str> {
    let mut h = [0u8; HEADER_LEN];
    read_exact(r, &mut h, "shorter than its header")?;
    if h[0..8] != MAGIC {
        return Err("bad magic");
    }
    if u32_at(&h, 124) != Some(crc32c::crc32c(&h[0..124])) {
        return Err("header checksum mismatch");
    }
    if u32_at(&h, 8) != Some(VERSION) {
        return Err(UNKNOWN_VERSION);
    }
    // Accepted is exactly what this version writes (the decoder fuzz
    // test checks that an accepted file re-encodes to itself).
    if u32_at(&h, 12) != Some(HEADER_LEN as u32) {
        return Err("bad header length");
    }
    if h[104..124].iter().any(|&x| x != 0) {
        return Err("reserved header bytes not zero");
    }
    let count = u64_at(&h, 32).ok_or("header")? as usize;
    let root_len = u32_at(&h, 40).ok_or("header")? as usize;
    let blocks = u32_at(&h, 44).ok_or("header")? as usize;
    if blocks != count.div_ceil(BLOCK_ENTRIES_MAX) {
        return Err("block count does not match the entry count");
    }
    if root_len > SNAPSHOT_PATH_BYTES_MAX {
        return Err("root path too long");
    }
    let mut root = vec![0u8; root_len];
    read_exact(r, &mut root, "truncated root")?;
    let mut at = HEADER_LEN + root_len;
    let mut index = IndexBuilder::default();
    let mut last: Vec<u8> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for block in 0..blocks {
        let mut bh = [0u8; 8];
        read_exact(r, &mut bh, "truncated block")?;
        let n = u32_at(&bh, 0).ok_or("truncated block")? as usize;
        // Full blocks, then one with the rest (so a sample of entries never
        // straddles two blocks).
        let want = if block + 1 < blocks {
            BLOCK_ENTRIES_MAX
        } else {
            count - block * BLOCK_ENTRIES_MAX
        };
        if n != want {
            return Err("block entry count does not match");
        }
        let len = u32_at(&bh, 4).ok_or("truncated block")? as usize;
        body.clear();
        // Grows only as far as the bytes are really there.
        r.by_ref()
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(|_| "truncated block")?;
        if body.len() != len {
            return Err("truncated block");
        }
        let mut crc = [0u8; 4];
        read_exact(r, &mut crc, "truncated block")?;
        if u32::from_le_bytes(crc) != crc32c::crc32c(&body) {
            return Err("block checksum mismatch");
        }
        let start = at + 8;
        let mut p = 0;
        for _ in 0..n {
            let plen = u32_at(&body, p).ok_or("truncated entry")? as usize;
            if plen > SNAPSHOT_PATH_BYTES_MAX {
                return Err("entry path too long");
            }
            if p + 4 + plen + ENTRY_FIXED_LEN > body.len() {
                return Err("truncated entry");
            }
            // Sorted and unique, as written: anything else is damage.
            let path = &body[p + 4..p + 4 + plen];
            if index.len() > 0 && last.as_slice() >= path {
                return Err("entries out of order");
            }
            last.clear();
            last.extend_from_slice(path);
            index.push((start + p) as u64, path);
            p += 4 + plen + ENTRY_FIXED_LEN;
        }
        if p != body.len() {
            return Err("block longer than its entries");
        }
        at = start + len + 4;
    }
    let mut more = [0u8; 1];
    if !matches!(r.read(&mut more), Ok(0)) || index.len() != count {
        return Err("entry count mismatch");
    }
    Ok(Parsed {
        root,
        through_seq: u64_at(&h, 24).ok_or("header")?,
        valid_after_seq: u64_at(&h, 48).ok_or("header")?,
        marks: FsMarks {
            realtime_ns: u64_at(&h, 16).ok_or("header")?,
            boottime_ns: u64_at(&h, 56).ok_or("header")?,
            boot_id: h[64..80].try_into().map_err(|_| "header")?,
            fs_uuid: h[80..96].try_into().map_err(|_| "header")?,
            generation: u64_at(&h, 96).ok_or("header")?,
        },
        count,
        index: index.finish(),
        end: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut s = Snapshot::new(b"/root".to_vec());
        s.marks.realtime_ns = 5;
        s.through_seq = 9;
        s.valid_after_seq = 11;
        for i in 0..10_000u64 {
            s.entries.insert(
                format!("/root/f{i}\n\u{e9}").into_bytes(),
                Stat {
                    ino: i,
                    mode: 0o100644,
                    size: i * 3,
                    ctime_ns: -(i as i64),
                    ..Stat::default()
                },
            );
        }
        s
    }

    #[test]
    fn round_trip_and_damage() {
        let s = sample();
        let b = s.encode();
        let back = Snapshot::decode(b.clone()).unwrap();
        assert_eq!(
            (
                back.root,
                back.marks.realtime_ns,
                back.through_seq,
                back.valid_after_seq
            ),
            (s.root.clone(), 5, 9, 11)
        );
        assert_eq!(back.entries, s.entries);
        for cut in [0, 10, 63, 64, 127, 128, 200, b.len() / 2, b.len() - 1] {
            assert!(Snapshot::decode(b[..cut].to_vec()).is_err());
        }
        for at in [3, 20, 70, 5000, b.len() - 2] {
            let mut d = b.clone();
            d[at] ^= 0x10;
            assert!(Snapshot::decode(d).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn save_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        assert!(Snapshot::load(dir.path(), b"/root").unwrap().is_none());
        s.save(&dir.path().join("snaps")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("snaps")), 0o700);
            assert_eq!(
                mode(&Snapshot::file_for(&dir.path().join("snaps"), b"/root")),
                0o600
            );
        }
        let l = Snapshot::load(&dir.path().join("snaps"), b"/root")
            .unwrap()
            .unwrap();
        assert_eq!(l.entries.len(), 10_000);
        assert_eq!(
            Snapshot::load_marks(&dir.path().join("snaps"), b"/root"),
            Some(s.marks)
        );
    }

    /// A loaded snapshot is a mapped file, read through samples of entry
    /// offsets and given back behind a sequential read; it must read
    /// exactly like the map it was saved from: every entry, lookups,
    /// ranges and children, with changes made on top, and saved again.
    #[test]
    fn a_mapped_snapshot_reads_like_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Snapshot::new(b"/r".to_vec());
        // Over RELEASE_BYTES of entries, odd path lengths, many blocks.
        let mut m = std::collections::BTreeMap::new();
        for i in 0..120_000u64 {
            let p = format!("/r/d{}/{}{}", i % 97, "x".repeat((i % 13) as usize), i).into_bytes();
            let st = Stat {
                ino: i,
                size: i,
                ..Stat::default()
            };
            m.insert(p, st);
        }
        s.entries = Entries::from_sorted(m.iter().map(|(k, v)| (k.clone(), *v)).collect());
        s.save(dir.path()).unwrap();
        let mut l = Snapshot::load(dir.path(), b"/r").unwrap().unwrap();
        assert!(matches!(l.entries.store_kind(), "mapped"));
        assert_eq!(l.entries.to_map(), m);
        // Every entry: the first and last of each fence and sample too.
        assert_eq!(l.entries.get(b"/"), None);
        assert_eq!(l.entries.get(b"/r/z"), None);
        for (k, v) in m.iter() {
            assert_eq!(l.entries.get(k), Some(*v));
            let mut gone = k.clone();
            gone.push(b'~');
            assert_eq!(l.entries.get(&gone), None);
        }
        let want: Vec<Vec<u8>> = m
            .keys()
            .filter(|k| k.starts_with(b"/r/d5/"))
            .map(|k| k[b"/r/d5/".len()..].to_vec())
            .collect();
        let got: Vec<Vec<u8>> = l
            .entries
            .children(b"/r/d5")
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(got, want);
        let lo: &[u8] = b"/r/d50/";
        let hi: &[u8] = b"/r/d51";
        let got: Vec<Vec<u8>> = l
            .entries
            .range(std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi))
            .map(|(k, _)| k.to_vec())
            .collect();
        let want: Vec<Vec<u8>> = m
            .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(got, want);
        let first = m.keys().next().unwrap().clone();
        l.entries.remove(&first);
        m.remove(&first);
        l.entries.insert(b"/r/new".to_vec(), Stat::default());
        m.insert(b"/r/new".to_vec(), Stat::default());
        l.save(dir.path()).unwrap();
        let again = Snapshot::load(dir.path(), b"/r").unwrap().unwrap();
        assert_eq!(again.entries.to_map(), m);
        assert_eq!(again.entries.len(), m.len());
    }

    fn rss_file_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Comparing two mapped baselines of about 90 MB each, with scattered
    /// differences and lookups, then listing a directory whose children
    /// span the whole file, keeps the pages it has read out of the
    /// process's resident memory (design 11.4): the growth stays far below
    /// the files' size.
    #[test]
    fn comparing_mapped_baselines_keeps_resident_memory_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            |i: u64| format!("/r/{:03}/{i:020}-abcdefghijklmnopqrstuvwx", i % 512).into_bytes();
        let mut pairs: Vec<(Vec<u8>, Stat)> = (0..800_000u64)
            .map(|i| {
                (
                    path(i),
                    Stat {
                        ino: i,
                        ..Stat::default()
                    },
                )
            })
            .collect();
        pairs.extend((0..512u64).map(|d| (format!("/r/{d:03}").into_bytes(), Stat::default())));
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut old = Snapshot::new(b"/r".to_vec());
        old.entries = Entries::from_sorted(pairs.clone());
        old.save(&dir.path().join("a")).unwrap();
        let mut changed = 0;
        for (i, p) in pairs.iter_mut().enumerate() {
            if i % 400 == 0 {
                p.1.size = 1;
                changed += 1;
            }
        }
        let mut new = Snapshot::new(b"/r".to_vec());
        new.entries = Entries::from_sorted(pairs);
        new.save(&dir.path().join("b")).unwrap();
        drop((old, new));
        let old = Snapshot::load(&dir.path().join("a"), b"/r")
            .unwrap()
            .unwrap();
        let new = Snapshot::load(&dir.path().join("b"), b"/r")
            .unwrap()
            .unwrap();
        let before = rss_file_kb();
        let touched = crate::diff::Touched::present(
            (0..4000u64).map(|i| (path(i * 199), cj_types::ObjectKind::File)),
        );
        let recs = crate::diff::diff(&old, &new, &touched, 1);
        assert_eq!(recs.len(), changed);
        // The children of the root: a pass over the whole file.
        assert_eq!(new.entries.children(b"/r").len(), 512);
        assert_eq!(old.entries.children(b"/r/007").len(), 1563);
        let grown = rss_file_kb().saturating_sub(before);
        eprintln!("resident file pages grew by {grown} kB");
        assert!(grown < 32 << 10, "resident file pages grew by {grown} kB");
    }
}
