//! The supervisor with real processes: kps-helper, shell servers, a python3
//! listener. Every wait is bounded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use kong_plugin_servers::config::ServerDef;
use kong_plugin_servers::process::helper_link::{Exit, HelperEvent, HelperLink};
use kong_plugin_servers::process::supervisor::{Command, Report, State, Supervisor};

const WAIT: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds kps-helper (it is another crate of the workspace) once per test run.
fn helper() -> PathBuf {
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

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kps-sup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn def(name: &str, start: &str, socket: &str) -> ServerDef {
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
        hang_timeout: 0,
    }
}

struct Running {
    commands: Sender<Command>,
    reports: Receiver<Report>,
    seen: Vec<Report>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(defs: Vec<ServerDef>, old: HashMap<String, i32>) -> Self {
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
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        let deadline = Instant::now() + WAIT;
        if let Some(r) = self.seen.iter().find(|r| pred(r)) {
            return r.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(r) => {
                    self.seen.push(r.clone());
                    if pred(&r) {
                        return r;
                    }
                }
                Err(_) => panic!("no report {what} within {WAIT:?}; seen: {:#?}", self.seen),
            }
        }
    }

    fn wait_log(&mut self, needle: &str) -> String {
        match self.wait_for(
            needle,
            |r| matches!(r, Report::Log { msg, .. } if msg.contains(needle)),
        ) {
            Report::Log { msg, .. } => msg,
            _ => unreachable!(),
        }
    }

    fn wait_state(&mut self, name: &str, state: State) -> Report {
        self.wait_for(
            &format!("{name} {state:?}"),
            |r| matches!(r, Report::State { name: n, state: s, .. } if n == name && *s == state),
        )
    }

    /// The pid of the next spawned process of `name` (state starting with a pid).
    fn wait_started(&mut self, name: &str) -> i32 {
        let r = self.wait_for(&format!("{name} started"), |r| {
            matches!(r, Report::State { name: n, state: State::Starting, pid: Some(_), .. } if n == name)
        });
        pid_of(&r)
    }

    fn stop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        self.wait_for("done", |r| matches!(r, Report::Done));
        self.thread.take().unwrap().join().unwrap();
    }
}

fn pid_of(r: &Report) -> i32 {
    match r {
        Report::State { pid: Some(p), .. } => *p,
        other => panic!("no pid in {other:?}"),
    }
}

fn alive(pid: i32) -> bool {
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

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn helper_reports_output_and_real_exit_status() {
    let mut h = HelperLink::start(&helper()).unwrap();
    h.spawn(
        7,
        "/usr/bin:/bin",
        "sh -c 'echo hello; echo oops >&2; exit 3'",
    )
    .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !got.iter().any(|e| matches!(e, HelperEvent::Exited { .. })) {
        got.push(
            h.events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("helper event"),
        );
    }
    let HelperEvent::Spawned { id: 7, pid } = got[0] else {
        panic!("{got:?}")
    };
    assert!(
        got.contains(&HelperEvent::Output {
            pid,
            line: "hello".into()
        }),
        "{got:?}"
    );
    assert!(
        got.contains(&HelperEvent::Output {
            pid,
            line: "oops".into()
        }),
        "{got:?}"
    );
    assert_eq!(
        got.last(),
        Some(&HelperEvent::Exited {
            pid,
            exit: Exit::Code(3)
        })
    );

    h.spawn(8, "/usr/bin:/bin", "sleep 100").unwrap();
    let pid = match h.events.recv_timeout(WAIT).unwrap() {
        HelperEvent::Spawned { id: 8, pid } => pid,
        other => panic!("{other:?}"),
    };
    h.kill(pid, libc::SIGKILL).unwrap();
    assert_eq!(
        h.events.recv_timeout(WAIT).unwrap(),
        HelperEvent::Exited {
            pid,
            exit: Exit::Signal(9)
        }
    );
    h.close();
}

#[test]
fn closing_the_helper_kills_its_servers() {
    let mut h = HelperLink::start(&helper()).unwrap();
    let helper_pid = h.pid() as i32;
    h.spawn(1, "/usr/bin:/bin", "sleep 100").unwrap();
    let pid = match h.events.recv_timeout(WAIT).unwrap() {
        HelperEvent::Spawned { pid, .. } => pid,
        other => panic!("{other:?}"),
    };
    assert!(alive(pid));
    // The server runs in its own process group.
    assert_eq!(unsafe { libc::getpgid(pid) }, pid);
    h.close();
    wait_gone(pid);
    wait_gone(helper_pid);
}

#[test]
fn a_killed_helper_takes_its_servers_along() {
    let mut h = HelperLink::start(&helper()).unwrap();
    h.spawn(1, "/usr/bin:/bin", "sleep 100").unwrap();
    let pid = match h.events.recv_timeout(WAIT).unwrap() {
        HelperEvent::Spawned { pid, .. } => pid,
        other => panic!("{other:?}"),
    };
    unsafe { libc::kill(h.pid() as i32, libc::SIGKILL) };
    wait_gone(pid);
    assert_eq!(h.events.recv_timeout(WAIT).unwrap(), HelperEvent::Gone);
}

#[test]
fn crash_loop_backs_off_and_exit_127_is_not_respawned() {
    let dir = tmp("crash");
    let sock = dir.join("x.socket").display().to_string();
    let crash = def(
        "crash",
        &format!("{}/fixtures/servers/exit_now.sh 2", root().display()),
        &sock,
    );
    let missing = def("missing", "/nonexistent/server", &sock);
    let mut run = Running::start(vec![crash, missing], HashMap::new());

    run.wait_log("[pluginserver] external pluginserver \"missing\" start command \"/nonexistent/server\" exited with \"command not found\"");
    run.wait_state("missing", State::Failed);
    let line = run.wait_log("[crash:");
    assert!(line.ends_with("] exit_now: exiting with 2"), "{line}");
    run.wait_log("external pluginserver 'crash' terminated: exit 2");
    run.wait_log("respawning pluginserver 'crash' at once");
    for delay in [50, 100, 200, 400, 400] {
        run.wait_log(&format!("respawning pluginserver 'crash' in {delay} ms"));
    }
    let backoff = run.wait_for("crash backoff with restarts", |r| {
        matches!(r, Report::State { name, state: State::Backoff, restarts, .. } if name == "crash" && *restarts >= 3)
    });
    let Report::State { last_exit, .. } = backoff else {
        unreachable!()
    };
    assert_eq!(last_exit, Some(Exit::Code(2)));
    run.stop();
    let starts = run.seen.iter().filter(|r| matches!(r, Report::Log { msg, .. } if msg.contains("starting pluginserver process for missing"))).count();
    assert_eq!(starts, 1, "exit 127 must not be respawned");
}

#[test]
fn ready_after_the_socket_accepts_then_respawn_after_kill_9() {
    let dir = tmp("ready");
    let sock = dir.join("py.socket").display().to_string();
    let cmd = format!("{}/fixtures/servers/listen.py {sock} 0.2", root().display());
    let mut run = Running::start(vec![def("py", &cmd, &sock)], HashMap::new());
    let pid = run.wait_started("py");
    run.wait_log(&format!("[pluginserver] started, pid {pid}"));
    run.wait_log(&format!("[py:{pid}] listen.py pid {pid}"));
    let ready = run.wait_state("py", State::Ready);
    assert_eq!(pid_of(&ready), pid);

    unsafe { libc::kill(pid, libc::SIGKILL) };
    run.wait_log("external pluginserver 'py' terminated: signal 9");
    // The first exit is respawned at once: starting again, no backoff.
    run.wait_log("respawning pluginserver 'py' at once");
    run.wait_for("starting again without a pid", |r| {
        matches!(r, Report::State { name, state: State::Starting, pid: None, .. } if name == "py")
    });
    let again = run.wait_for("ready with a new pid", |r| {
        matches!(r, Report::State { name, state: State::Ready, pid: Some(p), restarts: 1, .. } if name == "py" && *p != pid)
    });
    let new_pid = pid_of(&again);
    run.stop();
    run.wait_log(&format!(
        "[pluginserver] successfully stopped pluginserver 'py', pid {new_pid}"
    ));
    assert!(!alive(new_pid));
}

#[test]
fn a_server_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = tmp("term");
    let mut d = def(
        "stubborn",
        &format!("{}/fixtures/servers/ignore_term.sh", root().display()),
        &dir.join("s").display().to_string(),
    );
    d.stop_timeout = 300;
    let mut run = Running::start(vec![d], HashMap::new());
    let pid = run.wait_started("stubborn");
    run.wait_log("ignore_term: running");
    run.stop();
    run.wait_log(&format!(
        "pluginserver 'stubborn', pid {pid}, did not stop within 300 ms of SIGTERM; sending SIGKILL"
    ));
    run.wait_log("external pluginserver 'stubborn' terminated: signal 9");
    run.wait_log(&format!(
        "successfully stopped pluginserver 'stubborn', pid {pid}"
    ));
    wait_gone(pid);
}

#[test]
fn a_previous_generation_is_waited_for_then_killed() {
    let dir = tmp("old");
    // A stand-in for the old server: its own process group, ignoring SIGTERM.
    let mut old = std::process::Command::new("/bin/sh");
    std::os::unix::process::CommandExt::process_group(&mut old, 0);
    let old = old
        .args(["-c", "trap '' TERM; exec sleep 100"])
        .spawn()
        .unwrap();
    let old_pid = old.id() as i32;
    let mut d = def("gen", "sleep 100", &dir.join("g").display().to_string());
    d.stop_timeout = 200;
    let mut run = Running::start(vec![d], HashMap::from([("gen".to_string(), old_pid)]));
    run.wait_log(&format!(
        "waiting for the previous pluginserver 'gen', pid {old_pid}, to exit"
    ));
    run.wait_log(&format!(
        "previous pluginserver 'gen', pid {old_pid}, still running; killing it"
    ));
    let new_pid = run.wait_started("gen");
    assert_ne!(new_pid, old_pid);
    let out = old.wait_with_output().unwrap();
    assert!(!out.status.success());
    run.stop();
}
