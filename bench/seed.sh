# Shared by the bench scripts that write clients (sourced; it only defines functions).

# write_seed_csv FILE: 10,000 clients as CSV, for the import job.
write_seed_csv() {
  awk 'BEGIN { print "name,email,phone,company,status,tags"; for (i = 0; i < 10000; i++) printf "Seed %d,seed%d@example.com,+49 30 %07d,Company %d,active,t%d;all\n", i, i, i, i % 97, i % 7 }' >"$1"
}

# import_seed BASE_URL TOKEN CSV IDS: imports CSV through the import job, waits until it has
# succeeded, and writes the ids of the first 200 clients, one a line, to IDS (for patch_client.lua).
import_seed() {
  local base=$1 token=$2 csv=$3 ids=$4 job status
  job=$(curl -fs "$base/api/v1/clients/import" -H "Authorization: Bearer $token" \
    -H 'content-type: text/csv' --data-binary @"$csv" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  while :; do
    status=$(curl -fs "$base/api/v1/jobs/$job" -H "Authorization: Bearer $token" | sed -E 's/.*"status":"([a-z]+)".*/\1/')
    [ "$status" = succeeded ] && break
    [ "$status" = failed ] && { echo "seed import failed" >&2; exit 1; }
    sleep 0.2
  done
  curl -fs "$base/api/v1/clients?limit=200" -H "Authorization: Bearer $token" \
    | python3 -c 'import json, sys; print("\n".join(c["id"] for c in json.load(sys.stdin)["items"]))' >"$ids"
}
