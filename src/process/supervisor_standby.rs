//! The supervisor's side of the warm standby (`standby.rs`): it starts a second
//! process of a slow-starting server on `<socket>.standby`, probes it like the
//! active one, and when the active server exits (a crash, or the hang watch's
//! SIGKILL) renames the standby's socket over the server's and makes it the
//! active server at once, then starts the next standby in the background.
//!
//! `rename(2)` within one directory is atomic and a listening unix socket keeps
//! listening across a rename of its file, so a connect after the rename reaches
//! the standby; requests that connected before it fail on the dead server and are
//! retried as after any restart (the instances are re-created on the standby).

use std::time::{Duration, Instant};

use super::super::helper_link::Exit;
use super::super::identity::{Identity, is_same};
use super::super::peercred::{Listener, probe_server};
use super::super::probe::{Probe, remove_stale_socket};
use super::super::standby::{AUTO_THRESHOLD, Phase as Sb, Standby};
use super::{
    KILL_WAIT, NGX_ERR, NGX_NOTICE, NGX_WARN, PROBE_FAST, PROBE_SLOW, Phase, State, Supervisor,
    wall_now,
};

/// The next standby starts no sooner than this after a promotion: a node start
/// takes a core for ~400 ms, which the promoted server needs for its first requests
/// (its instances are re-created, its code is cold) on a small machine.
const NEXT_STANDBY_AFTER: Duration = Duration::from_millis(1000);

impl Supervisor {
    fn sb(&mut self, i: usize) -> Option<&mut Standby> {
        self.servers[i].standby.as_mut()
    }

    /// The earliest time a standby needs attention.
    pub(super) fn standby_deadline(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| match &s.standby.as_ref()?.phase {
                Sb::WaitOld { deadline, .. } => {
                    Some((Instant::now() + super::OLD_PID_POLL).min(*deadline))
                }
                Sb::Backoff { until } => Some(*until),
                Sb::Starting { probe } => Some(probe.next),
                Sb::Stopping { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .min()
    }

    pub(super) fn standby_tick(&mut self, i: usize, now: Instant) {
        let Some(sb) = self.servers[i].standby.as_ref() else {
            return;
        };
        match sb.phase {
            Sb::WaitOld { old, deadline } => {
                let identity = old.identity();
                if identity == Identity::Ours {
                    if now < deadline {
                        return;
                    }
                    let name = self.servers[i].def.name.clone();
                    self.kill_previous(&format!("standby of pluginserver '{name}'"), old);
                }
                if let Some(sb) = self.sb(i) {
                    sb.phase = Sb::Idle;
                }
                self.start_standby_if_wanted(i);
            }
            Sb::Backoff { until } if now >= until => self.spawn_standby(i),
            Sb::Starting { ref probe } if now >= probe.next => self.probe_standby(i, now),
            Sb::Stopping { deadline, killed } if now >= deadline => {
                self.escalate_standby(i, now, killed)
            }
            _ => {}
        }
    }

    /// After the active server became ready: a standby when one is wanted and
    /// none runs or waits.
    pub(super) fn start_standby_if_wanted(&mut self, i: usize) {
        if self.stopping || !matches!(self.servers[i].phase, Phase::Ready) {
            return;
        }
        match self.servers[i].standby.as_ref() {
            Some(sb) if sb.wanted() && sb.is_idle() => self.spawn_standby(i),
            _ => {}
        }
    }

    /// The active server became ready `took` after its spawn (the `auto` decision).
    pub(super) fn active_ready(&mut self, i: usize, took: Duration) {
        if let Some(sb) = self.sb(i) {
            sb.measured(took);
        }
        self.drop_unwanted_standby(i);
        self.start_standby_if_wanted(i);
    }

    /// `auto`, and a start of this server was fast after all: its standby goes.
    fn drop_unwanted_standby(&mut self, i: usize) {
        let name = self.servers[i].def.name.clone();
        let Some(sb) = self.servers[i].standby.as_ref() else {
            return;
        };
        let running = matches!(sb.phase, Sb::Spawning | Sb::Starting { .. } | Sb::Ready);
        if sb.wanted() || !running {
            return;
        }
        let ms = sb.fastest.unwrap_or_default().as_millis();
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] pluginserver '{name}' started in {ms} ms: not keeping a standby (auto keeps one above {} ms)", AUTO_THRESHOLD.as_millis()),
        );
        self.terminate_standby(i);
        self.report_state(i);
    }

    fn spawn_standby(&mut self, i: usize) {
        let Some(sb) = self.servers[i].standby.as_ref() else {
            return;
        };
        let Some(command) = sb.command.clone().filter(|_| !self.stopping && sb.wanted()) else {
            if let Some(sb) = self.sb(i) {
                sb.phase = Sb::Idle;
            }
            return;
        };
        let socket = sb.socket.clone();
        let (name, path) = (
            self.servers[i].def.name.clone(),
            self.servers[i].def.path.clone(),
        );
        remove_stale_socket(&socket);
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] starting standby pluginserver process for {name} on {socket}"),
        );
        match self.request_spawn(&path, &command) {
            Ok(id) => {
                if let Some(sb) = self.sb(i) {
                    sb.phase = Sb::Spawning;
                    sb.spawn_id = Some(id);
                }
                self.report_state(i);
            }
            Err(e) => self.standby_failed(i, &e, 0),
        }
    }

    /// A standby that could not start or died: again after its own backoff.
    fn standby_failed(&mut self, i: usize, why: &str, uptime_ms: u64) {
        let name = self.servers[i].def.name.clone();
        let stopping = self.stopping;
        let Some(sb) = self.sb(i) else { return };
        sb.clear_process();
        sb.spawn_id = None;
        let delay = sb.backoff.next_delay(uptime_ms);
        sb.phase = if stopping {
            Sb::Idle
        } else {
            Sb::Backoff {
                until: Instant::now() + Duration::from_millis(delay),
            }
        };
        self.log(
            NGX_WARN,
            format!("[pluginserver] standby of pluginserver '{name}': {why}; starting another in {delay} ms"),
        );
        self.report_state(i);
    }

    fn standby_of_spawn(&self, id: u64) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.standby.as_ref().is_some_and(|sb| sb.spawn_id == Some(id)))
    }

    pub(super) fn standby_of_pid(&self, pid: i32) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.standby.as_ref().is_some_and(|sb| sb.pid == Some(pid)))
    }

    /// A `Spawned` for a standby; false when `id` is not one.
    pub(super) fn standby_spawned(&mut self, id: u64, pid: i32, start: Option<u64>) -> bool {
        let Some(i) = self.standby_of_spawn(id) else {
            return false;
        };
        let now = Instant::now();
        let ready_timeout = Duration::from_millis(self.servers[i].def.ready_timeout);
        let name = self.servers[i].def.name.clone();
        let mut stopped_meanwhile = false;
        if let Some(sb) = self.sb(i) {
            sb.spawn_id = None;
            sb.pid = Some(pid);
            sb.pid_start = start;
            sb.started = Some(now);
            sb.started_wall = Some(wall_now());
            stopped_meanwhile = matches!(sb.phase, Sb::Stopping { .. });
            if !stopped_meanwhile {
                sb.phase = Sb::Starting {
                    probe: Probe::new(now, ready_timeout),
                };
            }
        }
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] started standby, pid {pid} ({name})"),
        );
        self.report_state(i);
        if stopped_meanwhile {
            // stopped before its pid was known: the SIGTERM goes out now
            self.signal(Some(pid), libc::SIGTERM, start);
        } else if self.stopping {
            self.terminate_standby(i);
        }
        true
    }

    /// A `SpawnFailed` for a standby; false when `id` is not one.
    pub(super) fn standby_spawn_failed(&mut self, id: u64, message: &str) -> bool {
        let Some(i) = self.standby_of_spawn(id) else {
            return false;
        };
        self.standby_failed(i, &format!("could not start: {message}"), 0);
        true
    }

    /// An `Exited` of a standby; false when `pid` is not one.
    pub(super) fn standby_exited(&mut self, pid: i32, exit: Exit) -> bool {
        let Some(i) = self.standby_of_pid(pid) else {
            return false;
        };
        let name = self.servers[i].def.name.clone();
        let Some(sb) = self.sb(i) else { return true };
        let uptime = sb.started.map_or(0, |t| t.elapsed().as_millis() as u64);
        remove_stale_socket(&sb.socket);
        if matches!(sb.phase, Sb::Stopping { .. }) {
            sb.clear_process();
            sb.phase = Sb::Idle;
            self.log(
                NGX_NOTICE,
                format!("[pluginserver] stopped the standby of pluginserver '{name}', pid {pid} ({exit})"),
            );
            self.report_state(i);
            self.start_standby_if_wanted(i);
            return true;
        }
        self.standby_failed(i, &format!("pid {pid} exited: {exit}"), uptime);
        true
    }

    fn probe_standby(&mut self, i: usize, now: Instant) {
        let name = self.servers[i].def.name.clone();
        let Some(sb) = self.sb(i) else { return };
        let pid = sb.pid.unwrap_or(0);
        let Sb::Starting { ref mut probe } = sb.phase else {
            return;
        };
        match probe_server(&sb.socket, pid) {
            Ok(Listener::Ours) => {
                let took = sb.started.map_or(Duration::ZERO, |t| t.elapsed());
                sb.phase = Sb::Ready;
                sb.note = None;
                sb.measured(took);
                self.log(
                    NGX_NOTICE,
                    format!("[pluginserver] standby of pluginserver '{name}' is ready, pid {pid}"),
                );
                self.report_state(i);
                self.drop_unwanted_standby(i);
            }
            Ok(Listener::Foreign(other)) => {
                probe.next = now + PROBE_SLOW;
                let note = format!("foreign listener pid {other} on {}", sb.socket);
                if sb.note.as_ref() != Some(&note) {
                    sb.note = Some(note.clone());
                    self.log(
                        NGX_WARN,
                        format!("[pluginserver] standby of pluginserver '{name}', pid {pid}, is not ready: {note}"),
                    );
                }
            }
            Err(_) => {
                probe.next = now
                    + if now >= probe.ready_deadline {
                        PROBE_SLOW
                    } else {
                        PROBE_FAST
                    };
            }
        }
    }

    /// The active server exited: make a ready standby the active server. False
    /// (nothing changed but a refused standby) when there is none to promote.
    pub(super) fn promote(&mut self, i: usize, dead_uptime_ms: u64) -> bool {
        if self.stopping {
            return false;
        }
        let name = self.servers[i].def.name.clone();
        let socket = self.servers[i].def.socket.clone();
        let Some(sb) = self.servers[i].standby.as_ref() else {
            return false;
        };
        let (Sb::Ready, Some(pid)) = (&sb.phase, sb.pid) else {
            return false;
        };
        // Rule 3: the pid must still be the process the helper forked, and it
        // must be what listens on the standby's socket.
        let ours = sb.pid_start.map(|start| is_same(pid, start)) == Some(Identity::Ours);
        let listening = ours && probe_server(&sb.socket, pid).ok() == Some(Listener::Ours);
        if !listening {
            let why = if ours {
                "does not accept connections"
            } else {
                "is not the process that was started (exited, or its start time differs)"
            };
            self.log(
                NGX_WARN,
                format!("[pluginserver] standby of pluginserver '{name}', pid {pid}, {why}; not promoting it"),
            );
            self.discard_standby(i, ours);
            return false;
        }
        if let Err(e) = std::fs::rename(&sb.socket, &socket) {
            self.log(
                NGX_ERR,
                format!("[pluginserver] cannot rename the standby socket of pluginserver '{name}' to {socket}: {e}; not promoting it"),
            );
            self.discard_standby(i, true);
            return false;
        }
        let s = &mut self.servers[i];
        let Some(sb) = s.standby.as_mut() else {
            return false;
        };
        s.pid = sb.pid;
        s.pid_start = sb.pid_start;
        // Its uptime as the server (for the crash-loop backoff) starts now; the
        // status' uptime is the process's own (started_wall).
        s.started = Some(Instant::now());
        s.started_wall = sb.started_wall;
        s.note = None;
        s.spawns += 1;
        s.restarts = s.spawns - 1;
        s.phase = Phase::Ready;
        sb.promotions += 1;
        sb.clear_process();
        // A crash loop still backs off: the next standby waits what the respawn
        // would have waited (the first exit: not at all).
        let delay = s
            .backoff
            .next_delay(dead_uptime_ms)
            .max(NEXT_STANDBY_AFTER.as_millis() as u64);
        sb.phase = Sb::Backoff {
            until: Instant::now() + Duration::from_millis(delay),
        };
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] promoted the standby of pluginserver '{name}', pid {pid}, to {socket}; next standby in {delay} ms"),
        );
        self.publish(i, State::Ready);
        true
    }

    /// A standby that cannot be promoted: killed (only when it is still the
    /// process the helper forked); its exit starts the next one.
    fn discard_standby(&mut self, i: usize, ours: bool) {
        let Some(sb) = self.sb(i) else { return };
        let (pid, start) = (sb.pid, sb.pid_start);
        if ours {
            sb.phase = Sb::Stopping {
                deadline: Instant::now() + KILL_WAIT,
                killed: true,
            };
            self.signal(pid, libc::SIGKILL, start);
        } else {
            sb.clear_process();
            sb.phase = Sb::Idle;
        }
        self.report_state(i);
    }

    /// SIGTERM to the standby (stop); SIGKILL follows after `stop_timeout`.
    pub(super) fn terminate_standby(&mut self, i: usize) {
        let stop_timeout = self.servers[i].def.stop_timeout;
        let Some(sb) = self.sb(i) else { return };
        let deadline = Instant::now() + Duration::from_millis(stop_timeout);
        match sb.phase {
            Sb::Starting { .. } | Sb::Ready | Sb::Spawning => {
                sb.phase = Sb::Stopping {
                    deadline,
                    killed: false,
                };
                let (pid, start) = (sb.pid, sb.pid_start);
                // Spawning: the pid is not known yet; SIGTERM goes out when it is.
                self.signal(pid, libc::SIGTERM, start);
            }
            Sb::Idle | Sb::WaitOld { .. } | Sb::Backoff { .. } => {
                sb.phase = Sb::Idle;
                remove_stale_socket(&sb.socket);
            }
            Sb::Stopping { .. } => {}
        }
    }

    fn escalate_standby(&mut self, i: usize, now: Instant, killed: bool) {
        let name = self.servers[i].def.name.clone();
        let grace = self.servers[i].def.stop_timeout;
        let Some(sb) = self.sb(i) else { return };
        let (pid, start) = (sb.pid, sb.pid_start);
        let Some(pid) = pid else {
            sb.phase = Sb::Idle;
            return;
        };
        if killed {
            sb.clear_process();
            sb.phase = Sb::Idle;
            self.log(
                NGX_ERR,
                format!("[pluginserver] failed to stop the standby of pluginserver '{name}', pid {pid}: still running after SIGKILL"),
            );
            return;
        }
        sb.phase = Sb::Stopping {
            deadline: now + KILL_WAIT,
            killed: true,
        };
        self.log(
            NGX_WARN,
            format!("[pluginserver] standby of pluginserver '{name}', pid {pid}, did not stop within {grace} ms of SIGTERM; sending SIGKILL"),
        );
        self.signal(Some(pid), libc::SIGKILL, start);
    }

    /// The helper died and took the standby along.
    pub(super) fn standby_lost_with_helper(&mut self, i: usize) {
        if let Some(sb) = self.sb(i) {
            sb.clear_process();
            sb.spawn_id = None;
            sb.phase = Sb::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::identity::start_time;
    use super::*;
    use crate::config::{ServerDef, StandbyMode};
    use crate::test_support::server_def;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;

    fn def(socket: &str) -> ServerDef {
        ServerDef {
            start_command: Some(format!("srv {socket}")),
            standby: StandbyMode::On,
            ..server_def("t", socket)
        }
    }

    /// A supervisor (no helper: nothing can be signalled) whose standby is
    /// this test process, listening on the standby socket, recorded with `start`.
    fn with_standby(socket: &str, start: u64) -> Supervisor {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut sup = Supervisor::new(vec![def(socket)], HashMap::new(), "/nonexistent".into(), tx);
        let sb = sup.servers[0].standby.as_mut().unwrap();
        sb.pid = Some(std::process::id() as i32);
        sb.pid_start = Some(start);
        sb.phase = Sb::Ready;
        sup
    }

    #[test]
    fn a_standby_whose_start_time_differs_is_not_promoted() {
        let dir = std::env::temp_dir().join(format!("kps-sbid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("t.socket").display().to_string();
        let standby = format!("{socket}.standby");
        let _listener = UnixListener::bind(&standby).unwrap();
        let me = std::process::id() as i32;
        let own = start_time(me).unwrap();

        // A pid that names another process than the one recorded: refused,
        // nothing renamed, the slot forgets it (and signals nothing).
        let mut sup = with_standby(&socket, own + 1);
        assert!(!sup.promote(0, 0));
        assert!(std::path::Path::new(&standby).exists());
        assert!(!std::path::Path::new(&socket).exists());
        let sb = sup.servers[0].standby.as_ref().unwrap();
        assert!(sb.is_idle() && sb.pid.is_none() && sb.promotions == 0);
        assert_eq!(sup.servers[0].pid, None);

        // The process that was started, but nothing listens on its standby
        // socket: refused, and it is to be stopped (the supervisor has no helper,
        // so no signal goes out), its pid kept until it exits.
        let quiet = dir.join("u.socket").display().to_string();
        let mut sup = with_standby(&quiet, own);
        assert!(!sup.promote(0, 0));
        let sb = sup.servers[0].standby.as_ref().unwrap();
        assert!(matches!(sb.phase, Sb::Stopping { killed: true, .. }));
        assert_eq!(sb.pid, Some(me));
        assert_eq!(sb.promotions, 0);
        assert_eq!(sup.servers[0].pid, None);

        // The same process with its own start time is promoted: renamed, active.
        let mut sup = with_standby(&socket, own);
        assert!(sup.promote(0, 0));
        assert!(!std::path::Path::new(&standby).exists());
        assert_eq!(probe_server(&socket, me).unwrap(), Listener::Ours);
        assert_eq!(sup.servers[0].pid, Some(me));
        assert!(matches!(sup.servers[0].phase, Phase::Ready));
        assert_eq!(sup.servers[0].standby.as_ref().unwrap().promotions, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
