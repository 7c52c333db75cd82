-- The per-event cost of the shim's bookkeeping (counters.event: phase count, latency
-- sum, histogram bucket, max) and of its clock, inside a real nginx worker with a real
-- shared dict, against one bare shared-dict incr for scale (docs/METRICS.md).
--
--   luajit bench/counters.lua [iterations]      (run from the repo root, after make build)
--
-- Prints markdown table rows: `| counters: ... | N ns per event |`, best of 3 runs.

package.path = "./spec/?.lua;./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path

local nginx = require "spec.helpers.nginx"

local N = tonumber(arg[1]) or 200000

local CODE = [[
local counters = require "kong.runloop.plugin_servers.counters"
local clock_us = require("kong.runloop.plugin_servers.clock").us
local d = require("kong.runloop.plugin_servers.shm").get()
local N = ]] .. N .. [[

local function best(fn)
  local best_ns
  for _ = 1, 3 do
    collectgarbage()
    local t0 = clock_us()
    for i = 1, N do
      fn(i)
    end
    local ns = (clock_us() - t0) * 1000 / N
    best_ns = best_ns and math.min(best_ns, ns) or ns
  end
  return string.format("%.0f", best_ns)
end

local sink = 0
return {
  event = best(function(i) counters.event("bench-srv", "access", (i % 7) * 300 + 50) end),
  clock = best(function() local a = clock_us() sink = sink + clock_us() - a end),
  nginx_clock = best(function()
    ngx.update_time() local a = ngx.now() ngx.update_time() sink = sink + ngx.now() - a
  end),
  incr = best(function() d:incr("c:bench-srv:x", 1, 0) end),
}
]]

local h = assert(nginx.start { workers = 1, configuration = { pluginserver_names = {} }, plugins = {} })
local r, err = h:eval_json(CODE)
h:stop()
assert(type(r) == "table", err)
print(("| counters: counters.event (phase, latency sum, histogram bucket, max: 3 incr + 1 get) | %s ns per event |")
  :format(r.event))
print(("| counters: one shared-dict incr, for scale | %s ns |"):format(r.incr))
print(("| counters: the event's two clock reads, kps_clock_us (µs) | %s ns per event |"):format(r.clock))
print(("| counters: the same with ngx.update_time + ngx.now (ms steps, before) | %s ns per event |")
  :format(r.nginx_clock))
