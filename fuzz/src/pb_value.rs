//! The Protobuf side of the value bridge (`pb_decode(index, bytes)` of the Lua
//! module): the input message of every PDK method a Go plugin can call → Lua call
//! arguments, in a real LuaJIT state.

use kong_plugin_servers::codec::methods::{self, PbType, Shape};
use mlua::Value;

use super::lua::{Bridge, number, same, with_bridge};

/// The method indexes of the Protobuf service, in table order.
pub fn pb_methods() -> Vec<u16> {
    (0..methods::METHODS.len() as u16)
        .filter(|&i| methods::get(i).is_some_and(|m| m.pb.is_some()))
        .collect()
}

/// Input: byte 0 picks a method of the Protobuf service (or, past them, the
/// unknown method, which must be refused); the rest is its input message.
/// Decoding never raises; `Empty` gives no arguments, other types an argument
/// table and its length; where another method outputs the same single-value
/// type, encoding the decoded argument as that output and decoding it again gives
/// an equal Lua value.
pub fn check(data: &[u8]) {
    let [pick, bytes @ ..] = data else {
        return;
    };
    let all = pb_methods();
    let index = all
        .get(usize::from(*pick) % (all.len() + 1))
        .copied()
        .unwrap_or(methods::UNKNOWN);
    with_bridge(|b| check_in(b, index, bytes));
}

/// The argument table and count of a successful `pb_decode`.
fn args_of(values: &[Value], what: &str) -> (mlua::Table, usize) {
    match values {
        [Value::Table(t), n] if number(n).is_some_and(|n| n >= 0.0 && n.fract() == 0.0) => {
            (t.clone(), number(n).unwrap() as usize)
        }
        other => panic!("{what}: pb_decode returned {other:?}"),
    }
}

fn check_in(b: &Bridge, index: u16, bytes: &[u8]) {
    let decoded = b.call(&b.pb_decode, i64::from(index), b.bytes(bytes));
    let Some(m) = methods::get(index).filter(|m| m.pb.is_some()) else {
        assert!(
            decoded.is_err(),
            "method {index} outside the service accepted"
        );
        return;
    };
    let Ok(values) = decoded else {
        return;
    };
    let (input, _) = m.pb.unwrap();
    if input == PbType::Empty {
        assert!(
            values.is_empty(),
            "{} takes no arguments but got {values:?}",
            m.name
        );
        return;
    }
    let (args, n) = args_of(&values, m.name);
    let single = matches!(
        input,
        PbType::Bool
            | PbType::Int
            | PbType::Number
            | PbType::String
            | PbType::ByteString
            | PbType::Value
            | PbType::Struct
    );
    if !single {
        return;
    }
    assert_eq!(n, 1, "{} ({input:?}) gave {n} arguments", m.name);
    let arg: Value = args.raw_get(1).expect("args[1]");
    let Some(out) = (0..methods::METHODS.len() as u16).find(|&i| {
        methods::get(i).is_some_and(|o| {
            o.shape != Shape::MultiMap && o.pb.is_some_and(|(_, output)| output == input)
        })
    }) else {
        return;
    };
    let Ok(encoded) = b.call(&b.pb_encode, i64::from(out), arg.clone()) else {
        return;
    };
    let again = match encoded.as_slice() {
        [Value::String(s)] => s.as_bytes().to_vec(),
        other => panic!("pb_encode returned {other:?}"),
    };
    let back = b
        .call(&b.pb_decode, i64::from(index), b.bytes(&again))
        .unwrap_or_else(|e| panic!("{input:?} re-encoded does not decode: {e}"));
    let (back, _) = args_of(&back, m.name);
    let back: Value = back.raw_get(1).expect("args[1]");
    assert!(
        same(&arg, &back),
        "{input:?}: decode(encode(v)) differs from v ({arg:?} vs {back:?})"
    );
}
