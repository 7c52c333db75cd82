package = "kong-plugin-servers"
version = "dev-1"
source = {
  url = "git+file:///dev/null",
}
description = {
  summary = "Native engine for Kong Gateway's external plugin servers (Go, Python, JS)",
  detailed = [[
    Rust library with a C ABI and a Lua shim that replaces kong.runloop.plugin_servers:
    config validation, plugin server supervision, MessagePack-RPC and Protobuf codecs.
    Building needs a Rust toolchain (cargo).
  ]],
  license = "Apache-2.0",
}
dependencies = {
  "lua >= 5.1",
}
build = {
  type = "make",
  build_target = "build",
  install_target = "install",
  build_variables = {},
  install_variables = {
    LUA_LIB_DIR = "$(LUADIR)",
    LUA_CLIB_DIR = "$(LIBDIR)",
  },
}
