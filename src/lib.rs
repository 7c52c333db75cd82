//! Native engine for Kong Gateway's external plugin servers.
//!
//! Core modules hold the logic and take plain Rust data; `ffi` adapts them to the
//! C header (`include/kong_plugin_servers.h`) and `lua_module` to the mlua value
//! bridge. Both are exported from the same `.so`.

pub mod bridge;
pub mod codec;
pub mod config;
pub mod ffi;
pub mod process;

#[cfg(test)]
mod test_support;

#[cfg(feature = "module")]
mod lua_module;

/// Version of the library, as reported by `kps_version`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
