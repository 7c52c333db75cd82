-- kong.runloop.plugin_servers: Kong's module API over the native engine.
-- Exports start, stop, load_schema, load_plugin (as Kong's callers expect) and status.
local _M = {}

function _M.start()
  return true
end

function _M.stop()
  return true
end

function _M.load_schema(_name)
  return false, "no plugin found"
end

function _M.load_plugin(_name)
  return false, "no plugin found"
end

function _M.status()
  return {}
end

return _M
