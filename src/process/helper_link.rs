//! The supervisor's side of `kps-helper`: starts it, sends spawn/kill commands,
//! and turns its report lines into events on a channel (read by a small thread).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::output;
use super::supervisor::NGX_INFO;

/// Helper events queued for the supervisor thread. When the queue is full,
/// output lines are dropped (and counted per pid); other events wait for room.
pub const EVENT_QUEUE: usize = 1024;
use serde::Serialize;

#[path = "../../helper/src/wire.rs"]
pub mod wire;

/// How a server ended, as the helper's `waitpid` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperEvent {
    Spawned {
        id: u64,
        pid: i32,
        /// The child's start time (`/proc/<pid>/stat` field 22) as the helper read
        /// it while the child was its own, unreaped.
        start: Option<u64>,
    },
    SpawnFailed {
        id: u64,
        message: String,
    },
    Output {
        pid: i32,
        line: String,
    },
    Exited {
        pid: i32,
        exit: Exit,
    },
    /// The helper closed its stdout: it exited.
    Gone,
}

/// One report line of the helper as an event; `None` for a line of another shape.
pub fn parse_line(line: &str) -> Option<HelperEvent> {
    let f: Vec<&str> = line.split('\t').collect();
    Some(match f.as_slice() {
        ["spawned", id, pid] => HelperEvent::Spawned {
            id: id.parse().ok()?,
            pid: pid.parse().ok()?,
            start: None,
        },
        ["spawned", id, pid, start] => HelperEvent::Spawned {
            id: id.parse().ok()?,
            pid: pid.parse().ok()?,
            start: start.parse().ok().filter(|&s| s != 0),
        },
        ["spawnfail", id, msg] => HelperEvent::SpawnFailed {
            id: id.parse().ok()?,
            message: wire::unescape(msg),
        },
        ["out", pid, text] => HelperEvent::Output {
            pid: pid.parse().ok()?,
            line: wire::unescape(text),
        },
        ["exit", pid, "code", n] => HelperEvent::Exited {
            pid: pid.parse().ok()?,
            exit: Exit::Code(n.parse().ok()?),
        },
        ["exit", pid, "signal", n] => HelperEvent::Exited {
            pid: pid.parse().ok()?,
            exit: Exit::Signal(n.parse().ok()?),
        },
        _ => return None,
    })
}

/// A running `kps-helper`. Dropping it closes the helper's stdin: the helper then
/// kills what is left of its children and exits.
pub struct HelperLink {
    pid: u32,
    stdin: Option<ChildStdin>,
    pub events: Receiver<HelperEvent>,
    reader: Option<JoinHandle<()>>,
    /// Output lines dropped by the reader (full queue), per pid.
    dropped: Arc<Mutex<DropCounts>>,
}

/// Output lines dropped (the queue was full), per pid.
type DropCounts = HashMap<i32, u64>;

/// Queues one event: output lines only when there is room (else counted in
/// `lost`), other events always. False when the supervisor is gone.
fn forward(tx: &Sender<HelperEvent>, ev: HelperEvent, lost: &mut DropCounts) -> bool {
    if let HelperEvent::Output { pid, .. } = ev {
        if !output::printed(NGX_INFO) {
            return true;
        }
        return match tx.try_send(ev) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                *lost.entry(pid).or_default() += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
    }
    tx.send(ev).is_ok()
}

/// Adds the counts of `lost` to the shared ones (one lock), leaving it empty.
fn publish_dropped(dropped: &Mutex<DropCounts>, lost: &mut DropCounts) {
    if lost.is_empty() {
        return;
    }
    let mut counts = dropped.lock().unwrap_or_else(|e| e.into_inner());
    for (pid, n) in lost.drain() {
        *counts.entry(pid).or_default() += n;
    }
}

/// The reader thread: the helper's report lines as events, then `Gone` when it
/// exits. The output lines dropped meanwhile are counted here and added to
/// `dropped` once per read of the pipe, not once per line.
fn read_events(stdout: impl Read, tx: &Sender<HelperEvent>, dropped: &Mutex<DropCounts>) {
    let mut reader = BufReader::new(stdout);
    let mut lost = DropCounts::new();
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            break;
        }
        // The line without its end (as `lines()` gives it).
        let text = line
            .strip_suffix('\n')
            .map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
        if let Some(ev) = parse_line(text)
            && !forward(tx, ev, &mut lost)
        {
            return;
        }
        if reader.buffer().is_empty() {
            // All that was read is handled: the next line needs another read.
            publish_dropped(dropped, &mut lost);
        }
    }
    publish_dropped(dropped, &mut lost);
    let _ = tx.send(HelperEvent::Gone);
}

impl HelperLink {
    /// Starts the helper. Call it from the thread that supervises: the helper's
    /// parent-death signal fires when that thread ends.
    pub fn start(helper: &Path) -> Result<Self, String> {
        let mut child = Command::new(helper)
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", helper.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let pid = child.id();
        // Never waited through std: nginx's SIGCHLD handler reaps the helper.
        drop(child);
        let (tx, rx) = bounded(EVENT_QUEUE);
        let dropped = Arc::new(Mutex::new(HashMap::new()));
        let counts = Arc::clone(&dropped);
        let reader = std::thread::Builder::new()
            .name("kps-helper-reader".into())
            .spawn(move || read_events(stdout, &tx, &counts))
            .map_err(|e| format!("cannot start the helper reader thread: {e}"))?;
        Ok(HelperLink {
            pid,
            stdin,
            events: rx,
            reader: Some(reader),
            dropped,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the helper is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("cannot talk to kps-helper: {e}"))
    }

    /// Asks for `/bin/sh -c "exec <command>"` with `PATH=path`; answered by
    /// `Spawned`/`SpawnFailed` with the same id.
    pub fn spawn(&mut self, id: u64, path: &str, command: &str) -> Result<(), String> {
        let line = format!(
            "spawn\t{id}\t{}\t{}",
            wire::escape(path.as_bytes()),
            wire::escape(command.as_bytes())
        );
        self.send(&line)
    }

    /// Signals the process group of one of the helper's children.
    pub fn kill(&mut self, pid: i32, signal: i32) -> Result<(), String> {
        self.send(&format!("kill\t{pid}\t{signal}"))
    }

    /// Signals the process group of the helper's child `pid` only if it is the
    /// child that started at `start` (as `Spawned` said); without a start time,
    /// as [`Self::kill`].
    pub fn signal(&mut self, pid: i32, signal: i32, start: Option<u64>) -> Result<(), String> {
        match start {
            Some(start) => self.send(&format!("kill\t{pid}\t{signal}\t{start}")),
            None => self.kill(pid, signal),
        }
    }

    /// How many output lines of each pid the queue had no room for (the caller
    /// takes out what it reports), locked while the guard lives.
    pub fn dropped(&self) -> MutexGuard<'_, HashMap<i32, u64>> {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the helper's stdin and waits for its reader thread (it ends when the
    /// helper exits, which is bounded by the helper's own reap limit).
    pub fn close(mut self) {
        self.stdin = None;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        self.stdin = None;
    }
}

/// Where `kps-helper` is installed: beside the shared object this code was loaded
/// from (found with `dladdr` on one of our own functions), never through `PATH`.
pub fn helper_beside_library() -> Result<PathBuf, String> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = helper_beside_library as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills info.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return Err(
            "cannot find the path of the kong_plugin_servers library (dladdr failed)".into(),
        );
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    let lib = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(&lib));
    let dir = lib
        .parent()
        .ok_or_else(|| format!("library path {} has no directory", lib.display()))?;
    let helper = dir.join("kps-helper");
    if helper.is_file() {
        Ok(helper)
    } else {
        Err(format!(
            "kps-helper not found at {} (it is installed beside {})",
            helper.display(),
            lib.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse() {
        assert_eq!(
            parse_line("spawned\t3\t42"),
            Some(HelperEvent::Spawned {
                id: 3,
                pid: 42,
                start: None
            })
        );
        assert_eq!(
            parse_line("spawned\t3\t42\t9876"),
            Some(HelperEvent::Spawned {
                id: 3,
                pid: 42,
                start: Some(9876)
            })
        );
        assert_eq!(
            parse_line("out\t42\ta\\tb"),
            Some(HelperEvent::Output {
                pid: 42,
                line: "a\tb".into()
            })
        );
        assert_eq!(
            parse_line("exit\t42\tsignal\t9"),
            Some(HelperEvent::Exited {
                pid: 42,
                exit: Exit::Signal(9)
            })
        );
        assert_eq!(parse_line("exit\t42\tcode\tx"), None);
        assert_eq!(parse_line("nonsense"), None);
    }

    /// The helper's stdout as the reader sees it: one chunk per read; before
    /// each read after the first, says so and waits for a go.
    struct Reads {
        chunks: Vec<&'static [u8]>,
        reading: Sender<()>,
        go: Receiver<()>,
    }

    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.chunks.is_empty() {
                return Ok(0);
            }
            if self.chunks.len() < 2 {
                let _ = self.reading.send(());
                let _ = self.go.recv();
            }
            let chunk = self.chunks.remove(0);
            buf[..chunk.len()].copy_from_slice(chunk);
            Ok(chunk.len())
        }
    }

    #[test]
    fn lines_without_room_are_counted_per_pid_once_their_read_is_handled() {
        let _level = crate::test_support::LOG_LEVEL
            .read()
            .unwrap_or_else(|e| e.into_inner());
        // A queue with room for one event, taken: the output lines are dropped.
        let (tx, rx) = bounded(1);
        tx.send(HelperEvent::Gone).unwrap();
        let dropped = Arc::new(Mutex::new(DropCounts::new()));
        let counts = Arc::clone(&dropped);
        let (reading_tx, reading) = bounded(1);
        let (go, go_rx) = bounded(1);
        let input = Reads {
            chunks: vec![
                b"out\t5\ta\nout\t5\tb\nout\t6\tc\n",
                b"exit\t5\tcode\t0\r\n",
            ],
            reading: reading_tx,
            go: go_rx,
        };
        let reader = std::thread::spawn(move || read_events(input, &tx, &counts));
        let wait = std::time::Duration::from_secs(5);
        // The first read is handled: its drops are counted before the next read.
        reading.recv_timeout(wait).unwrap();
        assert_eq!(*dropped.lock().unwrap(), HashMap::from([(5, 2), (6, 1)]));
        go.send(()).unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), HelperEvent::Gone);
        // (The line end, CRLF too, is not part of the last field.)
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            HelperEvent::Exited {
                pid: 5,
                exit: Exit::Code(0)
            }
        );
        assert_eq!(rx.recv_timeout(wait).unwrap(), HelperEvent::Gone);
        reader.join().unwrap();
    }

    #[test]
    fn exits_serialize_as_the_status_shape() {
        assert_eq!(
            serde_json::to_string(&Exit::Code(3)).unwrap(),
            r#"{"code":3}"#
        );
        assert_eq!(
            serde_json::to_string(&Exit::Signal(9)).unwrap(),
            r#"{"signal":9}"#
        );
    }
}
