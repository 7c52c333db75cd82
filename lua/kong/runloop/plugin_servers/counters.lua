-- Per-server counters in the shared dict `kong_plugin_servers`, added up over all
-- workers (INTERFACES.md, status()). Keys: "c:<server>:<counter>". Without the
-- dict every call is a no-op and get() answers zeros.

local ngx = ngx
local shared = ngx.shared
local floor = math.floor

local DICT = "kong_plugin_servers"

local _M = {}

-- Counter names as they appear in status(); errors.* by cause.
_M.ERROR_CAUSES = { "connect", "timeout", "protocol", "no_instance" }

local function dict()
  return shared and shared[DICT]
end

local function key(server, name)
  return "c:" .. server .. ":" .. name
end

-- Adds n (default 1) to counter `name` of `server` ("events", "errors.timeout", ...).
function _M.incr(server, name, n)
  local d = dict()
  if d then
    d:incr(key(server, name), n or 1, 0)
  end
end

-- Records one event's latency: adds to the sum, raises the max.
function _M.latency(server, ms)
  local d = dict()
  if not d then
    return
  end
  ms = floor(ms + 0.5)
  d:incr(key(server, "latency_ms.sum"), ms, 0)
  local k = key(server, "latency_ms.max")
  -- get-then-set: a concurrent larger value may be overwritten by a smaller one in a
  -- rare race; the max is a diagnostic, not an invariant.
  local cur = d:get(k) or 0
  if ms > cur then
    d:set(k, ms)
  end
end

function _M.get(server)
  local d = dict()
  local function v(name)
    return d and d:get(key(server, name)) or 0
  end
  local errors = {}
  for _, cause in ipairs(_M.ERROR_CAUSES) do
    errors[cause] = v("errors." .. cause)
  end
  return {
    events = v("events"), pdk_calls = v("pdk_calls"), instance_starts = v("instance_starts"),
    fail_open = v("fail_open"), errors = errors,
    log_events = v("log_events"), log_refused = v("log_refused"),
    latency_ms = { sum = v("latency_ms.sum"), max = v("latency_ms.max") },
  }
end

return _M
