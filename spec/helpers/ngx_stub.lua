-- A minimal `ngx` for unit specs. Log lines are recorded in `ngx.logs` so that a
-- spec can assert what was logged.
local _M = {}

function _M.new()
  local logs = {}
  local ngx = {
    DEBUG = 8, INFO = 7, NOTICE = 6, WARN = 5, ERR = 4, CRIT = 3, ALERT = 2, EMERG = 1,
    OK = 0, ERROR = -1, HTTP_INTERNAL_SERVER_ERROR = 500,
    null = setmetatable({}, { __tostring = function() return "null" end }),
    logs = logs,
    config = { subsystem = "http", prefix = function() return "/tmp/" end },
    worker = { id = function() return 0 end, pid = function() return 1 end, exiting = function() return false end, count = function() return 1 end },
    shared = {},
    timer = { at = function() return true end, every = function() return true end },
    now = function() return os.time() end,
    update_time = function() end,
    sleep = function() end,
  }
  function ngx.log(level, ...)
    logs[#logs + 1] = { level = level, msg = table.concat({ ... }) }
  end
  return ngx
end

-- A shared dict stand-in with what the shim uses (get, set, add, incr, delete;
-- ttls are ignored). `data` holds its keys.
function _M.fake_dict()
  local data = {}
  local d = { data = data }
  function d:get(k) return data[k] end
  function d:set(k, v) data[k] = v return true end
  function d:add(k, v)
    if data[k] ~= nil then return false, "exists" end
    data[k] = v
    return true
  end
  function d:incr(k, n, init)
    local v = data[k] or init
    if v == nil then return nil, "not found" end
    data[k] = v + n
    return data[k]
  end
  function d:delete(k) data[k] = nil end
  return d
end

-- Makes `ngx.timer.at` record each timer in `timers` ({ delay, fn, args }) instead
-- of running it, so that a spec fires them when it chooses.
function _M.capture_timers(ngx, timers)
  ngx.timer.at = function(delay, fn, ...)
    timers[#timers + 1] = { delay = delay, fn = fn, args = { ... } }
    return true
  end
end

-- The world of the log-queue specs, installed as the globals `ngx` and `kong`: a
-- stub ngx in the stream subsystem, no sockets, timers recorded in `timers` (see
-- capture_timers), and the kong.log.serialize and kong.ctx.shared that saving a
-- request for the log phase reads. Returns ngx, timers.
function _M.log_world()
  local ngx = _M.new()
  local timers = {}
  _M.capture_timers(ngx, timers)
  ngx.socket = { tcp = function() end }
  ngx.ctx = {}
  ngx.config.subsystem = "stream"
  _G.ngx = ngx
  _G.kong = { log = { serialize = function() return {} end }, ctx = { shared = {} } }
  return ngx, timers
end

-- Drops the shim's modules (but the FFI loader, loaded once per process) and
-- `extra` names from package.loaded, so that the next require reads the stubs
-- of this spec.
function _M.unload_shim(extra)
  for k in pairs(package.loaded) do
    if k:find("^kong%.runloop%.plugin_servers%.") and k ~= "kong.runloop.plugin_servers.lib" then
      package.loaded[k] = nil
    end
  end
  for _, k in ipairs(extra or {}) do
    package.loaded[k] = nil
  end
end

return _M
