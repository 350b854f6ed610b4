//! The high-water mark: a durable lower bound on the highest sequence number
//! ever acknowledged (design 5.1, 7 step 5a).
//!
//! Why: recovery numbers new records from the last record it finds. If
//! acknowledged records were lost (the last segment cut or deleted by a
//! failing disk or an operator), numbering would restart inside the range a
//! client's cursor already covers, and that client would later be told
//! "complete" while missing changes. The mark bounds where numbering may
//! continue: everything between the last record found and the mark is
//! reported as damaged, never reused.
//!
//! File `journal/highwater`, 32 bytes: journal id `[u8; 16]`, seq `u64`,
//! version `u32` (1), crc32c of bytes 0..28 `u32`. Rewritten in place
//! (one `pwrite` of 32 bytes within one sector, then `fdatasync`); a torn or
//! foreign mark is ignored, which only makes the bound weaker (the service
//! passes other marks too: the clean-stop file and the baselines' seqs).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cj_types::JournalId;

use crate::error::{io, Error};

pub(crate) const HIGHWATER_FILE: &str = "highwater";
const HIGHWATER_BYTES: usize = 32;
const HIGHWATER_VERSION: u32 = 1;
/// The mark is rewritten at most this often while records are committed, so
/// at most this much acknowledged history can be lost undetected after an
/// unclean stop followed by the loss of the journal's tail.
pub const HIGHWATER_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) fn encode(id: JournalId, seq: u64) -> [u8; HIGHWATER_BYTES] {
    let mut b = [0u8; HIGHWATER_BYTES];
    b[0..16].copy_from_slice(&id.0);
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&HIGHWATER_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The mark's seq if the file holds a valid mark of journal `id`.
pub(crate) fn decode(b: &[u8], id: JournalId) -> Option<u64> {
    if b.len() != HIGHWATER_BYTES || b[0..16] != id.0 {
        return None;
    }
    let u32_at = |at: usize| cj_types::bytes::le_u32(b, at).unwrap_or(0);
    if u32_at(24) != HIGHWATER_VERSION || u32_at(28) != crc32c::crc32c(&b[0..28]) {
        return None;
    }
    cj_types::bytes::le_u64(b, 16)
}

pub(crate) fn read(dir: &Path, id: JournalId) -> Option<u64> {
    let b = std::fs::read(dir.join(HIGHWATER_FILE)).ok()?;
    decode(&b, id)
}

/// The writer's handle on the mark.
pub(crate) struct HighWater {
    file: File,
    path: PathBuf,
    id: JournalId,
    written_seq: u64,
    written_at: Option<Instant>,
}

impl HighWater {
    pub(crate) fn open(dir: &Path, id: JournalId, written_seq: u64) -> Result<HighWater, Error> {
        let path = dir.join(HIGHWATER_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path, "open high-water mark"))?;
        Ok(HighWater {
            file,
            path,
            id,
            written_seq,
            written_at: None,
        })
    }

    /// Writes `seq` durably if it is higher than the last mark and either
    /// `force` is set or `HIGHWATER_INTERVAL` has passed.
    pub(crate) fn advance(&mut self, seq: u64, force: bool) -> Result<(), Error> {
        if seq <= self.written_seq {
            return Ok(());
        }
        let due = self
            .written_at
            .is_none_or(|t| t.elapsed() >= HIGHWATER_INTERVAL);
        if !force && !due {
            return Ok(());
        }
        self.file
            .write_all_at(&encode(self.id, seq), 0)
            .map_err(io(&self.path, "write high-water mark"))?;
        self.file
            .sync_data()
            .map_err(io(&self.path, "fdatasync high-water mark"))?;
        self.written_seq = seq;
        self.written_at = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_rejects_damage_and_other_journals() {
        let id = JournalId([7; 16]);
        let b = encode(id, 12345);
        assert_eq!(decode(&b, id), Some(12345));
        assert_eq!(decode(&b, JournalId([8; 16])), None);
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad, id), None, "flipped byte {i}");
        }
        assert_eq!(decode(&b[..31], id), None);
    }
}
