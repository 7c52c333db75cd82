-- kong.runloop.plugin_servers.log_queue: this worker's log events, per server.
-- A log event never runs in the request: it is queued and run by a few drain
-- timers per server (each one connection to the server). When the events come
-- faster than the drains take them, the queue pushes back on the requests that
-- make them (hold below) and the drains' number is adapted to what raises the
-- server's throughput (climb below). An event is refused only past the queue's
-- memory bound, `pluginserver_<k>_log_queue_max` (counted as log_refused).
-- The plugin object (plugin.lua) gives `handler` as its log phase and calls
-- `hold` before its other phases.

local pdk = require "kong.runloop.plugin_servers.pdk"
local counters = require "kong.runloop.plugin_servers.counters"
local limiter = require "kong.runloop.plugin_servers.log_limiter"

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

local ngx, pcall, tostring = ngx, pcall, tostring
local log, ERR, now, update_time = ngx.log, ngx.ERR, ngx.now, ngx.update_time
local timer_at = ngx.timer.at
local max, min, floor = math.max, math.min, math.floor

local _M = {}

-- Drain timers per server and worker. LOG_CONNECTIONS always may run: few,
-- because nginx logs its own error line for every connection in use when a
-- server dies (an outage should cost at most about 10 lines). More only while the climb
-- finds they raise the server's throughput, up to MAX_LOG_CONNECTIONS: drains
-- are running timers, which every module of the worker shares
-- (lua_max_running_timers, 256 by default).
local LOG_CONNECTIONS = 2
local MAX_LOG_CONNECTIONS = 32
-- Waiting events (queued, not yet taken by a drain) that mean the drains are
-- behind: from here on the climb measures, and the queue may get more drains.
local LOG_BACKLOG = 16
-- Past LOG_HOLD waiting events, a request of a route with the server's plugins
-- waits (rewrite, access, preread) until the drains have brought the queue down
-- to LOG_BACKLOG, at most LOG_HOLD_MS (or read_timeout when smaller): the
-- gateway slows to the server's pace instead of piling up its requests' data.
-- Not while the server is down: then only the wait for readiness applies.
local LOG_HOLD = 2 * LOG_BACKLOG
local LOG_HOLD_MS = 1000
local HOLD_PHASES = { rewrite = true, access = true, preread = true }
-- Events queued or running per server and worker past which a new one is
-- refused, when the server definition has no log_queue_max (the Rust default).
local DEFAULT_QUEUE_MAX = 4096

-- The climb: every CLIMB_WINDOW_S with at least CLIMB_MIN_DONE completions while
-- the drains are behind, the completions per second are compared with the
-- previous window's. A step (one drain more or less) is kept while it helps
-- by more than CLIMB_GAIN (growing, in steps that double up to CLIMB_MAX_STEP)
-- or does not hurt by more than that (shrinking, fewer connections being
-- cheaper); otherwise it is undone and the limit rests CLIMB_REST windows
-- before the next probe, down and up in turn. A few comparisons per event.
local CLIMB_WINDOW_S = 0.1
local CLIMB_MIN_DONE = 16
local CLIMB_GAIN = 0.05
local CLIMB_REST = 5
local CLIMB_MAX_STEP = 8

_M.LOG_CONNECTIONS = LOG_CONNECTIONS
_M.MAX_LOG_CONNECTIONS = MAX_LOG_CONNECTIONS
_M.LOG_BACKLOG = LOG_BACKLOG
_M.LOG_HOLD = LOG_HOLD
_M.LOG_HOLD_MS = LOG_HOLD_MS
_M.DEFAULT_QUEUE_MAX = DEFAULT_QUEUE_MAX
_M.CLIMB_WINDOW_S = CLIMB_WINDOW_S
_M.CLIMB_MIN_DONE = CLIMB_MIN_DONE
_M.CLIMB_REST = CLIMB_REST

-- Per server name, this worker's queue: { first, last, [i] = entry (waiting
-- events), size = events queued or running, running = drain timers, limit =
-- drain timers allowed, sema = where held requests wait, def; the climb's
-- win_start, done, behind, rate, step, rest, probes }.
local log_queues = {}

-- A managed server the supervisor reports as not ready (down, restarting).
local function server_down(def)
  local e = state and def.start_command and state.get(def.name)
  return e and e.state ~= "ready"
end

local function log_queue(def)
  local name = def.name
  local q = log_queues[name]
  if not q then
    update_time()
    q = { first = 1, last = 0, size = 0, running = 0, limit = LOG_CONNECTIONS, def = def,
          sema = semaphore and semaphore.new(),
          win_start = now(), done = 0, behind = false, step = 1, rest = 0, probes = 0 }
    log_queues[name] = q
  end
  return q
end

local function hold_for_log_backlog(self, phase)
  local def = self.server_def
  local q = log_queues[def.name]
  if not (q and q.sema and HOLD_PHASES[phase]) then
    return
  end
  local mark = min(LOG_HOLD, max(floor((def.log_queue_max or DEFAULT_QUEUE_MAX) / 2), 1))
  if q.last - q.first + 1 < mark or server_down(def) then
    return
  end
  -- pcall: a phase where nginx forbids yielding only skips the wait
  pcall(q.sema.wait, q.sema, min(def.read_timeout or LOG_HOLD_MS, LOG_HOLD_MS) / 1000)
end

local function pop(q)
  local i = q.first
  if i > q.last then
    return nil
  end
  local entry = q[i]
  q[i] = nil
  q.first = i + 1
  -- wake the held requests (a negative count: that many wait) once the queue is
  -- down to the backlog mark
  local sema = q.sema
  if sema and q.last - i <= LOG_BACKLOG then
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
  if ok and res then
    counters.incr(self.server_def.name, "log_events")
    return
  end
  if not ok then
    err, cause = res, "protocol"
  end
  self:fail("log", err, cause)
end

local drain

-- Starts up to `n` drain timers, while fewer than the limit run.
local function add_drains(q, n)
  while n > 0 and q.running < q.limit do
    if not timer_at(0, drain, q) then
      return
    end
    q.running = q.running + 1
    n = n - 1
  end
end

local function set_limit(q, limit)
  limit = max(LOG_CONNECTIONS, min(MAX_LOG_CONNECTIONS, limit))
  local moved = limit ~= q.limit
  q.limit = limit
  -- a higher limit is used at once by the events waiting
  add_drains(q, q.last - q.first + 1 - q.running)
  return moved
end

-- One step of the hill climb, at the end of a window where the drains were behind.
local function climb(q, rate)
  local prev = q.rate
  q.rate = rate
  if q.step == 0 then
    q.rest = q.rest - 1
    if q.rest > 0 then
      return
    end
    -- probe: down and up in turn, up from the floor
    q.probes = q.probes + 1
    q.step = (q.probes % 2 == 1 and q.limit > LOG_CONNECTIONS) and -1 or 1
  elseif prev then
    local undo = (q.step > 0 and rate <= prev * (1 + CLIMB_GAIN))
                 or (q.step < 0 and rate < prev * (1 - CLIMB_GAIN))
    if undo then
      set_limit(q, q.before)
      q.step, q.rest = 0, CLIMB_REST
      return
    end
  end
  q.before = q.limit
  if not set_limit(q, q.limit + q.step) then
    -- at a bound: nothing to probe that way
    q.step, q.rest = 0, CLIMB_REST
  elseif prev and q.step > 0 and q.step < CLIMB_MAX_STEP then
    -- growing keeps helping: bolder steps (a slow log phase needs many drains)
    q.step = q.step * 2
  end
end

-- Counts a completion; at the end of a window, climbs when the drains were behind
-- and the server is up (a wait for readiness says nothing about its throughput).
-- A window where they kept up ends a probe: its rate compares with nothing.
local function completed(q, t)
  local done = q.done + 1
  local elapsed = t - q.win_start
  if elapsed < CLIMB_WINDOW_S or done < CLIMB_MIN_DONE then
    q.done = done
    return
  end
  if q.behind and not server_down(q.def) then
    climb(q, done / elapsed)
  else
    q.rate = nil
    if q.step ~= 0 then
      q.step, q.rest = 0, 1
    end
  end
  q.win_start, q.done, q.behind = t, 0, false
end

-- A drain timer: runs the server's queued log events one after the other.
function drain(premature, q)
  while true do
    local entry = pop(q)
    if not entry then
      break
    end
    update_time()
    local ok, err = pcall(run_log_event, entry, premature, now())
    q.size = q.size - 1
    if not ok then
      log(ERR, "[pluginserver] log event of ", entry.plugin.name, " raised: ", tostring(err))
    end
    update_time()
    completed(q, now())
    if q.running > q.limit then
      -- the climb stepped down
      break
    end
  end
  q.running = q.running - 1
end

local function refuse(self, q)
  local def = self.server_def
  counters.incr(def.name, "log_refused")
  limiter.log(def.name, "log_refused", def.log_window, ERR, "[pluginserver] ", def.name, ": plugin ",
              self.name, " log event refused: ", q.size, " log events of this server already queued ",
              "or running in this worker (log_queue_max; the server is slower than the requests, or not ready)")
end

local function log_handler(self, conf)
  local def = self.server_def
  local q = log_queue(def)
  if q.size >= (def.log_queue_max or DEFAULT_QUEUE_MAX) then
    return refuse(self, q)
  end
  -- one more drain for this event: always up to LOG_CONNECTIONS, past them while
  -- more events wait than drains run, within the limit. Started before the event is
  -- saved (a timer runs only after this handler returns), so that an event nothing
  -- would run fails before any work. Inline and without a loop: this runs in every
  -- request's log phase, and both a loop and a helper's return aborted its JIT
  -- trace (make jit-aborts).
  local waiting = q.last - q.first + 2
  local running = q.running
  if running < q.limit and (running < LOG_CONNECTIONS or waiting > running) and timer_at(0, drain, q) then
    q.running = running + 1
  elseif running == 0 then
    return self:fail("log", "cannot start the log timer", "protocol")
  end
  local ok, saved = pcall(pdk.save_request, self.name)
  if not ok then
    return self:fail("log", "cannot save the request data: " .. tostring(saved), "protocol")
  end
  update_time()
  local last = q.last + 1
  q[last] = { plugin = self, conf = conf, saved = saved, queued = now() }
  q.last = last
  q.size = q.size + 1
  if waiting >= LOG_BACKLOG then
    q.behind = true
  end
end

_M.hold = hold_for_log_backlog
_M.handler = log_handler

return _M
