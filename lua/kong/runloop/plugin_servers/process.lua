-- kong.runloop.plugin_servers.process (filled in by its issue).
local _M = {}

return _M
