-- wrk's report, read for the benchmarks (bench/e2e.lua, bench/kong.lua), and a
-- steady wrk load for the integration specs (hang, standby).
local socket = require "socket"

local _M = {}

-- wrk's time units, in seconds ("812.34us", "1.20ms", "5.01s", "1.00m").
local SECONDS = { us = 1e-6, ms = 1e-3, s = 1, m = 60 }

local function seconds_of(n, unit)
  return n and tonumber(n) * (SECONDS[unit] or 1) or nil
end

-- The figures of wrk's text `out`: requests, rps, non2xx, errors (the "Socket
-- errors" line, or nil), p50 and p99 in ms (with --latency), max_latency in
-- seconds; requests is nil when `out` is not a report.
local function figures(out)
  local p50 = seconds_of(out:match("%s50%%%s+([%d%.]+)(%a+)"))
  local p99 = seconds_of(out:match("%s99%%%s+([%d%.]+)(%a+)"))
  return {
    requests = tonumber(out:match("(%d+) requests in")),
    rps = tonumber(out:match("Requests/sec:%s*([%d%.]+)")),
    non2xx = tonumber(out:match("Non%-2xx or 3xx responses:%s*(%d+)")) or 0,
    errors = out:match("Socket errors:[^\n]*"),
    p50 = p50 and p50 * 1000,
    p99 = p99 and p99 * 1000,
    max_latency = seconds_of(out:match("Latency%s+%S+%s+%S+%s+([%d%.]+)(%a+)")),
  }
end

-- The figures of a report (above); raises when `out` is not one.
function _M.report(out)
  local r = figures(out)
  if not r.requests then
    error("wrk failed: " .. out)
  end
  return r
end

-- Runs wrk (4 connections, Host: load.test) on the rig `h` for `seconds`, calls
-- `action()` `at` seconds in, and returns its figures (above) with socket_errors
-- (the text after "Socket errors: ", or nil) and out.
function _M.under_load(h, seconds, at, action)
  local wrk = assert(io.popen(("wrk -t2 -c4 -d%ds --timeout 20s -H 'Host: load.test' http://127.0.0.1:%d/ 2>&1")
    :format(seconds, h.port)))
  socket.sleep(at)
  action()
  local out = wrk:read("*a")
  wrk:close()
  local r = figures(out)
  r.socket_errors = out:match("Socket errors: ([^\n]+)")
  r.out = out
  return r
end

return _M
