-- log_queue.lua's back-pressure on requests while log events pile up: past LOG_HOLD
-- waiting log events of a server, a request-phase event of that server waits until
-- the drain timers have brought the queue down to LOG_BACKLOG, at most LOG_HOLD_MS
-- (or read_timeout when smaller), however long the server's log events take; never
-- while the server is down (then only the wait for readiness applies), never in the
-- log phase itself.
local stub = require "spec.helpers.ngx_stub"
local fake_semaphore = require "spec.helpers.fake_semaphore"

describe("requests held while log events pile up", function()
  local saved_ngx, saved_kong = _G.ngx, _G.kong
  local PRELOADED = { "ngx.semaphore", "kong.runloop.plugin_servers.state" }
  local plugin, log_queue, timers, ngx, server_state, clock

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 2500, max_message_size = 1000, log_window = 0, fail_open = false,
                start_command = "/bin/true" }

  setup(function()
    ngx, timers = stub.log_world()
    stub.unload_shim(PRELOADED)
  end)

  teardown(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    stub.unload_shim(PRELOADED)
  end)

  before_each(function()
    for i = #timers, 1, -1 do timers[i] = nil end
    stub.unload_shim(PRELOADED)
    server_state = "ready"
    clock = 1000
    ngx.now = function() return clock end
    package.loaded["ngx.semaphore"] = fake_semaphore.lib()
    package.loaded["kong.runloop.plugin_servers.state"] = {
      get = function(name)
        return { name = name, state = server_state, pid = 42 }
      end,
      wait_ready = function() return 42 end,
    }
    plugin = require "kong.runloop.plugin_servers.plugin"
    log_queue = require "kong.runloop.plugin_servers.log_queue"
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

  -- Starts p's access handler as a request would; its coroutine and what a
  -- yield said (nil when it ran to its end).
  local function start_request(p)
    local co = coroutine.create(p.access)
    local ok, said = coroutine.resume(co, p, conf)
    assert(ok, said)
    return co, said
  end

  local function queue_logs(p, n)
    for _ = 1, n do
      p:log(conf)
    end
  end

  -- A plugin whose log events take `ms` (one measured), with `n` of them queued.
  local function backlogged(ms, n)
    local p = new_plugin()
    warm(p, ms)
    queue_logs(p, n)
    return p
  end

  it("runs a request's event at once below LOG_HOLD waiting log events", function()
    local p = backlogged(2, log_queue.LOG_HOLD - 1)
    local request = start_request(p)
    assert.equal("dead", coroutine.status(request))
    assert.same({ "access" }, p.ran)
  end)

  it("holds a request past LOG_HOLD until the drains bring the queue to LOG_BACKLOG, then runs it", function()
    local semas = package.loaded["ngx.semaphore"].created
    local p = backlogged(2, log_queue.LOG_HOLD)
    assert.is_true(log_queue.LOG_BACKLOG < log_queue.LOG_HOLD)
    local request, why = start_request(p)
    assert.equal("waiting", why)
    assert.equal(0, count(p.ran, "access"))
    assert.equal(1, #semas)
    local sema = semas[1]

    -- one drain timer takes the queued events one at a time
    local drain = coroutine.create(timers[1].fn)
    assert(coroutine.resume(drain, false, unpack(timers[1].args)))
    local queued = log_queue.LOG_HOLD - 1 -- it took the first one
    while queued > log_queue.LOG_BACKLOG do
      -- still above the mark: the request stays held
      assert.equal(0, #sema.runnable)
      assert(coroutine.resume(drain)) -- ends one event, takes the next
      queued = queued - 1
    end
    -- down to the mark: the held request was woken, and ran nothing before
    assert.equal(1, #sema.runnable)
    assert.equal(request, sema.runnable[1])
    assert.equal(0, count(p.ran, "access"))
    assert(coroutine.resume(request, true))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("waits at most LOG_HOLD_MS, then runs the event anyway", function()
    local semas = package.loaded["ngx.semaphore"].created
    local p = backlogged(2, log_queue.LOG_HOLD)
    local request = start_request(p)
    assert.same({ log_queue.LOG_HOLD_MS / 1000 }, semas[1].timeouts)
    -- the wait timed out (nil, "timeout"): the event runs anyway
    assert(coroutine.resume(request, nil, "timeout"))
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("waits at most read_timeout when it is smaller", function()
    local semas = package.loaded["ngx.semaphore"].created
    def.read_timeout = 300
    local ok, err = pcall(function()
      local p = new_plugin()
      queue_logs(p, log_queue.LOG_HOLD)
      start_request(p)
      assert.same({ 0.3 }, semas[1].timeouts)
    end)
    def.read_timeout = 2500
    assert(ok, err)
  end)

  it("holds however long the log events take (a slow log phase is held back too)", function()
    local p = backlogged(500, log_queue.LOG_HOLD)
    local _, why = start_request(p)
    assert.equal("waiting", why)
  end)

  it("holds at half of a small log_queue_max, before any event is refused", function()
    def.log_queue_max = 10
    local ok, err = pcall(function()
      local p = new_plugin()
      queue_logs(p, 5)
      local _, why = start_request(p)
      assert.equal("waiting", why)
    end)
    def.log_queue_max = nil
    assert(ok, err)
  end)

  it("does not hold a request while its server is down (only the wait for readiness applies)", function()
    local p = backlogged(2, log_queue.LOG_HOLD + 4)
    server_state = "restarting"
    local request = start_request(p)
    assert.equal("dead", coroutine.status(request))
    assert.equal(1, count(p.ran, "access"))
  end)

  it("does not hold log events themselves", function()
    local p = new_plugin()
    for _ = 1, log_queue.LOG_HOLD + 4 do
      local co = coroutine.create(p.log)
      assert(coroutine.resume(co, p, conf))
      assert.equal("dead", coroutine.status(co))
    end
  end)
end)
