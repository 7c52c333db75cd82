//! Validation of Kong's `pluginserver_*` settings (config issue).

mod server_def;

pub use server_def::ServerDef;
