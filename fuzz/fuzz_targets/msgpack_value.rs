#![no_main]
//! Fuzz target `msgpack_value`: the checks live in `kps_fuzz::msgpack_value` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::msgpack_value::check(data));
