//! The LuaJIT state the bridge targets decode into, the bridge's functions as Lua
//! sees them, and deep equality of Lua values.
//!
//! The bridge is a set of raw `lua_CFunction`s working on the Lua stack; the
//! targets call them as the shim does (through the module table that
//! `bridge::register` fills), so the unsafe stack code runs under the sanitizer.

use std::cell::RefCell;

use kong_plugin_servers::bridge;
use mlua::{Function, Lua, MultiValue, Value};

/// A Lua state with the bridge's functions.
pub struct Bridge {
    pub lua: Lua,
    pub decode: Function,
    pub encode: Function,
    pub pb_decode: Function,
    pub pb_encode: Function,
}

/// What a bridge function returned: its values, or the message of `nil, message`.
pub type Returned = Result<Vec<Value>, String>;

impl Bridge {
    fn new() -> Self {
        let lua = Lua::new();
        let exports = lua.create_table().expect("table");
        bridge::register(&lua, &exports).expect("register the bridge");
        let f = |name: &str| -> Function { exports.get(name).expect(name) };
        Bridge {
            decode: f("decode"),
            encode: f("encode"),
            pb_decode: f("pb_decode"),
            pb_encode: f("pb_encode"),
            lua,
        }
    }

    /// Calls `f(index, arg)`; the bridge never raises, so a Lua error fails the check.
    pub fn call(&self, f: &Function, index: i64, arg: Value) -> Returned {
        let r: MultiValue = f
            .call((index, arg))
            .unwrap_or_else(|e| panic!("the bridge raised an error: {e}"));
        let r: Vec<Value> = r.into_iter().collect();
        match r.as_slice() {
            [Value::Nil, Value::String(msg)] => Err(msg.to_string_lossy()),
            [Value::Nil, other] => panic!("nil with a non-string message {other:?}"),
            _ => Ok(r),
        }
    }

    pub fn bytes(&self, b: &[u8]) -> Value {
        Value::String(self.lua.create_string(b).expect("string"))
    }
}

thread_local! {
    static BRIDGE: RefCell<(Option<Bridge>, u32)> = const { RefCell::new((None, 0)) };
}

/// Runs `f` with this thread's bridge, collecting garbage now and then.
pub fn with_bridge(f: impl FnOnce(&Bridge)) {
    BRIDGE.with(|cell| {
        let (bridge, runs) = &mut *cell.borrow_mut();
        let b = bridge.get_or_insert_with(Bridge::new);
        f(b);
        *runs += 1;
        if *runs % 1024 == 0 {
            let _ = b.lua.gc_collect();
        }
    });
}

/// A Lua number (mlua shows whole numbers as integers).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => Some(*n),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// Deep equality of Lua values: tables by content (keys too), NaN equal to NaN.
pub fn same(a: &Value, b: &Value) -> bool {
    same_at(a, b, 0)
}

fn same_at(a: &Value, b: &Value, depth: usize) -> bool {
    assert!(depth <= 200, "runaway nesting");
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Integer(x), Value::Integer(y)) => x == y,
        (Value::Integer(x), Value::Number(y)) | (Value::Number(y), Value::Integer(x)) => {
            *x as f64 == *y
        }
        (Value::String(x), Value::String(y)) => x.as_bytes() == y.as_bytes(),
        (Value::Table(x), Value::Table(y)) => {
            let xs = entries(x);
            let ys = entries(y);
            // Keys may be tables themselves: match entries by content, not identity.
            xs.len() == ys.len()
                && xs.iter().all(|(k, v)| {
                    ys.iter()
                        .any(|(k2, v2)| same_at(k, k2, depth + 1) && same_at(v, v2, depth + 1))
                })
        }
        _ => a == b,
    }
}

fn entries(t: &mlua::Table) -> Vec<(Value, Value)> {
    t.pairs::<Value, Value>()
        .map(|p| p.expect("table pair"))
        .collect()
}
