-- Every PDK method of the Python and JS PDKs, end to end over MessagePack-RPC: the
-- real py-coverage (kong-pdk 0.36, PyPI) and js-coverage (kong-pdk 0.6.0, npm)
-- make the calls of fixtures/plugins/mp-coverage-plan.json and report what each
-- one got back, with its MessagePack type (a JSON-lines file); the host records
-- what its PDK function received and returned, and the Kong shape of that result
-- (spec/helpers/mp_coverage.lua). Every reply must be that shape, every error the
-- host's error, every argument what the plugin passed. Prints the coverage table
-- (also written into the file named by KPS_MP_COVERAGE_DOC, between its markers).
local cjson = require "cjson.safe"
local nginx = require "spec.helpers.nginx"
local fixtures = require "spec.helpers.fixtures"
local procs = require "spec.helpers.procs"
local cov = require "spec.helpers.mp_coverage"
local sets = require "spec.helpers.sets"

local NULL = cjson.null

-- Methods the host implements with canned values (no real source in one nginx).
local CANNED = {}
for name in ([[
kong.client.get_credential kong.client.get_consumer kong.client.load_consumer kong.client.authenticate
kong.client.authenticate_consumer_group_by_consumer_id kong.client.get_consumer_group
kong.client.get_consumer_groups kong.client.set_authenticated_consumer_group
kong.client.set_authenticated_consumer_groups kong.client.tls.request_client_certificate
kong.client.tls.disable_session_reuse kong.client.tls.get_full_client_certificate_chain
kong.client.tls.set_client_verify kong.cluster.get_id kong.enterprise_edition.jwe.decode
kong.enterprise_edition.jwe.decrypt kong.enterprise_edition.jwe.encrypt kong.nginx.get_statistics
kong.node.get_id kong.node.get_hostname kong.node.get_memory_stats kong.router.get_route
kong.router.get_service kong.service.set_upstream kong.service.set_target kong.service.set_tls_verify
kong.service.set_tls_verify_depth kong.service.set_retries kong.service.set_timeouts
kong.service.request.enable_buffering kong.service.request.disable_tls kong.service.request.set_scheme
kong.telemetry.log kong.vault.parse_reference kong.vault.get kong.vault.update kong.vault.flush
kong.vault.init_worker kong.vault.warmup
]]):gmatch("%S+") do
  CANNED[name] = true
end

-- Listed by the PDKs but not in Kong's PDK: the host has no such function.
-- (kong.nope.nothing: a name no PDK has, called on purpose.)
local NOT_IN_KONG = { ["kong.nginx.shared.get"] = true, ["kong.nginx.shared.set"] = true,
                      ["kong.nope.nothing"] = true }
-- Checked end to end by terminal_calls_spec.lua (the client's response, which phases ran).
local TERMINAL = { ["kong.response.exit"] = true, ["kong.response.error"] = true }
-- Listed by a PDK, not called: a Lua function cannot cross MessagePack.
local NOT_CALLED = { ["kong.service.set_target_retry_callback"] = "its argument is a function" }

local function sh_lines(cmd)
  local p = assert(io.popen(cmd))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

-- The methods a PDK package lists, from its own modules.
local function pdk_methods(pdk)
  local out = {}
  if pdk == "py" then
    local base = sh_lines("ls -d " .. fixtures.root .. "/build/venv/lib/python3*/site-packages/kong_pdk/pdk/kong")[1]
    for _, file in ipairs(sh_lines("cd " .. base .. " && find . -name '*.py' | sort")) do
      local mod = ("kong/" .. file:sub(3)):gsub("%.py$", ""):gsub("/__init__$", ""):gsub("/", ".")
      for line in io.lines(base .. "/" .. file:sub(3)) do
        local name = line:match("^    def ([%a_][%w_]*)%(")
        if name then out[mod .. "." .. name] = true end
      end
    end
  else
    local base = fixtures.root .. "/fixtures/plugins/js-hello/node_modules/kong-pdk/kong"
    for _, file in ipairs(sh_lines("cd " .. base .. " && find . -name '*.d.ts' | sort")) do
      local mod = ("kong/" .. file:sub(3)):gsub("%.d%.ts$", ""):gsub("/index$", ""):gsub("/", ".")
      for line in io.lines(base .. "/" .. file:sub(3)) do
        local name = line:match("^%s+([%a_][%w_]*)%(.*%): Promise<")
        if name then
          -- the JS PDK's own mapping: a lower-case letter then an upper-case one gets `_`
          out[mod .. "." .. name:gsub("(%l)(%u)", "%1_%2"):lower()] = true
        end
      end
    end
  end
  return out
end

-- A plan argument as the host receives it, typed like the recorder's values.
local function typed_arg(a)
  if a == nil or a == NULL then return { t = "nil" } end
  local t = type(a)
  if t == "boolean" then return { t = "bool", v = a } end
  if t == "number" then
    return a == math.floor(a) and { t = "int", v = a } or { t = "float", v = a }
  end
  if t == "string" then return { t = "str", v = a } end
  if a["$bin"] then
    return { t = "str", v = (a["$bin"]:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) }
  end
  if #a > 0 or next(a) == nil then
    local items = {}
    for i, x in ipairs(a) do items[i] = typed_arg(x) end
    return { t = "list", v = items }
  end
  local m = {}
  for k, x in pairs(a) do m[k] = typed_arg(x) end
  return { t = "map", v = m }
end

-- kong-pdk for Python turns log arguments other than str/int/list/dict into str().
local function py_log_arg(a)
  if type(a) == "boolean" then return a and "True" or "False" end
  if type(a) == "number" and a ~= math.floor(a) then return tostring(a) end
  return a
end

-- What JS sees of a typed value: one number type.
local function for_js(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = for_js(x) end
  if out.t == "int" or out.t == "float" then out.t = "num" end
  return out
end

local REQUESTS = {
  main = { method = "POST", path = "/cov/in?q=1&q=2&flag&uni=%C3%A9t%C3%A9&empty=",
           body = "form=1&form=2&text=h%C3%A9",
           headers = { host = "cov.test", ["x-cov-in"] = "in-value", ["x-cov-rep"] = { "a", "b" },
                       ["x-cov-uni"] = "héllo ✓", ["x-cov-drop"] = "gone",
                       ["content-type"] = "application/x-www-form-urlencoded" } },
  binary = { method = "POST", path = "/cov/bin", body = "\0\1\255\254cov\0end\192",
             headers = { ["content-type"] = "application/octet-stream" } },
  empty = { method = "POST", path = "/cov/empty",
            headers = { ["content-type"] = "application/x-www-form-urlencoded", ["content-length"] = "0" } },
  big = { method = "POST", path = "/cov/big", body = string.rep("x", 40000),
          headers = { ["content-type"] = "application/octet-stream" } },
  ["not-utf8"] = { method = "GET", path = "/cov/latin1",
                   headers = { ["x-cov-in"] = "in-value", ["x-cov-latin1"] = "\255\254abc" } },
  errors = { method = "GET", path = "/cov/errors", headers = { ["x-cov-in"] = "in-value" } },
}
local CASES = { "main", "binary", "empty", "big", "not-utf8", "errors" }

local coverage = {}   -- method -> { py = cell, js = cell }
local listed = {}     -- pdk -> set of listed methods

-- What each call showed, per method and PDK: a value, an error, or "not in Kong".
local seen = {}

local function note(pdk, method, what)
  seen[method] = seen[method] or {}
  seen[method][pdk] = seen[method][pdk] or {}
  seen[method][pdk][what] = true
end

local function cell_text(method, s)
  if s.not_in_kong then return "error (not in Kong's PDK)" end
  local text = s.value and "✓" or "✓ error only"
  if s.value and CANNED[method] then text = "✓ canned" end
  return text
end

local function table_text()
  for method, by_pdk in pairs(seen) do
    coverage[method] = coverage[method] or {}
    for pdk, s in pairs(by_pdk) do
      coverage[method][pdk] = cell_text(method, s)
    end
  end
  local names = {}
  for name in pairs(coverage) do names[#names + 1] = name end
  for _, pdk in ipairs({ "py", "js" }) do
    for name in pairs(listed[pdk] or {}) do
      if not coverage[name] then
        coverage[name] = {}
        names[#names + 1] = name
      end
    end
  end
  table.sort(names)
  local lines = { "| method | py | js |", "|---|---|---|" }
  for _, name in ipairs(names) do
    local row = coverage[name]
    local function show(pdk)
      if row[pdk] then return row[pdk] end
      if NOT_CALLED[name] and listed[pdk] and listed[pdk][name] then return "not called: " .. NOT_CALLED[name] end
      if TERMINAL[name] and listed[pdk] and listed[pdk][name] then return "✓ terminal_calls_spec" end
      return "—"
    end
    lines[#lines + 1] = "| `" .. name .. "` | " .. show("py") .. " | " .. show("js") .. " |"
  end
  return table.concat(lines, "\n")
end

local function write_doc(path, text)
  local doc = assert(procs.read_file(path), "cannot read " .. path)
  local begin_mark, end_mark = "<!-- coverage table: begin -->", "<!-- coverage table: end -->"
  local a = assert(doc:find(begin_mark, 1, true), "no begin marker in " .. path)
  local b = assert(doc:find(end_mark, 1, true), "no end marker in " .. path)
  procs.write_file(path, doc:sub(1, a + #begin_mark) .. "\n" .. text .. "\n" .. doc:sub(b))
end

describe("MessagePack coverage", function()
  teardown(function()
    local text = table_text()
    print("\nMessagePack PDK coverage (py-coverage, js-coverage):\n" .. text)
    local doc = os.getenv("KPS_MP_COVERAGE_DOC")
    if doc and doc ~= "" then
      write_doc(doc, text)
    end
  end)

  for _, pdk in ipairs({ "py", "js" }) do
    local name = pdk .. "-coverage"
    assert(fixtures.available(name))

    describe(name .. " (" .. (pdk == "py" and "kong-pdk 0.36, PyPI" or "kong-pdk 0.6.0, npm") .. ")", function()
      local h, report
      local runs = {}   -- case -> { res, recs, host }

      local function run(case)
        cov.truncate(report)
        assert(h:eval(cov.DUMP))
        local r = REQUESTS[case]
        local headers = { ["x-cov-case"] = pdk .. ":" .. case }
        for k, v in pairs(r.headers) do headers[k] = v end
        local res = assert(h:request { method = r.method, path = r.path, body = r.body, headers = headers })
        local want = 1 + #cov.calls(pdk, case, "log")
        local recs = assert(nginx.wait_until(function()
          local all = cov.read_report(report)
          local n = 0
          for _, x in ipairs(all) do
            if x.phase == "log" then n = n + 1 end
          end
          return n >= want and all
        end, 10), name .. ": the log phase of case " .. case .. " did not finish")
        local text = assert(h:eval(cov.DUMP))
        local host = assert(cjson.decode(text), "bad host records: " .. text)
        runs[case] = { res = res, recs = recs, host = host }
      end

      setup(function()
        local prefix = nginx.make_prefix()
        report = prefix .. "/" .. name .. ".jsonl"
        local settings = fixtures.settings({ name }, prefix)
        local k = "pluginserver_" .. pdk .. "_coverage_"
        settings[k .. "ready_timeout"] = "10000"
        settings[k .. "read_timeout"] = "5000"
        h = assert(nginx.start { prefix = prefix, workers = 1, log_level = "info", configuration = settings,
                                 plugins = { { name = name, config = { report = report } } } })
        assert.equal("installed", h:eval(cov.RECORDER))
        for _, case in ipairs(CASES) do
          run(case)
        end
      end)

      teardown(function()
        if h then h:stop() end
      end)

      it("calls every method its PDK package lists (but one that takes a function)", function()
        local methods = pdk_methods(pdk)
        listed[pdk] = methods
        local planned = {}
        for _, c in ipairs(cov.plan) do
          if c.only == nil or c.only == pdk then planned[c.m] = true end
        end
        assert.same({}, sets.without(methods, planned, NOT_CALLED))
        assert.same({}, sets.without(planned, methods,
                                     { ["kong.nope.nothing"] = true, ["kong.response.get_raw_body"] = true }))
        assert.equal(pdk == "py" and 105 or 116, sets.count(methods))
      end)

      it("answers every call with the host's result in Kong's MessagePack shape, and its error", function()
        local checked = 0
        for _, case in ipairs(CASES) do
          local run_ = assert(runs[case], "case " .. case .. " did not run")
          if case == "not-utf8" then
            goto next_case   -- the PDKs cannot read it: its own test below
          end
          local next_host = {}
          local function host_record(method)
            for i = (next_host[method] or 0) + 1, #run_.host do
              if run_.host[i].method == method then
                next_host[method] = i
                return run_.host[i]
              end
            end
          end
          local plan_of = {}
          for _, c in ipairs(cov.calls(pdk, case)) do
            plan_of[c.p .. " " .. c.m .. " " .. (c.l or "")] = c
          end
          for _, rec in ipairs(run_.recs) do
            local what = case .. "/" .. rec.phase .. " " .. rec.method .. " " .. rec.label
            local plan = rec.case == "-" and { a = { "x-cov-case" } } or plan_of[rec.phase .. " " .. rec.method .. " " .. rec.label]
            assert(plan, "no plan entry for " .. what)
            local host = not NOT_IN_KONG[rec.method] and host_record(rec.method)
            local ok, err = pcall(function()
              if not host then
                -- no such function in the host: the plugin gets the error, not a value
                assert(NOT_IN_KONG[rec.method], "the host recorded no call")
                assert.equal("string", type(rec.err), "expected an error")
                assert.same({ t = "nil" }, rec.v)
                return
              end
              -- the arguments as the plugin passed them
              local want_args = {}
              for i, a in ipairs(plan.a) do
                if pdk == "py" and rec.method:find("^kong%.log%.") then a = py_log_arg(a) end
                want_args[i] = typed_arg(a)
              end
              assert.same(want_args, host.args)
              if host.terminal then
                return   -- no reply: checked by terminal_calls_spec.lua
              end
              if host.err then
                assert.equal("string", type(rec.err), "no error for " .. host.err)
                assert.is_truthy(rec.err:find(host.err, 1, true), rec.err .. " vs " .. host.err)
                assert.same({ t = "nil" }, rec.v)
              elseif rec.method == "kong.log.serialize" then
                assert.equal(NULL, rec.err)
                assert.equal("str", rec.v.t)
                assert.same(host.serialized, cjson.decode(rec.v.v))
              else
                assert.equal(NULL, rec.err)
                local want = pdk == "js" and for_js(host.ret) or host.ret
                assert(cov.same(want, rec.v), "value: got " .. cjson.encode(rec.v) .. ", want " .. cjson.encode(want))
              end
            end)
            if not ok then
              error(what .. ": " .. tostring(err) .. "\n plugin: " .. tostring(cjson.encode(rec))
                    .. "\n host: " .. tostring(cjson.encode(host or {})), 0)
            end
            if rec.case ~= "-" or case == "main" then
              if NOT_IN_KONG[rec.method] then
                note(pdk, rec.method, "not_in_kong")
              elseif host and host.terminal then
                note(pdk, rec.method, "terminal")
              else
                note(pdk, rec.method, rec.err == NULL and "value" or "error")
              end
            end
            checked = checked + 1
          end
          ::next_case::
        end
        assert.is_true(checked >= 150, checked .. " calls checked")
        -- the one failure is the string Python cannot decode (test below)
        assert.equal(pdk == "py" and 1 or 0, #h:log_lines("failed in"))
      end)

      -- The shaping cases, written out from Kong's rules, not from the host's values.
      local function got(case, phase, method, label)
        for _, rec in ipairs(runs[case].recs) do
          if rec.phase == phase and rec.method == method and rec.label == (label or "") then
            return rec
          end
        end
        error("no record for " .. case .. " " .. phase .. " " .. method .. " " .. tostring(label))
      end
      local function str(s) return { t = "str", v = s } end
      local function list(...) return { t = "list", v = { ... } } end
      local function num(n, float)
        return { t = pdk == "js" and "num" or (float and "float" or "int"), v = n }
      end

      it("shapes multimaps, bodies, nil, flags and unicode as Kong does", function()
        local q = got("main", "access", "kong.request.get_query", "all").v
        assert.equal("map", q.t)
        assert.same(list(str("1"), str("2")), q.v.q)        -- a repeated query arg: a list
        assert.same({ t = "list", v = {} }, q.v.flag)        -- a flag: an empty list
        assert.same(list(str("")), q.v.empty)
        assert.same(list(str("été")), q.v.uni)
        assert.same({ t = "map", v = {} }, got("empty", "access", "kong.request.get_query", "empty").v)
        local hs = got("main", "access", "kong.request.get_headers").v
        assert.equal("map", hs.t)
        assert.same(list(str("a"), str("b")), hs.v["x-cov-rep"])
        assert.same(list(str("héllo ✓")), hs.v["x-cov-uni"])
        assert.same(str("a"), got("main", "access", "kong.request.get_header", "repeated").v)
        assert.same(str("héllo ✓"), got("main", "access", "kong.request.get_header", "unicode").v)
        assert.same({ t = "nil" }, got("main", "access", "kong.request.get_header", "missing").v)
        assert.same({ t = "bool", v = true }, got("main", "access", "kong.request.get_query_arg", "flag").v)
        assert.same(str("1"), got("main", "access", "kong.request.get_query_arg", "repeated").v)
        -- raw bodies are bin, whatever their bytes; an empty one too
        assert.same({ t = "bin", v = "0001fffe636f7600656e64c0" },
                    got("binary", "access", "kong.request.get_raw_body", "binary").v)
        assert.same({ t = "bin", v = "" }, got("empty", "access", "kong.request.get_raw_body", "empty").v)
        assert.same({ t = "bin", v = "666f726d3d3126666f726d3d3226746578743d68254333254139" },
                    got("main", "access", "kong.request.get_raw_body", "text").v)
        -- a body nginx kept in a file: Kong's error, where Kong's own encoder would
        -- have raised on the nil body
        local big = got("big", "access", "kong.request.get_raw_body", "in a file")
        assert.same({ t = "nil" }, big.v)
        assert.matches("did not fit into client body buffer", big.err, 1, true)
        assert.same(str("40000"), got("big", "access", "kong.request.get_header", "after the error").v)
        -- a decoded body: a map of lists; an empty one is an empty array (Kong's encoder)
        local form = got("main", "access", "kong.request.get_body", "form").v
        assert.same({ t = "map", v = { form = list(str("1"), str("2")), text = str("hé") } }, form)
        assert.same({ t = "list", v = {} }, got("empty", "access", "kong.request.get_body", "empty").v)
        -- numbers: whole ones are integers, others floats (JS cannot tell them apart)
        assert.same(num(1.1, true), got("main", "access", "kong.request.get_http_version").v)
        assert.same(num(201), got("main", "log", "kong.response.get_status").v)
        local t = got("main", "access", "kong.ctx.shared.get", "table").v
        assert.same({ t = "map", v = { list = list(num(1), num(2.5, true), str("x")), empty = { t = "list", v = {} },
                                       n = num(-7) } }, t)
        -- values kept for the log phase
        assert.same(str("shared-value"), got("main", "log", "kong.ctx.shared.get").v)
        assert.same(num(42.5, true), got("main", "log", "kong.nginx.get_ctx").v)
        assert.same(list(str("a"), str("b")), got("main", "log", "kong.request.get_headers").v.v["x-cov-rep"])
        assert.same(list(str("m1"), str("m2")), got("main", "log", "kong.response.get_headers").v.v["x-cov-multi"])
        -- the upstream got what the plugin set
        local echo = assert(cjson.decode(runs.main.res.body))
        assert.equal(201, runs.main.res.status)
        assert.equal("PUT", echo.method)
        assert.equal("cov body ✓", echo.body)
        assert.same({ "v1", "v2" }, echo.headers["x-cov-up-multi"])
        assert.is_nil(echo.headers["x-cov-drop"])
        assert.same({ "a1", "a2" }, runs.main.res.headers["x-cov-add"])
        assert.is_nil(runs.main.res.headers["x-cov-gone"])
        assert.equal("set ✓", runs.main.res.headers["x-cov-set"])
      end)

      it("sends a string that is not UTF-8 as Kong does (str), which the PDK cannot read as sent", function()
        local run_ = runs["not-utf8"]
        local host = {}
        for _, r in ipairs(run_.host) do
          if r.phase == "access" then host[#host + 1] = r.args[1].v end
        end
        -- the host answered the calls, the bytes as they came (Python: up to the lost one)
        local after = pdk == "js" and "x-cov-in" or nil
        assert.same({ "x-cov-case", "x-cov-in", "x-cov-latin1", after }, host)
        local labels = {}
        for _, rec in ipairs(run_.recs) do
          if rec.phase == "access" then labels[#labels + 1] = rec.label end
        end
        if pdk == "py" then
          -- msgpack for Python refuses invalid UTF-8 in a str and drops the connection:
          -- the event is lost and the failure rule applies (Kong: logged, request goes on)
          assert.same({ "x-cov-case", "before" }, labels)
          assert.equal(500, run_.res.status)
          assert.equal(1, h:count_log("plugin py%-coverage failed in access"))
        else
          -- @msgpack/msgpack decodes each invalid byte as a character of its own
          assert.same({ "x-cov-case", "before", "not UTF-8", "after" }, labels)
          assert.same(str("\195\191\195\190abc"), got("not-utf8", "access", "kong.request.get_header", "not UTF-8").v)
          assert.equal(200, run_.res.status)
        end
      end)

      it("returns a PDK error to the plugin, which goes on as in Kong", function()
        local function err_of(phase, method, label)
          local rec = got("errors", phase, method, label)
          assert.same({ t = "nil" }, rec.v)
          assert.equal("string", type(rec.err), method .. " " .. label .. ": no error")
          return rec.err
        end
        assert.matches("invalid header name: got table, expected string",
                       err_of("access", "kong.response.set_header", "table name"), 1, true)
        assert.matches("invalid header name: got table, expected string",
                       err_of("access", "kong.service.request.set_header", "list name"), 1, true)
        -- a name outside the PDK: refused (the exact text of pdk.refuse)
        assert.matches("kong.nope.nothing", err_of("access", "kong.nope.nothing", "unknown method"), 1, true)
        assert.matches("function cannot be called in log phase",
                       err_of("log", "kong.response.set_header", "forbidden phase"), 1, true)
        assert.matches("function cannot be called in log phase",
                       err_of("log", "kong.service.request.set_header", "forbidden phase"), 1, true)
        -- upstream data before proxying, a body_filter-only function: Kong's phase errors
        assert.matches("function cannot be called in access phase",
                       err_of("access", "kong.service.response.get_status", "before proxying"), 1, true)
        assert.matches("function cannot be called in access phase (only in: body_filter)",
                       err_of("access", "kong.response.get_raw_body", "before proxying"), 1, true)
        -- the event went on after each error, and so did the request
        assert.equal(NULL, got("errors", "access", "kong.response.set_header", "after the errors").err)
        assert.same(str("in-value"), got("errors", "log", "kong.request.get_header", "after the errors").v)
        assert.equal(200, runs.errors.res.status)
        assert.equal("went on", runs.errors.res.headers["x-cov-after-errors"])
        assert.equal("GET", assert(cjson.decode(runs.errors.res.body)).method)
      end)
    end)
  end
end)
