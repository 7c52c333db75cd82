-- Picks the RPC implementation for a plugin's protocol (docs/PROTOCOL.md §2).
-- An unknown protocol is an error at load time, not at the first request.
--
-- new(info [, on_reset]) -> rpc  |  nil, err
--   `info`: a plugin info record (process.query, load_external_plugins_info) or a
--   plugin object; Kong 3.9 calls it as new(plugin). The protocol is `info.protocol`
--   or, as in Kong, `info.server_def.protocol`. A server definition as Kong's conf
--   loader builds it (name, socket, start_command, query_command, protocol) gets
--   our other settings' defaults from conf.parse.
--
-- Besides the engine's methods (start_instance, close_instance, handle_event), the
-- rpc object has Kong's call_start_instance(plugin_name, conf) -> { id, conf, seq,
-- rpc } | nil, err and call_close_instance(id) (docs/KONG_COMPAT.md).

local cjson = require "cjson.safe"

local require, pairs, pcall, tostring, type = require, pairs, pcall, tostring, type
local gsub, lower = string.gsub, string.lower
local concat = table.concat

local _M = {}

local IMPLEMENTATIONS = {
  ["MsgPack:1"] = "kong.runloop.plugin_servers.rpc.mp_rpc",
  ["ProtoBuf:1"] = "kong.runloop.plugin_servers.rpc.pb_rpc",
}

-- `def` with conf.parse's defaults for the settings it lacks (a Kong-built
-- definition has only the four fields of Kong's `pluginservers` entries).
local function complete(def)
  if def.max_message_size then
    return def
  end
  local name = tostring(def.name)
  local key = "pluginserver_" .. gsub(lower(name), "-", "_")
  local conf = require "kong.runloop.plugin_servers.conf"
  local defs, errs = conf.parse({
    pluginserver_names = { name },
    [key .. "_socket"] = def.socket,
    [key .. "_start_cmd"] = def.start_command,
    [key .. "_query_cmd"] = def.query_command,
  })
  if not defs or not defs[1] then
    return nil, "server definition of " .. name .. ": " .. concat(errs or {}, "; ")
  end
  for k, v in pairs(defs[1]) do
    if def[k] == nil then
      def[k] = v
    end
  end
  return def
end

-- Kong's rpc:call_start_instance: starts an instance of this rpc's plugin.
local function call_start_instance(self, plugin_name, conf)
  if plugin_name ~= self.plugin_name then
    return nil, "this rpc serves plugin " .. tostring(self.plugin_name) .. ", not " .. tostring(plugin_name)
  end
  local json, jerr = cjson.encode(conf)
  if not json then
    return nil, "cannot encode the configuration as JSON: " .. tostring(jerr)
  end
  local id, err = self:start_instance(json)
  if not id then
    return nil, err
  end
  return { id = id, conf = conf, seq = type(conf) == "table" and conf.__seq__ or nil, rpc = self }
end

-- Kong's rpc:call_close_instance.
local function call_close_instance(self, id)
  return self:close_instance(id)
end

function _M.new(info, on_reset)
  if type(info) ~= "table" or type(info.server_def) ~= "table" then
    return nil, "invalid plugin info: a table with a server_def table expected"
  end
  local protocol = info.protocol or info.server_def.protocol or "MsgPack:1"
  local module = IMPLEMENTATIONS[protocol]
  if not module then
    return nil, "unknown protocol implementation: " .. tostring(protocol)
  end
  local ok, impl = pcall(require, module)
  if not ok then
    return nil, "cannot load protocol " .. protocol .. ": " .. tostring(impl)
  end
  if type(impl.new) ~= "function" then
    return nil, "protocol " .. protocol .. " is not implemented"
  end
  local def, derr = complete(info.server_def)
  if not def then
    return nil, derr
  end
  local rpc, err = impl.new(def, info.name, on_reset)
  if not rpc then
    return nil, err
  end
  rpc.call_start_instance = call_start_instance
  rpc.call_close_instance = call_close_instance
  return rpc
end

return _M
