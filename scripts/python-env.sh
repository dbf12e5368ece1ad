#!/usr/bin/env bash
# The project-local Python environment of the example clients and grpcurl: target/py-venv,
# made from examples/python/requirements.txt, again whenever that file changes. Quiet when it
# is in place; prints the environment's directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/py-venv"
requirements="$root/examples/python/requirements.txt"
stamp="$venv/.requirements"
# One maker at a time: tests ask for it concurrently.
mkdir -p "$root/target"
exec 9>"$root/target/.py-venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  command -v python3 >/dev/null || { echo "python-env: python3 is missing" >&2; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi
echo "$venv"
