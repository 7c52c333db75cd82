-- Per-server counters in the shared dict of shm.lua, added up over all workers
-- (status(), metrics()). Keys (after shm's prefix): "c:<server>:<counter>".
-- Without the dict every call is a no-op and get() answers zeros.
--
-- Events are counted per phase ("events.<phase>"); the total is their sum, read
-- at status time, so an event costs no more dict operations than a total did.
-- Event latency: a sum and a max in microseconds, and a histogram with one
-- counter per bucket (not cumulative: one incr per event, whatever the number
-- of buckets); get() makes the buckets cumulative, as Prometheus wants them.

local shm = require "kong.runloop.plugin_servers.shm"

local floor, log, ceil = math.floor, math.log, math.ceil
local ipairs, setmetatable = ipairs, setmetatable
local shm_get = shm.get

local _M = {}

-- Counter names as they appear in status(); errors.* by cause.
-- refused_method: calls of a name outside the PDK (pdk.refuse), not events.
_M.ERROR_CAUSES = { "connect", "timeout", "protocol", "no_instance", "refused_method" }

-- Phases an external plugin can run in; any other name counts as "other".
_M.PHASES = { "certificate", "preread", "rewrite", "access", "response", "header_filter",
              "body_filter", "log", "other" }

-- Latency histogram: bucket i holds events of at most FIRST_BUCKET_US * 2^(i-1)
-- microseconds (0.0625 ms to 4096 ms; docs/METRICS.md says why), bucket
-- BUCKETS + 1 the slower ones. Powers of two find the bucket with one log, no loop.
local FIRST_BUCKET_US = 62.5
local BUCKETS = 17
local INV_LN2 = 1 / log(2)
_M.LATENCY_BUCKETS_MS = {}
for i = 1, BUCKETS do
  _M.LATENCY_BUCKETS_MS[i] = FIRST_BUCKET_US * 2 ^ (i - 1) / 1000
end

local EVENT_NAME = setmetatable({}, { __index = function() return "events.other" end })
for _, phase in ipairs(_M.PHASES) do
  EVENT_NAME[phase] = "events." .. phase
end

local BUCKET_NAME = {}
for i = 1, BUCKETS + 1 do
  BUCKET_NAME[i] = "latency.b" .. i
end

-- Keys by prefix, server and counter name, built once: the hot path does not
-- concatenate.
local key_cache = {}

-- Apart from keys(): a closure there would close an upvalue on its return path,
-- which the JIT cannot compile (NYI: UCLO), aborting the trace of every event.
local function key_table(prefix, server)
  local head = prefix .. "c:" .. server .. ":"
  return setmetatable({}, { __index = function(t, name)
    local v = head .. name
    t[name] = v
    return v
  end })
end

local function keys(prefix, server)
  local by_server = key_cache[prefix]
  if not by_server then
    by_server = {}
    key_cache[prefix] = by_server
  end
  local k = by_server[server]
  if not k then
    k = key_table(prefix, server)
    by_server[server] = k
  end
  return k
end

-- Adds n (default 1) to counter `name` of `server` ("pdk_calls", "errors.timeout", ...).
function _M.incr(server, name, n)
  local d, p = shm_get()
  if d then
    d:incr(keys(p, server)[name], n or 1, 0)
  end
end

-- The histogram bucket of a latency in microseconds.
local function bucket(us)
  if us <= FIRST_BUCKET_US then
    return 1
  end
  -- the epsilon keeps an exact bound (500 µs) in its own bucket despite rounding
  local i = ceil(log(us / FIRST_BUCKET_US) * INV_LN2 - 1e-9) + 1
  if i > BUCKETS then
    return BUCKETS + 1
  end
  return i
end
_M.bucket = bucket

-- Counts one event of `phase` that took `us` microseconds: its phase, the
-- latency sum, max and histogram bucket.
function _M.event(server, phase, us)
  local d, p = shm_get()
  if not d then
    return
  end
  local k = keys(p, server)
  d:incr(k[EVENT_NAME[phase]], 1, 0)
  us = floor(us + 0.5)
  if us < 0 then
    us = 0
  end
  d:incr(k["latency_us.sum"], us, 0)
  d:incr(k[BUCKET_NAME[bucket(us)]], 1, 0)
  local max_key = k["latency_us.max"]
  -- get-then-set: a concurrent larger value may be overwritten by a smaller one in a
  -- rare race; the max is a diagnostic, not an invariant.
  local cur = d:get(max_key) or 0
  if us > cur then
    d:set(max_key, us)
  end
end

function _M.get(server)
  local d, p = shm_get()
  local k = keys(p or "", server)
  local function v(name)
    return d and d:get(k[name]) or 0
  end
  local errors = {}
  for _, cause in ipairs(_M.ERROR_CAUSES) do
    errors[cause] = v("errors." .. cause)
  end
  local events, by_phase = 0, {}
  for _, phase in ipairs(_M.PHASES) do
    local n = v(EVENT_NAME[phase])
    if n > 0 then
      by_phase[phase] = n
      events = events + n
    end
  end
  local buckets, count = {}, 0
  for i = 1, BUCKETS + 1 do
    count = count + v(BUCKET_NAME[i])
    if i <= BUCKETS then
      buckets[i] = { le_ms = _M.LATENCY_BUCKETS_MS[i], count = count }
    end
  end
  return {
    events = events, events_by_phase = by_phase,
    pdk_calls = v("pdk_calls"), instance_starts = v("instance_starts"),
    fail_open = v("fail_open"), errors = errors,
    log_events = v("log_events"), log_refused = v("log_refused"),
    -- sum and max in ms; buckets cumulative; count = events timed
    latency_ms = { sum = v("latency_us.sum") / 1000, max = v("latency_us.max") / 1000,
                   count = count, buckets = buckets },
  }
end

return _M
