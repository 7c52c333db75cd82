-- No panic crosses the FFI boundary, in a real nginx worker: a panic inside a C
-- adapter comes back as KPS_ERR_PANIC with its message, a panic inside an mlua
-- bridge function as a Lua error; the worker lives on (same pid), logs one line
-- per panic (no backtrace) and keeps serving.
local nginx = require "spec.helpers.nginx"

describe("a panic inside the library, in an nginx worker", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("comes back to Lua as an error and leaves the worker serving", function()
    h = assert(nginx.start { workers = 1 })
    local pid = h:worker_pids()[1]
    local res = assert(h:eval_json [[
      local lib = require "kong.runloop.plugin_servers.lib"
      local out = {}
      for i = 1, 3 do
        -- the bridge first: its panic must be quiet before any C call set the hook
        local ok, err = pcall(lib.bridge.selftest_panic)
        out["lua" .. i] = { ok = ok, msg = tostring(err) }
        local buf, len = lib.errbuf()
        out["c" .. i] = { rc = tonumber(lib.C.kps_selftest_panic(buf, len)), msg = lib.errmsg() }
      end
      out.panic_code = tonumber(lib.C.KPS_ERR_PANIC)
      out.pid = ngx.worker.pid()
      return out
    ]])
    for i = 1, 3 do
      assert.same({ rc = res.panic_code, msg = "internal error (panic): self-test panic" }, res["c" .. i])
      assert.same({ ok = false, msg = "bridge self-test panic" }, res["lua" .. i])
    end
    assert.equal(pid, res.pid)
    assert.same({ pid }, h:worker_pids())
    assert.equal("pong", assert(h:request { path = "/__host/ping" }).body)
    assert.equal(0, h:count_log("exited on signal"))
    -- the quiet hook: one "panicked at" line per panic and no backtrace
    assert(h:wait_log("%[kong_plugin_servers%] panicked at", 2, 6))
    assert.equal(6, h:count_log("%[kong_plugin_servers%] panicked at"))
    assert.equal(0, h:count_log("stack backtrace"))
    assert.equal(0, h:count_log("RUST_BACKTRACE"))
  end)
end)
