-- kong.response.exit and kong.response.error from real plugin servers of the three
-- PDKs (py-coverage, js-coverage: the terminal cases of mp-coverage-plan.json;
-- go-terminal: go-pdk, which has exit only, with a byte body): the client gets
-- exactly that response, the later plugins of the phase, the later phases and the
-- upstream do not run, the log phase does; from the response phase after the headers
-- went out, and from the log phase, the PDK refuses the exit (as Kong's does) and the
-- event fails by the failure rule: logged, the response unchanged.
--
-- One nginx runs the three plugins (priority py 1000 > js 900 > go 800); each request
-- names one of them in x-cov-case, and the host logs which handlers ran.
local cjson = require "cjson.safe"
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local cov = require "spec.helpers.mp_coverage"

local PLUGINS = { "py-coverage", "js-coverage", "go-terminal" }
local PDK_OF = { py = "py-coverage", js = "js-coverage", go = "go-terminal" }

local function esc(s)
  return (s:gsub("%p", "%%%0"))
end

describe("terminal calls", function()
  local h, reports = nil, {}

  setup(function()
    local prefix = nginx.make_prefix()
    local settings = fixtures.settings(PLUGINS, prefix)
    local plugins = {}
    for _, name in ipairs(PLUGINS) do
      local k = "pluginserver_" .. name:gsub("-", "_") .. "_"
      settings[k .. "ready_timeout"] = "10000"
      settings[k .. "read_timeout"] = "5000"
      settings[k .. "log_window"] = "1"   -- every failure line, not a summary
      reports[name] = prefix .. "/" .. name .. ".jsonl"
      plugins[#plugins + 1] = { name = name, config = name ~= "go-terminal" and { report = reports[name] } or nil }
    end
    h = assert(nginx.start { prefix = prefix, workers = 1, log_level = "info", configuration = settings,
                             plugins = plugins })
  end)

  teardown(function()
    if h then h:stop() end
  end)

  -- The log phase of every plugin ran in its server for this request.
  local function logged_everywhere(header)
    for _, name in ipairs({ "py-coverage", "js-coverage" }) do
      local seen = false
      for _, rec in ipairs(cov.read_report(reports[name])) do
        if rec.phase == "log" and rec.method == "kong.request.get_header" and rec.v.v == header then
          seen = true
        end
      end
      if not seen then return false end
    end
    return h:count_log("kps%-go%-term log " .. esc(header) .. ",") > 0
  end

  -- Sends one request for `pdk` and `case`; returns the response, the handlers that
  -- ran ("phase:plugin" and "upstream") and the plugin's own records of the request.
  local function term(pdk, case, headers)
    local header = pdk .. ":" .. case
    local path = "/term/" .. pdk .. "/" .. case
    local all = { ["x-cov-case"] = header, ["x-kps-trace-phases"] = "1" }
    for k, v in pairs(headers or {}) do all[k] = v end
    local res = assert(h:request { path = path, headers = all })
    local line = assert(h:wait_log("%[kps_host%] ran: .*request: \"GET " .. esc(path) .. " HTTP", 10),
                        "no trace for " .. path)
    assert(nginx.wait_until(function() return logged_everywhere(header) end, 10),
           "the log phase of " .. path .. " did not run in every server")
    local ran = {}
    -- nginx appends " while logging request, client: ..."
    for word in line:match("ran: (.-) while logging request"):gmatch("%S+") do ran[#ran + 1] = word end
    local own = {}
    if pdk ~= "go" then
      for _, rec in ipairs(cov.read_report(reports[PDK_OF[pdk]])) do
        if rec.case == case then own[#own + 1] = rec end
      end
    end
    return res, ran, own
  end

  -- The handlers Kong runs when plugin `by` ends the request in `phase`.
  local function expected_run(by, phase)
    local out = {}
    local order = { "rewrite", "access", "upstream", "response" }
    for _, p in ipairs(order) do
      if p == "upstream" then
        out[#out + 1] = "upstream"
      else
        for _, name in ipairs(PLUGINS) do
          out[#out + 1] = p .. ":" .. name
          if p == phase and name == by then break end
        end
      end
      if p == phase then break end
    end
    for _, name in ipairs(PLUGINS) do out[#out + 1] = "log:" .. name end
    return out
  end

  for _, pdk in ipairs({ "py", "js", "go" }) do
    local name = PDK_OF[pdk]
    local has_error = pdk ~= "go"   -- go-pdk has no kong.response.error

    describe(name, function()
      -- Runs `case`, checks that it ended the request with `status` in `phase`
      -- (no later handler ran), and returns the response and the plugin's calls.
      local function ended(case, status, phase)
        local res, ran, own = term(pdk, case)
        assert.equal(status, res.status)
        assert.same(expected_run(name, phase), ran)
        return res, own
      end

      it("kong.response.exit from access: a string body and headers, exactly", function()
        local res, own = ended("exit-access-string", 403, "access")
        assert.equal("denied ✓", res.body)
        assert.equal("yes", res.headers["x-exit"])
        assert.same({ "a", "b" }, res.headers["x-exit-multi"])
        if pdk ~= "go" then
          -- the exit was the plugin's last call of the phase
          assert.equal("kong.response.exit", own[#own].method)
        end
      end)

      it("kong.response.exit from access: a table body is sent as JSON", function()
        local res = ended("exit-access-table", 401, "access")
        assert.matches("^application/json", res.headers["content-type"])
        assert.same({ message = "no", list = { 1, 2 }, nested = { k = "v" } }, cjson.decode(res.body))
        assert.equal("table", res.headers["x-exit"])
      end)

      -- Exits with a plain body: the body exactly, and one header the plugin set.
      for _, c in ipairs {
        { title = "from access: a binary body byte for byte", case = "exit-access-binary",
          status = 200, phase = "access", body = "\0\255\1\2",
          header = "content-type", value = "application/octet-stream" },
        { title = "from rewrite: no access phase, no upstream", case = "exit-rewrite-string",
          status = 403, phase = "rewrite", body = "denied in rewrite",
          header = "x-exit", value = "rewrite" },
        { title = "from the response phase before the headers are sent replaces the response",
          case = "exit-response", status = 409, phase = "response", body = "replaced in response",
          header = "x-exit", value = "response" },
      } do
        it("kong.response.exit " .. c.title, function()
          local res = ended(c.case, c.status, c.phase)
          assert.equal(c.body, res.body)
          assert.equal(c.value, res.headers[c.header])
        end)
      end

      if has_error then
        it("kong.response.error from access: status, JSON message and headers", function()
          local res = ended("error-access", 503, "access")
          assert.matches("^application/json", res.headers["content-type"])
          assert.same({ message = "service down" }, cjson.decode(res.body))
          assert.equal("yes", res.headers["x-error"])
        end)

        it("kong.response.error from rewrite", function()
          local res = ended("error-rewrite", 502, "rewrite")
          assert.same({ message = "bad in rewrite" }, cjson.decode(res.body))
          assert.equal("rewrite", res.headers["x-error"])
        end)
      end

      it("kong.response.exit once the headers are sent is refused: logged, the response goes on", function()
        local before = h:count_log("headers have already been sent")
        local res, ran = term(pdk, "exit-response-sent", { ["x-kps-send-headers-early"] = "1" })
        assert.equal(200, res.status)
        assert.is_nil(res.headers["x-exit"])
        assert.equal("GET", assert(cjson.decode(res.body)).method)   -- the upstream's echo
        local line = assert(h:wait_log("plugin " .. esc(name) .. " failed in response %(protocol%): "
                                       .. "kong%.response%.exit failed: .*headers have already been sent", 5))
        assert.matches(name, line, 1, true)
        assert.equal(before + 1, h:count_log("headers have already been sent"))
        -- the exit did not end the phase: the later plugins' response handlers ran
        local want = expected_run(nil, "response")
        assert.same(want, ran)
      end)

      it("kong.response.exit from the log phase is refused: logged, nothing else changes", function()
        local res, ran = term(pdk, "exit-log")
        assert.equal(200, res.status)
        assert.is_nil(res.headers["x-exit"])
        assert(h:wait_log("plugin " .. esc(name) .. " failed in log %(protocol%): "
                          .. "kong%.response%.exit failed: .*function cannot be called in log phase", 5))
        assert.same(expected_run(nil, "response"), ran)
      end)
    end)
  end
end)
