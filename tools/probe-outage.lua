-- make probe-outage: a plugin server killed with SIGKILL (the crash case), or
-- stopped with SIGSTOP (the hang case), under a small wrk load.
--
-- For each case, hello plugin server (Go when the Protobuf RPC is there, Python,
-- JS) and fail_open mode: nginx (2 workers) with that one plugin, wrk with a few
-- connections, SIGKILL (or SIGSTOP) of the server after a while; the supervisor
-- restarts it (after hang_timeout for a stopped one).
-- Every response is classified from logs/timing.log (the rig's `timing_log`):
-- correct (200 with the plugin's header), 500, or 200 with the plugin skipped.
-- Loopback only; bounded in time (each run is a few seconds; the Makefile adds a
-- timeout around the whole probe).
--
-- Settings (environment): PROBE_CASES ("crash,hang"), PROBE_SERVERS (e.g.
-- "py-hello,js-hello"), PROBE_MODES ("off,on"), PROBE_SECONDS (wrk duration of the
-- crash case, 5; the hang case runs until 3 s past hang_timeout), PROBE_KILL_AT
-- (seconds into the load, 1.5), PROBE_CONNECTIONS (4), PROBE_RESPAWN_DELAY,
-- PROBE_READY_TIMEOUT, PROBE_HANG_TIMEOUT (ms; unset: the defaults),
-- PROBE_LOG_WINDOW (ms, 1000), PROBE_VERBOSE=1 (print the window's error lines and the first responses after the kill).
package.path = "./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"
local fixtures = require "spec.helpers.fixtures"

local ffi = require "ffi"
ffi.cdef "int kill(int pid, int sig);"

local fmt = string.format
local SIGKILL = 9
local SIGSTOP = 19

local function env_num(name, default)
  local v = tonumber(os.getenv(name) or "")
  return v or default
end

local SECONDS = env_num("PROBE_SECONDS", 5)
local KILL_AT = env_num("PROBE_KILL_AT", 1.5)
local CONNECTIONS = env_num("PROBE_CONNECTIONS", 4)
-- nil: the default of the setting (what the table reports)
local RESPAWN_DELAY = env_num("PROBE_RESPAWN_DELAY", nil)
local READY_TIMEOUT = env_num("PROBE_READY_TIMEOUT", nil)
local HANG_TIMEOUT = env_num("PROBE_HANG_TIMEOUT", nil)
-- the defaults (src/config/suffixes.rs), for the bounds below
local DEFAULT_READY_TIMEOUT = 5000
local DEFAULT_HANG_TIMEOUT = 5000
local READY_MS = READY_TIMEOUT or DEFAULT_READY_TIMEOUT
local HANG_MS = HANG_TIMEOUT or DEFAULT_HANG_TIMEOUT
local LOG_WINDOW = env_num("PROBE_LOG_WINDOW", 1000)
local VERBOSE = os.getenv("PROBE_VERBOSE") == "1"
-- Responses listed (verbose) from the kill on, relative to it.
local AROUND = 12

-- Column of each plugin's header in the timing log.
local HEADER_COLUMN = { ["go-hello"] = 1, ["py-hello"] = 2, ["js-hello"] = 3 }

local read = procs.read_file

local function split(text)
  local out = {}
  for w in (text or ""):gmatch("[^,%s]+") do
    out[#out + 1] = w
  end
  return out
end

-- Go is probed once the Protobuf RPC has landed (pb_rpc.lua returns its protocol).
local function protobuf_ready()
  local text = read("lua/kong/runloop/plugin_servers/rpc/pb_rpc.lua") or ""
  return text:find("connection.protocol", 1, true) ~= nil
end

local function servers()
  local wanted = split(os.getenv("PROBE_SERVERS"))
  if #wanted == 0 then
    wanted = { "go-hello", "py-hello", "js-hello" }
  end
  local list = {}
  for _, name in ipairs(wanted) do
    local ok, why = fixtures.available(name)
    if not ok then
      io.write("(skipping ", name, ": ", why, ")\n")
    elseif name == "go-hello" and not protobuf_ready() then
      io.write("(skipping go-hello: the Protobuf RPC is not on this branch yet)\n")
    else
      list[#list + 1] = name
    end
  end
  return list
end

local function state_of(h, name)
  return h:eval_json(fmt([[return require("kong.runloop.plugin_servers.state").get(%q)]], name))
end

-- One line of logs/timing.log: uri, end, duration, status, plugin header or nil.
local function parse_timing(line, column)
  local uri, msec, rt, status, headers = line:match("^(%S+) (%S+) (%S+) (%d+)|(.*)$")
  if not uri then
    return nil
  end
  local cols = {}
  for v in (headers .. "|"):gmatch("(.-)|") do
    cols[#cols + 1] = v
  end
  local header = cols[column]
  return {
    uri = uri, finish = tonumber(msec), duration = tonumber(rt), status = tonumber(status),
    header = header ~= "-" and header ~= "" and header or nil,
  }
end

local function ms(seconds)
  if not seconds then
    return "-"
  end
  return fmt("%.0f", seconds * 1000)
end

local function set_if(settings, key, value)
  if value then
    settings[key] = tostring(value)
  end
end

-- Runs one outage (`case` "crash": SIGKILL; "hang": SIGSTOP); returns the row.
local function run(name, fail_open, case)
  local prefix = nginx.make_prefix()
  local k = "pluginserver_" .. name:gsub("-", "_")
  local settings = fixtures.settings({ name }, prefix)
  set_if(settings, k .. "_respawn_delay", RESPAWN_DELAY)
  set_if(settings, k .. "_ready_timeout", READY_TIMEOUT)
  set_if(settings, k .. "_hang_timeout", HANG_TIMEOUT)
  settings[k .. "_log_window"] = tostring(LOG_WINDOW)
  settings[k .. "_fail_open"] = fail_open
  -- the crash case keeps an event's wait short; the hang case keeps the default
  -- (60 s) that hang_timeout has to beat
  if case == "crash" then
    settings[k .. "_read_timeout"] = "5000"
  end
  local h = assert(nginx.start {
    prefix = prefix, workers = 2, configuration = settings, timing_log = true, log_level = "notice",
    plugins = { { name = name, config = { message = "Kong" } } },
  })
  local row = { server = name, fail_open = fail_open, case = case }
  local seconds = case == "hang" and math.ceil(KILL_AT + HANG_MS / 1000 + 3) or SECONDS
  local ok, err = pcall(function()
    assert(nginx.wait_until(function()
      local s = h:server_status(name)
      return s and s.state == "ready"
    end, 15), name .. " did not become ready")
    -- warm up: instances in both workers, pooled connections
    for _ = 1, 20 do
      h:request { headers = { host = "probe.test" } }
    end
    local load_start = nginx.now()
    local wrk = assert(io.popen(fmt("wrk -t2 -c%d -d%ds --timeout 60s -H 'Host: probe.test' "
      .. "http://127.0.0.1:%d/ 2>&1", CONNECTIONS, seconds, h.port)))
    nginx.sleep(KILL_AT)
    -- counters just before the kill: every worker has its instance by now
    local before = assert(h:server_status(name))
    local old = assert(state_of(h, name))
    local log_offset = #(h:error_log() or "")
    local kill_at = nginx.now()
    -- kill(2) itself: a shell's start-up would blur the kill time
    assert(ffi.C.kill(old.pid, case == "hang" and SIGSTOP or SIGKILL) == 0, "kill failed")
    if case == "hang" then
      -- when the supervisor's SIGKILL takes the stopped process away
      local deadline = kill_at + HANG_MS / 1000 + 5
      while procs.alive(old.pid) and nginx.now() < deadline do
        nginx.sleep(0.005)
      end
      row.gone_at = not procs.alive(old.pid) and nginx.now() or nil
    end
    local wrk_out = wrk:read("*a")
    wrk:close()
    local load_end = nginx.now()
    -- let the log-phase timers and the limiter's summary line finish
    nginx.sleep(LOG_WINDOW / 1000 + 0.2)

    local after = assert(h:server_status(name))
    local new = assert(state_of(h, name))
    row.ready_at = new.pid ~= old.pid and new.state == "ready" and new.since or nil
    row.wrk_requests = tonumber(wrk_out:match("(%d+) requests in"))
    row.wrk_out = wrk_out
    row.restarts = after.restarts - before.restarts
    row.instance_starts = after.counters.instance_starts - before.counters.instance_starts
    row.hangs = (after.hangs or 0) - (before.hangs or 0)
    row.fail_open_count = after.counters.fail_open - before.counters.fail_open
    local errors = 0
    for _, cause in ipairs { "connect", "timeout", "protocol", "no_instance" } do
      errors = errors + after.counters.errors[cause] - before.counters.errors[cause]
    end
    row.errors_counted = errors

    -- responses
    local column = HEADER_COLUMN[name]
    local n, correct, skipped, other = 0, 0, 0, 0
    local e_inflight, e_bound, e_other = 0, 0, 0
    local first_correct
    local max_wait, non2xx = 0, 0
    local around = {}
    row.around = around
    for line in (read(prefix .. "/logs/timing.log") or ""):gmatch("[^\n]+") do
      local r = parse_timing(line, column)
      if r and r.uri == "/" and r.finish >= load_start and r.finish <= load_end + 1 then
        local start = r.finish - r.duration
        if start >= kill_at - 0.005 or r.finish >= kill_at then
          max_wait = math.max(max_wait, r.duration)
        end
        if r.finish >= kill_at and #around < AROUND then
          around[#around + 1] = fmt("start %+d ms, end %+d ms: %d%s", (start - kill_at) * 1000,
            (r.finish - kill_at) * 1000, r.status, r.header and " (plugin header)" or "")
        end
        if r.status < 200 or r.status >= 300 then
          non2xx = non2xx + 1
        end
        if r.status >= 200 and r.status < 300 then
          if r.header then
            correct = correct + 1
            if start >= kill_at and (not first_correct or r.finish < first_correct) then
              first_correct = r.finish
            end
          else
            skipped = skipped + 1
          end
        elseif r.status == 500 then
          -- $request_time has ms resolution: 5 ms of slack either side
          if start <= kill_at + 0.005 then
            e_inflight = e_inflight + 1
          elseif r.duration * 1000 >= READY_MS - 5 then
            e_bound = e_bound + 1
          else
            e_other = e_other + 1
          end
        else
          other = other + 1
        end
        n = n + 1
      end
    end
    row.responses, row.correct, row.skipped, row.other = n, correct, skipped, other
    row.e_inflight, row.e_bound, row.e_other = e_inflight, e_bound, e_other
    row.kill_to_correct = first_correct and first_correct - kill_at
    row.ready_to_correct = first_correct and row.ready_at and first_correct - row.ready_at
    row.kill_to_ready = row.ready_at and row.ready_at - kill_at
    row.max_wait, row.non2xx = max_wait, non2xx
    row.kill_to_gone = row.gone_at and row.gone_at - kill_at

    -- error-log lines written after the kill
    local window = (h:error_log() or ""):sub(log_offset + 1)
    local lines, crit, ours, sockets = 0, 0, 0, 0
    row.samples, row.supervisor = {}, {}
    for line in window:gmatch("[^\n]+") do
      local level = line:match("^%S+ %S+ %[(%a+)%]")
      if level == "notice" and line:find("[pluginserver]", 1, true) then
        row.supervisor[#row.supervisor + 1] = line
      end
      if level == "error" or level == "crit" or level == "alert" or level == "emerg" then
        lines = lines + 1
        if level ~= "error" then
          crit = crit + 1
        end
        if line:find("[pluginserver]", 1, true) then
          ours = ours + 1
        elseif line:find("%] %d+#%d+: %*%d+ %a+%(%) ") then
          -- nginx's own line for a failed socket call (cosockets log these at
          -- error whatever lua_socket_log_errors says)
          sockets = sockets + 1
        end
        row.samples[#row.samples + 1] = line
      end
    end
    row.error_lines, row.crit_lines = lines, crit
    row.our_lines, row.socket_lines = ours, sockets
  end)
  h:stop()
  if not ok then
    row.failure = tostring(err)
  end
  return row
end

-- Targets for the first correct response after the kill, per server.
local CRASH_CORRECT_MS = { ["go-hello"] = 300, ["js-hello"] = 300, ["py-hello"] = 600 }

local function verdict(row)
  local bad = {}
  if row.failure then
    return { row.failure }
  end
  if row.fail_open == "off" then
    if row.skipped > 0 then bad[#bad + 1] = "skipped plugins" end
    if row.other > 0 then bad[#bad + 1] = "other statuses" end
    if row.case == "crash" and row.error_lines > 10 then bad[#bad + 1] = "more than 10 error lines" end
    if row.case == "crash" and (not row.ready_to_correct or row.ready_to_correct > 0.05) then
      bad[#bad + 1] = "first correct response not within 50 ms of ready"
    end
  elseif row.fail_open_count < row.skipped then
    bad[#bad + 1] = "skipped plugins not counted"
  end
  if row.non2xx > 0 and (row.case == "crash" or row.fail_open == "on") then
    bad[#bad + 1] = "non-2xx responses"
  end
  if row.responses == 0 or not row.kill_to_correct then
    bad[#bad + 1] = "no correct response after the " .. (row.case == "hang" and "stop" or "kill")
      .. " (wrk: " .. tostring(row.wrk_requests) .. " requests)"
  end
  if row.crit_lines > 0 then bad[#bad + 1] = "[crit] lines" end
  if row.restarts ~= 1 then bad[#bad + 1] = "restarts ~= 1" end
  local bound = (HANG_MS + 1000) / 1000
  if row.case == "crash" then
    local target = CRASH_CORRECT_MS[row.server]
    if target and row.kill_to_correct and row.kill_to_correct * 1000 > target then
      bad[#bad + 1] = "first correct response later than " .. target .. " ms"
    end
  else
    if row.hangs ~= 1 then bad[#bad + 1] = "hangs ~= 1" end
    if not row.kill_to_gone then bad[#bad + 1] = "the stopped process is still there" end
    if row.kill_to_correct and row.kill_to_correct > bound then
      bad[#bad + 1] = "first correct response later than hang_timeout + 1 s"
    end
    if row.max_wait > bound then bad[#bad + 1] = "a request waited longer than hang_timeout + 1 s" end
  end
  return bad
end

local function print_table(out)
  local widths = {}
  for _, line in ipairs(out) do
    for i, cell in ipairs(line) do
      widths[i] = math.max(widths[i] or 0, #tostring(cell))
    end
  end
  io.write("\n")
  for _, line in ipairs(out) do
    local cells = {}
    for i, cell in ipairs(line) do
      cell = tostring(cell)
      cells[i] = cell .. string.rep(" ", widths[i] - #cell)
    end
    io.write("| ", table.concat(cells, " | "), " |\n")
  end
end

local function setting(v, default)
  return v and tostring(v) or (tostring(default) .. " (default)")
end

local names = servers()
local modes = split(os.getenv("PROBE_MODES"))
if #modes == 0 then
  modes = { "off", "on" }
end
local cases = split(os.getenv("PROBE_CASES"))
if #cases == 0 then
  cases = { "crash", "hang" }
end
io.write(fmt("probe-outage: wrk %d connections, SIGKILL (crash) or SIGSTOP (hang) at %.1f s; respawn_delay %s ms, "
  .. "ready_timeout %s ms, hang_timeout %s ms, log_window %d ms, 2 workers\n", CONNECTIONS, KILL_AT,
  setting(RESPAWN_DELAY, 1000), setting(READY_TIMEOUT, DEFAULT_READY_TIMEOUT),
  setting(HANG_TIMEOUT, DEFAULT_HANG_TIMEOUT), LOG_WINDOW))
if #names == 0 then
  io.write("no plugin server fixture is built: run `make deps`\n")
  os.exit(1)
end

local rows = {}
for _, case in ipairs(cases) do
  for _, mode in ipairs(modes) do
    for _, name in ipairs(names) do
      io.write(fmt("  running %s: %s with fail_open %s ...\n", case, name, mode))
      io.stdout:flush()
      rows[#rows + 1] = run(name, mode, case)
    end
  end
end

local failures = 0
local function lines_cell(r)
  return fmt("%d (%d/%d/%d)", r.error_lines, r.our_lines, r.socket_lines,
    r.error_lines - r.our_lines - r.socket_lines)
end

for _, case in ipairs(cases) do
  local out
  if case == "crash" then
    io.write("\ncrash (SIGKILL):")
    out = { { "server", "fail_open", "responses", "correct", "non-2xx", "500 in-flight", "500 past-bound",
      "500 other", "skipped", "other", "err lines (ours/nginx/plugin)", "crit", "kill->ready ms",
      "kill->correct ms", "ready->correct ms", "restarts", "inst starts", "fail_open cnt", "errors cnt", "verdict" } }
  else
    io.write("\nhang (SIGSTOP):")
    out = { { "server", "fail_open", "responses", "correct", "non-2xx", "skipped", "err lines (ours/nginx/plugin)",
      "crit", "stop->kill ms", "stop->ready ms", "stop->correct ms", "longest wait ms", "hangs", "restarts",
      "fail_open cnt", "errors cnt", "verdict" } }
  end
  for _, r in ipairs(rows) do
    if r.case == case then
      local bad = verdict(r)
      failures = failures + #bad
      local v = #bad == 0 and "ok" or table.concat(bad, "; ")
      if r.failure then
        out[#out + 1] = { r.server, r.fail_open, "run failed: " .. r.failure }
      elseif case == "crash" then
        out[#out + 1] = { r.server, r.fail_open, r.responses, r.correct, r.non2xx, r.e_inflight, r.e_bound,
          r.e_other, r.skipped, r.other, lines_cell(r), r.crit_lines, ms(r.kill_to_ready), ms(r.kill_to_correct),
          ms(r.ready_to_correct), r.restarts, r.instance_starts, r.fail_open_count, r.errors_counted, v }
      else
        out[#out + 1] = { r.server, r.fail_open, r.responses, r.correct, r.non2xx, r.skipped, lines_cell(r),
          r.crit_lines, ms(r.kill_to_gone), ms(r.kill_to_ready), ms(r.kill_to_correct), ms(r.max_wait), r.hangs,
          r.restarts, r.fail_open_count, r.errors_counted, v }
      end
    end
  end
  print_table(out)
end

io.write([[
correct: 200 with the plugin's header; non-2xx: every response that was not 2xx; 500 in-flight:
the request started before the kill (+5 ms); 500 past-bound: it waited at least ready_timeout;
skipped: 2xx without the header (fail_open: a plugin that failed after setting its header is
counted by fail_open cnt only); err lines: error-log lines at error or above after the kill/stop
(ours: [pluginserver]; nginx: its own line per failed socket call; plugin: the plugin's own
kong.log calls); ready: the supervisor's probe saw the new server accept; stop->kill: the stopped
process was gone (SIGKILL of the hang detection); longest wait: the longest request that was in
flight at or started after the stop/kill. Targets: crash: 0 non-2xx, first correct response within
300 ms (Go, JS) / 600 ms (Python), at most 10 error lines; hang: first correct response and every
wait within hang_timeout + 1 s, the stopped process gone.
]])
if VERBOSE then
  for _, r in ipairs(rows) do
    io.write("\n-- wrk: ", r.case, " ", r.server, " fail_open ", r.fail_open, "\n", tostring(r.wrk_out), "\n")
    io.write("-- error lines after the kill/stop: ", r.server, " fail_open ", r.fail_open, "\n")
    for _, line in ipairs(r.samples or {}) do
      io.write(line:sub(1, 400), "\n")
    end
    io.write("-- the supervisor's notices after the kill/stop:\n")
    for _, line in ipairs(r.supervisor or {}) do
      io.write(line:sub(1, 300), "\n")
    end
    io.write("-- the first responses that ended after the kill/stop (log order):\n")
    for _, line in ipairs(r.around or {}) do
      io.write(line, "\n")
    end
  end
end
io.write(fmt("\n%s\n", failures == 0 and "all targets met" or (failures .. " target(s) missed")))
os.exit(failures == 0 and 0 or 1)
