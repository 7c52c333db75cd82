//! The value bridge between Lua values and encoded bytes (mlua side of the seam).
//!
//! Lua API (all errors come back as `nil, message`, never as a raised mlua error,
//! which nginx would log as "unknown reason"):
//! - `encode(index, value) -> bytes | nil, err`: the MessagePack bytes of `value`,
//!   shaped for PDK method `index` of the method table.
//! - `decode(index, bytes) -> value [, n] | nil, err`: the Lua value of one
//!   MessagePack value; `n` is the element count when it is an array (Args
//!   may hold nils, so `#t` cannot be trusted).
//! - `methods() -> { [index] = { name = ..., terminal = true|nil } }` (index ≥ 1;
//!   0 is the unknown method) and `method_index(name) -> index`.
//!
//! Only bytes and small integers cross from here to the C side.

mod decode;
mod encode;

#[cfg(test)]
mod tests;

use std::cell::RefCell;

use mlua::{Lua, MultiValue, Result as LuaResult, Table, Value};

use crate::codec::methods;

pub use encode::MAX_DEPTH;

thread_local! {
    // One output buffer per thread (Lua states run on one thread), reused so that
    // encoding allocates only the returned Lua string.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn method(index: i64) -> Result<&'static methods::Method, String> {
    u16::try_from(index)
        .ok()
        .and_then(methods::get)
        .ok_or_else(|| format!("unknown method index {index}"))
}

/// Encodes `value` for method `index`; the bytes are passed to `f`.
pub fn encode_with<R>(index: i64, value: &Value, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
    let m = method(index)?;
    OUT.with(|cell| {
        let mut out = cell.borrow_mut();
        out.clear();
        encode::encode(&mut out, m.shape, value)?;
        let r = f(&out);
        if out.capacity() > 64 * 1024 {
            *out = Vec::new();
        }
        Ok(r)
    })
}

/// Decodes `bytes` for method `index` (the index selects Protobuf types later;
/// MessagePack values carry their own types).
pub fn decode_value(lua: &Lua, index: i64, bytes: &[u8]) -> Result<(Value, Option<usize>), String> {
    method(index)?;
    decode::decode(lua, bytes)
}

fn fail(lua: &Lua, msg: String) -> LuaResult<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(msg)?),
    ]))
}

/// The method index argument; a wrong type is reported, not raised.
fn arg_index(v: &Value) -> Result<i64, String> {
    match v {
        Value::Integer(i) => Ok(*i),
        Value::Number(n) if n.fract() == 0.0 => Ok(*n as i64),
        other => Err(format!(
            "method index must be an integer, got {}",
            other.type_name()
        )),
    }
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
    match decode_value(lua, index, &b) {
        Ok((v, Some(n))) => Ok(MultiValue::from_iter([v, Value::Number(n as f64)])),
        Ok((v, None)) => Ok(MultiValue::from_iter([v])),
        Err(e) => fail(lua, e),
    }
}

fn lua_methods(lua: &Lua, _: ()) -> LuaResult<Table> {
    let all = lua.create_table_with_capacity(methods::METHODS.len(), 0)?;
    for (i, m) in methods::METHODS.iter().enumerate().skip(1) {
        let entry = lua.create_table()?;
        entry.set("name", m.name)?;
        if m.terminal {
            entry.set("terminal", true)?;
        }
        all.raw_set(i, entry)?;
    }
    Ok(all)
}

fn lua_method_index(_: &Lua, name: Value) -> LuaResult<i64> {
    Ok(match name {
        Value::String(s) => i64::from(methods::index_of(&s.as_bytes())),
        _ => i64::from(methods::UNKNOWN),
    })
}

/// Adds the bridge's functions to the module table.
pub fn register(lua: &Lua, exports: &Table) -> LuaResult<()> {
    exports.set("encode", lua.create_function(lua_encode)?)?;
    exports.set("decode", lua.create_function(lua_decode)?)?;
    exports.set("methods", lua.create_function(lua_methods)?)?;
    exports.set("method_index", lua.create_function(lua_method_index)?)?;
    exports.set("MAX_DEPTH", MAX_DEPTH)?;
    Ok(())
}
