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

local ipairs = ipairs

local OWN = "kong_plugin_servers"
local FALLBACK = "kong"
local FALLBACK_PREFIX = "kps:"

local _M = {
  OWN = OWN,
  FALLBACK = FALLBACK,
  FALLBACK_PREFIX = FALLBACK_PREFIX,
  MISSING = "shared dict '" .. OWN .. "' not found; add "
    .. "'nginx_http_lua_shared_dict = " .. OWN .. " 1m' to kong.conf",
  -- Keys a server can have at once (counters: 9 phases, 18 histogram buckets,
  -- sum, max, 5 others and one per error cause; state: 2; log limiter: 2 per
  -- error cause; 5 causes), measured by spec/integration/shm_fallback_spec.lua.
  KEYS_PER_SERVER = 50,
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

-- nginx's slab allocator hands out powers of two; a dict entry is the key, the
-- value and about 88 bytes of nginx's node (rbtree node, lengths, expiry, LRU
-- queue links) plus our longest key suffix (":latency_us.sum", 17 with "c:").
local function slab(bytes)
  local size = 8
  while size < bytes do
    size = size * 2
  end
  return size
end

-- Bytes server `name` takes in the dict at most: every key of it, plus its
-- state entry (JSON, under 256 bytes). Measured: 6267 for a 10-character name
-- (6400 here), 11776 for a 40-character one (12544 here); docs/SETTINGS.md.
function _M.bytes_per_server(name, prefix)
  local key = slab(88 + #(prefix or FALLBACK_PREFIX) + #name + 17)
  return _M.KEYS_PER_SERVER * key + 256
end

-- The line start() logs once: which dict holds our state, and what it takes.
function _M.describe(defs)
  local _, prefix, name = _M.get()
  if not name then
    return _M.MISSING
  end
  local total, most = 0, 0
  for _, def in ipairs(defs) do
    local b = _M.bytes_per_server(def.name, prefix)
    total = total + b
    if b > most then
      most = b
    end
  end
  local where = prefix == "" and ("shared dict '" .. name .. "'")
    or ("Kong's shared dict '" .. name .. "' under keys '" .. prefix .. "*' (no '" .. OWN .. "' dict declared)")
  return "plugin server state in " .. where .. ": up to " .. most .. " bytes per server, "
    .. total .. " bytes for " .. #defs .. " server(s)"
end

return _M
