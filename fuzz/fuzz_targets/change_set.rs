//! See `changegate::fuzzing::change_set` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| changegate::fuzzing::change_set(data));
