-- Loads the native library once per Lua state: ffi.load for the C functions of
-- include/kong_plugin_servers.h, and package.loadlib on the same file for the mlua
-- value bridge (luaopen_kong_plugin_servers), so both share one copy of its globals.
--
-- Requiring this module never raises. `lib.optional()` returns `lib` or `nil, err`
-- (one attempt per Lua state: ffi.cdef cannot run twice); modules that cannot work
-- without the library use `lib.C` / `lib.bridge` directly, which raise the reason
-- the library is missing.

local ffi = require "ffi"

local ffi_str = ffi.string
local require, error, ipairs, pcall, tostring = require, error, ipairs, pcall, tostring
local package = package
local io_open = io.open
local gmatch, gsub = string.gmatch, string.gsub
local concat = table.concat

local MODULE = "kong_plugin_servers"
local NAMES = { MODULE, "lib" .. MODULE }
local ERRBUF_SIZE = 4096

local _M = {}

-- Every file that package.cpath could name for the library, in search order.
local function candidates(cpath)
  local paths = {}
  for template in gmatch(cpath, "[^;]+") do
    for _, name in ipairs(NAMES) do
      local path = gsub(template, "%?", name)
      if paths[#paths] ~= path then
        paths[#paths + 1] = path
      end
    end
  end
  return paths
end

function _M.find(cpath)
  local tried = candidates(cpath or package.cpath)
  for _, path in ipairs(tried) do
    local f = io_open(path, "rb")
    if f then
      f:close()
      return path
    end
  end
  return nil, "could not find the " .. MODULE .. " library; tried:\n  " .. concat(tried, "\n  ")
end

local function load()
  local path, err = _M.find()
  if not path then
    return nil, err
  end

  ffi.cdef(require "kong.runloop.plugin_servers.cdefs")

  local ok, clib = pcall(ffi.load, path)
  if not ok then
    return nil, "could not load " .. path .. ": " .. tostring(clib)
  end

  local open, lerr = package.loadlib(path, "luaopen_" .. MODULE)
  if not open then
    return nil, "could not open the Lua module in " .. path .. ": " .. tostring(lerr)
  end
  local bridge = open()
  package.loaded[MODULE] = package.loaded[MODULE] or bridge

  return { C = clib, bridge = bridge, path = path }
end

local loaded, load_err = load()

function _M.optional()
  if loaded then
    return _M
  end
  return nil, load_err
end

if not loaded then
  return setmetatable(_M, {
    __index = function()
      error(load_err, 2)
    end,
  })
end

_M.C = loaded.C
_M.bridge = loaded.bridge
_M.path = loaded.path

-- One error buffer per Lua state: Lua runs one thing at a time, and a message is
-- turned into a string before the next call can overwrite it.
local errbuf = ffi.new("uint8_t[?]", ERRBUF_SIZE)
local errbuf_len = ffi.new("size_t[1]")

-- Returns the (errbuf, errbuf_len) pair for a fallible call, reset to full size.
function _M.errbuf()
  errbuf_len[0] = ERRBUF_SIZE
  return errbuf, errbuf_len
end

-- The message of the last failed call.
function _M.errmsg()
  return ffi_str(errbuf, errbuf_len[0])
end

function _M.version()
  return ffi_str(loaded.C.kps_version())
end

return _M
