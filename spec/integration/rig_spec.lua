-- The integration rig itself: a real nginx with two workers running the shim.
local nginx = require "spec.helpers.nginx"
local procs = require "spec.helpers.procs"

describe("integration rig", function()
  local h

  setup(function()
    h = assert(nginx.start { workers = 2 })
  end)

  teardown(function()
    if h then h:stop() end
  end)

  it("loads the native library in every worker", function()
    assert.equal(2, #h:worker_pids())
    assert.equal(2, #h:log_lines("%[kps_host%] worker %d ready, library %d+%.%d+%.%d+"))
  end)

  it("delivers a worker event posted in one worker to both workers", function()
    assert(h:eval([[return kong.worker_events.post("kps_host", "ping", { n = 42 })]]))
    assert(h:wait_log("got ping 42", 5, 2))
    local seen = {}
    for _, line in ipairs(h:log_lines("got ping 42")) do
      seen[line:match("worker (%d) got ping")] = true
    end
    assert.same({ ["0"] = true, ["1"] = true }, seen)
  end)

  it("proxies to the mock upstream with buffering and its Server header", function()
    local res = assert(h:request { path = "/hello?x=1", headers = { ["x-test"] = "yes" } })
    assert.equal(200, res.status)
    assert.equal("mock-upstream/1.0.0", res.headers.server)
    local echo = require("cjson").decode(res.body)
    assert.equal("/hello?x=1", echo.uri)
    assert.equal("yes", echo.headers["x-test"])
  end)

  it("evaluates code in a worker and reports its errors", function()
    assert.equal("3", h:eval("return 1 + 2"))
    local res, err = h:eval("error('boom')")
    assert.is_nil(res)
    assert.matches("boom", err)
  end)

  it("assigns a new __seq__ only to a plugin whose config changed", function()
    local first = assert(h:set_plugins {
      { name = "a", id = "id-a", config = { message = "one" } },
      { name = "b", id = "id-b", config = { message = "two" } },
    })
    local second = assert(h:set_plugins {
      { name = "a", id = "id-a", config = { message = "one" } },
      { name = "b", id = "id-b", config = { message = "changed" } },
    })
    assert.equal(first[1].seq, second[1].seq)
    assert.is_true(second[2].seq > first[2].seq)
    assert(h:set_plugins {})
  end)

  it("stops nginx and leaves no process behind", function()
    local master = h:master_pid()
    assert.truthy(procs.alive(master))
    h:stop()
    assert.falsy(procs.alive(master))
    assert.same({}, h:leftovers())
  end)
end)
