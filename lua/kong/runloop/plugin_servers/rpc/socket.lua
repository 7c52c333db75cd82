-- Connections to a plugin server, shared by both protocols: cosockets from the
-- keepalive pool with the server's timeouts, the wait for a server that is not
-- listening yet, and the classification of failures into the counters' causes.
--
-- Pool names include the server's pid (a restarted server never gets the old
-- connections) and a per-worker generation, bumped when a pooled connection turns
-- out dead, so that the retry gets a fresh connection.

local ngx = ngx
local tcp = ngx.socket.tcp
local sleep = ngx.sleep
local now = ngx.now
local update_time = ngx.update_time
local find = string.find
local lower = string.lower
local tostring = tostring

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

-- The server pid the supervisor reports (managed servers), if any.
function _M.server_pid(def)
  if state and def.start_command then
    local ok, e = pcall(state.get, def.name)
    return ok and e and e.pid or nil
  end
  return nil
end

local function pool_name(def)
  return "kps:" .. def.socket .. ":" .. tostring(_M.server_pid(def) or 0) .. ":" .. (generation[def.socket] or 0)
end

-- A pooled connection was dead: later checkouts use a new, empty pool.
function _M.discard_pool(def)
  generation[def.socket] = (generation[def.socket] or 0) + 1
end

local function not_listening(err)
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

local function try_connect(def)
  local sock = tcp()
  sock:settimeouts(def.connect_timeout, def.send_timeout, def.read_timeout)
  local ok, err = sock:connect("unix:" .. def.socket, { pool = pool_name(def), pool_size = POOL_SIZE })
  if not ok then
    return nil, err
  end
  return sock
end

-- A connected cosocket and whether it came from the pool, or nil, err, cause.
-- A managed server that is not listening is waited for up to ready_timeout.
function _M.connect(def)
  local sock, err = try_connect(def)
  if not sock and def.start_command and not_listening(err) then
    -- Not ready (starting, or restarting after a crash the supervisor may not
    -- have seen yet): retry until ready_timeout, woken by the supervisor's state
    -- when there is one.
    local use_state = state and state.dict()
    update_time()
    local deadline = now() + def.ready_timeout / 1000
    while not sock and not_listening(err) do
      local left = deadline - now()
      if left <= 0 then
        break
      end
      if use_state then
        local ok, pid, werr = pcall(state.wait_ready, def.name, left * 1000)
        if ok and not pid then
          err = tostring(err) .. " (" .. tostring(werr) .. ")"
          break
        end
      end
      sleep(READY_STEP)
      update_time()
      sock, err = try_connect(def)
    end
  end
  if not sock then
    return nil, "cannot connect to " .. def.socket .. ": " .. tostring(err), "connect"
  end
  return sock, (sock:getreusedtimes() or 0) > 0
end

-- Back to the pool after a clean finish.
function _M.release(sock)
  local ok = sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
  if not ok then
    sock:close()
  end
end

return _M
