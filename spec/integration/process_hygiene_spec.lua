-- What a plugin server can reach of our processes, in real nginx: the descriptors a
-- real server and a query command get, a signal path that meets an unrelated process
-- where a previous server was recorded, a foreign listener on a server's socket, and
-- a server flooding its output.
local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"
local fx = require "spec.helpers.fixtures"

local ROOT = nginx.root
local SERVERS = ROOT .. "/fixtures/servers"
local DUMP = SERVERS .. "/two_plugins_dump.sh"

-- A Lua pattern matching `text` literally.
local function plain(text)
  return (text:gsub("%p", "%%%0"))
end

local function wait_state(h, name, state, timeout)
  return h:wait_state(name, state, timeout or 10)
end

-- Settings of a stand-in server; `s` = { name, start, query, ... }.
local function stand_in(conf, s)
  local k = "pluginserver_" .. s.name:gsub("-", "_")
  conf.pluginserver_names[#conf.pluginserver_names + 1] = s.name
  conf[k .. "_socket"] = conf.prefix .. "/" .. s.name .. ".socket"
  conf[k .. "_start_cmd"] = s.start
  conf[k .. "_query_cmd"] = s.query or DUMP
  conf[k .. "_stop_timeout"] = tostring(s.stop_timeout or 1000)
  conf[k .. "_ready_timeout"] = tostring(s.ready_timeout or 2000)
  conf[k .. "_log_window"] = s.log_window and tostring(s.log_window) or nil
  return conf
end

-- { [fd] = target } of a process.
local function fds_of(pid)
  local out = {}
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null")
  for name in p:lines() do
    local fd = tonumber(name)
    local l = io.popen("readlink /proc/" .. pid .. "/fd/" .. fd .. " 2>/dev/null")
    out[fd] = l:read("*l")
    l:close()
  end
  p:close()
  return out
end

-- Inodes of the TCP sockets of the machine (nginx's listening socket is one).
local function tcp_inodes()
  local inodes = {}
  for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (procs.read_file(file) or ""):gmatch("[^\n]+") do
      local inode = line:match("^%s*%d+:%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
      if inode then
        inodes[inode] = true
      end
    end
  end
  return inodes
end

-- Checks the descriptors of a server: 0 is /dev/null, 1 and 2 one pipe; above 2
-- only what its runtime opens itself (listed by kind, with why), never a file, a
-- TCP socket (nginx's listeners) or another pipe (the helper's, other servers').
local function assert_clean(pid, what)
  local fds = fds_of(pid)
  assert.equal("/dev/null", fds[0], what .. ": stdin")
  assert.matches("^pipe:", fds[1], what .. ": stdout")
  assert.equal(fds[1], fds[2], what .. ": stderr is stdout's pipe")
  local tcp = tcp_inodes()
  for fd, target in pairs(fds) do
    if fd > 2 then
      local inode = target:match("^socket:%[(%d+)%]$")
      local allowed =
        -- its own unix listening socket and accepted connections
        (inode and not tcp[inode])
        -- Go's runtime: the netpoller's epoll instance and its wake-up eventfd
        or target == "anon_inode:[eventpoll]" or target == "anon_inode:[eventfd]"
      assert.is_truthy(allowed, what .. ": fd " .. fd .. " -> " .. tostring(target))
      -- a pipe above 2 would be the helper's or another server's
      assert.is_nil(target:match("^pipe:"), what .. ": fd " .. fd .. " -> " .. target)
    end
  end
  return fds
end

describe("process hygiene (real nginx)", function()
  local h
  local strays = {}

  after_each(function()
    if h then
      h:stop()
      h = nil
    end
    for _, pid in ipairs(strays) do
      procs.kill(pid, "KILL")
    end
    strays = {}
  end)

  it("real servers and a query command (at start and on reload) get only 0, 1 and 2", function()
    for _, name in ipairs { "go-hello", "py-hello" } do
      local ok, why = fx.available(name)
      assert(ok, why)
    end
    local prefix = nginx.make_prefix()
    local listing = prefix .. "/query-fds.txt"
    local conf = fx.settings({ "go-hello", "py-hello" }, prefix)
    stand_in(conf, { name = "fds", start = SERVERS .. "/listen.py " .. prefix .. "/fds.socket",
                     query = SERVERS .. "/fds_dump.py " .. listing })
    h = assert(nginx.start { prefix = prefix, workers = 2, configuration = conf,
                             plugins = { { name = "fds-a", config = {} } } })

    -- The query command ran in the nginx master (log files open; on reload also the
    -- listening sockets): it saw exactly 0, 1 and 2.
    local function query_fds()
      local fds = {}
      for line in assert(procs.read_file(listing)):gmatch("[^\n]+") do
        local fd, target = line:match("^(%d+) (.*)$")
        fds[#fds + 1] = fd .. " " .. target
      end
      return fds
    end
    local first = query_fds()
    assert.equal(3, #first, table.concat(first, "\n"))
    assert.matches("^0 /dev/null$", first[1])
    assert.matches("^1 pipe:", first[2])
    assert.matches("^2 pipe:", first[3])
    os.remove(listing)
    assert(h:reload())
    assert(nginx.wait_until(function() return procs.read_file(listing) end, 10))
    local again = query_fds()
    assert.equal(3, #again, table.concat(again, "\n"))

    for _, name in ipairs { "go-hello", "py-hello" } do
      local s = assert(wait_state(h, name, "ready", 15), name .. " not ready")
      assert_clean(s.pid, name)
    end
  end)

  it("a process written where the previous server was recorded survives the reload", function()
    local prefix = nginx.make_prefix()
    local conf = stand_in({ prefix = prefix, pluginserver_names = {} },
      { name = "lsn", start = SERVERS .. "/listen.py " .. prefix .. "/lsn.socket", stop_timeout = 300 })
    h = assert(nginx.start { prefix = prefix, workers = 2, log_level = "info", configuration = conf,
                             plugins = { { name = "two-a", config = {} } } })
    local first = assert(wait_state(h, "lsn", "ready"))
    -- An unrelated process, leading its own process group as servers do.
    local p = io.popen("setsid sleep 100 >/dev/null 2>&1 & echo $!")
    local other = tonumber(p:read("*l"))
    p:close()
    strays[#strays + 1] = other
    assert(nginx.wait_until(function()
      return (procs.cmdline(other) or ""):find("sleep", 1, true)
    end, 5))
    -- Its pid where lsn's was, with lsn's start time; the old worker 0 may no longer
    -- write (it would record its server's stop), so the new one reads exactly this.
    assert(h:eval(([[
      local state = require "kong.runloop.plugin_servers.state"
      local e = state.get("lsn")
      assert(e.pid_start, "no start time recorded")
      assert(state.set("lsn", { state = "ready", pid = %d, pid_start = e.pid_start }))
      ngx.shared.kong_plugin_servers:set("ps:owner", -1)
      return "ok"
    ]]):format(other)))
    assert(h:reload())
    assert(h:wait_log(plain("pid " .. other .. ", recorded for the previous pluginserver 'lsn', is not that server"), 10))
    local second = assert(nginx.wait_until(function()
      local s = h:server_status("lsn")
      return s and s.state == "ready" and s.pid ~= first.pid and s.pid ~= other and s
    end, 10))
    -- Well past the stop timeout (300 ms): the kill path would have run.
    nginx.sleep(1)
    assert.is_true(procs.alive(other), "the unrelated process was killed")
    assert.same({}, h:log_lines(plain("pid " .. other .. ", still running; killing it")))
    assert.is_true(procs.alive(second.pid))
  end)

  it("a foreign listener on a server's socket is not ready, and status() says who", function()
    local prefix = nginx.make_prefix()
    local sock = prefix .. "/own.socket"
    -- Another process listens on the socket before nginx starts.
    local p = io.popen(SERVERS .. "/listen.py " .. sock .. " >/dev/null 2>&1 & echo $!")
    local foreign = tonumber(p:read("*l"))
    p:close()
    strays[#strays + 1] = foreign
    assert(nginx.wait_until(function() return procs.is_socket(sock) end, 5))
    local conf = stand_in({ prefix = prefix, pluginserver_names = {} },
      { name = "own", start = "/bin/sleep 100" })
    h = assert(nginx.start { prefix = prefix, workers = 2, configuration = conf })
    local note = "foreign listener pid " .. foreign .. " on " .. sock
    local s = assert(nginx.wait_until(function()
      local st = h:server_status("own")
      return st and st.note == note and st
    end, 10), "no note " .. note)
    assert.equal("starting", s.state)
    assert(h:wait_log(plain("is not ready: " .. note), 5))
    nginx.sleep(0.5)
    assert.equal("starting", h:server_status("own").state)
    -- A request waits for readiness, then fails: it never reaches the foreign listener.
    local wait = h:eval([[
      local pid, err = require("kong.runloop.plugin_servers.state").wait_ready("own", 100)
      return tostring(pid) .. " " .. tostring(err)
    ]])
    assert.matches("nil pluginserver 'own' not ready after 100 ms", wait, 1, true)
  end)

  -- nginx (1 worker at `log_level`) supervising the flood stand-in (flood.sh `seconds`:
  -- output lines as fast as it can) with `log_window` ms, once it has started.
  local function start_flood(seconds, log_window, log_level)
    local prefix = nginx.make_prefix()
    local conf = stand_in({ prefix = prefix, pluginserver_names = {} },
      { name = "flood", start = SERVERS .. "/flood.sh " .. seconds, log_window = log_window })
    h = assert(nginx.start { prefix = prefix, workers = 1, log_level = log_level, configuration = conf })
    assert(h:wait_log("%[pluginserver%] started, pid %d+", 10))
  end

  it("a flooding server: lines over the budget are dropped with one summary a window, memory stays bounded", function()
    start_flood(3, 1000, "info")
    local worker = h:worker_pids()[1]
    local function rss_kb()
      local status = procs.read_file("/proc/" .. worker .. "/status") or ""
      return tonumber(status:match("VmRSS:%s+(%d+)"))
    end
    local before = rss_kb()
    local peak = before
    local deadline = nginx.now() + 4
    while nginx.now() < deadline do
      peak = math.max(peak, rss_kb() or 0)
      nginx.sleep(0.1)
    end
    local summary = assert(h:wait_log("%[pluginserver%] flood: %d+ output lines dropped in the last 1000 ms", 5))
    local dropped = tonumber(summary:match("flood: (%d+) output lines dropped"))
    assert.is_true(dropped > 1000, summary)
    -- 3 s of flood: at most 100 lines a window, 5 windows with some slack
    local lines = h:count_log("%[flood:%d+%] flood line")
    assert.is_true(lines <= 500, lines .. " flood lines logged")
    assert.is_true(peak - before < 64 * 1024, "worker RSS grew by " .. (peak - before) .. " kB")
    -- nginx is still up and serving
    assert.is_true(procs.alive(h:master_pid()))
    assert.is_true(procs.alive(worker))
    local res = assert(h:request { headers = { host = "example.test" } })
    assert.is_truthy(res.status)
  end)

  it("at a log level that would not print server output, the lines are not even counted", function()
    start_flood(1, 200, "notice")
    nginx.sleep(2)
    -- The summary is a warning (printed at notice): none means the info lines were
    -- filtered in Rust before any budget counted them.
    assert.same({}, h:log_lines("output lines dropped"))
    assert.equal(0, h:count_log("%[flood:%d+%]"))
  end)
end)
