-- External Protobuf plugins end to end: real nginx (spec/helpers/nginx.lua), the
-- Kong-like host, and the real go-pdk servers (go-hello), beside a real Python
-- server (kong-pdk from PyPI). Kong's go-hello behaviour, and the fault rules:
-- a server killed mid-event, a frame over the limit, a lost instance (re-created
-- once), a connection closed after the first callback (a failure).
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

fixtures.require_built({ "go-hello", "py-hello" })

-- Small timings for a server (specs never wait for a default).
local TIMINGS = { connect_timeout = "500", read_timeout = "2000", ready_timeout = "5000",
                  respawn_delay = "100", log_window = "200" }

local function wait_ready(h, name)
  return nginx.wait_until(function()
    local s = h:server_status(name)
    return s and (s.state == "ready" or s.state == "external") and s
  end, 10)
end

local HOST = "example.test"

describe("Protobuf plugins (go-pdk)", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  local function start(names, extra, plugins)
    local prefix = nginx.make_prefix()
    local settings = fixtures.settings(names, prefix)
    fixtures.set_for_servers(settings, names, TIMINGS)
    for name, values in pairs(extra or {}) do
      fixtures.set_for_servers(settings, { name }, values)
    end
    h = assert(nginx.start { prefix = prefix, workers = 1, log_level = "debug", configuration = settings,
                             plugins = plugins or fixtures.hello_plugins(names, "Kong!") })
    for _, name in ipairs(names) do
      assert(wait_ready(h, name), name .. " not ready")
    end
    return h
  end

  it("runs go-hello like Kong: access, response and log phases", function()
    start { "go-hello" }
    local res = assert(h:request { path = "/hello", headers = { host = HOST, ["x-loose-data"] = "this" } })
    assert.equal(200, res.status)
    assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
    assert.equal("got from server 'mock-upstream/1.0.0'", res.headers["x-hello-from-go-at-response"])
    assert(h:wait_log("serialized:{", 5))
    assert.equal(1, h:count_log("access_start: %d+"))
    assert.equal(1, h:count_log("shared_msg: Kong!"))
    assert.equal(1, h:count_log("request_header: this"))
    assert.equal(1, h:count_log("response_header: mock_upstream"))
    local serialized = assert(h:log_lines("serialized:{")[1])
    assert.matches('"uri":"\\/hello"', serialized, 1, true)
    -- the access phase's shared value is the one the log phase read
    assert.same({}, h:log_lines("%[error%]"))
    local s = h:server_status("go-hello")
    assert.equal(3, s.counters.events)
    assert.equal(1, s.counters.instance_starts)
    assert.equal(0, s.counters.errors.protocol + s.counters.errors.connect + s.counters.errors.timeout)
  end)

  it("runs go-hello and py-hello on the same request", function()
    start { "go-hello", "py-hello" }
    for _ = 1, 3 do
      local res = assert(h:request { path = "/", headers = { host = HOST } })
      assert.equal(200, res.status)
      assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
      assert.equal("Python says Kong! to " .. HOST, res.headers["x-hello-from-python"])
      assert.equal("got from server 'mock-upstream/1.0.0'", res.headers["x-hello-from-go-at-response"])
    end
    -- one instance each for all requests
    assert.equal(1, h:server_status("go-hello").counters.instance_starts)
    assert.equal(1, h:server_status("py-hello").counters.instance_starts)
  end)

  it("runs the event again on the respawned server when the server is killed mid-event", function()
    start { "go-hello" }
    local pid = assert(wait_ready(h, "go-hello")).pid
    -- The PDK function go-hello calls first kills its server, then answers.
    assert(h:eval(([[
      local pdk = require "kong.runloop.plugin_servers.pdk"
      local orig = kong.request.get_header
      kong.request.get_header = function(name)
        if ngx.var.http_x_kill == "1" then
          os.execute("kill -9 %d")
          ngx.sleep(0.2)
        end
        return orig(name)
      end
      pdk.clear_cache()
      return "ok"
    ]]):format(pid)))
    local t0 = nginx.now()
    local res = assert(h:request { path = "/", headers = { host = HOST, ["x-kill"] = "1" } })
    -- the server died after the first callback: the event never finished, so it
    -- ran again on the new server instead of failing the request
    assert.equal(200, res.status, (h:error_log() or ""):sub(-3000))
    assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
    assert.is_true(nginx.now() - t0 < 5.0)
    assert.equal(0, h:count_log("failed in access"))
    assert.equal(0, h:count_log("dropping instances of go%-hello: .*access"))
    assert.is_false(procs.alive(pid))
    assert.equal(1, h:server_status("go-hello").restarts)
    -- the supervisor brings the server back and requests pass again
    assert(nginx.wait_until(function()
      local s = h:server_status("go-hello")
      return s.state == "ready" and s.pid ~= pid
    end, 10))
    res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(200, res.status)
    assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
  end)

  it("runs a request whose connect reached the server as it was killed on the restarted server", function()
    -- Stopped, the server leaves the request's connection in its listen queue;
    -- SIGKILL resets it unread. The event never ran: it waits for the restart.
    start { "go-hello" }
    local pid = assert(tonumber(h:server_status("go-hello").pid))
    assert(procs.kill(pid, "STOP"))
    os.execute("(sleep 0.3; kill -KILL " .. pid .. ") >/dev/null 2>&1 &")
    local res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(200, res.status, "body: " .. tostring(res.body) .. "\n" .. (h:error_log() or ""):sub(-3000))
    assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
    local s = h:server_status("go-hello")
    assert.equal(1, s.restarts)
    assert.same({ connect = 0, timeout = 0, protocol = 0, no_instance = 0, refused_method = 0 }, s.counters.errors)
    assert.equal(0, h:count_log("failed in access"))
  end)

  it("refuses a frame longer than max_message_size", function()
    start({ "go-hello" }, { ["go-hello"] = { max_message_size = "200" } })
    local res = assert(h:request { path = "/", headers = { host = string.rep("h", 300) } })
    assert.equal(500, res.status)
    assert(h:wait_log("plugin go%-hello failed in access %(protocol%).*exceeds max_message_size %(200%)", 2))
    res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(200, res.status)
  end)

  it("re-creates an instance the server lost and retries the event once", function()
    -- An external server (no supervisor pid to watch): restarted behind our back,
    -- it no longer knows the instance and closes the connection instead of answering.
    local prefix = nginx.make_prefix()
    local settings = fixtures.set_for_servers(fixtures.settings({ "go-hello" }, prefix), { "go-hello" }, TIMINGS)
    local start_cmd = settings.pluginserver_go_hello_start_cmd
    settings.pluginserver_go_hello_start_cmd = nil
    local sock = settings.pluginserver_go_hello_socket
    local function spawn()
      os.remove(sock)
      local p = assert(io.popen("echo $$; exec " .. start_cmd .. " >>" .. prefix .. "/logs/go.log 2>&1"))
      local pid = tonumber(p:read("*l"))
      assert(nginx.wait_until(function() return procs.is_socket(sock) end, 10))
      return { pid = pid, handle = p }
    end
    local server = spawn()
    local ok, err = pcall(function()
      local serr
      h, serr = nginx.start { prefix = prefix, workers = 1, log_level = "info", configuration = settings,
                              plugins = { { name = "go-hello", config = { message = "Kong!" } } } }
      assert(h, serr)
      local res = assert(h:request { path = "/", headers = { host = HOST } })
      assert.equal(200, res.status)
      -- the log timer's event too, before the server goes
      assert(nginx.wait_until(function() return h:server_status("go-hello").counters.events == 3 end, 5))
      procs.kill(server.pid, "KILL")
      server.handle:close()
      server = spawn()
      res = assert(h:request { path = "/", headers = { host = HOST } })
      assert.equal(200, res.status)
      assert.equal("Go says Kong! to " .. HOST, res.headers["x-hello-from-go"])
      assert(nginx.wait_until(function() return h:server_status("go-hello").counters.events == 6 end, 5))
      local s = h:server_status("go-hello")
      assert.equal(1, s.counters.errors.no_instance)
      assert.equal(2, s.counters.instance_starts)
      assert(h:wait_log("dropping instances of go%-hello: .*before any reply to HandleEvent", 1))
      -- the server logged the unknown instance it was asked about (go-pdk may close
      -- the connection before it writes that line: wait for it)
      local text
      nginx.wait_until(function()
        text = procs.read_file(prefix .. "/logs/go.log") or ""
        return text:find("no plugin instance", 1, true)
      end, 5)
      assert.matches("no plugin instance", text, 1, true)
    end)
    procs.kill(server.pid, "KILL")
    server.handle:close()
    assert(ok, err)
  end)

  it("fails after one retry when every connection closes before the first callback", function()
    start { "go-hello" }
    local res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(200, res.status)
    -- every instance id the worker holds is unknown to the server, including the
    -- one StartInstance returns: both attempts are closed before any callback.
    assert(h:eval([[
      local plugin = select(2, require("kong.runloop.plugin_servers").load_plugin("go-hello"))
      local rpc = plugin.rpc
      local start = rpc.start_instance
      rpc.start_instance = function(self, conf)
        local id, err, cause = start(self, conf)
        if id then id = id + 1000000 end
        return id, err, cause
      end
      plugin.instances:reset()
      return "ok"
    ]]))
    res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(500, res.status)
    assert(h:wait_log("plugin go%-hello failed in access %(no_instance%)", 2))
    -- Starts: the first request's; access: one, then one for its retry; the log
    -- timer reuses that one, loses it and starts one for its retry (its error line
    -- falls in the rate limiter's window). One retry per event, never more.
    assert(nginx.wait_until(function()
      local s = h:server_status("go-hello")
      return s.counters.instance_starts == 4 and s.counters.errors.no_instance == 2
    end, 5), "instance_starts/no_instance: " .. require("cjson").encode(h:server_status("go-hello").counters))
  end)
end)
