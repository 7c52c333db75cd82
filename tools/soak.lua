-- make soak / make reload-soak (not in CI): bounded wrk runs on loopback
-- through the real hello plugins, with the integration rig (spec/helpers/nginx.lua).
--
--   luajit tools/soak.lua load     per plugin: warm-up, then a timed run; zero non-2xx,
--                                  zero worker crashes, worker RSS and fds after the run
--                                  within a small margin of their warm-up values
--   luajit tools/soak.lua reload   nginx -s reload twice during a run through every
--                                  plugin on one request: failures within the documented
--                                  bound, one set of plugin servers afterwards, no orphan
--
-- Environment: SOAK_SECONDS (30), SOAK_WARMUP (5), SOAK_CONNECTIONS (64),
-- SOAK_PLUGINS (go-hello,py-hello,js-hello), SOAK_WORKERS (1 for load, 2 for reload),
-- SOAK_RELOAD_MAX_NON2XX (connections x reloads).
-- Prints a markdown table; exits non-zero when a check fails.
package.path = "./?.lua;./spec/?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"
local fixtures = require "spec.helpers.fixtures"

local SECONDS = tonumber(os.getenv("SOAK_SECONDS")) or 30
local WARMUP = tonumber(os.getenv("SOAK_WARMUP")) or 5
local CONNECTIONS = tonumber(os.getenv("SOAK_CONNECTIONS")) or 64
-- "Small margin": RSS may grow by this much (LuaJIT's GC and the allocator's pools
-- settle), fds by this many (the keepalive pool to the server is bounded at 64).
local RSS_MARGIN_KB = 4096
local RSS_MARGIN_PCT = 10
local FD_MARGIN = 2

local function split(text)
  local out = {}
  for w in text:gmatch("[^,%s]+") do
    out[#out + 1] = w
  end
  return out
end

local function rss_kb(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then
    return nil
  end
  local text = f:read("*a")
  f:close()
  return tonumber(text:match("VmRSS:%s*(%d+)"))
end

-- Parses wrk's report.
local function parse_wrk(text)
  local r = { raw = text }
  r.requests = tonumber(text:match("(%d+) requests in")) or 0
  r.rps = tonumber(text:match("Requests/sec:%s*([%d%.]+)")) or 0
  r.non2xx = tonumber(text:match("Non%-2xx or 3xx responses:%s*(%d+)")) or 0
  local c, rd, w, t = text:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.socket_errors = { connect = tonumber(c) or 0, read = tonumber(rd) or 0, write = tonumber(w) or 0,
                      timeout = tonumber(t) or 0 }
  r.socket_total = r.socket_errors.connect + r.socket_errors.read + r.socket_errors.write + r.socket_errors.timeout
  r.latency = text:match("Latency%s+(%S+)") or "?"
  r.p99 = text:match("99%%%s+(%S+)") or "?"
  return r
end

local function wrk_cmd(port, seconds)
  return string.format("wrk -t2 -c%d -d%ds --latency -H 'Host: soak.test' http://127.0.0.1:%d/ 2>&1",
                       CONNECTIONS, seconds, port)
end

local function wrk(port, seconds)
  local p = assert(io.popen(wrk_cmd(port, seconds)))
  local text = p:read("*a")
  p:close()
  return parse_wrk(text)
end

local function crashes(h)
  return h:count_log("exited on signal")
end

local function start(names, workers, extra)
  local prefix = nginx.make_prefix()
  local settings = fixtures.settings(names, prefix)
  for _, name in ipairs(names) do
    local k = "pluginserver_" .. name:gsub("-", "_") .. "_"
    settings[k .. "ready_timeout"] = "5000"
    settings[k .. "respawn_delay"] = "100"
    for key, v in pairs(extra or {}) do
      settings[k .. key] = v
    end
  end
  local plugins = {}
  for _, name in ipairs(names) do
    plugins[#plugins + 1] = { name = name, config = { message = "soak" } }
  end
  -- notice: the info lines of each request would dominate the log
  return nginx.start { prefix = prefix, workers = workers, log_level = "notice",
                       configuration = settings, plugins = plugins, start_timeout = 20 }
end

-- One request through the plugins; true or the reason.
local function probe(h, names)
  for _ = 1, 50 do
    local res = h:request { headers = { host = "soak.test" } }
    if res and res.status == 200 then
      for _, name in ipairs(names) do
        if not res.headers[fixtures.expected[name].header] then
          return nil, name .. " did not set " .. fixtures.expected[name].header
        end
      end
      return true
    end
    nginx.sleep(0.1)
  end
  local lines = h:log_lines("%[error%]")
  return nil, "no 200 through " .. table.concat(names, ",") .. ": " .. tostring(lines[#lines])
end

local failures = 0
local function check(ok, what)
  if not ok then
    failures = failures + 1
    io.stderr:write("FAILED: " .. what .. "\n")
  end
  return ok
end

local function load_run(names)
  print(string.format("load: %d s warm-up + %d s run, %d connections, 1 worker, loopback", WARMUP, SECONDS,
                      CONNECTIONS))
  print()
  print("| plugin | requests | req/s | mean latency | p99 | non-2xx | socket errors | worker crashes "
        .. "| RSS warm → after (KiB) | fds warm → after | result |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for _, name in ipairs(names) do
    local avail, why = fixtures.available(name)
    if not avail then
      print(string.format("| %s | skipped: %s |||||||||", name, why))
      goto continue
    end
    do
      local h, err = start({ name }, tonumber(os.getenv("SOAK_WORKERS")) or 1)
      if not h then
        check(false, name .. ": nginx did not start: " .. tostring(err))
        goto continue
      end
      local ok, perr = probe(h, { name })
      if not ok then
        -- e.g. a protocol whose RPC is not on this branch yet
        print(string.format("| %s | not run: %s |||||||||", name, perr:gsub("|", "/"):sub(1, 200)))
        if not perr:find("not implemented", 1, true) then
          check(false, name .. ": " .. perr)
        end
        h:stop()
        goto continue
      end
      local worker = h:worker_pids()[1]
      wrk(h.port, WARMUP)
      nginx.sleep(1)
      local rss0, fds0 = rss_kb(worker), procs.fd_count(worker)
      local r = wrk(h.port, SECONDS)
      nginx.sleep(1)
      local rss1, fds1 = rss_kb(worker) or 0, procs.fd_count(worker) or 0
      local same_worker = h:worker_pids()[1] == worker and #h:worker_pids() == 1
      local crash = crashes(h) + (same_worker and 0 or 1)
      local rss_ok = rss1 <= rss0 + math.max(RSS_MARGIN_KB, rss0 * RSS_MARGIN_PCT / 100)
      local fds_ok = fds1 <= fds0 + FD_MARGIN
      local good = check(r.requests > 0, name .. ": wrk made no request:\n" .. r.raw)
        and check(r.non2xx == 0, name .. ": " .. r.non2xx .. " non-2xx responses")
        and check(r.socket_total == 0, name .. ": socket errors " .. r.socket_total)
        and check(crash == 0, name .. ": worker crashed")
        and check(rss_ok, name .. ": worker RSS grew from " .. rss0 .. " to " .. rss1 .. " KiB")
        and check(fds_ok, name .. ": worker fds grew from " .. fds0 .. " to " .. fds1)
      print(string.format("| %s | %d | %.0f | %s | %s | %d | %d | %d | %d → %d (%+d) | %d → %d | %s |",
        name, r.requests, r.rps, r.latency, r.p99, r.non2xx, r.socket_total, crash,
        rss0, rss1, rss1 - rss0, fds0, fds1, good and "ok" or "FAILED"))
      h:stop()
    end
    ::continue::
  end
end

-- Plugin server processes of this nginx (descendants of the master, by command line).
local function servers_of(h, names)
  local count, pids = {}, {}
  for _, pid in ipairs(procs.descendants(h:master_pid())) do
    local cmd = procs.cmdline(pid) or ""
    for _, name in ipairs(names) do
      local marker = name == "js-hello" and "kong-js-pluginserver" or (name == "go-hello" and "bin/go-hello")
                     or "py-hello.py"
      if cmd:find(marker, 1, true) and not cmd:find("-dump", 1, true) and not cmd:find("--dump", 1, true)
         and not cmd:find("^/bin/sh") then
        count[name] = (count[name] or 0) + 1
        pids[#pids + 1] = pid
      end
    end
  end
  return count, pids
end

-- Processes reparented to init whose command line names this prefix: orphans.
local function orphans(prefix, master)
  local out = {}
  for _, pid in ipairs(procs.with_cmdline(prefix)) do
    if pid ~= master and procs.stat(pid) == 1 then
      out[#out + 1] = pid
    end
  end
  return out
end

local function reload_run(names)
  local usable = {}
  for _, name in ipairs(names) do
    if fixtures.available(name) then
      usable[#usable + 1] = name
    end
  end
  local workers = tonumber(os.getenv("SOAK_WORKERS")) or 2
  local seconds = math.max(SECONDS, 12)
  print(string.format("reload under load: %s, %d workers, %d connections, %d s, nginx -s reload at %d s and %d s",
                      table.concat(usable, " + "), workers, CONNECTIONS, seconds,
                      math.floor(seconds / 3), math.floor(2 * seconds / 3)))
  print()
  local h = assert(start(usable, workers))
  assert(probe(h, usable))
  local before = servers_of(h, usable)
  local p = assert(io.popen(wrk_cmd(h.port, seconds)))
  local reloads = {}
  for i = 1, 2 do
    nginx.sleep(seconds / 3 - (i == 1 and 0 or 0.5))
    local t0 = nginx.now()
    local ok, err = h:reload(15)
    reloads[#reloads + 1] = { ok = ok, err = err, took = nginx.now() - t0 }
  end
  local r = parse_wrk(p:read("*a"))
  p:close()
  -- let the last handover finish (old servers stopped, new ones ready)
  nginx.sleep(2)
  local ok = probe(h, usable)
  local after, pids = servers_of(h, usable)
  local lost = orphans(h.prefix, h:master_pid())
  local errors = 0
  local st = h:eval_json [[return require("kong.runloop.plugin_servers").status()]] or {}
  for _, entry in ipairs(st) do
    for _, n in pairs(entry.counters.errors) do
      errors = errors + n
    end
    errors = errors - entry.counters.errors.no_instance   -- retried, not failed
  end
  local failed_lines = h:count_log("%[pluginserver%] plugin .* failed in")
  print("| figure | value |")
  print("|---|---|")
  print(string.format("| requests | %d (%.0f req/s) |", r.requests, r.rps))
  print(string.format("| non-2xx responses (documented bound: %d) | %d |",
                      tonumber(os.getenv("SOAK_RELOAD_MAX_NON2XX")) or CONNECTIONS * #reloads, r.non2xx))
  print(string.format("| socket errors (connect/read/write/timeout) | %d/%d/%d/%d |", r.socket_errors.connect,
                      r.socket_errors.read, r.socket_errors.write, r.socket_errors.timeout))
  for i, rl in ipairs(reloads) do
    print(string.format("| reload %d | %s in %.2f s |", i, rl.ok and "done" or ("FAILED: " .. tostring(rl.err)),
                        rl.took))
  end
  print(string.format("| failed events counted by status() (connect+timeout+protocol) | %d |", errors))
  print(string.format("| plugin failure lines in the error log (rate-limited) | %d |", failed_lines))
  for _, name in ipairs(usable) do
    print(string.format("| %s servers before → after | %d → %d |", name, before[name] or 0, after[name] or 0))
  end
  print(string.format("| orphans (ppid 1, naming the prefix) | %d |", #lost))
  print(string.format("| worker crashes | %d |", crashes(h)))
  print(string.format("| request after the run | %s |", ok and "200" or "FAILED"))
  check(r.requests > 0, "wrk made no request:\n" .. r.raw)
  -- Documented (docs/ROBUSTNESS.md): the old worker 0 stops the old servers as soon
  -- as it starts exiting; the events in flight on them fail (500). At most one per
  -- client connection per reload, and each one is a counted plugin failure.
  -- (SOAK_RELOAD_MAX_NON2XX tightens it; with the outage work merged the figure is 0)
  local bound = tonumber(os.getenv("SOAK_RELOAD_MAX_NON2XX")) or CONNECTIONS * #reloads
  check(r.non2xx <= bound, r.non2xx .. " non-2xx responses, more than the documented bound " .. bound)
  check(r.non2xx == errors, r.non2xx .. " non-2xx responses but " .. errors .. " failed events counted")
  for i, rl in ipairs(reloads) do
    check(rl.ok, "reload " .. i .. ": " .. tostring(rl.err))
  end
  for _, name in ipairs(usable) do
    check(after[name] == 1, name .. ": " .. tostring(after[name]) .. " servers after the reloads (pids "
                            .. table.concat(pids, ",") .. ")")
  end
  check(#lost == 0, "orphans: " .. table.concat(lost, ","))
  check(crashes(h) == 0, "a worker crashed")
  check(ok, "no request succeeded after the run")
  -- socket errors are reported, not failed: wrk counts keep-alive connections that
  -- the old workers close at shutdown as read errors (nothing to do with plugins)
  h:stop()
  check(#orphans(h.prefix, -1) == 0, "processes left after stop")
end

local mode = arg[1] or "load"
local names = split(os.getenv("SOAK_PLUGINS") or "go-hello,py-hello,js-hello")
if mode == "load" then
  load_run(names)
elseif mode == "reload" then
  reload_run(names)
else
  io.stderr:write("usage: luajit tools/soak.lua load|reload\n")
  os.exit(2)
end
print()
print(failures == 0 and "soak: all checks passed" or ("soak: " .. failures .. " check(s) failed"))
os.exit(failures == 0 and 0 or 1)
