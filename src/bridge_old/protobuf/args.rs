//! The encoded input message of a PDK call → the Lua call arguments
//! (PROTOCOL.md §5.4, "Input → Lua args"). Arguments come back as an array and
//! its length, because some may be nil (a `null` Value, an unset message).
//!
//! Value decoding fixes Kong's lossy cases: `false` stays `false` (Kong took the
//! first non-nil of bool/string/number, so `false` became nil) and
//! `null_value` is nil. Unset fields of entity tables (`Consumer`,
//! `AuthenticatedCredential`) are left out, so nil means "not given".

use mlua::{Lua, Table, Value};
use prost::Message;

use crate::codec::methods::PbType;
use crate::codec::protobuf::messages::google::{self, Kind, ListValue, Struct};
use crate::codec::protobuf::messages::{
    AuthenticateArgs, AuthenticatedCredential, Bool, ByteString, Consumer, ConsumerSpec, ExitArgs,
    Int, Kv, Number, Str, Target,
};

type Res<T> = Result<T, String>;

fn lua_err(e: mlua::Error) -> String {
    e.to_string()
}

fn parse<M: Message + Default>(ty: PbType, bytes: &[u8]) -> Res<M> {
    M::decode(bytes).map_err(|e| format!("cannot decode the {ty:?} argument: {e}"))
}

/// The arguments of a call whose input type is `ty`: `None` for no arguments,
/// else the values in order (a `None` is nil).
pub fn decode(lua: &Lua, ty: PbType, bytes: &[u8]) -> Res<Option<Vec<Value>>> {
    let s = |b: &[u8]| lua.create_string(b).map(Value::String).map_err(lua_err);
    let args = match ty {
        PbType::Empty => {
            parse::<google::Empty>(ty, bytes)?;
            return Ok(None);
        }
        PbType::Bool => vec![Value::Boolean(parse::<Bool>(ty, bytes)?.v)],
        PbType::Int => vec![Value::Number(f64::from(parse::<Int>(ty, bytes)?.v))],
        PbType::Number => vec![Value::Number(parse::<Number>(ty, bytes)?.v)],
        PbType::String => vec![s(parse::<Str>(ty, bytes)?.v.as_bytes())?],
        PbType::ByteString => vec![s(&parse::<ByteString>(ty, bytes)?.v)?],
        PbType::Kv => {
            let kv = parse::<Kv>(ty, bytes)?;
            vec![s(kv.k.as_bytes())?, value(lua, kv.v.as_ref())?]
        }
        PbType::Target => {
            let t = parse::<Target>(ty, bytes)?;
            vec![s(t.host.as_bytes())?, Value::Number(f64::from(t.port))]
        }
        PbType::ExitArgs => {
            let e = parse::<ExitArgs>(ty, bytes)?;
            let headers = match &e.headers {
                Some(h) => Value::Table(structure(lua, h)?),
                None => Value::Nil,
            };
            vec![Value::Number(f64::from(e.status)), s(&e.body)?, headers]
        }
        PbType::ConsumerSpec => {
            let c = parse::<ConsumerSpec>(ty, bytes)?;
            vec![s(c.id.as_bytes())?, Value::Boolean(c.by_username)]
        }
        PbType::AuthenticateArgs => {
            let a = parse::<AuthenticateArgs>(ty, bytes)?;
            let consumer = match &a.consumer {
                Some(c) => Value::Table(consumer(lua, c)?),
                None => Value::Nil,
            };
            let credential = match &a.credential {
                Some(c) => Value::Table(credential(lua, c)?),
                None => Value::Nil,
            };
            vec![consumer, credential]
        }
        PbType::ListValue => {
            let l = parse::<ListValue>(ty, bytes)?;
            l.values
                .iter()
                .map(|v| value(lua, Some(v)))
                .collect::<Res<_>>()?
        }
        PbType::Struct => vec![Value::Table(structure(lua, &parse::<Struct>(ty, bytes)?)?)],
        PbType::Value => vec![value(lua, Some(&parse::<google::Value>(ty, bytes)?))?],
        other => {
            return Err(format!(
                "{other:?} is not an argument type of the Protobuf service"
            ));
        }
    };
    Ok(Some(args))
}

/// A `google.protobuf.Value` as a Lua value; an unset Value is nil.
pub fn value(lua: &Lua, v: Option<&google::Value>) -> Res<Value> {
    let Some(kind) = v.and_then(|v| v.kind.as_ref()) else {
        return Ok(Value::Nil);
    };
    Ok(match kind {
        Kind::NullValue(_) => Value::Nil,
        Kind::NumberValue(n) => Value::Number(*n),
        Kind::StringValue(s) => Value::String(lua.create_string(s).map_err(lua_err)?),
        Kind::BoolValue(b) => Value::Boolean(*b),
        Kind::StructValue(s) => Value::Table(structure(lua, s)?),
        Kind::ListValue(l) => Value::Table(list(lua, l)?),
    })
}

fn structure(lua: &Lua, s: &Struct) -> Res<Table> {
    let t = lua
        .create_table_with_capacity(0, s.fields.len())
        .map_err(lua_err)?;
    for (k, v) in &s.fields {
        t.raw_set(k.as_str(), value(lua, Some(v))?)
            .map_err(lua_err)?;
    }
    Ok(t)
}

/// A list as a Lua array; a null element leaves a hole.
fn list(lua: &Lua, l: &ListValue) -> Res<Table> {
    let t = lua
        .create_table_with_capacity(l.values.len(), 0)
        .map_err(lua_err)?;
    for (i, v) in l.values.iter().enumerate() {
        let v = value(lua, Some(v))?;
        if !v.is_nil() {
            t.raw_set(i + 1, v).map_err(lua_err)?;
        }
    }
    Ok(t)
}

/// Sets `name` only when the field is not its default.
fn set_text(t: &Table, name: &str, v: &str) -> Res<()> {
    if !v.is_empty() {
        t.raw_set(name, v).map_err(lua_err)?;
    }
    Ok(())
}

fn consumer(lua: &Lua, c: &Consumer) -> Res<Table> {
    let t = lua.create_table().map_err(lua_err)?;
    set_text(&t, "id", &c.id)?;
    if c.created_at != 0 {
        t.raw_set("created_at", c.created_at as f64)
            .map_err(lua_err)?;
    }
    set_text(&t, "username", &c.username)?;
    set_text(&t, "custom_id", &c.custom_id)?;
    if !c.tags.is_empty() {
        let tags = lua
            .create_sequence_from(c.tags.iter().map(String::as_str))
            .map_err(lua_err)?;
        t.raw_set("tags", tags).map_err(lua_err)?;
    }
    Ok(t)
}

fn credential(lua: &Lua, c: &AuthenticatedCredential) -> Res<Table> {
    let t = lua.create_table().map_err(lua_err)?;
    set_text(&t, "id", &c.id)?;
    set_text(&t, "consumer_id", &c.consumer_id)?;
    Ok(t)
}
