//! The warm standby slot of a managed server (`pluginserver_<k>_standby`, see
//! `config/standby.rs`): its process, its phase and the decision to keep one.
//! The supervisor drives it (`supervisor_standby.rs`); this module holds no I/O.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::backoff::Backoff;
use super::identity::Recorded;
use super::probe::Probe;
use crate::config::{MAX_SOCKET_PATH, ServerDef, StandbyMode, standby_command, standby_socket};

/// `auto` keeps a standby for a server whose fastest start (spawn to ready) so
/// far took longer than this. Measured on this project's hello servers
/// (docs/ROBUSTNESS.md), alone: go-pdk 5-30 ms, Python 80-170 ms, node 390-440
/// ms; Python and Go meet their outage targets by a respawn, node cannot. The
/// fastest start counts, not the last: at Kong's start every server starts at
/// once and Python then takes up to 500 ms on two cores.
pub const AUTO_THRESHOLD: Duration = Duration::from_millis(250);

/// The standby as `status()` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyState {
    /// `standby = off`, or an external server.
    Off,
    /// Wanted, but the start command names no socket (go-pdk) or the standby's
    /// socket path would be too long.
    Unavailable,
    /// `auto`, and the server starts fast: none kept.
    None,
    Starting,
    Ready,
}

#[derive(Debug)]
pub enum Phase {
    /// No process: not wanted (yet), or stopped.
    Idle,
    /// The previous generation's standby (same socket) must be gone first.
    WaitOld {
        old: Recorded,
        deadline: Instant,
    },
    Backoff {
        until: Instant,
    },
    /// The helper was asked to spawn it; the request is [`Standby::spawn_id`].
    Spawning,
    Starting {
        probe: Probe,
    },
    Ready,
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

#[derive(Debug)]
pub struct Standby {
    pub mode: StandbyMode,
    /// The standby's start command; `None` when it cannot be redirected.
    pub command: Option<String>,
    pub socket: String,
    pub phase: Phase,
    pub pid: Option<i32>,
    /// Start time of `pid`, as the helper read it at fork.
    pub pid_start: Option<u64>,
    pub started: Option<Instant>,
    pub started_wall: Option<f64>,
    /// Respawns of a standby that died itself (never delays the active server).
    pub backoff: Backoff,
    /// The helper's spawn request not answered yet (its process may be stopped
    /// before its pid is known).
    pub spawn_id: Option<u64>,
    /// The fastest start (spawn to ready) of this server's processes so far.
    pub fastest: Option<Duration>,
    /// Why the last probe did not find the standby ready (a foreign listener).
    pub note: Option<String>,
    pub promotions: u32,
}

impl Standby {
    /// The slot of a managed server with start command `command`; `old`: the
    /// previous generation's standby on the same socket, waited for up to
    /// `stop_timeout` before a standby of this generation starts.
    pub fn new(def: &ServerDef, command: &str, old: Option<Recorded>, now: Instant) -> Self {
        let socket = standby_socket(&def.socket);
        let command =
            standby_command(command, &def.socket).filter(|_| socket.len() <= MAX_SOCKET_PATH);
        let phase = match old {
            Some(old) if old.pid() > 0 => Phase::WaitOld {
                old,
                deadline: now + Duration::from_millis(def.stop_timeout),
            },
            _ => Phase::Idle,
        };
        Standby {
            mode: def.standby,
            command,
            socket,
            phase,
            pid: None,
            pid_start: None,
            started: None,
            started_wall: None,
            backoff: Backoff::new(def.respawn_delay, def.respawn_delay_max, def.respawn_reset),
            spawn_id: None,
            fastest: None,
            note: None,
            promotions: 0,
        }
    }

    /// Whether this server should have a standby now.
    pub fn wanted(&self) -> bool {
        self.command.is_some()
            && match self.mode {
                StandbyMode::Off => false,
                StandbyMode::On => true,
                StandbyMode::Auto => self.fastest.is_some_and(|d| d > AUTO_THRESHOLD),
            }
    }

    /// Records a measured start (spawn to ready) of one of this server's processes.
    pub fn measured(&mut self, start: Duration) {
        self.fastest = Some(self.fastest.map_or(start, |f| f.min(start)));
    }

    pub fn state(&self) -> StandbyState {
        match self.phase {
            Phase::Ready => StandbyState::Ready,
            Phase::Spawning | Phase::Starting { .. } => StandbyState::Starting,
            Phase::Backoff { .. } | Phase::WaitOld { .. } if self.wanted() => {
                StandbyState::Starting
            }
            _ if self.mode == StandbyMode::Off => StandbyState::Off,
            _ if self.command.is_none() => StandbyState::Unavailable,
            _ => StandbyState::None,
        }
    }

    /// No process and nothing pending (what `stop` waits for).
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }

    /// Forgets the process (it exited, or it became the active server).
    pub fn clear_process(&mut self) {
        self.pid = None;
        self.pid_start = None;
        self.started = None;
        self.started_wall = None;
        self.note = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(cmd_socket: &str, mode: StandbyMode) -> ServerDef {
        ServerDef {
            standby: mode,
            ..crate::test_support::server_def("s", cmd_socket)
        }
    }

    /// A fresh slot for a server on `socket` started by `command`.
    fn standby(socket: &str, mode: StandbyMode, command: &str) -> Standby {
        Standby::new(&def(socket, mode), command, None, Instant::now())
    }

    #[test]
    fn auto_wants_a_standby_only_while_every_start_was_slow() {
        let mut sb = standby("/k/s.sock", StandbyMode::Auto, "srv -s /k/s.sock");
        assert_eq!(sb.command.as_deref(), Some("srv -s /k/s.sock.standby"));
        assert!(!sb.wanted());
        assert_eq!(sb.state(), StandbyState::None);
        sb.measured(AUTO_THRESHOLD + Duration::from_millis(200));
        assert!(sb.wanted(), "a slow first start");
        sb.measured(AUTO_THRESHOLD + Duration::from_millis(1));
        assert!(sb.wanted());
        sb.measured(Duration::from_millis(100));
        assert!(!sb.wanted(), "one fast start shows the server starts fast");
        sb.measured(AUTO_THRESHOLD * 4);
        assert!(!sb.wanted(), "the fastest start counts");
    }

    #[test]
    fn off_and_unredirectable_commands_never_want_one() {
        let off = standby("/k/s.sock", StandbyMode::Off, "srv -s /k/s.sock");
        assert!(!off.wanted());
        assert_eq!(off.state(), StandbyState::Off);
        let go = standby("/k/go.socket", StandbyMode::On, "go -kong-prefix /k");
        assert!(!go.wanted());
        assert_eq!(go.state(), StandbyState::Unavailable);
        let long = format!("/{}/s.sock", "d".repeat(100));
        let too_long = standby(&long, StandbyMode::On, &format!("srv {long}"));
        assert!(too_long.command.is_none(), "{} bytes", long.len() + 8);
    }
}
