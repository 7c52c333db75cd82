-- Codec micro-benchmarks inside LuaJIT, with the message shapes of a real event:
-- our path (engine envelope over FFI + mlua value bridge) against the pure-Lua
-- lua-MessagePack (`require "MessagePack"`, the library Kong's mp_rpc uses).
--
--   luajit bench/codec.lua [seconds_per_row]     (run from the repo root; make bench does)
--
-- Prints markdown table rows: `| codec: <shape> | ours N ns, lua-MessagePack M ns, R× |`.
-- Every measurement runs in a fresh LuaJIT process (`luajit bench/codec.lua S <row> <side>`
-- prints one number): lua-MessagePack's trace aborts blacklist bytecode and fill the
-- hot-count slots, which slowed our path 3× when both ran in one process.
-- Each row does what the gateway does per message, both sides ending with Lua values
-- or a Lua string ready for `sock:send`:
--   encode: ours = stream reset + kps_mp_stream_<request> (+ bridge.encode for a value)
--           + ffi.string of the output; lua-MessagePack = pack of the same message
--           table (already shaped: Kong's multimap fix-up is not counted against it).
--   decode: ours = feed + poll + bridge.decode of Args + the method name (mp_rpc's
--           per-index name table; ffi.string only for an unknown method);
--           lua-MessagePack = unpack of the same bytes. The engine only takes a reply
--           to a pending request, so the decode loop also builds a HandleEvent; that
--           build (measured in its own loop in the same run) is subtracted.

package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./target/release/lib?.so;" .. package.cpath

local ffi = require "ffi"
local mp = require "MessagePack"
local cjson = require "cjson"
local lib = require "kong.runloop.plugin_servers.lib"

local C, bridge, errbuf = lib.C, lib.bridge, lib.errbuf
local ffi_str, ffi_new = ffi.string, ffi.new
local encode, decode = bridge.encode, bridge.decode
local mp_pack, mp_unpack = mp.pack, mp.unpack

local SECONDS = tonumber(arg[1]) or 0.3
local ONLY_ROW, ONLY_SIDE = tonumber(arg[2]), arg[3]

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } kps_bench_timespec;
  int clock_gettime(int clk, kps_bench_timespec *ts);
]]
local ts = ffi_new("kps_bench_timespec")
local CLOCK_PROCESS_CPUTIME_ID = 2
local function cpu_ns()
  ffi.C.clock_gettime(CLOCK_PROCESS_CPUTIME_ID, ts)
  return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

-- ns per call of fn(i): batches of calls until SECONDS of CPU have passed (after a
-- warm-up that lets the JIT compile the loop); the best of 3 runs. Each call gets
-- its own copy of the loop (loaded from source), so that lua-MessagePack's trace
-- aborts (NYI bytecode 51) cannot blacklist the loop that times our path.
local MEASURE_SRC = [[
  local fn, seconds, cpu_ns = ...
  local batch = 1000
  for i = 1, 20000 do fn(i) end
  local best = math.huge
  for _ = 1, 3 do
    collectgarbage()
    local n, t0 = 0, cpu_ns()
    local t
    repeat
      for i = 1, batch do fn(i) end
      n = n + batch
      t = cpu_ns() - t0
    until t >= seconds * 1e9 / 3
    best = math.min(best, t / n)
  end
  return best
]]
local function measure(fn)
  return assert(loadstring(MEASURE_SRC, "=measure"))(fn, SECONDS, cpu_ns)
end

local method_names = {}  -- as mp_rpc: a known method's name comes from this table
for i, m in pairs(bridge.methods()) do
  method_names[i] = m.name
end

local function method_index(name)
  local i = bridge.method_index(name)
  assert(i and i > 0, "unknown method " .. name)
  return i
end

-- The shapes ------------------------------------------------------------------

local HEADERS = {  -- kong.request.get_headers() of a typical browser request: 12 headers
  host = "example.test", ["user-agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
  accept = "text/html,application/xhtml+xml", ["accept-language"] = "en-US,en;q=0.5",
  ["accept-encoding"] = "gzip, deflate, br", connection = "keep-alive",
  ["x-request-id"] = "5e1c7a70-3c2f-4c4e-9f8e-1d2a3b4c5d6e", ["x-forwarded-for"] = "10.0.0.1",
  ["cache-control"] = "no-cache", cookie = "session=abc123; theme=dark",
  ["x-loose-data"] = { "a", "b" }, ["content-type"] = "application/json",
}
-- The same, shaped as Kong's fix_mmap leaves it for lua-MessagePack (string -> {string}).
local HEADERS_SHAPED = {}
for k, v in pairs(HEADERS) do
  HEADERS_SHAPED[k] = type(v) == "string" and { v } or v
end

local CONFIG = { message = "hello", tags = {}, __seq__ = 3 }
do  -- a plugin config whose JSON is about 2 KB
  local i = 0
  while #cjson.encode(CONFIG) < 2048 do
    i = i + 1
    CONFIG["field_" .. i] = string.rep(string.char(96 + i % 26), 40)
  end
end
local CONFIG_JSON = cjson.encode(CONFIG)

local session = ffi.gc(C.kps_mp_session_new(16 * 1024 * 1024, bridge.MAX_DEPTH + 8), C.kps_mp_session_free)
local stream = ffi.gc(C.kps_mp_stream_new(session), C.kps_mp_stream_free)
local out = ffi_new("const uint8_t *[1]")
local out_len = ffi_new("size_t[1]")
local ev = ffi_new("kps_mp_event[1]")

local function check(rc)
  if rc ~= 0 then
    error(lib.errmsg(), 2)
  end
end

-- A reply to the pending request, in an FFI buffer whose message id (uint32 at
-- byte 3) is patched to the id the session just used.
local function reply_template(result)
  -- [1, <id as 0xce + 4 bytes>, nil, result]
  local fixed = "\148\001\206\000\000\000\000\192" .. mp_pack(result)
  local buf = ffi_new("uint8_t[?]", #fixed)
  ffi.copy(buf, fixed, #fixed)
  return buf, #fixed
end

local last_id = 0
local function set_id(buf, id)
  buf[3] = bit.band(bit.rshift(id, 24), 255)
  buf[4] = bit.band(bit.rshift(id, 16), 255)
  buf[5] = bit.band(bit.rshift(id, 8), 255)
  buf[6] = bit.band(id, 255)
end

local function build_handle_event()
  local buf, len = errbuf()
  C.kps_mp_stream_reset(stream)
  check(C.kps_mp_stream_handle_event(session, stream, 3, "access", 6, out, out_len, buf, len))
  last_id = last_id + 1
  return ffi_str(out[0], out_len[0])
end

-- Decodes one reply the way mp_rpc does; returns the method name and args.
local function ours_decode(rbuf, rlen)
  build_handle_event()
  set_id(rbuf, last_id)
  local buf, len = errbuf()
  check(C.kps_mp_stream_feed(stream, rbuf, rlen, buf, len))
  buf, len = errbuf()
  check(C.kps_mp_stream_poll(stream, ev, buf, len))
  local e = ev[0]
  if e.kind == C.KPS_MP_RET then
    return nil
  end
  local args, n = decode(e.method, ffi_str(e.value, e.value_len))
  local name = method_names[e.method] or ffi_str(e.text, e.text_len)
  return name, args, n
end

-- The rows: label, our function, lua-MessagePack's function, and a check that
-- both handle the same message. A decode row's time has the HandleEvent build
-- (row 1, same process kind) subtracted.
local ROWS = {}
local function add(label, ours, theirs, opts)
  ROWS[#ROWS + 1] = { label = label, ours = ours, theirs = theirs, decode = opts and opts.decode,
                      reference = opts and opts.reference }
end

-- 1. HandleEvent request (Kong -> server)
add(function() return string.format("HandleEvent request, encode (%d B)", #build_handle_event()) end,
  build_handle_event,
  function(i)
    return mp_pack({ 0, i, "plugin.HandleEvent", { { InstanceId = 3, EventName = "access" } } })
  end)

-- 2. Messages from the server: PDK calls with arguments, and the event's end
local function decode_row(label, result)
  local rbuf, rlen = reply_template(result)
  local bytes = "\148\001\007\192" .. mp_pack(result)
  add(function()
    local name, _, n = ours_decode(rbuf, rlen)
    local t = mp_unpack(bytes)
    if result.Data ~= "ret" then
      assert(name == t[4].Data.Method and n == #t[4].Data.Args, "decode mismatch for " .. label)
    end
    return string.format("%s, decode (%d B)", label, #bytes)
  end,
  function() return ours_decode(rbuf, rlen) end,
  function() return mp_unpack(bytes) end,
  { decode = true })
end
decode_row("PDK call with 2 args (kong.response.set_header)", { EventId = 7, Data = {
  Method = "kong.response.set_header",
  Args = { "x-hello-from-python", "Python says hello to example.test" } } })
decode_row("PDK call with a 12-header map (kong.service.request.set_headers)", { EventId = 7, Data = {
  Method = "kong.service.request.set_headers", Args = { HEADERS_SHAPED } } })
decode_row("event end (Data = \"ret\")", { EventId = 7, Data = "ret" })

-- 3. Step replies (Kong -> server): a header multimap, a string
-- A Step reply to event 7 carrying value as the result of method index.
local function build_step(index, value)
  local buf, len = errbuf()
  -- as mp_rpc calls it: assert(f()) on a C function's results costs ~450 ns here
  local bytes, err = encode(index, value)
  if not bytes then error(err) end
  C.kps_mp_stream_reset(stream)
  check(C.kps_mp_stream_step(session, stream, 7, index, bytes, #bytes, out, out_len, buf, len))
  return ffi_str(out[0], out_len[0])
end

local GET_HEADERS = method_index("kong.request.get_headers")
local function build_step_headers()
  return build_step(GET_HEADERS, HEADERS)
end
add(function()
  local ours = build_step_headers()
  local theirs = mp_pack({ 0, 1, "plugin.StepMultiMap", { { EventId = 7, Data = HEADERS_SHAPED } } })
  -- ids differ in width (the session's id vs 1): allow a few bytes
  assert(math.abs(#ours - #theirs) <= 4, "StepMultiMap sizes differ: " .. #ours .. " vs " .. #theirs)
  return string.format("Step reply with a 12-header multimap, encode (%d B)", #ours)
end, build_step_headers, function(i)
  return mp_pack({ 0, i, "plugin.StepMultiMap", { { EventId = 7, Data = HEADERS_SHAPED } } })
end)

local GET_HEADER = method_index("kong.request.get_header")
local function build_step_string()
  return build_step(GET_HEADER, "example.test")
end
add(function()
  return string.format("Step reply with a string (kong.request.get_header), encode (%d B)", #build_step_string())
end, build_step_string, function(i)
  return mp_pack({ 0, i, "plugin.Step", { { EventId = 7, Data = "example.test" } } })
end)

-- 4. StartInstance with a 2 KB config (Kong -> server)
local function build_start()
  local buf, len = errbuf()
  C.kps_mp_stream_reset(stream)
  check(C.kps_mp_stream_start_instance(session, stream, "py-hello", 8, CONFIG_JSON, #CONFIG_JSON,
                                       out, out_len, buf, len))
  return ffi_str(out[0], out_len[0])
end
add(function()
  return string.format("StartInstance with a %d B config, encode (%d B)", #CONFIG_JSON, #build_start())
end, build_start, function(i)
  return mp_pack({ 0, i, "plugin.StartInstance", { { Name = "py-hello", Config = CONFIG_JSON } } })
end)

-- 5. References, not targets: lua-cjson, a C codec on the same Lua C API, on the
-- header table of rows 3 and 5 (as JSON). What a C library pays LuaJIT to walk or
-- build that many Lua objects, next to our whole path for the same message.
local HEADERS_JSON = cjson.encode({ HEADERS_SHAPED })
add(function()
  return "12-header multimap encode (ours: the whole Step reply)"
end, build_step_headers, function() return cjson.encode(HEADERS) end, { reference = "lua-cjson encode" })
do
  local rbuf, rlen = reply_template({ EventId = 7, Data = {
    Method = "kong.service.request.set_headers", Args = { HEADERS_SHAPED } } })
  add(function()
    return "12-header map decode (ours: the whole PDK call message)"
  end, function() return ours_decode(rbuf, rlen) end, function() return cjson.decode(HEADERS_JSON) end,
  { decode = true, reference = "lua-cjson decode" })
end

-- Child: one measurement -----------------------------------------------------
if ONLY_ROW then
  local r = assert(ROWS[ONLY_ROW], "no row " .. ONLY_ROW)
  local fn = ONLY_SIDE == "ours" and r.ours or r.theirs
  local ns = measure(fn)
  if r.decode and ONLY_SIDE == "ours" then
    ns = ns - measure(build_handle_event)
  end
  print(string.format("%.1f", ns))
  return
end

-- Driver: labels and checks here, every measurement in a child ---------------
local self = arg[0]
local function child(row, side)
  local p = assert(io.popen(string.format("luajit %s %s %d %s", self, SECONDS, row, side)))
  local text = p:read("*a")
  p:close()
  return assert(tonumber(text), "child " .. row .. " " .. side .. " failed: " .. text)
end

local prod, worst, counted = 1, math.huge, 0
local references = {}
for i, r in ipairs(ROWS) do
  local label = r.label()
  local ours, theirs = child(i, "ours"), child(i, "theirs")
  local ratio = theirs / ours
  local line
  if r.reference then
    line = string.format("| codec reference (C API cost, not a target): %s | ours %.0f ns, %s of the same table %.0f ns, %.1f× |",
                         label, ours, r.reference, theirs, ratio)
    references[#references + 1] = line
  else
    prod, worst, counted = prod * ratio, math.min(worst, ratio), counted + 1
    print(string.format("| codec: %s | ours %.0f ns, lua-MessagePack %.0f ns, **%.1f×** |", label, ours, theirs, ratio))
  end
  io.stdout:flush()
end
print(string.format("| codec: MessagePack summary (target ≥10× per message) | geometric mean **%.1f×**, lowest %.1f× %s |",
                    prod ^ (1 / counted), worst, worst >= 10 and "(met)" or "(NOT met)"))
for _, line in ipairs(references) do
  print(line)
end
