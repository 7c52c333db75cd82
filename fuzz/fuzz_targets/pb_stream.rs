#![no_main]
//! Fuzz target `pb_stream`: the checks live in `kps_fuzz::pb_stream` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::pb_stream::check(data));
