-- kong.runloop.plugin_servers.rpc.init (filled in by its issue).
local _M = {}

return _M
