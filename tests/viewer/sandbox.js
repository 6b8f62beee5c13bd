// Runs edge/js/viewer-request.js the way CloudFront Functions would: in a fresh V8 context
// whose only way out is a `require` that serves `crypto` (createHash/createHmac) and
// `cloudfront` (kvs() over a plain object); no other module, no timers, no network, no
// eval. Shared by the node tests and the differential harness.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const nodeCrypto = require('node:crypto');

const SOURCE = path.join(__dirname, '..', '..', 'edge', 'js', 'viewer-request.js');
/** CloudFront Functions quota: maximum function size, 10 KB. */
const MAX_CODE_BYTES = 10 * 1024;

function load(store = {}) {
  const source = fs.readFileSync(SOURCE, 'utf8');
  const kvsIds = [];
  const kvsCalls = [];
  const has = (k) => Object.prototype.hasOwnProperty.call(store, k);
  const handle = {
    // The documented KVS helper: get() rejects for a missing key.
    async get(key, options) {
      kvsCalls.push(key);
      if (!has(key)) throw new Error(`The key ${key} does not exist`);
      const value = store[key];
      return options && options.format === 'json' ? JSON.parse(value) : value;
    },
    async exists(key) {
      kvsCalls.push(key);
      return has(key);
    },
    async meta() {
      return { creationDateTime: '2026-12-05T00:00:00Z', lastUpdatedDateTime: '2026-12-05T00:00:00Z', keyCount: Object.keys(store).length };
    },
  };
  const modules = {
    crypto: Object.freeze({
      createHash: (algorithm) => nodeCrypto.createHash(algorithm),
      createHmac: (algorithm, key) => nodeCrypto.createHmac(algorithm, key),
    }),
    cloudfront: Object.freeze({
      // cf.kvs() with no argument is the store associated with the function (AWS's helper
      // docs); the test checks the function passes none, so no id is baked into the code.
      kvs(id) {
        kvsIds.push(id);
        return handle;
      },
    }),
  };
  const required = [];
  const context = vm.createContext(
    {
      require(name) {
        required.push(name);
        if (!Object.prototype.hasOwnProperty.call(modules, name)) {
          throw new Error(`require('${name}'): CloudFront Functions offer only crypto and cloudfront`);
        }
        return modules[name];
      },
      console: { log() {} },
    },
    { codeGeneration: { strings: false, wasm: false } },
  );
  new vm.Script(source, { filename: SOURCE }).runInContext(context);
  if (typeof context.handler !== 'function') throw new Error('viewer-request.js has no top-level handler');
  return { handler: context.handler, context, store, kvsIds, kvsCalls, required, source };
}

/** A viewer-request event as CloudFront builds it (header names lower-case). */
function event(uri, query = '', accept = null) {
  const querystring = {};
  for (const pair of query ? query.split('&') : []) {
    const eq = pair.indexOf('=');
    const name = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? '' : pair.slice(eq + 1);
    if (querystring[name]) {
      const q = querystring[name];
      q.multiValue = q.multiValue || [{ value: q.value }];
      q.multiValue.push({ value });
    } else {
      querystring[name] = { value };
    }
  }
  const headers = { host: { value: 'd111111abcdef8.cloudfront.net' } };
  if (accept !== null) headers.accept = { value: accept };
  return {
    version: '1.0',
    context: { eventType: 'viewer-request', distributionId: 'EDFDVBD6EXAMPLE', requestId: 'r' },
    viewer: { ip: '198.51.100.7' },
    request: { method: 'GET', uri, querystring, headers, cookies: {} },
  };
}

/**
 * Call the handler and say what it did, in the differential test's terms: status 0 = the
 * request passed untouched (same URI, same query string object), 200 = rewritten (uri,
 * and how many query parameters survived), else the generated response.
 */
async function run(handler, ev) {
  const { uri, querystring } = ev.request;
  const result = await handler(ev);
  if (result && result.statusCode) {
    return { status: result.statusCode, message: result.body && result.body.data };
  }
  if (result === ev.request && result.uri === uri && result.querystring === querystring) {
    return { status: 0 };
  }
  return { status: 200, uri: result.uri, query: Object.keys(result.querystring).length };
}

module.exports = { load, event, run, SOURCE, MAX_CODE_BYTES };
