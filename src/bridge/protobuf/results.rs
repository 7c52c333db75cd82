//! Lua result → the encoded output message of a PDK method (docs/PROTOCOL.md §5,
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

use prost::Message;

use super::super::stack::{Stack, Table, Val};
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
pub fn encode(out: &mut Vec<u8>, ty: PbType, multimap: bool, s: &Stack, value: Val<'_>) -> Res<()> {
    let mut w = Writer {
        s,
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
        PbType::RawBodyResult => raw_body(s, value)?.encode(out),
        PbType::UriCapturesResult => uri_captures(s, table(value)?)?.encode(out),
        PbType::Route => route(s, table(value)?)?.encode(out),
        PbType::Service => service(s, table(value)?)?.encode(out),
        PbType::Consumer => consumer(s, table(value)?)?.encode(out),
        PbType::AuthenticatedCredential => credential(s, table(value)?)?.encode(out),
        PbType::MemoryStats => memory_stats(s, table(value)?)?.encode(out),
        other => {
            return Err(EncodeError::new(format!(
                "{other:?} is not a result type of the Protobuf service"
            )));
        }
    }
    .expect("a Vec grows");
    Ok(())
}

fn mismatch(want: &str, v: Val<'_>) -> EncodeError {
    EncodeError::new(format!("expected {want}, got {}", v.type_name()))
}

fn boolean(v: Val<'_>) -> Res<bool> {
    match v {
        Val::Bool(b) => Ok(b),
        other => Err(mismatch("a boolean", other)),
    }
}

fn float(v: Val<'_>) -> Res<f64> {
    match v {
        Val::Num(n) => Ok(n),
        other => Err(mismatch("a number", other)),
    }
}

fn int64(v: Val<'_>) -> Res<i64> {
    let n = float(v)?;
    walk::whole(n).ok_or_else(|| EncodeError::new(format!("expected an integer, got {n}")))
}

fn int32(v: Val<'_>) -> Res<i32> {
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

fn bytes(v: Val<'_>) -> Res<Vec<u8>> {
    match v {
        Val::Str(b) => Ok(b.to_vec()),
        Val::Num(n) => Ok(number_text(n).into_bytes()),
        other => Err(mismatch("a string", other)),
    }
}

/// Protobuf `string` fields must be UTF-8 (go-pdk's decoder checks).
fn text(v: Val<'_>) -> Res<String> {
    String::from_utf8(bytes(v)?)
        .map_err(|_| EncodeError::new("string is not valid UTF-8 (a Protobuf string)"))
}

fn table(v: Val<'_>) -> Res<Table<'_>> {
    match v {
        Val::Table(t) => Ok(t),
        other => Err(mismatch("a table", other)),
    }
}

/// The length of an array table; a map is an error, an empty table `[]`.
fn array_len(s: &Stack, t: Table<'_>) -> Res<usize> {
    match walk::layout(s, t)? {
        Layout::Empty => Ok(0),
        Layout::Array(n) => Ok(n),
        Layout::Map(_) => Err(EncodeError::new("expected an array, got a map")),
    }
}

struct Writer<'s> {
    s: &'s Stack,
    guard: Guard,
    multimap: bool,
}

impl Writer<'_> {
    fn value(&mut self, v: Val<'_>) -> Res<google::Value> {
        let kind = match v {
            Val::Bool(b) => Kind::BoolValue(b),
            Val::Num(n) => Kind::NumberValue(n),
            Val::Str(_) => Kind::StringValue(text(v)?),
            Val::Table(t) => self.table(t)?,
            _ if walk::is_null(v) => Kind::NullValue(NullValue::NullValue as i32),
            other => return Err(walk::unsupported(other)),
        };
        Ok(google::Value { kind: Some(kind) })
    }

    fn table(&mut self, t: Table<'_>) -> Res<Kind> {
        self.guard.enter(self.s, t)?;
        let kind = match walk::layout(self.s, t)? {
            Layout::Array(n) => Kind::ListValue(self.list(t, n)?),
            Layout::Empty | Layout::Map(_) => Kind::StructValue(self.fields(t, false)?),
        };
        self.guard.leave();
        Ok(kind)
    }

    fn list(&mut self, t: Table<'_>, n: usize) -> Res<ListValue> {
        let mut values = Vec::with_capacity(n);
        walk::each_item(self.s, t, n, |v| {
            values.push(self.value(v)?);
            Ok(())
        })?;
        Ok(ListValue { values })
    }

    /// Every entry as a struct field (number keys as their text). `multimap`:
    /// a `true` value is an empty list (a query flag).
    fn fields(&mut self, t: Table<'_>, multimap: bool) -> Res<Struct> {
        let mut st = Struct::default();
        walk::each_pair(self.s, t, |k, v| {
            let key = match k {
                Val::Str(_) => text(k)?,
                Val::Num(n) => number_text(n),
                other => {
                    return Err(EncodeError::new(format!(
                        "a struct key must be a string, got {}",
                        other.type_name()
                    )));
                }
            };
            let value = match v {
                Val::Bool(true) if multimap => google::Value {
                    kind: Some(Kind::ListValue(ListValue::default())),
                },
                _ => self.value(v)?,
            };
            st.fields.insert(key, value);
            Ok(())
        })?;
        Ok(st)
    }

    fn root_struct(&mut self, v: Val<'_>) -> Res<Struct> {
        let t = table(v)?;
        self.guard.enter(self.s, t)?;
        let st = self.fields(t, self.multimap)?;
        self.guard.leave();
        Ok(st)
    }

    fn root_list(&mut self, v: Val<'_>) -> Res<ListValue> {
        let t = table(v)?;
        self.guard.enter(self.s, t)?;
        let n = array_len(self.s, t)?;
        let l = self.list(t, n)?;
        self.guard.leave();
        Ok(l)
    }
}

/// Reads the fields of an entity table by name (with metamethods, as a Lua
/// `t.name` would); a missing or null field is the default, a field of the
/// wrong type an error naming it.
struct Fields<'a, 't> {
    s: &'a Stack,
    t: Table<'t>,
}

impl<'a, 't> Fields<'a, 't> {
    fn new(s: &'a Stack, t: Table<'t>) -> Self {
        Fields { s, t }
    }

    /// `f(value)` when the field is set; `None` when it is missing or null.
    fn get<T>(&self, name: &str, f: impl for<'v> FnOnce(Val<'v>) -> Res<T>) -> Res<Option<T>> {
        self.s.field(self.t, name, |v| {
            (!walk::is_null(v)).then(|| f(v)).transpose()
        })?
    }

    fn with<T: Default>(&self, name: &str, f: impl for<'v> FnOnce(Val<'v>) -> Res<T>) -> Res<T> {
        let got = self.get(name, |v| f(v).map_err(|e| e.at_field(name)))?;
        Ok(got.unwrap_or_default())
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
        self.with(name, |v| strings(self.s, table(v)?))
    }

    /// `f(table)` when the field is set: a non-table is an error naming the
    /// field; errors of `f` are not annotated here.
    fn table<T>(&self, name: &str, f: impl for<'v> FnOnce(Table<'v>) -> Res<T>) -> Res<Option<T>> {
        self.get(name, |v| f(table(v).map_err(|e| e.at_field(name))?))
    }

    fn id_of(&self, name: &str) -> Res<Option<String>> {
        self.with(name, |v| {
            Fields::new(self.s, table(v)?).string("id").map(Some)
        })
    }
}

/// An array of strings (numbers as their text).
fn strings(s: &Stack, t: Table<'_>) -> Res<Vec<String>> {
    let n = array_len(s, t)?;
    let mut out = Vec::with_capacity(n);
    walk::each_item(s, t, n, |v| {
        out.push(text(v)?);
        Ok(())
    })?;
    Ok(out)
}

/// `Route.headers` is `repeated string` while Kong's route has a map of header
/// name → values: each value becomes `name:value`, names sorted.
fn route_headers(s: &Stack, v: Val<'_>) -> Res<Vec<String>> {
    let t = table(v)?;
    if let Layout::Array(_) | Layout::Empty = walk::layout(s, t)? {
        return strings(s, t);
    }
    let mut pairs = Vec::new();
    walk::each_pair(s, t, |k, v| {
        let name = text(k)?;
        match v {
            Val::Table(values) => {
                for value in strings(s, values)? {
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

fn route(s: &Stack, t: Table<'_>) -> Res<Route> {
    let f = Fields::new(s, t);
    Ok(Route {
        id: f.string("id")?,
        created_at: f.int64("created_at")?,
        updated_at: f.int64("updated_at")?,
        name: f.string("name")?,
        protocols: f.strings("protocols")?,
        methods: f.strings("methods")?,
        hosts: f.strings("hosts")?,
        paths: f.strings("paths")?,
        headers: f.with("headers", |v| route_headers(s, v))?,
        https_redirect_status_code: f.int32("https_redirect_status_code")?,
        regex_priority: f.int32("regex_priority")?,
        strip_path: f.boolean("strip_path")?,
        preserve_host: f.boolean("preserve_host")?,
        snis: f.strings("snis")?,
        sources: f.with("sources", |v| endpoints(s, v))?,
        destinations: f.with("destinations", |v| endpoints(s, v))?,
        tags: f.strings("tags")?,
        service: f.id_of("service")?.map(|id| ServiceKey { id }),
    })
}

/// Stream routes' `sources`/`destinations`: `{ip = ..., port = ...}` entries as
/// `ip:port` (or the part that is set); plain strings as they are.
fn endpoints(s: &Stack, v: Val<'_>) -> Res<Vec<String>> {
    let t = table(v)?;
    let n = array_len(s, t)?;
    let mut out = Vec::with_capacity(n);
    walk::each_item(s, t, n, |e| {
        match e {
            Val::Table(ep) => {
                let f = Fields::new(s, ep);
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

fn service(s: &Stack, t: Table<'_>) -> Res<Service> {
    let f = Fields::new(s, t);
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

fn consumer(s: &Stack, t: Table<'_>) -> Res<Consumer> {
    let f = Fields::new(s, t);
    Ok(Consumer {
        id: f.string("id")?,
        created_at: f.int64("created_at")?,
        username: f.string("username")?,
        custom_id: f.string("custom_id")?,
        tags: f.strings("tags")?,
    })
}

fn credential(s: &Stack, t: Table<'_>) -> Res<AuthenticatedCredential> {
    let f = Fields::new(s, t);
    Ok(AuthenticatedCredential {
        id: f.string("id")?,
        consumer_id: f.string("consumer_id")?,
    })
}

fn dict_stats(s: &Stack, f: &Fields, name: &str) -> Res<Option<DictStats>> {
    f.table(name, |t| {
        let d = Fields::new(s, t);
        Ok(DictStats {
            allocated_slabs: d.int64("allocated_slabs")?,
            capacity: d.int64("capacity")?,
        })
    })
}

fn memory_stats(s: &Stack, t: Table<'_>) -> Res<MemoryStats> {
    let f = Fields::new(s, t);
    let lua_shared_dicts = f.table("lua_shared_dicts", |d| {
        let d = Fields::new(s, d);
        Ok(LuaSharedDicts {
            kong: dict_stats(s, &d, "kong").map_err(|e| e.at_field("lua_shared_dicts"))?,
            kong_db_cache: dict_stats(s, &d, "kong_db_cache")
                .map_err(|e| e.at_field("lua_shared_dicts"))?,
        })
    })?;
    let workers_lua_vms = f
        .table("workers_lua_vms", |vms| {
            let n = match walk::layout(s, vms)? {
                Layout::Array(n) => n,
                _ => 0,
            };
            let mut out = Vec::with_capacity(n);
            walk::each_item(s, vms, n, |vm| {
                let w = Fields::new(s, table(vm)?);
                out.push(WorkerLuaVm {
                    http_allocated_gc: w.int64("http_allocated_gc")?,
                    pid: w.int64("pid")?,
                });
                Ok(())
            })
            .map_err(|e| e.at_field("workers_lua_vms"))?;
            Ok(out)
        })?
        .unwrap_or_default();
    Ok(MemoryStats {
        lua_shared_dicts,
        workers_lua_vms,
    })
}

/// `kong.request.get_uri_captures()`: `{unnamed = {...}, named = {...}}`; an
/// unmatched optional group (`false`) is an empty capture.
fn uri_captures(s: &Stack, t: Table<'_>) -> Res<UriCapturesResult> {
    let f = Fields::new(s, t);
    let capture = |v: Val<'_>| match v {
        Val::Bool(false) => Ok(Vec::new()),
        other => bytes(other),
    };
    let mut out = UriCapturesResult::default();
    f.table("unnamed", |unnamed| {
        let n = match walk::layout(s, unnamed)? {
            Layout::Array(n) => n,
            Layout::Empty => 0,
            Layout::Map(_) => {
                return Err(EncodeError::new("expected an array, got a map").at_field("unnamed"));
            }
        };
        walk::each_item(s, unnamed, n, |v| {
            out.unnamed.push(capture(v)?);
            Ok(())
        })
        .map_err(|e| e.at_field("unnamed"))
    })?;
    f.table("named", |named| {
        walk::each_pair(s, named, |k, v| {
            out.named.insert(text(k)?, capture(v)?);
            Ok(())
        })
        .map_err(|e| e.at_field("named"))
    })?;
    Ok(out)
}

/// The raw body: a string is the content; `{body_filepath = ...}` or
/// `{error = ...}` (built by the Lua side from `ngx.req.get_body_file()` or
/// the PDK's error) select the other members.
fn raw_body(s: &Stack, v: Val<'_>) -> Res<RawBodyResult> {
    let kind = match v {
        Val::Str(b) => RawBodyKind::Content(b.to_vec()),
        Val::Table(t) => {
            let f = Fields::new(s, t);
            let member = |name: &str| f.get(name, |v| text(v).map_err(|e| e.at_field(name)));
            if let Some(path) = member("body_filepath")? {
                RawBodyKind::BodyFilepath(path)
            } else if let Some(err) = member("error")? {
                RawBodyKind::Error(err)
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
