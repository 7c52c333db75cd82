-- The loader and the C boundary: the library is found through package.cpath, its
-- cdefs parse, errors come back through the error buffer, and a panic inside the
-- library is an error code, not a crash.
local lib = require "kong.runloop.plugin_servers.lib"

describe("native library loader", function()
  it("finds the library through package.cpath and opens both sides", function()
    assert.matches("kong_plugin_servers%.so$", lib.path)
    assert.matches("^%d+%.%d+%.%d+", lib.version())
    assert.equal(lib.version(), lib.bridge.version)
  end)

  it("lists every path it tried when the library is missing", function()
    local path, err = lib.find("/nonexistent/a/?.so;/nonexistent/b/lib?.so")
    assert.is_nil(path)
    assert.matches("/nonexistent/a/kong_plugin_servers%.so", err)
    assert.matches("/nonexistent/a/libkong_plugin_servers%.so", err)
    assert.matches("/nonexistent/b/libkong_plugin_servers%.so", err)
  end)

  it("optional() returns the loaded library, once per state", function()
    assert.equal(lib, lib.optional())
    assert.equal(lib, require("kong.runloop.plugin_servers.lib").optional())
  end)

  it("without the library, require does not raise, optional() returns nil, err and lib.C raises", function()
    local script = [[
      package.path = ...
      package.cpath = "/nonexistent/?.so"
      local lib = require "kong.runloop.plugin_servers.lib"
      local l, err = lib.optional()
      local l2, err2 = lib.optional()
      local ok, cerr = pcall(function() return lib.C end)
      io.write(tostring(l), "|", tostring(l2), "|", tostring(err == err2), "|", tostring(ok), "|", err, "|", cerr)
    ]]
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(script)
    f:close()
    local p = assert(io.popen("luajit " .. tmp .. " '" .. package.path .. "' 2>&1"))
    local out = p:read("*a")
    p:close()
    os.remove(tmp)
    local l, l2, same, ok, err = out:match("^(%w+)|(%w+)|(%w+)|(%w+)|(.-)|")
    assert.same({ "nil", "nil", "true", "false" }, { l, l2, same, ok }, out)
    assert.matches("could not find the kong_plugin_servers library; tried:", err, 1, true)
    assert.matches("/nonexistent/kong_plugin_servers.so", out, 1, true)
    assert.matches("could not find the kong_plugin_servers library", out:match("|[^|]*$"), 1, true)
  end)

  it("turns a panic inside the library into KPS_ERR_PANIC with a message", function()
    local buf, len = lib.errbuf()
    local rc = lib.C.kps_selftest_panic(buf, len)
    assert.equal(lib.C.KPS_ERR_PANIC, rc)
    assert.equal("internal error (panic): self-test panic", lib.errmsg())
  end)

  it("turns a panic inside a bridge function into a Lua error with the message", function()
    local ok, err = pcall(lib.bridge.selftest_panic)
    assert.is_false(ok)
    assert.equal("bridge self-test panic", tostring(err))
    -- the bridge still works afterwards
    assert.equal(lib.version(), lib.bridge.version)
    assert.is_table(lib.bridge.methods())
  end)
end)
