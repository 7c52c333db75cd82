-- kong.runloop.plugin_servers.plugin: the plugin object Kong runs for an external
-- plugin, with its failure rules (docs/ROBUSTNESS.md):
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
local log_queue = require "kong.runloop.plugin_servers.log_queue"
local clock_us = require("kong.runloop.plugin_servers.clock").us

local state
do
  local ok, mod = pcall(require, "kong.runloop.plugin_servers.state")
  state = ok and type(mod) == "table" and mod or nil
end

local ngx, pcall, tostring, type, ipairs, pairs = ngx, pcall, tostring, type, ipairs, pairs
local setmetatable = setmetatable
local ERR = ngx.ERR

local ERROR_BODY = { message = "An unexpected error occurred" }

local _M = {}

-- Every plugin object of this process, by name: a weak set per name (for the reset
-- worker event and reset_instances_for_plugin).
local by_name = {}

local function reset_all(name, why)
  local set = by_name[name]
  if set then
    for p in pairs(set) do
      p:reset_instances(why)
    end
  end
end
local events_registered = false

local Plugin = {}
Plugin.__index = Plugin

local function dispatch(index, name, args, n, saved)
  return pdk.call(index, name, args, n, saved)
end

-- Drops this worker's instances of the plugin.
function Plugin:reset_instances(why)
  if why then
    ngx.log(ngx.WARN, "[pluginserver] dropping instances of ", self.name, ": ", why)
  end
  self.instances:reset()
end

-- Drops the instances in every worker (Kong's reset_instances worker event).
local function reset_everywhere(self, why)
  self:reset_instances(why)
  local we = kong and kong.worker_events
  if we and we.post then
    -- `pid`: the poster has reset already; its own copy of the event must not
    -- drop the instance it starts next.
    local ok, err = we.post("plugin_server", "reset_instances",
                            { plugin_name = self.name, pid = ngx.worker.pid() })
    if not ok then
      ngx.log(ERR, "[pluginserver] failed to post plugin_server reset_instances event: ", tostring(err))
    end
  end
end

-- Kong's export: drops this worker's instances of the plugin `name` (what Kong's
-- reset_instances worker event handler calls).
function _M.reset_instances_for_plugin(name)
  reset_all(name)
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
    if data and data.pid ~= ngx.worker.pid() then
      reset_all(data.plugin_name)
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

-- The server died during an event (cause "died"): waits (up to ready_timeout)
-- for the supervisor's new process and drops this worker's instances of the old
-- one. Returns true, or nil, err, cause.
local function await_new_server(self)
  local def = self.server_def
  if not (state and def.start_command and self.known_pid) then
    return nil, "pluginserver '" .. def.name .. "' died during the event", "connect"
  end
  local pid, err = state.wait_new_pid(def.name, self.known_pid, def.ready_timeout)
  if not pid then
    return nil, err, "connect"
  end
  self:reset_instances()
  self.known_pid = pid
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
  local started = clock_us()
  local ok, err, cause = await_server(self, ready_ms)
  local died = false
  if ok then
    for attempt = 1, 3 do
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
      if ok or attempt == 3 or (attempt == 2 and not died) then
        break
      end
      if cause == "died" and not died then
        -- The server died during the event (SIGKILL, a crash, killed as hung):
        -- the event never finished there, so it runs again, once, on the new
        -- server (a single crash costs no request).
        died = true
        ok, err, cause = await_new_server(self)
        if not ok then
          break
        end
      elseif cause == "no_instance" then
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
  if cause == "restarted" or cause == "died" then
    cause = "connect"
  end
  counters.event(server, phase, clock_us() - started)
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

-- The failure handling below has a twin at the end of log_queue's run_log_event. It stays
-- inline here: moved into a shared function, its return aborted a JIT trace of
-- every request ("NYI: return to lower frame", make jit-aborts).
local hold = log_queue.hold

local function phase_handler(phase)
  return function(self, conf)
    hold(self, phase)
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

-- The plugin object for `info` (a plugin info record: name, PRIORITY, VERSION,
-- schema, phases, server_def), or nil, err.
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
    self[phase] = phase == "log" and log_queue.handler or phase_handler(phase)
  end
  local set = by_name[info.name]
  if not set then
    set = setmetatable({}, { __mode = "k" })
    by_name[info.name] = set
  end
  set[self] = true
  return self
end

return _M
