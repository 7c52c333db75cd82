//! Leaving a child only the descriptors it was given, between fork and exec
//! (shared by `kps-helper` and the query runner; `src/process` includes this
//! file). Async-signal-safe: no allocation, only syscalls.

use std::os::raw::c_int;

/// `CLOSE_RANGE_CLOEXEC` (Linux >= 5.11).
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Closes every descriptor >= `first`: `close_range` (Linux >= 5.9), else the
/// entries of `/proc/self/fd`, else every number up to the descriptor limit.
///
/// # Safety
/// Only in a child between fork and exec, or in a process that uses no
/// descriptor >= `first` (they are closed under its feet).
pub unsafe fn close_from(first: c_int) {
    // SAFETY: forwarded contract.
    unsafe { sweep(first, false) }
}

/// Marks every descriptor >= `first` close-on-exec: for a child whose runtime
/// still needs its own descriptors until exec (Rust's `Command` reports exec
/// failures through one).
///
/// # Safety
/// Only in a child between fork and exec.
pub unsafe fn cloexec_from(first: c_int) {
    // SAFETY: forwarded contract.
    unsafe { sweep(first, true) }
}

unsafe fn sweep(first: c_int, cloexec: bool) {
    let flags = if cloexec { CLOSE_RANGE_CLOEXEC } else { 0 };
    // SAFETY: plain syscalls on our own descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, flags) == 0 {
            return;
        }
        if sweep_listed(first, cloexec) {
            return;
        }
        let mut lim: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as c_int
        } else {
            1024
        };
        for fd in first..max {
            apply(fd, cloexec);
        }
    }
}

unsafe fn apply(fd: c_int, cloexec: bool) {
    // SAFETY: plain syscalls; a number that is not open gives EBADF.
    unsafe {
        if cloexec {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        } else {
            libc::close(fd);
        }
    }
}

/// Applies to the open descriptors >= `first` listed in `/proc/self/fd`, read
/// with `getdents64` into a stack buffer. False when the directory cannot be read.
unsafe fn sweep_listed(first: c_int, cloexec: bool) -> bool {
    // SAFETY: plain syscalls; the buffer is ours and records are bounds-checked.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return false;
        }
        // Closing while listing may skip entries: list again until a pass finds nothing.
        loop {
            let mut found = false;
            libc::lseek(dir, 0, libc::SEEK_SET);
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
                if n <= 0 {
                    break;
                }
                let n = n as usize;
                let mut off = 0usize;
                // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                while off + 19 < n {
                    let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                    if reclen == 0 {
                        break;
                    }
                    let mut fd: c_int = 0;
                    let mut digits = 0;
                    for &b in &buf[off + 19..(off + reclen).min(n)] {
                        if !b.is_ascii_digit() {
                            break;
                        }
                        fd = fd.saturating_mul(10).saturating_add((b - b'0') as c_int);
                        digits += 1;
                    }
                    if digits > 0 && fd >= first && fd != dir {
                        apply(fd, cloexec);
                        found = true;
                    }
                    off += reclen;
                }
            }
            if cloexec || !found {
                break;
            }
        }
        libc::close(dir);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_fallback_closes_every_fd_from_first() {
        // Run in a forked child, so that the test process keeps its descriptors.
        // SAFETY: the child only makes syscalls and exits.
        unsafe {
            let extra = libc::dup(2);
            let high = libc::dup2(2, 200);
            assert!(extra > 2 && high == 200);
            let pid = libc::fork();
            if pid == 0 {
                sweep_listed(3, false);
                let open =
                    libc::fcntl(extra, libc::F_GETFD) >= 0 || libc::fcntl(200, libc::F_GETFD) >= 0;
                let kept = libc::fcntl(2, libc::F_GETFD) >= 0;
                libc::_exit(if !open && kept { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            libc::close(extra);
            libc::close(high);
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        }
    }
}
