//! The value bridge's MessagePack decoder (`bridge::decode_value`: PDK call
//! arguments and replies → Lua values), in a real LuaJIT state.

use kong_plugin_servers::bridge::{decode_value, encode_with};
use kong_plugin_servers::codec::methods;
use kong_plugin_servers::codec::msgpack::{Limits, framer};
use mlua::{Lua, Value};

use super::lua::{same, with_lua};

/// Input: byte 0 picks the method index (some past the table, which must be
/// refused); the rest is the value. What the decoder accepts is exactly one
/// MessagePack value as the framer measures it; encoding the Lua value again
/// (unshaped) succeeds, and decoding that gives an equal Lua value.
pub fn check(data: &[u8]) {
    let [index, bytes @ ..] = data else {
        return;
    };
    let index = i64::from(*index) % (methods::METHODS.len() as i64 + 2);
    with_lua(|lua| check_in(lua, index, bytes));
}

fn check_in(lua: &Lua, index: i64, bytes: &[u8]) {
    let decoded = decode_value(lua, index, bytes);
    if methods::get(index as u16).is_none() {
        assert!(
            decoded.is_err(),
            "method index {index} past the table accepted"
        );
        return;
    }
    let Ok((value, len)) = decoded else {
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
    if let Some(n) = len {
        assert!(
            matches!(value, Value::Table(_)),
            "an array length for a non-table"
        );
        assert!(
            n <= bytes.len(),
            "array length {n} from {} bytes",
            bytes.len()
        );
    }
    let again = encode_with(methods::UNKNOWN as i64, &value, <[u8]>::to_vec)
        .unwrap_or_else(|e| panic!("a decoded value does not encode: {e}"));
    let (value2, _) = decode_value(lua, index, &again)
        .unwrap_or_else(|e| panic!("a re-encoded value does not decode: {e}"));
    assert!(same(&value, &value2), "decode(encode(v)) differs from v");
}
