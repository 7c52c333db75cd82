-- What a plugin server can call, with real nginx and one worker:
-- a stand-in server of each protocol (fixtures/servers/mp_fault.py, pb_fault.py in
-- mode `refuse`) calls names outside the PDK (`os.execute("touch <marker>")`,
-- `io.open`, `os.exit`, `require`, `ngx.*`, `_G.*`, malformed names, non-functions;
-- fault_common.refused_calls). Nothing runs: no marker file, no header, same worker;
-- each call gets the error the protocol has (MessagePack: StepError naming the
-- method, and the event goes on to a normal PDK call and 200; Protobuf has no error
-- reply: the connection is closed, which go-pdk's call returns as an error, and the
-- event fails by the failure rule). Each refusal is counted (errors.refused_method)
-- and logged once per method per log window.
local cjson = require "cjson"
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local PY = fixtures.python
local SERVERS = fixtures.stand_ins
local NAME = "fault"
local K = "pluginserver_fault_"

-- The stand-ins' list, with the marker path of `prefix`.
local function refused_calls(marker)
  local p = assert(io.popen(PY .. " -c 'import sys, json; sys.path.insert(0, \"" .. SERVERS .. "\"); "
    .. "import fault_common; print(json.dumps(fault_common.refused_calls(sys.argv[1])))' '" .. marker .. "'"))
  local out = p:read("*a")
  p:close()
  return cjson.decode(out)
end

local function start(script, mode)
  local prefix = nginx.make_prefix()
  local sock = prefix .. "/" .. NAME .. ".socket"
  local query_cmd, start_cmd = fixtures.stand_in_commands(script, NAME, sock)
  local h = assert(nginx.start {
    prefix = prefix, workers = 1,
    configuration = {
      prefix = prefix,
      pluginserver_names = { NAME },
      [K .. "socket"] = sock,
      [K .. "query_cmd"] = query_cmd,
      [K .. "start_cmd"] = start_cmd,
      [K .. "read_timeout"] = "5000",
      [K .. "ready_timeout"] = "5000",
      -- one window for the whole spec: each method's line must appear once
      [K .. "log_window"] = "600000",
    },
    plugins = { { name = NAME, config = { mode = mode } } },
  })
  h.sock = sock
  h.marker = prefix .. "/refused.marker"
  assert(nginx.wait_until(function()
    local st = h:eval_json [[return require("kong.runloop.plugin_servers").status()[1] ]]
    return st and st.state == "ready"
  end, 10), "the server did not become ready")
  return h
end

local function status(h)
  return assert(h:eval_json [[return require("kong.runloop.plugin_servers").status()[1] ]])
end

local function calls_of(h)
  local out = {}
  for line in (procs.read_file(h.sock .. ".calls") or ""):gmatch("[^\n]+") do
    out[#out + 1] = cjson.decode(line)
  end
  return out
end

local function lit(s)
  return (s:gsub("%p", "%%%0"))
end

local function refusal(name)
  return "method '" .. name .. "' is not part of the PDK"
end

local function context(h, res)
  return "status " .. tostring(res and res.status) .. ", body: " .. tostring(res and res.body) .. "\n"
    .. (h:error_log() or ""):sub(-3000)
end

-- Nothing ran: no marker, no header set by a malformed name, the same worker and
-- server, no crash.
local function assert_nothing_ran(h, res, worker, server_pid)
  assert.is_nil(procs.read_file(h.marker), "the marker file exists")
  assert.is_nil(res.headers["x-refused"])
  assert.same({ worker }, h:worker_pids())
  assert.equal(server_pid, status(h).pid)
  assert.equal(0, h:count_log("exited on signal"))
end

describe("PDK surface", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("MessagePack: each name outside the PDK gets StepError naming it, the event goes on", function()
    h = start(SERVERS .. "/mp_fault.py", "refuse")
    local list = refused_calls(h.marker)
    local worker = h:worker_pids()[1]
    local server_pid = status(h).pid
    for round = 1, 2 do
      local res = assert(h:request { headers = { host = "fault.test" } })
      -- the normal PDK call after the refused ones worked, and the event completed
      assert.equal(200, res.status, context(h, res))
      assert.equal(tostring(server_pid), res.headers["x-fault-pid"])
      assert_nothing_ran(h, res, worker, server_pid)
      local calls = calls_of(h)
      assert.equal(#list * round, #calls)
      for i, c in ipairs(list) do
        local got = calls[(round - 1) * #list + i]
        assert.equal(c[1], got.name)
        assert.same({ "plugin.StepError", refusal(c[1]) }, { got.reply, got.data })
      end
      local counters = status(h).counters
      assert.equal(#list * round, counters.errors.refused_method)
      assert.equal(0, counters.errors.protocol)
      assert.equal(round, counters.pdk_calls)   -- the refused calls are not PDK calls
    end
    -- logged once per method in the window, though refused twice
    for _, c in ipairs(list) do
      assert.equal(1, h:count_log(lit("[pluginserver] fault: " .. refusal(c[1]) .. " (refused)")), c[1])
    end
    assert.equal(0, h:count_log("failed in access"))
  end)

  it("Protobuf: each name outside the PDK ends its event (go-pdk has no error reply), nothing runs", function()
    h = start(SERVERS .. "/pb_fault.py", "refuse")
    local list = {}
    for _, c in ipairs(refused_calls(h.marker)) do
      if c[1] ~= "" then   -- an empty name frame is the end of a handler in this protocol
        list[#list + 1] = c
      end
    end
    local worker = h:worker_pids()[1]
    local server_pid = status(h).pid
    for i, c in ipairs(list) do
      local res = assert(h:request { headers = { host = "fault.test" } })
      -- the failure rule of a failed event (fail_open off): 500
      assert.equal(500, res.status, context(h, res))
      assert_nothing_ran(h, res, worker, server_pid)
      local calls = calls_of(h)
      assert.equal(i, #calls)
      assert.same({ name = c[1], reply = "closed" }, calls[i])
    end
    local counters = status(h).counters
    assert.equal(#list, counters.errors.refused_method)
    assert.equal(0, counters.errors.protocol)
    for _, c in ipairs(list) do
      assert.equal(1, h:count_log(lit("[pluginserver] fault: " .. refusal(c[1]) .. " (refused)")), c[1])
    end
    assert(h:wait_log(lit("plugin fault failed in access (refused_method): " .. refusal(list[1][1])), 2))
    -- the server and the worker go on: the next event is served
    assert(h:set_plugins { { name = NAME, config = { mode = "ok" } } })
    local res = assert(h:request { headers = { host = "fault.test" } })
    assert.equal(200, res.status, context(h, res))
    assert.equal(tostring(server_pid), res.headers["x-fault-pid"])
    assert_nothing_ran(h, res, worker, server_pid)
  end)
end)
