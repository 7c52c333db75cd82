//! `extern "C"` adapters for the plugin info query.

use super::config::kps_config;
use super::errbuf::{guard, write_error};
use crate::process::query;

/// The result of one info query: JSON text owned by the handle.
#[allow(non_camel_case_types)]
pub struct kps_query {
    json: Vec<u8>,
}

/// Runs the query command of every server of `config` (its accepted definitions;
/// in parallel, each bounded by its `query_timeout`; no thread or process is left
/// when it returns) and stores the plugin infos in a new handle at `*out`: a JSON
/// array of
/// `{ server (1-based index into the definitions), name, PRIORITY, VERSION, schema, phases, protocol }`,
/// read with `kps_query_json`, released with `kps_query_free`. `config` is only
/// borrowed during the call.
///
/// # Errors
/// `KPS_ERR_FAILED` with every failing server's message (one per line): non-zero
/// exit, timeout, no JSON, wrong shape, unnamed plugin, plugin name claimed twice.
/// `KPS_ERR_ARGS` for null pointers.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `config` must come from `kps_config_new` and not be freed or used by another
/// thread during the call; `out` valid for a write; `errbuf`/`errbuf_len` as in
/// `kps_selftest_panic`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_query_run(
    config: *const kps_config,
    out: *mut *mut kps_query,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    if config.is_null() || out.is_null() {
        // SAFETY: forwarded contract. Every error return writes its message: the
        // caller's buffer still holds the last one otherwise.
        unsafe { write_error(errbuf, errbuf_len, "kps_query_run: null config or out") };
        return super::KPS_ERR_ARGS;
    }
    // SAFETY: checked non-null; a live handle per contract.
    let defs = unsafe { (*config).defs() };
    // SAFETY: forwarded contract.
    unsafe {
        guard(errbuf, errbuf_len, || {
            let infos = query::query_all(defs)?;
            let json = serde_json::to_vec(&infos).map_err(|e| e.to_string())?;
            *out = Box::into_raw(Box::new(kps_query { json }));
            Ok(())
        })
    }
}

/// Borrows the JSON text of a query result; valid until `kps_query_free(q)`.
/// A null `q` or `out` gives length 0.
///
/// # Errors
/// None.
///
/// # Panics
/// Never.
///
/// # Safety
/// `q` must come from `kps_query_run` and not be freed; `out`/`out_len` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_query_json(
    q: *const kps_query,
    out: *mut *const u8,
    out_len: *mut usize,
) {
    if q.is_null() || out.is_null() || out_len.is_null() {
        if !out_len.is_null() {
            // SAFETY: non-null, valid for writes per contract: no stale length.
            unsafe { *out_len = 0 };
        }
        return;
    }
    // SAFETY: valid per contract.
    unsafe {
        *out = (*q).json.as_ptr();
        *out_len = (*q).json.len();
    }
}

/// Releases a query result (null is ignored).
///
/// # Errors
/// None.
///
/// # Panics
/// Never.
///
/// # Safety
/// `q` must come from `kps_query_run` and be freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_query_free(q: *mut kps_query) {
    // SAFETY: per the contract, NULL or a live handle, freed once.
    unsafe { super::handle::free_handle(q) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caller's error buffer after a failed call: what Lua's errmsg() reads.
    fn stale_then(f: impl FnOnce(*mut u8, *mut usize) -> i32) -> (i32, String) {
        let mut buf = [b'#'; 4096];
        let mut len = buf.len();
        let rc = f(buf.as_mut_ptr(), &mut len);
        (rc, String::from_utf8_lossy(&buf[..len]).into_owned())
    }

    #[test]
    fn null_arguments_write_a_message_not_the_stale_buffer() {
        let mut out: *mut kps_query = std::ptr::null_mut();
        let (rc, msg) =
            stale_then(|b, l| unsafe { kps_query_run(std::ptr::null(), &mut out, b, l) });
        assert_eq!(
            (rc, msg.as_str()),
            (
                crate::ffi::KPS_ERR_ARGS,
                "kps_query_run: null config or out"
            )
        );
        let config = crate::ffi::config::kps_config_new();
        let (rc, msg) =
            stale_then(|b, l| unsafe { kps_query_run(config, std::ptr::null_mut(), b, l) });
        unsafe { crate::ffi::config::kps_config_free(config) };
        assert_eq!(
            (rc, msg.as_str()),
            (
                crate::ffi::KPS_ERR_ARGS,
                "kps_query_run: null config or out"
            )
        );
    }

    #[test]
    fn a_config_without_accepted_definitions_has_no_plugins() {
        let config = crate::ffi::config::kps_config_new();
        let mut out: *mut kps_query = std::ptr::null_mut();
        let (rc, _) = stale_then(|b, l| unsafe { kps_query_run(config, &mut out, b, l) });
        unsafe { crate::ffi::config::kps_config_free(config) };
        assert_eq!(rc, 0);
        let (mut ptr, mut len) = (std::ptr::null(), 0usize);
        unsafe { kps_query_json(out, &mut ptr, &mut len) };
        assert_eq!(unsafe { std::slice::from_raw_parts(ptr, len) }, b"[]");
        unsafe { kps_query_free(out) };
    }

    #[test]
    fn json_of_a_null_handle_is_empty() {
        let mut ptr: *const u8 = std::ptr::null();
        let mut len = 4096usize;
        unsafe { kps_query_json(std::ptr::null(), &mut ptr, &mut len) };
        assert_eq!(len, 0);
    }
}
