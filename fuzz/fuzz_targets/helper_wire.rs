#![no_main]
//! Fuzz target `helper_wire`: the checks live in `kps_fuzz::helper_wire` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::helper_wire(data));
