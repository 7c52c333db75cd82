//! `src/codec/protobuf/messages.rs` against the schema it is written from.
//!
//! The prost structs are kept by hand (named and shaped for the codec: the
//! well-known types in-crate, maps as `BTreeMap`, oneofs as plain enums), so this
//! test compiles `kong_plugin_protocol.proto` with protox (pure Rust, no `protoc`)
//! and reads `messages.rs` with syn, then requires, both ways:
//! - every message of the `.proto` (and every message a field refers to) has one
//!   struct, and every struct is a message of the `.proto`;
//! - every field: same name, number, type (message and enum types by name, map
//!   key and value types) and label (singular, optional message, repeated, map,
//!   oneof member);
//! - every oneof: same members; every enum: same values;
//! - every rpc of the `Kong` service is the method of that Kong-side name in
//!   `src/codec/methods.rs`, with the same input and output types, and every
//!   method the table gives Protobuf types is an rpc of the service.
//!
//! A struct is the message of its Rust name in its module's package, unless its
//! doc comment starts with a backquoted proto name (`` `kong_plugin_protocol.KV` ``,
//! `` `MemoryStats.LuaSharedDicts` ``).

use std::collections::{BTreeMap, BTreeSet};

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use syn::{Attribute, Fields, Item, Meta};

const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/codec/protobuf");
const PROTO_FILE: &str = "kong_plugin_protocol.proto";
const MESSAGES_RS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/codec/protobuf/messages.rs"
);
const PACKAGE: &str = "kong_plugin_protocol";

// ---- the schema ---------------------------------------------------------------

struct Schema {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

fn collect(prefix: &str, msg: &DescriptorProto, schema: &mut Schema) {
    let name = format!("{prefix}.{}", msg.name());
    for nested in &msg.nested_type {
        collect(&name, nested, schema);
    }
    for e in &msg.enum_type {
        schema
            .enums
            .insert(format!("{name}.{}", e.name()), e.clone());
    }
    schema.messages.insert(name, msg.clone());
}

fn compile(proto_dir: &str) -> Schema {
    let set: FileDescriptorSet = protox::compile([PROTO_FILE], [proto_dir])
        .unwrap_or_else(|e| panic!("{PROTO_FILE} does not compile: {e:?}"));
    let mut schema = Schema {
        messages: BTreeMap::new(),
        enums: BTreeMap::new(),
    };
    for file in &set.file {
        for msg in &file.message_type {
            collect(file.package(), msg, &mut schema);
        }
        for e in &file.enum_type {
            schema
                .enums
                .insert(format!("{}.{}", file.package(), e.name()), e.clone());
        }
    }
    schema
}

fn is_map_entry(msg: &DescriptorProto) -> bool {
    msg.options.as_ref().is_some_and(|o| o.map_entry())
}

/// The prost attribute word of a scalar type; messages and enums are checked by name.
fn prost_scalar(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Message => "message",
        Type::Enum => "enumeration",
        Type::Group => "group",
    }
}

// ---- the Rust side ----------------------------------------------------------------

/// One `#[prost(...)]` attribute: its bare words and its `key = "value"` pairs.
#[derive(Default, Debug)]
struct ProstAttr {
    words: BTreeSet<String>,
    pairs: BTreeMap<String, String>,
}

fn prost_attr(attrs: &[Attribute]) -> Option<ProstAttr> {
    let attr = attrs.iter().find(|a| a.path().is_ident("prost"))?;
    let mut out = ProstAttr::default();
    attr.parse_nested_meta(|meta| {
        let key = meta.path.get_ident().expect("prost key").to_string();
        if meta.input.peek(syn::Token![=]) {
            let lit: syn::LitStr = meta.value()?.parse()?;
            out.pairs.insert(key, lit.value());
        } else {
            out.words.insert(key);
        }
        Ok(())
    })
    .expect("prost attribute");
    Some(out)
}

fn derives(attrs: &[Attribute], what: &str) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && matches!(&a.meta, Meta::List(l) if l.tokens.to_string().replace(' ', "").contains(what))
    })
}

/// The proto name a doc comment gives, when its first line starts with one.
fn doc_name(attrs: &[Attribute]) -> Option<String> {
    let first = attrs.iter().find_map(|a| match &a.meta {
        Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })?;
    let rest = first.trim_start().strip_prefix('`')?;
    let name = &rest[..rest.find('`')?];
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        .then(|| name.to_string())
}

struct RustField {
    name: String,
    attr: ProstAttr,
    /// The innermost type name (`Option<Value>` -> `Value`; a map: its value type).
    type_name: String,
}

struct RustMessage {
    rust_name: String,
    fields: Vec<RustField>,
}

struct RustVariant {
    name: String,
    attr: ProstAttr,
    type_name: String,
}

#[derive(Default)]
struct RustSide {
    /// proto full name -> struct
    messages: BTreeMap<String, RustMessage>,
    /// Rust name -> proto full name (structs and enumerations)
    proto_of: BTreeMap<String, String>,
    /// Rust name -> oneof variants
    oneofs: BTreeMap<String, Vec<RustVariant>>,
    /// proto full name -> (variant, value)
    enums: BTreeMap<String, Vec<(String, i32)>>,
}

fn innermost(ty: &syn::Type) -> String {
    let syn::Type::Path(p) = ty else {
        panic!("a field type that is not a path");
    };
    let seg = p.path.segments.last().expect("type segment");
    if let syn::PathArguments::AngleBracketed(args) = &seg.arguments
        && matches!(
            seg.ident.to_string().as_str(),
            "Option" | "Vec" | "Box" | "BTreeMap" | "HashMap"
        )
        && let Some(syn::GenericArgument::Type(inner)) = args.args.last()
    {
        return innermost(inner);
    }
    seg.ident.to_string()
}

fn full_name(package: &str, rust_name: &str, attrs: &[Attribute]) -> String {
    match doc_name(attrs) {
        Some(n) if n.starts_with("google.protobuf.") || n.starts_with("kong_plugin_protocol.") => n,
        Some(n) => format!("{package}.{n}"),
        None => format!("{package}.{rust_name}"),
    }
}

fn read_items(items: &[Item], package: &str, side: &mut RustSide) {
    for item in items {
        match item {
            Item::Mod(m) if m.ident == "google" => {
                let (_, inner) = m.content.as_ref().expect("inline mod google");
                read_items(inner, "google.protobuf", side);
            }
            Item::Struct(s) if derives(&s.attrs, "prost::Message") => {
                let rust_name = s.ident.to_string();
                let proto = full_name(package, &rust_name, &s.attrs);
                let Fields::Named(named) = &s.fields else {
                    // `struct Empty {}` parses as named with no fields; anything else is wrong
                    panic!("{rust_name}: fields must be named");
                };
                let fields = named
                    .named
                    .iter()
                    .map(|f| {
                        let name = f.ident.as_ref().expect("named").to_string();
                        RustField {
                            name: name.trim_start_matches("r#").to_string(),
                            attr: prost_attr(&f.attrs)
                                .unwrap_or_else(|| panic!("{rust_name}.{name}: no #[prost]")),
                            type_name: innermost(&f.ty),
                        }
                    })
                    .collect();
                side.proto_of.insert(rust_name.clone(), proto.clone());
                let dup = side
                    .messages
                    .insert(proto.clone(), RustMessage { rust_name, fields });
                assert!(dup.is_none(), "two structs for {proto}");
            }
            Item::Enum(e) if derives(&e.attrs, "prost::Oneof") => {
                let variants = e
                    .variants
                    .iter()
                    .map(|v| {
                        let type_name = match &v.fields {
                            Fields::Unnamed(u) if u.unnamed.len() == 1 => {
                                innermost(&u.unnamed[0].ty)
                            }
                            _ => panic!("{}::{}: one unnamed field expected", e.ident, v.ident),
                        };
                        RustVariant {
                            name: v.ident.to_string(),
                            attr: prost_attr(&v.attrs)
                                .unwrap_or_else(|| panic!("{}::{}: no #[prost]", e.ident, v.ident)),
                            type_name,
                        }
                    })
                    .collect();
                side.oneofs.insert(e.ident.to_string(), variants);
            }
            Item::Enum(e) if derives(&e.attrs, "prost::Enumeration") => {
                let rust_name = e.ident.to_string();
                let proto = full_name(package, &rust_name, &e.attrs);
                let values = e
                    .variants
                    .iter()
                    .map(|v| {
                        let value = match &v.discriminant {
                            Some((
                                _,
                                syn::Expr::Lit(syn::ExprLit {
                                    lit: syn::Lit::Int(i),
                                    ..
                                }),
                            )) => i.base10_parse::<i32>().expect("discriminant"),
                            _ => panic!("{rust_name}::{}: literal discriminant expected", v.ident),
                        };
                        (v.ident.to_string(), value)
                    })
                    .collect();
                side.proto_of.insert(rust_name, proto.clone());
                side.enums.insert(proto, values);
            }
            _ => {}
        }
    }
}

fn read_rust(path: &str) -> RustSide {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut side = RustSide::default();
    read_items(&file.items, PACKAGE, &mut side);
    side
}

// ---- the comparison ---------------------------------------------------------

/// `cmd_get_plugin_names` -> `CmdGetPluginNames`, `NULL_VALUE` -> `NullValue`.
fn upper_camel(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let lower = p.to_ascii_lowercase();
            let mut c = lower.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

struct Checker<'a> {
    schema: &'a Schema,
    rust: &'a RustSide,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// The type name of a field as the Rust side must spell it: proto full name.
    fn rust_type_is(&mut self, at: &str, rust_type: &str, proto_type: &str) {
        let want = proto_type.trim_start_matches('.');
        match self.rust.proto_of.get(rust_type) {
            Some(got) if got == want => {}
            Some(got) => self.problem(format!(
                "{at}: type {rust_type} is {got}, the schema has {want}"
            )),
            None => self.problem(format!(
                "{at}: type {rust_type} is no message or enum of messages.rs (schema: {want})"
            )),
        }
    }

    /// The words of a scalar, message or enum type in a prost attribute.
    fn check_type(
        &mut self,
        at: &str,
        f: &FieldDescriptorProto,
        attr: &ProstAttr,
        rust_type: &str,
    ) {
        let t = f.r#type();
        let word = prost_scalar(t);
        match t {
            Type::Enum => match attr.pairs.get("enumeration") {
                Some(e) => self.rust_type_is(at, e, f.type_name()),
                None => self.problem(format!(
                    "{at}: not an enumeration (schema: {})",
                    f.type_name()
                )),
            },
            _ if !attr.words.contains(word) && !attr.pairs.contains_key(word) => self.problem(
                format!("{at}: the schema's type is {word}, the attribute is {attr:?}"),
            ),
            Type::Message => self.rust_type_is(at, rust_type, f.type_name()),
            _ => {}
        }
    }

    fn check_map(&mut self, at: &str, entry: &DescriptorProto, field: &RustField) {
        let spec = field
            .attr
            .pairs
            .get("btree_map")
            .or_else(|| field.attr.pairs.get("map"));
        let Some(spec) = spec else {
            return self.problem(format!("{at}: a map in the schema, not in messages.rs"));
        };
        let kv: Vec<&str> = spec.split(',').map(str::trim).collect();
        let by_number = |n| {
            entry
                .field
                .iter()
                .find(|x| x.number() == n)
                .expect("map entry field")
        };
        let (key, value) = (by_number(1), by_number(2));
        let want = [prost_scalar(key.r#type()), prost_scalar(value.r#type())];
        // an enum value is spelled `enumeration(Name)` by prost
        let value_ok = kv
            .get(1)
            .is_some_and(|v| v.split('(').next() == Some(want[1]));
        if kv.len() != 2 || kv[0] != want[0] || !value_ok {
            self.problem(format!(
                "{at}: map<{}, {}> in the schema, \"{spec}\" in messages.rs",
                want[0], want[1]
            ));
        }
        if value.r#type() == Type::Message {
            self.rust_type_is(at, &field.type_name, value.type_name());
        }
    }

    fn check_oneof(&mut self, at: &str, members: &[&FieldDescriptorProto], field: &RustField) {
        let Some(enum_name) = field.attr.pairs.get("oneof") else {
            return self.problem(format!("{at}: a oneof in the schema, not in messages.rs"));
        };
        let want_tags: Vec<String> = members.iter().map(|m| m.number().to_string()).collect();
        let got_tags: Vec<String> = field
            .attr
            .pairs
            .get("tags")
            .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
        if want_tags != got_tags {
            self.problem(format!(
                "{at}: oneof tags {got_tags:?}, the schema has {want_tags:?}"
            ));
        }
        let Some(variants) = self.rust.oneofs.get(enum_name) else {
            return self.problem(format!("{at}: no oneof enum {enum_name}"));
        };
        if variants.len() != members.len() {
            self.problem(format!(
                "{at}: {enum_name} has {} variants, the schema's oneof {} members",
                variants.len(),
                members.len()
            ));
        }
        for m in members {
            let vname = upper_camel(m.name());
            let vat = format!("{at} ({enum_name}::{vname})");
            match variants.iter().find(|v| v.name == vname) {
                None => self.problem(format!("{vat}: no variant for member {}", m.name())),
                Some(v) => {
                    if v.attr.pairs.get("tag").map(String::as_str) != Some(&m.number().to_string())
                    {
                        self.problem(format!(
                            "{vat}: tag {:?}, the schema has {}",
                            v.attr.pairs.get("tag"),
                            m.number()
                        ));
                    }
                    let ty = v.type_name.clone();
                    self.check_type(&vat, m, &v.attr, &ty);
                }
            }
        }
    }

    fn check_field(
        &mut self,
        at: &str,
        f: &FieldDescriptorProto,
        field: &RustField,
        msg: &DescriptorProto,
    ) {
        let attr = &field.attr;
        if attr.pairs.get("tag").map(String::as_str) != Some(&f.number().to_string()) {
            self.problem(format!(
                "{at}: tag {:?}, the schema has {}",
                attr.pairs.get("tag"),
                f.number()
            ));
        }
        let entry = (f.r#type() == Type::Message)
            .then(|| {
                let short = f.type_name().rsplit('.').next().unwrap_or_default();
                msg.nested_type
                    .iter()
                    .find(|n| n.name() == short && is_map_entry(n))
            })
            .flatten();
        if let Some(entry) = entry {
            return self.check_map(at, entry, field);
        }
        let repeated = f.label() == Label::Repeated;
        if repeated != attr.words.contains("repeated") {
            self.problem(format!(
                "{at}: repeated in the schema: {repeated}, in messages.rs: {}",
                !repeated
            ));
        }
        // prost marks singular message fields (and proto3 `optional`) `optional`
        let optional = !repeated && (f.r#type() == Type::Message || f.proto3_optional());
        if optional != attr.words.contains("optional") {
            self.problem(format!(
                "{at}: optional expected: {optional}, attribute {attr:?}"
            ));
        }
        self.check_type(at, f, attr, &field.type_name);
    }

    fn check_message(&mut self, proto: &str, msg: &DescriptorProto, rm: &RustMessage) {
        let at_msg = format!("{proto} ({})", rm.rust_name);
        // real oneofs (not proto3-optional synthetic ones): index -> members
        let mut oneofs: BTreeMap<i32, Vec<&FieldDescriptorProto>> = BTreeMap::new();
        let mut plain = Vec::new();
        for f in &msg.field {
            match f.oneof_index {
                Some(i) if !f.proto3_optional() => oneofs.entry(i).or_default().push(f),
                _ => plain.push(f),
            }
        }
        let mut seen = BTreeSet::new();
        for f in plain {
            let at = format!("{at_msg}.{}", f.name());
            match rm.fields.iter().find(|x| x.name == f.name()) {
                None => self.problem(format!("{at}: field missing in messages.rs")),
                Some(field) => {
                    seen.insert(field.name.clone());
                    self.check_field(&at, f, field, msg);
                }
            }
        }
        for (i, members) in oneofs {
            let oneof_name = msg.oneof_decl[i as usize].name().to_string();
            let at = format!("{at_msg}.{oneof_name} (oneof)");
            match rm.fields.iter().find(|x| x.name == oneof_name) {
                None => self.problem(format!("{at}: oneof missing in messages.rs")),
                Some(field) => {
                    seen.insert(field.name.clone());
                    self.check_oneof(&at, &members, field);
                }
            }
        }
        for f in &rm.fields {
            if !seen.contains(&f.name) {
                self.problem(format!("{at_msg}.{}: not in the schema", f.name));
            }
        }
    }

    fn run(&mut self) {
        // what must exist: the package's messages and, transitively, what their fields use
        let mut wanted: BTreeSet<String> = self
            .schema
            .messages
            .iter()
            .filter(|(n, m)| n.starts_with(&format!("{PACKAGE}.")) && !is_map_entry(m))
            .map(|(n, _)| n.clone())
            .collect();
        let mut todo: Vec<String> = wanted.iter().cloned().collect();
        while let Some(name) = todo.pop() {
            for f in &self.schema.messages[&name].field {
                let t = f.type_name().trim_start_matches('.').to_string();
                if f.r#type() == Type::Message {
                    let m = &self.schema.messages[&t];
                    let next = if is_map_entry(m) {
                        m.field.iter().find(|x| x.number() == 2).and_then(|v| {
                            (v.r#type() == Type::Message)
                                .then(|| v.type_name().trim_start_matches('.').to_string())
                        })
                    } else {
                        Some(t)
                    };
                    if let Some(n) = next
                        && wanted.insert(n.clone())
                    {
                        todo.push(n);
                    }
                }
            }
        }
        for name in &wanted {
            if !self.rust.messages.contains_key(name) {
                self.problem(format!("{name}: no struct in messages.rs"));
            }
        }
        for (proto, rm) in &self.rust.messages {
            match self.schema.messages.get(proto) {
                None => self.problem(format!(
                    "{proto} ({}): not a message of the schema",
                    rm.rust_name
                )),
                Some(msg) => self.check_message(proto, msg, rm),
            }
        }
        for (proto, values) in &self.rust.enums {
            let Some(e) = self.schema.enums.get(proto) else {
                self.problem(format!("{proto}: not an enum of the schema"));
                continue;
            };
            let want: Vec<(String, i32)> = e
                .value
                .iter()
                .map(|v| (upper_camel(v.name()), v.number()))
                .collect();
            if &want != values {
                self.problem(format!(
                    "{proto}: values {values:?}, the schema has {want:?}"
                ));
            }
        }
    }
}

fn problems(proto_dir: &str, messages_rs: &str) -> Vec<String> {
    let schema = compile(proto_dir);
    let rust = read_rust(messages_rs);
    let mut c = Checker {
        schema: &schema,
        rust: &rust,
        problems: Vec::new(),
    };
    c.run();
    c.problems
}

#[test]
fn messages_rs_matches_the_proto() {
    let problems = problems(PROTO_DIR, MESSAGES_RS);
    assert!(
        problems.is_empty(),
        "messages.rs differs from {PROTO_FILE}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_covers_every_message_of_the_package() {
    let schema = compile(PROTO_DIR);
    let rust = read_rust(MESSAGES_RS);
    let in_package = schema
        .messages
        .iter()
        .filter(|(n, m)| n.starts_with("kong_plugin_protocol.") && !is_map_entry(m))
        .count();
    // 37 messages (3 nested) today; the check compares each with a struct
    assert!(in_package >= 37, "only {in_package} messages compiled");
    assert!(
        rust.messages.len() >= in_package,
        "{} structs read",
        rust.messages.len()
    );
}

/// A schema edited in each way the check must notice, one edit at a time.
/// Applies each (what, from, to) edit alone to a copy of the schema in a temp dir
/// named after `dir_name`, and asserts that `check` (run on that dir) finds a problem.
fn assert_each_edit_is_noticed(
    original: &str,
    edits: &[(&str, &str, &str)],
    dir_name: &str,
    check: impl Fn(&str) -> Vec<String>,
) {
    let dir = std::env::temp_dir().join(format!("{dir_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (what, from, to) in edits {
        assert!(
            original.contains(from),
            "{what}: `{from}` not in the schema"
        );
        std::fs::write(dir.join(PROTO_FILE), original.replacen(from, to, 1)).unwrap();
        let found = check(dir.to_str().unwrap());
        assert!(!found.is_empty(), "{what}: the edit went unnoticed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_drifted_proto_is_reported() {
    let original = std::fs::read_to_string(format!("{PROTO_DIR}/{PROTO_FILE}")).unwrap();
    let edits: &[(&str, &str, &str)] = &[
        // (what changes, from, to) — each `from` must occur in the schema
        ("field number", "string schema = 7;", "string schema = 8;"),
        ("scalar type", "int32 priority = 6;", "int64 priority = 6;"),
        ("label", "repeated string phases = 4;", "string phases = 4;"),
        (
            "new field",
            "string schema = 7;",
            "string schema = 7;\n  string extra = 9;",
        ),
        (
            "message type",
            "ServiceKey service = 18;",
            "CertificateKey service = 18;",
        ),
        (
            "oneof member tag",
            "CmdHandleEvent cmd_handle_event = 36;",
            "CmdHandleEvent cmd_handle_event = 37;",
        ),
        (
            "map value type",
            "map<string, bytes> named = 2;",
            "map<string, string> named = 2;",
        ),
        (
            "new message",
            "message Target {",
            "message Extra { int32 x = 1; }\nmessage Target {",
        ),
        (
            "field name",
            "string consumer_id = 2;",
            "string consumer = 2;",
        ),
    ];
    assert_each_edit_is_noticed(&original, edits, "kps-proto-drift", |dir| {
        problems(dir, MESSAGES_RS)
    });
}

// ---- the service against the method table --------------------------------------

/// The Kong-side name of an rpc without a `MethodName` option: `Request_GetHeader`
/// -> `kong.request.get_header` (the rule stated in the `.proto`).
fn kong_name(rpc: &str) -> String {
    let dotted = format!("Kong.{rpc}").replace('_', ".");
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in dotted.chars() {
        if c.is_ascii_uppercase()
            && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
        prev = Some(c);
    }
    out
}

fn service_problems(proto_dir: &str) -> Vec<String> {
    use kong_plugin_servers::codec::methods::METHODS;
    use prost_reflect::Value;

    let mut compiler = protox::Compiler::new([proto_dir]).expect("include dir");
    compiler.include_imports(true);
    compiler
        .open_file(PROTO_FILE)
        .unwrap_or_else(|e| panic!("{PROTO_FILE} does not compile: {e:?}"));
    let pool = compiler.descriptor_pool();
    let option = pool
        .get_extension_by_name(&format!("{PACKAGE}.MethodName"))
        .expect("the MethodName option");
    let service = pool
        .get_service_by_name(&format!("{PACKAGE}.Kong"))
        .expect("service Kong");

    let mut problems = Vec::new();
    let mut in_service = BTreeSet::new();
    // `KV` is `PbType::Kv`: compare names case-insensitively
    let same =
        |pb: &dyn std::fmt::Debug, proto: &str| format!("{pb:?}").eq_ignore_ascii_case(proto);
    for rpc in service.methods() {
        let options = rpc.options();
        let name = match options
            .has_extension(&option)
            .then(|| options.get_extension(&option))
        {
            Some(v) => match v.as_ref() {
                Value::String(s) => s.clone(),
                other => panic!("{}: MethodName is {other:?}", rpc.name()),
            },
            None => kong_name(rpc.name()),
        };
        let (input, output) = (rpc.input(), rpc.output());
        match METHODS.iter().find(|m| m.name == name) {
            None => problems.push(format!("rpc {} ({name}): not in methods.rs", rpc.name())),
            Some(m) => match m.pb {
                None => problems.push(format!(
                    "rpc {} ({name}): methods.rs has no Protobuf types",
                    rpc.name()
                )),
                Some((pin, pout)) => {
                    if !same(&pin, input.name()) || !same(&pout, output.name()) {
                        problems.push(format!(
                            "rpc {} ({name}): {} -> {} in the schema, {pin:?} -> {pout:?} in methods.rs",
                            rpc.name(),
                            input.full_name(),
                            output.full_name()
                        ));
                    }
                }
            },
        }
        in_service.insert(name);
    }
    for m in METHODS.iter().filter(|m| m.pb.is_some()) {
        if !in_service.contains(m.name) {
            problems.push(format!(
                "{}: Protobuf types in methods.rs, no rpc in the schema",
                m.name
            ));
        }
    }
    problems
}

#[test]
fn the_service_matches_the_method_table() {
    assert_eq!(kong_name("Request_GetHeader"), "kong.request.get_header");
    assert_eq!(
        kong_name("Nginx_GetTLS1VersionStr"),
        "kong.nginx.get_tls1_version_str"
    );
    let problems = service_problems(PROTO_DIR);
    assert!(
        problems.is_empty(),
        "methods.rs differs from the service of {PROTO_FILE}:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_drifted_service_is_reported() {
    let original = std::fs::read_to_string(format!("{PROTO_DIR}/{PROTO_FILE}")).unwrap();
    let edits: &[(&str, &str, &str)] = &[
        (
            "input type",
            "rpc Client_GetIp(google.protobuf.Empty) returns (String);",
            "rpc Client_GetIp(Int) returns (String);",
        ),
        (
            "output type",
            "rpc Client_GetIp(google.protobuf.Empty) returns (String);",
            "rpc Client_GetIp(google.protobuf.Empty) returns (Int);",
        ),
        (
            "removed rpc",
            "rpc Client_GetIp(google.protobuf.Empty) returns (String);",
            "",
        ),
        (
            "new rpc",
            "service Kong {",
            "service Kong {\n  rpc Client_GetNothing(google.protobuf.Empty) returns (String);",
        ),
        (
            "MethodName option",
            "option (MethodName) = \"kong.ctx.shared.set\";",
            "option (MethodName) = \"kong.ctx.shared.put\";",
        ),
    ];
    assert_each_edit_is_noticed(&original, edits, "kps-proto-service", service_problems);
}
