//! The messages of the Kong plugin protocol (`kong_plugin_protocol`) and the
//! Google well-known types it uses, as prost derives.
//!
//! Written from `kong_plugin_protocol.proto` beside this file (go-pdk v0.11.2's
//! schema). `tests/proto_schema.rs` compiles the `.proto` and fails on any
//! message, field number, type or label that differs from these structs. A struct
//! named unlike its message says the message's name first in its doc comment.
//! Maps are `BTreeMap`s so that encoding is deterministic (sorted keys), as Go's
//! deterministic marshalling is.

use std::collections::BTreeMap;

/// `google.protobuf` well-known types.
pub mod google {
    use std::collections::BTreeMap;

    /// `google.protobuf.Empty`.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Empty {}

    /// `google.protobuf.NullValue`: one member, 0.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum NullValue {
        NullValue = 0,
    }

    /// `google.protobuf.Struct`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Struct {
        #[prost(btree_map = "string, message", tag = "1")]
        pub fields: BTreeMap<String, Value>,
    }

    /// `google.protobuf.ListValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<Value>,
    }

    /// `google.protobuf.Value`; `kind: None` is the empty Value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
        pub kind: Option<Kind>,
    }

    /// The oneof `kind` of [`Value`].
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(enumeration = "NullValue", tag = "1")]
        NullValue(i32),
        #[prost(double, tag = "2")]
        NumberValue(f64),
        #[prost(string, tag = "3")]
        StringValue(String),
        #[prost(bool, tag = "4")]
        BoolValue(bool),
        #[prost(message, tag = "5")]
        StructValue(Struct),
        #[prost(message, tag = "6")]
        ListValue(ListValue),
    }
}

use google::{Struct, Value};

// ---- Commands ---------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct CmdGetPluginNames {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CmdGetPluginInfo {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CmdStartInstance {
    #[prost(string, tag = "1")]
    pub name: String,
    /// JSON text of the plugin configuration.
    #[prost(bytes = "vec", tag = "2")]
    pub config: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct CmdGetInstanceStatus {
    #[prost(int32, tag = "1")]
    pub instance_id: i32,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct CmdCloseInstance {
    #[prost(int32, tag = "1")]
    pub instance_id: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CmdHandleEvent {
    #[prost(int32, tag = "1")]
    pub instance_id: i32,
    #[prost(string, tag = "2")]
    pub event_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcCall {
    #[prost(int64, tag = "1")]
    pub sequence: i64,
    #[prost(oneof = "Call", tags = "31, 32, 33, 34, 35, 36")]
    pub call: Option<Call>,
}

/// The oneof `call` of [`RpcCall`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Call {
    #[prost(message, tag = "31")]
    CmdGetPluginNames(CmdGetPluginNames),
    #[prost(message, tag = "32")]
    CmdGetPluginInfo(CmdGetPluginInfo),
    #[prost(message, tag = "33")]
    CmdStartInstance(CmdStartInstance),
    #[prost(message, tag = "34")]
    CmdGetInstanceStatus(CmdGetInstanceStatus),
    #[prost(message, tag = "35")]
    CmdCloseInstance(CmdCloseInstance),
    #[prost(message, tag = "36")]
    CmdHandleEvent(CmdHandleEvent),
}

// ---- Replies ----------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginNames {
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "2")]
    pub updated_at: i64,
    #[prost(int64, tag = "3")]
    pub loaded_at: i64,
    #[prost(string, repeated, tag = "4")]
    pub phases: Vec<String>,
    #[prost(string, tag = "5")]
    pub version: String,
    #[prost(int32, tag = "6")]
    pub priority: i32,
    #[prost(string, tag = "7")]
    pub schema: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InstanceStatus {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub instance_id: i32,
    #[prost(message, optional, tag = "3")]
    pub config: Option<Value>,
    #[prost(int64, tag = "4")]
    pub started_at: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcReturn {
    #[prost(int64, tag = "1")]
    pub sequence: i64,
    #[prost(oneof = "Return", tags = "31, 32, 33")]
    pub r#return: Option<Return>,
}

/// The oneof `return` of [`RpcReturn`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Return {
    #[prost(message, tag = "31")]
    PluginNames(PluginNames),
    #[prost(message, tag = "32")]
    PluginInfo(PluginInfo),
    #[prost(message, tag = "33")]
    InstanceStatus(InstanceStatus),
}

// ---- PDK arguments and results ----------------------------------------------

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Bool {
    #[prost(bool, tag = "1")]
    pub v: bool,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Int {
    #[prost(int32, tag = "1")]
    pub v: i32,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Number {
    #[prost(double, tag = "1")]
    pub v: f64,
}

/// `kong_plugin_protocol.String`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Str {
    #[prost(string, tag = "1")]
    pub v: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ByteString {
    #[prost(bytes = "vec", tag = "1")]
    pub v: Vec<u8>,
}

/// `kong_plugin_protocol.KV`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Kv {
    #[prost(string, tag = "1")]
    pub k: String,
    #[prost(message, optional, tag = "2")]
    pub v: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExitArgs {
    #[prost(int32, tag = "1")]
    pub status: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub headers: Option<Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceKey {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CertificateKey {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RawBodyResult {
    #[prost(oneof = "RawBodyKind", tags = "1, 2, 3")]
    pub kind: Option<RawBodyKind>,
}

/// The oneof `kind` of [`RawBodyResult`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RawBodyKind {
    #[prost(bytes, tag = "1")]
    Content(Vec<u8>),
    #[prost(string, tag = "2")]
    BodyFilepath(String),
    #[prost(string, tag = "3")]
    Error(String),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UriCapturesResult {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub unnamed: Vec<Vec<u8>>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    pub named: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Route {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at: i64,
    #[prost(int64, tag = "3")]
    pub updated_at: i64,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, repeated, tag = "5")]
    pub protocols: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    pub methods: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub hosts: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    pub paths: Vec<String>,
    #[prost(string, repeated, tag = "9")]
    pub headers: Vec<String>,
    #[prost(int32, tag = "10")]
    pub https_redirect_status_code: i32,
    #[prost(int32, tag = "11")]
    pub regex_priority: i32,
    #[prost(bool, tag = "12")]
    pub strip_path: bool,
    #[prost(bool, tag = "13")]
    pub preserve_host: bool,
    #[prost(string, repeated, tag = "14")]
    pub snis: Vec<String>,
    #[prost(string, repeated, tag = "15")]
    pub sources: Vec<String>,
    #[prost(string, repeated, tag = "16")]
    pub destinations: Vec<String>,
    #[prost(string, repeated, tag = "17")]
    pub tags: Vec<String>,
    #[prost(message, optional, tag = "18")]
    pub service: Option<ServiceKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Service {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at: i64,
    #[prost(int64, tag = "3")]
    pub updated_at: i64,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(int32, tag = "5")]
    pub retries: i32,
    #[prost(string, tag = "6")]
    pub protocol: String,
    #[prost(string, tag = "7")]
    pub host: String,
    #[prost(int32, tag = "8")]
    pub port: i32,
    #[prost(string, tag = "9")]
    pub path: String,
    #[prost(int32, tag = "10")]
    pub connect_timeout: i32,
    #[prost(int32, tag = "11")]
    pub write_timeout: i32,
    #[prost(int32, tag = "12")]
    pub read_timeout: i32,
    #[prost(string, repeated, tag = "13")]
    pub tags: Vec<String>,
    #[prost(message, optional, tag = "14")]
    pub client_certificate: Option<CertificateKey>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Target {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(int32, tag = "2")]
    pub port: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsumerSpec {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(bool, tag = "2")]
    pub by_username: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Consumer {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at: i64,
    #[prost(string, tag = "3")]
    pub username: String,
    #[prost(string, tag = "4")]
    pub custom_id: String,
    #[prost(string, repeated, tag = "5")]
    pub tags: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticatedCredential {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub consumer_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateArgs {
    #[prost(message, optional, tag = "1")]
    pub consumer: Option<Consumer>,
    #[prost(message, optional, tag = "2")]
    pub credential: Option<AuthenticatedCredential>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryStats {
    #[prost(message, optional, tag = "1")]
    pub lua_shared_dicts: Option<LuaSharedDicts>,
    #[prost(message, repeated, tag = "2")]
    pub workers_lua_vms: Vec<WorkerLuaVm>,
}

/// `MemoryStats.LuaSharedDicts`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LuaSharedDicts {
    #[prost(message, optional, tag = "1")]
    pub kong: Option<DictStats>,
    #[prost(message, optional, tag = "2")]
    pub kong_db_cache: Option<DictStats>,
}

/// `MemoryStats.LuaSharedDicts.DictStats`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct DictStats {
    #[prost(int64, tag = "1")]
    pub allocated_slabs: i64,
    #[prost(int64, tag = "2")]
    pub capacity: i64,
}

/// `MemoryStats.WorkerLuaVm`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct WorkerLuaVm {
    #[prost(int64, tag = "1")]
    pub http_allocated_gc: i64,
    #[prost(int64, tag = "2")]
    pub pid: i64,
}

/// Declared by the protocol, used by neither side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringMap {
    #[prost(btree_map = "string, string", tag = "1")]
    pub m: BTreeMap<String, String>,
}

/// Declared by the protocol, used by neither side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PdkArg {
    #[prost(oneof = "PdkData", tags = "31, 32, 33, 34, 35, 36, 40, 41, 42, 43, 44")]
    pub data: Option<PdkData>,
}

/// The oneof `data` of [`PdkArg`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PdkData {
    #[prost(bool, tag = "31")]
    B(bool),
    #[prost(int64, tag = "32")]
    I(i64),
    #[prost(double, tag = "33")]
    F(f64),
    #[prost(string, tag = "34")]
    S(String),
    #[prost(message, tag = "35")]
    M(StringMap),
    #[prost(string, tag = "36")]
    Error(String),
    #[prost(message, tag = "40")]
    Credential(AuthenticatedCredential),
    #[prost(message, tag = "41")]
    Route(Route),
    #[prost(message, tag = "42")]
    Service(Service),
    #[prost(message, tag = "43")]
    Consumer(Consumer),
    #[prost(message, tag = "44")]
    MemoryStats(MemoryStats),
}

/// Declared by the protocol, used by neither side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PdkCall {
    #[prost(int64, tag = "1")]
    pub sequence: i64,
    #[prost(int64, tag = "2")]
    pub event_id: i64,
    #[prost(string, tag = "3")]
    pub cmd: String,
    #[prost(message, repeated, tag = "31")]
    pub args: Vec<PdkArg>,
}

/// Declared by the protocol, used by neither side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PdkReturn {
    #[prost(int64, tag = "1")]
    pub sequence: i64,
    #[prost(int64, tag = "2")]
    pub event_id: i64,
    #[prost(string, tag = "3")]
    pub cmd: String,
    #[prost(message, optional, tag = "31")]
    pub arg: Option<PdkArg>,
}
