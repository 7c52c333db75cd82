//! The LuaJIT state the bridge targets decode into, and deep equality of Lua values.

use std::cell::RefCell;

use mlua::{Lua, Value};

thread_local! {
    static LUA: RefCell<(Lua, u32)> = RefCell::new((Lua::new(), 0));
}

/// Runs `f` with this thread's Lua state, collecting garbage now and then.
pub fn with_lua(f: impl FnOnce(&Lua)) {
    LUA.with(|cell| {
        let (lua, runs) = &mut *cell.borrow_mut();
        f(lua);
        *runs += 1;
        if *runs % 1024 == 0 {
            let _ = lua.gc_collect();
        }
    });
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
