-- make bench-kong: Kong's own kong.runloop.plugin_servers (Lua, from a Kong source
-- tree) and ours, side by side in the same Kong-like host (fixtures/host/) against the
-- same real plugin servers (go-hello, js-hello, py-hello, all three), alternating the
-- two in every row. Not part of CI; loopback only; every run bounded.
--
--   KONG_SRC=/path/to/kong luajit bench/kong.lua     (run from the repo root; make bench-kong does)
--
-- Environment: KONG_SRC (required: a Kong source tree, the directory holding kong/),
-- KONG_PB_DIR (a directory with lua-protobuf's pb.so and protoc.lua, for Kong's Go
-- rows; without a loadable `pb` they are skipped), KPS_BENCH_SECONDS (per wrk run, 4),
-- KPS_BENCH_REPS (repetitions per row and implementation, 2), KPS_BENCH_ONLY (run only
-- the rows whose label contains this text, e.g. "js-hello").
--
-- Kong's modules that the host lacks are the stand-ins in bench/kong_stubs/. Kong's
-- http block sets lua_max_pending_timers 16384 and lua_max_running_timers 4096 (its
-- log phase is one timer per event): both hosts get them here. Kong's servers are
-- started with the same command lines from a worker of Kong's host (through its eval
-- endpoint: Kong's process.lua needs ngx.pipe, which Debian's lua module lacks), so
-- that they are in nginx's session as under Kong; ours by our supervisor.
-- 1-worker rows: the worker on core 0, the plugin servers and wrk on core 1 (when
-- there are 2 cores); 2-worker rows unpinned. Worker CPU: utime+stime of every worker
-- (all threads) from /proc/<pid>/stat, read after the log events still queued when
-- wrk stops have run (the workers idle again), so that deferred log work is counted.
package.path = "./?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local wrk_report = require("spec.helpers.wrk").report

local root = fixtures.root
local KONG_SRC = os.getenv("KONG_SRC")
local PB_DIR = os.getenv("KONG_PB_DIR")
if PB_DIR == "" then PB_DIR = nil end
local SECONDS = tonumber(os.getenv("KPS_BENCH_SECONDS")) or 4
local REPS = tonumber(os.getenv("KPS_BENCH_REPS")) or 2
local ONLY = os.getenv("KPS_BENCH_ONLY")
local TWO_CORES = tonumber(io.popen("nproc"):read("*l")) >= 2 and os.getenv("KPS_BENCH_PIN") ~= "0"
local HZ = 100
local KONG_TIMERS = "lua_max_pending_timers 16384; lua_max_running_timers 4096;"

local sh, capture = procs.sh, procs.capture

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

if not (KONG_SRC and exists(KONG_SRC .. "/kong/runloop/plugin_servers/init.lua")) then
  io.stderr:write("bench/kong.lua: set KONG_SRC to a Kong source tree (the directory holding "
    .. "kong/runloop/plugin_servers/init.lua), e.g. make bench-kong KONG_SRC=/tmp/kong-src\n")
  os.exit(2)
end

local STUBS = root .. "/bench/kong_stubs"
local KONG_PATH = table.concat({ STUBS .. "/?.lua", STUBS .. "/?/init.lua", KONG_SRC .. "/?.lua",
                                 KONG_SRC .. "/?/init.lua", PB_DIR and (PB_DIR .. "/?.lua") or nil }, ";")
local KONG_CPATH = PB_DIR and (PB_DIR .. "/?.so") or nil

-- Kong's Go path needs lua-protobuf's `pb` and `protoc`.
local function have_pb()
  local cmd = string.format([[luajit -e 'package.path=%q..";"..package.path; package.cpath=%q..";"..package.cpath;
    require "pb"; require "protoc"' >/dev/null 2>&1]], KONG_PATH, KONG_CPATH or "")
  return sh(cmd)
end
local PB = have_pb()

-- Readings ---------------------------------------------------------------------
local function ticks(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "rb")
  if not f then return 0 end
  local stat = f:read("*a")
  f:close()
  local rest = stat:match("^%d+ %(.*%) (.*)$")
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return tonumber(fields[12]) + tonumber(fields[13])
end

local function sum_ticks(pids)
  local n = 0
  for _, pid in ipairs(pids) do n = n + ticks(pid) end
  return n
end

local function wrk(port, connections, seconds, pin)
  local threads = connections >= 16 and 2 or 1
  local cmd = string.format("%stimeout %d wrk -t%d -c%d -d%ds --latency http://127.0.0.1:%d/ 2>&1",
                            pin and "taskset -c 1 " or "", seconds + 30, threads, connections, seconds, port)
  return wrk_report(capture(cmd))
end

-- One host (nginx + its plugin servers) -----------------------------------------
local function start_host(impl, names, workers)
  local prefix = nginx.make_prefix()
  local kong_servers -- pids of the servers started for Kong's host
  local opts = { prefix = prefix, workers = workers, log_level = "notice", http_extra = KONG_TIMERS }
  local plugins = {}
  for _, name in ipairs(names or {}) do
    plugins[#plugins + 1] = { name = name, config = { message = "bench" } }
  end
  opts.plugins = plugins
  if impl == "ours" then
    opts.configuration = fixtures.settings(names, prefix)
  elseif impl == "kong" then
    local defs = {}
    kong_servers = {}
    for _, name in ipairs(names) do
      local s = fixtures.server(name, prefix)
      -- no start_command: Kong's process.lua needs ngx.pipe, which Debian's lua module
      -- lacks; the servers are started from a worker below instead
      defs[#defs + 1] = { name = name, socket = s.socket, query_command = s.query_cmd }
      kong_servers[#kong_servers + 1] = s
    end
    opts.configuration = { prefix = prefix, pluginservers = defs }
    opts.lua_path_prefix = KONG_PATH
    opts.lua_cpath_prefix = KONG_CPATH
  end
  local h, err = nginx.start(opts)
  if h and kong_servers then
    -- Started by a worker, as Kong's worker 0 does: in nginx's session, so that the
    -- scheduler groups them with the workers as it groups ours (autogroups), not with wrk.
    local servers = kong_servers
    kong_servers = {}
    for _, s in ipairs(servers) do
      local pidfile = prefix .. "/" .. s.name .. ".pid"
      local cmd = string.format("(%s) >%s 2>&1 </dev/null & echo $! >%s", s.start_cmd,
                                fixtures.sh_quote(prefix .. "/" .. s.name .. ".out"), fixtures.sh_quote(pidfile))
      h:eval(string.format("os.execute(%q) return 'ok'", cmd))
      local f = io.open(pidfile, "rb")
      kong_servers[#kong_servers + 1] = f and tonumber(f:read("*l"))
      if f then f:close() end
      if not nginx.wait_until(function() return sh("test -S " .. fixtures.sh_quote(s.socket)) end, 20) then
        err = s.name .. " did not listen for Kong's host"
      end
    end
    if err then
      h:stop()
      for _, pid in ipairs(kong_servers) do procs.kill(pid, "KILL") end
      return nil, err
    end
  end
  if h and kong_servers then
    -- stopped with the host
    local stop = h.stop
    h.stop = function(self)
      stop(self)
      for _, pid in ipairs(kong_servers) do
        procs.kill(pid, "TERM")
        if not nginx.wait_until(function() return not procs.alive(pid) end, 5) then procs.kill(pid, "KILL") end
      end
    end
  end
  if not h then
    sh("rm -rf " .. fixtures.sh_quote(prefix))
    return nil, err
  end
  h.impl = impl
  -- ready when a request shows every plugin's header
  local ok = nginx.wait_until(function()
    local res = h:request { path = "/" }
    if not (res and res.status == 200) then return false end
    for _, name in ipairs(names or {}) do
      local header = ({ ["go-hello"] = "x-hello-from-go", ["js-hello"] = "x-hello-from-javascript",
                        ["py-hello"] = "x-hello-from-python" })[name]
      if not res.headers[header] then return false end
    end
    return true
  end, 20, 0.2)
  if not ok then
    local lines = h:log_lines("%[error%]")
    h:stop()
    return nil, "no correct response within 20 s: " .. tostring(lines[#lines]):sub(1, 300)
  end
  if impl == "ours" then
    -- a warm standby (node servers, by default) starts after its server is ready:
    -- wait for it, so that its start is not measured and it is pinned with the servers
    nginx.wait_until(function()
      local list = h:status_list() or {}
      for _, e in ipairs(list) do
        if e.standby == "starting" then return false end
      end
      return true
    end, 20, 0.2)
  end
  h.workers_pids = h:worker_pids()
  local is_worker = {}
  for _, pid in ipairs(h.workers_pids) do is_worker[pid] = true end
  h.server_pids = {}
  for _, pid in ipairs(procs.descendants(h:master_pid())) do
    if not is_worker[pid] then h.server_pids[#h.server_pids + 1] = pid end
  end
  local seen = {}
  for _, pid in ipairs(h.server_pids) do seen[pid] = true end
  for _, pid in ipairs(kong_servers or {}) do
    for _, p in ipairs({ pid, unpack(procs.descendants(pid)) }) do
      if not seen[p] then
        seen[p] = true
        h.server_pids[#h.server_pids + 1] = p
      end
    end
  end
  h.pinned = workers == 1 and TWO_CORES
  if h.pinned then
    sh("taskset -pc 0 " .. h.workers_pids[1] .. " >/dev/null")
    for _, pid in ipairs(h.server_pids) do
      sh("taskset -a -pc 1 " .. pid .. " >/dev/null 2>&1")
    end
  end
  wrk(h.port, 4, 1, h.pinned) -- warm-up: instances, JIT traces, pooled connections
  return h
end

local function ours_counters(h)
  local list = h:status_list() or {}
  local refused, failed = 0, 0
  for _, s in ipairs(list) do
    local c = s.counters or {}
    refused = refused + (c.log_refused or 0)
    for _, n in pairs(c.errors or {}) do failed = failed + n end
  end
  return refused, failed
end

-- One measurement: wrk, then wait for the workers to go idle (deferred log events run).
local function measure(h, connections)
  local w0, s0 = sum_ticks(h.workers_pids), sum_ticks(h.server_pids)
  local e0 = h:count_log("%[error%]")
  local r0, f0 = 0, 0
  if h.impl == "ours" then r0, f0 = ours_counters(h) end
  local r = wrk(h.port, connections, SECONDS, h.pinned)
  local last = sum_ticks(h.workers_pids)
  for _ = 1, 60 do
    nginx.sleep(0.25)
    local now = sum_ticks(h.workers_pids)
    if now - last <= 1 then break end
    last = now
  end
  local w1, s1 = sum_ticks(h.workers_pids), sum_ticks(h.server_pids)
  local tick_us = 1e6 / HZ
  r.worker_us = (w1 - w0) * tick_us / r.requests
  r.server_us = (s1 - s0) * tick_us / r.requests
  r.errors = h:count_log("%[error%]") - e0
  if h.impl == "ours" then
    local r1, f1 = ours_counters(h)
    r.refused, r.failed = r1 - r0, f1 - f0
  end
  return r
end

-- Rows ------------------------------------------------------------------------
local SETS = {
  { label = "go-hello", names = { "go-hello" }, go = true },
  { label = "js-hello", names = { "js-hello" } },
  { label = "py-hello", names = { "py-hello" } },
  { label = "all three", names = { "go-hello", "js-hello", "py-hello" }, go = true },
}
local SHAPES = {
  { workers = 1, connections = { 1, 16 } },
  { workers = 2, connections = { 64 } },
}

local function mean(list, field)
  local s, n = 0, 0
  for _, r in ipairs(list) do
    if r[field] then s, n = s + r[field], n + 1 end
  end
  return n > 0 and s / n or nil
end

local function fmt(v, pattern)
  return v and string.format(pattern, v) or "-"
end

print(string.format("make bench-kong: Kong tree %s; %d s per wrk run, %d repetitions per row and implementation, "
  .. "alternating (ours, Kong); %s", KONG_SRC, SECONDS, REPS, PB and "lua-protobuf loaded (Kong's Go rows run)"
  or "no lua-protobuf `pb` (set KONG_PB_DIR): Kong's Go rows skipped"))
print()
print("| plugins, workers × connections | req/s no plugin | req/s ext/none Kong | ours | **ours/Kong req/s** "
  .. "| p99 ms Kong | ours | worker CPU above no-plugin µs/req Kong | ours | plugin server CPU µs/req Kong | ours "
  .. "| ours: log events refused, failed events | error lines Kong | ours |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
io.stdout:flush()

for _, shape in ipairs(SHAPES) do
  local wanted = {}
  for _, set in ipairs(SETS) do
    for _, c in ipairs(shape.connections) do
      local label = string.format("%s, %d × %d", set.label, shape.workers, c)
      if not ONLY or label:find(ONLY, 1, true) then
        wanted[#wanted + 1] = { set = set, connections = c, label = label }
      end
    end
  end
  if #wanted > 0 then
    -- the no-plugin baseline of this shape, once per connection count and repetition
    local base = {}
    local hn, err = start_host("none", {}, shape.workers)
    if not hn then error("no-plugin host did not start: " .. tostring(err)) end
    for _, c in ipairs(shape.connections) do
      base[c] = {}
      for rep = 1, REPS do base[c][rep] = measure(hn, c) end
    end
    hn:stop()
    for _, set in ipairs(SETS) do
      local rows = {}
      for _, w in ipairs(wanted) do
        if w.set == set then rows[#rows + 1] = w end
      end
      if #rows > 0 then
        local ho, oerr = start_host("ours", set.names, shape.workers)
        local hk, kerr
        if set.go and not PB then
          kerr = "Kong's Go path needs lua-protobuf (`pb`): skipped"
        else
          hk, kerr = start_host("kong", set.names, shape.workers)
        end
        for _, w in ipairs(rows) do
          local c = w.connections
          local res = { ours = {}, kong = {} }
          for _ = 1, REPS do
            if ho then res.ours[#res.ours + 1] = measure(ho, c) end
            if hk then res.kong[#res.kong + 1] = measure(hk, c) end
          end
          local none_rps, none_us = mean(base[c], "rps"), mean(base[c], "worker_us")
          local function ext(impl) local v = mean(res[impl], "rps") return v and v / none_rps end
          local function above(impl) local v = mean(res[impl], "worker_us") return v and v - none_us end
          local ko, kk = mean(res.ours, "rps"), mean(res.kong, "rps")
          local ratios = {}
          for i = 1, math.min(#res.ours, #res.kong) do
            ratios[#ratios + 1] = string.format("%.2f", res.ours[i].rps / res.kong[i].rps)
          end
          local ratio = (ko and kk) and string.format("**%.2f** (runs %s)", ko / kk, table.concat(ratios, ", "))
                        or (hk and "-" or tostring(kerr or oerr))
          print(string.format("| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |",
            w.label, none_rps, fmt(ext("kong"), "%.3f"), fmt(ext("ours"), "%.3f"), ratio,
            fmt(mean(res.kong, "p99"), "%.2f"), fmt(mean(res.ours, "p99"), "%.2f"),
            fmt(above("kong"), "%.0f"), fmt(above("ours"), "%.0f"),
            fmt(mean(res.kong, "server_us"), "%.0f"), fmt(mean(res.ours, "server_us"), "%.0f"),
            ho and string.format("%d, %d", mean(res.ours, "refused") * #res.ours,
                                 mean(res.ours, "failed") * #res.ours) or tostring(oerr):sub(1, 200),
            fmt(mean(res.kong, "errors") and mean(res.kong, "errors") * #res.kong, "%d"),
            fmt(mean(res.ours, "errors") and mean(res.ours, "errors") * #res.ours, "%d")))
          io.stdout:flush()
        end
        if ho then ho:stop() end
        if hk then hk:stop() end
      end
    end
  end
end
print()
print("req/s ext/none: req/s with the plugin(s) over req/s without plugins in the same host and shape; "
  .. "ours/Kong: the two req/s figures of each alternating pair; worker CPU includes the log events "
  .. "still queued when wrk stopped (read once the workers idle).")
