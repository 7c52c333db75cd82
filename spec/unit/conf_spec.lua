-- conf.parse through the Lua API: Kong's cases, then what we reject beyond Kong.
-- Default binaries and PATH programs are real files in temporary directories.

local conf = require "kong.runloop.plugin_servers.conf"

local MS = "a positive integer of milliseconds (1..2147483647)"

local function sh(cmd)
  assert(os.execute(cmd) == 0, cmd)
end

local function mktemp_dir()
  local p = os.tmpname()
  os.remove(p)
  sh("mkdir -p '" .. p .. "'")
  return p
end

local function file(dir, name, mode)
  local p = dir .. "/" .. name
  local f = assert(io.open(p, "w"))
  f:write("#!/bin/sh\nexit 0\n")
  f:close()
  sh("chmod " .. mode .. " '" .. p .. "'")
  return p
end

local function settings(names, extra)
  local s = { prefix = "/kong", pluginserver_names = names }
  for k, v in pairs(extra or {}) do
    s[k] = v
  end
  return s
end

describe("conf.parse", function()
  local bin, path, opts

  before_each(function()
    bin = mktemp_dir()
    path = mktemp_dir()
    opts = { default_dir = bin, path = path }
  end)

  after_each(function()
    sh("rm -rf '" .. bin .. "' '" .. path .. "'")
  end)

  -- Runs parse and expects failure; returns errors and warnings.
  local function rejected(s, o)
    local defs, errors, warnings = conf.parse(s, o or opts)
    assert.is_nil(defs)
    assert.is_table(errors)
    return errors, warnings
  end

  describe("Kong's behaviour", function()
    it("means no servers for a missing key, an empty list and NONE", function()
      for _, names in ipairs({ {}, "NONE", { "NONE" }, "" }) do
        local defs, warnings = conf.parse({ prefix = "/kong", pluginserver_names = names }, opts)
        assert.same({}, defs)
        assert.same({}, warnings)
      end
      local defs, warnings = conf.parse({ prefix = "/kong" }, opts)
      assert.same({}, defs)
      assert.same({}, warnings)
    end)

    it("takes start and query commands from the default binary and keeps dashes in the socket", function()
      local exe = file(bin, "go-hello", 755)
      local defs, warnings = conf.parse(settings({ "Go-Hello" }), opts)
      assert.same({}, warnings)
      assert.equal(1, #defs)
      assert.equal("go-hello", defs[1].name)
      assert.equal("/kong/go-hello.socket", defs[1].socket)
      assert.equal(exe, defs[1].start_command)
      assert.equal(exe .. " -dump", defs[1].query_command)
    end)

    it("reads settings under the name with - as _", function()
      file(bin, "go-hello", 755)
      local defs = conf.parse(settings({ "go-hello" }, {
        pluginserver_go_hello_socket = "/run/gh.sock",
        pluginserver_go_hello_read_timeout = "250",
      }), opts)
      assert.equal("/run/gh.sock", defs[1].socket)
      assert.equal(250, defs[1].read_timeout)
    end)

    it("returns Kong's error without a query command and Kong's warning without a start command", function()
      local errors, warnings = rejected(settings({ "py" }))
      assert.same({ "query_command undefined for pluginserver py" }, errors)
      assert.same({ "start_command undefined for pluginserver py; assuming external process management" }, warnings)
    end)

    it("treats a server without start command as external: start_command is nil, not a JSON null", function()
      local q = file(path, "dump-info", 755)
      local defs, warnings = conf.parse(settings({ "ext" }, { pluginserver_ext_query_cmd = q .. " --all" }), opts)
      assert.is_nil(defs[1].start_command)
      assert.is_nil(rawget(defs[1], "start_command"))
      assert.equal(q .. " --all", defs[1].query_command)
      assert.same({ "start_command undefined for pluginserver ext; assuming external process management" }, warnings)
    end)

    it("lets explicit commands override the default binary", function()
      file(bin, "s", 755)
      local other = file(path, "other", 755)
      local defs = conf.parse(settings({ "s" }, {
        pluginserver_s_start_cmd = other .. " -kong-prefix /kong",
        pluginserver_s_query_cmd = other .. " -dump",
      }), opts)
      assert.equal(other .. " -kong-prefix /kong", defs[1].start_command)
      assert.equal(other .. " -dump", defs[1].query_command)
    end)

    it("returns plain tables in pluginserver_names order with every setting and its default", function()
      for _, n in ipairs({ "c", "a", "b" }) do
        file(bin, n, 755)
      end
      local defs = conf.parse(settings({ "c", "a", "b" }), opts)
      assert.same({ "c", "a", "b" }, { defs[1].name, defs[2].name, defs[3].name })
      local d = defs[1]
      assert.is_nil(getmetatable(d))
      for _, v in pairs(d) do
        assert.is_true(type(v) == "string" or type(v) == "number" or type(v) == "boolean")
      end
      assert.same({
        name = "c", socket = "/kong/c.socket", start_command = bin .. "/c", query_command = bin .. "/c -dump",
        path = path,
        query_timeout = 10000, stop_timeout = 5000, respawn_delay = 1000, respawn_delay_max = 30000,
        respawn_reset = 60000, ready_timeout = 5000, connect_timeout = 1000, send_timeout = 5000,
        read_timeout = 60000, fail_open = false, max_message_size = 16777216, log_window = 1000,
        log_queue_max = 4096,
        hang_timeout = 5000, standby = "auto",
      }, d)
    end)

    it("accepts a comma-separated string of names (raw kong.conf text)", function()
      file(bin, "a", 755)
      file(bin, "b-c", 755)
      local defs = conf.parse(settings("a, B-C"), opts)
      assert.same({ "a", "b-c" }, { defs[1].name, defs[2].name })
    end)

    it("reads only prefix and pluginserver_* keys", function()
      file(bin, "s", 755)
      local s = settings({ "s" }, { log_level = function() end, plugins = { x = 1 }, [1] = "junk" })
      local defs = conf.parse(s, opts)
      assert.equal(1, #defs)
    end)

    it("reads a proxy table like kong.configuration, which pairs() cannot iterate", function()
      file(bin, "go-hello", 755)
      local raw = settings({ "go-hello" }, {
        pluginserver_go_hello_fail_open = "on",
        pluginserver_go_hello_send_timeout = "42",
      })
      local proxy = setmetatable({}, { __index = function(_, k) return raw[k] end })
      local defs = conf.parse(proxy, opts)
      assert.equal("/kong/go-hello.socket", defs[1].socket)
      assert.is_true(defs[1].fail_open)
      assert.equal(42, defs[1].send_timeout)
    end)

    it("records the PATH it used: opts.path, else the process's PATH", function()
      file(bin, "s", 755)
      assert.equal(path, conf.parse(settings({ "s" }), opts)[1].path)
      local defs = conf.parse(settings({ "s" }), { default_dir = bin })
      assert.equal(os.getenv("PATH"), defs[1].path)
    end)
  end)

  describe("beyond Kong", function()
    it("reports every error at once, each naming server and setting", function()
      local errors = rejected(settings({ "a", "a", "b" }, {
        pluginserver_a_read_timeout = "0",
        pluginserver_b_fail_open = "maybe",
        pluginserver_c_socket = "/x",
      }))
      assert.same({
        "pluginserver_names: duplicate name 'a' (entry 2)",
        "query_command undefined for pluginserver a",
        "pluginserver_a_read_timeout (pluginserver a): got '0'; expected " .. MS,
        "query_command undefined for pluginserver b",
        "pluginserver_b_fail_open (pluginserver b): got 'maybe'; expected a boolean (on, off, true or false)",
        "pluginserver_c_socket: no pluginserver 'c' in pluginserver_names (pluginserver_names is: a, b)",
      }, errors)
    end)

    it("rejects empty, invalid, duplicate and colliding names", function()
      file(bin, "ok", 755)
      file(bin, "a_b", 755)
      local errors = rejected(settings({ "ok", " ", "go hello", "OK", "a_b", "a-b", "x.y" }))
      assert.same({
        "pluginserver_names: entry 2 is empty",
        "pluginserver_names: invalid name 'go hello' (entry 3): character ' ' is not allowed; expected only a-z, 0-9, '_' and '-'",
        "pluginserver_names: duplicate name 'ok' (entry 4)",
        "pluginserver_names: names 'a_b' and 'a-b' (entry 6) would share the settings pluginserver_a_b_*",
        "pluginserver_names: invalid name 'x.y' (entry 7): character '.' is not allowed; expected only a-z, 0-9, '_' and '-'",
      }, errors)
    end)

    it("rejects a socket path over 107 bytes with its length, and accepts 107", function()
      file(bin, "s", 755)
      local long = "/" .. string.rep("d", 110)
      local errors = rejected(settings({ "s" }, { pluginserver_s_socket = long }))
      assert.same({
        "pluginserver_s_socket (pluginserver s): socket path '" .. long
          .. "' is 111 bytes long; a unix socket path may have at most 107 bytes",
      }, errors)
      local ok = "/" .. string.rep("d", 106)
      assert.equal(ok, conf.parse(settings({ "s" }, { pluginserver_s_socket = ok }), opts)[1].socket)
    end)

    it("rejects two servers on the same socket, also when one is a default", function()
      file(bin, "a", 755)
      file(bin, "b", 755)
      local errors = rejected(settings({ "a", "b" }, { pluginserver_b_socket = "/kong/a.socket" }))
      assert.same({
        "pluginserver_b_socket (pluginserver b): socket '/kong/a.socket' is already the socket of pluginserver a",
      }, errors)
    end)

    it("rejects a default socket path that a long prefix makes too long", function()
      file(bin, "s", 755)
      local prefix = "/" .. string.rep("p", 100)
      local s = settings({ "s" })
      s.prefix = prefix
      local errors = rejected(s)
      assert.same({
        "pluginserver_s_socket (pluginserver s): default socket path '" .. prefix
          .. "/s.socket' is 110 bytes long; a unix socket path may have at most 107 bytes; set a shorter prefix or this setting",
      }, errors)
    end)

    it("rejects keys of unlisted servers and unknown settings, with a suggestion", function()
      file(bin, "go-hello", 755)
      local errors = rejected(settings({ "go-hello" }, {
        pluginserver_go_hello_start_command = "x",
        pluginserver_gohello_read_timeout = "5",
        pluginserver_other_socket = "/x",
      }))
      assert.same({
        "pluginserver_go_hello_start_command (pluginserver go-hello): unknown setting; did you mean pluginserver_go_hello_start_cmd?",
        "pluginserver_gohello_read_timeout: no pluginserver 'gohello' in pluginserver_names; did you mean pluginserver_go_hello_read_timeout?",
        "pluginserver_other_socket: no pluginserver 'other' in pluginserver_names (pluginserver_names is: go-hello)",
      }, errors)
    end)

    it("rejects a command whose program is missing, not executable or a directory", function()
      file(bin, "s", 755)
      local plain = file(path, "plain", 644)
      local errors = rejected(settings({ "s" }, {
        pluginserver_s_start_cmd = path .. "/missing -x",
        pluginserver_s_query_cmd = plain .. " -dump",
      }))
      assert.same({
        "pluginserver_s_start_cmd (pluginserver s): program '" .. path .. "/missing' not found (command '"
          .. path .. "/missing -x')",
        "pluginserver_s_query_cmd (pluginserver s): program '" .. plain .. "' is not executable (command '"
          .. plain .. " -dump')",
      }, errors)
      errors = rejected(settings({ "s" }, { pluginserver_s_start_cmd = path }))
      assert.same({ "pluginserver_s_start_cmd (pluginserver s): program '" .. path
        .. "' is a directory (command '" .. path .. "')" }, errors)
    end)

    it("finds bare program names through opts.path only", function()
      file(path, "srv", 755)
      local s = settings({ "s" }, {
        pluginserver_s_start_cmd = "srv -p /kong",
        pluginserver_s_query_cmd = "srv --dump",
      })
      local defs = conf.parse(s, opts)
      assert.equal("srv -p /kong", defs[1].start_command)
      assert.equal(path, defs[1].path)

      local errors = rejected(s, { default_dir = bin, path = bin })
      assert.same({
        "pluginserver_s_start_cmd (pluginserver s): program 'srv' not found in PATH (" .. bin .. ") (command 'srv -p /kong')",
        "pluginserver_s_query_cmd (pluginserver s): program 'srv' not found in PATH (" .. bin .. ") (command 'srv --dump')",
      }, errors)
    end)

    it("names a PATH entry that holds the program without execute permission", function()
      file(path, "srv", 644)
      local errors = rejected(settings({ "s" }, { pluginserver_s_query_cmd = "srv" }))
      assert.same({
        "pluginserver_s_query_cmd (pluginserver s): program 'srv' not found in PATH (" .. path .. ") ("
          .. path .. "/srv exists but is not executable) (command 'srv')",
      }, errors)
    end)

    it("leaves commands that start with a shell construct alone", function()
      local defs = conf.parse(settings({ "s" }, {
        pluginserver_s_start_cmd = "PYTHONPATH=/x not-installed",
        pluginserver_s_query_cmd = "$HOME/bin/not-installed -dump",
      }), opts)
      assert.equal("PYTHONPATH=/x not-installed", defs[1].start_command)
    end)

    it("rejects a default binary that cannot be executed, once", function()
      local exe = file(bin, "s", 644)
      local errors = rejected(settings({ "s" }))
      assert.same({
        "pluginserver_s_start_cmd and pluginserver_s_query_cmd (pluginserver s): default program '"
          .. exe .. "' is not executable",
      }, errors)
    end)

    it("rejects empty and non-string commands and sockets", function()
      file(bin, "s", 755)
      local errors = rejected(settings({ "s" }, {
        pluginserver_s_socket = 5,
        pluginserver_s_start_cmd = "  ",
        pluginserver_s_query_cmd = true,
      }))
      assert.same({
        "pluginserver_s_socket (pluginserver s): got 5; expected a non-empty socket path",
        "pluginserver_s_start_cmd (pluginserver s): got '  '; expected a non-empty command line",
        "pluginserver_s_query_cmd (pluginserver s): got true; expected a non-empty command line",
      }, errors)
    end)

    local durations = {
      "query_timeout", "stop_timeout", "respawn_delay", "respawn_delay_max", "respawn_reset",
      "ready_timeout", "connect_timeout", "send_timeout", "read_timeout", "log_window",
    }

    it("accepts every duration as digits or a Lua number", function()
      file(bin, "s", 755)
      for _, suffix in ipairs(durations) do
        local key = "pluginserver_s_" .. suffix
        -- respawn_delay_max must stay >= respawn_delay (1000 by default)
        assert.equal(2000, conf.parse(settings({ "s" }, { [key] = "2000" }), opts)[1][suffix])
        assert.equal(3000, conf.parse(settings({ "s" }, { [key] = 3000 }), opts)[1][suffix])
      end
    end)

    it("rejects each bad duration naming key, value and expectation", function()
      file(bin, "s", 755)
      local bad = { { "0", "'0'" }, { "-1", "'-1'" }, { "1.5", "'1.5'" }, { "10s", "'10s'" },
        { "2147483648", "'2147483648'" }, { 0.5, "0.5" }, { false, "false" } }
      for _, suffix in ipairs(durations) do
        for _, case in ipairs(bad) do
          local key = "pluginserver_s_" .. suffix
          local errors = rejected(settings({ "s" }, { [key] = case[1] }))
          assert.same({ key .. " (pluginserver s): got " .. case[2] .. "; expected " .. MS }, errors)
        end
      end
    end)

    it("accepts hang_timeout 0 (off) and rejects what is not a duration", function()
      file(bin, "s", 755)
      local key = "pluginserver_s_hang_timeout"
      assert.equal(0, conf.parse(settings({ "s" }, { [key] = "0" }), opts)[1].hang_timeout)
      assert.equal(2000, conf.parse(settings({ "s" }, { [key] = 2000 }), opts)[1].hang_timeout)
      assert.same({ key .. " (pluginserver s): got '-1'; expected " .. MS .. ", or 0 for off" },
        rejected(settings({ "s" }, { [key] = "-1" })))
    end)

    it("checks max_message_size as a positive number of bytes", function()
      file(bin, "s", 755)
      assert.equal(1024, conf.parse(settings({ "s" }, { pluginserver_s_max_message_size = "1024" }), opts)[1].max_message_size)
      local errors = rejected(settings({ "s" }, { pluginserver_s_max_message_size = "16MB" }))
      assert.same({ "pluginserver_s_max_message_size (pluginserver s): got '16MB'; "
        .. "expected a positive integer of bytes (1..2147483647)" }, errors)
    end)

    it("reads fail_open as a Kong boolean", function()
      file(bin, "s", 755)
      for value, expected in pairs({ on = true, off = false, ["true"] = true, ["false"] = false }) do
        assert.equal(expected, conf.parse(settings({ "s" }, { pluginserver_s_fail_open = value }), opts)[1].fail_open)
      end
      assert.is_true(conf.parse(settings({ "s" }, { pluginserver_s_fail_open = true }), opts)[1].fail_open)
      local errors = rejected(settings({ "s" }, { pluginserver_s_fail_open = "yes" }))
      assert.same({ "pluginserver_s_fail_open (pluginserver s): got 'yes'; expected a boolean (on, off, true or false)" }, errors)
    end)

    it("requires respawn_delay_max >= respawn_delay", function()
      file(bin, "s", 755)
      local errors = rejected(settings({ "s" }, {
        pluginserver_s_respawn_delay = "5000", pluginserver_s_respawn_delay_max = "500",
      }))
      assert.same({ "pluginserver_s_respawn_delay_max (pluginserver s): 500 is less than "
        .. "pluginserver_s_respawn_delay (5000); expected a value >= 5000" }, errors)
    end)

    it("returns warnings alongside errors", function()
      local errors, warnings = rejected(settings({ "x" }, { pluginserver_x_query_cmd = path .. "/nope" }))
      assert.equal(1, #errors)
      assert.same({ "start_command undefined for pluginserver x; assuming external process management" }, warnings)
    end)
  end)

  describe("never raises", function()
    it("returns an error for settings or opts that are not tables", function()
      local defs, errors, warnings = conf.parse(nil)
      assert.is_nil(defs)
      assert.same({ "plugin server configuration: settings must be a table, got nil" }, errors)
      assert.same({}, warnings)
      defs, errors = conf.parse({}, "x")
      assert.same({ "plugin server configuration: opts must be a table, got string" }, errors)
    end)

    it("names values JSON cannot carry instead of failing", function()
      local errors = rejected(settings({ "s" }, {
        pluginserver_s_socket = function() end,
        pluginserver_s_query_cmd = { a = 1 },
        pluginserver_s_read_timeout = 0 / 0,
        pluginserver_s_send_timeout = math.huge,
      }))
      assert.same({
        "pluginserver_s_socket (pluginserver s): got a function; expected a non-empty socket path",
        "pluginserver_s_query_cmd (pluginserver s): got a table; expected a non-empty command line",
        "pluginserver_s_send_timeout (pluginserver s): got 'inf'; expected " .. MS,
        "pluginserver_s_read_timeout (pluginserver s): got '" .. tostring(0 / 0) .. "'; expected " .. MS,
      }, errors)
    end)

    it("rejects non-string names and a bad opts.path type", function()
      local errors = rejected({ prefix = "/kong", pluginserver_names = { true } })
      assert.same({ "pluginserver_names: entry 1 is true; expected a server name (string)" }, errors)
      errors = rejected({}, { path = 5 })
      assert.same({ "plugin server configuration: opts.path: expected a string, got 5" }, errors)
    end)

    it("returns an error for bytes that are not UTF-8", function()
      local errors = rejected(settings({ "s" }, { pluginserver_s_socket = "/tmp/\255.sock" }))
      assert.equal(1, #errors)
      assert.matches("^plugin server configuration: config input is not valid JSON", errors[1])
    end)
  end)

  describe("the parsed configuration", function()
    it("stays with the defs parse returned, which are plain data", function()
      file(bin, "s", 755)
      local defs = assert(conf.parse(settings({ "s" }), opts))
      local handle = conf.handle_of(defs)
      assert.equal("cdata", type(handle))
      assert.is_nil(getmetatable(defs))
      for _, def in ipairs(defs) do
        for k, v in pairs(def) do
          assert.is_true(type(k) == "string" and type(v) ~= "table" and type(v) ~= "cdata", k)
        end
      end
      -- another parse gives another handle; a copy of the tables has none
      local again = assert(conf.parse(settings({ "s" }), opts))
      assert.are_not.equal(handle, conf.handle_of(again))
      assert.is_nil(conf.handle_of({ defs[1] }))
      assert.is_nil(conf.handle_of(nil))
    end)

    it("is freed with its defs (weak reference)", function()
      file(bin, "s", 755)
      local defs = assert(conf.parse(settings({ "s" }), opts))
      local probe = setmetatable({ conf.handle_of(defs) }, { __mode = "v" })
      assert.is_not_nil(probe[1])
      defs = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      assert.is_nil(probe[1])
    end)
  end)
end)
