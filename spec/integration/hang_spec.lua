-- Hung plugin servers and single crashes, with real nginx (2 workers),
-- the real hello servers and wrk as the steady load (4 connections):
-- - a single SIGKILL under load costs no request with the default settings (the
--   first exit is respawned at once, ready_timeout covers the restart; a server
--   with a warm standby hands over to it);
-- - a server that answers nothing (SIGSTOP, a stand-in that never answers) is
--   killed after hang_timeout and replaced; one that is slow on one event while
--   answering others is not; hang_timeout = 0 leaves a stopped server alone;
-- - an external server that answers nothing is marked `hung` (its events fail at
--   once) and recovers when it answers again;
-- - a managed server whose socket file is removed is replaced after hang_timeout;
-- - kps-helper killed under load: a new helper, new servers, nothing orphaned.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local under_load = require("spec.helpers.wrk").under_load

local fx = fixtures.new(nginx.root)
local ROOT = nginx.root
local PY = ROOT .. "/build/venv/bin/python3"

local HELLO = {}
for _, name in ipairs { "go-hello", "py-hello", "js-hello" } do
  if fx.available(name) then
    HELLO[#HELLO + 1] = name
  end
end

-- A kong-pdk (Python) plugin whose access phase sleeps for the seconds in the
-- X-Sleep header: one slow event while the server answers everything else.
local SLOW_PLUGIN = [[
import time
from kong_pdk.cli import start_dedicated_server

class Plugin(object):
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        secs, err = kong.request.get_header("x-sleep")
        if secs:
            time.sleep(float(secs))
        kong.response.set_header("x-slow", "done")

if __name__ == "__main__":
    start_dedicated_server("py-slow", Plugin, "0.1.0", 10, ({},))
]]

local function key(name)
  return "pluginserver_" .. name:gsub("-", "_") .. "_"
end

local function wait_status(h, name, pred, timeout)
  return nginx.wait_until(function()
    local s = h:server_status(name)
    return s and pred(s) and s
  end, timeout or 10)
end

local function get(h, host)
  return assert(h:request { headers = { host = host or "hang.test" } })
end

local function log_tail(h)
  return (h:error_log() or ""):sub(-4000)
end

describe("hung plugin servers and single crashes", function()
  local h, prefix
  local extra_pids = {}

  local function start(names, conf, opts)
    opts = opts or {}
    local settings = #names > 0 and fx.settings(names, prefix) or { prefix = prefix }
    for k, v in pairs(conf or {}) do
      -- false: the setting is removed (an external server has no start_cmd)
      settings[k] = v or nil
    end
    local plugins = {}
    for _, name in ipairs(opts.plugins or names) do
      plugins[#plugins + 1] = { name = name, config = { message = "Kong" } }
    end
    h = assert(nginx.start {
      prefix = prefix, workers = opts.workers or 2, configuration = settings, plugins = plugins,
      log_level = "notice",
    })
    for _, name in ipairs(opts.servers or names) do
      assert(wait_status(h, name, function(s) return s.state == "ready" or s.state == "external" end, 20),
        name .. " not ready:\n" .. log_tail(h))
    end
  end

  local function warm_up(n)
    for _ = 1, n or 20 do
      local res = get(h)
      assert.equal(200, res.status, log_tail(h))
    end
  end

  before_each(function()
    prefix = nginx.make_prefix()
  end)

  after_each(function()
    for _, pid in ipairs(extra_pids) do
      procs.kill(pid, "KILL")
    end
    extra_pids = {}
    h = nginx.stop_host(h, { "crit" })
  end)

  for _, name in ipairs(HELLO) do
    it(name .. ": a single SIGKILL under load costs no request (default settings)", function()
      start({ name })
      warm_up()
      -- a standby (auto) is either ready or not kept at all
      local before = assert(wait_status(h, name, function(s) return s.standby ~= "starting" end, 20))
      local load = under_load(h, 4, 1.5, function()
        assert(procs.kill(before.pid, "KILL"))
      end)
      assert.is_true((load.requests or 0) > 100, load.out)
      assert.equal(0, load.non2xx, load.out .. "\n" .. log_tail(h))
      assert.is_nil(load.socket_errors, load.out)
      local after = assert(wait_status(h, name, function(s) return s.state == "ready" end))
      assert.not_equal(before.pid, after.pid)
      assert.equal(before.restarts + 1, after.restarts)
      if before.standby == "ready" then
        -- a slow starter (node) keeps a warm standby by default: it takes over
        -- (spec/integration/standby_spec.lua)
        assert.equal(before.standby_pid, after.pid)
        assert.equal(1, after.promotions)
      else
        assert.equal(1, h:count_log("respawning pluginserver '" .. name:gsub("%-", "%%-") .. "' at once"))
      end
      assert.equal(0, after.counters.errors.connect + after.counters.errors.timeout
        + after.counters.errors.protocol)
    end)
  end

  it("a stopped server (SIGSTOP) under load is killed after hang_timeout and replaced", function()
    local HANG = 2000
    start({ "py-hello" }, { [key("py-hello") .. "hang_timeout"] = tostring(HANG) })
    warm_up()
    local before = assert(h:server_status("py-hello"))
    local stopped_at
    local load = under_load(h, 6, 1, function()
      stopped_at = nginx.now()
      assert(procs.kill(before.pid, "STOP"))
    end)
    local line = assert(h:wait_log("pluginserver 'py%-hello', pid " .. before.pid
      .. ", hung: no answer for %d+ ms with %d+ connections open; killing it", 5), log_tail(h))
    assert.equal(1, h:count_log("%[error%].*hung: no answer"), line)
    local after = assert(wait_status(h, "py-hello", function(s) return s.state == "ready" and s.pid ~= before.pid end))
    assert.is_false(procs.alive(before.pid), "the stopped process is gone")
    assert.equal(1, after.hangs)
    local entry = h:eval_json [[return require("kong.runloop.plugin_servers.state").get("py-hello")]]
    local to_ready = entry.since - stopped_at
    assert.is_true(to_ready >= HANG / 1000 * 0.8 and to_ready < HANG / 1000 + 2,
      "stop -> new server ready took " .. to_ready)
    -- nobody waited for read_timeout (60 s): every request ended within the bound
    assert.is_true(load.max_latency and load.max_latency < HANG / 1000 + 2, load.out)
    assert.is_nil(load.socket_errors, load.out)
    assert.equal(200, get(h).status)
  end)

  it("a stand-in that accepts and never answers is killed after hang_timeout and replaced", function()
    local script = ROOT .. "/fixtures/servers/mp_fault.py"
    local sock = prefix .. "/mute.socket"
    start({}, {
      pluginserver_names = { "mute" },
      pluginserver_mute_socket = sock,
      pluginserver_mute_start_cmd = PY .. " -u " .. script .. " " .. sock .. " --name mute --mute",
      pluginserver_mute_query_cmd = PY .. " " .. script .. " --dump --name mute",
      pluginserver_mute_hang_timeout = "1000",
      pluginserver_mute_respawn_delay = "5000",
      -- the respawn after a hang kill (a standby would take over instead)
      pluginserver_mute_standby = "off",
    }, { plugins = { "mute" }, servers = { "mute" } })
    local first = assert(wait_status(h, "mute", function(s) return s.state == "ready" end))
    local t0 = nginx.now()
    assert(h:wait_log("pluginserver 'mute', pid " .. first.pid .. ", hung: no answer for %d+ ms", 5), log_tail(h))
    assert.is_true(nginx.now() - t0 < 3, "found within hang_timeout and a probe period")
    local second = assert(wait_status(h, "mute", function(s) return s.pid and s.pid ~= first.pid end))
    assert.is_false(procs.alive(first.pid))
    assert.is_true(second.hangs >= 1)
    assert(h:wait_log("respawning pluginserver 'mute' at once", 1))
  end)

  it("a server slow on one event (8 s) while answering others is not killed (hang_timeout 2000)", function()
    procs.write_file(prefix .. "/py-slow.py", SLOW_PLUGIN)
    start({}, {
      pluginserver_names = { "py-slow" },
      pluginserver_py_slow_socket = prefix .. "/py-slow.socket",
      pluginserver_py_slow_start_cmd = PY .. " -u " .. prefix .. "/py-slow.py -p " .. prefix
        .. " --socket-name py-slow.socket",
      pluginserver_py_slow_query_cmd = PY .. " " .. prefix .. "/py-slow.py --dump",
      pluginserver_py_slow_hang_timeout = "2000",
    }, { plugins = { "py-slow" }, servers = { "py-slow" } })
    warm_up(4)
    local before = assert(h:server_status("py-slow"))
    local t0 = nginx.now()
    local slow = assert(io.popen(("curl -s -o /dev/null -w '%%{http_code}' -H 'Host: slow.test' "
      .. "-H 'X-Sleep: 8' http://127.0.0.1:%d/"):format(h.port)))
    local fast = 0
    while nginx.now() - t0 < 7.5 do
      local res = get(h)
      assert.equal(200, res.status)
      fast = fast + 1
      nginx.sleep(0.25)
    end
    local code = slow:read("*a")
    slow:close()
    assert.equal("200", code, log_tail(h))
    assert.is_true(nginx.now() - t0 >= 8, "the slow event took its 8 s")
    assert.is_true(fast >= 10)
    assert.equal(0, h:count_log("hung: no answer"))
    local after = assert(h:server_status("py-slow"))
    assert.equal(before.pid, after.pid)
    assert.equal(0, after.hangs)
  end)

  it("hang_timeout = 0 leaves a stopped server alone (today's behaviour)", function()
    start({ "py-hello" }, {
      [key("py-hello") .. "hang_timeout"] = "0",
      [key("py-hello") .. "read_timeout"] = "1000",
    }, { workers = 1 })
    warm_up(2)
    local before = assert(h:server_status("py-hello"))
    assert(procs.kill(before.pid, "STOP"))
    local t0 = nginx.now()
    local res = get(h)
    local took = nginx.now() - t0
    assert.equal(500, res.status)
    assert.is_true(took >= 0.9, "failed by read_timeout, took " .. took)
    nginx.sleep(2.5)
    assert.equal(0, h:count_log("hung"))
    local still = assert(h:server_status("py-hello"))
    assert.equal("ready", still.state)
    assert.equal(before.pid, still.pid)
    assert.equal(0, still.hangs)
    assert(procs.kill(before.pid, "CONT"))
    assert.equal(200, get(h).status)
  end)

  it("an external server that answers nothing is marked hung, fails at once, and recovers", function()
    local s = fx.server("py-hello", prefix)
    local p = assert(io.popen(("sh -c 'exec %s >%s/ext.out 2>&1 & echo $!'"):format(s.start_cmd, prefix)))
    local pid = tonumber(p:read("*l"))
    p:close()
    extra_pids[#extra_pids + 1] = pid
    assert(nginx.wait_until(function() return procs.is_socket(s.socket) end, 10), "external server not listening")
    local k = key("py-hello")
    start({ "py-hello" }, {
      [k .. "start_cmd"] = false, [k .. "hang_timeout"] = "1000", [k .. "read_timeout"] = "20000",
    }, { workers = 1 })
    assert.equal("external", h:server_status("py-hello").state)
    warm_up(2)
    assert(procs.kill(pid, "STOP"))
    local hung = assert(wait_status(h, "py-hello", function(st) return st.state == "hung" end, 5), log_tail(h))
    assert.equal(1, hung.hangs)
    assert(h:wait_log("pluginserver 'py%-hello' %(external%), hung: no answer for %d+ ms", 1))
    local t0 = nginx.now()
    local res = get(h)
    assert.equal(500, res.status)
    assert.is_true(nginx.now() - t0 < 0.5, "failed at once")
    assert(h:wait_log("failed in access %(timeout%): pluginserver 'py%-hello' is hung", 2))
    assert(procs.kill(pid, "CONT"))
    assert(wait_status(h, "py-hello", function(st) return st.state == "external" end, 5), log_tail(h))
    assert(h:wait_log("pluginserver 'py%-hello' %(external%) answers again", 1))
    assert.equal(200, get(h).status)
    assert.is_true(procs.alive(pid), "an external server is never killed")
  end)

  it("a managed server whose socket file is removed is replaced after hang_timeout", function()
    start({ "py-hello" }, { [key("py-hello") .. "hang_timeout"] = "1000" }, { workers = 1 })
    warm_up(2)
    local before = assert(h:server_status("py-hello"))
    local sock = prefix .. "/py-hello.socket"
    assert(os.remove(sock))
    assert(h:wait_log("pluginserver 'py%-hello', pid " .. before.pid .. ", unreachable: cannot connect to "
      .. sock:gsub("%p", "%%%0") .. ": No such file or directory for %d+ ms; killing it", 5), log_tail(h))
    local after = assert(wait_status(h, "py-hello", function(st) return st.state == "ready" and st.pid ~= before.pid end))
    assert.equal(1, after.hangs)
    assert.is_false(procs.alive(before.pid))
    assert.equal(200, get(h).status)
  end)

  it("kps-helper killed under load: a new helper and new servers, nothing orphaned, no request lost", function()
    start({ "py-hello" })
    warm_up()
    local before = assert(h:server_status("py-hello"))
    local helpers = procs.with_cmdline(ROOT .. "/target/release/kps-helper")
    local old_helper
    for _, pid in ipairs(helpers) do
      for _, d in ipairs(procs.descendants(h:master_pid())) do
        if d == pid then
          old_helper = pid
        end
      end
    end
    assert(old_helper, "kps-helper of this nginx not found")
    local load = under_load(h, 4, 1.5, function()
      assert(procs.kill(old_helper, "KILL"))
    end)
    assert(h:wait_log("kps%-helper exited unexpectedly; restarting it", 2))
    local after = assert(wait_status(h, "py-hello", function(st) return st.state == "ready" and st.pid ~= before.pid end))
    assert.is_false(procs.alive(before.pid), "the old server went with its helper")
    assert.equal(0, load.non2xx, load.out .. "\n" .. log_tail(h))
    local new_helper
    for _, d in ipairs(procs.descendants(h:master_pid())) do
      if d ~= old_helper and (procs.cmdline(d) or ""):find("kps-helper", 1, true) then
        new_helper = d
      end
    end
    assert(new_helper, "a new kps-helper runs")
    assert.equal(200, get(h).status)
    -- after a quit nothing of this nginx is left (no orphaned server or helper)
    assert(h:quit())
    assert(nginx.wait_until(function() return #h:leftovers() == 0 end, 10), "leftovers")
    assert.is_false(procs.alive(after.pid))
  end)
end)
