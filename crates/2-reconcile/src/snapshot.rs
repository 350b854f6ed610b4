//! Persistent stat snapshots of a tracked tree: the reconciliation baseline.
//!
//! File format (all little-endian; `docs/design.md`, "Snapshot files"):
//! a 128-byte header, the root path, then blocks of entries, each block with
//! its own CRC-32C. The file is replaced atomically (temp file, fsync,
//! rename, fsync directory), so a crash leaves the old or the new snapshot.

use crate::entries::{encode_entry, Entries, ENTRY_FIXED_LEN};
use crate::fast::FsMarks;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"CJSNAPSH";
const UNKNOWN_VERSION: &str = "unknown version";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 128;
/// Entries per checksummed block.
const BLOCK_ENTRIES_MAX: usize = 4096;
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
        out.extend_from_slice(&self.root);
        let mut it = self.entries.iter().peekable();
        while it.peek().is_some() {
            let mut body = Vec::new();
            let mut n = 0u32;
            for (p, st) in it.by_ref().take(BLOCK_ENTRIES_MAX) {
                encode_entry(&mut body, p, &st);
                n += 1;
            }
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            let crc = crc32c::crc32c(&body);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Decodes a snapshot, keeping `b` as the entries' storage; `Err(detail)`
    /// on any damage. Never panics.
    pub fn decode(b: Vec<u8>) -> Result<Snapshot, &'static str> {
        let h = b.get(..HEADER_LEN).ok_or("shorter than its header")?;
        if h[0..8] != MAGIC {
            return Err("bad magic");
        }
        if u32_at(h, 124) != Some(crc32c::crc32c(&h[0..124])) {
            return Err("header checksum mismatch");
        }
        if u32_at(h, 8) != Some(VERSION) {
            return Err(UNKNOWN_VERSION);
        }
        // Accepted is exactly what this version writes (the decoder fuzz
        // test checks that an accepted file re-encodes to itself).
        if u32_at(h, 12) != Some(HEADER_LEN as u32) {
            return Err("bad header length");
        }
        if h[104..124].iter().any(|&x| x != 0) {
            return Err("reserved header bytes not zero");
        }
        let count = u64_at(h, 32).ok_or("header")? as usize;
        let root_len = u32_at(h, 40).ok_or("header")? as usize;
        let blocks = u32_at(h, 44).ok_or("header")? as usize;
        if blocks != count.div_ceil(BLOCK_ENTRIES_MAX) {
            return Err("block count does not match the entry count");
        }
        if root_len > SNAPSHOT_PATH_BYTES_MAX {
            return Err("root path too long");
        }
        let mut at = HEADER_LEN;
        let root = b.get(at..at + root_len).ok_or("truncated root")?.to_vec();
        at += root_len;
        let mut offs: Vec<u64> = Vec::with_capacity(count.min(1 << 24));
        let mut last: Option<(usize, usize)> = None;
        for block in 0..blocks {
            let n = u32_at(&b, at).ok_or("truncated block")? as usize;
            // Full blocks, then one with the rest.
            let want = if block + 1 < blocks {
                BLOCK_ENTRIES_MAX
            } else {
                count - block * BLOCK_ENTRIES_MAX
            };
            if n != want {
                return Err("block entry count does not match");
            }
            let len = u32_at(&b, at + 4).ok_or("truncated block")? as usize;
            let start = at + 8;
            let body = b.get(start..start + len).ok_or("truncated block")?;
            if u32_at(&b, start + len) != Some(crc32c::crc32c(body)) {
                return Err("block checksum mismatch");
            }
            at = start + len + 4;
            let mut p = 0;
            for _ in 0..n {
                let plen = u32_at(body, p).ok_or("truncated entry")? as usize;
                if plen > SNAPSHOT_PATH_BYTES_MAX {
                    return Err("entry path too long");
                }
                if p + 4 + plen + ENTRY_FIXED_LEN > body.len() {
                    return Err("truncated entry");
                }
                // Sorted and unique, as written: anything else is damage.
                let path = (start + p + 4, plen);
                if let Some((lo, ll)) = last {
                    if b[lo..lo + ll] >= b[path.0..path.0 + path.1] {
                        return Err("entries out of order");
                    }
                }
                last = Some(path);
                offs.push((start + p) as u64);
                p += 4 + plen + ENTRY_FIXED_LEN;
            }
            if p != body.len() {
                return Err("block longer than its entries");
            }
        }
        if at != b.len() || offs.len() != count {
            return Err("entry count mismatch");
        }
        let through_seq = u64_at(h, 24).ok_or("header")?;
        let valid_after_seq = u64_at(h, 48).ok_or("header")?;
        let marks = FsMarks {
            realtime_ns: u64_at(h, 16).ok_or("header")?,
            boottime_ns: u64_at(h, 56).ok_or("header")?,
            boot_id: h[64..80].try_into().map_err(|_| "header")?,
            fs_uuid: h[80..96].try_into().map_err(|_| "header")?,
            generation: u64_at(h, 96).ok_or("header")?,
        };
        Ok(Snapshot {
            root,
            through_seq,
            valid_after_seq,
            marks,
            entries: Entries::from_encoded(b, offs),
        })
    }

    /// Loads the snapshot of `root` from `dir`. `Ok(None)` if there is none.
    pub fn load(dir: &Path, root: &[u8]) -> Result<Option<Snapshot>, SnapshotError> {
        let path = Snapshot::file_for(dir, root);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SnapshotError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        let snap = Snapshot::decode(bytes).map_err(|detail| SnapshotError::Corrupt {
            path: path.clone(),
            detail,
        })?;
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
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir, "create directory"))?;
        }
        cj_types::fsutil::write_atomic(&Snapshot::file_for(dir, &self.root), &self.encode())
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
}
