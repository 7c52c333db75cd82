//! The one PDK method table, shared by both codecs and by both sides of the seam.
//!
//! A PDK method is named across the boundary by its index in [`METHODS`]: the
//! engines report `index` for a call, the mlua bridge shapes the value it encodes
//! by `index`, and Lua caches the resolved PDK function per `index`. Index 0 is
//! the "unknown method" entry: the engine then also hands over the method name,
//! and values are encoded without shaping. The engines pass every name on; which
//! names a server may call is decided once, in Lua (`pdk.lua`: functions under
//! `kong.*` and Kong's overrides), so a name outside the table costs nothing here.
//!
//! Per method the table records what each protocol needs:
//! - MessagePack: the Step method that carries the result ([`Step`]) and how the
//!   result is shaped ([`Shape`]); `terminal` marks calls after which the plugin
//!   handler does not wait for a reply (`kong.response.exit`/`error`).
//! - Protobuf: the input and output message types ([`PbType`], docs/PROTOCOL.md §5);
//!   `None` for methods the Protobuf service does not have.

use std::sync::OnceLock;

/// The MessagePack-RPC method that carries a PDK result back (docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Plain,
    MultiMap,
    Credential,
    Consumer,
    Route,
    Service,
    MemoryStats,
}

impl Step {
    /// The RPC method name sent on the wire.
    pub const fn rpc_name(self) -> &'static str {
        match self {
            Step::Plain => "plugin.Step",
            Step::MultiMap => "plugin.StepMultiMap",
            Step::Credential => "plugin.StepCredential",
            Step::Consumer => "plugin.StepConsumer",
            Step::Route => "plugin.StepRoute",
            Step::Service => "plugin.StepService",
            Step::MemoryStats => "plugin.StepMemoryStats",
        }
    }
}

/// How a PDK result is encoded (MessagePack; Kong's fix-ups, docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Kong's generic rules: keys 1..n → array, other tables → map, empty → array.
    Plain,
    /// Header/query maps: string → one-element array, `true` → empty array,
    /// empty table → empty map.
    MultiMap,
    /// A string result is sent as `bin`.
    RawBody,
}

/// Protobuf message types of the `kong_plugin_protocol` service (docs/PROTOCOL.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PbType {
    Empty,
    Bool,
    Int,
    Number,
    String,
    ByteString,
    Value,
    ListValue,
    Struct,
    Kv,
    Target,
    ExitArgs,
    ConsumerSpec,
    AuthenticateArgs,
    AuthenticatedCredential,
    Consumer,
    MemoryStats,
    Route,
    Service,
    RawBodyResult,
    UriCapturesResult,
}

/// One PDK method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// Dotted PDK name as the plugin sends it (`kong.request.get_header`).
    pub name: &'static str,
    pub step: Step,
    pub shape: Shape,
    pub terminal: bool,
    /// (input, output) Protobuf types; `None`: not in the Protobuf service.
    pub pb: Option<(PbType, PbType)>,
}

/// Index of the "unknown method" entry.
pub const UNKNOWN: u16 = 0;

const fn m(name: &'static str, pb_in: PbType, pb_out: PbType) -> Method {
    Method {
        name,
        step: Step::Plain,
        shape: Shape::Plain,
        terminal: false,
        pb: Some((pb_in, pb_out)),
    }
}

const fn step(mut x: Method, s: Step) -> Method {
    x.step = s;
    x
}

const fn multimap(mut x: Method) -> Method {
    x.step = Step::MultiMap;
    x.shape = Shape::MultiMap;
    x
}

const fn raw_body(mut x: Method) -> Method {
    x.shape = Shape::RawBody;
    x
}

const fn terminal(mut x: Method) -> Method {
    x.terminal = true;
    x
}

const fn mp_only(mut x: Method) -> Method {
    x.pb = None;
    x
}

use PbType as T;

/// The table. Append only: indexes are not persisted, but keeping them stable
/// keeps logs and benchmarks comparable. Entry 0 is the unknown method.
pub const METHODS: &[Method] = &[
    mp_only(m("", T::Empty, T::Empty)),
    // kong.client
    m("kong.client.get_ip", T::Empty, T::String),
    m("kong.client.get_forwarded_ip", T::Empty, T::String),
    m("kong.client.get_port", T::Empty, T::Int),
    m("kong.client.get_forwarded_port", T::Empty, T::Int),
    step(
        m(
            "kong.client.get_credential",
            T::Empty,
            T::AuthenticatedCredential,
        ),
        Step::Credential,
    ),
    step(
        m("kong.client.load_consumer", T::ConsumerSpec, T::Consumer),
        Step::Consumer,
    ),
    step(
        m("kong.client.get_consumer", T::Empty, T::Consumer),
        Step::Consumer,
    ),
    step(
        m("kong.client.authenticate", T::AuthenticateArgs, T::Empty),
        Step::Credential,
    ),
    m("kong.client.get_protocol", T::Bool, T::String),
    // kong.ctx.shared
    m("kong.ctx.shared.set", T::Kv, T::Empty),
    m("kong.ctx.shared.get", T::String, T::Value),
    // kong.ip
    m("kong.ip.is_trusted", T::String, T::Bool),
    // kong.log
    m("kong.log.alert", T::ListValue, T::Empty),
    m("kong.log.crit", T::ListValue, T::Empty),
    m("kong.log.err", T::ListValue, T::Empty),
    m("kong.log.warn", T::ListValue, T::Empty),
    m("kong.log.notice", T::ListValue, T::Empty),
    m("kong.log.info", T::ListValue, T::Empty),
    m("kong.log.debug", T::ListValue, T::Empty),
    m("kong.log.set_serialize_value", T::Kv, T::Empty),
    m("kong.log.serialize", T::Empty, T::String),
    // kong.nginx
    m("kong.nginx.get_var", T::String, T::String),
    m("kong.nginx.get_tls1_version_str", T::Empty, T::String),
    m("kong.nginx.set_ctx", T::Kv, T::String),
    m("kong.nginx.get_ctx", T::String, T::Value),
    m("kong.nginx.req_start_time", T::Empty, T::Number),
    m("kong.nginx.get_subsystem", T::Empty, T::String),
    // kong.node
    m("kong.node.get_id", T::Empty, T::String),
    step(
        m("kong.node.get_memory_stats", T::Empty, T::MemoryStats),
        Step::MemoryStats,
    ),
    // kong.request
    m("kong.request.get_scheme", T::Empty, T::String),
    m("kong.request.get_host", T::Empty, T::String),
    m("kong.request.get_port", T::Empty, T::Int),
    m("kong.request.get_forwarded_scheme", T::Empty, T::String),
    m("kong.request.get_forwarded_host", T::Empty, T::String),
    m("kong.request.get_forwarded_port", T::Empty, T::Int),
    m("kong.request.get_http_version", T::Empty, T::Number),
    m("kong.request.get_method", T::Empty, T::String),
    m("kong.request.get_path", T::Empty, T::String),
    m("kong.request.get_path_with_query", T::Empty, T::String),
    m("kong.request.get_raw_query", T::Empty, T::String),
    m("kong.request.get_query_arg", T::String, T::String),
    multimap(m("kong.request.get_query", T::Int, T::Struct)),
    m("kong.request.get_header", T::String, T::String),
    multimap(m("kong.request.get_headers", T::Int, T::Struct)),
    raw_body(m("kong.request.get_raw_body", T::Empty, T::RawBodyResult)),
    m(
        "kong.request.get_uri_captures",
        T::Empty,
        T::UriCapturesResult,
    ),
    // kong.response
    m("kong.response.get_status", T::Empty, T::Int),
    m("kong.response.get_header", T::String, T::String),
    multimap(m("kong.response.get_headers", T::Int, T::Struct)),
    m("kong.response.get_source", T::Empty, T::String),
    m("kong.response.set_status", T::Int, T::Empty),
    m("kong.response.set_header", T::Kv, T::Empty),
    m("kong.response.add_header", T::Kv, T::Empty),
    m("kong.response.clear_header", T::String, T::Empty),
    m("kong.response.set_headers", T::Struct, T::Empty),
    terminal(m("kong.response.exit", T::ExitArgs, T::Empty)),
    // kong.router
    step(m("kong.router.get_route", T::Empty, T::Route), Step::Route),
    step(
        m("kong.router.get_service", T::Empty, T::Service),
        Step::Service,
    ),
    // kong.service
    m("kong.service.set_upstream", T::String, T::Bool),
    m("kong.service.set_target", T::Target, T::Empty),
    m("kong.service.request.set_scheme", T::String, T::Empty),
    m("kong.service.request.set_path", T::String, T::Empty),
    m("kong.service.request.set_raw_query", T::String, T::Empty),
    m("kong.service.request.set_method", T::String, T::Empty),
    m("kong.service.request.set_query", T::Struct, T::Empty),
    m("kong.service.request.set_header", T::Kv, T::Empty),
    m("kong.service.request.add_header", T::Kv, T::Empty),
    m("kong.service.request.clear_header", T::String, T::Empty),
    m("kong.service.request.set_headers", T::Struct, T::Empty),
    m("kong.service.request.set_raw_body", T::ByteString, T::Empty),
    m("kong.service.response.get_status", T::Empty, T::Int),
    m("kong.service.response.get_header", T::String, T::String),
    multimap(m("kong.service.response.get_headers", T::Int, T::Struct)),
    raw_body(m(
        "kong.service.response.get_raw_body",
        T::Empty,
        T::ByteString,
    )),
    // MessagePack only (the Python and JS PDKs expose them; Protobuf has no such rpc)
    mp_only(raw_body(m(
        "kong.response.get_raw_body",
        T::Empty,
        T::Empty,
    ))),
    mp_only(terminal(m("kong.response.error", T::Empty, T::Empty))),
    mp_only(m("kong.request.get_body", T::Empty, T::Empty)),
    mp_only(m("kong.cluster.get_id", T::Empty, T::Empty)),
];

/// The method at `index`, or `None` when out of range.
pub fn get(index: u16) -> Option<&'static Method> {
    METHODS.get(usize::from(index))
}

/// Slots of the name lookup table (a power of two, well above the method count).
const SLOTS: usize = 256;

/// A hash of a method name from two 8-byte words (the tail and the middle, where
/// names sharing the `kong.` prefix differ) and the length: a few ns, where
/// hashing byte by byte took tens (the lookup runs for every PDK call). Equal
/// names are confirmed by comparing them, so the hash only spreads the slots.
fn name_hash(name: &[u8]) -> usize {
    let n = name.len();
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&name[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let h = if n >= 8 {
        word(n - 8) ^ word(n / 2 - 4).rotate_left(29)
    } else {
        name.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b))
    };
    let h = (h ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 56) as usize
}

/// The index of a PDK method name, or [`UNKNOWN`].
pub fn index_of(name: &[u8]) -> u16 {
    // Open addressing, linear probing; slot value 0 (the unknown method) = empty.
    static BY_NAME: OnceLock<[u16; SLOTS]> = OnceLock::new();
    let table = BY_NAME.get_or_init(|| {
        assert!(METHODS.len() < SLOTS / 2, "method table outgrew its lookup");
        let mut table = [UNKNOWN; SLOTS];
        for (i, m) in METHODS.iter().enumerate().skip(1) {
            let mut slot = name_hash(m.name.as_bytes()) % SLOTS;
            while table[slot] != UNKNOWN {
                slot = (slot + 1) % SLOTS;
            }
            table[slot] = u16::try_from(i).expect("table fits u16");
        }
        table
    });
    let mut slot = name_hash(name) % SLOTS;
    loop {
        match table[slot] {
            UNKNOWN => return UNKNOWN,
            i if METHODS[usize::from(i)].name.as_bytes() == name => return i,
            _ => slot = (slot + 1) % SLOTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_all_resolve_to_their_index() {
        for (i, m) in METHODS.iter().enumerate().skip(1) {
            assert_eq!(usize::from(index_of(m.name.as_bytes())), i, "{}", m.name);
        }
        assert_eq!(index_of(b"kong.nope"), UNKNOWN);
        assert_eq!(index_of(b""), UNKNOWN);
    }

    #[test]
    fn step_methods_follow_kong() {
        let step_of = |n: &str| get(index_of(n.as_bytes())).unwrap().step.rpc_name();
        assert_eq!(
            step_of("kong.client.get_credential"),
            "plugin.StepCredential"
        );
        assert_eq!(step_of("kong.client.authenticate"), "plugin.StepCredential");
        assert_eq!(step_of("kong.client.load_consumer"), "plugin.StepConsumer");
        assert_eq!(step_of("kong.client.get_consumer"), "plugin.StepConsumer");
        assert_eq!(
            step_of("kong.node.get_memory_stats"),
            "plugin.StepMemoryStats"
        );
        assert_eq!(step_of("kong.router.get_route"), "plugin.StepRoute");
        assert_eq!(step_of("kong.router.get_service"), "plugin.StepService");
        for n in [
            "kong.request.get_query",
            "kong.request.get_headers",
            "kong.response.get_headers",
            "kong.service.response.get_headers",
        ] {
            assert_eq!(step_of(n), "plugin.StepMultiMap", "{n}");
            assert_eq!(get(index_of(n.as_bytes())).unwrap().shape, Shape::MultiMap);
        }
        assert_eq!(step_of("kong.request.get_header"), "plugin.Step");
        assert_eq!(get(UNKNOWN).unwrap().step.rpc_name(), "plugin.Step");
    }

    #[test]
    fn raw_bodies_and_terminal_calls_are_marked() {
        for n in [
            "kong.request.get_raw_body",
            "kong.response.get_raw_body",
            "kong.service.response.get_raw_body",
        ] {
            assert_eq!(
                get(index_of(n.as_bytes())).unwrap().shape,
                Shape::RawBody,
                "{n}"
            );
        }
        let terminals: Vec<_> = METHODS
            .iter()
            .filter(|m| m.terminal)
            .map(|m| m.name)
            .collect();
        assert_eq!(terminals, ["kong.response.exit", "kong.response.error"]);
    }

    #[test]
    fn protobuf_service_methods_have_types() {
        let pb = |n: &str| get(index_of(n.as_bytes())).unwrap().pb;
        assert_eq!(
            pb("kong.request.get_header"),
            Some((PbType::String, PbType::String))
        );
        assert_eq!(
            pb("kong.response.exit"),
            Some((PbType::ExitArgs, PbType::Empty))
        );
        assert_eq!(pb("kong.response.error"), None);
        assert_eq!(METHODS.iter().filter(|m| m.pb.is_some()).count(), 74);
    }

    #[test]
    fn every_name_is_a_pdk_name() {
        // `kong.` then identifiers joined by single dots: what pdk.lua lets through
        for m in METHODS.iter().skip(1) {
            let rest = m
                .name
                .strip_prefix("kong.")
                .unwrap_or_else(|| panic!("{}", m.name));
            for seg in rest.split('.') {
                let ok = seg
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                assert!(ok, "{}", m.name);
            }
        }
    }

    #[test]
    fn out_of_range_index_is_none() {
        assert!(get(u16::try_from(METHODS.len()).unwrap()).is_none());
    }
}
