#![no_main]
// Journal frames and segment headers: a decoded record passed the frame
// check and re-encodes to the bytes it was read from. Each input is tried
// as it is and with its frame checksum fixed up, so mutations reach the
// payload decoder instead of stopping at the checksum.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use cj_journal::format::{check_frame, decode_record, encode_record, SegmentHeader};
    let _ = SegmentHeader::decode(data);
    let mut fixed = data.to_vec();
    if fixed.len() >= 8 {
        let len = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as usize;
        if (8..=fixed.len()).contains(&len) {
            let crc = crc32c::crc32c(&fixed[8..len]);
            fixed[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    for b in [data, &fixed[..]] {
        let checked = check_frame(b);
        if let Ok((record, len)) = decode_record(b) {
            assert_eq!(checked.ok(), Some((record.seq, len)));
            let mut again = Vec::new();
            encode_record(record.seq, record.time_ns, &record.body, &mut again);
            assert_eq!(&again[..], &b[..len]);
        }
    }
});
