-- No log event lost while the server keeps up on average: go-hello (real go-pdk,
-- about ten PDK calls in its log phase) under 64 connections over 2 workers for
-- 20 s. Every request the host served to the client ran the plugin's log phase,
-- and every one of those log events reached the server (status() counts a log
-- event that the server ran to its end as log_events), none refused, none failed.
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"

local ok, why = fixtures.available("go-hello")
if not ok then
  error(why)
end

local SECONDS = 20
local CONNECTIONS = 64

-- Requests to `/` in the access log: the ones that ran the plugin (the host's
-- admin and mock upstream locations have other paths).
local function served(prefix)
  local f = assert(io.open(prefix .. "/logs/access.log", "rb"))
  local n = 0
  for line in f:lines() do
    if line:find('"GET / HTTP/1.1"', 1, true) then
      n = n + 1
    end
  end
  f:close()
  return n
end

describe("log events under load", function()
  local h

  after_each(function()
    h = nginx.stop_host(h)
  end)

  it("go-hello, 64 connections over 2 workers for 20 s: every log event reaches the server, none refused",
     function()
    local prefix = nginx.make_prefix()
    local settings = fixtures.settings({ "go-hello" }, prefix)
    settings.pluginserver_go_hello_log_window = "1000"
    h = assert(nginx.start { prefix = prefix, workers = 2, configuration = settings,
                             plugins = { { name = "go-hello", config = { message = "load" } } } })
    assert(nginx.wait_until(function()
      local s = h:server_status("go-hello")
      return s and s.state == "ready"
    end, 15), "go-hello not ready")
    local res = h:request { path = "/" }
    assert.equal(200, res.status)
    assert.truthy(res.headers["x-hello-from-go"])

    local p = assert(io.popen(("timeout %d wrk -t2 -c%d -d%ds http://127.0.0.1:%d/ 2>&1")
      :format(SECONDS + 30, CONNECTIONS, SECONDS, h.port)))
    local out = p:read("*a")
    p:close()
    local requests = tonumber(out:match("(%d+) requests in"))
    assert(requests and requests > 0, out)
    assert.is_nil(out:match("Non%-2xx or 3xx responses"), out)

    -- the queues drain after the load: wait until every served request's log event ran
    local total
    nginx.wait_until(function()
      total = served(prefix)
      local c = h:server_status("go-hello").counters
      return c.log_events >= total
    end, 60, 0.5)
    local c = h:server_status("go-hello").counters
    -- wrk counts the responses it read; the host served a few more (cut at the end)
    assert.is_true(total >= requests + 1, ("served %d, wrk read %d"):format(total, requests))
    assert.equal(0, c.log_refused)
    assert.equal(total, c.log_events, ("served %d, log events run %d"):format(total, c.log_events))
    assert.same({ connect = 0, timeout = 0, protocol = 0, no_instance = 0, refused_method = 0 }, c.errors)
    assert.equal(0, h:count_log("failed in log"))
    assert.equal(0, h:count_log("refused"))
    print(("\n  go-hello log back-pressure: %d requests in %d s (%d served), %d log events run, %d refused")
      :format(requests, SECONDS, total, c.log_events, c.log_refused))
  end)
end)
