//! The warm standby with real processes (kps-helper, python3 listeners): a second
//! process on `<socket>.standby`, promoted when the active server dies. Every wait
//! is bounded.

mod supervisor_rig;

use std::collections::HashMap;
use std::path::Path;

use kong_plugin_servers::config::{ServerDef, StandbyMode};
use kong_plugin_servers::process::identity::{Recorded, start_time};
use kong_plugin_servers::process::peercred::{Listener, probe_server};
use kong_plugin_servers::process::standby::StandbyState;
use kong_plugin_servers::process::supervisor::{Report, State};
use supervisor_rig::*;

fn listen(socket_arg: &str, delay: f64) -> String {
    format!(
        "{}/fixtures/servers/listen.py {socket_arg} {delay}",
        root().display()
    )
}

/// Server `name` started by `cmd` on `socket`, with a standby as `mode` says.
fn with_standby(name: &str, cmd: &str, socket: &str, mode: StandbyMode) -> ServerDef {
    let mut d = def(name, cmd, socket);
    d.standby = mode;
    d
}

/// A supervisor running server `name`, listen.py taking `delay` s to listen on
/// a socket in a fresh directory, with a standby as `mode` says; and the socket.
fn run_listener(name: &str, delay: f64, mode: StandbyMode) -> (Running, String) {
    let dir = tmp(&format!("standby-{name}"));
    let sock = dir.join(format!("{name}.socket")).display().to_string();
    let d = with_standby(name, &listen(&sock, delay), &sock, mode);
    (Running::start(vec![d], HashMap::new()), sock)
}

/// The standby's state and pid in a state report.
fn standby_of(r: &Report) -> (StandbyState, Option<i32>) {
    match r {
        Report::State {
            standby,
            standby_pid,
            ..
        } => (*standby, *standby_pid),
        _ => panic!("not a state report: {r:?}"),
    }
}

/// The next report of `name` with a ready standby other than `not`: its pid.
fn wait_standby_ready(run: &mut Running, name: &str, not: Option<i32>) -> i32 {
    let r = run.wait_for(&format!("{name} standby ready"), |r| {
        matches!(r, Report::State { name: n, standby: StandbyState::Ready, standby_pid: Some(p), .. }
            if n == name && Some(*p) != not)
    });
    standby_of(&r).1.expect("a ready standby has a pid")
}

#[test]
fn a_killed_server_is_replaced_by_its_standby_at_once_and_a_new_standby_starts() {
    let (mut run, sock) = run_listener("p", 0.1, StandbyMode::On);
    let active = pid_of(&run.wait_state("p", State::Ready));
    let standby = wait_standby_ready(&mut run, "p", None);
    assert_ne!(standby, active);
    // the standby was started with the command naming <socket>.standby
    run.wait_log(&format!(
        "[p:{standby}] listen.py pid {standby}, socket {sock}.standby"
    ));
    assert_eq!(
        probe_server(&format!("{sock}.standby"), standby).unwrap(),
        Listener::Ours
    );

    unsafe { libc::kill(active, libc::SIGKILL) };
    let promoted = run.wait_for("ready with the standby's pid", |r| {
        matches!(r, Report::State { name, state: State::Ready, pid: Some(p), promotions: 1, restarts: 1, .. }
            if name == "p" && *p == standby)
    });
    assert!(matches!(
        promoted,
        Report::State {
            pid_start: Some(_),
            ..
        }
    ));
    run.wait_log(&format!(
        "promoted the standby of pluginserver 'p', pid {standby}, to {sock}"
    ));
    // the server's socket is the standby's listener now; no respawn, no backoff
    assert_eq!(probe_server(&sock, standby).unwrap(), Listener::Ours);
    assert!(
        !run.seen.iter().any(
            |r| matches!(r, Report::Log { msg, .. } if msg.contains("respawning pluginserver 'p'"))
        ),
        "{:#?}",
        run.seen
    );
    // and a new standby takes the free slot
    let next = wait_standby_ready(&mut run, "p", Some(standby));
    assert!(next != active && next != standby);
    run.stop();
    for pid in [standby, next] {
        wait_gone(pid);
    }
}

#[test]
fn a_crash_loop_still_backs_off_after_a_promotion() {
    let dir = tmp("sbloop");
    let sock = dir.join("l.socket").display().to_string();
    let mut d = with_standby("l", &listen(&sock, 0.0), &sock, StandbyMode::On);
    d.respawn_reset = 500;
    let mut run = Running::start(vec![d], HashMap::new());
    let active = pid_of(&run.wait_state("l", State::Ready));
    let standby = wait_standby_ready(&mut run, "l", None);
    // the standby has been up longer than respawn_reset when it takes over
    std::thread::sleep(std::time::Duration::from_millis(700));
    unsafe { libc::kill(active, libc::SIGKILL) };
    run.wait_for("promoted", |r| {
        matches!(r, Report::State { name, state: State::Ready, pid: Some(p), .. } if name == "l" && *p == standby)
    });
    // killed again at once: its uptime as the server is short, so this exit
    // backs off (the promotion was the "first exit")
    unsafe { libc::kill(standby, libc::SIGKILL) };
    run.wait_log("respawning pluginserver 'l' in 50 ms");
    run.stop();
}

#[test]
fn a_dead_standby_is_replaced_without_touching_the_active_server() {
    let (mut run, sock) = run_listener("d", 0.0, StandbyMode::On);
    let active = pid_of(&run.wait_state("d", State::Ready));
    let standby = wait_standby_ready(&mut run, "d", None);
    let before = run.seen.len();

    unsafe { libc::kill(standby, libc::SIGKILL) };
    run.wait_log(&format!(
        "standby of pluginserver 'd': pid {standby} exited: signal 9"
    ));
    let next = wait_standby_ready(&mut run, "d", Some(standby));
    assert_ne!(next, active);
    // every state reported meanwhile is the same ready active server
    for r in &run.seen[before..] {
        if let Report::State {
            state,
            pid,
            promotions,
            ..
        } = r
        {
            assert_eq!(
                (*state, *pid, *promotions),
                (State::Ready, Some(active), 0),
                "{r:?}"
            );
        }
    }
    assert_eq!(probe_server(&sock, active).unwrap(), Listener::Ours);
    run.stop();
}

#[test]
fn stop_leaves_no_process_and_no_standby_socket() {
    let dir = tmp("sbstop");
    let sock = dir.join("s.socket").display().to_string();
    // The command names its socket by file name (--in DIR), as the JS and Python
    // servers do.
    let cmd = listen(&format!("--in {} s.socket", dir.display()), 0.0);
    let d = with_standby("s", &cmd, &sock, StandbyMode::On);
    let mut run = Running::start(vec![d], HashMap::new());
    let active = pid_of(&run.wait_state("s", State::Ready));
    let standby = wait_standby_ready(&mut run, "s", None);
    assert!(Path::new(&format!("{sock}.standby")).exists());
    run.stop();
    run.wait_log(&format!(
        "stopped the standby of pluginserver 's', pid {standby}"
    ));
    for pid in [active, standby] {
        wait_gone(pid);
    }
    assert!(!Path::new(&format!("{sock}.standby")).exists());
}

#[test]
fn a_command_that_does_not_name_its_socket_gets_no_standby() {
    let dir = tmp("sbnone");
    let sock = dir.join("n.socket").display().to_string();
    // listens elsewhere than the definition's socket path says: not redirectable
    let other = dir.join("elsewhere").display().to_string();
    let d = with_standby("n", &listen(&other, 0.0), &sock, StandbyMode::On);
    let mut run = Running::start(vec![d], HashMap::new());
    let r = run.wait_state("n", State::Starting);
    assert_eq!(standby_of(&r), (StandbyState::Unavailable, None), "{r:?}");
    run.stop();
}

#[test]
fn auto_keeps_a_standby_for_a_slow_starting_server() {
    // 0.6 s to listen: slower than the auto threshold (250 ms)
    let (mut run, _) = run_listener("a", 0.6, StandbyMode::Auto);
    let r = run.wait_state("a", State::Starting);
    assert_eq!(standby_of(&r).0, StandbyState::None, "{r:?}");
    run.wait_state("a", State::Ready);
    wait_standby_ready(&mut run, "a", None);
    run.stop();
}

#[test]
fn auto_drops_the_standby_of_a_server_that_started_fast_once() {
    let dir = tmp("sbfast");
    let sock = dir.join("f.socket").display().to_string();
    // the first process takes 0.6 s to listen, every later one listens at once
    let marker = dir.join("started-once").display().to_string();
    let cmd = listen(&format!("--slow-once {marker} {sock}"), 0.6);
    let d = with_standby("f", &cmd, &sock, StandbyMode::Auto);
    let mut run = Running::start(vec![d], HashMap::new());
    let active = pid_of(&run.wait_state("f", State::Ready));
    // the slow first start asks for a standby; its own fast start drops it
    run.wait_log("starting standby pluginserver process for f");
    run.wait_log("pluginserver 'f' started in");
    run.wait_log("not keeping a standby (auto keeps one above 250 ms)");
    run.wait_log("stopped the standby of pluginserver 'f'");
    let n = run.seen.len();
    let last = run.wait_after(
        n,
        "the next state of f",
        |r| matches!(r, Report::State { name, .. } if name == "f"),
    );
    assert!(
        matches!(last, Report::State { state: State::Ready, pid: Some(p), standby: StandbyState::None, standby_pid: None, .. } if p == active),
        "{last:?}"
    );
    run.stop();
}

#[test]
fn the_previous_generations_standby_is_waited_for_then_killed() {
    let dir = tmp("sbold");
    let sock = dir.join("g.socket").display().to_string();
    // stand-ins for the old server and its standby, ignoring SIGTERM
    let spawn_old = || {
        let mut c = std::process::Command::new("/bin/sh");
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.args(["-c", "trap '' TERM; exec sleep 100"])
            .spawn()
            .unwrap()
    };
    let (old, old_sb) = (spawn_old(), spawn_old());
    let (old_pid, sb_pid) = (old.id() as i32, old_sb.id() as i32);
    let recorded: Recorded = serde_json::from_str(&format!(
        r#"{{"pid": {old_pid}, "start": {}, "standby": {{"pid": {sb_pid}, "start": {}}}}}"#,
        start_time(old_pid).unwrap(),
        start_time(sb_pid).unwrap()
    ))
    .unwrap();
    let mut d = with_standby("g", &listen(&sock, 0.0), &sock, StandbyMode::On);
    d.stop_timeout = 300;
    let mut run = Running::start(vec![d], HashMap::from([("g".to_string(), recorded)]));
    run.wait_log(&format!(
        "previous standby of pluginserver 'g', pid {sb_pid}, still running; killing it"
    ));
    let standby = wait_standby_ready(&mut run, "g", None);
    assert_ne!(standby, sb_pid);
    for c in [old, old_sb] {
        assert!(!c.wait_with_output().unwrap().status.success());
    }
    run.stop();
}
