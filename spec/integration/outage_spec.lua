-- Plugin server outages: a supervised server killed with SIGKILL while
-- requests need it. Real nginx (spec/helpers/nginx.lua), the real kong-pdk Python
-- server, the Rust supervisor restarting it. Small timings everywhere.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local fx = fixtures.new(nginx.root)
local PY = nginx.root .. "/build/venv/bin/python3"

-- A MessagePack plugin with only a log phase. kong-pdk runs each connection in
-- its own thread: the plugin counts the log events running at once (each holds
-- one connection) and takes 50 ms, so that events overlap.
local LOG_PLUGIN = [[
import threading
import time
from kong_pdk.cli import start_dedicated_server

lock = threading.Lock()
running = [0]

class Plugin(object):
    def __init__(self, config):
        self.config = config

    def log(self, kong):
        with lock:
            running[0] += 1
            now = running[0]
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        kong.log.notice("py-logger ran (", now, " at once)")

if __name__ == "__main__":
    start_dedicated_server("py-logger", Plugin, "0.1.0", 10, ({},))
]]

do
  local ok, why = fx.available("py-hello")
  if not ok then
    error(why)
  end
end

local write = procs.write_file

local STATUS = [[return require("kong.runloop.plugin_servers").status()]]

describe("outage of a supervised plugin server", function()
  local h, prefix

  -- nginx with py-hello supervised; `extra` are kong.conf settings for it.
  local function start(extra, opts)
    opts = opts or {}
    local settings = fx.settings({ "py-hello" }, prefix)
    -- the respawn path: a warm standby (auto may give Python one when its first
    -- start is slow) has its own spec, standby_spec.lua
    settings.pluginserver_py_hello_standby = "off"
    for k, v in pairs(extra) do
      settings["pluginserver_py_hello_" .. k] = v
    end
    local plugins = { { name = "py-hello", config = { message = "Kong" } } }
    if opts.logger then
      write(prefix .. "/py-logger.py", LOG_PLUGIN)
      local n = #settings.pluginserver_names + 1
      settings.pluginserver_names[n] = "py-logger"
      settings.pluginserver_py_logger_socket = prefix .. "/py-logger.socket"
      settings.pluginserver_py_logger_start_cmd = PY .. " -u " .. prefix .. "/py-logger.py -p " .. prefix
        .. " --socket-name py-logger.socket"
      settings.pluginserver_py_logger_query_cmd = PY .. " " .. prefix .. "/py-logger.py --dump"
      settings.pluginserver_py_logger_standby = "off"
      for k, v in pairs(opts.logger) do
        settings["pluginserver_py_logger_" .. k] = v
      end
      plugins = { { name = "py-logger", config = {} } }
    end
    h = assert(nginx.start { prefix = prefix, workers = 1, configuration = settings, plugins = plugins })
    assert(nginx.wait_until(function() return h:all_ready() end, 15),
           "servers not ready:\n" .. (h:error_log() or ""):sub(-2000))
  end

  local function status(i)
    return assert(h:eval_json(STATUS))[i or 1]
  end

  local function get(host)
    return assert(h:request { headers = { host = host or "outage.test" } })
  end

  local function details(res)
    return "status " .. tostring(res and res.status) .. ", body: " .. tostring(res and res.body) .. "\n"
      .. (h:error_log() or ""):sub(-3000)
  end

  -- The running server's pid, after one request that warms up the instance.
  local function warm_pid()
    local res = get()
    assert.equal(200, res.status, details(res))
    return tonumber(res.headers["x-python-pid"])
  end

  -- Server i down for respawn_delay: its first exit is respawned at once, so kill
  -- it, wait for the new process, and kill that one (a second exit backs off).
  local function kill_into_backoff(i)
    local pid = status(i).pid
    assert(procs.kill(pid, "KILL"))
    local again = assert(nginx.wait_until(function()
      local s = status(i)
      return s.state == "ready" and s.pid ~= pid and s
    end, 10), "no restart after the first kill")
    assert(procs.kill(again.pid, "KILL"))
    assert(nginx.wait_until(function() return status(i).state == "backoff" end, 5), "no backoff")
  end

  -- Starts with `extra` settings, warms the server up, then takes it down for
  -- respawn_delay.
  local function start_down(extra)
    start(extra)
    warm_pid()
    kill_into_backoff()
  end

  before_each(function()
    prefix = nginx.make_prefix()
  end)

  after_each(function()
    h = nginx.stop_host(h, { "crit" })
  end)

  it("requests wait for the restart, then succeed on one new instance", function()
    start { respawn_delay = "200", ready_timeout = "3000", log_window = "500" }
    local pid = warm_pid()
    local before = status()
    assert(procs.kill(pid, "KILL"))
    -- four requests at once, while the server is down and then starting
    local t0 = nginx.now()
    local out = assert(io.popen(("for i in 1 2 3 4; do curl -s -o /dev/null -H 'Host: w%%d.test' -w "
      .. "'%%{http_code} %%header{x-python-pid} %%header{x-hello-from-python}\\n' http://127.0.0.1:%d/ & done; wait")
      :format(h.port)))
    local lines = {}
    for line in out:lines() do
      lines[#lines + 1] = line
    end
    out:close()
    local elapsed = nginx.now() - t0
    assert.equal(4, #lines)
    for _, line in ipairs(lines) do
      local code, new_pid, hello = line:match("^(%d+) (%d+) (.*)$")
      assert.equal("200", code, line .. "\n" .. (h:error_log() or ""):sub(-3000))
      assert.not_equal(pid, tonumber(new_pid))
      assert.equal("Python says Kong to w%d.test", hello)
    end
    -- they waited for the restart (at once: the first exit) rather than failing,
    -- within the bound
    assert.is_true(elapsed < 3, "took " .. elapsed)
    assert(h:wait_log("respawning pluginserver 'py%-hello' at once", 1))
    local after = status()
    assert.equal(before.restarts + 1, after.restarts)
    -- the first event started the new instance; the other three waited for it
    assert.equal(before.counters.instance_starts + 1, after.counters.instance_starts)
    assert.equal(0, after.counters.errors.connect + after.counters.errors.timeout
      + after.counters.errors.no_instance)
    assert.equal(0, h:count_log("failed in access"))
  end)

  it("answers 500 once a request has waited past ready_timeout", function()
    start_down { respawn_delay = "2000", ready_timeout = "300", log_window = "500" }
    local t0 = nginx.now()
    local res = get()
    local elapsed = nginx.now() - t0
    assert.equal(500, res.status, details(res))
    assert.equal('{"message":"An unexpected error occurred"}', res.body)
    assert.is_true(elapsed >= 0.29 and elapsed < 1.5, "took " .. elapsed)
    assert(h:wait_log("%[error%].*py%-hello: plugin py%-hello failed in access %(connect%): .*not ready after 300 ms", 2))
    assert.equal(1, status().counters.errors.connect)
    -- after the restart the next request succeeds again
    assert(nginx.wait_until(function() return status().state == "ready" end, 5))
    res = get()
    assert.equal(200, res.status, details(res))
  end)

  it("fail_open skips the plugin while the server is down, logs and counts every skip", function()
    start_down { respawn_delay = "2000", ready_timeout = "100", log_window = "5000", fail_open = "on" }
    for _ = 1, 3 do
      local res = get()
      assert.equal(200, res.status, details(res))
      assert.is_nil(res.headers["x-hello-from-python"])
    end
    local st = status()
    assert.equal(3, st.counters.fail_open)
    assert.equal(3, st.counters.errors.connect)
    assert.equal(1, h:count_log("plugin py%-hello failed in access %(connect%): .*; skipped %(fail_open%)"))
  end)

  it("summarises repeated failures in one line when the log window ends", function()
    start_down { respawn_delay = "3000", ready_timeout = "50", log_window = "1000" }
    local t0 = nginx.now()
    for _ = 1, 5 do
      assert.equal(500, get().status)
    end
    assert.is_true(nginx.now() - t0 < 0.9, "the five requests must fit in one window")
    assert(h:wait_log("py%-hello: 4 more connect error%(s%) in the last 1s not logged", 3))
    assert.equal(1, h:count_log("failed in access"))
    assert.equal(5, status().counters.errors.connect)
  end)

  it("a failed log event is logged and counted and never changes the response", function()
    start({}, { logger = { respawn_delay = "3000", ready_timeout = "50", log_window = "1000" } })
    -- the log phase works while the server is up
    assert.equal(200, get().status)
    assert(h:wait_log("py%-logger ran", 5))
    local st = assert(h:eval_json(STATUS))
    local logger = st[2]
    assert.equal("py-logger", logger.name)
    kill_into_backoff(2)
    local res = get()
    assert.equal(200, res.status, details(res))
    assert(h:wait_log("py%-logger: plugin py%-logger failed in log %(connect%)", 3))
    assert.equal(1, assert(h:eval_json(STATUS))[2].counters.errors.connect)
    assert.equal(0, h:count_log("attempt to set status"))
    assert.equal(0, h:count_log("headers already sent"))
  end)

  -- Unix sockets open in a process.
  local function sockets(pid)
    local p = assert(io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null"))
    local text = p:read("*a")
    p:close()
    local _, n = text:gsub("socket:%[", "")
    return n
  end

  it("holds at most LOG_CONNECTIONS log-event connections to one server at once per worker", function()
    -- hang_timeout 0: the hang watch's own connection would be counted too
    start({}, { logger = { log_window = "1000", hang_timeout = "0" } })
    local limit = h:eval_json [[return require("kong.runloop.plugin_servers.log_queue").LOG_CONNECTIONS]]
    assert.is_number(limit)
    local backlog = h:eval_json [[return require("kong.runloop.plugin_servers.log_queue").LOG_BACKLOG]]
    -- one log event: the logger holds its listener and one pooled connection
    assert.equal(200, get().status)
    assert(h:wait_log("py%-logger ran", 5))
    local logger_pid = assert(h:eval_json(STATUS))[2].pid
    local before = sockets(logger_pid)
    -- a burst that stays under the backlog that would add drain timers
    local n = 12
    assert.is_true(n < limit + backlog and n - 1 > limit)
    local out = assert(io.popen(("for i in $(seq %d); do curl -s -o /dev/null -w '%%{http_code}\\n' "
      .. "-H 'Host: l$i.test' http://127.0.0.1:%d/ & done; wait"):format(n, h.port)))
    local codes = out:read("*a")
    out:close()
    local _, ok = codes:gsub("200", "")
    assert.equal(n, ok, codes)
    -- every log event ran, none failed
    assert(nginx.wait_until(function()
      return h:count_log("py%-logger ran") >= n + 1
    end, 10), (h:error_log() or ""):sub(-3000))
    -- pooled connections stay open: the server holds one socket per connection
    -- nginx ever had open at once
    local after = sockets(logger_pid)
    assert.is_true(after - before >= 1, "the burst used more than the warm connection")
    assert.is_true(after - before <= limit - 1, ("at most %d connections, saw %d more than the one warm")
      :format(limit, after - before))
    assert.equal(0, h:count_log("failed in log"))
    local st = assert(h:eval_json(STATUS))[2]
    assert.equal(0, st.counters.errors.connect + st.counters.errors.timeout + st.counters.errors.protocol)
  end)
end)
