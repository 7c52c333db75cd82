-- kong.runloop.plugin_servers.plugin (filled in by its issue).
local _M = {}

return _M
