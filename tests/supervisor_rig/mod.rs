//! The rig of the supervisor tests (`process_supervisor.rs`, `process_standby.rs`):
//! kps-helper built once, a running supervisor with its reports, bounded waits.
// Each test crate that includes the rig uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use kong_plugin_servers::config::{ServerDef, StandbyMode};
use kong_plugin_servers::process::identity::Recorded;
use kong_plugin_servers::process::supervisor::{Command, Report, State, Supervisor};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds kps-helper (it is another crate of the workspace) once per test run.
pub fn helper() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "kps-helper"])
            .current_dir(root())
            .status()
            .expect("cargo build kps-helper");
        assert!(status.success());
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        target.join("debug").join("kps-helper")
    })
    .clone()
}

pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kps-sup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn def(name: &str, start: &str, socket: &str) -> ServerDef {
    ServerDef {
        name: name.into(),
        socket: socket.into(),
        start_command: Some(start.into()),
        query_command: "true".into(),
        path: "/usr/local/bin:/usr/bin:/bin".into(),
        query_timeout: 1000,
        stop_timeout: 2000,
        respawn_delay: 50,
        respawn_delay_max: 400,
        respawn_reset: 60_000,
        ready_timeout: 5000,
        connect_timeout: 1000,
        send_timeout: 1000,
        read_timeout: 1000,
        fail_open: false,
        max_message_size: 1 << 20,
        log_window: 1000,
        log_queue_max: 4096,
        hang_timeout: 0,
        standby: StandbyMode::Off,
    }
}

pub struct Running {
    pub commands: Sender<Command>,
    reports: Receiver<Report>,
    pub seen: Vec<Report>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn start(defs: Vec<ServerDef>, old: HashMap<String, Recorded>) -> Self {
        let (ctx, crx) = unbounded();
        let (rtx, rrx) = unbounded();
        let sup = Supervisor::new(defs, old, helper(), rtx);
        let thread = std::thread::spawn(move || sup.run(crx));
        Running {
            commands: ctx,
            reports: rrx,
            seen: Vec::new(),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) for a report matching `pred`; returns it.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        self.wait_after(0, what, pred)
    }

    /// Waits (bounded) for a report matching `pred` among those after the first
    /// `n` seen; returns it.
    pub fn wait_after(&mut self, n: usize, what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.seen.iter().skip(n).find(|r| pred(r)) {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(r) => self.seen.push(r),
                Err(_) => panic!("no report {what} within {WAIT:?}; seen: {:#?}", self.seen),
            }
        }
    }

    pub fn wait_log(&mut self, needle: &str) -> String {
        match self.wait_for(
            needle,
            |r| matches!(r, Report::Log { msg, .. } if msg.contains(needle)),
        ) {
            Report::Log { msg, .. } => msg,
            _ => unreachable!(),
        }
    }

    pub fn wait_state(&mut self, name: &str, state: State) -> Report {
        self.wait_for(
            &format!("{name} {state:?}"),
            |r| matches!(r, Report::State { name: n, state: s, .. } if n == name && *s == state),
        )
    }

    /// The pid of the next spawned process of `name` (state starting with a pid).
    pub fn wait_started(&mut self, name: &str) -> i32 {
        let r = self.wait_for(&format!("{name} started"), |r| {
            matches!(r, Report::State { name: n, state: State::Starting, pid: Some(_), .. } if n == name)
        });
        pid_of(&r)
    }

    pub fn stop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        self.wait_for("done", |r| matches!(r, Report::Done));
        self.thread.take().unwrap().join().unwrap();
    }
}

pub fn pid_of(r: &Report) -> i32 {
    match r {
        Report::State { pid: Some(p), .. } => *p,
        other => panic!("no pid in {other:?}"),
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is not alive for our purposes: look at /proc state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}
