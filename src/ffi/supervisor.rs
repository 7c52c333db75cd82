//! `extern "C"` adapters for the supervisor: start, stop, drain its reports.
//! Cold path: the definitions come from a parsed configuration handle, reports
//! come out as JSON text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::args::required_bytes;
use super::config::kps_config;
use super::errbuf::guard;
use crate::config::ServerDef;
use crate::process::identity::Recorded;
use crate::process::{handle, helper_link};

/// Most reports returned by one drain call.
const DRAIN_MAX: usize = 1000;

/// The bytes of the last drain, borrowed by the caller until the next drain.
static DRAIN_OUT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Starts the supervisor thread of this process for the accepted definitions of
/// `config`, which it copies (`config` may be freed as soon as this returns); the
/// supervisor runs the managed ones (those with a `start_command`) and watches
/// the external ones that have a `hang_timeout`. `protocols` (a JSON object
/// `{ name: "MsgPack:1" | "ProtoBuf:1" }`, the info query's findings; may be
/// empty) tells the hang watch how to ask each server. `old_pids` (a JSON object
/// `{ name: { "pid": n, "start": t } }`, may be empty; `start` is the `pid_start`
/// of the state report) names servers of a previous generation that must be gone
/// before the same socket is served again. A pid whose start time differs (or is
/// not given) is not that server: it is neither waited for nor signalled.
/// `kps-helper` is looked for beside this library.
///
/// Returns 0 when the supervisor started, 1 when one was already running in this
/// process (nothing changes).
///
/// # Errors
/// `KPS_ERR_FAILED` with a message: null config, bad protocols or old pids JSON,
/// helper not found, thread not created.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `config` null or from `kps_config_new`, not freed or used by another thread
/// during the call; `protocols` and `old_pids` valid for their lengths in bytes
/// (each may be null with length 0); `errbuf`/`errbuf_len` as in `kps_selftest_panic`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_supervisor_start(
    config: *const kps_config,
    protocols: *const u8,
    protocols_len: usize,
    old_pids: *const u8,
    old_pids_len: usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    let mut already = false;
    // SAFETY: forwarded contract.
    let rc = unsafe {
        guard(errbuf, errbuf_len, || {
            // SAFETY: null or a live handle per contract.
            let config = config
                .as_ref()
                .ok_or_else(|| "kps_supervisor_start: null config".to_string())?;
            let defs: Vec<ServerDef> = config.defs().to_vec();
            let protocols = required_bytes(protocols, protocols_len, "protocols")?;
            let protocols: HashMap<String, String> = json_or_empty(protocols, "protocols")?;
            let old = required_bytes(old_pids, old_pids_len, "old_pids")?;
            let old: HashMap<String, Recorded> = json_or_empty(old, "old pids")?;
            let helper = helper_link::helper_beside_library()?;
            already = !handle::start(defs, old, helper, protocols)?;
            Ok(())
        })
    };
    if rc == 0 && already { 1 } else { rc }
}

/// The JSON value in `bytes`, or the empty (default) value when there are none.
fn json_or_empty<T: DeserializeOwned + Default>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        serde_json::from_slice(bytes).map_err(|e| format!("invalid {what}: {e}"))
    }
}

/// Asks the supervisor to stop every server (SIGTERM, SIGKILL after `stop_timeout`)
/// and waits up to `wait_ms` for it to finish. With `wait_ms` 0 it only asks.
///
/// Returns 1 when no supervisor runs any more, 0 when it is still stopping (call
/// again or drain until the `done` report).
///
/// # Errors
/// None.
///
/// # Panics
/// Never across the boundary (returns 0).
///
/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub extern "C" fn kps_supervisor_stop(wait_ms: u64) -> i32 {
    std::panic::catch_unwind(|| handle::stop(Duration::from_millis(wait_ms)) as i32).unwrap_or(0)
}

/// Tells the supervisor the error log's level (an nginx level: `ngx.STDERR` 0 ..
/// `ngx.DEBUG` 8, as `ngx.errlog.get_sys_filter_level()` returns it): lines of a
/// less severe level, plugin server output among them, are then not reported.
///
/// # Errors
/// None.
///
/// # Panics
/// Never.
///
/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub extern "C" fn kps_supervisor_set_log_level(level: i32) {
    crate::process::output::set_log_level(level.clamp(0, 8) as u8);
}

/// The longest a stop can take, in ms: the largest `stop_timeout` plus the wait
/// after SIGKILL (0 without a supervisor).
///
/// # Errors
/// None.
///
/// # Panics
/// Never across the boundary (returns 0).
///
/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub extern "C" fn kps_supervisor_stop_bound_ms() -> u64 {
    std::panic::catch_unwind(handle::stop_bound_ms).unwrap_or(0)
}

/// Takes the pending reports of the supervisor as a JSON array of objects:
/// `{"kind":"log","level":<ngx level>,"msg":...}`,
/// `{"kind":"state","name","state","pid","pid_start","restarts","hangs","last_exit","started_at","since","note",
/// "standby","standby_pid","standby_start","promotions"}`,
/// `{"kind":"done"}`. Writes the bytes to `*out`/`*out_len` (empty when there is
/// nothing) and returns the number of reports.
///
/// # Errors
/// `KPS_ERR_ARGS` when `out` or `out_len` is null.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `out`/`out_len` valid for writes. The bytes stay valid until the next call of
/// this function (from any thread: call it from one Lua state only).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_supervisor_drain(out: *mut *const u8, out_len: *mut usize) -> i32 {
    if out.is_null() || out_len.is_null() {
        return super::KPS_ERR_ARGS;
    }
    let result = std::panic::catch_unwind(|| {
        let reports = handle::drain(DRAIN_MAX);
        let mut buf = DRAIN_OUT.lock().unwrap_or_else(|e| e.into_inner());
        buf.clear();
        if !reports.is_empty() {
            serde_json::to_writer(&mut *buf, &reports).expect("reports serialize");
        }
        (buf.as_ptr(), buf.len(), reports.len() as i32)
    });
    match result {
        Ok((ptr, len, n)) => {
            // SAFETY: both pointers checked non-null; valid per contract.
            unsafe {
                *out = ptr;
                *out_len = len;
            }
            n
        }
        Err(_) => super::KPS_ERR_PANIC,
    }
}
