-- plugin.lua's log phase under a slow or restarting server: at most 128 log events
-- in flight per worker (each is a timer; past lua_max_running_timers nginx would
-- drop them with an alert line each); the rest fail at once, logged and counted.
local stub = require "spec.helpers.ngx_stub"

describe("log events in flight", function()
  local saved_ngx, saved_kong = _G.ngx, _G.kong
  local plugin, timers, ngx

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 10, max_message_size = 1000, log_window = 0, fail_open = false }

  setup(function()
    ngx = stub.new()
    timers = {}
    ngx.timer.at = function(_, fn, ...)
      timers[#timers + 1] = { fn = fn, args = { ... } }
      return true
    end
    ngx.socket = { tcp = function() end }
    ngx.ctx = {}
    ngx.config.subsystem = "stream"
    ngx.shared.kong_plugin_servers = nil
    _G.ngx = ngx
    _G.kong = { log = { serialize = function() return {} end }, ctx = { shared = {} } }
    for k in pairs(package.loaded) do
      if k:find("^kong%.runloop%.plugin_servers%.") and k ~= "kong.runloop.plugin_servers.lib" then
        package.loaded[k] = nil
      end
    end
    plugin = require "kong.runloop.plugin_servers.plugin"
  end)

  teardown(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    for k in pairs(package.loaded) do
      if k:find("^kong%.runloop%.plugin_servers%.") and k ~= "kong.runloop.plugin_servers.lib" then
        package.loaded[k] = nil
      end
    end
  end)

  it("starts at most 128 at once and fails the others with a logged error", function()
    local p = assert(plugin.new { name = "p", PRIORITY = 1, VERSION = "1", schema = {}, phases = { "log" },
                                  protocol = "MsgPack:1", server_def = def })
    local ran = 0
    p.run_event = function() ran = ran + 1 return true end
    local conf = { __plugin_id = "x", __seq__ = 1 }
    for _ = 1, 130 do
      p:log(conf)
    end
    assert.equal(128, #timers)
    local failures = 0
    for _, l in ipairs(ngx.logs) do
      if l.msg:find("plugin p failed in log (timeout): 128 log events already in flight", 1, true) then
        failures = failures + 1
      end
    end
    assert.equal(2, failures)
    -- one finishes: the next log event gets its timer
    local t = table.remove(timers, 1)
    t.fn(false, unpack(t.args))
    assert.equal(1, ran)
    p:log(conf)
    assert.equal(128, #timers)
    p:log(conf)
    assert.equal(128, #timers)
    -- a premature run (nginx exiting) frees its place too, and is logged as a failure
    t = table.remove(timers, 1)
    t.fn(true, unpack(t.args))
    assert.equal(1, ran)
    assert.matches("failed in log %(connect%): nginx is exiting", ngx.logs[#ngx.logs].msg)
    p:log(conf)
    assert.equal(128, #timers)
  end)
end)
