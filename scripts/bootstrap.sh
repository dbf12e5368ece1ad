#!/usr/bin/env bash
# Makes this machine ready to build, test and run Flash Loyalty:
#   - PostgreSQL on 127.0.0.1:5432, user postgres trusted over TCP (tests connect without a password),
#   - Redis on 127.0.0.1:6379,
#   - the application database named by FLASH_DATABASE_URL,
#   - the tools `make lint` and `make test` need: a C linker, rustfmt, clippy, Node.js and npm (for buf),
#   - pgbench, the baseline `make bench` measures the service against,
#   - Chromium, the headless browser tests/browser/*.mjs drive through puppeteer-core,
#   - Python 3 with venv, for the example clients and grpcurl (scripts/python-env.sh).
#
# Written for a Debian machine where we are root, without Docker or systemd: missing packages come
# from apt-get, servers are started directly (pg_ctlcluster, redis-server --daemonize).
# Idempotent, and silent when everything is already in place.
set -euo pipefail

readonly pg_host=127.0.0.1
readonly pg_port=5432
readonly redis_host=127.0.0.1
readonly redis_port=6379
readonly database_url=${FLASH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flash}
# How long a server we started may take to accept connections.
readonly wait_seconds_max=60

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# The URL without its password, for messages.
redact() { sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# Runs a command with its output kept aside; shows the output only when the command fails. Daemons
# it starts inherit the log file rather than our stdout, so a CI pipe reading us is never held open.
quietly() {
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 </dev/null || status=$?
  if [ "$status" -ne 0 ]; then cat "$log" >&2; fi
  rm -f "$log"
  return "$status"
}

# Polls until a check passes, for at most wait_seconds_max.
wait_until() {
  local what=$1 attempt
  shift
  for ((attempt = 0; attempt < wait_seconds_max * 5; attempt++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what is not ready after ${wait_seconds_max}s"
}

apt_updated=false
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "need root to install $*"
  command -v apt-get >/dev/null || die "no apt-get here: install $* by hand"
  say "installing $*"
  if ! "$apt_updated"; then
    quietly apt-get update || die "apt-get update failed"
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive quietly apt-get install -y --no-install-recommends "$@" ||
    die "apt-get install $* failed"
}

# --- PostgreSQL ------------------------------------------------------------------------------

pg_ready() { pg_isready -q -h "$pg_host" -p "$pg_port"; }

# Connects the way the tests do: user postgres over TCP, no password, never prompting.
pg_trusted() {
  psql -w -X -q -h "$pg_host" -p "$pg_port" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

# psql as the postgres OS user over the Unix socket (peer auth), for the one thing TCP cannot do yet.
pg_local_superuser() { (cd / && runuser -u postgres -- psql -X -q -p "$pg_port" -tA "$@"); }

pg_start() {
  if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null ||
    ! command -v pg_ctlcluster >/dev/null || ! command -v psql >/dev/null; then
    apt_install postgresql postgresql-client
    # The package may have started its cluster already.
    if pg_ready; then return 0; fi
  fi

  # The cluster that owns our port, else a new one for the newest installed server.
  local cluster version name
  cluster=$(pg_lsclusters -h | awk -v port="$pg_port" '$3 == port { print $1, $2; exit }')
  if [ -z "$cluster" ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    [ -n "$version" ] || die "no PostgreSQL server version under /usr/lib/postgresql"
    [ ! -e "/etc/postgresql/$version/main" ] ||
      die "PostgreSQL cluster $version/main exists but does not use port $pg_port (see pg_lsclusters)"
    say "creating PostgreSQL $version cluster main on port $pg_port"
    quietly pg_createcluster --port "$pg_port" "$version" main || die "pg_createcluster failed"
    cluster="$version main"
  fi
  read -r version name <<<"$cluster"

  say "starting PostgreSQL $version/$name"
  # Fails harmlessly when the cluster is already running; the wait below decides.
  quietly pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
  wait_until "PostgreSQL on $pg_host:$pg_port (cluster $version/$name)" pg_ready
}

pg_trust_local_tcp() {
  [ "$(id -u)" -eq 0 ] || die "user postgres cannot connect to $pg_host:$pg_port without a password, and only root can change pg_hba.conf"
  local hba
  hba=$(pg_local_superuser -c 'show hba_file') || die "cannot read hba_file as the postgres OS user"
  say "trusting user postgres over TCP from localhost in $hba"
  # The first matching line wins, so ours go on top; `cat >` keeps the file's owner and mode.
  local original
  original=$(cat "$hba")
  {
    echo '# Added by flash-loyalty scripts/bootstrap.sh: a development machine trusts localhost.'
    echo "host all postgres 127.0.0.1/32 trust"
    echo "host all postgres ::1/128 trust"
    printf '%s\n' "$original"
  } >"$hba"
  quietly pg_local_superuser -c 'select pg_reload_conf()' || die "PostgreSQL did not reload its configuration"
  wait_until "password-less login as postgres on $pg_host:$pg_port" pg_trusted
}

ensure_postgres() {
  if ! command -v pg_isready >/dev/null || ! pg_ready; then pg_start; fi
  if ! pg_trusted; then pg_trust_local_tcp; fi
}

# Creates the database FLASH_DATABASE_URL names, connecting to the `postgres` database beside it.
# pgbench ships with the server package on Debian 12 (postgresql-15) and with the client one
# (postgresql-client-N) elsewhere; /usr/bin/pgbench is a wrapper that fails without either.
ensure_pgbench() {
  if pgbench --version >/dev/null 2>&1; then return 0; fi
  apt_install postgresql-client postgresql
  pgbench --version >/dev/null 2>&1 || die "pgbench is still missing after installing PostgreSQL"
}

ensure_database() {
  local base=${database_url%%\?*}
  local query=${database_url:${#base}}
  [[ $base =~ ^postgres(ql)?://[^/]*/[A-Za-z_][A-Za-z0-9_-]*$ ]] ||
    die "FLASH_DATABASE_URL must look like postgres://user@host:port/name (name: letters, digits, _ or -): $(redact "$database_url")"
  local name=${base##*/}
  local admin_url="${base%/*}/postgres$query"
  local exists
  exists=$(psql -w -X -q "$admin_url" -tAc "select 1 from pg_database where datname = '$name'") ||
    die "cannot connect to $(redact "$admin_url")"
  [ -z "$exists" ] || return 0
  say "creating database $name"
  # A concurrent bootstrap may win the race; what matters is that the database exists afterwards.
  quietly psql -w -X -q "$admin_url" -c "create database \"$name\"" ||
    [ -n "$(psql -w -X -q "$admin_url" -tAc "select 1 from pg_database where datname = '$name'")" ] ||
    die "cannot create database $name"
}

# --- Redis -----------------------------------------------------------------------------------

redis_ready() { [ "$(redis-cli -h "$redis_host" -p "$redis_port" ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_ready; then return 0; fi
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    # The package may have started its own server already.
    if redis_ready; then return 0; fi
  fi
  say "starting Redis on $redis_host:$redis_port"
  # An in-memory scratch server: the daily caps it holds are rebuilt from PostgreSQL.
  (cd / && quietly redis-server --daemonize yes --bind "$redis_host" --port "$redis_port" \
    --save "" --appendonly no) || die "redis-server did not start"
  wait_until "Redis on $redis_host:$redis_port" redis_ready
}

# --- Build tools -----------------------------------------------------------------------------

ensure_tools() {
  command -v make >/dev/null || apt_install make
  command -v cc >/dev/null || apt_install gcc libc6-dev
  # Only what is missing: NodeSource's nodejs bundles npm and conflicts with Debian's npm package.
  local node_packages=()
  command -v node >/dev/null || node_packages+=(nodejs)
  command -v npm >/dev/null || node_packages+=(npm)
  if [ "${#node_packages[@]}" -gt 0 ]; then apt_install "${node_packages[@]}"; fi
  command -v cargo >/dev/null ||
    die "cargo not found: install Rust >= 1.85 with rustup (and put ~/.cargo/bin on PATH)"
  local missing=()
  cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
  cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v rustup >/dev/null || die "cargo ${missing[*]} missing and no rustup to add them"
    say "adding Rust components ${missing[*]}"
    quietly rustup component add "${missing[@]}" || die "rustup component add ${missing[*]} failed"
  fi
}

# --- Browser ---------------------------------------------------------------------------------

# puppeteer-core downloads no browser: tests/browser/graph.mjs runs $CHROMIUM or the first of these
# on PATH, and Debian's chromium is the one we install.
ensure_browser() {
  if [ -n "${CHROMIUM:-}" ] && command -v "$CHROMIUM" >/dev/null; then return 0; fi
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then return 0; fi
  done
  apt_install chromium
  command -v chromium >/dev/null || die "chromium is still missing after installing it"
}

# --- Python -----------------------------------------------------------------------------------

# The example clients and grpcurl live in a project-local virtualenv (scripts/python-env.sh).
ensure_python() {
  if command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1; then return 0; fi
  apt_install python3 python3-venv
}

ensure_tools
ensure_browser
ensure_python
ensure_postgres
ensure_pgbench
ensure_redis
ensure_database
