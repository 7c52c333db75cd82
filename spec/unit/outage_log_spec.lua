-- log_queue.lua (the log phase of plugin objects): a server's log events past
-- log_queue_max queued or running per worker are refused (logged once per window,
-- counted as log_refused); at most LOG_CONNECTIONS of one server's log events hold
-- a connection at once per worker unless the climb (log_climb_spec) finds more
-- drains raise the server's throughput (a few drain timers per server, not one
-- timer per event), so that few connections are in use when a server dies.
local stub = require "spec.helpers.ngx_stub"

describe("log events in flight", function()
  local saved_ngx, saved_kong = _G.ngx, _G.kong
  local plugin, log_queue, timers, ngx

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 10, max_message_size = 1000, log_window = 0, fail_open = false }

  setup(function()
    ngx, timers = stub.log_world()
    ngx.shared.kong_plugin_servers = nil
    -- a still clock: no climb window ever ends here
    ngx.now = function() return 1000 end
    stub.unload_shim()
    plugin = require "kong.runloop.plugin_servers.plugin"
    log_queue = require "kong.runloop.plugin_servers.log_queue"
  end)

  teardown(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    stub.unload_shim()
  end)

  local function new_plugin(name, d)
    return assert(plugin.new { name = name or "p", PRIORITY = 1, VERSION = "1", schema = {}, phases = { "log" },
                               protocol = "MsgPack:1", server_def = d or def })
  end

  -- A plugin (on a server with `settings` over the defaults) whose events only
  -- count their runs, in p.runs.
  local function counting_plugin(settings)
    local p = new_plugin("p", settings and setmetatable(settings, { __index = def }))
    p.runs = 0
    p.run_event = function() p.runs = p.runs + 1 return true end
    return p
  end

  local function log_events(p, conf, n)
    for _ = 1, n do
      p:log(conf)
    end
  end

  local function count_logs(text)
    local n = 0
    for _, l in ipairs(ngx.logs) do
      if l.msg:find(text, 1, true) then
        n = n + 1
      end
    end
    return n
  end

  -- Runs a captured timer in a coroutine (as nginx would); returns the coroutine.
  local function fire(t, premature)
    local co = coroutine.create(t.fn)
    assert(coroutine.resume(co, premature or false, unpack(t.args)))
    return co
  end

  before_each(function()
    for i = #timers, 1, -1 do timers[i] = nil end
    for i = #ngx.logs, 1, -1 do ngx.logs[i] = nil end
    -- fresh modules: the queues and counts are per worker (module state)
    package.loaded["kong.runloop.plugin_servers.plugin"] = nil
    package.loaded["kong.runloop.plugin_servers.log_queue"] = nil
    plugin = require "kong.runloop.plugin_servers.plugin"
    log_queue = require "kong.runloop.plugin_servers.log_queue"
  end)

  it("refuses log events past log_queue_max per server and worker: counted, logged once per window", function()
    ngx.shared.kong_plugin_servers = stub.fake_dict()
    local p = counting_plugin { name = "small", log_queue_max = 20, log_window = 1000 }
    local conf = { __plugin_id = "x", __seq__ = 1 }
    log_events(p, conf, 23)
    local counters = require "kong.runloop.plugin_servers.counters"
    assert.equal(3, counters.get("small").log_refused)
    -- the first refusal of the window is logged, the others only counted (one summary later)
    assert.equal(1, count_logs("small: plugin p log event refused: 20 log events of this server already queued"))
    assert.equal(0, count_logs("failed in log"))
    -- drain timers, not one timer per event (and the limiter's summary timer)
    local drains = 0
    for _, t in ipairs(timers) do
      if t.delay == 0 then drains = drains + 1 end
    end
    assert.equal(log_queue.LOG_CONNECTIONS, drains)
    -- a drain timer runs every queued event in turn; places free up
    fire(table.remove(timers, 1))
    assert.equal(20, p.runs)
    p:log(conf)
    assert.equal(3, counters.get("small").log_refused)
    fire(table.remove(timers, 1))
    assert.equal(21, p.runs)
    assert.equal(21, counters.get("small").log_events)
    ngx.shared.kong_plugin_servers = nil
  end)

  it("fails a log event before saving its request when no drain runs and none can start", function()
    local timer_at = ngx.timer.at
    ngx.timer.at = function() return nil, "too many pending timers" end
    package.loaded["kong.runloop.plugin_servers.plugin"] = nil
    package.loaded["kong.runloop.plugin_servers.log_queue"] = nil
    local pdk = require "kong.runloop.plugin_servers.pdk"
    local save = pdk.save_request
    local saves = 0
    pdk.save_request = function(...)
      saves = saves + 1
      return save(...)
    end
    local ok, err = pcall(function()
      plugin = require "kong.runloop.plugin_servers.plugin"
      log_queue = require "kong.runloop.plugin_servers.log_queue"
      -- a queue of one place: a failed event must not keep it
      local p = counting_plugin { name = "one", log_queue_max = 1 }
      local conf = { __plugin_id = "x", __seq__ = 1 }
      log_events(p, conf, 2)
      assert.equal(0, saves)
      assert.equal(0, p.runs)
      assert.equal(2, count_logs("cannot start the log timer"))
      assert.equal(0, count_logs("refused"))
    end)
    ngx.timer.at = timer_at
    pdk.save_request = save
    assert(ok, err)
  end)

  it("fails a log event whose request cannot be saved, and its drain ends with nothing to run", function()
    local pdk = require "kong.runloop.plugin_servers.pdk"
    local save = pdk.save_request
    pdk.save_request = function() error("no request here") end
    local p = counting_plugin { name = "unsaved", log_queue_max = 1 }
    local conf = { __plugin_id = "x", __seq__ = 1 }
    local ok, err = pcall(p.log, p, conf)
    pdk.save_request = save
    assert(ok, err)
    assert.equal(1, count_logs("cannot save the request data: "))
    -- the drain started for it finds nothing and ends
    assert.equal(1, #timers)
    fire(table.remove(timers, 1))
    assert.equal(0, p.runs)
    -- the failed event kept no place (log_queue_max 1): the next one is queued and runs
    p:log(conf)
    assert.equal(0, count_logs("refused"))
    assert.equal(1, #timers)
    fire(table.remove(timers, 1))
    assert.equal(1, p.runs)
  end)

  it("refuses nothing below log_queue_max, whatever the burst", function()
    local p = counting_plugin()
    local conf = { __plugin_id = "x", __seq__ = 1 }
    local n = 3 * 128
    log_events(p, conf, n)
    assert.is_true(n < log_queue.DEFAULT_QUEUE_MAX)
    assert.equal(0, count_logs("refused"))
    assert.equal(log_queue.LOG_CONNECTIONS, #timers)
    fire(table.remove(timers, 1))
    assert.equal(n, p.runs)
  end)

  it("lets at most LOG_CONNECTIONS log events of one server hold a connection at once", function()
    local p = new_plugin()
    local active, max_active, ran = 0, 0, 0
    p.run_event = function(_, _, phase)
      assert.equal("log", phase)
      active = active + 1
      max_active = math.max(max_active, active)
      coroutine.yield() -- the event's connection is in use
      active = active - 1
      ran = ran + 1
      return true
    end
    local conf = { __plugin_id = "x", __seq__ = 1 }
    -- as many as fit under the backlog that would add drain timers
    local n = log_queue.LOG_CONNECTIONS + log_queue.LOG_BACKLOG - 1
    for _ = 1, n do
      p:log(conf)
    end
    assert.equal(log_queue.LOG_CONNECTIONS, #timers)
    local cos = {}
    for _, t in ipairs(timers) do
      cos[#cos + 1] = fire(t)
    end
    -- resume every running drain timer until all events ran
    local guard = 0
    repeat
      local alive = false
      for _, co in ipairs(cos) do
        if coroutine.status(co) == "suspended" then
          alive = true
          assert(coroutine.resume(co))
        end
      end
      guard = guard + 1
    until not alive or guard > 100
    assert.equal(n, ran)
    assert.equal(log_queue.LOG_CONNECTIONS, max_active)
    assert.is_true(log_queue.LOG_CONNECTIONS >= 1 and log_queue.LOG_CONNECTIONS <= 4)
    -- the timers are done: the next event starts a new one
    for i = #timers, 1, -1 do timers[i] = nil end
    p:log(conf)
    assert.equal(1, #timers)
    local co = fire(table.remove(timers))
    assert(coroutine.resume(co))
    assert.equal("dead", coroutine.status(co))
    assert.equal(n + 1, ran)
  end)

  it("adds no drain timer for a backlog alone: more drains come from the climb", function()
    local p = new_plugin()
    p.run_event = function() return true end
    local conf = { __plugin_id = "x", __seq__ = 1 }
    for _ = 1, 10 * log_queue.LOG_BACKLOG do
      p:log(conf)
    end
    assert.equal(log_queue.LOG_CONNECTIONS, #timers)
    assert.is_true(log_queue.MAX_LOG_CONNECTIONS <= 64, "drains share lua_max_running_timers")
  end)

  it("limits per server: another server's log events get their own drain timers", function()
    local other = setmetatable({ name = "srv2" }, { __index = def })
    local a, b = new_plugin("a"), new_plugin("b", other)
    a.run_event = function() return true end
    b.run_event = function() return true end
    local conf = { __plugin_id = "x", __seq__ = 1 }
    for _ = 1, 5 do
      a:log(conf)
      b:log(conf)
    end
    assert.equal(2 * log_queue.LOG_CONNECTIONS, #timers)
    for _, t in ipairs(timers) do
      fire(t)
    end
  end)

  it("bounds the wait for readiness by what is left of ready_timeout after the queue", function()
    local d = setmetatable({ name = "srv3", ready_timeout = 1000 }, { __index = def })
    local clock = 100
    local saved_now = ngx.now
    ngx.now = function() return clock end
    package.loaded["kong.runloop.plugin_servers.plugin"] = nil
    package.loaded["kong.runloop.plugin_servers.log_queue"] = nil -- caches ngx.now
    local ok, fresh = pcall(require, "kong.runloop.plugin_servers.plugin")
    ngx.now = saved_now
    assert(ok, fresh)
    local budgets = {}
    local p = assert(fresh.new { name = "c", PRIORITY = 1, VERSION = "1", schema = {}, phases = { "log" },
                                 protocol = "MsgPack:1", server_def = d })
    p.run_event = function(_, _, _, _, ready_ms)
      budgets[#budgets + 1] = ready_ms
      return true
    end
    p:log({ __plugin_id = "x", __seq__ = 1 })
    clock = 100.6
    p:log({ __plugin_id = "x", __seq__ = 1 })
    clock = 100.7
    fire(timers[1])
    clock = 102
    p:log({ __plugin_id = "x", __seq__ = 1 })
    clock = 103.5
    fire(timers[2])
    assert.equal(3, #budgets)
    assert.near(300, budgets[1], 1e-6)
    assert.near(900, budgets[2], 1e-6)
    -- queued past ready_timeout: no wait left (never negative), a ready server is still used
    assert.equal(0, budgets[3])
  end)

  it("a premature drain (nginx exiting) fails its queued events, logged, and frees their places", function()
    local p = counting_plugin { name = "srv4", log_queue_max = 4 }
    local conf = { __plugin_id = "x", __seq__ = 1 }
    log_events(p, conf, 4)
    fire(table.remove(timers, 1), true)
    assert.equal(0, p.runs)
    assert.matches("failed in log %(connect%): nginx is exiting", ngx.logs[#ngx.logs].msg)
    p:log(conf)
    assert.equal(0, count_logs("refused"))
    fire(table.remove(timers, 1))
    assert.equal(1, p.runs)
  end)
end)
