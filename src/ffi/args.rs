//! Reading the `(pointer, length)` byte arguments of the C functions.

/// The bytes of a `(ptr, len)` argument: an empty slice for length 0 (whatever
/// the pointer), `None` for a NULL pointer with a non-zero length.
///
/// # Safety
/// A non-NULL `ptr` must be valid for `len` bytes of reads for `'a`.
pub(crate) unsafe fn byte_arg<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and valid for `len` bytes per the contract.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// As [`byte_arg`], with `"<what>: null pointer"` for a NULL pointer with a
/// non-zero length.
///
/// # Safety
/// As [`byte_arg`].
pub(crate) unsafe fn required_bytes<'a>(
    ptr: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], String> {
    // SAFETY: forwarded contract.
    unsafe { byte_arg(ptr, len) }.ok_or_else(|| format!("{what}: null pointer"))
}

#[cfg(test)]
mod tests {
    use super::{byte_arg, required_bytes};

    #[test]
    fn empty_and_null_arguments() {
        assert_eq!(unsafe { byte_arg(std::ptr::null(), 0) }, Some(&[][..]));
        assert_eq!(unsafe { byte_arg(std::ptr::null(), 3) }, None);
        let data = [1u8, 2, 3];
        assert_eq!(unsafe { byte_arg(data.as_ptr(), 2) }, Some(&data[..2]));
        let err = unsafe { required_bytes(std::ptr::null(), 1, "config") };
        assert_eq!(err.unwrap_err(), "config: null pointer");
    }
}
