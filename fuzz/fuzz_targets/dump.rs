#![no_main]
//! Fuzz target `dump`: the checks live in `kps_fuzz::dump` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::dump(data));
