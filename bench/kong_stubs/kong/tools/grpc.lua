-- Stand-in for Kong's kong.tools.grpc in `make bench-kong` (bench/kong_stubs/README.md):
-- new() gives a protoc instance (lua-protobuf) that finds the Kong tree's .proto files
-- and the Google well-known types.
local protoc = require "protoc"

local _M = {}

-- The Kong tree this module's caller was loaded from.
local function kong_tree()
  local file = package.searchpath("kong.runloop.plugin_servers.rpc.pb_rpc", package.path)
  return file and file:match("^(.*)/kong/runloop/plugin_servers/rpc/pb_rpc%.lua$")
end

function _M.new()
  local p = protoc.new()
  local tree = kong_tree()
  if tree then
    p:addpath(tree .. "/kong/include")
  end
  p:addpath("/usr/include")
  p.include_imports = true
  return { protoc_instance = p }
end

return _M
