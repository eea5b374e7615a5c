//! See `changegate::fuzzing::signature` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| changegate::fuzzing::signature(data));
