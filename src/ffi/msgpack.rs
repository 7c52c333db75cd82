//! `extern "C"` adapters for the MessagePack-RPC engine (`crate::codec::msgpack`).
//!
//! Two handles: a session (one per plugin per worker: message ids, limits) and a
//! stream (one event on one connection: request bytes out, reply bytes in).
//! Request builders return borrowed bytes valid until the next call on the
//! stream; `kps_mp_stream_poll` fills a caller-owned `kps_mp_event` whose
//! pointers are valid until the next call on the stream.
#![allow(non_camel_case_types)]

use std::ptr;

use super::args::byte_arg;
use super::engine::{null_argument, stream_build, stream_handle, stream_poll};
use crate::codec::msgpack::{Event, Limits, Session, Stream};

/// Opaque: message ids and limits of one plugin in one worker.
pub struct kps_mp_session(Session);

/// Opaque: decoding/encoding state of one event on one connection.
pub struct kps_mp_stream(Stream);

stream_handle!(kps_mp_stream, kps_mp_session, |session| Stream::new(
    session.0.limits()
));

/// `kps_mp_event.kind`: more bytes are needed.
pub const KPS_MP_NONE: i32 = 0;
/// StartInstance succeeded: `id` is the instance id.
pub const KPS_MP_STARTED: i32 = 1;
/// CloseInstance succeeded.
pub const KPS_MP_CLOSED: i32 = 2;
/// The handler finished (`Data = "ret"`): `event_id`.
pub const KPS_MP_RET: i32 = 3;
/// A PDK call: `event_id`, `method` (index into the method table, 0 = unknown),
/// `text` = method name, `value` = encoded Args (`value_len` 0 when absent).
pub const KPS_MP_CALL: i32 = 4;
/// The server answered with an error: `text` = its message.
pub const KPS_MP_ERROR: i32 = 5;
/// A `serverPid` notification: `id` = the pid.
pub const KPS_MP_SERVER_PID: i32 = 6;

/// One decoded message, as scalars and borrowed bytes.
#[repr(C)]
pub struct kps_mp_event {
    pub kind: i32,
    pub method: i32,
    pub id: i64,
    pub event_id: i64,
    pub value: *const u8,
    pub value_len: usize,
    pub text: *const u8,
    pub text_len: usize,
}

/// Makes a session. `max_message_size` bounds every received message (bytes);
/// `max_depth` bounds array/map nesting of a message, envelope included.
///
/// # Errors
/// Returns NULL when either bound is 0.
///
/// # Panics
/// Never.
///
/// # Safety
/// None; release the handle with `kps_mp_session_free`.
#[unsafe(no_mangle)]
pub extern "C" fn kps_mp_session_new(max_message_size: u64, max_depth: u32) -> *mut kps_mp_session {
    if max_message_size == 0 || max_depth == 0 {
        return ptr::null_mut();
    }
    let limits = Limits {
        max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
        max_depth: max_depth as usize,
    };
    Box::into_raw(Box::new(kps_mp_session(Session::new(limits))))
}

/// The request builders' checks and plumbing, with this engine's message for a
/// NULL handle or output pointer.
///
/// # Safety
/// As [`stream_build`].
unsafe fn build<F>(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
    f: F,
) -> i32
where
    F: for<'a> FnOnce(&mut Session, &'a mut Stream) -> Result<&'a [u8], String>,
{
    const NULL: &str = "NULL session, stream or output pointer";
    // SAFETY: forwarded contract.
    unsafe {
        stream_build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            NULL,
            |s, st| f(&mut s.0, &mut st.0),
        )
    }
}

fn arg_error(errbuf: *mut u8, errbuf_len: *mut usize, what: &str) -> i32 {
    null_argument(
        errbuf,
        errbuf_len,
        &format!("NULL {what} with a non-zero length"),
    )
}

/// Builds `plugin.StartInstance` `[{Name = name, Config = config}]`; `config` is
/// the JSON text of the plugin configuration.
///
/// # Errors
/// `KPS_ERR_ARGS` for NULL pointers; `KPS_ERR_FAILED` when the stream is still
/// waiting for a reply or failed earlier (message in `errbuf`).
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `session`/`stream` live handles; `name`/`config` valid for their lengths;
/// `out`, `out_len` writable; `errbuf` as for every fallible function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_start_instance(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    name: *const u8,
    name_len: usize,
    config: *const u8,
    config_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    // SAFETY: per the contract.
    let (Some(name), Some(config)) = (unsafe { byte_arg(name, name_len) }, unsafe {
        byte_arg(config, config_len)
    }) else {
        return arg_error(errbuf, errbuf_len, "name or config");
    };
    // SAFETY: per the contract.
    unsafe {
        build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |s, st| st.start_instance(s, name, config),
        )
    }
}

/// Builds `plugin.CloseInstance` `[instance_id]`.
///
/// # Errors
/// As `kps_mp_stream_start_instance`.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// As `kps_mp_stream_start_instance`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_close_instance(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    instance_id: i64,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    // SAFETY: per the contract.
    unsafe {
        build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |s, st| st.close_instance(s, instance_id),
        )
    }
}

/// Builds `plugin.HandleEvent` `[{InstanceId = instance_id, EventName = event}]`.
///
/// # Errors
/// As `kps_mp_stream_start_instance`.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// As `kps_mp_stream_start_instance`; `event` valid for `event_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_handle_event(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    instance_id: i64,
    event: *const u8,
    event_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    // SAFETY: per the contract.
    let Some(event) = (unsafe { byte_arg(event, event_len) }) else {
        return arg_error(errbuf, errbuf_len, "event");
    };
    // SAFETY: per the contract.
    unsafe {
        build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |s, st| st.handle_event(s, instance_id, event),
        )
    }
}

/// Builds the Step answering a PDK call of `method` (method-table index; it picks
/// `plugin.Step`, `StepMultiMap`, `StepCredential`, ...) with `{EventId, Data}`;
/// `value` is one encoded MessagePack value (from the bridge), or NULL for no Data.
///
/// # Errors
/// As `kps_mp_stream_start_instance`; also `KPS_ERR_FAILED` for an unknown method
/// index or `value` bytes that are not exactly one MessagePack value.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// As `kps_mp_stream_start_instance`; `value` NULL or valid for `value_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_step(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    event_id: i64,
    method: i32,
    value: *const u8,
    value_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    let value = if value.is_null() {
        None
    } else {
        // SAFETY: per the contract.
        unsafe { byte_arg(value, value_len) }
    };
    let method = u16::try_from(method).unwrap_or(u16::MAX);
    // SAFETY: per the contract.
    unsafe {
        build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |s, st| st.step(s, event_id, method, value),
        )
    }
}

/// Builds `plugin.StepError` `{EventId, Data = message}`: the PDK call failed.
///
/// # Errors
/// As `kps_mp_stream_start_instance`.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// As `kps_mp_stream_start_instance`; `message` valid for `message_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_step_error(
    session: *mut kps_mp_session,
    stream: *mut kps_mp_stream,
    event_id: i64,
    message: *const u8,
    message_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    // SAFETY: per the contract.
    let Some(message) = (unsafe { byte_arg(message, message_len) }) else {
        return arg_error(errbuf, errbuf_len, "message");
    };
    // SAFETY: per the contract.
    unsafe {
        build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            |s, st| st.step_error(s, event_id, message),
        )
    }
}

/// Decodes the next complete message into `ev`; `ev->kind` is `KPS_MP_NONE` when
/// more bytes are needed. Pointers in `ev` stay valid until the next call on
/// the stream.
///
/// # Errors
/// `KPS_ERR_ARGS` for NULL pointers; `KPS_ERR_FAILED` for a protocol error
/// (malformed bytes, unexpected id or shape, `max_message_size` or depth
/// exceeded): the message starts with `protocol error: ` and the stream stays
/// failed until reset.
///
/// # Panics
/// Never across the boundary (`KPS_ERR_PANIC`).
///
/// # Safety
/// `stream` a live handle; `ev` writable; `errbuf` as usual.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_mp_stream_poll(
    stream: *mut kps_mp_stream,
    ev: *mut kps_mp_event,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "NULL stream or event with a non-zero length";
    // SAFETY: per the contract.
    unsafe {
        stream_poll(stream, ev, errbuf, errbuf_len, NULL, |st, ev| {
            *ev = kps_mp_event {
                kind: KPS_MP_NONE,
                method: 0,
                id: 0,
                event_id: 0,
                value: ptr::null(),
                value_len: 0,
                text: ptr::null(),
                text_len: 0,
            };
            let Some(event) = st.0.poll()? else {
                return Ok(());
            };
            let s = &st.0;
            match event {
                Event::Started { instance_id } => {
                    ev.kind = KPS_MP_STARTED;
                    ev.id = instance_id;
                }
                Event::Closed => ev.kind = KPS_MP_CLOSED,
                Event::Ret { event_id } => {
                    ev.kind = KPS_MP_RET;
                    ev.event_id = event_id;
                }
                Event::Call {
                    event_id,
                    method,
                    name,
                    args,
                } => {
                    ev.kind = KPS_MP_CALL;
                    ev.event_id = event_id;
                    ev.method = i32::from(method);
                    let (n, a) = (s.bytes(&name), s.bytes(&args));
                    (ev.text, ev.text_len) = (n.as_ptr(), n.len());
                    (ev.value, ev.value_len) = (a.as_ptr(), a.len());
                }
                Event::ErrorReply { message } => {
                    ev.kind = KPS_MP_ERROR;
                    let m = s.bytes(&message);
                    (ev.text, ev.text_len) = (m.as_ptr(), m.len());
                }
                Event::ServerPid { pid } => {
                    ev.kind = KPS_MP_SERVER_PID;
                    ev.id = pid;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::tests::call;
    use super::super::handle_exports::*;
    use super::*;

    #[test]
    fn a_handle_event_round_trip_through_the_c_functions() {
        unsafe {
            assert!(kps_mp_session_new(0, 10).is_null());
            let sess = kps_mp_session_new(1 << 20, 64);
            let st = kps_mp_stream_new(sess);
            let (mut out, mut out_len) = (ptr::null(), 0usize);
            call(|e, l| {
                kps_mp_stream_handle_event(
                    sess,
                    st,
                    3,
                    b"access".as_ptr(),
                    6,
                    &mut out,
                    &mut out_len,
                    e,
                    l,
                )
            })
            .unwrap();
            let req: (u8, u32, String, Vec<serde_json::Value>) =
                rmp_serde::from_slice(std::slice::from_raw_parts(out, out_len)).unwrap();
            assert_eq!(req.1, 1);
            assert_eq!(req.2, "plugin.HandleEvent");

            let reply = rmp_serde::to_vec(&(
                1,
                1,
                (),
                serde_json::json!({"EventId": 9, "Data": {"Method": "kong.request.get_header", "Args": ["host"]}}),
            ))
            .unwrap();
            let mut ev: kps_mp_event = std::mem::zeroed();
            call(|e, l| kps_mp_stream_feed(st, reply.as_ptr(), 5, e, l)).unwrap();
            call(|e, l| kps_mp_stream_poll(st, &mut ev, e, l)).unwrap();
            assert_eq!(ev.kind, KPS_MP_NONE);
            call(|e, l| kps_mp_stream_feed(st, reply[5..].as_ptr(), reply.len() - 5, e, l))
                .unwrap();
            call(|e, l| kps_mp_stream_poll(st, &mut ev, e, l)).unwrap();
            assert_eq!(ev.kind, KPS_MP_CALL);
            assert_eq!(ev.event_id, 9);
            assert_eq!(
                ev.method,
                i32::from(crate::codec::methods::index_of(b"kong.request.get_header"))
            );
            assert_eq!(
                std::slice::from_raw_parts(ev.text, ev.text_len),
                b"kong.request.get_header"
            );
            assert_eq!(
                std::slice::from_raw_parts(ev.value, ev.value_len),
                b"\x91\xa4host"
            );
            assert_eq!(kps_mp_stream_has_unread(st), 0);

            // Step with no Data, then a protocol error, then reset.
            call(|e, l| {
                kps_mp_stream_step(
                    sess,
                    st,
                    9,
                    ev.method,
                    ptr::null(),
                    0,
                    &mut out,
                    &mut out_len,
                    e,
                    l,
                )
            })
            .unwrap();
            call(|e, l| kps_mp_stream_feed(st, [0xc1].as_ptr(), 1, e, l)).unwrap();
            let err = call(|e, l| kps_mp_stream_poll(st, &mut ev, e, l)).unwrap_err();
            assert_eq!(
                err,
                "-1: protocol error: malformed MessagePack: invalid byte 0xc1 at offset 0"
            );
            kps_mp_stream_reset(st);
            call(|e, l| kps_mp_stream_poll(st, &mut ev, e, l)).unwrap();
            assert_eq!(ev.kind, KPS_MP_NONE);

            let err =
                call(|e, l| kps_mp_stream_feed(ptr::null_mut(), ptr::null(), 0, e, l)).unwrap_err();
            assert_eq!(err, "-2: NULL stream or data with a non-zero length");
            kps_mp_stream_free(st);
            kps_mp_session_free(sess);
        }
    }
}
