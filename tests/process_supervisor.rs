//! The supervisor with real processes: kps-helper, shell servers, a python3
//! listener. Every wait is bounded.

mod supervisor_rig;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kong_plugin_servers::process::helper_link::{Exit, HelperEvent, HelperLink};
use kong_plugin_servers::process::identity::{Recorded, start_time};
use kong_plugin_servers::process::supervisor::{Report, State};
use supervisor_rig::*;

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
    let HelperEvent::Spawned { id: 7, pid, .. } = got[0] else {
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
        HelperEvent::Spawned { id: 8, pid, .. } => pid,
        other => panic!("{other:?}"),
    };
    h.kill(pid, libc::SIGKILL).unwrap();
    assert_next_is_killed(&h, pid);
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
    let recorded = Recorded::Process {
        pid: old_pid,
        start: start_time(old_pid),
        standby: None,
    };
    let mut run = Running::start(vec![d], HashMap::from([("gen".to_string(), recorded)]));
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

/// Waits for `pid` to run `comm` (after the exec of the start command).
/// The helper's next event is `pid`'s exit on SIGKILL.
fn assert_next_is_killed(h: &HelperLink, pid: i32) {
    assert_eq!(
        h.events.recv_timeout(WAIT).unwrap(),
        HelperEvent::Exited {
            pid,
            exit: Exit::Signal(9)
        }
    );
}

fn wait_comm(pid: i32, comm: &str) {
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != comm) {
        assert!(Instant::now() < deadline, "pid {pid} does not run {comm}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawned(h: &HelperLink) -> (i32, Option<u64>) {
    match h.events.recv_timeout(WAIT).unwrap() {
        HelperEvent::Spawned { pid, start, .. } => (pid, start),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unrelated_process_written_where_the_old_pid_was_survives() {
    let dir = tmp("unrelated");
    // The previous generation's server: recorded, then gone.
    let mut old = std::process::Command::new("true").spawn().unwrap();
    let (old_pid, old_start) = (old.id() as i32, start_time(old.id() as i32));
    old.wait().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // An unrelated process (leading its own group, as servers do) whose pid is
    // written where the old one was; once with the old start time, once bare.
    let mut other = std::process::Command::new("/bin/sh");
    std::os::unix::process::CommandExt::process_group(&mut other, 0);
    let mut other = other
        .args(["-c", "trap '' TERM; exec sleep 100"])
        .spawn()
        .unwrap();
    let other_pid = other.id() as i32;
    assert_ne!(start_time(other_pid), old_start, "{old_pid}");
    let mut defs = Vec::new();
    let mut old_pids = HashMap::new();
    for (name, rec) in [
        (
            "a",
            Recorded::Process {
                pid: other_pid,
                start: old_start,
                standby: None,
            },
        ),
        ("b", Recorded::Pid(other_pid)),
    ] {
        let mut d = def(name, "sleep 100", &dir.join(name).display().to_string());
        d.stop_timeout = 100;
        defs.push(d);
        old_pids.insert(name.to_string(), rec);
    }
    let mut run = Running::start(defs, old_pids);
    for name in ["a", "b"] {
        run.wait_log(&format!(
            "pid {other_pid}, recorded for the previous pluginserver '{name}', is not that server"
        ));
        run.wait_started(name);
    }
    // Well past the stop timeout: the kill path would have run by now.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !run.seen
            .iter()
            .any(|r| matches!(r, Report::Log { msg, .. } if msg.contains("killing it"))),
        "{:#?}",
        run.seen
    );
    assert!(alive(other_pid), "the unrelated process was signalled");
    run.stop();
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn the_helper_signals_a_child_only_with_its_start_time() {
    let mut h = HelperLink::start(&helper()).unwrap();
    h.spawn(1, "/usr/bin:/bin", "sleep 100").unwrap();
    let (pid, start) = spawned(&h);
    let start = start.expect("the helper reports the start time");
    assert_eq!(start_time(pid), Some(start));
    h.signal(pid, libc::SIGKILL, Some(start + 1)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "a kill naming another start time was sent");
    h.signal(pid, libc::SIGKILL, Some(start)).unwrap();
    assert_next_is_killed(&h, pid);
    h.close();
}

#[test]
fn a_server_inherits_only_stdin_stdout_and_stderr() {
    let mut h = HelperLink::start(&helper()).unwrap();
    // Two servers: the second must not see the first one's pipe either.
    h.spawn(1, "/usr/bin:/bin", "sleep 100").unwrap();
    let (first, _) = spawned(&h);
    h.spawn(2, "/usr/bin:/bin", "sleep 100").unwrap();
    let (pid, _) = spawned(&h);
    wait_comm(pid, "sleep");
    let fds_of = |pid: i32| {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        fds
    };
    // sleep's own start-up opens and closes files (locale data): wait for the set
    // to settle; an inherited descriptor would never leave it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut fds = fds_of(pid);
    while fds != [0, 1, 2] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds = fds_of(pid);
    }
    assert_eq!(fds, [0, 1, 2]);
    let target = |fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(target(0), std::path::Path::new("/dev/null"));
    assert!(target(1).to_string_lossy().starts_with("pipe:"));
    assert_eq!(target(1), target(2), "stdout and stderr are the same pipe");
    h.close();
    wait_gone(first);
    wait_gone(pid);
}

#[test]
fn a_foreign_listener_on_the_socket_is_not_ready_and_is_reported() {
    let dir = tmp("foreign");
    let sock = dir.join("f.socket").display().to_string();
    // This test process listens on the server's socket before the server starts.
    let foreign = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let me = std::process::id() as i32;
    // The server listens itself after 1.5 s (replacing the socket file).
    let cmd = format!("{}/fixtures/servers/listen.py {sock} 1.5", root().display());
    let mut run = Running::start(vec![def("f", &cmd, &sock)], HashMap::new());
    let pid = run.wait_started("f");
    let note = format!("foreign listener pid {me} on {sock}");
    let r = run.wait_for(
        "the foreign listener note",
        |r| matches!(r, Report::State { note: Some(n), state: State::Starting, .. } if *n == note),
    );
    assert_eq!(pid_of(&r), pid);
    run.wait_log(&format!(
        "pluginserver 'f', pid {pid}, is not ready: {note}"
    ));
    let ready = run.wait_state("f", State::Ready);
    assert_eq!(pid_of(&ready), pid);
    assert!(matches!(ready, Report::State { note: None, .. }));
    // Ready only after the server's own listen, 1.5 s after its start (its output
    // line "listening" may be reported after the state: another queue).
    let Report::State {
        since,
        started_at: Some(started_at),
        ..
    } = ready
    else {
        panic!("{ready:?}");
    };
    assert!(since - started_at >= 1.5, "{:#?}", run.seen);
    drop(foreign);
    run.stop();
}

#[test]
fn a_flooding_server_costs_a_bounded_number_of_lines_and_one_summary_per_window() {
    let dir = tmp("flood");
    let mut d = def(
        "flood",
        "sh -c 'i=0; while [ $i -lt 20000 ]; do echo flood line $i; i=$((i+1)); done; exec sleep 100'",
        &dir.join("x").display().to_string(),
    );
    d.log_window = 500;
    let mut run = Running::start(vec![d], HashMap::new());
    run.wait_started("flood");
    let summary = run.wait_log("[pluginserver] flood: ");
    assert!(
        summary.ends_with("output lines dropped in the last 500 ms"),
        "{summary}"
    );
    let lines = run
        .seen
        .iter()
        .filter(|r| matches!(r, Report::Log { msg, .. } if msg.starts_with("[flood:")))
        .count();
    // The summary ends the first window that dropped lines: at most two windows' worth.
    assert!(lines <= 2 * 100, "{lines} lines logged");
    run.stop();
}

#[test]
fn an_over_long_output_line_is_cut_with_its_dropped_length() {
    let mut h = HelperLink::start(&helper()).unwrap();
    h.spawn(
        1,
        "/usr/bin:/bin",
        "sh -c 'head -c 10000 /dev/zero | tr \"\\000\" x; echo; echo next'",
    )
    .unwrap();
    let (pid, _) = spawned(&h);
    let mut lines = Vec::new();
    loop {
        match h.events.recv_timeout(WAIT).unwrap() {
            HelperEvent::Output { line, .. } => lines.push(line),
            HelperEvent::Exited { pid: p, .. } if p == pid => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        format!("{} [5904 more bytes dropped]", "x".repeat(4096))
    );
    assert_eq!(lines[1], "next");
    h.close();
}
