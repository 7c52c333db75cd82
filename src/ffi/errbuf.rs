//! Error reporting through a caller-supplied buffer, and panic containment.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

/// The operation failed; the message says why.
pub const KPS_ERR_FAILED: i32 = -1;
/// A pointer or length argument was invalid.
pub const KPS_ERR_ARGS: i32 = -2;
/// A panic was caught at the boundary (a bug in this library).
pub const KPS_ERR_PANIC: i32 = -3;

/// Copies `msg` into `errbuf` (truncated to its capacity) and stores the length
/// written; with a null `errbuf` the length is set to 0, so that no caller reads
/// a stale message.
///
/// # Safety
/// `errbuf` must be null or valid for `*errbuf_len` bytes of writes; `errbuf_len`
/// must be null or valid for reads and writes.
pub unsafe fn write_error(errbuf: *mut u8, errbuf_len: *mut usize, msg: &str) {
    if errbuf_len.is_null() {
        return;
    }
    if errbuf.is_null() {
        // SAFETY: non-null, valid for writes per this function's contract.
        unsafe { *errbuf_len = 0 };
        return;
    }
    // SAFETY: both pointers are non-null and valid per this function's contract.
    unsafe {
        let n = msg.len().min(*errbuf_len);
        std::ptr::copy_nonoverlapping(msg.as_ptr(), errbuf, n);
        *errbuf_len = n;
    }
}

/// Replaces the default panic hook (which prints a backtrace into nginx's error log)
/// with one line on stderr; the message also comes back to Lua through `errbuf`.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("[kong_plugin_servers] {info}");
        }));
    });
}

/// Runs `f`, turning `Err(msg)` into `KPS_ERR_FAILED` and a panic into `KPS_ERR_PANIC`,
/// with the message written into `errbuf`.
///
/// # Safety
/// As [`write_error`] for `errbuf` and `errbuf_len`.
pub unsafe fn guard<F>(errbuf: *mut u8, errbuf_len: *mut usize, f: F) -> i32
where
    F: FnOnce() -> Result<(), String>,
{
    install_quiet_panic_hook();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => 0,
        Ok(Err(msg)) => {
            // SAFETY: forwarded contract.
            unsafe { write_error(errbuf, errbuf_len, &msg) };
            KPS_ERR_FAILED
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let msg = format!("internal error (panic): {what}");
            // SAFETY: forwarded contract.
            unsafe { write_error(errbuf, errbuf_len, &msg) };
            KPS_ERR_PANIC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_is_truncated_to_the_buffer() {
        let mut buf = [0u8; 4];
        let mut len = buf.len();
        let rc = unsafe { guard(buf.as_mut_ptr(), &mut len, || Err("abcdef".into())) };
        assert_eq!(rc, KPS_ERR_FAILED);
        assert_eq!(&buf[..len], b"abcd");
    }

    #[test]
    fn a_null_buffer_gets_length_zero() {
        let mut len = 4096usize;
        unsafe { write_error(std::ptr::null_mut(), &mut len, "lost") };
        assert_eq!(len, 0);
    }

    #[test]
    fn panic_becomes_an_error_code() {
        let mut buf = [0u8; 128];
        let mut len = buf.len();
        let rc = unsafe { guard(buf.as_mut_ptr(), &mut len, || panic!("boom")) };
        assert_eq!(rc, KPS_ERR_PANIC);
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "internal error (panic): boom"
        );
    }
}
