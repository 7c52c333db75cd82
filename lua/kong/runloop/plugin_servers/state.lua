-- kong.runloop.plugin_servers.state: per-server process state in the shared dict
-- of shm.lua, readable from every worker.
--
-- Owns the keys (after shm's prefix) `ps:owner` (pid of the worker whose supervisor writes the state)
-- `ps:refused:<name>` (a pid that refused a connection, see refused()) and
-- `ps:srv:<name>` (JSON: state, pid, pid_start (the pid's start time, which
-- proves after a reload that the pid still names that server), note (why a
-- starting server is not ready), restarts, hangs, last_exit, started_at, since:
-- the supervisor's wall-clock time of the last state change, standby (off,
-- unavailable, none, starting, ready), standby_pid, standby_start, promotions). State `hung`: an
-- external server that answers nothing (hang_timeout); its events fail at once
-- until it answers again. Written
-- by worker 0's drain timer (process.lua); read by status() and by the RPC code
-- through wait_ready().

local cjson = require("cjson.safe").new()
local shm = require "kong.runloop.plugin_servers.shm"

local ngx, type, ipairs, pairs, pcall, tostring = ngx, type, ipairs, pairs, pcall, tostring
local floor, min = math.floor, math.min
local ngx_now, update_time = ngx.now, ngx.update_time

local OWNER_KEY = "ps:owner"
local SERVER_KEY = "ps:srv:"
local REFUSED_KEY = "ps:refused:"
-- How long a refused pid counts as down without the supervisor saying so
-- (seconds): the supervisor reports an exit within a few ms; if the process lives
-- on without listening, requests probe it again this often.
local REFUSED_TTL = 0.2
-- A waiting request looks at the dict at least this often (seconds).
local POLL = 0.01

local _M = {
  MISSING_DICT = shm.MISSING,
}

-- The dict and the prefix of our keys (shm.lua), or nil.
local dict = shm.get

-- The dict, or nil and the message naming the kong.conf line that declares it.
function _M.dict()
  return shm.get()
end

-- Per-worker wake-ups for requests waiting on a server (posted by set()).
local semaphores = {}
local semaphore_lib
do
  local ok, lib = pcall(require, "ngx.semaphore")
  semaphore_lib = ok and lib or nil
end

local function semaphore(name)
  local sema = semaphores[name]
  if not sema and semaphore_lib then
    sema = semaphore_lib.new(0)
    semaphores[name] = sema
  end
  return sema
end

local function wake(name)
  local sema = semaphores[name]
  if sema then
    local waiting = -sema:count()
    if waiting > 0 then
      sema:post(waiting)
    end
  end
end

local cached_raw, cached_entry = {}, {}

-- The entry of one server: { state, pid, restarts, last_exit, started_at, since } or nil.
function _M.get(name)
  local d, p = dict()
  if not d then
    return nil
  end
  local raw = d:get(p .. SERVER_KEY .. name)
  if not raw then
    return nil
  end
  -- Read on every event: decode only when the entry changed (strings are
  -- interned, so the comparison is cheap). Callers must not modify the entry.
  if raw == cached_raw[name] then
    return cached_entry[name]
  end
  local e = cjson.decode(raw)
  if type(e) ~= "table" then
    return nil
  end
  cached_raw[name], cached_entry[name] = raw, e
  return e
end

-- Makes `owner` (a worker pid) the writer of the state and returns the processes
-- the previous owner's servers had ({ [name] = { pid = n, start = t, standby =
-- { pid = n, start = t } } }, the standby when there was one), so that the new
-- supervisor can wait for them to be gone before serving the same sockets (and
-- never signals a pid whose start time is not `start`).
function _M.claim(owner, defs)
  local d, p = dict()
  if not d then
    return {}
  end
  local old = {}
  for _, def in ipairs(defs) do
    local e = _M.get(def.name)
    if e and (e.pid or e.standby_pid) and e.state ~= "external" then
      old[def.name] = {
        pid = e.pid or 0,
        start = e.pid_start,
        standby = e.standby_pid and { pid = e.standby_pid, start = e.standby_start } or nil,
      }
    end
  end
  d:set(p .. OWNER_KEY, owner)
  return old
end

function _M.owner()
  local d, p = dict()
  return d and d:get(p .. OWNER_KEY)
end

-- Stores a server's entry, if `owner` still owns the state (an old worker 0 that
-- finishes its stop after a reload must not overwrite the new one's state). An
-- absent field is nil, never cjson.null (process.lua's drain turns the report's
-- nulls into nil), so that get() returns the entry as decoded.
-- Wakes the requests of this worker that wait for the server.
function _M.set(name, entry, owner)
  local d, p = dict()
  if not d then
    return nil, _M.MISSING_DICT
  end
  if owner and d:get(p .. OWNER_KEY) ~= owner then
    return nil, "not the owner"
  end
  local ok, err = d:set(p .. SERVER_KEY .. name, cjson.encode({
    state = entry.state,
    pid = entry.pid,
    pid_start = entry.pid_start,
    note = entry.note,
    restarts = entry.restarts or 0,
    hangs = entry.hangs or 0,
    last_exit = entry.last_exit,
    started_at = entry.started_at,
    since = entry.since,
    standby = entry.standby,
    standby_pid = entry.standby_pid,
    standby_start = entry.standby_start,
    promotions = entry.promotions,
  }))
  wake(name)
  return ok, err
end

-- status() entries, in defs order: { name, pid, state, restarts, hangs, last_exit, note, uptime,
-- standby, standby_pid, promotions }.
function _M.status(defs)
  if not dict() then
    return nil, _M.MISSING_DICT
  end
  update_time()
  local now = ngx_now()
  local list = {}
  for i, def in ipairs(defs) do
    local e = _M.get(def.name) or {}
    local state = e.state or (def.start_command and "stopped" or "external")
    local running = e.started_at and (state == "starting" or state == "ready")
    list[i] = {
      name = def.name,
      pid = e.pid,
      state = state,
      restarts = e.restarts or 0,
      hangs = e.hangs or 0,
      last_exit = e.last_exit,
      note = e.note,
      uptime = running and floor((now - e.started_at) * 1000) / 1000 or 0,
      standby = e.standby or (def.start_command and "none" or "off"),
      standby_pid = e.standby_pid,
      promotions = e.promotions or 0,
    }
  end
  return list
end

-- A request found the socket of `name` refusing connections while the state said
-- `pid` was ready: the process died and the supervisor has not reported it yet.
-- Until it does (or REFUSED_TTL passes), wait_ready treats that pid as not ready,
-- so other requests wait instead of connecting (nginx logs each failed connect).
function _M.refused(name, pid)
  local d, p = dict()
  if d and pid then
    d:set(p .. REFUSED_KEY .. name, pid, REFUSED_TTL)
  end
end

-- The error of an event for a server marked hung.
function _M.hung_message(name)
  return "pluginserver '" .. name .. "' is hung (it answered nothing for hang_timeout)"
end

-- Whether the supervisor marked external server `name` hung.
function _M.is_hung(name)
  local e = _M.get(name)
  return e ~= nil and e.state == "hung"
end

-- Whether `pid` of `name` refused a connection in the last REFUSED_TTL.
function _M.is_refused(name, pid)
  local d, p = dict()
  return d ~= nil and pid ~= nil and d:get(p .. REFUSED_KEY .. name) == pid
end

local function sleep(sema, seconds)
  if sema then
    local ok = pcall(sema.wait, sema, seconds)
    if ok then
      return
    end
  end
  ngx.sleep(seconds)
end

-- Waits (at most timeout_ms) until a managed server is ready. Returns its pid, 0
-- for an external server (no pid known; the caller just connects), or nil and
-- a message naming the server and its state.
function _M.wait_ready(name, timeout_ms)
  if not dict() then
    return nil, _M.MISSING_DICT
  end
  update_time()
  local deadline = ngx_now() + (timeout_ms or 0) / 1000
  while true do
    local e = _M.get(name)
    local state = e and e.state
    if state == "ready" then
      if not _M.is_refused(name, e.pid) then
        return e.pid
      end
      state = "ready, refusing connections"
    elseif state == "external" then
      return 0
    elseif state == "hung" then
      return nil, _M.hung_message(name)
    elseif state == nil then
      return nil, "pluginserver '" .. name .. "' has no state (not supervised)"
    elseif state == "failed" or state == "stopped" then
      return nil, "pluginserver '" .. name .. "' is " .. state
    end
    update_time()
    local left = deadline - ngx_now()
    if left <= 0 then
      return nil, "pluginserver '" .. name .. "' not ready after " .. floor((timeout_ms or 0) + 0.5)
        .. " ms (state " .. state .. ")"
    end
    sleep(semaphore(name), min(POLL, left))
  end
end

-- Waits (at most timeout_ms) until `name` is ready with another pid than
-- `old_pid` (the process that died during an event). Returns the new pid, or nil
-- and a message.
function _M.wait_new_pid(name, old_pid, timeout_ms)
  update_time()
  local deadline = ngx_now() + (timeout_ms or 0) / 1000
  while true do
    local left = (deadline - ngx_now()) * 1000
    local pid, err = _M.wait_ready(name, left > 0 and left or 0)
    if not pid then
      return nil, err
    end
    if pid ~= old_pid then
      return pid
    end
    update_time()
    if ngx_now() >= deadline then
      return nil, "pluginserver '" .. name .. "' (pid " .. tostring(old_pid) .. ") died during the event"
        .. " and no new process was ready after " .. floor((timeout_ms or 0) + 0.5) .. " ms"
    end
    sleep(semaphore(name), POLL)
  end
end

-- For specs: every key this module owns (with shm's prefix).
function _M.keys(names)
  local _, p = dict()
  p = p or ""
  local keys = { p .. OWNER_KEY }
  for _, name in pairs(names) do
    keys[#keys + 1] = p .. SERVER_KEY .. name
    keys[#keys + 1] = p .. REFUSED_KEY .. name
  end
  return keys
end

return _M
