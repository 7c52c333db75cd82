//! The encoded input message of a PDK call → the Lua call arguments
//! (docs/PROTOCOL.md §5, "Input → Lua args"). Arguments come back as an array and
//! its length, because some may be nil (a `null` Value, an unset message).
//!
//! Value decoding fixes Kong's lossy cases: `false` stays `false` (Kong took the
//! first non-nil of bool/string/number, so `false` became nil) and
//! `null_value` is nil. Unset fields of entity tables (`Consumer`,
//! `AuthenticatedCredential`) are left out, so nil means "not given".

use prost::Message;

use super::super::stack::{NewTable, Stack};
use crate::codec::methods::PbType;
use crate::codec::protobuf::messages::google::{self, Kind, ListValue, Struct};
use crate::codec::protobuf::messages::{
    AuthenticateArgs, AuthenticatedCredential, Bool, ByteString, Consumer, ConsumerSpec, ExitArgs,
    Int, Kv, Number, Str, Target,
};

type Res<T> = Result<T, String>;

fn parse<M: Message + Default>(ty: PbType, bytes: &[u8]) -> Res<M> {
    M::decode(bytes).map_err(|e| format!("cannot decode the {ty:?} argument: {e}"))
}

/// The argument array under construction: each value pushed goes to the next
/// index (a nil leaves a hole).
struct Args<'s> {
    s: &'s Stack,
    t: NewTable,
    n: usize,
}

impl<'s> Args<'s> {
    fn new(s: &'s Stack, n: usize) -> Res<Self> {
        Ok(Args {
            s,
            t: s.new_table(n, 0)?,
            n: 0,
        })
    }

    /// Adds the value `push` pushes.
    fn add(&mut self, push: impl FnOnce(&Stack) -> Res<()>) -> Res<()> {
        push(self.s)?;
        self.n += 1;
        self.s.set_item(&self.t, self.n);
        Ok(())
    }

    fn str(&mut self, b: &[u8]) -> Res<()> {
        self.add(|s| Ok(s.push_str(b)?))
    }

    fn num(&mut self, n: f64) -> Res<()> {
        self.add(|s| Ok(s.push_num(n)?))
    }

    fn bool(&mut self, b: bool) -> Res<()> {
        self.add(|s| Ok(s.push_bool(b)?))
    }

    /// Pushes the count after the table; the two results.
    fn finish(self) -> Res<usize> {
        self.s.push_num(self.n as f64)?;
        Ok(2)
    }
}

/// Pushes the arguments of a call whose input type is `ty`: nothing for no
/// arguments, else the argument array and its length. Returns how many values
/// were pushed.
pub fn decode(s: &Stack, ty: PbType, bytes: &[u8]) -> Res<usize> {
    let mut a;
    match ty {
        PbType::Empty => {
            parse::<google::Empty>(ty, bytes)?;
            return Ok(0);
        }
        PbType::Bool => {
            let v = parse::<Bool>(ty, bytes)?.v;
            a = Args::new(s, 1)?;
            a.bool(v)?;
        }
        PbType::Int => {
            let v = parse::<Int>(ty, bytes)?.v;
            a = Args::new(s, 1)?;
            a.num(f64::from(v))?;
        }
        PbType::Number => {
            let v = parse::<Number>(ty, bytes)?.v;
            a = Args::new(s, 1)?;
            a.num(v)?;
        }
        PbType::String => {
            let v = parse::<Str>(ty, bytes)?.v;
            a = Args::new(s, 1)?;
            a.str(v.as_bytes())?;
        }
        PbType::ByteString => {
            let v = parse::<ByteString>(ty, bytes)?.v;
            a = Args::new(s, 1)?;
            a.str(&v)?;
        }
        PbType::Kv => {
            let kv = parse::<Kv>(ty, bytes)?;
            a = Args::new(s, 2)?;
            a.str(kv.k.as_bytes())?;
            a.add(|s| value(s, kv.v.as_ref()))?;
        }
        PbType::Target => {
            let t = parse::<Target>(ty, bytes)?;
            a = Args::new(s, 2)?;
            a.str(t.host.as_bytes())?;
            a.num(f64::from(t.port))?;
        }
        PbType::ExitArgs => {
            let e = parse::<ExitArgs>(ty, bytes)?;
            a = Args::new(s, 3)?;
            a.num(f64::from(e.status))?;
            a.str(&e.body)?;
            a.add(|s| match &e.headers {
                Some(h) => structure(s, h),
                None => Ok(s.push_nil()?),
            })?;
        }
        PbType::ConsumerSpec => {
            let c = parse::<ConsumerSpec>(ty, bytes)?;
            a = Args::new(s, 2)?;
            a.str(c.id.as_bytes())?;
            a.bool(c.by_username)?;
        }
        PbType::AuthenticateArgs => {
            let auth = parse::<AuthenticateArgs>(ty, bytes)?;
            a = Args::new(s, 2)?;
            a.add(|s| match &auth.consumer {
                Some(c) => consumer(s, c),
                None => Ok(s.push_nil()?),
            })?;
            a.add(|s| match &auth.credential {
                Some(c) => credential(s, c),
                None => Ok(s.push_nil()?),
            })?;
        }
        PbType::ListValue => {
            let l = parse::<ListValue>(ty, bytes)?;
            a = Args::new(s, l.values.len())?;
            for v in &l.values {
                a.add(|s| value(s, Some(v)))?;
            }
        }
        PbType::Struct => {
            let st = parse::<Struct>(ty, bytes)?;
            a = Args::new(s, 1)?;
            a.add(|s| structure(s, &st))?;
        }
        PbType::Value => {
            let v = parse::<google::Value>(ty, bytes)?;
            a = Args::new(s, 1)?;
            a.add(|s| value(s, Some(&v)))?;
        }
        other => {
            return Err(format!(
                "{other:?} is not an argument type of the Protobuf service"
            ));
        }
    }
    a.finish()
}

/// Pushes a `google.protobuf.Value` as a Lua value; an unset Value is nil.
pub fn value(s: &Stack, v: Option<&google::Value>) -> Res<()> {
    let Some(kind) = v.and_then(|v| v.kind.as_ref()) else {
        return Ok(s.push_nil()?);
    };
    match kind {
        Kind::NullValue(_) => s.push_nil()?,
        Kind::NumberValue(n) => s.push_num(*n)?,
        Kind::StringValue(st) => s.push_str(st.as_bytes())?,
        Kind::BoolValue(b) => s.push_bool(*b)?,
        Kind::StructValue(st) => structure(s, st)?,
        Kind::ListValue(l) => list(s, l)?,
    }
    Ok(())
}

fn structure(s: &Stack, st: &Struct) -> Res<()> {
    let t = s.new_table(0, st.fields.len())?;
    for (k, v) in &st.fields {
        s.push_str(k.as_bytes())?;
        value(s, Some(v))?;
        s.set_pair(&t);
    }
    Ok(())
}

/// A list as a Lua array; a null element leaves a hole.
fn list(s: &Stack, l: &ListValue) -> Res<()> {
    let t = s.new_table(l.values.len(), 0)?;
    for (i, v) in l.values.iter().enumerate() {
        value(s, Some(v))?;
        s.set_item(&t, i + 1);
    }
    Ok(())
}

/// Pushes `name = v` into `t` only when the field is not its default.
fn set_text(s: &Stack, t: &NewTable, name: &str, v: &str) -> Res<()> {
    if !v.is_empty() {
        s.push_str(name.as_bytes())?;
        s.push_str(v.as_bytes())?;
        s.set_pair(t);
    }
    Ok(())
}

fn consumer(s: &Stack, c: &Consumer) -> Res<()> {
    let t = s.new_table(0, 5)?;
    set_text(s, &t, "id", &c.id)?;
    if c.created_at != 0 {
        s.push_str(b"created_at")?;
        s.push_num(c.created_at as f64)?;
        s.set_pair(&t);
    }
    set_text(s, &t, "username", &c.username)?;
    set_text(s, &t, "custom_id", &c.custom_id)?;
    if !c.tags.is_empty() {
        s.push_str(b"tags")?;
        let tags = s.new_table(c.tags.len(), 0)?;
        for (i, tag) in c.tags.iter().enumerate() {
            s.push_str(tag.as_bytes())?;
            s.set_item(&tags, i + 1);
        }
        s.set_pair(&t);
    }
    Ok(())
}

fn credential(s: &Stack, c: &AuthenticatedCredential) -> Res<()> {
    let t = s.new_table(0, 2)?;
    set_text(s, &t, "id", &c.id)?;
    set_text(s, &t, "consumer_id", &c.consumer_id)?;
    Ok(())
}
