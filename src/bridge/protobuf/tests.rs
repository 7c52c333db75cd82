//! Protobuf bridge tests in a real LuaJIT state, against the bytes go-pdk's own
//! types produce (tests/vectors/protobuf_messages.txt, written by pb-golden).

use std::collections::HashMap;

use mlua::Lua;

use crate::codec::methods::{METHODS, PbType, index_of};
use crate::codec::protobuf::messages::google::{Kind, Value as GValue};
use crate::test_support::{assert_cases, bridge_lua as lua, call_result, encoded_hex, hex, unhex};

const VECTORS: &str = include_str!("../../../tests/vectors/protobuf_messages.txt");

fn go(case: &str) -> String {
    let v: HashMap<&str, &str> = VECTORS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split_once(' ')
                .map_or((l.trim(), ""), |(a, b)| (a, b.trim()))
        })
        .collect();
    v.get(case)
        .unwrap_or_else(|| panic!("no vector {case}"))
        .to_string()
}

fn idx(name: &str) -> u16 {
    let i = index_of(name.as_bytes());
    assert_ne!(i, 0, "{name}");
    i
}

/// Hex of `bridge.pb_encode(<method>, <expr>)`, or "error: <msg>".
fn enc(lua: &Lua, method: &str, expr: &str) -> String {
    encoded_hex(lua, &format!("bridge.pb_encode({}, {expr})", idx(method)))
}

/// Asserts `enc` of each (method, Lua expression, expected hex or "error: <msg>") case.
fn assert_enc(lua: &Lua, cases: &[(&str, &str, &str)]) {
    assert_cases(cases, |method, expr| enc(lua, method, expr));
}

/// Runs `check` with `args, n` = `bridge.pb_decode(<method>, <bytes>)`.
fn dec(lua: &Lua, method: &str, bytes: &[u8], check: &str) -> String {
    lua.globals()
        .set("INPUT", lua.create_string(bytes).unwrap())
        .unwrap();
    lua.load(format!(
        "local args, n = bridge.pb_decode({}, INPUT) {check}",
        idx(method)
    ))
    .eval::<String>()
    .unwrap()
}

/// Decodes a message with `messages::<M>` to compare maps independent of order.
fn same_message<M: prost::Message + Default + PartialEq + std::fmt::Debug>(a: &str, b: &str) {
    assert_eq!(
        M::decode(&unhex(a)[..]).unwrap(),
        M::decode(&unhex(b)[..]).unwrap()
    );
}

#[test]
fn scalar_results_match_go_pdk_bytes() {
    let l = lua();
    assert_enc(
        &l,
        &[
            ("kong.ip.is_trusted", "true", go("bool.true").as_str()),
            ("kong.ip.is_trusted", "false", go("bool.false").as_str()),
            ("kong.request.get_port", "8000", go("int.positive").as_str()),
            ("kong.request.get_port", "-42", go("int.negative").as_str()),
            (
                "kong.request.get_http_version",
                "1.5",
                go("number").as_str(),
            ),
            (
                "kong.nginx.req_start_time",
                "1700000000123",
                go("number.whole").as_str(),
            ),
            (
                "kong.request.get_header",
                "'Go says Kong! to example.test \\226\\156\\147'",
                go("string").as_str(),
            ),
            ("kong.request.get_header", "''", go("string.empty").as_str()),
            (
                "kong.service.response.get_raw_body",
                "'\\0\\1\\254\\255a'",
                go("byte_string").as_str(),
            ),
        ],
    );
    // A number where a string is expected is its text, as Lua's tostring has it.
    assert_eq!(enc(&l, "kong.request.get_header", "42"), "0a023432");
}

#[test]
fn nil_is_the_empty_message_and_empty_outputs_ignore_the_result() {
    let l = lua();
    assert_enc(
        &l,
        &[
            ("kong.request.get_header", "nil", ""),
            ("kong.request.get_port", "null", ""),
            ("kong.router.get_route", "nil", ""),
        ],
    );
    // Kong raised an encode error when a setter returned true (set_upstream, 3.7).
    assert_enc(
        &l,
        &[
            ("kong.response.set_header", "true", go("empty").as_str()),
            ("kong.service.set_target", "{1, 2}", ""),
        ],
    );
}

#[test]
fn values_fix_kong_s_lossy_cases() {
    let l = lua();
    let get = "kong.ctx.shared.get";
    assert_enc(
        &l,
        &[
            (get, "nil", go("value.null").as_str()),
            (get, "null", go("value.null").as_str()),
            (get, "false", go("value.bool_false").as_str()),
            (get, "true", go("value.bool_true").as_str()),
            (get, "-2.25", go("value.number").as_str()),
            (get, "0", go("value.number_zero").as_str()),
            (get, "'Kong!'", go("value.string").as_str()),
            (get, "''", go("value.string_empty").as_str()),
        ],
    );
    // Lua cannot hold a trailing nil; Go's list ends with a null.
    let ours = enc(&l, get, "{'a', 1, false}");
    assert_eq!(format!("3218{}0a020800", &ours[4..]), go("value.list"));
    // Lua cannot tell an empty list from an empty struct: compare the rest.
    let without_list = |h: &str| {
        let mut v = <GValue as prost::Message>::decode(&unhex(h)[..]).unwrap();
        let Some(Kind::StructValue(s)) = v.kind.as_mut() else {
            panic!("not a struct: {h}")
        };
        let list = s.fields.remove("list").unwrap();
        (v, list)
    };
    let (ours, ours_list) = without_list(&enc(
        &l,
        get,
        "{b = 2, a = 'x', nested = {k = true}, list = {}, null = null}",
    ));
    let (theirs, _) = without_list(&go("value.struct"));
    assert_eq!(ours, theirs);
    assert_eq!(ours_list.kind, Some(Kind::StructValue(Default::default())));
    // An empty table is an empty struct (Kong's rule: no [1]).
    assert_eq!(enc(&l, get, "{}"), "2a00");
}

#[test]
fn structs_and_lists_walk_tables_like_the_msgpack_side() {
    let l = lua();
    let headers =
        "{['x-one'] = {'a'}, ['x-multi'] = {'b', 'c'}, ['content-type'] = {'text/plain'}}";
    assert_enc(
        &l,
        &[
            ("kong.request.get_headers", headers, go("struct").as_str()),
            (
                "kong.request.get_headers",
                "{}",
                go("struct.empty").as_str(),
            ),
        ],
    );
    // A query flag (true) is an empty list on multimap methods: go-pdk keeps the key.
    assert_eq!(
        enc(&l, "kong.request.get_query", "{flag = true}"),
        "0a0a0a04666c616712023200"
    );
    // Single header values stay strings (go-pdk accepts both).
    assert_eq!(
        enc(&l, "kong.response.get_headers", "{a = 'x'}"),
        "0a080a016112031a0178"
    );
    // Number keys are their text; mixed tables keep every entry.
    let mixed = enc(&l, "kong.ctx.shared.get", "{10, 20, x = 1}");
    assert!(mixed.starts_with("2a"), "{mixed}");
    assert!(mixed.contains(&hex(b"x")), "{mixed}");
}

#[test]
fn entity_results_match_go_pdk_bytes() {
    let l = lua();
    let route =
        "{id = 'r-1', created_at = 1700000000, updated_at = 1700000001, name = 'host-route',
        protocols = {'http', 'https'}, methods = {'GET', 'POST'}, hosts = {'example.test'},
        paths = {'/', '/api'}, headers = {['x-a'] = {'1'}}, https_redirect_status_code = 426,
        regex_priority = -1, strip_path = true, preserve_host = false, snis = {'sni.test'},
        sources = {{ip = '10.0.0.1'}}, destinations = {'10.0.0.2'}, tags = {'kps'},
        service = {id = 's-1'}, ws_id = 'ignored', request_buffering = true}";
    assert_eq!(enc(&l, "kong.router.get_route", route), go("route"));
    let service =
        "{id = 's-1', created_at = 1700000000, updated_at = 1700000001, name = 'host-service',
        retries = 5, protocol = 'http', host = '127.0.0.1', port = 8080, path = '/',
        connect_timeout = 60000, write_timeout = 60001, read_timeout = 60002, tags = {'kps'},
        client_certificate = {id = 'cert-1'}, tls_verify = null, ca_certificates = null}";
    assert_eq!(enc(&l, "kong.router.get_service", service), go("service"));
    let consumer = "{id = 'c-1', created_at = 1700000000, username = 'alice',
        custom_id = 'alice-1', tags = {'a', 'b'}}";
    assert_enc(
        &l,
        &[
            (
                "kong.client.get_consumer",
                consumer,
                go("consumer").as_str(),
            ),
            (
                "kong.client.load_consumer",
                consumer,
                go("consumer").as_str(),
            ),
            (
                "kong.client.get_credential",
                "{id = 'cred-1', consumer_id = 'c-1'}",
                go("authenticated_credential").as_str(),
            ),
        ],
    );
    let stats = "{lua_shared_dicts = {kong = {allocated_slabs = 12288, capacity = 24576},
        kong_db_cache = {allocated_slabs = 0, capacity = 12288}, other = {capacity = 1}},
        workers_lua_vms = {{http_allocated_gc = 1102, pid = 18004}, {pid = 18005}}}";
    assert_eq!(
        enc(&l, "kong.node.get_memory_stats", stats),
        go("memory_stats")
    );
    // Unset entity fields are null in Kong's entities.
    assert_eq!(
        enc(
            &l,
            "kong.client.get_consumer",
            "{id = 'c-1', custom_id = null, username = null}"
        ),
        "0a03632d31"
    );
}

#[test]
fn raw_bodies_and_uri_captures_match_go_pdk_bytes() {
    let l = lua();
    let m = "kong.request.get_raw_body";
    assert_enc(
        &l,
        &[
            (m, "'body\\0bytes'", go("raw_body_result.content").as_str()),
            (m, "''", go("raw_body_result.content_empty").as_str()),
            (
                m,
                "{body_filepath = '/tmp/body.0001'}",
                go("raw_body_result.body_filepath").as_str(),
            ),
            (
                m,
                "{error = \"Can't read request body\"}",
                go("raw_body_result.error").as_str(),
            ),
        ],
    );
    assert!(enc(&l, m, "{}").starts_with("error: a raw body table needs"));
    same_message::<crate::codec::protobuf::messages::UriCapturesResult>(
        &enc(
            &l,
            "kong.request.get_uri_captures",
            "{unnamed = {'/users/42', '42'}, named = {id = '42', a = false}}",
        ),
        &go("uri_captures_result"),
    );
}

#[test]
fn route_headers_and_stream_endpoints_become_strings() {
    let l = lua();
    let b = enc(
        &l,
        "kong.router.get_route",
        "{headers = {b = {'2', '3'}, a = '1'}, sources = {{ip = '10.0.0.1', port = 80}, {port = 81}}}",
    );
    let r = <crate::codec::protobuf::messages::Route as prost::Message>::decode(&unhex(&b)[..])
        .unwrap();
    assert_eq!(r.headers, ["a:1", "b:2", "b:3"]);
    assert_eq!(r.sources, ["10.0.0.1:80", ":81"]);
}

#[test]
fn bad_results_are_error_strings_naming_the_place() {
    let l = lua();
    assert_enc(
        &l,
        &[
            (
                "kong.request.get_port",
                "'x'",
                "error: expected a number, got string",
            ),
            (
                "kong.request.get_port",
                "1.5",
                "error: expected an integer, got 1.5",
            ),
            (
                "kong.request.get_port",
                "2^31",
                "error: 2147483648 does not fit a 32-bit integer",
            ),
        ],
    );
    assert!(enc(&l, "kong.ip.is_trusted", "1").starts_with("error: expected a boolean, got "));
    assert_enc(
        &l,
        &[
            (
                "kong.router.get_route",
                "{paths = {'/', {}}}",
                "error: expected a string, got table (at paths.[2])",
            ),
            (
                "kong.router.get_service",
                "{port = 'eighty'}",
                "error: expected a number, got string (at port)",
            ),
            (
                "kong.ctx.shared.get",
                "{f = print}",
                "error: cannot encode a function value (at f)",
            ),
            (
                "kong.ctx.shared.get",
                "(function() local t = {} t.t = t return t end)()",
                "error: cannot encode a cyclic table (at t)",
            ),
            (
                "kong.ctx.shared.get",
                "{[true] = 1}",
                "error: a struct key must be a string, got boolean (at [boolean])",
            ),
            (
                "kong.ctx.shared.get",
                "'\\255'",
                "error: string is not valid UTF-8 (a Protobuf string)",
            ),
        ],
    );
    let mp_only = index_of(b"kong.response.error");
    assert_eq!(
        call_result(&l, &format!("bridge.pb_encode({mp_only}, 1)")),
        "nil kong.response.error is not a method of the Protobuf service"
    );
    assert_eq!(
        call_result(&l, "bridge.pb_decode(0, '')"),
        "nil unknown PDK method"
    );
    assert_eq!(
        call_result(&l, "bridge.pb_decode('x', '')"),
        "nil method index must be an integer, got string"
    );
}

#[test]
fn arguments_unwrap_like_kong() {
    let l = lua();
    let d = |m: &str, case: &str, check: &str| dec(&l, m, &unhex(&go(case)), check);
    assert_eq!(
        d(
            "kong.ctx.shared.set",
            "kv.string",
            "return n .. ' ' .. args[1] .. '=' .. args[2]"
        ),
        "2 shared_msg=Kong!"
    );
    // false stays false; null and an unset value are nil.
    assert_eq!(
        d(
            "kong.ctx.shared.set",
            "kv.false",
            "return n .. ' ' .. tostring(args[2]) .. ' ' .. type(args[2])"
        ),
        "2 false boolean"
    );
    assert_eq!(
        d(
            "kong.ctx.shared.set",
            "kv.null",
            "return n .. ' ' .. tostring(args[2])"
        ),
        "2 nil"
    );
    assert_eq!(
        d(
            "kong.nginx.set_ctx",
            "kv.no_value",
            "return args[1] .. ' ' .. tostring(args[2])"
        ),
        "unset nil"
    );
    assert_eq!(
        d(
            "kong.log.debug",
            "list_value",
            "return n .. ' ' .. args[1] .. string.format('%.1f', args[2])"
        ),
        "2 access_start: 1700000000.5"
    );
    assert_eq!(
        d(
            "kong.response.exit",
            "exit_args",
            "return n .. ' ' .. args[1] .. ' ' .. args[2] .. ' ' .. args[3]['x-multi'][2] .. #args[3]['x-one']"
        ),
        "3 403 {\"message\":\"no\"} c1"
    );
    assert_eq!(
        d(
            "kong.response.exit",
            "exit_args.status_only",
            "return n .. ' ' .. args[1] .. ' [' .. args[2] .. '] ' .. tostring(args[3])"
        ),
        "3 204 [] nil"
    );
    assert_eq!(
        d(
            "kong.client.load_consumer",
            "consumer_spec",
            "return args[1] .. ' ' .. tostring(args[2])"
        ),
        "alice true"
    );
    assert_eq!(
        d(
            "kong.service.set_target",
            "target",
            "return args[1] .. ':' .. args[2]"
        ),
        "upstream.test:8443"
    );
    assert_eq!(
        d(
            "kong.client.authenticate",
            "authenticate_args",
            "local c, cr = args[1], args[2]
             return table.concat({c.id, c.created_at, c.username, c.custom_id, c.tags[1], c.tags[2],
                                  cr.id, cr.consumer_id}, ',')"
        ),
        "c-1,1700000000,alice,alice-1,a,b,cred-1,c-1"
    );
    assert_eq!(
        d(
            "kong.service.request.set_headers",
            "struct",
            "return n .. ' ' .. args[1]['content-type'][1] .. ' ' .. #args[1]['x-multi']"
        ),
        "1 text/plain 2"
    );
    assert_eq!(
        d(
            "kong.request.get_header",
            "string",
            "return n .. ' ' .. args[1]"
        ),
        "1 Go says Kong! to example.test \u{2713}"
    );
    assert_eq!(
        d(
            "kong.request.get_headers",
            "int.positive",
            "return n .. ' ' .. args[1]"
        ),
        "1 8000"
    );
    assert_eq!(
        d(
            "kong.client.get_protocol",
            "bool.true",
            "return n .. ' ' .. tostring(args[1])"
        ),
        "1 true"
    );
    assert_eq!(
        d(
            "kong.service.request.set_raw_body",
            "byte_string",
            "return #args[1] .. ' ' .. args[1]:byte(3)"
        ),
        "5 254"
    );
    // No arguments: a bare nil.
    assert_eq!(
        dec(
            &l,
            "kong.request.get_path",
            b"",
            "return tostring(args) .. ' ' .. tostring(n)"
        ),
        "nil nil"
    );
}

#[test]
fn list_arguments_keep_nils_as_holes() {
    let l = lua();
    // ListValue{values = ["a", null, false]}
    let bytes = unhex("0a031a01610a0208000a022000");
    assert_eq!(
        dec(
            &l,
            "kong.log.info",
            &bytes,
            "return n .. ' ' .. args[1] .. ' ' .. tostring(args[2]) .. ' ' .. tostring(args[3])"
        ),
        "3 a nil false"
    );
}

#[test]
fn undecodable_arguments_are_error_strings() {
    let l = lua();
    let r = dec(
        &l,
        "kong.request.get_header",
        b"\x0a\x05ab",
        "return tostring(args) .. ' ' .. n",
    );
    assert!(
        r.starts_with("nil cannot decode the String argument: "),
        "{r}"
    );
    let r = dec(
        &l,
        "kong.request.get_header",
        b"\x0a\x01\xff",
        "return tostring(args) .. ' ' .. n",
    );
    assert!(
        r.starts_with("nil cannot decode the String argument"),
        "{r}"
    );
    let r = dec(
        &l,
        "kong.response.get_status",
        b"\xff",
        "return tostring(args) .. ' ' .. n",
    );
    assert!(r.starts_with("nil cannot decode the Empty argument"), "{r}");
}

#[test]
fn every_protobuf_method_has_types_the_bridge_handles() {
    // Each input type decodes its default message and each output type encodes nil.
    let l = lua();
    for (i, m) in METHODS.iter().enumerate() {
        let Some((input, _)) = m.pb else { continue };
        let r = dec(
            &l,
            m.name,
            b"",
            "if args == nil and type(n) == 'string' then return 'error: ' .. n end return 'ok'",
        );
        assert_eq!(r, "ok", "{} ({input:?})", m.name);
        let e = enc(&l, m.name, "nil");
        assert!(!e.starts_with("error"), "{} #{i}: {e}", m.name);
        if input == PbType::Empty {
            let r = dec(&l, m.name, b"", "return tostring(args)");
            assert_eq!(r, "nil", "{}", m.name);
        }
    }
}

#[test]
fn property_values_survive_encode_then_decode() {
    // Lua value → Value (result of kong.ctx.shared.get) → wrapped in a KV →
    // argument of kong.ctx.shared.set → the same Lua value.
    let l = lua();
    l.load(
        r#"
        function deep_eq(a, b)
          if type(a) ~= type(b) then return false end
          if type(a) ~= 'table' then return a == b end
          for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
          for k in pairs(b) do if a[k] == nil then return false end end
          return true
        end
        function varint(n)
          local out = {}
          while n >= 128 do out[#out + 1] = string.char(128 + n % 128) n = math.floor(n / 128) end
          out[#out + 1] = string.char(n)
          return table.concat(out)
        end
        local seed = 7
        local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n end
        function gen(depth)
          local k = rnd(depth > 3 and 4 or 6)
          if k == 0 then return rnd(2) == 1
          elseif k == 1 then return (rnd(2000000) - 1000000) / (rnd(3) + 1)
          elseif k == 2 then
            local s = {} for i = 1, rnd(8) do s[i] = string.char(32 + rnd(90)) end return table.concat(s)
          elseif k == 3 then return 'é' .. rnd(10)
          elseif k == 4 then
            local t = {} for i = 1, rnd(5) + 1 do t[i] = gen(depth + 1) end return t
          else
            local t = {} for i = 1, rnd(5) + 1 do t['k' .. rnd(100)] = gen(depth + 1) end return t
          end
        end
        "#,
    )
    .exec()
    .unwrap();
    let get = idx("kong.ctx.shared.get");
    let set = idx("kong.ctx.shared.set");
    let r: String = l
        .load(format!(
            r#"
            for i = 1, 500 do
              local v = gen(0)
              local b = assert(bridge.pb_encode({get}, v))
              -- KV{{k = "k", v = <b>}}: field 1 "k", field 2 the Value bytes
              local kv = "\10\1k\18" .. varint(#b) .. b
              local args, n = bridge.pb_decode({set}, kv)
              assert(args, n)
              if not deep_eq(v, args[2]) then return 'mismatch at ' .. i end
            end
            return 'ok'
            "#
        ))
        .eval()
        .unwrap();
    assert_eq!(r, "ok");
}
