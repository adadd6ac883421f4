-- The reference load's scenarios (../shared/load/harness/scenarios.lua), paced: each connection
-- waits SOAK_DELAY_MS before each request, so that a soak runs at a chosen fraction of capacity.
dofile(os.getenv("LOAD_SCENARIOS"))
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
if pause > 0 then
  function delay()
    return pause
  end
end
