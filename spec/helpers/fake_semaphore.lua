-- A stand-in for ngx.semaphore in unit specs, where no light thread sleeps:
-- wait() takes a resource when there is one, else yields the calling coroutine
-- ("waiting") as a light thread would sleep, recording its timeout; post(n)
-- gives up to n waiters a resource, moving them to `runnable` (the semaphore's
-- and the library's, in order), for the spec to resume; count() answers as
-- ngx.semaphore's does (negative: that many wait).
--
--   local lib = require("spec.helpers.fake_semaphore").lib()
--   package.loaded["ngx.semaphore"] = lib    -- lib.created: every semaphore made
local _M = {}

function _M.lib()
  local lib = { created = {}, runnable = {} }
  function lib.new()
    local s = { resources = 0, waiting = {}, runnable = {}, timeouts = {} }
    function s.wait(self, timeout)
      if self.resources > 0 then
        self.resources = self.resources - 1
        return true
      end
      self.timeouts[#self.timeouts + 1] = timeout
      self.waiting[#self.waiting + 1] = coroutine.running()
      return coroutine.yield("waiting")
    end
    function s.post(self, n)
      for _ = 1, n or 1 do
        local co = table.remove(self.waiting, 1)
        if co then
          self.runnable[#self.runnable + 1] = co
          lib.runnable[#lib.runnable + 1] = co
        else
          self.resources = self.resources + 1
        end
      end
    end
    function s.count(self)
      return #self.waiting > 0 and -#self.waiting or self.resources
    end
    lib.created[#lib.created + 1] = s
    return s
  end
  return lib
end

return _M
