-- Comparing sets (tables with the members as keys), for the specs that check a
-- list of methods against another.
--
--   local sets = require "spec.helpers.sets"
--   assert.same({}, sets.without(methods, planned, NOT_CALLED))   -- sorted members
--   assert.equal(74, sets.count(methods))

local pairs = pairs
local sort = table.sort

local _M = {}

--- The members of a that are neither in b nor in skip (optional), sorted.
function _M.without(a, b, skip)
  local out = {}
  for k in pairs(a) do
    if not b[k] and not (skip and skip[k]) then
      out[#out + 1] = k
    end
  end
  sort(out)
  return out
end

--- How many members a has.
function _M.count(a)
  local n = 0
  for _ in pairs(a) do
    n = n + 1
  end
  return n
end

return _M
