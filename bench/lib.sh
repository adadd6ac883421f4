# Shared by the bench scripts (sourced, after they set $port): the server's settings, a scratch
# folder $work, and a trap that stops the server and removes $work on exit.
export AGENTDESK_BIND=127.0.0.1:$port AGENTDESK_LOG=warn AGENTDESK_LOG_FORMAT=json
export AGENTDESK_ADMIN_EMAIL=bench@example.com AGENTDESK_ADMIN_PASSWORD=bench-password-123
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null && wait $pid 2>/dev/null; rm -rf "$work"' EXIT

# start_fresh BINARY DATA_DIR PORT: serves BINARY on an empty DATA_DIR (log beside it), waits
# until it is ready and logs in as the admin; sets $pid and $token.
start_fresh() {
  local bin=$1 data=$2 port=$3
  rm -rf "$data" && mkdir -p "$data"
  AGENTDESK_DATA_DIR=$data "$bin" serve >"$data.log" 2>&1 &
  pid=$!
  until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.01; done
  token=$(curl -fs "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$AGENTDESK_ADMIN_EMAIL\",\"password\":\"$AGENTDESK_ADMIN_PASSWORD\"}" \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
}

# stop_server: stops the server start_fresh started.
stop_server() {
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pid=
}
