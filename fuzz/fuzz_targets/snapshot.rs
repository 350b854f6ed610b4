#![no_main]
// Snapshot (baseline) files: never panic; what is accepted is sorted.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = cj_reconcile::Snapshot::decode(data.to_vec()) {
        let mut last: Option<Vec<u8>> = None;
        for (p, _) in s.entries.iter() {
            assert!(last.as_deref().is_none_or(|l| l < p));
            last = Some(p.to_vec());
        }
    }
});
