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
    local ok, err = we.post("plugin_server", "reset_instances", { plugin_name = self.name })
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
    if p then
      p:reset_instances()
    end
  end, "plugin_server", "reset_instances")
  events_registered = true
  return true
end

-- Instances are lost when the supervisor reports a new server pid.
local function check_server_pid(self)
  local socket = require "kong.runloop.plugin_servers.rpc.socket"
  local pid = socket.server_pid(self.server_def)
  if pid and self.known_pid and pid ~= self.known_pid then
    self:reset_instances("server " .. self.server_def.name .. " restarted (pid " .. pid .. ")")
  end
  self.known_pid = pid or self.known_pid
end

-- Runs one event; returns true or nil, err, cause.
function Plugin:run_event(conf, phase, saved)
  if not events_registered then
    _M.register_events()
  end
  check_server_pid(self)
  local server = self.server_def.name
  update_time()
  local started = now()
  local ok, err, cause
  for attempt = 1, 2 do
    local id
    id, err, cause = self.instances:get(conf)
    if id then
      local stats
      ok, err, cause, stats = self.rpc:handle_event(id, phase, dispatch, saved)
      if stats and stats.pdk_calls > 0 then
        counters.incr(server, "pdk_calls", stats.pdk_calls)
      end
    end
    if ok or cause ~= "no_instance" or attempt == 2 then
      break
    end
    counters.incr(server, "errors.no_instance")
    reset_everywhere(self, err)
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
  if cause ~= "no_instance" then
    counters.incr(def.name, "errors." .. cause)
  end
  local skip = def.fail_open
  if skip then
    counters.incr(def.name, "fail_open")
  end
  limiter.log(def.name, cause, def.log_window, ERR, "[pluginserver] plugin ", self.name, " failed in ", phase,
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

local function phase_handler(phase)
  return function(self, conf)
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

local function log_timer(premature, self, conf, saved)
  if premature then
    return
  end
  -- kong.plugin.get_id() and the ctx overrides see the request's ctx.
  ngx.ctx = saved.ngx_ctx
  local ok, res, err, cause = pcall(self.run_event, self, conf, "log", saved)
  if ok and res then
    return
  end
  if not ok then
    err, cause = res, "protocol"
  end
  self:fail("log", err, cause)
end

local function log_handler(self, conf)
  local ok, saved = pcall(pdk.save_request, self.name)
  if not ok then
    return self:fail("log", "cannot save the request data: " .. tostring(saved), "protocol")
  end
  local tok, terr = timer_at(0, log_timer, self, conf, saved)
  if not tok then
    return self:fail("log", "cannot start the log timer: " .. tostring(terr), "protocol")
  end
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
