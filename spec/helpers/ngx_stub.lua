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

return _M
