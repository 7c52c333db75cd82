-- The warm standby (pluginserver_<k>_standby), with real nginx (2 workers), the
-- real hello servers and wrk as the steady load (4 connections):
-- - js-hello with standby = on keeps a standby; a SIGKILL under load costs no
--   request and the standby serves at once (not with the default `auto`: whether
--   auto keeps one depends on how fast node starts on the machine, under 250 ms
--   on an idle one; auto's rule is tested in tests/process_standby.rs);
-- - py-hello with standby = on is promoted the same way;
-- - a reload stops the standby with its server (nothing left behind);
-- - standby = off keeps the respawn;
-- - standby = on for go-hello (go-pdk cannot be told another socket) is a
--   configuration error naming the setting.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local under_load = require("spec.helpers.wrk").under_load

local fx = fixtures.new(nginx.root)
fx.require_built { "js-hello", "py-hello" }

-- The response header carrying the pid of the server that ran the plugin.
local PID_HEADER = { ["js-hello"] = "x-javascript-pid", ["py-hello"] = "x-python-pid" }

local function key(name)
  return "pluginserver_" .. name:gsub("-", "_") .. "_"
end

describe("warm standby", function()
  local h, prefix

  local function log_tail()
    return (h and h:error_log() or ""):sub(-4000)
  end

  local function start(name, extra, wait)
    local settings = fx.settings({ name }, prefix)
    for k, v in pairs(extra or {}) do
      settings[key(name) .. k] = v
    end
    h = assert(nginx.start {
      prefix = prefix, workers = 2, configuration = settings, log_level = "notice",
      plugins = { { name = name, config = { message = "Kong" } } },
    })
    if wait ~= false then
      assert(h:wait_state(name, "ready", 20), name .. " not ready:\n" .. log_tail())
    end
  end

  -- The status() entry once the standby is ready (and other than `not_pid`).
  local function standby_ready(name, not_pid)
    return assert(nginx.wait_until(function()
      local s = h:server_status(name)
      return s and s.state == "ready" and s.standby == "ready" and s.standby_pid ~= not_pid and s
    end, 20), name .. ": no ready standby:\n" .. log_tail())
  end

  local function get()
    return assert(h:request { headers = { host = "standby.test" } })
  end

  before_each(function()
    prefix = nginx.make_prefix()
  end)

  after_each(function()
    if h then
      assert.equal(0, h:count_log("%[crit%]"), "no [crit] lines:\n" .. log_tail())
      h:stop()
      h = nil
    end
  end)

  local function promoted_under_load(name, extra)
    start(name, extra)
    for _ = 1, 20 do
      assert.equal(200, get().status, log_tail())
    end
    local before = standby_ready(name)
    assert.not_equal(before.pid, before.standby_pid)
    local first
    local load = under_load(h, 4, 1.5, function()
      assert(procs.kill(before.pid, "KILL"))
      -- the first response after the kill comes from the promoted standby
      first = get()
    end)
    assert.equal(200, first.status, log_tail())
    assert.equal(tostring(before.standby_pid), first.headers[PID_HEADER[name]], log_tail())
    assert.is_true((load.requests or 0) > 100, load.out)
    assert.equal(0, load.non2xx, load.out .. "\n" .. log_tail())
    assert.is_nil(load.socket_errors, load.out)
    local after = standby_ready(name, before.standby_pid)
    assert.equal(before.standby_pid, after.pid)
    assert.equal(before.promotions + 1, after.promotions)
    assert.equal(before.restarts + 1, after.restarts)
    assert.is_false(procs.alive(before.pid))
    -- no respawn: the standby took over
    assert.equal(0, h:count_log("respawning pluginserver"), log_tail())
    assert.equal(1, h:count_log("promoted the standby of pluginserver '" .. name:gsub("%-", "%%-") .. "', pid "
      .. before.standby_pid), log_tail())
    assert.equal(0, after.counters.errors.connect + after.counters.errors.timeout
      + after.counters.errors.protocol)
    -- the instances lost with the dead server were re-created on the standby
    assert.is_true(after.counters.instance_starts > before.counters.instance_starts)
    local metrics = h:eval [[return require("kong.runloop.plugin_servers").metrics()]]
    assert.truthy(tostring(metrics):find('kong_plugin_server_promotions_total{server="' .. name .. '"} 1', 1, true),
      tostring(metrics))
  end

  it("js-hello (standby = on): a SIGKILL under load is served by the standby at once", function()
    promoted_under_load("js-hello", { standby = "on" })
  end)

  it("py-hello (standby = on): a SIGKILL under load is served by the standby at once", function()
    promoted_under_load("py-hello", { standby = "on" })
  end)

  it("a reload stops the standby with its server and the new generation starts its own", function()
    start("js-hello", { standby = "on" })
    local old = standby_ready("js-hello")
    assert(h:reload(20))
    local new = standby_ready("js-hello", old.standby_pid)
    assert.not_equal(old.pid, new.pid)
    assert(nginx.wait_until(function()
      return not procs.alive(old.pid) and not procs.alive(old.standby_pid)
    end, 10), "the previous generation's server and standby are gone")
    assert.equal(200, get().status, log_tail())
    h:stop()
    assert.same({}, h:leftovers())
    assert.is_nil(io.open(prefix .. "/js-hello.socket.standby"), "no standby socket left")
    h = nil
  end)

  it("standby = off keeps the respawn", function()
    start("js-hello", { standby = "off" })
    local before = assert(h:server_status("js-hello"))
    assert.equal("off", before.standby)
    assert.is_nil(before.standby_pid)
    assert(procs.kill(before.pid, "KILL"))
    assert(h:wait_log("respawning pluginserver 'js%-hello' at once", 5), log_tail())
    local after = assert(nginx.wait_until(function()
      local s = h:server_status("js-hello")
      return s and s.state == "ready" and s.pid ~= before.pid and s
    end, 10))
    assert.equal(0, after.promotions)
    assert.equal(0, h:count_log("standby pluginserver process"), log_tail())
    assert.equal(200, get().status)
  end)

  it("standby = on for go-hello is a configuration error naming the setting", function()
    if not fx.available("go-hello") then
      pending("go-hello is not built")
      return
    end
    start("go-hello", { standby = "on" }, false)
    local line = h:wait_log("pluginserver_go_hello_standby %(pluginserver go%-hello%): on, but start_cmd", 10)
    assert.truthy(line, log_tail())
    assert.equal(0, h:count_log("starting pluginserver process for go%-hello"), log_tail())
  end)
end)
