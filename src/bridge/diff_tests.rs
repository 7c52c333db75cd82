//! TEMPORARY differential test: the raw-stack bridge against the mlua-based
//! bridge it replaces (`crate::bridge_old`), on seeded random values, for every
//! method index of both codecs. Same bytes, same decoded values, same errors.

use mlua::{LightUserData, Lua, Value};

use crate::codec::methods::METHODS;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "host",
    "port",
    "tags",
    "paths",
    "headers",
    "service",
    "created_at",
    "strip_path",
    "sources",
    "ip",
    "unnamed",
    "named",
    "body_filepath",
    "error",
    "lua_shared_dicts",
    "kong",
    "capacity",
    "workers_lua_vms",
    "pid",
    "username",
    "x",
];

/// Random Lua source for a value: every type, NaN/inf, huge and negative-zero
/// numbers, binary strings, NULL, empty/mixed/holey tables, entity-like tables,
/// functions and coroutines (error paths), shared and cyclic references.
fn gen_src(rng: &mut Rng, depth: usize) -> String {
    let pick = if depth > 3 {
        rng.below(12)
    } else {
        rng.below(18)
    };
    match pick {
        0 => "nil".into(),
        1 => "null".into(),
        2 => ["true", "false"][rng.below(2) as usize].into(),
        3 => [
            "0/0", "1/0", "-1/0", "-0.0", "2^53", "2^53+2", "-(2^53)", "2^63", "-(2^63)", "2^64",
            "1e300", "0.1", "1.5", "2^31", "-2^31-1",
        ][rng.below(15) as usize]
            .into(),
        4 => format!("{}", (rng.next() as i64) >> rng.below(64)),
        5 => format!("{:?}", (rng.next() as i64 as f64) / 7.0),
        6 | 7 => {
            let len = rng.below(20);
            let b: String = (0..len).map(|_| format!("\\{}", rng.below(256))).collect();
            format!("'{b}'")
        }
        8 => format!("'{}'", FIELDS[rng.below(FIELDS.len() as u64) as usize]),
        9 => [
            "print",
            "coroutine.create(print)",
            "io.stdout",
            "SHARED",
            "CYCLE",
        ][rng.below(5) as usize]
            .into(),
        10 => "{}".into(),
        11 => format!("{}", rng.below(70000)),
        12 | 13 => {
            // array, maybe with holes
            let n = rng.below(6);
            let items: Vec<String> = (0..n).map(|_| gen_src(rng, depth + 1)).collect();
            format!("{{ {} }}", items.join(", "))
        }
        14 | 15 => {
            // entity-like or map table
            let n = rng.below(6) + 1;
            let items: Vec<String> = (0..n)
                .map(|i| {
                    let key = match rng.below(6) {
                        0 => format!("[{}]", i as i64 * 3 - 2),
                        1 => format!("[{}.5]", i),
                        2 => "[true]".into(),
                        3 => format!("['k\\0{}']", rng.below(50)),
                        _ => format!("['{}']", FIELDS[rng.below(FIELDS.len() as u64) as usize]),
                    };
                    format!("{key} = {}", gen_src(rng, depth + 1))
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        16 => {
            // mixed table
            format!(
                "{{ {}, {}, x = {} }}",
                gen_src(rng, depth + 1),
                gen_src(rng, depth + 1),
                gen_src(rng, depth + 1)
            )
        }
        _ => {
            // headers-like multimap
            let n = rng.below(13);
            let items: Vec<String> = (0..n)
                .map(|i| match rng.below(4) {
                    0 => format!("['h{i}'] = true"),
                    1 => format!("['h{i}'] = {{ 'a{i}', 'b' }}"),
                    2 => format!("['h{i}'] = {}", gen_src(rng, depth + 1)),
                    _ => format!("['h{i}'] = 'v{i}'"),
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

fn lua() -> Lua {
    let lua = Lua::new();
    let new = lua.create_table().unwrap();
    super::register(&lua, &new).unwrap();
    let old = lua.create_table().unwrap();
    crate::bridge_old::register(&lua, &old).unwrap();
    lua.globals().set("new", new).unwrap();
    lua.globals().set("old", old).unwrap();
    lua.globals()
        .set(
            "null",
            Value::LightUserData(LightUserData(std::ptr::null_mut())),
        )
        .unwrap();
    lua.load(
        r#"
        COUNT = {}
        SHARED = { 1, 'two' }
        CYCLE = { a = 1 } CYCLE.self = CYCLE
        local function eq(a, b, seen)
          if type(a) ~= type(b) then return false end
          if type(a) ~= 'table' then return a == b or (a ~= a and b ~= b) end
          for k, v in pairs(a) do if not eq(v, b[k]) then return false end end
          for k in pairs(b) do if a[k] == nil then return false end end
          return true
        end
        local function pack(...) return { n = select('#', ...), ... } end
        local function show(r)
          local out = {}
          for i = 1, r.n do
            local v = r[i]
            out[#out + 1] = type(v) == 'string' and string.format('%q', v) or tostring(v)
          end
          return table.concat(out, ', ')
        end
        -- Calls f on both bridges; 'ok' or what differs.
        function same(f, ...)
          local a, b = pack(new[f](...)), pack(old[f](...))
          if a.n ~= b.n then return f .. ': ' .. a.n .. ' vs ' .. b.n .. ' results: ' .. show(a) .. ' / ' .. show(b) end
          for i = 1, a.n do
            if not eq(a[i], b[i]) then return f .. ': result ' .. i .. ' differs: ' .. show(a) .. ' / ' .. show(b) end
          end
          return 'ok', a[1]
        end
        "#,
    )
    .exec()
    .unwrap();
    lua
}

/// The method indexes to try: plain, multimap, raw body, every Protobuf method,
/// and a few invalid ones.
fn indexes() -> Vec<String> {
    let mut v: Vec<String> = (0..METHODS.len()).map(|i| i.to_string()).collect();
    v.extend(["9999", "-1", "1.5", "'x'", "nil", "0/0"].map(String::from));
    v
}

#[test]
fn raw_bridge_matches_the_mlua_bridge() {
    let lua = lua();
    let idx = indexes();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut checked = 0;
    for case in 0..3000 {
        let src = gen_src(&mut rng, 0);
        let i = &idx[rng.below(idx.len() as u64) as usize];
        let code = format!(
            "local v = {src}
             local r = {{}}
             for _, f in ipairs {{ 'encode', 'pb_encode' }} do
               local ok, bytes = same(f, {i}, v)
               if ok ~= 'ok' then return ok end
               r[#r + 1] = bytes
               COUNT[f .. (type(bytes) == 'string' and ' bytes' or ' error')] =
                 (COUNT[f .. (type(bytes) == 'string' and ' bytes' or ' error')] or 0) + 1
               if type(bytes) == 'string' then
                 -- the bytes, and cut or flipped copies, back through every decoder
                 local cut = bytes:sub(1, #bytes - 1 - {cut})
                 local flip = #bytes > 0 and (bytes:sub(1, 1):byte() ~= 255 and
                   string.char(bytes:byte(1) + 1) .. bytes:sub(2)) or '\\145'
                 for _, b in ipairs {{ bytes, cut, flip }} do
                   for _, d in ipairs {{ 'decode', 'pb_decode' }} do
                     local ok2 = same(d, {i}, b)
                     if ok2 ~= 'ok' then return ok2 end
                     local j = {j}
                     ok2 = same(d, j, b)
                     if ok2 ~= 'ok' then return ok2 end
                   end
                 end
               end
             end
             return 'ok'",
            cut = rng.below(3),
            j = rng.below(METHODS.len() as u64),
        );
        let r: String = lua
            .load(&code)
            .eval()
            .unwrap_or_else(|e| panic!("case {case}: {e}\n{src}"));
        assert_eq!(r, "ok", "case {case}, index {i}: {src}");
        checked += 1;
    }
    // Argument errors and the method table.
    for call in [
        "same('encode')",
        "same('decode', 0)",
        "same('decode', 0, 5)",
        "same('decode', 0, {})",
        "same('pb_decode', 1, true)",
        "same('pb_encode')",
        "same('methods')",
        "same('method_index', 'kong.response.exit')",
        "same('method_index', 5)",
        "same('method_index')",
    ] {
        let r: String = lua.load(call).eval().unwrap();
        assert_eq!(r, "ok", "{call}");
    }
    assert_eq!(checked, 3000);
    // Both outcomes were exercised often on both codecs.
    for k in [
        "encode bytes",
        "encode error",
        "pb_encode bytes",
        "pb_encode error",
    ] {
        let n: i64 = lua
            .load(format!("return COUNT['{k}'] or 0"))
            .eval()
            .unwrap();
        eprintln!("{k}: {n}");
        assert!(n > 200, "{k}: only {n}");
    }
}

#[test]
fn raw_decoders_match_on_random_bytes() {
    let lua = lua();
    let mut rng = Rng(7);
    for case in 0..5000 {
        let len = rng.below(40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        if rng.below(2) == 0 && !bytes.is_empty() {
            // bias toward containers and small strings
            bytes[0] =
                [0x91, 0x92, 0x81, 0x82, 0xa2, 0x0a, 0x12, 0x2a, 0x32][rng.below(9) as usize];
        }
        lua.globals()
            .set("B", lua.create_string(&bytes).unwrap())
            .unwrap();
        let i = rng.below(METHODS.len() as u64);
        let r: String = lua
            .load(format!(
                "local a = same('decode', {i}, B) if a ~= 'ok' then return a end
                 return (same('pb_decode', {i}, B))"
            ))
            .eval()
            .unwrap();
        assert_eq!(r, "ok", "case {case}: {bytes:02x?}");
    }
}
