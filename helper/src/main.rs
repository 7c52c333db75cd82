//! `kps-helper`: forks plugin servers for the supervisor thread, reaps them and
//! reports their output and real exit status.
//!
//! Why a process of its own: nginx's SIGCHLD handler calls `waitpid(-1)` in every
//! worker, so a server forked by the worker could be reaped by nginx and its exit
//! status lost. The helper's children are its own.
//!
//! Line protocol (one message per line, fields separated by TAB, strings escaped
//! with `\\`, `\t`, `\n`):
//! - stdin (commands): `spawn <id> <PATH> <command>`, `kill <pid> <signal> [<start>]`.
//! - stdout (reports): `spawned <id> <pid> <start>`, `spawnfail <id> <message>`,
//!   `out <pid> <line>`, `exit <pid> code <n>` or `exit <pid> signal <n>`.
//!
//! `<start>` is the child's start time (`/proc/<pid>/stat` field 22): a kill that
//! names one is only sent to the child that started then (never to a later child
//! that got the same pid). A child gets `/dev/null` as stdin, the pipe as stdout
//! and stderr, and no other descriptor. An output line longer than [`MAX_LINE`]
//! is cut there (the rest of the line is dropped and its length noted).
//!
//! The helper dies with its parent: `PR_SET_PDEATHSIG` delivers SIGTERM when the
//! supervisor thread that spawned it ends, and EOF on stdin means the same. Either
//! way it kills the process groups of its children with SIGKILL, reaps them and
//! exits. Each child also gets `PR_SET_PDEATHSIG(SIGKILL)`, so a helper killed with
//! SIGKILL still takes its servers along.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::raw::c_int;
use std::ptr;

/// Longest output line forwarded; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;
/// How long the helper waits for killed children before exiting anyway.
const EXIT_REAP_MS: i32 = 2000;

#[allow(dead_code)] // shared with the query runner, which uses cloexec_from
mod fds;
#[allow(dead_code)] // shared with the supervisor, which uses all of it
mod procid;
mod wire;

use wire::{escape, unescape};

/// One forked server: the read end of its merged stdout/stderr and a partial line.
struct Child {
    pid: libc::pid_t,
    /// Start time (`/proc/<pid>/stat` field 22), 0 when unknown.
    start: u64,
    out_fd: c_int,
    partial: Vec<u8>,
    /// Bytes dropped from the current (over-long) line.
    cut: usize,
    reaped: bool,
}

struct Helper {
    children: HashMap<libc::pid_t, Child>,
    sigfd: c_int,
    stdin_buf: Vec<u8>,
    stdin_open: bool,
    stdout: io::Stdout,
}

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

impl Helper {
    fn report(&mut self, line: &str) {
        let mut lock = self.stdout.lock();
        let ok = lock.write_all(line.as_bytes()).is_ok()
            && lock.write_all(b"\n").is_ok()
            && lock.flush().is_ok();
        drop(lock);
        if !ok {
            // The supervisor is gone: nothing may outlive it.
            self.shutdown();
        }
    }

    /// Forks `/bin/sh -c "exec <command>"` in a new process group with PATH set.
    fn spawn(&mut self, id: &str, path: &str, command: &str) {
        match self.fork_server(path, command) {
            Ok((pid, start)) => self.report(&format!("spawned\t{id}\t{pid}\t{start}")),
            Err(msg) => self.report(&format!("spawnfail\t{id}\t{}", escape(msg.as_bytes()))),
        }
    }

    fn fork_server(&mut self, path: &str, command: &str) -> Result<(libc::pid_t, u64), String> {
        let sh = CString::new("/bin/sh").unwrap();
        let arg_c = CString::new("-c").unwrap();
        let script = CString::new(format!("exec {command}"))
            .map_err(|_| "command contains a NUL byte".to_string())?;
        let argv = [sh.as_ptr(), arg_c.as_ptr(), script.as_ptr(), ptr::null()];
        // The environment is built before fork: the child only calls async-signal-safe functions.
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != "PATH")
            .filter_map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                CString::new(kv).ok()
            })
            .collect();
        env.push(
            CString::new(format!("PATH={path}"))
                .map_err(|_| "PATH contains a NUL byte".to_string())?,
        );
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
        envp.push(ptr::null());
        let devnull = CString::new("/dev/null").unwrap();

        let mut fds = [0 as c_int; 2];
        // SAFETY: fds is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(errno_msg("pipe"));
        }
        let (rd, wr) = (fds[0], fds[1]);
        // SAFETY: getpid has no preconditions.
        let helper_pid = unsafe { libc::getpid() };
        // SAFETY: the helper is single-threaded; the child only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let msg = errno_msg("fork");
            // SAFETY: closing fds we own.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
            return Err(msg);
        }
        if pid == 0 {
            // SAFETY: in the child, before exec; all pointers were prepared above.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // The helper may have died between fork and prctl: then nobody would
                // ever kill this server, so it must not start.
                if libc::getppid() != helper_pid {
                    libc::_exit(1);
                }
                libc::setpgid(0, 0);
                let null = libc::open(devnull.as_ptr(), libc::O_RDONLY);
                if null >= 0 {
                    libc::dup2(null, 0);
                }
                libc::dup2(wr, 1);
                libc::dup2(wr, 2);
                // Nothing else crosses into the server: not the helper's pipes, not
                // the other servers' output pipes, not the /dev/null fd just opened.
                fds::close_from(3);
                // nginx ignores SIGPIPE and the helper blocks some signals: servers start clean.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut());
                for sig in 1..32 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::signal(sig, libc::SIG_DFL);
                    }
                }
                libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the write end; setting our read end non-blocking.
        unsafe {
            libc::close(wr);
            let flags = libc::fcntl(rd, libc::F_GETFL);
            libc::fcntl(rd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            // Also set the group from the parent side, so that a kill right after spawn hits it.
            libc::setpgid(pid, pid);
        }
        // Unreaped, the child keeps its pid: this is its start time.
        let start = procid::start_time(pid).unwrap_or(0);
        self.children.insert(
            pid,
            Child {
                pid,
                start,
                out_fd: rd,
                partial: Vec::new(),
                cut: 0,
                reaped: false,
            },
        );
        Ok((pid, start))
    }

    /// Signals the process group of one of our own unreaped children (never any
    /// other pid: an unreaped child keeps its pid, and as the group's leader it
    /// keeps the group id). With `start`, only the child that started then.
    fn kill(&mut self, pid: libc::pid_t, sig: c_int, start: Option<u64>) {
        let ours = self
            .children
            .get(&pid)
            .is_some_and(|c| !c.reaped && start.is_none_or(|s| s == c.start));
        if ours {
            // SAFETY: plain syscall.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    fn command(&mut self, line: &str) {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["spawn", id, path, command] => {
                let (path, command) = (unescape(path), unescape(command));
                self.spawn(id, &path, &command);
            }
            ["kill", pid, sig] => {
                if let (Ok(pid), Ok(sig)) = (pid.parse(), sig.parse()) {
                    self.kill(pid, sig, None);
                }
            }
            ["kill", pid, sig, start] => {
                if let (Ok(pid), Ok(sig), Ok(start)) = (pid.parse(), sig.parse(), start.parse()) {
                    self.kill(pid, sig, Some(start));
                }
            }
            _ => eprintln!("kps-helper: unknown command {line:?}"),
        }
    }

    fn read_stdin(&mut self) {
        let mut buf = [0u8; 8192];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                return;
            }
            self.stdin_open = false;
            return;
        }
        self.stdin_buf.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = self.stdin_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdin_buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.command(&line);
        }
    }

    /// Reads what a child wrote; forwards whole lines. Returns false at EOF.
    fn read_output(&mut self, pid: libc::pid_t) -> bool {
        let mut lines = Vec::new();
        let mut open = true;
        if let Some(child) = self.children.get_mut(&pid) {
            let mut buf = [0u8; 8192];
            loop {
                // SAFETY: reading into a local buffer from our own fd.
                let n = unsafe { libc::read(child.out_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    for piece in buf[..n as usize].split_inclusive(|&b| b == b'\n') {
                        let (text, ends) = match piece.split_last() {
                            Some((b'\n', text)) => (text, true),
                            _ => (piece, false),
                        };
                        let room = MAX_LINE.saturating_sub(child.partial.len());
                        child
                            .partial
                            .extend_from_slice(&text[..text.len().min(room)]);
                        child.cut += text.len().saturating_sub(room);
                        if ends {
                            lines.push(finish_line(child));
                        }
                    }
                    continue;
                }
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if err.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                }
                open = false;
                if !child.partial.is_empty() {
                    lines.push(finish_line(child));
                }
                break;
            }
        }
        for line in lines {
            if !line.is_empty() {
                self.report(&format!("out\t{pid}\t{}", escape(&line)));
            }
        }
        open
    }

    fn close_output(&mut self, pid: libc::pid_t) {
        if let Some(child) = self.children.get_mut(&pid)
            && child.out_fd >= 0
        {
            // SAFETY: closing our own fd once.
            unsafe { libc::close(child.out_fd) };
            child.out_fd = -1;
        }
        self.forget_if_done(pid);
    }

    fn forget_if_done(&mut self, pid: libc::pid_t) {
        if self
            .children
            .get(&pid)
            .is_some_and(|c| c.reaped && c.out_fd < 0)
        {
            self.children.remove(&pid);
        }
    }

    /// Reaps every exited child and reports its status after its last output.
    fn reap(&mut self, report: bool) {
        loop {
            // SAFETY: siginfo_t is plain data filled by waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // Look without reaping: while the child is a zombie, its pid and group id
            // stay reserved, so the group kill below reaches only its own group.
            // SAFETY: plain syscall with a valid siginfo pointer.
            let rc = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: si_pid is set by waitid (0 when no child has exited).
            let pid = unsafe { info.si_pid() };
            if rc != 0 || pid <= 0 {
                break;
            }
            if self.children.contains_key(&pid) {
                // Leftovers of the server's group (its own children) go with it.
                // SAFETY: plain syscall.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let mut status: c_int = 0;
            // SAFETY: plain syscall with a valid status pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
                break;
            }
            if !self.children.contains_key(&pid) {
                continue;
            }
            if self.children[&pid].out_fd >= 0 && !self.read_output(pid) {
                self.close_output(pid);
            }
            if let Some(child) = self.children.get_mut(&pid) {
                child.reaped = true;
            }
            if report {
                let what = if libc::WIFSIGNALED(status) {
                    format!("signal\t{}", libc::WTERMSIG(status))
                } else {
                    format!("code\t{}", libc::WEXITSTATUS(status))
                };
                self.report(&format!("exit\t{pid}\t{what}"));
            }
            self.forget_if_done(pid);
        }
    }

    fn read_signals(&mut self) {
        // SAFETY: signalfd_siginfo is plain data; reading into it from our signalfd.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        loop {
            let n = unsafe {
                libc::read(
                    self.sigfd,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            if n <= 0 {
                break;
            }
            if info.ssi_signo as c_int != libc::SIGCHLD {
                // SIGTERM (parent death) or SIGINT.
                self.shutdown();
            }
        }
        self.reap(true);
    }

    /// Kills every child's process group, reaps them (bounded) and exits.
    fn shutdown(&mut self) -> ! {
        let pids: Vec<libc::pid_t> = self
            .children
            .values()
            .filter(|c| !c.reaped)
            .map(|c| c.pid)
            .collect();
        for pid in &pids {
            // SAFETY: plain syscall on our own children's groups.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let mut waited = 0;
        while self.children.values().any(|c| !c.reaped) && waited < EXIT_REAP_MS {
            let mut status = 0;
            // SAFETY: plain syscall.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                if let Some(c) = self.children.get_mut(&pid) {
                    c.reaped = true;
                }
                continue;
            }
            if pid < 0 {
                break;
            }
            // SAFETY: plain sleep.
            unsafe { libc::usleep(10_000) };
            waited += 10;
        }
        std::process::exit(0);
    }

    fn run(&mut self) -> ! {
        loop {
            if !self.stdin_open {
                self.shutdown();
            }
            let mut pfds = vec![
                libc::pollfd {
                    fd: 0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sigfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let mut pids = Vec::new();
            for c in self.children.values() {
                if c.out_fd >= 0 {
                    pfds.push(libc::pollfd {
                        fd: c.out_fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    pids.push(c.pid);
                }
            }
            // SAFETY: pfds is a valid array of pollfd.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            // Output first, so that a child's last lines precede its exit report.
            for (i, pid) in pids.iter().enumerate() {
                if pfds[i + 2].revents != 0 && !self.read_output(*pid) {
                    self.close_output(*pid);
                }
            }
            if pfds[1].revents != 0 {
                self.read_signals();
            }
            if pfds[0].revents != 0 {
                self.read_stdin();
            }
        }
    }
}

/// Ends the current output line of `child`: its text, with the length of what
/// was cut from it.
fn finish_line(child: &mut Child) -> Vec<u8> {
    let mut line = std::mem::take(&mut child.partial);
    if child.cut > 0 {
        line.extend_from_slice(format!(" [{} more bytes dropped]", child.cut).as_bytes());
        child.cut = 0;
    }
    line
}

/// Closes every inherited descriptor above stderr (nginx's listening sockets, ...).
fn close_inherited_fds() {
    // SAFETY: at start-up, before the helper opens anything of its own.
    unsafe { fds::close_from(3) };
}

fn main() {
    let parent: libc::pid_t = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    // SAFETY: plain syscalls at start-up, single-threaded.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
        if parent != 0 && libc::getppid() != parent {
            // The parent died before prctl took effect.
            std::process::exit(0);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    close_inherited_fds();
    // SAFETY: building a signal set and a signalfd for it.
    let sigfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigprocmask(libc::SIG_BLOCK, &set, ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if sigfd < 0 {
        eprintln!("kps-helper: {}", errno_msg("signalfd"));
        std::process::exit(1);
    }
    let mut helper = Helper {
        children: HashMap::new(),
        sigfd,
        stdin_buf: Vec::new(),
        stdin_open: true,
        stdout: io::stdout(),
    };
    helper.run();
}
