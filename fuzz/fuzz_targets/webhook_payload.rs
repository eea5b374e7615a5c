//! See `changegate::fuzzing::webhook_payload` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| changegate::fuzzing::webhook_payload(data));
