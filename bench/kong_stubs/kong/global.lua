-- Stand-in for Kong's kong.global in `make bench-kong` (bench/kong_stubs/README.md):
-- only what kong.runloop.plugin_servers calls.
local ngx = ngx

local _M = {}

local loggers = {}

-- A logger named after `namespace`, made once; the request's logger from now on.
function _M.set_namespaced_log(kong, namespace, ctx)
  if type(namespace) ~= "string" then
    error("namespace (arg #2) must be a string", 2)
  end
  local l = loggers[namespace]
  if not l then
    l = setmetatable({ namespace = namespace }, { __index = kong.log })
    loggers[namespace] = l
  end
  (ctx or ngx.ctx).KONG_LOG = l
end

return _M
