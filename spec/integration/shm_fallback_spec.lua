-- The shim's shared state without a kong.conf line of its own:
-- a host that declares only Kong's `kong` dict (what Kong's nginx template always
-- declares) keeps status, readiness, counters and the log limiter working across
-- two workers, under keys "kps:*" beside Kong's own; a host with neither dict gets
-- the one clear error and keeps serving. Real nginx, real go-pdk and kong-pdk servers.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local fx = fixtures.new(nginx.root)

fx.require_built({ "go-hello", "py-hello" })

local MISSING = "shared dict 'kong_plugin_servers' not found; add "
  .. "'nginx_http_lua_shared_dict = kong_plugin_servers 1m' to kong.conf"

describe("shared state without the kong_plugin_servers dict", function()
  local h, prefix

  local function start(dicts, extra)
    local settings = fx.settings({ "go-hello", "py-hello" }, prefix)
    for k, v in pairs(extra or {}) do
      settings[k] = v
    end
    h = assert(nginx.start {
      prefix = prefix, workers = 2, dicts = dicts, worker_header = true, configuration = settings,
      plugins = fx.hello_plugins({ "go-hello", "py-hello" }, "Kong"),
    })
  end

  local function by_name(list)
    local out = {}
    for _, s in ipairs(list) do
      out[s.name] = s
    end
    return out
  end

  -- Runs `code` by eval until both workers have answered; returns { [worker] = result }.
  local function from_both_workers(code)
    local seen = {}
    nginx.wait_until(function()
      local r = h:eval_json("local v = (function() " .. code .. " end)() "
        .. "return { worker = ngx.worker.id(), value = v }")
      if type(r) == "table" and r.worker then
        seen[r.worker] = r.value
      end
      return seen[0] ~= nil and seen[1] ~= nil
    end, 10, 0.01)
    return seen
  end

  -- `n` requests in concurrent bursts of 8 (curl); returns the responses' lines
  -- "<status> <worker> <x-hello-from-python>".
  local function burst(n)
    local lines = {}
    while #lines < n do
      local out = assert(io.popen(("for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -H 'Host: w.test' -w "
        .. "'%%{http_code} %%header{x-kps-host-worker} %%header{x-hello-from-python}\\n' "
        .. "http://127.0.0.1:%d/ & done; wait"):format(h.port)))
      for line in out:lines() do
        if #lines < n then
          lines[#lines + 1] = line
        end
      end
      out:close()
    end
    return lines
  end

  before_each(function()
    prefix = nginx.make_prefix()
  end)

  after_each(function()
    h = nginx.stop_host(h, { "crit", "alert" })
  end)

  it("uses Kong's `kong` dict under kps:* for status, readiness, counters and the log limiter, across 2 workers", function()
    start({ kong = "5m" }, {
      pluginserver_py_hello_respawn_delay = "3000", pluginserver_py_hello_ready_timeout = "100",
      pluginserver_py_hello_log_window = "5000",
    })
    -- a key of Kong's own, as Kong's init sets it
    assert(h:eval([[ngx.shared.kong:set("kong:node_id", "node-1") return "ok"]]))
    -- the notice line names the dict used and its size per server
    assert(h:wait_log("%[notice%].*plugin server state in Kong's shared dict 'kong' under keys 'kps:%*' "
      .. "%(no 'kong_plugin_servers' dict declared%): up to %d+ bytes per server, %d+ bytes for 2 server%(s%)", 5))
    assert.equal(0, h:count_log("not found; add"))
    -- readiness reaches both workers through the dict
    assert(nginx.wait_until(function()
      return h:all_ready()
    end, 15), (h:error_log() or ""):sub(-3000))

    -- traffic until both workers have run the plugins
    local per_worker, total = { ["0"] = 0, ["1"] = 0 }, 0
    nginx.wait_until(function()
      for _, line in ipairs(burst(8)) do
        local code, worker, hello = line:match("^(%d+) (%d) (.*)$")
        assert.equal("200", code, line .. "\n" .. (h:error_log() or ""):sub(-3000))
        assert.equal("Python says Kong to w.test", hello)
        per_worker[worker] = per_worker[worker] + 1
        total = total + 1
      end
      return per_worker["0"] >= 2 and per_worker["1"] >= 2
    end, 30, 0)
    assert.is_true(per_worker["0"] >= 2 and per_worker["1"] >= 2, "both workers served requests")

    -- counters of both workers, summed, read alike from either worker (go-hello's log
    -- events run after the response: wait for them)
    local seen
    assert(nginx.wait_until(function()
      seen = from_both_workers("return require('kong.runloop.plugin_servers').status()")
      local a, b = by_name(seen[0] or {}), by_name(seen[1] or {})
      return a["go-hello"] and a["go-hello"].counters.events == 3 * total
        and b["go-hello"] and b["go-hello"].counters.events == 3 * total
    end, 10), "go-hello events: 3 per request")
    local st0, st1 = by_name(seen[0]), by_name(seen[1])
    assert.equal(total, st0["py-hello"].counters.events)
    assert.same(st0["py-hello"].counters, st1["py-hello"].counters)
    assert.same({ access = total, response = total, log = total }, st0["go-hello"].counters.events_by_phase)
    assert.equal(3 * total, st0["go-hello"].counters.latency_ms.count)
    -- one instance per worker and plugin at most
    assert.is_true(st0["py-hello"].counters.instance_starts <= 2)

    -- the log limiter spans the workers: py-hello down, every request fails, one line
    assert(h:kill_into_backoff("py-hello"))
    local failed_in = {}
    local n = 0
    nginx.wait_until(function()
      for _, line in ipairs(burst(8)) do
        local code, worker = line:match("^(%d+) (%d)")
        assert.equal("500", code, line)
        failed_in[worker] = true
        n = n + 1
      end
      return failed_in["0"] and failed_in["1"]
    end, 4, 0)
    assert.is_true(failed_in["0"] and failed_in["1"], "both workers saw the failure")
    assert.equal(1, h:count_log("plugin py%-hello failed in access"))
    assert(h:wait_log("py%-hello: " .. (n - 1) .. " more connect error%(s%) in the last 5s not logged", 8))
    assert.equal(n, by_name(h:status_list())["py-hello"].counters.errors.connect)

    -- every key of ours in `kong` is under kps:, and Kong's key is untouched
    local keys = h:eval_json([[return ngx.shared.kong:get_keys(0)]])
    local ours = 0
    for _, k in ipairs(keys) do
      if k ~= "kong:node_id" then
        assert.matches("^kps:", k)
        ours = ours + 1
      end
    end
    assert.is_true(ours > 10)
    assert.equal("node-1", h:eval([[return ngx.shared.kong:get("kong:node_id")]]))
  end)

  it("with neither dict: one clear error, status() and metrics() fail with it, requests still served", function()
    start({}, {})
    assert(h:wait_log("%[error%].*%[pluginserver%] " .. MISSING:gsub("[%p]", "%%%0"), 5))
    assert.equal(1, h:count_log("not found; add"))
    local r = h:eval_json([[
      local ps = require("kong.runloop.plugin_servers")
      local l, e = ps.status()
      local m, me = ps.metrics()
      return { status = l or false, err = e, metrics = m or false, metrics_err = me }
    ]])
    assert.is_false(r.status)
    assert.equal(MISSING, r.err)
    assert.is_false(r.metrics)
    assert.equal(MISSING, r.metrics_err)
    -- the supervisor runs without the dict (nginx logs a [crit] line for every connect
    -- to a socket not there yet: wait for both servers first)
    assert(h:wait_log("pluginserver '[%w-]+' is ready, pid", 15, 2))
    -- without shared state the shim polls the sockets: the plugins still answer
    local ok_lines = 0
    assert(nginx.wait_until(function()
      for _, line in ipairs(burst(4)) do
        if line:match("^200 %d Python says Kong to w.test$") then
          ok_lines = ok_lines + 1
        end
      end
      return ok_lines >= 4
    end, 15), (h:error_log() or ""):sub(-3000))
    local res = assert(h:request { path = "/plugin-servers/metrics" })
    assert.equal(503, res.status)
    assert.equal(MISSING .. "\n", res.body)
    -- no worker crashed
    assert.equal(0, h:count_log("exited on signal"))
  end)

  -- Kong's init empties the `kong` dict on every reload: the shim's state goes with it,
  -- including the pids the new supervisor would wait for (docs/SETTINGS.md). With the
  -- real servers, requests during the reload still succeed.
  it("through a reload that empties the kong dict (as Kong's init does), requests keep succeeding", function()
    local settings = fx.settings({ "go-hello", "py-hello" }, prefix)
    h = assert(nginx.start {
      prefix = prefix, workers = 2, dicts = { kong = "5m" }, kong_reset = true, configuration = settings,
      plugins = fx.hello_plugins({ "go-hello", "py-hello" }, "Kong"),
    })
    local function ready()
      return h:all_ready()
    end
    local before = assert(nginx.wait_until(ready, 15), (h:error_log() or ""):sub(-3000))
    assert.equal(200, assert(h:request { headers = { host = "r.test" } }).status)
    assert(h:reload())
    local codes, n = {}, 0
    local t0 = nginx.now()
    while nginx.now() - t0 < 3 do
      local res = h:request { headers = { host = "r.test" } }
      local code = res and res.status or "none"
      codes[code] = (codes[code] or 0) + 1
      n = n + 1
      nginx.sleep(0.02)
    end
    assert.same({ [200] = n }, codes)
    local after = assert(nginx.wait_until(function()
      local st = ready()
      return st and st[1].pid ~= before[1].pid and st[2].pid ~= before[2].pid and st
    end, 10))
    -- the state was emptied: counters start over, and nothing told the new supervisor
    -- about the old servers
    assert.equal(0, after[1].restarts)
    assert.equal(0, h:count_log("waiting for the previous pluginserver"))
    -- the old generation still ends (the old worker stops it)
    assert(nginx.wait_until(function()
      return not procs.alive(before[1].pid) and not procs.alive(before[2].pid)
    end, 8))
  end)

  -- What docs/SETTINGS.md tells an operator to size the dict by, against nginx's slab
  -- allocator: every key a server can have, for many servers, in the `kong` dict.
  it("a server's keys take no more of the dict than bytes_per_server says", function()
    h = assert(nginx.start { prefix = prefix, workers = 1, dicts = { kong = "5m" },
                             configuration = { pluginserver_names = {} }, plugins = {} })
    local r = assert(h:eval_json([[
      local counters = require "kong.runloop.plugin_servers.counters"
      local state = require "kong.runloop.plugin_servers.state"
      local limiter = require "kong.runloop.plugin_servers.log_limiter"
      local shm = require "kong.runloop.plugin_servers.shm"
      local d = ngx.shared.kong
      local M = 100 -- the limiter's timers stay below nginx's 1024 pending
      local out = {}
      for _, fmt in ipairs({ "srv-%06d", "a-rather-long-plugin-server-name-%07d" }) do
        d:flush_all()
        d:flush_expired(0)
        local free, nkeys = d:free_space(), #d:get_keys(0)
        for i = 1, M do
          local name = string.format(fmt, i)
          for _, ph in ipairs(counters.PHASES) do counters.event(name, ph, 100) end
          for b = 1, #counters.LATENCY_BUCKETS_MS + 1 do
            counters.event(name, "access", 125 * 2 ^ (b - 1) - 1)
          end
          for _, c in ipairs({ "pdk_calls", "instance_starts", "fail_open", "log_events", "log_refused" }) do
            counters.incr(name, c, 1)
          end
          for _, cause in ipairs(counters.ERROR_CAUSES) do
            counters.incr(name, "errors." .. cause, 1)
          end
          state.set(name, { state = "ready", pid = 4194304, restarts = 12, last_exit = { signal = 9 },
                            started_at = 1764766000.123, since = 1764766000.456 })
          state.refused(name, 4194304)
          for _, cause in ipairs(counters.ERROR_CAUSES) do
            limiter.log(name, cause, 60000, ngx.DEBUG, "first")
            limiter.log(name, cause, 60000, ngx.DEBUG, "counted")
          end
        end
        out[#out + 1] = { name = string.format(fmt, 1), keys = (#d:get_keys(0) - nkeys) / M,
                          used = (free - d:free_space()) / M,
                          promised = shm.bytes_per_server(string.format(fmt, 1), "kps:"),
                          expected = shm.KEYS_PER_SERVER }
      end
      d:flush_all()
      return out
    ]]))
    for _, m in ipairs(r) do
      -- KEYS_PER_SERVER keys (one less if a refused mark's 0.2 s ttl ran out while the loop ran)
      assert.is_true(m.keys >= m.expected - 1 and m.keys <= m.expected, m.name .. ": " .. m.keys)
      assert.is_true(m.used > 0 and m.used <= m.promised, m.name .. ": " .. m.used .. " > " .. m.promised)
      -- and not a wild overestimate
      assert.is_true(m.used >= m.promised * 0.8, m.name .. ": " .. m.used .. " vs " .. m.promised)
    end
  end)
end)
