-- The value bridge's error handling in a real nginx worker: a panic inside a
-- bridge body, tables whose metamethods raise, __gc finalizers that raise during
-- the bridge's allocations and a Lua stack that cannot grow each come back to
-- the caller as `nil, message` (or the raw result); the worker keeps its pid
-- and keeps serving. Same probes as spec/unit/bridge_errors_spec.lua.
local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"

local PROBE = assert(procs.read_file(nginx.root .. "/spec/helpers/bridge_probe.lua"))

-- Runs `body` in the worker with `probe` and `b` (the bridge) in scope.
local function eval_probe(h, body)
  return h:eval_json("local probe = (function()\n" .. PROBE .. "\nend)()\n"
    .. "local b = require('kong.runloop.plugin_servers.lib').bridge\n" .. body)
end

describe("value bridge errors, in an nginx worker", function()
  local h, pid

  setup(function()
    h = assert(nginx.start { workers = 1 })
    pid = h:worker_pids()[1]
  end)

  teardown(function()
    if h then
      h:stop()
    end
  end)

  after_each(function()
    assert.same({ pid }, h:worker_pids())
    assert.equal("pong", assert(h:request { path = "/__host/ping" }).body)
    assert.equal(0, h:count_log("exited on signal"))
  end)

  it("answers a panic inside a bridge body with nil, message", function()
    local r = assert(eval_probe(h, [[
      local out = {}
      for i = 1, 3 do out["call" .. i] = probe.entry_panic(b) end
      out.pid = ngx.worker.pid()
      return out
    ]]))
    for i = 1, 3 do
      assert.same({ ok = true, err = "internal error in the value bridge: bridge entry self-test panic" }, r["call" .. i])
    end
    assert.equal(pid, r.pid)
  end)

  it("reads tables raw and answers a raising __index of a field read with nil, message", function()
    local r = assert(eval_probe(h, "return probe.metamethods(b)"))
    assert.is_true(r.mp_same)
    assert.is_true(r.pb_same)
    assert.equal("", r.ran_raw)
    assert.is_nil(r.route_v)
    assert.matches("no field", r.route_err)
  end)

  it("answers a __gc finalizer that raises during its allocations with nil, message", function()
    local r = assert(eval_probe(h, "return probe.gc_storm(b, 3000)"))
    assert.equal(0, r.raised)
    assert.is_true(r.nil_err >= 1)
    assert.matches("finalizer boom", r.first_err, nil, true)
    assert.is_true(r.after)
  end)

  it("answers a Lua stack that cannot grow with nil, message", function()
    local r = assert(eval_probe(h, "return probe.deep_stack(b)"))
    local refused = 0
    for k, n in pairs(r) do
      if k:match("^nil, .*stack overflow") then
        refused = refused + n
      end
    end
    assert.is_true(refused >= 1, require("cjson").encode(r))
  end)
end)
