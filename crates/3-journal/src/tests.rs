use super::*;
use cj_types::{Changes, EventRecord, ObjectKind, RecordBody};
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn event(i: u64) -> RecordBody {
    RecordBody::Event(EventRecord {
        changes: Changes::MODIFIED,
        kind: ObjectKind::File,
        fsid: 1,
        path: format!("/t/file-{i:06}").into_bytes(),
        name: format!("file-{i:06}").into_bytes(),
        ..Default::default()
    })
}

fn small() -> Options {
    Options {
        segment_bytes: 4096,
        retain_bytes: u64::MAX,
        retain_age: Duration::from_secs(3600),
        seq_floor: 0,
        pinned_cap_bytes: u64::MAX,
    }
}

fn collect(r: &Reader, after: u64, upto: u64) -> Vec<Item> {
    let mut out = Vec::new();
    r.scan(after, upto, |i| {
        out.push(i);
        true
    })
    .unwrap();
    out
}

fn seqs(items: &[Item]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some(r.seq),
            _ => None,
        })
        .collect()
}

fn write_n(w: &mut Writer, n: u64) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = w.append(1000 + i, &event(i)).unwrap();
    }
    assert_eq!(w.commit().unwrap(), last);
    last
}

#[test]
fn append_commit_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, rec) = open(dir.path(), small()).unwrap();
    assert!(rec.created);
    let id = r.journal_id();
    assert_eq!(write_n(&mut w, 200), 200);
    assert!(r.segment_count() > 3, "rotation happened");
    assert_eq!(seqs(&collect(&r, 0, 200)), (1..=200).collect::<Vec<_>>());
    assert_eq!(
        seqs(&collect(&r, 150, 160)),
        (151..=160).collect::<Vec<_>>()
    );
    drop((w, r));
    let (mut w, r, rec) = open(dir.path(), small()).unwrap();
    assert!(!rec.created);
    assert_eq!(rec.last_seq, 200);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(r.journal_id(), id);
    assert_eq!(w.append(1, &event(0)).unwrap(), 201);
    w.commit().unwrap();
    assert_eq!(
        seqs(&collect(&r, 195, 300)),
        (196..=201).collect::<Vec<_>>()
    );
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), small()).unwrap();
    assert!(matches!(
        open(dir.path(), small()),
        Err(Error::Locked { .. })
    ));
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut v = list_segments(dir).unwrap();
    segment_path(dir, v.pop().unwrap())
}

#[test]
fn torn_tail_is_cut_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), Options::default()).unwrap();
    write_n(&mut w, 10);
    drop((w, r));
    let seg = last_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    // A half-written record: a valid frame cut short.
    let mut frame = Vec::new();
    format::encode_record(11, 5, &event(11), &mut frame);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&frame[..frame.len() / 2], len).unwrap();
    drop(f);
    let (mut w, r, rec) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(rec.last_seq, 10);
    assert_eq!(rec.truncated_bytes, (frame.len() / 2) as u64);
    assert!(rec.damaged.is_empty());
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(w.append(1, &event(11)).unwrap(), 11);
    w.commit().unwrap();
    assert_eq!(seqs(&collect(&r, 0, 100)), (1..=11).collect::<Vec<_>>());
}

#[test]
fn zeroed_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), Options::default()).unwrap();
    write_n(&mut w, 5);
    drop((w, r));
    let seg = last_segment(dir.path());
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let (_w, _r, rec) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(rec.truncated_bytes, 8192);
    assert_eq!(rec.last_seq, 5);
}

/// Flips one byte inside record `seq` of the segment file.
fn corrupt_record(dir: &Path, seq: u64) {
    for first in list_segments(dir).unwrap() {
        let path = segment_path(dir, first);
        let bytes = fs::read(&path).unwrap();
        let mut off = SEGMENT_HEADER_LEN;
        while off < bytes.len() {
            let (s, len) = check_frame(&bytes[off..]).unwrap();
            if s == seq {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                f.write_all_at(&[bytes[off + 40] ^ 0xff], (off + 40) as u64)
                    .unwrap();
                return;
            }
            off += len;
        }
    }
    panic!("seq {seq} not found");
}

#[test]
fn mid_file_corruption_costs_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), small()).unwrap();
    write_n(&mut w, 100);
    drop((w, r));
    // One record in an old segment, one in the active (last) segment.
    corrupt_record(dir.path(), 99);
    corrupt_record(dir.path(), 7);
    let (mut w, r, rec) = open(dir.path(), small()).unwrap();
    assert_eq!(rec.last_seq, 100, "valid records after the damage are kept");
    assert_eq!(rec.damaged, vec![(99, 99)]);
    assert_eq!(rec.truncated_bytes, 0);
    // The daemon keeps journaling.
    assert_eq!(w.append(1, &event(1)).unwrap(), 101);
    w.commit().unwrap();
    let items = collect(&r, 0, 101);
    let got = seqs(&items);
    let want: Vec<u64> = (1..=101).filter(|s| *s != 7 && *s != 99).collect();
    assert_eq!(got, want);
    let damaged: Vec<_> = items
        .iter()
        .filter(|i| matches!(i, Item::Damaged { .. }))
        .cloned()
        .collect();
    assert_eq!(
        damaged,
        vec![
            Item::Damaged { first: 7, last: 7 },
            Item::Damaged {
                first: 99,
                last: 99
            }
        ]
    );
    // A range that avoids the damage reads cleanly.
    assert!(collect(&r, 10, 90)
        .iter()
        .all(|i| matches!(i, Item::Record(_))));
}

#[test]
fn damaged_active_header_is_quarantined_without_seq_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), Options::default()).unwrap();
    write_n(&mut w, 20);
    drop((w, r));
    let seg = last_segment(dir.path());
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .write_all_at(b"XXXX", 0)
        .unwrap();
    let (mut w, r, rec) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(rec.quarantined.len(), 1);
    assert_eq!(rec.damaged.len(), 1);
    let (lo, hi) = rec.damaged[0];
    assert_eq!(lo, 1);
    let next = w.append(1, &event(0)).unwrap();
    assert!(
        next > 20 && next == hi + 1,
        "seq {next} must pass every old seq"
    );
    w.commit().unwrap();
    assert_eq!(seqs(&collect(&r, 0, u64::MAX)), vec![next]);
}

#[test]
fn retention_by_size_drops_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        retain_bytes: 16 * 1024,
        retain_age: Duration::from_secs(3600),
        seq_floor: 0,
        pinned_cap_bytes: u64::MAX,
    };
    let (mut w, r, _) = open(dir.path(), opts.clone()).unwrap();
    write_n(&mut w, 2000);
    assert!(r.disk_bytes() <= 16 * 1024 + 4096);
    let first = r.first_seq();
    assert!(first > 1);
    assert_eq!(
        seqs(&collect(&r, 0, 2000)),
        (first..=2000).collect::<Vec<_>>()
    );
    drop((w, r));
    let (_w, r, rec) = open(dir.path(), opts).unwrap();
    assert_eq!(r.first_seq(), first);
    assert_eq!(rec.last_seq, 2000);
}

#[test]
fn retention_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), small()).unwrap();
    write_n(&mut w, 300);
    let before = r.segment_count();
    let removed = w
        .enforce_retention(now_ns() + 7200 * 1_000_000_000)
        .unwrap();
    assert_eq!(removed, before - 1, "all but the active segment");
    assert_eq!(r.segment_count(), 1);
}

#[test]
fn scanning_on_from_a_position_equals_one_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), small()).unwrap();
    write_n(&mut w, 700);
    let whole = seqs(&collect(&r, 0, u64::MAX));
    // Pieces of 37 records, each scan going on where the last stopped,
    // across segment boundaries and with records appended in between.
    let mut got = Vec::new();
    let mut at = None;
    let mut after = 0;
    let mut appended = false;
    loop {
        let mut n = 0;
        r.scan_at(after, r.durable_seq(), &mut at, |i| {
            if let Item::Record(rec) = i {
                got.push(rec.seq);
                after = rec.seq;
            }
            n += 1;
            n < 37
        })
        .unwrap();
        if after == r.durable_seq() {
            if appended {
                break;
            }
            write_n(&mut w, 100);
            appended = true;
        }
    }
    assert_eq!(&got[..700], &whole[..]);
    assert_eq!(got, (1..=800).collect::<Vec<_>>());
}

#[test]
fn a_pin_holds_records_past_the_budget_until_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        retain_bytes: 16 * 1024,
        retain_age: Duration::from_secs(3600),
        seq_floor: 0,
        pinned_cap_bytes: 64 * 1024,
    };
    let (mut w, r, _) = open(dir.path(), opts).unwrap();
    r.set_pin(Some(10));
    write_n(&mut w, 300);
    // Over the 16 KiB budget, under the cap: nothing above seq 10 goes.
    assert!(r.disk_bytes() > 16 * 1024);
    assert!(r.first_seq() <= 11, "first {}", r.first_seq());
    // Past the cap the oldest records go even though they are pinned.
    write_n(&mut w, 3000);
    assert!(r.disk_bytes() <= 64 * 1024 + 4096);
    assert!(r.first_seq() > 11);
    // Released, the usual budget applies again at the next roll-over.
    r.set_pin(None);
    w.enforce_retention(now_ns()).unwrap();
    assert!(r.disk_bytes() <= 16 * 1024 + 4096);
    // An age limit does not drop pinned records either.
    let first = r.first_seq();
    r.set_pin(Some(first - 1));
    w.enforce_retention(now_ns() + 7200 * 1_000_000_000)
        .unwrap();
    assert_eq!(r.first_seq(), first);
}

/// Marks every segment as written by format version 1 (same layout for
/// records without a stat block), as an older cj left them.
fn downgrade_headers(dir: &Path) {
    for seq in list_segments(dir).unwrap() {
        let path = segment_path(dir, seq);
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut h = read_header(&path).unwrap();
        h.version = 1;
        f.write_all_at(&h.encode(), 0).unwrap();
    }
}

/// A journal of format version 1 is read as it is; new records go into a
/// new segment of this version (or, if the last segment holds no record,
/// its header is rewritten), never into the old segment.
#[test]
fn a_version_1_journal_is_upgraded_by_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let big = Options {
        segment_bytes: 1 << 20,
        ..small()
    };
    let (mut w, r, _) = open(dir.path(), big.clone()).unwrap();
    write_n(&mut w, 10);
    drop((w, r));
    downgrade_headers(dir.path());
    let (mut w, r, rec) = open(dir.path(), big.clone()).unwrap();
    assert_eq!(rec.last_seq, 10);
    assert_eq!(r.segment_count(), 2, "a new segment for the new version");
    let newest = *list_segments(dir.path()).unwrap().last().unwrap();
    assert_eq!(newest, 11);
    assert_eq!(
        read_header(&segment_path(dir.path(), 11)).unwrap().version,
        format::FORMAT_VERSION
    );
    assert_eq!(w.append(1, &event(0)).unwrap(), 11);
    w.commit().unwrap();
    assert_eq!(seqs(&collect(&r, 0, 100)), (1..=11).collect::<Vec<_>>());
    drop((w, r));

    // An old segment without records: its header is rewritten in place.
    let empty = tempfile::tempdir().unwrap();
    let (w, r, _) = open(empty.path(), big.clone()).unwrap();
    drop((w, r));
    downgrade_headers(empty.path());
    let (mut w, r, _) = open(empty.path(), big.clone()).unwrap();
    assert_eq!(list_segments(empty.path()).unwrap(), vec![1]);
    assert_eq!(
        read_header(&segment_path(empty.path(), 1)).unwrap().version,
        format::FORMAT_VERSION
    );
    assert_eq!(w.append(1, &event(0)).unwrap(), 1);
    w.commit().unwrap();
    assert_eq!(seqs(&collect(&r, 0, 100)), vec![1]);
}

/// The byte offset just past record `seq` in a segment file.
fn end_of_record(seg: &Path, seq: u64) -> u64 {
    let bytes = fs::read(seg).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    while off < bytes.len() {
        let (s, len) = check_frame(&bytes[off..]).unwrap();
        off += len;
        if s == seq {
            return off as u64;
        }
    }
    panic!("record {seq} not found");
}

// Issue 9, defect 3: acknowledged records cut from the tail must not have
// their numbers handed out again.
#[test]
fn acknowledged_records_cut_from_the_tail_are_never_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let big = Options {
        segment_bytes: 1 << 20,
        ..small()
    };
    let (mut w, r, _) = open(dir.path(), big.clone()).unwrap();
    write_n(&mut w, 10);
    w.sync_highwater().unwrap();
    drop((w, r));
    let seg = last_segment(dir.path());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end_of_record(&seg, 5)).unwrap();
    drop(f);
    let (mut w, r, rec) = open(dir.path(), big.clone()).unwrap();
    assert_eq!(rec.last_seq, 5);
    assert_eq!(rec.lost, Some((6, 10)));
    assert_eq!(r.durable_seq(), 10);
    assert_eq!(
        w.append(1, &event(11)).unwrap(),
        11,
        "numbering continues above the mark"
    );
    w.commit().unwrap();
    // A cursor at 7 (handed out before the cut) sees the loss, not seq reuse.
    let items = collect(&r, 7, 11);
    assert_eq!(items[0], Item::Damaged { first: 8, last: 10 });
    assert_eq!(seqs(&items), vec![11]);
    assert_eq!(collect(&r, 3, 11)[2], Item::Damaged { first: 6, last: 10 });
    drop((w, r));
    // A second open finds nothing new lost.
    let (_w, _r, rec) = open(dir.path(), big).unwrap();
    assert_eq!(rec.lost, None);
    assert_eq!(rec.last_seq, 11);
}

#[test]
fn a_deleted_last_segment_is_reported_lost_not_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), small()).unwrap();
    write_n(&mut w, 200);
    w.sync_highwater().unwrap();
    drop((w, r));
    let seg = last_segment(dir.path());
    let first = u64::from_str_radix(
        seg.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".cjseg")
            .unwrap(),
        16,
    )
    .unwrap();
    fs::remove_file(&seg).unwrap();
    let (mut w, _r, rec) = open(dir.path(), small()).unwrap();
    assert_eq!(rec.lost, Some((first, 200)));
    assert_eq!(w.append(1, &event(1)).unwrap(), 201);
}

#[test]
fn the_callers_floor_counts_when_the_mark_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let big = Options {
        segment_bytes: 1 << 20,
        ..small()
    };
    let (mut w, r, _) = open(dir.path(), big.clone()).unwrap();
    write_n(&mut w, 10);
    drop((w, r));
    fs::remove_file(dir.path().join(highwater::HIGHWATER_FILE)).unwrap();
    let seg = last_segment(dir.path());
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end_of_record(&seg, 4)).unwrap();
    drop(f);
    let floor = Options {
        seq_floor: 10,
        ..big
    };
    let (mut w, _r, rec) = open(dir.path(), floor).unwrap();
    assert_eq!(rec.lost, Some((5, 10)));
    assert_eq!(w.append(1, &event(1)).unwrap(), 11);
}

/// A torn, unacknowledged tail (after a kill -9 or power loss) is not a loss:
/// the mark never runs ahead of what was durable.
#[test]
fn an_unacknowledged_tail_is_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, r, _) = open(dir.path(), Options::default()).unwrap();
    write_n(&mut w, 10);
    for i in 0..5 {
        w.append(1, &event(i)).unwrap();
    }
    drop((w, r)); // never committed
    let (_w, _r, rec) = open(dir.path(), Options::default()).unwrap();
    assert_eq!(rec.lost, None);
    assert_eq!(rec.last_seq, 10);
}

/// Failure injection through the storage seam: the next write or sync
/// fails with the given errno (once).
#[derive(Default)]
struct Faults {
    write: std::sync::Mutex<Option<i32>>,
    sync: std::sync::Mutex<Option<i32>>,
}

struct FaultyStorage(Arc<Faults>);

struct FaultyFile {
    file: Box<dyn storage::SegmentFile>,
    faults: Arc<Faults>,
}

impl storage::Storage for FaultyStorage {
    fn open_segment(&self, path: &Path) -> std::io::Result<Box<dyn storage::SegmentFile>> {
        Ok(Box::new(FaultyFile {
            file: storage::Files.open_segment(path)?,
            faults: self.0.clone(),
        }))
    }
}

fn injected(slot: &std::sync::Mutex<Option<i32>>) -> std::io::Result<()> {
    match slot.lock().unwrap().take() {
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
        None => Ok(()),
    }
}

impl storage::SegmentFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        injected(&self.faults.write)?;
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        // The write reached the page cache; only the sync "fails".
        injected(&self.faults.sync)?;
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

fn faulty(dir: &Path) -> (Writer, Reader, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let big = Options {
        segment_bytes: 1 << 20,
        ..small()
    };
    let (w, r, _) = open_with(dir, big, Arc::new(FaultyStorage(faults.clone()))).unwrap();
    (w, r, faults)
}

/// EIO on the append write or on fdatasync: the writer poisons itself
/// (design 6 step 5), nothing is acknowledged, and a reopen recovers every
/// acknowledged record.
#[test]
fn eio_on_write_or_sync_poisons_and_loses_nothing_acknowledged() {
    for on_sync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, faults) = faulty(dir.path());
        assert_eq!(write_n(&mut w, 10), 10);
        let slot = if on_sync { &faults.sync } else { &faults.write };
        *slot.lock().unwrap() = Some(libc::EIO);
        w.append(1, &event(11)).unwrap();
        let err = w.commit().unwrap_err();
        assert!(err.to_string().contains("Input/output error"), "{err}");
        assert!(!err.is_no_space());
        assert_eq!(r.durable_seq(), 10, "nothing acknowledged past the failure");
        assert!(matches!(w.append(1, &event(12)), Err(Error::Poisoned)));
        assert!(matches!(w.commit(), Err(Error::Poisoned)));
        drop((w, r));
        let (mut w, r, rec) = open(dir.path(), small()).unwrap();
        assert!(rec.last_seq >= 10, "acknowledged records survive");
        let next = w.append(1, &event(13)).unwrap();
        assert_eq!(next, rec.last_seq + 1);
        w.commit().unwrap();
        assert_eq!(seqs(&collect(&r, 0, 10)), (1..=10).collect::<Vec<_>>());
    }
}

/// ENOSPC on the write or on fdatasync: the segment is cut back to what is
/// durable (design 6a), the writer takes appends again, and the file holds
/// exactly the acknowledged records: the failed batch's pages are never
/// trusted.
#[test]
fn enospc_on_write_or_sync_is_cut_back_and_writing_resumes() {
    for on_sync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, faults) = faulty(dir.path());
        write_n(&mut w, 10);
        let seg = last_segment(dir.path());
        let durable_len = fs::metadata(&seg).unwrap().len();
        let slot = if on_sync { &faults.sync } else { &faults.write };
        *slot.lock().unwrap() = Some(libc::ENOSPC);
        w.append(1, &event(11)).unwrap();
        let err = w.commit().unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert_eq!(r.durable_seq(), 10);
        w.recover_after_failure().unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), durable_len, "cut back");
        assert_eq!(
            w.append(1, &event(11)).unwrap(),
            11,
            "the unacknowledged number is free"
        );
        assert_eq!(w.commit().unwrap(), 11);
        assert_eq!(seqs(&collect(&r, 0, 11)), (1..=11).collect::<Vec<_>>());
        drop((w, r));
        let (_w, _r, rec) = open(dir.path(), small()).unwrap();
        assert_eq!((rec.last_seq, rec.truncated_bytes, rec.lost), (11, 0, None));
    }
}

/// Scans that begin at sampled frames (design 5.10) give what one scan
/// from the start gives: with the writer's marks, with none (after a
/// reopen), with the marks readers take, and when the frame a mark points
/// at is damaged.
#[test]
fn scans_from_sampled_frames_equal_one_scan_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 1 << 20,
        ..small()
    };
    let (mut w, r, _) = open(dir.path(), opts.clone()).unwrap();
    let mut last = 0;
    for round in 0..20 {
        last = write_n(&mut w, 1500 + round);
    }
    let all = seqs(&collect(&r, 0, last));
    assert_eq!(all, (1..=last).collect::<Vec<_>>());
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let probe = |r: &Reader| {
        for after in (0..last).step_by(997).chain([last - 1, last]) {
            let got = seqs(&collect(r, after, last));
            assert_eq!(
                got,
                ((after + 1)..=last).collect::<Vec<_>>(),
                "after {after}"
            );
        }
    };
    // The writer sampled what it wrote.
    let (s1, _) = r.mark_before(segments[1], u64::MAX).unwrap();
    assert!(s1 > segments[1], "the writer left marks past the start");
    probe(&r);
    drop((w, r));
    // Reopened: no marks until a scan takes them.
    let (w, r, _) = open(dir.path(), opts.clone()).unwrap();
    assert_eq!(r.mark_before(segments[1], u64::MAX), None);
    probe(&r);
    let (m, off) = r.mark_before(segments[1], u64::MAX).unwrap();
    assert!(m > segments[1] && off > SEGMENT_HEADER_LEN as u64);
    // The frame a mark points at is damaged: the scan reads the segment
    // from its start, and reports just that record.
    corrupt_record(dir.path(), m);
    let items = collect(&r, m - 1, last);
    assert_eq!(items[0], Item::Damaged { first: m, last: m });
    assert_eq!(seqs(&items), ((m + 1)..=last).collect::<Vec<_>>());
    drop((w, r));
}
