#!/usr/bin/env bash
# Soak: the reference load's reads and writes (S2 member get, S3 member search, S4 create, S5
# patch; ../shared/load) all at once, at half of the capacity measured for that mix on this
# machine, for SOAK_MINUTES, with the server's RSS sampled every 10 s. Passes when no request
# failed and RSS is flat: the mean of the last window within 10 % of the mean of the first
# window after warm-up (windows of 10 minutes in a 30-minute soak, a third of the time after
# warm-up in a shorter one).
# Usage: bash bench/soak.sh [database-url]   (SQLite by default; needs wrk and python3)
# Env: SOAK_MINUTES (30), AGENTDESK_BIN (a built binary; default: a release build),
# SEED_CLIENTS (5000), SOAK_CONNECTIONS (connections per scenario, 4).
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-}
minutes=${SOAK_MINUTES:-30}
conns=${SOAK_CONNECTIONS:-4}
port=${SOAK_PORT:-18583}
load=$(realpath ../shared/load)
if [ -z "${AGENTDESK_BIN:-}" ]; then cargo build --release -p agentdesk; fi
bin=$(realpath "${AGENTDESK_BIN:-target/release/agentdesk}")
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
# shellcheck source=bench/server.sh
. bench/server.sh
trap 'bench_server_stop; rm -rf "$work"' EXIT
export AGENTDESK_ADMIN_EMAIL=soak@example.com AGENTDESK_ADMIN_PASSWORD=soak-password-123
bench_server_start "$bin" "$port" "$work" "$db" agentdesk_soak
pid=$bench_pid
echo "soak: $bin ($(git rev-parse --short HEAD 2>/dev/null)), $(nproc) cores, database: $([ -n "$db" ] && echo postgresql || echo sqlite), $minutes min"

export BASE_URL=http://127.0.0.1:$port ADMIN_EMAIL=$AGENTDESK_ADMIN_EMAIL ADMIN_PASSWORD=$AGENTDESK_ADMIN_PASSWORD
export PATCH_CONTENT_TYPE=application/merge-patch+json LOAD_SCENARIOS=$load/harness/scenarios.lua
export SCOPE_IDS_FILE=$work/scope_ids.txt ALL_IDS_FILE=$work/all_ids.txt
python3 "$load/harness/setup.py" seed "$work" | sed 's/^/# /'
kinds="get search create patch"

# One wrk per scenario, all at once; each prints "RESULT requests duration_us p50 p99 status_errors socket_errors".
segment=0
mix() { # seconds, label; SOAK_DELAY_<kind> paces each
  python3 "$load/harness/setup.py" login "$work"   # access tokens live 15 minutes
  set -a; . "$work/env.sh"; set +a
  local k pids=()
  segment=$((segment + 1))
  for k in $kinds; do
    local delay_var="delay_$k"
    SCENARIO=$k SOAK_SEGMENT=$segment SOAK_DELAY_MS=${!delay_var:-0} wrk -t1 -c"$conns" -d"${1}s" --timeout 30s \
      -s bench/soak.lua "$BASE_URL" | awk -v k="$k" '/^(RESULT|STATUS) / { print k, $0 }' >>"$work/$2.txt" &
    pids+=($!)
  done
  wait "${pids[@]}"
}

# Capacity of the mix, unpaced: each scenario's req/s and mean latency under it.
mix 10 capacity
echo "capacity of the mix (req/s, unpaced, $conns connections each):"
for k in $kinds; do
  read -r _ _ reqs dur _ _ _ _ < <(grep "^$k RESULT " "$work/capacity.txt")
  rps=$(awk -v r="$reqs" -v d="$dur" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
  # Each connection sends one request per 2c/rps: at most half the rate, a little less by the
  # time each request takes (less than at full load).
  declare "delay_$k=$(awk -v c="$conns" -v r="$rps" 'BEGIN { d = 2 * c * 1000 / r; printf "%d", (d < 1 ? 1 : d) }')"
  delay_var="delay_$k"
  printf '  %-7s %9s req/s  -> paced with %s ms between requests per connection\n' "$k" "$rps" "${!delay_var}"
done

# The soak: segments of at most 5 minutes (fresh tokens each), RSS sampled every 10 s throughout.
: >"$work/rss.txt"
(
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    echo "$(( $(date +%s) - start )) $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")" >>"$work/rss.txt"
    sleep 10
  done
) &
sampler=$!
total=$((minutes * 60))
left=$total
while [ "$left" -gt 0 ]; do
  seg=$((left < 300 ? left : 300))
  mix "$seg" soak
  left=$((left - seg))
done
kill "$sampler" 2>/dev/null || true

echo "soak at half capacity (req/s, p99 ms, errors):"
errors=0
for k in $kinds; do
  # One pass per scenario: its line, the statuses of its failed requests, then its error count.
  summary=$(awk -v k="$k" '$1 == k && $2 == "RESULT" { r += $3; d += $4; if ($6 > p99) p99 = $6; e += $7 + $8 }
    $1 == k && $2 == "STATUS" { n[$3] += $4 }
    END { printf "  %-7s %9.1f req/s  p99 %s ms  errors %d\n", k, r / (d / 1e6), p99, e
      for (s in n) printf "    %s answered %d times\n", s, n[s]
      print e + 0 }' "$work/soak.txt")
  sed '$d' <<<"$summary"
  errors=$((errors + $(tail -n 1 <<<"$summary")))
done
chain=$(python3 "$load/harness/setup.py" verify "$work")
echo "# $chain"
case $chain in *"valid=True"*) ;; *) echo "the audit chain is not valid"; errors=$((errors + 1)) ;; esac
if grep -q '"level":"ERROR"' "$work/serve.log"; then
  echo "the server logged errors:"; grep '"level":"ERROR"' "$work/serve.log" | head -5
  errors=$((errors + 1))
fi

# RSS: warm-up is the first sixth (5 minutes of 30), then the first and last windows.
warm=$((total / 6))
window=$(( (total - warm) / 3 < 600 ? (total - warm) / 3 : 600 ))
verdict=$(awk -v warm="$warm" -v win="$window" -v total="$total" '
  { t = $1; kb = $2; if (kb == "") next
    if (t >= warm && t < warm + win) { a += kb; na++ }
    if (t >= total - win) { b += kb; nb++ }
    if (kb > peak) peak = kb }
  END {
    if (!na || !nb) { print "FAIL no RSS samples"; exit }
    first = a / na / 1024; last = b / nb / 1024; change = 100 * (last - first) / first
    printf "%s RSS first window %.1f MiB, last window %.1f MiB (%+.1f%%, limit 10%%), peak %.1f MiB\n",
      (change <= 10 && change >= -10) ? "PASS" : "FAIL", first, last, change, peak / 1024 }' "$work/rss.txt")
echo "$verdict (windows of ${window}s after ${warm}s of warm-up, $(wc -l <"$work/rss.txt") samples)"
if [ "$errors" -ne 0 ]; then echo "FAIL: $errors errors"; exit 1; fi
case $verdict in PASS*) echo "soak passed" ;; *) exit 1 ;; esac
