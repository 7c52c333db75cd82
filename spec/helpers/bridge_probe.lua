-- Probes of the value bridge's error handling, shared by the unit spec (plain
-- LuaJIT, some in a child process) and the integration spec (an nginx worker).
-- Each probe returns plain data (strings, numbers, booleans) that the specs
-- compare; none of them raises unless the bridge itself misbehaves.
local _M = {}

local function raiser(name, ran)
  return function()
    ran[#ran + 1] = name
    error(name .. " boom")
  end
end

-- Tables whose every metamethod raises (and notes that it ran), with the
-- plain table of the same raw contents.
function _M.hostile_table(ran)
  local mt = {}
  for _, name in ipairs { "__index", "__newindex", "__pairs", "__ipairs", "__len",
                          "__tostring", "__eq", "__lt", "__le", "__concat", "__call",
                          "__unm", "__metatable" } do
    mt[name] = name == "__metatable" and "locked" or raiser(name, ran)
  end
  local plain = { a = "x", n = 1, list = { 1, 2, 3 } }
  local t = setmetatable({ a = "x", n = 1, list = setmetatable({ 1, 2, 3 }, mt) }, mt)
  return t, plain
end

-- encode/pb_encode of hostile tables: the bytes must equal those of the plain
-- table (raw access: no metamethod runs); a field read that honours __index
-- (pb entity tables) comes back as nil, err.
function _M.metamethods(b)
  local out, ran = {}, {}
  local t, plain = _M.hostile_table(ran)
  local value_idx = b.method_index("kong.ctx.shared.get")
  out.mp_same = b.encode(value_idx, t) == b.encode(value_idx, plain)
  out.pb_same = b.pb_encode(value_idx, t) == b.pb_encode(value_idx, plain)
  out.ran_raw = table.concat(ran, ",")
  -- a route table whose __index raises: only a missing field reaches it
  local route = setmetatable({ id = "r1" }, { __index = function(_, k) error("no field " .. k) end })
  local v, err = b.pb_encode(b.method_index("kong.router.get_route"), route)
  out.route_v, out.route_err = v, tostring(err)
  return out
end

-- A panic inside a bridge body (not an mlua callback).
function _M.entry_panic(b)
  local ok, v, err = pcall(b.selftest_entry_panic)
  return { ok = ok, v = v, err = tostring(err) }
end

-- A MessagePack array of `n` distinct strings (allocations inside decode).
local function strings_message(n)
  local parts = { string.char(0xdc, math.floor(n / 256), n % 256) }
  for i = 1, n do
    parts[#parts + 1] = string.char(0xa7) .. string.format("%07d", i)
  end
  return table.concat(parts)
end

-- Userdata whose __gc raises, made garbage while the bridge decodes: a GC step
-- inside the bridge's allocations runs the finalizers. Returns how the bridge
-- calls ended (stops at the first that ended on a finalizer's error) and
-- whether a decode works once the finalizers have all run.
function _M.gc_storm(b, rounds)
  local idx = b.method_index("kong.log.err")
  local route_idx = b.method_index("kong.router.get_route")
  local route = setmetatable({ id = "r1", name = "n", paths = { "/a" } }, { __index = function() return nil end })
  local msg = strings_message(2000)
  local r = { ok = 0, nil_err = 0, raised = 0, first_err = nil }
  local function round()
    for _ = 1, 50 do
      local p = newproxy(true)
      getmetatable(p).__gc = function() error("finalizer boom") end
    end
    -- a Protobuf entity result: its field reads push keys (allocations) too
    if not pcall(b.pb_encode, route_idx, route) then
      r.raised = r.raised + 1
    end
    local ok, v, err = pcall(b.decode, idx, msg)
    if not ok then
      r.raised = r.raised + 1
    elseif v == nil then
      r.nil_err = r.nil_err + 1
      r.first_err = r.first_err or tostring(err)
    elseif #v == 2000 then
      r.ok = r.ok + 1
    end
  end
  local pause = collectgarbage("setpause", 100)
  local stepmul = collectgarbage("setstepmul", 1000)
  for _ = 1, rounds do
    pcall(round) -- a finalizer may raise in the round's own allocations too
    if r.nil_err > 0 then break end
  end
  -- run every pending finalizer (each raises once) before going on
  for _ = 1, 100000 do
    if pcall(collectgarbage) then break end
  end
  collectgarbage("setpause", pause)
  collectgarbage("setstepmul", stepmul)
  local v, n = b.decode(idx, msg)
  r.after = type(v) == "table" and n == 2000 and v[2000] == "0002000"
  return r
end

-- Calls encode near the Lua stack limit: reading a nested table needs stack
-- slots that cannot be had. Returns outcome → count.
function _M.deep_stack(b)
  local idx = b.method_index("kong.ctx.shared.get")
  local nested, t = {}, nil
  t = nested
  for _ = 1, 90 do
    t[1] = {}
    t = t[1]
  end
  local function deep(n, f)
    if n == 0 then return f() end
    local r1, r2 = deep(n - 1, f)
    return r1, r2
  end
  local lo, hi = 1, 400000
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    if pcall(deep, mid, function() return 1 end) then lo = mid else hi = mid - 1 end
  end
  local seen = {}
  for d = lo - 40, lo do
    local ok, v, err = pcall(deep, d, function() return b.encode(idx, nested) end)
    local k
    if not ok then
      k = "raised by Lua"
    elseif v == nil then
      k = "nil, " .. tostring(err)
    else
      k = "encoded"
    end
    seen[k] = (seen[k] or 0) + 1
  end
  return seen
end

return _M
