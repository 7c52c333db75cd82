-- kong.runloop.plugin_servers.shm: the one shared dict of the shim, for every
-- module that shares state across workers (state.lua, counters.lua,
-- log_limiter.lua). Our own dict `kong_plugin_servers` when nginx declares it;
-- otherwise Kong's `kong` dict (Kong's nginx template always declares it), with
-- every key of ours under the prefix "kps:" so that none meets a key of Kong's
-- (Kong's are "kong:...", "events:...", "declarative_config:...", ...).
--
--   local d, prefix = shm.get()   -- the dict and the prefix of our keys, or nil, err
--
-- docs/SETTINGS.md "Shared memory" says what we keep there and how much.

local OWN = "kong_plugin_servers"
local FALLBACK = "kong"
local FALLBACK_PREFIX = "kps:"

local _M = {
  OWN = OWN,
  FALLBACK = FALLBACK,
  FALLBACK_PREFIX = FALLBACK_PREFIX,
  MISSING = "shared dict '" .. OWN .. "' not found; add "
    .. "'nginx_http_lua_shared_dict = " .. OWN .. " 1m' to kong.conf",
  -- Bytes a server takes in the dict at most (measured with the slab allocator
  -- of nginx 1.22, see docs/SETTINGS.md), and what the shim keeps beside them.
  BYTES_PER_SERVER = 8192,
  BYTES_FIXED = 128,
}

-- Resolved on every call, from the global `ngx` (not a cached local): nginx
-- cannot add a dict at run time, but unit specs swap `ngx` and their dicts, and
-- three table look-ups cost nothing next to the dict operation that follows.
function _M.get()
  local shared = ngx.shared
  if not shared then
    return nil, _M.MISSING
  end
  local d = shared[OWN]
  if d then
    return d, "", OWN
  end
  d = shared[FALLBACK]
  if d then
    return d, FALLBACK_PREFIX, FALLBACK
  end
  return nil, _M.MISSING
end

-- The line start() logs once: which dict holds our state, and what it takes.
function _M.describe(nservers)
  local _, prefix, name = _M.get()
  if not name then
    return _M.MISSING
  end
  local bytes = _M.BYTES_FIXED + _M.BYTES_PER_SERVER * (nservers or 0)
  local where = prefix == "" and ("shared dict '" .. name .. "'")
    or ("Kong's shared dict '" .. name .. "' under keys '" .. prefix .. "*' (no '" .. OWN .. "' dict declared)")
  return "plugin server state in " .. where .. ": up to " .. _M.BYTES_PER_SERVER
    .. " bytes per server, " .. bytes .. " bytes for " .. (nservers or 0) .. " server(s)"
end

return _M
