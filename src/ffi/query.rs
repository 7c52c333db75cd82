//! `extern "C"` adapters for the plugin info query.

use super::errbuf::guard;
use crate::config::ServerDef;
use crate::process::query;

/// The result of one info query: JSON text owned by the handle.
#[allow(non_camel_case_types)]
pub struct kps_query {
    json: Vec<u8>,
}

/// Runs every server's query command (in parallel, each bounded by its
/// `query_timeout`; no thread or process is left when it returns) and stores the
/// plugin infos in a new handle at `*out`: a JSON array of
/// `{ server (1-based index into defs), name, PRIORITY, VERSION, schema, phases, protocol }`,
/// read with `kps_query_json`, released with `kps_query_free`.
///
/// # Errors
/// `KPS_ERR_FAILED` with every failing server's message (one per line): bad
/// definitions, non-zero exit, timeout, no JSON, wrong shape, unnamed plugin,
/// plugin name claimed twice. `KPS_ERR_ARGS` for null pointers.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `defs` valid for `defs_len` bytes of reads; `out` valid for a write;
/// `errbuf`/`errbuf_len` as in `kps_selftest_panic`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_query_run(
    defs: *const u8,
    defs_len: usize,
    out: *mut *mut kps_query,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    if defs.is_null() || out.is_null() {
        return super::KPS_ERR_ARGS;
    }
    // SAFETY: checked non-null; valid per contract.
    let bytes = unsafe { std::slice::from_raw_parts(defs, defs_len) };
    // SAFETY: forwarded contract.
    unsafe {
        guard(errbuf, errbuf_len, || {
            let defs: Vec<ServerDef> = serde_json::from_slice(bytes)
                .map_err(|e| format!("invalid server definitions: {e}"))?;
            let infos = query::query_all(&defs)?;
            let json = serde_json::to_vec(&infos).map_err(|e| e.to_string())?;
            *out = Box::into_raw(Box::new(kps_query { json }));
            Ok(())
        })
    }
}

/// Borrows the JSON text of a query result; valid until `kps_query_free(q)`.
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
