#!/usr/bin/env node
// Two editors with the official centrifuge-js SDK (JSON build, or the Protobuf build with
// SYNCHUB_FORMAT=protobuf) on one record: A takes the edit lock; B sees `lock.acquired` on
// `record:deals:<id>` and is denied with A as the holder; A's transport drops (a TCP proxy is
// cut); B sees `lock.released` once the server's grace period has passed and takes the lock;
// A comes back online; B saves; A receives `record.changed`.
//
// Same environment as run.mjs (SYNCHUB_WS_URL, SYNCHUB_API_URL, SYNCHUB_API_KEY,
// SYNCHUB_HMAC_SECRET, SYNCHUB_FORMAT), plus SYNCHUB_LOCK_GRACE_MS: the server's
// `records.lock_grace_period` in ms (default 30000), which bounds the waits. The tests in
// tests/it/records.rs start a server with a one-second grace period and run this file.
// Output: `PASS <name>` or `FAIL <name>: <reason>` with a timestamped log, then `N passed, N failed`.

import crypto from 'node:crypto';
import net from 'node:net';

const FORMAT = (process.env.SYNCHUB_FORMAT || 'json').toLowerCase();
const PROTOBUF = FORMAT === 'protobuf';
const WS_URL = process.env.SYNCHUB_WS_URL || '';
const HMAC_SECRET = process.env.SYNCHUB_HMAC_SECRET || process.env.SYNCHUB_TOKEN_HMAC_SECRET || '';
const GRACE_MS = Number(process.env.SYNCHUB_LOCK_GRACE_MS || 30000);
const WAIT_MS = Number(process.env.SYNCHUB_INTEROP_WAIT_MS || 8000);

let WebSocket;
let Centrifuge;
try {
  WebSocket = (await import('ws')).default;
  ({ Centrifuge } = await import(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge'));
} catch (e) {
  console.error(`cannot load the SDK (${e.message}); run \`npm ci\` in tests/interop/js first`);
  process.exit(2);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const rand = (n) => crypto.randomBytes(n).toString('hex');
const b64url = (s) => Buffer.from(s).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

function mintToken(sub) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + 3600 };
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(crypto.createHmac('sha256', HMAC_SECRET).update(input).digest())}`;
}

// The Protobuf build carries payloads as bytes (JSON text here); the JSON build as values.
const enc = (v) => (PROTOBUF ? new TextEncoder().encode(JSON.stringify(v)) : v);
const dec = (v) => (v instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(v)) : v);

class Failed extends Error {}

async function until(desc, fn, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Failed(`timed out after ${timeoutMs} ms waiting for ${desc}`);
    await sleep(15);
  }
}

function check(cond, message) {
  if (!cond) throw new Failed(message);
}

// A TCP proxy the test can cut, to drop a client's transport without a clean close.
async function startProxy(log) {
  const target = new URL(WS_URL);
  const sockets = new Set();
  let open = true;
  const server = net.createServer((down) => {
    if (!open) {
      down.destroy();
      return;
    }
    const up = net.connect(Number(target.port), target.hostname);
    sockets.add(down);
    sockets.add(up);
    const kill = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    for (const s of [down, up]) {
      s.on('error', kill);
      s.on('close', kill);
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(WS_URL);
  url.hostname = '127.0.0.1';
  url.port = String(server.address().port);
  return {
    url: url.toString(),
    down() {
      open = false;
      log(`proxy: down, cutting ${sockets.size} socket(s)`);
      for (const s of [...sockets]) s.destroy();
    },
    up() {
      open = true;
      log('proxy: up');
    },
    close() {
      open = false;
      for (const s of [...sockets]) s.destroy();
      server.close();
    },
  };
}

// One editor: a client, its subscription to the record channel, every event it saw.
class Editor {
  constructor(name, user, url, channel, log) {
    this.name = name;
    this.log = log;
    this.events = [];
    this.connected = 0;
    this.subscribed = 0;
    this.c = new Centrifuge(url, { websocket: WebSocket, token: mintToken(user), timeout: 5000, minReconnectDelay: 100, maxReconnectDelay: 500 });
    this.c.on('connected', (ctx) => {
      this.connected += 1;
      log(`${name}: connected ${ctx.client}`);
    });
    this.c.on('disconnected', (ctx) => log(`${name}: disconnected ${ctx.code} ${ctx.reason}`));
    this.c.on('connecting', (ctx) => log(`${name}: connecting ${ctx.code} ${ctx.reason}`));
    this.sub = this.c.newSubscription(channel);
    this.sub.on('subscribed', (ctx) => {
      this.subscribed += 1;
      log(`${name}: subscribed (recovered ${ctx.recovered})`);
    });
    this.sub.on('publication', (ctx) => {
      const data = dec(ctx.data);
      this.events.push(data);
      log(`${name}: publication ${JSON.stringify(data)}`);
    });
  }

  async start() {
    this.c.connect();
    this.sub.subscribe();
    await until(`${this.name} subscribed`, () => this.subscribed > 0);
  }

  async rpc(method, data) {
    const r = await this.c.rpc(method, enc(data));
    const out = dec(r.data);
    this.log(`${this.name}: rpc ${method} ${JSON.stringify(data)} -> ${JSON.stringify(out)}`);
    return out;
  }

  event(type, pred = () => true, timeoutMs = WAIT_MS) {
    return until(`${this.name} to see ${type}`, () => this.events.find((e) => e.type === type && pred(e)), timeoutMs);
  }
}

async function twoEditors(log, cleanup) {
  const id = `interop_${rand(6)}`;
  const channel = `record:deals:${id}`;
  const proxy = await startProxy(log);
  cleanup.push(() => proxy.close());
  const a = new Editor('A', 'ann', proxy.url, channel, log);
  const b = new Editor('B', 'bob', WS_URL, channel, log);
  cleanup.push(() => a.c.disconnect(), () => b.c.disconnect());
  await a.start();
  await b.start();

  const mine = await a.rpc('lock.acquire', { entity: 'deals', id });
  check(mine.acquired === true && mine.lock.holder === 'ann', `A must get the lock, got ${JSON.stringify(mine)}`);
  check(Number.isInteger(mine.lock.token), `A's lock must carry a numeric token, got ${JSON.stringify(mine.lock)}`);
  const seen = await b.event('lock.acquired');
  check(seen.lock.holder === 'ann' && seen.entity === 'deals' && seen.id === id, `B's lock.acquired: ${JSON.stringify(seen)}`);
  const denied = await b.rpc('lock.acquire', { entity: 'deals', id });
  check(denied.acquired === false && denied.lock.holder === 'ann', `B must be denied with A as holder, got ${JSON.stringify(denied)}`);

  const cut = Date.now();
  proxy.down();
  const released = await b.event('lock.released', () => true, GRACE_MS + WAIT_MS);
  const after = Date.now() - cut;
  log(`B saw lock.released ${after} ms after A's transport dropped`);
  check(released.lock.holder === 'ann' && released.reason === 'disconnected', `lock.released: ${JSON.stringify(released)}`);
  check(after >= GRACE_MS - 200, `released after ${after} ms, before the ${GRACE_MS} ms grace period`);

  const got = await b.rpc('lock.acquire', { entity: 'deals', id });
  check(got.acquired === true && got.lock.holder === 'bob', `B must get the lock now, got ${JSON.stringify(got)}`);

  const subscribedBefore = a.subscribed;
  proxy.up();
  await until('A back online and resubscribed', () => a.subscribed > subscribedBefore, WAIT_MS + 4000);

  const saved = await b.rpc('record.update', { entity: 'deals', id, base_version: 0, fields: { Stage: 'won' }, lock_token: got.lock.token });
  check(saved.record.version === 1, `B's save: ${JSON.stringify(saved)}`);
  const changed = await a.event('record.changed', (e) => e.version === 1);
  check(changed.by === 'bob' && changed.id === id && changed.source === 'local' && JSON.stringify(changed.fields) === '["Stage"]', `A's record.changed: ${JSON.stringify(changed)}`);
  check(typeof changed.at === 'string' && changed.at.endsWith('Z'), `record.changed.at must be RFC 3339 UTC: ${changed.at}`);
}

const scenarios = [['two_editors_lock_handover', twoEditors]];

async function main() {
  if (!WS_URL || !HMAC_SECRET) {
    console.error('missing environment: SYNCHUB_WS_URL and SYNCHUB_HMAC_SECRET are required');
    return 2;
  }
  console.log(`centrifuge-js locks interop: format ${FORMAT}, server ${WS_URL}, grace ${GRACE_MS} ms`);
  let passed = 0;
  let failed = 0;
  for (const [name, fn] of scenarios) {
    const started = Date.now();
    const lines = [];
    const log = (m) => lines.push(`  [${String(Date.now() - started).padStart(5)} ms] ${m}`);
    const cleanup = [];
    try {
      await fn(log, cleanup);
      console.log(`PASS ${name}`);
      passed += 1;
    } catch (e) {
      console.log(`FAIL ${name}: ${e instanceof Failed ? e.message : e && e.stack}`);
      for (const l of lines) console.log(l);
      failed += 1;
    } finally {
      for (const f of cleanup) {
        try {
          f();
        } catch (e) {
          // already closed
        }
      }
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

process.exit(await main());
