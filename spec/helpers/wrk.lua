-- wrk's report, read for the benchmarks (bench/e2e.lua, bench/kong.lua).
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

return _M
