#![no_main]
// The fanotify event parser on arbitrary bytes: never panics, never reads
// past the buffer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for event in cj_capture::parse(data).flatten() {
        if let Some(d) = event.dfid_name {
            assert!(d.name.len() <= data.len());
        }
    }
});
