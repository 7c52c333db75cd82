//! Entry point of the `.so` as a Lua module (`require "kong_plugin_servers"`).
//!
//! This side carries Lua values only (the value bridge, raw `lua_CFunction`s);
//! plain data and handles go through the C header (docs/DESIGN.md, "The seam
//! between the two halves of the library").

use mlua::{Lua, Result as LuaResult, Table};

#[mlua::lua_module(skip_memory_check)]
fn kong_plugin_servers(lua: &Lua) -> LuaResult<Table> {
    // A panic caught by mlua in a bridge function prints one line, not a backtrace.
    crate::ffi::install_quiet_panic_hook();
    let exports = lua.create_table()?;
    exports.set("version", env!("CARGO_PKG_VERSION"))?;
    crate::bridge::register(lua, &exports)?;
    // Panics on purpose: specs check that mlua turns a panic in a bridge function
    // into a Lua error carrying the message, not a dead worker.
    exports.set(
        "selftest_panic",
        lua.create_function(|_, ()| -> LuaResult<()> { panic!("bridge self-test panic") })?,
    )?;
    Ok(exports)
}
