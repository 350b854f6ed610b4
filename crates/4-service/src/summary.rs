//! Segment summaries (design 5.11): what folding a run of journal records
//! gives (one entry per path, plus the records that are not about one
//! path, kept as they are). An answer folds a summary instead of the
//! records it stands for, so a range of a million records touching a
//! hundred thousand paths costs a few hundred thousand entries.
//!
//! Each segment is cut into chunks of [`CHUNK_RECORDS`] records; every
//! complete chunk gets a summary, and so does the segment's longest prefix
//! of chunks (the whole segment once it is sealed). An answer folds, from
//! where it stands, the summary that begins there and reaches furthest, so
//! it reads at most a chunk of records at each end of its range.
//!
//! Summaries are derived data, never the source of truth: made in the
//! background from durable records, checked (version, journal id, seq
//! range, checksum) each time one is read, deleted when a check fails (and
//! made again), and simply not used when missing; the answer then reads
//! the records. Deleting the `summaries` directory is always safe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cj_journal::format::{decode_record, encode_record};
use cj_journal::Reader;
use cj_types::{Changes, ObjectKind};

use crate::query::{Builder, Entry, Folds, Summary, Trace};

const MAGIC: &[u8; 4] = b"CJSM";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const ENTRY_FIXED_LEN: usize = 32;
/// The subdirectory of the journal's directory.
const DIR: &str = "summaries";
/// A segment with more distinct paths than this gets no summary (folding
/// it would hold them all in memory at once); answers read its records.
pub const SUMMARY_PATHS_MAX: usize = 400_000;
/// How often the summariser looks for segments to summarise.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(2);
/// Records per chunk: an answer reads at most this many records at each
/// end of its range, the rest through summaries.
pub const CHUNK_RECORDS: u64 = 100_000;

const F_SUBTREE: u8 = 1;
const F_GAP: u8 = 2;
const F_FROM: u8 = 4;
const F_TO: u8 = 8;
const F_TO_SET: u8 = 16;
const F_FROM_SET: u8 = 32;
const F_PARENT: u8 = 64;
const F_SUBTREE_KIND: u8 = 128;

fn file(reader: &Reader, first: u64, last: u64) -> PathBuf {
    reader
        .dir()
        .join(DIR)
        .join(format!("{first:016x}-{last:016x}.cjsum"))
}

/// `(first, last)` of the summaries on disk (from their names), sorted.
pub fn available(reader: &Reader) -> Vec<(u64, u64)> {
    let Ok(list) = std::fs::read_dir(reader.dir().join(DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64)> = list
        .flatten()
        .filter_map(|f| {
            let name = f.file_name();
            let (a, b) = name.to_str()?.strip_suffix(".cjsum")?.split_once('-')?;
            let first = u64::from_str_radix(a, 16).ok()?;
            let last = u64::from_str_radix(b, 16).ok()?;
            (first <= last).then_some((first, last))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The summaries an answer over `(after, end]` folds, in order: from where
/// the answer stands, the summary that begins right there and reaches
/// furthest (not past `end`); where none begins there, the records up to
/// the next summary are read.
pub fn usable(reader: &Reader, after: u64, end: u64) -> Vec<(u64, u64)> {
    let avail = available(reader);
    let mut out = Vec::new();
    let mut from = after;
    loop {
        let here = avail
            .iter()
            .filter(|&&(f, l)| f == from + 1 && l <= end)
            .map(|&(_, l)| l)
            .max();
        if let Some(l) = here {
            out.push((from + 1, l));
            from = l;
            continue;
        }
        match avail
            .iter()
            .filter(|&&(f, l)| f > from + 1 && l <= end)
            .map(|&(f, _)| f)
            .min()
        {
            Some(f) => from = f - 1,
            None => return out,
        }
    }
}

/// The summaries in the journal's `summaries` directory, for answers.
pub struct OnDisk;

impl Folds for OnDisk {
    fn plan(&self, reader: &Reader, after: u64, end: u64) -> Vec<(u64, u64)> {
        usable(reader, after, end)
    }

    fn load(&self, reader: &Reader, first: u64, last: u64) -> Option<Summary> {
        load(reader, first, last)
    }
}

/// The summary of records `first..=last`, if a valid one is there. One
/// that fails its checks is deleted (the summariser makes it again).
pub fn load(reader: &Reader, first: u64, last: u64) -> Option<Summary> {
    let path = file(reader, first, last);
    let bytes = std::fs::read(&path).ok()?;
    match decode(&bytes, reader.journal_id().0, first, last) {
        Ok(s) => Some(s),
        Err(why) => {
            tracing::warn!(
                "cj daemon: {} is not used ({why}): removed; answers read the records",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

/// Folds records `first..=last` of one segment. `None` when they cannot
/// be summarised (damage, more than [`SUMMARY_PATHS_MAX`] paths).
pub fn build(reader: &Reader, first: u64, last: u64) -> Result<Option<Summary>, cj_journal::Error> {
    let mut b = Builder::new(&[], None, true);
    b.scan(reader, first - 1, last)?;
    Ok(b.into_summary()
        .filter(|s| s.entries.len() <= SUMMARY_PATHS_MAX))
}

pub fn encode(s: &Summary, journal: [u8; 16], first: u64, last: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + s.entries.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&journal);
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&(s.entries.len() as u64).to_le_bytes());
    for (path, e) in &s.entries {
        let from = e.renamed_from.as_deref().unwrap_or_default();
        let to = e.renamed_to.as_deref().unwrap_or_default();
        let flags = [
            (e.subtree, F_SUBTREE),
            (e.gap.is_some(), F_GAP),
            (e.renamed_from.is_some(), F_FROM),
            (e.renamed_to.is_some(), F_TO),
            (e.trace.renamed_to_set, F_TO_SET),
            (e.trace.renamed_from_set, F_FROM_SET),
            (e.trace.parent, F_PARENT),
            (e.trace.subtree_kind, F_SUBTREE_KIND),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0u8, |acc, (_, bit)| acc | bit);
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.first.0.to_le_bytes());
        out.extend_from_slice(&e.changes.0.to_le_bytes());
        out.push(e.kind as u8);
        out.push(flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&e.gap.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(from.len() as u32).to_le_bytes());
        out.extend_from_slice(&(to.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(from);
        out.extend_from_slice(to);
    }
    out.extend_from_slice(&(s.raw.len() as u64).to_le_bytes());
    for (seq, body) in &s.raw {
        encode_record(*seq, 0, body, &mut out);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads `n` bytes at `*at`, or says the file is short.
fn take<'b>(b: &'b [u8], at: &mut usize, n: usize) -> Result<&'b [u8], String> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= b.len())
        .ok_or("truncated")?;
    let out = &b[*at..end];
    *at = end;
    Ok(out)
}

fn u32_of(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

fn u64_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
}

pub fn decode(b: &[u8], journal: [u8; 16], first: u64, last: u64) -> Result<Summary, String> {
    if b.len() < HEADER_LEN + 12 {
        return Err("truncated".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32_of(crc) {
        return Err("checksum mismatch".into());
    }
    if &body[0..4] != MAGIC || u32_of(&body[4..8]) != VERSION {
        return Err("not a version 1 summary".into());
    }
    if body[8..24] != journal || u64_of(&body[24..32]) != first || u64_of(&body[32..40]) != last {
        return Err("made for another segment".into());
    }
    let n = u64_of(&body[40..48]);
    let mut at = HEADER_LEN;
    let mut s = Summary::default();
    for _ in 0..n {
        let f = take(body, &mut at, ENTRY_FIXED_LEN)?;
        let flags = f[13];
        let path = take(body, &mut at, u32_of(&f[0..4]) as usize)?.to_vec();
        let from = take(body, &mut at, u32_of(&f[24..28]) as usize)?.to_vec();
        let to = take(body, &mut at, u32_of(&f[28..32]) as usize)?.to_vec();
        let on = |bit: u8| flags & bit != 0;
        let entry = Entry {
            first: Changes(u32_of(&f[4..8])),
            changes: Changes(u32_of(&f[8..12])),
            kind: ObjectKind::from_u8(f[12]).ok_or("unknown object kind")?,
            subtree: on(F_SUBTREE),
            gap: on(F_GAP).then(|| u64_of(&f[16..24])),
            renamed_from: on(F_FROM).then_some(from),
            renamed_to: on(F_TO).then_some(to),
            trace: Trace {
                renamed_to_set: on(F_TO_SET),
                renamed_from_set: on(F_FROM_SET),
                parent: on(F_PARENT),
                subtree_kind: on(F_SUBTREE_KIND),
            },
            ..Entry::default()
        };
        s.entries.push((path, entry));
    }
    let raw = u64_of(take(body, &mut at, 8)?);
    for _ in 0..raw {
        let (record, len) = decode_record(&body[at..]).map_err(|e| format!("{e:?}"))?;
        at += len;
        s.raw.push((record.seq, record.body));
    }
    if at != body.len() {
        return Err("bytes after the last item".into());
    }
    Ok(s)
}

/// Brings the summaries up to date. Each segment is cut into chunks of
/// `chunk` records from its first seq; every complete chunk (and the last,
/// partial one of a sealed segment) gets a summary, and so does the
/// segment's longest prefix of chunks (made from the previous prefix and
/// the new chunks, without reading records again). Removes superseded
/// prefixes, and the summaries of segments retention deleted or of another
/// journal. Returns how many it made.
/// `failed`: chunks that could not be summarised (damage, too many paths),
/// not tried again; kept by the caller between calls.
pub fn catch_up(
    reader: &Reader,
    stop: &AtomicBool,
    chunk: u64,
    failed: &mut std::collections::BTreeSet<(u64, u64)>,
) -> usize {
    let chunk = chunk.max(1);
    let have = available(reader);
    let journal = reader.journal_id().0;
    let oldest = reader.first_seq();
    failed.retain(|&(first, _)| first >= oldest);
    for &(first, last) in &have {
        let path = file(reader, first, last);
        if first < oldest || read_header(&path).is_some_and(|h| h != journal) {
            let _ = std::fs::remove_file(&path);
        }
    }
    let ranges = reader.segment_ranges();
    let mut made = 0;
    for (i, &(first, last)) in ranges.iter().enumerate() {
        if stop.load(Ordering::SeqCst) || first > last {
            break;
        }
        let sealed = i + 1 < ranges.len();
        let mut ends = Vec::new();
        let mut end = first + chunk - 1;
        while end <= last {
            ends.push(end);
            end += chunk;
        }
        if sealed && ends.last() != Some(&last) {
            ends.push(last);
        }
        let Some(&target) = ends.last() else { continue };
        let mut start = first;
        for &e in &ends {
            if !failed.contains(&(start, e)) && !file(reader, start, e).exists() {
                if summarise(reader, start, e) {
                    made += 1;
                } else {
                    failed.insert((start, e));
                }
            }
            start = e + 1;
        }
        made += usize::from(extend_prefix(reader, first, chunk, &ends, target));
    }
    made
}

/// Makes the summary of `first..=last`; false if it cannot.
fn summarise(reader: &Reader, first: u64, last: u64) -> bool {
    match build(reader, first, last) {
        Ok(Some(s)) => save(reader, &s, first, last),
        // Damage or too many paths: answers read the records.
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("cj daemon: summarising records {first}..={last}: {e}");
            false
        }
    }
}

/// Makes the summary of the segment's prefix `first..=target` from the
/// longest prefix it has and the chunk summaries after it, and removes the
/// prefixes it supersedes (the first chunk stays: it is a chunk too).
fn extend_prefix(reader: &Reader, first: u64, chunk: u64, ends: &[u64], target: u64) -> bool {
    let prefixes: Vec<u64> = available(reader)
        .into_iter()
        .filter(|&(f, _)| f == first)
        .map(|(_, l)| l)
        .collect();
    // Only a prefix that ends where a chunk ends can be extended by chunks,
    // and only as far as the chunks after it all have summaries.
    let done = prefixes.iter().copied().filter(|l| ends.contains(l)).max();
    let after = done.unwrap_or(first - 1);
    let mut reach = done;
    let mut start = first;
    for &e in ends {
        if start > after {
            if !file(reader, start, e).exists() {
                break;
            }
            reach = Some(e);
        }
        start = e + 1;
    }
    let target = match reach {
        Some(r) if done.is_none_or(|d| r > d) => r.min(target),
        _ => return false,
    };
    let mut b = Builder::new(&[], None, true);
    let mut from = first - 1;
    if let Some(sum) = done.and_then(|l| load(reader, first, l)) {
        b.absorb(sum);
        from = done.unwrap_or(from);
    }
    let mut start = first;
    for &e in ends.iter().take_while(|&&e| e <= target) {
        if start > from {
            // A chunk without a summary (damage, too many paths): no
            // prefix past it either.
            let Some(sum) = load(reader, start, e) else {
                return false;
            };
            b.absorb(sum);
        }
        start = e + 1;
    }
    let Some(summary) = b
        .into_summary()
        .filter(|s| s.entries.len() <= SUMMARY_PATHS_MAX)
    else {
        return false;
    };
    if !save(reader, &summary, first, target) {
        return false;
    }
    for l in prefixes {
        if l < target && l != first + chunk - 1 {
            let _ = std::fs::remove_file(file(reader, first, l));
        }
    }
    true
}

/// The journal id in a summary's header, if it has one.
fn read_header(path: &std::path::Path) -> Option<[u8; 16]> {
    use std::io::Read;
    let mut h = [0u8; HEADER_LEN];
    std::fs::File::open(path).ok()?.read_exact(&mut h).ok()?;
    (&h[0..4] == MAGIC).then(|| h[8..24].try_into().unwrap_or([0; 16]))
}

fn save(reader: &Reader, summary: &Summary, first: u64, last: u64) -> bool {
    let dir = reader.dir().join(DIR);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("cj daemon: creating {}: {e}", dir.display());
        return false;
    }
    let bytes = encode(summary, reader.journal_id().0, first, last);
    match cj_types::fsutil::write_atomic(&file(reader, first, last), &bytes) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cj daemon: {} {}: {}", e.op, e.path.display(), e.source);
            false
        }
    }
}

/// Runs [`catch_up`] every [`SUMMARY_INTERVAL`] until `stop`.
pub fn spawn(reader: Reader, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cj-summaries".into())
        .spawn(move || {
            // Background work: below capture and answers.
            // SAFETY: setpriority on this thread's id only.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            let mut failed = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                catch_up(&reader, &stop, CHUNK_RECORDS, &mut failed);
                let mut slept = Duration::ZERO;
                while slept < SUMMARY_INTERVAL && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    slept += Duration::from_millis(100);
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{answer, answer_with, Answer};
    use crate::shared::RootState;
    use cj_types::{
        Cursor, EventRecord, GapReason, GapRecord, RecordBody, ResolvedRecord, RootRecord,
        EVENT_FLAG_PATH_UNKNOWN,
    };

    const ROOT: &str = "/cj-summary-test-root-that-does-not-exist";

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn path(rng: &mut Rng) -> Vec<u8> {
        let dirs = ["", "/a", "/a/b", "/c", "/a/b/d"];
        let names = ["x", "y", "z", "b", "d", "a"];
        let d = dirs[rng.below(dirs.len() as u64) as usize];
        let n = names[rng.below(names.len() as u64) as usize];
        format!("{ROOT}{d}/{n}").into_bytes()
    }

    /// A random record of every kind the answer folds.
    fn body(rng: &mut Rng, seq_hint: u64) -> RecordBody {
        let kinds = [
            ObjectKind::Unknown,
            ObjectKind::File,
            ObjectKind::Dir,
            ObjectKind::Symlink,
        ];
        match rng.below(40) {
            0 => RecordBody::Gap(GapRecord {
                reason: GapReason::QueueOverflow,
                fsid: 1,
                scope: if rng.below(2) == 0 {
                    Vec::new()
                } else {
                    format!("{ROOT}/a").into_bytes()
                },
                start_time_ns: 0,
                detail: Vec::new(),
                flags: 0,
            }),
            1 => RecordBody::Resolved(ResolvedRecord {
                after_seq: seq_hint.saturating_sub(rng.below(40)),
                through_seq: seq_hint,
                fsid: 1,
                scope: if rng.below(2) == 0 {
                    ROOT.as_bytes().to_vec()
                } else {
                    format!("{ROOT}/a").into_bytes()
                },
                records: 0,
            }),
            2 => RecordBody::Track(RootRecord {
                fsid: 1,
                path: format!("{ROOT}/c").into_bytes(),
            }),
            _ => {
                let rename = rng.below(4) == 0;
                let mut changes = Changes(rng.below(512) as u32);
                if rename {
                    changes |= Changes::RENAMED_FROM | Changes::RENAMED_TO;
                }
                RecordBody::Event(EventRecord {
                    changes,
                    kind: kinds[rng.below(4) as usize],
                    flags: if rng.below(30) == 0 {
                        EVENT_FLAG_PATH_UNKNOWN
                    } else {
                        0
                    },
                    fsid: 1,
                    path: if rename && rng.below(6) == 0 {
                        Vec::new()
                    } else {
                        path(rng)
                    },
                    old_path: if rename { path(rng) } else { Vec::new() },
                    gap_seq: if rng.below(5) == 0 { seq_hint } else { 0 },
                    ..Default::default()
                })
            }
        }
    }

    fn roots() -> Vec<RootState> {
        vec![RootState {
            path: ROOT.as_bytes().to_vec(),
            fsid: 1,
            fs_type: "test".into(),
            unavailable: None,
        }]
    }

    fn shown(a: &Answer) -> String {
        format!("{:#?}\n{:#?}\n{:?}", a.entries, a.rescans, a.open_seq)
    }

    /// Model equivalence: an answer that folds sealed segments from their
    /// summaries equals the answer that reads every record, for random
    /// records (renames, parents, kinds, gaps, resolutions, tracking,
    /// unknown paths), ranges and scopes.
    #[test]
    fn a_summary_answers_what_its_records_answer() {
        for seed in 1..=12u64 {
            let dir = tempfile::tempdir().unwrap();
            let opts = cj_journal::Options {
                segment_bytes: 8 << 10,
                ..cj_journal::Options::default()
            };
            let (mut w, r, _) = cj_journal::open(dir.path(), opts).unwrap();
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // Summaries are made while the journal grows: chunks, and
            // prefixes of the segment being written (each from the one
            // before and the new chunks), then the final ones.
            let stop = AtomicBool::new(false);
            let chunk = 5 + (seed % 4) * 10;
            let mut failed = std::collections::BTreeSet::new();
            let mut made = 0;
            for i in 0..1500u64 {
                w.append(i, &body(&mut rng, i + 1)).unwrap();
                if rng.below(50) == 0 {
                    w.commit().unwrap();
                    made += catch_up(&r, &stop, chunk, &mut failed);
                }
            }
            let end = w.commit().unwrap();
            made += catch_up(&r, &stop, chunk, &mut failed);
            let mut sealed = r.segment_ranges();
            sealed.pop();
            assert!(sealed.len() > 10, "{sealed:?}");
            assert!(made > 2 * sealed.len(), "{made}");
            let have = available(&r);
            for &(first, last) in &sealed {
                assert!(
                    have.contains(&(first, last)),
                    "{first}..={last} not in {have:?}"
                );
            }
            let (first, last) = *r.segment_ranges().last().unwrap();
            if last + 1 - first >= chunk {
                let prefix = first + (last + 1 - first) / chunk * chunk - 1;
                assert!(
                    have.contains(&(first, prefix)),
                    "{first}..={prefix} not in {have:?}"
                );
            }
            let roots = roots();
            let a_path = format!("{ROOT}/a").into_bytes();
            let ab_path = format!("{ROOT}/a/b").into_bytes();
            let scopes: [Option<&[u8]>; 3] = [None, Some(&a_path), Some(&ab_path)];
            let mut asks = Vec::new();
            for _ in 0..8 {
                let after = rng.below(end);
                let upto = after + 1 + rng.below(end - after);
                let scope = scopes[rng.below(3) as usize];
                asks.push((after, upto, scope));
            }
            asks.push((0, end, None));
            let with: Vec<String> = asks
                .iter()
                .map(|(after, upto, scope)| {
                    let c = Cursor {
                        journal_id: r.journal_id(),
                        seq: *after,
                    };
                    shown(&answer_with(&r, &roots, Ok(c), *scope, *upto, &OnDisk).unwrap())
                })
                .collect();
            for (i, (after, upto, scope)) in asks.iter().enumerate() {
                let c = Cursor {
                    journal_id: r.journal_id(),
                    seq: *after,
                };
                let without = shown(&answer(&r, &roots, Ok(c), *scope, *upto).unwrap());
                assert_eq!(
                    with[i], without,
                    "seed {seed}: ({after}, {upto}] scope {scope:?}"
                );
            }
            drop(w);
        }
    }

    /// A chunk with damage gets no summary and is not tried again; no
    /// prefix reaches past it; answers read its records (and report the
    /// damage) exactly as without summaries.
    #[test]
    fn a_damaged_chunk_is_read_not_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let opts = cj_journal::Options {
            segment_bytes: 64 << 10,
            ..cj_journal::Options::default()
        };
        let (mut w, r, _) = cj_journal::open(dir.path(), opts.clone()).unwrap();
        let mut rng = Rng(99);
        for i in 0..600u64 {
            w.append(i, &body(&mut rng, i + 1)).unwrap();
        }
        let end = w.commit().unwrap();
        drop((w, r));
        // Damage one record in the middle of the first segment.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cjseg"))
            .min()
            .unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&seg, &bytes).unwrap();
        let (w, r, _) = cj_journal::open(dir.path(), opts).unwrap();
        let stop = AtomicBool::new(false);
        let mut failed = std::collections::BTreeSet::new();
        let chunk = 20;
        catch_up(&r, &stop, chunk, &mut failed);
        assert!(!failed.is_empty(), "the damaged chunk was summarised");
        let (bad, _) = *failed.iter().next().unwrap();
        let first = r.segment_ranges()[0].0;
        assert!(
            available(&r).iter().all(|&(f, l)| f != first || l < bad),
            "a prefix reaches past the damage: {:?}",
            available(&r)
        );
        // Not tried again.
        assert_eq!(catch_up(&r, &stop, chunk, &mut failed), 0);
        let roots = roots();
        for after in [0, bad - 1, bad + 5] {
            let c = Cursor {
                journal_id: r.journal_id(),
                seq: after,
            };
            let with = answer_with(&r, &roots, Ok(c), None, end, &OnDisk).unwrap();
            let without = answer(&r, &roots, Ok(c), None, end).unwrap();
            assert!(!without.rescans.is_empty() || after >= bad);
            assert_eq!(shown(&with), shown(&without), "after {after}");
        }
        drop(w);
    }

    #[test]
    fn a_damaged_or_foreign_summary_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let opts = cj_journal::Options {
            segment_bytes: 8 << 10,
            ..cj_journal::Options::default()
        };
        let (mut w, r, _) = cj_journal::open(dir.path(), opts).unwrap();
        let mut rng = Rng(77);
        for i in 0..400u64 {
            w.append(i, &body(&mut rng, i + 1)).unwrap();
        }
        w.commit().unwrap();
        let (first, last) = r.segment_ranges()[0];
        let s = build(&r, first, last).unwrap().unwrap();
        let good = encode(&s, r.journal_id().0, first, last);
        assert!(decode(&good, r.journal_id().0, first, last).is_ok());
        assert!(decode(&good, [9; 16], first, last).is_err());
        assert!(decode(&good, r.journal_id().0, first, last + 1).is_err());
        for cut in [0, 10, good.len() / 2, good.len() - 1] {
            assert!(decode(&good[..cut], r.journal_id().0, first, last).is_err());
        }
        let mut bad = good.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(decode(&bad, r.journal_id().0, first, last).is_err());
        // A file that is not a summary at all: the answer reads records.
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        std::fs::write(file(&r, first, last), b"junk").unwrap();
        assert!(load(&r, first, last).is_none());
        assert!(!file(&r, first, last).exists(), "a bad summary is removed");
        drop(w);
    }
}
