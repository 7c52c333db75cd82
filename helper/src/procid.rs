//! Process identity, shared by `kps-helper` and the supervisor (`src/process`
//! includes this file): a pid number alone may name another process once ours
//! has exited and been reaped, so a signal to a process we did not just fork
//! first proves that the pid still names the process we recorded.
//!
//! The proof is the start time (`/proc/<pid>/stat` field 22, clock ticks since
//! boot), recorded when the process was known to be ours, read again through a
//! pidfd opened before the read (so the read and the later signal see one process).

use std::os::raw::c_int;

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot; `None` when there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 4 of `/proc/<pid>/stat`: the parent's pid; `None` when there is no
/// such process.
pub fn parent_pid(pid: i32) -> Option<i32> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 4)?.parse().ok()
}

/// The start time in the text of a `stat` file.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// Field `n` (counted from 1, at least 3) in the text of a `stat` file. The
/// command name (field 2) is in parentheses and may contain blanks and
/// parentheses: fields are counted after its last `)`, where field 3 comes first.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(n.checked_sub(3)?)
}

/// A pidfd (Linux >= 5.3): it names one process for its whole life, whatever
/// later gets the same pid number.
pub struct Pidfd(c_int);

impl Pidfd {
    /// `None` when there is no such process or the kernel has no pidfds.
    pub fn open(pid: i32) -> Option<Pidfd> {
        // SAFETY: plain syscall; the fd returned is ours to close.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        (fd >= 0).then_some(Pidfd(fd as c_int))
    }

    /// Sends `sig` to exactly this process (0: only checks that it has not been
    /// reaped). True on success.
    pub fn signal(&self, sig: c_int) -> bool {
        // SAFETY: plain syscall on our own fd; no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

impl Drop for Pidfd {
    fn drop(&mut self) {
        // SAFETY: closing our own fd once.
        unsafe { libc::close(self.0) };
    }
}

/// What a pid names now, compared with a recorded start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The recorded process (for [`signal_if_same`]: it got the signal).
    Ours,
    /// No process has that pid any more: nothing was signalled.
    Gone,
    /// The pid names another process (another start time): nothing was signalled.
    Foreign,
}

/// Whether `pid` still names the process that started at `start`.
pub fn is_same(pid: i32, start: u64) -> Identity {
    let pidfd = Pidfd::open(pid);
    let seen = start_time(pid);
    // The pidfd was opened before the read: if it still names a live process,
    // the start time read was that process's.
    if pidfd.as_ref().is_some_and(|p| !p.signal(0)) {
        return Identity::Gone;
    }
    match seen {
        None => Identity::Gone,
        Some(s) if s == start => Identity::Ours,
        Some(_) => Identity::Foreign,
    }
}

/// Sends `sig` to the process `pid` that started at `start`, and to its whole
/// process group when it leads one (servers and query commands run in their own
/// group; the group id stays reserved while its leader exists). Nothing is sent
/// when the pid now names another process or none.
pub fn signal_if_same(pid: i32, start: u64, sig: c_int) -> Identity {
    let pidfd = Pidfd::open(pid);
    let seen = start_time(pid);
    match seen {
        None => return Identity::Gone,
        Some(s) if s != start => return Identity::Foreign,
        Some(_) => {}
    }
    match pidfd {
        Some(p) => {
            // Checked just before the group signal: the leader still holds the group id.
            if !p.signal(0) {
                return Identity::Gone;
            }
            // SAFETY: plain syscalls.
            if unsafe { libc::getpgid(pid) } == pid {
                unsafe { libc::kill(-pid, sig) };
            }
            p.signal(sig);
        }
        // No pidfds (kernel < 5.3): the start time was compared just now.
        // SAFETY: plain syscalls.
        None => unsafe {
            if libc::getpgid(pid) == pid {
                libc::kill(-pid, sig);
            } else {
                libc::kill(pid, sig);
            }
        },
    }
    Identity::Ours
}
