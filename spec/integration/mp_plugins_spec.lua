-- External MessagePack plugins end to end: real nginx (spec/helpers/nginx.lua), the
-- Kong-like host, and the real kong-pdk servers from PyPI (0.36) and npm (0.6.0).
-- The servers are managed externally here (no start_cmd): the spec starts them,
-- kills them by PID and starts them again, so that these specs do not depend on the
-- supervisor.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local socket = require "socket"

local root = nginx.root
local fx = fixtures.new(root)
local PY = fx.python

-- A Python plugin that reports how each PDK result shape reached it.
local CODEC_PLUGIN = [[
import time
from kong_pdk.cli import start_dedicated_server

class Plugin(object):
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        if self.config.get("sleep"):
            time.sleep(self.config["sleep"])
        h, _ = kong.request.get_headers()
        q, _ = kong.request.get_query()
        body, _ = kong.request.get_raw_body()
        missing = kong.request.get_header("x-missing")
        nope = kong.nope.missing()
        kong.response.set_header("x-codec-multi", repr(h.get("x-multi")))
        kong.response.set_header("x-codec-single", repr(h.get("x-single")))
        kong.response.set_header("x-codec-query", repr(q))
        kong.response.set_header("x-codec-body", repr(body))
        kong.response.set_header("x-codec-missing", repr(missing))
        kong.response.set_header("x-codec-nope", repr(nope))

if __name__ == "__main__":
    start_dedicated_server("py-codec", Plugin, "0.1.0", 50, ({"sleep": {"type": "number"}},))
]]

local write = procs.write_file


-- Starts a server in the background (its parent stays this process: kong-pdk for
-- Python exits when its parent pid becomes 1).
local function spawn(cmd, sock, logfile)
  os.remove(sock)
  local h = assert(io.popen("echo $$; exec " .. cmd .. " >>" .. logfile .. " 2>&1"))
  local pid = tonumber(h:read("*l"))
  if not nginx.wait_until(function() return procs.is_socket(sock) end, 10) then
    procs.kill(pid, "KILL")
    h:close()
    error("server did not listen: " .. cmd)
  end
  return { pid = pid, handle = h, cmd = cmd, sock = sock, logfile = logfile }
end

local function kill(p)
  if p and p.pid then
    procs.kill(p.pid, "KILL")
    p.handle:close()
    p.pid = nil
  end
end

local function codec_server(prefix)
  write(prefix .. "/py-codec.py", CODEC_PLUGIN)
  return {
    start_cmd = PY .. " -u " .. prefix .. "/py-codec.py -p " .. prefix .. " --socket-name py-codec.socket",
    query_cmd = PY .. " " .. prefix .. "/py-codec.py --dump",
    socket = prefix .. "/py-codec.socket",
  }
end

-- Settings for externally managed servers with small timings.
local function settings_for(prefix, names, extra)
  local s = fx.settings(names, prefix)
  for _, name in ipairs(names) do
    s["pluginserver_" .. name:gsub("-", "_") .. "_start_cmd"] = nil
  end
  for k, v in pairs(extra or {}) do
    s[k] = v
  end
  return s
end

local function timings(k, t)
  t = t or {}
  t["pluginserver_" .. k .. "_connect_timeout"] = "500"
  t["pluginserver_" .. k .. "_read_timeout"] = "3000"
  t["pluginserver_" .. k .. "_ready_timeout"] = "300"
  t["pluginserver_" .. k .. "_log_window"] = "500"
  return t
end

-- Raw HTTP request, for repeated headers and binary bodies.
local function raw_request(port, text)
  local c = socket.tcp()
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  assert(c:send(text))
  local data, _, partial = c:receive("*a")
  c:close()
  data = data or partial
  local head = data:match("^(.-)\r\n\r\n")
  local res = { status = tonumber(head:match("^HTTP/%d%.%d (%d+)")), headers = {} }
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    res.headers[name:lower()] = value
  end
  return res
end

fx.require_built({ "py-hello", "js-hello" })

describe("MessagePack plugins", function()
  local h, prefix, servers

  local function start_nginx(settings, plugins, workers)
    local host, err = nginx.start {
      prefix = prefix, workers = workers or 1, configuration = settings, plugins = plugins,
    }
    assert(host, err)
    return host
  end

  before_each(function()
    prefix = nginx.make_prefix()
    servers = {}
  end)

  after_each(function()
    h = nginx.stop_host(h)
    for _, p in pairs(servers) do
      kill(p)
    end
  end)

  describe("with running servers", function()
    local codec

    before_each(function()
      codec = codec_server(prefix)
      for _, name in ipairs { "py-hello", "js-hello" } do
        local s = fx.server(name, prefix)
        servers[name] = spawn(s.start_cmd, s.socket, prefix .. "/logs/" .. name .. ".out")
      end
      servers["py-codec"] = spawn(codec.start_cmd, codec.socket, prefix .. "/logs/py-codec.out")
      local settings = settings_for(prefix, { "py-hello", "js-hello" }, timings("py_hello", timings("js_hello")))
      settings.pluginserver_names[3] = "py-codec"
      settings.pluginserver_py_codec_socket = codec.socket
      settings.pluginserver_py_codec_query_cmd = codec.query_cmd
      timings("py_codec", settings)
      h = start_nginx(settings, fx.hello_plugins({ "py-hello", "js-hello" }, "Kong!"), 2)
    end)

    it("runs the Python and the JS hello plugins", function()
      for _ = 1, 4 do
        local res = assert(h:request { headers = { host = "example.test" } })
        assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
        assert.equal("Python says Kong! to example.test", res.headers["x-hello-from-python"])
        assert.equal("Javascript says Kong! to example.test", res.headers["x-hello-from-javascript"])
      end
      local st = assert(h:status_list())
      assert.equal("py-hello", st[1].name)
      assert.is_true(st[1].counters.events >= 4)
      assert.is_true(st[1].counters.pdk_calls >= 12)
      assert.is_true(st[1].counters.instance_starts >= 1)
      assert.equal(0, st[1].counters.errors.protocol)
    end)

    it("starts a new instance when the configuration changes", function()
      local res = assert(h:request { headers = { host = "a.test" } })
      assert.equal("Python says Kong! to a.test", res.headers["x-hello-from-python"])
      assert(h:set_plugins {
        { name = "py-hello", config = { message = "Hi" } },
        { name = "js-hello", config = { message = "Yo" } },
      })
      res = assert(h:request { headers = { host = "a.test" } })
      assert.equal("Python says Hi to a.test", res.headers["x-hello-from-python"])
      assert.equal("Javascript says Yo to a.test", res.headers["x-hello-from-javascript"])
    end)

    it("recovers after kill -9 of a server between requests", function()
      local res = assert(h:request {})
      local old_pid = res.headers["x-python-pid"]
      kill(servers["py-hello"])
      local s = fx.server("py-hello", prefix)
      servers["py-hello"] = spawn(s.start_cmd, s.socket, prefix .. "/logs/py-hello.out")
      for _ = 1, 4 do
        res = assert(h:request { headers = { host = "b.test" } })
        assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
        assert.equal("Python says Kong! to b.test", res.headers["x-hello-from-python"])
        assert.not_equal(old_pid, res.headers["x-python-pid"])
      end
    end)

    it("answers 500 at once when the server dies during a request", function()
      assert(h:set_plugins { { name = "py-codec", config = { sleep = 1.5 } } })
      local t0 = nginx.now()
      -- kill the server while the request waits in the plugin's handler
      local pid = servers["py-codec"].pid
      local child = assert(io.popen("sleep 0.5; kill -9 " .. pid))
      local res = assert(h:request {})
      child:close()
      servers["py-codec"].handle:close()
      servers["py-codec"].pid = nil
      assert.equal(500, res.status)
      assert.is_true(nginx.now() - t0 < 1.5, "took " .. (nginx.now() - t0))
      assert(h:wait_log("plugin py%-codec failed in access %(connect%)", 2))
      -- the worker is fine
      assert.equal("pong", assert(h:request { path = "/__host/ping" }).body)
    end)

    it("delivers each PDK result shape as the Python PDK expects", function()
      assert(h:set_plugins { { name = "py-codec", config = {} } })
      local body = "ab\0\255c"
      local res = raw_request(h.port, "POST /codec HTTP/1.1\r\nHost: c.test\r\nX-Multi: a\r\nX-Multi: b\r\n"
        .. "X-Single: s\r\nContent-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body)
      assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
      assert.equal("['a', 'b']", res.headers["x-codec-multi"])
      assert.equal("['s']", res.headers["x-codec-single"])
      assert.equal("{}", res.headers["x-codec-query"])
      assert.equal("b'ab\\x00\\xffc'", res.headers["x-codec-body"])
      assert.equal("(None, None)", res.headers["x-codec-missing"])
      -- a name outside the PDK comes back as the PDK's error (StepError), and the event goes on
      assert.equal("(None, \"method 'kong.nope.missing' is not part of the PDK\")", res.headers["x-codec-nope"])
    end)
  end)

  describe("with supervised servers", function()
    it("serves the next requests once a server killed with -9 is respawned", function()
      local settings = fx.settings({ "py-hello", "js-hello" }, prefix)
      for _, k in ipairs { "py_hello", "js_hello" } do
        timings(k, settings)
        settings["pluginserver_" .. k .. "_respawn_delay"] = "100"
        settings["pluginserver_" .. k .. "_ready_timeout"] = "5000"
      end
      h = start_nginx(settings, fx.hello_plugins({ "py-hello", "js-hello" }, "Kong!"), 2)
      local res = assert(h:request {})
      assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
      local py_pid = tonumber(res.headers["x-python-pid"])
      local js_pid = tonumber(res.headers["x-javascript-pid"])
      procs.kill(py_pid, "KILL")
      procs.kill(js_pid, "KILL")
      -- Each request waits for the respawned servers (ready_timeout), then succeeds
      -- on fresh instances.
      for _ = 1, 4 do
        res = assert(h:request { headers = { host = "d.test" } })
        assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
        assert.equal("Python says Kong! to d.test", res.headers["x-hello-from-python"])
        assert.equal("Javascript says Kong! to d.test", res.headers["x-hello-from-javascript"])
        assert.not_equal(py_pid, tonumber(res.headers["x-python-pid"]))
        assert.not_equal(js_pid, tonumber(res.headers["x-javascript-pid"]))
      end
      local st = assert(h:status_list())
      assert.equal("ready", st[1].state)
      assert.is_true(st[1].restarts >= 1)
      assert.is_true(st[1].counters.instance_starts >= 2)
    end)
  end)

  describe("with a server killed as a request reaches it", function()
    it("the request waits for the restarted server instead of failing", function()
      -- The server is stopped, so the request's connect lands in its listen queue
      -- unread; SIGKILL then resets that connection. The request never ran on the
      -- dead server: it waits for the restart and runs on the new one.
      local settings = timings("py_hello", fx.settings({ "py-hello" }, prefix))
      settings.pluginserver_py_hello_respawn_delay = "100"
      settings.pluginserver_py_hello_ready_timeout = "5000"
      h = start_nginx(settings, { { name = "py-hello", config = { message = "Kong!" } } })
      assert(h:wait_log("pluginserver 'py%-hello' is ready, pid %d+", 10))
      local st = assert(h:status_list())
      local pid = assert(tonumber(st[1].pid))
      assert(procs.kill(pid, "STOP"))
      -- no connection to it yet in any worker: the next one is made now
      os.execute("(sleep 0.3; kill -KILL " .. pid .. ") >/dev/null 2>&1 &")
      local res = assert(h:request { headers = { host = "d.test" } })
      assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
      assert.equal("Python says Kong! to d.test", res.headers["x-hello-from-python"])
      assert.not_equal(pid, tonumber(res.headers["x-python-pid"]))
      -- it waited (no error counted, nothing skipped) and the reset was nginx's one line
      st = assert(h:status_list())
      assert.equal(1, st[1].restarts)
      assert.same({ connect = 0, timeout = 0, protocol = 0, no_instance = 0, refused_method = 0 }, st[1].counters.errors)
      assert.equal(0, st[1].counters.fail_open)
      assert.equal(0, h:count_log("failed in access"))
    end)
  end)

  describe("with a server that is down", function()
    it("fail_open skips the plugin, logs why and counts it", function()
      local settings = settings_for(prefix, { "py-hello" }, timings("py_hello", {
        pluginserver_py_hello_fail_open = "on",
      }))
      h = start_nginx(settings, { { name = "py-hello", config = { message = "x" } } })
      local res = assert(h:request {})
      assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
      assert.is_nil(res.headers["x-hello-from-python"])
      assert(h:wait_log("plugin py%-hello failed in access %(connect%): .*cannot connect to .*; skipped %(fail_open%)", 2))
      local st = assert(h:status_list())
      assert.equal(1, st[1].counters.fail_open)
      assert.equal(1, st[1].counters.errors.connect)
    end)

    it("fails requests with 500 and rate-limits the error lines", function()
      local settings = settings_for(prefix, { "py-hello" }, timings("py_hello"))
      h = start_nginx(settings, { { name = "py-hello", config = { message = "x" } } })
      for _ = 1, 8 do
        local res = assert(h:request {})
        assert.equal(500, res.status)
        assert.equal('{"message":"An unexpected error occurred"}', res.body)
      end
      assert(h:wait_log("py%-hello: 7 more connect error%(s%) in the last 0.5s not logged", 3))
      assert.equal(1, h:count_log("plugin py%-hello failed in access"))
    end)
  end)
end)
