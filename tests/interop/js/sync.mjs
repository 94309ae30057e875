#!/usr/bin/env node
// A dashboard on `sync:sessions` with the official centrifuge-js SDK (JSON build, or the
// Protobuf build with SYNCHUB_FORMAT=protobuf): it subscribes, starts a full sync of
// SYNCHUB_SYNC_MODULE over the HTTP API, and follows the session's events until the final one.
// It checks that the session starts, that progress only rises, that it reaches 100%, and that
// at most ~10 progress events a second arrive; then prints one line `RESULT <json>` with the
// final session as the last event carried it, for the Rust test to check the counts.
//
// Environment: SYNCHUB_WS_URL, SYNCHUB_API_URL, SYNCHUB_API_KEY, SYNCHUB_HMAC_SECRET,
// SYNCHUB_FORMAT, SYNCHUB_SYNC_MODULE (default Deals), SYNCHUB_SYNC_TIMEOUT_MS (default 600000).
// Exit code 0 and `1 passed, 0 failed` when every check holds.

import crypto from 'node:crypto';

const FORMAT = (process.env.SYNCHUB_FORMAT || 'json').toLowerCase();
const WS_URL = process.env.SYNCHUB_WS_URL || '';
const API_URL = (process.env.SYNCHUB_API_URL || '').replace(/\/$/, '');
const API_KEY = process.env.SYNCHUB_API_KEY || '';
const HMAC_SECRET = process.env.SYNCHUB_HMAC_SECRET || '';
const MODULE = process.env.SYNCHUB_SYNC_MODULE || 'Deals';
const TIMEOUT_MS = Number(process.env.SYNCHUB_SYNC_TIMEOUT_MS || 600000);

let WebSocket;
let Centrifuge;
try {
  WebSocket = (await import('ws')).default;
  ({ Centrifuge } = await import(FORMAT === 'protobuf' ? 'centrifuge/build/protobuf' : 'centrifuge'));
} catch (e) {
  console.error(`cannot load the SDK (${e.message}); run \`npm ci\` in tests/interop/js first`);
  process.exit(2);
}

const b64url = (s) => Buffer.from(s).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

function mintToken(sub) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + 3600 };
  const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}`;
  const sig = crypto.createHmac('sha256', HMAC_SECRET).update(input).digest('base64')
    .replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  return `${input}.${sig}`;
}

function fail(reason) {
  console.log(`FAIL full sync on sync:sessions: ${reason}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const client = new Centrifuge(WS_URL, { token: mintToken('dashboard'), websocket: WebSocket });
const sub = client.newSubscription('sync:sessions');
let sessionId = null;
const events = [];
const early = [];
const done = new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no final event within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
  sub.on('publication', (ctx) => {
    const data = ctx.data;
    const s = data && data.session;
    if (!s) return;
    if (sessionId === null) {
      early.push({ data, at: Date.now() });
      return;
    }
    if (s.id !== sessionId) return;
    events.push({ data, at: Date.now() });
    if (data.type === 'session.completed' || data.type === 'session.failed') {
      clearTimeout(timer);
      resolve(data);
    }
  });
});

const subscribed = new Promise((resolve, reject) => {
  sub.on('subscribed', resolve);
  sub.on('error', (ctx) => reject(new Error(`subscribe error ${JSON.stringify(ctx.error)}`)));
});
sub.subscribe();
client.connect();
await subscribed;

const res = await fetch(`${API_URL}/v1/sync/sessions`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
  body: JSON.stringify({ kind: 'full', module: MODULE }),
});
if (res.status !== 202) fail(`starting the session answered ${res.status}: ${await res.text()}`);
sessionId = (await res.json()).session.id;
// Events that raced the HTTP answer.
for (const e of early) if (e.data.session.id === sessionId) events.push(e);
events.sort((a, b) => a.at - b.at);

let final;
try {
  final = await done;
} catch (e) {
  fail(e.message);
}
client.disconnect();

const types = events.map((e) => e.data.type);
if (types[0] !== 'session.started') fail(`the first event was ${types[0]}`);
if (final.type !== 'session.completed') fail(`the session ended ${final.type}: ${JSON.stringify(final.session)}`);
const progress = events.filter((e) => e.data.type === 'session.progress');
if (progress.length < 2) fail(`only ${progress.length} progress events`);
let last = -1;
for (const e of progress) {
  const p = e.data.session.percent;
  if (p < last) fail(`progress went back from ${last} to ${p}`);
  last = p;
}
if (last !== 100) fail(`progress stopped at ${last}%`);
// Throttle: at most 10 progress events per second (plus the final one); allow one of slack
// for a window that straddles two seconds of the server's clock.
for (let i = 0; i < progress.length; i++) {
  const inWindow = progress.filter((e) => e.at >= progress[i].at && e.at < progress[i].at + 1000).length;
  if (inWindow > 12) fail(`${inWindow} progress events within one second`);
}
const rising = new Set(progress.map((e) => e.data.session.percent)).size;
console.log(`PASS full sync on sync:sessions (${progress.length} progress events, ${rising} distinct percentages)`);
console.log(`RESULT ${JSON.stringify({ final: final.session, progress: progress.length, rising })}`);
console.log('1 passed, 0 failed');
process.exit(0);
