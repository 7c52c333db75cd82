-- pdk.lua: what a plugin server can call. Only functions under the `kong` global
-- and the overrides resolve; every other name is refused before any Lua runs, the
-- refusal is counted and logged once per method per log window, and the cache of
-- resolved names stays bounded.
local stub = require "spec.helpers.ngx_stub"

describe("PDK surface", function()
  local pdk, bridge, ran, marker, logs

  -- Every refused form of the brief, each with arguments that would show it ran.
  local REFUSED = {
    { "os.execute", "touch MARKER" },
    { "os.exit", 3 },
    { "os.getenv", "HOME" },
    { "io.open", "MARKER", "w" },
    { "io.popen", "touch MARKER" },
    { "require", "os" },
    { "ngx.exit", 200 },
    { "ngx.log", 4, "x" },
    { "package.loadlib", "libc.so.6", "system" },
    { "debug.getinfo", 1 },
    { "_G.os.execute", "touch MARKER" },
    { "_G.kong.request.get_path" },
    { "string.rep", "x", 10 },
    { "dofile", "MARKER" },
    { "kong..request.get_path" },
    { "kong.request..get_path" },
    { ".kong.request.get_path" },
    { "kong.request.get_path." },
    { "kong." },
    { "kong" },
    { "" },
    { "kong.request" },                 -- a table
    { "kong.version" },                 -- a string
    { "kong.callable" },                -- a table with __call
    { "kong.nope.missing" },            -- nil
    { "kong.raising.x" },               -- __index raises
    { "kong.request.get_path\0os" },
    { "kong.request.get path" },
    { "kong/request/get_path" },
    { "kong.request:get_path" },
    { "kong.request.get_path()" },
    { "kong.request.get_path.x" },      -- walks through a function
    { "kong." .. string.rep("a", 200) },
    { "KONG.request.get_path" },
  }

  local saved_log, saved_shared

  before_each(function()
    ran = {}
    marker = os.tmpname()
    os.remove(marker)
    _G.kong = {
      version = "3.9.0",
      request = {
        get_path = function() ran[#ran + 1] = "get_path" return "/p" end,
        get_body = function() ran[#ran + 1] = "get_body" return "b" end,
      },
      callable = setmetatable({}, { __call = function() ran[#ran + 1] = "callable" end }),
      raising = setmetatable({}, { __index = function() error("boom") end }),
      ctx = { shared = {} },
    }
    -- the modules cache ngx.log and read the dict when loaded: load them afresh
    saved_log, saved_shared = ngx.log, ngx.shared
    logs = {}
    ngx.log = function(level, ...)
      logs[#logs + 1] = { level, table.concat({ ... }) }
    end
    ngx.shared = { kong_plugin_servers = stub.fake_dict() }
    stub.unload_shim()
    pdk = require "kong.runloop.plugin_servers.pdk"
    bridge = require("kong.runloop.plugin_servers.lib").bridge
  end)

  after_each(function()
    _G.kong = nil
    ngx.log, ngx.shared = saved_log, saved_shared
    stub.unload_shim()
    os.remove(marker)
  end)

  it("refuses every name outside kong.* and the overrides, running nothing", function()
    local os_exit, os_execute, io_open, io_popen, req = os.exit, os.execute, io.open, io.popen, require
    for _, case in ipairs(REFUSED) do
      local name = case[1]
      local args = {}
      for i = 2, #case do
        args[#args + 1] = type(case[i]) == "string" and case[i]:gsub("MARKER", marker) or case[i]
      end
      assert.is_false(pdk.well_formed(name) and pdk.resolve(name) ~= nil, name)
      local ok, err, refused = pdk.call(0, name, args, #args)
      assert.is_false(ok, name)
      assert.equal("refused", refused, name)
      assert.matches("^method '.*' is not part of the PDK$", err)
    end
    assert.same({}, ran)
    assert.is_nil(io.open(marker))
    -- the globals were not touched either
    assert.equal(os_exit, os.exit)
    assert.equal(os_execute, os.execute)
    assert.equal(io_open, io.open)
    assert.equal(io_popen, io.popen)
    assert.equal(req, require)
  end)

  it("names the method in the reply, printable and bounded", function()
    assert.equal("method 'os.execute' is not part of the PDK", select(2, pdk.call(0, "os.execute")))
    assert.equal("method 'a?b' is not part of the PDK", pdk.refusal("a\nb"))
    local long = pdk.refusal(string.rep("x", 1000))
    assert.equal(#"method '' is not part of the PDK" + 128 + 3, #long)
  end)

  it("resolves kong.* functions, by index and by name, and the overrides", function()
    assert.same({ true, "/p" }, { pdk.call(bridge.method_index("kong.request.get_path"), "kong.request.get_path") })
    assert.same({ true, "b" }, { pdk.call(0, "kong.request.get_body") })   -- by name: outside the table
    local fn, is_override = pdk.resolve("kong.ctx.shared.get")
    assert.is_function(fn)
    assert.is_true(is_override)
    fn, is_override = pdk.resolve("kong.request.get_path")
    assert.equal(kong.request.get_path, fn)
    assert.is_false(is_override)
    -- every override has a PDK name, and every name of the method table has the form
    for name in pairs(pdk.overrides) do
      assert.is_true(pdk.well_formed(name), name)
    end
    for _, m in pairs(bridge.methods()) do
      assert.is_true(pdk.well_formed(m.name), m.name)
    end
  end)

  it("caches valid names only, and only up to a bound", function()
    -- a refused name is not cached: it resolves once it exists
    assert.is_false((pdk.call(0, "kong.request.later")))
    kong.request.later = function() return "now" end
    assert.same({ true, "now" }, { pdk.call(0, "kong.request.later") })
    local calls = 0
    for i = 1, 200 do
      kong.request["f" .. i] = function() calls = calls + 1 return i end
    end
    for i = 1, 200 do
      assert.same({ true, i }, { pdk.call(0, "kong.request.f" .. i) })
    end
    assert.equal(200, calls)
    -- a cached name keeps its function; past the bound a name is looked up each time
    kong.request.f1 = function() return "replaced" end
    kong.request.f200 = function() return "replaced" end
    assert.same({ true, 1 }, { pdk.call(0, "kong.request.f1") })
    assert.same({ true, "replaced" }, { pdk.call(0, "kong.request.f200") })
  end)

  it("counts each refusal and logs it once per method per log window", function()
    local counters = require "kong.runloop.plugin_servers.counters"
    local before = counters.get("srv").errors.refused_method
    local def = { name = "srv", log_window = 60000 }
    for _ = 1, 3 do
      assert.equal("method 'os.execute' is not part of the PDK", pdk.refuse(def, "os.execute"))
      pdk.refuse(def, "io.open")
    end
    assert.equal(before + 6, counters.get("srv").errors.refused_method)
    local lines = {}
    for _, l in ipairs(logs) do
      if l[2]:find("is not part of the PDK", 1, true) then
        lines[#lines + 1] = l[2]
        assert.equal(ngx.ERR, l[1])
      end
    end
    assert.same({
      "[pluginserver] srv: method 'os.execute' is not part of the PDK (refused)",
      "[pluginserver] srv: method 'io.open' is not part of the PDK (refused)",
    }, lines)
  end)

  it("bounds the distinct names logged per window (a server inventing names fills no dict)", function()
    local def = { name = "inventive", log_window = 60000 }
    for i = 1, 100 do
      pdk.refuse(def, "os.x" .. i)
    end
    local n = 0
    for _, l in ipairs(logs) do
      if l[2]:find("inventive: method", 1, true) then
        n = n + 1
      end
    end
    -- 32 names of their own, then one line for all the others
    assert.equal(33, n)
    -- a name with a line break logs (and keys the limiter) without it
    pdk.refuse({ name = "nl", log_window = 60000 }, "os.x\n[emerg] forged")
    assert.equal("[pluginserver] nl: method 'os.x?[emerg] forged' is not part of the PDK (refused)", logs[#logs][2])
  end)
end)
