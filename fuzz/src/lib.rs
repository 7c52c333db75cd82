//! What each fuzz target checks, one function per target. The cargo-fuzz binaries
//! (`fuzz/fuzz_targets/*.rs`) call these, and `tests/fuzz_corpus.rs` includes this
//! file to replay the checked-in corpus as ordinary tests. A check panics when the
//! code under test panics or breaks a property it promises; anything else is a pass.
//!
//! Every function takes arbitrary bytes and calls the core Rust API (not the FFI).

pub mod lua;
pub mod msgpack_stream;
pub mod msgpack_value;
pub mod pb_stream;
pub mod pb_value;
pub mod script;
pub mod split;

use kong_plugin_servers::config::{MAX_INT_SETTING, MAX_SOCKET_PATH};
use kong_plugin_servers::ffi::config::parse_input;
use kong_plugin_servers::process::helper_link::{HelperEvent, parse_line, wire};
use kong_plugin_servers::process::query::{DEFAULT_PROTOCOL, Dump, parse_dump};
use serde_json::{Value, json};

/// The names of the targets, as directories under `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "config",
    "dump",
    "helper_wire",
    "msgpack_stream",
    "msgpack_value",
    "pb_stream",
    "pb_value",
];

/// Runs the check of `target` on `data`.
///
/// # Panics
/// When the check fails, or `target` is unknown.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "config" => config(data),
        "dump" => dump(data),
        "helper_wire" => helper_wire(data),
        "msgpack_stream" => msgpack_stream::check(data),
        "msgpack_value" => msgpack_value::check(data),
        "pb_stream" => pb_stream::check(data),
        "pb_value" => pb_value::check(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// Config validation from the JSON the shim sends (`kps_config_parse`'s core):
/// a malformed document is an error with a message; otherwise the verdict, every error names the setting, and accepted definitions
/// hold what the validator promises the supervisor.
pub fn config(data: &[u8]) {
    let v = match parse_input(data) {
        Err(msg) => {
            assert!(
                msg.starts_with("config input") || msg.starts_with("opts."),
                "{msg}"
            );
            return;
        }
        Ok(Ok(a)) => json!({ "ok": true, "defs": a.defs, "warnings": a.warnings }),
        Ok(Err(r)) => json!({ "ok": false, "errors": r.errors, "warnings": r.warnings }),
    };
    let strings = |field: &str| -> Vec<String> {
        let list = v[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} is not an array: {v}"));
        list.iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    strings("warnings");
    match v["ok"] {
        Value::Bool(false) => {
            let errors = strings("errors");
            assert!(!errors.is_empty(), "rejected without an error: {v}");
            for e in &errors {
                assert!(
                    e.contains("pluginserver") || e.starts_with("prefix: "),
                    "error names no setting: {e:?}"
                );
            }
        }
        Value::Bool(true) => {
            let defs = v["defs"].as_array().expect("defs array");
            for def in defs {
                check_def(def);
            }
            let mut names: Vec<&str> = defs.iter().map(|d| d["name"].as_str().unwrap()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), defs.len(), "duplicate servers accepted: {v}");
        }
        _ => panic!("no ok flag: {v}"),
    }
}

/// One accepted server definition, as the supervisor and the shim will use it.
fn check_def(def: &Value) {
    let name = def["name"].as_str().expect("name");
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'),
        "bad name accepted: {def}"
    );
    let socket = def["socket"].as_str().expect("socket");
    assert!(
        !socket.is_empty() && socket.len() <= MAX_SOCKET_PATH && !socket.contains('\0'),
        "bad socket accepted: {def}"
    );
    let query = def["query_command"].as_str().expect("query_command");
    assert!(
        !query.trim().is_empty() && !query.contains('\0'),
        "bad query command accepted: {def}"
    );
    match &def["start_command"] {
        Value::Null => {}
        Value::String(s) => assert!(
            !s.trim().is_empty() && !s.contains('\0'),
            "bad start command accepted: {def}"
        ),
        other => panic!("start_command is {other}"),
    }
    for key in [
        "query_timeout",
        "stop_timeout",
        "respawn_delay",
        "respawn_delay_max",
        "respawn_reset",
        "ready_timeout",
        "connect_timeout",
        "send_timeout",
        "read_timeout",
        "max_message_size",
        "log_window",
    ] {
        let n = def[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {def}"));
        assert!(
            (1..=MAX_INT_SETTING).contains(&n),
            "{key} out of range: {def}"
        );
    }
    assert!(
        def["respawn_delay_max"].as_u64() >= def["respawn_delay"].as_u64(),
        "respawn_delay_max < respawn_delay accepted: {def}"
    );
    assert!(def["fail_open"].is_boolean(), "fail_open: {def}");
}

/// The plugin-info dump parser, on whatever a query command printed: no panic; an
/// accepted dump lists at least one plugin, and printing it back as
/// `{"Protocol", "Plugins"}` (or, for the default protocol, a bare array) parses
/// to the same dump.
pub fn dump(data: &[u8]) {
    let Ok(parsed) = parse_dump(data) else {
        return;
    };
    assert!(
        !parsed.plugins.is_empty(),
        "accepted a dump with no plugins"
    );
    let plugins: Vec<Value> = parsed.plugins.iter().cloned().map(Value::Object).collect();
    let printed = json!({ "Protocol": parsed.protocol, "Plugins": plugins });
    let again: Dump = parse_dump(printed.to_string().as_bytes()).expect("re-printed dump parses");
    assert!(
        same_dump(&again, &parsed),
        "object form does not round-trip: {parsed:?} became {again:?}"
    );
    if parsed.protocol == DEFAULT_PROTOCOL {
        let bare = serde_json::to_string(&plugins).expect("printable");
        let again = parse_dump(bare.as_bytes()).expect("re-printed array parses");
        assert!(
            same_dump(&again, &parsed),
            "array form does not round-trip: {parsed:?} became {again:?}"
        );
    }
}

fn same_dump(a: &Dump, b: &Dump) -> bool {
    a.protocol == b.protocol
        && a.plugins.len() == b.plugins.len()
        && a.plugins
            .iter()
            .zip(&b.plugins)
            .all(|(x, y)| same_json(&Value::Object(x.clone()), &Value::Object(y.clone())))
}

/// JSON equality where floats may differ in the last bits: serde_json's default
/// float parsing is not correctly rounded, so printing and re-reading
/// `1.7000066666666663e50` can move it by one ulp. That is no defect of ours.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= x.abs().max(y.abs()) * 1e-15
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The `kps-helper` report protocol, which carries plugin server output: any
/// output line, escaped by the helper, comes back out of the supervisor's line
/// parser as the same text (CR dropped, invalid UTF-8 replaced); and the parser
/// takes any line without panicking.
pub fn helper_wire(data: &[u8]) {
    let escaped = wire::escape(data);
    assert!(
        !escaped.contains('\t') && !escaped.contains('\n') && !escaped.contains('\r'),
        "escape left a separator: {escaped:?}"
    );
    let expected: String = String::from_utf8_lossy(data).replace('\r', "");
    assert_eq!(
        wire::unescape(&escaped),
        expected,
        "escape does not round-trip"
    );
    let line = format!("out\t4242\t{escaped}");
    assert_eq!(
        parse_line(&line),
        Some(HelperEvent::Output {
            pid: 4242,
            line: expected
        }),
        "report line {line:?}"
    );
    let _ = parse_line(&String::from_utf8_lossy(data));
}
