-- pdk.lua: method resolution, Kong's overrides with explicitly passed saved data,
-- and the error results that become plugin.StepError.
describe("pdk dispatch", function()
  local pdk, bridge, calls

  before_each(function()
    calls = {}
    _G.kong = {
      request = {
        get_header = function(name) calls[#calls + 1] = name return "live-" .. name end,
        get_headers = function(max) return { live = "yes", max = max } end,
        get_path = function() return "/p" end,
        get_uri_captures = function(ctx) return ctx.captures end,
      },
      response = {
        get_status = function() return 201 end,
        get_header = function() return "live" end,
        get_source = function(ctx) return ctx and ctx.source or "service" end,
      },
      log = { serialize = function() return { live = true } end },
      ctx = { shared = { k = "live-shared" } },
      fails = {
        raise = function() error("boom", 0) end,
        nil_err = function() return nil, "not found" end,
        args = function(...) return { n = select("#", ...), ... } end,
      },
    }
    ngx.ctx = { captures = "live-captures", KONG = "x" }
    ngx.var = { host = "h.test" }
    package.loaded["kong.runloop.plugin_servers.pdk"] = nil
    pdk = require "kong.runloop.plugin_servers.pdk"
    bridge = require("kong.runloop.plugin_servers.lib").bridge
  end)

  after_each(function()
    _G.kong = nil
  end)

  local function idx(name)
    return bridge.method_index(name)
  end

  it("calls PDK functions by index or by name, with array arguments", function()
    assert.same({ true, "live-host" }, { pdk.call(idx("kong.request.get_header"), nil, { "host" }, 1) })
    assert.same({ true, "/p" }, { pdk.call(idx("kong.request.get_path"), "kong.request.get_path") })
    local ok, res = pdk.call(0, "kong.fails.args", { "a", nil, "c" }, 3)
    assert.is_true(ok)
    assert.same({ n = 3, "a", nil, "c" }, res)
    -- a non-array Args is the single argument
    ok, res = pdk.call(0, "kong.fails.args", { x = 1 })
    assert.same({ n = 1, { x = 1 } }, res)
    ok, res = pdk.call(0, "kong.fails.args", "s")
    assert.same({ n = 1, "s" }, res)
  end)

  it("turns raised errors, nil-err results and missing methods into failures", function()
    assert.same({ false, "boom" }, { pdk.call(0, "kong.fails.raise") })
    assert.same({ false, "not found" }, { pdk.call(0, "kong.fails.nil_err") })
    assert.same({ false, "method 'kong.nope.x' is not part of the PDK", "refused" }, { pdk.call(0, "kong.nope.x") })
    assert.same({ false, "method 'kong.request' is not part of the PDK", "refused" }, { pdk.call(0, "kong.request") })
  end)

  it("serves the overrides from the live request without saved data", function()
    assert.same({ true, "h.test" }, { pdk.call(idx("kong.nginx.get_var"), nil, { "host" }, 1) })
    assert.same({ true, "x" }, { pdk.call(idx("kong.nginx.get_ctx"), nil, { "KONG" }, 1) })
    pdk.call(idx("kong.nginx.set_ctx"), nil, { "new", 5 }, 2)
    assert.equal(5, ngx.ctx.new)
    assert.same({ true, "live-shared" }, { pdk.call(idx("kong.ctx.shared.get"), nil, { "k" }, 1) })
    assert.same({ true, '{"live":true}' }, { pdk.call(idx("kong.log.serialize")) })
    assert.same({ true, "live-captures" }, { pdk.call(idx("kong.request.get_uri_captures")) })
    assert.same({ true, { live = "yes", max = 10 } }, { pdk.call(idx("kong.request.get_headers"), nil, { 10 }, 1) })
  end)

  it("serves the overrides from the saved data passed in (log phase)", function()
    local saved = {
      serialize_data = { saved = 1 }, ngx_ctx = { KONG = "saved-ctx", captures = "saved-captures", source = "exit" },
      ctx_shared = { k = "saved-shared" }, request_headers = { host = { "a.test", "b.test" } },
      response_headers = { server = "mock" }, response_status = 418, req_start_time = 12.5,
    }
    local function call(name, args, n)
      return { pdk.call(idx(name), nil, args, n, saved) }
    end
    assert.same({ true, '{"saved":1}' }, call("kong.log.serialize"))
    assert.same({ true, "saved-ctx" }, call("kong.nginx.get_ctx", { "KONG" }, 1))
    call("kong.nginx.set_ctx", { "w", 1 }, 2)
    assert.equal(1, saved.ngx_ctx.w)
    assert.is_nil(ngx.ctx.w)
    assert.same({ true, "saved-shared" }, call("kong.ctx.shared.get", { "k" }, 1))
    call("kong.ctx.shared.set", { "k2", "v" }, 2)
    assert.equal("v", saved.ctx_shared.k2)
    assert.same({ true, "a.test" }, call("kong.request.get_header", { "host" }, 1))
    assert.same({ true, saved.request_headers }, call("kong.request.get_headers", { 100 }, 1))
    assert.same({ true, "saved-captures" }, call("kong.request.get_uri_captures"))
    assert.same({ true, 418 }, call("kong.response.get_status"))
    assert.same({ true, "mock" }, call("kong.response.get_header", { "server" }, 1))
    assert.same({ true, "exit" }, call("kong.response.get_source"))
    assert.same({ true, 12.5 }, call("kong.nginx.req_start_time"))
    assert.equal(0, #calls) -- the live PDK was not asked
  end)
end)
