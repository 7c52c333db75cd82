//! The value bridge's MessagePack decoder (`decode(index, bytes)` of the Lua
//! module: PDK call arguments → Lua values), in a real LuaJIT state.

use kong_plugin_servers::codec::methods;
use kong_plugin_servers::codec::msgpack::{Limits, framer};
use mlua::Value;

use super::lua::{Bridge, number, same, with_bridge};

/// Input: byte 0 picks the method index (some past the table, which must be
/// refused); the rest is the value. What the decoder accepts is exactly one
/// MessagePack value as the framer measures it; an array length comes only with
/// a table; encoding the Lua value again (unshaped) succeeds, and decoding that
/// gives an equal Lua value.
pub fn check(data: &[u8]) {
    let [index, bytes @ ..] = data else {
        return;
    };
    let index = i64::from(*index) % (methods::METHODS.len() as i64 + 2);
    with_bridge(|b| check_in(b, index, bytes));
}

fn check_in(b: &Bridge, index: i64, bytes: &[u8]) {
    let decoded = b.call(&b.decode, index, b.bytes(bytes));
    if methods::get(index as u16).is_none() {
        assert!(
            decoded.is_err(),
            "method index {index} past the table accepted"
        );
        return;
    }
    let Ok(values) = decoded else {
        return;
    };
    let limits = Limits {
        max_message_size: usize::MAX,
        max_depth: usize::MAX,
    };
    let mut f = framer::Framer::new(limits);
    assert_eq!(
        framer::value_len(&mut f, bytes),
        Ok(bytes.len()),
        "decoder and framer disagree on where the value ends"
    );
    let value = match values.as_slice() {
        [v] => v.clone(),
        [v, n] if number(n).is_some() => {
            let n = number(n).unwrap();
            assert!(matches!(v, Value::Table(_)), "an array length for {v:?}");
            assert!(
                n >= 0.0 && n as usize <= bytes.len(),
                "array length {n} from {} bytes",
                bytes.len()
            );
            v.clone()
        }
        other => panic!("decode returned {other:?}"),
    };
    let again = match b.call(&b.encode, i64::from(methods::UNKNOWN), value.clone()) {
        Ok(r) => match r.as_slice() {
            [Value::String(s)] => s.as_bytes().to_vec(),
            other => panic!("encode returned {other:?}"),
        },
        Err(e) => panic!("a decoded value does not encode: {e}"),
    };
    let back = b
        .call(&b.decode, index, b.bytes(&again))
        .unwrap_or_else(|e| panic!("a re-encoded value does not decode: {e}"));
    assert!(same(&value, &back[0]), "decode(encode(v)) differs from v");
}
