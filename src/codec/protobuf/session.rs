//! The Protobuf (`ProtoBuf:1`) engine, sans I/O (docs/PROTOCOL.md §5).
//!
//! Two scopes, as docs/DESIGN.md "Engine scope" says:
//! - [`Session`]: one per plugin per worker; hands out `RpcCall` sequences.
//! - [`Stream`]: one request (an instance command or a whole event) on one
//!   connection; builds the outgoing frames, takes incoming bytes in any split
//!   and reports [`Event`]s. Reset it at every connection checkout.
//!
//! During an event the stream walks this state machine:
//!
//! ```text
//! handle_event ─▶ AwaitMethod ─(name frame)─▶ AwaitArgs ─(args frame)─▶ Call reported
//!                     ▲                                                     │ reply()
//!                     └─────────────────────────────────────────────────────┘
//! AwaitMethod ─(empty frame)─▶ AwaitReturn ─(RpcReturn, sequence checked)─▶ Done, Idle
//! ```
//!
//! Envelopes never reach Lua: the engine writes `RpcCall`s and frames around the
//! value bytes the bridge encoded, and reports spans of the received bytes.

use crate::codec::received::{Received, reset_buf};
use std::ops::Range;

use prost::Message;

use super::messages::{
    Call, CmdCloseInstance, CmdGetInstanceStatus, CmdHandleEvent, CmdStartInstance, Return,
    RpcCall, RpcReturn,
};
use super::method_index;

/// Length of the little-endian frame prefix.
pub const PREFIX: usize = 4;

/// The command a stream waits a reply for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    StartInstance,
    CloseInstance,
    GetInstanceStatus,
    HandleEvent,
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::StartInstance => "StartInstance",
            Request::CloseInstance => "CloseInstance",
            Request::GetInstanceStatus => "GetInstanceStatus",
            Request::HandleEvent => "HandleEvent",
        }
    }
}

/// What the received bytes mean. Spans index the stream's received bytes
/// ([`Stream::bytes`]) and stay valid until the next `feed` or `reset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The `InstanceStatus` that answers StartInstance, CloseInstance or
    /// GetInstanceStatus (`started_at` in seconds).
    Status { instance_id: i32, started_at: i64 },
    /// The plugin calls a PDK method: `method` indexes the method table (0 when
    /// the name is not a method of the Protobuf service; then `name` says which);
    /// `args` is the encoded input message, empty when the call has none.
    /// Answer with [`Stream::reply`] before polling again.
    Call {
        method: u16,
        name: Range<usize>,
        args: Range<usize>,
    },
    /// The event finished: the end frame and the `RpcReturn` arrived.
    Done,
}

/// How a connection closed under a pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No byte of the reply arrived. For an event this is "before the first
    /// callback frame": go-pdk closes instead of answering when it has no such
    /// instance, and a pooled connection may belong to a server that restarted.
    /// The caller may re-create the instance and retry once.
    BeforeReply,
    /// Part of the reply or of the event had arrived: a failure, not a retry.
    Later,
}

/// Sequences of one plugin in one worker, and the frame limit of its streams.
#[derive(Debug)]
pub struct Session {
    counter: i64,
    max_message_size: usize,
}

impl Session {
    /// `max_message_size`: the largest frame body accepted or sent.
    pub fn new(max_message_size: usize) -> Self {
        Session {
            counter: 0,
            max_message_size,
        }
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The next sequence. Kong bumps its counter once and sends counter + 1
    /// (2, 3, 4, ...); we send the same numbers.
    fn take_sequence(&mut self) -> i64 {
        self.counter = self.counter.wrapping_add(1);
        self.counter.wrapping_add(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// Waiting for the `RpcReturn` of `req`.
    AwaitReturn {
        seq: i64,
        req: Request,
    },
    /// Event: waiting for a method-name frame (or the empty end frame).
    AwaitMethod {
        seq: i64,
    },
    /// Event: the name frame (at `consumed`, `name_len` bytes) is in; waiting for the args frame.
    AwaitArgs {
        seq: i64,
        name_len: usize,
    },
    /// Event: a call was reported; waiting for [`Stream::reply`].
    AwaitReply {
        seq: i64,
    },
}

/// Decoding and encoding state of one request on one connection.
#[derive(Debug)]
pub struct Stream {
    max_message_size: usize,
    input: Received,
    out: Vec<u8>,
    state: State,
    /// Bytes received since the pending request was built.
    received: usize,
    /// PDK calls answered in the current event.
    calls: u32,
    /// Set by a protocol error; the stream is unusable until reset.
    failed: Option<String>,
}

impl Stream {
    /// `max_message_size`: the largest frame body accepted or sent.
    pub fn new(max_message_size: usize) -> Self {
        Stream {
            max_message_size,
            input: Received::default(),
            out: Vec::new(),
            state: State::Idle,
            received: 0,
            calls: 0,
            failed: None,
        }
    }

    /// Starts over for a fresh connection checkout.
    pub fn reset(&mut self) {
        self.input.reset();
        reset_buf(&mut self.out);
        self.state = State::Idle;
        self.received = 0;
        self.calls = 0;
        self.failed = None;
    }

    /// The received bytes a span of an [`Event`] refers to.
    pub fn bytes(&self, span: &Range<usize>) -> &[u8] {
        self.input.bytes(span)
    }

    /// The frames built last (prefix and body in one buffer: one send).
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Whether bytes beyond the reported messages are buffered (a connection
    /// with unread bytes must not go back to the pool).
    pub fn has_unread(&self) -> bool {
        self.input.has_unread()
    }

    /// Whether no request is pending (the connection may go back to the pool
    /// when nothing is unread either).
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle && self.failed.is_none()
    }

    /// PDK calls answered in the current event.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    #[cfg(test)]
    pub(super) fn inbuf_capacity(&self) -> usize {
        self.input.buf.capacity()
    }

    fn check_usable(&self) -> Result<(), String> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, msg: String) -> String {
        self.failed = Some(msg.clone());
        msg
    }

    fn pending(&self) -> Option<Request> {
        match self.state {
            State::Idle => None,
            State::AwaitReturn { req, .. } => Some(req),
            State::AwaitMethod { .. } | State::AwaitArgs { .. } | State::AwaitReply { .. } => {
                Some(Request::HandleEvent)
            }
        }
    }

    /// Clears the output and appends one frame whose body is `len` bytes written by `body`.
    fn frame(&mut self, len: usize, body: impl FnOnce(&mut Vec<u8>)) -> Result<(), String> {
        if len > self.max_message_size {
            return Err(format!(
                "message of {len} bytes exceeds max_message_size ({})",
                self.max_message_size
            ));
        }
        let prefix = u32::try_from(len)
            .map_err(|_| format!("message of {len} bytes does not fit a frame"))?;
        self.out.clear();
        self.out.reserve(PREFIX + len);
        self.out.extend_from_slice(&prefix.to_le_bytes());
        body(&mut self.out);
        debug_assert_eq!(self.out.len(), PREFIX + len);
        Ok(())
    }

    fn send_call(
        &mut self,
        session: &mut Session,
        req: Request,
        call: Call,
    ) -> Result<&[u8], String> {
        self.check_usable()?;
        if let Some(pending) = self.pending() {
            return Err(format!(
                "cannot send {}: the reply to {} is pending",
                req.name(),
                pending.name()
            ));
        }
        if self.has_unread() {
            return Err(format!(
                "cannot send {}: {} unread bytes from an earlier reply",
                req.name(),
                self.input.unread()
            ));
        }
        let msg = RpcCall {
            sequence: session.take_sequence(),
            call: Some(call),
        };
        self.frame(msg.encoded_len(), |out| {
            msg.encode(out).expect("a Vec grows as needed")
        })
        .map_err(|e| format!("cannot send {}: {e}", req.name()))?;
        self.state = match req {
            Request::HandleEvent => State::AwaitMethod { seq: msg.sequence },
            _ => State::AwaitReturn {
                seq: msg.sequence,
                req,
            },
        };
        self.received = 0;
        self.calls = 0;
        Ok(&self.out)
    }

    /// `cmd_start_instance`; `config` is the JSON text of the plugin configuration.
    pub fn start_instance(
        &mut self,
        session: &mut Session,
        name: &str,
        config: &[u8],
    ) -> Result<&[u8], String> {
        let cmd = CmdStartInstance {
            name: name.to_owned(),
            config: config.to_vec(),
        };
        self.send_call(session, Request::StartInstance, Call::CmdStartInstance(cmd))
    }

    /// `cmd_close_instance`.
    pub fn close_instance(
        &mut self,
        session: &mut Session,
        instance_id: i32,
    ) -> Result<&[u8], String> {
        let cmd = CmdCloseInstance { instance_id };
        self.send_call(session, Request::CloseInstance, Call::CmdCloseInstance(cmd))
    }

    /// `cmd_get_instance_status`.
    pub fn get_instance_status(
        &mut self,
        session: &mut Session,
        instance_id: i32,
    ) -> Result<&[u8], String> {
        let cmd = CmdGetInstanceStatus { instance_id };
        self.send_call(
            session,
            Request::GetInstanceStatus,
            Call::CmdGetInstanceStatus(cmd),
        )
    }

    /// `cmd_handle_event` for the phase `event`.
    pub fn handle_event(
        &mut self,
        session: &mut Session,
        instance_id: i32,
        event: &str,
    ) -> Result<&[u8], String> {
        let cmd = CmdHandleEvent {
            instance_id,
            event_name: event.to_owned(),
        };
        self.send_call(session, Request::HandleEvent, Call::CmdHandleEvent(cmd))
    }

    /// The frame that answers the reported call: `value` is the encoded output
    /// message, empty for "no value".
    pub fn reply(&mut self, value: &[u8]) -> Result<&[u8], String> {
        self.check_usable()?;
        let State::AwaitReply { seq } = self.state else {
            return Err("no PDK call is waiting for a reply".to_string());
        };
        self.frame(value.len(), |out| out.extend_from_slice(value))
            .map_err(|e| format!("cannot reply: {e}"))?;
        self.state = State::AwaitMethod { seq };
        self.calls += 1;
        Ok(&self.out)
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.check_usable()?;
        self.input.append(bytes);
        self.received += bytes.len();
        Ok(())
    }

    /// The body span of the frame starting at `at`, `None` until it is complete.
    /// An oversized frame is refused as soon as its prefix is in.
    fn frame_at(&self, at: usize) -> Result<Option<Range<usize>>, String> {
        let Some(prefix) = self.input.buf.get(at..at + PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > self.max_message_size {
            return Err(format!(
                "frame of {len} bytes exceeds max_message_size ({})",
                self.max_message_size
            ));
        }
        let body = at + PREFIX..at + PREFIX + len;
        Ok((self.input.buf.len() >= body.end).then_some(body))
    }

    /// The next complete message as an [`Event`], `None` when more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Event>, String> {
        self.check_usable()?;
        match self.step() {
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.fail(format!("protocol error: {e}"))),
        }
    }

    fn step(&mut self) -> Result<Option<Event>, String> {
        loop {
            match self.state {
                State::Idle => {
                    return if self.has_unread() {
                        Err(format!(
                            "{} bytes received with no request pending",
                            self.input.unread()
                        ))
                    } else {
                        Ok(None)
                    };
                }
                State::AwaitReply { .. } => {
                    return Err("poll while a PDK call waits for its reply".to_string());
                }
                State::AwaitMethod { seq } => {
                    let Some(body) = self.frame_at(self.input.consumed)? else {
                        return Ok(None);
                    };
                    if body.is_empty() {
                        self.input.consumed = body.end;
                        self.state = State::AwaitReturn {
                            seq,
                            req: Request::HandleEvent,
                        };
                    } else {
                        self.state = State::AwaitArgs {
                            seq,
                            name_len: body.len(),
                        };
                    }
                }
                State::AwaitArgs { seq, name_len } => {
                    let name =
                        self.input.consumed + PREFIX..self.input.consumed + PREFIX + name_len;
                    let Some(args) = self.frame_at(name.end)? else {
                        return Ok(None);
                    };
                    self.input.consumed = args.end;
                    self.state = State::AwaitReply { seq };
                    let method = method_index(&self.input.buf[name.clone()]);
                    return Ok(Some(Event::Call { method, name, args }));
                }
                State::AwaitReturn { seq, req } => {
                    let Some(body) = self.frame_at(self.input.consumed)? else {
                        return Ok(None);
                    };
                    self.input.consumed = body.end;
                    self.state = State::Idle;
                    return self.parse_return(seq, req, body).map(Some);
                }
            }
        }
    }

    fn parse_return(&self, seq: i64, req: Request, body: Range<usize>) -> Result<Event, String> {
        let what = req.name();
        if body.is_empty() {
            // go-pdk's answer to the commands it does not implement.
            return Err(format!("the reply to {what} is an empty frame"));
        }
        let msg = RpcReturn::decode(&self.input.buf[body.clone()])
            .map_err(|e| format!("the reply to {what} is not an RpcReturn ({e})"))?;
        if msg.sequence != seq {
            return Err(format!(
                "the reply to {what} has sequence {} (expected {seq})",
                msg.sequence
            ));
        }
        match (req, msg.r#return) {
            (Request::HandleEvent, None) => Ok(Event::Done),
            (Request::HandleEvent, Some(_)) => Err(format!("the reply to {what} carries a value")),
            (_, Some(Return::InstanceStatus(st))) => Ok(Event::Status {
                instance_id: st.instance_id,
                started_at: st.started_at,
            }),
            (_, _) => Err(format!("the reply to {what} has no instance_status")),
        }
    }

    /// The peer closed the connection (a read returned end of stream). Says
    /// whether any byte of the pending reply had arrived, and why it matters.
    /// The stream is unusable until reset.
    pub fn closed(&mut self) -> (Closed, String) {
        let pending = self.pending();
        let (kind, msg) = match pending {
            Some(req) if self.received == 0 => (
                Closed::BeforeReply,
                format!(
                    "connection closed by the plugin server before any reply to {}",
                    req.name()
                ),
            ),
            Some(Request::HandleEvent) => (
                Closed::Later,
                format!(
                    "connection closed by the plugin server during the event, after {} PDK calls",
                    self.calls
                ),
            ),
            Some(req) => (
                Closed::Later,
                format!(
                    "connection closed by the plugin server in the middle of the reply to {}",
                    req.name()
                ),
            ),
            None => (
                Closed::Later,
                "connection closed by the plugin server".to_string(),
            ),
        };
        self.failed = Some(msg.clone());
        (kind, msg)
    }
}
