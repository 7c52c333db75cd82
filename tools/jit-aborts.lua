-- Trace aborts of LuaJIT's JIT in our shim under load: for each plugin
-- server, nginx (1 worker) with that server's hello plugin, LuaJIT's trace events
-- logged in the worker (jit.attach, as jit.v does, in jit.v's format but with full
-- paths), a warm-up and a bounded wrk run, then a table of the aborts whose start or
-- reason location is in lua/kong/runloop/plugin_servers/, counted by
-- (start, reason), and the total number of aborts vs compiled traces.
--
--   luajit tools/jit-aborts.lua [server ...]     (from the repo root; default:
--                                                 go-hello py-hello js-hello)
--   JIT_SECONDS=3   length of the wrk run
--   JIT_KEEP=1      keep the raw trace logs (their paths are printed)
--
-- Aborts elsewhere (resty.core, the test host) are counted in the total only.
-- Cosocket calls yield, so no trace spans them: the aim is that the code between
-- yields in our modules compiles, i.e. no trace start aborts over and over.

package.path = "./?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"

local SECONDS = tonumber(os.getenv("JIT_SECONDS") or "3") or 3
local KEEP = os.getenv("JIT_KEEP") == "1"
local OURS = "plugin_servers/"

-- Runs in the worker: jit.v's trace events (jit.attach), written in jit.v's
-- format but with full source paths (jit.v prints file names only, and several
-- modules are called init.lua). %q: the log's path.
local LOGGER = [[
local jutil, vmdef = require("jit.util"), require("jit.vmdef")
local fmt = string.format
local out = assert(io.open(%q, "w"))
local startloc, startex = "?", ""
local function loc(func, pc)
  local fi = jutil.funcinfo(func, pc)
  if fi.source then
    return fi.source:gsub("^@", "") .. ":" .. (fi.currentline or fi.linedefined or 0)
  end
  return fi.ffid and vmdef.ffnames[fi.ffid] or fi.addr and fmt("C:%%x", fi.addr) or "?"
end
local function why(err, info)
  if type(err) == "number" then
    if type(info) == "function" then
      info = loc(info, 0)
    end
    return fmt(vmdef.traceerr[err], info)
  end
  return tostring(err)
end
local function on_trace(what, tr, func, pc, otr, oex)
  if what == "start" then
    startloc = loc(func, pc)
    startex = otr and fmt("(%%s/%%s) ", otr, oex == -1 and "stitch" or oex) or ""
  elseif what == "abort" then
    local at = loc(func, pc)
    out:write(fmt("[TRACE --- %%s%%s -- %%s%%s]\n", startex, startloc, why(otr, oex),
      at ~= startloc and " at " .. at or ""))
  elseif what == "stop" then
    out:write(fmt("[TRACE %%3d %%s%%s]\n", tr, startex, startloc))
  end
end
package.loaded.kps_jit_aborts = { out = out, fn = on_trace }
jit.attach(on_trace, "trace")
return "on"
]]
local LOGGER_OFF = [[
local s = package.loaded.kps_jit_aborts
jit.attach(s.fn)
s.out:close()
return "off"
]]
local WARMUP = 200

local names = { ... }
if #names == 0 then
  names = { "go-hello", "py-hello", "js-hello" }
end

-- Short locations: ours below plugin_servers/, the others below their lua/ directory.
local function short(loc)
  return (loc:gsub("[^%s]*/kong/runloop/plugin_servers/", ""):gsub("[^%s]*/lua/", ""))
end

-- Counts of one jit.v log: traces, aborts, and ours[start .. " -- " .. reason].
local function parse(path)
  local f = io.open(path, "r")
  if not f then
    return nil, "no jit.v log at " .. path
  end
  local traces, aborts, ours = 0, 0, {}
  for line in f:lines() do
    if line:find("^%[TRACE%s+%d+ ") then
      traces = traces + 1
    elseif line:find("^%[TRACE %-%-%- ") then
      aborts = aborts + 1
      -- [TRACE --- (parent/exit) start -- reason at location]
      local body = line:match("^%[TRACE %-%-%- (.*)%]$") or line
      local start, reason = body:match("^(.-) %-%- (.*)$")
      start, reason = start or body, reason or ""
      if start:find(OURS, 1, true) or reason:find(OURS, 1, true) then
        start = start:gsub("^%(%d+/%d+%) ", "")
        local key = short(start) .. " -- " .. short(reason)
        ours[key] = (ours[key] or 0) + 1
      end
    end
  end
  f:close()
  return { traces = traces, aborts = aborts, ours = ours }
end

local function report(name, r)
  print(string.format("== %s: %d aborts, %d traces compiled", name, r.aborts, r.traces))
  local rows = {}
  for key, n in pairs(r.ours) do
    rows[#rows + 1] = { key = key, n = n }
  end
  table.sort(rows, function(a, b)
    if a.n ~= b.n then
      return a.n > b.n
    end
    return a.key < b.key
  end)
  if #rows == 0 then
    print("   no aborts in " .. OURS)
  end
  local total = 0
  for _, row in ipairs(rows) do
    total = total + row.n
    print(string.format("%6d  %s", row.n, row.key))
  end
  print(string.format("   %d of them in %s", total, OURS))
end

-- One server: returns the counts, or nil and the error.
local function run(name)
  local prefix = nginx.make_prefix()
  local sok, h = pcall(nginx.start, {
    prefix = prefix,
    workers = 1,
    log_level = "notice",
    configuration = fixtures.settings({ name }, prefix),
    plugins = { { name = name, config = { message = "x" } } },
  })
  if not (sok and h) then
    return nil, "nginx did not start: " .. tostring(h)
  end
  local out = os.tmpname()
  local ok, res = pcall(function()
    local up = nginx.wait_until(function()
      local rok, r = pcall(h.request, h, { path = "/" })
      return rok and r and r.status == 200
    end, 15)
    if not up then
      error("no 200 from " .. name .. " within 15 s:\n" .. (h:error_log() or ""))
    end
    -- on before the warm-up: a start that aborts often is blacklisted early
    assert(h:eval(string.format(LOGGER, out)))
    for _ = 1, WARMUP do
      h:request { path = "/" }
    end
    os.execute(string.format("timeout %d wrk -t1 -c2 -d%ds http://127.0.0.1:%d/ >/dev/null",
      SECONDS + 10, SECONDS, h.port))
    assert(h:eval(LOGGER_OFF))
    return true
  end)
  h:stop()
  local r, perr
  if ok then
    r, perr = parse(out)
  else
    perr = res
  end
  if KEEP then
    print("   jit.v log: " .. out)
  else
    os.remove(out)
  end
  return r, perr
end

local failed = 0
for _, name in ipairs(names) do
  local r, err = run(name)
  if r then
    report(name, r)
  else
    failed = failed + 1
    print("== " .. name .. ": FAILED: " .. tostring(err))
  end
end
os.exit(failed == 0 and 0 or 1)
