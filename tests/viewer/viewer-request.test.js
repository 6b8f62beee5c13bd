// The viewer-request CloudFront Function under node, in a sandbox that offers only what
// CloudFront Functions offer. Run: node --test tests/viewer/
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const nodeCrypto = require('node:crypto');
const { load, event, run, SOURCE, MAX_CODE_BYTES } = require('./sandbox.js');

const OLD = 'secret-2026a-0123456789';
const NEW = 'secret-2026b-9876543210';

// Accept headers real browsers send for <img> requests.
const BROWSERS = {
  chrome: 'image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8',
  firefox: 'image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5',
  safari16: 'image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5',
  safari17: 'image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5',
  oldEdge: 'image/png, image/svg+xml, image/*; q=0.8, */*; q=0.5',
  curl: '*/*',
};

function hmac(secret, path) {
  return nodeCrypto.createHmac('sha256', secret).update(path).digest('base64url');
}

async function call(store, uri, query = '', accept = null) {
  const fn = load(store);
  return run(fn.handler, event(uri, query, accept));
}

test('the code fits the 10 KB CloudFront Functions limit', () => {
  const bytes = fs.statSync(SOURCE).size;
  assert.ok(bytes <= MAX_CODE_BYTES, `viewer-request.js is ${bytes} bytes, limit ${MAX_CODE_BYTES}`);
});

test('the function needs only crypto and cloudfront, and reads the one associated KVS (cf.kvs() without an id)', async () => {
  const fn = load({});
  assert.deepEqual(fn.required.sort(), ['cloudfront', 'crypto']);
  assert.equal(typeof fn.context.process, 'undefined');
  assert.equal(typeof fn.context.setTimeout, 'undefined');
  assert.throws(() => fn.context.require('fs'), /only crypto and cloudfront/);
  await run(fn.handler, event('/cat.jpg@200w'));
  assert.deepEqual(fn.kvsIds, [undefined]);
});

test('every spelling of a variant becomes one canonical URI, query removed', async () => {
  const spellings = [
    '/photos/cat.jpg@80q_200w.webp',
    '/photos/cat.jpg@200w_80q.webp',
    '/photos/cat.jpg@200w_0e_80q.webp',
    '/photos/cat.jpg@200w_80q.WebP',
    '/photos/cat.jpg%40200w_80q.webp',
    '/photos/c%61t.jpg@0200w_80q_100p_0r.WEBP',
  ];
  for (const uri of spellings) {
    assert.deepEqual(await call({}, uri, 'utm=1&x'), { status: 200, uri: '/photos/cat.jpg@200w_80q.webp', query: 0 }, uri);
  }
  const cases = [
    ['/cat.jpg@200w.JPG', '/cat.jpg@200w.jpg'],
    ['/cat.jpg@200w.JPEG', '/cat.jpg@200w.jpg'],
    ['/cat.jpg@.Png', '/cat.jpg@.png'],
    ['/cat.jpg@200w_90q.png', '/cat.jpg@200w.png'],
    ['/cat.jpg@200w_200h_1c', '/cat.jpg@200w_200h'],
    ['/cat.jpg@100p', '/cat.jpg@100p'],
    ['/a b/%C3%A9t%C3%A9+x(1)!.png@200w', '/a%20b/%C3%A9t%C3%A9%2Bx%281%29%21.png@200w'],
    ['/users/me%40x.com/a%2Fb~c.jpg@200w', '/users/me@x.com/a/b~c.jpg@200w'],
    ['/100%.jpg@200w', '/100%25.jpg@200w'],
    ['/%E7%8C%AB.jpg@1e_200h_200w', '/%E7%8C%AB.jpg@200w_200h_1e'],
  ];
  for (const [uri, want] of cases) {
    assert.deepEqual(await call({}, uri), { status: 200, uri: want, query: 0 }, uri);
  }
});

test('invalid variants are answered 400 with the grammar message naming the token', async () => {
  const cases = [
    ['/cat.jpg@200x', 'unknown parameter letter in token "200x" (known: w h e c l p q r)'],
    ['/cat.jpg@5000w', 'token "5000w" out of range: w must be 1..=4096'],
    ['/cat.jpg@99999999999999999999w', 'token "99999999999999999999w" out of range: w must be 1..=4096'],
    ['/cat.jpg@200w_300w', `parameter 'w' given twice (token "300w")`],
    ['/cat.jpg@w', 'token "w" has no number before its letter'],
    ['/cat.jpg@-5w', 'token "-5w" is not <integer><letter>'],
    ['/cat.jpg@200W', 'unknown parameter letter in token "200W" (known: w h e c l p q r)'],
    ['/cat.jpg@200w__200h', `empty token in parameters "200w__200h" (doubled, leading or trailing '_')`],
    ['/cat.jpg@200w.gif', 'unsupported output format "gif" (supported: jpg, jpeg, png, webp, avif, auto)'],
    ['/cat.jpg@200w.', 'unsupported output format "" (supported: jpg, jpeg, png, webp, avif, auto)'],
    ['/cat.jpg@', "no parameters after '@'"],
    ['/@200w', `missing original key before '@' in "@200w"`],
    ['/dir/@200w', `missing original key before '@' in "dir/@200w"`],
    ['/bad%FF.jpg@200w', 'URI "/bad%FF.jpg@200w" is not valid UTF-8 once decoded'],
    ['/cat.jpg@2%C3%A90w', 'token "2é0w" is not <integer><letter>'],
    ['/cat.jpg@2%E2%80%8B0w', 'token "2\\u{200b}0w" is not <integer><letter>'],
    ['/cat.jpg@2%0A%22%5C0w', 'token "2\\n\\"\\\\0w" is not <integer><letter>'],
    ['/cat.jpg@2%CC%810w', 'token "2\\u{301}0w" is not <integer><letter>'],
  ];
  for (const [uri, message] of cases) {
    assert.deepEqual(await call({}, uri), { status: 400, message }, uri);
  }
});

test('.auto picks the best format each browser accepts, else the original\'s family', async () => {
  const want = {
    chrome: ['avif', 'avif', 'avif'],
    firefox: ['avif', 'avif', 'avif'],
    safari16: ['webp', 'webp', 'webp'],
    safari17: ['avif', 'avif', 'avif'],
    oldEdge: ['jpg', 'png', 'png'],
    curl: ['jpg', 'png', 'png'],
  };
  for (const [browser, accept] of Object.entries(BROWSERS)) {
    const [jpg, png, gif] = want[browser];
    assert.deepEqual(await call({}, '/cat.jpg@400w.auto', '', accept), { status: 200, uri: `/cat.jpg@400w.${jpg}`, query: 0 }, browser);
    assert.deepEqual(await call({}, '/logo.PNG@400w.AUTO', '', accept), { status: 200, uri: `/logo.PNG@400w.${png}`, query: 0 }, browser);
    assert.deepEqual(await call({}, '/anim.gif@400w.Auto', '', accept), { status: 200, uri: `/anim.gif@400w.${gif}`, query: 0 }, browser);
  }
  // AVIF alone; q=0 refuses; no header at all.
  assert.equal((await call({}, '/cat.jpg@400w.auto', '', 'image/avif')).uri, '/cat.jpg@400w.avif');
  assert.equal((await call({}, '/cat.jpg@400w.auto', '', 'image/webp;q=0, */*')).uri, '/cat.jpg@400w.jpg');
  assert.equal((await call({}, '/cat.jpg@400w.auto', '', 'image/webp ; Q = 0.000')).uri, '/cat.jpg@400w.jpg');
  assert.equal((await call({}, '/cat.jpg@400w.auto', '', 'IMAGE/WEBP;q=0.5')).uri, '/cat.jpg@400w.webp');
  assert.equal((await call({}, '/cat.webp@400w.auto')).uri, '/cat.webp@400w.png');
  assert.equal((await call({}, '/cat@400w.auto')).uri, '/cat@400w.jpg');
  // q and r are settled by the resolved format.
  assert.equal((await call({}, '/cat.jpg@1r_80q_400w.auto', '', BROWSERS.curl)).uri, '/cat.jpg@400w_80q_1r.jpg');
  assert.equal((await call({}, '/cat.jpg@1r_80q_400w.auto', '', BROWSERS.chrome)).uri, '/cat.jpg@400w_80q.avif');
  assert.equal((await call({}, '/cat.jpg@1r_80q_400w.auto', '', BROWSERS.safari16)).uri, '/cat.jpg@400w_80q.webp');
  assert.equal((await call({}, '/cat.png@1r_80q_400w.auto', '', BROWSERS.curl)).uri, '/cat.png@400w.png');
});

test('originals pass untouched in every guard mode', async () => {
  const stores = [{}, { guard: 'signed', 'key:a': OLD }, { guard: 'list', 'allow:200w': '1' }];
  for (const store of stores) {
    for (const uri of ['/photos/cat.jpg', '/bad%FF.jpg', '/', '/a%2540b.jpg']) {
      const fn = load(store);
      const ev = event(uri, 'v=2&s=x', BROWSERS.chrome);
      const before = JSON.stringify(ev.request);
      const result = await fn.handler(ev);
      assert.equal(result, ev.request, uri);
      assert.equal(JSON.stringify(result), before, uri);
      assert.deepEqual(fn.kvsCalls, [], 'no KeyValueStore read for an original');
    }
  }
});

test('signed URLs: good, bad, missing, and under a rotated key', async () => {
  const store = { guard: 'signed', 'key:2026a': OLD, 'key:2026b': NEW };
  const path = '/cat.jpg@200w.auto';
  const good = `k=2026a&s=${hmac(OLD, path)}`;
  const avif = { status: 200, uri: '/cat.jpg@200w.avif', query: 0 };
  assert.deepEqual(await call(store, path, good, BROWSERS.chrome), avif);
  // The signature is over the canonical requested path, so any spelling carries it.
  assert.deepEqual(await call(store, '/cat.jpg@0200w_0e.AUTO', good, BROWSERS.chrome), avif);
  assert.deepEqual(await call(store, '/cat.jpg@200w.auto', good, BROWSERS.curl), { status: 200, uri: '/cat.jpg@200w.jpg', query: 0 });
  const forbidden = (message) => ({ status: 403, message });
  assert.deepEqual(await call(store, '/cat.jpg@201w.auto', good), forbidden('bad signature'));
  assert.deepEqual(await call(store, path, `k=2026b&s=${hmac(OLD, path)}`), forbidden('bad signature'));
  assert.deepEqual(await call(store, path, `k=2026a&s=${hmac(OLD, path).slice(1)}`), forbidden('bad signature'));
  assert.deepEqual(await call(store, path, `k=2026a&s=${hmac(OLD, path)}=`), forbidden('bad signature'));
  assert.deepEqual(await call(store, path, `k=2025z&s=${hmac(OLD, path)}`), forbidden('unknown signing key id'));
  for (const q of ['', `s=${hmac(OLD, path)}`, 'k=2026a', 'ks=1']) {
    assert.deepEqual(await call(store, path, q), forbidden('missing signature (k= and s= query parameters)'), q);
  }
  // Rotation: both keys verify while both are stored; removing the old one retires its URLs.
  assert.deepEqual(await call(store, path, `k=2026b&s=${hmac(NEW, path)}`, BROWSERS.chrome), avif);
  const rotated = { guard: 'signed', 'key:2026b': NEW };
  assert.deepEqual(await call(rotated, path, good), forbidden('unknown signing key id'));
  assert.deepEqual(await call(rotated, path, `k=2026b&s=${hmac(NEW, path)}`, BROWSERS.chrome), avif);
  // A 400 is never hidden behind the guard.
  assert.equal((await call(store, '/cat.jpg@200x', good)).status, 400);
});

test('presets and the allow-list', async () => {
  const store = {
    guard: 'list',
    'preset:thumb': '200h_200w_1e.auto',
    'preset:hero': '1600w.jpg',
    'allow:400w.webp': '1',
    'allow:800w.auto': '1',
  };
  const ok = (uri) => ({ status: 200, uri, query: 0 });
  assert.deepEqual(await call(store, '/cat.jpg@thumb', '', BROWSERS.chrome), ok('/cat.jpg@200w_200h_1e.avif'));
  assert.deepEqual(await call(store, '/cat.jpg@thumb', '', BROWSERS.safari16), ok('/cat.jpg@200w_200h_1e.webp'));
  assert.deepEqual(await call(store, '/cat.png@thumb', '', BROWSERS.oldEdge), ok('/cat.png@200w_200h_1e.png'));
  assert.deepEqual(await call(store, '/cat.jpg@hero', 'x=1', BROWSERS.chrome), ok('/cat.jpg@1600w.jpg'));
  assert.deepEqual(await call(store, '/cat.jpg@0400w.WEBP'), ok('/cat.jpg@400w.webp'));
  assert.deepEqual(await call(store, '/cat.jpg@400w.auto', '', BROWSERS.safari16), ok('/cat.jpg@400w.webp'));
  assert.deepEqual(await call(store, '/cat.jpg@800w.auto', '', BROWSERS.curl), ok('/cat.jpg@800w.jpg'));
  for (const uri of ['/cat.jpg@401w.webp', '/cat.jpg@800w.jpg', '/cat.jpg@200w_200h_1e.webp']) {
    assert.equal((await call(store, uri)).status, 403, uri);
  }
  assert.deepEqual(await call(store, '/cat.jpg@400w.auto', '', BROWSERS.curl), {
    status: 403,
    message: 'variant parameters "400w.auto" are not allowed',
  });
  assert.equal((await call(store, '/cat.jpg@thumbs')).status, 400, 'an unknown preset is a malformed key');
  assert.equal((await call({}, '/cat.jpg@thumb')).status, 400, 'presets belong to the list guard');
});

test('a missing guard key means no guard; an unreadable or unknown one fails closed', async () => {
  assert.equal((await call({ 'key:a': OLD }, '/cat.jpg@200w')).status, 200);
  assert.equal((await call({ guard: 'none' }, '/cat.jpg@200w')).status, 200);
  assert.deepEqual(await call({ guard: 'sign' }, '/cat.jpg@200w'), { status: 403, message: 'viewer guard misconfigured' });
  const fn = load({ guard: 'signed' });
  const broken = event('/cat.jpg@200w');
  fn.context.require('cloudfront').kvs('x').get = async () => {
    throw new Error('KeyValueStore unavailable');
  };
  assert.deepEqual(await run(fn.handler, broken), { status: 403, message: 'viewer guard misconfigured' });
});
