-- wrk script: PATCH /api/v1/clients/{id} (a new note each request), turn by turn over the client
-- ids listed one a line in the file BENCH_IDS.
wrk.method = "PATCH"
wrk.headers["Content-Type"] = "application/merge-patch+json"
ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do table.insert(ids, line) end
counter = 0
request = function()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  return wrk.format(nil, "/api/v1/clients/" .. id, nil, '{"notes":"note ' .. counter .. '"}')
end
