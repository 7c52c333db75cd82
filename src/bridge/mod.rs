//! The value bridge between Lua values and the wire codecs (MessagePack issue).

use mlua::{Lua, Result as LuaResult, Table};

/// Adds the bridge's functions to the module table.
pub fn register(_lua: &Lua, _exports: &Table) -> LuaResult<()> {
    Ok(())
}
