// edgethumb viewer-request (cloudfront-js-2.0): the rules of src/viewer.rs, kept equal by
// tests/viewer_differential.rs; docs/edge.md. KVS keys: guard, key:*, preset:*, allow:*.
// cf.kvs(): the one KeyValueStore associated with the function (deploy/template.yaml).
const crypto = require('crypto');
const cf = require('cloudfront');
// .auto: the first line of AUTO whose type Accept names wins.
const AUTO = [
  ['image/avif', 'avif'],
  ['image/webp', 'webp']
];
const LIM = { w: [1, 4096], h: [1, 4096], e: [0, 2], c: [0, 1], l: [0, 1], p: [1, 1000], q: [1, 100], r: [0, 1] };
// Non-ASCII chars Rust's Debug escapes: (gap, length-1) base-32 varints from U+80.
const T = '0X0C0oIZF81637010K0d06b60X61XI13XD10111118R36GAA10XEKG0Z57152113X0110USYPA1DXB872O3181216F0P410B4X0FXAXOXN010474036A1T0208121M0701242102521201C2033O4106321M0702020233N4016A1301B109030M07020524710221E23C617208121M07020521115212E2033IA106230422010222232C4102230321KL5308030N0G2124I302123A6A0B030N0A05221102M3023A03DB030X91102430302330A3Q120I2O09011782576A13BXG02A87DX4201050O010A028115018A14VO1R01010E0X4H14115XG8060DX4XD3151121P142G3D02160F0X801411hP041701041X9041X1041701041F0XP041Y34T2Q5YM161q00S2YP6ICJ228IDD03EXK116802A92A5A5B4A5YP651X2014Y69V34133206612XA15AXC3Q5B2XP122XO01810276CA5A5EYLXG94280T8C1X0325XO011301CXG724F2XU4XB1BA1C1640603114c0XVeM161X616180101010V1XL0F0E160J1309GO7XFG21R0D2X2XTaC3qQLBKXuK1hP224XD01411XO62EN8707070707070707X0YUX1Q0YPBcMPG0X95G0YM3Z54XB0YU0YM8XG0ypD2XN8gSJXF319X01YG167cTJH03040P153A5XO7Y49CND0X67PA1BU5XG0232120D0B370P0X95212A308011A1X00XJ0122151101NH18A6161687070XS3ZL02042A5gz4BN3XHee3hE1ZAX57B5410O050102020qAVGFALX30J04350a73aT1V261616132707C21C0Q0J020F1EX1ZR433XD2YO0D21XEXDa2T2XHFR3X48U4X69U0X53EX9aU1A5X43X43X87XKAC0F07020B0F07022XKBfN8M98N60XA09Y46110XC02211N0Y879XFJ024X12R4RX5XO3K1XFE4030T99696Y0VX55C8XM2T1R4Q64B7YFY9XMXJCXJ6XABA5X67O72cFV0XA2112F679X6X87MA9LI34X5SJN810XME73U0211BXH321204DP6A8X4418I7X303AXK8108320G0KAI0S223602XU701040F0B5XF03CA7208121M070205210104121221B7RA01110X60102E102210302X6XO72210L0103TXG0251020111147Ab5XF0254111RX3XJ720114AA5DIXB0102725A5KRR2102318NbOXF8111Z3YJB81118020O050254038AY581XA7404Q19X8523881522XEC119CY96AYM12101YNX2DA590X6D1069T2X0O16111YA7020X6K18A56020X53201016A5XC3AdLJ148F0X4722NYL1EXICyRZ5ZF05Ac4YoBZ3CXXGG6OZyR4o7crOUB32AXs5nP6V0A3YH0A5U619XG6F9A070L4JjFXQc5YR4P1PXBYB4XOADXV4D58dcMX8X0Z0ZJelS407020f3E1S311D47iCYe3ZB4D296A1111ZwVdT2jK5NEHYUZKXRdM9X71XS43L26U3XTKY221ZPKBKBYN8Pa6YL0Y7021112140C01070Y10418070S040501270gK1f41nIXM4XH80E07XZJV56e4XUaHXD971A32fVUHXC3A41kFS3AcLU1B31bVV0302071582cV704020F0c519XFY4613A32uGY4YBXTc140R0201110A040101513101010302011101010101020114070404010A0H43050HXJ2eDXC3Z4BF1F0F0X59bEXNTCXC3962D6aP+P2H2D2cQ5C31EC3XO7A5X87U1C32D9X6gO7E1D2B2XP013G1C3A6aJ0Z7XW4Xft0VaeU1bqE1dfHEpEYj1mUXl1awB4efAxoy5';
let R;

function lc(s) {
  return s.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
}

function ows(s) {
  return s.replace(/^[ \t]+|[ \t]+$/g, '');
}

function hidden(c) {
  if (!R) {
    R = [];
    let e = 127, v = 0, b = -1;
    for (let i = 0; i < T.length; i++) {
      const d = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/'.indexOf(T[i]);
      v = v * 32 + (d & 31);
      if (d > 31) continue;
      if (b < 0) b = e + 1 + v;
      else R.push(b, (e = b + v)), (b = -1);
      v = 0;
    }
  }
  for (let i = 0; i < R.length && R[i] <= c; i += 2) if (c <= R[i + 1]) return true;
  return false;
}

// Rust's {:?} of a str.
function dbg(s) {
  let o = '"';
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    const at = i;
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + d - 0xdc00;
        i++;
      }
    }
    const n = { 0: '\\0', 9: '\\t', 10: '\\n', 13: '\\r', 34: '\\"', 92: '\\\\' }[c];
    o += n || (c < 32 || c == 127 || (c > 127 && hidden(c)) ? '\\u{' + c.toString(16) + '}' : s.slice(at, i + 1));
  }
  return o + '"';
}

// As the edge handler decodes; null: not UTF-8.
function decode(uri) {
  try {
    return uri.replace(/^\//, '').replace(/(%[0-9A-Fa-f]{2})+/g, decodeURIComponent);
  } catch (e) {
    return null;
  }
}

// Unreserved, '/' and '@' stay; everything else %XX.
function enc(k) {
  return encodeURIComponent(k)
    .replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase())
    .replace(/%2F/g, '/')
    .replace(/%40/g, '@');
}

function toks(p, f) {
  const o = [];
  if (p.w) o.push(p.w + 'w');
  if (p.h) o.push(p.h + 'h');
  if (p.w && p.h && p.e) o.push(p.e + 'e');
  if (p.w && p.h && p.e == 1 && p.c) o.push('1c');
  if (p.l) o.push('1l');
  if (p.p != 100) o.push(p.p + 'p');
  if (p.q && f != 'png') o.push(p.q + 'q');
  if (p.r && (!f || f == 'jpg')) o.push('1r');
  return o.join('_');
}

function canon(p, f, auto) {
  const s = toks(p, f);
  return auto ? s + '.auto' : f ? s + '.' + f : s || '100p';
}

// { e: 400 message } or { o, p, f, a, c: canonical requested key }
function parse(key, spec) {
  const o = key.slice(0, key.lastIndexOf('@'));
  if (!o || o[o.length - 1] == '/') return { e: "missing original key before '@' in " + dbg(key) };
  const dot = spec.lastIndexOf('.');
  let t = spec, f = null, a = false;
  if (dot >= 0) {
    t = spec.slice(0, dot);
    const x = spec.slice(dot + 1), l = lc(x);
    if (l == 'auto') a = true;
    else if (l == 'jpg' || l == 'jpeg') f = 'jpg';
    else if (l == 'png' || l == 'webp' || l == 'avif') f = l;
    else return { e: 'unsupported output format ' + dbg(x) + ' (supported: jpg, jpeg, png, webp, avif, auto)' };
  }
  if (!t && !f && !a) return { e: "no parameters after '@'" };
  const p = { w: 0, h: 0, e: 0, c: 0, l: 0, p: 100, q: 0, r: 0 }, seen = {};
  const ts = t ? t.split('_') : [];
  for (let i = 0; i < ts.length; i++) {
    const k = ts[i], L = k[k.length - 1], d = k.slice(0, -1), q = k && dbg(k);
    if (!k) return { e: 'empty token in parameters ' + dbg(t) + " (doubled, leading or trailing '_')" };
    if (!/[A-Za-z]/.test(L)) return { e: 'token ' + q + ' is not <integer><letter>' };
    if (!d) return { e: 'token ' + q + ' has no number before its letter' };
    if (!/^[0-9]+$/.test(d)) return { e: 'token ' + q + ' is not <integer><letter>' };
    const m = 'whelcpqr'.indexOf(L) < 0 ? null : LIM[L];
    if (!m) return { e: 'unknown parameter letter in token ' + q + ' (known: w h e c l p q r)' };
    if (seen[L]) return { e: "parameter '" + L + "' given twice (token " + q + ')' };
    seen[L] = 1;
    const v = +d;
    if (!(v >= m[0] && v <= m[1])) return { e: 'token ' + q + ' out of range: ' + L + ' must be ' + m[0] + '..=' + m[1] };
    p[L] = v;
  }
  return { o: o, p: p, f: f, a: a, c: o + '@' + canon(p, f, a) };
}

function accepts(h, m) {
  const rs = h.split(',');
  for (let i = 0; i < rs.length; i++) {
    const ps = rs[i].split(';');
    let zero = false;
    if (lc(ows(ps[0])) != m) continue;
    for (let j = 1; j < ps.length; j++) {
      const eq = ps[j].indexOf('=');
      if (eq >= 0 && lc(ows(ps[j].slice(0, eq))) == 'q' && /^0(\.0{0,3})?$/.test(ows(ps[j].slice(eq + 1)))) zero = true;
    }
    if (!zero) return true;
  }
  return false;
}

function negotiate(o, h) {
  for (let i = 0; i < AUTO.length; i++) if (accepts(h, AUTO[i][0])) return AUTO[i][1];
  const n = o.slice(o.lastIndexOf('/') + 1), dot = n.lastIndexOf('.');
  const x = dot < 0 ? '' : lc(n.slice(dot + 1));
  return x == 'png' || x == 'gif' || x == 'webp' ? 'png' : 'jpg';
}

function sig(secret, msg) {
  const b = crypto.createHmac('sha256', secret).update(msg).digest('base64');
  return b.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function same(a, b) {
  let x = a.length ^ b.length;
  for (let i = 0; i < a.length && i < b.length; i++) x |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return x == 0;
}

function reject(st, msg) {
  return {
    statusCode: st,
    statusDescription: st == 400 ? 'Bad Request' : 'Forbidden',
    headers: { 'content-type': { value: 'text/plain; charset=utf-8' }, 'cache-control': { value: 'no-store' } },
    body: { encoding: 'text', data: msg }
  };
}

async function get(kvs, k) {
  try {
    return await kvs.get(k);
  } catch (e) {
    return null;
  }
}

async function handler(event) {
  const req = event.request, uri = req.uri;
  if (uri.indexOf('@') < 0 && lc(uri).indexOf('%40') < 0) return req;
  const key = decode(uri);
  if (key == null) return reject(400, 'URI ' + dbg(uri) + ' is not valid UTF-8 once decoded');
  const at = key.lastIndexOf('@');
  if (at < 0) return req;
  const kvs = cf.kvs();
  let mode, spec = key.slice(at + 1), preset = false;
  try {
    mode = await kvs.get('guard');
  } catch (e) {
    try {
      mode = (await kvs.exists('guard')) ? '' : 'none';
    } catch (e2) {
      mode = '';
    }
  }
  if (mode == 'list' && /^[A-Za-z][A-Za-z0-9_-]{0,63}$/.test(spec)) {
    const v = await get(kvs, 'preset:' + spec);
    if (v != null) {
      spec = v;
      preset = true;
    }
  }
  const r = parse(key.slice(0, at + 1) + spec, spec);
  if (r.e) return reject(400, r.e);
  const h = req.headers.accept;
  const f = r.a ? negotiate(r.o, h ? h.value : '') : r.f;
  const c = canon(r.p, f, false);
  if (mode == 'signed') {
    const qs = req.querystring, k = qs.k, s = qs.s;
    if (!k || !s) return reject(403, 'missing signature (k= and s= query parameters)');
    const secret = await get(kvs, 'key:' + k.value);
    if (secret == null) return reject(403, 'unknown signing key id');
    if (!same(sig(secret, '/' + enc(r.c)), s.value)) return reject(403, 'bad signature');
  } else if (mode == 'list') {
    const rc = canon(r.p, r.f, r.a);
    if (!preset && (await get(kvs, 'allow:' + rc)) == null && (await get(kvs, 'allow:' + c)) == null)
      return reject(403, 'variant parameters ' + dbg(rc) + ' are not allowed');
  } else if (mode != 'none') return reject(403, 'viewer guard misconfigured');
  req.uri = '/' + enc(r.o + '@' + c);
  req.querystring = {};
  return req;
}
