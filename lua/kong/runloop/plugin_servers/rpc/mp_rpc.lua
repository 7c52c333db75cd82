-- MessagePack-RPC (`MsgPack:1`, Python and JS servers): what differs from the
-- Protobuf path (rpc/connection.lua runs both). A reply can be the server's error
-- (its text), the server announces its pid (another pid: its instances are gone),
-- and a PDK call is answered with a Step carrying the result, or a StepError.

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local connection = require "kong.runloop.plugin_servers.rpc.connection"

local C, bridge, errbuf, errmsg = lib.C, lib.bridge, lib.errbuf, lib.errmsg
local ffi_str = ffi.string
local encode, decode = bridge.encode, bridge.decode
local session, out, out_len = connection.session, connection.out, connection.out_len
local type, tostring, tonumber = type, tostring, tonumber

-- Envelope levels around a value: message array, params array, {EventId, Data},
-- {Method, Args}; the bridge bounds the value itself.
local MAX_DEPTH = bridge.MAX_DEPTH + 8

-- A PDK call's Args (absent: no arguments): args, n or nil, nil, err.
local function arguments(_, ev, index)
  if ev.value_len > 0 then
    local args, n = decode(index, ffi_str(ev.value, ev.value_len))
    if args == nil and type(n) == "string" then
      return nil, nil, "protocol error: PDK call arguments: " .. n
    end
    return args, n
  end
end

-- The Step with the call's result, or a StepError with its error (a refused
-- method's too: the plugin gets the error, the event goes on).
local function reply(self, c, ev, index, name, ok, value)
  local buf, len = errbuf()
  local rc
  if ok then
    local bytes, eerr
    if value ~= nil then
      bytes, eerr = encode(index, value)
    end
    if value == nil or bytes then
      rc = C.kps_mp_stream_step(session(self), c.st.stream, ev.event_id, index, bytes, bytes and #bytes or 0,
                                out, out_len, buf, len)
    else
      ok, value = false, "cannot encode the result of " .. name .. ": " .. eerr
    end
  end
  if not ok then
    local msg = tostring(value)
    rc = C.kps_mp_stream_step_error(session(self), c.st.stream, ev.event_id, msg, #msg, out, out_len, buf, len)
  end
  if rc ~= 0 then
    return false, errmsg()
  end
  return true
end

return connection.protocol("mp", {
  session_new = function(def) return C.kps_mp_session_new(def.max_message_size, MAX_DEPTH) end,
  NONE = C.KPS_MP_NONE, STARTED = C.KPS_MP_STARTED, CLOSED = C.KPS_MP_CLOSED, CALL = C.KPS_MP_CALL,
  DONE = C.KPS_MP_RET, NOTICE = C.KPS_MP_SERVER_PID, ERROR = C.KPS_MP_ERROR,
  -- A serverPid notification.
  notice = function(self, ev)
    local pid = tonumber(ev.id)
    if self.server_pid and self.server_pid ~= pid and self.on_reset then
      self.on_reset("server pid changed from " .. self.server_pid .. " to " .. pid)
    end
    self.server_pid = pid
  end,
  server_error = function(self, what, ev)
    local msg = ffi_str(ev.text, ev.text_len)
    local cause = msg:lower():find("no plugin instance", 1, true) and "no_instance" or "protocol"
    return nil, what .. " failed on " .. self.def.name .. ": " .. msg, cause
  end,
  arguments = arguments,
  reply = reply,
  closed = function(self, c)
    return "plugin server " .. self.def.name .. " closed the connection", not c.got_reply
  end,
  poll_error = function() return errmsg() end,
  -- A failure before any reply byte that is not the engine's verdict may be a
  -- pooled connection to a server that has restarted since.
  read_errors_retry = true,
})
