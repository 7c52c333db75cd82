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
    counters.event("a", "access", 4400)
    counters.event("a", "access", 10000)
    counters.event("a", "log", 2000)
    counters.incr("a", "pdk_calls", 3)
    counters.incr("a", "errors.timeout")
    counters.event("b", "rewrite", 1)
    counters.incr("a", "log_events", 2)
    counters.incr("a", "log_refused")
    local got = counters.get("a")
    assert.same({ access = 2, log = 1 }, got.events_by_phase)
    assert.equal(3, got.events)
    assert.equal(3, got.pdk_calls)
    assert.same({ connect = 0, timeout = 1, protocol = 0, no_instance = 0, refused_method = 0 }, got.errors)
    assert.equal(0, got.instance_starts)
    assert.equal(0, got.fail_open)
    assert.equal(16.4, got.latency_ms.sum)
    assert.equal(10, got.latency_ms.max)
    assert.equal(3, got.latency_ms.count)
    assert.equal(2, got.log_events)
    assert.equal(1, got.log_refused)
    assert.equal(1, counters.get("b").events)
    assert.equal(0.001, counters.get("b").latency_ms.sum) -- kept in µs, not rounded to ms
  end)

  it("counts an unknown phase as 'other'", function()
    counters.event("a", "weird", 100)
    assert.same({ other = 1 }, counters.get("a").events_by_phase)
  end)

  it("puts a latency in the first bucket whose bound is not below it, cumulative in get()", function()
    local b = counters.LATENCY_BUCKETS_MS
    assert.equal(17, #b)
    assert.equal(0.0625, b[1])
    assert.equal(0.125, b[2])
    assert.equal(4096, b[17])
    assert.equal(1, counters.bucket(0))
    assert.equal(1, counters.bucket(62))
    assert.equal(2, counters.bucket(63))
    assert.equal(2, counters.bucket(125))
    assert.equal(3, counters.bucket(126))
    assert.equal(4, counters.bucket(500))
    assert.equal(5, counters.bucket(501))
    assert.equal(5, counters.bucket(1000))
    assert.equal(17, counters.bucket(4096000))
    assert.equal(18, counters.bucket(4096001))  -- +Inf
    for _, us in ipairs({ 50, 125, 300, 999, 1000, 1001, 5000000 }) do
      counters.event("a", "access", us)
    end
    local lat = counters.get("a").latency_ms
    assert.equal(7, lat.count)
    local cum = {}
    for i, bucket in ipairs(lat.buckets) do
      assert.equal(b[i], bucket.le_ms)
      cum[i] = bucket.count
    end
    -- <=0.0625: 50; <=0.125: +125; <=0.5: +300; <=1: +999, 1000; <=2: +1001; 5 s only in +Inf
    assert.same({ 1, 2, 2, 3, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6 }, cum)
    assert.equal(5000, lat.max)
  end)

  it("falls back to Kong's `kong` dict under the prefix kps:, beside Kong's own keys", function()
    ngx.shared.kong_plugin_servers = nil
    local kong_dict = fake_dict()
    kong_dict:set("events:requests", 41)
    ngx.shared.kong = kong_dict
    counters.incr("a", "pdk_calls", 2)
    counters.event("a", "access", 500)
    assert.is_true(limiter.log("a", "connect", 500, ngx.ERR, "first"))
    assert.is_false(limiter.log("a", "connect", 500, ngx.ERR, "second"))
    for k in pairs(kong_dict.data) do
      assert.truthy(k == "events:requests" or k:find("^kps:"), k)
    end
    assert.equal(41, kong_dict.data["events:requests"])
    assert.equal(2, kong_dict.data["kps:c:a:pdk_calls"])
    assert.equal(1, kong_dict.data["kps:c:a:events.access"])
    assert.equal(1, kong_dict.data["kps:n:a:connect"])
    assert.equal(2, counters.get("a").pdk_calls)
    -- the summary timer reads the prefixed key too
    timers[1].fn(false, unpack(timers[1].args))
    assert.equal("[pluginserver] a: 1 more connect error(s) in the last 0.5s not logged", ngx.logs[2].msg)
    ngx.shared.kong = nil
  end)

  it("prefers its own dict when both exist", function()
    local kong_dict = fake_dict()
    ngx.shared.kong = kong_dict
    counters.incr("a", "pdk_calls")
    assert.is_nil(next(kong_dict.data))
    assert.equal(1, dict.data["c:a:pdk_calls"])
    ngx.shared.kong = nil
  end)

  it("answers zeros and does nothing without the dict", function()
    ngx.shared.kong_plugin_servers = nil
    counters.event("a", "access", 100)
    counters.incr("a", "pdk_calls")
    assert.equal(0, counters.get("a").events)
    assert.equal(0, counters.get("a").pdk_calls)
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
