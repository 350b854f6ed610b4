//! Parser tests on bytes captured from the real kernel (tmpfs and ext4, by
//! `examples/dump.rs`) and on arbitrary bytes.

use super::*;

const TMPFS: &[u8] = include_bytes!("../../tests/fixtures/tmpfs.bin");
const EXT4: &[u8] = include_bytes!("../../tests/fixtures/ext4.bin");

const CREATE: u64 = 0x100;
const ONDIR: u64 = 0x4000_0000;
const RENAME: u64 = 0x1000_0000;
const DELETE_SELF: u64 = 0x400;

fn all(buf: &[u8]) -> Vec<Event<'_>> {
    parse(buf).map(|e| e.expect("fixture parses")).collect()
}

#[test]
fn fixtures_parse_completely() {
    for (name, buf, handle_len) in [("tmpfs", TMPFS, 12), ("ext4", EXT4, 8)] {
        let events = all(buf);
        assert_eq!(events.len(), 13, "{name}");
        let fsid = events[0].fid.unwrap().fsid;
        for e in &events {
            for fid in [e.fid, e.dfid_name.map(|d| d.dir), e.old.map(|d| d.dir)]
                .into_iter()
                .flatten()
            {
                assert_eq!(fid.fsid, fsid, "{name}: one filesystem");
                assert_eq!(fid.handle.len(), handle_len, "{name}");
                assert_eq!(fid.handle_type, 1, "{name}");
            }
        }
        // create "a" (merged with later events on the same name and object)
        assert!(events[0].mask & CREATE != 0);
        assert_eq!(events[0].dfid_name.unwrap().name, b"a");
        // rename a -> b: both sides and the child.
        let r = events[1];
        assert_eq!(r.mask, RENAME);
        assert_eq!(r.old.unwrap().name, b"a");
        assert_eq!(r.new.unwrap().name, b"b");
        assert_eq!(r.fid.unwrap().handle, events[0].fid.unwrap().handle);
        // mkdir + rmdir of "sub" merged into one event.
        assert_eq!(events[4].mask & (CREATE | ONDIR), CREATE | ONDIR);
        assert_eq!(events[4].dfid_name.unwrap().name, b"sub");
        // A name with a newline and UTF-8.
        assert_eq!(
            events[9].dfid_name.unwrap().name,
            "name\nwith newline \u{e9}".as_bytes()
        );
        // The directory's own DELETE_SELF: name "." and no FID.
        let last = events[12];
        assert_eq!(last.mask, DELETE_SELF | ONDIR);
        assert_eq!(last.dfid_name.unwrap().name, b".");
        assert!(last.fid.is_none());
    }
}

#[test]
fn unaligned_buffers_parse_the_same() {
    let mut shifted = vec![0u8; TMPFS.len() + 3];
    shifted[3..].copy_from_slice(TMPFS);
    assert_eq!(all(&shifted[3..]), all(TMPFS));
}

/// Offsets where the fixture's events end (from each header's event_len).
fn boundaries(buf: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        assert!(len >= METADATA_LEN, "fixture event length");
        at += len;
        out.push(at);
    }
    assert_eq!(at, buf.len(), "fixture ends on an event boundary");
    out
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = all(TMPFS);
    let ends = boundaries(TMPFS);
    assert_eq!(ends.len(), full.len());
    for cut in 0..TMPFS.len() {
        let results: Vec<_> = parse(&TMPFS[..cut]).collect();
        let ok: Vec<_> = results.iter().map_while(|r| r.as_ref().ok()).collect();
        // What parses is exactly the events wholly inside the cut, in order.
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(ok.len(), whole, "cut at {cut}");
        for (got, want) in ok.iter().zip(&full) {
            assert_eq!(*got, want, "cut at {cut}");
        }
        // A cut inside an event ends in exactly one error; a cut on a
        // boundary in none.
        let on_boundary = cut == 0 || ends.contains(&cut);
        assert_eq!(
            results.len(),
            whole + usize::from(!on_boundary),
            "cut at {cut}"
        );
        assert_eq!(
            results.last().is_some_and(|r| r.is_err()),
            !on_boundary,
            "cut at {cut}"
        );
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut s = 0x1234_5678_9abc_def0u64;
    for _ in 0..50_000 {
        let mut b = if xorshift(&mut s).is_multiple_of(2) {
            TMPFS.to_vec()
        } else {
            EXT4.to_vec()
        };
        for _ in 0..(xorshift(&mut s) % 8 + 1) {
            let at = (xorshift(&mut s) as usize) % b.len();
            b[at] = xorshift(&mut s) as u8;
        }
        let cut = (xorshift(&mut s) as usize) % (b.len() + 1);
        for e in parse(&b[..cut]).flatten() {
            // Touch every borrowed slice.
            let _ = e.dfid_name.map(|d| d.name.len() + d.dir.handle.len());
            let _ = e.fid.map(|f| f.handle.len());
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut s = 0xdead_beef_cafe_f00du64;
    for _ in 0..50_000 {
        let len = (xorshift(&mut s) % 512) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| xorshift(&mut s) as u8).collect();
        if len >= 8 && xorshift(&mut s).is_multiple_of(2) {
            // Plausible headers reach deeper code.
            b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
            b[4] = 3;
            b[6..8].copy_from_slice(&24u16.to_ne_bytes());
        }
        for r in parse(&b) {
            let _ = r.map(|e| e.mask);
        }
    }
}

#[test]
fn overflow_event_has_no_info() {
    let mut b = vec![0u8; 24];
    b[0..4].copy_from_slice(&24u32.to_ne_bytes());
    b[4] = 3;
    b[6..8].copy_from_slice(&24u16.to_ne_bytes());
    b[8..16].copy_from_slice(&0x4000u64.to_ne_bytes());
    b[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
    let e = all(&b);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].mask, 0x4000);
    assert!(e[0].fid.is_none() && e[0].dfid_name.is_none());
}
