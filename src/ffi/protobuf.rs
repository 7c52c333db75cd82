//! `extern "C"` adapters for the Protobuf engine (`codec::protobuf`), the hot path
//! of Go plugins: scalars and byte pointers only.
//!
//! Lua owns one `kps_pb_session` per plugin per worker (sequences, frame limit) and one
//! `kps_pb_stream` per request in flight on a connection (reset at checkout).
//! A request builder (`kps_pb_stream_<command>`) builds the frames to send into the stream's output,
//! `kps_pb_stream_feed` appends what the socket returned, `kps_pb_stream_poll` reports the next
//! complete event into a caller-owned `kps_pb_event`, `kps_pb_stream_reply` frames the
//! answer to a PDK call, and `kps_pb_stream_closed` classifies an end of stream.
//! Output and event pointers are borrowed from the stream: valid until the next
//! call on it.

#![allow(non_camel_case_types)]

use std::ptr;

use super::args::{byte_arg, required_bytes};
use super::engine::{null_argument, stream_build, stream_handle, stream_output, stream_poll};
use super::errbuf::write_error;
use crate::codec::protobuf::{Closed, Event, Session, Stream};

/// Sequences of one plugin in one worker.
pub struct kps_pb_session(Session);

/// One request (an instance command or a whole event) on one connection.
pub struct kps_pb_stream(Stream);

stream_handle!(kps_pb_stream, kps_pb_session, |session| Stream::new(
    session.0.max_message_size()
));

/// `kps_pb_event.kind`: more bytes are needed.
pub const KPS_PB_NONE: i32 = 0;
/// `kps_pb_event.kind`: an `InstanceStatus` arrived (`id` = instance id, `started_at`).
pub const KPS_PB_STATUS: i32 = 1;
/// `kps_pb_event.kind`: a PDK call (`method`, `text` = name, `value` = encoded input); answer with `kps_pb_stream_reply`.
pub const KPS_PB_CALL: i32 = 2;
/// `kps_pb_event.kind`: the event finished (end frame and `RpcReturn` received).
pub const KPS_PB_DONE: i32 = 3;

/// `kps_pb_stream_closed`: no byte of the reply had arrived (retry allowed once).
pub const KPS_PB_CLOSED_BEFORE_REPLY: i32 = 1;
/// `kps_pb_stream_closed`: part of the reply or event had arrived (a failure).
pub const KPS_PB_CLOSED_LATER: i32 = 0;

/// What `kps_pb_stream_poll` found, as scalars and borrowed bytes (the shape of
/// `kps_mp_event`, so that the Lua transports read both alike).
#[repr(C)]
pub struct kps_pb_event {
    /// One of `KPS_PB_NONE`, `KPS_PB_STATUS`, `KPS_PB_CALL`, `KPS_PB_DONE`.
    pub kind: i32,
    /// Call: index into the PDK method table, 0 for a name the Protobuf service lacks.
    pub method: i32,
    /// Status: the instance id.
    pub id: i64,
    /// Status: the instance's start time (seconds).
    pub started_at: i64,
    /// Call: the encoded input message (`value_len` 0 when the call has none).
    pub value: *const u8,
    pub value_len: usize,
    /// Call: the method name as sent.
    pub text: *const u8,
    pub text_len: usize,
}

/// Makes a session. `max_message_size` bounds every frame received or sent
/// (bytes). Release it with `kps_pb_session_free`.
///
/// # Errors
/// Returns NULL when `max_message_size` is 0 or does not fit a frame's 32-bit length.
///
/// # Panics
/// None (allocation failure aborts the process, as everywhere in Rust).
///
/// # Safety
/// None: the returned pointer is owned by the caller until `kps_pb_session_free`.
#[unsafe(no_mangle)]
pub extern "C" fn kps_pb_session_new(max_message_size: u64) -> *mut kps_pb_session {
    match u32::try_from(max_message_size) {
        Ok(max) if max > 0 => Box::into_raw(Box::new(kps_pb_session(Session::new(max as usize)))),
        _ => ptr::null_mut(),
    }
}

/// A UTF-8 string argument (protobuf `string` fields must be UTF-8).
///
/// # Safety
/// `ptr` valid for `len` bytes of reads (or `len` 0).
unsafe fn text<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a str, String> {
    let bytes = unsafe { required_bytes(ptr, len, what) }?;
    std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

/// Builds `RpcCall{cmd_start_instance{name, config}}` (one frame) and points `out`
/// at it. `config` is the JSON text of the plugin configuration.
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer; `KPS_ERR_FAILED` (-1) when a request is
/// already pending on the stream, unread bytes remain, the stream failed, `name`
/// is not UTF-8 or the message exceeds `max_message_size`.
///
/// # Panics
/// Never across the boundary: a panic becomes `KPS_ERR_PANIC` (-3) with a message.
///
/// # Safety
/// `session`/`stream` from their `_new`; `name` valid for `name_len` bytes and
/// `config` for `config_len` bytes of reads; `out`/`out_len` valid for one write;
/// `errbuf` null or valid for `*errbuf_len` bytes, `errbuf_len` null or valid.
/// No other thread may use the handles during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_start_instance(
    session: *mut kps_pb_session,
    stream: *mut kps_pb_stream,
    name: *const u8,
    name_len: usize,
    config: *const u8,
    config_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "kps_pb_stream_start_instance: null argument";
    if name.is_null() || config.is_null() {
        return null_argument(errbuf, errbuf_len, NULL);
    }
    // SAFETY: per the contract.
    unsafe {
        stream_build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            NULL,
            |s, st| {
                let name = text(name, name_len, "plugin name")?;
                let config = required_bytes(config, config_len, "config")?;
                st.0.start_instance(&mut s.0, name, config)
            },
        )
    }
}

/// Builds `RpcCall{cmd_close_instance{instance_id}}` and points `out` at it.
///
/// # Errors
/// As `kps_pb_stream_start_instance`.
///
/// # Panics
/// Never across the boundary.
///
/// # Safety
/// As `kps_pb_stream_start_instance`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_close_instance(
    session: *mut kps_pb_session,
    stream: *mut kps_pb_stream,
    instance_id: i32,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "kps_pb_stream_close_instance: null argument";
    // SAFETY: per the contract.
    unsafe {
        stream_build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            NULL,
            |s, st| st.0.close_instance(&mut s.0, instance_id),
        )
    }
}

/// Builds `RpcCall{cmd_handle_event{instance_id, event_name}}` and points `out`
/// at it; the stream then expects PDK calls and the end of the event.
///
/// # Errors
/// As `kps_pb_stream_start_instance` (`event` must be UTF-8).
///
/// # Panics
/// Never across the boundary.
///
/// # Safety
/// As `kps_pb_stream_start_instance`; `event` valid for `event_len` bytes of reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_handle_event(
    session: *mut kps_pb_session,
    stream: *mut kps_pb_stream,
    instance_id: i32,
    event: *const u8,
    event_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "kps_pb_stream_handle_event: null argument";
    if event.is_null() {
        return null_argument(errbuf, errbuf_len, NULL);
    }
    // SAFETY: per the contract.
    unsafe {
        stream_build(
            session,
            stream,
            out,
            out_len,
            errbuf,
            errbuf_len,
            NULL,
            |s, st| {
                let event = text(event, event_len, "event name")?;
                st.0.handle_event(&mut s.0, instance_id, event)
            },
        )
    }
}

/// Frames the answer to the PDK call last reported (`value`: the encoded output
/// message, `value_len` 0 for "no value") and points `out` at the frame.
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer (`value` may be null when `value_len`
/// is 0); `KPS_ERR_FAILED` (-1) when no call waits for a reply, the stream
/// failed, or the value exceeds `max_message_size`.
///
/// # Panics
/// Never across the boundary.
///
/// # Safety
/// `stream` from `kps_pb_stream_new`; `value` valid for `value_len` bytes of
/// reads; `out`/`out_len` valid for one write; errbuf as above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_reply(
    stream: *mut kps_pb_stream,
    value: *const u8,
    value_len: usize,
    out: *mut *const u8,
    out_len: *mut usize,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "kps_pb_stream_reply: null argument";
    // SAFETY: per the contract.
    let Some(value) = (unsafe { byte_arg(value, value_len) }) else {
        return null_argument(errbuf, errbuf_len, NULL);
    };
    // SAFETY: per the contract.
    unsafe {
        stream_output(stream, out, out_len, errbuf, errbuf_len, NULL, |st| {
            st.0.reply(value)
        })
    }
}

/// Reports the next complete event into `*ev` (`kind` `KPS_PB_NONE` when more
/// bytes are needed). Call pointers borrow the stream until its next call.
///
/// # Errors
/// `KPS_ERR_ARGS` (-2) for a null pointer; `KPS_ERR_FAILED` (-1) for a protocol
/// error (an oversized frame, an undecodable or unexpected `RpcReturn`, a wrong
/// sequence, bytes with no request pending, a poll while a call waits for its
/// reply); the stream is then unusable until reset.
///
/// # Panics
/// Never across the boundary.
///
/// # Safety
/// `stream` from `kps_pb_stream_new`; `ev` valid for one write; errbuf as above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_poll(
    stream: *mut kps_pb_stream,
    ev: *mut kps_pb_event,
    errbuf: *mut u8,
    errbuf_len: *mut usize,
) -> i32 {
    const NULL: &str = "kps_pb_stream_poll: null argument";
    // SAFETY: per the contract.
    unsafe {
        stream_poll(stream, ev, errbuf, errbuf_len, NULL, |st, e| {
            let s = &mut st.0;
            *e = kps_pb_event {
                kind: KPS_PB_NONE,
                method: 0,
                id: 0,
                started_at: 0,
                value: ptr::null(),
                value_len: 0,
                text: ptr::null(),
                text_len: 0,
            };
            match s.poll()? {
                None => {}
                Some(Event::Status {
                    instance_id,
                    started_at,
                }) => {
                    e.kind = KPS_PB_STATUS;
                    e.id = i64::from(instance_id);
                    e.started_at = started_at;
                }
                Some(Event::Call { method, name, args }) => {
                    e.kind = KPS_PB_CALL;
                    e.method = i32::from(method);
                    let (n, a) = (s.bytes(&name), s.bytes(&args));
                    (e.text, e.text_len) = (n.as_ptr(), n.len());
                    (e.value, e.value_len) = (a.as_ptr(), a.len());
                }
                Some(Event::Done) => e.kind = KPS_PB_DONE,
            }
            Ok(())
        })
    }
}

/// Tells the stream that the peer closed the connection. Returns
/// `KPS_PB_CLOSED_BEFORE_REPLY` (1) when no byte of the pending reply had arrived
/// (for an event: closed before the first callback frame, which go-pdk does for
/// an unknown instance; re-create the instance and retry once), else
/// `KPS_PB_CLOSED_LATER` (0); a description goes into `(msg, msg_len)`. The
/// stream is unusable until reset. Null `stream` returns `KPS_PB_CLOSED_LATER`
/// with a message saying so.
///
/// # Errors
/// None (the classification is the result).
///
/// # Panics
/// None.
///
/// # Safety
/// `stream` null or from `kps_pb_stream_new`; `msg` null or valid for `*msg_len`
/// bytes of writes, `msg_len` null or valid for reads and writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kps_pb_stream_closed(
    stream: *mut kps_pb_stream,
    msg: *mut u8,
    msg_len: *mut usize,
) -> i32 {
    // SAFETY: null or live per the contract.
    let Some(s) = (unsafe { stream.as_mut() }) else {
        // SAFETY: forwarded msg contract (no stale message for the caller).
        unsafe { write_error(msg, msg_len, "kps_pb_stream_closed: null stream") };
        return KPS_PB_CLOSED_LATER;
    };
    let (kind, text) = s.0.closed();
    // SAFETY: forwarded msg contract.
    unsafe { write_error(msg, msg_len, &text) };
    match kind {
        Closed::BeforeReply => KPS_PB_CLOSED_BEFORE_REPLY,
        Closed::Later => KPS_PB_CLOSED_LATER,
    }
}
