//! Readiness: does the server's unix socket accept a connection? Checked from the
//! supervisor thread with a non-blocking connect (no nginx cosocket, so no `crit`
//! connect errors in error.log while a server starts).

use std::ffi::CString;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Probe schedule of a starting server.
#[derive(Debug)]
pub struct Probe {
    pub next: Instant,
    /// After this the probe slows down and a warning is logged once.
    pub ready_deadline: Instant,
    pub warned: bool,
}

impl Probe {
    pub fn new(now: Instant, ready_timeout: Duration) -> Self {
        Probe {
            next: now,
            ready_deadline: now + ready_timeout,
            warned: false,
        }
    }
}

fn sockaddr(path: &str) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in socket path"))?;
    let bytes = bytes.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Connects to `path` without blocking (a full listen queue must not block the
/// caller). Ok with the connected socket, still non-blocking, when something
/// accepts; a full backlog (`EAGAIN`) is an error of that kind.
pub fn connect_probe(path: &str) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: plain syscalls; the fd is owned by the stream (closed on drop)
    // from the moment it exists.
    unsafe {
        let fd = libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = UnixStream::from_raw_fd(fd);
        if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0 {
            return Ok(stream);
        }
        Err(io::Error::last_os_error())
    }
}

/// Ok when something accepts connections on `path`; the connection is closed at once.
/// A full backlog (`EAGAIN`) counts as listening.
pub fn probe_socket(path: &str) -> io::Result<()> {
    match connect_probe(path) {
        Ok(_) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EAGAIN)
                || e.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes a socket file nobody listens on (left by a killed server), so that a
/// server which does not remove it itself can bind, and so that probes and
/// requests see "no such file" instead of a misleading "connection refused".
pub fn remove_stale_socket(path: &str) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket
        && probe_socket(path)
            .err()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
    {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tmp_socket;
    use std::os::unix::net::UnixListener;
    use std::path::Path;

    #[test]
    fn listening_socket_is_ready_and_stale_one_is_removed() {
        let path = tmp_socket("probe");
        assert_eq!(
            probe_socket(&path).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        let listener = UnixListener::bind(&path).unwrap();
        probe_socket(&path).unwrap();
        remove_stale_socket(&path);
        assert!(
            Path::new(&path).exists(),
            "a live socket must not be removed"
        );
        drop(listener);
        assert_eq!(
            probe_socket(&path).unwrap_err().raw_os_error(),
            Some(libc::ECONNREFUSED)
        );
        remove_stale_socket(&path);
        assert!(!Path::new(&path).exists());
    }

    #[test]
    fn a_regular_file_is_not_ready_and_not_removed() {
        let path = std::env::temp_dir().join(format!("kps-probe-file-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        assert!(probe_socket(path.to_str().unwrap()).is_err());
        remove_stale_socket(path.to_str().unwrap());
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }
}
