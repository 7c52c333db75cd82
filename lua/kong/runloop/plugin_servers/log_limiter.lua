-- Rate-limited error lines, per server and cause, across all workers
-- (docs/DESIGN.md "Failure rules"): the first line of a `log_window` is logged;
-- the others are only counted, and one summary line reports them when the window
-- ends. Keys in the shared dict of shm.lua (after its prefix): "l:<server>:<cause>"
-- (the window, added with a ttl) and "n:<server>:<cause>" (lines suppressed in it).
-- Without the dict every line is logged.

local shm = require "kong.runloop.plugin_servers.shm"

local ngx = ngx
local log, ERR, timer_at = ngx.log, ngx.ERR, ngx.timer.at

local _M = {}

local function summarize(premature, d, prefix, server, cause, window_s, level)
  if premature then
    return
  end
  local nkey = prefix .. "n:" .. server .. ":" .. cause
  local n = d:get(nkey)
  if n and n > 0 then
    d:delete(nkey)
    log(level, "[pluginserver] ", server, ": ", n, " more ", cause, " error(s) in the last ",
        window_s, "s not logged")
  end
end

-- Logs `...` at `level` (default ERR) unless a line for (server, cause) was logged
-- in the last `window_ms`. Returns true when the line was logged.
function _M.log(server, cause, window_ms, level, ...)
  level = level or ERR
  local d, p = shm.get()
  if not d or not window_ms or window_ms <= 0 then
    log(level, ...)
    return true
  end
  local window_s = window_ms / 1000
  local ok, err = d:add(p .. "l:" .. server .. ":" .. cause, true, window_s)
  if ok then
    log(level, ...)
    -- The worker that opened the window reports what the others suppressed.
    timer_at(window_s, summarize, d, p, server, cause, window_s, level)
    return true
  end
  if err ~= "exists" then
    -- The dict is full or broken: better a line too many than none.
    log(level, ...)
    return true
  end
  d:incr(p .. "n:" .. server .. ":" .. cause, 1, 0, window_s * 2)
  return false
end

return _M
