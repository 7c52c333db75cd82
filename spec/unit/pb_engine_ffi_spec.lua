-- The Protobuf engine through its C ABI, as the Lua transport will drive it: the
-- conversation recorded with a real go-hello (tests/vectors/protobuf_conversation.txt,
-- `make -C fixtures/plugins golden`) is replayed through kps_pb_stream_* calls,
-- with received bytes cut at every split point; then limits and end-of-stream
-- classification.
local ffi = require "ffi"
local lib = require "kong.runloop.plugin_servers.lib"

local C = lib.C
local ffi_str = ffi.string

local function unhex(h)
  return (h:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end))
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- { { label, steps = { {kind, ...}, ... } }, ... }; consecutive recv lines joined.
local function conversation()
  local f = assert(io.open("tests/vectors/protobuf_conversation.txt", "rb"))
  local text = f:read("*a")
  f:close()
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local words = {}
      for w in line:gmatch("%S+") do
        words[#words + 1] = w
      end
      local tag = words[1]
      if tag == "@" then
        out[#out + 1] = { label = words[2], steps = {} }
      else
        local steps = out[#out].steps
        local last = steps[#steps]
        if tag == "recv" and last and last[1] == "recv" then
          last[2] = last[2] .. unhex(words[2])
        elseif tag == "send" or tag == "recv" then
          steps[#steps + 1] = { tag, unhex(words[2]) }
        elseif tag == "call" or tag == "reply" then
          local bytes = words[#words] == "-" and "" or unhex(words[#words])
          steps[#steps + 1] = { tag, bytes, words[2] }
        elseif tag == "status" then
          steps[#steps + 1] = { tag, tonumber(words[2]), tonumber(words[3]) }
        else
          steps[#steps + 1] = { tag }
        end
      end
    end
  end
  return out
end

local out = ffi.new("const uint8_t *[1]")
local out_len = ffi.new("size_t[1]")
local ev = ffi.new("kps_pb_event")

local function session(max)
  local s = C.kps_pb_session_new(max or 1048576)
  assert(s ~= nil)
  return ffi.gc(s, C.kps_pb_session_free)
end

local function stream(sess)
  return ffi.gc(C.kps_pb_stream_new(sess), C.kps_pb_stream_free)
end

local function check(rc)
  if rc ~= 0 then
    error(lib.errmsg(), 2)
  end
  return ffi_str(out[0], out_len[0])
end

local function feed(st, bytes)
  local buf, len = lib.errbuf()
  assert(C.kps_pb_stream_feed(st, bytes, #bytes, buf, len) == 0, lib.errmsg())
end

local function poll(st)
  local buf, len = lib.errbuf()
  local rc = C.kps_pb_stream_poll(st, ev, buf, len)
  if rc ~= 0 then
    return nil, lib.errmsg()
  end
  return ev.kind
end

-- Replays the recording; `cut` splits each received stretch into pieces.
local function replay(cut)
  local sess = session()
  local st = stream(sess)
  local config = '{"message":"Kong!","__seq__":7}'
  local events = 0
  for _, conv in ipairs(conversation()) do
    local steps, i = conv.steps, 1
    local buf, len = lib.errbuf()
    local sent
    if conv.label == "start_instance" then
      sent = check(C.kps_pb_stream_start_instance(sess, st, "go-hello", 8, config, #config, out, out_len, buf, len))
    elseif conv.label == "close_instance" then
      sent = check(C.kps_pb_stream_close_instance(sess, st, 7, out, out_len, buf, len))
    else
      sent = check(C.kps_pb_stream_handle_event(sess, st, 7, conv.label, #conv.label, out, out_len, buf, len))
    end
    assert.equal(hex(steps[i][2]), hex(sent), conv.label .. ": request")
    i = i + 1
    while steps[i] do
      assert.equal("recv", steps[i][1])
      local pieces = cut(steps[i][2])
      i = i + 1
      local call
      for _, piece in ipairs(pieces) do
        if call then
          assert.equal("", piece, "bytes after a call, before its reply")
        else
          feed(st, piece)
          local kind = assert(poll(st))
          while kind ~= C.KPS_PB_NONE do
            events = events + 1
            if kind == C.KPS_PB_CALL then
              call = { name = ffi_str(ev.text, ev.text_len), args = ffi_str(ev.value, ev.value_len),
                       method = ev.method }
              break
            elseif kind == C.KPS_PB_STATUS then
              assert.same({ "status", steps[i][2], steps[i][3] },
                          { steps[i][1], tonumber(ev.id), tonumber(ev.started_at) })
              i = i + 1
            else
              assert.equal(C.KPS_PB_DONE, kind)
              assert.same({ "done" }, steps[i])
              i = i + 1
            end
            kind = assert(poll(st))
          end
        end
      end
      if call then
        assert.same({ "call", steps[i][2], steps[i][3] }, { steps[i][1], call.args, call.name })
        assert.is_true(call.method > 0, call.name .. " has a table index")
        local reply = steps[i + 1][2]
        buf, len = lib.errbuf()
        local frame = check(C.kps_pb_stream_reply(st, reply, #reply, out, out_len, buf, len))
        assert.equal(hex(steps[i + 2][2]), hex(frame), conv.label .. ": reply frame")
        i = i + 3
      end
    end
    assert.equal(0, C.kps_pb_stream_has_unread(st))
  end
  return events
end

describe("Protobuf engine through the C ABI", function()
  it("replays the recorded go-hello session in one piece", function()
    -- 2 statuses + 3 events done + 15 PDK calls (access 3, response 2, log 10)
    assert.equal(20, replay(function(b) return { b } end))
  end)

  it("replays it with every received stretch cut at every point", function()
    local longest = 0
    for _, conv in ipairs(conversation()) do
      for _, step in ipairs(conv.steps) do
        if step[1] == "recv" then
          longest = math.max(longest, #step[2])
        end
      end
    end
    assert.is_true(longest > 100)
    for at = 0, longest do
      assert.equal(20, replay(function(b)
        local k = math.min(at, #b)
        return { b:sub(1, k), b:sub(k + 1) }
      end))
    end
  end)

  it("refuses a session without a usable frame limit", function()
    assert.is_true(C.kps_pb_session_new(0) == nil)
    assert.is_true(C.kps_pb_session_new(2 ^ 32) == nil)
    assert.is_true(C.kps_pb_stream_new(nil) == nil)
  end)

  it("fails an oversized frame with a message naming max_message_size", function()
    local sess = session(16)
    local st = stream(sess)
    local buf, len = lib.errbuf()
    check(C.kps_pb_stream_handle_event(sess, st, 1, "access", 6, out, out_len, buf, len))
    feed(st, "\17\0\0\0")
    local kind, err = poll(st)
    assert.is_nil(kind)
    assert.equal("protocol error: frame of 17 bytes exceeds max_message_size (16)", err)
  end)

  it("classifies a close before the first callback frame as retryable, a later one not", function()
    local sess = session()
    local st = stream(sess)
    local buf, len = lib.errbuf()
    check(C.kps_pb_stream_handle_event(sess, st, 1, "access", 6, out, out_len, buf, len))
    buf, len = lib.errbuf()
    assert.equal(C.KPS_PB_CLOSED_BEFORE_REPLY, C.kps_pb_stream_closed(st, buf, len))
    assert.equal("connection closed by the plugin server before any reply to HandleEvent", lib.errmsg())

    C.kps_pb_stream_reset(st)
    buf, len = lib.errbuf()
    check(C.kps_pb_stream_handle_event(sess, st, 1, "access", 6, out, out_len, buf, len))
    feed(st, "\18\0\0\0kong.log.serialize\0\0\0\0")
    assert.equal(C.KPS_PB_CALL, poll(st))
    buf, len = lib.errbuf()
    check(C.kps_pb_stream_reply(st, nil, 0, out, out_len, buf, len))
    buf, len = lib.errbuf()
    assert.equal(C.KPS_PB_CLOSED_LATER, C.kps_pb_stream_closed(st, buf, len))
    assert.equal("connection closed by the plugin server during the event, after 1 PDK calls", lib.errmsg())
  end)

  it("reports NULL arguments as KPS_ERR_ARGS", function()
    local buf, len = lib.errbuf()
    assert.equal(C.KPS_ERR_ARGS, C.kps_pb_stream_poll(nil, ev, buf, len))
    assert.equal("kps_pb_stream_poll: null argument", lib.errmsg())
    -- the buffer still holds that message: a null stream must replace it
    buf, len = lib.errbuf()
    assert.equal(C.KPS_PB_CLOSED_LATER, C.kps_pb_stream_closed(nil, buf, len))
    assert.equal("kps_pb_stream_closed: null stream", lib.errmsg())
  end)
end)
