-- rpc/connection.lua, the RPC path both protocols share, over the real engines and
-- bridge (the built .so) and fake cosockets: where the two protocols' rules differ
-- (each engine descriptor says so), the shared path keeps them apart.
local fake_cosocket = require "spec.helpers.fake_cosocket"

describe("rpc/connection", function()
  local mp_rpc, pb_rpc, bridge, def
  -- the fakes the next connects get, and those they got
  local queue = { sockets = {}, log = {} }

  local function fake(turns, reused)
    return fake_cosocket.new(turns, reused, 6)
  end

  local function expect(...)
    return fake_cosocket.expect(queue, ...)
  end

  setup(function()
    fake_cosocket.install(queue)
    mp_rpc = require "kong.runloop.plugin_servers.rpc.mp_rpc"
    pb_rpc = require "kong.runloop.plugin_servers.rpc.pb_rpc"
    bridge = require("kong.runloop.plugin_servers.lib").bridge
    def = fake_cosocket.def("srv")
  end)

  it("gives each protocol its own methods, shared by its rpc objects", function()
    local mp1, mp2, pb1 = mp_rpc.new(def, "a"), mp_rpc.new(def, "b"), pb_rpc.new(def, "a")
    assert.equal(getmetatable(mp1), getmetatable(mp2))
    assert.not_equal(getmetatable(mp1), getmetatable(pb1))
    for _, m in ipairs { "start_instance", "close_instance", "handle_event" } do
      assert.is_function(mp1[m])
      assert.equal(mp1[m], mp2[m])
      assert.not_equal(mp1[m], pb1[m])
    end
  end)

  it("a read timeout on a pooled connection before any reply byte: MsgPack retries, Protobuf does not", function()
    local log_of = expect(
      fake({ { reply = "" } }, 3),
      -- the retry is a new message: id 2
      fake({ { reply = string.char(0x94, 0x01, 0x02, 0xc0) .. bridge.encode(0, { Id = 4 }) } }, 0))
    assert.equal(4, mp_rpc.new(def, "a"):start_instance("{}"))
    assert.equal(2, #log_of)
    assert.is_true(log_of[1].closed)

    log_of = expect(fake({ { reply = "" } }, 3))
    local id, err, cause = pb_rpc.new(def, "a"):start_instance("{}")
    assert.is_nil(id)
    assert.equal("timeout", cause)
    assert.equal("read from srv failed: timeout", err)
    assert.equal(1, #log_of)
    assert.is_true(log_of[1].closed)
  end)

  it("a HandleEvent closed before any reply byte: a lost instance for Protobuf only", function()
    local function never() error("not called") end
    expect(fake({ { reply = "", read_error = "closed" } }, 0))
    local ok, err, cause = mp_rpc.new(def, "a"):handle_event(9, "access", never)
    assert.is_nil(ok)
    assert.equal("connect", cause)
    assert.equal("plugin server srv closed the connection", err)

    expect(fake({ { reply = "", read_error = "closed" } }, 0))
    ok, err, cause = pb_rpc.new(def, "a"):handle_event(9, "access", never)
    assert.is_nil(ok)
    assert.equal("no_instance", cause)
    assert.matches("instance #9 is probably gone", err, 1, true)
  end)

  it("a send that fails before any reply byte on a pooled connection is retried for both", function()
    for _, case in ipairs {
      { mp_rpc, string.char(0x94, 0x01, 0x02, 0xc0) .. bridge.encode(0, { Id = 4 }) },
      -- RpcReturn{sequence = 3, instance_status = {instance_id = 4}}: a new call
      { pb_rpc, "\7\0\0\0\8\3\138\2\2\16\4" },
    } do
      local log_of = expect(fake({ { send_error = "broken pipe" } }, 3), fake({ { reply = case[2] } }, 0))
      assert.equal(4, case[1].new(def, "a"):start_instance("{}"))
      assert.equal(2, #log_of)
    end
  end)

  it("kong.response.exit ends the event without a reply; refused by the PDK, it fails the event", function()
    local function frame(body)
      return string.char(#body, 0, 0, 0) .. body
    end
    for _, case in ipairs {
      { mp_rpc, string.char(0x94, 0x01, 1, 0xc0) .. bridge.encode(0, {
          EventId = 7, Data = { Method = "kong.response.exit", Args = { 403, "no" } } }), { 403, "no" } },
      -- go-pdk's call frames: the method name, then its input (status 403)
      { pb_rpc, frame("kong.response.exit") .. frame("\8\147\3"), { 403, "" } },
    } do
      local log_of = expect(fake({ { reply = case[2] } }, 0))
      local got
      assert.is_true(case[1].new(def, "a"):handle_event(5, "access", function(_, _, args) got = args return true end))
      assert.same(case[3], got)
      assert.equal(1, #log_of[1].sent)
      assert.is_true(log_of[1].closed)
      assert.is_false(log_of[1].kept)

      log_of = expect(fake({ { reply = case[2] } }, 0))
      local ok, err, cause = case[1].new(def, "a"):handle_event(5, "response",
        function() return false, "headers have already been sent" end)
      assert.is_nil(ok)
      assert.equal("kong.response.exit failed: headers have already been sent", err)
      assert.equal("protocol", cause)
      assert.equal(1, #log_of[1].sent)
      assert.is_true(log_of[1].closed)
    end
  end)
end)
