#!/usr/bin/env bash
# `make run`'s local admin client: `local-admin` (every program, every scope), its bearer
# token kept in TOKEN_FILE (mode 600; .flash/ is git-ignored). A token that still
# authenticates is kept; otherwise the client is created, or, when it exists (the token file
# lost, or its secret rotated elsewhere), given a new secret at once. Then prints a grpcurl
# line calling the server at LISTEN with it.
#
#   FLASH_DATABASE_URL=… FLASH_CONTACT_HASH_KEY=… scripts/local-admin.sh FLASH TOKEN_FILE LISTEN
set -euo pipefail
flash="$1"
token_file="$2"
listen="$3"
name=local-admin

valid=false
if [ -s "$token_file" ]; then
  # 0: it authenticates; 2: it does not; anything else (no database): stop here.
  if checked="$("$flash" clients check <"$token_file" 2>&1)"; then
    valid=true
  else
    status=$?
    if [ "$status" -ne 2 ]; then
      echo "$checked" >&2
      exit "$status"
    fi
  fi
fi

if ! $valid; then
  if "$flash" clients list | cut -f1 | grep -qx "$name"; then
    echo "local-admin: $name exists but $token_file holds no valid token of it: rotating its secret" >&2
    if ! issued="$("$flash" clients rotate "$name" --grace-seconds 0)"; then
      echo "local-admin: $name cannot be rotated (revoked?); names are never reused: create" \
        "another client with \`flash clients add\` and put its token in $token_file" >&2
      exit 1
    fi
  else
    issued="$("$flash" clients add "$name" --programs '*' --scopes '*')"
  fi
  (
    umask 077
    printf '%s\n' "$issued" | tail -n 1 >"$token_file.new"
    mv "$token_file.new" "$token_file"
  )
fi

token="$(cat "$token_file")"
cat <<MESSAGE

Calling as client $name (every program, every scope); its token is in $token_file:

  grpcurl -plaintext -H "authorization: Bearer $token" \\
    -d '{"program_id": "demo"}' $listen flash.loyalty.v1.Programs/GetProgram

For the README's examples: export FLASH_TOKEN="\$(cat $token_file)"
The referral graph page: http://${FLASH_HTTP_LISTEN:-127.0.0.1:8080}/graph/demo#token=$token

MESSAGE
