-- The RPC path whatever the protocol: the engine session (made in the worker on
-- first use), a small free list of reusable streams, the connection and its end
-- (back to the pool only with nothing unread), the round trip (send, then read
-- and feed until the engine reports an event), the first exchange of a request
-- with its retries, instance start and close, and the loop serving an event's
-- PDK calls (dispatch, refusal, the calls that end the request) until its
-- handler ends.
--
-- A protocol module (mp_rpc, pb_rpc) describes its engine once and keeps only
-- what differs: how a PDK call's arguments read, how its reply is written, and
-- how some replies read.
--
-- protocol(prefix, engine): the engine's C functions are kps_<prefix>_<name>
-- (ENGINE_FUNCTIONS), its event struct kps_<prefix>_event; engine = {
--   session_new(def) -> session or nil;
--   event kinds: NONE (more bytes needed), STARTED, CLOSED (the instance replies),
--     CALL (a PDK call), DONE (the handler ended); optionally NOTICE (given to
--     notice(self, ev), then reading goes on) and ERROR (the server's error reply,
--     read by server_error(self, what, ev) -> nil, err, cause);
--   arguments(self, ev, index, name) -> args, n | nil, nil, err[, cause (default
--     "protocol")]: a PDK call's arguments, decoded;
--   reply(self, c, ev, index, name, ok, value) -> true | false, err: the reply to a
--     PDK call that does not end the request (value: its result or error), built
--     into _M.out/_M.out_len;
--   closed(self, c) -> err, before_reply: the peer closed the connection;
--   poll_error(self) -> err: the message of a failed poll (errmsg() holds it);
--   read_errors_retry: a read that fails before any reply byte may be a pooled
--     connection to a restarted server (worth the retry);
--   closed_means_no_instance: a HandleEvent closed before any reply byte means
--     an unknown instance (go-pdk's answer, docs/PROTOCOL.md §5).
-- }

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local socket = require "kong.runloop.plugin_servers.rpc.socket"
local pdk = require "kong.runloop.plugin_servers.pdk"

local ffi_gc, ffi_new, ffi_str = ffi.gc, ffi.new, ffi.string
local errbuf, errmsg = lib.errbuf, lib.errmsg
local refuse = pdk.refuse
local tostring, tonumber, error, ipairs = tostring, tonumber, error, ipairs
local setmetatable = setmetatable

local FREE_STREAMS = 16
-- A dead pooled connection, then a connect that reached the dying server, then
-- the restarted server.
local MAX_ATTEMPTS = 3
local READ_SIZE = 65536
-- The C functions every engine has, kps_<prefix>_<name>.
local ENGINE_FUNCTIONS = {
  "session_free", "stream_new", "stream_free", "stream_reset", "stream_has_unread", "stream_feed",
  "stream_poll", "stream_start_instance", "stream_close_instance", "stream_handle_event",
}

local _M = {}

-- Where a request builder or a PDK call's answer points at the bytes to send
-- (borrowed from the stream; the send copies them before any yield).
local out = ffi_new("const uint8_t *[1]")
local out_len = ffi_new("size_t[1]")
_M.out = out
_M.out_len = out_len

function _M.session(self)
  local s = self.session
  if not s then
    local engine = self.engine
    s = engine.session_new(self.def)
    if s == nil then
      error("invalid max_message_size " .. tostring(self.def.max_message_size))
    end
    s = ffi_gc(s, engine.session_free)
    self.session = s
  end
  return s
end

-- A stream (decoder state and event struct) per connection checkout, reused.
local function checkout(self)
  local free = self.free
  local n = #free
  local engine = self.engine
  if n > 0 then
    local st = free[n]
    free[n] = nil
    engine.stream_reset(st.stream)
    return st
  end
  local h = engine.stream_new(_M.session(self))
  return { stream = ffi_gc(h, engine.stream_free), ev = ffi_new(engine.event_ctype) }
end

local function checkin(self, st)
  local free = self.free
  if #free < FREE_STREAMS then
    free[#free + 1] = st
  end
end

function _M.close(self, c)
  c.sock:close()
  checkin(self, c.st)
end

-- A clean finish: the connection goes back to the pool unless bytes are unread.
function _M.finish(self, c)
  if self.engine.stream_has_unread(c.st.stream) ~= 0 then
    c.sock:close()
  else
    socket.release(c.sock)
  end
  checkin(self, c.st)
end

-- Sends the bytes just built and reads until the engine reports an event.
-- Returns the event, or nil, err, cause, before_reply (truthy when no byte of the
-- reply had arrived and the failure may be a stale connection: first_exchange).
local function roundtrip(self, c)
  local engine = self.engine
  local def = self.def
  local ok, err = c.sock:send(ffi_str(out[0], out_len[0]))
  if not ok then
    c.peer_died = socket.peer_failed(def, c.sock, err)
    return nil, "send to " .. def.name .. " failed: " .. tostring(err), socket.cause(err),
      not c.got_reply and "send"
  end
  local st = c.st
  local ev = st.ev
  local poll, feed, NONE, NOTICE = engine.stream_poll, engine.stream_feed, engine.NONE, engine.NOTICE
  while true do
    local buf, len = errbuf()
    if poll(st.stream, ev, buf, len) ~= 0 then
      return nil, engine.poll_error(self), "protocol"
    end
    local kind = ev[0].kind
    if kind == NOTICE then
      engine.notice(self, ev[0])
    elseif kind ~= NONE then
      return ev[0]
    else
      local data, rerr = c.sock:receiveany(READ_SIZE)
      if not data then
        c.peer_died = socket.peer_failed(def, c.sock, rerr)
        if rerr == "closed" then
          local cerr, before = engine.closed(self, c)
          return nil, cerr, "connect", before
        end
        return nil, "read from " .. def.name .. " failed: " .. tostring(rerr), socket.cause(rerr),
          engine.read_errors_retry and not c.got_reply
      end
      c.got_reply = true
      buf, len = errbuf()
      if feed(st.stream, data, #data, buf, len) ~= 0 then
        return nil, errmsg(), "protocol"
      end
    end
  end
end

-- Runs `build(self, c, buf, len, a, b)` (which builds the first request into the
-- protocol's output buffer) and its round trip on a connection. Retries on a fresh
-- connection (at most MAX_ATTEMPTS in all) when before any reply byte
--   * a pooled connection failed (the server may have restarted since), or
--   * the server reset the connection or broke the pipe (c.peer_died): it died
--     without reading the whole request, so the event never ran. This is a request
--     racing a SIGKILL: the connect reached the listening socket of a process being
--     torn down. Its pid is marked (socket.peer_failed), so the retry waits for the
--     supervisor's restart and comes back as "restarted" (plugin.lua re-creates the
--     instance and runs the event again). A clean close is not retried: the server
--     may have run the event.
-- Returns c, ev or nil, err, cause, before_reply. Builders are module-level
-- functions taking their arguments, not closures: creating a closure per event
-- (bytecode FNEW) is NYI in LuaJIT's JIT and aborted the trace of every event.
local function first_exchange(self, build, a, b)
  for attempt = 1, MAX_ATTEMPTS do
    local sock, reused_or_err, cause = socket.connect(self.def)
    if not sock then
      return nil, reused_or_err, cause
    end
    local c = { sock = sock, st = checkout(self), got_reply = false, peer_died = false }
    local buf, len = errbuf()
    if build(self, c, buf, len, a, b) ~= 0 then
      local msg = errmsg()
      _M.close(self, c)
      return nil, msg, "protocol"
    end
    local ev, err, ecause, before = roundtrip(self, c)
    if ev then
      return c, ev
    end
    _M.close(self, c)
    local retry = not c.got_reply and (c.peer_died or attempt == 1 and reused_or_err and before)
    if not retry or attempt == MAX_ATTEMPTS then
      -- "died": the server process is gone (plugin.lua runs the event again on
      -- the new one)
      return nil, err, c.peer_died and "died" or ecause, before
    end
    socket.discard_pool(self.def)
  end
end

-- The reply to `request` is not the one expected: the server's error (about
-- `what`), or nonsense.
local function failure(self, ev, what, request)
  local engine = self.engine
  if ev.kind == engine.ERROR then
    return engine.server_error(self, what, ev)
  end
  return nil, "protocol error: unexpected reply kind " .. tonumber(ev.kind) .. " to " .. request
    .. " from " .. self.def.name, "protocol"
end

-- Per method index: whether the call ends the request.
local terminal = {}
for i, m in pairs(lib.bridge.methods()) do
  terminal[i] = m.terminal or nil
end
-- Per method index, its name (pdk.lua's table): a known method's name is a
-- table read, not an ffi.string of the event's text.
local method_names = pdk.names

-- Answers one PDK call: true, "terminal", or false, err[, cause].
local function answer(self, c, ev, dispatch, saved, stats)
  local engine = self.engine
  local index = ev.method
  local name = method_names[index] or ffi_str(ev.text, ev.text_len)
  local args, n, err, cause = engine.arguments(self, ev, index, name)
  if err then
    return false, err, cause
  end
  local ok, value, refused = dispatch(index, name, args, n, saved)
  if refused then
    -- outside the PDK: nothing ran; the protocol's reply gives the plugin the error
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
  return engine.reply(self, c, ev, index, name, ok, value)
end

-- Serves the PDK calls of an event whose first event is `ev` until the engine
-- reports its end. Returns true, nil, nil, stats or nil, err, cause, stats; the
-- connection is finished or closed either way.
--
-- One PDK call per invocation, the next one by a tail call (no stack growth):
-- each call ends at the cosocket's yield, so a loop here could never close into
-- a JIT trace and aborted the traces that entered it ("inner loop in root trace").
local function serve_event(self, c, ev, phase, dispatch, saved, stats)
  local engine = self.engine
  local kind = ev.kind
  if kind == engine.DONE then
    _M.finish(self, c)
    return true, nil, nil, stats
  elseif kind == engine.CALL then
    local ok, err, cause = answer(self, c, ev, dispatch, saved, stats)
    if ok == "terminal" then
      -- The handler does not wait for a reply; Kong's request ends here.
      _M.close(self, c)
      return true, nil, nil, stats
    elseif not ok then
      _M.close(self, c)
      return nil, err, cause or "protocol", stats
    end
    ev, err, cause = roundtrip(self, c)
    if not ev then
      _M.close(self, c)
      -- "died": the server process died during the event (plugin.lua runs it
      -- again on the new one)
      return nil, err, c.peer_died and "died" or cause, stats
    end
    return serve_event(self, c, ev, phase, dispatch, saved, stats)
  end
  local _, err, ecause = failure(self, ev, "event " .. phase, "HandleEvent")
  _M.close(self, c)
  return nil, err, ecause, stats
end

-- Request builders for first_exchange: module-level functions taking their
-- arguments (see there).
local function build_start_instance(self, c, buf, len, config_json)
  local name = self.plugin_name
  return self.engine.stream_start_instance(_M.session(self), c.st.stream, name, #name,
                                    config_json, #config_json, out, out_len, buf, len)
end

local function build_close_instance(self, c, buf, len, id)
  return self.engine.stream_close_instance(_M.session(self), c.st.stream, id, out, out_len, buf, len)
end

local function build_handle_event(self, c, buf, len, id, phase)
  return self.engine.stream_handle_event(_M.session(self), c.st.stream, id, phase, #phase,
                                  out, out_len, buf, len)
end

-- StartInstance or CloseInstance: the instance id of a reply of kind `want`, or
-- nil, err, cause.
local function instance_request(self, build, arg, want, request)
  local c, ev, cause = first_exchange(self, build, arg)
  if not c then
    return nil, ev, cause
  end
  if ev.kind == want then
    local id = tonumber(ev.id)
    _M.finish(self, c)
    return id
  end
  -- Read the reply before the stream goes back to the free list.
  local _, err, ecause = failure(self, ev, request, request)
  _M.close(self, c)
  return nil, err, ecause
end

-- Starts an instance with the JSON text of the plugin config: id or nil, err, cause.
local function start_instance(self, config_json)
  return instance_request(self, build_start_instance, config_json, self.engine.STARTED, "StartInstance")
end

-- true or nil, err, cause.
local function close_instance(self, id)
  local closed, err, cause = instance_request(self, build_close_instance, id, self.engine.CLOSED,
                                              "CloseInstance")
  if not closed then
    return nil, err, cause
  end
  return true
end

-- Runs event `phase` of instance `id`: HandleEvent, then one answer per PDK call,
-- each served by `dispatch(index, name, args, n, saved)` (-> ok, value|err).
-- Returns true (and stats) or nil, err, cause (and stats).
local function handle_event(self, id, phase, dispatch, saved)
  local stats = { pdk_calls = 0 }
  local c, ev, cause, before = first_exchange(self, build_handle_event, id, phase)
  if not c then
    if before == true and cause == "connect" and self.engine.closed_means_no_instance then
      return nil, ev .. "; instance #" .. tostring(id) .. " is probably gone", "no_instance", stats
    end
    return nil, ev, cause, stats
  end
  return serve_event(self, c, ev, phase, dispatch, saved, stats)
end

-- The module of protocol `prefix` ("mp", "pb"): new(def, plugin_name, on_reset) -> rpc for one
-- plugin, `def` its server definition, `on_reset(why)` called when the server's
-- instances are gone. Each protocol has its own methods (tail calls into the
-- shared ones), so that plugin.lua and the specs can tell them apart.
function _M.protocol(prefix, engine)
  local C = lib.C
  for _, name in ipairs(ENGINE_FUNCTIONS) do
    engine[name] = C["kps_" .. prefix .. "_" .. name]
  end
  engine.event_ctype = "kps_" .. prefix .. "_event[1]"
  local RPC = {
    start_instance = function(self, config_json)
      return start_instance(self, config_json)
    end,
    close_instance = function(self, id)
      return close_instance(self, id)
    end,
    handle_event = function(self, id, phase, dispatch, saved)
      return handle_event(self, id, phase, dispatch, saved)
    end,
  }
  RPC.__index = RPC
  return {
    new = function(def, plugin_name, on_reset)
      return setmetatable({
        def = def, plugin_name = plugin_name, on_reset = on_reset, engine = engine, free = {},
      }, RPC)
    end,
  }
end

return _M
