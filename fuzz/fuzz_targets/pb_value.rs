#![no_main]
//! Fuzz target `pb_value`: the checks live in `kps_fuzz::pb_value` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::pb_value::check(data));
