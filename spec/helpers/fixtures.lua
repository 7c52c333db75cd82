-- The real plugin-server fixtures (fixtures/plugins/, built by `make deps`):
-- their commands, sockets and kong.conf-style settings for a given prefix.
-- Plain LuaJIT, no ngx. Every path is absolute: nginx clears PATH for the
-- processes it spawns.
--
--   local fixtures = require "spec.helpers.fixtures"
--   assert(fixtures.available("go-hello"))            -- false, "<why>" when not built
--   local settings = fixtures.settings({ "go-hello", "py-hello" }, prefix)
--   -- { prefix = prefix, pluginserver_names = { "go-hello", "py-hello" },
--   --   pluginserver_go_hello_socket = prefix .. "/go-hello.socket", ... }

local ffi = require "ffi"

local type, error, ipairs, pairs, select, tostring = type, error, ipairs, pairs, select, tostring
local concat = table.concat
local io_open = io.open

-- What each fixture's info query must report (asserted by the specs against the real dump).
local EXPECTED = {
  ["go-hello"] = { protocol = "ProtoBuf:1", priority = 1, version = "0.1",
                   phases = { "access", "response", "log" }, header = "x-hello-from-go" },
  ["py-hello"] = { protocol = "MsgPack:1", priority = 100, version = "0.1.0",
                   phases = { "access" }, header = "x-hello-from-python" },
  ["js-hello"] = { protocol = "MsgPack:1", priority = 0, version = "0.1.0",
                   phases = { "access" }, header = "x-hello-from-javascript" },
  ["go-coverage"] = { protocol = "ProtoBuf:1", priority = 2, version = "0.1",
                      phases = { "access", "response", "log" } },
  ["py-coverage"] = { protocol = "MsgPack:1", priority = 1000, version = "0.1.0",
                      phases = { "rewrite", "log", "access", "response" } },
  ["js-coverage"] = { protocol = "MsgPack:1", priority = 900, version = "0.1.0",
                      phases = { "rewrite", "log", "access", "response" } },
  ["go-terminal"] = { protocol = "ProtoBuf:1", priority = 800, version = "0.1",
                      phases = { "rewrite", "access", "response", "log" } },
}

-- The fixtures every process spec runs; the MessagePack coverage and terminal-call
-- fixtures are only run by their own specs (each real server costs seconds there).
local NAMES = { "go-hello", "py-hello", "js-hello", "go-coverage" }
local KNOWN = { "go-hello", "py-hello", "js-hello", "go-coverage", "py-coverage", "js-coverage", "go-terminal" }

local function file_exists(path)
  local f = io_open(path, "rb")
  if not f then
    return false
  end
  f:close()
  return true
end

local function read_line(path)
  local f = io_open(path, "rb")
  if not f then
    return nil
  end
  local line = f:read("*l")
  f:close()
  return line
end

local function cwd()
  pcall(ffi.cdef, "char *getcwd(char *buf, size_t size);")
  local buf = ffi.new("char[?]", 4096)
  if ffi.C.getcwd(buf, 4096) == nil then
    error("fixtures: getcwd failed")
  end
  return ffi.string(buf)
end

-- Lexical normalisation of an absolute path ("." and ".." segments, doubled slashes).
local function normalize(path)
  local parts = {}
  for seg in path:gmatch("[^/]+") do
    if seg == ".." then
      parts[#parts] = nil
    elseif seg ~= "." then
      parts[#parts + 1] = seg
    end
  end
  return "/" .. concat(parts, "/")
end

-- The repo root, from this file's own path (<root>/spec/helpers/fixtures.lua).
local function own_root()
  local source = debug.getinfo(1, "S").source
  local path = source:sub(1, 1) == "@" and source:sub(2) or source
  if path:sub(1, 1) ~= "/" then
    path = cwd() .. "/" .. path
  end
  local root = normalize(path):match("^(.*)/spec/helpers/[^/]+$")
  if not root then
    error("fixtures: cannot derive the repo root from " .. source)
  end
  return root
end

-- Quote a word for /bin/sh only when it needs it, so commands stay readable in logs.
local function sh_quote(word)
  if word ~= "" and not word:find("[^%w%-%._/=:,@+]") then
    return word
  end
  return "'" .. word:gsub("'", "'\\''") .. "'"
end

local function command(words)
  local out = {}
  for i, w in ipairs(words) do
    out[i] = sh_quote(w)
  end
  return concat(out, " ")
end

-- Kong's key prefix: lower-cased name with "-" as "_".
local function key(name)
  return "pluginserver_" .. name:lower():gsub("-", "_")
end

local function clean_prefix(prefix)
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
    error("fixtures: prefix must be an absolute path, got " .. tostring(prefix), 0)
  end
  return (prefix:gsub("(.)/+$", "%1"))
end

local function new(root)
  if type(root) ~= "string" or root:sub(1, 1) ~= "/" then
    error("fixtures: root must be an absolute path, got " .. tostring(root))
  end

  local build = root .. "/build"
  local python = build .. "/venv/bin/python3"
  local plugins = root .. "/fixtures/plugins"
  local js_server = plugins .. "/js-hello/node_modules/kong-pdk/bin/kong-js-pluginserver"

  -- A go-pdk fixture: one binary in build/bin; go-pdk names the socket after the
  -- executable: <prefix>/<name>.socket.
  local function go_fixture(name)
    local bin = build .. "/bin/" .. name
    return {
      target = "go",
      built = { bin },
      commands = function(prefix)
        return command { bin, "-kong-prefix", prefix },
               command { bin, "-kong-prefix", prefix, "-dump" }
      end,
    }
  end

  -- A kong-pdk (Python) fixture: <name>/<name>.py run by the venv's python, with a
  -- file more to check where the build leaves one (extra_built).
  local function py_fixture(name, extra_built)
    local script = plugins .. "/" .. name .. "/" .. name .. ".py"
    return {
      target = "python",
      built = { python, build .. "/venv/.kps-requirements", extra_built },
      commands = function(prefix)
        -- -u: unbuffered, so the server's output lines reach the log as they happen.
        -- kong-pdk's dedicated server would listen on <prefix>/<name>.sock by default.
        return command { python, "-u", script, "-p", prefix, "--socket-name", name .. ".socket" },
               command { python, "-u", script, "--dump" }
      end,
    }
  end

  -- A kong-pdk (JavaScript) fixture: the plugins directory <name>/plugins, served by
  -- js-hello's kong-pdk install; extra_built as for py_fixture.
  local function js_fixture(name, extra_built)
    local dir = plugins .. "/" .. name .. "/plugins"
    return {
      target = "js",
      built = { build .. "/js-hello.node", js_server, plugins .. "/js-hello/node_modules/.kps-npm-ci", extra_built },
      commands = function(prefix)
        local node = read_line(build .. "/js-hello.node")
        -- kong-pdk's JS server would listen on <prefix>/js_pluginserver.sock by default.
        return command { node, js_server, "-d", dir, "-p", prefix, "--sock-name", name .. ".socket" },
               command { node, js_server, "-d", dir, "--dump-all-plugins" }
      end,
    }
  end

  -- Per fixture: the files `make` leaves behind (checked by available) and how to run it.
  local DEFS = {
    ["go-hello"] = go_fixture("go-hello"),
    ["go-coverage"] = go_fixture("go-coverage"),
    ["go-terminal"] = go_fixture("go-terminal"),
    ["py-hello"] = py_fixture("py-hello"),
    ["py-coverage"] = py_fixture("py-coverage", build .. "/py-coverage.dump"),
    ["js-hello"] = js_fixture("js-hello"),
    ["js-coverage"] = js_fixture("js-coverage", build .. "/js-coverage.dump"),
  }

  local self = { root = root, names = NAMES, expected = EXPECTED,
                 python = python, stand_ins = root .. "/fixtures/servers" }

  local function def_of(name)
    local def = DEFS[name]
    if not def then
      error("fixtures: unknown fixture '" .. tostring(name) .. "' (known: " .. concat(KNOWN, ", ") .. ")", 0)
    end
    return def
  end

  --- true, or false and why (with the make command that builds it).
  function self.available(name)
    local def = def_of(name)
    for _, path in ipairs(def.built) do
      if not file_exists(path) then
        return false, "fixture " .. name .. " is not built (missing " .. path .. "): run `make deps` or `make -C "
                      .. plugins .. " " .. def.target .. "`"
      end
    end
    if name == "js-hello" or name == "js-coverage" then
      local node = read_line(build .. "/js-hello.node")
      if not node or node:sub(1, 1) ~= "/" or not file_exists(node) then
        return false, "fixture " .. name .. ": " .. build .. "/js-hello.node does not name an existing node binary (got "
                      .. tostring(node) .. "): run `make -C " .. plugins .. " js` again"
      end
    end
    return true
  end

  --- Raises the error of available for the first of names that is not built.
  function self.require_built(names)
    for _, name in ipairs(names) do
      local ok, why = self.available(name)
      if not ok then
        error(why, 2)
      end
    end
  end

  --- { name, socket, start_cmd, query_cmd } for one fixture served under prefix.
  function self.server(name, prefix)
    local def = def_of(name)
    prefix = clean_prefix(prefix)
    local ok, err = self.available(name)
    if not ok then
      error(err, 0)
    end
    local start_cmd, query_cmd = def.commands(prefix)
    return { name = name, socket = prefix .. "/" .. name .. ".socket",
             start_cmd = start_cmd, query_cmd = query_cmd }
  end

  --- kong.conf-style settings running the named fixtures (a name or an array of names).
  function self.settings(names, prefix)
    if type(names) == "string" then
      names = { names }
    end
    if type(names) ~= "table" or #names == 0 then
      error("fixtures: settings needs a fixture name or a non-empty array of names", 2)
    end
    prefix = clean_prefix(prefix)
    local out = { prefix = prefix, pluginserver_names = {} }
    for i, name in ipairs(names) do
      local k = key(name)
      if out[k .. "_socket"] then
        error("fixtures: fixture '" .. name .. "' listed twice", 2)
      end
      local s = self.server(name, prefix)
      out.pluginserver_names[i] = name
      out[k .. "_socket"] = s.socket
      out[k .. "_start_cmd"] = s.start_cmd
      out[k .. "_query_cmd"] = s.query_cmd
    end
    return out
  end

  --- The query and start commands of a stand-in server script (fixtures/servers/
  --- mp_fault.py, pb_fault.py) serving as name on socket.
  function self.stand_in_commands(script, name, socket)
    return python .. " " .. script .. " --dump --name " .. name,
           python .. " -u " .. script .. " " .. socket .. " --name " .. name
  end

  --- The host's plugin list running each of names with { message = message }.
  function self.hello_plugins(names, message)
    local out = {}
    for i, name in ipairs(names) do
      out[i] = { name = name, config = { message = message } }
    end
    return out
  end

  --- Sets the same per-server settings ({ read_timeout = "5000", ... }) for each of
  --- names in settings (pluginserver_<name>_<setting>); returns settings.
  function self.set_for_servers(settings, names, values)
    for _, name in ipairs(names) do
      local k = key(name)
      for setting, v in pairs(values) do
        settings[k .. "_" .. setting] = v
      end
    end
    return settings
  end

  --- Merge several settings tables into one (names concatenated; a duplicate key is an error).
  function self.merge(...)
    local out = { pluginserver_names = {} }
    local seen = {}
    for i = 1, select("#", ...) do
      local t = select(i, ...)
      for k, v in pairs(t) do
        if k == "pluginserver_names" then
          for _, name in ipairs(v) do
            if seen[name] then
              error("fixtures: server '" .. name .. "' listed twice", 2)
            end
            seen[name] = true
            out.pluginserver_names[#out.pluginserver_names + 1] = name
          end
        elseif out[k] ~= nil and out[k] ~= v then
          error("fixtures: conflicting values for " .. k .. ": " .. tostring(out[k]) .. " / " .. tostring(v), 2)
        else
          out[k] = v
        end
      end
    end
    return out
  end

  self.new = new
  self.sh_quote = sh_quote
  return self
end

return new(own_root())
