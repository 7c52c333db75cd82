//! Helpers shared by the in-crate tests: the hex text the recorded vectors are
//! written in, a LuaJIT state with the bridge loaded, and the processes and
//! socket paths of the process tests.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::RwLock;

use mlua::{LightUserData, Lua, Value};

use crate::config::ServerDef;

/// Held (write) by a test that changes the error log's level
/// (`output::set_log_level`), (read) by one that needs the default level
/// (everything printed) while it runs.
pub static LOG_LEVEL: RwLock<()> = RwLock::new(());

/// A server definition with short test bounds, on `socket`, neither started nor
/// queried: tests set the fields they are about with struct update syntax.
pub fn server_def(name: &str, socket: &str) -> ServerDef {
    ServerDef {
        name: name.into(),
        socket: socket.into(),
        start_command: None,
        query_command: String::new(),
        path: String::new(),
        query_timeout: 1000,
        stop_timeout: 1000,
        respawn_delay: 1000,
        respawn_delay_max: 1000,
        respawn_reset: 1000,
        ready_timeout: 1000,
        connect_timeout: 1000,
        send_timeout: 1000,
        read_timeout: 1000,
        fail_open: false,
        max_message_size: 1024,
        log_window: 1000,
        log_queue_max: 1,
        hang_timeout: 0,
        standby: Default::default(),
    }
}

/// A `sleep 30` in process group `group` (0: a group of its own), as a live
/// process the test can name, signal and kill.
pub fn sleeper(group: i32) -> Child {
    Command::new("sleep")
        .arg("30")
        .process_group(group)
        .spawn()
        .unwrap()
}

/// A socket path of this test process, `tag` telling the tests apart; no file
/// is left at it.
pub fn tmp_socket(tag: &str) -> String {
    let p = std::env::temp_dir().join(format!("kps-{tag}-{}.socket", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p.display().to_string()
}

/// The bytes of a hex string ("a1ff" is `[0xa1, 0xff]`).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Lower-case hex of bytes, the inverse of [`unhex`].
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A LuaJIT state with the bridge's functions as the global `bridge` and a null
/// light userdata (what Kong's cjson null is) as `null`.
pub fn bridge_lua() -> Lua {
    let lua = Lua::new();
    let exports = lua.create_table().unwrap();
    crate::bridge::register(&lua, &exports).unwrap();
    lua.globals().set("bridge", exports).unwrap();
    lua.globals()
        .set(
            "null",
            Value::LightUserData(LightUserData(std::ptr::null_mut())),
        )
        .unwrap();
    lua
}

/// Runs `call` (a bridge call returning `value, err`) and gives back
/// "<tostring(value)> <err>", e.g. "nil unknown PDK method".
pub fn call_result(lua: &Lua, call: &str) -> String {
    lua.load(format!(
        "local v, err = {call} return tostring(v) .. ' ' .. tostring(err)"
    ))
    .eval()
    .unwrap()
}

/// Runs `call` (a bridge call returning `bytes, err`): the bytes in hex, or
/// "error: <err>".
pub fn encoded_hex(lua: &Lua, call: &str) -> String {
    lua.load(format!(
        "local b, err = {call}
         if b == nil then return 'error: ' .. err end
         return (b:gsub('.', function(c) return string.format('%02x', c:byte()) end))"
    ))
    .eval()
    .unwrap()
}

/// Asserts `run(a, b) == want` for each `(a, b, want)` case; a failure names its case.
pub fn assert_cases(cases: &[(&str, &str, &str)], run: impl Fn(&str, &str) -> String) {
    for &(a, b, want) in cases {
        assert_eq!(run(a, b), want, "case ({a}, {b})");
    }
}
