#!/usr/bin/env bash
# Writes random secrets for compose.yaml into ./secrets (next to this script); files that exist are
# kept, so running it again changes nothing. The folder is private (0700); the files in it are
# readable by all (0644) because compose bind-mounts each one into the containers, where agentdesk
# runs as user 10001.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 0700 secrets

random() { # N: N random letters and digits
  local s
  s=$(head -c 96 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')
  printf '%s' "${s:0:$1}"
}
write() { # NAME CONTENT
  if [ -e "secrets/$1" ]; then echo "secrets/$1 exists: kept"; return; fi
  printf '%s' "$2" >"secrets/$1"
  chmod 0644 "secrets/$1"
  echo "secrets/$1 written"
}

pg=$(random 32)
[ -e secrets/postgres_password ] && pg=$(cat secrets/postgres_password)
write postgres_password "$pg"
write database_url "postgres://agentdesk:$pg@postgres:5432/agentdesk"
write jwt_secret "$(random 64)"
write admin_password "$(random 20)"
write minio.env "MINIO_ROOT_USER=minio-root
MINIO_ROOT_PASSWORD=$(random 40)
"
write s3.env "AWS_ACCESS_KEY_ID=agentdesk
AWS_SECRET_ACCESS_KEY=$(random 40)
"
