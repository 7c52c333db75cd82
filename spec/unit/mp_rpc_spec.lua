-- rpc/mp_rpc.lua over the real engine and bridge (the built .so), talking to a fake
-- cosocket that replays the conversation recorded from kong-pdk 0.36
-- (tests/vectors/msgpack.json) in small chunks.
local cjson = require "cjson"
local fake_cosocket = require "spec.helpers.fake_cosocket"

local function unhex(s)
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local f = assert(io.open("tests/vectors/msgpack.json"))
local VECTORS = cjson.decode(f:read("*a"))
f:close()

-- the fakes ngx.socket.tcp hands out, in order, and those it handed out
local queue = { sockets = {}, log = {} }

-- Replies arrive 7 bytes at a time.
local function fake(conn_script, reused)
  return fake_cosocket.new(conn_script, reused, 7)
end

local conv = {}
for _, t in ipairs(VECTORS.conversation) do
  conv[t.label] = { request = unhex(t.request), reply = unhex(t.reply) }
end

describe("mp_rpc", function()
  local mp_rpc, bridge, def

  setup(function()
    fake_cosocket.install(queue)
    mp_rpc = require "kong.runloop.plugin_servers.rpc.mp_rpc"
    -- the fake server pids are alive processes
    require("kong.runloop.plugin_servers.rpc.socket").process_gone = function() return false end
    bridge = require("kong.runloop.plugin_servers.lib").bridge
    def = fake_cosocket.def("srv")
  end)

  before_each(function()
    fake_cosocket.expect(queue)
  end)

  -- Connection n (in the order opened) was closed, not kept for reuse.
  local function dropped(n)
    assert.is_true(queue.log[n].closed)
    assert.is_false(queue.log[n].kept)
  end

  -- The message of a call that failed (nil, message, cause) with `cause`.
  local function failure(cause, result, err, got_cause)
    assert.is_nil(result)
    assert.equal(cause, got_cause)
    return err
  end

  local function same_message(sent, want)
    local a = bridge.decode(0, sent)
    local b = bridge.decode(0, want)
    assert.same(b, a)
  end

  it("runs the recorded conversation: start, event with five PDK calls, close, lost instance", function()
    local rpc = mp_rpc.new(def, "vhello")
    local turns = {}
    for _, label in ipairs { "start_instance" } do
      turns[#turns + 1] = { reply = conv[label].reply }
    end
    queue.sockets = { fake(turns) }
    assert.equal(0, rpc:start_instance('{"message":"hi"}'))
    assert.equal(conv.start_instance.request, queue.log[1].sent[1])
    assert.equal("unix:/tmp/srv.socket", queue.log[1].path)
    assert.matches("^kps:/tmp/srv.socket:0:0$", queue.log[1].pool)
    assert.same({ 11, 22, 33 }, queue.log[1].timeouts)
    assert.is_true(queue.log[1].kept)

    local event = {}
    for _, label in ipairs { "handle_event", "step_string", "step_multimap", "step_raw_body", "step_error", "step_nil" } do
      event[#event + 1] = { reply = conv[label].reply }
    end
    fake_cosocket.expect(queue, fake(event))
    local calls = {}
    local answers = {
      ["kong.request.get_header"] = { true, "example.com" },
      ["kong.request.get_headers"] = { true, { host = "example.com", accept = { "a", "b" }, ["x-e"] = true } },
      ["kong.request.get_raw_body"] = { true, "\0\255body" },
      -- refused (outside the PDK): answered with StepError, not counted as a PDK call
      ["kong.nope.missing"] = { false, "could not find pdk method: kong.nope.missing", "refused" },
      ["kong.response.set_header"] = { true, nil },
    }
    local function dispatch(index, name, args, n, saved)
      calls[#calls + 1] = { index = index, name = name, args = args, n = n, saved = saved }
      local a = answers[name]
      return a[1], a[2], a[3]
    end
    local ok, err, cause, stats = rpc:handle_event(0, "access", dispatch, "SAVED")
    assert.is_nil(err)
    assert.is_nil(cause)
    assert.is_true(ok)
    assert.equal(4, stats.pdk_calls)
    local sent = queue.log[1].sent
    assert.equal(6, #sent)
    assert.equal(conv.handle_event.request, sent[1])
    assert.equal(conv.step_string.request, sent[2])
    same_message(sent[3], conv.step_multimap.request)   -- map key order is Lua's
    assert.equal(conv.step_raw_body.request, sent[4])   -- bin, byte for byte
    assert.equal(conv.step_error.request, sent[5])
    assert.equal(conv.step_nil.request, sent[6])
    assert.is_true(queue.log[1].kept)
    assert.equal("kong.request.get_header", calls[1].name)
    assert.equal(bridge.method_index("kong.request.get_header"), calls[1].index)
    assert.same({ "host" }, calls[1].args)
    assert.equal(1, calls[1].n)
    assert.equal(0, calls[4].index)
    assert.same({ 1, "two" }, calls[4].args)
    assert.equal("SAVED", calls[4].saved)

    fake_cosocket.expect(queue, fake({ { reply = conv.close_instance.reply } }))
    assert.is_true(rpc:close_instance(0))
    assert.equal(conv.close_instance.request, queue.log[1].sent[1])

    fake_cosocket.expect(queue, fake({ { reply = conv.no_instance.reply } }))
    assert.equal("event access failed on srv: no plugin instance #0",
                 failure("no_instance", rpc:handle_event(0, "access", dispatch)))
    dropped(1)
  end)

  it("reports a malformed reply as a protocol error and closes the connection", function()
    local rpc = mp_rpc.new(def, "vhello")
    queue.sockets = { fake({ { reply = "\193\193" } }) }
    assert.matches("protocol error: malformed MessagePack", failure("protocol", rpc:start_instance("{}")), 1, true)
    dropped(1)
  end)

  it("reports a read timeout and a closed connection", function()
    local rpc = mp_rpc.new(def, "vhello")
    queue.sockets = { fake({ { reply = "" } }) }
    local _, err, cause = rpc:start_instance("{}")
    assert.equal("timeout", cause)
    assert.equal("read from srv failed: timeout", err)
    queue.sockets = { fake({ { reply = conv.start_instance.reply:sub(1, 10), read_error = "closed" } }) }
    _, err, cause = rpc:start_instance("{}")
    assert.equal("connect", cause)
    assert.equal("plugin server srv closed the connection", err)
  end)

  it("retries once on a fresh connection when a pooled one fails before any reply byte", function()
    local rpc = mp_rpc.new(def, "vhello")
    queue.sockets = {
      fake({ { reply = "", read_error = "closed" } }, 3),
      fake({ { reply = string.char(0x94, 0x01, 0x02, 0xc0) .. bridge.encode(0, { Id = 4 }) } }, 0),
    }
    -- the retry is a new message with the next id
    assert.equal(4, rpc:start_instance('{"message":"hi"}'))
    assert.equal(2, #queue.log)
    assert.is_true(queue.log[1].closed)
    assert.not_equal(queue.log[1].pool, queue.log[2].pool)
    -- no retry for a fresh connection, nor after reply bytes arrived
    queue.sockets = { fake({ { reply = "", read_error = "closed" } }, 0) }
    assert.is_nil(rpc:start_instance("{}"))
    assert.equal(3, #queue.log)
  end)

  it("retries a fresh connection reset before any reply byte on the restarted server", function()
    -- A managed server killed just before this request: the connect reached its
    -- listening socket, then the dying process reset the connection unread.
    local state = require "kong.runloop.plugin_servers.state"
    ngx.shared.kong_plugin_servers = require("spec.helpers.ngx_stub").fake_dict()
    local sleeps, next_pid = 0, 9
    ngx.sleep = function()
      sleeps = sleeps + 1
      state.set("srv", { state = "ready", pid = next_pid })
    end
    finally(function()
      ngx.shared.kong_plugin_servers = nil
      ngx.sleep = function() end
    end)
    local managed = setmetatable({ start_command = "/bin/srv" }, { __index = def })
    state.set("srv", { state = "ready", pid = 7 })
    local rpc = mp_rpc.new(managed, "vhello")
    queue.sockets = {
      fake({ { reply = "", read_error = "connection reset by peer" } }, 0),
      fake({}, 0),
    }
    local id, err, cause = rpc:start_instance("{}")
    -- the retry waited for the supervisor's new pid instead of failing the request
    assert.is_nil(id)
    assert.equal("restarted", cause)
    assert.matches("pid 7 -> 9", err, 1, true)
    assert.is_true(sleeps >= 1)
    assert.equal(2, #queue.log)
    assert.is_true(queue.log[1].closed)
    assert.matches(":7:", queue.log[1].pool, 1, true)
    assert.matches(":9:", queue.log[2].pool, 1, true)
    -- the new connection was not used for the stale instance: it went to the pool
    assert.same({}, queue.log[2].sent)
    assert.is_true(queue.log[2].kept)
    -- a clean close of a fresh connection is not retried: the server may have run it
    state.set("srv", { state = "ready", pid = 10 })
    -- (the second socket checks that the server still listens: it does)
    queue.sockets = { fake({ { reply = "", read_error = "closed" } }, 0), fake({}, 0) }
    _, err, cause = rpc:start_instance("{}")
    assert.equal("connect", cause)
    assert.equal("plugin server srv closed the connection", err)
    assert.equal(4, #queue.log)
    assert.matches("^kps%-alive:", queue.log[4].pool)
    dropped(4)
    -- a dead pooled connection, then a connect into the dying server: still waits
    state.set("srv", { state = "ready", pid = 11 })
    next_pid = 12
    queue.sockets = {
      fake({ { reply = "", read_error = "closed" } }, 2),
      fake({}, 0), -- the check that the server still listens
      fake({ { send_error = "broken pipe" } }, 0),
      fake({}, 0),
    }
    _, err, cause = rpc:start_instance("{}")
    assert.equal("restarted", cause)
    assert.matches("pid 11 -> 12", err, 1, true)
    assert.equal(8, #queue.log)
    assert.matches(":12:", queue.log[8].pool, 1, true)
  end)

  it("answers a PDK failure with StepError and an unencodable result with StepError too", function()
    local rpc = mp_rpc.new(def, "vhello")
    local function response(id, result)
      local head = string.char(0x94, 0x01, id, 0xc0)
      return head .. bridge.encode(0, result)
    end
    queue.sockets = { fake({
      { reply = response(1, { EventId = 7, Data = { Method = "kong.request.get_path", Args = {} } }) },
      { reply = response(2, { EventId = 7, Data = "ret" }) },
    }) }
    local ok = rpc:handle_event(5, "access", function() return true, { f = print } end)
    assert.is_true(ok)
    local step = bridge.decode(0, queue.log[1].sent[2])
    assert.equal("plugin.StepError", step[3])
    assert.equal("cannot encode the result of kong.request.get_path: cannot encode a function value (at f)",
                 step[4][1].Data)
  end)
end)
