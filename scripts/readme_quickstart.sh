#!/usr/bin/env bash
# The README's quickstart, run exactly as written (issue 18): every ```sh block between the
# `<!-- quickstart:begin -->` and `<!-- quickstart:end -->` markers of README.md is extracted
# (not copied) and run, in order, in one bash with `set -euo pipefail`, from a temp directory,
# against a fresh server on its own free port and data directory (FLASHSALE_LISTEN and
# FLASHSALE_DATA_DIR, which the README's commands honour). The debug build of `flashsale` is put
# first on PATH, so the README's "installed binary" path is the one taken and nothing is rebuilt
# in release. Fails if any command fails or the output never says `confirmed`; the server the
# README started is always stopped.
#
# Usage: scripts/readme_quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

cargo build -q -p flashsale-server
WORK=$(mktemp -d)
SCRIPT=$WORK/quickstart.sh
OUT=$WORK/output.txt

# The blocks, in order; nothing else of the README.
awk '
  /<!-- quickstart:begin -->/ { inside = 1; next }
  /<!-- quickstart:end -->/   { inside = 0; next }
  inside && /^```sh$/         { block = 1; next }
  inside && block && /^```$/  { block = 0; next }
  inside && block             { print }
' README.md >"$WORK/blocks.sh"
if [ ! -s "$WORK/blocks.sh" ]; then
  echo "readme_quickstart: no quickstart block between the markers in README.md" >&2
  exit 1
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
  echo 'set -euo pipefail'
  # Whatever happens, stop the server the README started (its pid is SERVER_PID).
  echo 'trap '"'"'if [ -n "${SERVER_PID:-}" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi; true'"'"' EXIT'
  cat "$WORK/blocks.sh"
} >"$SCRIPT"

echo "== readme_quickstart: running $(grep -c . "$WORK/blocks.sh") lines from README.md on 127.0.0.1:$port"
status=0
(
  cd "$WORK"
  PATH="$ROOT/target/debug:$PATH" \
    FLASHSALE_LISTEN="127.0.0.1:$port" FLASHSALE_DATA_DIR="$WORK/data" \
    bash "$SCRIPT"
) 2>&1 | tee "$OUT" || status=$?

if [ $status -ne 0 ]; then
  echo "readme_quickstart: FAILED: a README command failed (exit $status)" >&2
elif ! grep -q '"code":"confirmed"' "$OUT"; then
  echo "readme_quickstart: FAILED: the output never says confirmed" >&2
  status=1
else
  echo "readme_quickstart: passed"
fi
# The server must be gone: nothing may still listen on the port.
if curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then
  echo "readme_quickstart: FAILED: the server is still running" >&2
  status=1
fi
rm -rf "$WORK"
exit $status
