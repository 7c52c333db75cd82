-- metrics(): a real scrape of fixtures/host/metrics.conf's location
-- after traffic, a restart and errors passes `promtool check metrics`, and every
-- value matches status() read in the same request. Real nginx, real go-pdk and
-- kong-pdk servers, the Rust supervisor.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local fx = fixtures.new(nginx.root)

fx.require_built({ "go-hello", "py-hello" })

-- metrics() and status() in one request: the two read the same instant
local BOTH = [[
  local ps = require("kong.runloop.plugin_servers")
  return { text = ps.metrics(), status = ps.status() }
]]

-- { ["name{labels}"] = value } and the families' TYPE lines, from an exposition.
local function parse(text)
  local samples, types = {}, {}
  for line in text:gmatch("[^\n]+") do
    local fam, kind = line:match("^# TYPE (%S+) (%S+)$")
    if fam then
      types[fam] = kind
    elseif not line:find("^#") then
      local series, value = line:match("^(%S+) (%S+)$")
      assert(series, "bad sample line: " .. line)
      samples[series] = tonumber(value)
    end
  end
  return samples, types
end

local function promtool(text, dir)
  local path = dir .. "/scrape.prom"
  procs.write_file(path, text)
  local p = assert(io.popen("promtool check metrics < '" .. path .. "' 2>&1; echo \"exit $?\""))
  local out = p:read("*a")
  p:close()
  return out
end

describe("metrics()", function()
  local h, prefix

  before_each(function()
    prefix = nginx.make_prefix()
  end)

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("a scrape after traffic, a restart and errors passes promtool and matches status()", function()
    local settings = fx.settings({ "go-hello", "py-hello" }, prefix)
    -- exact restart counts below: no standby (auto may give Python one at a slow start)
    settings.pluginserver_py_hello_standby = "off"
    settings.pluginserver_py_hello_respawn_delay = "1500"
    settings.pluginserver_py_hello_ready_timeout = "50"
    h = assert(nginx.start {
      prefix = prefix, workers = 2, configuration = settings,
      plugins = fx.hello_plugins({ "go-hello", "py-hello" }, "Kong"),
    })
    local function ready()
      return h:all_ready()
    end
    assert(nginx.wait_until(ready, 15), (h:error_log() or ""):sub(-3000))

    -- traffic
    for _ = 1, 6 do
      assert.equal(200, assert(h:request { headers = { host = "m.test" } }).status)
    end
    -- errors and restarts: py-hello killed twice (the first exit is respawned at
    -- once); requests fail while it waits 1.5 s
    assert(h:kill_into_backoff("py-hello"))
    for _ = 1, 3 do
      assert.equal(500, assert(h:request { headers = { host = "m.test" } }).status)
    end
    assert(nginx.wait_until(ready, 10))
    for _ = 1, 2 do
      assert.equal(200, assert(h:request { headers = { host = "m.test" } }).status)
    end
    -- go-hello's log events run after the responses (11 requests: 11 log events)
    assert(nginx.wait_until(function()
      return h:status_list()[1].counters.events_by_phase.log == 11
    end, 5))

    -- a real scrape through the location an operator includes
    local res = assert(h:request { path = "/plugin-servers/metrics" })
    assert.equal(200, res.status)
    assert.equal("text/plain; version=0.0.4; charset=utf-8", res.headers["content-type"])
    assert.equal("exit 0\n", promtool(res.body, prefix))
    -- the check can fail: the same scrape without its HELP lines does not pass
    local stripped = res.body:gsub("# HELP [^\n]*\n", "")
    assert.matches("no help text", promtool(stripped, prefix))

    -- values against status(), read in the same request
    local both = assert(h:eval_json(BOTH))
    assert.equal("exit 0\n", promtool(both.text, prefix))
    local m, types = parse(both.text)
    for _, fam in ipairs({ "state", "uptime_seconds", "event_duration_max_seconds" }) do
      assert.equal("gauge", types["kong_plugin_server_" .. fam])
    end
    for _, fam in ipairs({ "restarts", "hangs", "events", "pdk_calls", "errors", "fail_open_skips",
                           "instance_starts" }) do
      assert.equal("counter", types["kong_plugin_server_" .. fam .. "_total"])
    end
    assert.equal("histogram", types.kong_plugin_server_event_duration_seconds)

    for _, s in ipairs(both.status) do
      local c = s.counters
      local function v(name, labels)
        local key = "kong_plugin_server_" .. name .. '{server="' .. s.name .. '"' .. (labels or "") .. "}"
        local value = m[key]
        assert(value, "missing " .. key)
        return value
      end
      assert.equal(1, v("state", ',state="ready"'))
      for _, other in ipairs({ "starting", "backoff", "failed", "stopped", "external" }) do
        assert.equal(0, v("state", ',state="' .. other .. '"'))
      end
      assert.equal(s.restarts, v("restarts_total"))
      assert.equal(s.hangs or 0, v("hangs_total"))
      local events = 0
      for phase, n in pairs(c.events_by_phase) do
        assert.equal(n, v("events_total", ',phase="' .. phase .. '"'))
        events = events + n
      end
      assert.equal(c.events, events)
      assert.equal(c.pdk_calls, v("pdk_calls_total"))
      for cause, n in pairs(c.errors) do
        assert.equal(n, v("errors_total", ',cause="' .. cause .. '"'))
      end
      assert.equal(c.fail_open, v("fail_open_skips_total"))
      assert.equal(c.instance_starts, v("instance_starts_total"))
      -- histogram: cumulative, ending at the count, which is every event timed
      local prev = 0
      for _, b in ipairs(c.latency_ms.buckets) do
        local le = string.format("%.7f", b.le_ms / 1000):gsub("0+$", ""):gsub("%.$", "")
        local n = v("event_duration_seconds_bucket", ',le="' .. le .. '"')
        assert.equal(b.count, n)
        assert.is_true(n >= prev)
        prev = n
      end
      assert.equal(c.latency_ms.count, v("event_duration_seconds_bucket", ',le="+Inf"'))
      assert.equal(c.latency_ms.count, v("event_duration_seconds_count"))
      assert.equal(c.events, c.latency_ms.count)
      assert.near(c.latency_ms.sum / 1000, v("event_duration_seconds_sum"), 1e-6)
      assert.near(c.latency_ms.max / 1000, v("event_duration_max_seconds"), 1e-6)
    end

    -- what happened shows: 11 requests; py-hello (first in access): 2 restarts, 3
    -- connect errors, which end their requests before go-hello's access phase
    local go, py = both.status[1], both.status[2]
    assert.equal("go-hello", go.name)
    assert.equal(8, m['kong_plugin_server_events_total{server="go-hello",phase="access"}'])
    assert.equal(11, m['kong_plugin_server_events_total{server="go-hello",phase="log"}'])
    assert.equal(2, m['kong_plugin_server_restarts_total{server="py-hello"}'])
    assert.equal(3, m['kong_plugin_server_errors_total{server="py-hello",cause="connect"}'])
    assert.equal(11, m['kong_plugin_server_event_duration_seconds_count{server="py-hello"}'])
    assert.is_true(m['kong_plugin_server_pdk_calls_total{server="go-hello"}'] >= 11)
    assert.is_true(py.counters.instance_starts >= 2)
  end)
end)
