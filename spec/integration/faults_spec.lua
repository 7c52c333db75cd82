-- The fault matrix: one misbehaving plugin server per case, real nginx
-- with one worker. Each case asserts the request's status within a time bound, the
-- error line, that the worker survived (same pid, no "exited on signal") and that
-- it holds as many file descriptors as after warm-up (no socket or fd leaked).
-- The stand-in servers are fixtures/servers/mp_fault.py (MessagePack-RPC) and
-- pb_fault.py (Protobuf); a plugin config field `mode` makes them misbehave in the
-- middle of an event. Faults of the connection path (shared by both protocols:
-- rpc/socket.lua) and of the info query run once, with the MessagePack server.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local SERVERS = fixtures.stand_ins

-- Per protocol: the stand-in server and the texts that differ.
local PROTOCOLS = {
  {
    name = "MessagePack", script = SERVERS .. "/mp_fault.py", all = true,
    closed = "plugin server fault closed the connection",
  },
  {
    name = "Protobuf", script = SERVERS .. "/pb_fault.py",
    closed = "connection closed by the plugin server during the event",
  },
}
local SERVER = PROTOCOLS[1].script   -- the server of the current describe block
local NAME = "fault"
local K = "pluginserver_fault_"

-- Small timings; every bound a case asserts derives from these.
local READ_TIMEOUT = 500
local READY_TIMEOUT = 600
local MAX_MESSAGE = 65536

local function settings(prefix, opts)
  opts = opts or {}
  local sock = opts.socket or (prefix .. "/" .. NAME .. ".socket")
  local query_cmd, start_cmd = fixtures.stand_in_commands(SERVER, NAME, sock)
  local s = {
    prefix = prefix,
    pluginserver_names = { NAME },
    [K .. "socket"] = sock,
    [K .. "query_cmd"] = opts.query_cmd or query_cmd,
    [K .. "connect_timeout"] = "300",
    [K .. "send_timeout"] = "500",
    [K .. "read_timeout"] = tostring(READ_TIMEOUT),
    [K .. "ready_timeout"] = tostring(opts.ready_timeout or READY_TIMEOUT),
    [K .. "max_message_size"] = tostring(MAX_MESSAGE),
    [K .. "respawn_delay"] = "100",
    [K .. "respawn_delay_max"] = "200",
    [K .. "stop_timeout"] = "1000",
    [K .. "query_timeout"] = tostring(opts.query_timeout or 5000),
    -- no hang watch: its connection (an fd of worker 0) would blur the fd counts;
    -- hangs have their own spec (hang_spec.lua)
    [K .. "hang_timeout"] = "0",
  }
  if not opts.external then
    s[K .. "start_cmd"] = start_cmd .. (opts.server_args or "")
  end
  return s
end

local function start(opts)
  opts = opts or {}
  local prefix = nginx.make_prefix()
  local h = assert(nginx.start {
    prefix = prefix, workers = 1, configuration = settings(prefix, opts),
    plugins = { { name = NAME, config = { mode = opts.mode or "ok" } } },
  })
  h.sock = opts.socket or (prefix .. "/" .. NAME .. ".socket")
  return h
end

local function status(h)
  return assert(h:eval_json [[return require("kong.runloop.plugin_servers").status()[1] ]])
end

local function set_mode(h, mode)
  assert(h:set_plugins { { name = NAME, config = { mode = mode } } })
end

-- A request and how long it took.
local function timed(h)
  local t0 = nginx.now()
  local res = assert(h:request { headers = { host = "fault.test" } })
  return res, nginx.now() - t0
end

local function body_and_log(h, res)
  return "status " .. tostring(res.status) .. ", body: " .. tostring(res.body) .. "\n"
    .. (h:error_log() or ""):sub(-3000)
end

-- A request that must succeed (waits for a supervised server to be ready).
local function ok_request(h)
  local res = timed(h)
  assert.equal(200, res.status, body_and_log(h, res))
  assert.is_string(res.headers["x-fault-pid"])
  return res
end

-- The single worker and its fd count, after a warm-up request when `warm`. The
-- warm-up waits until the supervisor's state says ready: an event that runs before
-- the state exists learns no server pid (its pooled connection and instance are
-- not tied to one), which makes the counts below depend on timing.
local function baseline(h, warm)
  if warm then
    assert(nginx.wait_until(function()
      local st = h:eval_json [[return require("kong.runloop.plugin_servers").status()[1] ]]
      return st and st.state == "ready"
    end, 5), "the server did not become ready")
    ok_request(h)
  end
  local pids = h:worker_pids()
  assert.equal(1, #pids)
  -- let the log phase and closed connections settle
  nginx.sleep(0.1)
  return { pid = pids[1], fds = procs.fd_count(pids[1]) }
end

-- The worker survived and holds no more descriptors than at the baseline.
local function assert_worker_intact(h, base)
  assert.same({ base.pid }, h:worker_pids())
  assert.equal(0, h:count_log("exited on signal"), "a worker crashed")
  local fds = nginx.wait_until(function()
    local n = procs.fd_count(base.pid)
    return n == base.fds and n
  end, 3) or procs.fd_count(base.pid)
  assert.equal(base.fds, fds, "fd count of worker " .. base.pid)
end

-- The failure rule's line (its head may name the server first: "<server>: plugin ...").
local function failure_line(cause)
  return "%[pluginserver%] .-plugin fault failed in access %(" .. cause .. "%): "
end

-- One request that fails with 500 after at least min_s and under max_s seconds.
local function fails_within(h, min_s, max_s)
  local res, took = timed(h)
  assert.equal(500, res.status, body_and_log(h, res))
  assert.is_true(took >= min_s and took < max_s, "took " .. took)
end

-- The stand-in acts out mode: the next request fails with 500 at once.
local function fails_at_once(h, mode)
  set_mode(h, mode)
  fails_within(h, 0, 0.5)
end

-- Back to mode ok: the next request succeeds and the worker is as at base.
local function serves_again(h, base)
  set_mode(h, "ok")
  local res = ok_request(h)
  assert_worker_intact(h, base)
  return res
end

local processes_with = procs.with_cmdline

local function wait_new_pid(h, old)
  return nginx.wait_until(function()
    local st = status(h)
    return st.state == "ready" and st.pid ~= old and st
  end, 5)
end

for _, P in ipairs(PROTOCOLS) do
  describe("fault matrix (" .. P.name .. " stand-in server)", function()
    local h

    before_each(function()
      SERVER = P.script
    end)

    after_each(function()
      h = nginx.stop_host(h)
    end)

    -- Starts the host with the stand-in warm, has it act out `mode` (the request
    -- fails at once) and waits for the failure logged with `cause`, then `detail`.
    -- Returns the baseline, the server's pid before the fault and the log line.
    local function faulted(mode, cause, detail)
      h = start()
      local base = baseline(h, true)
      local pid = status(h).pid
      fails_at_once(h, mode)
      local line = assert(h:wait_log(failure_line(cause) .. (detail or ""), 2))
      return base, pid, line
    end

    it("server killed mid-event: 500 at once, then served by the respawned server", function()
      local base, old = faulted("kill", "connect", ".*" .. P.closed)
      assert(wait_new_pid(h, old))
      local res = serves_again(h, base)
      assert.not_equal(tostring(old), res.headers["x-fault-pid"])
    end)

    it("server closes the socket mid-event: 500 at once, the next event on a new connection", function()
      local base, pid = faulted("close", "connect", ".*" .. P.closed)
      local res = serves_again(h, base)
      assert.equal(tostring(pid), res.headers["x-fault-pid"])
    end)

    it("server sends a garbage frame: 500 at once, protocol error, connection dropped", function()
      local base = faulted("garbage", "protocol")
      assert.equal(1, status(h).counters.errors.protocol)
      serves_again(h, base)
    end)

    it("server sends a frame larger than max_message_size: 500 without reading it all", function()
      local base, _, line = faulted("oversize", "protocol")
      assert.matches(tostring(MAX_MESSAGE), line, 1, true)
      serves_again(h, base)
    end)

    it("server accepts but never answers: 500 after read_timeout", function()
      h = start()
      local base = baseline(h, true)
      set_mode(h, "silent")
      fails_within(h, READ_TIMEOUT / 1000 * 0.9, READ_TIMEOUT / 1000 + 0.5)
      assert(h:wait_log(failure_line("timeout") .. "read from fault failed: timeout", 2))
      assert.equal(1, status(h).counters.errors.timeout)
      serves_again(h, base)
    end)

    if P.all then
    it("server slow to start: a request waits for readiness within ready_timeout", function()
      h = start { server_args = " --delay 0.4", ready_timeout = 3000 }
      local base = baseline(h, false)
      local res, took = timed(h)
      assert.equal(200, res.status, body_and_log(h, res))
      assert.is_true(took < 3, "took " .. took)
      assert_worker_intact(h, { pid = base.pid, fds = base.fds + 1 })   -- + the pooled connection
    end)
    end

    if P.all then
    it("server slower to start than ready_timeout: 500 once ready_timeout has passed", function()
      h = start { server_args = " --delay 30", ready_timeout = 300 }
      local base = baseline(h, false)
      fails_within(h, 0.25, 1.5)
      assert(h:wait_log(failure_line("connect") .. ".*pluginserver 'fault' not ready after", 2))
      assert.equal("starting", status(h).state)
      assert_worker_intact(h, base)
    end)
    end

    if P.all then
    it("socket file removed while running: 500 after ready_timeout, served again after a respawn", function()
      -- --one-shot: the server closes each connection after its event, so nothing is pooled
      h = start { server_args = " --one-shot" }
      local base = baseline(h, true)
      local old = status(h).pid
      assert(os.remove(h.sock))
      fails_within(h, READY_TIMEOUT / 1000 * 0.9, READY_TIMEOUT / 1000 + 1)
      assert(h:wait_log(failure_line("connect") .. ".*cannot connect to " .. h.sock:gsub("%p", "%%%0"), 2))
      -- the server still runs: nothing noticed the lost socket; a restart brings it back
      assert.equal(old, status(h).pid)
      procs.kill(old, "KILL")
      assert(wait_new_pid(h, old))
      ok_request(h)
      assert_worker_intact(h, base)
    end)
    end

    if P.all then
    for _, kind in ipairs { "regular file", "directory" } do
      it("socket path that is a " .. kind .. ": 500 at once with a connect error naming it", function()
        local prefix = nginx.make_prefix()
        local path = prefix .. "/not-a-socket"
        if kind == "directory" then
          assert(os.execute("mkdir '" .. path .. "'"))
        else
          local f = assert(io.open(path, "w"))
          f:write("x")
          f:close()
        end
        h = assert(nginx.start {
          prefix = prefix, workers = 1,
          configuration = settings(prefix, { external = true, socket = path }),
          plugins = { { name = NAME, config = { mode = "ok" } } },
        })
        local base = baseline(h, false)
        fails_within(h, 0, 0.5)
        assert(h:wait_log(failure_line("connect") .. ".*cannot connect to " .. path:gsub("%p", "%%%0")
                          .. ": connection refused", 2))
        assert.equal(1, status(h).counters.errors.connect)
        assert_worker_intact(h, base)
      end)
    end
    end

    if P.all then
    it("query command hangs: nginx starts within query_timeout, the plugin fails to load, nothing left", function()
      local marker = "987.6" .. tostring(os.time() % 100000)
      local prefix = nginx.make_prefix()
      local script = prefix .. "/hang.sh"
      local f = assert(io.open(script, "w"))
      f:write("#!/bin/sh\necho thinking\nexec sleep " .. marker .. "\n")
      f:close()
      assert(os.execute("chmod +x '" .. script .. "'"))
      local t0 = nginx.now()
      h = assert(nginx.start {
        prefix = prefix, workers = 1,
        configuration = settings(prefix, { query_cmd = script, query_timeout = 300 }),
        plugins = { { name = NAME, config = {} } },
      })
      assert.is_true(nginx.now() - t0 < 3, "start took " .. (nginx.now() - t0))
      local base = baseline(h, false)
      fails_within(h, 0, 0.5)
      assert(h:wait_log("cannot load plugin fault: failed loading external plugins: .*timed out after 300 ms", 2))
      assert.same({}, processes_with("sleep " .. marker))
      assert_worker_intact(h, base)
    end)
    end

    if P.all then
    it("query command prints garbage: the plugin fails to load with the output in the message", function()
      local prefix = nginx.make_prefix()
      h = assert(nginx.start {
        prefix = prefix, workers = 1,
        configuration = settings(prefix, { query_cmd = SERVERS .. "/garbage_dump.sh" }),
        plugins = { { name = NAME, config = {} } },
      })
      local base = baseline(h, false)
      fails_within(h, 0, 0.5)
      assert(h:wait_log("cannot load plugin fault: failed loading external plugins: .*printed no JSON", 2))
      assert_worker_intact(h, base)
    end)
    end

    it("server restarted with a different pid: instances dropped before the next event", function()
      h = start()
      local base = baseline(h, true)
      local old = status(h).pid
      procs.kill(old, "KILL")
      local st = assert(wait_new_pid(h, old))
      local res = ok_request(h)
      assert.equal(tostring(st.pid), res.headers["x-fault-pid"])
      assert(h:wait_log("pluginserver 'fault' is ready, pid " .. st.pid, 2))
      local c = status(h).counters
      assert.equal(0, c.errors.no_instance)     -- no round trip wasted on the dead instance
      assert.equal(2, c.instance_starts)
      assert_worker_intact(h, base)
    end)

    if P.all then
    it("worker event storm: 1000 reset_instances events at once are all handled, one restart follows", function()
      h = start()
      local base = baseline(h, true)
      assert.equal(1, status(h).counters.instance_starts)
      local N = 1000
      assert(h:eval([[
        local dict = ngx.shared.kps_host
        kong.worker_events.register(function() dict:incr("storm_seen", 1, 0) end, "plugin_server", "reset_instances")
        for i = 1, ]] .. N .. [[ do
          assert(kong.worker_events.post("plugin_server", "reset_instances", { plugin_name = "fault" }))
        end
        return "posted"
      ]]))
      assert(nginx.wait_until(function()
        return tonumber(h:eval [[return ngx.shared.kps_host:get("storm_seen") or 0]]) == N
      end, 5), "not every event was handled")
      ok_request(h)
      assert.equal(2, status(h).counters.instance_starts)
      assert.equal(0, h:count_log("failed to post"))
      assert_worker_intact(h, base)
    end)
    end

    it("instances lost on the server (no plugin instance): each request restarts one and succeeds", function()
      h = start()
      set_mode(h, "forget")
      local base = baseline(h, true)
      for _ = 1, 10 do
        ok_request(h)
      end
      -- every request needs a new instance and learns it from "no plugin instance":
      -- the worker that posts the reset ignores its own copy of the event, so none
      -- finds its instance already dropped
      local c = status(h).counters
      assert.equal(11, c.instance_starts)
      assert.equal(10, c.errors.no_instance)
      assert_worker_intact(h, base)
    end)
  end)
end
