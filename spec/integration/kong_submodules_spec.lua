-- Kong 3.9's submodule API, with the real plugin servers inside a real nginx:
-- - the three "queries plugin info" cases of Kong's
--   spec/02-integration/10-external-plugins/01-process-management_spec.lua
--   (Go, Python, both), with the same settings and the same calls and assertions:
--   the settings pass conf.parse (Kong's spec: conf_loader, no error), then
--   process.load_external_plugins_info(conf);
-- - process.start_pluginservers / stop_pluginservers, plugin.new,
--   plugin.reset_instances_for_plugin and rpc.new (Kong's shapes) against the
--   servers of kong.configuration.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local cjson = require "cjson.safe"

local HOST = "submodules.test"

-- A plain string as a Lua pattern (names contain "-").
local function esc(text)
  return (text:gsub("%p", "%%%0"))
end

-- Kong's settings of server `key` running fixture `name`, with our fixtures'
-- commands in place of Kong's test binaries.
local function server_settings(name, settings, key, prefix)
  local s = fixtures.server(name, prefix)
  settings["pluginserver_" .. key .. "_socket"] = prefix .. "/" .. name .. ".socket"
  settings["pluginserver_" .. key .. "_query_cmd"] = s.query_cmd
  settings["pluginserver_" .. key .. "_start_cmd"] = s.start_cmd
  return settings
end

local function go_settings(settings, key, prefix)
  return server_settings("go-hello", settings, key, prefix)
end

local function py_settings(settings, key, prefix)
  return server_settings("py-hello", settings, key, prefix)
end

-- Runs, in a worker, what Kong's "queries plugin info" cases run, and returns what
-- they assert on.
local QUERY_INFO = [[
  local settings = require("cjson.safe").decode(%q)
  local conf, err = require("kong.runloop.plugin_servers.conf").parse(settings)
  if not conf then
    return { parse_errors = err }
  end
  local proc_management = require "kong.runloop.plugin_servers.process"
  local plugin_infos, qerr = proc_management.load_external_plugins_info(settings)
  if not plugin_infos then
    return { query_error = qerr }
  end
  local out = {}
  for name, info in pairs(plugin_infos) do
    local def = info.server_def
    out[name] = { name = info.name, PRIORITY = info.PRIORITY, VERSION = info.VERSION, phases = info.phases,
                  has_schema = type(info.schema) == "table",
                  server_def = { name = def.name, socket = def.socket, start_command = def.start_command,
                                 query_command = def.query_command, protocol = def.protocol } }
  end
  return { infos = out }
]]

-- What Kong's cases assert on the info record of each fixture.
local GO_HELLO = { PRIORITY = 1, VERSION = "0.1", name = "go-hello", phases = { "access", "response", "log" },
                   protocol = "ProtoBuf:1" }
local PY_HELLO = { PRIORITY = 100, VERSION = "0.1.0", name = "py-hello", phases = { "access" },
                   protocol = "MsgPack:1" }

-- Kong's five assertions on an info record, against `want` (GO_HELLO or PY_HELLO).
local function assert_info(want, info)
  assert.equal(want.PRIORITY, info.PRIORITY)
  assert.equal(want.VERSION, info.VERSION)
  assert.equal(want.name, info.name)
  assert.same(want.phases, info.phases)
  assert.same(want.protocol, info.server_def.protocol)
end

local function query_info(h, settings)
  local res = assert(h:eval_json(QUERY_INFO:format(assert(cjson.encode(settings)))))
  assert.is_nil(res.parse_errors, res.parse_errors and table.concat(res.parse_errors, "; "))
  assert.is_nil(res.query_error)
  return res.infos
end

describe("Kong's process-management spec: queries plugin info", function()
  local h, prefix

  setup(function()
    assert(fixtures.available("go-hello"))
    assert(fixtures.available("py-hello"))
    prefix = nginx.make_prefix()
    h = assert(nginx.start { prefix = prefix, workers = 1 })
  end)

  teardown(function()
    if h then h:stop() end
  end)

  it("queries plugin info [golang]", function()
    local plugin_infos = query_info(h, go_settings({
      plugins = "bundled,go-hello",
      pluginserver_names = "test",
    }, "test", prefix))
    assert.not_nil(plugin_infos["go-hello"])

    local info = plugin_infos["go-hello"]
    assert_info(GO_HELLO, info)
    -- the server_def fields Kong's records have
    assert.equal("test", info.server_def.name)
    assert.equal(prefix .. "/go-hello.socket", info.server_def.socket)
    assert.matches(" -dump$", info.server_def.query_command)
    assert.matches("-kong-prefix", info.server_def.start_command, 1, true)
    assert.is_true(info.has_schema)
  end)

  it("queries plugin info [python]", function()
    local plugin_infos = query_info(h, py_settings({
      plugins = "bundled,py-hello",
      pluginserver_names = "test",
    }, "test", prefix))
    assert.not_nil(plugin_infos["py-hello"])

    local info = plugin_infos["py-hello"]
    assert_info(PY_HELLO, info)
  end)

  it("queries plugin info [golang, python]", function()
    local settings = { plugins = "bundled,py-hello", pluginserver_names = "test-go,test-py" }
    go_settings(settings, "test_go", prefix)
    py_settings(settings, "test_py", prefix)
    local plugin_infos = query_info(h, settings)
    assert.not_nil(plugin_infos["go-hello"])
    assert.not_nil(plugin_infos["py-hello"])

    local go_info = plugin_infos["go-hello"]
    assert_info(GO_HELLO, go_info)
    assert.equal("test-go", go_info.server_def.name)

    local py_info = plugin_infos["py-hello"]
    assert_info(PY_HELLO, py_info)
    assert.equal("test-py", py_info.server_def.name)
  end)

  it("reads a configuration shaped by Kong's conf loader, per-server keys hidden behind a proxy", function()
    local settings = { pluginserver_names = "test-go,test-py" }
    go_settings(settings, "test_go", prefix)
    py_settings(settings, "test_py", prefix)
    local res = assert(h:eval_json(([[
      local settings = require("cjson.safe").decode(%q)
      -- what Kong's conf loader builds from them, then a proxy that shows only it
      local list = {}
      for i, name in ipairs({ "test-go", "test-py" }) do
        local k = "pluginserver_" .. name:gsub("-", "_")
        list[i] = { name = name, socket = settings[k .. "_socket"], start_command = settings[k .. "_start_cmd"],
                    query_command = settings[k .. "_query_cmd"] }
      end
      local raw = { prefix = settings.prefix, pluginserver_names = { "test-go", "test-py" }, pluginservers = list }
      local kong_conf = setmetatable({}, { __index = raw })
      local infos, err = require("kong.runloop.plugin_servers.process").load_external_plugins_info(kong_conf)
      if not infos then return { err = err } end
      local out = {}
      for name, info in pairs(infos) do
        out[name] = { info.server_def.name, info.server_def.socket, info.server_def.protocol }
      end
      return out
    ]]):format(cjson.encode(settings))))
    assert.is_nil(res.err)
    assert.same({ "test-go", prefix .. "/go-hello.socket", "ProtoBuf:1" }, res["go-hello"])
    assert.same({ "test-py", prefix .. "/py-hello.socket", "MsgPack:1" }, res["py-hello"])
  end)

  it("returns nil and the error for a configuration Kong's loader would refuse", function()
    local res = assert(h:eval_json([[
      local p = require "kong.runloop.plugin_servers.process"
      local infos, err = p.load_external_plugins_info({ pluginserver_names = "test", prefix = "/kong" })
      return { infos = infos, err = err }
    ]]))
    assert.is_nil(res.infos)
    assert.matches("query_command undefined for pluginserver test", res.err, 1, true)
  end)

  it("returns nil and the error when a query fails, naming the server", function()
    local settings = go_settings({ pluginserver_names = "test" }, "test", prefix)
    settings.pluginserver_test_query_cmd = "/bin/false"
    local res = assert(h:eval_json(([[
      local p = require "kong.runloop.plugin_servers.process"
      local infos, err = p.load_external_plugins_info(require("cjson.safe").decode(%q))
      return { infos = infos, err = err }
    ]]):format(cjson.encode(settings))))
    assert.is_nil(res.infos)
    assert.matches("test", res.err, 1, true)
    assert.matches("exit", res.err, 1, true)
  end)
end)

describe("Kong's process, plugin and rpc exports on the servers of kong.configuration", function()
  local h, prefix

  setup(function()
    assert(fixtures.available("go-hello"))
    assert(fixtures.available("py-hello"))
    prefix = nginx.make_prefix()
    local settings = { pluginserver_names = { "test-go", "test-py" } }
    go_settings(settings, "test_go", prefix)
    py_settings(settings, "test_py", prefix)
    h = assert(nginx.start {
      prefix = prefix, workers = 1, log_level = "info", configuration = settings,
      plugins = { { name = "go-hello", config = { message = "Kong!" } } },
    })
    assert(h:wait_log(esc("pluginserver 'test-go' is ready"), 20))
    assert(h:wait_log(esc("pluginserver 'test-py' is ready"), 20))
  end)

  teardown(function()
    if h then h:stop() end
  end)

  local function hello()
    local res = assert(h:request { path = "/", headers = { host = HOST } })
    assert.equal(200, res.status)
    return res.headers["x-hello-from-go"]
  end

  it("reset_instances_for_plugin drops this worker's instances of that plugin", function()
    assert.equal("Go says Kong! to " .. HOST, hello())
    local counts = assert(h:eval_json([[
      local plugin = require "kong.runloop.plugin_servers.plugin"
      local ok, p = require("kong.runloop.plugin_servers").load_plugin("go-hello")
      -- a second object of the same plugin, with an instance of its own
      local q = assert(plugin.new(p))
      assert(q.instances:get({ __plugin_id = "other", __seq__ = 1 }))
      local before = { p.instances:count(), q.instances:count() }
      plugin.reset_instances_for_plugin("no-such-plugin")
      local unrelated = { p.instances:count(), q.instances:count() }
      plugin.reset_instances_for_plugin("go-hello")
      return { before = before, unrelated = unrelated, after = { p.instances:count(), q.instances:count() } }
    ]]))
    assert.same({ before = { 1, 1 }, unrelated = { 1, 1 }, after = { 0, 0 } }, counts)
    assert.equal("Go says Kong! to " .. HOST, hello())
  end)

  it("stop_pluginservers stops them with Kong's lines, start_pluginservers starts them again", function()
    assert.equal("true", h:eval([[return tostring(require("kong.runloop.plugin_servers.process").stop_pluginservers())]]))
    assert(h:wait_log("successfully stopped pluginserver 'test%-go', pid %d+", 10))
    assert(h:wait_log("successfully stopped pluginserver 'test%-py', pid %d+", 10))
    local started = h:count_log("%[pluginserver%] started, pid %d+")
    assert.equal("true", h:eval([[return tostring(require("kong.runloop.plugin_servers.process").start_pluginservers())]]))
    assert(h:wait_log("%[pluginserver%] started, pid %d+", 10, started + 2))
    assert(nginx.wait_until(function()
      local res = h:request { path = "/", headers = { host = HOST } }
      return res and res.headers["x-hello-from-go"] == "Go says Kong! to " .. HOST
    end, 20))
  end)

  it("plugin.new takes Kong's plugin_info (a four-field server_def) and rpc.new(plugin) serves it", function()
    local go = fixtures.server("go-hello", prefix)
    local res = assert(h:eval_json(([[
      local plugin = require "kong.runloop.plugin_servers.plugin"
      local rpc = require "kong.runloop.plugin_servers.rpc"
      local info = {
        name = "go-hello", PRIORITY = 1, VERSION = "0.1", schema = { name = "go-hello", fields = {} },
        phases = { "access", "response", "log" },
        server_def = { name = "test-go", socket = %q, start_command = %q, query_command = %q,
                       protocol = "ProtoBuf:1" },
      }
      local p, err = plugin.new(info)
      if not p then return { err = err } end
      local r, rerr = rpc.new(p)
      if not r then return { err = rerr } end
      local started, serr = r:call_start_instance("go-hello", { message = "direct", __seq__ = 3 })
      if not started then return { err = serr } end
      local closed, cerr = r:call_close_instance(started.id)
      local wrong, werr = r:call_start_instance("py-hello", {})
      local bad, berr = rpc.new({ name = "x", server_def = { name = "x", protocol = "Carrier:1" } })
      return {
        fields = { p.name, p.PRIORITY, p.VERSION, type(p.access), type(p.response), type(p.log),
                   type(p.rewrite) },
        read_timeout = p.server_def.read_timeout,
        id_is_number = type(started.id) == "number", seq = started.seq, same_rpc = started.rpc == r,
        closed = closed, close_err = cerr, wrong = wrong, wrong_err = werr, bad = bad, bad_err = berr,
      }
    ]]):format(prefix .. "/go-hello.socket", go.start_cmd, go.query_cmd)))
    assert.is_nil(res.err)
    assert.same({ "go-hello", 1, "0.1", "function", "function", "function", "nil" }, res.fields)
    assert.equal(60000, res.read_timeout)
    assert.is_true(res.id_is_number)
    assert.equal(3, res.seq)
    assert.is_true(res.same_rpc)
    assert.is_true(res.closed, res.close_err)
    assert.is_nil(res.wrong)
    assert.equal("this rpc serves plugin go-hello, not py-hello", res.wrong_err)
    assert.is_nil(res.bad)
    assert.equal("unknown protocol implementation: Carrier:1", res.bad_err)
  end)
end)
