-- metrics.lua's rendering of status() entries (the real scrape: spec/integration/metrics_spec.lua).
describe("metrics rendering", function()
  local metrics = require "kong.runloop.plugin_servers.metrics"

  local function entry(fields)
    local e = {
      name = "a", state = "ready", restarts = 0, uptime = 2.5,
      counters = {
        events = 2, events_by_phase = { access = 1, log = 1 }, pdk_calls = 3, instance_starts = 1,
        fail_open = 0, errors = { connect = 1, timeout = 0 },
        latency_ms = { sum = 1.25, max = 1, count = 2,
                       buckets = { { le_ms = 0.0625, count = 0 }, { le_ms = 1, count = 2 } } },
      },
    }
    for k, v in pairs(fields or {}) do
      e[k] = v
    end
    return e
  end

  local function lines(text)
    local set = {}
    for line in text:gmatch("[^\n]+") do
      set[line] = true
    end
    return set
  end

  it("renders every family with HELP and TYPE, and the values of status()", function()
    local text = metrics.render({ entry() })
    local l = lines(text)
    for _, line in ipairs {
      "# TYPE kong_plugin_server_state gauge",
      'kong_plugin_server_state{server="a",state="ready"} 1',
      'kong_plugin_server_state{server="a",state="backoff"} 0',
      'kong_plugin_server_uptime_seconds{server="a"} 2.5',
      'kong_plugin_server_hangs_total{server="a"} 0',
      'kong_plugin_server_promotions_total{server="a"} 0',
      'kong_plugin_server_events_total{server="a",phase="access"} 1',
      'kong_plugin_server_errors_total{server="a",cause="connect"} 1',
      'kong_plugin_server_event_duration_seconds_bucket{server="a",le="0.0000625"} 0',
      'kong_plugin_server_event_duration_seconds_bucket{server="a",le="0.001"} 2',
      'kong_plugin_server_event_duration_seconds_bucket{server="a",le="+Inf"} 2',
      'kong_plugin_server_event_duration_seconds_sum{server="a"} 0.00125',
      'kong_plugin_server_event_duration_seconds_count{server="a"} 2',
    } do
      assert.truthy(l[line], line)
    end
    assert.equal("\n", text:sub(-1))
    -- every family has one HELP and one TYPE line
    local help, type_ = 0, 0
    for line in text:gmatch("[^\n]+") do
      if line:find("^# HELP ") then help = help + 1 end
      if line:find("^# TYPE ") then type_ = type_ + 1 end
    end
    assert.equal(help, type_)
    assert.equal(12, type_)
  end)

  it("takes hangs when status() has them, an unknown state, and counters added later", function()
    local e = entry({ state = "hung", hangs = 3 })
    e.counters.refused_method = 5
    e.counters["not a name"] = 1
    local l = lines(metrics.render({ e }))
    assert.truthy(l['kong_plugin_server_state{server="a",state="hung"} 1'])
    assert.truthy(l['kong_plugin_server_state{server="a",state="ready"} 0'])
    assert.truthy(l['kong_plugin_server_hangs_total{server="a"} 3'])
    assert.truthy(l["# TYPE kong_plugin_server_refused_method_total counter"])
    assert.truthy(l['kong_plugin_server_refused_method_total{server="a"} 5'])
    for line in pairs(l) do
      assert.is_nil(line:find("not a name", 1, true))
    end
  end)

  it("gives hung a 0/1 line like every other state, and an unknown state a line of its own", function()
    local l = lines(metrics.render({ entry() }))
    assert.truthy(l['kong_plugin_server_state{server="a",state="hung"} 0'])
    l = lines(metrics.render({ entry({ state = "hung" }) }))
    assert.truthy(l['kong_plugin_server_state{server="a",state="hung"} 1'])
    assert.truthy(l['kong_plugin_server_state{server="a",state="external"} 0'])
    local hung = 0
    for line in pairs(l) do
      if line:find('state="hung"', 1, true) then hung = hung + 1 end
    end
    assert.equal(1, hung)
    l = lines(metrics.render({ entry({ state = "odd" }) }))
    assert.truthy(l['kong_plugin_server_state{server="a",state="odd"} 1'])
    assert.truthy(l['kong_plugin_server_state{server="a",state="hung"} 0'])
  end)

  it("escapes label values", function()
    local text = metrics.render({ entry({ name = 'x"y\\z' }) })
    assert.truthy(text:find('server="x\\"y\\\\z"', 1, true))
  end)

  it("renders no samples but every family for no servers", function()
    local text = metrics.render({})
    assert.is_nil(text:find("\nkong_plugin_server_", 1, true))
    assert.truthy(text:find("# TYPE kong_plugin_server_restarts_total counter", 1, true))
  end)
end)
