-- Plugin instances stay bounded while the configuration changes, with the real
-- servers of both protocols (go-hello on go-pdk, py-hello on kong-pdk): 100
-- configuration changes, half of them replacing the plugin entities (new ids: the
-- old ones left the configuration), half changing their config (new __seq__).
-- Afterwards the worker holds at most KEEP_GENERATIONS + 1 instances per plugin,
-- and so does each server: py-hello counts them itself (plugin.GetStatus), for
-- go-hello the instances started minus the ones it logged as closed.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

fixtures.require_built({ "go-hello", "py-hello" })

local PY = fixtures.python
local HOST = "example.test"

-- Asks a kong-pdk server over its socket how many instances it holds.
local GET_STATUS = [==[
import socket, sys, msgpack
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(msgpack.packb([0, 1, "plugin.GetStatus", []]))
u = msgpack.Unpacker(raw=False)
while True:
    data = s.recv(65536)
    if not data:
        sys.exit("closed")
    u.feed(data)
    for _, _, err, res in u:
        if err:
            sys.exit(str(err))
        print(sum(len(p["Instances"]) for p in res["Plugins"].values()))
        sys.exit(0)
]==]

local function py_instance_count(prefix, socket_path)
  local script = prefix .. "/get_status.py"
  procs.write_file(script, GET_STATUS)
  local p = assert(io.popen(PY .. " " .. script .. " " .. socket_path .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("^(%d+)")), out
end

local function id(kind, n)
  return string.format("00000000-0000-4000-8%03d-%012d", kind, n)
end

describe("plugin instances under configuration changes", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("stay bounded in the worker and on both servers", function()
    local prefix = nginx.make_prefix()
    local names = { "go-hello", "py-hello" }
    local settings = fixtures.set_for_servers(fixtures.settings(names, prefix), names,
                                              { ready_timeout = "5000", read_timeout = "5000" })
    h = assert(nginx.start { prefix = prefix, workers = 1, log_level = "info", configuration = settings })
    assert(nginx.wait_until(function()
      for _, name in ipairs(names) do
        local s = h:server_status(name)
        if not (s and s.state == "ready") then
          return false
        end
      end
      return true
    end, 15), "servers not ready")

    local generation = 0
    local CHANGES = 100
    for i = 1, CHANGES do
      if i % 2 == 1 then
        generation = generation + 1 -- new entities: the previous ones are gone
      end
      local message = "m" .. i
      assert(h:set_plugins {
        { name = "go-hello", id = id(1, generation), config = { message = message } },
        { name = "py-hello", id = id(2, generation), config = { message = message } },
      })
      local res = assert(h:request { path = "/", headers = { host = HOST } })
      assert.equal(200, res.status)
      assert.equal("Go says " .. message .. " to " .. HOST, res.headers["x-hello-from-go"])
      assert.equal("Python says " .. message .. " to " .. HOST, res.headers["x-hello-from-python"])
    end

    -- the worker's instance tables
    local held = assert(h:eval_json [[
      local ps = require "kong.runloop.plugin_servers"
      local out = { keep = require("kong.runloop.plugin_servers.instances").KEEP_GENERATIONS }
      for _, name in ipairs { "go-hello", "py-hello" } do
        local _, p = ps.load_plugin(name)
        local n = 0
        for _ in pairs(p.instances.entries) do n = n + 1 end
        out[name] = n
      end
      return out
    ]])
    local KEEP = held.keep or 16 -- the documented bound, should the module not say
    assert.is_true(KEEP >= 1 and KEEP < CHANGES / 2)
    for _, name in ipairs(names) do
      assert.is_true(held[name] >= 1 and held[name] <= KEEP + 1, name .. " holds " .. held[name])
      assert.equal(CHANGES, h:server_status(name).counters.instance_starts)
    end

    -- py-hello's own count
    local n, out = py_instance_count(prefix, prefix .. "/py-hello.socket")
    assert(n, out)
    assert.is_true(n >= 1 and n <= KEEP + 1, "py-hello holds " .. n)

    -- go-hello logs "closed instance <id>" for each CloseInstance (and for its
    -- own expiry of instances idle for 60 s, which this spec is too quick for)
    local closed = {}
    assert(nginx.wait_until(function()
      for _, line in ipairs(h:log_lines("closed instance %d+")) do
        closed[line:match("closed instance (%d+)")] = true
      end
      local c = 0
      for _ in pairs(closed) do c = c + 1 end
      return CHANGES - c <= KEEP + 1
    end, 5), "go-hello closed too few instances")
  end)
end)
