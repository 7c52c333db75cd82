-- PDK dispatch for plugin servers: resolves a PDK method the plugin calls, with
-- Kong's overrides (docs/PROTOCOL.md §6, the exposed API), and calls it. Shared by both protocols.
--
-- The request data saved for the log phase is passed explicitly (`saved`) to every
-- call, instead of being looked up through a global keyed by coroutine.
--
--   local pdk = require "kong.runloop.plugin_servers.pdk"
--   local ok, value, refused = pdk.call(index, name, args, n, saved)
--   -- ok == true: value is the result (may be nil); ok == false: value is the error;
--   -- refused == "refused": the name is outside the PDK and nothing ran
--   --   (report it with pdk.refuse(def, name): counted and logged)

local cjson = require "cjson.safe"
local counters = require "kong.runloop.plugin_servers.counters"
local limiter = require "kong.runloop.plugin_servers.log_limiter"

local ngx, type, pcall, tostring, pairs, require = ngx, type, pcall, tostring, pairs, require
local unpack = unpack or table.unpack
local gmatch, gsub, find, sub = string.gmatch, string.gsub, string.find, string.sub
local byte = string.byte
local ERR = ngx.ERR
local DOT = byte(".")
local encode_json = cjson.encode

local _M = {}

local function first(v)
  if type(v) == "table" then
    return v[1]
  end
  return v
end

-- The headers of the request or the response (`part`): those the log timer saved
-- (`saved[field]`), else the live ones of kong.<part>.
local function headers_of(part, field)
  return function(saved, max)
    if saved then
      return saved[field]
    end
    return kong[part].get_headers(max)
  end
end

-- One header of the request or the response, as headers_of reads them.
local function header_of(part, field)
  return function(saved, name)
    if saved then
      return first((saved[field] or {})[name])
    end
    return kong[part].get_header(name)
  end
end

-- Overrides: function(saved, ...) (docs/PROTOCOL.md §6, the exposed API).
local overrides = {
  ["kong.log.serialize"] = function(saved)
    local data = saved and saved.serialize_data or kong.log.serialize()
    return encode_json(data)
  end,
  ["kong.nginx.get_var"] = function(_, name)
    return ngx.var[name]
  end,
  ["kong.nginx.get_tls1_version_str"] = function()
    local ok, ssl = pcall(require, "ngx.ssl")
    return ok and ssl.get_tls1_version_str and ssl.get_tls1_version_str() or nil
  end,
  ["kong.nginx.get_ctx"] = function(saved, k)
    local ctx = saved and saved.ngx_ctx or ngx.ctx
    return ctx[k]
  end,
  ["kong.nginx.set_ctx"] = function(saved, k, v)
    local ctx = saved and saved.ngx_ctx or ngx.ctx
    ctx[k] = v
  end,
  ["kong.ctx.shared.get"] = function(saved, k)
    local shared = saved and saved.ctx_shared or kong.ctx.shared
    return shared[k]
  end,
  ["kong.ctx.shared.set"] = function(saved, k, v)
    local shared = saved and saved.ctx_shared or kong.ctx.shared
    shared[k] = v
  end,
  ["kong.request.get_headers"] = headers_of("request", "request_headers"),
  ["kong.request.get_header"] = header_of("request", "request_headers"),
  ["kong.request.get_uri_captures"] = function(saved)
    return kong.request.get_uri_captures(saved and saved.ngx_ctx or ngx.ctx)
  end,
  ["kong.response.get_status"] = function(saved)
    if saved then
      return saved.response_status
    end
    return kong.response.get_status()
  end,
  ["kong.response.get_headers"] = headers_of("response", "response_headers"),
  ["kong.response.get_header"] = header_of("response", "response_headers"),
  ["kong.response.get_source"] = function(saved)
    return kong.response.get_source(saved and saved.ngx_ctx or nil)
  end,
  ["kong.nginx.req_start_time"] = function(saved)
    if saved then
      return saved.req_start_time
    end
    return ngx.req.start_time()
  end,
}

_M.overrides = overrides

-- Method names the plugin may call, by index of the Rust method table.
local names = {}
do
  local lib = require("kong.runloop.plugin_servers.lib").optional()
  if lib then
    for i, m in pairs(lib.bridge.methods()) do
      names[i] = m.name
    end
  end
end
_M.names = names

-- The surface a plugin server can call is Kong's exposed API: the functions
-- reachable from the `kong` global, plus the overrides above (all `kong.*` names).
-- Nothing else resolves: no other global (`os`, `io`, `require`, `ngx`, `_G`, ...),
-- no malformed name, nothing that is not a function. A refused name runs no Lua.
local MAX_NAME = 128          -- bytes; the longest PDK name has about 40
local MAX_CACHED_NAMES = 64   -- valid names outside the method table
local NAME_FORM = "^kong%.[%a_][%w_]*[%.%w_]*$"

-- Resolution cache: by index (the method table; bounded by its size) and by name
-- (valid `kong.*` names outside the table, at most MAX_CACHED_NAMES). Refused
-- names are never cached. An override is { true, fn }, a PDK function { false, fn }.
local by_index = {}
local by_name = {}
local cached_names = 0

-- The function at dotted `name` under the `kong` global, or nil. Only tables are
-- walked (a metamethod that raises is a miss, not an error).
local function index_field(node, seg)
  return node[seg]
end

local function walk(name)
  local node = kong
  for seg in gmatch(sub(name, 6), "[^.]+") do
    if type(node) ~= "table" then
      return nil
    end
    local ok, v = pcall(index_field, node, seg)
    if not ok then
      return nil
    end
    node = v
  end
  if type(node) == "function" then
    return node
  end
  return nil
end

-- True when `name` has the form of a PDK name: `kong.` then identifiers joined by
-- single dots (no empty segment, no leading or trailing dot).
local function well_formed(name)
  return type(name) == "string" and #name <= MAX_NAME and find(name, NAME_FORM) ~= nil
    and not find(name, "..", 1, true) and byte(name, -1) ~= DOT
end
_M.well_formed = well_formed

-- The resolution of method `name` ({ is_override, fn }), or nil when refused.
local function resolve(index, name)
  local r = index > 0 and by_index[index] or by_name[name]
  if r then
    return r
  end
  if not well_formed(name) then
    return nil
  end
  local fn = overrides[name]
  if fn then
    r = { true, fn }
  else
    fn = walk(name)
    if not fn then
      return nil
    end
    r = { false, fn }
  end
  -- Functions are looked up once per worker, like Kong's lazy resolution.
  if index > 0 then
    by_index[index] = r
  elseif cached_names < MAX_CACHED_NAMES then
    by_name[name] = r
    cached_names = cached_names + 1
  end
  return r
end

-- The function `name` resolves to and whether it is an override, or nil.
function _M.resolve(name)
  local r = resolve(0, name)
  if r then
    return r[2], r[1]
  end
  return nil
end

-- Forgets resolved functions (tests replace the kong global).
function _M.clear_cache()
  by_index, by_name, cached_names = {}, {}, 0
end

-- A method name made printable (no line breaks into logs) and short.
local function shown(name)
  name = tostring(name)
  local s = gsub(sub(name, 1, MAX_NAME), "[^%w%p ]", "?")
  if #name > MAX_NAME then
    s = s .. "..."
  end
  return s
end

-- The reply to a refused method, from its shown() name.
local function refusal_text(s)
  return "method '" .. s .. "' is not part of the PDK"
end

-- The reply to a refused method.
function _M.refusal(name)
  return refusal_text(shown(name))
end

-- Distinct method names this worker logged in the current window of each server,
-- bounded: past MAX_LOGGED_NAMES further names share one limiter key, so a server
-- inventing names cannot fill the shared dict with log windows (each name is two
-- keys of the limiter, of at most MAX_KEY_NAME bytes of name, for one window).
local MAX_LOGGED_NAMES = 32
local MAX_KEY_NAME = 64
local logged = {}   -- server name -> { until_s = window end, n = count, names = { [name] = true } }

local function log_key(def, name)
  local w = logged[def.name]
  local t = ngx.now()
  if not w or t >= w.until_s then
    w = { until_s = t + (def.log_window or 1000) / 1000, n = 0, names = {} }
    logged[def.name] = w
  end
  name = sub(name, 1, MAX_KEY_NAME)
  if not w.names[name] then
    if w.n >= MAX_LOGGED_NAMES then
      return "refused_method:(more)"
    end
    w.names[name] = true
    w.n = w.n + 1
  end
  return "refused_method:" .. name
end

-- Counts a refused method of server `def` (errors.refused_method) and logs it,
-- once per method per log window. Returns the reply text.
function _M.refuse(def, name)
  local s = shown(name)
  local msg = refusal_text(s)
  counters.incr(def.name, "errors.refused_method")
  limiter.log(def.name, log_key(def, s), def.log_window, ERR, "[pluginserver] ", def.name, ": ", msg, " (refused)")
  return msg
end

local function result(ok, res, err, ...)
  if not ok then
    return false, tostring(res)
  end
  if res == nil and err ~= nil then
    return false, tostring(err)
  end
  return true, res
end

-- Calls PDK method `name` (method-table `index`, 0 when unknown) with `args`.
-- `n` is the argument count when args is an array (it may hold nils); a non-table
-- Args (or a map) is the single argument, nil means none.
-- Returns true, value; false, err; or false, reply, "refused" for a name outside
-- the PDK (nothing ran; the caller reports it with refuse()).
function _M.call(index, name, args, n, saved)
  index = index or 0
  name = name or names[index]
  local r = resolve(index, name)
  if not r then
    return false, _M.refusal(name), "refused"
  end
  local is_override, fn = r[1], r[2]
  if type(args) ~= "table" or not n then
    if args == nil then
      if is_override then
        return result(pcall(fn, saved))
      end
      return result(pcall(fn))
    end
    if is_override then
      return result(pcall(fn, saved, args))
    end
    return result(pcall(fn, args))
  end
  if is_override then
    return result(pcall(fn, saved, unpack(args, 1, n)))
  end
  return result(pcall(fn, unpack(args, 1, n)))
end

-- The data the log timer needs from the request (docs/PROTOCOL.md §6, the exposed API).
function _M.save_request(plugin_name)
  local ctx = ngx.ctx
  local clone = {}
  for k, v in pairs(ctx) do
    clone[k] = v
  end
  local subsystem = ngx.config.subsystem
  local http = subsystem == "http"
  return {
    plugin_name = plugin_name,
    serialize_data = kong.log.serialize(),
    ngx_ctx = clone,
    ctx_shared = kong.ctx.shared,
    request_headers = http and ngx.req.get_headers() or nil,
    response_headers = http and ngx.resp.get_headers() or nil,
    response_status = ngx.status,
    req_start_time = http and ngx.req.start_time() or nil,
  }
end


return _M
