-- kong.runloop.plugin_servers.conf (filled in by its issue).
local _M = {}

return _M
