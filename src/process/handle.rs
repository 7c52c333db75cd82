//! The one supervisor of this process. Rust statics survive a HUP reload (the
//! master runs `init_by_lua` again) and are copied into forked workers without the
//! thread, so the handle remembers which process started it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::identity::Recorded;
use super::supervisor::{Command, Report, Supervisor, stop_bound};
use crate::config::ServerDef;

/// Reports waiting for the shim's drain timer (every 10 ms). Bounded: a server
/// that floods its output cannot make the worker's memory grow.
pub const REPORT_QUEUE: usize = 4096;

struct Handle {
    owner: u32,
    commands: Sender<Command>,
    reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
    stop_bound: Duration,
}

static CURRENT: Mutex<Option<Handle>> = Mutex::new(None);

fn current() -> std::sync::MutexGuard<'static, Option<Handle>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts supervising `defs` (the managed ones, and the external ones with a
/// `hang_timeout`, watched only); `protocols` (name -> protocol) lets the hang
/// watch speak to each. Returns false when a supervisor of this process is
/// already running (a second start is a no-op).
///
/// # Errors
/// When the thread cannot be created.
pub fn start(
    defs: Vec<ServerDef>,
    old_pids: HashMap<String, Recorded>,
    helper: PathBuf,
    protocols: HashMap<String, String>,
) -> Result<bool, String> {
    let mut cur = current();
    if let Some(h) = cur.as_ref() {
        if h.owner != std::process::id() {
            // Inherited through fork: the thread does not exist here; never join or drop it.
            std::mem::forget(cur.take());
        } else if h.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(false);
        }
    }
    let (cmd_tx, cmd_rx) = unbounded();
    let (rep_tx, rep_rx) = bounded(REPORT_QUEUE);
    let bound = stop_bound(&defs);
    let sup = Supervisor::new(defs, old_pids, helper, rep_tx).with_protocols(protocols);
    let thread = std::thread::Builder::new()
        .name("kps-supervisor".into())
        .spawn(move || sup.run(cmd_rx))
        .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
    *cur = Some(Handle {
        owner: std::process::id(),
        commands: cmd_tx,
        reports: rep_rx,
        thread: Some(thread),
        stop_bound: bound,
    });
    Ok(true)
}

/// Asks the supervisor to stop its servers and waits up to `wait` for it to end.
/// Returns true when no supervisor is running any more.
pub fn stop(wait: Duration) -> bool {
    let mut cur = current();
    let Some(h) = cur.as_mut() else { return true };
    if h.owner != std::process::id() {
        return true;
    }
    let _ = h.commands.send(Command::Stop);
    let Some(thread) = h.thread.as_ref() else {
        return true;
    };
    let deadline = std::time::Instant::now() + wait;
    while !thread.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    if thread.is_finished() {
        if let Some(t) = h.thread.take() {
            let _ = t.join();
        }
        true
    } else {
        false
    }
}

/// The longest a stop takes (largest `stop_timeout` plus the SIGKILL wait).
pub fn stop_bound_ms() -> u64 {
    current()
        .as_ref()
        .map_or(0, |h| h.stop_bound.as_millis() as u64)
}

/// Takes up to `max` pending reports.
pub fn drain(max: usize) -> Vec<Report> {
    let cur = current();
    let Some(h) = cur.as_ref() else {
        return Vec::new();
    };
    if h.owner != std::process::id() {
        return Vec::new();
    }
    h.reports.try_iter().take(max).collect()
}
