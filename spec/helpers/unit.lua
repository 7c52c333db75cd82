-- Loaded before every unit spec: a light `ngx` stand-in, so that modules which
-- cache ngx.* at load time can be required in plain LuaJIT.
local stub = require "spec.helpers.ngx_stub"
_G.ngx = _G.ngx or stub.new()
