#![no_main]
// Journal frames and segment headers: a decoded record passed the frame
// check and re-encodes to the bytes it was read from.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use cj_journal::format::{check_frame, decode_record, encode_record, SegmentHeader};
    let _ = SegmentHeader::decode(data);
    let checked = check_frame(data);
    if let Ok((record, len)) = decode_record(data) {
        assert_eq!(checked.ok(), Some((record.seq, len)));
        let mut again = Vec::new();
        encode_record(record.seq, record.time_ns, &record.body, &mut again);
        assert_eq!(&again[..], &data[..len]);
    }
});
