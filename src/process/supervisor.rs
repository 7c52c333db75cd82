//! The supervisor thread: spawns managed plugin servers through `kps-helper`,
//! probes their sockets for readiness, respawns them with backoff and stops them.
//! It never touches Lua: everything it has to say goes out as [`Report`]s on a
//! channel that the shim drains on a timer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, select};
use serde::Serialize;

use super::backoff::Backoff;
use super::hang::{Beat, HangWatch};
use super::helper_link::{Exit, HelperEvent, HelperLink};
use super::identity::{Identity, Recorded, signal_if_same};
use super::output::{LINES_PER_WINDOW, OutputBudget};
use super::peercred::{Listener, probe_server};
use super::probe::{Probe, remove_stale_socket};
use super::reports::ReportSink;
use super::standby::{Standby, StandbyState};
use crate::config::ServerDef;

/// Probe period while a server starts (readiness must show within 10 ms).
const PROBE_FAST: Duration = Duration::from_millis(10);
/// Probe period while another process listens on the socket: the server is
/// ready only once it replaces that listener, so each probe until then only
/// connects to the foreign one; no need to do it at the fast rate.
const PROBE_FOREIGN: Duration = Duration::from_millis(50);
/// Probe period once `ready_timeout` has passed without the socket accepting.
const PROBE_SLOW: Duration = Duration::from_millis(250);
/// Period of the check for a previous generation's server to be gone.
const OLD_PID_POLL: Duration = Duration::from_millis(10);
/// How long an immediate respawn waits for the workers to see `starting`.
const RESPAWN_SETTLE: Duration = Duration::from_millis(30);
/// After SIGKILL, how long to wait for the exit before giving up.
pub const KILL_WAIT: Duration = Duration::from_millis(1000);

/// nginx log levels (the values of `ngx.DEBUG` ... `ngx.ERR`).
pub const NGX_ERR: u8 = 4;
pub const NGX_WARN: u8 = 5;
pub const NGX_NOTICE: u8 = 6;
pub const NGX_INFO: u8 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Ready,
    Backoff,
    Stopped,
    Failed,
    /// A server managed outside Kong (watched for hangs only).
    External,
    /// An external server that stopped answering (`hang_timeout`).
    Hung,
}

/// What the supervisor tells the shim.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    /// A line for `ngx.log` at `level`.
    Log { level: u8, msg: String },
    /// A server's new state (for the shared dict).
    State {
        name: String,
        state: State,
        pid: Option<i32>,
        /// The start time of `pid` (`/proc/<pid>/stat` field 22): what proves, after
        /// a reload, that the pid still names this server.
        pid_start: Option<u64>,
        restarts: u32,
        /// Times it was found hung (`hang_timeout`).
        hangs: u32,
        last_exit: Option<Exit>,
        /// Wall-clock start of the current process (seconds since the epoch).
        started_at: Option<f64>,
        /// Wall-clock time of this state change (seconds since the epoch): when the
        /// probe saw a server accept, for `ready` (outage measurements).
        since: f64,
        /// Why a starting server is not ready yet, when the probe knows
        /// (`foreign listener pid N on <socket>`).
        note: Option<String>,
        /// The warm standby (`supervisor_standby.rs`), its process and start
        /// time (what the next generation waits for), and how many times a
        /// standby took over.
        standby: StandbyState,
        standby_pid: Option<i32>,
        standby_start: Option<u64>,
        promotions: u32,
    },
    /// The supervisor has stopped every server and ended.
    Done,
}

pub enum Command {
    Stop,
}

#[derive(Debug)]
enum Phase {
    /// A server of the previous generation (same socket) must be gone first.
    WaitOld {
        old: Recorded,
        deadline: Instant,
    },
    /// Spawn asked for; waiting for the helper's answer.
    Spawning {
        id: u64,
    },
    Starting {
        probe: Probe,
    },
    Ready,
    Backoff {
        until: Instant,
    },
    Stopping {
        deadline: Instant,
        killed: bool,
    },
    Stopped,
    Failed,
    /// Not ours to run: only watched for hangs (`supervisor_hang.rs`).
    External,
}

struct Server {
    def: ServerDef,
    command: String,
    phase: Phase,
    pid: Option<i32>,
    /// Start time of `pid`, as the helper read it at fork.
    pid_start: Option<u64>,
    /// Why the server is not ready (the probe found another process listening).
    note: Option<String>,
    output: OutputBudget,
    started: Option<Instant>,
    started_wall: Option<f64>,
    /// Spawns in this generation; `restarts` is all but the first.
    spawns: u32,
    restarts: u32,
    last_exit: Option<Exit>,
    backoff: Backoff,
    /// The hang watcher (`hang_timeout` > 0 and a known protocol).
    watch: Option<HangWatch>,
    hangs: u32,
    /// The warm standby slot (managed servers only).
    standby: Option<Standby>,
    /// The state last published and when (repeated when only the standby changes).
    last_state: State,
    last_since: f64,
}

impl Server {
    /// A server in its first `phase`, before any spawn; an external one has no
    /// `command` and no `standby`.
    fn new(def: ServerDef, command: String, phase: Phase, standby: Option<Standby>) -> Server {
        let last_state = match phase {
            Phase::External => State::External,
            _ => State::Starting,
        };
        Server {
            output: OutputBudget::new(def.log_window, LINES_PER_WINDOW),
            pid_start: None,
            note: None,
            backoff: Backoff::new(def.respawn_delay, def.respawn_delay_max, def.respawn_reset),
            def,
            command,
            phase,
            pid: None,
            started: None,
            started_wall: None,
            spawns: 0,
            restarts: 0,
            last_exit: None,
            watch: None,
            hangs: 0,
            standby,
            last_state,
            last_since: 0.0,
        }
    }

    /// Its process is gone: no pid, no start time; `phase` from now on.
    fn end_process(&mut self, phase: Phase) {
        self.pid = None;
        self.started = None;
        self.started_wall = None;
        self.phase = phase;
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Stopped | Phase::Failed | Phase::External)
            && self.standby.as_ref().is_none_or(Standby::is_idle)
    }
}

/// The supervisor thread's state.
pub struct Supervisor {
    servers: Vec<Server>,
    reports: ReportSink,
    helper_path: PathBuf,
    helper: Option<HelperLink>,
    next_id: u64,
    stopping: bool,
    /// Per server name, its protocol (`MsgPack:1`, `ProtoBuf:1`), for the hang watch.
    protocols: HashMap<String, String>,
    beats: (Sender<Beat>, Receiver<Beat>),
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why a previous generation's recorded pid is neither waited for nor signalled.
fn not_that_server(pid: i32, name: &str) -> String {
    format!(
        "[pluginserver] pid {pid}, recorded for the previous pluginserver '{name}', is not that server (it exited, or its start time was not recorded); not waiting for it or signalling it"
    )
}

impl Supervisor {
    /// `old_pids`: per server name, the process a previous generation (HUP reload,
    /// crashed worker) was running on the same socket.
    pub fn new(
        defs: Vec<ServerDef>,
        old_pids: HashMap<String, Recorded>,
        helper_path: PathBuf,
        reports: Sender<Report>,
    ) -> Self {
        let now = Instant::now();
        let mut not_ours = Vec::new();
        let servers = defs
            .into_iter()
            .filter_map(|def| {
                let Some(command) = def.start_command.clone() else {
                    // An external server is ours only to watch for hangs.
                    return (def.hang_timeout > 0).then(|| Server::external(def));
                };
                let old_standby = old_pids.get(&def.name).and_then(|o| o.standby());
                let standby = Some(Standby::new(&def, &command, old_standby, now));
                // Only the recorded process itself (its pid and start time) is
                // waited for: a pid that now names another process is not.
                let phase = match old_pids.get(&def.name).map(|&old| (old, old.identity())) {
                    Some((old, Identity::Ours)) => Phase::WaitOld {
                        old,
                        deadline: now + Duration::from_millis(def.stop_timeout),
                    },
                    Some((old, Identity::Foreign)) => {
                        not_ours.push(not_that_server(old.pid(), &def.name));
                        Phase::Backoff { until: now }
                    }
                    _ => Phase::Backoff { until: now },
                };
                Some(Server::new(def, command, phase, standby))
            })
            .collect();
        let mut sup = Supervisor {
            servers,
            reports: ReportSink::new(reports),
            helper_path,
            helper: None,
            next_id: 1,
            stopping: false,
            protocols: HashMap::new(),
            beats: crossbeam_channel::unbounded(),
        };
        for msg in not_ours {
            sup.log(NGX_NOTICE, msg);
        }
        sup
    }

    fn log(&mut self, level: u8, msg: String) {
        self.reports.log(level, msg);
    }

    fn publish(&mut self, i: usize, state: State) {
        self.sync_watch(i, state);
        self.servers[i].last_state = state;
        self.servers[i].last_since = wall_now();
        self.report_state(i);
    }

    /// Reports the server's last published state again (its standby changed);
    /// the hang watch is not touched.
    fn report_state(&mut self, i: usize) {
        let s = &self.servers[i];
        let state = s.last_state;
        let sb = s.standby.as_ref();
        self.reports.state(Report::State {
            name: s.def.name.clone(),
            state,
            pid: s.pid,
            pid_start: s.pid.and(s.pid_start),
            restarts: s.restarts,
            hangs: s.hangs,
            last_exit: s.last_exit,
            started_at: s.started_wall,
            since: s.last_since,
            note: s.note.clone(),
            standby: sb.map_or(StandbyState::Off, Standby::state),
            standby_pid: sb.and_then(|b| b.pid),
            standby_start: sb.and_then(|b| b.pid.and(b.pid_start)),
            promotions: sb.map_or(0, |b| b.promotions),
        });
    }

    /// Runs until `Stop` (or the command channel closes) and every server is down.
    pub fn run(mut self, commands: Receiver<Command>) {
        match HelperLink::start(&self.helper_path) {
            Ok(h) => self.helper = Some(h),
            Err(e) => {
                for i in 0..self.servers.len() {
                    if self.servers[i].phase_is_external() {
                        continue;
                    }
                    self.log(
                        NGX_ERR,
                        format!(
                            "[pluginserver] cannot start pluginserver '{}': {e}",
                            self.servers[i].def.name
                        ),
                    );
                    self.servers[i].phase = Phase::Failed;
                    self.publish(i, State::Failed);
                }
                self.reports.finish();
                return;
            }
        }
        self.start_watches();
        for i in 0..self.servers.len() {
            if self.servers[i].phase_is_external() {
                self.publish(i, State::External);
                continue;
            }
            if let Phase::WaitOld { old, .. } = self.servers[i].phase {
                let pid = old.pid();
                self.log(
                    NGX_NOTICE,
                    format!(
                        "[pluginserver] waiting for the previous pluginserver '{}', pid {pid}, to exit",
                        self.servers[i].def.name
                    ),
                );
            }
            self.publish(i, State::Starting);
        }
        loop {
            self.tick(Instant::now());
            self.summarise_output(Instant::now());
            self.reports.flush();
            if self.stopping && self.servers.iter().all(Server::is_done) {
                break;
            }
            let timeout = self
                .next_deadline()
                .into_iter()
                .chain(self.output_deadline())
                .min()
                .map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(Instant::now())
                });
            let events = self.helper.as_ref().map(|h| h.events.clone());
            let Some(events) = events else { break };
            let beats = self.beats.1.clone();
            select! {
                recv(commands) -> cmd => match cmd {
                    Ok(Command::Stop) | Err(_) => self.begin_stop(),
                },
                recv(events) -> ev => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(_) => self.on_event(HelperEvent::Gone),
                },
                recv(beats) -> beat => if let Ok(beat) = beat {
                    self.on_beat(beat);
                },
                default(timeout) => {}
            }
        }
        if let Some(h) = self.helper.take() {
            h.close();
        }
        self.reports.finish();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| match &s.phase {
                Phase::WaitOld { deadline, .. } => {
                    Some((Instant::now() + OLD_PID_POLL).min(*deadline))
                }
                Phase::Starting { probe } => Some(probe.next),
                Phase::Backoff { until } => Some(*until),
                Phase::Stopping { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .chain(self.standby_deadline())
            .min()
    }

    fn tick(&mut self, now: Instant) {
        for i in 0..self.servers.len() {
            match self.servers[i].phase {
                Phase::WaitOld { old, deadline } => {
                    let (pid, identity) = (old.pid(), old.identity());
                    let name = self.servers[i].def.name.clone();
                    if identity == Identity::Gone {
                        // Logged by this supervisor before its own "started" line, so the
                        // hand-over order is visible even though the old worker logs
                        // its "stopped" line from another process.
                        self.log(
                            NGX_NOTICE,
                            format!("[pluginserver] previous pluginserver '{name}', pid {pid}, has exited"),
                        );
                        self.spawn(i);
                    } else if identity == Identity::Foreign {
                        self.log(NGX_NOTICE, not_that_server(pid, &name));
                        self.spawn(i);
                    } else if now >= deadline {
                        self.kill_previous(&format!("pluginserver '{name}'"), old);
                        self.spawn(i);
                    }
                }
                Phase::Backoff { until } if now >= until => self.spawn(i),
                Phase::Starting { ref probe } if now >= probe.next => self.probe(i, now),
                Phase::Stopping { deadline, killed } if now >= deadline => {
                    self.escalate(i, now, killed)
                }
                _ => {}
            }
            self.standby_tick(i, now);
        }
    }

    /// The previous generation's process `old` (`what`: "pluginserver 'x'" or
    /// "standby of pluginserver 'x'") is still running at the end of its wait:
    /// logged and killed, if it is still the process that was recorded.
    pub(super) fn kill_previous(&mut self, what: &str, old: Recorded) {
        let pid = old.pid();
        self.log(
            NGX_WARN,
            format!("[pluginserver] previous {what}, pid {pid}, still running; killing it"),
        );
        if let Some(start) = old.start() {
            signal_if_same(pid, start, libc::SIGKILL);
        }
    }

    fn spawn(&mut self, i: usize) {
        if self.stopping {
            self.servers[i].phase = Phase::Stopped;
            return;
        }
        let s = &self.servers[i];
        let name = s.def.name.clone();
        remove_stale_socket(&s.def.socket);
        let (path, command) = (s.def.path.clone(), s.command.clone());
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] starting pluginserver process for {name}"),
        );
        match self.request_spawn(&path, &command) {
            Ok(id) => self.servers[i].phase = Phase::Spawning { id },
            Err(e) => self.spawn_failed(i, &e),
        }
    }

    /// Asks the helper to spawn `command` in `path`; returns the request's id,
    /// which is used up even when there is no helper to ask.
    fn request_spawn(&mut self, path: &str, command: &str) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id += 1;
        match self.helper.as_mut() {
            Some(h) => h.spawn(id, path, command).map(|()| id),
            None => Err("kps-helper is not running".into()),
        }
    }

    /// Has the helper signal the process group of its child `pid` (when
    /// known), only if that child started at `start` (when given); nothing is
    /// sent without a helper, and a failure to send is not reported.
    fn signal(&mut self, pid: Option<i32>, sig: i32, start: Option<u64>) {
        if let (Some(pid), Some(h)) = (pid, self.helper.as_mut()) {
            let _ = h.signal(pid, sig, start);
        }
    }

    fn spawn_failed(&mut self, i: usize, err: &str) {
        let name = self.servers[i].def.name.clone();
        self.log(
            NGX_ERR,
            format!("[pluginserver] could not start pluginserver '{name}': {err}"),
        );
        self.schedule_respawn(i, 0);
    }

    fn schedule_respawn(&mut self, i: usize, uptime_ms: u64) {
        let s = &mut self.servers[i];
        s.pid = None;
        s.started = None;
        s.started_wall = None;
        if self.stopping {
            s.phase = Phase::Stopped;
            self.publish(i, State::Stopped);
            return;
        }
        let delay = s.backoff.next_delay(uptime_ms);
        let name = s.def.name.clone();
        if delay == 0 {
            // The first exit: requests wait for the new server (`starting`)
            // instead of seeing a backoff. The spawn, which removes the dead
            // server's socket file, comes after the workers have read that state
            // (the shim drains reports every 10 ms): a request that still saw
            // `ready` would connect to a missing file, which nginx logs at crit.
            s.phase = Phase::Backoff {
                until: Instant::now() + RESPAWN_SETTLE,
            };
            self.log(
                NGX_NOTICE,
                format!("[pluginserver] respawning pluginserver '{name}' at once"),
            );
            self.publish(i, State::Starting);
            return;
        }
        s.phase = Phase::Backoff {
            until: Instant::now() + Duration::from_millis(delay),
        };
        self.log(
            NGX_NOTICE,
            format!("[pluginserver] respawning pluginserver '{name}' in {delay} ms"),
        );
        self.publish(i, State::Backoff);
    }

    fn probe(&mut self, i: usize, now: Instant) {
        let s = &mut self.servers[i];
        let Phase::Starting { ref mut probe } = s.phase else {
            return;
        };
        match probe_server(&s.def.socket, s.pid.unwrap_or(0)) {
            Ok(Listener::Foreign(other)) => {
                probe.next = now + PROBE_FOREIGN;
                let note = format!("foreign listener pid {other} on {}", s.def.socket);
                if s.note.as_ref() != Some(&note) {
                    let msg = format!(
                        "[pluginserver] pluginserver '{}', pid {}, is not ready: {note}",
                        s.def.name,
                        s.pid.unwrap_or(0)
                    );
                    s.note = Some(note);
                    self.log(NGX_WARN, msg);
                    self.publish(i, State::Starting);
                }
            }
            Ok(Listener::Ours) => {
                s.note = None;
                s.phase = Phase::Ready;
                let took = s.started.map_or(Duration::ZERO, |t| t.elapsed());
                let (name, pid) = (s.def.name.clone(), s.pid.unwrap_or(0));
                self.log(
                    NGX_NOTICE,
                    format!("[pluginserver] pluginserver '{name}' is ready, pid {pid}"),
                );
                self.publish(i, State::Ready);
                self.active_ready(i, took);
            }
            Err(err) => {
                let late = now >= probe.ready_deadline;
                probe.next = now + if late { PROBE_SLOW } else { PROBE_FAST };
                if late && !probe.warned {
                    probe.warned = true;
                    let msg = format!(
                        "[pluginserver] pluginserver '{}', pid {}, is not accepting connections on {} after {} ms ({err}); still waiting",
                        s.def.name,
                        s.pid.unwrap_or(0),
                        s.def.socket,
                        s.def.ready_timeout
                    );
                    self.log(NGX_WARN, msg);
                }
            }
        }
    }

    fn server_of_pid(&self, pid: i32) -> Option<usize> {
        self.servers.iter().position(|s| s.pid == Some(pid))
    }

    fn on_event(&mut self, ev: HelperEvent) {
        match ev {
            HelperEvent::Spawned { id, pid, start } => {
                if self.standby_spawned(id, pid, start) {
                    return;
                }
                let Some(i) = self
                    .servers
                    .iter()
                    .position(|s| matches!(s.phase, Phase::Spawning { id: x } if x == id))
                else {
                    return;
                };
                let now = Instant::now();
                let s = &mut self.servers[i];
                s.spawns += 1;
                s.restarts = s.spawns - 1;
                s.pid = Some(pid);
                s.pid_start = start;
                s.note = None;
                s.started = Some(now);
                s.started_wall = Some(wall_now());
                s.phase = Phase::Starting {
                    probe: Probe::new(now, Duration::from_millis(s.def.ready_timeout)),
                };
                let name = s.def.name.clone();
                self.log(
                    NGX_NOTICE,
                    format!("[pluginserver] started, pid {pid} ({name})"),
                );
                self.publish(i, State::Starting);
                if self.stopping {
                    self.terminate(i);
                }
            }
            HelperEvent::SpawnFailed { id, message } => {
                if self.standby_spawn_failed(id, &message) {
                    return;
                }
                if let Some(i) = self
                    .servers
                    .iter()
                    .position(|s| matches!(s.phase, Phase::Spawning { id: x } if x == id))
                {
                    self.spawn_failed(i, &message);
                }
            }
            HelperEvent::Output { pid, line } => self.on_output(pid, line),
            HelperEvent::Exited { pid, exit } => {
                if self.standby_exited(pid, exit) {
                    return;
                }
                if let Some(i) = self.server_of_pid(pid) {
                    self.on_exit(i, pid, exit);
                }
            }
            HelperEvent::Gone => self.on_helper_gone(),
        }
    }

    fn on_exit(&mut self, i: usize, pid: i32, exit: Exit) {
        let s = &mut self.servers[i];
        let uptime_ms = s.started.map_or(0, |t| t.elapsed().as_millis() as u64);
        s.last_exit = Some(exit);
        let name = s.def.name.clone();
        let cmd = s.command.clone();
        let was_stopping = matches!(s.phase, Phase::Stopping { .. });
        // Every exit is logged; one we asked for only at notice level.
        let level = if was_stopping { NGX_NOTICE } else { NGX_WARN };
        self.log(
            level,
            format!("external pluginserver '{name}' terminated: {exit}"),
        );
        if was_stopping {
            self.servers[i].end_process(Phase::Stopped);
            self.log(
                NGX_NOTICE,
                format!("[pluginserver] successfully stopped pluginserver '{name}', pid {pid}"),
            );
            self.publish(i, State::Stopped);
            return;
        }
        if exit == Exit::Code(127) {
            self.servers[i].end_process(Phase::Failed);
            self.log(
                NGX_ERR,
                format!("[pluginserver] external pluginserver {name:?} start command {cmd:?} exited with \"command not found\""),
            );
            self.log(
                NGX_NOTICE,
                format!("[pluginserver] exiting: pluginserver '{name}' not respawned."),
            );
            self.publish(i, State::Failed);
            self.terminate_standby(i);
            return;
        }
        if self.promote(i, uptime_ms) {
            return;
        }
        self.schedule_respawn(i, uptime_ms);
    }

    /// The helper died (killed from outside): its servers died with it
    /// (parent-death signal). Start a new helper and respawn them with backoff.
    fn on_helper_gone(&mut self) {
        self.helper = None;
        if !self.stopping {
            self.log(
                NGX_ERR,
                "[pluginserver] kps-helper exited unexpectedly; restarting it".into(),
            );
        }
        match HelperLink::start(&self.helper_path) {
            Ok(h) if !self.stopping => self.helper = Some(h),
            Ok(h) => h.close(),
            Err(e) => self.log(NGX_ERR, format!("[pluginserver] {e}")),
        }
        for i in 0..self.servers.len() {
            self.standby_lost_with_helper(i);
            let s = &self.servers[i];
            match s.phase {
                Phase::Stopped
                | Phase::Failed
                | Phase::External
                | Phase::WaitOld { .. }
                | Phase::Backoff { .. } => {}
                _ if self.helper.is_none() => {
                    self.servers[i].pid = None;
                    self.servers[i].phase = if self.stopping {
                        Phase::Stopped
                    } else {
                        Phase::Failed
                    };
                    self.publish(
                        i,
                        if self.stopping {
                            State::Stopped
                        } else {
                            State::Failed
                        },
                    );
                }
                _ => {
                    let uptime = s.started.map_or(0, |t| t.elapsed().as_millis() as u64);
                    self.schedule_respawn(i, uptime);
                }
            }
        }
    }

    fn terminate(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let deadline = Instant::now() + Duration::from_millis(s.def.stop_timeout);
        s.phase = Phase::Stopping {
            deadline,
            killed: false,
        };
        let (pid, start) = (s.pid, s.pid_start);
        self.signal(pid, libc::SIGTERM, start);
    }

    fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for i in 0..self.servers.len() {
            match self.servers[i].phase {
                Phase::Starting { .. } | Phase::Ready => self.terminate(i),
                // The pid is not known yet: SIGTERM goes out when it is.
                Phase::Spawning { .. } => {
                    let deadline =
                        Instant::now() + Duration::from_millis(self.servers[i].def.stop_timeout);
                    self.servers[i].phase = Phase::Stopping {
                        deadline,
                        killed: false,
                    };
                }
                Phase::WaitOld { .. } | Phase::Backoff { .. } => {
                    self.servers[i].phase = Phase::Stopped;
                    self.publish(i, State::Stopped);
                }
                Phase::Stopping { .. } | Phase::Stopped | Phase::Failed | Phase::External => {}
            }
            self.terminate_standby(i);
        }
    }

    /// SIGKILL after the SIGTERM grace; give up (with an error) after that.
    fn escalate(&mut self, i: usize, now: Instant, killed: bool) {
        let s = &mut self.servers[i];
        let name = s.def.name.clone();
        let Some(pid) = s.pid else {
            s.phase = Phase::Stopped;
            self.publish(i, State::Stopped);
            return;
        };
        if !killed {
            let (grace, start) = (s.def.stop_timeout, s.pid_start);
            s.phase = Phase::Stopping {
                deadline: now + KILL_WAIT,
                killed: true,
            };
            self.log(
                NGX_WARN,
                format!("[pluginserver] pluginserver '{name}', pid {pid}, did not stop within {grace} ms of SIGTERM; sending SIGKILL"),
            );
            self.signal(Some(pid), libc::SIGKILL, start);
        } else {
            s.phase = Phase::Stopped;
            self.log(
                NGX_ERR,
                format!("[pluginserver] failed to stop pluginserver '{name}', pid {pid}: still running after SIGKILL"),
            );
            self.publish(i, State::Stopped);
        }
    }
}

/// Output lines of the servers: filtered by level, limited per log window.
impl Supervisor {
    fn on_output(&mut self, pid: i32, line: String) {
        if !super::output::printed(NGX_INFO) {
            return;
        }
        let now = Instant::now();
        let Some(i) = self.server_of_pid(pid).or_else(|| self.standby_of_pid(pid)) else {
            self.log(NGX_INFO, format!("[?:{pid}] {line}"));
            return;
        };
        let lost = self
            .helper
            .as_ref()
            .map_or(0, |h| self.take_dropped(&mut h.dropped(), i));
        self.summarise_server_output(i, lost, now);
        if self.servers[i].output.admit(now) {
            let name = &self.servers[i].def.name;
            let msg = format!("[{name}:{pid}] {line}");
            self.log(NGX_INFO, msg);
        }
    }

    /// One line per server whose window with dropped lines has ended.
    fn summarise_output(&mut self, now: Instant) {
        // The helper's drop counts of every server under one lock.
        let lost: Vec<u64> = match self.helper.as_ref() {
            Some(h) => {
                let mut counts = h.dropped();
                (0..self.servers.len())
                    .map(|i| self.take_dropped(&mut counts, i))
                    .collect()
            }
            None => vec![0; self.servers.len()],
        };
        for (i, lost) in lost.into_iter().enumerate() {
            self.summarise_server_output(i, lost, now);
        }
    }

    /// The output lines of server `i` (its process and its standby's) that the
    /// helper's queue had no room for, taken out of `counts`.
    fn take_dropped(&self, counts: &mut HashMap<i32, u64>, i: usize) -> u64 {
        let s = &self.servers[i];
        [s.pid, s.standby.as_ref().and_then(|b| b.pid)]
            .into_iter()
            .flatten()
            .map(|pid| counts.remove(&pid).unwrap_or(0))
            .sum()
    }

    /// Counts `lost` lines of server `i` as dropped; logs the summary of its
    /// window once that has ended.
    fn summarise_server_output(&mut self, i: usize, lost: u64, now: Instant) {
        self.servers[i].output.add_dropped(lost, now);
        let s = &mut self.servers[i];
        if let Some(n) = s.output.summary(now) {
            let msg = format!(
                "[pluginserver] {}: {n} output lines dropped in the last {} ms",
                s.def.name,
                s.output.window_ms()
            );
            self.log(NGX_WARN, msg);
        }
    }

    fn output_deadline(&self) -> Option<Instant> {
        let pending = self
            .reports
            .has_pending()
            .then(|| Instant::now() + PROBE_FAST);
        self.servers
            .iter()
            .filter_map(|s| s.output.deadline())
            .chain(pending)
            .min()
    }
}

#[path = "supervisor_hang.rs"]
mod hang_checks;
#[path = "supervisor_standby.rs"]
mod standby_checks;

/// Longest time `stop` can take for these definitions.
pub fn stop_bound(defs: &[ServerDef]) -> Duration {
    let grace = defs.iter().map(|d| d.stop_timeout).max().unwrap_or(0);
    Duration::from_millis(grace) + KILL_WAIT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::identity::start_time;
    use crate::test_support::{server_def, sleeper, tmp_socket};

    fn def(name: &str) -> ServerDef {
        ServerDef {
            start_command: Some("sleep 100".into()),
            ..server_def(name, &tmp_socket(&format!("sup-{name}")))
        }
    }

    /// A supervisor (no helper: nothing can be signalled) of servers "a", "b",
    /// ..., one per recorded previous process.
    fn with_previous(recorded: &[Recorded]) -> Supervisor {
        let names: Vec<String> = (0..recorded.len())
            .map(|i| char::from(b'a' + i as u8).to_string())
            .collect();
        let old = names
            .iter()
            .cloned()
            .zip(recorded.iter().copied())
            .collect();
        let defs = names.iter().map(|n| def(n)).collect();
        let (tx, _rx) = crossbeam_channel::unbounded();
        Supervisor::new(defs, old, "/nonexistent".into(), tx)
    }

    fn waits(sup: &Supervisor, i: usize) -> bool {
        match sup.servers[i].phase {
            Phase::WaitOld { .. } => true,
            Phase::Backoff { .. } => false,
            ref other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_previous_pid_whose_start_time_differs_is_not_waited_for() {
        let mut other = sleeper(0);
        let pid = other.id() as i32;
        let start = start_time(pid).unwrap();
        let recorded = |start| Recorded::Process {
            pid,
            start,
            standby: None,
        };
        // The live process with its own start time is the previous server; with
        // another start time, or none, the pid names some other process.
        let sup = with_previous(&[
            recorded(Some(start)),
            recorded(Some(start + 1)),
            Recorded::Pid(pid),
        ]);
        assert!(waits(&sup, 0));
        assert!(!waits(&sup, 1), "a pid of another process is waited for");
        assert!(!waits(&sup, 2), "a bare pid is waited for");
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
        // Gone: nothing to wait for.
        assert!(!waits(&with_previous(&[recorded(Some(start))]), 0));
    }
}
