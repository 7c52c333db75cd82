-- kong.runloop.plugin_servers.conf_pluginservers: Kong's `pluginservers` list, the
-- second shape of the configuration.
--
-- Kong's conf loader turns `pluginserver_names` and the per-server keys into
-- `conf.pluginservers`: an array of { name, socket, start_command, query_command }
-- (names lower-cased, defaults filled in). A Kong build whose configuration proxy
-- hides the per-server keys, or an embedding that sets only that list, leaves
-- conf.lua nothing else to read. Rule (docs/SETTINGS.md):
-- - the list fills what the keys do not give: the server names when
--   `pluginserver_names` is unset, and socket/start/query commands of a listed
--   server whose keys are unset;
-- - where both give a value and they differ, the keys win (they are what the
--   operator wrote, and what the other per-server settings go with), and a
--   warning names the server and both values.
--
-- fill(settings, picked, key_prefix, to_value): adds to `picked` (the settings sent to
--   the validation) what only the list gives.
-- compare(settings, defs) -> array of warnings where the list and the parsed
--   definitions disagree.

local ipairs, pcall, tostring, type = ipairs, pcall, tostring, type
local gmatch, lower = string.gmatch, string.lower
local concat = table.concat

local _M = {}

-- list field -> per-server key suffix
local FIELDS = {
  { "socket", "socket" },
  { "start_command", "start_cmd" },
  { "query_command", "query_cmd" },
}

local function get(t, k)
  local ok, v = pcall(function() return t[k] end)
  if ok then
    return v
  end
end

-- The usable entries of settings.pluginservers, or nil when there is no list.
local function entries(settings)
  local list = get(settings, "pluginservers")
  if type(list) ~= "table" then
    return nil
  end
  local out = {}
  for _, e in ipairs(list) do
    if type(e) == "table" and type(e.name) == "string" then
      out[#out + 1] = e
    end
  end
  return out
end

-- The names of `pluginserver_names` as given (string or array), or nil.
local function listed_names(names)
  if type(names) == "string" then
    local list = {}
    for entry in gmatch(names, "[^,]+") do
      list[#list + 1] = entry
    end
    return list
  elseif type(names) == "table" then
    local list = {}
    for _, entry in ipairs(names) do
      list[#list + 1] = entry
    end
    return list
  end
end

function _M.fill(settings, picked, key_prefix, to_value)
  local list = entries(settings)
  if not list or #list == 0 then
    return
  end
  local listed = {}
  if picked.pluginserver_names == nil then
    local names = {}
    for i, e in ipairs(list) do
      names[i] = e.name
    end
    picked.pluginserver_names = names
  end
  for _, entry in ipairs(listed_names(picked.pluginserver_names) or {}) do
    if type(entry) == "string" then
      listed[key_prefix(entry)] = true
    end
  end
  for _, e in ipairs(list) do
    local key = key_prefix(e.name)
    -- a server the names leave out stays out (compare() warns about it)
    if listed[key] then
      for _, f in ipairs(FIELDS) do
        local v = e[f[1]]
        if v ~= nil and picked[key .. f[2]] == nil then
          picked[key .. f[2]] = to_value(v)
        end
      end
    end
  end
end

local function show(v)
  if v == nil then
    return "none"
  end
  return "'" .. tostring(v) .. "'"
end

function _M.compare(settings, defs)
  local list = entries(settings)
  if not list then
    return {}
  end
  local warnings = {}
  local by_name = {}
  for _, def in ipairs(defs) do
    by_name[def.name] = def
  end
  local seen = {}
  for _, e in ipairs(list) do
    local name = lower(e.name)
    seen[name] = true
    local def = by_name[name]
    if not def then
      warnings[#warnings + 1] = "pluginserver " .. name .. " is in kong.configuration.pluginservers but not in "
        .. "pluginserver_names; ignored"
    else
      for _, f in ipairs(FIELDS) do
        local field = f[1]
        if e[field] ~= def[field] then
          warnings[#warnings + 1] = "pluginserver " .. name .. ": kong.configuration.pluginservers has "
            .. field .. " " .. show(e[field]) .. ", the pluginserver_* settings give " .. show(def[field])
            .. "; using the settings"
        end
      end
    end
  end
  local missing = {}
  for _, def in ipairs(defs) do
    if not seen[def.name] then
      missing[#missing + 1] = def.name
    end
  end
  if #missing > 0 then
    warnings[#warnings + 1] = "pluginserver_names lists " .. concat(missing, ", ")
      .. ", which kong.configuration.pluginservers does not; using pluginserver_names"
  end
  return warnings
end

return _M
