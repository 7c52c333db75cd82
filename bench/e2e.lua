-- End to end through nginx (1 worker, loopback) with the real plugin servers, and
-- with no plugin: bounded wrk runs at 1 and 16 connections; then a short run under
-- `strace -c` for the worker's syscalls per request.
--
--   luajit bench/e2e.lua [seconds_per_run]      (run from the repo root; make bench does)
--
-- Placement: the nginx worker alone on core 0; the plugin servers (every process
-- the engine started, all threads) and wrk on core 1. CPU per request: the worker
-- from /proc/<pid>/schedstat (ns), the plugin side from /proc/<pid>/stat
-- utime+stime (ticks; it counts threads that ended, which kong-pdk's per-event
-- threads do). Each "slow" server pauses 1 ms before every PDK call, so the
-- worker sleeps before each reply.
-- Floors (client CPU ns per round trip, pinned, from tools/bench.sh): KPS_FLOOR_NS and
-- KPS_SLOW_FLOOR_NS with a blocking client and a server that answers at once or sleeps
-- 1 ms first; KPS_FLOOR_EPOLL_NS and KPS_SLOW_FLOOR_EPOLL_NS with a client that waits
-- like nginx. Each scenario is compared with the floor of its own server pauses.
-- The nginx cosocket floors: the same host, request path and placement as the no-plugin
-- run, plus K round trips per request (KPS_COSOCKET_ROUND_TRIPS, default 4: py-hello's 3
-- PDK calls and the event end) of 48 B / 64 B over a pooled cosocket in plain Lua
-- (fixtures/host/lua/kps_host/cosocket_floor.lua) to examples/transport_floor's `serve`
-- mode on core 1, answering at once or after 1 ms: what nginx itself costs per round
-- trip. Each plugin scenario is compared with them too (matched to its server pauses).
--   KPS_FLOOR_NS=.. KPS_SLOW_FLOOR_NS=.. luajit bench/e2e.lua 3 py-slow   (one scenario
--   plus the no-plugin baseline and the cosocket floors it needs)
-- Prints markdown table rows: `| e2e: ... | ... |`.

package.path = "./?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local wrk_report = require("spec.helpers.wrk").report

local SECONDS = tonumber(arg[1]) or 3
-- The transport floors' client CPU per round trip (ns), from tools/bench.sh: `fast` with a
-- server that answers at once, `slow` with one that sleeps SLOW_PAUSE_US first; `block`
-- with a blocking client, `epoll` with a client that waits like nginx.
local SLOW_PAUSE_US = 1000   -- bench/fixtures: py-slow.py PAUSE, js-slow.js PAUSE_MS
local FLOORS = {
  fast = { block = tonumber(os.getenv("KPS_FLOOR_NS")), epoll = tonumber(os.getenv("KPS_FLOOR_EPOLL_NS")) },
  slow = { block = tonumber(os.getenv("KPS_SLOW_FLOOR_NS")),
           epoll = tonumber(os.getenv("KPS_SLOW_FLOOR_EPOLL_NS")) },
}
local COSOCKET_ROUND_TRIPS = tonumber(os.getenv("KPS_COSOCKET_ROUND_TRIPS")) or 4
local REQUEST_BYTES, REPLY_BYTES = 48, 64   -- a PDK call's size, as the transport floors
local CONNECTIONS = { 1, 16 }
local TWO_CORES = tonumber(io.popen("nproc"):read("*l")) >= 2
local HZ = 100

local sh, capture = procs.sh, procs.capture

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local d = f:read("*a")
  f:close()
  return d
end

local function have(cmd)
  return sh("command -v " .. cmd .. " >/dev/null 2>&1")
end

-- Plugin servers outside fixtures/plugins (the slow variants) ----------------
local q = fixtures.sh_quote
local root = fixtures.root
local function custom_settings(name, start_cmd, query_cmd, prefix)
  local k = "pluginserver_" .. name:gsub("-", "_")
  return {
    prefix = prefix, pluginserver_names = { name },
    [k .. "_socket"] = prefix .. "/" .. name .. ".socket",
    [k .. "_start_cmd"] = start_cmd, [k .. "_query_cmd"] = query_cmd,
  }
end

local function py_slow(prefix)
  local py = root .. "/build/venv/bin/python3"
  local script = root .. "/bench/fixtures/py-slow.py"
  return custom_settings("py-slow",
    table.concat({ q(py), "-u", q(script), "-p", q(prefix), "--socket-name", "py-slow.socket" }, " "),
    table.concat({ q(py), "-u", q(script), "--dump" }, " "), prefix)
end

local function js_slow(prefix)
  local node = (read(root .. "/build/js-hello.node") or ""):match("[^\n]+") or "node"
  local server = root .. "/fixtures/plugins/js-hello/node_modules/kong-pdk/bin/kong-js-pluginserver"
  local dir = root .. "/bench/fixtures/js-slow"
  return custom_settings("js-slow",
    table.concat({ q(node), q(server), "-d", q(dir), "-p", q(prefix), "--sock-name", "js-slow.socket" }, " "),
    table.concat({ q(node), q(server), "-d", q(dir), "--dump-all-plugins" }, " "), prefix)
end

local function cosocket_floor_label(pause)
  return string.format("nginx cosocket floor (plain Lua, K=%d round trips/request, %s)", COSOCKET_ROUND_TRIPS,
                       pause and "server sleeps 1 ms before each reply" or "server answers at once")
end

-- `helper`: also runs when a filter picks another scenario (the others are compared with it).
local SCENARIOS = {
  { label = "no plugin", helper = true },
  { label = cosocket_floor_label(false), cosocket = "fast", server_us = 0, helper = true },
  { label = cosocket_floor_label(true), cosocket = "slow", server_us = SLOW_PAUSE_US, helper = true },
  { label = "py-hello", name = "py-hello", header = "x-hello-from-python", fixture = "py-hello" },
  { label = "py-slow (1 ms pause per PDK call)", name = "py-slow", header = "x-python-slow",
    fixture = "py-hello", settings = py_slow, pause_us = SLOW_PAUSE_US },
  { label = "js-hello", name = "js-hello", header = "x-hello-from-javascript", fixture = "js-hello" },
  { label = "js-slow (1 ms pause per PDK call)", name = "js-slow", header = "x-javascript-slow",
    fixture = "js-hello", settings = js_slow, pause_us = SLOW_PAUSE_US },
  { label = "go-hello", name = "go-hello", header = "x-hello-from-go", fixture = "go-hello" },
}

-- CPU readings ---------------------------------------------------------------
local function ticks_ns(pid)
  local stat = read("/proc/" .. pid .. "/stat")
  if not stat then return 0 end
  local rest = stat:match("^%d+ %(.*%) (.*)$")
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  -- utime, stime (fields 14, 15) of the process: all threads, ended ones included
  return (tonumber(f[12]) + tonumber(f[13])) * 1e9 / HZ
end

-- A worker's CPU time: schedstat's nanoseconds where the kernel has them, else ticks.
local function worker_cpu_ns(pid)
  local text = read("/proc/" .. pid .. "/schedstat")
  if text then
    return tonumber(text:match("^(%d+)"))
  end
  return ticks_ns(pid)
end

local function servers_cpu_ns(pids)
  local sum = 0
  for _, pid in ipairs(pids) do
    sum = sum + ticks_ns(pid)
  end
  return sum
end

-- wrk ------------------------------------------------------------------------
local function wrk(port, connections, seconds, pin)
  local cmd = string.format("%swrk -t1 -c%d -d%ds --latency http://127.0.0.1:%d/ 2>&1",
                            pin and "taskset -c 1 " or "", connections, seconds, port)
  return wrk_report(capture(cmd))
end

-- One scenario ---------------------------------------------------------------
local function counters(h, name)
  if not name then return { events = 0, pdk_calls = 0 } end
  local list = h:status_list() or {}
  for _, s in ipairs(list) do
    if s.name == name then return s.counters end
  end
  return { events = 0, pdk_calls = 0 }
end

local function state_of(h, name)
  local list = h:status_list() or {}
  for _, s in ipairs(list) do
    if s.name == name then return s.state end
  end
end

-- The floor per round trip that matches a scenario, from `floors` ({ fast = {...},
-- slow = {...} }, each keyed by `key`): a slow server pauses before each PDK call, so
-- `calls` of the `calls + 1` round trips of an event wait SLOW_PAUSE_US and the last
-- (the event's end) comes at once. nil when a floor it needs was not measured.
local function matched(floors, sc, calls, key)
  local fast = floors.fast[key]
  if not sc.pause_us then return fast end
  local slow = floors.slow[key]
  if not (slow and fast) then return nil end
  return (calls * slow + fast) / (calls + 1)
end

-- How a row names its floor: the main words, then what the figure in brackets is.
local function floor_words(sc, calls)
  if not sc.pause_us then return "the floor with a server that answers at once", "" end
  return string.format("the floor with the same %g ms server pauses", sc.pause_us / 1000),
         string.format("%g ms before %.0f of %.0f round trips, ", sc.pause_us / 1000, calls, calls + 1)
end

-- "fast"/"slow" -> connections -> the nginx cosocket floor's worker ns per round trip above no-plugin
local cosocket_floor = { fast = {}, slow = {} }

local baseline = {}   -- connections -> worker ns per request without plugins
local baseline_waits  -- the worker's epoll_wait per request without plugins (strace, 1 conn)

local function row(label, text)
  print(string.format("| e2e: %s | %s |", label, text))
  io.stdout:flush()
end

-- The cosocket floors' echo server (examples/transport_floor serve) on core 1; returns
-- its pid and socket path, or nil and why.
local FLOOR_BIN = root .. "/target/release/examples/transport_floor"
local function start_echo(prefix, server_us)
  if not sh("test -x " .. q(FLOOR_BIN)) then
    return nil, "no " .. FLOOR_BIN .. " (cargo build --release --examples)"
  end
  local path = prefix .. "/floor.socket"
  sh(string.format("%s%s serve %s %d %d %d >%s 2>&1 & echo $! >%s", TWO_CORES and "taskset -c 1 " or "",
                   q(FLOOR_BIN), q(path), REQUEST_BYTES, REPLY_BYTES, server_us,
                   q(prefix .. "/logs/echo.log"), q(prefix .. "/echo.pid")))
  local pid = tonumber(read(prefix .. "/echo.pid"))
  if not (pid and nginx.wait_until(function() return sh("test -S " .. q(path)) end, 5)) then
    if pid then procs.kill(pid, "KILL") end
    return nil, "echo server did not listen: " .. (read(prefix .. "/logs/echo.log") or "")
  end
  return pid, path
end

local function stop_echo(pid)
  if pid then
    procs.kill(pid, "KILL")
    nginx.wait_until(function() return not procs.alive(pid) end, 5)
  end
end

local function run(sc)
  if sc.fixture then
    local ok, why = fixtures.available(sc.fixture)
    if not ok then
      return row(sc.label, "skipped: " .. why)
    end
  end
  local prefix = nginx.make_prefix()
  local settings = { prefix = prefix }
  local plugins = {}
  if sc.name then
    settings = sc.settings and sc.settings(prefix) or fixtures.settings({ sc.name }, prefix)
    plugins = { { name = sc.name, config = { message = "bench" } } }
  end
  local echo_pid, floor_conf
  if sc.cosocket then
    local path
    echo_pid, path = start_echo(prefix, sc.server_us)
    if not echo_pid then
      sh("rm -rf " .. q(prefix))
      return row(sc.label, "skipped: " .. tostring(path):sub(1, 200))
    end
    floor_conf = { socket = path, round_trips = COSOCKET_ROUND_TRIPS,
                   request_bytes = REQUEST_BYTES, reply_bytes = REPLY_BYTES }
  end
  local h, err = nginx.start { prefix = prefix, workers = 1, log_level = "notice",
                               configuration = settings, plugins = plugins, cosocket_floor = floor_conf }
  if not h then
    stop_echo(echo_pid)
    return row(sc.label, "skipped: nginx did not start: " .. tostring(err):sub(1, 200))
  end
  local ok, perr = pcall(function()
    if sc.name and not nginx.wait_until(function() return state_of(h, sc.name) == "ready" end, 15) then
      error("server not ready: " .. tostring(state_of(h, sc.name)))
    end
    local res = h:request { path = "/" }
    if not res or res.status ~= 200 or (sc.header and not res.headers[sc.header]) then
      local lines = h:log_lines("%[error%]")
      error(string.format("probe request failed (status %s): %s", tostring(res and res.status),
                          (lines[#lines] or ""):sub(1, 240)))
    end
    local worker = assert(h:worker_pids()[1], "no worker")
    local master = h:master_pid()
    local servers = { echo_pid }
    for _, pid in ipairs(procs.descendants(master)) do
      if pid ~= worker then servers[#servers + 1] = pid end
    end
    if TWO_CORES then
      sh("taskset -pc 0 " .. worker .. " >/dev/null")
      for _, pid in ipairs(servers) do
        sh("taskset -a -pc 1 " .. pid .. " >/dev/null 2>&1")
      end
    end
    wrk(h.port, 4, 1, TWO_CORES)  -- warm-up: instance started, JIT traces, pooled connections
    local rts_per_req  -- round trips per request at 1 connection
    for _, c in ipairs(CONNECTIONS) do
      local c0, w0, s0 = counters(h, sc.name), worker_cpu_ns(worker), servers_cpu_ns(servers)
      local r = wrk(h.port, c, SECONDS, TWO_CORES)
      local w1, s1, c1 = worker_cpu_ns(worker), servers_cpu_ns(servers), counters(h, sc.name)
      local n = r.requests
      local w_ns = (w1 - w0) / n
      local s_us = (s1 - s0) / n / 1000
      local text = string.format("%d conn: %.0f req/s, p50 %.2f ms, p99 %.2f ms, worker CPU **%.0f µs**/req",
                                 c, r.rps, r.p50 or -1, r.p99 or -1, w_ns / 1000)
      if sc.cosocket then
        text = text .. string.format(", echo server CPU %.0f µs/req", s_us)
        if baseline[c] then
          local per_rt = (w_ns - baseline[c]) / COSOCKET_ROUND_TRIPS
          cosocket_floor[sc.cosocket][c] = per_rt
          text = text .. string.format(", worker CPU above no-plugin **%.1f µs per round trip**", per_rt / 1000)
          local rust = FLOORS[sc.cosocket].block
          if rust then
            text = text .. string.format(" = **%.1f× the Rust floor** (%.1f µs: same server, blocking client)",
                                         per_rt / rust, rust / 1000)
          end
          local rust_epoll = c == 1 and FLOORS[sc.cosocket].epoll
          if rust_epoll then
            text = text .. string.format("; %.1f× the nginx-like Rust floor (%.1f µs)", per_rt / rust_epoll,
                                         rust_epoll / 1000)
          end
        end
      elseif sc.name then
        -- Round trips per request: one per PDK call and one per event (its end); a
        -- request runs one event per phase the plugin has (go-hello: access, response, log).
        local events = c1.events - c0.events
        local calls = c1.pdk_calls - c0.pdk_calls
        local calls_event = calls / math.max(events, 1)  -- PDK calls per event
        local calls_req, events_req = calls / n, events / n
        local rts_req = calls_req + events_req
        if c == 1 then rts_per_req = rts_req end
        text = text .. string.format(", plugin server CPU %.0f µs/req, %.1f PDK calls in %.1f events per request",
                                     s_us, calls_req, events_req)
        if baseline[c] and calls > 0 then
          local extra = w_ns - baseline[c]
          local per_rt = extra / rts_req
          text = text .. string.format(", worker CPU above no-plugin **%.1f µs per PDK call**, %.1f µs per round trip",
                                       extra / calls_req / 1000, per_rt / 1000)
          local floor = matched(FLOORS, sc, calls_event, "block")
          if floor then
            local words, detail = floor_words(sc, calls_event)
            text = text .. string.format(" = **%.1f× %s** (%.1f µs: %sblocking client; target ≤ 2×)",
                                         per_rt / floor, words, floor / 1000, detail)
          end
          -- what nginx and its cosockets alone cost per round trip, in the same run
          local ngx_floor = matched(cosocket_floor, sc, calls_event, c)
          if ngx_floor then
            text = text .. string.format(" = **%.1f× the nginx cosocket floor** (%.1f µs%s)", per_rt / ngx_floor,
                                         ngx_floor / 1000, sc.pause_us and ", same pauses" or "")
          end
          -- nginx registers each connection EPOLLIN|EPOLLOUT|EPOLLET, so a server that
          -- reads the request and replies later wakes the worker twice per round trip:
          -- that part is nginx's; the floor of a client that waits the same way has it too.
          local nginx_floor = c == 1 and matched(FLOORS, sc, calls_event, "epoll")
          if nginx_floor then
            local server = sc.pause_us and string.format("same %g ms pauses", sc.pause_us / 1000)
                           or "server answers at once"
            text = text .. string.format("; second figure: %.1f× the nginx-like floor (%.1f µs: %s, "
                                         .. "client waiting like nginx)",
                                         per_rt / nginx_floor, nginx_floor / 1000, server)
          end
        end
      else
        baseline[c] = w_ns
      end
      if r.non2xx > 0 or r.errors then
        text = text .. string.format(" (non-2xx %d%s)", r.non2xx, r.errors and ("; " .. r.errors) or "")
      end
      row(sc.label, text)
    end
    -- Syscalls of the worker per request, 1 connection.
    if have("strace") then
      local out = prefix .. "/strace.txt"
      sh(string.format("strace -c -f -o %s -p %d >/dev/null 2>&1 & echo $! > %s/strace.pid", out, worker, prefix))
      nginx.sleep(0.5)
      local r = wrk(h.port, 1, 2, TWO_CORES)
      local spid = tonumber(read(prefix .. "/strace.pid"))
      procs.kill(spid, "INT")
      nginx.wait_until(function() return not procs.alive(spid) end, 5)
      local text = read(out) or ""
      local parts = {}
      for calls, name in text:gmatch("\n%s*[%d%.]+%s+[%d%.]+%s+%d+%s+(%d+)%s+%d*%s*([%w_]+)") do
        if name ~= "total" then
          parts[#parts + 1] = { name = name, per = tonumber(calls) / r.requests }
        end
      end
      table.sort(parts, function(a, b) return a.per > b.per end)
      local items = {}
      for _, p in ipairs(parts) do
        if p.per >= 0.05 then
          items[#items + 1] = string.format("%s %.1f", p.name, p.per)
        end
      end
      local waits = 0
      for _, p in ipairs(parts) do
        if p.name == "epoll_wait" then waits = p.per end
      end
      local line = "worker syscalls per request (strace -c, 1 conn): " .. table.concat(items, ", ")
      local round_trips = sc.cosocket and COSOCKET_ROUND_TRIPS
                          or (rts_per_req and rts_per_req > 0 and rts_per_req)
      if not (sc.name or sc.cosocket) then
        baseline_waits = waits
      elseif baseline_waits and round_trips then
        -- the floors' epoll_wait per round trip: about 1 when the server answers at once,
        -- 2 when it replies later (nginx's EPOLLOUT edge on the server's read, then the reply)
        line = line .. string.format("; above no-plugin: **%.1f epoll_wait per round trip**",
                                     (waits - baseline_waits) / round_trips)
      end
      row(sc.label, line)
    end
  end)
  h:stop()
  stop_echo(echo_pid)
  if not ok then
    row(sc.label, "skipped: " .. tostring(perr):gsub("\n", " "):sub(1, 300))
  end
end

local only = arg[2]
for _, sc in ipairs(SCENARIOS) do
  if not only or sc.label:find(only, 1, true) or (only ~= "" and sc.helper) then
    run(sc)
  end
end
