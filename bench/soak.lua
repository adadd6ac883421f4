-- The reference load's scenarios (../shared/load/harness/scenarios.lua), paced: each connection
-- waits SOAK_DELAY_MS before each request, so that a soak runs at a chosen fraction of capacity.
dofile(os.getenv("LOAD_SCENARIOS"))
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
if pause > 0 then
  function delay()
    return pause
  end
end

-- The harness's create draws a random part for each email, seeded by the second it starts, so
-- the many segments of a long soak repeat one now and then and the server rightly answers 409.
-- Here each email holds the segment's number (SOAK_SEGMENT) and the request's, so none repeats.
if os.getenv("SCENARIO") == "create" then
  local segment = os.getenv("SOAK_SEGMENT") or "0"
  local admin = os.getenv("ADMIN_TOKEN") or ""
  local count = 0
  function request()
    count = count + 1
    local body = string.format(
      '{"name":"Soak client %s-%d","email":"soak%s.%d@example.com","company":"Initech","status":"lead","tags":["load"]}',
      segment, count, segment, count)
    return wrk.format("POST", "/api/v1/clients",
      { ["Authorization"] = "Bearer " .. admin, ["Content-Type"] = "application/json" }, body)
  end
end

-- Which statuses the failed requests got, so that a soak's errors say what they were. Each wrk
-- thread counts its own; done() runs in the main state and reads them through the thread.
failed = {}
function response(status, headers, body)
  if status >= 400 then
    failed[status] = (failed[status] or 0) + 1
  end
end

local threads = {}
local harness_setup = setup
function setup(thread)
  harness_setup(thread)
  threads[#threads + 1] = thread
end

local summarize = done
function done(summary, latency, requests)
  summarize(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("failed") or {}) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write(string.format("STATUS %d %d\n", status, count))
  end
end
