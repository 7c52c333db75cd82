-- Protobuf (`ProtoBuf:1`, Go servers): what differs from the MessagePack-RPC
-- path (rpc/connection.lua runs both). The bridge's pb_decode/pb_encode turn PDK
-- arguments and results into Lua values and back; a PDK call is answered with
-- its result, framed by the engine.
--
-- go-pdk never sends an error message: it closes the connection. A connection
-- closed before the first callback frame of an event means "no such instance"
-- (cause "no_instance": plugin.lua re-creates the instance and retries once);
-- closed later is a failure. A method outside the Protobuf service (refused,
-- cause "refused_method"), undecodable arguments, a PDK function that raises or
-- returns nil, err, or a result that cannot be encoded end the event with an error
-- (Protobuf has no error reply).

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local connection = require "kong.runloop.plugin_servers.rpc.connection"
local pdk = require "kong.runloop.plugin_servers.pdk"

local ngx = ngx
local C = lib.C
local bridge = lib.bridge
local ffi_str = ffi.string
local errbuf = lib.errbuf
local errmsg = lib.errmsg
local pb_encode = bridge.pb_encode
local pb_decode = bridge.pb_decode
local refuse = pdk.refuse
local out = connection.out
local out_len = connection.out_len
local type = type
local pcall = pcall
local tostring = tostring

local STATUS = C.KPS_PB_STATUS -- the reply to StartInstance and CloseInstance
local CLOSED_BEFORE_REPLY = C.KPS_PB_CLOSED_BEFORE_REPLY
local NO_BODY = "Can't read request body"

local terminal = {}
-- Methods of the Protobuf service; any other name is refused.
local in_service = {}
for i, m in pairs(bridge.methods()) do
  if m.terminal then
    terminal[i] = true
  end
  if m.pb_in then
    in_service[i] = true
  end
end
-- The one method whose result says where the body is (RawBodyResult).
local RAW_BODY = bridge.method_index("kong.request.get_raw_body")

-- Kong's RawBodyResult: the content, else the file nginx buffered the body to,
-- else the error (the PDK's, or Kong's text).
local function raw_body(ok, value)
  if ok and type(value) == "string" then
    return value
  end
  -- The log timer has no request: get_body_file raises there.
  local get_body_file = ngx.req and ngx.req.get_body_file
  local fok, file = false, nil
  if get_body_file then
    fok, file = pcall(get_body_file)
  end
  if fok and file then
    return { body_filepath = file }
  end
  return { error = (not ok and value) or NO_BODY }
end

-- Answers one PDK call. Returns true, "terminal", or false, err[, cause].
local function answer(self, c, ev, dispatch, saved, stats)
  local index = ev.method
  local name = ffi_str(ev.text, ev.text_len)
  if not in_service[index] then
    -- outside the Protobuf PDK: nothing runs; go-pdk has no error reply, so the
    -- event ends (the connection is closed, the plugin's call returns an error)
    return false, refuse(self.def, name), "refused_method"
  end
  local args, n = pb_decode(index, ffi_str(ev.value, ev.value_len))
  if args == nil and n ~= nil then
    return false, "protocol error: arguments of " .. name .. ": " .. tostring(n)
  end
  stats.pdk_calls = stats.pdk_calls + 1
  local ok, value = dispatch(index, name, args, n, saved)
  if terminal[index] then
    if not ok then
      -- Refused (headers already sent, a phase without a response...): go-pdk has
      -- closed, so the event fails, as Kong's raised error would.
      return false, name .. " failed: " .. tostring(value)
    end
    -- go-pdk closes the connection after this call; Kong's request ends here.
    return "terminal"
  end
  if index == RAW_BODY then
    ok, value = true, raw_body(ok, value)
  end
  if not ok then
    return false, name .. " failed: " .. tostring(value)
  end
  local bytes, eerr = pb_encode(index, value)
  if not bytes then
    return false, "cannot encode the result of " .. name .. ": " .. tostring(eerr)
  end
  local buf, len = errbuf()
  if C.kps_pb_stream_reply(c.st.stream, bytes, #bytes, out, out_len, buf, len) ~= 0 then
    return false, errmsg()
  end
  return true
end

return connection.protocol {
  session_new = function(def) return C.kps_pb_session_new(def.max_message_size) end,
  session_free = C.kps_pb_session_free,
  stream_new = C.kps_pb_stream_new,
  stream_free = C.kps_pb_stream_free,
  stream_reset = C.kps_pb_stream_reset,
  stream_has_unread = C.kps_pb_stream_has_unread,
  stream_feed = C.kps_pb_stream_feed,
  stream_poll = C.kps_pb_stream_poll,
  start_instance = C.kps_pb_stream_start_instance,
  close_instance = C.kps_pb_stream_close_instance,
  handle_event = C.kps_pb_stream_handle_event,
  event_ctype = "kps_pb_event[1]",
  NONE = C.KPS_PB_NONE, STARTED = STATUS, CLOSED = STATUS, CALL = C.KPS_PB_CALL, DONE = C.KPS_PB_DONE,
  answer = answer,
  closed = function(self, c)
    local buf, len = errbuf()
    local before = C.kps_pb_stream_closed(c.st.stream, buf, len) == CLOSED_BEFORE_REPLY
    return errmsg() .. " (" .. self.def.name .. ")", before
  end,
  poll_error = function(self) return errmsg() .. " (from " .. self.def.name .. ")" end,
  closed_means_no_instance = true,
}
