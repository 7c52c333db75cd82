-- The supervisor in real nginx with stand-in servers (fixtures/servers): readiness,
-- respawn after kill -9, crash-loop backoff, exit 127, SIGTERM escalation, and no
-- process left after stop, quit and SIGKILL of nginx. Small timings throughout.
local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"

local ROOT = nginx.root
local SERVERS = ROOT .. "/fixtures/servers"
local DUMP = SERVERS .. "/two_plugins_dump.sh"

-- kong.conf-style settings for stand-in servers: name -> { start = cmd, ... }.

local function settings(prefix, servers)
  local conf = { prefix = prefix, pluginserver_names = {} }
  for _, s in ipairs(servers) do
    local k = "pluginserver_" .. s.name:gsub("-", "_")
    conf.pluginserver_names[#conf.pluginserver_names + 1] = s.name
    conf[k .. "_socket"] = prefix .. "/" .. s.name .. ".socket"
    conf[k .. "_start_cmd"] = s.start
    conf[k .. "_query_cmd"] = s.query or ("/bin/echo '[{\"Name\":\"" .. s.name .. "\",\"Priority\":1,\"Version\":\"1.0\"}]'")
    conf[k .. "_stop_timeout"] = tostring(s.stop_timeout or 1000)
    conf[k .. "_respawn_delay"] = tostring(s.respawn_delay or 100)
    conf[k .. "_respawn_delay_max"] = tostring(s.respawn_delay_max or 400)
    conf[k .. "_ready_timeout"] = tostring(s.ready_timeout or 2000)
    conf[k .. "_query_timeout"] = tostring(s.query_timeout or 5000)
    -- these specs are about the respawn path (the standby has standby_spec.lua):
    -- a stand-in that listens after 0.3 s would get one under auto
    conf[k .. "_standby"] = s.standby or "off"
  end
  return conf
end

local processes_with = procs.with_cmdline

-- The worker that supervises: the parent of kps-helper.
local function supervising_worker(h)
  for _, pid in ipairs(procs.descendants(h:master_pid())) do
    if (procs.cmdline(pid) or ""):find("kps-helper", 1, true) then
      return (procs.stat(pid)), pid
    end
  end
end

local function listen_cmd(prefix, name, extra)
  return SERVERS .. "/listen.py " .. prefix .. "/" .. name .. ".socket" .. (extra or "")
end

local function start(servers, workers, plugins)
  local prefix = nginx.make_prefix()
  local list = servers(prefix)
  local h = assert(nginx.start {
    prefix = prefix, workers = workers or 2, log_level = "info",
    configuration = settings(prefix, list), plugins = plugins,
  })
  return h
end

-- Server `name` (pid `pid`) was stopped with nginx: logged, gone, nothing left.
local function stopped_cleanly(h, name, pid)
  assert(h:wait_log("successfully stopped pluginserver '" .. name .. "', pid " .. pid, 1))
  assert.is_false(procs.alive(pid))
  assert.same({}, h:leftovers())
end

local function wait_state(h, name, state, timeout)
  return h:wait_state(name, state, timeout or 5)
end

describe("plugin server supervisor (stand-in servers)", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("starts a server, reports it ready to every worker, stops it on quit", function()
    h = start(function(prefix)
      return { { name = "lsn", start = listen_cmd(prefix, "lsn", " 0.2") } }
    end)
    local started = assert(h:wait_log("%[pluginserver%] started, pid %d+", 5))
    local pid = tonumber(started:match("started, pid (%d+)"))
    assert(h:wait_log("%[lsn:" .. pid .. "%] listen.py pid " .. pid, 5))
    assert(h:wait_log("pluginserver 'lsn' is ready, pid " .. pid, 5))
    -- the status is the same from whichever worker answers
    for _ = 1, 4 do
      local s = h:server_status("lsn")
      assert.equal("ready", s.state)
      assert.equal(pid, s.pid)
      assert.equal(0, s.restarts)
      assert.is_true(s.uptime > 0)
    end
    -- the readiness wait of the RPC code answers with the pid
    assert.equal(tostring(pid), h:eval([[return require("kong.runloop.plugin_servers.state").wait_ready("lsn", 100)]]))
    assert.same({}, h:log_lines("%[crit%]"))
    assert(h:quit())
    stopped_cleanly(h, "lsn", pid)
  end)

  it("respawns after kill -9 at once with the real signal, then backs off a second exit", function()
    h = start(function(prefix)
      return { { name = "lsn", start = listen_cmd(prefix, "lsn", " 0.3"), respawn_delay = 300 } }
    end)
    local first = assert(wait_state(h, "lsn", "ready"))
    assert(procs.kill(first.pid, "KILL"))
    assert(h:wait_log("external pluginserver 'lsn' terminated: signal 9", 5))
    assert(h:wait_log("respawning pluginserver 'lsn' at once", 2))
    assert.equal(0, h:count_log("respawning pluginserver 'lsn' in"))
    local again = assert(nginx.wait_until(function()
      local s = h:server_status("lsn")
      return s.state == "ready" and s.pid ~= first.pid and s
    end, 5))
    assert.equal(1, again.restarts)
    assert.same({ signal = 9 }, again.last_exit)
    assert.is_false(procs.alive(first.pid))
    -- a second exit within respawn_reset backs off
    assert(procs.kill(again.pid, "KILL"))
    local backoff = assert(wait_state(h, "lsn", "backoff", 5))
    assert.same({ signal = 9 }, backoff.last_exit)
    assert(h:wait_log("respawning pluginserver 'lsn' in 300 ms", 2))
  end)

  it("backs off a crash loop with growing delays and does not respawn exit 127", function()
    h = start(function()
      return {
        { name = "crash", start = SERVERS .. "/exit_now.sh 3", respawn_delay = 100, respawn_delay_max = 400 },
        { name = "nocmd", start = "/usr/bin/env kps-no-such-program" },
      }
    end)
    assert(h:wait_log([[external pluginserver "nocmd" start command "/usr/bin/env kps%-no%-such%-program" exited with "command not found"]], 5))
    assert(h:wait_log("respawning pluginserver 'crash' in 400 ms", 5, 2))
    assert.equal(1, h:count_log("respawning pluginserver 'crash' at once"))
    local delays = {}
    for _, line in ipairs(h:log_lines("respawning pluginserver 'crash' in %d+ ms")) do
      delays[#delays + 1] = tonumber(line:match("in (%d+) ms"))
    end
    assert.same({ 100, 200, 400, 400 }, { delays[1], delays[2], delays[3], delays[4] })
    assert.equal(1, h:count_log("starting pluginserver process for nocmd"))
    local nocmd = h:server_status("nocmd")
    assert.equal("failed", nocmd.state)
    assert.same({ code = 127 }, nocmd.last_exit)
    local crash = h:server_status("crash")
    assert.same({ code = 3 }, crash.last_exit)
    assert.is_true(crash.restarts >= 3)
    assert(h:wait_log("%[crash:%d+%] exit_now: exiting with 3", 1))
  end)

  it("kills a server that ignores SIGTERM after stop_timeout", function()
    h = start(function()
      return { { name = "stubborn", start = SERVERS .. "/ignore_term.sh", stop_timeout = 300 } }
    end)
    local line = assert(h:wait_log("%[stubborn:%d+%] ignore_term: running", 5))
    local pid = tonumber(line:match("%[stubborn:(%d+)%]"))
    assert(h:quit())
    assert(h:wait_log("pluginserver 'stubborn', pid " .. pid .. ", did not stop within 300 ms of SIGTERM; sending SIGKILL", 1))
    stopped_cleanly(h, "stubborn", pid)
  end)

  it("leaves no server behind after SIGKILL of the whole nginx", function()
    h = start(function(prefix)
      return {
        { name = "lsn", start = listen_cmd(prefix, "lsn") },
        { name = "stubborn", start = SERVERS .. "/ignore_term.sh" },
      }
    end)
    local a = assert(wait_state(h, "lsn", "ready"))
    local line = assert(h:wait_log("%[stubborn:%d+%] ignore_term: running", 5))
    local b = tonumber(line:match("%[stubborn:(%d+)%]"))
    assert(h:kill9())
    assert(nginx.wait_until(function()
      return not procs.alive(a.pid) and not procs.alive(b)
    end, 5), "plugin servers outlived nginx")
    assert(nginx.wait_until(function() return #h:leftovers() == 0 end, 5))
    assert.same({}, processes_with(h.prefix))
  end)

  it("replaces the servers of a crashed worker 0 (they die with it)", function()
    h = start(function(prefix)
      return { { name = "lsn", start = listen_cmd(prefix, "lsn") } }
    end)
    local first = assert(wait_state(h, "lsn", "ready"))
    local worker0, helper = supervising_worker(h)
    assert.equal(helper, (procs.stat(first.pid)), "the server is a child of kps-helper")
    assert(procs.kill(worker0, "KILL"))
    assert(nginx.wait_until(function() return not procs.alive(first.pid) end, 5), "server outlived its worker")
    local second = assert(nginx.wait_until(function()
      local s = h:server_status("lsn")
      return s.state == "ready" and s.pid ~= first.pid and s
    end, 10))
    assert.is_true(procs.alive(second.pid))
    local new_worker0 = supervising_worker(h)
    assert.not_equal(worker0, new_worker0)
  end)

  it("hands the servers over on reload: the old ones stop before the new ones start", function()
    -- with a configured plugin, the master runs the info query at init and again on reload
    h = start(function(prefix)
      return { { name = "lsn", start = listen_cmd(prefix, "lsn"), query = DUMP } }
    end, 2, { { name = "two-a", config = {} } })
    assert.equal(1, h:count_log("%[pluginserver%] loaded #2 external plugins info"))
    local first = assert(wait_state(h, "lsn", "ready"))
    assert(h:reload())
    assert(h:wait_log("%[pluginserver%] loaded #2 external plugins info", 5, 2))
    assert(h:wait_log("successfully stopped pluginserver 'lsn', pid " .. first.pid, 5))
    local second = assert(nginx.wait_until(function()
      local s = h:server_status("lsn")
      return s.state == "ready" and s.pid ~= first.pid and s
    end, 5))
    assert.equal(0, second.restarts)
    assert.is_false(procs.alive(first.pid))
    -- one set of servers per socket: the new supervisor saw the old one gone before it
    -- started its own (both lines come from the new worker, in order; the old worker's
    -- "stopped" line comes from another process and may be written later)
    local gone_at, started_at
    local n = 0
    for line in h:error_log():gmatch("[^\n]+") do
      n = n + 1
      if line:find("previous pluginserver 'lsn', pid " .. first.pid .. ", has exited", 1, true) then
        gone_at = n
      elseif line:find("started, pid " .. second.pid, 1, true) then
        started_at = n
      end
    end
    assert.truthy(gone_at, "no hand-over line for pid " .. first.pid)
    assert.truthy(started_at, "no started line for pid " .. second.pid)
    assert.is_true(gone_at < started_at)
    -- the master ran the info query again (with nginx's SIGCHLD handler installed) without errors
    assert.same({}, h:log_lines("failed loading external plugins"))
  end)
end)

describe("plugin info query (stand-in servers)", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  local function query(h, names)
    return h:eval_json([[
      local conf = require "kong.runloop.plugin_servers.conf"
      local process = require "kong.runloop.plugin_servers.process"
      local defs = assert(conf.parse(kong.configuration))
      local infos, err = process.query(defs)
      if not infos then return { err = err } end
      for _, i in ipairs(infos) do i.server = i.server_def.name; i.server_def = nil end
      return infos
    ]])
  end

  it("returns every plugin of a server", function()
    h = start(function()
      return { { name = "two", start = SERVERS .. "/ignore_term.sh", query = DUMP } }
    end, 1)
    local infos = assert(query(h))
    assert.equal(2, #infos)
    assert.same({ "two-a", "two-b" }, { infos[1].name, infos[2].name })
    assert.same({ 10, 20 }, { infos[1].PRIORITY, infos[2].PRIORITY })
    assert.same({ "1.0.0", "2.0.0" }, { infos[1].VERSION, infos[2].VERSION })
    assert.same({ "access" }, infos[1].phases)
    assert.same({ "MsgPack:1", "MsgPack:1" }, { infos[1].protocol, infos[2].protocol })
    assert.same({ "two", "two" }, { infos[1].server, infos[2].server })
    assert(h:wait_log("%[pluginserver%] loaded #2 external plugins info", 1))
  end)

  it("bounds a hanging query by query_timeout and reports garbage output", function()
    h = start(function()
      return {
        { name = "hang", start = SERVERS .. "/ignore_term.sh", query = SERVERS .. "/hang_query.sh", query_timeout = 300 },
        { name = "junk", start = SERVERS .. "/ignore_term.sh", query = SERVERS .. "/garbage_dump.sh" },
      }
    end, 1)
    local t0 = nginx.now()
    local res = assert(query(h))
    assert.is_true(nginx.now() - t0 < 5)
    assert.matches("plugin server 'hang': query command \"[^\"]*hang_query.sh\" timed out after 300 ms %(killed%); stdout: \"hang_query: thinking\"", res.err)
    assert.matches("plugin server 'junk': query command \"[^\"]*garbage_dump.sh\" printed no JSON", res.err)
    assert.matches("stderr: \"some diagnostics\"", res.err, 1, true)
    -- nothing of the hanging query is left
    assert.same({}, (function()
      local out = {}
      for _, pid in ipairs(procs.descendants(h:master_pid())) do
        if (procs.cmdline(pid) or ""):find("hang_query", 1, true) or (procs.cmdline(pid) or ""):find("sleep 600", 1, true) then
          out[#out + 1] = pid
        end
      end
      return out
    end)())
  end)
end)
