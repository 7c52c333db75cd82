//! The handles the C functions give out: boxes turned into raw pointers with
//! `Box::into_raw`, which the caller hands back once to the matching `*_free`.

/// Frees a handle (NULL is ignored).
///
/// # Safety
/// `p` must be NULL or a pointer from `Box::into_raw` of a `Box<T>` that has not
/// been freed yet; it must not be used after this call.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: per the contract, a live pointer from Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(p) });
    }
}

#[cfg(test)]
mod tests {
    use super::free_handle;

    #[test]
    fn frees_a_box_and_ignores_null() {
        let dropped = std::rc::Rc::new(());
        let p = Box::into_raw(Box::new(dropped.clone()));
        assert_eq!(std::rc::Rc::strong_count(&dropped), 2);
        unsafe { free_handle(p) };
        assert_eq!(std::rc::Rc::strong_count(&dropped), 1);
        unsafe { free_handle(std::ptr::null_mut::<u8>()) };
    }
}
