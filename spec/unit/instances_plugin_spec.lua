-- instances.lua (one StartInstance per config per worker, waiters, config change)
-- and plugin.lua (objects, failure rules, no-instance retry) with fake RPCs.
local stub = require "spec.helpers.ngx_stub"
local semaphores = require("spec.helpers.fake_semaphore").lib()
package.loaded["ngx.semaphore"] = semaphores
-- coroutines a fake semaphore post woke up
local pending = semaphores.runnable

local function fake_rpc()
  local rpc = { starts = {}, closes = {}, events = {}, next_id = 10, script = {} }
  function rpc:start_instance(json)
    self.starts[#self.starts + 1] = json
    if self.yield_on_start then
      coroutine.yield("starting")
    end
    if self.fail_start then
      return nil, "boom", "connect"
    end
    self.next_id = self.next_id + 1
    return self.next_id
  end
  function rpc:close_instance(id)
    self.closes[#self.closes + 1] = id
    return true
  end
  function rpc:handle_event(id, phase, dispatch, saved)
    self.events[#self.events + 1] = { id = id, phase = phase, saved = saved }
    if self.on_event then
      self.on_event(#self.events)
    end
    local r = table.remove(self.script, 1) or { true }
    return r[1], r[2], r[3], { pdk_calls = 0 }
  end
  return rpc
end

describe("instances", function()
  local instances_mod

  setup(function()
    package.loaded["kong.runloop.plugin_servers.instances"] = nil
    instances_mod = require "kong.runloop.plugin_servers.instances"
  end)

  before_each(function()
    for i = #pending, 1, -1 do pending[i] = nil end
  end)

  it("starts one instance per config and reuses it", function()
    local rpc = fake_rpc()
    local inst = instances_mod.new("p", rpc, 1000)
    local conf = { __plugin_id = "id1", __seq__ = 1, message = "x" }
    assert.equal(11, inst:get(conf))
    assert.equal(11, inst:get(conf))
    assert.equal(1, #rpc.starts)
    assert.matches('"message":"x"', rpc.starts[1], 1, true)
    assert.matches('"__seq__":1', rpc.starts[1], 1, true)
    -- another plugin entity gets its own
    assert.equal(12, inst:get({ __plugin_id = "id2", __seq__ = 1 }))
  end)

  it("starts a new instance for a changed config and closes the old one", function()
    local rpc = fake_rpc()
    local inst = instances_mod.new("p", rpc, 1000)
    assert.equal(11, inst:get({ __plugin_id = "id1", __seq__ = 1 }))
    assert.equal(12, inst:get({ __plugin_id = "id1", __seq__ = 2 }))
    assert.same({ 11 }, rpc.closes)
    assert.equal(1, inst:count())
  end)

  it("lets concurrent requests wait for the one StartInstance", function()
    local rpc = fake_rpc()
    rpc.yield_on_start = true
    local inst = instances_mod.new("p", rpc, 1000)
    local conf = { __plugin_id = "id1", __seq__ = 1 }
    local results = {}
    local a = coroutine.create(function() results.a = inst:get(conf) end)
    local b = coroutine.create(function() results.b = inst:get(conf) end)
    assert.same({ true, "starting" }, { coroutine.resume(a) })
    assert.same({ true, "waiting" }, { coroutine.resume(b) })
    assert.is_true(coroutine.resume(a))
    assert.equal(1, #pending)
    assert.is_true(coroutine.resume(pending[1], true))
    assert.equal(11, results.a)
    assert.equal(11, results.b)
    assert.equal(1, #rpc.starts)
  end)

  it("reports a failed start to every waiter and forgets it", function()
    local rpc = fake_rpc()
    rpc.fail_start = true
    local inst = instances_mod.new("p", rpc, 1000)
    local id, err, cause = inst:get({ __plugin_id = "id1", __seq__ = 1 })
    assert.is_nil(id)
    assert.equal("starting instance of p: boom", err)
    assert.equal("connect", cause)
    rpc.fail_start = false
    assert.equal(11, inst:get({ __plugin_id = "id1", __seq__ = 1 }))
  end)

  it("forgets everything on reset", function()
    local rpc = fake_rpc()
    local inst = instances_mod.new("p", rpc, 1000)
    inst:get({ __plugin_id = "id1", __seq__ = 1 })
    inst:reset()
    assert.equal(12, inst:get({ __plugin_id = "id1", __seq__ = 1 }))
  end)
end)

describe("plugin objects", function()
  local plugin, exits, posted

  local def = { name = "srv", socket = "/tmp/none.socket", connect_timeout = 10, send_timeout = 10,
                read_timeout = 10, max_message_size = 1000, log_window = 0, fail_open = false }

  local function info(protocol, phases, d)
    return { name = "p", PRIORITY = 5, VERSION = "1.0", schema = { name = "p" }, phases = phases or { "access" },
             protocol = protocol, server_def = d or def }
  end

  setup(function()
    ngx.socket = ngx.socket or { tcp = function() end }
    stub.unload_shim()
    plugin = require "kong.runloop.plugin_servers.plugin"
  end)

  before_each(function()
    exits, posted = {}, {}
    for i = #ngx.logs, 1, -1 do ngx.logs[i] = nil end
    _G.kong = {
      response = { exit = function(status, body) exits[#exits + 1] = { status, body } end },
      worker_events = {
        register = function() return true end,
        post = function(src, ev, data) posted[#posted + 1] = { src, ev, data.plugin_name } return true end,
      },
    }
    ngx.exit = function(code) exits[#exits + 1] = { "ngx.exit", code } end
    ngx.headers_sent = false
  end)

  after_each(function()
    _G.kong = nil
  end)

  it("has Kong's fields and one handler per phase", function()
    local p = assert(plugin.new(info("MsgPack:1", { "access", "rewrite", "log" })))
    assert.equal("p", p.name)
    assert.equal(5, p.PRIORITY)
    assert.equal("1.0", p.VERSION)
    assert.same({ name = "p" }, p.schema)
    assert.is_function(p.access)
    assert.is_function(p.rewrite)
    assert.is_function(p.log)
    assert.is_nil(p.response)
  end)

  it("fails at load time for an unknown protocol; ProtoBuf:1 loads pb_rpc", function()
    assert.same({ nil, "unknown protocol implementation: Carrier:1" }, { plugin.new(info("Carrier:1")) })
    local p, err = plugin.new(info("ProtoBuf:1"))
    assert.is_nil(err)
    assert.equal(require("kong.runloop.plugin_servers.rpc.pb_rpc").new(p.server_def, "x").handle_event,
                 p.rpc.handle_event)
  end)

  local function with_rpc(p, script)
    local rpc = fake_rpc()
    rpc.script = script or {}
    p.rpc = rpc
    p.instances.rpc = rpc
    return rpc
  end

  it("answers 500 in access when the server fails, and only logs in the log path", function()
    local p = assert(plugin.new(info("MsgPack:1")))
    with_rpc(p, { { nil, "read failed: timeout", "timeout" } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.same({ { 500, { message = "An unexpected error occurred" } } }, exits)
    assert.matches("plugin p failed in access %(timeout%): read failed: timeout", ngx.logs[#ngx.logs].msg)
    exits = {}
    with_rpc(p, { { nil, "closed", "connect" } })
    p:fail("log", "closed", "connect")
    assert.same({}, exits)
  end)

  it("aborts the handshake in certificate and leaves a sent response alone", function()
    local p = assert(plugin.new(info("MsgPack:1", { "certificate", "response" })))
    with_rpc(p, { { nil, "x", "protocol" }, { nil, "y", "protocol" } })
    p:certificate({ __plugin_id = "x", __seq__ = 1 })
    assert.same({ { "ngx.exit", ngx.ERROR } }, exits)
    exits = {}
    ngx.headers_sent = true
    p:response({ __plugin_id = "x", __seq__ = 1 })
    assert.same({}, exits)
  end)

  it("skips with fail_open", function()
    local d = setmetatable({ fail_open = true }, { __index = def })
    local p = assert(plugin.new(info("MsgPack:1", nil, d)))
    with_rpc(p, { { nil, "refused", "connect" } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.same({}, exits)
    assert.matches("skipped %(fail_open%)", ngx.logs[#ngx.logs].msg)
  end)

  it("re-creates the instance and retries once on 'no plugin instance'", function()
    local p = assert(plugin.new(info("MsgPack:1")))
    local rpc = with_rpc(p, { { nil, "no plugin instance #11", "no_instance" }, { true } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.same({}, exits)
    assert.equal(2, #rpc.starts)
    assert.same({ 11, 12 }, { rpc.events[1].id, rpc.events[2].id })
    assert.same({ { "plugin_server", "reset_instances", "p" } }, posted)
    -- not recursively: a second loss fails the request
    rpc = with_rpc(p, { { nil, "no plugin instance #1", "no_instance" }, { nil, "no plugin instance #2", "no_instance" },
                        { true } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.equal(2, #rpc.events)
    assert.same({ 500 }, { exits[1][1] })
  end)

  it("runs an event again, once, on the new server when its server died during it", function()
    ngx.shared.kong_plugin_servers = stub.fake_dict()
    finally(function() ngx.shared.kong_plugin_servers = nil end)
    local state = require "kong.runloop.plugin_servers.state"
    local d = setmetatable({ start_command = "/bin/srv", ready_timeout = 50 }, { __index = def })
    local p = assert(plugin.new(info("MsgPack:1", nil, d)))
    state.set("srv", { state = "ready", pid = 7 })
    local rpc = with_rpc(p, { { true } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.equal(7, p.known_pid)
    rpc = with_rpc(p, { { nil, "read from srv failed: connection reset by peer", "died" }, { true } })
    -- the supervisor has respawned it by the time the event failed
    rpc.on_event = function(n) if n == 1 then state.set("srv", { state = "ready", pid = 8 }) end end
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.same({}, exits, ngx.logs[#ngx.logs] and ngx.logs[#ngx.logs].msg)
    assert.equal(2, #rpc.events)
    assert.equal(1, #rpc.starts, "a new instance on the new server")
    assert.equal(8, p.known_pid)
    -- a second death in the same event fails it (cause connect)
    rpc = with_rpc(p, { { nil, "reset", "died" }, { nil, "reset again", "died" }, { true } })
    rpc.on_event = function(n) state.set("srv", { state = "ready", pid = 8 + n }) end
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.equal(2, #rpc.events)
    assert.same({ 500 }, { exits[1][1] })
    assert.matches("failed in access %(connect%): reset again", ngx.logs[#ngx.logs].msg)
    -- no new process within ready_timeout: fails with the wait's message
    exits = {}
    rpc = with_rpc(p, { { nil, "reset", "died" }, { true } })
    p:access({ __plugin_id = "x", __seq__ = 1 })
    assert.equal(1, #rpc.events)
    assert.same({ 500 }, { exits[1][1] })
    assert.matches("%(pid 10%) died during the event and no new process was ready after 50 ms",
      ngx.logs[#ngx.logs].msg)
  end)

  it("never lets a Lua error escape a handler", function()
    local p = assert(plugin.new(info("MsgPack:1")))
    local rpc = with_rpc(p)
    function rpc.handle_event() error("kaboom") end
    assert.has_no.errors(function() p:access({ __plugin_id = "x", __seq__ = 1 }) end)
    assert.same(500, exits[1][1])
    assert.matches("kaboom", ngx.logs[#ngx.logs].msg)
  end)
end)
