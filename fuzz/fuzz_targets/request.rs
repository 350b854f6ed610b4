#![no_main]
// Request lines from clients: never panic; accepted paths are absolute.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(r) = cj_types::protocol::decode_request(data) {
        assert!(r.path.as_ref().is_none_or(|p| p.starts_with(b"/")));
    }
});
