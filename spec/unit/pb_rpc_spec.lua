-- rpc/pb_rpc.lua over the real engine and bridge (the built .so), talking to a fake
-- cosocket that replays the conversation recorded from a real go-hello (go-pdk
-- v0.11.2, tests/vectors/protobuf_conversation.txt) in small chunks, plus the
-- failure rules: lost instances, pooled connections, unknown methods, limits.
local fake_cosocket = require "spec.helpers.fake_cosocket"

local function unhex(s)
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

-- The recording: per section, the bytes of each send and what was read after it.
local conv = {}
do
  local section
  for line in io.lines("tests/vectors/protobuf_conversation.txt") do
    local label = line:match("^@ (%S+)")
    local kind, rest = line:match("^(%a+) (%S+)")
    if label then
      section = { sends = {}, turns = {} }
      conv[label] = section
    elseif kind == "send" then
      section.sends[#section.sends + 1] = unhex(rest)
      section.turns[#section.turns + 1] = { reply = "" }
    elseif kind == "recv" then
      local t = section.turns[#section.turns]
      t.reply = t.reply .. unhex(rest)
    end
  end
end

-- the fakes ngx.socket.tcp hands out, in order, and those it handed out
local queue = { sockets = {}, log = {} }

-- Replies arrive 5 bytes at a time.
local function fake(conn_script, reused)
  return fake_cosocket.new(conn_script, reused, 5)
end

local function copy(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = { reply = v.reply, read_error = v.read_error } end
  return out
end

local function frame(body)
  local n = #body
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, 0) .. body
end

describe("pb_rpc", function()
  local pb_rpc, bridge, def

  setup(function()
    fake_cosocket.install(queue)
    pb_rpc = require "kong.runloop.plugin_servers.rpc.pb_rpc"
    bridge = require("kong.runloop.plugin_servers.lib").bridge
    def = fake_cosocket.def("go-srv")
  end)

  before_each(function()
    fake_cosocket.expect(queue)
  end)

  it("is what rpc/init.lua picks for ProtoBuf:1", function()
    local rpc = require("kong.runloop.plugin_servers.rpc").new({ protocol = "ProtoBuf:1", server_def = def,
                                                                  name = "go-hello" })
    assert.is_function(rpc.handle_event)
    assert.equal(getmetatable(pb_rpc.new(def, "x")), getmetatable(rpc))
  end)

  it("replays the recorded go-hello session byte for byte", function()
    local rpc = pb_rpc.new(def, "go-hello")
    queue.sockets = { fake(copy(conv.start_instance.turns)) }
    assert.equal(7, rpc:start_instance('{"message":"Kong!","__seq__":7}'))
    assert.equal(conv.start_instance.sends[1], queue.log[1].sent[1])
    assert.equal("unix:/tmp/go-srv.socket", queue.log[1].path)
    assert.same({ 11, 22, 33 }, queue.log[1].timeouts)
    assert.is_true(queue.log[1].kept)

    local calls = {}
    local answers = {
      ["kong.request.get_header host"] = "example.test",
      ["kong.request.get_header X-Loose-Data"] = "example.test",
      ["kong.service.response.get_header Server"] = "mock-upstream/1.0.0",
      ["kong.response.get_header X-Powered-By"] = "mock_upstream",
      ["kong.nginx.get_ctx KONG_ACCESS_START"] = 1700000000123,
      ["kong.ctx.shared.get shared_msg"] = "Kong!",
      ["kong.log.serialize nil"] = '{"client_ip":"127.0.0.1"}',
    }
    local function dispatch(index, name, args, n, saved)
      calls[#calls + 1] = { index = index, name = name, args = args, n = n, saved = saved }
      return true, answers[name .. " " .. tostring(args and args[1])]
    end
    for _, phase in ipairs { "access", "response", "log" } do
      fake_cosocket.expect(queue, fake(copy(conv[phase].turns)))
      local ok, err, cause, stats = rpc:handle_event(7, phase, dispatch, "SAVED")
      assert.is_nil(err)
      assert.is_nil(cause)
      assert.is_true(ok)
      assert.equal(#conv[phase].sends - 1, stats.pdk_calls)
      assert.same(conv[phase].sends, queue.log[1].sent)
      assert.is_true(queue.log[1].kept)
    end
    assert.equal(2 + 3 + 10, #calls)
    assert.same({ name = "kong.response.set_header", index = bridge.method_index("kong.response.set_header"),
                  args = { "x-hello-from-go", "Go says Kong! to example.test" }, n = 2, saved = "SAVED" }, calls[2])
    assert.same({ "shared_msg", "Kong!" }, calls[3].args)
    assert.same({ "access_start: ", 1700000000123 }, calls[7].args)
    assert.equal(2, calls[7].n)
    assert.is_nil(calls[14].args)   -- kong.log.serialize: no arguments

    fake_cosocket.expect(queue, fake(copy(conv.close_instance.turns)))
    assert.is_true(rpc:close_instance(7))
    assert.equal(conv.close_instance.sends[1], queue.log[1].sent[1])
  end)

  it("reads a connection closed before the first callback frame as a lost instance", function()
    local rpc = pb_rpc.new(def, "go-hello")
    queue.sockets = { fake({ { reply = "", read_error = "closed" } }, 0) }
    local ok, err, cause = rpc:handle_event(9, "access", function() error("not called") end)
    assert.is_nil(ok)
    assert.equal("no_instance", cause)
    assert.matches("before any reply to HandleEvent", err, 1, true)
    assert.matches("instance #9", err, 1, true)
    assert.is_true(queue.log[1].closed)
  end)

  it("reads a connection closed after a callback as a failure, not a lost instance", function()
    local rpc = pb_rpc.new(def, "go-hello")
    local first = conv.access.turns[1].reply    -- the get_header call
    queue.sockets = { fake({ { reply = first }, { reply = "", read_error = "closed" } }, 0) }
    local ok, err, cause, stats = rpc:handle_event(7, "access", function() return true, "h" end)
    assert.is_nil(ok)
    assert.equal("connect", cause)
    assert.matches("during the event, after 1 PDK calls", err, 1, true)
    assert.equal(1, stats.pdk_calls)
  end)

  it("retries once on a fresh connection when a pooled one fails before any reply byte", function()
    local rpc = pb_rpc.new(def, "go-hello")
    queue.sockets = {
      fake({ { reply = "", read_error = "closed" } }, 3),
      -- RpcReturn{sequence = 3, instance_status = {instance_id = 4}}: the retry is a new call
      fake({ { reply = frame("\8\3\138\2\2\16\4") } }, 0),
    }
    assert.equal(4, rpc:start_instance("{}"))
    assert.equal(2, #queue.log)
    assert.is_true(queue.log[1].closed)
    assert.not_equal(queue.log[1].pool, queue.log[2].pool)
    -- no retry on a fresh connection: StartInstance closed early is a connect failure
    fake_cosocket.expect(queue, fake({ { reply = "", read_error = "closed" } }, 0))
    local id2, err2, cause2 = rpc:start_instance("{}")
    assert.is_nil(id2)
    assert.equal("connect", cause2)
    assert.matches("before any reply to StartInstance", err2, 1, true)
    assert.equal(1, #queue.log)
  end)

  local function one_call(name, args_bytes)
    return frame(name) .. frame(args_bytes or "")
  end

  it("ends the event with an error for an unknown method, bad arguments or a failed PDK call", function()
    local rpc = pb_rpc.new(def, "go-hello")
    local called = 0
    local function dispatch(_, name)
      called = called + 1
      if name == "kong.request.get_path" then
        return false, "boom"
      end
      if name == "kong.request.get_scheme" then
        -- in the Protobuf service, but refused by the PDK dispatch
        return false, "method 'kong.request.get_scheme' is not part of the PDK", "refused"
      end
      return true, { f = print }
    end
    local cases = {
      -- outside the Protobuf service: refused before anything runs
      { one_call("kong.nope.missing"), "method 'kong.nope.missing' is not part of the PDK", "refused_method" },
      { one_call("kong.response.error"), "method 'kong.response.error' is not part of the PDK", "refused_method" },
      { one_call("os.execute", "\10\2id"), "method 'os.execute' is not part of the PDK", "refused_method" },
      { one_call("kong.request.get_header", "\10\5ab"), "protocol error: arguments of kong.request.get_header: " },
      { one_call("kong.request.get_path"), "kong.request.get_path failed: boom" },
      { one_call("kong.request.get_scheme"),
        "kong.request.get_scheme failed: method 'kong.request.get_scheme' is not part of the PDK" },
      { one_call("kong.ctx.shared.get", "\10\1k"), "cannot encode the result of kong.ctx.shared.get: " ..
                                                  "cannot encode a function value (at f)" },
    }
    for _, case in ipairs(cases) do
      fake_cosocket.expect(queue, fake({ { reply = case[1] } }, 0))
      local ok, err, cause = rpc:handle_event(7, "access", dispatch)
      assert.is_nil(ok)
      assert.equal(case[3] or "protocol", cause)
      assert.equal(case[2], err:sub(1, #case[2]))
      assert.is_true(queue.log[1].closed)
      assert.is_false(queue.log[1].kept)
      assert.equal(1, #queue.log[1].sent)   -- nothing answered
    end
    assert.equal(3, called)
  end)

  it("wraps raw bodies as content, body file or error", function()
    local rpc = pb_rpc.new(def, "go-hello")
    local answers = { { true, "the body" }, { true, nil }, { false, "too big" } }
    local i = 0
    local function dispatch()
      i = i + 1
      return answers[i][1], answers[i][2]
    end
    local replies = {}
    for n = 1, 3 do
      fake_cosocket.expect(queue, fake({ { reply = one_call("kong.request.get_raw_body") }, { reply = "" } }, 0))
      rpc:handle_event(7, "access", dispatch)
      replies[n] = queue.log[1].sent[2]
    end
    assert.equal(frame("\10\8the body"), replies[1])
    assert.equal(frame("\26\23Can't read request body"), replies[2])
    assert.equal(frame("\26\7too big"), replies[3])
  end)

  it("refuses a frame longer than max_message_size", function()
    local small = {}
    for k, v in pairs(def) do small[k] = v end
    small.max_message_size = 64
    local rpc = pb_rpc.new(small, "go-hello")
    queue.sockets = { fake({ { reply = frame(string.rep("x", 65)) } }, 0) }
    local ok, err, cause = rpc:handle_event(7, "access", function() end)
    assert.is_nil(ok)
    assert.equal("protocol", cause)
    assert.matches("frame of 65 bytes exceeds max_message_size (64)", err, 1, true)
    assert.is_true(queue.log[1].closed)
  end)
end)
