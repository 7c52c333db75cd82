//! Plugin info query: runs every server's query command (in parallel, bounded) and
//! turns what the PDKs print into one record per plugin.
//!
//! Runs in the nginx master during `init`. On a HUP reload the master's SIGCHLD
//! handler may reap our shell before we do, so the exit status travels through a
//! pipe written by the shell itself (`echo $? >&3`), and `waitpid` only cleans up.
//!
//! For the same reason the shell's pid is not ours to signal by number alone: a
//! pidfd is opened at spawn (while the shell is known to be our child) and the
//! command's group is signalled only while that pidfd shows the shell alive. The
//! shell waits on a pipe after writing the status, so it is alive until we kill
//! the group. The command gets `/dev/null`, the two pipes, and nothing else.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::identity::{Identity, Pidfd, fds, is_same, parent_pid, start_time};
use crate::config::ServerDef;

/// Protocol of a dump that does not name one (Python and JS).
pub const DEFAULT_PROTOCOL: &str = "MsgPack:1";
/// Most stdout/stderr bytes kept from one query command.
const MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// How much of the output an error message quotes.
const QUOTE_LEN: usize = 200;
/// After a kill, how long to wait for the pipes to close.
const KILL_DRAIN: Duration = Duration::from_millis(1000);

/// The shell wrapper: runs the query command as Kong does (`sh -c`), in a subshell
/// that does not see fds 3 and 4, writes its status to fd 3, then waits on fd 4
/// (a pipe we never write) so that it lives until we kill its group.
const WRAPPER: &str = "(eval \"$1\") 3>&- 4<&-; echo \"$?\" >&3; read x <&4";

/// What one query command did.
#[derive(Debug, Default)]
pub struct QueryOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command's exit status as the shell saw it (128+n when killed by signal n).
    pub status: Option<i32>,
    pub timed_out: bool,
}

/// One plugin of one server, as the shim builds Kong's info record from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    /// 1-based index of the server in `defs` (the Lua array).
    pub server: usize,
    pub name: String,
    #[serde(rename = "PRIORITY")]
    pub priority: Value,
    #[serde(rename = "VERSION")]
    pub version: Value,
    pub schema: Value,
    pub phases: Value,
    pub protocol: String,
}

/// A dump as printed by a PDK: its protocol and each plugin's fields (not yet named).
#[derive(Debug, PartialEq)]
pub struct Dump {
    pub protocol: String,
    pub plugins: Vec<serde_json::Map<String, Value>>,
}

fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut cut: String = text.chars().take(QUOTE_LEN).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// Runs `command` through `/bin/sh -c` with `PATH=path`, bounded by `timeout`.
///
/// # Errors
/// When the shell cannot be started or a pipe cannot be made.
pub fn run_query(command: &str, path: &str, timeout: Duration) -> Result<QueryOutput, String> {
    let (status_rd, status_wr) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (hold_rd, hold_wr) = pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let status_wr_fd = status_wr.as_raw_fd();
    let hold_rd_fd = hold_rd.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("kps-query")
        .arg(command)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: dup2, fcntl and close_range are async-signal-safe. Fds 3 and 4 get the
    // pipes without CLOEXEC; every other inherited fd (nginx's listening sockets and
    // log files) is closed at exec.
    unsafe {
        cmd.pre_exec(move || {
            let (status, hold) = (libc::dup(status_wr_fd), libc::dup(hold_rd_fd));
            if status < 0 || hold < 0 || libc::dup2(status, 3) < 0 || libc::dup2(hold, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
            fds::cloexec_from(5);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    drop(status_wr);
    drop(hold_rd);
    let pid = child.id() as libc::pid_t;
    let shell = ShellIdentity::of_child(pid);
    let stdout: OwnedFd = child.stdout.take().expect("piped stdout").into();
    let stderr: OwnedFd = child.stderr.take().expect("piped stderr").into();
    // The Child is never waited through std: nginx's handler may have reaped it.
    drop(child);

    let mut out = QueryOutput::default();
    let mut status_text = Vec::new();
    let mut streams: Vec<(RawFd, u8)> = vec![
        (stdout.as_raw_fd(), 0),
        (stderr.as_raw_fd(), 1),
        (status_rd.as_raw_fd(), 2),
    ];
    let deadline = Instant::now() + timeout;
    let mut kill_deadline: Option<Instant> = None;
    while !streams.is_empty() {
        let now = Instant::now();
        if kill_deadline.is_none() && (now >= deadline || out.status.is_some()) {
            if out.status.is_none() {
                out.timed_out = true;
            }
            // Timeout, or done: either way nothing of the command's group may stay behind.
            shell.kill_group(pid);
            kill_deadline = Some(now + KILL_DRAIN);
        }
        let limit = kill_deadline.unwrap_or(deadline);
        if now >= limit && kill_deadline.is_some() {
            break;
        }
        let wait_ms = limit
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 1000) as i32;
        let mut pfds: Vec<libc::pollfd> = streams
            .iter()
            .map(|&(fd, _)| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, wait_ms) };
        if n <= 0 {
            continue;
        }
        let mut closed = Vec::new();
        for (i, p) in pfds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            let (fd, which) = streams[i];
            let sink = match which {
                0 => &mut out.stdout,
                1 => &mut out.stderr,
                _ => &mut status_text,
            };
            if !read_some(fd, sink) {
                closed.push(i);
            }
            if which == 2 && out.status.is_none() && status_text.ends_with(b"\n") {
                out.status = String::from_utf8_lossy(&status_text).trim().parse().ok();
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
    }
    // The shell exits on EOF if the kill did not reach it.
    drop(hold_wr);
    // Clean up the zombie unless nginx's handler already did (ECHILD).
    let mut st = 0;
    // SAFETY: plain syscall; the shell exits promptly after its status write or the kill.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    Ok(out)
}

/// What proves that the shell's pid still names the shell: a pidfd opened while
/// it was our child (the kernel's own proof), else its start time.
struct ShellIdentity {
    pidfd: Option<Pidfd>,
    start: Option<u64>,
}

impl ShellIdentity {
    /// Right after spawn: the pid is our child's unless nginx reaped it already;
    /// a pidfd whose process has us as parent (checked while it is alive) is it.
    fn of_child(pid: libc::pid_t) -> Self {
        let pidfd = Pidfd::open(pid);
        let start = start_time(pid);
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let ours = parent_pid(pid) == Some(me) && pidfd.as_ref().is_none_or(|p| p.signal(0));
        if ours {
            ShellIdentity { pidfd, start }
        } else {
            ShellIdentity {
                pidfd: None,
                start: None,
            }
        }
    }

    /// SIGKILL to the command's process group, only while `pid` provably is (or,
    /// reaped, was) our shell, the group's leader.
    fn kill_group(&self, pid: libc::pid_t) {
        let alive = match (&self.pidfd, self.start) {
            (Some(p), _) => p.signal(0),
            // No pidfd of the shell: its start time, read now (through a pidfd of
            // whatever the pid names, when the kernel has them).
            (None, Some(start)) => is_same(pid, start) == Identity::Ours,
            (None, None) => false,
        };
        // A group id stays reserved while its leader lives; once the leader is
        // reaped, only when no process has that number is the group still ours.
        if alive || (self.start.is_some() && start_time(pid).is_none()) {
            // SAFETY: plain syscall on the group of our own shell.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Appends what is readable; false at EOF or error.
fn read_some(fd: RawFd, sink: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 65536];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        if sink.len() < MAX_OUTPUT {
            sink.extend_from_slice(&buf[..n as usize]);
        }
        return true;
    }
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
}

/// Finds the JSON value in a dump: the whole output, or else from the first line
/// that starts with `[` or `{` (a server may print a banner first).
fn find_json(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("printed nothing".into());
    }
    let first_err = match serde_json::from_str::<Value>(trimmed) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') || t.starts_with('{') {
            let start = offset + (line.len() - t.len());
            let mut stream =
                serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
            if let Some(Ok(v)) = stream.next() {
                return Ok(v);
            }
        }
        offset += line.len();
    }
    Err(format!("printed no JSON ({first_err})"))
}

/// Parses a dump: a JSON array of plugin infos, or `{ "Protocol": ..., "Plugins": [...] }`.
///
/// # Errors
/// No JSON, JSON of another shape, an empty list, or a plugin that is not an object.
pub fn parse_dump(stdout: &[u8]) -> Result<Dump, String> {
    let text = String::from_utf8_lossy(stdout);
    let value = find_json(&text)?;
    let (protocol, list) = match value {
        Value::Array(list) => (DEFAULT_PROTOCOL.to_string(), list),
        Value::Object(mut obj) => {
            let protocol = match obj.remove("Protocol") {
                None | Some(Value::Null) => DEFAULT_PROTOCOL.to_string(),
                Some(Value::String(p)) => p,
                Some(other) => {
                    return Err(format!(
                        "printed a \"Protocol\" that is not a string: {other}"
                    ));
                }
            };
            match obj.remove("Plugins") {
                Some(Value::Array(list)) => (protocol, list),
                Some(_) => return Err("printed a \"Plugins\" field that is not an array".into()),
                None => return Err("printed a JSON object without \"Plugins\" (expected an array of plugin infos or {\"Protocol\", \"Plugins\"})".into()),
            }
        }
        other => {
            return Err(format!(
                "printed JSON that is not a plugin info list (a {}; expected an array of plugin infos or {{\"Protocol\", \"Plugins\"}})",
                json_type(&other)
            ));
        }
    };
    if list.is_empty() {
        return Err("lists no plugins".into());
    }
    let mut plugins = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        match item {
            Value::Object(obj) => plugins.push(obj),
            other => {
                return Err(format!(
                    "plugin #{} is a {}, not an object",
                    i + 1,
                    json_type(&other)
                ));
            }
        }
    }
    Ok(Dump { protocol, plugins })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Turns one server's dump into plugin infos.
fn infos_of(server: usize, dump: Dump) -> Result<Vec<PluginInfo>, String> {
    let Dump { protocol, plugins } = dump;
    let mut infos = Vec::with_capacity(plugins.len());
    for (i, mut p) in plugins.into_iter().enumerate() {
        let name = match p.remove("Name") {
            Some(Value::String(n)) if !n.is_empty() => n,
            _ => return Err(format!("plugin #{} has no \"Name\"", i + 1)),
        };
        let mut take = |k: &str| p.remove(k).unwrap_or(Value::Null);
        infos.push(PluginInfo {
            server,
            priority: take("Priority"),
            version: take("Version"),
            schema: take("Schema"),
            phases: take("Phases"),
            protocol: protocol.clone(),
            name,
        });
    }
    Ok(infos)
}

/// Queries one server: the command's result, or an error naming server, command,
/// exit status and the start of the output.
pub fn query_server(server: usize, def: &ServerDef) -> Result<Vec<PluginInfo>, String> {
    let what = format!(
        "plugin server '{}': query command {:?}",
        def.name, def.query_command
    );
    let out = run_query(
        &def.query_command,
        &def.path,
        Duration::from_millis(def.query_timeout),
    )
    .map_err(|e| format!("{what} {e}"))?;
    let quoted = || {
        format!(
            "stdout: {}; stderr: {}",
            quote(&out.stdout),
            quote(&out.stderr)
        )
    };
    if out.timed_out {
        return Err(format!(
            "{what} timed out after {} ms (killed); {}",
            def.query_timeout,
            quoted()
        ));
    }
    match out.status {
        Some(0) => {}
        Some(code) => {
            return Err(format!(
                "{what} failed with exit status {code}; {}",
                quoted()
            ));
        }
        None => return Err(format!("{what} ended without an exit status; {}", quoted())),
    }
    parse_dump(&out.stdout)
        .and_then(|dump| infos_of(server, dump))
        .map_err(|e| format!("{what} {e} (exit status 0); {}", quoted()))
}

/// Queries every server in parallel (one scoped thread each, all joined before
/// returning) and checks that no plugin name is claimed twice.
///
/// # Errors
/// Every failing server's message, one per line.
pub fn query_all(defs: &[ServerDef]) -> Result<Vec<PluginInfo>, String> {
    let results: Vec<Result<Vec<PluginInfo>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = defs
            .iter()
            .enumerate()
            .map(|(i, def)| s.spawn(move || query_server(i + 1, def)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("query thread panicked".into()))
            })
            .collect()
    });
    let mut errors = Vec::new();
    let mut infos = Vec::new();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for r in results {
        match r {
            Ok(list) => {
                for info in list {
                    if let Some(&first) = owner.get(&info.name) {
                        errors.push(format!(
                            "plugin '{}' is served by both plugin server '{}' and '{}'",
                            info.name,
                            defs[first - 1].name,
                            defs[info.server - 1].name
                        ));
                        continue;
                    }
                    owner.insert(info.name.clone(), info.server);
                    infos.push(info);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(infos)
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sleeper;

    fn def(name: &str, query: &str, timeout: u64) -> ServerDef {
        ServerDef {
            name: name.into(),
            socket: format!("/tmp/{name}.socket"),
            start_command: None,
            query_command: query.into(),
            path: "/usr/bin:/bin".into(),
            query_timeout: timeout,
            stop_timeout: 5000,
            respawn_delay: 1000,
            respawn_delay_max: 30000,
            respawn_reset: 60000,
            ready_timeout: 1000,
            connect_timeout: 1000,
            send_timeout: 5000,
            read_timeout: 60000,
            fail_open: false,
            max_message_size: 16 << 20,
            log_window: 1000,
            log_queue_max: 4096,
            hang_timeout: 5000,
            standby: Default::default(),
        }
    }

    const GO_DUMP: &str = r#"{"Protocol":"ProtoBuf:1","SocketPath":"/x/go-hello.socket","Plugins":[{"Name":"go-hello","Phases":["access","response","log"],"Version":"0.1","Priority":1,"Schema":{"name":"go-hello","fields":[{"config":{"type":"record","fields":[{"message":{"type":"string"}}]}}]}}]}"#;
    const PY_DUMP: &str = r#"[{"Name":"py-hello","Phases":["access"],"Priority":100,"Version":"0.1.0","Schema":{"name":"py-hello","fields":[]}}]"#;

    #[test]
    fn object_form_keeps_its_protocol() {
        let dump = parse_dump(GO_DUMP.as_bytes()).unwrap();
        assert_eq!(dump.protocol, "ProtoBuf:1");
        let infos = infos_of(1, dump).unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].name, "go-hello");
        assert_eq!(infos[0].priority, Value::from(1));
        assert_eq!(infos[0].version, Value::from("0.1"));
        assert_eq!(
            infos[0].phases,
            serde_json::json!(["access", "response", "log"])
        );
        assert_eq!(infos[0].schema["name"], Value::from("go-hello"));
    }

    #[test]
    fn array_form_defaults_to_msgpack() {
        let dump = parse_dump(format!("{PY_DUMP}\n").as_bytes()).unwrap();
        assert_eq!(dump.protocol, DEFAULT_PROTOCOL);
        assert_eq!(infos_of(2, dump).unwrap()[0].server, 2);
    }

    #[test]
    fn every_plugin_of_a_server_is_kept() {
        let two = r#"[{"Name":"a","Priority":1,"Version":"1.0"},{"Name":"b","Priority":2,"Version":"2.0"}]"#;
        let infos = infos_of(1, parse_dump(two.as_bytes()).unwrap()).unwrap();
        let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_banner_before_the_json_is_skipped() {
        let out = format!("starting up...\nwarning: x\n{PY_DUMP}\n");
        assert_eq!(parse_dump(out.as_bytes()).unwrap().plugins.len(), 1);
    }

    #[test]
    fn bad_dumps_are_rejected_with_a_reason() {
        let cases = [
            ("", "printed nothing"),
            ("hello world", "printed no JSON"),
            ("42", "not a plugin info list (a number"),
            (
                r#"{"Plugins": 3}"#,
                "\"Plugins\" field that is not an array",
            ),
            (r#"{"Name": "x"}"#, "without \"Plugins\""),
            ("[]", "lists no plugins"),
            ("[1]", "plugin #1 is a number"),
            (
                r#"{"Protocol": 1, "Plugins": []}"#,
                "\"Protocol\" that is not a string",
            ),
        ];
        for (input, expected) in cases {
            let err = parse_dump(input.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn a_plugin_without_a_name_is_an_error() {
        let err =
            infos_of(1, parse_dump(br#"[{"Name":"a"},{"Priority":1}]"#).unwrap()).unwrap_err();
        assert_eq!(err, "plugin #2 has no \"Name\"");
    }

    #[test]
    fn query_reads_stdout_stderr_and_status() {
        let out = run_query(
            "echo out; echo err >&2; exit 3",
            "/usr/bin:/bin",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status, Some(3));
        assert!(!out.timed_out);
    }

    #[test]
    fn query_uses_the_defs_path() {
        let dir = std::env::temp_dir().join(format!("kps-query-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("my-dump");
        std::fs::write(&prog, format!("#!/bin/sh\necho '{PY_DUMP}'\n")).unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut d = def("py", "my-dump -dump", 10_000);
        d.path = format!("{}:/usr/bin:/bin", dir.display());
        let infos = query_server(1, &d).unwrap();
        assert_eq!(infos[0].name, "py-hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn query_errors_name_server_command_status_and_output() {
        let err =
            query_server(1, &def("bad", "echo oops; echo broken >&2; exit 2", 10_000)).unwrap_err();
        assert!(
            err.starts_with(
                "plugin server 'bad': query command \"echo oops; echo broken >&2; exit 2\""
            ),
            "{err}"
        );
        assert!(err.contains("exit status 2"), "{err}");
        assert!(err.contains("stdout: \"oops\""), "{err}");
        assert!(err.contains("stderr: \"broken\""), "{err}");

        let err = query_server(1, &def("garbage", "echo not-json", 10_000)).unwrap_err();
        assert!(
            err.contains("printed no JSON")
                && err.contains("exit status 0")
                && err.contains("not-json"),
            "{err}"
        );

        let err = query_server(1, &def("missing", "/nonexistent/prog -dump", 10_000)).unwrap_err();
        assert!(err.contains("exit status 127"), "{err}");
    }

    #[test]
    fn query_timeout_kills_the_whole_group() {
        let marker = std::env::temp_dir().join(format!("kps-query-timeout-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        // A background child that would write the marker later must die with the group.
        let cmd = format!(
            "(sleep 1; touch {}) & echo partial; sleep 30",
            marker.display()
        );
        let started = Instant::now();
        let err = query_server(1, &def("slow", &cmd, 200)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not bounded: {:?}",
            started.elapsed()
        );
        assert!(
            err.contains("timed out after 200 ms") && err.contains("partial"),
            "{err}"
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "a process of the timed-out group survived"
        );
    }

    /// The descriptors of a process, by number.
    fn fds_of(pid: i32) -> Vec<i32> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        fds
    }

    #[test]
    fn a_query_command_inherits_only_stdin_stdout_and_stderr() {
        // A descriptor of ours without CLOEXEC, as nginx's listening sockets are.
        // SAFETY: dup of our stderr; closed below.
        let leak = unsafe { libc::dup(2) };
        assert!(leak > 2);
        let dir = std::env::temp_dir().join(format!("kps-query-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let cmd = format!(
            "sh -c 'echo $$ > {}.tmp; mv {}.tmp {}; exec sleep 3'",
            pidfile.display(),
            pidfile.display(),
            pidfile.display()
        );
        let runner =
            std::thread::spawn(move || run_query(&cmd, "/usr/bin:/bin", Duration::from_secs(20)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the query command did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Wait for the exec of sleep (the pid file is written by the sh before it).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() != "sleep")
        {
            assert!(Instant::now() < deadline, "no exec of sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        // sleep's own start-up opens and closes files (locale data): wait for the
        // set to settle; an inherited descriptor would never leave it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut fds = fds_of(pid);
        while fds != [0, 1, 2] && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            fds = fds_of(pid);
        }
        assert_eq!(fds, [0, 1, 2]);
        let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
        assert_eq!(stdin, std::path::Path::new("/dev/null"));
        let out = runner.join().unwrap().unwrap();
        assert_eq!(out.status, Some(0));
        // SAFETY: closing our own dup.
        unsafe { libc::close(leak) };
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_group_is_not_signalled_when_the_pid_names_another_process() {
        // A shell identity of a process that exited; its pid then written where
        // the shell's was: the kill path leaves the unrelated process alone.
        let mut gone = Command::new("true").process_group(0).spawn().unwrap();
        let gone_pid = gone.id() as i32;
        let identity = ShellIdentity::of_child(gone_pid);
        gone.wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut other = sleeper(0);
        let other_pid = other.id() as i32;
        identity.kill_group(other_pid);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unrelated process group was killed"
        );
        // The identity of the live process itself does reach its group.
        ShellIdentity::of_child(other_pid).kill_group(other_pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while other.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "our own group was not killed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn all_servers_in_parallel_and_duplicate_names_rejected() {
        // Each command waits for the other's marker: run one after the other, both would time out.
        let dir = std::env::temp_dir().join(format!("kps-query-par-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ma, mb) = (dir.join("a"), dir.join("b"));
        let wait_for = |mine: &std::path::Path, other: &std::path::Path, dump: &str| {
            format!(
                "touch {}; i=0; while [ ! -e {} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; [ -e {} ] && echo '{dump}'",
                mine.display(),
                other.display(),
                other.display()
            )
        };
        let a = def("a", &wait_for(&ma, &mb, PY_DUMP), 10_000);
        let b = def("b", &wait_for(&mb, &ma, GO_DUMP), 10_000);
        let infos = query_all(&[a.clone(), b]).unwrap();
        assert_eq!(
            infos
                .iter()
                .map(|i| (i.server, i.name.as_str()))
                .collect::<Vec<_>>(),
            [(1, "py-hello"), (2, "go-hello")]
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let a = def("a", &format!("echo '{PY_DUMP}'"), 10_000);
        let dup = def("dup", &format!("echo '{PY_DUMP}'"), 10_000);
        let err = query_all(&[a, dup]).unwrap_err();
        assert_eq!(
            err,
            "plugin 'py-hello' is served by both plugin server 'a' and 'dup'"
        );
    }
}
