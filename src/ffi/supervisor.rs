//! `extern "C"` adapters for the supervisor (filled in by its issue).
