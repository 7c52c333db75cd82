-- `make install` and `luarocks make` produce a tree that plain LuaJIT loads through
-- package.path / package.cpath alone.
local nginx = require "spec.helpers.nginx"

local root = nginx.root

local function run(cmd)
  local p = io.popen("cd '" .. root .. "' && " .. cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out
end

local LOAD_CHECK = [[
  package.path = package.path .. ";%s"
  _G.ngx = require("spec.helpers.ngx_stub").new()
  local ps = require "kong.runloop.plugin_servers"
  local mod = require "kong_plugin_servers"
  local lib = require "kong.runloop.plugin_servers.lib"
  assert(type(ps.start) == "function" and type(ps.load_plugin) == "function")
  assert(lib.path:find("%s", 1, true) == 1, "loaded from " .. lib.path)
  io.write("loaded ", mod.version, " from ", lib.path)
]]

local function check_tree(lua_dir, clib_dir)
  local code = LOAD_CHECK:format(root .. "/spec/helpers/?.lua;" .. root .. "/?.lua", clib_dir)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(code)
  f:close()
  -- the installed tree comes first; the system paths (";;") supply cjson, as in Kong
  local rc, out = run(("LUA_PATH='%s/?.lua;%s/?/init.lua;;' LUA_CPATH='%s/?.so;;' luajit %s"):format(
    lua_dir, lua_dir, clib_dir, script))
  os.remove(script)
  return rc, out
end

describe("installation", function()
  local tmp

  before_each(function()
    local p = io.popen("mktemp -d /tmp/kps-install-XXXXXX")
    tmp = p:read("*l")
    p:close()
  end)

  after_each(function()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("make install PREFIX=... gives a tree plain LuaJIT can load", function()
    local rc, out = run("make -s install PREFIX='" .. tmp .. "'")
    assert.equal(0, rc, out)
    assert.truthy(io.open(tmp .. "/lib/lua/5.1/kps-helper"), "kps-helper installed beside the .so")
    local lrc, lout = check_tree(tmp .. "/share/lua/5.1", tmp .. "/lib/lua/5.1")
    assert.equal(0, lrc, lout)
    assert.matches("loaded %d+%.%d+%.%d+ from " .. tmp:gsub("%-", "%%-") .. "/lib/lua/5.1/kong_plugin_servers%.so", lout)
  end)

  it("luarocks make installs the same tree", function()
    local rc, out = run("luarocks --lua-version=5.1 make --tree='" .. tmp
      .. "' kong-plugin-servers-dev-1.rockspec LUA_INCDIR=/usr/include/luajit-2.1")
    assert.equal(0, rc, out)
    local lrc, lout = check_tree(tmp .. "/share/lua/5.1", tmp .. "/lib/lua/5.1")
    assert.equal(0, lrc, lout)
    assert.matches("kong_plugin_servers%.so", lout)
  end)
end)
