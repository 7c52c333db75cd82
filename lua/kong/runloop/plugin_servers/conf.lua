-- kong.runloop.plugin_servers.conf: validation of Kong's `pluginserver_*` settings.
--
-- parse(settings [, opts]) -> defs, warnings  |  nil, errors, warnings
--
-- `settings`: Kong's configuration (the `pluginserver_*` keys, or its
-- `pluginservers` list where the keys are not readable: conf_pluginservers.lua)
-- or any table of such settings.
--
-- The checks live in Rust (src/config); this module picks the relevant keys out of
-- Kong's configuration, sends them as JSON through kps_config_parse and turns the
-- JSON answer into plain tables. It never raises: any failure comes back as errors.

local ffi = require "ffi"
local cjson = require("cjson.safe").new()
local pluginservers = require "kong.runloop.plugin_servers.conf_pluginservers"

local ffi_gc = ffi.gc
local ffi_new = ffi.new
local ffi_str = ffi.string
local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local require = require
local lower = string.lower
local gsub = string.gsub
local sub = string.sub
local gmatch = string.gmatch
local math_huge = math.huge

local NULL = cjson.null
local KEY_PREFIX = "pluginserver_"

local _M = {}

-- The native library, loaded on first use so that a missing .so is an error
-- returned by parse, not a failed require of this module.
local suffixes

local function load_lib()
  local lib, err = require("kong.runloop.plugin_servers.lib").optional()
  if not lib then
    return nil, "plugin server configuration cannot be checked: " .. tostring(err)
  end
  if not suffixes then
    suffixes = {}
    for s in gmatch(ffi_str(lib.C.kps_config_setting_names()), "[^,]+") do
      suffixes[#suffixes + 1] = s
    end
  end
  return lib
end

-- A value as JSON can carry it. Whatever JSON cannot (functions, NaN, tables with
-- keys) is passed so that Rust can name it in an error instead of cjson failing.
local function scalar(v)
  local t = type(v)
  if t == "string" or t == "boolean" then
    return v
  elseif t == "number" then
    if v ~= v or v == math_huge or v == -math_huge then
      return tostring(v)
    end
    return v
  elseif v == NULL then
    return NULL
  end
  return { ["$type"] = t }
end

local function sequence_length(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then
      return nil
    end
    if k > n then
      n = k
    end
  end
  for i = 1, n do
    if t[i] == nil then
      return nil
    end
  end
  return n
end

local function to_json_value(v)
  if type(v) ~= "table" then
    return scalar(v)
  end
  local n = sequence_length(v)
  if not n then
    return { ["$type"] = "table" }
  end
  local out = {}
  for i = 1, n do
    out[i] = scalar(v[i])
  end
  return out
end

-- Kong's key infix of a pluginserver_names entry: lower-cased, `-` as `_`.
local function key_of(entry)
  local name = lower(entry)
  name = gsub(name, "^%s+", "")
  name = gsub(name, "%s+$", "")
  name = gsub(name, "-", "_")
  return KEY_PREFIX .. name .. "_"
end

-- The settings parse reads: `prefix` and every `pluginserver_*` key. Keys are
-- found by iteration and, because Kong's `kong.configuration` is a proxy that
-- pairs() cannot see through, also by name for each listed server.
local function pick(settings)
  local out = {}
  for k, v in pairs(settings) do
    if type(k) == "string" and (k == "prefix" or sub(k, 1, #KEY_PREFIX) == KEY_PREFIX) then
      out[k] = to_json_value(v)
    end
  end

  local function take(k)
    if out[k] == nil then
      local v = settings[k]
      if v ~= nil then
        out[k] = to_json_value(v)
      end
    end
  end
  take("prefix")
  take("pluginserver_names")

  local names = settings.pluginserver_names
  if type(names) == "string" then
    local list = {}
    for entry in gmatch(names, "[^,]+") do
      list[#list + 1] = entry
    end
    names = list
  end
  if type(names) == "table" then
    for _, entry in pairs(names) do
      if type(entry) == "string" then
        local key = key_of(entry)
        for _, suffix in ipairs(suffixes) do
          take(key .. suffix)
        end
      end
    end
  end
  -- what the keys do not give, from Kong's `pluginservers` list
  pluginservers.fill(settings, out, key_of, to_json_value)
  return out
end

local function fail(msg, warnings)
  return nil, { msg }, warnings or {}
end

-- defs from JSON: plain tables; the JSON null of an external server's
-- start_command becomes nil.
local function plain_defs(list)
  for _, def in ipairs(list) do
    for k, v in pairs(def) do
      if v == NULL then
        def[k] = nil
      end
    end
  end
  return list
end

function _M.parse(settings, opts)
  local clib, err = load_lib()
  if not clib then
    return fail(err)
  end
  if type(settings) ~= "table" then
    return fail("plugin server configuration: settings must be a table, got " .. type(settings))
  end
  if opts ~= nil and type(opts) ~= "table" then
    return fail("plugin server configuration: opts must be a table, got " .. type(opts))
  end

  local ok, picked = pcall(pick, settings)
  if not ok then
    return fail("plugin server configuration: cannot read settings: " .. tostring(picked))
  end
  local json_opts
  if opts then
    json_opts = {}
    if opts.default_dir ~= nil then
      json_opts.default_dir = scalar(opts.default_dir)
    end
    if opts.path ~= nil then
      json_opts.path = scalar(opts.path)
    end
  end
  local input, jerr = cjson.encode({ settings = picked, opts = json_opts })
  if not input then
    return fail("plugin server configuration: cannot encode settings: " .. tostring(jerr))
  end

  local C = clib.C
  local handle = ffi_gc(C.kps_config_new(), C.kps_config_free)
  local out = ffi_new("const uint8_t *[1]")
  local out_len = ffi_new("size_t[1]")
  local errbuf, errbuf_len = clib.errbuf()
  local rc = C.kps_config_parse(handle, input, #input, out, out_len, errbuf, errbuf_len)
  local text = rc == 0 and ffi_str(out[0], out_len[0])
  -- Free now rather than at some later GC: the output is copied into `text`.
  C.kps_config_free(ffi_gc(handle, nil))
  if not text then
    return fail("plugin server configuration: " .. clib.errmsg())
  end
  local result, derr = cjson.decode(text)
  if type(result) ~= "table" then
    return fail("plugin server configuration: cannot decode the result: " .. tostring(derr))
  end

  if result.ok then
    local defs = plain_defs(result.defs)
    local warnings = type(result.warnings) == "table" and result.warnings or {}
    local cok, more = pcall(pluginservers.compare, settings, defs)
    if not cok then
      more = { "plugin server configuration: cannot compare kong.configuration.pluginservers: " .. tostring(more) }
    end
    for _, w in ipairs(more) do
      warnings[#warnings + 1] = w
    end
    return defs, warnings
  end
  return nil, result.errors, result.warnings
end

return _M
