#![no_main]
//! Fuzz target `msgpack_stream`: the checks live in `kps_fuzz::msgpack_stream` (shared with the corpus replay test).

libfuzzer_sys::fuzz_target!(|data: &[u8]| kps_fuzz::msgpack_stream::check(data));
