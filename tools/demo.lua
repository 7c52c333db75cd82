-- make demo: validates a sample kong.conf with mistakes, then starts nginx (two
-- workers) with the Kong-like host, the shim and the real hello plugin servers,
-- sends a request through them, prints what they did, the servers' status and
-- a few lines of metrics(), and stops everything. nginx declares no shared dict
-- of ours: the shim uses Kong's `kong` dict.
package.path = "./spec/?.lua;./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path

local nginx = require "spec.helpers.nginx"

local function section(title)
  io.write("\n== ", title, "\n")
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- 1. Config validation of a kong.conf with one mistake of each kind.
if exists("tools/check-conf.lua") and exists("fixtures/demo/bad_settings.lua") then
  section("validating fixtures/demo/bad_settings.lua (one mistake of each kind)")
  io.stdout:flush()
  os.execute("luajit tools/check-conf.lua fixtures/demo/bad_settings.lua")  -- exits 1: invalid on purpose
end

-- 2. The hello plugins in a real nginx.
local ok_fixtures, fixtures = pcall(require, "spec.helpers.fixtures")
local names = {}
if ok_fixtures then
  for _, name in ipairs({ "go-hello", "py-hello", "js-hello" }) do
    if fixtures.available(name) then
      names[#names + 1] = name
    else
      io.write("(skipping ", name, ": not built; run `make deps`)\n")
    end
  end
end

local prefix = nginx.make_prefix()
local configuration = ok_fixtures and #names > 0 and fixtures.settings(names, prefix)
  or { pluginserver_names = {} }
configuration.pluginserver_names = configuration.pluginserver_names or names
local plugins = {}
for _, name in ipairs(names) do
  plugins[#plugins + 1] = { name = name, config = { message = "Kong" } }
end

section("starting nginx (2 workers) with plugin servers: " .. (#names > 0 and table.concat(names, ", ") or "none"))
-- Only Kong's own `kong` dict, as Kong's nginx template declares it: no shared-dict
-- line of ours (the shim keeps its state there under keys "kps:*").
local h, err = nginx.start {
  prefix = prefix, workers = 2, configuration = configuration, plugins = plugins, log_level = "info",
  dicts = { kong = "5m" },
}
if not h then
  io.write(err, "\n")
  os.exit(1)
end

local ok, run_err = pcall(function()
  for _, line in ipairs(h:log_lines("%[kps_host%] worker %d+ ready")) do
    io.write(line:match("%[kps_host%].*"), "\n")
  end
  -- wait until every managed server is ready (bounded), then send a request
  nginx.wait_until(function()
    local status = h:eval_json("return require('kong.runloop.plugin_servers').status()")
    if type(status) ~= "table" then return false end
    for _, s in ipairs(status) do
      if s.state ~= "ready" and s.state ~= "external" then return false end
    end
    return true
  end, 10)
  for _, line in ipairs(h:log_lines("%[pluginserver%]")) do
    io.write((line:match("%[pluginserver%].*"):gsub(", context: .*$", "")), "\n")
  end

  section("GET / with Host: demo.test")
  local res, rerr = h:request { path = "/", headers = { host = "demo.test" } }
  if not res then
    io.write("request failed: ", tostring(rerr), "\n")
  else
    io.write("status ", res.status, "\n")
    local keys = {}
    for k in pairs(res.headers) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      if k:find("^x%-hello") or k == "server" then
        io.write(k, ": ", tostring(res.headers[k]), "\n")
      end
    end
  end

  section("status()")
  local status = h:eval_json("return require('kong.runloop.plugin_servers').status()")
  if type(status) ~= "table" then
    io.write("status() failed\n")
  else
    io.write(string.format("%-10s %-8s %-7s %-8s %-6s %-9s %-6s %s\n",
      "server", "state", "pid", "restarts", "events", "pdk_calls", "errors", "latency ms (sum/max)"))
    for _, s in ipairs(status) do
      local c = s.counters or {}
      local e = c.errors or {}
      local errors = (e.connect or 0) + (e.timeout or 0) + (e.protocol or 0) + (e.no_instance or 0)
      local lat = c.latency_ms or {}
      io.write(string.format("%-10s %-8s %-7s %-8s %-6s %-9s %-6s %.1f/%.1f\n", s.name, s.state,
        tostring(s.pid), tostring(s.restarts), tostring(c.events), tostring(c.pdk_calls), errors,
        lat.sum or 0, lat.max or 0))
    end
  end

  section("metrics() (Prometheus text format; a few lines of each server)")
  local res_m = h:request { path = "/plugin-servers/metrics" }
  local shown = 0
  for line in ((res_m and res_m.body) or ""):gmatch("[^\n]+") do
    if line:find('state="ready"} 1', 1, true) or line:find("_total{", 1, true) and not line:find("} 0$")
      or line:find("_count{", 1, true) or line:find('le="0.001"', 1, true) then
      io.write(line, "\n")
      shown = shown + 1
    end
  end
  if shown == 0 then
    io.write("metrics failed: ", tostring(res_m and res_m.body), "\n")
  end

  local errors = h:log_lines("%[error%]")
  if #errors > 0 then
    section("error log lines")
    for _, line in ipairs(errors) do io.write(line, "\n") end
  end
end)

section("stopping nginx")
h:stop()
io.write("stopped; processes left behind: ", #h:leftovers(), "\n")
if not ok then
  io.write("demo failed: ", tostring(run_err), "\n")
  os.exit(1)
end
