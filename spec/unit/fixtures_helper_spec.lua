-- spec/helpers/fixtures.lua: the settings it builds and its "not built" answers,
-- against a fake repo root laid out in a temp dir (no fixture is run here).
local fixtures = require "spec.helpers.fixtures"

local function write(path, text)
  assert(os.execute("mkdir -p '" .. path:match("^(.*)/") .. "'"))
  local f = assert(io.open(path, "wb"))
  f:write(text or "")
  f:close()
end

-- A fake root holding every file `make -C fixtures/plugins all` leaves behind.
local function built_root(dir)
  write(dir .. "/build/bin/go-hello")
  write(dir .. "/build/venv/bin/python3")
  write(dir .. "/build/venv/.kps-requirements")
  write(dir .. "/fixtures/plugins/js-hello/node_modules/kong-pdk/bin/kong-js-pluginserver")
  write(dir .. "/fixtures/plugins/js-hello/node_modules/.kps-npm-ci")
  write(dir .. "/bin/node")
  write(dir .. "/build/js-hello.node", dir .. "/bin/node\n")
  return fixtures.new(dir)
end

describe("spec.helpers.fixtures", function()
  local tmp

  before_each(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -p '" .. tmp .. "'"))
  end)

  after_each(function()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("derives the repo root from its own path", function()
    assert.equal("/", fixtures.root:sub(1, 1))
    local f = io.open(fixtures.root .. "/spec/helpers/fixtures.lua", "rb")
    assert.truthy(f, "no spec/helpers/fixtures.lua under " .. fixtures.root)
    f:close()
  end)

  it("gives kong.conf settings with absolute commands and .socket paths", function()
    local f = built_root(tmp .. "/repo")
    local s = f.settings({ "go-hello", "py-hello", "js-hello" }, "/k/prefix/")
    assert.same({ "go-hello", "py-hello", "js-hello" }, s.pluginserver_names)
    assert.equal("/k/prefix", s.prefix)
    local root = tmp .. "/repo"
    assert.equal("/k/prefix/go-hello.socket", s.pluginserver_go_hello_socket)
    assert.equal(root .. "/build/bin/go-hello -kong-prefix /k/prefix", s.pluginserver_go_hello_start_cmd)
    assert.equal(root .. "/build/bin/go-hello -kong-prefix /k/prefix -dump", s.pluginserver_go_hello_query_cmd)
    assert.equal("/k/prefix/py-hello.socket", s.pluginserver_py_hello_socket)
    local py = root .. "/build/venv/bin/python3 -u " .. root .. "/fixtures/plugins/py-hello/py-hello.py"
    assert.equal(py .. " -p /k/prefix --socket-name py-hello.socket", s.pluginserver_py_hello_start_cmd)
    assert.equal(py .. " --dump", s.pluginserver_py_hello_query_cmd)
    assert.equal("/k/prefix/js-hello.socket", s.pluginserver_js_hello_socket)
    local js = root .. "/bin/node " .. root .. "/fixtures/plugins/js-hello/node_modules/kong-pdk/bin/kong-js-pluginserver -d "
               .. root .. "/fixtures/plugins/js-hello/plugins"
    assert.equal(js .. " -p /k/prefix --sock-name js-hello.socket", s.pluginserver_js_hello_start_cmd)
    assert.equal(js .. " --dump-all-plugins", s.pluginserver_js_hello_query_cmd)
  end)

  it("quotes paths that the shell would split", function()
    local f = built_root(tmp .. "/my repo")
    local s = f.settings("go-hello", "/k/it's here")
    assert.equal("'" .. tmp .. "/my repo/build/bin/go-hello' -kong-prefix '/k/it'\\''s here'",
                 s.pluginserver_go_hello_start_cmd)
  end)

  it("merges settings tables and refuses duplicates and conflicts", function()
    local f = built_root(tmp .. "/repo")
    local s = f.merge(f.settings("go-hello", "/p"), f.settings({ "py-hello" }, "/p"))
    assert.same({ "go-hello", "py-hello" }, s.pluginserver_names)
    assert.equal("/p/py-hello.socket", s.pluginserver_py_hello_socket)
    assert.equal("/p/go-hello.socket", s.pluginserver_go_hello_socket)
    assert.error_matches(function() f.merge(f.settings("go-hello", "/p"), f.settings("go-hello", "/p")) end,
                         "server 'go-hello' listed twice", nil, true)
    assert.error_matches(function() f.merge(f.settings("go-hello", "/p"), f.settings("py-hello", "/q")) end,
                         "conflicting values for prefix", nil, true)
    assert.error_matches(function() f.settings({ "go-hello", "go-hello" }, "/p") end,
                         "fixture 'go-hello' listed twice", nil, true)
  end)

  it("rejects unknown names and relative prefixes", function()
    local f = built_root(tmp .. "/repo")
    assert.error_matches(function() f.settings("rb-hello", "/p") end,
                         "unknown fixture 'rb-hello' (known: go-hello, py-hello, js-hello, go-coverage, py-coverage, js-coverage, go-terminal)", nil, true)
    assert.error_matches(function() f.settings("go-hello", "kong") end,
                         "prefix must be an absolute path, got kong", nil, true)
    assert.error_matches(function() f.settings({}, "/p") end, "non-empty array", nil, true)
  end)

  it("says what is missing and which make target builds it", function()
    local f = fixtures.new(tmp .. "/empty")
    for name, target in pairs({ ["go-hello"] = "go", ["py-hello"] = "python", ["js-hello"] = "js" }) do
      local ok, why = f.available(name)
      assert.is_false(ok)
      assert.matches("fixture " .. name .. " is not built (missing " .. tmp .. "/empty/", why, 1, true)
      assert.matches("make -C " .. tmp .. "/empty/fixtures/plugins " .. target, why, 1, true)
      assert.error_matches(function() f.settings(name, "/p") end, why, nil, true)
    end
  end)

  it("reports a recorded node path that no longer exists", function()
    local f = built_root(tmp .. "/repo")
    assert.is_true(f.available("js-hello"))
    os.remove(tmp .. "/repo/bin/node")
    local ok, why = f.available("js-hello")
    assert.is_false(ok)
    assert.matches("does not name an existing node binary (got " .. tmp .. "/repo/bin/node)", why, 1, true)
  end)

  it("lists what each real dump must report", function()
    assert.same({ "go-hello", "py-hello", "js-hello", "go-coverage" }, fixtures.names)
    assert.equal("ProtoBuf:1", fixtures.expected["go-hello"].protocol)
    assert.equal(100, fixtures.expected["py-hello"].priority)
    assert.same({ "access" }, fixtures.expected["js-hello"].phases)
  end)
end)
