-- MessagePack-RPC (`MsgPack:1`, Python and JS servers) over the native engine.
--
-- The engine (C header) builds requests and decodes replies into scalars and byte
-- pointers; the mlua bridge turns PDK arguments and results into Lua values and
-- back; this module moves the bytes over a cosocket. One event (HandleEvent and
-- every Step of it) runs on one connection, which goes back to the pool only
-- after a clean finish.

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local socket = require "kong.runloop.plugin_servers.rpc.socket"
local connection = require "kong.runloop.plugin_servers.rpc.connection"
local pdk = require "kong.runloop.plugin_servers.pdk"

local C = lib.C
local bridge = lib.bridge
local ffi_new = ffi.new
local ffi_str = ffi.string
local errbuf = lib.errbuf
local errmsg = lib.errmsg
local encode = bridge.encode
local decode = bridge.decode
local refuse = pdk.refuse
local type = type
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable

local NONE = C.KPS_MP_NONE
local STARTED = C.KPS_MP_STARTED
local CLOSED = C.KPS_MP_CLOSED
local RET = C.KPS_MP_RET
local CALL = C.KPS_MP_CALL
local ERROR = C.KPS_MP_ERROR
local SERVER_PID = C.KPS_MP_SERVER_PID

-- Envelope levels around a value: message array, params array, {EventId, Data},
-- {Method, Args}; the bridge bounds the value itself.
local MAX_DEPTH = bridge.MAX_DEPTH + 8
local READ_SIZE = 65536

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

local out = ffi_new("const uint8_t *[1]")
local out_len = ffi_new("size_t[1]")

local _M = {}
local RPC = {}
RPC.__index = RPC

-- rpc for one plugin: `def` is its server definition; `on_reset` is called when the
-- server's instances are gone (serverPid changed).
local engine  -- set below, once roundtrip is defined

function _M.new(def, plugin_name, on_reset)
  return setmetatable({
    def = def, plugin_name = plugin_name, on_reset = on_reset,
    engine = engine, free = {}, server_pid = nil,
  }, RPC)
end

local function on_server_pid(self, pid)
  if self.server_pid and self.server_pid ~= pid and self.on_reset then
    self.on_reset("server pid changed from " .. self.server_pid .. " to " .. pid)
  end
  self.server_pid = pid
end

-- Sends the request just built and reads until the engine reports an event.
-- Returns the event struct, or nil, err, cause.
local function roundtrip(self, c)
  local ok, err = c.sock:send(ffi_str(out[0], out_len[0]))
  if not ok then
    c.peer_died = socket.peer_failed(self.def, c.sock, err)
    return nil, "send to " .. self.def.name .. " failed: " .. tostring(err), socket.cause(err)
  end
  local st = c.st
  local ev = st.ev
  while true do
    local buf, len = errbuf()
    if C.kps_mp_stream_poll(st.stream, ev, buf, len) ~= 0 then
      return nil, errmsg(), "protocol"
    end
    local kind = ev[0].kind
    if kind == SERVER_PID then
      on_server_pid(self, tonumber(ev[0].id))
    elseif kind ~= NONE then
      return ev[0]
    else
      local data, rerr = c.sock:receiveany(READ_SIZE)
      if not data then
        c.peer_died = socket.peer_failed(self.def, c.sock, rerr)
        if rerr == "closed" then
          return nil, "plugin server " .. self.def.name .. " closed the connection", "connect"
        end
        return nil, "read from " .. self.def.name .. " failed: " .. tostring(rerr), socket.cause(rerr)
      end
      c.got_reply = true
      buf, len = errbuf()
      if C.kps_mp_stream_feed(st.stream, data, #data, buf, len) ~= 0 then
        return nil, errmsg(), "protocol"
      end
    end
  end
end

-- A failure before any reply byte that is not the engine's verdict may be a pooled
-- connection to a server that has restarted since: worth one retry.
engine = {
  session_new = function(def) return C.kps_mp_session_new(def.max_message_size, MAX_DEPTH) end,
  session_free = C.kps_mp_session_free,
  stream_new = C.kps_mp_stream_new,
  stream_free = C.kps_mp_stream_free,
  stream_reset = C.kps_mp_stream_reset,
  stream_has_unread = C.kps_mp_stream_has_unread,
  event_ctype = "kps_mp_event[1]",
  roundtrip = function(self, c)
    local ev, err, cause = roundtrip(self, c)
    if ev then
      return ev
    end
    return nil, err, cause, not c.got_reply and cause ~= "protocol"
  end,
}

local session = connection.session
local close = connection.close
local finish = connection.finish
local first_exchange = connection.first_exchange
local serve_event = connection.serve_event

local function text(ev)
  return ffi_str(ev.text, ev.text_len)
end

local function server_error(self, what, ev)
  local msg = text(ev)
  local cause = msg:lower():find("no plugin instance", 1, true) and "no_instance" or "protocol"
  return nil, what .. " failed on " .. self.def.name .. ": " .. msg, cause
end

local function unexpected(self, what, ev)
  return nil, "protocol error: unexpected reply kind " .. tonumber(ev.kind) .. " to " .. what
    .. " from " .. self.def.name, "protocol"
end

local function build_start_instance(self, c, buf, len, config_json)
  local name = self.plugin_name
  return C.kps_mp_stream_start_instance(session(self), c.st.stream, name, #name,
                                        config_json, #config_json, out, out_len, buf, len)
end

local function build_close_instance(self, c, buf, len, id)
  return C.kps_mp_stream_close_instance(session(self), c.st.stream, id, out, out_len, buf, len)
end

local function build_handle_event(self, c, buf, len, id, phase)
  return C.kps_mp_stream_handle_event(session(self), c.st.stream, id, phase, #phase,
                                      out, out_len, buf, len)
end

-- Starts an instance with the JSON text of the plugin config: id or nil, err, cause.
function RPC:start_instance(config_json)
  local c, ev, cause = first_exchange(self, build_start_instance, config_json)
  if not c then
    return nil, ev, cause
  end
  if ev.kind == STARTED then
    local id = tonumber(ev.id)
    finish(self, c)
    return id
  end
  -- Read the reply before the stream goes back to the free list.
  local _, err, ecause
  if ev.kind == ERROR then
    _, err, ecause = server_error(self, "StartInstance", ev)
  else
    _, err, ecause = unexpected(self, "StartInstance", ev)
  end
  close(self, c)
  return nil, err, ecause
end

function RPC:close_instance(id)
  local c, ev, cause = first_exchange(self, build_close_instance, id)
  if not c then
    return nil, ev, cause
  end
  if ev.kind == CLOSED then
    finish(self, c)
    return true
  end
  local _, err, ecause
  if ev.kind == ERROR then
    _, err, ecause = server_error(self, "CloseInstance", ev)
  else
    _, err, ecause = unexpected(self, "CloseInstance", ev)
  end
  close(self, c)
  return nil, err, ecause
end

-- Answers one PDK call; returns the build status code.
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
    if value == nil then
      rc = C.kps_mp_stream_step(session(self), c.st.stream, event_id, index, nil, 0, out, out_len, buf, len)
    else
      local bytes, eerr = encode(index, value)
      if not bytes then
        local msg = "cannot encode the result of " .. name .. ": " .. eerr
        rc = C.kps_mp_stream_step_error(session(self), c.st.stream, event_id, msg, #msg, out, out_len, buf, len)
      else
        rc = C.kps_mp_stream_step(session(self), c.st.stream, event_id, index, bytes, #bytes,
                                  out, out_len, buf, len)
      end
    end
  else
    local msg = tostring(value)
    rc = C.kps_mp_stream_step_error(session(self), c.st.stream, event_id, msg, #msg, out, out_len, buf, len)
  end
  if rc ~= 0 then
    return false, errmsg()
  end
  return true
end

-- Runs event `phase` of instance `id`: HandleEvent, then one Step per PDK call,
-- each call served by `dispatch(index, name, args, n, saved)` (-> ok, value|err).
-- Returns true (and stats) or nil, err, cause (and stats).
function RPC:handle_event(id, phase, dispatch, saved)
  local stats = { pdk_calls = 0 }
  local c, ev, cause = first_exchange(self, build_handle_event, id, phase)
  if not c then
    return nil, ev, cause, stats
  end
  return serve_event(self, c, ev, phase, dispatch, saved, stats)
end

-- An event that is neither a call nor the end: the server's error, or nonsense.
engine.other_event = function(self, ev, phase)
  if ev.kind == ERROR then
    return server_error(self, "event " .. phase, ev)
  end
  return unexpected(self, "HandleEvent", ev)
end
engine.answer = answer
engine.EVENT_DONE = RET
engine.EVENT_CALL = CALL

return _M
