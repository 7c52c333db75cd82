-- kong.runloop.plugin_servers.log_queue: this worker's log events, per server.
-- A log event never runs in the request: it is queued and run by a few drain
-- timers per server (each one connection to the server), and requests are held
-- back briefly when the queue outgrows what the drains can take (hold below).
-- The plugin object (plugin.lua) gives `handler` as its log phase and calls
-- `hold` before its other phases.

local pdk = require "kong.runloop.plugin_servers.pdk"

local state
do
  local ok, mod = pcall(require, "kong.runloop.plugin_servers.state")
  state = ok and type(mod) == "table" and mod or nil
end

local semaphore
do
  local ok, mod = pcall(require, "ngx.semaphore")
  semaphore = ok and mod or nil
end

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local now = ngx.now
local update_time = ngx.update_time
local timer_at = ngx.timer.at
local pcall = pcall
local tostring = tostring
local max = math.max
local min = math.min

local _M = {}

-- Per server name, this worker's queue of log events: { first, last, [i] = entry,
-- running = drain timers, sema = where requests wait for it to shrink,
-- event_ms = running mean of its log events' durations }.
local log_queues = {}

-- Log events wait for a connection in a queue (see log_handler below); a request
-- is where the gateway can slow down when they pile up. Past LOG_HOLD queued
-- events of its server, a request waits until the drains have brought the queue
-- down to half that, before its own event takes a connection: the server's work
-- stays in a few connections instead of the queue growing into extra drain
-- timers, each one more connection in use (and one more nginx error line) if the
-- server dies. Only when that pays: the drains must be expected to halve the
-- queue within LOG_HOLD_MS (a server busy with CPU work, like go-hello's log
-- phase under load, where more connections would not make it faster), and the
-- wait is at most twice that. A slow log phase (a plugin posting to a remote
-- collector) gets more drain timers instead, so requests never wait on it. Not
-- while the server is down either: then only the wait for readiness applies.
local LOG_HOLD = 8
local LOG_HOLD_MS = 50
-- Weight of the newest log event in a queue's running mean of event durations.
local EVENT_MS_WEIGHT = 0.2
local HOLD_PHASES = { rewrite = true, access = true, preread = true }
_M.LOG_HOLD = LOG_HOLD
_M.LOG_HOLD_MS = LOG_HOLD_MS

-- A managed server the supervisor reports as not ready (down, restarting).
local function server_down(def)
  local e = state and def.start_command and state.get(def.name)
  return e and e.state ~= "ready"
end

local function hold_for_log_backlog(self, phase)
  local def = self.server_def
  local q = log_queues[def.name]
  if not (q and q.sema and q.event_ms and HOLD_PHASES[phase]) then
    return
  end
  local queued = q.last - q.first + 1
  if queued < LOG_HOLD or server_down(def) then
    return
  end
  local expected_ms = (queued - LOG_HOLD / 2) * q.event_ms / max(q.running, 1)
  if expected_ms > LOG_HOLD_MS then
    return
  end
  -- pcall: a phase where nginx forbids yielding only skips the wait
  pcall(q.sema.wait, q.sema, min(def.read_timeout or LOG_HOLD_MS, 2 * LOG_HOLD_MS) / 1000)
end

-- Log events in flight in this worker, queued or running: past this many a log
-- event fails at once, logged (rate-limited) and counted. The bound keeps a slow
-- or restarting server from piling up request data without end; it used to be
-- one timer per event, and timers share the worker's lua_max_running_timers.
local MAX_LOG_EVENTS = 128
-- Log events holding a connection to one server at once, per worker: they run
-- in a few drain timers per server, which take queued events in order. Why few:
-- nginx logs its own error line for every connection in use when a server dies
-- (issue 10 allows 10 lines per outage), and log events, unlike request events,
-- are not held back by the client, so bursts used to become connections.
local LOG_CONNECTIONS = 2
-- A fixed bound would lose log events under load: with many requests per worker
-- the drain timers get too small a share of the worker and the queue only grows.
-- So past LOG_BACKLOG queued events each new one adds a drain timer, up to
-- MAX_LOG_CONNECTIONS; they end when the queue is empty.
local LOG_BACKLOG = 16
local MAX_LOG_CONNECTIONS = 32
_M.MAX_LOG_EVENTS = MAX_LOG_EVENTS
_M.LOG_CONNECTIONS = LOG_CONNECTIONS
_M.LOG_BACKLOG = LOG_BACKLOG
_M.MAX_LOG_CONNECTIONS = MAX_LOG_CONNECTIONS

local log_events = 0

local function log_queue(name)
  local q = log_queues[name]
  if not q then
    q = { first = 1, last = 0, running = 0, sema = semaphore and semaphore.new() }
    log_queues[name] = q
  end
  return q
end

local function pop(q)
  local i = q.first
  if i > q.last then
    return nil
  end
  local entry = q[i]
  q[i] = nil
  q.first = i + 1
  -- wake the requests held by hold_for_log_backlog (a negative count: that many
  -- wait) once the queue is down to half
  local sema = q.sema
  if sema and q.last - q.first + 1 <= LOG_HOLD / 2 then
    local count = sema:count()
    if count < 0 then
      sema:post(-count)
    end
  end
  return entry
end

-- One queued log event. A managed server is waited for up to ready_timeout from
-- the moment the event was queued, as a request would, not from its turn
-- (`started`, the drain's clock reading when the turn came).
local function run_log_event(entry, premature, started)
  local self = entry.plugin
  local ok, res, err, cause
  if premature then
    ok, err, cause = true, "nginx is exiting", "connect"
  else
    -- kong.plugin.get_id() and the ctx overrides see the request's ctx.
    ngx.ctx = entry.saved.ngx_ctx
    local waited_ms = (started - entry.queued) * 1000
    local budget = self.server_def.ready_timeout
    budget = budget and (waited_ms < budget and budget - waited_ms or 0) or nil
    ok, res, err, cause = pcall(self.run_event, self, entry.conf, "log", entry.saved, budget)
  end
  log_events = log_events - 1
  if ok and res then
    return
  end
  if not ok then
    err, cause = res, "protocol"
  end
  self:fail("log", err, cause)
end

-- A drain timer: runs the server's queued log events one after the other.
local function drain(premature, q)
  while true do
    local entry = pop(q)
    if not entry then
      break
    end
    update_time()
    local started = now()
    local ok, err = pcall(run_log_event, entry, premature, started)
    if not ok then
      log(ERR, "[pluginserver] log event of ", entry.plugin.name, " raised: ", tostring(err))
    end
    update_time()
    local ms = (now() - started) * 1000
    local mean = q.event_ms
    q.event_ms = mean and mean + (ms - mean) * EVENT_MS_WEIGHT or ms
  end
  q.running = q.running - 1
end

local function log_handler(self, conf)
  local name = self.server_def.name
  if log_events >= MAX_LOG_EVENTS then
    return self:fail("log", MAX_LOG_EVENTS .. " log events already in flight in this worker (pluginserver '"
      .. name .. "' slower than the requests, or not ready)", "timeout")
  end
  local ok, saved = pcall(pdk.save_request, self.name)
  if not ok then
    return self:fail("log", "cannot save the request data: " .. tostring(saved), "protocol")
  end
  local q = log_queue(name)
  -- queued events, this one included, beyond one for each drain timer
  local waiting = q.last - q.first + 2 - q.running
  if q.running < LOG_CONNECTIONS or (waiting >= LOG_BACKLOG and q.running < MAX_LOG_CONNECTIONS) then
    local tok, terr = timer_at(0, drain, q)
    if tok then
      q.running = q.running + 1
    elseif q.running == 0 then
      -- nothing would run the event
      return self:fail("log", "cannot start the log timer: " .. tostring(terr), "protocol")
    end
  end
  update_time()
  local last = q.last + 1
  q[last] = { plugin = self, conf = conf, saved = saved, queued = now() }
  q.last = last
  log_events = log_events + 1
end

_M.hold = hold_for_log_backlog
_M.handler = log_handler

return _M
