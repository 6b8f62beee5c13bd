// Differential harness for tests/viewer_differential.rs: JSON lines in, JSON lines out.
//   {"kvs": {...}}                       replace the KeyValueStore contents
//   {"uri": "/a@b", "query": "", "accept": null|"..."}  -> {"status":0|200|400|403, "uri"?, "message"?}
//   {"sign": {"path": "/a@200w", "key_id": "k", "secret": "..."}}  -> {"url": ...} | {"error": ...}
// At end of input: {"done": true, "calls": n, "median_ns": m, "code_bytes": b}.
'use strict';
const readline = require('node:readline');
const fs = require('node:fs');
const { load, event, run, SOURCE } = require('./sandbox.js');

async function main() {
  const store = {};
  const fn = load(store);
  const times = [];
  const out = [];
  const flush = () => {
    if (out.length) process.stdout.write(out.join('\n') + '\n');
    out.length = 0;
  };
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line) continue;
    const msg = JSON.parse(line);
    if (msg.kvs) {
      for (const k of Object.keys(store)) delete store[k];
      Object.assign(store, msg.kvs);
      out.push(JSON.stringify({ ok: true }));
    } else if (msg.sign) {
      // Signing with the function's own helpers: decode, parse, canonical, re-encode, HMAC.
      const c = fn.context;
      const key = c.decode(msg.sign.path);
      const at = key === null ? -1 : key.lastIndexOf('@');
      const r = at < 0 ? { e: 'not a variant' } : c.parse(key, key.slice(at + 1));
      if (r.e) out.push(JSON.stringify({ error: r.e }));
      else {
        const uri = '/' + c.enc(r.c);
        out.push(JSON.stringify({ url: `${uri}?k=${msg.sign.key_id}&s=${c.sig(msg.sign.secret, uri)}` }));
      }
    } else {
      const ev = event(msg.uri, msg.query || '', msg.accept === undefined ? null : msg.accept);
      const started = process.hrtime.bigint();
      const result = await run(fn.handler, ev);
      times.push(Number(process.hrtime.bigint() - started));
      out.push(JSON.stringify(result));
    }
    if (out.length >= 256) flush();
  }
  times.sort((a, b) => a - b);
  out.push(
    JSON.stringify({
      done: true,
      calls: times.length,
      median_ns: times.length ? times[times.length >> 1] : 0,
      code_bytes: fs.statSync(SOURCE).size,
    }),
  );
  flush();
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
