//! `extern "C"` adapters for the msgpack (filled in by its issue).
