-- instances.lua keeps the instance table bounded: an instance unused while
-- KEEP_GENERATIONS newer instances of its plugin were started is closed on the
-- server and forgotten; one in use is kept; a changed config closes the old one.
local semaphores = require("spec.helpers.fake_semaphore").lib()

local function fake_rpc()
  local rpc = { starts = 0, closes = {}, live = {}, next_id = 0 }
  function rpc:start_instance()
    self.starts = self.starts + 1
    self.next_id = self.next_id + 1
    self.live[self.next_id] = true
    return self.next_id
  end
  function rpc:close_instance(id)
    self.closes[#self.closes + 1] = id
    if not self.live[id] then
      return nil, "no plugin instance " .. id
    end
    self.live[id] = nil
    return true
  end
  function rpc:live_count()
    local n = 0
    for _ in pairs(self.live) do n = n + 1 end
    return n
  end
  return rpc
end

local function entries(inst)
  local n = 0
  for _ in pairs(inst.entries) do n = n + 1 end
  return n
end

describe("instances bound", function()
  local instances_mod, KEEP

  setup(function()
    package.loaded["ngx.semaphore"] = semaphores
    package.loaded["kong.runloop.plugin_servers.instances"] = nil
    instances_mod = require "kong.runloop.plugin_servers.instances"
    KEEP = instances_mod.KEEP_GENERATIONS
  end)

  teardown(function()
    package.loaded["ngx.semaphore"] = nil
    package.loaded["kong.runloop.plugin_servers.instances"] = nil
  end)

  -- A fake rpc and the instances of plugin "p" over it.
  local function new_instances()
    local rpc = fake_rpc()
    return rpc, instances_mod.new("p", rpc, 1000)
  end

  it("closes and forgets instances of plugin entities that stopped coming", function()
    local rpc, inst = new_instances()
    for i = 1, 100 do
      -- a new entity each time (the previous one left the configuration)
      assert.equal(i, inst:get({ __plugin_id = "id" .. i, __seq__ = i }))
      assert.is_true(entries(inst) <= KEEP + 1)
      assert.is_true(rpc:live_count() <= KEEP + 1)
    end
    assert.equal(100, rpc.starts)
    assert.equal(100 - KEEP, #rpc.closes)
    -- the oldest went first, each closed once
    for i = 1, #rpc.closes do
      assert.equal(i, rpc.closes[i])
    end
  end)

  it("keeps an instance that is used while others come and go", function()
    local rpc, inst = new_instances()
    local busy = { __plugin_id = "busy", __seq__ = 0 }
    local busy_id = inst:get(busy)
    for i = 1, 100 do
      inst:get({ __plugin_id = "id" .. i, __seq__ = i })
      assert.equal(busy_id, inst:get(busy))
    end
    assert.equal(101, rpc.starts)
    assert.is_true(rpc.live[busy_id])
    assert.is_true(entries(inst) <= KEEP + 1)
  end)

  it("closes the old instance of a changed config at once, 100 times", function()
    local rpc, inst = new_instances()
    for i = 1, 100 do
      inst:get({ __plugin_id = "id1", __seq__ = i })
      assert.equal(1, entries(inst))
      assert.equal(1, rpc:live_count())
    end
    assert.equal(99, #rpc.closes)
  end)

  it("starts a forgotten entity again when it comes back", function()
    local rpc, inst = new_instances()
    local old = { __plugin_id = "old", __seq__ = 0 }
    local first = inst:get(old)
    for i = 1, KEEP + 1 do
      inst:get({ __plugin_id = "id" .. i, __seq__ = i })
    end
    assert.is_nil(rpc.live[first])
    local again = inst:get(old)
    assert.not_equal(first, again)
    assert.is_true(rpc.live[again])
  end)

  it("closes at most CLOSE_PER_START instances per start", function()
    local rpc, inst = new_instances()
    -- 20 entities used at the same generation, then one start far later
    for i = 1, 20 do
      inst.entries["e" .. i] = { seq = 1, id = 1000 + i, used = 1 }
      rpc.live[1000 + i] = true
    end
    inst.generation = 1 + KEEP
    inst:get({ __plugin_id = "new", __seq__ = 5 })
    assert.equal(instances_mod.CLOSE_PER_START, #rpc.closes)
    inst:get({ __plugin_id = "new2", __seq__ = 6 })
    assert.equal(2 * instances_mod.CLOSE_PER_START, #rpc.closes)
  end)
end)
