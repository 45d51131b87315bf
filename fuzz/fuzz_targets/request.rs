//! Fuzzes the request decoder: head parsing and chunked body decoding, whole and split.
//! Run with: `cargo +nightly fuzz run request` (from the repository root).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    baton::fuzzing::request(data);
});
