-- kong.runloop.plugin_servers.plugin: the plugin object Kong runs (msgpack issue).
local _M = {}

function _M.new(info)
  return nil, "external plugin objects not implemented (" .. tostring(info.name) .. ")"
end

return _M
