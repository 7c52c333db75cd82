-- shm.lua: which shared dict the shim uses, its key prefix, and the size line.
local stub = require "spec.helpers.ngx_stub"
local fake_dict = stub.fake_dict

describe("shm", function()
  local shm

  before_each(function()
    package.loaded["kong.runloop.plugin_servers.shm"] = nil
    shm = require "kong.runloop.plugin_servers.shm"
    ngx.shared.kong_plugin_servers = nil
    ngx.shared.kong = nil
  end)

  after_each(function()
    ngx.shared.kong_plugin_servers = nil
    ngx.shared.kong = nil
  end)

  -- shm.get() gives dict, with the key prefix and the dict's name.
  local function assert_gets(dict, prefix, name)
    local d, p, n = shm.get()
    assert.equal(dict, d)
    assert.equal(prefix, p)
    assert.equal(name, n)
  end

  it("uses kong_plugin_servers without a prefix when it exists, even beside kong", function()
    local own = fake_dict()
    ngx.shared.kong_plugin_servers = own
    ngx.shared.kong = fake_dict()
    assert_gets(own, "", "kong_plugin_servers")
  end)

  it("falls back to Kong's kong dict under kps:", function()
    local kong_dict = fake_dict()
    ngx.shared.kong = kong_dict
    assert_gets(kong_dict, "kps:", "kong")
  end)

  it("without either: nil and the message naming the kong.conf line", function()
    local d, err = shm.get()
    assert.is_nil(d)
    assert.equal("shared dict 'kong_plugin_servers' not found; add "
      .. "'nginx_http_lua_shared_dict = kong_plugin_servers 1m' to kong.conf", err)
    assert.equal(err, shm.describe({}))
  end)

  it("sizes a server by the slab its longest key needs (measured: 6267 and 11776 bytes)", function()
    local keys = shm.KEYS_PER_SERVER -- checked against a real dict by shm_fallback_spec
    assert.equal(keys * 128 + 256, shm.bytes_per_server("srv-000001", "kps:"))
    assert.equal(keys * 256 + 256, shm.bytes_per_server("a-rather-long-plugin-server-name-0000001", "kps:"))
    assert.is_true(shm.bytes_per_server("srv-000001", "kps:") >= 6267)
    assert.is_true(shm.bytes_per_server("a-rather-long-plugin-server-name-0000001", "kps:") >= 11776)
  end)

  it("describes the dict in use and the bytes it takes", function()
    ngx.shared.kong = fake_dict()
    local defs = { { name = "go-hello" }, { name = "py-hello" } }
    local one = shm.KEYS_PER_SERVER * 128 + 256
    local sizes = ("up to %d bytes per server, %d bytes for 2 server(s)"):format(one, 2 * one)
    assert.equal("plugin server state in Kong's shared dict 'kong' under keys 'kps:*' "
      .. "(no 'kong_plugin_servers' dict declared): " .. sizes, shm.describe(defs))
    ngx.shared.kong_plugin_servers = fake_dict()
    assert.equal("plugin server state in shared dict 'kong_plugin_servers': " .. sizes, shm.describe(defs))
  end)
end)
