use super::*;

#[test]
fn a_record_becomes_one_message_with_a_stable_id() {
    let cursor = cj_types::Cursor {
        journal_id: cj_types::JournalId([7; 16]),
        seq: 42,
    }
    .encode();
    let line = FollowLine::Rescan {
        scopes: vec![cj_client::Rescan {
            path: b"/data".to_vec(),
            reasons: vec![cj_client::RescanReason::Gap(
                cj_types::GapReason::QueueOverflow,
            )],
        }],
        cursor: cursor.clone(),
    };
    let m = message(&line, "host1").unwrap();
    assert_eq!(m.seq, 42);
    assert!(m.id.ends_with(".42"), "{}", m.id);
    let v: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(v["host"], "host1");
    assert_eq!(v["seq"], 42);
    assert_eq!(v["cursor"], cursor.as_str());
    assert!(v["rescan"].is_array(), "{v}");
    assert!(message(&FollowLine::Heartbeat { cursor }, "h").is_none());
}
