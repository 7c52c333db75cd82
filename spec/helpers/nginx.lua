-- The integration rig: runs Debian's nginx with the shim and the Kong-like host of
-- fixtures/host on a free loopback port with its own prefix, and gives specs a small
-- API over it. Everything it starts, it stops (by PID), including every process that
-- descends from its nginx.
--
--   local nginx = require "spec.helpers.nginx"
--   local h = assert(nginx.start { workers = 2, configuration = {...}, plugins = {...} })
--   local res = h:request { path = "/", headers = { host = "example.test" } }
--   h:wait_log("started, pid %d+", 5)
--   h:stop()

local cjson = require "cjson.safe"
local socket = require "socket"
local procs = require "spec.helpers.procs"

local _M = {}
local Host = {}
Host.__index = Host

local NGINX = "/usr/sbin/nginx"

local function repo_root()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/spec/helpers/nginx%.lua$") or "."
  local p = io.popen("cd '" .. dir .. "' && pwd")
  local abs = p:read("*l")
  p:close()
  return abs
end

_M.root = repo_root()

local function sh(cmd)
  local ok, _, code = os.execute(cmd)
  return ok == true or ok == 0, code
end

local read = procs.read_file

local write = procs.write_file

function _M.sleep(s)
  socket.sleep(s)
end

function _M.now()
  return socket.gettime()
end

function _M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Polls fn every `step` seconds until it returns a truthy value or `timeout` passes.
function _M.wait_until(fn, timeout, step)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    local v = fn()
    if v then
      return v
    end
    socket.sleep(step or 0.02)
  until socket.gettime() > deadline
  return nil
end

local function render(template, vars)
  return (template:gsub("%${([%w_]+)}", function(k)
    local v = vars[k]
    assert(v ~= nil, "template variable missing: " .. k)
    return tostring(v)
  end))
end

function _M.make_prefix()
  local p = io.popen("mktemp -d /tmp/kps-spec-XXXXXX")
  local dir = p:read("*l")
  p:close()
  for _, sub in ipairs({ "conf", "logs", "temp" }) do
    assert(sh("mkdir -p '" .. dir .. "/" .. sub .. "'"))
  end
  return dir
end

-- With `timing_log = true`: one line per response in logs/timing.log, "<uri> <end time>
-- <request time> <status>|<x-hello-from-go>|<...-python>|<...-javascript>" ('-' when a
-- header is absent), for tools/probe-outage.lua.
_M.TIMING_LOG = "log_format kps_timing '$request_uri $msec $request_time $status|$sent_http_x_hello_from_go"
  .. "|$sent_http_x_hello_from_python|$sent_http_x_hello_from_javascript'; "
  .. "access_log logs/timing.log kps_timing;"

-- `lua_shared_dict` lines for the rig's `dicts` option ({ [name] = size }; default
-- the shim's own dict; `{ kong = "5m" }` is what Kong's template gives).
local function shared_dicts(dicts)
  dicts = dicts or { kong_plugin_servers = "1m" }
  local names = {}
  for name in pairs(dicts) do
    names[#names + 1] = name
  end
  table.sort(names)
  local lines = {}
  for _, name in ipairs(names) do
    lines[#lines + 1] = "lua_shared_dict " .. name .. " " .. dicts[name] .. ";"
  end
  return table.concat(lines, " ")
end

-- Writes conf/nginx.conf and kps_host.json into prefix; returns the port.
function _M.render(prefix, opts)
  local root = _M.root
  local port = opts.port or _M.free_port()
  -- `lua_path_prefix`/`lua_cpath_prefix` (bench/kong.lua): searched before the shim
  local lua_path = table.concat({
    root .. "/lua/?.lua", root .. "/lua/?/init.lua",
    root .. "/fixtures/host/lua/?.lua", root .. "/fixtures/host/lua/?/init.lua",
  }, ";")
  if opts.lua_path_prefix then
    lua_path = opts.lua_path_prefix .. ";" .. lua_path
  end
  local lua_cpath = opts.lua_cpath or (root .. "/target/release/lib?.so")
  if opts.lua_cpath_prefix then
    lua_cpath = opts.lua_cpath_prefix .. ";" .. lua_cpath
  end
  local template = assert(read(root .. "/fixtures/host/nginx.conf.tpl"))
  write(prefix .. "/conf/nginx.conf", render(template, {
    workers = opts.workers or 1,
    log_level = opts.log_level or "info",
    port = port,
    lua_path = lua_path,
    lua_cpath = lua_cpath,
    timing_log = opts.timing_log and _M.TIMING_LOG or "",
    shared_dicts = shared_dicts(opts.dicts),
    metrics_conf = root .. "/fixtures/host/metrics.conf",
    -- `http_extra`: more directives in the http block (bench/kong.lua: Kong's timer limits)
    http_extra = opts.http_extra or "",
  }))
  local configuration = {}
  for k, v in pairs(opts.configuration or {}) do
    configuration[k] = v
  end
  configuration.prefix = configuration.prefix or prefix
  -- Debian's cjson encodes {} as an object: write the plugin array by hand
  local plugins = opts.plugins or {}
  local plugins_json = #plugins == 0 and "[]" or assert(cjson.encode(plugins))
  -- `cosocket_floor` (bench/e2e.lua): fixtures/host/lua/kps_host/cosocket_floor.lua's settings
  local floor_json = opts.cosocket_floor and (',"cosocket_floor":' .. assert(cjson.encode(opts.cosocket_floor))) or ""
  -- `worker_header`: responses tell which worker ran their plugins (X-Kps-Host-Worker)
  floor_json = floor_json .. (opts.worker_header and ',"worker_header":true' or "")
  -- `kong_reset`: the host empties the `kong` dict at init (start and reload), as Kong does
  floor_json = floor_json .. (opts.kong_reset and ',"kong_reset":true' or "")
  write(prefix .. "/kps_host.json", '{"configuration":' .. assert(cjson.encode(configuration))
        .. ',"plugins":' .. plugins_json .. floor_json .. "}")
  return port
end

-- Starts nginx; returns a Host, or nil and the reason (with the error log).
function _M.start(opts)
  opts = opts or {}
  local prefix = opts.prefix or _M.make_prefix()
  local port = _M.render(prefix, opts)
  local h = setmetatable({
    prefix = prefix, port = port, workers = opts.workers or 1, known = {},
  }, Host)
  local ok = sh(NGINX .. " -p '" .. prefix .. "/' -c conf/nginx.conf -e logs/error.log >'"
                .. prefix .. "/logs/start.out' 2>&1")
  if not ok then
    local why = "nginx failed to start:\n" .. (read(prefix .. "/logs/start.out") or "")
      .. "\n" .. (h:error_log() or "")
    h:stop()
    return nil, why
  end
  local ready = _M.wait_until(function()
    local log = h:error_log() or ""
    local n = 0
    for _ in log:gmatch("%[kps_host%] worker %d+ ready") do
      n = n + 1
    end
    return n >= h.workers
  end, opts.start_timeout or 10)
  if not ready then
    local why = "nginx workers did not become ready:\n" .. (h:error_log() or "")
    h:stop()
    return nil, why
  end
  h:remember_descendants()
  return h
end

function Host:master_pid()
  local text = read(self.prefix .. "/logs/nginx.pid")
  return text and tonumber(text:match("%d+"))
end

function Host:worker_pids()
  local master = self:master_pid()
  local list = {}
  if not master then
    return list
  end
  for _, pid in ipairs(procs.descendants(master)) do
    local ppid = procs.stat(pid)
    if ppid == master and (procs.cmdline(pid) or ""):find("worker process", 1, true) then
      list[#list + 1] = pid
    end
  end
  table.sort(list)
  return list
end

-- Records every current descendant of nginx, so that stop() can end them all.
function Host:remember_descendants()
  local master = self:master_pid()
  if master then
    self.known[master] = self.known[master] or procs.cmdline(master)
    for _, pid in ipairs(procs.descendants(master)) do
      self.known[pid] = self.known[pid] or procs.cmdline(pid)
    end
  end
end

function Host:error_log()
  return read(self.prefix .. "/logs/error.log")
end

-- Lines of the error log matching a Lua pattern.
function Host:log_lines(pattern)
  local out = {}
  for line in (self:error_log() or ""):gmatch("[^\n]+") do
    if line:find(pattern) then
      out[#out + 1] = line
    end
  end
  return out
end

function Host:count_log(pattern)
  return #self:log_lines(pattern)
end

function Host:wait_log(pattern, timeout, count)
  count = count or 1
  local lines = _M.wait_until(function()
    local l = self:log_lines(pattern)
    return #l >= count and l
  end, timeout or 5)
  if not lines then
    return nil, "no line matching '" .. pattern .. "' in " .. self.prefix .. "/logs/error.log"
  end
  return lines[count]
end

-- Minimal HTTP/1.1 client (Connection: close). Returns { status, headers, body }
-- (header names lower-cased; repeated headers joined as arrays), or nil, err.
function Host:request(opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(opts.timeout or 10)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then
    return nil, "connect: " .. tostring(err)
  end
  local body = opts.body or ""
  local lines = { (opts.method or "GET") .. " " .. (opts.path or "/") .. " HTTP/1.1" }
  local headers = { host = "localhost", connection = "close" }
  for k, v in pairs(opts.headers or {}) do
    headers[k:lower()] = v
  end
  if #body > 0 then
    headers["content-length"] = #body
  end
  for k, v in pairs(headers) do
    -- a list: the header repeated, once per value
    for _, one in ipairs(type(v) == "table" and v or { v }) do
      lines[#lines + 1] = k .. ": " .. tostring(one)
    end
  end
  local sent, serr = c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. body)
  if not sent then
    c:close()
    return nil, "send: " .. tostring(serr)
  end
  local raw, rerr, partial = c:receive("*a")
  c:close()
  raw = raw or partial
  if not raw or raw == "" then
    return nil, "receive: " .. tostring(rerr)
  end
  local head, rest = raw:match("^(.-)\r\n\r\n(.*)$")
  if not head then
    return nil, "bad response: " .. raw
  end
  local status = tonumber(head:match("^HTTP/%d%.%d (%d+)"))
  local res = { status = status, headers = {}, body = rest }
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    name = name:lower()
    local old = res.headers[name]
    if old == nil then
      res.headers[name] = value
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      res.headers[name] = { old, value }
    end
  end
  if (res.headers["transfer-encoding"] or ""):lower() == "chunked" then
    local out, pos = {}, 1
    while true do
      local size_hex, after = rest:match("^(%x+)[^\r\n]*\r\n()", pos)
      if not size_hex then break end
      local size = tonumber(size_hex, 16)
      if size == 0 then break end
      out[#out + 1] = rest:sub(after, after + size - 1)
      pos = after + size + 2
    end
    res.body = table.concat(out)
  end
  return res
end

-- POSTs body to one of the host's /__host/ locations: the reply body on 200, else
-- nil and the error (the body of a non-200 reply).
local function post_host(self, path, body)
  local res, err = self:request { method = "POST", path = path, body = body }
  if not res then
    return nil, err
  end
  if res.status ~= 200 then
    return nil, res.body
  end
  return res.body
end

-- The decoded JSON text, or nil and err as they came.
local function decoded(text, err)
  if not text then
    return nil, err
  end
  return cjson.decode(text)
end

-- Runs Lua code in a worker; returns the result as a string (tables as JSON), or
-- nil and the error.
function Host:eval(code)
  return post_host(self, "/__host/eval", code)
end

-- Like eval, for code that returns a table: the decoded table.
function Host:eval_json(code)
  return decoded(self:eval(code))
end

-- Replaces the plugin list ({ name, config, id? } entries); a changed config gets a
-- new __seq__. Returns the stored list.
function Host:set_plugins(list)
  return decoded(post_host(self, "/__host/plugins", #list == 0 and "[]" or assert(cjson.encode(list))))
end

-- The shim's status(), one entry a server, as a worker sees it; or nil and the error.
function Host:status_list()
  return self:eval_json([[return require("kong.runloop.plugin_servers").status()]])
end

-- The shim's status() entry of the server called name, or nil.
function Host:server_status(name)
  for _, s in ipairs(assert(self:status_list())) do
    if s.name == name then
      return s
    end
  end
end

-- Waits (up to `timeout` seconds) until server `name` is in `state`; its status()
-- entry, or nil.
function Host:wait_state(name, state, timeout)
  return _M.wait_until(function()
    local s = self:server_status(name)
    return s and s.state == state and s
  end, timeout)
end

-- The status() list when it names servers and every one is ready, else false: a
-- condition for nginx.wait_until.
function Host:all_ready()
  local list = self:status_list()
  if type(list) ~= "table" or #list == 0 then
    return false
  end
  for _, s in ipairs(list) do
    if s.state ~= "ready" then
      return false
    end
  end
  return list
end

-- Asserts (with luassert, as a spec does) that the error log has no line of each
-- of `levels` ({ "crit", ... }), showing the log's tail when it has.
function Host:assert_no_lines(levels)
  local luassert = require "luassert"
  for _, level in ipairs(levels) do
    luassert.equal(0, self:count_log("%[" .. level .. "%]"),
                 "no [" .. level .. "] lines:\n" .. (self:error_log() or ""):sub(-4000))
  end
end

local function wait_gone(pids, timeout)
  return _M.wait_until(function()
    for _, pid in ipairs(pids) do
      if procs.alive(pid) then
        return false
      end
    end
    return true
  end, timeout)
end

function Host:signal(sig)
  local master = self:master_pid()
  if master then
    procs.kill(master, sig)
  end
end

-- nginx -s reload; waits until the old workers are gone and the new ones ready.
function Host:reload(timeout)
  self:remember_descendants()
  local old = self:worker_pids()
  local before = self:count_log("%[kps_host%] worker %d+ ready")
  self:signal("HUP")
  local ok = _M.wait_until(function()
    return self:count_log("%[kps_host%] worker %d+ ready") >= before + self.workers
  end, timeout or 10) and wait_gone(old, timeout or 10)
  self:remember_descendants()
  return ok and true or nil, ok and nil or "reload did not complete"
end

-- Graceful stop (nginx -s quit); waits for the master to exit.
function Host:quit(timeout)
  self:remember_descendants()
  local master = self:master_pid()
  if not master then
    return true
  end
  procs.kill(master, "QUIT")
  return wait_gone({ master }, timeout or 10)
end

-- SIGKILLs plugin server `name` until its supervisor waits `respawn_delay` before
-- the next spawn (state `backoff`): the first exit is respawned at once (or served
-- by a warm standby, which can take over once more), a later one within
-- `respawn_reset` waits. Returns the last pid killed, or nil, err.
function Host:kill_into_backoff(name, timeout)
  local function entry()
    return self:server_status(name)
  end
  timeout = timeout or 10
  local first = entry()
  local pid = first and first.pid
  if not pid then
    return nil, "no pid for " .. name
  end
  for _ = 1, 4 do
    procs.kill(pid, "KILL")
    local next_pid, backoff
    _M.wait_until(function()
      local e = entry()
      backoff = e and e.state == "backoff"
      next_pid = e and e.state == "ready" and e.pid ~= pid and e.pid or nil
      return backoff or next_pid ~= nil
    end, timeout)
    if backoff then
      return pid
    end
    if not next_pid then
      return nil, name .. " was neither respawned nor backed off after pid " .. pid .. " exited"
    end
    pid = next_pid
  end
  return nil, name .. " did not go into backoff after 4 exits"
end

-- SIGKILL of the master, then of every worker (a crash of the whole nginx). The
-- master goes first, or it would replace the killed workers.
function Host:kill9()
  self:remember_descendants()
  local master = self:master_pid()
  local pids = self:worker_pids()
  if master then
    procs.kill(master, "KILL")
    wait_gone({ master }, 5)
  end
  for _, pid in ipairs(pids) do
    procs.kill(pid, "KILL")
  end
  if master then
    pids[#pids + 1] = master
  end
  return wait_gone(pids, 5)
end

-- PIDs of processes started by this nginx that are still alive.
function Host:leftovers()
  local out = {}
  for pid, cmdline in pairs(self.known) do
    -- the same command line guards against a PID reused by an unrelated process
    if procs.alive(pid) and procs.cmdline(pid) == cmdline then
      out[#out + 1] = pid
    end
  end
  table.sort(out)
  return out
end

-- Idempotent: stops nginx (quit, then KILL after a grace period) and kills every
-- process that descended from it and is still alive.
function Host:stop()
  if self.stopped then
    return true
  end
  self.stopped = true
  self:remember_descendants()
  local master = self:master_pid()
  if master and procs.alive(master) then
    procs.kill(master, "QUIT")
    if not wait_gone({ master }, 5) then
      procs.kill(master, "KILL")
      wait_gone({ master }, 2)
    end
  end
  -- give the engine's own shutdown a moment before ending stragglers ourselves
  wait_gone(self:leftovers(), 2)
  for _, pid in ipairs(self:leftovers()) do
    procs.kill(pid, "KILL")
  end
  if os.getenv("KPS_KEEP_PREFIX") ~= "1" then
    sh("rm -rf '" .. self.prefix .. "'")
  end
  return true
end

-- Stops h when a test started one; returns nil, so that an after_each reads
-- `h = nginx.stop_host(h)`. With `levels`, first asserts that the log has no line
-- of those levels (Host:assert_no_lines); h is stopped either way.
function _M.stop_host(h, levels)
  if h then
    local ok, err = pcall(h.assert_no_lines, h, levels or {})
    h:stop()
    if not ok then
      error(err, 0)
    end
  end
  return nil
end

return _M
