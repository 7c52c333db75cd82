-- Process helpers for specs (Linux /proc): liveness, parent links, descendants,
-- open file descriptors; and the file helpers they and the specs share. Only ever
-- signals PIDs that a spec started or that descend from one.
local _M = {}

-- The whole file at `path`, or nil when it cannot be opened.
local function read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local data = f:read("*a")
  f:close()
  return data
end
_M.read_file = read

-- Runs a shell command; true when it exited 0.
function _M.sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- A shell command's whole standard output.
function _M.capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

function _M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Whether a unix socket is at `path` (io.open cannot open one: ask test(1)).
function _M.is_socket(path)
  local ok = os.execute("test -S '" .. path .. "'")
  return ok == true or ok == 0
end

-- Returns ppid, state and command name of pid, or nil when it is gone.
function _M.stat(pid)
  local text = read("/proc/" .. pid .. "/stat")
  if not text then
    return nil
  end
  local comm, state, ppid = text:match("^%d+ %((.*)%) (%S) (%d+)")
  return tonumber(ppid), state, comm
end

function _M.alive(pid)
  local _, state = _M.stat(pid)
  return state ~= nil and state ~= "Z"
end

function _M.cmdline(pid)
  local text = read("/proc/" .. pid .. "/cmdline")
  return text and text:gsub("%z", " "):gsub(" $", "") or nil
end

local function all_pids()
  local list = {}
  local p = io.popen("ls /proc")
  for name in p:lines() do
    if name:match("^%d+$") then
      list[#list + 1] = tonumber(name)
    end
  end
  p:close()
  return list
end

-- Live processes whose command line contains `text` (e.g. a spec's prefix).
function _M.with_cmdline(text)
  local out = {}
  for _, pid in ipairs(all_pids()) do
    if _M.alive(pid) and (_M.cmdline(pid) or ""):find(text, 1, true) then
      out[#out + 1] = pid
    end
  end
  return out
end

-- Every live descendant of pid (children, grandchildren, ...).
function _M.descendants(pid)
  local children = {}
  for _, p in ipairs(all_pids()) do
    local ppid = _M.stat(p)
    if ppid then
      children[ppid] = children[ppid] or {}
      table.insert(children[ppid], p)
    end
  end
  local out, queue = {}, { pid }
  while #queue > 0 do
    local cur = table.remove(queue)
    for _, c in ipairs(children[cur] or {}) do
      out[#out + 1] = c
      queue[#queue + 1] = c
    end
  end
  return out
end

function _M.fd_count(pid)
  local p = io.popen("ls /proc/" .. pid .. "/fd 2>/dev/null | wc -l")
  local n = tonumber(p:read("*a"))
  p:close()
  return n
end

function _M.kill(pid, signal)
  return os.execute("kill -" .. (signal or "TERM") .. " " .. tonumber(pid) .. " 2>/dev/null")
end

return _M
