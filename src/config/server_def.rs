//! The checked definition of one plugin server: the output of config validation,
//! the input of the info query and the supervisor. Plain data only: Kong's Admin API
//! serialises `kong.configuration`, so no runtime state may live here.

use serde::Serialize;

use super::standby::StandbyMode;

/// One entry of `pluginserver_names`, with every setting resolved and range-checked.
/// Durations are milliseconds. Field names are the Lua table's keys (docs/SETTINGS.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerDef {
    pub name: String,
    pub socket: String,
    /// `None`: the server is managed outside Kong (external).
    pub start_command: Option<String>,
    pub query_command: String,
    /// The `PATH` the programs were found with; the supervisor runs them with it.
    pub path: String,
    pub query_timeout: u64,
    pub stop_timeout: u64,
    pub respawn_delay: u64,
    pub respawn_delay_max: u64,
    pub respawn_reset: u64,
    pub ready_timeout: u64,
    pub connect_timeout: u64,
    pub send_timeout: u64,
    pub read_timeout: u64,
    pub fail_open: bool,
    pub max_message_size: u64,
    pub log_window: u64,
    /// Log events of this server queued or running per worker past which a new
    /// one is refused (counted as `log_refused`).
    pub log_queue_max: u64,
    /// A server with an event waiting that answers nothing for this long is hung
    /// (killed and respawned when managed); 0 = no hang detection.
    pub hang_timeout: u64,
    /// Whether a warm standby is kept.
    pub standby: StandbyMode,
}
