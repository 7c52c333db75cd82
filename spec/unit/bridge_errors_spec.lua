-- The value bridge never lets a Lua error or a panic cross its Rust frames: a
-- panic in a bridge body, a metamethod that raises, a __gc finalizer that raises
-- during the bridge's allocations and a Lua stack that cannot grow all come back
-- as `nil, message` (or as the raw result), and the process lives on. Sizes a
-- server declares do not become allocations.
local lib = require "kong.runloop.plugin_servers.lib"
local probe = require "spec.helpers.bridge_probe"
local procs = require "spec.helpers.procs"

local b = lib.bridge

-- Runs `probe.<name>(bridge)` in a child luajit (an abort there must not take
-- busted down) and returns its printed result (key=value lines) and how it ended.
local function in_child(name, arg)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local script = dir .. "/probe.lua"
  procs.write_file(script, string.format([[
    package.path = %q
    package.cpath = %q
    local b = require("kong.runloop.plugin_servers.lib").bridge
    local r = require("spec.helpers.bridge_probe").%s(b, %s)
    for k, v in pairs(r) do io.write(tostring(k), "=", tostring(v), "\n") end
    io.write("END\n")
  ]], package.path, package.cpath, name, tostring(arg)))
  local p = assert(io.popen("luajit " .. script .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  os.execute("rm -rf " .. dir)
  local r = {}
  for k, v in out:gmatch("([^\n=]+)=([^\n]*)") do
    r[k] = v
  end
  return r, out
end

describe("value bridge errors", function()
  it("answers a panic inside a bridge body with nil, message and keeps working", function()
    for _ = 1, 3 do
      assert.same({ ok = true, v = nil, err = "internal error in the value bridge: bridge entry self-test panic" },
                  probe.entry_panic(b))
    end
    local idx = b.method_index("kong.ctx.shared.get")
    assert.equal("\xa2hi", b.encode(idx, "hi"))
    assert.same({ "hi" }, { b.decode(idx, "\xa2hi") })
  end)

  it("reads tables raw: metamethods that raise are never run", function()
    local r = probe.metamethods(b)
    assert.is_true(r.mp_same)
    assert.is_true(r.pb_same)
    assert.equal("", r.ran_raw)
  end)

  it("answers a raising __index of a field read with nil, message", function()
    local r = probe.metamethods(b)
    assert.is_nil(r.route_v)
    assert.matches("no field", r.route_err)
  end)

  it("answers a __gc finalizer that raises during its allocations with nil, message", function()
    local r, out = in_child("gc_storm", 3000)
    assert.equal("exit=0", out:match("exit=%d+"), out)
    assert.equal("0", r.raised, out)
    assert.is_true(tonumber(r.nil_err) >= 1, out)
    assert.matches("finalizer boom", r.first_err, nil, true)
    assert.equal("true", r.after, out)
  end)

  it("answers a Lua stack that cannot grow with nil, stack overflow", function()
    local r, out = in_child("deep_stack")
    assert.equal("exit=0", out:match("exit=%d+"), out)
    assert.is_true(tonumber(r["nil, value bridge: Lua stack overflow"]
                           or r["nil, stack overflow"] or 0) >= 1, out)
  end)
end)

describe("value bridge sizes", function()
  local idx = b.method_index("kong.log.err")

  it("rejects a declared length the bytes cannot hold, before allocating", function()
    for _, msg in ipairs { "\xdd\xff\xff\xff\xff\xc0", "\xdf\xff\xff\xff\xff\xc0\xc0" } do
      local before = collectgarbage("count")
      local v, err = b.decode(idx, msg)
      assert.is_nil(v)
      assert.equal("truncated MessagePack value", err)
      assert.is_true(collectgarbage("count") - before < 64)
    end
  end)

  it("does not presize a 16 MiB array of nils", function()
    local n = 16 * 1024 * 1024 - 5
    local msg = "\xdd" .. string.char(math.floor(n / 2^24) % 256, math.floor(n / 2^16) % 256,
                                      math.floor(n / 2^8) % 256, n % 256) .. string.rep("\xc0", n)
    collectgarbage()
    local before = collectgarbage("count")
    local v, len = b.decode(idx, msg)
    local grown_kib = collectgarbage("count") - before
    assert.equal(n, len)
    assert.is_nil(next(v))
    -- 16 M slots would be 128 MiB; the capped presize is 4096 slots (32 KiB)
    assert.is_true(grown_kib < 1024, grown_kib .. " KiB")
  end)

  it("still decodes a large array beyond the presize cap", function()
    local n = 100000
    local parts = { "\xdd\x00\x01\x86\xa0" }
    for i = 1, n do
      parts[#parts + 1] = string.char(i % 128)
    end
    local v, len = b.decode(idx, table.concat(parts))
    assert.equal(n, len)
    assert.equal(n, #v)
    assert.equal(5, v[5])
    assert.equal(n % 128, v[n])
    local map = { "\xde\x27\x10" } -- 10000 pairs
    for i = 1, 10000 do
      parts = nil
      map[#map + 1] = "\xcd" .. string.char(math.floor(i / 256), i % 256) .. "\xc3"
    end
    local m = b.decode(idx, table.concat(map))
    local count = 0
    for _ in pairs(m) do count = count + 1 end
    assert.equal(10000, count)
    assert.is_true(m[10000])
  end)
end)
