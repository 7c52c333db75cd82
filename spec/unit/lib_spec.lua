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
