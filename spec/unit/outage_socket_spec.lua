-- Outage handling in state.lua and rpc/socket.lua over stand-ins (fake clock, fake
-- dict, scripted cosockets): a managed server is connected to only when the state
-- says ready; a refused pid makes requests wait for the supervisor; a pid change
-- while waiting is reported as "restarted".
local stub = require "spec.helpers.ngx_stub"

local fake_dict = stub.fake_dict

local STATE = "kong.runloop.plugin_servers.state"
local SOCKET = "kong.runloop.plugin_servers.rpc.socket"

-- Loads state.lua and socket.lua over a stand-in ngx. `on_sleep(clock)` runs at
-- every sleep (the supervisor's changes happen there); `connects` records every
-- connect attempt; `answer(pool)` scripts its result.
local function setup(answer, on_sleep, on_receive)
  local ngx = stub.new()
  local clock = 1000
  ngx.now = function() return clock end
  ngx.update_time = function() end
  ngx.sleep = function(s)
    clock = clock + s
    if on_sleep then
      on_sleep(clock)
    end
  end
  ngx.shared.kong_plugin_servers = fake_dict()
  local connects = {}
  ngx.socket = {
    tcp = function()
      local sock = {}
      function sock.settimeouts() end
      function sock.connect(_, addr, opts)
        connects[#connects + 1] = opts.pool
        return answer(opts.pool, addr)
      end
      function sock.getreusedtimes() return 0 end
      function sock.settimeout() end
      function sock.receive()
        return nil, on_receive and on_receive() or "timeout"
      end
      function sock.setkeepalive() return true end
      function sock.close() end
      return sock
    end,
  }
  _G.ngx = ngx
  package.loaded[STATE] = nil
  package.loaded[SOCKET] = nil
  package.loaded["ngx.semaphore"] = false
  local state = require(STATE)
  local socket = require(SOCKET)
  -- the fake pids are alive processes
  socket.process_gone = function() return false end
  return state, socket, connects
end

local DEF = {
  name = "py", socket = "/tmp/py.socket", start_command = "/bin/py",
  connect_timeout = 100, send_timeout = 100, read_timeout = 100, ready_timeout = 500,
}

describe("outage handling", function()
  local saved_ngx = _G.ngx
  after_each(function()
    _G.ngx = saved_ngx
    package.loaded[STATE] = nil
    package.loaded[SOCKET] = nil
    package.loaded["ngx.semaphore"] = nil
  end)

  it("does not connect while the server is not ready, then connects to the new pid", function()
    local state
    local sleeps = 0
    local st, socket, connects = setup(function() return true end, function()
      sleeps = sleeps + 1
      if sleeps == 3 then
        state.set("py", { state = "starting", pid = 8 })
      elseif sleeps == 6 then
        state.set("py", { state = "ready", pid = 8 })
      end
    end)
    state = st
    state.set("py", { state = "backoff" })
    local sock, err, cause = socket.connect(DEF)
    -- waited for readiness: the caller's instances (if any) belong to no live server
    assert.is_nil(sock)
    assert.equal("restarted", cause)
    assert.matches("pluginserver 'py' restarted %(pid %- %-> 8%)", err)
    -- exactly one connect, made once the state said ready, in pid 8's pool
    assert.same({ "kps:/tmp/py.socket:8:0" }, connects)
    -- the next request connects at once
    sock, err = socket.connect(DEF)
    assert.is_truthy(sock, err)
    assert.equal(2, #connects)
  end)

  it("marks a refused pid so that requests wait for the supervisor instead of connecting", function()
    local state
    local sleeps = 0
    local st, socket, connects = setup(function(pool)
      if pool:find(":7:", 1, true) then
        return nil, "connection refused"
      end
      return true
    end, function()
      sleeps = sleeps + 1
      if sleeps == 5 then
        state.set("py", { state = "ready", pid = 9 })
      end
    end)
    state = st
    state.set("py", { state = "ready", pid = 7 })
    local _, err, cause = socket.connect(DEF)
    assert.equal("restarted", cause)
    assert.matches("pid 7 %-> 9", err)
    -- one refused attempt on pid 7, then none until the new pid was ready
    assert.same({ "kps:/tmp/py.socket:7:0", "kps:/tmp/py.socket:9:0" }, connects)
    assert.is_true(state.is_refused("py", 7))
    assert.is_false(state.is_refused("py", 9))
  end)

  it("a marked pid that accepts again once the mark expires is the same server, not a restart", function()
    local dict
    local st, socket, connects = setup(function() return true end, function()
      dict.data["ps:refused:py"] = nil  -- the mark's ttl passed; the supervisor saw no exit
    end)
    dict = ngx.shared.kong_plugin_servers
    st.set("py", { state = "ready", pid = 7 })
    st.refused("py", 7)
    local sock, reused_or_err, cause = socket.connect(DEF)
    -- waited, then connected to the same pid: the caller's instance ids stay valid
    assert.is_truthy(sock, reused_or_err)
    assert.is_nil(cause)
    assert.same({ "kps:/tmp/py.socket:7:0" }, connects)
  end)

  it("gives up after ready_timeout with a message naming the server and its state", function()
    local st, socket, connects = setup(function() return nil, "connection refused" end)
    st.set("py", { state = "ready", pid = 7 })
    local sock, err, cause = socket.connect(DEF)
    assert.is_nil(sock)
    assert.equal("connect", cause)
    assert.matches("cannot connect to /tmp/py.socket: .*pluginserver 'py' not ready after %d+ ms "
      .. "%(state ready, refusing connections%)", err)
    -- the refused pid was not connected to again while it stayed marked
    assert.equal(1, #connects)
  end)

  it("a clean close marks the pid only when the socket now refuses or resets connections", function()
    local listening, dying = true, false
    local st, socket, connects = setup(function(pool)
      if pool:find("^kps%-alive:") and not listening then
        return nil, "connection refused"
      end
      return true
    end, nil, function()
      return dying and "connection reset by peer" or nil
    end)
    st.set("py", { state = "ready", pid = 7 })
    local sock = assert(socket.connect(DEF))
    assert.is_false(socket.peer_failed(DEF, sock, "closed"))
    assert.is_false(st.is_refused("py", 7))
    -- a process being torn down: its listen queue still takes the connect, then resets it
    dying = true
    assert.is_true(socket.peer_failed(DEF, sock, "closed"))
    assert.is_true(st.is_refused("py", 7))
    st.set("py", { state = "ready", pid = 8 })
    local sock8 = assert(socket.connect(DEF))
    listening, dying = false, false
    assert.is_true(socket.peer_failed(DEF, sock8, "closed"))
    assert.is_true(st.is_refused("py", 8))
    assert.equal(5, #connects)
    -- a reaped process or a state that moved on answer without a connect
    st.set("py", { state = "ready", pid = 9 })
    local sock9 = assert(socket.connect(DEF))
    socket.process_gone = function(pid) return pid == 9 end
    assert.is_true(socket.peer_failed(DEF, sock9, "closed"))
    st.set("py", { state = "starting" })
    assert.is_true(socket.peer_failed(DEF, sock8, "closed"))
    assert.equal(6, #connects)
    -- an external server is never checked
    local ext = setmetatable({ start_command = false }, { __index = DEF })
    assert.is_false(socket.peer_failed(ext, sock, "closed"))
    assert.equal(6, #connects)
  end)

  it("process_gone asks the process table", function()
    setup(function() return true end)
    package.loaded[SOCKET] = nil
    local socket = require(SOCKET)
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    assert.is_false(socket.process_gone(ffi.C.getpid()))
    -- above the kernel's largest pid (4194304)
    assert.is_true(socket.process_gone(4194305))
  end)

  it("a reset or broken pipe marks the connection's pid; a clean close does not", function()
    local st, socket = setup(function() return true end)
    st.set("py", { state = "ready", pid = 7 })
    local sock = assert(socket.connect(DEF))
    socket.peer_failed(DEF, sock, "closed")
    assert.is_false(st.is_refused("py", 7))
    socket.peer_failed(DEF, sock, "connection reset by peer")
    assert.is_true(st.is_refused("py", 7))
    local pid, err = st.wait_ready("py", 0)
    assert.is_nil(pid)
    assert.matches("refusing connections", err)
  end)

  it("state.get decodes again only when the entry changed", function()
    local st = setup(function() return true end)
    st.set("py", { state = "ready", pid = 7 })
    local a = st.get("py")
    assert.equal(a, st.get("py"))
    st.set("py", { state = "ready", pid = 8, since = 1234.5 })
    local b = st.get("py")
    assert.not_equal(a, b)
    assert.equal(8, b.pid)
    assert.equal(1234.5, b.since)
  end)
end)
