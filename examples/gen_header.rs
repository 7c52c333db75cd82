//! Regenerates `include/kong_plugin_servers.h` and the Lua cdefs (`make header`).

#[path = "../tools/header.rs"]
mod header;

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let h = header::generate_header(dir);
    std::fs::write(dir.join("include/kong_plugin_servers.h"), &h).expect("write header");
    std::fs::write(
        dir.join("lua/kong/runloop/plugin_servers/cdefs.lua"),
        header::cdefs_from_header(&h),
    )
    .expect("write cdefs");
    println!("wrote include/kong_plugin_servers.h and lua/kong/runloop/plugin_servers/cdefs.lua");
}
