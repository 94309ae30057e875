#!/usr/bin/env node
// synchub interop scenarios driven by the official centrifuge-js SDK (npm `centrifuge`,
// pinned in package.json), in its JSON build (default) or its Protobuf build
// (`centrifuge/build/protobuf`).
//
// Run by hand against a server started with `cargo run`:
//
//   cargo run                       # first start prints the API key and HMAC secret (kept in ./data)
//   (cd tests/interop/js && npm ci)  # once
//   SYNCHUB_WS_URL=ws://127.0.0.1:8000/connection/websocket \
//   SYNCHUB_API_URL=http://127.0.0.1:8000 \
//   SYNCHUB_API_KEY=<api key> \
//   SYNCHUB_HMAC_SECRET=<hmac secret> \
//   SYNCHUB_FORMAT=json \
//   node tests/interop/js/run.mjs [scenario]      # SYNCHUB_FORMAT=protobuf for the Protobuf build
//
// Without an argument every scenario runs; with one, only that scenario (names are printed with
// --list). Each scenario prints `PASS <name>` or `FAIL <name>: <reason>` followed, on failure, by
// a timestamped log of everything the SDK reported (client and subscription events, proxy
// actions, API calls). The last line is `N passed, N failed`; the exit code is 0 only if none
// failed (2 for a usage error).
//
// Optional environment:
//   SYNCHUB_INTEROP_DEBUG=1     SDK debug logging (every frame the SDK sends and receives) and the
//                               scenario log printed for passing scenarios too
//   SYNCHUB_INTEROP_WAIT_MS     how long any single wait may take (default 8000)
//   SYNCHUB_TENANT              adds a `tenant` claim to every token (must be the API key's tenant)
//   SYNCHUB_TOKEN_HMAC_SECRET   used when SYNCHUB_HMAC_SECRET is not set (the server's own variable)
//
// Tokens are HS256 JWTs minted here with node:crypto (claims sub, exp, optional tenant and info);
// the HMAC key is the UTF-8 bytes of SYNCHUB_HMAC_SECRET exactly as given.
// Channels are fresh random names without a namespace (`interop_<hex>`), which per DESIGN.md have
// presence, join/leave, history (100 / 10 min), recovery and client publish for subscribers.
// The recovery scenarios put a TCP proxy (node:net) between the SDK and the server and cut it to
// drop the client's transport without a clean unsubscribe.
//
// Node 20 has no global WebSocket, so the SDK is given the `ws` package's constructor.

import crypto from 'node:crypto';
import net from 'node:net';

const FORMAT = (process.env.SYNCHUB_FORMAT || 'json').toLowerCase();
const PROTOBUF = FORMAT === 'protobuf';
const DEBUG = ['1', 'true', 'yes'].includes((process.env.SYNCHUB_INTEROP_DEBUG || '').toLowerCase());
const WAIT_MS = Number(process.env.SYNCHUB_INTEROP_WAIT_MS || 8000);
const SCENARIO_MS = 45000;
const WS_URL = process.env.SYNCHUB_WS_URL || '';
const API_URL = (process.env.SYNCHUB_API_URL || '').replace(/\/+$/, '');
const API_KEY = process.env.SYNCHUB_API_KEY || '';
const HMAC_SECRET = process.env.SYNCHUB_HMAC_SECRET || process.env.SYNCHUB_TOKEN_HMAC_SECRET || '';
const TENANT = process.env.SYNCHUB_TENANT || '';

let WebSocket;
let Centrifuge;
try {
  WebSocket = (await import('ws')).default;
  ({ Centrifuge } = await import(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge'));
} catch (e) {
  console.error(`cannot load the SDK (${e.message}); run \`npm ci\` in tests/interop/js first`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// small helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const rand = (n = 6) => crypto.randomBytes(n).toString('hex');
const newChannel = () => `interop_${rand(8)}`;
const newUser = (prefix) => `${prefix}_${rand(4)}`;
const nowSec = () => Math.floor(Date.now() / 1000);

function b64url(input) {
  return Buffer.from(input).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

// HS256 JWT. ttl: seconds from now (default 1 h); exp overrides it; secret overrides the configured one.
function mintToken({ sub, ttl = 3600, exp, info, secret = HMAC_SECRET, extra = {} }) {
  const claims = { sub, exp: exp !== undefined ? exp : nowSec() + ttl, ...extra };
  if (TENANT) claims.tenant = TENANT;
  if (info !== undefined) claims.info = info;
  const signingInput = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  const signature = crypto.createHmac('sha256', secret).update(signingInput).digest();
  return `${signingInput}.${b64url(signature)}`;
}

// Payloads: the JSON build takes and gives JSON values; the Protobuf build takes and gives bytes
// (we put JSON text in them, which is what the HTTP API's `data` becomes on the wire).
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();
function enc(value) {
  return PROTOBUF ? textEncoder.encode(JSON.stringify(value)) : value;
}
function dec(value) {
  if (value instanceof Uint8Array) {
    if (value.length === 0) return undefined; // protobufjs default for an absent bytes field
    const text = textDecoder.decode(value);
    try {
      return JSON.parse(text);
    } catch (e) {
      return `<non-JSON bytes: ${JSON.stringify(text)}>`;
    }
  }
  return value;
}

// Offsets come as numbers (JSON) or are converted by the SDK; be defensive about Long objects.
function num(v) {
  if (v === undefined || v === null) return v;
  if (typeof v === 'object' && 'low' in v && 'high' in v) return v.high * 4294967296 + (v.low >>> 0);
  return Number(v);
}

function show(value) {
  try {
    return JSON.stringify(value, (k, v) => {
      if (v instanceof Uint8Array) return `bytes(${JSON.stringify(dec(v))})`;
      if (typeof v === 'bigint') return v.toString();
      if (v instanceof Error) return `${v.name}: ${v.message}`;
      return v;
    });
  } catch (e) {
    return String(value);
  }
}

function stable(value) {
  if (Array.isArray(value)) return value.map(stable);
  if (value && typeof value === 'object') {
    const out = {};
    for (const k of Object.keys(value).sort()) if (value[k] !== undefined) out[k] = stable(value[k]);
    return out;
  }
  return value;
}

function errText(e) {
  if (e === undefined || e === null) return String(e);
  if (e instanceof Error) return e.message;
  if (typeof e === 'object' && 'code' in e) return `code ${e.code}: ${e.message}${e.temporary ? ' (temporary)' : ''}`;
  return show(e);
}

class AssertionFailed extends Error {}

function assert(cond, message) {
  if (!cond) throw new AssertionFailed(message);
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(stable(actual));
  const b = JSON.stringify(stable(expected));
  if (a !== b) throw new AssertionFailed(`${what}: expected ${b}, got ${a}`);
}

// Polls fn until it returns something truthy. failFast may return a reason to stop early.
async function until(desc, fn, timeoutMs = WAIT_MS, failFast = null) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = fn();
    if (value) return value;
    if (failFast) {
      const reason = failFast();
      if (reason) throw new AssertionFailed(`${reason} (while waiting for ${desc})`);
    }
    if (Date.now() > deadline) throw new AssertionFailed(`timed out after ${timeoutMs} ms waiting for ${desc}`);
    await sleep(15);
  }
}

async function withTimeout(promise, desc, timeoutMs = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new AssertionFailed(`timed out after ${timeoutMs} ms waiting for ${desc}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// server HTTP API

async function api(t, method, body) {
  const url = `${API_URL}/api/${method}`;
  let res;
  let text;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    text = await res.text();
  } catch (e) {
    throw new AssertionFailed(`POST ${url} failed: ${errText(e)}${e.cause ? ` (${errText(e.cause)})` : ''}`);
  }
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new AssertionFailed(`POST ${url} ${show(body)} -> HTTP ${res.status}, body is not JSON: ${JSON.stringify(text.slice(0, 300))}`);
  }
  if (res.status !== 200 || parsed.error || !parsed.result) {
    throw new AssertionFailed(`POST ${url} ${show(body)} -> HTTP ${res.status} ${text.slice(0, 300)}`);
  }
  return parsed.result;
}

async function apiPublish(t, channel, data, quiet = false) {
  const result = await api(t, 'publish', { channel, data });
  if (!quiet) t.log(`api: publish ${channel} ${show(data)} -> ${show(result)}`);
  return { offset: num(result.offset), epoch: result.epoch };
}

// ---------------------------------------------------------------------------------------------
// SDK wrappers that record every event

function clientInfo(info) {
  if (!info) return info;
  const out = { client: info.client, user: info.user };
  const connInfo = dec(info.connInfo !== undefined ? info.connInfo : info.conn_info);
  const chanInfo = dec(info.chanInfo !== undefined ? info.chanInfo : info.chan_info);
  if (connInfo !== undefined) out.connInfo = connInfo;
  if (chanInfo !== undefined) out.chanInfo = chanInfo;
  return out;
}

class Client {
  constructor(t, name, { user, info, token, getToken = null, url = WS_URL, options = {} }) {
    this.t = t;
    this.name = name;
    this.user = user;
    this.info = info;
    this.events = [];
    this.subs = [];
    this.centrifuge = new Centrifuge(url, {
      websocket: WebSocket,
      token: token !== undefined ? token : mintToken({ sub: user, info }),
      getToken,
      debug: DEBUG,
      name: 'synchub-interop',
      timeout: 5000,
      maxReconnectDelay: 2000,
      ...options,
    });
    for (const type of ['connecting', 'connected', 'disconnected', 'error']) {
      this.centrifuge.on(type, (ctx) => {
        this.events.push({ type, ctx });
        t.log(`${name}: ${type} ${show(ctx)}`);
      });
    }
    t.clients.push(this);
  }

  count(type) {
    return this.events.filter((e) => e.type === type).length;
  }

  last(type) {
    const found = this.events.filter((e) => e.type === type);
    return found.length ? found[found.length - 1].ctx : undefined;
  }

  get id() {
    const ctx = this.last('connected');
    return ctx ? ctx.client : undefined;
  }

  errorsSummary() {
    const errors = this.events.filter((e) => e.type === 'error').map((e) => `${e.ctx.type}: ${errText(e.ctx.error)}`);
    return errors.length ? `; error events: ${errors.join(' | ')}` : '';
  }

  // A reason if this client was disconnected (terminal), for failing waits early.
  disconnectedReason() {
    const d = this.last('disconnected');
    return d ? `${this.name} disconnected with code ${d.code} "${d.reason}"${this.errorsSummary()}` : null;
  }

  async connect() {
    const before = this.count('connected');
    this.centrifuge.connect();
    try {
      await until(`${this.name} 'connected' event`, () => this.count('connected') > before, WAIT_MS, () => this.disconnectedReason());
    } catch (e) {
      // The SDK only says 'transport closed'; a direct handshake tells why.
      const transportErrors = this.events.filter((ev) => ev.type === 'error' && ev.ctx.type === 'transport').length;
      if (e instanceof AssertionFailed && transportErrors > 0) {
        const probe = await probeWebSocket(this.centrifuge._endpoint || WS_URL);
        throw new AssertionFailed(`${e.message}; the SDK reported ${transportErrors} transport error(s); a direct WebSocket handshake says: ${probe.msg}`);
      }
      throw e;
    }
    return this.id;
  }

  async subscribe(channel, options = {}) {
    const sub = new Sub(this, channel, options);
    await sub.subscribe();
    return sub;
  }

  disconnect() {
    try {
      this.centrifuge.disconnect();
    } catch (e) {
      this.t.log(`${this.name}: disconnect() threw ${errText(e)}`);
    }
  }
}

class Sub {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.events = [];
    this.pubs = [];
    this.joins = [];
    this.leaves = [];
    const t = client.t;
    const tag = `${client.name}/${channel}`;
    this.sub = client.centrifuge.newSubscription(channel, options);
    for (const type of ['subscribing', 'subscribed', 'unsubscribed', 'error']) {
      this.sub.on(type, (ctx) => {
        this.events.push({ type, ctx });
        t.log(`${tag}: ${type} ${show(ctx)}`);
      });
    }
    this.sub.on('publication', (ctx) => {
      const pub = { data: dec(ctx.data), offset: num(ctx.offset), info: clientInfo(ctx.info) };
      this.pubs.push(pub);
      t.log(`${tag}: publication ${show(pub)}`);
    });
    this.sub.on('join', (ctx) => {
      const info = clientInfo(ctx.info);
      this.joins.push(info);
      t.log(`${tag}: join ${show(info)}`);
    });
    this.sub.on('leave', (ctx) => {
      const info = clientInfo(ctx.info);
      this.leaves.push(info);
      t.log(`${tag}: leave ${show(info)}`);
    });
    client.subs.push(this);
  }

  count(type) {
    return this.events.filter((e) => e.type === type).length;
  }

  subscribedCtx(n) {
    const found = this.events.filter((e) => e.type === 'subscribed');
    return found[n] ? found[n].ctx : undefined;
  }

  unsubscribedReason() {
    const u = this.events.find((e) => e.type === 'unsubscribed');
    if (u) return `subscription to ${this.channel} ended: unsubscribed code ${u.ctx.code} "${u.ctx.reason}"`;
    return this.client.disconnectedReason();
  }

  async subscribe() {
    this.sub.subscribe();
    await until(`${this.client.name} 'subscribed' event for ${this.channel}`, () => this.count('subscribed') > 0, WAIT_MS, () => this.unsubscribedReason());
  }

  async waitPubs(n, desc) {
    await until(`${desc || `${n} publication(s)`} on ${this.client.name}/${this.channel} (have ${this.pubs.length})`, () => this.pubs.length >= n, WAIT_MS, () => this.unsubscribedReason());
  }
}

// Opens a WebSocket like the SDK does (same subprotocol) and reports what happened.
function probeWebSocket(url) {
  return new Promise((resolve) => {
    let done = false;
    const finish = (msg, ok = false) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        ws.terminate();
      } catch (e) {
        // ignore
      }
      resolve({ ok, msg });
    };
    const timer = setTimeout(() => finish('no answer within 3 s'), 3000);
    const ws = PROTOBUF ? new WebSocket(url, 'centrifuge-protobuf') : new WebSocket(url);
    ws.on('open', () => finish(`handshake OK (subprotocol ${JSON.stringify(ws.protocol)}), so the problem is after the upgrade`, true));
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => finish(`HTTP ${res.statusCode} ${JSON.stringify(body.slice(0, 200))} instead of 101`));
      res.on('error', () => finish(`HTTP ${res.statusCode} instead of 101`));
    });
    ws.on('error', (e) => finish(`${e.code || ''} ${e.message}`.trim()));
  });
}

// Sends a JSON connect command on a plain WebSocket and reports how the server answered: the
// SDK does not surface close codes it treats as reconnectable, this does.
function rawConnect(token) {
  return new Promise((resolve) => {
    const frames = [];
    let done = false;
    const finish = (msg) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try {
        ws.terminate();
      } catch (e) {
        // ignore
      }
      resolve(frames.length ? `${msg}; frames received: ${frames.join(' | ')}` : msg);
    };
    const timer = setTimeout(() => finish('no close within 3 s'), 3000);
    const ws = new WebSocket(WS_URL);
    ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: { token, name: 'synchub-interop-probe' } })));
    ws.on('message', (data) => frames.push(String(data).slice(0, 200)));
    ws.on('close', (code, reason) => finish(`raw JSON connect: server closed with code ${code} and reason ${JSON.stringify(String(reason))}`));
    ws.on('error', (e) => finish(`raw JSON connect failed: ${e.message}`));
  });
}

// A TCP proxy between the SDK and the server. down() destroys every proxied connection and makes
// the proxy refuse (accept-and-destroy) new ones; up() lets connections through again.
async function startProxy(t) {
  const target = new URL(WS_URL);
  const upstreamHost = target.hostname.replace(/^\[|\]$/g, '');
  const upstreamPort = Number(target.port || (target.protocol === 'wss:' ? 443 : 80));
  const sockets = new Set();
  let open = true;
  let accepted = 0;
  const server = net.createServer((downstream) => {
    if (!open) {
      t.log('proxy: refused a connection (proxy is down)');
      downstream.destroy();
      return;
    }
    const n = ++accepted;
    t.log(`proxy: connection #${n} accepted`);
    const upstream = net.connect(upstreamPort, upstreamHost);
    sockets.add(downstream);
    sockets.add(upstream);
    const kill = () => {
      downstream.destroy();
      upstream.destroy();
      sockets.delete(downstream);
      sockets.delete(upstream);
    };
    downstream.on('error', kill);
    upstream.on('error', kill);
    downstream.on('close', kill);
    upstream.on('close', kill);
    downstream.pipe(upstream);
    upstream.pipe(downstream);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = server.address().port;
  const proxied = new URL(WS_URL);
  proxied.hostname = '127.0.0.1';
  proxied.port = String(port);
  const proxy = {
    url: proxied.toString(),
    down() {
      open = false;
      t.log(`proxy: down, destroying ${sockets.size} socket(s)`);
      for (const s of [...sockets]) s.destroy();
      sockets.clear();
    },
    up() {
      open = true;
      t.log('proxy: up');
    },
    close() {
      open = false;
      for (const s of [...sockets]) s.destroy();
      server.close();
    },
  };
  t.proxies.push(proxy);
  t.log(`proxy: listening on 127.0.0.1:${port} -> ${upstreamHost}:${upstreamPort}, SDK uses ${proxy.url}`);
  return proxy;
}

// ---------------------------------------------------------------------------------------------
// scenarios

const scenarios = [];
const scenario = (name, fn) => scenarios.push({ name, fn });

scenario('connect', async (t) => {
  const user = newUser('u_connect');
  const c = new Client(t, 'A', { user });
  const id = await c.connect();
  assert(typeof id === 'string' && id.length > 0, `'connected' event must carry a non-empty client id, got ${show(c.last('connected'))}`);
  assertEqual(c.centrifuge.state, 'connected', 'client state after connected');
  assertEqual(c.last('connected').transport, 'websocket', 'connected ctx transport');
});

scenario('publication', async (t) => {
  const channel = newChannel();
  const c = new Client(t, 'A', { user: newUser('u_pub') });
  await c.connect();
  const s = await c.subscribe(channel);
  const data = { text: 'hello from interop', n: 42, ok: true, none: null, nested: { list: [1, 'two', 3.5, false] }, unicode: 'žluťoučký kůň ✓ 😀', newline: 'a\nb' };
  const r = await apiPublish(t, channel, data);
  assert(r.offset > 0, `API publish result must carry an offset (history is on for channels without a namespace), got ${show(r)}`);
  await s.waitPubs(1, 'the API publication');
  assertEqual(s.pubs[0].data, data, 'publication data');
  assertEqual(s.pubs[0].offset, r.offset, 'publication offset (the one the API returned)');
  await sleep(300);
  assertEqual(s.pubs.length, 1, 'number of publications received');
});

scenario('presence', async (t) => {
  const channel = newChannel();
  const userA = newUser('u_alice');
  const userB = newUser('u_bob');
  const infoA = { name: 'Alice', role: 'editor' };
  const infoB = { name: 'Bob', device: 'node' };
  const a = new Client(t, 'A', { user: userA, info: infoA });
  const b = new Client(t, 'B', { user: userB, info: infoB });
  const idA = await a.connect();
  const sa = await a.subscribe(channel, { joinLeave: true });
  const idB = await b.connect();
  const sb = await b.subscribe(channel);

  const join = await until(`A's 'join' event for B (${idB}); joins so far ${show(sa.joins)}`, () => sa.joins.find((j) => j.client === idB), WAIT_MS, () => sa.unsubscribedReason());
  assertEqual(join, { client: idB, user: userB, connInfo: infoB }, "A's join event for B");

  const presence = await withTimeout(sa.sub.presence(), 'presence() reply');
  const clients = presence.clients || {};
  assertEqual(Object.keys(clients).sort(), [idA, idB].sort(), 'presence() client ids');
  assertEqual(clientInfo(clients[idA]), { client: idA, user: userA, connInfo: infoA }, 'presence entry of A');
  assertEqual(clientInfo(clients[idB]), { client: idB, user: userB, connInfo: infoB }, 'presence entry of B');

  const stats = await withTimeout(sa.sub.presenceStats(), 'presenceStats() reply');
  assertEqual({ numClients: stats.numClients, numUsers: stats.numUsers }, { numClients: 2, numUsers: 2 }, 'presenceStats()');

  sb.sub.unsubscribe();
  const leave = await until(`A's 'leave' event for B (${idB}); leaves so far ${show(sa.leaves)}`, () => sa.leaves.find((l) => l.client === idB), WAIT_MS, () => sa.unsubscribedReason());
  assertEqual(leave, { client: idB, user: userB, connInfo: infoB }, "A's leave event for B");
  assertEqual(sa.joins.filter((j) => j.client === idB).length, 1, 'number of join events A got for B');

  let last;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    last = Object.keys((await withTimeout(sa.sub.presence(), 'presence() reply')).clients || {}).sort();
    if (JSON.stringify(last) === JSON.stringify([idA])) break;
    if (Date.now() > deadline) throw new AssertionFailed(`presence() after B unsubscribed: expected ${show([idA])}, got ${show(last)}`);
    await sleep(100);
  }
});

scenario('history', async (t) => {
  const channel = newChannel();
  const c = new Client(t, 'A', { user: newUser('u_hist') });
  await c.connect();
  const s = await c.subscribe(channel);
  const published = [];
  for (let i = 1; i <= 5; i++) published.push(await apiPublish(t, channel, { seq: i }));
  const offsets = published.map((p) => p.offset);
  const epoch = published[0].epoch;
  for (let i = 1; i < offsets.length; i++) {
    assert(offsets[i] === offsets[i - 1] + 1, `API publish offsets must be consecutive, got ${show(offsets)}`);
  }
  assert(published.every((p) => p.epoch === epoch), `API publish epochs must not change, got ${show(published)}`);
  await s.waitPubs(5, 'the 5 API publications live');

  const h = await withTimeout(s.sub.history({ limit: 10 }), 'history({limit: 10})');
  const rows = (x) => x.publications.map((p) => ({ data: dec(p.data), offset: num(p.offset) }));
  assertEqual(rows(h), [1, 2, 3, 4, 5].map((i) => ({ data: { seq: i }, offset: offsets[i - 1] })), 'history({limit: 10}) publications');
  assertEqual({ offset: num(h.offset), epoch: h.epoch }, { offset: offsets[4], epoch }, 'history({limit: 10}) stream position');

  const rev = await withTimeout(s.sub.history({ limit: 2, reverse: true }), 'history({limit: 2, reverse: true})');
  assertEqual(rows(rev), [5, 4].map((i) => ({ data: { seq: i }, offset: offsets[i - 1] })), 'history({limit: 2, reverse: true}) publications');

  const since = await withTimeout(s.sub.history({ limit: 10, since: { offset: offsets[1], epoch } }), 'history({since})');
  assertEqual(rows(since), [3, 4, 5].map((i) => ({ data: { seq: i }, offset: offsets[i - 1] })), `history({limit: 10, since: {offset: ${offsets[1]}}}) publications`);

  const top = await withTimeout(s.sub.history({}), 'history({}) (no limit)');
  assertEqual({ n: top.publications.length, offset: num(top.offset), epoch: top.epoch }, { n: 0, offset: offsets[4], epoch }, 'history() without limit (stream position only)');
});

scenario('rpc', async (t) => {
  const user = newUser('u_rpc');
  const c = new Client(t, 'A', { user });
  const id = await c.connect();
  const r = await withTimeout(c.centrifuge.rpc('session.info', enc({})), "rpc('session.info')");
  const data = dec(r.data);
  t.log(`A: rpc session.info -> ${show(data)}`);
  assert(data && typeof data === 'object', `rpc('session.info') must return an object, got ${show(data)}`);
  assertEqual({ user: data.user, client: data.client }, { user, client: id }, "rpc('session.info') user and client");

  let error = null;
  try {
    const res = await withTimeout(c.centrifuge.rpc('no.such.method', enc({})), "rpc('no.such.method')");
    throw new AssertionFailed(`rpc('no.such.method') must fail with error 104, it returned ${show(res)}`);
  } catch (e) {
    if (e instanceof AssertionFailed) throw e;
    error = e;
  }
  t.log(`A: rpc no.such.method rejected with ${show(error)}`);
  assertEqual(error && error.code, 104, "error code of rpc('no.such.method')");
  assertEqual(c.centrifuge.state, 'connected', 'client state after an rpc error');
});

scenario('client_publish', async (t) => {
  const channel = newChannel();
  const userA = newUser('u_pubA');
  const infoA = { name: 'Publisher' };
  const a = new Client(t, 'A', { user: userA, info: infoA });
  const b = new Client(t, 'B', { user: newUser('u_pubB') });
  const idA = await a.connect();
  await b.connect();
  const sa = await a.subscribe(channel);
  const sb = await b.subscribe(channel);
  const data = { text: 'published by a client', n: 7 };
  await withTimeout(sa.sub.publish(enc(data)), 'sub.publish() reply');
  await sb.waitPubs(1, "A's publication");
  const pub = sb.pubs[0];
  assertEqual(pub.data, data, 'data B received');
  assert(pub.info, `publication from a client must carry info (ClientInfo of the publisher), got ${show(pub)}`);
  assertEqual(pub.info, { client: idA, user: userA, connInfo: infoA }, 'publication info B received');
  await sa.waitPubs(1, 'own publication');
  await sleep(200);
  assertEqual(sb.pubs.length, 1, 'number of publications B received');
});

scenario('refresh', async (t) => {
  const user = newUser('u_refresh');
  const channel = newChannel();
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    t.log(`A: getToken called (#${calls})`);
    return mintToken({ sub: user, ttl: 3 });
  };
  const c = new Client(t, 'A', { user, token: mintToken({ sub: user, ttl: 3 }), getToken });
  const started = Date.now();
  await c.connect();
  const s = await c.subscribe(channel);
  await until('getToken to be called (server must answer connect with expires: true and ttl ~3)', () => calls >= 1, WAIT_MS, () => c.disconnectedReason());
  // Past the expiry of the first token; by now a server that ignored the refresh would have
  // had a reason to drop us (Centrifuge closes with 3005 after ttl + a grace period).
  const target = started + 6500;
  while (Date.now() < target) {
    const reason = c.disconnectedReason();
    if (reason) throw new AssertionFailed(reason);
    await sleep(50);
  }
  // The refresh reply must carry expires/ttl too, so the SDK refreshes again before the new
  // token (exp now+3) runs out.
  await until(`a second getToken call (the refresh reply must carry expires: true and ttl); calls so far ${calls}`, () => calls >= 2, WAIT_MS, () => c.disconnectedReason());
  assertEqual({ connecting: c.count('connecting'), disconnected: c.count('disconnected') }, { connecting: 1, disconnected: 0 }, "'connecting'/'disconnected' events (only the initial connecting is expected)");
  assertEqual(c.count('connected'), 1, "number of 'connected' events (a reconnect happened otherwise)");
  assertEqual(c.centrifuge.state, 'connected', 'client state');
  const r = await apiPublish(t, channel, { after: 'refresh' });
  await s.waitPubs(1, 'a publication after the refresh');
  assertEqual(s.pubs[0], { data: { after: 'refresh' }, offset: r.offset, info: undefined }, 'publication after the refresh');
});

async function recoveryScenario(t, missed) {
  const proxy = await startProxy(t);
  const channel = newChannel();
  const c = new Client(t, 'A', { user: newUser('u_recover'), url: proxy.url });
  await c.connect();
  const s = await c.subscribe(channel);
  const first = s.subscribedCtx(0);
  assert(first.recoverable === true, `first 'subscribed' ctx must have recoverable: true (recovery is on for channels without a namespace), got ${show(first)}`);
  const r0 = await apiPublish(t, channel, { phase: 'before', seq: 0 });
  await s.waitPubs(1, 'the publication before the drop');

  const connectingBefore = c.count('connecting');
  proxy.down();
  await until("'connecting' event after the transport drop", () => c.count('connecting') > connectingBefore, WAIT_MS, () => c.disconnectedReason());
  assertEqual(s.sub.state, 'subscribing', 'subscription state while the transport is down');

  const published = [];
  for (let i = 1; i <= missed; i++) published.push(await apiPublish(t, channel, { phase: 'missed', seq: i }, true));
  t.log(`api: published ${missed} while the client was disconnected, offsets ${published[0].offset}..${published[missed - 1].offset}`);
  assert(published[0].offset === r0.offset + 1, `offsets must continue: before-drop offset ${r0.offset}, first missed ${published[0].offset}`);
  proxy.up();

  await until("the second 'subscribed' event (resubscribe after reconnect)", () => s.count('subscribed') >= 2, WAIT_MS + 4000, () => c.disconnectedReason());
  assertEqual(c.count('connected'), 2, "number of 'connected' events (initial + automatic reconnect)");
  return { proxy, channel, c, s, r0, published, ctx: s.subscribedCtx(1) };
}

scenario('recovery', async (t) => {
  const { channel, s, published, ctx } = await recoveryScenario(t, 50);
  assertEqual({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }, { wasRecovering: true, recovered: true }, "second 'subscribed' ctx");
  await s.waitPubs(51, 'the 50 missed publications');
  await sleep(500); // duplicates would arrive by now
  const got = s.pubs.slice(1).map((p) => ({ data: p.data, offset: p.offset }));
  const want = published.map((p, i) => ({ data: { phase: 'missed', seq: i + 1 }, offset: p.offset }));
  if (JSON.stringify(stable(got)) !== JSON.stringify(stable(want))) {
    const seqs = got.map((p) => (p.data && p.data.seq));
    throw new AssertionFailed(`recovered publications: expected exactly seq 1..50 with offsets ${want[0].offset}..${want[49].offset} in order, got ${got.length}: seqs ${show(seqs)} offsets ${show(got.map((p) => p.offset))}`);
  }
  const r = await apiPublish(t, channel, { phase: 'after' });
  await s.waitPubs(52, 'a live publication after recovery');
  assertEqual(s.pubs[51], { data: { phase: 'after' }, offset: r.offset, info: undefined }, 'live publication after recovery');
});

scenario('recovery_beyond_window', async (t) => {
  const { channel, s, published, ctx } = await recoveryScenario(t, 150);
  assertEqual({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered }, { wasRecovering: true, recovered: false }, "second 'subscribed' ctx (150 missed, history keeps 100)");
  await sleep(500);
  assertEqual(s.pubs.length, 1, 'publications delivered after an unsuccessful recovery (must be none of the missed ones)');
  const r = await apiPublish(t, channel, { phase: 'after' });
  assertEqual(r.offset, published[149].offset + 1, 'offset of the next API publication');
  await s.waitPubs(2, 'a live publication after the failed recovery');
  assertEqual(s.pubs[1], { data: { phase: 'after' }, offset: r.offset, info: undefined }, 'live publication after the failed recovery');
});

scenario('bad_token', async (t) => {
  const user = newUser('u_badsig');
  const token = mintToken({ sub: user, secret: `wrong-${HMAC_SECRET}-${rand(4)}` });
  const c = new Client(t, 'A', { user, token });
  c.centrifuge.connect();
  try {
    await until("'disconnected' event for a token signed with the wrong secret", () => c.count('disconnected') > 0 || c.count('connected') > 0);
  } catch (e) {
    const attempts = c.events.filter((ev) => ev.type === 'error').length;
    const raw = await rawConnect(token);
    throw new AssertionFailed(`${e.message}; the SDK kept reconnecting (${attempts} error events) — it stops only on a close code in 3500-3999/4500-4999 WITH a non-empty, non-JSON close reason, or on a non-temporary connect error reply; ${raw}`);
  }
  assertEqual(c.count('connected'), 0, "'connected' events with a badly signed token");
  const d = c.last('disconnected');
  assertEqual({ code: d.code }, { code: 3500 }, `'disconnected' ctx (reason "${d.reason}")`);
  const connecting = c.count('connecting');
  await sleep(1500);
  assertEqual(c.count('connecting') - connecting, 0, "'connecting' events after the 3500 disconnect (must not reconnect)");
  assertEqual(c.centrifuge.state, 'disconnected', 'client state');
});

scenario('expired_token', async (t) => {
  const user = newUser('u_expired');
  const c = new Client(t, 'A', { user, token: mintToken({ sub: user, exp: nowSec() - 120 }) });
  c.centrifuge.connect();
  await until("'disconnected' event for an expired token without getToken", () => c.count('disconnected') > 0 || c.count('connected') > 0);
  assertEqual(c.count('connected'), 0, "'connected' events with an expired token");
  const errors = c.events.filter((e) => e.type === 'error').map((e) => ({ type: e.ctx.type, code: e.ctx.error && e.ctx.error.code }));
  // centrifuge-js: connect reply error 109 -> 'error' {type: 'connect', error: {code: 109}}; the
  // SDK then wants a new token, has no getToken -> 'error' {type: 'configuration', code 12} and
  // 'disconnected' {code: 1, reason: 'unauthorized'}.
  assert(errors.some((e) => e.type === 'connect' && e.code === 109), `expected an 'error' event {type: 'connect', error.code: 109}, got ${show(errors)}`);
  const d = c.last('disconnected');
  assertEqual({ code: d.code, reason: d.reason }, { code: 1, reason: 'unauthorized' }, "'disconnected' ctx (SDK gives up: token expired and no getToken)");
  assertEqual(c.centrifuge.state, 'disconnected', 'client state');
});

// ---------------------------------------------------------------------------------------------
// runner

let current = null;
process.on('unhandledRejection', (e) => {
  if (current) current.log(`unhandled rejection: ${errText(e)}`);
  else console.error(`unhandled rejection: ${errText(e)}`);
});

async function runScenario({ name, fn }) {
  const started = Date.now();
  const lines = [];
  const t = {
    clients: [],
    proxies: [],
    log: (msg) => lines.push(`  [${String(Date.now() - started).padStart(5)} ms] ${msg}`),
  };
  current = t;
  let failure = null;
  try {
    await withTimeout(fn(t), `the whole scenario`, SCENARIO_MS);
  } catch (e) {
    failure = e instanceof AssertionFailed ? e.message : `${e && e.stack ? e.stack : errText(e)}`;
  } finally {
    for (const c of t.clients) c.disconnect();
    for (const p of t.proxies) p.close();
    current = null;
  }
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  if (failure) {
    console.log(`FAIL ${name}: ${failure}`);
    console.log(`  --- ${name} log (${FORMAT}, ${secs} s) ---`);
    for (const l of lines) console.log(l);
  } else {
    console.log(`PASS ${name}`);
    if (DEBUG) for (const l of lines) console.log(l);
  }
  return !failure;
}

async function main() {
  const arg = process.argv[2];
  if (arg === '--list') {
    for (const s of scenarios) console.log(s.name);
    return 0;
  }
  const missing = [
    ['SYNCHUB_WS_URL', WS_URL],
    ['SYNCHUB_API_URL', API_URL],
    ['SYNCHUB_API_KEY', API_KEY],
    ['SYNCHUB_HMAC_SECRET', HMAC_SECRET],
  ].filter(([, v]) => !v).map(([k]) => k);
  if (missing.length) {
    console.error(`missing environment: ${missing.join(', ')} (see the comment at the top of ${process.argv[1]})`);
    return 2;
  }
  if (!['json', 'protobuf'].includes(FORMAT)) {
    console.error(`SYNCHUB_FORMAT must be json or protobuf, got ${JSON.stringify(FORMAT)}`);
    return 2;
  }
  let selected = scenarios;
  if (arg) {
    selected = scenarios.filter((s) => s.name === arg);
    if (!selected.length) {
      console.error(`unknown scenario ${JSON.stringify(arg)}; known: ${scenarios.map((s) => s.name).join(', ')}`);
      return 2;
    }
  }
  let sdk = 'centrifuge-js';
  try {
    const fs = await import('node:fs');
    sdk += ` ${JSON.parse(fs.readFileSync(new URL('./node_modules/centrifuge/package.json', import.meta.url))).version}`;
  } catch (e) {
    // version unknown, e.g. node_modules elsewhere
  }
  console.log(`${sdk} interop: format ${FORMAT}, server ${WS_URL}, ${selected.length} scenario(s)`);
  let passed = 0;
  let failed = 0;
  // Preflight: with no WebSocket endpoint at all, fail every scenario at once instead of
  // letting each one time out.
  const probe = await probeWebSocket(WS_URL);
  if (!probe.ok) {
    for (const s of selected) console.log(`FAIL ${s.name}: preflight WebSocket handshake to ${WS_URL} failed: ${probe.msg}`);
    console.log(`0 passed, ${selected.length} failed`);
    return 1;
  }
  for (const s of selected) {
    if (await runScenario(s)) passed += 1;
    else failed += 1;
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

const code = await main();
process.exit(code);
