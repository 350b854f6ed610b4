#![no_main]
// Cursor text: never panics; an accepted cursor round-trips.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = cj_types::Cursor::parse(text) {
            assert_eq!(cj_types::Cursor::parse(&c.encode()), Ok(c));
        }
    }
});
