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

/// Microseconds on the monotonic clock (`CLOCK_MONOTONIC`: since an unspecified
/// origin, never stepped), for timing events from Lua more finely than nginx's
/// millisecond clock. A double, so that LuaJIT receives a plain number (a 64-bit
/// integer would be a boxed cdata, allocated on every call).
///
/// # Errors
/// None: returns 0 in the impossible case that the clock cannot be read.
///
/// # Panics
/// Never.
///
/// # Safety
/// None: no arguments, no pointers.
#[unsafe(no_mangle)]
pub extern "C" fn kps_clock_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0.0;
    }
    // f64 holds integers exactly up to 2^53: microseconds for 285 years of uptime.
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::kps_clock_us;

    #[test]
    fn clock_us_is_monotonic_and_in_microseconds() {
        let a = kps_clock_us();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = kps_clock_us();
        assert!(a > 0.0);
        // 20 ms asleep: at least 20000 µs, and not absurdly more even under load.
        assert!(b - a >= 20_000.0, "{a} -> {b}");
        assert!(b - a < 5_000_000.0, "{a} -> {b}");
    }
}
