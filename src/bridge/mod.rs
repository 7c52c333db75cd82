//! The value bridge between Lua values and encoded bytes (the Lua-module side of
//! the seam).
//!
//! Lua API (all errors come back as `nil, message`, never raised: nginx would
//! log a raised error without its text, and a raise would longjmp through Rust):
//! - `encode(index, value) -> bytes | nil, err`: the MessagePack bytes of `value`,
//!   shaped for PDK method `index` of the method table.
//! - `decode(index, bytes) -> value [, n] | nil, err`: the Lua value of one
//!   MessagePack value; `n` is the element count when it is an array (Args
//!   may hold nils, so `#t` cannot be trusted).
//! - `methods() -> { [index] = { name = ..., terminal = true|nil, pb_in, pb_out } }` (index ≥ 1;
//!   0 is the unknown method) and `method_index(name) -> index`.
//! - `pb_encode`, `pb_decode`: the same for Protobuf messages (`protobuf/`).
//! - `selftest_entry_panic() -> nil, err`: panics inside a bridge body (specs).
//!
//! No Lua error and no panic crosses a Rust frame (`protect.rs`): a body only
//! reads (raw access, metamethods under `lua_pcall`) and records its pushes,
//! which are replayed under `lua_pcall` after its frames are gone.
//!
//! The functions are raw `lua_CFunction`s that read and build values on the Lua
//! stack (`stack.rs`), not mlua callbacks: an mlua call costs ~80 ns before any
//! work, one registry reference per value, and ends the caller's JIT trace.
//! Only bytes and small integers cross from here to the C side.

mod decode;
mod encode;
mod protect;
mod protobuf;
mod replay;
mod stack;
mod walk;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::ffi::c_int;

use mlua::ffi::lua_State;
use mlua::{Lua, Result as LuaResult, Table};

use crate::codec::methods;
use protect::entry;
use stack::Val;

pub use encode::MAX_DEPTH;

thread_local! {
    // One output buffer per thread (Lua states run on one thread), reused so that
    // encoding allocates only the returned Lua string.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the thread's reusable output buffer (cleared).
fn with_out<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    OUT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            let r = f(&mut out);
            if out.capacity() > 64 * 1024 {
                *out = Vec::new();
            }
            r
        }
        // Re-entered (a metamethod called the bridge): use a buffer of its own.
        Err(_) => f(&mut Vec::new()),
    })
}

fn method(index: i64) -> Result<&'static methods::Method, String> {
    u16::try_from(index)
        .ok()
        .and_then(methods::get)
        .ok_or_else(|| format!("unknown method index {index}"))
}

/// The method index argument; a wrong type is reported, not raised.
fn arg_index(v: Val<'_>) -> Result<i64, String> {
    match v {
        Val::Num(n) if n.fract() == 0.0 => Ok(n as i64),
        other => Err(format!(
            "method index must be an integer, got {}",
            other.type_name()
        )),
    }
}

/// The bytes argument.
fn arg_bytes(v: Val<'_>) -> Result<&[u8], String> {
    match v {
        Val::Str(b) => Ok(b),
        other => Err(format!("bytes must be a string, got {}", other.type_name())),
    }
}

/// `encode(index, value)`.
unsafe extern "C-unwind" fn lua_encode(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let m = method(arg_index(s.arg(1))?)?;
            // Only a bool comes back through `with_out` (in a register; a
            // `Result<_, String>` went through memory, a few ns per call).
            let mut failed = None;
            let pushed = with_out(|out| {
                let r = encode::encode(out, m.shape, s, s.arg(2))
                    .and_then(|()| s.push_str(out).map_err(String::from));
                r.map_err(|e| failed = Some(e)).is_ok()
            });
            match failed {
                Some(e) if !pushed => Err(e),
                _ => Ok(1),
            }
        })
    }
}

/// `decode(index, bytes)`.
unsafe extern "C-unwind" fn lua_decode(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let index = arg_index(s.arg(1))?;
            let bytes = arg_bytes(s.arg(2))?;
            method(index)?;
            match decode::decode(s, bytes)? {
                Some(n) => {
                    s.push_num(n as f64)?;
                    Ok(2)
                }
                None => Ok(1),
            }
        })
    }
}

/// `methods()`.
unsafe extern "C-unwind" fn lua_methods(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let all = s.new_table(methods::METHODS.len(), 0)?;
            for (i, m) in methods::METHODS.iter().enumerate().skip(1) {
                let entry = s.new_table(0, 4)?;
                s.push_str(b"name")?;
                s.push_str(m.name.as_bytes())?;
                s.set_pair(&entry);
                if m.terminal {
                    s.push_str(b"terminal")?;
                    s.push_bool(true)?;
                    s.set_pair(&entry);
                }
                if let Some((input, output)) = m.pb {
                    s.push_str(b"pb_in")?;
                    s.push_str(format!("{input:?}").as_bytes())?;
                    s.set_pair(&entry);
                    s.push_str(b"pb_out")?;
                    s.push_str(format!("{output:?}").as_bytes())?;
                    s.set_pair(&entry);
                }
                s.set_item(&all, i);
            }
            Ok(1)
        })
    }
}

/// `method_index(name)`.
unsafe extern "C-unwind" fn lua_method_index(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let index = match s.arg(1) {
                Val::Str(name) => methods::index_of(name),
                _ => methods::UNKNOWN,
            };
            s.push_num(f64::from(index))?;
            Ok(1)
        })
    }
}

/// `selftest_entry_panic()`: panics inside the entry point's body, for specs
/// that check a panic there comes back as `nil, message`.
unsafe extern "C-unwind" fn lua_selftest_entry_panic(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            // Something recorded first: the error path must drop it.
            s.push_str(b"half-built result")?;
            panic!("bridge entry self-test panic")
        })
    }
}

/// Adds the bridge's functions to the module table.
pub fn register(lua: &Lua, exports: &Table) -> LuaResult<()> {
    let functions: [(&str, mlua::ffi::lua_CFunction); 7] = [
        ("encode", lua_encode),
        ("decode", lua_decode),
        ("methods", lua_methods),
        ("method_index", lua_method_index),
        ("pb_encode", protobuf::lua_encode),
        ("pb_decode", protobuf::lua_decode),
        ("selftest_entry_panic", lua_selftest_entry_panic),
    ];
    for (name, f) in functions {
        exports.set(name, protect::function(lua, f)?)?;
    }
    exports.set("MAX_DEPTH", MAX_DEPTH)
}
