//! `extern "C"` adapters: argument checks, a call into the core, result translation.
//!
//! Conventions (see `include/kong_plugin_servers.h`): fallible functions return
//! `0` on success and a negative `KPS_ERR_*` code on failure, writing a message
//! into the caller's `(errbuf, errbuf_len)`; no panic crosses the boundary.

mod args;
mod engine;
mod errbuf;
mod handle;
mod library;

#[cfg(feature = "module")]
pub(crate) use errbuf::install_quiet_panic_hook;
pub use errbuf::{KPS_ERR_ARGS, KPS_ERR_FAILED, KPS_ERR_PANIC, guard, write_error};

// One file per object or area.
pub mod config;
mod msgpack;
mod protobuf;
mod query;
mod supervisor;
