-- kong.runloop.plugin_servers.rpc.mp_rpc (filled in by its issue).
local _M = {}

return _M
