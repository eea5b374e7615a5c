//! See `changegate::fuzzing::policy` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| changegate::fuzzing::policy(data));
