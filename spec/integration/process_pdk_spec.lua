-- The supervisor and the info query with the real plugin servers (go-pdk, kong-pdk
-- from PyPI and npm): start/stop log lines, info records, respawn with the real
-- signal, and no process left after stop, quit or SIGKILL of nginx.
local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"
local fixtures = require "spec.helpers.fixtures"

-- Small timings for every server (specs never wait for a default).

local function settings(names, prefix)
  local conf = fixtures.settings(names, prefix)
  for _, name in ipairs(names) do
    local k = "pluginserver_" .. name:gsub("-", "_")
    conf[k .. "_respawn_delay"] = "200"
    conf[k .. "_respawn_delay_max"] = "800"
    conf[k .. "_stop_timeout"] = "2000"
    conf[k .. "_ready_timeout"] = "5000"
    conf[k .. "_query_timeout"] = "10000"
  end
  return conf
end

local function start(names, workers)
  for _, name in ipairs(names) do
    assert(fixtures.available(name))
  end
  local prefix = nginx.make_prefix()
  local plugins = {}
  for i, name in ipairs(names) do
    plugins[i] = { name = name, config = { message = "spec" } }
  end
  return assert(nginx.start {
    prefix = prefix, workers = workers or 2, log_level = "info",
    configuration = settings(names, prefix), plugins = plugins,
  })
end

-- A plain string as a Lua pattern (fixture names contain "-").
local function esc(text)
  return (text:gsub("%p", "%%%0"))
end

local function wait_ready(h, name, timeout)
  return nginx.wait_until(function()
    local s = h:server_status(name)
    return s and s.state == "ready" and s
  end, timeout or 10)
end

local QUERY = [[
  local conf = require "kong.runloop.plugin_servers.conf"
  local process = require "kong.runloop.plugin_servers.process"
  local defs = assert(conf.parse(kong.configuration))
  local infos = assert(process.query(defs))
  local out = {}
  for _, i in ipairs(infos) do
    out[i.name] = { PRIORITY = i.PRIORITY, VERSION = i.VERSION, phases = i.phases,
                    protocol = i.protocol, server = i.server_def.name,
                    def_protocol = i.server_def.protocol, schema_name = i.schema and i.schema.name }
  end
  return out
]]

for _, name in ipairs(fixtures.names) do
  describe("real plugin server " .. name, function()
    local h

    setup(function()
      h = start({ name })
    end)

    teardown(function()
      if h then h:stop() end
    end)

    it("is queried in the master at init with Kong's notice lines", function()
      assert(h:wait_log("%[pluginserver%] loading external plugins info", 1))
      assert(h:wait_log("%[pluginserver%] loaded #1 external plugins info", 1))
      local infos = assert(h:eval_json(QUERY))
      local info = assert(infos[name], "no info for " .. name)
      local expected = fixtures.expected[name]
      assert.equal(expected.priority, info.PRIORITY)
      assert.equal(expected.version, info.VERSION)
      assert.same(expected.phases, info.phases)
      assert.equal(expected.protocol, info.protocol)
      assert.equal(expected.protocol, info.def_protocol)
      assert.equal(name, info.server)
      assert.equal(name, info.schema_name)
    end)

    it("starts with Kong's log line and becomes ready", function()
      local line = assert(h:wait_log("%[pluginserver%] started, pid %d+", 10))
      local pid = tonumber(line:match("started, pid (%d+)"))
      assert(h:wait_log(esc("pluginserver '" .. name .. "' is ready, pid " .. pid), 10))
      local s = assert(wait_ready(h, name))
      assert.equal(pid, s.pid)
      assert.same({}, h:log_lines("%[crit%]"))
    end)

    it("is respawned after kill -9 with the real signal in the log", function()
      local first = assert(wait_ready(h, name))
      assert(procs.kill(first.pid, "KILL"))
      assert(h:wait_log(esc("external pluginserver '" .. name .. "' terminated: signal 9"), 5))
      local again = assert(nginx.wait_until(function()
        local s = h:server_status(name)
        return s.state == "ready" and s.pid ~= first.pid and s
      end, 10))
      assert.equal(1, again.restarts)
      assert.same({ signal = 9 }, again.last_exit)
    end)

    it("is stopped on quit with Kong's line and leaves nothing behind", function()
      local s = assert(wait_ready(h, name))
      h:remember_descendants()
      assert(h:quit())
      assert(h:wait_log(esc("[pluginserver] successfully stopped pluginserver '" .. name .. "', pid " .. s.pid), 1))
      assert.is_false(procs.alive(s.pid))
      assert.same({}, h:leftovers())
    end)
  end)
end

describe("real plugin servers go-hello + py-hello together", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("start, answer the info query, and stop one line each", function()
    h = start({ "go-hello", "py-hello" })
    assert(h:wait_log("%[pluginserver%] loaded #2 external plugins info", 1))
    local go = assert(wait_ready(h, "go-hello"))
    local py = assert(wait_ready(h, "py-hello"))
    assert(h:wait_log("started, pid " .. go.pid, 1))
    assert(h:wait_log("started, pid " .. py.pid, 1))
    local infos = assert(h:eval_json(QUERY))
    assert.equal("ProtoBuf:1", infos["go-hello"].protocol)
    assert.equal("MsgPack:1", infos["py-hello"].protocol)
    assert(h:quit())
    assert.equal(1, h:count_log("successfully stopped pluginserver 'go%-hello', pid " .. go.pid))
    assert.equal(1, h:count_log("successfully stopped pluginserver 'py%-hello', pid " .. py.pid))
    assert.same({}, h:leftovers())
  end)

  it("leave no process behind after SIGKILL of the whole nginx", function()
    h = start({ "go-hello", "py-hello", "js-hello" })
    local pids = {}
    for _, name in ipairs({ "go-hello", "py-hello", "js-hello" }) do
      pids[#pids + 1] = assert(wait_ready(h, name)).pid
    end
    assert(h:kill9())
    assert(nginx.wait_until(function()
      for _, pid in ipairs(pids) do
        if procs.alive(pid) then return false end
      end
      return true
    end, 5), "a plugin server outlived nginx")
    assert(nginx.wait_until(function() return #h:leftovers() == 0 end, 5))
    -- nothing was respawned either: no process names this prefix any more
    local left = procs.with_cmdline(h.prefix)
    assert.equal(0, #left, "left: " .. tostring(left[1] and procs.cmdline(left[1])))
  end)
end)
