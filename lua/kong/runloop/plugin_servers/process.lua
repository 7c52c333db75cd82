-- kong.runloop.plugin_servers.process: info queries and the supervisor (process issue).
local _M = {}

-- Returns an array of plugin info records, or nil, err.
function _M.query(_defs)
  return nil, "plugin info query not implemented"
end

function _M.start(_defs)
  return true
end

function _M.stop()
  return true
end

function _M.status(defs)
  local list = {}
  for i, def in ipairs(defs) do
    list[i] = { name = def.name, state = def.start_command and "stopped" or "external", restarts = 0 }
  end
  return list
end

return _M
