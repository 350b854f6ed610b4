//! Follow streams and durable consumers, in-process (issue 11).

use std::collections::BTreeSet;
use std::io::Read;

use cj_client::{Follow, FollowLine, FollowOptions};
use cj_types::{ResolvedRecord, RootRecord};

use super::*;

fn seq_of(cursor: &str) -> u64 {
    cj_types::Cursor::parse(cursor).unwrap().seq
}

/// Change lines' (seq, path) until a line's cursor reaches `until`.
fn collect(stream: &mut Follow, until: u64) -> (Vec<(u64, Vec<u8>)>, Vec<FollowLine>) {
    let mut changes = Vec::new();
    let mut others = Vec::new();
    for line in stream.by_ref() {
        let line = line.unwrap();
        let at = seq_of(line.cursor());
        match line {
            FollowLine::Change { change, seq, .. } => changes.push((seq, change.path)),
            other => others.push(other),
        }
        if at >= until {
            break;
        }
    }
    (changes, others)
}

fn assert_exactly_once_in_order(changes: &[(u64, Vec<u8>)]) {
    for w in changes.windows(2) {
        assert!(w[0].0 < w[1].0, "out of order or twice: {:?}", w);
    }
}

#[test]
fn replay_then_live_loses_and_repeats_nothing_at_the_seam() {
    let f = start();
    let c0 = f.cursor();
    let names = |range: std::ops::Range<u32>| -> Vec<RecordBody> {
        range.map(|i| created(f.path(&format!("f{i}")))).collect()
    };
    f.journal(names(0..300));
    f.cursor();
    let mut stream = Follow::start(&f.socket, FollowOptions::since(&c0)).unwrap();
    // Records keep coming while the replay runs.
    for batch in 0..10 {
        f.journal(names(300 + batch * 100..400 + batch * 100));
        f.cursor();
    }
    let end = seq_of(&f.cursor());
    let (changes, others) = collect(&mut stream, end);
    assert_exactly_once_in_order(&changes);
    let got: BTreeSet<Vec<u8>> = changes.iter().map(|c| c.1.clone()).collect();
    let want: BTreeSet<Vec<u8>> = (0..1300).map(|i| f.path(&format!("f{i}"))).collect();
    assert_eq!(got, want);
    let done: Vec<_> = others
        .iter()
        .filter(|l| matches!(l, FollowLine::HistoryDone { .. }))
        .collect();
    assert_eq!(done.len(), 1, "{others:?}");
    // The replay ended no earlier than what was durable at the request
    // (records 1..=300; exactly 300 when the follower read no further
    // before it said so, which a loaded machine shows).
    assert!(seq_of(done[0].cursor()) >= 300);
}

#[test]
fn without_a_cursor_the_stream_starts_now_and_says_so() {
    let f = start();
    f.journal(vec![created(f.path("old"))]);
    f.cursor();
    let mut stream = Follow::start(&f.socket, FollowOptions::now()).unwrap();
    let first = stream.next().unwrap().unwrap();
    assert!(matches!(first, FollowLine::HistoryDone { .. }), "{first:?}");
    f.journal(vec![created(f.path("new"))]);
    let end = seq_of(&f.cursor());
    let (changes, _) = collect(&mut stream, end);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1, f.path("new"));
}

#[test]
fn gaps_are_rescan_lines_and_their_resolution_follows() {
    let f = start();
    let c0 = f.cursor();
    f.journal(vec![
        RecordBody::Gap(GapRecord {
            reason: GapReason::QueueOverflow,
            fsid: 0,
            scope: Vec::new(),
            start_time_ns: 0,
            flags: 0,
            detail: Vec::new(),
        }),
        RecordBody::Event(EventRecord {
            changes: Changes::CREATED | Changes::RECONCILED,
            kind: ObjectKind::File,
            fsid: 1,
            path: f.path("found"),
            gap_seq: 2,
            ..Default::default()
        }),
        RecordBody::Resolved(ResolvedRecord {
            after_seq: 1,
            through_seq: 2,
            scope: f.root.clone(),
            fsid: 1,
            records: 1,
        }),
        RecordBody::Track(RootRecord {
            path: f.path("sub"),
            fsid: 1,
        }),
    ]);
    let end = seq_of(&f.cursor());
    let mut stream = Follow::start(&f.socket, FollowOptions::since(&c0)).unwrap();
    let (changes, others) = collect(&mut stream, end);
    assert_eq!(changes.len(), 1);
    let FollowLine::Rescan { scopes, .. } = &others[0] else {
        panic!("{others:?}")
    };
    assert_eq!(scopes[0].path, f.root);
    assert_eq!(scopes[0].reasons[0].to_string(), "queue_overflow");
    assert!(
        matches!(&others[1], FollowLine::Resolved { scopes, through: 2, .. } if scopes[0] == f.root),
        "{others:?}"
    );
    let FollowLine::Rescan { scopes, .. } = &others[2] else {
        panic!("{others:?}")
    };
    assert_eq!(scopes[0].reasons[0].to_string(), "tracking_started");
}

#[test]
fn a_follower_that_stops_reading_is_cut_off_with_a_line_it_can_read_and_resumes() {
    let f = start();
    let c0 = f.cursor();
    let mut s = UnixStream::connect(&f.socket).unwrap();
    writeln!(s, r#"{{"op":"follow","since":"{c0}"}}"#).unwrap();
    // Far more than the follower's buffer and the socket's hold.
    let total = 40_000;
    for chunk in 0..40 {
        f.journal(
            (0..1000)
                .map(|i| created(f.path(&format!("long-name-to-fill-buffers-{chunk}-{i}"))))
                .collect(),
        );
    }
    let end = seq_of(&f.cursor());
    // Not reading for longer than the stall limit (300 ms here).
    std::thread::sleep(Duration::from_millis(1500));
    let mut text = Vec::new();
    s.read_to_end(&mut text).unwrap();
    assert_eq!(text.last(), Some(&b'\n'), "the error line is whole");
    let lines: Vec<Value> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["code"], "slow_consumer", "{last}");
    let got = lines.len() - 1;
    assert!(got < total, "it was cut off before the end ({got} lines)");
    // Resuming after the last line read gets the rest, once each.
    let resume = lines[got - 1]["cursor"].as_str().unwrap();
    let mut stream = Follow::start(&f.socket, FollowOptions::since(resume)).unwrap();
    let (changes, _) = collect(&mut stream, end);
    let before: Vec<u64> = lines[..got]
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .collect();
    let mut all: Vec<u64> = before;
    all.extend(changes.iter().map(|c| c.0));
    assert_eq!(all.len(), total);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_blocking_iterator_resumes_after_a_cut_off_by_itself() {
    let f = start();
    let c0 = f.cursor();
    let mut stream = Follow::start(&f.socket, FollowOptions::since(&c0)).unwrap();
    for chunk in 0..30 {
        f.journal(
            (0..1000)
                .map(|i| created(f.path(&format!("another-long-name-{chunk}-{i}"))))
                .collect(),
        );
    }
    let end = seq_of(&f.cursor());
    std::thread::sleep(Duration::from_millis(1200));
    let (changes, _) = collect(&mut stream, end);
    assert_eq!(changes.len(), 30_000);
    assert_exactly_once_in_order(&changes);
    let notice = stream.take_notice().unwrap_or_default();
    assert!(notice.contains("cut off"), "{notice}");
}

#[test]
fn the_async_stream_gives_the_same_lines() {
    let f = start();
    let c0 = f.cursor();
    f.journal((0..50).map(|i| created(f.path(&format!("a{i}")))).collect());
    let end = seq_of(&f.cursor());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let mut s = cj_client::r#async::FollowStream::start(&f.socket, FollowOptions::since(&c0))
            .await
            .unwrap();
        let mut seqs = Vec::new();
        while let Some(line) = s.next_line().await {
            let line = line.unwrap();
            if let FollowLine::Change { seq, .. } = line {
                seqs.push(seq);
            }
            if seq_of(line.cursor()) >= end {
                break;
            }
        }
        seqs
    });
    assert_eq!(got.len(), 50);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn consumers_keep_their_place_and_answer_from_it() {
    let f = start();
    let a = f.ask(r#"{"op":"hello","protocol":1}"#);
    assert_eq!(a[0]["protocol"], 1);
    assert!(a[0]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&Value::from("consumers")));
    let root = String::from_utf8(f.root.clone()).unwrap();
    let a = f.ask(&format!(
        r#"{{"op":"consumer_add","consumer":"idx","path":"{root}"}}"#
    ));
    assert_eq!(a[0]["ok"], true, "{a:?}");
    let a = f.ask(r#"{"op":"consumer_add","consumer":"idx"}"#);
    assert_eq!(a[0]["code"], "consumer_exists");
    let a = f.ask(r#"{"op":"consumer_add","consumer":"no/slash"}"#);
    assert_eq!(a[0]["code"], "bad_request");
    std::fs::write(std::ffi::OsStr::from_bytes(&f.path("x")), b"1").unwrap();
    f.journal(vec![created(f.path("x"))]);
    let c1 = f.cursor();
    let a = f.ask(r#"{"op":"changes","consumer":"idx"}"#);
    assert!(a.iter().any(|l| l["path"] == format!("{root}/x")), "{a:?}");
    let a = f.ask(&format!(
        r#"{{"op":"consumer_ack","consumer":"idx","cursor":"{c1}"}}"#
    ));
    assert_eq!(a[0]["ok"], true);
    let a = f.ask(r#"{"op":"changes","consumer":"idx"}"#);
    assert_eq!(a.len(), 1, "nothing after the ack: {a:?}");
    // Acks that cannot be right are refused, saying why.
    let foreign = cj_types::Cursor {
        journal_id: cj_types::JournalId([0; 16]),
        seq: 1,
    }
    .encode();
    let a = f.ask(&format!(
        r#"{{"op":"consumer_ack","consumer":"idx","cursor":"{foreign}"}}"#
    ));
    assert!(a[0]["error"].as_str().unwrap().contains("another journal"));
    let a = f.ask(r#"{"op":"follow","consumer":"nobody"}"#);
    assert_eq!(a[0]["code"], "unknown_consumer");
    let a = f.ask(r#"{"op":"consumer_list"}"#);
    assert_eq!(a[0]["consumers"][0]["name"], "idx");
    assert_eq!(a[0]["consumers"][0]["cursor"], c1.as_str());
    assert_eq!(a[0]["consumers"][0]["pinning"], true);
    let a = f.ask(r#"{"op":"consumer_remove","consumer":"idx"}"#);
    assert_eq!(a[0]["ok"], true);
    let a = f.ask(r#"{"op":"consumer_list"}"#);
    assert_eq!(a[0]["consumers"], Value::Array(vec![]));
}
