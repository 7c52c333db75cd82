//! Replays the pushes a bridge body recorded (`stack::Op`) onto the real stack.
//!
//! This is the only bridge code that runs Lua C API calls that allocate, so the
//! only code a Lua error (out of memory, a `__gc` finalizer that raises, a table
//! or string too large for LuaJIT) can start in. It runs inside the entry
//! point's `lua_pcall`, which catches such an error; the error unwinds through
//! this function and `protect::body`'s frame only, which hold nothing to drop
//! and no `catch_unwind` (Rust aborts when a `catch_unwind` meets a foreign
//! exception). For the same reason this code must not panic (a Rust panic that
//! reached LuaJIT's `lua_pcall` would be caught there and end in an abort): the
//! lints below forbid indexing, unchecked arithmetic and the panicking helpers.
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use std::ffi::c_int;

use mlua::ffi::{self, lua_State};

use super::stack::{Op, Record, push_bytes};

/// Pushes what `rec` recorded. Returns `false` (pushing nothing) when the
/// stack cannot hold it; may raise (see the module).
///
/// # Safety
/// `l` is the state of the running C function, inside a protected call, and
/// its top is the one the recording started from.
pub unsafe fn replay(l: *mut lua_State, rec: &Record) -> bool {
    // SAFETY: caller (each op finds what the recording says it finds: the ops
    // were recorded by `Stack`, which checks the shapes it records).
    unsafe {
        let need = rec.max_top.saturating_sub(ffi::lua_gettop(l));
        if need > 0 && ffi::lua_checkstack(l, need) == 0 {
            return false;
        }
        for op in &rec.ops {
            match *op {
                Op::Nil => ffi::lua_pushnil(l),
                Op::Bool(b) => ffi::lua_pushboolean(l, c_int::from(b)),
                Op::Num(n) => ffi::lua_pushnumber(l, n),
                Op::Str { start, end } => match rec.bytes.get(start..end) {
                    Some(b) => push_bytes(l, b),
                    None => ffi::lua_pushnil(l),
                },
                Op::Borrowed { ptr, len } => push_bytes(l, std::slice::from_raw_parts(ptr, len)),
                Op::Table { narr, nrec } => ffi::lua_createtable(l, narr, nrec),
                Op::SetItem { t, i } => set_item(l, t, i),
                Op::SetItemBelow(i) => set_item(l, -2, i),
                Op::SetPair { t } => set_pair(l, t),
                Op::SetPairBelow => set_pair(l, -3),
                Op::SetTop(n) => ffi::lua_settop(l, n),
            }
        }
    }
    true
}

/// `[t][i] = pop()`, a nil popped only.
unsafe fn set_item(l: *mut lua_State, t: c_int, i: c_int) {
    // SAFETY: caller of `replay`.
    unsafe {
        if ffi::lua_type(l, -1) == ffi::LUA_TNIL {
            ffi::lua_settop(l, -2);
        } else {
            ffi::lua_rawseti_(l, t, i);
        }
    }
}

/// `[t][key] = value` (the top two), left out when `lua_rawset` would raise
/// (nil or NaN key) or the value is nil.
unsafe fn set_pair(l: *mut lua_State, t: c_int) {
    // SAFETY: caller of `replay`.
    unsafe {
        let key_ok = match ffi::lua_type(l, -2) {
            ffi::LUA_TNIL => false,
            ffi::LUA_TNUMBER => !ffi::lua_tonumber(l, -2).is_nan(),
            _ => true,
        };
        if key_ok && ffi::lua_type(l, -1) != ffi::LUA_TNIL {
            ffi::lua_rawset(l, t);
        } else {
            ffi::lua_settop(l, -3);
        }
    }
}
