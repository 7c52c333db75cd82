//! The checked-in handle exports, header and Lua cdefs must match their sources:
//! run `make header`.

#[path = "../tools/handle_exports.rs"]
mod handle_exports;
#[path = "../tools/header.rs"]
mod header;

use std::path::Path;

fn read(rel: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn handle_exports_match_their_definition() {
    assert!(
        handle_exports::handle_exports() == read("src/ffi/handle_exports.rs"),
        "src/ffi/handle_exports.rs is stale: run `make header`"
    );
}

#[test]
fn header_matches_the_sources() {
    let fresh = header::generate_header(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        fresh == read("include/kong_plugin_servers.h"),
        "include/kong_plugin_servers.h is stale: run `make header`"
    );
}

#[test]
fn cdefs_match_the_header() {
    let expected = header::cdefs_from_header(&read("include/kong_plugin_servers.h"));
    assert!(
        expected == read("lua/kong/runloop/plugin_servers/cdefs.lua"),
        "lua/kong/runloop/plugin_servers/cdefs.lua is stale: run `make header`"
    );
}
