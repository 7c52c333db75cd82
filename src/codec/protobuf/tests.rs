//! Engine unit tests: state machine, limits, errors, end-of-stream classification.
//! Wire compatibility with go-pdk is checked in `tests/protobuf_golden.rs`.

use prost::Message;

use super::messages::{Call, InstanceStatus, Return, RpcCall, RpcReturn};
use super::*;
use crate::codec::methods;

const MAX: usize = 1024;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn status_reply(seq: i64, id: i32, at: i64) -> Vec<u8> {
    let st = InstanceStatus {
        name: "p".into(),
        instance_id: id,
        config: None,
        started_at: at,
    };
    frame(
        &RpcReturn {
            sequence: seq,
            r#return: Some(Return::InstanceStatus(st)),
        }
        .encode_to_vec(),
    )
}

fn event_end(seq: i64) -> Vec<u8> {
    let mut out = frame(b"");
    out.extend(frame(
        &RpcReturn {
            sequence: seq,
            r#return: None,
        }
        .encode_to_vec(),
    ));
    out
}

fn pdk_call(name: &str, args: &[u8]) -> Vec<u8> {
    let mut out = frame(name.as_bytes());
    out.extend(frame(args));
    out
}

fn sent_call(bytes: &[u8]) -> RpcCall {
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(
        bytes.len(),
        PREFIX + len,
        "one frame, prefix and body in one buffer"
    );
    RpcCall::decode(&bytes[4..]).unwrap()
}

fn new() -> (Session, Stream) {
    (Session::new(MAX), Stream::new(MAX))
}

/// Feeds `bytes` and asserts that the next poll fails with `error`.
fn assert_feed_fails(stream: &mut Stream, bytes: &[u8], error: &str) {
    stream.feed(bytes).unwrap();
    assert_eq!(stream.poll().unwrap_err(), error);
}

#[test]
fn sequences_follow_kong_2_3_4_and_are_per_session() {
    let (mut session, mut stream) = new();
    let mut other = Session::new(MAX);
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(sent_call(stream.close_instance(&mut session, 1).unwrap()).sequence);
        stream.reset();
    }
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(
        sent_call(stream.close_instance(&mut other, 1).unwrap()).sequence,
        2
    );
}

#[test]
fn start_instance_builds_the_command_and_reports_the_status() {
    let (mut session, mut stream) = new();
    let out = stream
        .start_instance(&mut session, "go-hello", br#"{"message":"x"}"#)
        .unwrap();
    match sent_call(out).call {
        Some(Call::CmdStartInstance(c)) => {
            assert_eq!(c.name, "go-hello");
            assert_eq!(c.config, br#"{"message":"x"}"#);
        }
        other => panic!("{other:?}"),
    }
    assert!(!stream.is_idle());
    stream.feed(&status_reply(2, 77, 1_700_000_000)).unwrap();
    assert_eq!(
        stream.poll().unwrap(),
        Some(Event::Status {
            instance_id: 77,
            started_at: 1_700_000_000
        })
    );
    assert!(stream.is_idle() && !stream.has_unread());
    assert_eq!(stream.poll().unwrap(), None);
}

#[test]
fn get_instance_status_and_close_instance_report_the_status() {
    let (mut session, mut stream) = new();
    let out = stream.get_instance_status(&mut session, 5).unwrap();
    assert!(
        matches!(sent_call(out).call, Some(Call::CmdGetInstanceStatus(c)) if c.instance_id == 5)
    );
    stream.feed(&status_reply(2, 5, 1)).unwrap();
    assert_eq!(
        stream.poll().unwrap(),
        Some(Event::Status {
            instance_id: 5,
            started_at: 1
        })
    );
    // Several requests on one checkout.
    let out = stream.close_instance(&mut session, 5).unwrap();
    assert!(matches!(sent_call(out).call, Some(Call::CmdCloseInstance(c)) if c.instance_id == 5));
    stream.feed(&status_reply(3, 5, 1)).unwrap();
    assert_eq!(
        stream.poll().unwrap(),
        Some(Event::Status {
            instance_id: 5,
            started_at: 1
        })
    );
}

#[test]
fn an_event_reports_calls_one_at_a_time_then_done() {
    let (mut session, mut stream) = new();
    let out = stream.handle_event(&mut session, 7, "access").unwrap();
    match sent_call(out).call {
        Some(Call::CmdHandleEvent(c)) => {
            assert_eq!((c.instance_id, c.event_name.as_str()), (7, "access"))
        }
        other => panic!("{other:?}"),
    }
    stream
        .feed(&pdk_call("kong.request.get_header", b"\x0a\x04host"))
        .unwrap();
    let Some(Event::Call { method, name, args }) = stream.poll().unwrap() else {
        panic!("call")
    };
    assert_eq!(method, methods::index_of(b"kong.request.get_header"));
    assert_eq!(stream.bytes(&name), b"kong.request.get_header");
    assert_eq!(stream.bytes(&args), b"\x0a\x04host");
    assert_eq!(
        stream.reply(b"\x0a\x01x").unwrap(),
        frame(b"\x0a\x01x").as_slice()
    );
    // No argument, no value.
    stream.feed(&pdk_call("kong.log.serialize", b"")).unwrap();
    let Some(Event::Call { args, .. }) = stream.poll().unwrap() else {
        panic!("call")
    };
    assert!(args.is_empty());
    assert_eq!(stream.reply(b"").unwrap(), [0, 0, 0, 0]);
    assert_eq!(stream.calls(), 2);
    stream.feed(&event_end(2)).unwrap();
    assert_eq!(stream.poll().unwrap(), Some(Event::Done));
    assert!(stream.is_idle() && !stream.has_unread());
}

#[test]
fn unknown_and_messagepack_only_methods_have_index_0_and_keep_their_name() {
    for name in ["kong.nope", "kong.response.error", "kong.request.get_body"] {
        let (mut session, mut stream) = new();
        stream.handle_event(&mut session, 1, "access").unwrap();
        stream.feed(&pdk_call(name, b"")).unwrap();
        let Some(Event::Call {
            method, name: span, ..
        }) = stream.poll().unwrap()
        else {
            panic!("call")
        };
        assert_eq!(method, methods::UNKNOWN, "{name}");
        assert_eq!(stream.bytes(&span), name.as_bytes());
    }
    // Every method of the Protobuf service resolves to its own index.
    for (i, m) in methods::METHODS
        .iter()
        .enumerate()
        .filter(|(_, m)| m.pb.is_some())
    {
        assert_eq!(
            usize::from(method_index(m.name.as_bytes())),
            i,
            "{}",
            m.name
        );
    }
}

#[test]
fn an_oversized_incoming_frame_fails_as_soon_as_its_prefix_arrives() {
    let (mut session, mut stream) = new();
    stream.handle_event(&mut session, 1, "access").unwrap();
    stream.feed(&((MAX as u32) + 1).to_le_bytes()).unwrap();
    let err = stream.poll().unwrap_err();
    assert_eq!(
        err,
        format!(
            "protocol error: frame of {} bytes exceeds max_message_size ({MAX})",
            MAX + 1
        )
    );
    // The stream stays failed until reset.
    assert_eq!(stream.feed(b"x").unwrap_err(), err);
    assert_eq!(stream.poll().unwrap_err(), err);
    assert!(!stream.is_idle());
    stream.reset();
    assert!(stream.is_idle());
    assert!(stream.handle_event(&mut session, 1, "access").is_ok());
}

#[test]
fn a_frame_of_exactly_the_limit_is_accepted() {
    let (mut session, mut stream) = new();
    stream.handle_event(&mut session, 1, "access").unwrap();
    let mut bytes = pdk_call("kong.log.serialize", b"");
    bytes.truncate(bytes.len() - 4);
    bytes.extend(frame(&vec![b'a'; MAX]));
    stream.feed(&bytes).unwrap();
    let Some(Event::Call { args, .. }) = stream.poll().unwrap() else {
        panic!("call")
    };
    assert_eq!(args.len(), MAX);
}

#[test]
fn oversized_outgoing_messages_are_refused() {
    let (mut session, mut stream) = new();
    let err = stream
        .start_instance(&mut session, "p", &vec![b'x'; MAX])
        .unwrap_err();
    assert!(
        err.starts_with("cannot send StartInstance: message of"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("exceeds max_message_size ({MAX})")),
        "{err}"
    );
    stream.handle_event(&mut session, 1, "access").unwrap();
    stream.feed(&pdk_call("kong.log.serialize", b"")).unwrap();
    stream.poll().unwrap();
    let err = stream.reply(&vec![b'x'; MAX + 1]).unwrap_err();
    assert!(err.starts_with("cannot reply: message of"), "{err}");
}

#[test]
fn a_wrong_sequence_is_a_protocol_error() {
    let (mut session, mut stream) = new();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    assert_feed_fails(
        &mut stream,
        &status_reply(3, 1, 1),
        "protocol error: the reply to StartInstance has sequence 3 (expected 2)",
    );
    stream.reset();
    stream.handle_event(&mut session, 1, "log").unwrap();
    assert_feed_fails(
        &mut stream,
        &event_end(2),
        "protocol error: the reply to HandleEvent has sequence 2 (expected 3)",
    );
}

#[test]
fn malformed_or_misplaced_replies_are_protocol_errors() {
    let (mut session, mut stream) = new();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    stream.feed(&frame(&[0xff, 0xff])).unwrap();
    assert!(
        stream
            .poll()
            .unwrap_err()
            .starts_with("protocol error: the reply to StartInstance is not an RpcReturn")
    );

    stream.reset();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    // go-pdk answers get_plugin_names with an empty frame; as a status reply it is wrong.
    assert_feed_fails(
        &mut stream,
        &frame(b""),
        "protocol error: the reply to StartInstance is an empty frame",
    );

    stream.reset();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    let no_status = RpcReturn {
        sequence: 4,
        r#return: None,
    };
    assert_feed_fails(
        &mut stream,
        &frame(&no_status.encode_to_vec()),
        "protocol error: the reply to StartInstance has no instance_status",
    );

    stream.reset();
    stream.handle_event(&mut session, 1, "access").unwrap();
    let mut bytes = frame(b"");
    bytes.extend(status_reply(5, 1, 1));
    assert_feed_fails(
        &mut stream,
        &bytes,
        "protocol error: the reply to HandleEvent carries a value",
    );
}

#[test]
fn bytes_with_no_request_pending_are_a_protocol_error() {
    let (_, mut stream) = new();
    assert_feed_fails(
        &mut stream,
        b"\x00",
        "protocol error: 1 bytes received with no request pending",
    );
}

#[test]
fn misuse_of_the_call_order_is_refused() {
    let (mut session, mut stream) = new();
    assert_eq!(
        stream.reply(b"").unwrap_err(),
        "no PDK call is waiting for a reply"
    );
    stream.handle_event(&mut session, 1, "access").unwrap();
    assert_eq!(
        stream.close_instance(&mut session, 1).unwrap_err(),
        "cannot send CloseInstance: the reply to HandleEvent is pending"
    );
    stream.feed(&pdk_call("kong.log.serialize", b"")).unwrap();
    stream.poll().unwrap();
    assert_eq!(
        stream.poll().unwrap_err(),
        "protocol error: poll while a PDK call waits for its reply"
    );
}

#[test]
fn unread_bytes_keep_a_connection_out_of_the_pool() {
    let (mut session, mut stream) = new();
    stream.close_instance(&mut session, 1).unwrap();
    let mut bytes = status_reply(2, 1, 1);
    bytes.push(0);
    stream.feed(&bytes).unwrap();
    assert!(matches!(stream.poll().unwrap(), Some(Event::Status { .. })));
    assert!(stream.has_unread());
    let err = stream.close_instance(&mut session, 1).unwrap_err();
    assert_eq!(
        err,
        "cannot send CloseInstance: 1 unread bytes from an earlier reply"
    );
}

#[test]
fn closed_before_the_first_callback_frame_is_reported_as_retryable() {
    let (mut session, mut stream) = new();
    stream.handle_event(&mut session, 1, "access").unwrap();
    let (kind, msg) = stream.closed();
    assert_eq!(kind, Closed::BeforeReply);
    assert_eq!(
        msg,
        "connection closed by the plugin server before any reply to HandleEvent"
    );
    assert_eq!(stream.poll().unwrap_err(), msg);
    // The same for an instance command (a stale pooled connection).
    stream.reset();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    assert_eq!(stream.closed().0, Closed::BeforeReply);
}

#[test]
fn closed_after_part_of_the_event_is_a_failure() {
    let (mut session, mut stream) = new();
    stream.handle_event(&mut session, 1, "access").unwrap();
    // Half a prefix.
    stream.feed(&[3, 0]).unwrap();
    assert_eq!(stream.poll().unwrap(), None);
    assert_eq!(stream.closed().0, Closed::Later);

    // After one answered call (go-pdk closes after kong.response.exit, or it died).
    stream.reset();
    stream.handle_event(&mut session, 1, "access").unwrap();
    stream
        .feed(&pdk_call("kong.response.exit", b"\x08\xc8\x01"))
        .unwrap();
    stream.poll().unwrap();
    stream.reply(b"").unwrap();
    let (kind, msg) = stream.closed();
    assert_eq!(kind, Closed::Later);
    assert_eq!(
        msg,
        "connection closed by the plugin server during the event, after 1 PDK calls"
    );

    // In the middle of a status reply.
    stream.reset();
    stream.start_instance(&mut session, "p", b"{}").unwrap();
    stream.feed(&status_reply(5, 1, 1)[..6]).unwrap();
    assert_eq!(stream.poll().unwrap(), None);
    assert_eq!(stream.closed().0, Closed::Later);
}

#[test]
fn a_close_with_nothing_pending_is_not_retryable() {
    let (_, mut stream) = new();
    assert_eq!(
        stream.closed(),
        (
            Closed::Later,
            "connection closed by the plugin server".to_string()
        )
    );
}

#[test]
fn reset_keeps_small_buffers_and_releases_large_ones() {
    let (mut session, mut stream) = (Session::new(1 << 20), Stream::new(1 << 20));
    stream.handle_event(&mut session, 1, "access").unwrap();
    stream
        .feed(&pdk_call("kong.log.serialize", &vec![0; 200 * 1024]))
        .unwrap();
    stream.poll().unwrap();
    stream.reset();
    assert!(stream.inbuf_capacity() <= 64 * 1024);
    assert!(stream.is_idle() && !stream.has_unread());
}
