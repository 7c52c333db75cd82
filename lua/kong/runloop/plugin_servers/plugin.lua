-- kong.runloop.plugin_servers.plugin: the plugin object Kong runs for an external
-- plugin (PROTOCOL.md §6.2), with the failure rules of INTERFACES.md:
-- - a server that cannot be reached, times out or breaks the protocol fails the
--   request: 500 in rewrite/access, and in the response phase while headers are
--   unsent; an aborted handshake in certificate; the log phase only logs;
-- - fail_open = on: skip, log, count;
-- - error lines rate-limited per server and cause; nothing raises out of a handler;
-- - "no plugin instance": re-create the instance and retry the event once.

local rpc_mod = require "kong.runloop.plugin_servers.rpc"
local instances_mod = require "kong.runloop.plugin_servers.instances"
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

local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local now = ngx.now
local update_time = ngx.update_time
local timer_at = ngx.timer.at
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local max = math.max
local min = math.min

local ERROR_BODY = { message = "An unexpected error occurred" }

local _M = {}

-- Every plugin object of this process, by name (for the reset worker event).
local by_name = {}
local events_registered = false

local Plugin = {}
Plugin.__index = Plugin

local function dispatch(index, name, args, n, saved)
  return pdk.call(index, name, args, n, saved)
end

-- Drops this worker's instances of the plugin.
function Plugin:reset_instances(why)
  if why then
    log(WARN, "[pluginserver] dropping instances of ", self.name, ": ", why)
  end
  self.instances:reset()
end

-- Drops the instances in every worker (Kong's reset_instance, PROTOCOL.md §6.4).
local function reset_everywhere(self, why)
  self:reset_instances(why)
  local we = kong and kong.worker_events
  if we and we.post then
    -- `pid`: the poster has reset already; its own copy of the event must not
    -- drop the instance it starts next.
    local ok, err = we.post("plugin_server", "reset_instances",
                            { plugin_name = self.name, pid = ngx.worker.pid() })
    if not ok then
      log(ERR, "[pluginserver] failed to post plugin_server reset_instances event: ", tostring(err))
    end
  end
end

-- The `plugin_server`/`reset_instances` worker event handler. Kong's start()
-- registers it; this also registers it lazily in each worker that runs a plugin.
function _M.register_events()
  if events_registered then
    return true
  end
  local we = kong and kong.worker_events
  if not (we and we.register) then
    return nil, "no kong.worker_events"
  end
  we.register(function(data)
    local p = data and by_name[data.plugin_name]
    if p and data.pid ~= ngx.worker.pid() then
      p:reset_instances()
    end
  end, "plugin_server", "reset_instances")
  events_registered = true
  return true
end

-- Before an event: a managed server that is not ready (down, restarting) is
-- waited for, up to ready_timeout (a wake-up in this worker, 10 ms dict polls
-- across workers); a new server pid means this worker's instances are gone, so the
-- first event after a restart starts the instance and the others wait for it
-- (instances.lua). Returns true, or nil, err, cause.
local function supervised_state(def)
  return state and def.start_command and state.get(def.name)
end

local function await_server(self, ready_ms)
  local def = self.server_def
  local e = supervised_state(def)
  if not e then
    -- no shared dict or no supervisor state: socket.lua polls the socket
    return true
  end
  local pid = e.pid
  if e.state ~= "ready" then
    local err
    pid, err = state.wait_ready(def.name, ready_ms or def.ready_timeout)
    if not pid then
      return nil, err, "connect"
    end
  end
  if pid and pid ~= self.known_pid then
    if self.known_pid then
      self:reset_instances()
    end
    self.known_pid = pid
  end
  return true
end

-- Runs one event; returns true or nil, err, cause. `ready_ms` (log events: what
-- is left of ready_timeout after the event's wait in its queue) replaces
-- ready_timeout as the bound on the wait for a server that is not ready.
function Plugin:run_event(conf, phase, saved, ready_ms)
  if not events_registered then
    _M.register_events()
  end
  local server = self.server_def.name
  update_time()
  local started = now()
  local ok, err, cause = await_server(self, ready_ms)
  if ok then
    for attempt = 1, 2 do
      local id
      id, err, cause = self.instances:get(conf)
      if id then
        local stats
        ok, err, cause, stats = self.rpc:handle_event(id, phase, dispatch, saved)
        if stats and stats.pdk_calls > 0 then
          counters.incr(server, "pdk_calls", stats.pdk_calls)
        end
      else
        ok = nil
      end
      if ok or attempt == 2 then
        break
      end
      if cause == "no_instance" then
        counters.incr(server, "errors.no_instance")
        reset_everywhere(self, err)
      elseif cause == "restarted" then
        -- The server restarted while this event waited for it: its instance id
        -- is stale. The first request to see the new pid drops this worker's
        -- instances; the others reuse the instance it starts.
        local e = state and state.get(server)
        local pid = e and e.pid
        if pid ~= self.known_pid then
          self:reset_instances()
          self.known_pid = pid
        end
      else
        break
      end
    end
  end
  if cause == "restarted" then
    cause = "connect"
  end
  counters.incr(server, "events")
  update_time()
  counters.latency(server, (now() - started) * 1000)
  return ok, err, cause
end

-- Applies the failure rule for `phase`.
function Plugin:fail(phase, err, cause)
  local def = self.server_def
  cause = cause or "protocol"
  -- no_instance is counted where it happens; a refused method when refused
  if cause ~= "no_instance" and cause ~= "refused_method" then
    counters.incr(def.name, "errors." .. cause)
  end
  local skip = def.fail_open
  if skip then
    counters.incr(def.name, "fail_open")
  end
  limiter.log(def.name, cause, def.log_window, ERR, "[pluginserver] ", def.name, ": plugin ", self.name,
              " failed in ", phase,
              " (", cause, "): ", tostring(err), skip and "; skipped (fail_open)" or "")
  if skip or phase == "log" then
    return
  end
  if phase == "certificate" then
    return ngx.exit(ngx.ERROR)
  end
  if phase == "response" and ngx.headers_sent then
    return
  end
  return kong.response.exit(500, ERROR_BODY)
end

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

local function server_down(def)
  local e = supervised_state(def)
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

-- The failure handling below has a twin at the end of run_log_event. It stays
-- inline here: moved into a shared function, its return aborted a JIT trace of
-- every request ("NYI: return to lower frame", make jit-aborts).
local function phase_handler(phase)
  return function(self, conf)
    hold_for_log_backlog(self, phase)
    local ok, res, err, cause = pcall(self.run_event, self, conf, phase, nil)
    if ok and res then
      return
    end
    if not ok then
      err, cause = res, "protocol"
    end
    return self:fail(phase, err, cause)
  end
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

-- The plugin object for `info` (see INTERFACES.md "Plugin info record"), or nil, err.
function _M.new(info)
  if type(info) ~= "table" or not info.server_def then
    return nil, "invalid plugin info"
  end
  local def = info.server_def
  local self = setmetatable({
    name = info.name, PRIORITY = info.PRIORITY, VERSION = info.VERSION,
    schema = info.schema, phases = info.phases, server_def = def,
  }, Plugin)
  local rpc, err = rpc_mod.new(info, function(why)
    self:reset_instances(why)
  end)
  if not rpc then
    return nil, err
  end
  self.rpc = rpc
  -- A request waits for another one's StartInstance as long as one can take.
  local wait_ms = (def.connect_timeout or 0) + (def.send_timeout or 0) + (def.read_timeout or 0)
  self.instances = instances_mod.new(info.name, rpc, wait_ms, function()
    counters.incr(def.name, "instance_starts")
  end)
  for _, phase in ipairs(info.phases or {}) do
    self[phase] = phase == "log" and log_handler or phase_handler(phase)
  end
  by_name[info.name] = self
  return self
end

return _M
