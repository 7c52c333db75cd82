//! The MessagePack-RPC stream decoder (`codec::msgpack::Stream`), driven the way the
//! shim drives it: a request, then whatever the plugin server sends, fed in reads.

use super::script::Script;
use kong_plugin_servers::codec::methods;
use kong_plugin_servers::codec::msgpack::{Event, Limits, Session, Stream, framer};

use super::split::chunks;

/// What one poll gave, with spans replaced by the bytes they name (spans index
/// the stream's buffer, which moves between reads).
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Started(i64),
    Closed,
    Ret(i64),
    Call {
        event_id: i64,
        method: u16,
        name: Vec<u8>,
        args: Vec<u8>,
    },
    ErrorReply(Vec<u8>),
    ServerPid(i64),
    Failed(String),
}

/// Input: byte 0 seeds the read sizes (its top bit: tight limits); byte 1 holds four 2-bit request kinds
/// (0 StartInstance, 1 HandleEvent, 2 CloseInstance, 3 HandleEvent) sent in turn
/// whenever nothing is pending (HandleEvent after that); the rest is what the
/// plugin server sends. A Call is answered with a Step carrying nil.
pub fn check(data: &[u8]) {
    let [seed, script, stream @ ..] = data else {
        return;
    };
    let limits = limits_for(*seed);
    let whole = run(limits, u32::from(*script), stream, &[stream.len()]);
    let split = run(
        limits,
        u32::from(*script),
        stream,
        &chunks(
            u64::from(*seed).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            stream.len(),
        ),
    );
    assert_eq!(
        whole, split,
        "the events depend on how the bytes were split"
    );
}

struct Driver {
    session: Session,
    stream: Stream,
    script: Script,
}

impl Driver {
    /// Sends the next scripted request (nothing may be pending).
    fn request(&mut self) {
        let kind = self.script.next_kind();
        let r = match kind {
            0 => self
                .stream
                .start_instance(&mut self.session, b"py-hello", b"{\"message\":\"hi\"}")
                .map(|_| ()),
            2 => self.stream.close_instance(&mut self.session, 0).map(|_| ()),
            _ => self
                .stream
                .handle_event(&mut self.session, 0, b"access")
                .map(|_| ()),
        };
        r.expect("a request with nothing pending");
    }
}

fn run(limits: Limits, script: u32, bytes: &[u8], reads: &[usize]) -> (Vec<Seen>, bool) {
    let mut d = Driver {
        session: Session::new(limits),
        stream: Stream::new(limits),
        script: Script::new(script, 4),
    };
    d.request();
    let mut seen = Vec::new();
    let mut at = 0;
    for &n in reads {
        if d.stream.feed(&bytes[at..at + n]).is_err() {
            break;
        }
        at += n;
        loop {
            match d.stream.poll() {
                Ok(None) => break,
                Ok(Some(ev)) => {
                    let s = resolve(&d.stream, &ev);
                    seen.push(s);
                    match ev {
                        Event::Call {
                            event_id, method, ..
                        } => {
                            d.stream
                                .step(&mut d.session, event_id, method, Some(&[0xc0]))
                                .expect("step after a call");
                        }
                        Event::ServerPid { .. } => {}
                        _ => d.request(),
                    }
                }
                Err(e) => {
                    seen.push(Seen::Failed(e.clone()));
                    // A failed stream stays failed until reset.
                    assert_eq!(d.stream.poll(), Err(e), "a failed stream recovered");
                    return (seen, false);
                }
            }
        }
    }
    let unread = d.stream.has_unread();
    (seen, unread)
}

fn resolve(stream: &Stream, ev: &Event) -> Seen {
    match ev {
        Event::Started { instance_id } => Seen::Started(*instance_id),
        Event::Closed => Seen::Closed,
        Event::Ret { event_id } => Seen::Ret(*event_id),
        Event::ErrorReply { message } => Seen::ErrorReply(stream.bytes(message).to_vec()),
        Event::ServerPid { pid } => Seen::ServerPid(*pid),
        Event::Call {
            event_id,
            method,
            name,
            args,
        } => {
            assert!(
                methods::get(*method).is_some(),
                "method index {method} out of the table"
            );
            let name = stream.bytes(name).to_vec();
            if *method != methods::UNKNOWN {
                assert_eq!(
                    methods::get(*method).unwrap().name.as_bytes(),
                    &name[..],
                    "index does not match the name"
                );
            }
            let args = stream.bytes(args).to_vec();
            if !args.is_empty() {
                let mut f = framer::Framer::new(Limits::default());
                assert_eq!(
                    framer::value_len(&mut f, &args),
                    Ok(args.len()),
                    "Args is not one value"
                );
            }
            Seen::Call {
                event_id: *event_id,
                method: *method,
                name,
                args,
            }
        }
    }
}

/// The events of `data` fed in one read (for inspecting seeds).
pub fn trace(data: &[u8]) -> (Vec<Seen>, bool) {
    let limits = limits_for(data[0]);
    run(limits, u32::from(data[1]), &data[2..], &[data.len() - 2])
}

/// The top bit of the seed byte picks tight limits, so that the size and depth
/// checks are reached too.
fn limits_for(seed: u8) -> Limits {
    if seed & 0x80 != 0 {
        Limits {
            max_message_size: 200,
            max_depth: 4,
        }
    } else {
        Limits {
            max_message_size: 64 * 1024,
            max_depth: 32,
        }
    }
}
