//! Regenerates `src/ffi/handle_exports.rs`, `include/kong_plugin_servers.h` and
//! the Lua cdefs (`make header`).

#[path = "../tools/handle_exports.rs"]
mod handle_exports;
#[path = "../tools/header.rs"]
mod header;

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // First: cbindgen reads the exports from the sources.
    std::fs::write(
        dir.join("src/ffi/handle_exports.rs"),
        handle_exports::handle_exports(),
    )
    .expect("write handle exports");
    let h = header::generate_header(dir);
    std::fs::write(dir.join("include/kong_plugin_servers.h"), &h).expect("write header");
    std::fs::write(
        dir.join("lua/kong/runloop/plugin_servers/cdefs.lua"),
        header::cdefs_from_header(&h),
    )
    .expect("write cdefs");
    println!(
        "wrote src/ffi/handle_exports.rs, include/kong_plugin_servers.h and \
         lua/kong/runloop/plugin_servers/cdefs.lua"
    );
}
