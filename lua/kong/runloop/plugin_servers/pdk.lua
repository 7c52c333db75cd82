-- PDK dispatch for plugin servers: resolves a PDK method the plugin calls, with
-- Kong's overrides (PROTOCOL.md §6.5), and calls it. Shared by both protocols.
--
-- The request data saved for the log phase is passed explicitly (`saved`) to every
-- call, instead of being looked up through a global keyed by coroutine.
--
--   local pdk = require "kong.runloop.plugin_servers.pdk"
--   local ok, value = pdk.call(index, name, args, n, saved)
--   -- ok == true: value is the result (may be nil); ok == false: value is the error

local cjson = require "cjson.safe"

local ngx = ngx
local type = type
local pcall = pcall
local tostring = tostring
local unpack = unpack or table.unpack
local gmatch = string.gmatch
local encode_json = cjson.encode

local _M = {}

local function first(v)
  if type(v) == "table" then
    return v[1]
  end
  return v
end

-- Overrides: function(saved, ...) (PROTOCOL.md §6.5).
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
  ["kong.request.get_headers"] = function(saved, max)
    if saved then
      return saved.request_headers
    end
    return kong.request.get_headers(max)
  end,
  ["kong.request.get_header"] = function(saved, name)
    if saved then
      return first((saved.request_headers or {})[name])
    end
    return kong.request.get_header(name)
  end,
  ["kong.request.get_uri_captures"] = function(saved)
    return kong.request.get_uri_captures(saved and saved.ngx_ctx or ngx.ctx)
  end,
  ["kong.response.get_status"] = function(saved)
    if saved then
      return saved.response_status
    end
    return kong.response.get_status()
  end,
  ["kong.response.get_headers"] = function(saved, max)
    if saved then
      return saved.response_headers
    end
    return kong.response.get_headers(max)
  end,
  ["kong.response.get_header"] = function(saved, name)
    if saved then
      return first((saved.response_headers or {})[name])
    end
    return kong.response.get_header(name)
  end,
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
  local ok, lib = pcall(require, "kong.runloop.plugin_servers.lib")
  if ok and lib.bridge then
    for i, m in pairs(lib.bridge.methods()) do
      names[i] = m.name
    end
  end
end

-- Resolution cache: by index (known methods) and by name (unknown ones).
-- An override is { true, fn }, a plain PDK function { false, fn }.
local by_index = {}
local by_name = {}

local function walk(name)
  local node = _G
  for seg in gmatch(name, "[%w_]+") do
    if type(node) ~= "table" then
      return nil
    end
    node = node[seg]
  end
  if type(node) == "function" then
    return node
  end
  return nil
end

local function resolve(index, name)
  local r = index > 0 and by_index[index] or by_name[name]
  if r then
    return r
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
  else
    by_name[name] = r
  end
  return r
end

-- Forgets resolved functions (tests replace the kong global).
function _M.clear_cache()
  by_index, by_name = {}, {}
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
function _M.call(index, name, args, n, saved)
  name = name or names[index]
  local r = resolve(index or 0, name)
  if not r then
    return false, "could not find pdk method: " .. tostring(name)
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

-- The data the log timer needs from the request (PROTOCOL.md §6.5).
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
