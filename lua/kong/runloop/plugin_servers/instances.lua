-- Plugin instances of one plugin in one worker, keyed like Kong: the plugin id
-- and the config's `__seq__` (PROTOCOL.md §6.3). One StartInstance per config per
-- worker even when many requests arrive together: the first starts it, the others
-- wait on a semaphore (bounded), then share the result. A changed config starts a
-- new instance and closes the old one. Shared by both protocols: `rpc` only needs
-- start_instance(config_json) and close_instance(id).

local cjson = require "cjson.safe"

local ngx = ngx
local log = ngx.log
local DEBUG = ngx.DEBUG
local tostring = tostring
local setmetatable = setmetatable

local semaphore
do
  local ok, mod = pcall(require, "ngx.semaphore")
  semaphore = ok and mod or nil
end

local _M = {}
local Instances = {}
Instances.__index = Instances

-- `wait_ms`: how long a request waits for another one's StartInstance.
function _M.new(plugin_name, rpc, wait_ms, on_start)
  return setmetatable({
    plugin_name = plugin_name, rpc = rpc, wait_ms = wait_ms,
    on_start = on_start, entries = {},
  }, Instances)
end

local function key_of(conf)
  local key = conf.__plugin_id
  if key == nil and kong and kong.plugin and kong.plugin.get_id then
    key = kong.plugin.get_id()
  end
  return tostring(key)
end

local function start(self, key, conf, old)
  local entry = { seq = conf.__seq__, starting = true, sema = semaphore and semaphore.new() }
  self.entries[key] = entry
  local config_json, jerr = cjson.encode(conf)
  local id, err, cause
  if config_json then
    id, err, cause = self.rpc:start_instance(config_json)
  else
    err, cause = "cannot encode the configuration as JSON: " .. tostring(jerr), "protocol"
  end
  entry.starting = false
  if id then
    entry.id = id
    if self.on_start then
      self.on_start()
    end
  else
    entry.err, entry.cause = err, cause
    if self.entries[key] == entry then
      self.entries[key] = nil
    end
  end
  if entry.sema then
    local waiting = entry.sema:count()
    if waiting < 0 then
      entry.sema:post(-waiting)
    end
  end
  if id and old and old.id then
    local ok, cerr = self.rpc:close_instance(old.id)
    if not ok then
      log(DEBUG, "[pluginserver] closing instance #", old.id, " of ", self.plugin_name, ": ", cerr)
    end
  end
  if not id then
    return nil, "starting instance of " .. self.plugin_name .. ": " .. tostring(err), cause
  end
  return id
end

-- The instance id for `conf`, starting it if needed; or nil, err, cause.
function Instances:get(conf)
  local key = key_of(conf)
  local entry = self.entries[key]
  if entry and entry.seq == conf.__seq__ then
    if entry.id then
      return entry.id
    end
    if entry.starting and entry.sema then
      local ok = entry.sema:wait(self.wait_ms / 1000)
      if entry.id then
        return entry.id
      end
      if not ok then
        return nil, "could not claim an instance of " .. self.plugin_name .. " (key: " .. key
          .. "): still starting after " .. self.wait_ms .. " ms", "timeout"
      end
      return nil, "starting instance of " .. self.plugin_name .. ": " .. tostring(entry.err), entry.cause
    end
  end
  return start(self, key, conf, entry)
end

-- Forgets every instance of this worker (the server lost them).
function Instances:reset()
  self.entries = {}
end

function Instances:count()
  local n = 0
  for _, e in pairs(self.entries) do
    if e.id then
      n = n + 1
    end
  end
  return n
end

return _M
