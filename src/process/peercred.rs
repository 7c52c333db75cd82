//! Who listens on a socket: the readiness probe of a managed server asks the
//! kernel for the peer credentials (`SO_PEERCRED`) of its probe connection, which
//! name the process that called `listen`. Only the spawned server or a process of
//! its group makes the server ready; another process on its socket is reported.

use std::io;
use std::os::fd::AsRawFd;

use super::probe::connect_probe;

/// What a probe of a managed server's socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum Listener {
    /// The server (or a process of its group) accepts connections.
    Ours,
    /// Another process listens there (pid as the kernel reports it; 0 when it
    /// lives in another pid namespace).
    Foreign(i32),
}

/// The pid of the process that listens at the other end of `fd`.
fn peer_pid(fd: libc::c_int) -> io::Result<i32> {
    // SAFETY: ucred is plain data; getsockopt fills at most `len` bytes of it.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cred.pid)
    }
}

/// Whether `listener` is `server` or in the process group `server` leads.
pub fn belongs_to(listener: i32, server: i32) -> bool {
    // SAFETY: plain syscall.
    listener > 0
        && server > 0
        && (listener == server || unsafe { libc::getpgid(listener) } == server)
}

/// Probes `path` and says who accepted. An error when nothing accepts yet, and
/// also when the backlog is full (`EAGAIN`: who listens cannot be told then).
pub fn probe_server(path: &str, server: i32) -> io::Result<Listener> {
    let stream = connect_probe(path)?;
    let pid = peer_pid(stream.as_raw_fd())?;
    Ok(if belongs_to(pid, server) {
        Listener::Ours
    } else {
        Listener::Foreign(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{sleeper, tmp_socket};
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_listener_is_told_apart_from_the_server() {
        let path = tmp_socket("peercred");
        assert!(probe_server(&path, 1).is_err(), "no socket yet");
        let listener = UnixListener::bind(&path).unwrap();
        let me = std::process::id() as i32;
        assert_eq!(probe_server(&path, me).unwrap(), Listener::Ours);
        // Some other process as "the server": this test process is a foreign listener.
        let mut other = sleeper(0);
        assert_eq!(
            probe_server(&path, other.id() as i32).unwrap(),
            Listener::Foreign(me)
        );
        other.kill().unwrap();
        other.wait().unwrap();
        drop(listener);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_member_of_the_servers_group_belongs_to_it() {
        let mut leader = sleeper(0);
        let lead = leader.id() as i32;
        let mut member = sleeper(lead);
        assert!(belongs_to(member.id() as i32, lead));
        assert!(belongs_to(lead, lead));
        assert!(!belongs_to(std::process::id() as i32, lead));
        for c in [&mut leader, &mut member] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
