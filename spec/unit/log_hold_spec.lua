-- plugin.lua's hold on requests while log events pile up: past LOG_HOLD queued log
-- events of a server, a request-phase event of that server waits until the drain
-- timers have brought the queue down to LOG_HOLD / 2, so that the server's work
-- stays in a few connections; only when the drains are quick enough to do that
-- within LOG_HOLD_MS (a slow log phase gets more drain timers instead), never
-- while the server is down (then only the wait for readiness applies).
local stub = require "spec.helpers.ngx_stub"

-- A stand-in for ngx.semaphore: wait() yields the calling coroutine (as a light
-- thread would sleep); post(n) marks up to n waiters runnable; the spec resumes them.
local function fake_semaphore_lib()
  local lib = {}
  function lib.new()
    local s = { resources = 0, waiting = {}, runnable = {}, timeouts = {} }
    function s.wait(self, timeout)
      if self.resources > 0 then
        self.resources = self.resources - 1
        return true
      end
      self.timeouts[#self.timeouts + 1] = timeout
      self.waiting[#self.waiting + 1] = coroutine.running()
      return coroutine.yield("waiting on semaphore")
    end
    function s.post(self, n)
      for _ = 1, n or 1 do
        local co = table.remove(self.waiting, 1)
        if co then
          self.runnable[#self.runnable + 1] = co
        else
          self.resources = self.resources + 1
        end
      end
    end
    function s.count(self)
      return #self.waiting > 0 and -#self.waiting or self.resources
    end
    return s
  end
  return lib
end

describe("requests held while log events pile up", function()
  local saved_ngx, saved_kong = _G.ngx, _G.kong
  local PRELOADED = { "ngx.semaphore", "kong.runloop.plugin_servers.state" }
  local plugin, timers, ngx, server_state, clock

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 2500, max_message_size = 1000, log_window = 0, fail_open = false,
                start_command = "/bin/true" }

  local function unload()
    for k in pairs(package.loaded) do
      if k:find("^kong%.runloop%.plugin_servers%.") and k ~= "kong.runloop.plugin_servers.lib" then
        package.loaded[k] = nil
      end
    end
    for _, k in ipairs(PRELOADED) do
      package.loaded[k] = nil
    end
  end

  setup(function()
    ngx = stub.new()
    timers = {}
    ngx.timer.at = function(_, fn, ...)
      timers[#timers + 1] = { fn = fn, args = { ... } }
      return true
    end
    ngx.socket = { tcp = function() end }
    ngx.ctx = {}
    ngx.config.subsystem = "stream"
    _G.ngx = ngx
    _G.kong = { log = { serialize = function() return {} end }, ctx = { shared = {} } }
    unload()
  end)

  teardown(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    unload()
  end)

  before_each(function()
    for i = #timers, 1, -1 do timers[i] = nil end
    unload()
    server_state = "ready"
    clock = 1000
    ngx.now = function() return clock end
    package.loaded["ngx.semaphore"] = fake_semaphore_lib()
    package.loaded["kong.runloop.plugin_servers.state"] = {
      get = function(name)
        return { name = name, state = server_state, pid = 42 }
      end,
      wait_ready = function() return 42 end,
    }
    plugin = require "kong.runloop.plugin_servers.plugin"
  end)

  local conf = { __plugin_id = "x", __seq__ = 1 }

  -- A plugin with access and log phases whose events are recorded; a log event
  -- yields once (its connection in use) before it ends.
  local function new_plugin()
    local p = assert(plugin.new { name = "p", PRIORITY = 1, VERSION = "1", schema = {},
                                  phases = { "access", "log" }, protocol = "MsgPack:1", server_def = def })
    p.ran = {}
    p.run_event = function(_, _, phase)
      if phase == "log" then
        coroutine.yield("log event in flight")
      end
      p.ran[#p.ran + 1] = phase
      return true
    end
    return p
  end

  -- Runs one log event through a drain timer, taking `ms`, so that the queue
  -- knows how long its events take; leaves no timer behind.
  local function warm(p, ms)
    p:log(conf)
    local t = table.remove(timers)
    local co = coroutine.create(t.fn)
    assert(coroutine.resume(co, false, unpack(t.args)))
    clock = clock + ms / 1000
    assert(coroutine.resume(co))
    assert.equal("dead", coroutine.status(co))
    p.ran = {}
  end

  local function count(list, what)
    local n = 0
    for _, v in ipairs(list) do
      if v == what then n = n + 1 end
    end
    return n
  end

  it("runs a request's event at once below LOG_HOLD queued log events", function()
    local p = new_plugin()
    warm(p, 2)
    for _ = 1, plugin.LOG_HOLD - 1 do
      p:log(conf)
    end
    local co = coroutine.create(p.access)
    assert(coroutine.resume(co, p, conf))
    assert.equal("dead", coroutine.status(co))
    assert.same({ "access" }, p.ran)
  end)

  -- Captures the semaphore the plugin module creates for the server's queue.
  local function capture_semaphore()
    local lib = package.loaded["ngx.semaphore"]
    local orig, captured = lib.new, {}
    lib.new = function()
      local s = orig()
      captured[#captured + 1] = s
      return s
    end
    return captured
  end

  it("holds a request past LOG_HOLD until the drains bring the queue to half, then runs it", function()
    local semas = capture_semaphore()
    local p = new_plugin()
    warm(p, 2)
    for _ = 1, plugin.LOG_HOLD do
      p:log(conf)
    end
    assert.is_true(plugin.LOG_HOLD < plugin.LOG_BACKLOG, "the hold comes before extra drain timers")
    local request = coroutine.create(p.access)
    local _, why = coroutine.resume(request, p, conf)
    assert.equal("waiting on semaphore", why)
    assert.equal(0, count(p.ran, "access"))
    assert.equal(1, #semas)
    local sema = semas[1]

    -- one drain timer takes the queued events one at a time
    local drain = coroutine.create(timers[1].fn)
    assert(coroutine.resume(drain, false, unpack(timers[1].args)))
    local queued = plugin.LOG_HOLD - 1 -- it took the first one
    while queued > plugin.LOG_HOLD / 2 do
      -- still above half: the request stays held
      assert.equal(0, #sema.runnable)
      assert(coroutine.resume(drain)) -- ends one event, takes the next
      queued = queued - 1
    end
    -- down to half: the held request was woken, and ran nothing before
    assert.equal(1, #sema.runnable)
    assert.equal(request, sema.runnable[1])
    assert.equal(0, count(p.ran, "access"))
    assert(coroutine.resume(request, true))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("waits at most twice LOG_HOLD_MS", function()
    local semas = capture_semaphore()
    local p = new_plugin()
    warm(p, 2)
    for _ = 1, plugin.LOG_HOLD do
      p:log(conf)
    end
    local request = coroutine.create(p.access)
    assert(coroutine.resume(request, p, conf))
    assert.same({ 2 * plugin.LOG_HOLD_MS / 1000 }, semas[1].timeouts)
    -- the wait timed out (nil, "timeout"): the event runs anyway
    assert(coroutine.resume(request, nil, "timeout"))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("does not hold a request when the drains are slow to halve the queue: more drain timers instead", function()
    local p = new_plugin()
    -- log events of 100 ms: two drains need 200 ms to take four events
    warm(p, 100)
    for _ = 1, plugin.LOG_HOLD do
      p:log(conf)
    end
    local request = coroutine.create(p.access)
    assert(coroutine.resume(request, p, conf))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
    -- the queue keeps growing: past the backlog it gets more drain timers
    for _ = 1, plugin.LOG_BACKLOG + plugin.LOG_CONNECTIONS do
      p:log(conf)
    end
    assert.is_true(#timers > plugin.LOG_CONNECTIONS)
  end)

  it("does not hold before any log event of the server has ended (nothing to go by)", function()
    local p = new_plugin()
    for _ = 1, plugin.LOG_HOLD do
      p:log(conf)
    end
    local request = coroutine.create(p.access)
    assert(coroutine.resume(request, p, conf))
    assert.equal("dead", coroutine.status(request))
  end)

  it("does not hold a request while its server is down (only the wait for readiness applies)", function()
    local p = new_plugin()
    warm(p, 2)
    for _ = 1, plugin.LOG_HOLD + 4 do
      p:log(conf)
    end
    server_state = "restarting"
    local request = coroutine.create(p.access)
    assert(coroutine.resume(request, p, conf))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("does not hold log events themselves", function()
    local p = new_plugin()
    for _ = 1, plugin.LOG_HOLD + 4 do
      local co = coroutine.create(p.log)
      assert(coroutine.resume(co, p, conf))
      assert.equal("dead", coroutine.status(co))
    end
  end)
end)
