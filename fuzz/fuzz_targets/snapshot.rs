#![no_main]
// Snapshot (baseline) files: never panic; what is accepted is sorted and
// re-encodes to itself. Each
// input is tried as it is and with its header checksum fixed up, so
// mutations reach the entry decoder.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut fixed = data.to_vec();
    if fixed.len() >= 128 {
        let crc = crc32c::crc32c(&fixed[0..124]);
        fixed[124..128].copy_from_slice(&crc.to_le_bytes());
    }
    for b in [data, &fixed[..]] {
        if let Ok(s) = cj_reconcile::Snapshot::decode(b.to_vec()) {
            // Accepted is exactly what this version writes.
            assert_eq!(&s.encode()[..], b);
            let mut last: Option<Vec<u8>> = None;
            for (p, _) in s.entries.iter() {
                assert!(last.as_deref().is_none_or(|l| l < p));
                last = Some(p.to_vec());
            }
        }
    }
});
