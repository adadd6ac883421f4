-- wrk script: POST /api/v1/clients, a new client with two tags per request. Each wrk thread
-- numbers its own requests and BENCH_RUN names the run, so every email is new.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  run = os.getenv("BENCH_RUN") or tostring(os.time())
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local key = run .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, nil, nil, '{"name":"Bench ' .. key .. '","email":"bench-' .. key .. '@example.com","phone":"+49 30 1234567","company":"Bench GmbH","tags":["bench","t' .. (counter % 7) .. '"]}')
end
