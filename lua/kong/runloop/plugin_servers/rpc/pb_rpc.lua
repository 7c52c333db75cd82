-- Protobuf (`ProtoBuf:1`, Go servers) over the native engine, with the interface
-- mp_rpc gives plugin.lua: start_instance, close_instance, handle_event.
--
-- The engine (C header) builds the frames and reports events as scalars and byte
-- pointers; the mlua bridge (pb_decode/pb_encode) turns PDK arguments and results
-- into Lua values and back; this module moves the bytes over a cosocket. One
-- event runs on one connection, which goes back to the pool only after a clean
-- finish.
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
local socket = require "kong.runloop.plugin_servers.rpc.socket"
local connection = require "kong.runloop.plugin_servers.rpc.connection"
local pdk = require "kong.runloop.plugin_servers.pdk"

local ngx = ngx
local C = lib.C
local bridge = lib.bridge
local ffi_new = ffi.new
local ffi_str = ffi.string
local errbuf = lib.errbuf
local errmsg = lib.errmsg
local pb_encode = bridge.pb_encode
local pb_decode = bridge.pb_decode
local refuse = pdk.refuse
local type = type
local pcall = pcall
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable

local NONE = C.KPS_PB_NONE
local STATUS = C.KPS_PB_STATUS
local CALL = C.KPS_PB_CALL
local DONE = C.KPS_PB_DONE
local CLOSED_BEFORE_REPLY = C.KPS_PB_CLOSED_BEFORE_REPLY

local READ_SIZE = 65536
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

local out = ffi_new("const uint8_t *[1]")
local out_len = ffi_new("size_t[1]")

local _M = {}
local RPC = {}
RPC.__index = RPC

-- rpc for one plugin: `def` is its server definition. (`on_reset` is part of the
-- shared interface; Protobuf servers announce no pid, the supervisor does.)
local engine  -- set below, once roundtrip is defined

function _M.new(def, plugin_name, on_reset)
  return setmetatable({
    def = def, plugin_name = plugin_name, on_reset = on_reset, engine = engine, free = {},
  }, RPC)
end

-- Sends the frames just built and reads until the engine reports an event.
-- Returns the event, or nil, err, cause, before_reply (the peer closed before
-- any byte of the reply).
local function roundtrip(self, c)
  local ok, err = c.sock:send(ffi_str(out[0], out_len[0]))
  if not ok then
    c.peer_died = socket.peer_failed(self.def, c.sock, err)
    return nil, "send to " .. self.def.name .. " failed: " .. tostring(err), socket.cause(err), not c.got_reply and "send"
  end
  local st = c.st
  local ev = st.ev
  while true do
    local buf, len = errbuf()
    if C.kps_pb_stream_poll(st.stream, ev, buf, len) ~= 0 then
      return nil, errmsg() .. " (from " .. self.def.name .. ")", "protocol"
    end
    if ev[0].kind ~= NONE then
      return ev[0]
    end
    local data, rerr = c.sock:receiveany(READ_SIZE)
    if not data then
      c.peer_died = socket.peer_failed(self.def, c.sock, rerr)
      if rerr == "closed" then
        buf, len = errbuf()
        local before = C.kps_pb_stream_closed(st.stream, buf, len) == CLOSED_BEFORE_REPLY
        return nil, errmsg() .. " (" .. self.def.name .. ")", "connect", before
      end
      return nil, "read from " .. self.def.name .. " failed: " .. tostring(rerr), socket.cause(rerr)
    end
    c.got_reply = true
    buf, len = errbuf()
    if C.kps_pb_stream_feed(st.stream, data, #data, buf, len) ~= 0 then
      return nil, errmsg(), "protocol"
    end
  end
end

engine = {
  session_new = function(def) return C.kps_pb_session_new(def.max_message_size) end,
  session_free = C.kps_pb_session_free,
  stream_new = C.kps_pb_stream_new,
  stream_free = C.kps_pb_stream_free,
  stream_reset = C.kps_pb_stream_reset,
  stream_has_unread = C.kps_pb_stream_has_unread,
  event_ctype = "kps_pb_event[1]",
  roundtrip = roundtrip,
}

local session = connection.session
local close = connection.close
local finish = connection.finish
local first_exchange = connection.first_exchange
local serve_event = connection.serve_event

local function build_start_instance(self, c, buf, len, config_json)
  local name = self.plugin_name
  return C.kps_pb_stream_start_instance(session(self), c.st.stream, name, #name,
                                        config_json, #config_json, out, out_len, buf, len)
end

local function build_close_instance(self, c, buf, len, id)
  return C.kps_pb_stream_close_instance(session(self), c.st.stream, id, out, out_len, buf, len)
end

local function build_handle_event(self, c, buf, len, id, phase)
  return C.kps_pb_stream_handle_event(session(self), c.st.stream, id, phase, #phase,
                                      out, out_len, buf, len)
end

local function unexpected(self, what, ev)
  return nil, "protocol error: unexpected reply kind " .. tonumber(ev.kind) .. " to " .. what
    .. " from " .. self.def.name, "protocol"
end

-- Starts an instance with the JSON text of the plugin config: id or nil, err, cause.
function RPC:start_instance(config_json)
  local c, ev, cause = first_exchange(self, build_start_instance, config_json)
  if not c then
    return nil, ev, cause
  end
  if ev.kind == STATUS then
    local id = tonumber(ev.id)
    finish(self, c)
    return id
  end
  local _, err, ecause = unexpected(self, "StartInstance", ev)
  close(self, c)
  return nil, err, ecause
end

function RPC:close_instance(id)
  local c, ev, cause = first_exchange(self, build_close_instance, id)
  if not c then
    return nil, ev, cause
  end
  if ev.kind == STATUS then
    finish(self, c)
    return true
  end
  local _, err, ecause = unexpected(self, "CloseInstance", ev)
  close(self, c)
  return nil, err, ecause
end

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

-- Runs event `phase` of instance `id`: HandleEvent, then one reply per PDK call,
-- each served by `dispatch(index, name, args, n, saved)` (-> ok, value|err).
-- Returns true (and stats) or nil, err, cause (and stats).
function RPC:handle_event(id, phase, dispatch, saved)
  local stats = { pdk_calls = 0 }
  local c, ev, cause, before = first_exchange(self, build_handle_event, id, phase)
  if not c then
    if before == true and cause == "connect" then
      -- go-pdk's answer to an unknown instance (PROTOCOL.md §5.1).
      return nil, ev .. "; instance #" .. tostring(id) .. " is probably gone", "no_instance", stats
    end
    return nil, ev, cause, stats
  end
  return serve_event(self, c, ev, phase, dispatch, saved, stats)
end

engine.other_event = function(self, ev)
  return unexpected(self, "HandleEvent", ev)
end
engine.answer = answer
engine.EVENT_DONE = DONE
engine.EVENT_CALL = CALL

return _M
