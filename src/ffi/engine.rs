//! The bodies of the handle functions the two RPC engines share
//! (`kps_mp_*` for MessagePack-RPC, `kps_pb_*` for Protobuf): making, resetting
//! and asking a stream, feeding it bytes, polling it for an event and building a
//! request into its output. The exports that differ only in their prefix are
//! written out per engine into `handle_exports.rs` from one definition
//! (`tools/handle_exports.rs`, `make header`: cbindgen reads no macros); the
//! others stay in their engine's module. Each calls one of these.
//!
//! Each caller passes the message for a NULL argument, so that both engines keep
//! the messages they always gave.

use super::args::byte_arg;
use super::errbuf::{KPS_ERR_ARGS, guard, write_error};

/// A stream handle of an RPC engine: the decoding and encoding state of one
/// request on one connection, made from its session handle.
pub(crate) trait StreamHandle: Sized {
    /// The engine's session handle (ids or sequences, limits).
    type Session;
    /// A stream with the session's limits.
    fn new(session: &Self::Session) -> Self;
    /// Starts over for a fresh connection checkout.
    fn reset(&mut self);
    /// Whether bytes beyond the last reported message are buffered.
    fn has_unread(&self) -> bool;
    /// Appends received bytes.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// Implements [`StreamHandle`] for an engine's stream handle `$stream(Stream)`,
/// made from its session handle `$session(Session)` by `$new`; the rest forwards
/// to the engine's stream.
macro_rules! stream_handle {
    ($stream:ident, $session:ident, |$s:ident| $new:expr) => {
        impl super::engine::StreamHandle for $stream {
            type Session = $session;
            fn new($s: &$session) -> Self {
                $stream($new)
            }
            fn reset(&mut self) {
                self.0.reset();
            }
            fn has_unread(&self) -> bool {
                self.0.has_unread()
            }
            fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
                self.0.feed(bytes)
            }
        }
    };
}
pub(crate) use stream_handle;

/// Writes `msg` and returns `KPS_ERR_ARGS`.
pub(crate) fn null_argument(errbuf: *mut u8, errbuf_len: *mut usize, msg: &str) -> i32 {
    // SAFETY: forwarded from the exported function's errbuf contract.
    unsafe { write_error(errbuf, errbuf_len, msg) };
    KPS_ERR_ARGS
}

/// A new stream of `session`, NULL for a NULL session.
///
/// # Safety
/// `session` NULL or a live session handle.
pub(crate) unsafe fn stream_new<T: StreamHandle>(session: *const T::Session) -> *mut T {
    // SAFETY: per the contract.
    match unsafe { session.as_ref() } {
        Some(s) => Box::into_raw(Box::new(T::new(s))),
        None => std::ptr::null_mut(),
    }
}

/// Resets a stream; NULL is ignored.
///
/// # Safety
/// `stream` NULL or a live stream handle.
pub(crate) unsafe fn stream_reset<T: StreamHandle>(stream: *mut T) {
    // SAFETY: per the contract.
    if let Some(s) = unsafe { stream.as_mut() } {
        s.reset();
    }
}

/// 1 when bytes are unread, else 0 (also for NULL).
///
/// # Safety
/// `stream` NULL or a live stream handle.
pub(crate) unsafe fn stream_has_unread<T: StreamHandle>(stream: *const T) -> i32 {
    // SAFETY: per the contract.
    unsafe { stream.as_ref() }
        .is_some_and(StreamHandle::has_unread)
        .into()
}

/// Appends `len` bytes at `data`: `KPS_ERR_ARGS` with `null_msg` for a NULL
/// stream or NULL data with a non-zero length, else the feed's result under the
/// panic guard.
///
/// # Safety
/// `stream` NULL or a live stream handle; `data` valid for `len` bytes of reads;
/// `errbuf` as for every fallible function.
pub(crate) unsafe fn stream_feed<T: StreamHandle>(
    stream: *mut T,
    data: *const u8,
    len: usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    null_msg: &str,
) -> i32 {
    // SAFETY: per the contract.
    let (Some(st), Some(data)) = (unsafe { stream.as_mut() }, unsafe { byte_arg(data, len) })
    else {
        return null_argument(errbuf, errbuf_len, null_msg);
    };
    // SAFETY: forwarded errbuf contract.
    unsafe { guard(errbuf, errbuf_len, || st.feed(data)) }
}

/// Runs `fill(stream, ev)` under the panic guard (it reports the next event into
/// the caller's struct); `KPS_ERR_ARGS` with `null_msg` for a NULL pointer.
///
/// # Safety
/// `stream` NULL or a live stream handle; `ev` NULL or valid for reads and
/// writes; `errbuf` as for every fallible function.
pub(crate) unsafe fn stream_poll<T, E, F>(
    stream: *mut T,
    ev: *mut E,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    null_msg: &str,
    fill: F,
) -> i32
where
    F: FnOnce(&mut T, &mut E) -> Result<(), String>,
{
    // SAFETY: per the contract.
    let (Some(st), Some(ev)) = (unsafe { stream.as_mut() }, unsafe { ev.as_mut() }) else {
        return null_argument(errbuf, errbuf_len, null_msg);
    };
    // SAFETY: forwarded errbuf contract.
    unsafe { guard(errbuf, errbuf_len, || fill(st, ev)) }
}

/// Runs `f(stream)`, which writes bytes into the stream's output, under the panic
/// guard and points `(out, out_len)` at them; `KPS_ERR_ARGS` with `null_msg` for
/// a NULL stream or output pointer.
///
/// # Safety
/// `stream` NULL or a live stream handle; `out`, `out_len` NULL or writable;
/// `errbuf` as for every fallible function.
pub(crate) unsafe fn stream_output<T, F>(
    stream: *mut T,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    null_msg: &str,
    f: F,
) -> i32
where
    F: for<'a> FnOnce(&'a mut T) -> Result<&'a [u8], String>,
{
    // SAFETY: per the contract.
    let Some(st) = (unsafe { stream.as_mut() }) else {
        return null_argument(errbuf, errbuf_len, null_msg);
    };
    if out.is_null() || out_len.is_null() {
        return null_argument(errbuf, errbuf_len, null_msg);
    }
    // SAFETY: forwarded errbuf contract; `out`, `out_len` checked non-null and
    // writable per the contract.
    unsafe {
        guard(errbuf, errbuf_len, || {
            let o = f(st)?;
            *out = o.as_ptr();
            *out_len = o.len();
            Ok(())
        })
    }
}

/// A request builder: as [`stream_output`] with the session too (a NULL session
/// is a NULL argument).
///
/// # Safety
/// As [`stream_output`]; `session` NULL or a live session handle, not the
/// stream's own memory.
#[expect(
    clippy::too_many_arguments,
    reason = "the request builders' own C arguments"
)]
pub(crate) unsafe fn stream_build<T, F>(
    session: *mut T::Session,
    stream: *mut T,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    null_msg: &str,
    f: F,
) -> i32
where
    T: StreamHandle,
    F: for<'a> FnOnce(&mut T::Session, &'a mut T) -> Result<&'a [u8], String>,
{
    // SAFETY: per the contract.
    let Some(s) = (unsafe { session.as_mut() }) else {
        return null_argument(errbuf, errbuf_len, null_msg);
    };
    // SAFETY: forwarded contract.
    unsafe {
        stream_output(stream, out, out_len, errbuf, errbuf_len, null_msg, |st| {
            f(s, st)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    struct Session(usize);
    struct Stream {
        limit: usize,
        buf: Vec<u8>,
    }
    impl StreamHandle for Stream {
        type Session = Session;
        fn new(session: &Session) -> Self {
            Stream {
                limit: session.0,
                buf: Vec::new(),
            }
        }
        fn reset(&mut self) {
            self.buf.clear();
        }
        fn has_unread(&self) -> bool {
            !self.buf.is_empty()
        }
        fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
            if self.buf.len() + bytes.len() > self.limit {
                return Err("too long".into());
            }
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Runs `f` with an error buffer: `Ok` for 0, else `Err("<code>: <message>")`.
    pub(crate) fn call<F: FnOnce(*mut u8, *mut usize) -> i32>(f: F) -> Result<(), String> {
        let mut buf = [0u8; 256];
        let mut len = buf.len();
        match f(buf.as_mut_ptr(), &mut len) {
            0 => Ok(()),
            rc => Err(format!("{rc}: {}", String::from_utf8_lossy(&buf[..len]))),
        }
    }

    #[test]
    fn the_shared_bodies_check_their_arguments_and_report_errors() {
        let mut session = Session(4);
        unsafe {
            assert!(stream_new::<Stream>(std::ptr::null()).is_null());
            let st: *mut Stream = stream_new(&session);
            assert_eq!((*st).limit, 4);
            assert_eq!(stream_has_unread(st), 0);
            assert_eq!(stream_has_unread::<Stream>(std::ptr::null()), 0);

            call(|e, l| stream_feed(st, b"ab".as_ptr(), 2, e, l, "null")).unwrap();
            assert_eq!(stream_has_unread(st), 1);
            let err = call(|e, l| stream_feed(st, b"abc".as_ptr(), 3, e, l, "null"));
            assert_eq!(err.unwrap_err(), "-1: too long");
            let err = call(|e, l| stream_feed(st, std::ptr::null(), 1, e, l, "null data"));
            assert_eq!(err.unwrap_err(), "-2: null data");
            stream_reset(st);
            stream_reset::<Stream>(std::ptr::null_mut());
            assert_eq!(stream_has_unread(st), 0);

            let mut seen = 0usize;
            call(|e, l| {
                stream_poll(st, &mut seen, e, l, "null", |s, ev| {
                    *ev = s.limit;
                    Ok(())
                })
            })
            .unwrap();
            assert_eq!(seen, 4);
            let err = call(|e, l| {
                stream_poll(
                    st,
                    std::ptr::null_mut::<usize>(),
                    e,
                    l,
                    "null ev",
                    |_, _| Ok(()),
                )
            });
            assert_eq!(err.unwrap_err(), "-2: null ev");

            let (mut out, mut out_len) = (std::ptr::null(), 0usize);
            call(|e, l| {
                stream_build(
                    &mut session,
                    st,
                    &mut out,
                    &mut out_len,
                    e,
                    l,
                    "null",
                    |s, t| {
                        s.0 += 1;
                        t.buf.extend_from_slice(b"req");
                        Ok(&t.buf)
                    },
                )
            })
            .unwrap();
            assert_eq!(std::slice::from_raw_parts(out, out_len), b"req");
            assert_eq!(session.0, 5);
            let err = call(|e, l| {
                stream_build(
                    std::ptr::null_mut(),
                    st,
                    &mut out,
                    &mut out_len,
                    e,
                    l,
                    "null s",
                    |_, t| Ok(&t.buf),
                )
            });
            assert_eq!(err.unwrap_err(), "-2: null s");
            let err = call(|e, l| {
                stream_output(
                    st,
                    std::ptr::null_mut(),
                    &mut out_len,
                    e,
                    l,
                    "null out",
                    |t| Ok(&t.buf),
                )
            });
            assert_eq!(err.unwrap_err(), "-2: null out");
            let err = call(|e, l| {
                stream_output(st, &mut out, &mut out_len, e, l, "null", |_| {
                    Err("refused".to_string())
                })
            });
            assert_eq!(err.unwrap_err(), "-1: refused");
            super::super::handle::free_handle(st);
        }
    }
}
