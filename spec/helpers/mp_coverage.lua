-- Shared by the MessagePack coverage and terminal-call specs: the call plan of
-- py-coverage/js-coverage, their JSON-lines reports, and the host-side recorder
-- that logs every PDK function the shim dispatches to (with Kong's MessagePack
-- shaping of its result, computed in the worker where the Lua value lives).

local cjson = require "cjson.safe"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local _M = {}

local PLAN_PATH = fixtures.root .. "/fixtures/plugins/mp-coverage-plan.json"

_M.plan = assert(cjson.decode(assert(procs.read_file(PLAN_PATH))), "bad " .. PLAN_PATH).calls

-- Installed in the worker through h:eval. Wraps every kong.* function and every
-- override of the shim's pdk.lua; a call made while the shim dispatches a PDK call
-- (pdk.call on the stack), outermost only, is recorded with its arguments, result
-- and error. `dump` returns the records as typed JSON (the shapes Kong's encoder
-- would send, PROTOCOL facts: multimaps, raw bodies as bin, empty table as array,
-- whole numbers as integers) and forgets them.
_M.RECORDER = [==[
  local cjson = require("cjson.safe").new()
  cjson.encode_number_precision(14)   -- Debian's lua-cjson allows no more: floats compare with a tolerance
  cjson.encode_invalid_numbers(true)
  local pdk = require "kong.runloop.plugin_servers.pdk"
  local state = package.loaded.kps_mpcov
  if state then
    return "already installed"
  end
  state = { recs = {}, depth = 0 }
  package.loaded.kps_mpcov = state

  local MULTIMAP = { ["kong.request.get_query"] = true, ["kong.request.get_headers"] = true,
                     ["kong.response.get_headers"] = true, ["kong.service.response.get_headers"] = true }
  local RAW = { ["kong.request.get_raw_body"] = true, ["kong.response.get_raw_body"] = true,
                ["kong.service.response.get_raw_body"] = true }
  local TERMINAL = { ["kong.response.exit"] = true, ["kong.response.error"] = true }
  local pdk_call = pdk.call

  local function dispatching()
    for level = 3, 40 do
      local info = debug.getinfo(level, "f")
      if not info then return false end
      if info.func == pdk_call then return true end
    end
    return false
  end

  local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
  end

  -- Kong's encoder on a plain value
  local function plain(v, seen)
    local t = type(v)
    if v == nil or v == cjson.null or v == ngx.null then return { t = "nil" } end
    if t == "boolean" then return { t = "bool", v = v } end
    if t == "number" then
      if v == math.floor(v) and math.abs(v) <= 2^53 then return { t = "int", v = v } end
      return { t = "float", v = v }
    end
    if t == "string" then return { t = "str", v = v } end
    if t ~= "table" then return { t = "unencodable " .. t } end
    seen = seen or {}
    if seen[v] then return { t = "unencodable cycle" } end
    seen[v] = true
    local n, max = 0, 0
    for k in pairs(v) do
      n = n + 1
      if type(k) == "number" and k >= 1 and k == math.floor(k) then
        if k > max then max = k end
      else
        max = -1
      end
    end
    local out
    if n == 0 then
      out = { t = "list", v = setmetatable({}, cjson.array_mt) }
    elseif max == n then
      local items = {}
      for i = 1, n do items[i] = plain(v[i], seen) end
      out = { t = "list", v = items }
    else
      local m = {}
      for k, x in pairs(v) do m[tostring(k)] = plain(x, seen) end
      out = { t = "map", v = m }
    end
    seen[v] = nil
    return out
  end

  local function shape(method, v)
    if MULTIMAP[method] and type(v) == "table" then
      local m = {}
      for k, x in pairs(v) do
        if x == true then
          m[tostring(k)] = { t = "list", v = setmetatable({}, cjson.array_mt) }
        elseif type(x) == "string" then
          m[tostring(k)] = { t = "list", v = { { t = "str", v = x } } }
        else
          m[tostring(k)] = plain(x)
        end
      end
      return { t = "map", v = m }
    end
    if RAW[method] and type(v) == "string" then
      return { t = "bin", v = hex(v) }
    end
    return plain(v)
  end

  local function record(method, ...)
    local n = select("#", ...)
    local args = {}
    for i = 1, n do args[i] = plain((select(i, ...))) end
    local rec = { method = method, args = args, phase = ngx.get_phase() }
    state.recs[#state.recs + 1] = rec
    return rec
  end

  local function wrap(method, fn, skip_saved)
    return function(...)
      if state.depth > 0 or not dispatching() then
        return fn(...)
      end
      local rec
      if skip_saved then
        rec = record(method, select(2, ...))
        rec.saved = (...) ~= nil
      else
        rec = record(method, ...)
      end
      if TERMINAL[method] then rec.terminal = true end
      state.depth = state.depth + 1
      local ok, r1, r2 = pcall(fn, ...)
      state.depth = state.depth - 1
      if not ok then
        rec.err = tostring(r1)
        rec.ret = { t = "nil" }
        error(r1, 0)
      end
      rec.ret = shape(method, r1)
      rec.raw = r1
      if r1 == nil and r2 ~= nil then rec.err = tostring(r2) end
      return r1, r2
    end
  end

  local function walk(t, path, seen)
    seen[t] = true
    for k, v in pairs(t) do
      if type(k) == "string" then
        local name = path .. "." .. k
        if type(v) == "function" then
          t[k] = wrap(name, v, false)
        elseif type(v) == "table" and not seen[v] and k ~= "configuration" and k ~= "worker_events"
               and getmetatable(v) == nil then
          walk(v, name, seen)
        end
      end
    end
  end
  walk(kong, "kong", {})
  for name, fn in pairs(pdk.overrides) do
    pdk.overrides[name] = wrap(name, fn, true)
  end
  pdk.clear_cache()

  function state.dump()
    local out = {}
    for i, r in ipairs(state.recs) do
      local copy = { method = r.method, args = r.args, phase = r.phase, ret = r.ret,
                     err = r.err, terminal = r.terminal, saved = r.saved }
      if r.method == "kong.log.serialize" and type(r.raw) == "string" then
        copy.serialized = cjson.decode(r.raw)
      end
      if r.args and #r.args == 0 then copy.args = setmetatable({}, cjson.array_mt) end
      out[i] = copy
    end
    state.recs = {}
    if #out == 0 then return "[]" end
    return cjson.encode(out)
  end
  return "installed"
]==]

_M.DUMP = [[ return package.loaded.kps_mpcov.dump() ]]

-- Typed values equal, floats within a relative 1e-12 (the worker's JSON has 14 digits).
function _M.same(a, b)
  if type(a) ~= type(b) then
    return false
  end
  if type(a) == "number" then
    return a == b or math.abs(a - b) <= 1e-12 * math.max(math.abs(a), math.abs(b))
  end
  if type(a) ~= "table" then
    return a == b
  end
  for k, v in pairs(a) do
    if not _M.same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- The records of a plugin's report file (nil when it does not exist yet).
function _M.read_report(path)
  local text = procs.read_file(path)
  if not text then
    return {}
  end
  local out = {}
  for line in text:gmatch("[^\n]+") do
    out[#out + 1] = assert(cjson.decode(line), "bad report line: " .. line)
  end
  return out
end

function _M.truncate(path)
  local f = assert(io.open(path, "wb"))
  f:close()
end

-- The plan's calls of `pdk` for a case and phase.
function _M.calls(pdk, case, phase)
  local out = {}
  for _, c in ipairs(_M.plan) do
    if c.c == case and (not phase or c.p == phase) and (c.only == nil or c.only == pdk) then
      out[#out + 1] = c
    end
  end
  return out
end

return _M
