-- MessagePack-RPC (`MsgPack:1`, Python and JS servers): what differs from the
-- Protobuf path (rpc/connection.lua runs both). A reply can be the server's error
-- (its text), the server announces its pid (another pid: its instances are gone),
-- and a PDK call is answered with a Step carrying the result, or a StepError.

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local connection = require "kong.runloop.plugin_servers.rpc.connection"
local pdk = require "kong.runloop.plugin_servers.pdk"

local C = lib.C
local bridge = lib.bridge
local ffi_str = ffi.string
local errbuf = lib.errbuf
local errmsg = lib.errmsg
local encode = bridge.encode
local decode = bridge.decode
local refuse = pdk.refuse
local session = connection.session
local out = connection.out
local out_len = connection.out_len
local type = type
local tonumber = tonumber
local tostring = tostring

-- Envelope levels around a value: message array, params array, {EventId, Data},
-- {Method, Args}; the bridge bounds the value itself.
local MAX_DEPTH = bridge.MAX_DEPTH + 8

-- Per method index: whether the call ends the request, and its name (so that a
-- known method's name is a table read, not an ffi.string of the event's text).
local terminal = {}
local method_names = {}
for i, m in pairs(bridge.methods()) do
  method_names[i] = m.name
  if m.terminal then
    terminal[i] = true
  end
end

local function server_error(self, what, ev)
  local msg = ffi_str(ev.text, ev.text_len)
  local cause = msg:lower():find("no plugin instance", 1, true) and "no_instance" or "protocol"
  return nil, what .. " failed on " .. self.def.name .. ": " .. msg, cause
end

-- A serverPid notification.
local function on_server_pid(self, ev)
  local pid = tonumber(ev.id)
  if self.server_pid and self.server_pid ~= pid and self.on_reset then
    self.on_reset("server pid changed from " .. self.server_pid .. " to " .. pid)
  end
  self.server_pid = pid
end

-- Answers one PDK call: true, "terminal", or false, err.
local function answer(self, c, ev, dispatch, saved, stats)
  local index = ev.method
  local event_id = ev.event_id
  local args, n
  if ev.value_len > 0 then
    args, n = decode(index, ffi_str(ev.value, ev.value_len))
    if args == nil and type(n) == "string" then
      return false, "protocol error: PDK call arguments: " .. n
    end
  end
  local name = method_names[index] or ffi_str(ev.text, ev.text_len)
  local ok, value, refused = dispatch(index, name, args, n, saved)
  if refused then
    -- outside the PDK: nothing ran; the plugin gets the error (StepError), the event goes on
    refuse(self.def, name)
  else
    stats.pdk_calls = stats.pdk_calls + 1
  end
  if terminal[index] then
    if not ok then
      -- Refused (headers already sent, a phase without a response...): the plugin
      -- waits for no answer, so the event fails, as Kong's raised error would.
      return false, name .. " failed: " .. tostring(value)
    end
    return "terminal"
  end
  local buf, len = errbuf()
  local rc
  if ok then
    local bytes, eerr
    if value ~= nil then
      bytes, eerr = encode(index, value)
    end
    if value == nil or bytes then
      rc = C.kps_mp_stream_step(session(self), c.st.stream, event_id, index, bytes, bytes and #bytes or 0,
                                out, out_len, buf, len)
    else
      ok, value = false, "cannot encode the result of " .. name .. ": " .. eerr
    end
  end
  if not ok then
    local msg = tostring(value)
    rc = C.kps_mp_stream_step_error(session(self), c.st.stream, event_id, msg, #msg, out, out_len, buf, len)
  end
  if rc ~= 0 then
    return false, errmsg()
  end
  return true
end

return connection.protocol {
  session_new = function(def) return C.kps_mp_session_new(def.max_message_size, MAX_DEPTH) end,
  session_free = C.kps_mp_session_free,
  stream_new = C.kps_mp_stream_new,
  stream_free = C.kps_mp_stream_free,
  stream_reset = C.kps_mp_stream_reset,
  stream_has_unread = C.kps_mp_stream_has_unread,
  stream_feed = C.kps_mp_stream_feed,
  stream_poll = C.kps_mp_stream_poll,
  start_instance = C.kps_mp_stream_start_instance,
  close_instance = C.kps_mp_stream_close_instance,
  handle_event = C.kps_mp_stream_handle_event,
  event_ctype = "kps_mp_event[1]",
  NONE = C.KPS_MP_NONE, STARTED = C.KPS_MP_STARTED, CLOSED = C.KPS_MP_CLOSED, CALL = C.KPS_MP_CALL,
  DONE = C.KPS_MP_RET, NOTICE = C.KPS_MP_SERVER_PID, ERROR = C.KPS_MP_ERROR,
  notice = on_server_pid,
  server_error = server_error,
  answer = answer,
  closed = function(self, c)
    return "plugin server " .. self.def.name .. " closed the connection", not c.got_reply
  end,
  poll_error = function() return errmsg() end,
  -- A failure before any reply byte that is not the engine's verdict may be a
  -- pooled connection to a server that has restarted since.
  read_errors_retry = true,
}
