//! Library-level functions: version and a self-test of the panic guard.

use super::errbuf::guard;

/// Returns the library version as a NUL-terminated static string.
///
/// # Errors
/// None.
///
/// # Panics
/// Never: it returns a pointer to a constant.
///
/// # Safety
/// None: the pointer is to static memory and must not be freed.
#[unsafe(no_mangle)]
pub extern "C" fn kps_version() -> *const std::ffi::c_char {
    crate::VERSION.as_ptr().cast()
}

/// Panics inside the boundary guard on purpose, so that tests can check that a
/// panic comes back as `KPS_ERR_PANIC` with a message instead of killing the worker.
///
/// # Errors
/// Always returns `KPS_ERR_PANIC` (-3) with the message in `errbuf`.
///
/// # Panics
/// Never across the boundary: the panic is caught.
///
/// # Safety
/// `errbuf` must be null or valid for `*errbuf_len` bytes of writes; `errbuf_len`
/// must be null or valid for reads and writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_selftest_panic(errbuf: *mut u8, errbuf_len: *mut usize) -> i32 {
    // SAFETY: forwarded to the caller's contract.
    unsafe { guard(errbuf, errbuf_len, || panic!("self-test panic")) }
}
