-- Protobuf (`ProtoBuf:1`, Go servers): what differs from the MessagePack-RPC
-- path (rpc/connection.lua runs both): a PDK call's input and output messages
-- (the bridge's pb_decode/pb_encode), its reply framed by the engine.
--
-- go-pdk never sends an error message: it closes the connection. Closed before
-- the first callback frame of an event means "no such instance" (cause
-- "no_instance": plugin.lua re-creates the instance and retries once), later a
-- failure. A method outside the Protobuf service (refused, cause "refused_method"),
-- undecodable arguments, a PDK function that raises or returns nil, err, or an
-- unencodable result end the event with an error (Protobuf has no error reply).

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local connection = require "kong.runloop.plugin_servers.rpc.connection"
local pdk = require "kong.runloop.plugin_servers.pdk"

local ngx, type, pcall, tostring = ngx, type, pcall, tostring
local C, bridge, errbuf, errmsg = lib.C, lib.bridge, lib.errbuf, lib.errmsg
local ffi_str = ffi.string
local pb_encode, pb_decode = bridge.pb_encode, bridge.pb_decode
local out, out_len = connection.out, connection.out_len

-- The one method whose result says where the body is (RawBodyResult).
local RAW_BODY = bridge.method_index("kong.request.get_raw_body")

-- Methods of the Protobuf service; any other name is refused.
local in_service = {}
for i, m in pairs(bridge.methods()) do
  in_service[i] = m.pb_in or nil
end

-- Kong's RawBodyResult: the content, else the file nginx buffered the body to,
-- else the error (the PDK's, or Kong's text).
local function raw_body(ok, value)
  if ok and type(value) == "string" then
    return value
  end
  -- The log timer has no request: get_body_file raises there (or is absent: pcall(nil) fails too).
  local fok, file = pcall(ngx.req and ngx.req.get_body_file)
  if fok and file then
    return { body_filepath = file }
  end
  return { error = (not ok and value) or "Can't read request body" }
end

-- A PDK call's input message: args, n or nil, nil, err, cause.
local function arguments(self, ev, index, name)
  if not in_service[index] then
    -- outside the Protobuf PDK: nothing runs; go-pdk has no error reply, so the
    -- event ends (the connection is closed, the plugin's call returns an error)
    return nil, nil, pdk.refuse(self.def, name), "refused_method"
  end
  local args, n = pb_decode(index, ffi_str(ev.value, ev.value_len))
  if args == nil and n ~= nil then
    return nil, nil, "protocol error: arguments of " .. name .. ": " .. tostring(n)
  end
  return args, n
end

-- The call's result as its output message; an error ends the event.
local function reply(_, c, _, index, name, ok, value)
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

return connection.protocol("pb", {
  session_new = function(def) return C.kps_pb_session_new(def.max_message_size) end,
  -- InstanceStatus is the reply to StartInstance and CloseInstance
  NONE = C.KPS_PB_NONE, STARTED = C.KPS_PB_STATUS, CLOSED = C.KPS_PB_STATUS, CALL = C.KPS_PB_CALL,
  DONE = C.KPS_PB_DONE,
  arguments = arguments,
  reply = reply,
  closed = function(self, c)
    local buf, len = errbuf()
    local before = C.kps_pb_stream_closed(c.st.stream, buf, len) == C.KPS_PB_CLOSED_BEFORE_REPLY
    return errmsg() .. " (" .. self.def.name .. ")", before
  end,
  poll_error = function(self) return errmsg() .. " (from " .. self.def.name .. ")" end,
  closed_means_no_instance = true,
})
