// Multi-node scenarios for centrifuge-js, run by tests/it/cluster.rs against
// several synchub processes sharing one Redis.
//
//   node cluster.mjs recover-elsewhere
//     The client reaches node A through a TCP proxy; the proxy cuts the
//     transport and re-points to node B; 50 publications are made through
//     node C's API meanwhile; the client reconnects (to B) and must recover
//     exactly those 50, in order, with recovered: true.
//
//   node cluster.mjs collect
//     One client per URL subscribes to SYNCHUB_CHANNEL and records every
//     publication's `seq`. Prints READY once all are subscribed; on the
//     stdin line `report` it waits a moment and prints one JSON line
//     {"clients": [[seq, ...], ...], "recovered": [...]} and exits.
//
// Environment: SYNCHUB_WS_URLS (comma separated), SYNCHUB_API_URL,
// SYNCHUB_API_KEY, SYNCHUB_HMAC_SECRET, SYNCHUB_CHANNEL (collect).

import crypto from 'node:crypto';
import net from 'node:net';
import readline from 'node:readline';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

const URLS = (process.env.SYNCHUB_WS_URLS || '').split(',').filter(Boolean);
const API_URL = (process.env.SYNCHUB_API_URL || '').replace(/\/+$/, '');
const API_KEY = process.env.SYNCHUB_API_KEY || '';
const SECRET = process.env.SYNCHUB_HMAC_SECRET || '';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function token(sub) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = b64url(crypto.createHmac('sha256', SECRET).update(`${header}.${body}`).digest());
  return `${header}.${body}.${sig}`;
}

async function publish(channel, data) {
  const res = await fetch(`${API_URL}/api/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await res.json();
  if (!body.result) throw new Error(`publish failed: ${JSON.stringify(body)}`);
  return body.result;
}

async function until(what, fn, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (fn()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// A TCP proxy whose upstream can be changed and whose sockets can be cut.
function switchingProxy(initial) {
  let upstream = new URL(initial);
  let open = true;
  const sockets = new Set();
  const server = net.createServer((down) => {
    if (!open) return down.destroy();
    const up = net.connect(Number(upstream.port), upstream.hostname);
    sockets.add(down);
    sockets.add(up);
    down.pipe(up);
    up.pipe(down);
    const close = () => { down.destroy(); up.destroy(); sockets.delete(down); sockets.delete(up); };
    down.on('error', close); up.on('error', close); down.on('close', close); up.on('close', close);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `ws://127.0.0.1:${server.address().port}${upstream.pathname}`,
    cut() { open = false; for (const s of sockets) s.destroy(); sockets.clear(); },
    pointTo(url) { upstream = new URL(url); },
    reopen() { open = true; },
    close() { server.close(); },
  })));
}

async function recoverElsewhere() {
  const channel = `cluster_${crypto.randomBytes(6).toString('hex')}`;
  const proxy = await switchingProxy(URLS[0]);
  const client = new Centrifuge(proxy.url, { websocket: WebSocket, token: token('roamer'), minReconnectDelay: 200, maxReconnectDelay: 1000 });
  const got = [];
  const subscribed = [];
  let disconnectedOnce = false;
  client.on('connecting', () => { if (subscribed.length) disconnectedOnce = true; });
  const sub = client.newSubscription(channel);
  sub.on('subscribed', (ctx) => subscribed.push(ctx));
  sub.on('publication', (ctx) => got.push(ctx.data));
  sub.subscribe();
  client.connect();
  await until('first subscribe', () => subscribed.length === 1);
  await publish(channel, { seq: 0 });
  await until('first publication', () => got.length === 1);
  proxy.cut();
  await until('the client to notice the drop', () => disconnectedOnce);
  proxy.pointTo(URLS[1]);
  for (let i = 1; i <= 50; i++) await publish(channel, { seq: i });
  proxy.reopen();
  await until('resubscribe on the other node', () => subscribed.length === 2);
  await until('50 recovered publications', () => got.length >= 51);
  await sleep(500);
  const second = subscribed[1];
  if (!second.wasRecovering || !second.recovered) throw new Error(`not recovered: ${JSON.stringify(second)}`);
  const seqs = got.map((d) => d.seq);
  const expected = Array.from({ length: 51 }, (_, i) => i);
  if (JSON.stringify(seqs) !== JSON.stringify(expected)) throw new Error(`got ${JSON.stringify(seqs)}`);
  client.disconnect();
  proxy.close();
  console.log('PASS recover-elsewhere');
}

async function collect() {
  const channel = process.env.SYNCHUB_CHANNEL;
  const lists = URLS.map(() => []);
  const recovered = URLS.map(() => []);
  const clients = URLS.map((url, i) => {
    const client = new Centrifuge(url, { websocket: WebSocket, token: token(`collector${i}`), minReconnectDelay: 100, maxReconnectDelay: 1000 });
    const sub = client.newSubscription(channel);
    sub.on('subscribed', (ctx) => recovered[i].push({ wasRecovering: ctx.wasRecovering, recovered: ctx.recovered, position: ctx.streamPosition }));
    sub.on('unsubscribed', (ctx) => recovered[i].push({ unsubscribed: ctx }));
    sub.on('subscribing', (ctx) => recovered[i].push({ subscribing: ctx }));
    sub.on('publication', (ctx) => lists[i].push(ctx.data.seq));
    sub.subscribe();
    client.connect();
    return client;
  });
  await until('every client subscribed', () => recovered.every((r) => r.some((e) => 'recovered' in e)));
  console.log('READY');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === 'report') break;
  }
  await sleep(3000);
  for (const c of clients) c.disconnect();
  console.log(JSON.stringify({ clients: lists, recovered }));
  process.exit(0);
}

const mode = process.argv[2];
try {
  if (mode === 'recover-elsewhere') await recoverElsewhere();
  else if (mode === 'collect') await collect();
  else throw new Error(`unknown mode ${mode}`);
  process.exit(0);
} catch (e) {
  console.log(`FAIL ${mode}: ${e.message}`);
  process.exit(1);
}
