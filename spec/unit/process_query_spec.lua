-- process.query through the real library with shell commands: records as Kong's
-- callers expect them, Kong's notice lines, and errors as nil, err.
local process = require "kong.runloop.plugin_servers.process"
local conf = require "kong.runloop.plugin_servers.conf"

local ROOT = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()

-- Server definitions as Kong's callers get them: through conf.parse, whose
-- parsed configuration is what the query runs.
local function parse(servers)
  local settings = { prefix = "/tmp", pluginserver_names = {} }
  for i, s in ipairs(servers) do
    settings.pluginserver_names[i] = s.name
    settings["pluginserver_" .. s.name .. "_query_cmd"] = s.query
    settings["pluginserver_" .. s.name .. "_query_timeout"] = s.timeout
  end
  return assert(conf.parse(settings, { default_dir = "/nonexistent", path = "/usr/bin:/bin" }))
end

local function def(name, query, timeout)
  return { name = name, query = query, timeout = timeout }
end

describe("process.query", function()
  before_each(function()
    for i = #ngx.logs, 1, -1 do ngx.logs[i] = nil end
  end)

  it("returns one record per plugin with its server definition and protocol", function()
    local defs = parse({
      def("two", ROOT .. "/fixtures/servers/two_plugins_dump.sh"),
      def("go", [[echo '{"Protocol":"ProtoBuf:1","Plugins":[{"Name":"go-x","Priority":1,"Version":"0.1","Phases":["access"],"Schema":{"name":"go-x"}}]}']]),
      def("nov", [[echo '[{"Name":"nov","Priority":5,"Version":null}]']]),
    })
    local infos = assert(process.query(defs))
    assert.equal(4, #infos)
    assert.same({ "two-a", "two-b", "go-x", "nov" }, { infos[1].name, infos[2].name, infos[3].name, infos[4].name })
    assert.equal(defs[1], infos[1].server_def)
    assert.equal(defs[1], infos[2].server_def)
    assert.equal(defs[2], infos[3].server_def)
    assert.equal(20, infos[2].PRIORITY)
    assert.equal("2.0.0", infos[2].VERSION)
    assert.same({ "log" }, infos[2].phases)
    assert.equal("MsgPack:1", infos[1].protocol)
    assert.equal("ProtoBuf:1", infos[3].protocol)
    assert.equal("ProtoBuf:1", defs[2].protocol)
    assert.equal("go-x", infos[3].schema.name)
    assert.is_nil(infos[4].VERSION)
    assert.equal("[pluginserver] loading external plugins info", ngx.logs[1].msg)
    assert.equal("[pluginserver] loaded #4 external plugins info", ngx.logs[2].msg)
  end)

  it("returns nil and every server's error", function()
    local infos, err = process.query(parse({
      def("bad", "echo nope; exit 4"),
      def("slow", "sleep 5", 100),
    }))
    assert.is_nil(infos)
    assert.matches("plugin server 'bad': query command \"echo nope; exit 4\" failed with exit status 4", err, 1, true)
    assert.matches("plugin server 'slow': query command \"sleep 5\" timed out after 100 ms", err, 1, true)
  end)

  it("returns nil and the reason for unusable definitions", function()
    local infos, err = process.query({ { name = "x" } })
    assert.is_nil(infos)
    assert.matches("invalid server definitions", err, 1, true)
  end)
end)
