-- counters.lua and log_limiter.lua over a fake shared dict.
local stub = require "spec.helpers.ngx_stub"
local fake_dict = stub.fake_dict

describe("counters and log limiter", function()
  local counters, limiter, timers, dict

  before_each(function()
    timers = {}
    stub.capture_timers(ngx, timers)
    for i = #ngx.logs, 1, -1 do ngx.logs[i] = nil end
    package.loaded["kong.runloop.plugin_servers.counters"] = nil
    package.loaded["kong.runloop.plugin_servers.log_limiter"] = nil
    counters = require "kong.runloop.plugin_servers.counters"
    limiter = require "kong.runloop.plugin_servers.log_limiter"
    dict = fake_dict()
    ngx.shared.kong_plugin_servers = dict
  end)

  after_each(function()
    ngx.shared.kong_plugin_servers = nil
  end)

  it("adds counters per server and reports them in the status shape", function()
    counters.incr("a", "events")
    counters.incr("a", "events")
    counters.incr("a", "pdk_calls", 3)
    counters.incr("a", "errors.timeout")
    counters.incr("b", "events")
    counters.incr("a", "log_events", 2)
    counters.incr("a", "log_refused")
    counters.latency("a", 4.4)
    counters.latency("a", 10)
    counters.latency("a", 2)
    assert.same({
      events = 2, pdk_calls = 3, instance_starts = 0, fail_open = 0,
      errors = { connect = 0, timeout = 1, protocol = 0, no_instance = 0 },
      log_events = 2, log_refused = 1,
      latency_ms = { sum = 16, max = 10 },
    }, counters.get("a"))
    assert.equal(1, counters.get("b").events)
  end)

  it("answers zeros and does nothing without the dict", function()
    ngx.shared.kong_plugin_servers = nil
    counters.incr("a", "events")
    assert.equal(0, counters.get("a").events)
  end)

  it("logs the first line of a window, counts the rest and summarises them", function()
    assert.is_true(limiter.log("srv", "connect", 500, ngx.ERR, "first ", "line"))
    assert.is_false(limiter.log("srv", "connect", 500, ngx.ERR, "second"))
    assert.is_false(limiter.log("srv", "connect", 500, ngx.ERR, "third"))
    -- another cause and another server have their own windows
    assert.is_true(limiter.log("srv", "timeout", 500, ngx.ERR, "other cause"))
    assert.is_true(limiter.log("srv2", "connect", 500, ngx.ERR, "other server"))
    assert.equal(3, #ngx.logs)
    assert.equal("first line", ngx.logs[1].msg)
    assert.equal(0.5, timers[1].delay)
    timers[1].fn(false, unpack(timers[1].args))
    assert.equal(4, #ngx.logs)
    assert.equal("[pluginserver] srv: 2 more connect error(s) in the last 0.5s not logged", ngx.logs[4].msg)
    -- nothing suppressed: no summary line
    timers[2].fn(false, unpack(timers[2].args))
    assert.equal(4, #ngx.logs)
  end)

  it("logs every line without the dict", function()
    ngx.shared.kong_plugin_servers = nil
    limiter.log("srv", "connect", 500, ngx.ERR, "a")
    limiter.log("srv", "connect", 500, ngx.ERR, "b")
    assert.equal(2, #ngx.logs)
    assert.equal(0, #timers)
  end)
end)
