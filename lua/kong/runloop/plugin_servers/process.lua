-- kong.runloop.plugin_servers.process: plugin info queries and the supervisor of
-- the plugin server processes, both in Rust (src/process); this module adapts.
--
-- query(defs)  -> array of info records { name, PRIORITY, VERSION, schema, phases,
--                 protocol, server_def }, one per plugin, or nil, err
-- start(defs)  -> true   (worker 0 of the http subsystem supervises; never raises)
-- stop()       -> true   (bounded by stop_timeout; never raises)
-- status(defs) -> array of { name, pid, state, restarts, hangs, last_exit, uptime,
--                 standby, standby_pid, promotions } or nil, err
-- `defs` are conf.parse's: query and start hand Rust its parsed configuration
-- (conf.handle_of), never the tables.
--
-- Kong 3.9's exports of this module, with Kong's arguments and results:
-- load_external_plugins_info(kong_conf) -> { [plugin name] = info record } or nil, err
-- start_pluginservers() -> true   (the servers of kong.configuration)
-- stop_pluginservers()  -> true
--
-- The supervisor thread reports through a channel; worker 0 drains it every 10 ms,
-- writes the lines with ngx.log and the states into the shared dict (state.lua).

local ffi = require "ffi"
local cjson = require("cjson.safe").new()
local state = require "kong.runloop.plugin_servers.state"
local shm = require "kong.runloop.plugin_servers.shm"
local conf = require "kong.runloop.plugin_servers.conf"

local require, ipairs, pairs, next, pcall, tonumber = require, ipairs, pairs, next, pcall, tonumber
local tostring, type = tostring, type
local concat = table.concat
local ffi_str = ffi.string

local NULL = cjson.null
-- Period of the drain timer (seconds): readiness shows in the dict within it.
local DRAIN_PERIOD = 0.01
-- Margin on top of the Rust stop bound for the final reports (ms).
local STOP_MARGIN_MS = 500

local _M = {}

local lib -- set by the first query or start that finds the library

local function load_lib()
  local l, err = require("kong.runloop.plugin_servers.lib").optional()
  lib = lib or l
  return l, err
end

local function denull(v)
  if v == NULL then
    return nil
  end
  return v
end

-- The parsed configuration of defs (conf.parse keeps it), or nil, err.
local function config_of(defs)
  local config = type(defs) == "table" and conf.handle_of(defs)
  if not config then
    return nil, "invalid server definitions: not a result of conf.parse"
  end
  return config
end

function _M.query(defs)
  local l, err = load_lib()
  if not l then
    return nil, err
  end
  ngx.log(ngx.NOTICE, "[pluginserver] loading external plugins info")
  local config, cerr = config_of(defs)
  if not config then
    return nil, cerr
  end
  local out = ffi.new("kps_query *[1]")
  local buf, len = l.errbuf()
  local rc = l.C.kps_query_run(config, out, buf, len)
  if rc ~= 0 then
    return nil, l.errmsg()
  end
  local q = ffi.gc(out[0], l.C.kps_query_free)
  local ptr, plen = ffi.new("const uint8_t *[1]"), ffi.new("size_t[1]")
  l.C.kps_query_json(q, ptr, plen)
  local text = ffi_str(ptr[0], plen[0])
  l.C.kps_query_free(ffi.gc(q, nil))

  local list, derr = cjson.decode(text)
  if type(list) ~= "table" then
    return nil, "cannot decode the plugin infos: " .. tostring(derr)
  end
  local infos = {}
  for i, raw in ipairs(list) do
    local def = defs[raw.server]
    -- Kong's callers read the protocol from the server definition too.
    def.protocol = raw.protocol
    infos[i] = {
      name = raw.name,
      PRIORITY = denull(raw.PRIORITY),
      VERSION = denull(raw.VERSION),
      schema = denull(raw.schema),
      phases = denull(raw.phases),
      protocol = raw.protocol,
      server_def = def,
    }
  end
  ngx.log(ngx.NOTICE, "[pluginserver] loaded #", #infos, " external plugins info")
  return infos
end

-- Supervisor of this worker (worker 0 only).
local supervising = false -- start() succeeded here
local finished = false    -- the supervisor reported "done"
local stopping = false
local timer_running = false
local my_pid

local out_ptr, out_len

-- Moves pending reports into the log and the dict; returns how many there were.
local function drain()
  local l = lib
  if not out_ptr then
    out_ptr, out_len = ffi.new("const uint8_t *[1]"), ffi.new("size_t[1]")
  end
  local n = l.C.kps_supervisor_drain(out_ptr, out_len)
  if n <= 0 then
    return 0
  end
  local reports = cjson.decode(ffi_str(out_ptr[0], out_len[0]))
  if type(reports) ~= "table" then
    ngx.log(ngx.ERR, "[pluginserver] undecodable supervisor reports")
    return n
  end
  for _, r in ipairs(reports) do
    local kind = r.kind
    if kind == "log" then
      ngx.log(r.level, r.msg)
    elseif kind == "state" then
      -- absent fields come as JSON null; state.set picks the fields it stores
      for k, v in pairs(r) do
        if v == NULL then
          r[k] = nil
        end
      end
      state.set(r.name, r, my_pid)
    elseif kind == "done" then
      finished = true
    end
  end
  return n
end

local function drain_all()
  for _ = 1, 100 do
    if drain() == 0 then
      return
    end
  end
end

local function stop_bound_ms()
  return tonumber(lib.C.kps_supervisor_stop_bound_ms()) + STOP_MARGIN_MS
end

-- Stops from a timer: asks, then drains every 10 ms until done (bounded).
local function stop_in_timer()
  if stopping or finished then
    return
  end
  stopping = true
  lib.C.kps_supervisor_stop(0)
  local deadline = ngx.now() + stop_bound_ms() / 1000
  while not finished do
    drain_all()
    ngx.update_time()
    if finished or ngx.now() >= deadline then
      break
    end
    local ok = pcall(ngx.sleep, DRAIN_PERIOD)
    if not ok then
      break
    end
  end
  if not finished then
    lib.C.kps_supervisor_stop(stop_bound_ms())
    drain_all()
  end
end

local function drain_timer(premature)
  if premature or ngx.worker.exiting() then
    -- A reload or quit: stop now, not at the end of the graceful shutdown, so
    -- that the new worker 0 can take over the sockets.
    local ok, err = pcall(stop_in_timer)
    if not ok then
      ngx.log(ngx.ERR, "[pluginserver] failed stopping plugin servers: ", tostring(err))
    end
    return
  end
  local ok, err = pcall(drain_all)
  if not ok then
    ngx.log(ngx.ERR, "[pluginserver] failed draining supervisor reports: ", tostring(err))
  end
end

function _M.start(defs)
  if ngx.config.subsystem ~= "http" or ngx.worker.id() ~= 0 then
    return true
  end
  if supervising then
    return true
  end
  local l, err = load_lib()
  if not l then
    ngx.log(ngx.ERR, "[pluginserver] cannot start plugin servers: ", err)
    return true
  end
  local managed = {}
  local dict_ok, dict_err = state.dict()
  if not dict_ok then
    ngx.log(ngx.ERR, "[pluginserver] ", dict_err)
  else
    ngx.log(ngx.NOTICE, "[pluginserver] ", shm.describe(defs))
  end
  my_pid = ngx.worker.pid()
  local old = state.claim(my_pid, defs)
  -- the supervisor runs the managed servers and watches the external ones for
  -- hangs (hang_timeout)
  local supervised = {}
  for _, def in ipairs(defs) do
    if def.start_command then
      managed[#managed + 1] = def
      supervised[#supervised + 1] = def
    else
      state.set(def.name, { state = "external" }, my_pid)
      if (tonumber(def.hang_timeout) or 0) > 0 then
        supervised[#supervised + 1] = def
      end
    end
  end
  if #supervised == 0 then
    return true
  end

  -- Lines the error log would not print (server output is logged at info) stay in Rust.
  local errlog_ok, errlog = pcall(require, "ngx.errlog")
  if errlog_ok and type(errlog) == "table" and errlog.get_sys_filter_level then
    local ok_level, level = pcall(errlog.get_sys_filter_level)
    if ok_level and type(level) == "number" then
      l.C.kps_supervisor_set_log_level(level)
    end
  end

  local config, cerr = config_of(defs)
  -- the hang watch asks each server in its own protocol (the info query's finding)
  local protocols = {}
  for _, def in ipairs(supervised) do
    protocols[def.name] = def.protocol
  end
  local protocols_json = next(protocols) and cjson.encode(protocols) or ""
  local old_json = next(old) and cjson.encode(old) or ""
  local buf, len = l.errbuf()
  local rc = config and l.C.kps_supervisor_start(config, protocols_json, #protocols_json,
                                                                   old_json, #old_json, buf, len) or -1
  if rc < 0 then
    local msg = cerr or l.errmsg()
    for _, def in ipairs(managed) do
      ngx.log(ngx.ERR, "[pluginserver] cannot start pluginserver '", def.name, "': ", msg)
      state.set(def.name, { state = "failed" }, my_pid)
    end
    return true
  end
  if rc == 1 then
    ngx.log(ngx.NOTICE, "[pluginserver] the supervisor of this process is already running")
  end
  supervising, finished, stopping = true, false, false
  if not timer_running then
    local ok, terr = ngx.timer.every(DRAIN_PERIOD, drain_timer)
    if ok then
      timer_running = true
    else
      ngx.log(ngx.ERR, "[pluginserver] cannot create the supervisor drain timer: ", tostring(terr))
    end
  end
  return true
end

function _M.stop()
  if not supervising or not lib then
    return true
  end
  if not finished then
    stopping = true
    lib.C.kps_supervisor_stop(stop_bound_ms())
  end
  drain_all()
  supervising = false
  return true
end

function _M.status(defs)
  return state.status(defs)
end

-- ---- Kong's API ---------------------------------------------------------------

-- Kong's load_external_plugins_info: the plugins of every server of `kong_conf` (a
-- configuration as Kong's conf loader makes it, or any table of settings conf.parse
-- reads), keyed by plugin name; nil, err on a configuration or query failure.
-- A plugin name served twice is an error here (Kong kept the last one silently).
function _M.load_external_plugins_info(kong_conf)
  -- `defs, warnings` or `nil, errors, warnings`
  local defs, second = conf.parse(kong_conf)
  if not defs then
    return nil, "invalid plugin server configuration: " .. concat(second or {}, "; ")
  end
  for _, w in ipairs(second or {}) do
    ngx.log(ngx.WARN, "[pluginserver] ", w)
  end
  local list, err = _M.query(defs)
  if not list then
    return nil, err
  end
  local by_name = {}
  for _, info in ipairs(list) do
    by_name[info.name] = info
  end
  return by_name
end

-- Kong's start_pluginservers: starts the servers of kong.configuration (parsed
-- once per process, as load_plugin sees them). Never raises; returns true.
function _M.start_pluginservers()
  local ok, defs, err = pcall(function()
    return require("kong.runloop.plugin_servers.servers").get()
  end)
  if not ok or not defs then
    ngx.log(ngx.ERR, "[pluginserver] ", tostring(ok and err or defs))
    return true
  end
  local sok, serr = pcall(_M.start, defs)
  if not sok then
    ngx.log(ngx.ERR, "[pluginserver] failed starting plugin servers: ", tostring(serr))
  end
  return true
end

-- Kong's stop_pluginservers. Never raises; returns true.
function _M.stop_pluginservers()
  local ok, err = pcall(_M.stop)
  if not ok then
    ngx.log(ngx.ERR, "[pluginserver] failed stopping plugin servers: ", tostring(err))
  end
  return true
end

-- For specs: drain now (worker 0).
_M._drain = function()
  if lib and supervising then
    drain_all()
  end
end

return _M
