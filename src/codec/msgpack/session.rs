//! The MessagePack-RPC engine, sans I/O (docs/PROTOCOL.md §4).
//!
//! Two scopes, as docs/DESIGN.md "Engine scope" says:
//! - [`Session`]: one per plugin per worker; hands out message ids and holds the limits.
//! - [`Stream`]: one event (or instance call) on one connection; builds the request
//!   bytes, takes the reply bytes in any split and reports [`Event`]s. A stream is
//!   [`Stream::reset`] whenever a connection is checked out, so each checkout starts
//!   with a fresh decoder.
//!
//! Envelopes never reach Lua: the engine writes `[0, id, method, [params]]` and the
//! `{EventId, Data}` maps around value bytes the bridge encoded, and reports the
//! fields of a reply as scalars plus spans of the received bytes.

use crate::codec::received::{Received, reset_buf};
use std::ops::Range;

use rmp::encode;
use serde::Deserialize;

use super::fast;
use super::framer::{Framer, Limits, complete_len, value_len};
use super::read;
use super::write::put_str;
use crate::codec::methods;

/// The request a stream waits a reply for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    StartInstance,
    CloseInstance,
    HandleEvent,
    Step,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::StartInstance => "StartInstance",
            Request::CloseInstance => "CloseInstance",
            Request::HandleEvent => "HandleEvent",
            Request::Step => "Step",
        }
    }
}

/// What one received message means. Spans index the stream's received bytes
/// ([`Stream::bytes`]) and stay valid until the next call on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// StartInstance succeeded with this instance id.
    Started { instance_id: i64 },
    /// CloseInstance succeeded.
    Closed,
    /// The plugin's handler finished (`Data = "ret"`).
    Ret { event_id: i64 },
    /// The plugin calls a PDK method: `method` indexes [`methods::METHODS`]
    /// (0 when unknown, then `name` is the only way to know it); `args` is the
    /// encoded `Args` value, empty when absent.
    Call {
        event_id: i64,
        method: u16,
        name: Range<usize>,
        args: Range<usize>,
    },
    /// The server answered the pending request with an error message.
    ErrorReply { message: Range<usize> },
    /// `[2, "serverPid", pid]`.
    ServerPid { pid: i64 },
}

/// Message ids for one plugin in one worker, and the limits of its streams.
#[derive(Debug)]
pub struct Session {
    pub(super) next_id: u32,
    limits: Limits,
}

impl Session {
    pub fn new(limits: Limits) -> Self {
        Session { next_id: 1, limits }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The next message id: 1, 2, ... wrapping to 1 (MessagePack-RPC ids are 32-bit).
    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = if id == u32::MAX { 1 } else { id + 1 };
        id
    }
}

fn put<T, E: std::fmt::Debug>(r: Result<T, E>) {
    // Writing into a Vec cannot fail.
    r.expect("writing to a Vec");
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    put(encode::write_sint(out, v));
}

#[derive(Deserialize)]
struct StartReply {
    #[serde(rename = "Id")]
    id: i64,
}

/// Decoding and encoding state of one event on one connection.
#[derive(Debug)]
pub struct Stream {
    framer: Framer,
    /// For measuring values inside a complete message.
    scratch: Framer,
    input: Received,
    out: Vec<u8>,
    pending: Option<(u32, Request)>,
    /// Set by a protocol error; the stream is unusable until reset.
    failed: Option<String>,
}

/// The headers of the `{EventId, Data}`-style maps of the requests.
const FIXMAP_1: u8 = 0x81;
const FIXMAP_2: u8 = 0x82;

impl Stream {
    pub fn new(limits: Limits) -> Self {
        Stream {
            framer: Framer::new(limits),
            scratch: Framer::new(limits),
            input: Received::default(),
            out: Vec::new(),
            pending: None,
            failed: None,
        }
    }

    /// Starts over for a fresh connection checkout.
    pub fn reset(&mut self) {
        self.framer.reset();
        self.input.reset();
        reset_buf(&mut self.out);
        self.pending = None;
        self.failed = None;
    }

    /// The received bytes a span of an [`Event`] refers to.
    pub fn bytes(&self, span: &Range<usize>) -> &[u8] {
        self.input.bytes(span)
    }

    /// The request bytes built last.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Whether bytes beyond the reported messages are buffered (a connection
    /// with unread bytes must not go back to the pool).
    pub fn has_unread(&self) -> bool {
        self.input.has_unread()
    }

    #[cfg(test)]
    pub(super) fn out_capacity(&self) -> usize {
        self.out.capacity()
    }

    fn check_usable(&self) -> Result<(), String> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn begin(&mut self, session: &mut Session, method: &str, req: Request) -> Result<(), String> {
        self.check_usable()?;
        if let Some((id, pending)) = self.pending {
            return Err(format!(
                "cannot send {}: reply to {} #{id} not received yet",
                req.name(),
                pending.name()
            ));
        }
        let id = session.take_id();
        self.out.clear();
        // The fixed parts are written as their bytes (fixarray 4, type 0;
        // fixarray 1 for the params): rmp's writers cost more than the writing.
        self.out.extend_from_slice(&[0x94, 0x00]);
        put(encode::write_uint(&mut self.out, u64::from(id)));
        put_str(&mut self.out, method.as_bytes());
        self.out.push(0x91);
        self.pending = Some((id, req));
        Ok(())
    }

    /// `plugin.StartInstance` with `[{Name, Config}]`; `config` is the JSON text
    /// of the plugin configuration.
    pub fn start_instance(
        &mut self,
        session: &mut Session,
        name: &[u8],
        config: &[u8],
    ) -> Result<&[u8], String> {
        self.begin(session, "plugin.StartInstance", Request::StartInstance)?;
        self.out.push(FIXMAP_2);
        put_str(&mut self.out, b"Name");
        put_str(&mut self.out, name);
        put_str(&mut self.out, b"Config");
        put_str(&mut self.out, config);
        Ok(&self.out)
    }

    /// `plugin.CloseInstance` with `[instance_id]`.
    pub fn close_instance(
        &mut self,
        session: &mut Session,
        instance_id: i64,
    ) -> Result<&[u8], String> {
        self.begin(session, "plugin.CloseInstance", Request::CloseInstance)?;
        put_int(&mut self.out, instance_id);
        Ok(&self.out)
    }

    /// `plugin.HandleEvent` with `[{InstanceId, EventName}]`.
    pub fn handle_event(
        &mut self,
        session: &mut Session,
        instance_id: i64,
        event: &[u8],
    ) -> Result<&[u8], String> {
        self.begin(session, "plugin.HandleEvent", Request::HandleEvent)?;
        self.out.push(FIXMAP_2);
        put_str(&mut self.out, b"InstanceId");
        put_int(&mut self.out, instance_id);
        put_str(&mut self.out, b"EventName");
        put_str(&mut self.out, event);
        Ok(&self.out)
    }

    /// The Step that answers a PDK call of `method` (an index into the method
    /// table) with `value`, one encoded MessagePack value; `None`: `Data` absent.
    pub fn step(
        &mut self,
        session: &mut Session,
        event_id: i64,
        method: u16,
        value: Option<&[u8]>,
    ) -> Result<&[u8], String> {
        let m = methods::get(method).ok_or_else(|| format!("unknown method index {method}"))?;
        // The usual case (one whole value) in one pass; anything else gets the
        // framer's exact message.
        if let Some(v) = value.filter(|v| complete_len(v, self.scratch.limits()) != Some(v.len())) {
            let n = value_len(&mut self.scratch, v)
                .map_err(|e| format!("invalid value for {}: {e}", m.name))?;
            if n != v.len() {
                return Err(format!(
                    "invalid value for {}: {} bytes after the value",
                    m.name,
                    v.len() - n
                ));
            }
        }
        self.begin(session, m.step.rpc_name(), Request::Step)?;
        self.out
            .push(if value.is_some() { FIXMAP_2 } else { FIXMAP_1 });
        put_str(&mut self.out, b"EventId");
        put_int(&mut self.out, event_id);
        if let Some(v) = value {
            put_str(&mut self.out, b"Data");
            self.out.extend_from_slice(v);
        }
        Ok(&self.out)
    }

    /// `plugin.StepError`: the PDK call failed with `message`.
    pub fn step_error(
        &mut self,
        session: &mut Session,
        event_id: i64,
        message: &[u8],
    ) -> Result<&[u8], String> {
        self.begin(session, "plugin.StepError", Request::Step)?;
        self.out.push(FIXMAP_2);
        put_str(&mut self.out, b"EventId");
        put_int(&mut self.out, event_id);
        put_str(&mut self.out, b"Data");
        put_str(&mut self.out, message);
        Ok(&self.out)
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.check_usable()?;
        self.input.append(bytes);
        Ok(())
    }

    fn fail(&mut self, msg: String) -> String {
        self.failed = Some(msg.clone());
        msg
    }

    /// The next complete message as an [`Event`], `None` when more bytes are needed.
    /// Notifications other than `serverPid` are skipped, as Kong does.
    pub fn poll(&mut self) -> Result<Option<Event>, String> {
        self.check_usable()?;
        self.input.compact();
        if let Some((event, n)) = self.poll_event_reply() {
            self.input.consumed = n;
            self.pending = None;
            return Ok(Some(event));
        }
        self.poll_framed()
    }

    /// The reply to a pending HandleEvent or Step when it is all there and of
    /// the usual shape ([`fast`]); `None`: [`Stream::poll_framed`] decides.
    fn poll_event_reply(&self) -> Option<(Event, usize)> {
        let Some((id, Request::HandleEvent | Request::Step)) = self.pending else {
            return None;
        };
        if !self.framer.at_start() {
            return None;
        }
        fast::event_reply(&self.input.buf, id, self.framer.limits())
    }

    /// [`Stream::poll`] by framing the message first: every shape, every error.
    pub(super) fn poll_framed(&mut self) -> Result<Option<Event>, String> {
        loop {
            self.input.compact();
            let n = match self.framer.scan(&self.input.buf) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(format!("protocol error: {e}"))),
            };
            self.input.consumed = n;
            match self.parse(n) {
                Ok(Some(ev)) => return Ok(Some(ev)),
                Ok(None) => continue,
                Err(e) => return Err(self.fail(format!("protocol error: {e}"))),
            }
        }
    }

    fn parse(&mut self, n: usize) -> Result<Option<Event>, String> {
        let msg = &self.input.buf[..n];
        let (len, at) = read::array_at(msg, 0).ok_or("message is not an array")?;
        let (kind, at): (u8, _) = read::int_at(msg, at).ok_or("message type is not 1 or 2")?;
        match (kind, len) {
            (1, 4) => self.parse_response(n, at).map(Some),
            (2, 3) => self.parse_notification(n, at),
            (0, 4) => Err(
                "the plugin server sent a request; only responses and notifications are expected"
                    .into(),
            ),
            _ => Err(format!(
                "not a response or notification (type {kind}, {len} elements)"
            )),
        }
    }

    fn parse_notification(&mut self, n: usize, at: usize) -> Result<Option<Event>, String> {
        let msg = &self.input.buf[..n];
        let label = read::text_at(msg, at).ok_or("notification name is not a string")?;
        if msg[label.clone()] != *b"serverPid" {
            return Ok(None);
        }
        // The pid alone or as a one-element array.
        let at = label.end;
        let pid = match read::int_at::<i64>(msg, at) {
            Some((pid, _)) => pid,
            None => match read::array_at(msg, at) {
                Some((1, at)) => {
                    read::int_at::<i64>(msg, at)
                        .ok_or("serverPid is not an integer")?
                        .0
                }
                _ => return Err("serverPid is not an integer".into()),
            },
        };
        Ok(Some(Event::ServerPid { pid }))
    }

    fn parse_response(&mut self, n: usize, at: usize) -> Result<Event, String> {
        let msg = &self.input.buf[..n];
        let (id, at): (u32, _) =
            read::int_at(msg, at).ok_or("response id is not a 32-bit integer")?;
        let (want, req) = match self.pending.take() {
            Some(p) => p,
            None => return Err(format!("response #{id} with no request pending")),
        };
        if id != want {
            return Err(format!("unexpected response id {id} (expected {want})"));
        }
        if msg.get(at) != Some(&0xc0) {
            let len = value_len(&mut self.scratch, &msg[at..])?;
            let message = read::text_at(&msg[..at + len], at)
                .ok_or_else(|| format!("{} error is not a string", req.name()))?;
            return Ok(Event::ErrorReply { message });
        }
        let result = at + 1;
        // The result is the message's last element and the framer found the
        // message's exact end: no scan needed.
        let result_len = msg.len() - result;
        let result_bytes = &msg[result..result + result_len];
        match req {
            Request::StartInstance => {
                let reply: StartReply = rmp_serde::from_slice(result_bytes)
                    .map_err(|e| format!("StartInstance reply has no integer Id ({e})"))?;
                Ok(Event::Started {
                    instance_id: reply.id,
                })
            }
            Request::CloseInstance => Ok(Event::Closed),
            Request::HandleEvent | Request::Step => {
                self.parse_event_reply(req, result, result + result_len)
            }
        }
    }

    /// `{EventId, Data}` where Data is `"ret"` or `{Method, Args}`.
    fn parse_event_reply(
        &mut self,
        req: Request,
        start: usize,
        end: usize,
    ) -> Result<Event, String> {
        let what = req.name();
        let mut event_id = None;
        let mut data = None;
        self.each_entry(start..end, what, |key, value, bytes| {
            match key {
                b"EventId" => {
                    let (id, _) = read::int_at::<i64>(&bytes[..value.end], value.start)
                        .ok_or_else(|| format!("{what} EventId is not an integer"))?;
                    event_id = Some(id);
                }
                b"Data" => data = Some(value),
                _ => {}
            }
            Ok(())
        })?;
        let event_id = event_id.ok_or_else(|| format!("{what} reply has no EventId"))?;
        let data = data.ok_or_else(|| format!("{what} reply has no Data"))?;
        if let Some(text) = read::text_at(&self.input.buf[..data.end], data.start) {
            let text = &self.input.buf[text];
            if text == b"ret" {
                return Ok(Event::Ret { event_id });
            }
            return Err(format!(
                "{what} reply Data is the string {:?}, not \"ret\" or a call",
                String::from_utf8_lossy(text)
            ));
        }
        let mut name = None;
        let mut args = data.end..data.end;
        self.each_entry(data, what, |key, value, bytes| {
            match key {
                b"Method" => {
                    name = Some(
                        read::text_at(&bytes[..value.end], value.start)
                            .ok_or_else(|| format!("{what} call Method is not a string"))?,
                    );
                }
                b"Args" => args = value,
                _ => {}
            }
            Ok(())
        })?;
        let name = name.ok_or_else(|| {
            format!("{what} reply Data is neither \"ret\" nor a call with a Method")
        })?;
        let method = methods::index_of(&self.input.buf[name.clone()]);
        Ok(Event::Call {
            event_id,
            method,
            name,
            args,
        })
    }

    /// Calls `f(key, value_span, inbuf)` for each string-keyed entry of the map at `span`.
    fn each_entry<F>(&mut self, span: Range<usize>, what: &str, mut f: F) -> Result<(), String>
    where
        F: FnMut(&[u8], Range<usize>, &[u8]) -> Result<(), String>,
    {
        let bytes = &self.input.buf[..span.end];
        let (entries, mut at) =
            read::map_at(bytes, span.start).ok_or_else(|| format!("{what} reply is not a map"))?;
        for i in 0..entries {
            let key = match read::text_at(bytes, at) {
                Some(key) => {
                    at = key.end;
                    &bytes[key]
                }
                None => {
                    at += value_len(&mut self.scratch, &bytes[at..])?;
                    b""
                }
            };
            // `span` is exact (framed), so the last value ends where it ends.
            let len = if i + 1 == entries {
                span.end - at
            } else {
                value_len(&mut self.scratch, &bytes[at..])?
            };
            f(key, at..at + len, bytes)?;
            at += len;
        }
        Ok(())
    }
}
