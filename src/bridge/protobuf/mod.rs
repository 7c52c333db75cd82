//! The Protobuf side of the value bridge: Lua values ↔ the message types of the
//! PDK method table (docs/PROTOCOL.md §5), via prost.
//!
//! Lua API (errors come back as `nil, message`, never raised):
//! - `pb_decode(index, bytes) -> args, n | nil | nil, err`: the input message of
//!   PDK method `index` unwrapped into call arguments (`args[1..n]`, holes for
//!   nil); nothing when the method takes none.
//! - `pb_encode(index, value) -> bytes | nil, err`: the Lua result wrapped into
//!   the method's output message; `""` is the empty message.

mod args;
mod results;

#[cfg(test)]
mod tests;

use std::ffi::c_int;

use mlua::ffi::lua_State;

use super::{arg_bytes, arg_index, entry, method, with_out};
use crate::codec::methods::{PbType, Shape};

/// The (input, output) types of method `index`.
fn types(index: i64) -> Result<(PbType, PbType, bool), String> {
    let m = method(index)?;
    match m.pb {
        Some((input, output)) => Ok((input, output, m.shape == Shape::MultiMap)),
        None if m.name.is_empty() => Err("unknown PDK method".to_string()),
        None => Err(format!(
            "{} is not a method of the Protobuf service",
            m.name
        )),
    }
}

/// `pb_encode(index, value)`.
pub unsafe extern "C-unwind" fn lua_encode(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let (_, output, multimap) = types(arg_index(s.arg(1))?)?;
            with_out(|out| {
                results::encode(out, output, multimap, s, s.arg(2)).map_err(|e| e.to_string())?;
                s.push_str(out)?;
                Ok(1)
            })
        })
    }
}

/// `pb_decode(index, bytes)`.
pub unsafe extern "C-unwind" fn lua_decode(l: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        entry(l, |s| {
            let index = arg_index(s.arg(1))?;
            let bytes = arg_bytes(s.arg(2))?;
            let (input, _, _) = types(index)?;
            Ok(args::decode(s, input, bytes)? as c_int)
        })
    }
}
