-- Every PDK method of the Protobuf service, end to end: the real go-coverage
-- plugin (go-pdk) calls each one once per request and logs what it got
-- (`kps-cov <method> {"v":...,"err":...}`); the spec wraps the host's PDK
-- functions so that each call logs what it received and returned
-- (`kps-host-call <method> {...}`), and checks both directions for each method.
-- A method of the table that this spec does not check fails it.
local cjson = require "cjson.safe"
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local sets = require "spec.helpers.sets"

assert(fixtures.available("go-coverage"))

local NULL = cjson.null

-- Installed in the worker: wraps every kong.* function a Protobuf method resolves
-- to (overrides call them too), logging its arguments and first result.
local WRAP = [==[
  local cjson = require "cjson.safe"
  local lib = require "kong.runloop.plugin_servers.lib"
  local pdk = require "kong.runloop.plugin_servers.pdk"
  local methods = {}
  for _, m in pairs(lib.bridge.methods()) do
    if m.pb_out then methods[#methods + 1] = m end
  end
  local function walk(name)
    local parent, key = kong, nil
    local segs = {}
    for seg in name:gmatch("[%w_]+") do segs[#segs + 1] = seg end
    for i = 2, #segs - 1 do parent = parent and parent[segs[i]] end
    key = segs[#segs]
    return parent, key
  end
  local wrapped = {}
  for _, m in ipairs(methods) do
    local parent, key = walk(m.name)
    local fn = type(parent) == "table" and parent[key]
    if type(fn) == "function" then
      parent[key] = function(...)
        local n = select("#", ...)
        local args = {}
        for i = 1, n do
          local v = select(i, ...)
          if v == nil then v = cjson.null end
          args[i] = v
        end
        if m.terminal then
          -- it does not return (ngx.exit): log the arguments first
          ngx.log(ngx.NOTICE, "kps-host-call ", m.name, " ", cjson.encode({ args = args }))
        end
        local r1, r2 = fn(...)
        local text = cjson.encode({ args = args, ret = r1 == nil and cjson.null or r1,
                                    err = r2 == nil and cjson.null or tostring(r2) })
        ngx.log(ngx.NOTICE, "kps-host-call ", m.name, " ", text or "unencodable")
        return r1, r2
      end
      wrapped[#wrapped + 1] = m.name
    end
  end
  pdk.clear_cache()
  local names = {}
  for _, m in ipairs(methods) do names[m.name] = { pb_in = m.pb_in, pb_out = m.pb_out } end
  return { wrapped = wrapped, methods = names, canned = require("kps_host.pdk").canned }
]==]

-- Lines "<tag> <method> <json>" of the log, first per method.
local function parse(h, tag)
  local out = {}
  for _, line in ipairs(h:log_lines(tag:gsub("%-", "%%-") .. " ")) do
    -- the wrapper's own lines quote what kong.log.notice got
    local method, json = line:match(tag:gsub("%-", "%%-") .. " (%S+) (%b{})")
    if tag == "kps-cov" and line:find("kps-host-call", 1, true) then
      method = nil
    end
    if method and out[method] == nil then
      out[method] = assert(cjson.decode(json), "bad JSON for " .. method .. ": " .. json)
    end
  end
  return out
end

-- Does Go's value `g` say the same as the host's Lua value `l`? A value Lua left
-- out is Go's zero value; a header/query table holds lists.
local function same(l, g)
  if l == nil or l == NULL then
    if g == nil or g == NULL or g == "" or g == 0 or g == false then return true end
    if type(g) == "table" then
      for _, v in pairs(g) do
        if not same(nil, v) then return false end
      end
      return true
    end
    return false
  end
  if type(l) ~= "table" then
    return l == g
  end
  if type(g) ~= "table" then return false end
  local keys = {}
  for k in pairs(l) do keys[k] = true end
  for k in pairs(g) do keys[k] = true end
  for k in pairs(keys) do
    local lk = l[k]
    if lk == nil and type(k) == "string" and tonumber(k) then lk = l[tonumber(k)] end
    if not same(lk, g[k]) then return false end
  end
  return true
end

-- Header/query tables as go-pdk's map[string][]string: a string is a list of one,
-- `true` (a flag) an empty list.
local function multimap(t)
  local out = {}
  for k, v in pairs(t or {}) do
    if type(v) == "string" then v = { v } elseif v == true then v = {} end
    out[type(k) == "string" and k:lower() or k] = v
  end
  return out
end

local function lower_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k:lower()] = v end
  return out
end

describe("go-coverage: every Protobuf PDK method", function()
  local h, info, go, host, res, t0, t1, exit_res

  setup(function()
    local prefix = nginx.make_prefix()
    local settings = fixtures.settings({ "go-coverage" }, prefix)
    settings.pluginserver_go_coverage_read_timeout = "3000"
    settings.pluginserver_go_coverage_ready_timeout = "5000"
    h = assert(nginx.start { prefix = prefix, workers = 1, log_level = "info", configuration = settings,
                             plugins = { { name = "go-coverage", config = {} } } })
    info = assert(h:eval_json(WRAP))
    t0 = nginx.now()
    res = assert(h:request { method = "POST", path = "/cov/in?q=qv&flag", body = "cov request body",
                             headers = { host = "cov.test", ["x-cov-in"] = "in-value", ["x-cov-drop"] = "gone" } })
    t1 = nginx.now()
    assert(h:wait_log("kps%-cov log:kong%.ctx%.shared%.get", 5))
    go = parse(h, "kps-cov")
    host = parse(h, "kps-host-call")
    exit_res = assert(h:request { path = "/exit", headers = { ["x-cov-exit"] = "1" } })
    assert(h:wait_log("kps%-host%-call kong%.response%.exit", 5))
  end)

  teardown(function()
    if h then h:stop() end
  end)

  -- What each method must show. `c`: { go = Go's report, host = the host's record,
  -- m = the method's Protobuf types }. Each returns nothing and asserts.
  local function returns(c)
    -- Go's result equals what the host's PDK function returned, in Go's shape.
    local ret = c.host.ret
    local out = c.m.pb_out
    if out == "Struct" then
      assert.is_true(same(multimap(ret), c.go.v), cjson.encode(c.go.v) .. " vs " .. cjson.encode(ret))
    else
      assert.is_true(same(ret, c.go.v), tostring(cjson.encode(c.go.v)) .. " vs " .. tostring(cjson.encode(ret)))
    end
    assert.equal(NULL, c.go.err)
  end

  local function args(...)
    local want = { ... }
    return function(c)
      assert.same(want, c.host.args)
      if c.m.pb_out ~= "Empty" then
        returns(c)
      else
        assert.same({ v = NULL, err = NULL }, c.go)
      end
    end
  end

  local function no_args(c)
    assert.same({}, c.host.args)
    returns(c)
  end

  local function level(lvl, text)
    return function(c)
      assert.same({ v = NULL, err = NULL }, c.go)
      -- one line per request (the second one ends with kong.response.exit)
      assert.equal(2, h:count_log("%[" .. lvl .. "%].*" .. text:gsub("%p", "%%%0") .. ","))
    end
  end

  local function ok_empty(c)
    assert.same({ v = NULL, err = NULL }, c.go)
  end

  local EXPECT = {
    ["kong.client.get_ip"] = function(c) no_args(c) assert.equal("127.0.0.1", c.go.v) end,
    ["kong.client.get_forwarded_ip"] = no_args,
    ["kong.client.get_port"] = function(c) no_args(c) assert.is_true(c.go.v > 0) end,
    ["kong.client.get_forwarded_port"] = no_args,
    ["kong.client.get_credential"] = function(c)
      no_args(c)
      assert.same(info.canned.credential, c.go.v)
    end,
    ["kong.client.load_consumer"] = function(c)
      args("alice", true)(c)
      assert.equal(info.canned.consumer.username, c.go.v.username)
    end,
    ["kong.client.get_consumer"] = function(c)
      no_args(c)
      assert.same(info.canned.consumer, c.go.v)
    end,
    ["kong.client.authenticate"] = args(
      { id = "cov-consumer", username = "cov-user", custom_id = "cov-1", tags = { "t1" } },
      { id = "cov-cred", consumer_id = "cov-consumer" }),
    ["kong.client.get_protocol"] = function(c) args(true)(c) assert.equal("http", c.go.v) end,
    -- overrides: no kong.* function behind them
    ["kong.ctx.shared.set"] = ok_empty,
    ["kong.ctx.shared.get"] = function(c)
      assert.same({ v = "shared-value", err = NULL }, c.go)
      assert.same({ v = "shared-value", err = NULL }, go["log:kong.ctx.shared.get"])
    end,
    ["kong.ip.is_trusted"] = function(c) args("127.0.0.1")(c) assert.is_true(c.go.v) end,
    -- `false` reaches the host as false (Kong's decoder made it nil)
    ["kong.log.alert"] = level("alert", "kps-cov-log alert 1true"),
    ["kong.log.crit"] = level("crit", "kps-cov-log crit 2.5false"),
    ["kong.log.err"] = level("error", "kps-cov-log err x"),
    ["kong.log.warn"] = level("warn", "kps-cov-log warn"),
    ["kong.log.notice"] = level("notice", "kps-cov-log notice"),
    ["kong.log.info"] = level("info", "kps-cov-log info"),
    ["kong.log.debug"] = function(c)
      -- debug lines are below this host's log level: the call itself is checked
      assert.same({ v = NULL, err = NULL }, c.go)
      assert.same({ "kps-cov-log debug" }, c.host.args)
    end,
    ["kong.log.set_serialize_value"] = args("cov_serialize", "serialized-value"),
    ["kong.log.serialize"] = function(c)
      assert.same({ ["request.method"] = "POST", ["request.uri"] = "/cov/in?q=qv&flag", client_ip = "127.0.0.1" },
                  c.go.v)
    end,
    ["kong.nginx.get_var"] = function(c) assert.same({ v = "/cov/in?q=qv&flag", err = NULL }, c.go) end,
    -- plain http: no TLS version, the empty string
    ["kong.nginx.get_tls1_version_str"] = function(c) assert.same({ v = "", err = NULL }, c.go) end,
    ["kong.nginx.set_ctx"] = ok_empty,
    ["kong.nginx.get_ctx"] = function(c)
      assert.same({ v = 42.5, err = NULL }, c.go)
      assert.same({ v = 42.5, err = NULL }, go["log:kong.nginx.get_ctx"])
    end,
    ["kong.nginx.req_start_time"] = function(c)
      assert.is_true(c.go.v >= math.floor(t0) - 1 and c.go.v <= t1 + 1, tostring(c.go.v))
    end,
    ["kong.nginx.get_subsystem"] = function(c) no_args(c) assert.equal("http", c.go.v) end,
    ["kong.node.get_id"] = no_args,
    ["kong.node.get_memory_stats"] = function(c)
      no_args(c)
      assert.same(info.canned.memory_stats, c.go.v)
    end,
    ["kong.request.get_scheme"] = function(c) no_args(c) assert.equal("http", c.go.v) end,
    ["kong.request.get_host"] = function(c) no_args(c) assert.equal("cov.test", c.go.v) end,
    ["kong.request.get_port"] = function(c) no_args(c) assert.equal(h.port, c.go.v) end,
    ["kong.request.get_forwarded_scheme"] = no_args,
    ["kong.request.get_forwarded_host"] = no_args,
    ["kong.request.get_forwarded_port"] = no_args,
    ["kong.request.get_http_version"] = function(c) no_args(c) assert.equal(1.1, c.go.v) end,
    ["kong.request.get_method"] = function(c) no_args(c) assert.equal("POST", c.go.v) end,
    ["kong.request.get_path"] = function(c) no_args(c) assert.equal("/cov/in", c.go.v) end,
    ["kong.request.get_path_with_query"] = no_args,
    ["kong.request.get_raw_query"] = function(c) no_args(c) assert.equal("q=qv&flag", c.go.v) end,
    ["kong.request.get_query_arg"] = function(c) args("q")(c) assert.equal("qv", c.go.v) end,
    ["kong.request.get_query"] = function(c)
      args(100)(c)
      assert.same({ q = { "qv" }, flag = {} }, c.go.v)   -- the flag survives (Kong: dropped by go-pdk)
    end,
    ["kong.request.get_header"] = function(c) args("x-cov-in")(c) assert.equal("in-value", c.go.v) end,
    ["kong.request.get_headers"] = function(c)
      args(100)(c)
      assert.same({ "in-value" }, c.go.v["x-cov-in"])
    end,
    ["kong.request.get_raw_body"] = function(c) no_args(c) assert.equal("cov request body", c.go.v) end,
    ["kong.request.get_uri_captures"] = function(c)
      assert.same({ unnamed = { "/cov/in" }, named = {} }, c.go.v)
      assert.equal(NULL, c.go.err)
    end,
    ["kong.response.get_status"] = function(c) no_args(c) assert.equal(200, c.go.v) end,
    ["kong.response.get_header"] = function(c) args("x-cov-set")(c) assert.equal("set", c.go.v) end,
    ["kong.response.get_headers"] = function(c)
      args(100)(c)
      assert.same({ "m1", "m2" }, c.go.v["x-cov-multi"])
    end,
    -- the override passes the saved ctx (nil outside the log timer)
    ["kong.response.get_source"] = function(c) args(NULL)(c) assert.equal("service", c.go.v) end,
    ["kong.response.set_status"] = function(c)
      args(201)(c)
      assert.equal(201, res.status)
    end,
    ["kong.response.set_header"] = function(c) args("x-cov-set", "set")(c) assert.equal("set", res.headers["x-cov-set"]) end,
    ["kong.response.add_header"] = args("x-cov-add", "a1"),
    ["kong.response.clear_header"] = function(c)
      args("x-cov-add")(c)
      assert.is_nil(res.headers["x-cov-add"])
    end,
    ["kong.response.set_headers"] = function(c)
      args({ ["x-cov-multi"] = { "m1", "m2" } })(c)
      assert.same({ "m1", "m2" }, res.headers["x-cov-multi"])
    end,
    ["kong.response.exit"] = function()
      local e = assert(parse(h, "kps-host-call")["kong.response.exit"])
      assert.same({ 418, "cov exit", { ["x-cov-exit"] = { "yes" } } }, e.args)
      assert.equal(418, exit_res.status)
      assert.equal("cov exit", exit_res.body)
      assert.equal("yes", exit_res.headers["x-cov-exit"])
    end,
    ["kong.router.get_route"] = function(c) no_args(c) assert.equal(info.canned.route.id, c.go.v.id) end,
    ["kong.router.get_service"] = function(c) no_args(c) assert.equal(info.canned.service.port, c.go.v.port) end,
    -- go-pdk reads no result (the Bool reply is sent and ignored)
    ["kong.service.set_upstream"] = function(c)
      assert.same({ "cov-upstream" }, c.host.args)
      assert.is_true(c.host.ret)
      assert.same({ v = NULL, err = NULL }, c.go)
    end,
    ["kong.service.set_target"] = args("127.0.0.1", 8080),
    ["kong.service.request.set_scheme"] = args("http"),
  }

  -- kong.service.request.*: the arguments, and what the upstream got (its echo).
  local function upstream(check)
    return function(c)
      assert.same({ v = NULL, err = NULL }, c.go)
      check(c.host.args, assert(cjson.decode(res.body)))
    end
  end
  EXPECT["kong.service.request.set_path"] = upstream(function(a, echo)
    assert.same({ "/cov/path" }, a)
    assert.equal("/cov/path", echo.uri:match("^[^?]*"))
  end)
  EXPECT["kong.service.request.set_raw_query"] = upstream(function(a) assert.same({ "raw=1" }, a) end)
  EXPECT["kong.service.request.set_method"] = upstream(function(a, echo)
    assert.same({ "POST" }, a)
    assert.equal("POST", echo.method)
  end)
  EXPECT["kong.service.request.set_query"] = upstream(function(a, echo)
    assert.same({ { cov = { "q1" } } }, a)
    assert.equal("cov=q1", echo.uri:match("%?(.*)$"))
  end)
  EXPECT["kong.service.request.set_header"] = upstream(function(a, echo)
    assert.same({ "x-cov-up", "up" }, a)
    assert.equal("up", echo.headers["x-cov-up"])
  end)
  EXPECT["kong.service.request.add_header"] = upstream(function(a, echo)
    assert.same({ "x-cov-up-add", "u1" }, a)
    assert.equal("u1", echo.headers["x-cov-up-add"])
  end)
  EXPECT["kong.service.request.clear_header"] = upstream(function(a, echo)
    assert.same({ "x-cov-drop" }, a)
    assert.is_nil(echo.headers["x-cov-drop"])
  end)
  EXPECT["kong.service.request.set_headers"] = upstream(function(a, echo)
    assert.same({ { ["x-cov-up-multi"] = { "v1", "v2" } } }, a)
    assert.same({ "v1", "v2" }, echo.headers["x-cov-up-multi"])
  end)
  EXPECT["kong.service.request.set_raw_body"] = upstream(function(a, echo)
    assert.same({ "cov body" }, a)
    assert.equal("cov body", echo.body)
  end)
  EXPECT["kong.service.response.get_status"] = function(c) no_args(c) assert.equal(200, c.go.v) end
  EXPECT["kong.service.response.get_header"] = function(c)
    args("Server")(c)
    assert.equal("mock-upstream/1.0.0", c.go.v)
  end
  EXPECT["kong.service.response.get_headers"] = function(c)
    -- go-pdk sends 100 for -1; the host's function takes no limit
    assert.same({ 100 }, c.host.args)
    assert.is_true(same(multimap(lower_keys(c.host.ret)), c.go.v))
    assert.same({ "mock_upstream" }, c.go.v["x-powered-by"])
  end
  EXPECT["kong.service.response.get_raw_body"] = function(c)
    no_args(c)
    assert.equal(res.body, c.go.v)
  end

  it("covers every method of the Protobuf service and nothing else", function()
    assert.same({}, sets.without(info.methods, EXPECT))
    assert.same({}, sets.without(EXPECT, info.methods))
    assert.equal(74, sets.count(info.methods))
  end)

  it("answers the plugin with what the host's PDK returned, and the host got the plugin's arguments", function()
    local names = {}
    for name in pairs(info.methods) do names[#names + 1] = name end
    table.sort(names)
    local checked = 0
    for _, name in ipairs(names) do
      local c = { go = go[name], host = host[name], m = info.methods[name] }
      if name ~= "kong.response.exit" then
        assert(c.go, "go-coverage reported nothing for " .. name)
      end
      local ok, err = pcall(EXPECT[name], c)
      if not ok then
        error(name .. ": " .. tostring(err) .. "\n go: " .. tostring(cjson.encode(c.go))
              .. "\n host: " .. tostring(cjson.encode(c.host)), 0)
      end
      checked = checked + 1
    end
    assert.equal(74, checked)
    assert.same({}, h:log_lines("failed in"))
  end)
end)
