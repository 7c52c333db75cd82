-- Start-up with 1 and 8 Go plugin servers (go-hello under the names go-hello-1..N:
-- go-pdk names its plugin and socket after the executable as /proc/self/exe sees
-- it, so each name is a hard link, or a copy when /tmp is another filesystem).
--
--   luajit bench/startup.lua [repeats]      (run from the repo root; make bench does)
--
-- Per N, the median of `repeats` starts of nginx (1 worker):
--   info: from running nginx until the master has the plugin info (the nginx
--         command returns after init_by_lua, where the engine runs the N info
--         queries in parallel);
--   ready: from running nginx until the error log says every server is ready.
-- And the same N info queries (`go-hello-i -dump`) run by this script one after
-- another, for the sequential comparison.
-- Prints markdown table rows: `| start-up: ... | ... |`.

package.path = "./?.lua;" .. package.path

local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"

local REPEATS = tonumber(arg[1]) or 3
local COUNTS = { 1, 8 }
local q = fixtures.sh_quote

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function row(label, text)
  print(string.format("| start-up: %s | %s |", label, text))
  io.stdout:flush()
end

local function median(list)
  table.sort(list)
  return list[math.floor((#list + 1) / 2)]
end

local ok, why = fixtures.available("go-hello")
if not ok then
  row("1 and 8 Go servers", "skipped: " .. why)
  return
end
local GO = fixtures.root .. "/build/bin/go-hello"

-- A directory of hard links (or copies) go-hello-1..n of the go-hello binary.
local function binaries(n)
  local dir = nginx.make_prefix() .. "/bin"
  assert(sh("mkdir -p " .. q(dir)))
  local list = {}
  for i = 1, n do
    list[i] = dir .. "/go-hello-" .. i
    assert(sh("ln " .. q(GO) .. " " .. q(list[i]) .. " 2>/dev/null || cp " .. q(GO) .. " " .. q(list[i])))
  end
  return list, dir
end

local function settings(bins, prefix)
  local s = { prefix = prefix, pluginserver_names = {} }
  for i, bin in ipairs(bins) do
    local name = bin:match("[^/]+$")
    local k = "pluginserver_" .. name:gsub("-", "_")
    s.pluginserver_names[i] = name
    s[k .. "_socket"] = prefix .. "/" .. name .. ".socket"
    s[k .. "_start_cmd"] = q(bin) .. " -kong-prefix " .. q(prefix)
    s[k .. "_query_cmd"] = q(bin) .. " -kong-prefix " .. q(prefix) .. " -dump"
    s[k .. "_ready_timeout"] = "5000"
  end
  return s
end

-- One start: seconds to info loaded and to all ready, or nil, err.
local function start_once(bins)
  local prefix = nginx.make_prefix()
  local plugins = {}
  for i, bin in ipairs(bins) do
    plugins[i] = { name = bin:match("[^/]+$"), config = { message = "bench" } }
  end
  nginx.render(prefix, { workers = 1, log_level = "notice", configuration = settings(bins, prefix),
                         plugins = plugins })
  local t0 = nginx.now()
  local started = sh("/usr/sbin/nginx -p " .. q(prefix .. "/") .. " -c conf/nginx.conf -e logs/error.log >"
                     .. q(prefix .. "/logs/start.out") .. " 2>&1")
  local t_info = nginx.now() - t0
  local log_path = prefix .. "/logs/error.log"
  local function count_ready()
    local f = io.open(log_path, "rb")
    if not f then return 0 end
    local text = f:read("*a")
    f:close()
    local n = 0
    for _ in text:gmatch("pluginserver '[^']+' is ready") do n = n + 1 end
    return n
  end
  local ready = started and nginx.wait_until(function() return count_ready() >= #bins end, 20, 0.002)
  local t_ready = nginx.now() - t0
  -- Quit nginx, then end any process that descended from it and outlived it.
  local f0 = io.open(prefix .. "/logs/nginx.pid")
  local master = f0 and tonumber(f0:read("*a"):match("%d+"))
  if f0 then f0:close() end
  local family = master and procs.descendants(master) or {}
  local stop_ok = master and procs.kill(master, "QUIT")
  nginx.wait_until(function() return not (master and procs.alive(master)) end, 10)
  nginx.wait_until(function()
    for _, pid in ipairs(family) do
      if procs.alive(pid) then return false end
    end
    return true
  end, 5)
  for _, pid in ipairs(family) do
    if procs.alive(pid) then procs.kill(pid, "KILL") end
  end
  local info_line = false
  local f = io.open(log_path, "rb")
  if f then
    info_line = f:read("*a"):find("loaded #" .. #bins .. " external plugins info", 1, true) ~= nil
    f:close()
  end
  if os.getenv("KPS_KEEP_PREFIX") ~= "1" then sh("rm -rf " .. q(prefix)) end
  if not (started and ready and info_line) then
    return nil, "did not start (started " .. tostring(started) .. ", ready " .. tostring(ready)
                .. ", info " .. tostring(info_line) .. ", quit " .. tostring(stop_ok) .. ")"
  end
  return t_info, t_ready
end

local function sequential_queries(bins)
  local prefix = nginx.make_prefix()
  local t0 = nginx.now()
  for _, bin in ipairs(bins) do
    assert(sh(q(bin) .. " -kong-prefix " .. q(prefix) .. " -dump >/dev/null"))
  end
  local t = nginx.now() - t0
  sh("rm -rf " .. q(prefix))
  return t
end

local results = {}
for _, n in ipairs(COUNTS) do
  local bins, dir = binaries(n)
  local infos, readies, seqs = {}, {}, {}
  local err
  for _ = 1, REPEATS do
    local info, ready = start_once(bins)
    if not info then
      err = ready
      break
    end
    infos[#infos + 1], readies[#readies + 1] = info, ready
    seqs[#seqs + 1] = sequential_queries(bins)
  end
  sh("rm -rf " .. q(dir:match("^(.*)/bin$")))
  if err then
    row(n .. " Go server(s)", "failed: " .. err)
  else
    local r = { info = median(infos), ready = median(readies), seq = median(seqs) }
    results[n] = r
    row(n .. " Go server(s)", string.format(
      "nginx start → info loaded **%.0f ms** (queries in parallel); → all servers ready **%.0f ms**; "
      .. "the %d info queries one after another: %.0f ms (median of %d)",
      r.info * 1000, r.ready * 1000, n, r.seq * 1000, REPEATS))
  end
end
if results[1] and results[8] then
  local ratio = results[8].ready / results[1].ready
  row("8 vs 1 Go servers (target < 2×)", string.format("ready: **%.2f×** %s; info: %.2f× (sequential queries would be %.2f×)",
      ratio, ratio < 2 and "(met)" or "(NOT met)", results[8].info / results[1].info,
      results[8].seq / results[1].seq))
end
