-- state.lua over a stand-in shared dict: ownership, status shapes, wait_ready.
local stub = require "spec.helpers.ngx_stub"

local fake_dict = stub.fake_dict

local function load_state(with_dict)
  local ngx = stub.new()
  local clock = 1000
  ngx.now = function() return clock end
  ngx.sleep = function(s) clock = clock + s end
  if with_dict then
    ngx.shared.kong_plugin_servers = fake_dict()
  end
  _G.ngx = ngx
  package.loaded["kong.runloop.plugin_servers.state"] = nil
  package.loaded["ngx.semaphore"] = false -- plain LuaJIT: fall back to ngx.sleep
  local state = require "kong.runloop.plugin_servers.state"
  return state, ngx, function(dt) clock = clock + dt end
end

local DEFS = {
  { name = "go", start_command = "/bin/go" },
  { name = "ext" },
  { name = "py", start_command = "/bin/py" },
}

describe("plugin server state", function()
  local saved_ngx = _G.ngx
  after_each(function()
    _G.ngx = saved_ngx
    package.loaded["kong.runloop.plugin_servers.state"] = nil
    package.loaded["ngx.semaphore"] = nil
  end)

  it("reports every server in defs order, with defaults before any report", function()
    local state, _, advance = load_state(true)
    assert(state.claim(11, DEFS))
    assert(state.set("go", { state = "ready", pid = 42, restarts = 2, hangs = 1,
                             last_exit = { signal = 9 }, started_at = 990,
                             standby = "ready", standby_pid = 43, promotions = 1 }, 11))
    assert(state.set("ext", { state = "hung", hangs = 3 }, 11))
    advance(0.5)
    local list = assert(state.status(DEFS))
    assert.same({
      { name = "go", pid = 42, state = "ready", restarts = 2, hangs = 1, last_exit = { signal = 9 }, uptime = 10.5,
        standby = "ready", standby_pid = 43, promotions = 1 },
      { name = "ext", state = "hung", restarts = 0, hangs = 3, uptime = 0, standby = "off", promotions = 0 },
      { name = "py", state = "stopped", restarts = 0, hangs = 0, uptime = 0, standby = "none", promotions = 0 },
    }, list)
  end)

  it("status() shows why a starting server is not ready", function()
    local state, _, advance = load_state(true)
    assert(state.claim(11, DEFS))
    assert(state.set("go", { state = "ready", pid = 42, restarts = 2,
                             last_exit = { signal = 9 }, started_at = 990 }, 11))
    assert(state.set("ext", { state = "external" }, 11))
    assert(state.set("py", { state = "starting", pid = 7, started_at = 1000,
                             note = "foreign listener pid 99 on /kong/py.socket" }, 11))
    advance(0.5)
    local list = assert(state.status(DEFS))
    assert.same({
      { name = "go", pid = 42, state = "ready", restarts = 2, hangs = 0, last_exit = { signal = 9 }, uptime = 10.5,
        standby = "none", promotions = 0 },
      { name = "ext", state = "external", restarts = 0, hangs = 0, uptime = 0, standby = "off", promotions = 0 },
      { name = "py", state = "starting", pid = 7, restarts = 0, hangs = 0, uptime = 0.5,
        note = "foreign listener pid 99 on /kong/py.socket", standby = "none", promotions = 0 },
    }, list)
  end)

  it("lets only the owner write, and hands over the previous pids on claim", function()
    local state = load_state(true)
    state.claim(11, DEFS)
    assert(state.set("go", { state = "ready", pid = 42, pid_start = 123456 }, 11))
    assert(state.set("py", { state = "backoff" }, 11))
    local old = state.claim(22, DEFS)
    -- The start time goes along: it proves the pid still names that server.
    assert.same({ go = { pid = 42, start = 123456 } }, old)
    -- A standby goes along too (the next generation waits for it as well).
    assert(state.set("go", { state = "ready", pid = 42, pid_start = 123456,
                             standby = "ready", standby_pid = 50, standby_start = 123999 }, 22))
    old = state.claim(33, DEFS)
    assert.same({ go = { pid = 42, start = 123456, standby = { pid = 50, start = 123999 } } }, old)
    local ok, err = state.set("go", { state = "stopped" }, 11)
    assert.is_nil(ok)
    assert.equal("not the owner", err)
    assert.equal("ready", state.get("go").state)
  end)

  it("wait_ready returns the pid, 0 for external, or an error naming the server", function()
    local state = load_state(true)
    state.claim(1, DEFS)
    state.set("go", { state = "ready", pid = 42 }, 1)
    state.set("ext", { state = "external" }, 1)
    state.set("py", { state = "failed" }, 1)
    assert.equal(42, state.wait_ready("go", 100))
    assert.equal(0, state.wait_ready("ext", 100))
    state.set("ext", { state = "hung" }, 1)
    local none, why = state.wait_ready("ext", 100)
    assert.is_nil(none)
    assert.equal("pluginserver 'ext' is hung (it answered nothing for hang_timeout)", why)
    assert.is_true(state.is_hung("ext"))
    assert.is_false(state.is_hung("go"))
    state.set("ext", { state = "external" }, 1)
    local pid, err = state.wait_ready("py", 100)
    assert.is_nil(pid)
    assert.equal("pluginserver 'py' is failed", err)
    pid, err = state.wait_ready("nope", 100)
    assert.is_nil(pid)
    assert.matches("pluginserver 'nope' has no state", err, 1, true)
  end)

  it("wait_ready polls every 10 ms at most and gives up after the timeout", function()
    local state, ngx = load_state(true)
    state.claim(1, DEFS)
    state.set("go", { state = "starting", pid = 42 }, 1)
    local sleeps = {}
    local real_sleep = ngx.sleep
    ngx.sleep = function(s)
      sleeps[#sleeps + 1] = s
      real_sleep(s)
      if #sleeps == 3 then
        state.set("go", { state = "ready", pid = 43 }, 1)
      end
    end
    assert.equal(43, state.wait_ready("go", 1000))
    assert.equal(3, #sleeps)
    for _, s in ipairs(sleeps) do
      assert.is_true(s <= 0.01)
    end
    state.set("go", { state = "backoff" }, 1)
    local pid, err = state.wait_ready("go", 50)
    assert.is_nil(pid)
    assert.equal("pluginserver 'go' not ready after 50 ms (state backoff)", err)
  end)

  it("without the shared dict: status and wait_ready name the missing kong.conf line", function()
    local state = load_state(false)
    local list, err = state.status(DEFS)
    assert.is_nil(list)
    assert.matches("nginx_http_lua_shared_dict = kong_plugin_servers 1m", err, 1, true)
    local pid, werr = state.wait_ready("go", 10)
    assert.is_nil(pid)
    assert.equal(err, werr)
  end)
end)
