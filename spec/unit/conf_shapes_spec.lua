-- conf.parse on each shape Kong's configuration object can have: the
-- pluginserver_* keys, Kong's `pluginservers` list (what its conf loader builds)
-- behind a proxy that hides the keys or as the only thing set, and both; and what
-- wins when both are set and disagree (the keys, with a warning).
-- Programs are real files in a temporary directory.

local conf = require "kong.runloop.plugin_servers.conf"

local function sh(cmd)
  assert(os.execute(cmd) == 0, cmd)
end

local function program(dir, name)
  local p = dir .. "/" .. name
  local f = assert(io.open(p, "w"))
  f:write("#!/bin/sh\nexit 0\n")
  f:close()
  sh("chmod 755 '" .. p .. "'")
  return p
end

-- Kong's conf loader marks the list with a metatable whose __tostring is "".
local NOP_TOSTRING_MT = { __tostring = function() return "" end }

-- Kong's kong.configuration: a read-only proxy that pairs() cannot iterate, here
-- also hiding the keys in `hidden`.
local function proxy(raw, hidden)
  return setmetatable({}, {
    __index = function(_, k)
      if hidden and hidden(k) then
        return nil
      end
      return raw[k]
    end,
    __newindex = function() error("read-only", 2) end,
  })
end

local function per_server_key(k)
  return type(k) == "string" and k:find("^pluginserver_") and k ~= "pluginserver_names"
end

-- The fields the two shapes share, per server.
local function shared_fields(defs)
  local out = {}
  for i, d in ipairs(defs) do
    out[i] = { name = d.name, socket = d.socket, start_command = d.start_command,
               query_command = d.query_command, query_timeout = d.query_timeout,
               read_timeout = d.read_timeout, fail_open = d.fail_open }
  end
  return out
end

describe("conf.parse on the shapes of Kong's configuration", function()
  local bin, opts, go, py, keys, list

  before_each(function()
    bin = os.tmpname()
    os.remove(bin)
    sh("mkdir -p '" .. bin .. "'")
    opts = { default_dir = bin .. "/none", path = bin }
    go = program(bin, "go-hello")
    py = program(bin, "py-hello.py")
    -- the keys, as kong.conf sets them (the settings of Kong's process spec)
    keys = {
      prefix = "/kong",
      pluginserver_names = { "test-go", "test-py" },
      pluginserver_test_go_socket = "/kong/go-hello.socket",
      pluginserver_test_go_start_cmd = go .. " -kong-prefix /kong",
      pluginserver_test_go_query_cmd = go .. " -dump",
      pluginserver_test_py_socket = "/kong/py-hello.socket",
      pluginserver_test_py_start_cmd = py .. " --socket-name py-hello.socket --kong-prefix /kong",
      pluginserver_test_py_query_cmd = py .. " --dump",
    }
    -- the list Kong's conf loader builds from them
    list = setmetatable({
      { name = "test-go", socket = "/kong/go-hello.socket", start_command = go .. " -kong-prefix /kong",
        query_command = go .. " -dump" },
      { name = "test-py", socket = "/kong/py-hello.socket",
        start_command = py .. " --socket-name py-hello.socket --kong-prefix /kong",
        query_command = py .. " --dump" },
    }, NOP_TOSTRING_MT)
  end)

  after_each(function()
    sh("rm -rf '" .. bin .. "'")
  end)

  local function with(t, extra)
    local out = {}
    for k, v in pairs(t) do out[k] = v end
    for k, v in pairs(extra or {}) do out[k] = v end
    return out
  end

  it("reads the pluginserver_* keys (no list)", function()
    local defs, warnings = assert(conf.parse(keys, opts))
    assert.same({}, warnings)
    assert.equal(2, #defs)
    assert.equal("test-go", defs[1].name)
    assert.equal("/kong/go-hello.socket", defs[1].socket)
    assert.equal(go .. " -kong-prefix /kong", defs[1].start_command)
    assert.equal(py .. " --dump", defs[2].query_command)
  end)

  it("reads Kong's pluginservers list behind a proxy that hides the per-server keys", function()
    local expected = shared_fields(assert(conf.parse(keys, opts)))
    local raw = with(keys, { pluginservers = list })
    local hidden = proxy(raw, per_server_key)
    assert.is_nil(hidden.pluginserver_test_go_socket)
    local defs, warnings = conf.parse(hidden, opts)
    assert.is_table(defs, warnings and table.concat(warnings, "; "))
    assert.same({}, warnings)
    assert.same(expected, shared_fields(defs))
  end)

  it("reads the list when it is the only thing set (no pluginserver_names)", function()
    local expected = shared_fields(assert(conf.parse(keys, opts)))
    local defs, warnings = conf.parse({ prefix = "/kong", pluginservers = list }, opts)
    assert.is_table(defs, warnings and table.concat(warnings, "; "))
    assert.same({}, warnings)
    assert.same(expected, shared_fields(defs))
  end)

  it("gives the same definitions, and no warning, from both shapes when they agree", function()
    local from_keys = assert(conf.parse(keys, opts))
    local defs, warnings = conf.parse(proxy(with(keys, { pluginservers = list })), opts)
    assert.same({}, warnings)
    assert.same(from_keys, defs)
  end)

  it("takes our other settings (timeouts, fail_open) from the keys beside the list", function()
    local raw = with(keys, { pluginservers = list, pluginserver_test_go_read_timeout = "1234",
                             pluginserver_test_go_fail_open = "on" })
    -- only socket and commands hidden: the list gives them
    local hidden = proxy(raw, function(k)
      return per_server_key(k) and (k:find("_socket$") or k:find("_cmd$"))
    end)
    local defs = assert(conf.parse(hidden, opts))
    assert.equal(1234, defs[1].read_timeout)
    assert.is_true(defs[1].fail_open)
    assert.equal(go .. " -dump", defs[1].query_command)
  end)

  it("validates what the list gives like the keys (a missing program names the setting)", function()
    list[1].start_command = bin .. "/gone -kong-prefix /kong"
    local defs, errors = conf.parse(proxy(with(keys, { pluginservers = list }), per_server_key), opts)
    assert.is_nil(defs)
    local text = table.concat(errors, "\n")
    assert.matches("pluginserver_test_go_start_cmd", text, 1, true)
    assert.matches("test-go", text, 1, true)
  end)

  describe("when both shapes are set and disagree", function()
    it("uses the keys and warns naming the server, the field and both values", function()
      list[1].socket = "/elsewhere/go.socket"
      local defs, warnings = assert(conf.parse(with(keys, { pluginservers = list }), opts))
      assert.equal("/kong/go-hello.socket", defs[1].socket)
      assert.equal(1, #warnings)
      assert.matches("pluginserver test-go", warnings[1], 1, true)
      assert.matches("socket '/elsewhere/go.socket'", warnings[1], 1, true)
      assert.matches("'/kong/go-hello.socket'; using the settings", warnings[1], 1, true)
    end)

    it("uses pluginserver_names and warns about servers only one of them has", function()
      local extra = { name = "other", socket = "/kong/other.socket", query_command = go .. " -dump" }
      local l = { list[1], extra }
      local defs, warnings = assert(conf.parse(with(keys, { pluginservers = l }), opts))
      assert.equal(2, #defs)
      assert.equal("test-py", defs[2].name)
      local text = table.concat(warnings, "\n")
      assert.matches("pluginserver other is in kong.configuration.pluginservers but not in pluginserver_names; "
                     .. "ignored", text, 1, true)
      assert.matches("pluginserver_names lists test-py, which kong.configuration.pluginservers does not", text,
                     1, true)
    end)

    it("keeps a start command the list does not have, with a warning", function()
      list[2].start_command = nil
      local defs, warnings = assert(conf.parse(with(keys, { pluginservers = list }), opts))
      assert.equal(keys.pluginserver_test_py_start_cmd, defs[2].start_command)
      assert.equal(1, #warnings)
      assert.matches("pluginserver test-py: kong.configuration.pluginservers has start_command none, "
                     .. "the pluginserver_* settings give '" .. py, warnings[1], 1, true)
    end)
  end)

  it("ignores a pluginservers value that is not a list of servers", function()
    local defs, warnings = assert(conf.parse(with(keys, { pluginservers = "junk" }), opts))
    assert.equal(2, #defs)
    assert.same({}, warnings)
  end)
end)
