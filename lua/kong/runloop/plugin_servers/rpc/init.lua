-- Picks the RPC implementation for a plugin's protocol (PROTOCOL.md §2.1).
-- An unknown protocol is an error at load time, not at the first request.

local _M = {}

local IMPLEMENTATIONS = {
  ["MsgPack:1"] = "kong.runloop.plugin_servers.rpc.mp_rpc",
  ["ProtoBuf:1"] = "kong.runloop.plugin_servers.rpc.pb_rpc",
}

-- rpc object for `info` (a plugin info record), or nil, err.
function _M.new(info, on_reset)
  local protocol = info.protocol or "MsgPack:1"
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
  return impl.new(info.server_def, info.name, on_reset)
end

return _M
