-- A scripted stand-in for one ngx.socket.tcp cosocket, for the RPC unit specs.
-- `turns` is the connection's script, one entry per send: { reply = bytes,
-- read_error = err after the reply, send_error = err instead of sending }. A send
-- past the script fails with "closed". Replies are handed out `chunk` bytes at a
-- time, so that the engines see partial messages. The fake records what it saw:
-- sent, path, pool, timeouts, closed, kept.
local _M = {}

function _M.new(turns, reused, chunk)
  local s = { sent = {}, closed = false, kept = false, chunks = {}, reused = reused or 0 }
  function s:settimeouts(c, se, r) self.timeouts = { c, se, r } end
  function s:connect(path, opts) self.path, self.pool = path, opts.pool return true end
  function s:getreusedtimes() return self.reused end
  function s:send(data)
    self.sent[#self.sent + 1] = data
    local turn = table.remove(turns, 1)
    if not turn then return nil, "closed" end
    if turn.send_error then return nil, turn.send_error end
    local reply = turn.reply or ""
    for i = 1, #reply, chunk do
      self.chunks[#self.chunks + 1] = reply:sub(i, i + chunk - 1)
    end
    self.read_error = turn.read_error
    return #data
  end
  function s:receiveany()
    local c = table.remove(self.chunks, 1)
    if c then return c end
    return nil, self.read_error or "timeout"
  end
  -- the liveness check of a server after a clean close: nothing comes
  function s:settimeout(ms) self.timeout = ms end
  function s:receive() return nil, "timeout" end
  function s:setkeepalive() self.kept = true return true end
  function s:close() self.closed = true return true end
  return s
end

-- Makes ngx.socket.tcp hand out the fakes of `queue.sockets` in order (an error
-- when none is left), recording each in `queue.log`; ngx.sleep returns at once.
-- Then unloads the rpc modules, so that they are required afresh over the fakes.
function _M.install(queue)
  ngx.socket = { tcp = function()
    local s = assert(table.remove(queue.sockets, 1), "no more fake sockets")
    queue.log[#queue.log + 1] = s
    return s
  end }
  ngx.sleep = function() end
  for k in pairs(package.loaded) do
    if k:find("^kong%.runloop%.plugin_servers%.rpc") then package.loaded[k] = nil end
  end
end

-- The fake sockets the next connects get (fresh log): returns the log, where each
-- socket handed out is recorded.
function _M.expect(queue, ...)
  queue.sockets, queue.log = { ... }, {}
  return queue.log
end

-- The server definition the RPC unit specs use: server `name` at /tmp/<name>.socket,
-- distinct connect, send and read timeouts (11, 22, 33 ms) so that a spec can tell
-- them apart on the fake, 1 MiB messages.
function _M.def(name)
  return { name = name, socket = "/tmp/" .. name .. ".socket", connect_timeout = 11, send_timeout = 22,
           read_timeout = 33, max_message_size = 1024 * 1024, ready_timeout = 5 }
end

return _M
