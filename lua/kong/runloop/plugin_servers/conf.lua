-- kong.runloop.plugin_servers.conf: validation of Kong's `pluginserver_*` settings.
--
-- parse(settings [, opts]) -> defs, warnings  |  nil, errors, warnings
-- handle_of(defs) -> the parsed configuration (kps_config cdata) of defs made by
--   parse, or nil
--
-- `settings`: Kong's configuration (the `pluginserver_*` keys, or its
-- `pluginservers` list where the keys are not readable: conf_pluginservers.lua)
-- or any table of such settings.
--
-- The checks and the definitions live in Rust (src/config, src/ffi/config.rs):
-- this module sends what it can read of Kong's configuration as JSON through
-- kps_config_parse, and reads the accepted definitions once (kps_config_defs) into
-- the plain tables Kong's callers see. The handle stays with those tables: the
-- info query and the supervisor take it (process.lua), so the definitions are
-- never encoded back. It is freed by the garbage collector with the last
-- reference to its defs table; the supervisor keeps its own copy.
-- It never raises: any failure comes back as errors.

local ffi = require "ffi"
local cjson = require("cjson.safe").new()
local pluginservers = require "kong.runloop.plugin_servers.conf_pluginservers"

local require, assert, ipairs, pairs, pcall = require, assert, ipairs, pairs, pcall
local tostring, type = tostring, type
local gmatch, sub = string.gmatch, string.sub
local huge = math.huge
local ffi_str = ffi.string

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
    if v ~= v or v == huge or v == -huge then
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

-- The settings parse reads: `prefix` and every `pluginserver_*` key (the only
-- keys sent: Rust ignores any other, and the rest of Kong's configuration need
-- not be encodable). Keys are found by iteration and, because Kong's
-- `kong.configuration` is a proxy that pairs() cannot see through, also by name
-- for each listed server: `key_prefix(entry)` is Rust's `pluginserver_<k>_`.
local function pick(settings, key_prefix)
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
        local key = key_prefix(entry)
        for _, suffix in ipairs(suffixes) do
          take(key .. suffix)
        end
      end
    end
  end
  -- what the keys do not give, from Kong's `pluginservers` list
  pluginservers.fill(settings, out, key_prefix, to_json_value)
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

-- defs table -> its kps_config (weak keys: the handle lives as long as the defs)
local handles = setmetatable({}, { __mode = "k" })

function _M.handle_of(defs)
  return handles[defs]
end

-- The bytes a handle call lent at (out, out_len), copied, or nil, err.
local function take_output(clib, rc, out, out_len)
  if rc ~= 0 then
    return nil, clib.errmsg()
  end
  return ffi_str(out[0], out_len[0])
end

-- Parses `settings` into `handle`: defs, warnings | nil, errors, warnings.
local function parse_into(clib, handle, settings, opts)
  local C = clib.C
  local out = ffi.new("const uint8_t *[1]")
  local out_len = ffi.new("size_t[1]")

  local function key_prefix(entry)
    local errbuf, errbuf_len = clib.errbuf()
    local rc = C.kps_config_key_prefix(handle, entry, #entry, out, out_len, errbuf, errbuf_len)
    return assert(take_output(clib, rc, out, out_len))
  end

  local ok, picked = pcall(pick, settings, key_prefix)
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

  local errbuf, errbuf_len = clib.errbuf()
  local rc = C.kps_config_parse(handle, input, #input, out, out_len, errbuf, errbuf_len)
  local text, perr = take_output(clib, rc, out, out_len)
  if not text then
    return fail("plugin server configuration: " .. perr)
  end
  local result, derr = cjson.decode(text)
  if type(result) ~= "table" then
    return fail("plugin server configuration: cannot decode the result: " .. tostring(derr))
  end
  if not result.ok then
    return nil, result.errors, result.warnings
  end

  errbuf, errbuf_len = clib.errbuf()
  rc = C.kps_config_defs(handle, out, out_len, errbuf, errbuf_len)
  local defs_text, derr2 = take_output(clib, rc, out, out_len)
  local list = defs_text and cjson.decode(defs_text)
  if type(list) ~= "table" then
    return fail("plugin server configuration: cannot read the definitions: " .. tostring(derr2 or defs_text))
  end
  local defs = plain_defs(list)
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

  local C = clib.C
  local handle = ffi.gc(C.kps_config_new(), C.kps_config_free)
  local defs, second, third = parse_into(clib, handle, settings, opts)
  if defs then
    handles[defs] = handle
  else
    -- nothing refers to a rejected configuration: free it now, not at some later GC
    C.kps_config_free(ffi.gc(handle, nil))
  end
  return defs, second, third
end

return _M
