-- wrk's report, read for the benchmarks (bench/e2e.lua, bench/kong.lua), and a
-- steady wrk load for the integration specs (hang, standby).
local socket = require "socket"

local _M = {}

local function to_ms(v, unit)
  v = tonumber(v)
  if unit == "us" then return v / 1000 elseif unit == "s" then return v * 1000 end
  return v
end

-- The figures of wrk's text `out` (run with --latency): requests, rps, non2xx,
-- errors (the "Socket errors" line, or nil), p50 and p99 (ms). Raises when `out`
-- is not a report.
function _M.report(out)
  local r = {
    requests = tonumber(out:match("(%d+) requests in")),
    rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)")),
    non2xx = tonumber(out:match("Non%-2xx or 3xx responses:%s*(%d+)")) or 0,
    errors = out:match("Socket errors:[^\n]*"),
  }
  local v, u = out:match("%s50%%%s+([%d%.]+)(%a+)")
  r.p50 = v and to_ms(v, u)
  v, u = out:match("%s99%%%s+([%d%.]+)(%a+)")
  r.p99 = v and to_ms(v, u)
  if not r.requests then
    error("wrk failed: " .. out)
  end
  return r
end

-- wrk's latency figure in seconds ("812.34us", "1.20ms", "5.01s", "1.00m").
local function seconds_of(text)
  local n, unit = (text or ""):match("^([%d%.]+)(%a+)$")
  local scale = { us = 1e-6, ms = 1e-3, s = 1, m = 60 }
  return n and tonumber(n) * (scale[unit] or 1) or nil
end

-- Runs wrk (4 connections, Host: load.test) on the rig `h` for `seconds`, calls
-- `action()` `at` seconds in, and returns { requests, non2xx, socket_errors,
-- max_latency (seconds), out }.
function _M.under_load(h, seconds, at, action)
  local wrk = assert(io.popen(("wrk -t2 -c4 -d%ds --timeout 20s -H 'Host: load.test' http://127.0.0.1:%d/ 2>&1")
    :format(seconds, h.port)))
  socket.sleep(at)
  action()
  local out = wrk:read("*a")
  wrk:close()
  return {
    requests = tonumber(out:match("(%d+) requests in")),
    non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)")) or 0,
    socket_errors = out:match("Socket errors: ([^\n]+)"),
    max_latency = seconds_of(out:match("Latency%s+%S+%s+%S+%s+(%S+)")),
    out = out,
  }
end

return _M
