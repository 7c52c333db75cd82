-- What an RPC object does the same way whatever its protocol: the engine session
-- (made in the worker on first use), a small free list of reusable streams, the end
-- of a connection (back to the pool only with nothing unread), and the first
-- exchange of an event with its one retry on a fresh connection.
--
-- A protocol module describes its engine once (`engine` below) and keeps only what
-- differs: building requests, reading its events, answering PDK calls.

local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"
local socket = require "kong.runloop.plugin_servers.rpc.socket"

local ffi_gc = ffi.gc
local ffi_new = ffi.new
local errbuf = lib.errbuf
local errmsg = lib.errmsg
local tostring = tostring

local FREE_STREAMS = 16
-- A dead pooled connection, then a connect that reached the dying server, then
-- the restarted server.
local MAX_ATTEMPTS = 3

local _M = {}

-- engine = {
--   session_new(def) -> cdata or nil, session_free, stream_new(session), stream_free,
--   stream_reset(stream), stream_has_unread(stream) -> int, event_ctype ("kps_x_event[1]"),
--   roundtrip(self, c) -> ev | nil, err, cause, before_reply,
--   EVENT_DONE, EVENT_CALL (event kinds), answer(self, c, ev, dispatch, saved, stats)
--   -> true | "terminal" | false, err[, cause (default "protocol")],
--   and other_event(self, ev, phase) -> nil, err, cause,
-- }
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
function _M.first_exchange(self, build, a, b)
  local roundtrip = self.engine.roundtrip
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
  if kind == engine.EVENT_DONE then
    _M.finish(self, c)
    return true, nil, nil, stats
  elseif kind == engine.EVENT_CALL then
    local ok, err, cause = engine.answer(self, c, ev, dispatch, saved, stats)
    if ok == "terminal" then
      -- The handler does not wait for a reply; Kong's request ends here.
      _M.close(self, c)
      return true, nil, nil, stats
    elseif not ok then
      _M.close(self, c)
      return nil, err, cause or "protocol", stats
    end
    ev, err, cause = engine.roundtrip(self, c)
    if not ev then
      _M.close(self, c)
      -- "died": the server process died during the event (plugin.lua runs it
      -- again on the new one)
      return nil, err, c.peer_died and "died" or cause, stats
    end
    return serve_event(self, c, ev, phase, dispatch, saved, stats)
  end
  local _, err, ecause = engine.other_event(self, ev, phase)
  _M.close(self, c)
  return nil, err, ecause, stats
end
_M.serve_event = serve_event

return _M
