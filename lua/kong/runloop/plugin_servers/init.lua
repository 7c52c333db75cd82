-- kong.runloop.plugin_servers: Kong's module API over the native engine.
--
-- Keeps Kong's exports and return shapes (start, stop, load_schema, load_plugin) so
-- that kong.init, kong.db.schema.plugin_loader and kong.db.dao.plugins need no
-- change, and adds status() and metrics(). Nothing here raises: Kong calls start/stop from
-- init_worker/exit_worker, where an error crash-loops workers or skips cleanup.

local servers_mod = require "kong.runloop.plugin_servers.servers"
local process = require "kong.runloop.plugin_servers.process"
local plugin = require "kong.runloop.plugin_servers.plugin"
local counters = require "kong.runloop.plugin_servers.counters"
local metrics = require "kong.runloop.plugin_servers.metrics"

local ipairs, pcall, tostring = ipairs, pcall, tostring

local NO_PLUGIN = "no plugin found"

local _M = {}

-- Per process (master, inherited by workers): plugin infos and plugin objects.
-- A failure is kept and returned on every call, never raised.
local infos, infos_err
local plugins = {}

-- parsed once per process, shared with process.start_pluginservers (servers.lua)
local load_servers = servers_mod.get

local function load_infos()
  if infos or infos_err then
    return infos, infos_err
  end
  local defs, err = load_servers()
  if not defs then
    infos_err = err
    return nil, err
  end
  local ok, list, qerr = pcall(process.query, defs)
  if not ok or not list then
    infos_err = "failed loading external plugins: " .. tostring(ok and qerr or list)
    return nil, infos_err
  end
  infos = {}
  for _, info in ipairs(list) do
    infos[info.name] = info
  end
  return infos
end

local function get_info(name)
  local all, err = load_infos()
  if not all then
    return nil, err
  end
  local info = all[name]
  if not info or not info.PRIORITY then
    return nil, NO_PLUGIN
  end
  return info
end

function _M.load_schema(name)
  local info, err = get_info(name)
  if not info then
    return false, err
  end
  return true, info.schema
end

function _M.load_plugin(name)
  local cached = plugins[name]
  if cached then
    return true, cached
  end
  local info, err = get_info(name)
  if not info then
    return false, err
  end
  local ok, obj, perr = pcall(plugin.new, info)
  if not ok or not obj then
    return false, "failed loading external plugin " .. name .. ": " .. tostring(ok and perr or obj)
  end
  plugins[name] = obj
  return true, obj
end

function _M.start()
  -- every worker handles plugin_server/reset_instances, as Kong's start() does
  local rok, rerr = pcall(plugin.register_events)
  if not rok then
    ngx.log(ngx.ERR, "[pluginserver] failed registering worker events: ", tostring(rerr))
  end
  -- the servers of kong.configuration, as process.lua's Kong API starts them
  return process.start_pluginservers()
end

function _M.stop()
  return process.stop_pluginservers()
end

-- Process state (from the supervisor) beside the counters of every worker.
function _M.status()
  local defs, err = load_servers()
  if not defs then
    return nil, err
  end
  local list, serr = process.status(defs)
  if not list then
    return nil, serr
  end
  for _, entry in ipairs(list) do
    entry.counters = counters.get(entry.name)
  end
  return list
end

-- status() in the Prometheus text format (docs/METRICS.md), or nil, err.
function _M.metrics()
  local list, err = _M.status()
  if not list then
    return nil, err
  end
  return metrics.render(list)
end

return _M
