-- Connections to a plugin server, shared by both protocols: cosockets from the
-- keepalive pool with the server's timeouts, the wait for a server that is not
-- listening yet, and the classification of failures into the counters' causes.
--
-- Pool names include the server's pid (a restarted server never gets the old
-- connections) and a per-worker generation, bumped when a pooled connection turns
-- out dead, so that the retry gets a fresh connection.

local ffi = require "ffi"

local ngx, tostring, pcall = ngx, tostring, pcall
local tcp, sleep, now, update_time = ngx.socket.tcp, ngx.sleep, ngx.now, ngx.update_time
local find, lower = string.find, string.lower

local _M = {}

-- How long an idle pooled connection is kept, and how many per pool.
local KEEPALIVE_MS = 60000
local POOL_SIZE = 64
local READY_STEP = 0.01

local state
do
  local ok, mod = pcall(require, "kong.runloop.plugin_servers.state")
  state = ok and type(mod) == "table" and mod or nil
end

local generation = {}
-- The server pid each connection was made to (managed servers).
local pid_of = setmetatable({}, { __mode = "k" })

-- The server pid the supervisor reports (managed servers), if any.
function _M.server_pid(def)
  if state and def.start_command then
    local ok, e = pcall(state.get, def.name)
    return ok and e and e.pid or nil
  end
  return nil
end

local function pool_name(def, pid)
  return "kps:" .. def.socket .. ":" .. tostring(pid or 0) .. ":" .. (generation[def.socket] or 0)
end

-- A pooled connection was dead: later checkouts use a new, empty pool.
function _M.discard_pool(def)
  generation[def.socket] = (generation[def.socket] or 0) + 1
end

local function not_listening(err)
  if not err then
    return false
  end
  err = lower(tostring(err))
  return find(err, "no such file", 1, true) or find(err, "connection refused", 1, true)
end

-- Cause of a socket error: "timeout" or "connect".
function _M.cause(err)
  if err == "timeout" then
    return "timeout"
  end
  return "connect"
end

local function try_connect(def, pid)
  local sock = tcp()
  sock:settimeouts(def.connect_timeout, def.send_timeout, def.read_timeout)
  local ok, err = sock:connect("unix:" .. def.socket, { pool = pool_name(def, pid), pool_size = POOL_SIZE })
  if not ok then
    return nil, err
  end
  return sock
end

local function connect_error(def, err)
  return nil, "cannot connect to " .. def.socket .. ": " .. tostring(err), "connect"
end

-- What connect returns on success: the cosocket and whether it came from the pool.
local function connected(sock)
  return sock, (sock:getreusedtimes() or 0) > 0
end

-- Connects to the socket of server pid `pid`: the cosocket, or nil, err and
-- whether the connect was refused (the server died: the pid is marked).
local function connect_pid(def, pid)
  local sock, err = try_connect(def, pid)
  if sock then
    pid_of[sock] = pid
    return sock
  end
  if not not_listening(err) then
    return nil, err, false
  end
  state.refused(def.name, pid)
  return nil, err, true
end

-- Without the shared dict (no supervisor state): retry a server that is not
-- listening every 10 ms up to ready_timeout (docs/DESIGN.md "Shared state").
local function connect_polling(def)
  local sock, err = try_connect(def, nil)
  if not sock and def.start_command and not_listening(err) then
    update_time()
    local deadline = now() + def.ready_timeout / 1000
    while not sock and not_listening(err) and now() < deadline do
      sleep(READY_STEP)
      update_time()
      sock, err = try_connect(def, nil)
    end
  end
  if not sock then
    return connect_error(def, err)
  end
  return connected(sock)
end

-- The slow path of connect (below): wait for a ready pid, up to ready_timeout,
-- and connect, again after each refused connect. `entry_pid` is the pid the
-- caller knew as ready (nil: none); `err` the error of a refused connect to it.
local function connect_waiting(def, entry_pid, err)
  local pid, deadline = nil, nil
  local sock
  while true do
    if not pid then
      update_time()
      deadline = deadline or now() + def.ready_timeout / 1000
      local left = deadline - now()
      if left <= 0 then
        return connect_error(def, tostring(err or "not ready") .. " (pluginserver '" .. def.name
          .. "' not ready after " .. def.ready_timeout .. " ms)")
      end
      local werr
      pid, werr = state.wait_ready(def.name, left * 1000)
      if not pid then
        return connect_error(def, werr)
      end
    end
    local refused
    sock, err, refused = connect_pid(def, pid)
    if sock then
      break
    end
    if not refused then
      return connect_error(def, err)
    end
    pid = nil
  end
  if pid ~= entry_pid then
    -- A fresh connection to the new server: good for the pool, not for this event.
    _M.release(sock)
    return nil, "pluginserver '" .. def.name .. "' restarted (pid " .. tostring(entry_pid or "-") .. " -> "
      .. tostring(pid) .. ")", "restarted"
  end
  return connected(sock)
end

-- A connected cosocket and whether it came from the pool, or nil, err, cause.
--
-- A managed server is connected to only when the supervisor reports it ready, so
-- that nothing probes a socket that is not there (nginx logs every failed connect
-- itself, at crit for a missing file). Until then the request waits, up to
-- ready_timeout, woken when the state changes (state.wait_ready). A refused
-- connect means the server died and the supervisor has not reported it yet: the
-- pid is marked (state.refused) so that the other requests wait instead of
-- connecting too.
--
-- Cause "restarted": the server got a new pid while this request waited, so the
-- caller's instance ids are stale (plugin.lua drops them and retries the event).
--
-- The common case (server ready, connect succeeds) runs no loop: a loop that
-- never loops back aborted the JIT trace of every caller ("inner loop in root
-- trace"); the waits are in connect_waiting.
function _M.connect(def)
  if not def.start_command then
    -- an external server the supervisor found hung (hang_timeout): fail at once
    -- until it answers again, instead of waiting read_timeout on it
    if state and state.is_hung(def.name) then
      return nil, state.hung_message(def.name), "timeout"
    end
    local sock, err = try_connect(def, nil)
    if not sock then
      return connect_error(def, err)
    end
    return connected(sock)
  end
  if not (state and state.dict()) then
    return connect_polling(def)
  end
  local entry = state.get(def.name)
  if not entry then
    -- not supervised here (no state yet): connect and poll as without the dict
    return connect_polling(def)
  end
  -- the pid this request's caller knows as ready (nil: none)
  local entry_pid = entry.state == "ready" and entry.pid or nil
  if not entry_pid or state.is_refused(def.name, entry_pid) then
    -- not ready, or a request saw it die: wait for the supervisor
    return connect_waiting(def, entry_pid, nil)
  end
  local sock, err, refused = connect_pid(def, entry_pid)
  if sock then
    return connected(sock)
  end
  if not refused then
    return connect_error(def, err)
  end
  return connect_waiting(def, entry_pid, err)
end

-- Whether the server process behind the socket is gone: a fresh connection (not
-- from any pool) is refused, or is reset within DYING_MS (a process being torn
-- down can close a connection before its listening socket: a connect then still
-- reaches the listen queue, which is reset when the listener closes). A live
-- server sends nothing on a new connection, so the read times out.
local DYING_MS = 50
local function refuses(def)
  local sock = tcp()
  sock:settimeouts(def.connect_timeout, def.send_timeout, def.read_timeout)
  -- a pool of its own that never keeps a connection: always a real connect
  local ok, err = sock:connect("unix:" .. def.socket, { pool = "kps-alive:" .. def.socket })
  if ok then
    sock:settimeout(DYING_MS)
    local _, rerr = sock:receive(1)
    sock:close()
    return rerr ~= "timeout"
  end
  return not_listening(err) and true or false
end

pcall(ffi.cdef, "int kill(int pid, int sig);") -- raises only when declared already
local C = ffi.C
local ESRCH = 3

-- Whether process `pid` no longer exists (reaped). A syscall, no I/O.
function _M.process_gone(pid)
  if C.kill(pid, 0) == 0 then
    return false
  end
  return ffi.errno() == ESRCH
end

-- After a clean close by server process `pid`: whether it died. The state and
-- the process table answer without a connect when they can (a connect to a
-- socket file the supervisor removed would be a [crit] line of nginx); a process
-- that still exists may be exiting, which the socket tells (refuses above).
local function died_after_close(def, pid)
  if state.is_refused(def.name, pid) then
    return true
  end
  local e = state.get(def.name)
  if not e or e.state ~= "ready" or e.pid ~= pid or _M.process_gone(pid) then
    return true
  end
  return refuses(def)
end

-- A send or read on `sock` failed with `err`. A reset or a broken pipe means the
-- server process died (SIGKILL, crash): its pid is marked like a refused connect,
-- so that other requests wait for the supervisor's restart instead of connecting
-- to the dying process (each failure is an error line of nginx's own). A clean
-- close means the same when the socket now refuses connections (a server that
-- closes on purpose still listens). Returns true when the process died.
function _M.peer_failed(def, sock, err)
  local pid = pid_of[sock]
  if pid and state and def.start_command then
    err = lower(tostring(err))
    if find(err, "reset by peer", 1, true) or find(err, "broken pipe", 1, true)
      or (err == "closed" and died_after_close(def, pid)) then
      state.refused(def.name, pid)
      return true
    end
  end
  return false
end

-- Back to the pool after a clean finish.
function _M.release(sock)
  local ok = sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
  if not ok then
    sock:close()
  end
end

return _M
