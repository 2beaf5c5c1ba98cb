// session.mjs — one MCP session through the official TypeScript SDK client,
// driven by e2e/tssdk_test.go: it calls echo and counter back to back and
// prints one JSON line per call (which worker served it, ok or the error).
// When a line "killed" arrives on stdin it notes the time, makes --after more
// calls and exits. Exit code 0 unless the session could not be set up.
//
// usage: node session.mjs URL AFTER
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import readline from 'node:readline';

const [url, afterArg] = process.argv.slice(2);
const after = Number(afterArg ?? '10');
let lastWorker = '';
let killedAt = 0;
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'killed') killedAt = Date.now();
});

// Record which worker answered each POST (the front and the workers send
// X-Erlmcp-Worker).
const recordingFetch = async (input, init) => {
  const resp = await fetch(input, init);
  const w = resp.headers.get('x-erlmcp-worker');
  if (w && (init?.method ?? 'GET') === 'POST') lastWorker = w;
  return resp;
};

const client = new Client({ name: 'erlmcp-e2e-ts', version: '1.0.0' });
const transport = new StreamableHTTPClientTransport(new URL(url), { fetch: recordingFetch });
await client.connect(transport);
console.log(JSON.stringify({ event: 'connected', session: transport.sessionId, protocol: transport.protocolVersion }));

let i = 0;
let sinceKill = 0;
while (sinceKill < after) {
  const startedAt = Date.now();
  const afterKill = killedAt > 0 && startedAt >= killedAt;
  const op = i % 2 === 0 ? 'echo' : 'counter';
  const args = op === 'echo' ? { text: `ts ${i}` } : { by: 1 };
  const line = { event: 'call', i, op, startedAfterKill: afterKill };
  try {
    const res = await client.callTool({ name: op, arguments: args }, undefined, { timeout: 30000 });
    line.ok = !res.isError;
    line.text = res.content?.[0]?.text ?? '';
    if (op === 'counter') line.value = res.structuredContent?.value;
  } catch (e) {
    line.ok = false;
    line.error = String(e?.message ?? e);
  }
  line.worker = lastWorker;
  line.ms = Date.now() - startedAt;
  console.log(JSON.stringify(line));
  i++;
  if (afterKill) sinceKill++;
  // Pace the calls a little so the kill lands between and during calls.
  await new Promise((r) => setTimeout(r, 20));
}
await client.close();
console.log(JSON.stringify({ event: 'done', calls: i }));
process.exit(0);
