-- Where a worker's time goes per request, ours and Kong's (make bench-kong's hosts):
-- one host per implementation, 1 worker, `connections` wrk connections for `seconds`;
-- meanwhile LuaJIT's sampling profiler (jit.profile, started in the worker through the
-- host's eval endpoint) counts samples per Lua function or per VM state, and
-- `perf record` (when present) the worker's CPU per shared object (nginx, LuaJIT, our
-- library, the kernel).
--
--   KONG_SRC=... [KONG_PB_DIR=...] luajit bench/profile.lua go-hello 16 [seconds] [ours|kong]
--
-- Prints, per implementation, the shares of the samples per VM state (compiled code,
-- interpreter, C functions, garbage collector, JIT compiler) and per Lua function
-- (innermost frame), perf's shares per object, and `perf stat`'s counts per request
-- in the worker and the plugin server (system calls, wake-ups, context switches, CPU).
-- KPS_PROFILE_PIN=1 places the worker on core 0 and the server and wrk on core 1.
package.path = "./?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local NAME = arg[1] or "go-hello"
local CONNECTIONS = tonumber(arg[2]) or 16
local SECONDS = tonumber(arg[3]) or 4
local ONLY = arg[4]
local PIN = os.getenv("KPS_PROFILE_PIN") == "1"
local KONG_SRC = os.getenv("KONG_SRC")
local PB_DIR = os.getenv("KONG_PB_DIR")
if PB_DIR == "" then PB_DIR = nil end

local sh, capture = procs.sh, procs.capture

-- Started in the worker: samples every 1 ms, counted per function (with its
-- module) and per VM state.
local START = [[
local profile = require "jit.profile"
local fns, vms = {}, {}
_G.__kps_profile = { fns = fns, vms = vms }
profile.start("fi1", function(thread, samples, vmstate)
  local key = profile.dumpstack(thread, "F", 1)
  fns[key] = (fns[key] or 0) + samples
  vms[vmstate] = (vms[vmstate] or 0) + samples
end)
return "started"
]]

local STOP = [[
require("jit.profile").stop()
local function top(t, n)
  local list, total = {}, 0
  for k, v in pairs(t) do
    list[#list + 1] = { k, v }
    total = total + v
  end
  table.sort(list, function(a, b) return a[2] > b[2] end)
  local out = {}
  for i = 1, math.min(n, #list) do out[i] = list[i] end
  return { total = total, top = out }
end
return { fns = top(_G.__kps_profile.fns, 25), vms = top(_G.__kps_profile.vms, 8) }
]]

local function start_host(impl)
  local prefix = nginx.make_prefix()
  local s = fixtures.server(NAME, prefix)
  local opts = { prefix = prefix, workers = 1, log_level = "notice",
                 plugins = { { name = NAME, config = { message = "profile" } } },
                 http_extra = "lua_max_pending_timers 16384; lua_max_running_timers 4096;" }
  if impl == "kong" then
    opts.configuration = { prefix = prefix, pluginservers = { { name = NAME, socket = s.socket,
                                                                query_command = s.query_cmd } } }
    local stubs = fixtures.root .. "/bench/kong_stubs"
    opts.lua_path_prefix = table.concat({ stubs .. "/?.lua", KONG_SRC .. "/?.lua", KONG_SRC .. "/?/init.lua",
                                          PB_DIR and PB_DIR .. "/?.lua" or nil }, ";")
    opts.lua_cpath_prefix = PB_DIR and PB_DIR .. "/?.so" or nil
  else
    opts.configuration = fixtures.settings({ NAME }, prefix)
  end
  local h = assert(nginx.start(opts))
  if impl == "kong" then
    -- from a worker, in nginx's session, as Kong's worker 0 starts it (bench/kong.lua)
    local pidfile = prefix .. "/server.pid"
    h:eval(string.format("os.execute(%q) return 'ok'", string.format("(%s) >/dev/null 2>&1 </dev/null & echo $! >%s",
                                                                      s.start_cmd, fixtures.sh_quote(pidfile))))
    local f = io.open(pidfile, "rb")
    h.server_pid = f and tonumber(f:read("*l"))
    if f then f:close() end
    assert(nginx.wait_until(function() return sh("test -S " .. fixtures.sh_quote(s.socket)) end, 20))
  end
  assert(nginx.wait_until(function()
    local res = h:request { path = "/" }
    return res and res.status == 200
  end, 20, 0.2), "no 200 from the " .. impl .. " host")
  sh(string.format("wrk -t1 -c4 -d1s http://127.0.0.1:%d/ >/dev/null 2>&1", h.port))
  return h
end

local VM = { N = "compiled (JIT) code", I = "interpreter", C = "C functions", G = "garbage collector",
             J = "JIT compiler" }

-- What `perf stat` counts per request in the worker and in the plugin server:
-- the messages' system calls and the wake-ups and context switches around them.
local STAT_EVENTS = "syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,"
  .. "syscalls:sys_enter_read,syscalls:sys_enter_write,sched:sched_wakeup,context-switches,task-clock"

-- The plugin server's pid: started by the bench (Kong's host) or our supervisor.
local function server_pid(h)
  if h.server_pid then
    return h.server_pid
  end
  local list = h:status_list() or {}
  for _, e in pairs(list) do
    if e.pid then return e.pid end
  end
end

local function print_stat(what, path, requests)
  local f = io.open(path, "rb")
  local text = f and f:read("*a") or ""
  if f then f:close() end
  print("  perf stat, " .. what .. " per request:")
  for line in text:gmatch("[^\n]+") do
    local value, name = line:match("^([%d%.]+),[^,]*,([^,]+)")
    if value then
      local unit = name == "task-clock" and " ms" or ""
      print(string.format("   %10.3f%s  %s", tonumber(value) / math.max(requests, 1), unit, name))
    end
  end
end

local function profile(impl)
  local h = start_host(impl)
  local worker = h:worker_pids()[1]
  local server = server_pid(h)
  if PIN then
    -- as make bench-kong places them: the worker on core 0, the server and wrk on core 1
    sh("taskset -pc 0 " .. worker .. " >/dev/null")
    sh("taskset -a -pc 1 " .. server .. " >/dev/null 2>&1")
  end
  assert(h:eval(START))
  local perf_out = h.prefix .. "/perf.data"
  local have_perf = sh("command -v perf >/dev/null 2>&1")
  if have_perf then
    sh(string.format("perf record -q -o %s -p %d -- sleep %d >/dev/null 2>&1 & echo $! >%s.pid", perf_out, worker,
                     SECONDS, perf_out))
    -- the counts run on past wrk, while the log events still queued finish
    for who, pid in pairs { worker = worker, server = server } do
      sh(string.format("perf stat -x, -e %s -p %d -o %s/stat_%s.txt -- sleep %d >/dev/null 2>&1 &", STAT_EVENTS, pid,
                       h.prefix, who, SECONDS + 3))
    end
  end
  local out = capture(string.format("%swrk -t2 -c%d -d%ds http://127.0.0.1:%d/ 2>&1", PIN and "taskset -c 1 " or "",
                                    CONNECTIONS, SECONDS, h.port))
  local requests = tonumber(out:match("(%d+) requests in")) or 0
  local res = assert(h:eval_json(STOP), "no profile from the worker")
  print(string.format("\n### %s: %d requests in %d s at %d connections; %d samples (1 ms) in the worker",
                      impl, requests, SECONDS, CONNECTIONS, res.vms.total))
  print("  VM states:")
  for _, e in ipairs(res.vms.top) do
    print(string.format("  %5.1f%%  %s", 100 * e[2] / res.vms.total, VM[e[1]] or e[1]))
  end
  print("  Lua functions (innermost frame):")
  for _, e in ipairs(res.fns.top) do
    print(string.format("  %5.1f%%  %s", 100 * e[2] / res.fns.total, e[1]))
  end
  if have_perf then
    local f = io.open(perf_out .. ".pid")
    local perf_pid = f and tonumber(f:read("*l"))
    if f then f:close() end
    nginx.wait_until(function() return not (perf_pid and procs.alive(perf_pid)) end, SECONDS + 20)
    local report = capture(string.format("perf report -q -i %s --sort dso 2>/dev/null | head -12", perf_out))
    print("  perf, worker CPU per object:")
    for line in report:gmatch("[^\n]+") do print("   " .. line) end
    sh("sleep 4")
    print_stat("worker", h.prefix .. "/stat_worker.txt", requests)
    print_stat("plugin server", h.prefix .. "/stat_server.txt", requests)
  end
  h:stop()
  if h.server_pid then procs.kill(h.server_pid, "TERM") end
end

for _, impl in ipairs { "ours", "kong" } do
  if (not ONLY or ONLY == impl) and (impl == "ours" or KONG_SRC) then
    profile(impl)
  end
end
