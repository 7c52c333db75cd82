//! MessagePack bytes → Lua value, building tables directly.
//!
//! str and bin both become Lua strings (binary-safe); integers and floats become
//! Lua numbers (an incoming whole float is that number); nil inside an array
//! leaves a hole (the caller gets the array length separately); a map key that is
//! nil or NaN, an extension type, nesting deeper than [`MAX_DEPTH`], truncated or
//! trailing bytes are errors. Declared lengths are checked against the bytes left
//! before any table is sized, so a lying header cannot make it allocate.

use mlua::{Lua, Value};
use rmp::Marker;
use rmp::decode::{self, RmpRead};

use super::encode::MAX_DEPTH;

type Res<T> = Result<T, String>;

fn truncated<E>(_: E) -> String {
    "truncated MessagePack value".to_string()
}

/// Decodes the one value in `bytes`. Returns it and, when it is an array, its length.
pub fn decode(lua: &Lua, bytes: &[u8]) -> Res<(Value, Option<usize>)> {
    let mut rd = bytes;
    let (v, n) = value(lua, &mut rd, 0)?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the MessagePack value", rd.len()));
    }
    Ok((v, n))
}

fn bytes<'a>(rd: &mut &'a [u8], len: usize) -> Res<&'a [u8]> {
    let b = rd.get(..len).ok_or_else(|| truncated(()))?;
    *rd = &rd[len..];
    Ok(b)
}

fn count(rd: &[u8], n: usize, per_item: usize) -> Res<usize> {
    // Each item takes at least one byte.
    if n.saturating_mul(per_item) > rd.len() {
        return Err(truncated(()));
    }
    Ok(n)
}

fn lua_err(e: mlua::Error) -> String {
    e.to_string()
}

fn value(lua: &Lua, rd: &mut &[u8], depth: usize) -> Res<(Value, Option<usize>)> {
    let marker = decode::read_marker(rd).map_err(truncated)?;
    let v = match marker {
        Marker::Null => Value::Nil,
        Marker::True => Value::Boolean(true),
        Marker::False => Value::Boolean(false),
        Marker::FixPos(n) => Value::Number(f64::from(n)),
        Marker::FixNeg(n) => Value::Number(f64::from(n)),
        Marker::U8 => Value::Number(f64::from(rd.read_data_u8().map_err(truncated)?)),
        Marker::U16 => Value::Number(f64::from(rd.read_data_u16().map_err(truncated)?)),
        Marker::U32 => Value::Number(f64::from(rd.read_data_u32().map_err(truncated)?)),
        Marker::U64 => Value::Number(rd.read_data_u64().map_err(truncated)? as f64),
        Marker::I8 => Value::Number(f64::from(rd.read_data_i8().map_err(truncated)?)),
        Marker::I16 => Value::Number(f64::from(rd.read_data_i16().map_err(truncated)?)),
        Marker::I32 => Value::Number(f64::from(rd.read_data_i32().map_err(truncated)?)),
        Marker::I64 => Value::Number(rd.read_data_i64().map_err(truncated)? as f64),
        Marker::F32 => Value::Number(f64::from(rd.read_data_f32().map_err(truncated)?)),
        Marker::F64 => Value::Number(rd.read_data_f64().map_err(truncated)?),
        Marker::FixStr(n) => string(lua, rd, usize::from(n))?,
        Marker::Str8 | Marker::Bin8 => {
            let n = rd.read_data_u8().map_err(truncated)?;
            string(lua, rd, usize::from(n))?
        }
        Marker::Str16 | Marker::Bin16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            string(lua, rd, usize::from(n))?
        }
        Marker::Str32 | Marker::Bin32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            string(lua, rd, n as usize)?
        }
        Marker::FixArray(n) => return array(lua, rd, usize::from(n), depth),
        Marker::Array16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            return array(lua, rd, usize::from(n), depth);
        }
        Marker::Array32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            return array(lua, rd, n as usize, depth);
        }
        Marker::FixMap(n) => map(lua, rd, usize::from(n), depth)?,
        Marker::Map16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            map(lua, rd, usize::from(n), depth)?
        }
        Marker::Map32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            map(lua, rd, n as usize, depth)?
        }
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => return Err("MessagePack extension types are not supported".into()),
        Marker::Reserved => return Err("malformed MessagePack: invalid byte 0xc1".into()),
    };
    Ok((v, None))
}

fn string(lua: &Lua, rd: &mut &[u8], n: usize) -> Res<Value> {
    let b = bytes(rd, n)?;
    lua.create_string(b).map(Value::String).map_err(lua_err)
}

fn deeper(depth: usize) -> Res<usize> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "MessagePack value nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(depth + 1)
}

fn array(lua: &Lua, rd: &mut &[u8], n: usize, depth: usize) -> Res<(Value, Option<usize>)> {
    let depth = deeper(depth)?;
    let n = count(rd, n, 1)?;
    let t = lua.create_table_with_capacity(n, 0).map_err(lua_err)?;
    for i in 1..=n {
        let (v, _) = value(lua, rd, depth)?;
        if !v.is_nil() {
            t.raw_set(i, v).map_err(lua_err)?;
        }
    }
    Ok((Value::Table(t), Some(n)))
}

fn map(lua: &Lua, rd: &mut &[u8], n: usize, depth: usize) -> Res<Value> {
    let depth = deeper(depth)?;
    let n = count(rd, n, 2)?;
    let t = lua.create_table_with_capacity(0, n).map_err(lua_err)?;
    for _ in 0..n {
        let (k, _) = value(lua, rd, depth)?;
        let (v, _) = value(lua, rd, depth)?;
        match k {
            Value::Nil => return Err("MessagePack map key is nil".into()),
            Value::Number(x) if x.is_nan() => return Err("MessagePack map key is NaN".into()),
            _ => {}
        }
        t.raw_set(k, v).map_err(lua_err)?;
    }
    Ok(Value::Table(t))
}
