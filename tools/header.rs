//! Shared by `examples/gen_header.rs` and `tests/header_sync.rs`: the header as
//! cbindgen makes it from the sources, and the LuaJIT cdefs derived from a header.

use std::path::Path;

pub fn generate_header(crate_dir: &Path) -> String {
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

/// Strips what `ffi.cdef` cannot parse (preprocessor lines) and wraps the rest
/// in a Lua module.
pub fn cdefs_from_header(header: &str) -> String {
    let mut body = String::new();
    for line in header.lines() {
        let trimmed = line.trim_start();
        if let Some(def) = trimmed.strip_prefix("#define ") {
            // Integer constants become `static const int`, which ffi.cdef accepts.
            if let Some((name, value)) = def.split_once(' ')
                && value.trim().parse::<i64>().is_ok()
            {
                body.push_str(&format!("static const int {name} = {};\n", value.trim()));
            }
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    let body = body.trim_matches('\n');
    format!(
        "-- Generated from include/kong_plugin_servers.h by `make header`. Do not edit.\n\
         return [[\n{body}\n]]\n"
    )
}
