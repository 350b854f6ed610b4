//! Every decoder of untrusted bytes, driven by random and mutated inputs in
//! the normal test run (issue 9, "Fuzzing"); `fuzz/` holds the same targets
//! for cargo-fuzz. The property is always: no panic, and what is accepted
//! is consistent (it re-encodes to what was read, or passes the checks the
//! format promises). Inputs are replayable: `CJ_DECODER_SEED=<n>`.

use cj_types::{Changes, EventRecord, GapReason, GapRecord, ObjectKind, RecordBody};

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A mutation of `seed`: flipped bits, changed bytes, cuts, inserted
    /// or duplicated ranges, interesting integers.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let len = b.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.below(len);
                    b[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    b[i] = self.next() as u8;
                }
                2 => b.truncate(self.below(len + 1)),
                3 => {
                    let i = self.below(len + 1);
                    let n = self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                    b.splice(i..i, bytes);
                }
                4 if len > 8 => {
                    let i = self.below(len - 4);
                    let v = [0u32, 1, 0x7fff_ffff, 0xffff_ffff, 0x8000_0000, 4096, 65536]
                        [self.below(7)];
                    b[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                5 if len > 0 => {
                    let i = self.below(len);
                    let j = i + self.below(len - i);
                    let copy = b[i..j].to_vec();
                    b.extend_from_slice(&copy);
                }
                _ => {
                    let n = self.below(64);
                    b.extend((0..n).map(|_| self.next() as u8));
                }
            }
        }
        b
    }
}

fn seed() -> u64 {
    std::env::var("CJ_DECODER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

const ROUNDS: usize = 20_000;

fn run(name: &str, seeds: &[Vec<u8>], mut check: impl FnMut(&[u8])) {
    let mut rng = Rng(seed() ^ name.len() as u64);
    for s in seeds {
        check(s);
    }
    for round in 0..ROUNDS {
        let input = if round % 10 == 0 {
            let n = rng.below(512);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let s = &seeds[rng.below(seeds.len())];
            rng.mutate(s)
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        assert!(
            r.is_ok(),
            "{name}: panic on round {round} (CJ_DECODER_SEED={}): {input:?}",
            seed()
        );
    }
}

fn journal_seeds() -> Vec<Vec<u8>> {
    let bodies = [
        RecordBody::Event(EventRecord {
            changes: Changes::CREATED | Changes::MODIFIED,
            kind: ObjectKind::File,
            fsid: 7,
            path: b"/r/a\nb".to_vec(),
            name: b"a\nb".to_vec(),
            ..Default::default()
        }),
        RecordBody::Event(EventRecord {
            changes: Changes::RENAMED_FROM | Changes::RENAMED_TO,
            kind: ObjectKind::Dir,
            fsid: 7,
            path: b"/r/new".to_vec(),
            old_path: b"/r/\xffold".to_vec(),
            stat: Some(cj_types::Stat {
                ino: 5,
                mode: 0o40755,
                nlink: 2,
                ..Default::default()
            }),
            gap_seq: 3,
            ..Default::default()
        }),
        RecordBody::Gap(GapRecord {
            reason: GapReason::UncleanStop,
            fsid: 0,
            scope: b"/r".to_vec(),
            start_time_ns: 1,
            flags: 1,
            detail: b"why".to_vec(),
        }),
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut out = Vec::new();
            cj_journal::format::encode_record(i as u64 + 1, 99, b, &mut out);
            out
        })
        .collect()
}

/// Fixes up a frame's checksum (when its length field fits) so that
/// mutations reach the payload decoder instead of stopping at the checksum.
fn with_frame_crc(raw: &[u8]) -> Vec<u8> {
    let mut fixed = raw.to_vec();
    if fixed.len() >= 8 {
        let len = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as usize;
        if (8..=fixed.len()).contains(&len) {
            let crc = crc32c::crc32c(&fixed[8..len]);
            fixed[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    fixed
}

/// Fixes up a snapshot's header checksum, as above.
fn with_header_crc(raw: &[u8]) -> Vec<u8> {
    let mut fixed = raw.to_vec();
    if fixed.len() >= 128 {
        let crc = crc32c::crc32c(&fixed[0..124]);
        fixed[124..128].copy_from_slice(&crc.to_le_bytes());
    }
    fixed
}

fn journal_frame(b: &[u8]) {
    let checked = cj_journal::format::check_frame(b);
    if let Ok((record, len)) = cj_journal::format::decode_record(b) {
        // A decoded record passed the frame check and re-encodes to the
        // same bytes.
        let (seq, flen) = checked.expect("decoded but the frame check fails");
        assert_eq!((seq, flen), (record.seq, len));
        let mut again = Vec::new();
        cj_journal::format::encode_record(record.seq, record.time_ns, &record.body, &mut again);
        assert_eq!(&again[..], &b[..len]);
    }
    let _ = cj_journal::format::SegmentHeader::decode(b);
}

#[test]
fn journal_frames_never_panic_and_decode_what_checks_out() {
    let seeds = journal_seeds();
    run("journal", &seeds, |raw| {
        journal_frame(raw);
        journal_frame(&with_frame_crc(raw));
    });
}

#[test]
fn fanotify_events_never_panic() {
    let fixtures: Vec<Vec<u8>> = ["ext4.bin", "tmpfs.bin"]
        .iter()
        .map(|f| {
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../1-capture/tests/fixtures")
                    .join(f),
            )
            .unwrap()
        })
        .collect();
    run("fanotify", &fixtures, |b| {
        let mut total = 0usize;
        for event in cj_capture::parse(b).flatten() {
            total += event.dfid_name.map_or(0, |d| d.name.len());
            assert!(total <= b.len(), "names longer than the buffer");
        }
    });
}

#[test]
fn snapshots_never_panic_and_are_sorted_when_accepted() {
    let mut snap = cj_reconcile::Snapshot::new(b"/r".to_vec());
    for (i, p) in [&b"/r"[..], b"/r/a", b"/r/a/b\n", b"/r/\xff"]
        .iter()
        .enumerate()
    {
        snap.entries.insert(
            p.to_vec(),
            cj_reconcile::Stat {
                ino: i as u64,
                mode: 0o100644,
                ..Default::default()
            },
        );
    }
    let seeds = vec![snap.encode()];
    run("snapshot", &seeds, |raw| {
        for b in [raw.to_vec(), with_header_crc(raw)] {
            if let Ok(s) = cj_reconcile::Snapshot::decode(b.clone()) {
                // What is accepted is exactly what this version writes.
                assert_eq!(s.encode(), b, "accepted a snapshot it would not write");
                let paths: Vec<Vec<u8>> = s.entries.iter().map(|(p, _)| p.to_vec()).collect();
                assert!(
                    paths.windows(2).all(|w| w[0] < w[1]),
                    "accepted unsorted entries"
                );
            }
        }
    });
}

#[test]
fn cursors_never_panic_and_round_trip() {
    let c = cj_types::Cursor {
        journal_id: cj_types::JournalId([0xab; 16]),
        seq: 12345,
    };
    let seeds = vec![c.encode().into_bytes(), b"cj1...".to_vec()];
    run("cursor", &seeds, |b| {
        let Ok(text) = std::str::from_utf8(b) else {
            return;
        };
        if let Ok(c) = cj_types::Cursor::parse(text) {
            assert_eq!(cj_types::Cursor::parse(&c.encode()), Ok(c));
        }
    });
}

#[test]
fn requests_never_panic_and_accepted_ones_are_well_typed() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"op":"changes","since":"cj1.x","wait_ms":10,"path":"/a"}"#,
        r#"{"op":"track","path_b64":"L2E="}"#,
        r#"{"op":"cursor"}"#,
        r#"{"op":"status","extra":[1,{"a":null}]}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("request", &seeds, |b| {
        if let Ok(r) = cj_types::protocol::decode_request(b) {
            assert!(r.path.as_ref().is_none_or(|p| p.starts_with(b"/")));
        }
    });
}

#[test]
fn follow_lines_never_panic_and_accepted_changes_re_encode() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"path":"/a/b","kind":"file","changes":["created","renamed_to"],"renamed_from_b64":"L2E=","seq":7,"cursor":"c"}"#,
        r#"{"rescan":[{"path":"/a","reason":"queue_overflow,unmounted"}],"cursor":"c"}"#,
        r#"{"resolved":[{"path_b64":"L2E="}],"through":3,"cursor":"c"}"#,
        r#"{"history_done":true,"cursor":"c"}"#,
        r#"{"error":"x","code":"slow_consumer"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("follow", &seeds, |b| {
        use cj_types::follow::{decode, Decoded, FollowLine};
        if let Ok(Decoded::Line {
            line: Some(line), ..
        }) = decode(b)
        {
            let text = serde_json::to_vec(&serde_json::Value::Object(line.to_json())).unwrap();
            let Ok(Decoded::Line { line: again, .. }) = decode(&text) else {
                panic!("an accepted line does not decode again: {text:?}");
            };
            assert_eq!(again.as_ref(), Some(&line));
            let _: &FollowLine = &line;
        }
    });
}

#[test]
fn configuration_files_never_panic() {
    let seeds: Vec<Vec<u8>> = [
        "retain_mib = 10\nreconcile = \"walk\"\n[[grant]]\nuser = \"a\"\npaths = [\"/x\"]\n",
        "follow_stall_ms = 1\nsocket = \"/run/x.sock\"\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("config", &seeds, |b| {
        let Ok(text) = std::str::from_utf8(b) else {
            return;
        };
        if let Ok(s) = cj_service::config_file::Settings::parse(text) {
            let _ = s.to_config();
        }
    });
}

#[test]
fn names_handoffs_never_panic() {
    let seed = {
        let n = cj_normalize::Normalizer::new(1, Vec::new());
        n.names_handoff()
    };
    let mut one = b"CJNM".to_vec();
    one.extend_from_slice(&1u32.to_le_bytes());
    one.extend_from_slice(&1u32.to_le_bytes());
    one.extend_from_slice(&3u16.to_le_bytes());
    one.extend_from_slice(b"key");
    one.push(1);
    one.extend_from_slice(&4u32.to_le_bytes());
    one.extend_from_slice(b"/a/b");
    let crc = crc32c::crc32c(&one);
    one.extend_from_slice(&crc.to_le_bytes());
    run("names-handoff", &[seed, one], |b| {
        let mut n = cj_normalize::Normalizer::new(1, Vec::new());
        let _ = n.take_names_handoff(b);
    });
}

/// Writes the seeds above as starting corpora for cargo-fuzz
/// (`CJ_WRITE_FUZZ_SEEDS=$PWD/fuzz/corpus cargo test -p cj-service --test decoders`).
#[test]
fn write_fuzz_seeds_when_asked() {
    let Some(dir) = std::env::var_os("CJ_WRITE_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut snap = cj_reconcile::Snapshot::new(b"/r".to_vec());
    snap.entries
        .insert(b"/r/a".to_vec(), cj_reconcile::Stat::default());
    let sets: [(&str, Vec<Vec<u8>>); 2] = [
        ("journal_frames", journal_seeds()),
        ("snapshot", vec![snap.encode()]),
    ];
    for (target, seeds) in sets {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap();
        }
    }
}
