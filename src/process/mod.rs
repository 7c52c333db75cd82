//! Plugin info queries and the plugin server supervisor.
//!
//! - [`query`]: runs the query commands (in the nginx master, at `init`).
//! - [`supervisor`]: the thread that owns the managed servers (worker 0), with
//!   [`helper_link`] (talks to `kps-helper`), [`probe`] (readiness) and [`backoff`].
//! - [`identity`] (pid start times, pidfds, closing inherited fds), [`peercred`]
//!   (who listens on a socket), [`output`] and [`reports`] (bounded logging).
//! - [`standby`]: the warm standby slot of a managed server (driven by the supervisor).
//! - [`handle`]: the one supervisor of this process, as the FFI layer sees it.

pub mod backoff;
pub mod handle;
pub mod hang;
pub mod helper_link;
pub mod identity;
pub mod output;
pub mod peercred;
pub mod probe;
pub mod query;
pub mod reports;
pub mod standby;
pub mod supervisor;
