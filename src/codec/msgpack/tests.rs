//! Engine tests against bytes recorded from the real kong-pdk (tests/vectors/gen_msgpack.py).

use super::*;
use crate::codec::methods::{UNKNOWN, index_of};
use crate::test_support::unhex;

const VECTORS: &str = include_str!("../../../tests/vectors/msgpack.json");

fn vectors() -> serde_json::Value {
    serde_json::from_str(VECTORS).unwrap()
}

struct Turn {
    label: String,
    request: Vec<u8>,
    reply: Vec<u8>,
}

fn conversation() -> Vec<Turn> {
    vectors()["conversation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Turn {
            label: t["label"].as_str().unwrap().to_string(),
            request: unhex(t["request"].as_str().unwrap()),
            reply: unhex(t["reply"].as_str().unwrap()),
        })
        .collect()
}

fn packed<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec(v).unwrap()
}

fn str_map(entries: &[(&str, &[&str])]) -> Vec<u8> {
    let mut v = Vec::new();
    rmp::encode::write_map_len(&mut v, entries.len() as u32).unwrap();
    for (k, vals) in entries {
        rmp::encode::write_str(&mut v, k).unwrap();
        rmp::encode::write_array_len(&mut v, vals.len() as u32).unwrap();
        for s in *vals {
            rmp::encode::write_str(&mut v, s).unwrap();
        }
    }
    v
}

fn idx(name: &str) -> u16 {
    let i = index_of(name.as_bytes());
    assert_ne!(i, UNKNOWN, "{name}");
    i
}

/// A session with the default limits and a stream of it.
fn new() -> (Session, Stream) {
    let session = Session::new(Limits::default());
    let stream = Stream::new(session.limits());
    (session, stream)
}

/// Builds the request of turn `label` as Kong would.
fn build(stream: &mut Stream, session: &mut Session, label: &str) -> Vec<u8> {
    let out = match label {
        "start_instance" => stream.start_instance(session, b"vhello", br#"{"message":"hi"}"#),
        "handle_event" | "no_instance" => stream.handle_event(session, 0, b"access"),
        "step_string" => stream.step(
            session,
            0,
            idx("kong.request.get_header"),
            Some(&packed(&"example.com")),
        ),
        "step_multimap" => {
            let v = str_map(&[
                ("host", &["example.com"]),
                ("accept", &["a", "b"]),
                ("x-e", &[]),
            ]);
            stream.step(session, 0, idx("kong.request.get_headers"), Some(&v))
        }
        "step_raw_body" => {
            let mut v = Vec::new();
            rmp::encode::write_bin(&mut v, b"\x00\xffbody").unwrap();
            stream.step(session, 0, idx("kong.request.get_raw_body"), Some(&v))
        }
        "step_error" => {
            stream.step_error(session, 0, b"could not find pdk method: kong.nope.missing")
        }
        "step_nil" => stream.step(session, 0, idx("kong.response.set_header"), None),
        "close_instance" => stream.close_instance(session, 0),
        other => panic!("unknown turn {other}"),
    };
    out.unwrap().to_vec()
}

/// What the reply of each turn must decode to, as (kind, details) text.
fn expected(label: &str) -> String {
    match label {
        "start_instance" => "started 0".into(),
        "handle_event" => "call 0 kong.request.get_header known [\"host\"]".into(),
        "step_string" => "call 0 kong.request.get_headers known []".into(),
        "step_multimap" => "call 0 kong.request.get_raw_body known []".into(),
        "step_raw_body" => "call 0 kong.nope.missing unknown [1,\"two\"]".into(),
        "step_error" => "call 0 kong.response.set_header known [\"x-result\",\"example.com|['accept', 'host', 'x-e']|b'\\\\x00\\\\xffbody'|could not find pdk method: kong.nope.missing\"]".into(),
        "step_nil" => "ret 0".into(),
        "close_instance" => "closed".into(),
        "no_instance" => "error no plugin instance #0".into(),
        other => panic!("unknown turn {other}"),
    }
}

fn describe(stream: &Stream, ev: &Event) -> String {
    match ev {
        Event::Started { instance_id } => format!("started {instance_id}"),
        Event::Closed => "closed".into(),
        Event::Ret { event_id } => format!("ret {event_id}"),
        Event::Call {
            event_id,
            method,
            name,
            args,
        } => {
            let name = String::from_utf8(stream.bytes(name).to_vec()).unwrap();
            let known = if *method == UNKNOWN {
                "unknown"
            } else {
                "known"
            };
            if *method != UNKNOWN {
                assert_eq!(crate::codec::methods::get(*method).unwrap().name, name);
            }
            let args: serde_json::Value = rmp_serde::from_slice(stream.bytes(args)).unwrap();
            format!("call {event_id} {name} {known} {args}")
        }
        Event::ErrorReply { message } => {
            format!("error {}", String::from_utf8_lossy(stream.bytes(message)))
        }
        Event::ServerPid { pid } => format!("pid {pid}"),
    }
}

#[test]
fn requests_match_the_bytes_kong_pdk_decodes() {
    let (mut session, mut stream) = new();
    for turn in conversation() {
        let built = build(&mut stream, &mut session, &turn.label);
        assert_eq!(built, turn.request, "request of {}", turn.label);
        stream.feed(&turn.reply).unwrap();
        let ev = stream.poll().unwrap().expect("a complete reply");
        assert_eq!(
            describe(&stream, &ev),
            expected(&turn.label),
            "reply of {}",
            turn.label
        );
        assert!(stream.poll().unwrap().is_none());
        assert!(!stream.has_unread());
    }
}

/// A session whose next request gets id `next_id`.
fn session_at(next_id: u32) -> Session {
    let mut s = Session::new(Limits::default());
    s.next_id = next_id;
    s
}

#[test]
fn other_request_shapes_match_msgpack_python() {
    let v = vectors();
    let req = |k: &str| unhex(v["requests"][k].as_str().unwrap());
    let mut stream = Stream::new(Limits::default());

    let mut s = session_at(10);
    let out = stream
        .step(&mut s, 3, idx("kong.request.get_query"), Some(&[0x80]))
        .unwrap()
        .to_vec();
    assert_eq!(out, req("step_empty_map"));

    let mut s = session_at(70000);
    stream.reset();
    let out = stream
        .handle_event(&mut s, 1 << 40, b"log")
        .unwrap()
        .to_vec();
    assert_eq!(out, req("step_big_ids"));

    let mut s = session_at(300);
    stream.reset();
    assert_eq!(
        stream.close_instance(&mut s, -5).unwrap(),
        req("close_negative")
    );

    let mut s = session_at(11);
    stream.reset();
    let mut cred = Vec::new();
    rmp::encode::write_map_len(&mut cred, 2).unwrap();
    for (k, val) in [("id", "c1"), ("consumer_id", "u1")] {
        rmp::encode::write_str(&mut cred, k).unwrap();
        rmp::encode::write_str(&mut cred, val).unwrap();
    }
    let out = stream
        .step(&mut s, 1, idx("kong.client.get_credential"), Some(&cred))
        .unwrap();
    assert_eq!(out, req("step_credential"));
}

#[test]
fn every_step_method_name_is_used() {
    let mut s = Session::new(Limits::default());
    let mut stream = Stream::new(Limits::default());
    for (name, rpc) in [
        ("kong.client.load_consumer", "plugin.StepConsumer"),
        ("kong.router.get_route", "plugin.StepRoute"),
        ("kong.router.get_service", "plugin.StepService"),
        ("kong.node.get_memory_stats", "plugin.StepMemoryStats"),
        ("kong.service.response.get_headers", "plugin.StepMultiMap"),
    ] {
        stream.reset();
        let out = stream.step(&mut s, 1, idx(name), Some(&[0xc0])).unwrap();
        let msg: (u8, u32, String, Vec<serde_json::Value>) = rmp_serde::from_slice(out).unwrap();
        assert_eq!(msg.2, rpc, "{name}");
    }
    stream.reset();
    let out = stream.step(&mut s, 1, UNKNOWN, None).unwrap();
    let msg: (u8, u32, String, Vec<serde_json::Value>) = rmp_serde::from_slice(out).unwrap();
    assert_eq!(msg.2, "plugin.Step");
    assert_eq!(msg.3, vec![serde_json::json!({"EventId": 1})]);
}

#[test]
fn replies_decode_at_every_split_point() {
    for turn in conversation() {
        for cut in 0..=turn.reply.len() {
            let mut session = Session::new(Limits::default());
            // Bring the session to this turn's id.
            let id_of_turn = conversation()
                .iter()
                .position(|t| t.label == turn.label)
                .unwrap() as u32
                + 1;
            session.next_id = id_of_turn;
            let mut stream = Stream::new(session.limits());
            build(&mut stream, &mut session, &turn.label);
            stream.feed(&turn.reply[..cut]).unwrap();
            let first = stream.poll().unwrap();
            if cut < turn.reply.len() {
                assert!(first.is_none(), "{} complete after {cut} bytes", turn.label);
                stream.feed(&turn.reply[cut..]).unwrap();
                let ev = stream.poll().unwrap().expect("complete");
                assert_eq!(describe(&stream, &ev), expected(&turn.label));
            } else {
                assert_eq!(describe(&stream, &first.unwrap()), expected(&turn.label));
            }
        }
    }
}

#[test]
fn whole_conversation_in_chunks_of_every_size() {
    let turns = conversation();
    for chunk in 1..=32 {
        let (mut session, mut stream) = new();
        for turn in &turns {
            build(&mut stream, &mut session, &turn.label);
            let mut got = None;
            for piece in turn.reply.chunks(chunk) {
                assert!(got.is_none(), "event before the reply was complete");
                stream.feed(piece).unwrap();
                got = stream.poll().unwrap().map(|ev| describe(&stream, &ev));
            }
            assert_eq!(
                got.as_deref(),
                Some(expected(&turn.label).as_str()),
                "chunk {chunk}"
            );
        }
    }
}

fn notification(label: &str, params: &serde_json::Value) -> Vec<u8> {
    packed(&(2, label, params))
}

#[test]
fn several_messages_in_one_read_and_notifications() {
    let turns = conversation();
    let (mut session, mut stream) = new();
    build(&mut stream, &mut session, &turns[0].label);
    let mut bytes = notification("serverPid", &serde_json::json!(4242));
    bytes.extend(notification("somethingElse", &serde_json::json!([1, 2])));
    bytes.extend(notification("serverPid", &serde_json::json!([4343])));
    bytes.extend(&turns[0].reply);
    stream.feed(&bytes).unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = stream.poll().unwrap() {
        seen.push(describe(&stream, &ev));
    }
    assert_eq!(seen, ["pid 4242", "pid 4343", "started 0"]);
    assert!(!stream.has_unread());
}

#[test]
fn unread_bytes_after_the_reply_are_reported() {
    let turns = conversation();
    let (mut session, mut stream) = new();
    build(&mut stream, &mut session, &turns[0].label);
    let mut bytes = turns[0].reply.clone();
    bytes.push(0x94);
    stream.feed(&bytes).unwrap();
    assert!(stream.poll().unwrap().is_some());
    assert!(stream.has_unread());
    stream.reset();
    assert!(!stream.has_unread());
}

fn poll_err(pending: Option<&str>, bytes: &[u8], limits: Limits) -> String {
    let mut session = Session::new(limits);
    let mut stream = Stream::new(limits);
    match pending {
        Some("handle_event") => {
            stream.handle_event(&mut session, 0, b"access").unwrap();
        }
        Some("start") => {
            stream.start_instance(&mut session, b"x", b"{}").unwrap();
        }
        _ => {}
    }
    stream.feed(bytes).unwrap();
    let err = stream.poll().unwrap_err();
    // The stream stays failed until reset.
    assert_eq!(stream.poll().unwrap_err(), err);
    assert_eq!(stream.feed(b"x").unwrap_err(), err);
    stream.reset();
    assert!(stream.poll().unwrap().is_none());
    err
}

#[test]
fn malformed_replies_are_protocol_errors() {
    let l = Limits::default();
    use serde_json::json;
    let cases: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
        (
            Some("handle_event"),
            packed(&(1, 7, (), json!({"EventId": 1, "Data": "ret"}))),
            "unexpected response id 7 (expected 1)",
        ),
        (
            None,
            packed(&(1, 1, (), ())),
            "response #1 with no request pending",
        ),
        (
            Some("handle_event"),
            packed(&(0, 1, "plugin.X", [1])),
            "the plugin server sent a request",
        ),
        (
            Some("handle_event"),
            packed(&"hello"),
            "message is not an array",
        ),
        (
            Some("handle_event"),
            packed(&(3, 1, (), ())),
            "not a response or notification (type 3, 4 elements)",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, 5, ())),
            "HandleEvent error is not a string",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"EventId": 1, "Data": "nope"}))),
            "Data is the string \"nope\"",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"Data": "ret"}))),
            "HandleEvent reply has no EventId",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"EventId": 1}))),
            "HandleEvent reply has no Data",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"EventId": "x", "Data": "ret"}))),
            "EventId is not an integer",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!([1, 2]))),
            "HandleEvent reply is not a map",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"EventId": 1, "Data": {"Args": []}}))),
            "neither \"ret\" nor a call",
        ),
        (
            Some("handle_event"),
            packed(&(1, 1, (), json!({"EventId": 1, "Data": {"Method": 3}}))),
            "call Method is not a string",
        ),
        (
            Some("start"),
            packed(&(1, 1, (), json!({"Name": "x"}))),
            "StartInstance reply has no integer Id",
        ),
        (
            Some("start"),
            packed(&(1, 1, (), json!({"Id": "seven"}))),
            "StartInstance reply has no integer Id",
        ),
        (
            None,
            packed(&(2, "serverPid", "abc")),
            "serverPid is not an integer",
        ),
        (
            None,
            vec![0x93, 0x02, 0xc1, 0xc0],
            "invalid byte 0xc1 at offset 2",
        ),
    ];
    for (pending, bytes, want) in cases {
        let err = poll_err(pending, &bytes, l);
        assert!(err.starts_with("protocol error: "), "{err}");
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
}

#[test]
fn limits_are_protocol_errors() {
    let small = Limits {
        max_message_size: 64,
        max_depth: 6,
    };
    let big = packed(&(
        1,
        1,
        (),
        serde_json::json!({"EventId": 1, "Data": "x".repeat(100)}),
    ));
    let err = poll_err(Some("handle_event"), &big, small);
    assert!(err.contains("exceeds max_message_size (64)"), "{err}");
    // Only the header of a huge string: fails without waiting for (or allocating) the rest.
    let err = poll_err(
        Some("handle_event"),
        &[0x94, 0x01, 0x01, 0xc0, 0xdb, 0x7f, 0xff, 0xff, 0xff],
        small,
    );
    assert!(err.contains("exceeds max_message_size"), "{err}");
    let deep = packed(&(
        1,
        1,
        (),
        serde_json::json!({"EventId": 1, "Data": {"Method": "m", "Args": [[[[[1]]]]]}}),
    ));
    let err = poll_err(Some("handle_event"), &deep, small);
    assert!(err.contains("nested deeper than 6 levels"), "{err}");
}

#[test]
fn one_request_at_a_time_per_stream() {
    let (mut session, mut stream) = new();
    stream.handle_event(&mut session, 1, b"access").unwrap();
    let err = stream.step(&mut session, 1, UNKNOWN, None).unwrap_err();
    assert_eq!(
        err,
        "cannot send Step: reply to HandleEvent #1 not received yet"
    );
}

#[test]
fn step_values_must_be_one_complete_value() {
    let (mut session, mut stream) = new();
    let m = idx("kong.request.get_header");
    let err = stream
        .step(&mut session, 1, m, Some(&[0xa3, b'a']))
        .unwrap_err();
    assert_eq!(
        err,
        "invalid value for kong.request.get_header: truncated MessagePack value"
    );
    let err = stream
        .step(&mut session, 1, m, Some(&[0xc0, 0xc0]))
        .unwrap_err();
    assert_eq!(
        err,
        "invalid value for kong.request.get_header: 1 bytes after the value"
    );
    let err = stream.step(&mut session, 1, 60000, None).unwrap_err();
    assert_eq!(err, "unknown method index 60000");
    // Nothing was sent, so a valid step still works and gets id 1.
    let out = stream.step(&mut session, 1, m, Some(&[0xc0])).unwrap();
    assert_eq!(&out[..3], &[0x94, 0x00, 0x01]);
}

#[test]
fn ids_count_per_session_across_streams_and_wrap() {
    let mut session = Session::new(Limits::default());
    let mut a = Stream::new(session.limits());
    let mut b = Stream::new(session.limits());
    let id = |out: &[u8]| {
        rmp_serde::from_slice::<(u8, u32, String, serde::de::IgnoredAny)>(out)
            .unwrap()
            .1
    };
    assert_eq!(id(a.handle_event(&mut session, 1, b"access").unwrap()), 1);
    assert_eq!(id(b.handle_event(&mut session, 1, b"access").unwrap()), 2);
    session.next_id = u32::MAX;
    a.reset();
    b.reset();
    assert_eq!(id(a.close_instance(&mut session, 1).unwrap()), u32::MAX);
    assert_eq!(id(b.close_instance(&mut session, 1).unwrap()), 1);
}

/// Everything `poll` reports for `bytes` fed in one piece: each result until
/// more bytes are needed or an error, and whether bytes are left unread.
fn poll_all(framed_only: bool, pending: &str, bytes: &[u8], limits: Limits) -> String {
    let mut session = Session::new(limits);
    let mut stream = Stream::new(limits);
    match pending {
        "handle_event" => drop(stream.handle_event(&mut session, 0, b"access").unwrap()),
        "step" => drop(stream.step(&mut session, 7, 1, None).unwrap()),
        _ => drop(stream.start_instance(&mut session, b"x", b"{}").unwrap()),
    }
    stream.feed(bytes).unwrap();
    let mut seen = Vec::new();
    loop {
        let r = if framed_only {
            stream.poll_framed()
        } else {
            stream.poll()
        };
        match r {
            Ok(Some(ev)) => seen.push(format!("{ev:?}")),
            Ok(None) => break,
            Err(e) => {
                seen.push(format!("error {e}"));
                break;
            }
        }
    }
    format!("{seen:?} unread={}", stream.has_unread())
}

#[test]
fn the_one_pass_reply_reader_agrees_with_the_framed_path() {
    use serde_json::json;
    let call = |data: serde_json::Value| packed(&(1, 1, (), json!({"EventId": 9, "Data": data})));
    let mut messages = vec![
        call(json!({"Method": "kong.request.get_header", "Args": ["host"]})),
        call(json!({"Args": ["a", 1, {"k": [true, null, 1.5]}], "Method": "kong.nope"})),
        call(json!({"Method": "kong.response.exit", "Args": [200, "x".repeat(300), {}]})),
        call(json!({"Method": "kong.log.err"})),
        call(json!({"Args": [1]})),
        call(json!({"Method": "m", "Args": [1], "Extra": 2})),
        call(json!({"Method": 5, "Args": []})),
        call(json!("ret")),
        call(json!("rat")),
        call(json!(null)),
        call(json!({"Method": "m", "Args": [[[[[[[[1]]]]]]]]})),
        packed(&(1, 1, (), json!({"Data": "ret", "EventId": -3}))),
        packed(&(1, 1, (), json!({"EventId": "9", "Data": "ret"}))),
        packed(&(1, 1, (), json!({"EventId": 9}))),
        packed(&(1, 1, (), json!({"Data": "ret"}))),
        packed(&(
            1,
            1,
            (),
            json!({"EventId": 1, "Data": "ret", "More": [1, 2]}),
        )),
        packed(&(1, 2, (), json!({"EventId": 9, "Data": "ret"}))),
        packed(&(1, 1, "failed", ())),
        packed(&(1, 1, (), json!({"Id": 4}))),
        packed(&(2, "serverPid", 77)),
        packed(&(0, 1, "m", [1])),
        packed(&(1, 1, (), 5)),
        // Repeated keys: the general path keeps the last.
        {
            let mut m = vec![0x94, 0x01, 0x01, 0xc0, 0x83];
            for (k, v) in [("EventId", 1u8), ("EventId", 2), ("Data", 0)] {
                rmp::encode::write_str(&mut m, k).unwrap();
                if k == "Data" {
                    rmp::encode::write_str(&mut m, "ret").unwrap();
                } else {
                    m.push(v);
                }
            }
            m
        },
        // Two replies in one read, and a reply with bytes after it.
        [call(json!("ret")), call(json!("ret"))].concat(),
        [call(json!("ret")), vec![0x94, 0x01]].concat(),
        [packed(&(2, "serverPid", 77)), call(json!("ret"))].concat(),
    ];
    // Every byte of two messages changed, and every cut.
    for base in [messages[0].clone(), messages[1].clone()] {
        for i in 0..base.len() {
            for b in [
                0x00, 0x01, 0x7f, 0x90, 0x9f, 0xa3, 0xc0, 0xc1, 0xd9, 0xdc, 0xdf, 0xff,
            ] {
                let mut m = base.clone();
                m[i] = b;
                messages.push(m);
            }
            messages.push(base[..i].to_vec());
        }
    }
    let limits = [
        Limits::default(),
        Limits {
            max_message_size: 40,
            max_depth: 8,
        },
        Limits {
            max_message_size: 1 << 20,
            max_depth: 5,
        },
        Limits {
            max_message_size: 1 << 20,
            max_depth: 3,
        },
        Limits {
            max_message_size: 1 << 20,
            max_depth: 2,
        },
    ];
    let mut fast_calls = 0;
    for m in &messages {
        for l in limits {
            for pending in ["handle_event", "step", "start"] {
                let want = poll_all(true, pending, m, l);
                assert_eq!(
                    poll_all(false, pending, m, l),
                    want,
                    "{m:02x?} {l:?} {pending}"
                );
                fast_calls += usize::from(want.contains("Call {"));
            }
        }
    }
    assert!(fast_calls > 100, "{fast_calls}");
}

#[test]
fn reset_releases_the_memory_of_a_large_request() {
    let (mut session, mut stream) = new();
    let config = vec![b'x'; 1 << 20];
    stream.start_instance(&mut session, b"x", &config).unwrap();
    assert!(stream.out_capacity() > 1 << 20);
    stream.reset();
    assert!(stream.out_capacity() <= 64 * 1024);
    assert!(stream.output().is_empty());
}
