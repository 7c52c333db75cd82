-- kong.runloop.plugin_servers.clock: microseconds on a monotonic clock, for the
-- event latency (counters.lua). nginx's clock has millisecond steps, too coarse
-- for events that take a few hundred microseconds; the library reads
-- CLOCK_MONOTONIC. Without the library (unit specs), nginx's clock stands in.

local ngx = ngx
local require = require

local _M = {}

local lib = require("kong.runloop.plugin_servers.lib").optional()
if lib then
  local C = lib.C
  function _M.us()
    return C.kps_clock_us()
  end
else
  local now, update_time = ngx.now, ngx.update_time
  function _M.us()
    update_time()
    return now() * 1e6
  end
end

return _M
