-- wrk script of deploy/test-upgrade.sh: authenticated reads and writes of /api/v1/clients, mixed,
-- every response counted by status. Settings come from the environment (wrk gives script
-- arguments to the threads only, not to done()):
--
--   LOAD_TOKEN        a bearer access token (POST /api/v1/auth/login)
--   LOAD_PREFIX       the name prefix of the clients it creates: PREFIX-tTHREAD-N, unique
--   LOAD_WRITE_EVERY  every Nth request of a thread is a write (POST), the others reads (default 3)
--   LOAD_REPORT       done() writes KEY=VALUE lines there (see the end of this file)
--
-- Each thread also lists the name of every acknowledged write (201) in LOAD_REPORT.acked.THREAD,
-- so that the test can check that each of them is in the database. Nothing is retried here: a
-- failed request is counted as such.

local token = os.getenv("LOAD_TOKEN") or error("LOAD_TOKEN is not set")
local prefix = os.getenv("LOAD_PREFIX") or error("LOAD_PREFIX is not set")
local report = os.getenv("LOAD_REPORT") or error("LOAD_REPORT is not set")
local write_every = tonumber(os.getenv("LOAD_WRITE_EVERY") or "3")

-- The main script state: a handle on every thread, for done().
local threads = {}

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

-- Thread states (tid was set by setup before init runs).
function init(args)
   statuses = {}
   reads = 0
   writes = 0
   sent = 0
   acked = assert(io.open(string.format("%s.acked.%d", report, tid), "w"))
   acked:setvbuf("line")
   read_request = wrk.format("GET", "/api/v1/clients?limit=20", {
      ["Host"] = wrk.headers["Host"],
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/json",
   })
end

function request()
   sent = sent + 1
   if sent % write_every == 0 then
      writes = writes + 1
      local name = string.format("%s-t%d-%d", prefix, tid, writes)
      return wrk.format("POST", "/api/v1/clients", {
         ["Host"] = wrk.headers["Host"],
         ["Authorization"] = "Bearer " .. token,
         ["Accept"] = "application/json",
         ["Content-Type"] = "application/json",
      }, string.format('{"name":"%s","tags":["load"]}', name))
   end
   reads = reads + 1
   return read_request
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 201 then
      acked:write((body:match('"name"%s*:%s*"([^"]*)"') or "?"), "\n")
   end
end

-- The main state again: threads' counters are fetched with thread:get.
function done(summary, latency, requests)
   local total, reads_sent, writes_sent = {}, 0, 0
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         total[status] = (total[status] or 0) + n
      end
      reads_sent = reads_sent + thread:get("reads")
      writes_sent = writes_sent + thread:get("writes")
   end
   local f = assert(io.open(report, "w"))
   local function put(key, value) f:write(string.format("%s=%s\n", key, tostring(value))) end
   put("requests", summary.requests)
   put("duration_us", summary.duration)
   put("bytes", summary.bytes)
   put("errors_connect", summary.errors.connect)
   put("errors_read", summary.errors.read)
   put("errors_write", summary.errors.write)
   put("errors_status", summary.errors.status)
   put("errors_timeout", summary.errors.timeout)
   put("reads_sent", reads_sent)
   put("writes_sent", writes_sent)
   put("acked", total[201] or 0)
   put("latency_p50_us", latency:percentile(50))
   put("latency_p99_us", latency:percentile(99))
   put("latency_max_us", latency.max)
   local codes = {}
   for status in pairs(total) do table.insert(codes, status) end
   table.sort(codes)
   for _, status in ipairs(codes) do put("status_" .. status, total[status]) end
   f:close()
end
