-- Plugin instances of one plugin in one worker, keyed like Kong: the plugin id
-- and the config's `__seq__` (docs/PROTOCOL.md §6, Instances). One StartInstance per config per
-- worker even when many requests arrive together: the first starts it, the others
-- wait on a semaphore (bounded), then share the result. A changed config starts a
-- new instance and closes the old one. Shared by both protocols: `rpc` only needs
-- start_instance(config_json) and close_instance(id).
--
-- Bounded: the shim never learns that a plugin entity left the configuration, so
-- an instance counts as gone when it went unused while KEEP_GENERATIONS newer
-- instances of the same plugin were started in this worker (each start is a new
-- configuration seen); it is then closed on the server and forgotten. A plugin
-- still configured simply starts again on its next use, as every plugin does in
-- Kong after a configuration rebuild (new `__seq__`). docs/SECURITY.md.

local cjson = require "cjson.safe"

local ngx, tostring, pairs, setmetatable = ngx, tostring, pairs, setmetatable

local semaphore
do
  local ok, mod = pcall(require, "ngx.semaphore")
  semaphore = ok and mod or nil
end

-- Generations an unused instance survives, and how many one start closes at
-- most (the rest wait for the next start, keeping the request's extra work small).
local KEEP_GENERATIONS = 16
local CLOSE_PER_START = 8

local _M = { KEEP_GENERATIONS = KEEP_GENERATIONS, CLOSE_PER_START = CLOSE_PER_START }
local Instances = {}
Instances.__index = Instances

-- `wait_ms`: how long a request waits for another one's StartInstance.
function _M.new(plugin_name, rpc, wait_ms, on_start)
  return setmetatable({
    plugin_name = plugin_name, rpc = rpc, wait_ms = wait_ms,
    on_start = on_start, entries = {}, generation = 0,
  }, Instances)
end

local function key_of(conf)
  local key = conf.__plugin_id
  if key == nil and kong and kong.plugin and kong.plugin.get_id then
    key = kong.plugin.get_id()
  end
  return tostring(key)
end

local function close(self, id, why)
  local ok, err = self.rpc:close_instance(id)
  if not ok then
    ngx.log(ngx.DEBUG, "[pluginserver] closing instance #", id, " of ", self.plugin_name, " (", why, "): ", err)
  end
end

-- Closes and forgets instances unused for KEEP_GENERATIONS starts (not `keep`).
-- The stale ones are taken out first: closing yields, and other requests may
-- add entries meanwhile.
local function sweep(self, keep)
  local oldest = self.generation - KEEP_GENERATIONS
  local stale, n = {}, 0
  for key, e in pairs(self.entries) do
    if e ~= keep and e.id and e.used <= oldest then
      n = n + 1
      stale[n] = e
      self.entries[key] = nil
      if n >= CLOSE_PER_START then
        break
      end
    end
  end
  for i = 1, n do
    close(self, stale[i].id, "unused")
  end
end

local function start(self, key, conf, old)
  self.generation = self.generation + 1
  local entry = { seq = conf.__seq__, starting = true, sema = semaphore and semaphore.new(),
                  used = self.generation }
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
    close(self, old.id, "config changed")
  end
  if id then
    sweep(self, entry)
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
      entry.used = self.generation
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

-- Instances this worker holds (started ones).
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
