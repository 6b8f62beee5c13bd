// Drives the packaged Lambda@Edge bundle under real node for scripts/chaos/chaos_edge.py:
//   node edge_driver.mjs BUNDLE_DIR/index.mjs EVENTS.jsonl RESULTS.jsonl CONCURRENCY DEADLINE_MS
// Each input line is an origin-response event; each output line is
// {"i", "uri", "ms", "response"} (or "error" if the handler threw). stdout carries the
// addon's JSON logs. Bounded: it stops after DEADLINE_MS whatever is left.
import { readFileSync, writeFileSync, appendFileSync } from 'node:fs';

const [indexPath, eventsPath, resultsPath, concurrencyArg, deadlineArg] = process.argv.slice(2);
const events = readFileSync(eventsPath, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
const concurrency = Math.max(1, Number(concurrencyArg) || 1);
const stopAt = Date.now() + (Number(deadlineArg) || 600000);
writeFileSync(resultsPath, '');
const { handler } = await import(indexPath);

let next = 0;
async function lane() {
  while (next < events.length && Date.now() < stopAt) {
    const i = next++;
    const event = events[i];
    const uri = event.Records[0].cf.request.uri;
    const started = performance.now();
    let line;
    try {
      const response = await handler(event);
      line = { i, uri, ms: performance.now() - started, response };
    } catch (e) {
      line = { i, uri, ms: performance.now() - started, error: String(e && e.stack || e) };
    }
    appendFileSync(resultsPath, JSON.stringify(line) + '\n');
  }
}
await Promise.all(Array.from({ length: concurrency }, lane));
