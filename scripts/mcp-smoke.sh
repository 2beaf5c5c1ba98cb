#!/usr/bin/env bash
# mcp-smoke.sh — one MCP session against a running erlmcp (or any MCP
# Streamable HTTP endpoint): initialize, initialized, tools/list,
# tools/call echo N times, DELETE. Prints which worker served each call.
#
# Usage: scripts/mcp-smoke.sh [URL] [CALLS]
#   URL    MCP endpoint (default $ERLMCP_MCP_URL or http://127.0.0.1:8080/mcp)
#   CALLS  number of echo calls (default 3)
# Exit codes: 0 all calls answered correctly; 1 a call failed; 2 bad usage.
set -euo pipefail

url="${1:-${ERLMCP_MCP_URL:-http://127.0.0.1:8080/mcp}}"
calls="${2:-3}"
if ! [[ "$calls" =~ ^[0-9]+$ ]]; then
  echo "mcp-smoke: CALLS must be a number, got '$calls'" >&2
  exit 2
fi
command -v curl >/dev/null || { echo "mcp-smoke: curl is required" >&2; exit 2; }

hdrs=$(mktemp)
trap 'rm -f "$hdrs"' EXIT

post() { # post BODY [SESSION] -> body on stdout, headers in $hdrs
  local args=(-sS --max-time 10 -D "$hdrs" -H 'Content-Type: application/json'
    -H 'Accept: application/json, text/event-stream' -d "$1")
  if [ -n "${2:-}" ]; then
    args+=(-H "Mcp-Session-Id: $2" -H 'MCP-Protocol-Version: 2025-11-25')
  fi
  curl "${args[@]}" "$url"
}

header() { grep -i "^$1:" "$hdrs" | head -n1 | cut -d' ' -f2- | tr -d '\r'; }
status() { head -n1 "$hdrs" | cut -d' ' -f2; }
fail() { echo "mcp-smoke: $*" >&2; exit 1; }

body=$(post '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"mcp-smoke","version":"1"}}}') \
  || fail "initialize: cannot reach $url (is the cluster running? try: make run)"
[ "$(status)" = 200 ] || fail "initialize: HTTP $(status): $body"
sid=$(header mcp-session-id)
[ -n "$sid" ] || fail "initialize: no Mcp-Session-Id header in the answer"
echo "session $sid (initialize served by $(header x-erlmcp-worker))"

post '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$sid" >/dev/null
[ "$(status)" = 202 ] || fail "notifications/initialized: HTTP $(status), want 202"

body=$(post '{"jsonrpc":"2.0","id":2,"method":"tools/list"}' "$sid")
[[ "$body" == *'"echo"'* ]] || fail "tools/list: no echo tool in: $body"

for i in $(seq 1 "$calls"); do
  body=$(post "{\"jsonrpc\":\"2.0\",\"id\":$((i + 2)),\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"smoke $i\"}}}" "$sid")
  if [ "$(status)" != 200 ] || [[ "$body" != *"smoke $i"* ]]; then
    fail "tools/call $i: HTTP $(status): $body"
  fi
  echo "call $i served by $(header x-erlmcp-worker)"
done

curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X DELETE -H "Mcp-Session-Id: $sid" "$url" | grep -qE '^(200|202|204)$' \
  || fail "DELETE: the session was not ended"
echo "ok: $calls calls answered, session ended"
