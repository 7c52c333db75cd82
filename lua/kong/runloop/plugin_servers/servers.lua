-- kong.runloop.plugin_servers.servers: the server definitions of this process,
-- parsed once from `kong.configuration` (conf.lua), warnings logged once.
--
-- get() -> defs  |  nil, err   (never raises; a failure is kept and returned again)
--
-- Shared by init.lua (load_schema, load_plugin, start, status) and Kong's
-- process-level API in process.lua (start_pluginservers), so both see the same
-- definitions.

local conf = require "kong.runloop.plugin_servers.conf"

local ipairs, pcall, tostring = ipairs, pcall, tostring
local concat = table.concat

local _M = {}

local servers, servers_err

function _M.get()
  if servers or servers_err then
    return servers, servers_err
  end
  -- parse returns `defs, warnings` or `nil, errors, warnings`
  local ok, defs, second, third = pcall(conf.parse, (kong and kong.configuration) or {})
  if not ok then
    servers_err = "invalid plugin server configuration: " .. tostring(defs)
    return nil, servers_err
  end
  local warnings = (defs and second) or third
  for _, w in ipairs(warnings or {}) do
    ngx.log(ngx.WARN, "[pluginserver] ", w)
  end
  if defs then
    servers = defs
  else
    servers_err = "invalid plugin server configuration: " .. concat(second or {}, "; ")
  end
  return servers, servers_err
end

return _M
