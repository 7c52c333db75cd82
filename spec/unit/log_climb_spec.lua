-- log_queue.lua's climb: while a server's log events wait, the number of drain
-- timers (connections) grows as long as more of them raise the server's
-- completions per second, and shrinks again when they stop helping. Simulated
-- time: a stand-in server runs up to `parallel` events at once in `service_ms`
-- each, and slows in proportion beyond that (a CPU-bound server).
local stub = require "spec.helpers.ngx_stub"

describe("log drains climb to the server's parallelism", function()
  local saved_ngx, saved_kong = _G.ngx, _G.kong
  local PRELOADED = { "kong.runloop.plugin_servers.state" }
  local ngx, timers, clock

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 2500, max_message_size = 1000, log_window = 0, fail_open = false,
                log_queue_max = 100000 }

  setup(function()
    ngx, timers = stub.log_world()
  end)

  teardown(function()
    _G.ngx, _G.kong = saved_ngx, saved_kong
    stub.unload_shim(PRELOADED)
  end)

  -- A simulation: `server` = { parallel, service_ms } (may change between runs).
  local function simulation(server)
    stub.unload_shim(PRELOADED)
    for i = #timers, 1, -1 do timers[i] = nil end
    clock = 1000
    ngx.now = function() return clock end
    package.loaded["kong.runloop.plugin_servers.state"] = {
      get = function(name) return { name = name, state = "ready", pid = 42 } end,
      wait_ready = function() return 42 end,
    }
    local plugin = require "kong.runloop.plugin_servers.plugin"
    local p = assert(plugin.new { name = "p", PRIORITY = 1, VERSION = "1", schema = {}, phases = { "log" },
                                  protocol = "MsgPack:1", server_def = def })
    local sim = { in_flight = {}, queued = 0, started = 0, done = 0, most = 0 }
    p.run_event = function()
      sim.started = sim.started + 1
      local n = #sim.in_flight + 1
      local ms = server.service_ms * math.max(1, n / server.parallel)
      sim.in_flight[n] = { co = coroutine.running(), due = clock + ms / 1000 }
      sim.most = math.max(sim.most, n)
      coroutine.yield()
      sim.done = sim.done + 1
      return true
    end
    local conf = { __plugin_id = "x", __seq__ = 1 }

    -- Runs `seconds` of simulated time in 0.5 ms ticks, the queue kept 40 events long
    -- (the drains always behind); returns the completions per second.
    function sim.run(seconds)
      local done0, t_end = sim.done, clock + seconds
      sim.most = 0
      while clock < t_end do
        while sim.queued - sim.started < 40 do
          sim.queued = sim.queued + 1
          p:log(conf)
        end
        while #timers > 0 do
          local t = table.remove(timers, 1)
          assert(coroutine.resume(coroutine.create(t.fn), false, unpack(t.args)))
        end
        clock = clock + 0.0005
        local due = {}
        for i = #sim.in_flight, 1, -1 do
          if sim.in_flight[i].due <= clock then
            due[#due + 1] = table.remove(sim.in_flight, i).co
          end
        end
        for _, co in ipairs(due) do
          assert(coroutine.resume(co))
        end
      end
      return (sim.done - done0) / seconds
    end
    return sim
  end

  it("grows to use a server that runs events in parallel, and gets its throughput", function()
    local server = { parallel = 8, service_ms = 4 }
    local sim = simulation(server)
    sim.run(10)
    local rate = sim.run(5)
    -- 8 events at once, 4 ms each: 2000/s; 2 drains alone would give 500/s
    assert.is_true(rate > 1600, "rate " .. rate)
    assert.is_true(sim.most >= 7, "most drains " .. sim.most)
    -- and not far past what helps
    assert.is_true(sim.most <= 16, "most drains " .. sim.most)
  end)

  it("stays near LOG_CONNECTIONS for a server that runs one event at a time", function()
    local log_queue = require "kong.runloop.plugin_servers.log_queue"
    local sim = simulation { parallel = 1, service_ms = 1 }
    sim.run(10)
    local rate = sim.run(5)
    assert.is_true(rate > 900, "rate " .. rate)
    assert.is_true(sim.most <= log_queue.LOG_CONNECTIONS + 2, "most drains " .. sim.most)
  end)

  it("shrinks again when more drains stop helping", function()
    local log_queue = require "kong.runloop.plugin_servers.log_queue"
    local server = { parallel = 8, service_ms = 4 }
    local sim = simulation(server)
    sim.run(10)
    assert.is_true(sim.most >= 7, "most drains " .. sim.most)
    -- the server now runs one event at a time: the drains come down
    server.parallel = 1
    sim.run(20)
    sim.run(5)
    assert.is_true(sim.most <= log_queue.LOG_CONNECTIONS + 3, "most drains " .. sim.most)
  end)
end)
