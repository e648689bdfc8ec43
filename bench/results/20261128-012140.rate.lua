-- Rate-limited load for wrk (wrk2 is not in Debian): each connection waits
-- WRK_DELAY_MS milliseconds (fractional: rounded up or down at random so the
-- mean is exact) before sending its next request. With C connections the
-- rate is C*1000/(WRK_DELAY_MS + latency), i.e. just under C*1000/WRK_DELAY_MS
-- at half load, where the latency is well under a millisecond.
local d = tonumber(os.getenv("WRK_DELAY_MS") or "10")
local base = math.floor(d)
local frac = d - base
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end
delay = function()
  if math.random() < frac then
    return base + 1
  end
  return base
end
-- Prints one machine-readable line at the end of a wrk run:
-- WRKRESULT requests duration_us connect read write status timeout p50_us p99_us
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT %d %d %d %d %d %d %d %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
