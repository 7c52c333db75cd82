//! `extern "C"` adapters for the config (filled in by its issue).
