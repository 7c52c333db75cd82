//! Lua result → the encoded output message of a PDK method (PROTOCOL.md §5.4,
//! "Lua return → output"), with Kong's lossy cases fixed:
//! - nil (and `cjson.null`/`ngx.null`) as a `Value` is `null_value = NULL_VALUE`
//!   (0), not Kong's out-of-range 1; `false` stays `bool_value = false`.
//! - nil for any other output type is the empty message (go-pdk reads defaults).
//! - an `Empty` output ignores what the Lua function returned (Kong raised an
//!   encode error when a setter returned `true`).
//! - multimaps (headers, query): a `true` value (a query flag) becomes an empty
//!   list, which go-pdk keeps as a key with no values (Kong sent `bool_value`,
//!   which go-pdk drops with a log line).
//!
//! `Struct`/`Value`/`ListValue` walk Lua tables with the rules shared with the
//! MessagePack encoder (`super::super::walk`): keys 1..n → list, other non-empty
//! tables → struct; an empty table is an empty struct here (Kong's `[1]` test).

use mlua::{Table, Value};
use prost::Message;

use super::super::walk::{self, EncodeError, Guard, Layout};
use crate::codec::methods::PbType;
use crate::codec::protobuf::messages::google::{self, Kind, ListValue, NullValue, Struct};
use crate::codec::protobuf::messages::{
    AuthenticatedCredential, Bool, ByteString, CertificateKey, Consumer, DictStats, Int,
    LuaSharedDicts, MemoryStats, Number, RawBodyKind, RawBodyResult, Route, Service, ServiceKey,
    UriCapturesResult, WorkerLuaVm,
};

type Res<T> = Result<T, EncodeError>;

/// Encodes `value` as the output message `ty` into `out` (appending). `multimap`:
/// the method returns headers or query arguments.
pub fn encode(out: &mut Vec<u8>, ty: PbType, multimap: bool, value: &Value) -> Res<()> {
    let mut w = Writer {
        guard: Guard::default(),
        multimap,
    };
    if ty == PbType::Empty {
        return Ok(());
    }
    if ty == PbType::Value {
        w.value(value)?.encode(out).expect("a Vec grows");
        return Ok(());
    }
    if walk::is_null(value) {
        return Ok(());
    }
    match ty {
        PbType::Bool => Bool { v: boolean(value)? }.encode(out),
        PbType::Int => Int { v: int32(value)? }.encode(out),
        PbType::Number => Number { v: float(value)? }.encode(out),
        // Same wire bytes as `String{v}`; the bytes go as they are (Kong does
        // not check UTF-8 either; go-pdk reports invalid UTF-8 to the plugin).
        PbType::String | PbType::ByteString => ByteString { v: bytes(value)? }.encode(out),
        PbType::Struct => w.root_struct(value)?.encode(out),
        PbType::ListValue => w.root_list(value)?.encode(out),
        PbType::RawBodyResult => raw_body(value)?.encode(out),
        PbType::UriCapturesResult => uri_captures(&table(value)?)?.encode(out),
        PbType::Route => route(&table(value)?)?.encode(out),
        PbType::Service => service(&table(value)?)?.encode(out),
        PbType::Consumer => consumer(&table(value)?)?.encode(out),
        PbType::AuthenticatedCredential => credential(&table(value)?)?.encode(out),
        PbType::MemoryStats => memory_stats(&table(value)?)?.encode(out),
        other => {
            return Err(EncodeError::new(format!(
                "{other:?} is not a result type of the Protobuf service"
            )));
        }
    }
    .expect("a Vec grows");
    Ok(())
}

fn mismatch(want: &str, v: &Value) -> EncodeError {
    EncodeError::new(format!("expected {want}, got {}", v.type_name()))
}

fn boolean(v: &Value) -> Res<bool> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => Err(mismatch("a boolean", other)),
    }
}

fn float(v: &Value) -> Res<f64> {
    walk::number(v).ok_or_else(|| mismatch("a number", v))
}

fn int64(v: &Value) -> Res<i64> {
    let n = float(v)?;
    walk::whole(n).ok_or_else(|| EncodeError::new(format!("expected an integer, got {n}")))
}

fn int32(v: &Value) -> Res<i32> {
    let n = int64(v)?;
    i32::try_from(n).map_err(|_| EncodeError::new(format!("{n} does not fit a 32-bit integer")))
}

/// A number as Lua's `tostring` writes it (integers without a fraction).
fn number_text(n: f64) -> String {
    match walk::whole(n) {
        Some(i) => i.to_string(),
        None => format!("{n}"),
    }
}

fn bytes(v: &Value) -> Res<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(_) | Value::Number(_) => {
            Ok(number_text(walk::number(v).unwrap_or_default()).into_bytes())
        }
        other => Err(mismatch("a string", other)),
    }
}

/// Protobuf `string` fields must be UTF-8 (go-pdk's decoder checks).
fn text(v: &Value) -> Res<String> {
    String::from_utf8(bytes(v)?)
        .map_err(|_| EncodeError::new("string is not valid UTF-8 (a Protobuf string)"))
}

fn table(v: &Value) -> Res<Table> {
    match v {
        Value::Table(t) => Ok(t.clone()),
        other => Err(mismatch("a table", other)),
    }
}

struct Writer {
    guard: Guard,
    multimap: bool,
}

impl Writer {
    fn value(&mut self, v: &Value) -> Res<google::Value> {
        let kind = match v {
            Value::Boolean(b) => Kind::BoolValue(*b),
            Value::Integer(_) | Value::Number(_) => Kind::NumberValue(float(v)?),
            Value::String(_) => Kind::StringValue(text(v)?),
            Value::Table(t) => self.table(t)?,
            _ if walk::is_null(v) => Kind::NullValue(NullValue::NullValue as i32),
            other => return Err(walk::unsupported(other)),
        };
        Ok(google::Value { kind: Some(kind) })
    }

    fn table(&mut self, t: &Table) -> Res<Kind> {
        self.guard.enter(t)?;
        let kind = match walk::layout(t)? {
            Layout::Array(n) => Kind::ListValue(self.list(t, n)?),
            Layout::Empty | Layout::Map(_) => Kind::StructValue(self.fields(t, false)?),
        };
        self.guard.leave();
        Ok(kind)
    }

    fn list(&mut self, t: &Table, n: usize) -> Res<ListValue> {
        let mut values = Vec::with_capacity(n);
        walk::each_item(t, n, |v| {
            values.push(self.value(v)?);
            Ok(())
        })?;
        Ok(ListValue { values })
    }

    /// Every entry as a struct field (number keys as their text). `multimap`:
    /// a `true` value is an empty list (a query flag).
    fn fields(&mut self, t: &Table, multimap: bool) -> Res<Struct> {
        let mut s = Struct::default();
        walk::each_pair(t, |k, v| {
            let key = match k {
                Value::String(_) => text(k)?,
                Value::Integer(_) | Value::Number(_) => number_text(float(k)?),
                other => {
                    return Err(EncodeError::new(format!(
                        "a struct key must be a string, got {}",
                        other.type_name()
                    )));
                }
            };
            let value = match v {
                Value::Boolean(true) if multimap => google::Value {
                    kind: Some(Kind::ListValue(ListValue::default())),
                },
                _ => self.value(v)?,
            };
            s.fields.insert(key, value);
            Ok(())
        })?;
        Ok(s)
    }

    fn root_struct(&mut self, v: &Value) -> Res<Struct> {
        let t = table(v)?;
        self.guard.enter(&t)?;
        let s = self.fields(&t, self.multimap)?;
        self.guard.leave();
        Ok(s)
    }

    fn root_list(&mut self, v: &Value) -> Res<ListValue> {
        let t = table(v)?;
        self.guard.enter(&t)?;
        let n = match walk::layout(&t)? {
            Layout::Empty => 0,
            Layout::Array(n) => n,
            Layout::Map(_) => return Err(EncodeError::new("expected an array, got a map")),
        };
        let l = self.list(&t, n)?;
        self.guard.leave();
        Ok(l)
    }
}

/// Reads the fields of an entity table by name; a missing or null field is the
/// default, a field of the wrong type an error naming it.
struct Fields<'a>(&'a Table);

impl Fields<'_> {
    fn get(&self, name: &str) -> Res<Option<Value>> {
        let v: Value = self.0.get(name)?;
        Ok((!walk::is_null(&v)).then_some(v))
    }

    fn with<T: Default>(&self, name: &str, f: impl FnOnce(&Value) -> Res<T>) -> Res<T> {
        match self.get(name)? {
            Some(v) => f(&v).map_err(|e| e.at_field(name)),
            None => Ok(T::default()),
        }
    }

    fn string(&self, name: &str) -> Res<String> {
        self.with(name, text)
    }

    fn int64(&self, name: &str) -> Res<i64> {
        self.with(name, int64)
    }

    fn int32(&self, name: &str) -> Res<i32> {
        self.with(name, int32)
    }

    fn boolean(&self, name: &str) -> Res<bool> {
        self.with(name, boolean)
    }

    fn strings(&self, name: &str) -> Res<Vec<String>> {
        self.with(name, |v| strings(&table(v)?))
    }

    fn table(&self, name: &str) -> Res<Option<Table>> {
        self.with(name, |v| table(v).map(Some))
    }

    fn id_of(&self, name: &str) -> Res<Option<String>> {
        match self.table(name)? {
            Some(t) => Ok(Some(Fields(&t).string("id").map_err(|e| e.at_field(name))?)),
            None => Ok(None),
        }
    }
}

/// An array of strings (numbers as their text).
fn strings(t: &Table) -> Res<Vec<String>> {
    let n = match walk::layout(t)? {
        Layout::Empty => 0,
        Layout::Array(n) => n,
        Layout::Map(_) => return Err(EncodeError::new("expected an array, got a map")),
    };
    let mut out = Vec::with_capacity(n);
    walk::each_item(t, n, |v| {
        out.push(text(v)?);
        Ok(())
    })?;
    Ok(out)
}

/// `Route.headers` is `repeated string` while Kong's route has a map of header
/// name → values: each value becomes `name:value`, names sorted.
fn route_headers(v: &Value) -> Res<Vec<String>> {
    let t = table(v)?;
    if let Layout::Array(_) | Layout::Empty = walk::layout(&t)? {
        return strings(&t);
    }
    let mut pairs = Vec::new();
    walk::each_pair(&t, |k, v| {
        let name = text(k)?;
        match v {
            Value::Table(values) => {
                for value in strings(values)? {
                    pairs.push(format!("{name}:{value}"));
                }
            }
            other => pairs.push(format!("{name}:{}", text(other)?)),
        }
        Ok(())
    })?;
    pairs.sort();
    Ok(pairs)
}

fn route(t: &Table) -> Res<Route> {
    let f = Fields(t);
    Ok(Route {
        id: f.string("id")?,
        created_at: f.int64("created_at")?,
        updated_at: f.int64("updated_at")?,
        name: f.string("name")?,
        protocols: f.strings("protocols")?,
        methods: f.strings("methods")?,
        hosts: f.strings("hosts")?,
        paths: f.strings("paths")?,
        headers: f.with("headers", route_headers)?,
        https_redirect_status_code: f.int32("https_redirect_status_code")?,
        regex_priority: f.int32("regex_priority")?,
        strip_path: f.boolean("strip_path")?,
        preserve_host: f.boolean("preserve_host")?,
        snis: f.strings("snis")?,
        sources: f.with("sources", endpoints)?,
        destinations: f.with("destinations", endpoints)?,
        tags: f.strings("tags")?,
        service: f.id_of("service")?.map(|id| ServiceKey { id }),
    })
}

/// Stream routes' `sources`/`destinations`: `{ip = ..., port = ...}` entries as
/// `ip:port` (or the part that is set); plain strings as they are.
fn endpoints(v: &Value) -> Res<Vec<String>> {
    let t = table(v)?;
    let n = match walk::layout(&t)? {
        Layout::Empty => 0,
        Layout::Array(n) => n,
        Layout::Map(_) => return Err(EncodeError::new("expected an array, got a map")),
    };
    let mut out = Vec::with_capacity(n);
    walk::each_item(&t, n, |e| {
        match e {
            Value::Table(ep) => {
                let f = Fields(ep);
                let ip = f.string("ip")?;
                let port = f.int32("port")?;
                out.push(match (ip.is_empty(), port) {
                    (false, 0) => ip,
                    (true, p) => format!(":{p}"),
                    (false, p) => format!("{ip}:{p}"),
                });
            }
            other => out.push(text(other)?),
        }
        Ok(())
    })?;
    Ok(out)
}

fn service(t: &Table) -> Res<Service> {
    let f = Fields(t);
    Ok(Service {
        id: f.string("id")?,
        created_at: f.int64("created_at")?,
        updated_at: f.int64("updated_at")?,
        name: f.string("name")?,
        retries: f.int32("retries")?,
        protocol: f.string("protocol")?,
        host: f.string("host")?,
        port: f.int32("port")?,
        path: f.string("path")?,
        connect_timeout: f.int32("connect_timeout")?,
        write_timeout: f.int32("write_timeout")?,
        read_timeout: f.int32("read_timeout")?,
        tags: f.strings("tags")?,
        client_certificate: f
            .id_of("client_certificate")?
            .map(|id| CertificateKey { id }),
    })
}

fn consumer(t: &Table) -> Res<Consumer> {
    let f = Fields(t);
    Ok(Consumer {
        id: f.string("id")?,
        created_at: f.int64("created_at")?,
        username: f.string("username")?,
        custom_id: f.string("custom_id")?,
        tags: f.strings("tags")?,
    })
}

fn credential(t: &Table) -> Res<AuthenticatedCredential> {
    let f = Fields(t);
    Ok(AuthenticatedCredential {
        id: f.string("id")?,
        consumer_id: f.string("consumer_id")?,
    })
}

fn dict_stats(f: &Fields, name: &str) -> Res<Option<DictStats>> {
    let Some(t) = f.table(name)? else {
        return Ok(None);
    };
    let d = Fields(&t);
    let stats = DictStats {
        allocated_slabs: d.int64("allocated_slabs")?,
        capacity: d.int64("capacity")?,
    };
    Ok(Some(stats))
}

fn memory_stats(t: &Table) -> Res<MemoryStats> {
    let f = Fields(t);
    let lua_shared_dicts = match f.table("lua_shared_dicts")? {
        Some(d) => {
            let d = Fields(&d);
            Some(LuaSharedDicts {
                kong: dict_stats(&d, "kong").map_err(|e| e.at_field("lua_shared_dicts"))?,
                kong_db_cache: dict_stats(&d, "kong_db_cache")
                    .map_err(|e| e.at_field("lua_shared_dicts"))?,
            })
        }
        None => None,
    };
    let mut workers_lua_vms = Vec::new();
    if let Some(vms) = f.table("workers_lua_vms")? {
        let n = match walk::layout(&vms)? {
            Layout::Array(n) => n,
            _ => 0,
        };
        walk::each_item(&vms, n, |vm| {
            let vm = table(vm)?;
            let w = Fields(&vm);
            workers_lua_vms.push(WorkerLuaVm {
                http_allocated_gc: w.int64("http_allocated_gc")?,
                pid: w.int64("pid")?,
            });
            Ok(())
        })
        .map_err(|e| e.at_field("workers_lua_vms"))?;
    }
    Ok(MemoryStats {
        lua_shared_dicts,
        workers_lua_vms,
    })
}

/// `kong.request.get_uri_captures()`: `{unnamed = {...}, named = {...}}`; an
/// unmatched optional group (`false`) is an empty capture.
fn uri_captures(t: &Table) -> Res<UriCapturesResult> {
    let f = Fields(t);
    let capture = |v: &Value| match v {
        Value::Boolean(false) => Ok(Vec::new()),
        other => bytes(other),
    };
    let mut out = UriCapturesResult::default();
    if let Some(unnamed) = f.table("unnamed")? {
        let n = match walk::layout(&unnamed)? {
            Layout::Array(n) => n,
            Layout::Empty => 0,
            Layout::Map(_) => {
                return Err(EncodeError::new("expected an array, got a map").at_field("unnamed"));
            }
        };
        walk::each_item(&unnamed, n, |v| {
            out.unnamed.push(capture(v)?);
            Ok(())
        })
        .map_err(|e| e.at_field("unnamed"))?;
    }
    if let Some(named) = f.table("named")? {
        walk::each_pair(&named, |k, v| {
            out.named.insert(text(k)?, capture(v)?);
            Ok(())
        })
        .map_err(|e| e.at_field("named"))?;
    }
    Ok(out)
}

/// The raw body: a string is the content; `{body_filepath = ...}` or
/// `{error = ...}` (built by the Lua side from `ngx.req.get_body_file()` or
/// the PDK's error) select the other members.
fn raw_body(v: &Value) -> Res<RawBodyResult> {
    let kind = match v {
        Value::String(s) => RawBodyKind::Content(s.as_bytes().to_vec()),
        Value::Table(t) => {
            let f = Fields(t);
            if let Some(path) = f.get("body_filepath")? {
                RawBodyKind::BodyFilepath(text(&path).map_err(|e| e.at_field("body_filepath"))?)
            } else if let Some(err) = f.get("error")? {
                RawBodyKind::Error(text(&err).map_err(|e| e.at_field("error"))?)
            } else {
                return Err(EncodeError::new(
                    "a raw body table needs body_filepath or error",
                ));
            }
        }
        other => return Err(mismatch("a string", other)),
    };
    Ok(RawBodyResult { kind: Some(kind) })
}
