-- kong.runloop.plugin_servers.metrics: status() in the Prometheus text exposition
-- format, version 0.0.4 (docs/METRICS.md): every metric named
-- kong_plugin_server_*, labelled by `server` (and `state`, `phase`, `cause`, `le`).
-- Built at scrape time from status(), which already sums the workers; nothing
-- here runs per request.

local ipairs, pairs, tostring, type = ipairs, pairs, tostring, type
local floor = math.floor
local format, gsub = string.format, string.gsub
local concat, sort = table.concat, table.sort

local _M = {}

local PREFIX = "kong_plugin_server_"

-- States a server can be in (the supervisor's, "external", and "hung" for an
-- external server that answers nothing); every one gets a 0/1 gauge, so that a
-- dashboard can sum or alert on any of them.
_M.STATES = { "starting", "ready", "backoff", "failed", "stopped", "external", "hung" }

local function number(v)
  if type(v) ~= "number" or v ~= v then
    return "0"
  end
  if v == floor(v) and v < 2 ^ 53 and v > -2 ^ 53 then
    return format("%d", v)
  end
  return format("%.9g", v)
end

-- A bucket bound in seconds, in plain decimals ("0.0000625", not "6.25e-05").
local function bound(seconds)
  return (format("%.7f", seconds):gsub("0+$", ""):gsub("%.$", ""))
end
_M.bound = bound

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }

local function label(v)
  return (gsub(tostring(v), '[\\"\n]', ESCAPES))
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do
    keys[#keys + 1] = k
  end
  sort(keys)
  return keys
end

-- An emitter (for family) of one sample per key of the counters' map `field`,
-- labelled `name`, in key order.
local function per_key(field, name)
  return function(emit, _, c)
    local map = c[field]
    for _, k in ipairs(sorted_keys(map)) do
      emit("", "," .. name .. '="' .. label(k) .. '"', map[k])
    end
  end
end

-- Counters with a family of their own above; and counter names fit for a metric name.
local KNOWN_COUNTERS = { events = true, pdk_calls = true, fail_open = true, instance_starts = true }

-- Sorted names of the numeric counters of any server not known above.
local function other_counters(list)
  local seen = {}
  for _, entry in ipairs(list) do
    for k, v in pairs(entry.counters or {}) do
      if type(v) == "number" and not KNOWN_COUNTERS[k] and k:find("^[%a_][%w_]*$") then
        seen[k] = true
      end
    end
  end
  return sorted_keys(seen)
end

-- One metric family: HELP, TYPE, then `sample(out, entry)` for every server.
local function family(out, list, name, kind, help, sample)
  out[#out + 1] = "# HELP " .. PREFIX .. name .. " " .. help
  out[#out + 1] = "# TYPE " .. PREFIX .. name .. " " .. kind
  for _, entry in ipairs(list) do
    sample(function(suffix, labels, value)
      out[#out + 1] = PREFIX .. name .. suffix .. '{server="' .. label(entry.name) .. '"'
        .. (labels or "") .. "} " .. number(value)
    end, entry, entry.counters or {})
  end
end

-- The exposition of `list` (status() entries, with counters).
function _M.render(list)
  local out = {}
  family(out, list, "state", "gauge", "1 for the state the plugin server is in, 0 for the others.",
    function(emit, e)
      local known = false
      for _, s in ipairs(_M.STATES) do
        known = known or s == e.state
        emit("", ',state="' .. s .. '"', s == e.state and 1 or 0)
      end
      if not known and e.state then
        emit("", ',state="' .. label(e.state) .. '"', 1)
      end
    end)
  family(out, list, "uptime_seconds", "gauge", "Seconds since the current process started (0 when not running).",
    function(emit, e) emit("", nil, e.uptime or 0) end)
  family(out, list, "restarts_total", "counter", "Restarts by the supervisor since it started.",
    function(emit, e) emit("", nil, e.restarts or 0) end)
  family(out, list, "promotions_total", "counter",
    "Times the warm standby took over from a server that exited or hung.",
    function(emit, e) emit("", nil, type(e.promotions) == "number" and e.promotions or 0) end)
  family(out, list, "hangs_total", "counter", "Hangs detected (a process alive but not answering).",
    function(emit, e) emit("", nil, type(e.hangs) == "number" and e.hangs or 0) end)
  family(out, list, "events_total", "counter", "Plugin events run, by phase, summed over workers.",
    per_key("events_by_phase", "phase"))
  family(out, list, "pdk_calls_total", "counter", "PDK calls served to the plugin server.",
    function(emit, _, c) emit("", nil, c.pdk_calls or 0) end)
  family(out, list, "errors_total", "counter", "Failed events by cause (connect, timeout, protocol, ...).",
    per_key("errors", "cause"))
  family(out, list, "fail_open_skips_total", "counter", "Failed events skipped because of fail_open.",
    function(emit, _, c) emit("", nil, c.fail_open or 0) end)
  family(out, list, "instance_starts_total", "counter", "Plugin instances started.",
    function(emit, _, c) emit("", nil, c.instance_starts or 0) end)
  -- Any other number in status()'s counters (added later) as a counter of its own name.
  for _, name in ipairs(other_counters(list)) do
    family(out, list, name .. "_total", "counter", "status() counter '" .. name .. "'.",
      function(emit, _, c) emit("", nil, type(c[name]) == "number" and c[name] or 0) end)
  end
  family(out, list, "event_duration_seconds", "histogram",
    "Time an event took in this node, waits for the server included.",
    function(emit, _, c)
      local lat = c.latency_ms or {}
      for _, b in ipairs(lat.buckets or {}) do
        emit("_bucket", ',le="' .. bound(b.le_ms / 1000) .. '"', b.count)
      end
      emit("_bucket", ',le="+Inf"', lat.count or 0)
      emit("_sum", nil, (lat.sum or 0) / 1000)
      emit("_count", nil, lat.count or 0)
    end)
  family(out, list, "event_duration_max_seconds", "gauge", "Longest event so far.",
    function(emit, _, c) emit("", nil, ((c.latency_ms or {}).max or 0) / 1000) end)
  out[#out + 1] = ""
  return concat(out, "\n")
end

return _M
