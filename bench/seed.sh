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

# bench_login BASE_URL: the bench admin's access token (the servers start with
# AGENTDESK_ADMIN_EMAIL/PASSWORD as audit_bench_setup sets them).
bench_login() {
  curl -fs "$1/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench-password-123"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}

# pg_bindir: the folder of PostgreSQL's server binaries (initdb, pg_ctl, postgres); fails
# when there is none.
pg_bindir() {
  local dir
  dir=$(pg_config --bindir 2>/dev/null || true)
  [ -x "$dir/initdb" ] || dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$dir/initdb" ] || { echo "PostgreSQL's initdb was not found" >&2; return 1; }
  echo "$dir"
}

# cpu_ticks: the machine's CPU ticks, "steal total" (steal: time the hypervisor ran someone else
# while this machine wanted the CPU); steal_percent STEAL0 TOTAL0 STEAL1 TOTAL1: its share between
# two readings.
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
steal_percent() { awk -v s=$(($3 - $1)) -v t=$(($4 - $2)) 'BEGIN { printf "%.0f", t ? s * 100 / t : 0 }'; }

# write_label KIND: the route a wrk script of audit_bench_setup writes to.
write_label() { if [ "$1" = patch ]; then echo "PATCH /clients/{id}"; else echo "POST /clients"; fi; }

# audit_bench_setup WORK: what bench/audit.sh and bench/audit_paired.sh share. The two builds
# compared, as WORK/agentdesk and WORK/agentdesk-without-audit: BENCH_AUDITED and
# BENCH_UNAUDITED (built before, from one commit) when both are set, otherwise both built here
# (in the one target directory, only our crates differ); the servers' settings; the seed CSV
# (WORK/seed.csv) and the two wrk scripts (WORK/post.lua, WORK/patch.lua).
audit_bench_setup() {
  local work=$1
  if [ "${BENCH_AUDITED:+set}" != "${BENCH_UNAUDITED:+set}" ]; then
    echo "set both BENCH_AUDITED and BENCH_UNAUDITED, or neither" >&2
    exit 1
  fi
  if [ -n "${BENCH_AUDITED:-}" ]; then
    cp "$BENCH_UNAUDITED" "$work/agentdesk-without-audit"
    cp "$BENCH_AUDITED" "$work/agentdesk"
  else
    cargo build --release -p agentdesk --features agentdesk/bench-without-audit
    cp target/release/agentdesk "$work/agentdesk-without-audit"
    cargo build --release -p agentdesk
    cp target/release/agentdesk "$work/agentdesk"
  fi
  export AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
  export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
  # psql: no NOTICEs from a schema or database reset.
  export PGOPTIONS="-c client_min_messages=warning"
  write_seed_csv "$work/seed.csv"
  cp bench/post_client.lua "$work/post.lua"
  cp bench/patch_client.lua "$work/patch.lua"
}
