-- Stand-in for the lua_pack C module in `make bench-kong` (bench/kong_stubs/README.md):
-- the one format Kong's Protobuf path uses, "I", a 4-byte unsigned integer in the
-- machine's byte order.
local ffi = require "ffi"

local _M = {}

local box = ffi.new("uint32_t[1]")

function _M.pack(fmt, n)
  assert(fmt == "I", "lua_pack stand-in: only format 'I'")
  box[0] = n
  return ffi.string(box, 4)
end

-- Returns the position after the value and the value, as lua_pack does.
function _M.unpack(s, fmt, init)
  assert(fmt == "I", "lua_pack stand-in: only format 'I'")
  init = init or 1
  ffi.copy(box, s:sub(init, init + 3), 4)
  return init + 4, tonumber(box[0])
end

return _M
