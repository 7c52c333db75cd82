//! The Protobuf side of the value bridge: Lua values ↔ the message types of the
//! PDK method table (PROTOCOL.md §5.3, §5.4), via prost.
//!
//! Lua API (errors come back as `nil, message`, never raised):
//! - `pb_decode(index, bytes) -> args, n | nil | nil, err`: the input message of
//!   PDK method `index` unwrapped into call arguments (`args[1..n]`, holes for
//!   nil); a bare `nil` when the method takes none.
//! - `pb_encode(index, value) -> bytes | nil, err`: the Lua result wrapped into
//!   the method's output message; `""` is the empty message.

mod args;
mod results;

use std::cell::RefCell;

use mlua::{Lua, MultiValue, Result as LuaResult, Table, Value};

use super::{arg_index, fail, method};
use crate::codec::methods::{PbType, Shape};

thread_local! {
    // Reused output buffer, as the MessagePack side has.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The (input, output) types of method `index`.
fn types(index: i64) -> Result<(PbType, PbType, bool), String> {
    let m = method(index)?;
    match m.pb {
        Some((input, output)) => Ok((input, output, m.shape == Shape::MultiMap)),
        None if m.name.is_empty() => Err("unknown PDK method".to_string()),
        None => Err(format!(
            "{} is not a method of the Protobuf service",
            m.name
        )),
    }
}

/// Encodes `value` as the output message of method `index`; the bytes go to `f`.
pub fn encode_with<R>(index: i64, value: &Value, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
    let (_, output, multimap) = types(index)?;
    OUT.with(|cell| {
        let mut out = cell.borrow_mut();
        out.clear();
        results::encode(&mut out, output, multimap, value).map_err(|e| e.to_string())?;
        let r = f(&out);
        if out.capacity() > 64 * 1024 {
            *out = Vec::new();
        }
        Ok(r)
    })
}

/// The call arguments in the input message of method `index` (`None`: no arguments).
pub fn decode_args(lua: &Lua, index: i64, bytes: &[u8]) -> Result<Option<Vec<Value>>, String> {
    let (input, _, _) = types(index)?;
    args::decode(lua, input, bytes)
}

fn lua_encode(lua: &Lua, (index, value): (Value, Value)) -> LuaResult<MultiValue> {
    let index = match arg_index(&index) {
        Ok(i) => i,
        Err(e) => return fail(lua, e),
    };
    match encode_with(index, &value, |b| lua.create_string(b)) {
        Ok(s) => Ok(MultiValue::from_iter([Value::String(s?)])),
        Err(e) => fail(lua, e),
    }
}

fn lua_decode(lua: &Lua, (index, bytes): (Value, Value)) -> LuaResult<MultiValue> {
    let index = match arg_index(&index) {
        Ok(i) => i,
        Err(e) => return fail(lua, e),
    };
    let Value::String(bytes) = bytes else {
        return fail(
            lua,
            format!("bytes must be a string, got {}", bytes.type_name()),
        );
    };
    let b = bytes.as_bytes();
    match decode_args(lua, index, &b) {
        Ok(None) => Ok(MultiValue::new()),
        Ok(Some(args)) => {
            let n = args.len();
            let t = lua.create_table_with_capacity(n, 0)?;
            for (i, v) in args.into_iter().enumerate() {
                if !v.is_nil() {
                    t.raw_set(i + 1, v)?;
                }
            }
            Ok(MultiValue::from_iter([
                Value::Table(t),
                Value::Number(n as f64),
            ]))
        }
        Err(e) => fail(lua, e),
    }
}

/// Adds `pb_encode` and `pb_decode` to the module table.
pub fn register(lua: &Lua, exports: &Table) -> LuaResult<()> {
    exports.set("pb_encode", lua.create_function(lua_encode)?)?;
    exports.set("pb_decode", lua.create_function(lua_decode)?)?;
    Ok(())
}
