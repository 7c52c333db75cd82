-- kong.runloop.plugin_servers.rpc.pb_rpc (filled in by its issue).
local _M = {}

return _M
