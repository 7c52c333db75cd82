//! The Protobuf frame and message decoder (`codec::protobuf::Stream`: length-prefixed
//! frames, method-name/args frame pairs, `RpcReturn`), driven the way the shim
//! drives it: a command, then whatever the plugin server sends, fed in reads.

use super::script::Script;
use kong_plugin_servers::codec::methods;
use kong_plugin_servers::codec::protobuf::{Closed, Event, Session, Stream};

use super::split::chunks;

/// What one poll gave, with spans replaced by the bytes they name.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Status(i32, i64),
    Call {
        method: u16,
        name: Vec<u8>,
        args: Vec<u8>,
    },
    Done,
    Failed(String),
    /// Bytes beyond the reply: the connection cannot be used again.
    Unread,
    /// What the stream says when the connection closes after the last byte.
    ClosedAt(Closed, String),
}

/// Input: byte 0 seeds the read sizes (its top bit: a 64-byte frame limit); bytes
/// 1-2 (little-endian) hold eight 2-bit commands (0 StartInstance, 1 HandleEvent,
/// 2 CloseInstance, 3 GetInstanceStatus; HandleEvent after the eighth); then one
/// segment per command, `[len: u16 LE][len bytes]`: what the plugin server sends
/// after that command (the last segment may be cut short). A call is answered with
/// an empty value. The events must not depend on how each segment is split into reads.
pub fn check(data: &[u8]) {
    let [seed, lo, hi, rest @ ..] = data else {
        return;
    };
    let script = u32::from(u16::from_le_bytes([*lo, *hi]));
    let limit = limit_for(*seed);
    let segments = segments(rest);
    let whole = run(limit, script, &segments, None);
    let split = run(limit, script, &segments, Some(*seed));
    assert_eq!(
        whole, split,
        "the events depend on how the bytes were split"
    );
}

/// The events of `data` with each segment fed in one read (for inspecting seeds).
pub fn trace(data: &[u8]) -> Vec<Seen> {
    let script = u32::from(u16::from_le_bytes([data[1], data[2]]));
    run(limit_for(data[0]), script, &segments(&data[3..]), None)
}

fn segments(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    out
}

fn limit_for(seed: u8) -> usize {
    if seed & 0x80 != 0 { 64 } else { 64 * 1024 }
}

struct Driver {
    session: Session,
    stream: Stream,
    script: Script,
}

impl Driver {
    /// Sends the next scripted command (nothing may be pending).
    fn request(&mut self) {
        let kind = self.script.next_kind();
        let (s, st) = (&mut self.session, &mut self.stream);
        let r = match kind {
            0 => st
                .start_instance(s, "go-hello", b"{\"message\":\"Kong!\"}")
                .map(|_| ()),
            2 => st.close_instance(s, 7).map(|_| ()),
            3 => st.get_instance_status(s, 7).map(|_| ()),
            _ => st.handle_event(s, 7, "access").map(|_| ()),
        };
        r.expect("a command with nothing pending");
    }
}

fn run(limit: usize, script: u32, segments: &[&[u8]], split: Option<u8>) -> Vec<Seen> {
    let mut d = Driver {
        session: Session::new(limit),
        stream: Stream::new(limit),
        script: Script::new(script, 8),
    };
    d.request();
    let mut seen = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let reads = match split {
            None => vec![segment.len()],
            Some(seed) => chunks(
                u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64,
                segment.len(),
            ),
        };
        // The reply is complete once Status or Done came; later bytes of the
        // segment are only buffered, as the shim stops reading then.
        let mut finished = false;
        let mut at = 0;
        for n in reads {
            d.stream
                .feed(&segment[at..at + n])
                .expect("feed to a usable stream");
            at += n;
            while !finished {
                match d.stream.poll() {
                    Ok(None) => break,
                    Ok(Some(ev)) => {
                        seen.push(resolve(&d.stream, &ev));
                        match ev {
                            Event::Call { .. } => {
                                d.stream.reply(b"").expect("reply to a call");
                            }
                            Event::Status { .. } | Event::Done => finished = true,
                        }
                    }
                    Err(e) => {
                        seen.push(Seen::Failed(e.clone()));
                        assert_eq!(d.stream.poll(), Err(e), "a failed stream recovered");
                        return seen;
                    }
                }
            }
        }
        if !finished {
            break;
        }
        if d.stream.has_unread() {
            // The shim closes such a connection instead of sending on it.
            seen.push(Seen::Unread);
            return seen;
        }
        d.request();
    }
    let (kind, msg) = d.stream.closed();
    seen.push(Seen::ClosedAt(kind, msg));
    seen
}

fn resolve(stream: &Stream, ev: &Event) -> Seen {
    match ev {
        Event::Status {
            instance_id,
            started_at,
        } => Seen::Status(*instance_id, *started_at),
        Event::Done => Seen::Done,
        Event::Call { method, name, args } => {
            let m = methods::get(*method)
                .unwrap_or_else(|| panic!("method index {method} out of the table"));
            let name = stream.bytes(name).to_vec();
            if *method != methods::UNKNOWN {
                assert_eq!(
                    m.name.as_bytes(),
                    &name[..],
                    "index does not match the name"
                );
                assert!(m.pb.is_some(), "{} has no Protobuf types", m.name);
            }
            Seen::Call {
                method: *method,
                name,
                args: stream.bytes(args).to_vec(),
            }
        }
    }
}
