-- Prints what conf.parse makes of a settings file.
--
--   luajit tools/check-conf.lua SETTINGS.lua [--default-dir DIR] [--path PATH]
--
-- SETTINGS.lua returns a settings table (as Kong's conf loader builds it) and
-- optionally an opts table; the flags override opts. Exit status: 0 valid,
-- 1 invalid, 2 usage or load error. Needs `cargo build --release` first.

local root = (arg[0]:match("^(.*)/tools/[^/]*$") or ".")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/target/release/lib?.so;" .. package.cpath

local function usage(msg)
  io.stderr:write(msg, "\nusage: luajit tools/check-conf.lua SETTINGS.lua [--default-dir DIR] [--path PATH]\n")
  os.exit(2)
end

local file = arg[1]
if not file then
  usage("missing settings file")
end

local chunk, err = loadfile(file)
if not chunk then
  usage("cannot load " .. file .. ": " .. tostring(err))
end
local ok, settings, opts = pcall(chunk)
if not ok or type(settings) ~= "table" then
  usage(file .. " must return a settings table" .. (ok and "" or (": " .. tostring(settings))))
end
opts = opts or {}

local i = 2
while arg[i] do
  local flag, value = arg[i], arg[i + 1]
  if flag == "--default-dir" and value then
    opts.default_dir = value
  elseif flag == "--path" and value then
    opts.path = value
  else
    usage("unknown argument " .. flag)
  end
  i = i + 2
end

local conf = require "kong.runloop.plugin_servers.conf"
local defs, errors, warnings = conf.parse(settings, opts)
if defs then
  warnings = errors
end

local function section(title, list)
  if list and #list > 0 then
    print(title .. ":")
    for _, line in ipairs(list) do
      print("  - " .. line)
    end
  end
end

local KEYS = {
  "socket", "start_command", "query_command", "path", "query_timeout", "stop_timeout",
  "respawn_delay", "respawn_delay_max", "respawn_reset", "ready_timeout", "connect_timeout",
  "send_timeout", "read_timeout", "fail_open", "max_message_size", "log_window", "log_queue_max",
  "hang_timeout", "standby",
}

if defs then
  print(("%s: valid, %d plugin server(s)"):format(file, #defs))
  for _, def in ipairs(defs) do
    print("  " .. def.name .. ":")
    for _, k in ipairs(KEYS) do
      local v = def[k]
      print(("    %-18s %s"):format(k, v == nil and "(none: external)" or tostring(v)))
    end
  end
  section("warnings", warnings)
  os.exit(0)
end

print(("%s: invalid, %d error(s)"):format(file, #errors))
section("errors", errors)
section("warnings", warnings)
os.exit(1)
