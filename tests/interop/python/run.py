#!/usr/bin/env python3
"""synchub interop scenarios driven by the official centrifuge-python SDK (PyPI
`centrifuge-python`, pinned in requirements.txt), over JSON or Protobuf (use_protobuf=True).

Run by hand against a server started with `cargo run`:

    cargo run                      # first start prints the API key and HMAC secret (kept in ./data)
    pip install -r tests/interop/python/requirements.txt    # once (a venv is a good idea)
    SYNCHUB_WS_URL=ws://127.0.0.1:8000/connection/websocket \\
    SYNCHUB_API_URL=http://127.0.0.1:8000 \\
    SYNCHUB_API_KEY=<api key> \\
    SYNCHUB_HMAC_SECRET=<hmac secret> \\
    SYNCHUB_FORMAT=json \\
    python3 tests/interop/python/run.py [scenario]    # SYNCHUB_FORMAT=protobuf: use_protobuf=True

Without an argument every scenario runs; with one, only that scenario (`--list` prints the
names). Each scenario prints `PASS <name>` or `FAIL <name>: <reason>` followed, on failure, by a
timestamped log of everything the SDK reported (client and subscription events, proxy actions,
API calls). The last line is `N passed, N failed`; the exit code is 0 only if none failed (2 for
a usage error).

Optional environment:
    SYNCHUB_INTEROP_DEBUG=1     SDK debug logging (the `centrifuge` logger shows every frame sent
                                and received) and the scenario log printed for passing scenarios too
    SYNCHUB_INTEROP_WAIT_MS     how long any single wait may take (default 8000)
    SYNCHUB_TENANT              adds a `tenant` claim to every token (must be the API key's tenant)
    SYNCHUB_TOKEN_HMAC_SECRET   used when SYNCHUB_HMAC_SECRET is not set (the server's own variable)

Tokens are HS256 JWTs minted here with hmac/hashlib (claims sub, exp, optional tenant and info);
the HMAC key is the UTF-8 bytes of SYNCHUB_HMAC_SECRET exactly as given.
Channels are fresh random names without a namespace (`interop_<hex>`), which per DESIGN.md have
presence, join/leave, history (100 / 10 min), recovery and client publish for subscribers. The
recovery scenarios put a TCP proxy (asyncio streams) between the SDK and the server and cut it to
drop the client's transport without a clean unsubscribe.
"""

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

try:
    from centrifuge import (
        Client,
        ClientEventHandler,
        ReplyError,
        StreamPosition,
        SubscriptionEventHandler,
    )
except ImportError as _e:
    print(f"cannot import the SDK ({_e}); run `pip install -r tests/interop/python/requirements.txt` first",
          file=sys.stderr)
    sys.exit(2)

FORMAT = os.environ.get("SYNCHUB_FORMAT", "json").lower()
PROTOBUF = FORMAT == "protobuf"
DEBUG = os.environ.get("SYNCHUB_INTEROP_DEBUG", "").lower() in ("1", "true", "yes")
WAIT = float(os.environ.get("SYNCHUB_INTEROP_WAIT_MS", "8000")) / 1000.0
SCENARIO_TIMEOUT = 45.0
WS_URL = os.environ.get("SYNCHUB_WS_URL", "")
API_URL = os.environ.get("SYNCHUB_API_URL", "").rstrip("/")
API_KEY = os.environ.get("SYNCHUB_API_KEY", "")
HMAC_SECRET = os.environ.get("SYNCHUB_HMAC_SECRET") or os.environ.get("SYNCHUB_TOKEN_HMAC_SECRET", "")
TENANT = os.environ.get("SYNCHUB_TENANT", "")


# ---------------------------------------------------------------------------------------------
# small helpers


class Fail(Exception):
    """An assertion or wait that failed; its message is the FAIL reason."""


def rand(n=6):
    return secrets.token_hex(n)


def new_channel():
    return f"interop_{rand(8)}"


def new_user(prefix):
    return f"{prefix}_{rand(4)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(sub, ttl=3600, exp=None, info=None, secret=None, extra=None):
    """HS256 JWT: ttl seconds from now (default 1 h); exp overrides it."""
    claims = {"sub": sub, "exp": exp if exp is not None else int(time.time()) + ttl}
    if TENANT:
        claims["tenant"] = TENANT
    if info is not None:
        claims["info"] = info
    claims.update(extra or {})
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    key = (HMAC_SECRET if secret is None else secret).encode()
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


# Payloads: over JSON the SDK takes and gives JSON values; over Protobuf it takes and gives bytes
# (we put JSON text in them, which is what the HTTP API's `data` becomes on the wire).
def enc(value):
    return json.dumps(value, separators=(",", ":")).encode() if PROTOBUF else value


def dec(value):
    if isinstance(value, (bytes, bytearray)):
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return f"<non-JSON bytes: {bytes(value)!r}>"
    return value


def show(value):
    def conv(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (bytes, bytearray)):
            return f"bytes({dec(v)!r})"
        if isinstance(v, BaseException):
            return f"{type(v).__name__}: {v}"
        if hasattr(v, "value") and hasattr(v, "name"):  # enums
            return v.value
        return v

    try:
        return json.dumps(conv(value), ensure_ascii=False, default=str)
    except Exception:
        return repr(value)


def canon(value):
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def check(cond, message):
    if not cond:
        raise Fail(message)


def check_equal(actual, expected, what):
    if canon(actual) != canon(expected):
        raise Fail(f"{what}: expected {canon(expected)}, got {canon(actual)}")


async def until(desc, fn, timeout=None, fail_fast=None):
    """Polls fn until it returns something truthy; fail_fast may return a reason to stop early."""
    timeout = WAIT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if fail_fast:
            reason = fail_fast()
            if reason:
                raise Fail(f"{reason} (while waiting for {desc})")
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {timeout:.1f} s waiting for {desc}")
        await asyncio.sleep(0.015)


async def within(awaitable, desc, timeout=None):
    timeout = WAIT if timeout is None else timeout
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise Fail(f"timed out after {timeout:.1f} s waiting for {desc}") from None


def client_info(info):
    if info is None:
        return None
    out = {"client": info.client, "user": info.user}
    conn_info = dec(info.conn_info)
    chan_info = dec(info.chan_info)
    if conn_info is not None:
        out["conn_info"] = conn_info
    if chan_info is not None:
        out["chan_info"] = chan_info
    return out


# ---------------------------------------------------------------------------------------------
# server HTTP API (urllib in a thread; no proxies from the environment for 127.0.0.1)

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
        method="POST",
    )
    try:
        with _opener.open(req, timeout=WAIT) as res:
            return res.status, res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


async def api(t, method, body):
    url = f"{API_URL}/api/{method}"
    try:
        status, text = await asyncio.to_thread(_post, url, body)
    except Exception as e:
        raise Fail(f"POST {url} failed: {type(e).__name__}: {e}") from None
    try:
        parsed = json.loads(text)
    except ValueError:
        raise Fail(f"POST {url} {show(body)} -> HTTP {status}, body is not JSON: {text[:300]!r}") from None
    if status != 200 or not isinstance(parsed, dict) or parsed.get("error") or "result" not in parsed:
        raise Fail(f"POST {url} {show(body)} -> HTTP {status} {text[:300]}")
    return parsed["result"]


async def api_publish(t, channel, data, quiet=False):
    result = await api(t, "publish", {"channel": channel, "data": data})
    if not quiet:
        t.log(f"api: publish {channel} {show(data)} -> {show(result)}")
    offset = result.get("offset")
    return {"offset": int(offset) if offset is not None else None, "epoch": result.get("epoch")}


# ---------------------------------------------------------------------------------------------
# SDK wrappers that record every event


class _ClientEvents(ClientEventHandler):
    def __init__(self, w):
        self.w = w

    async def on_connecting(self, ctx):
        self.w.record("connecting", ctx)

    async def on_connected(self, ctx):
        self.w.record("connected", ctx)

    async def on_disconnected(self, ctx):
        self.w.record("disconnected", ctx)

    async def on_error(self, ctx):
        self.w.record("error", ctx)


class TClient:
    def __init__(self, t, name, user, info=None, token=None, get_token=None, url=None):
        self.t = t
        self.name = name
        self.user = user
        self.info = info
        self.events = []
        self.client = Client(
            url or WS_URL,
            events=_ClientEvents(self),
            token=token if token is not None else mint_token(user, info=info),
            get_token=get_token,
            use_protobuf=PROTOBUF,
            timeout=5.0,
            name="synchub-interop",
            max_reconnect_delay=2.0,
            proxy=None,  # never a proxy from the environment
        )
        t.clients.append(self)

    def record(self, kind, ctx):
        self.events.append((kind, ctx))
        self.t.log(f"{self.name}: {kind} {show(ctx)}")

    def count(self, kind):
        return sum(1 for k, _ in self.events if k == kind)

    def last(self, kind):
        found = [c for k, c in self.events if k == kind]
        return found[-1] if found else None

    @property
    def id(self):
        ctx = self.last("connected")
        return ctx.client if ctx else None

    def errors_summary(self):
        errors = [f"code {c.code}: {type(c.error).__name__}: {c.error}" for k, c in self.events if k == "error"]
        return f"; error events: {' | '.join(errors)}" if errors else ""

    def disconnected_reason(self):
        d = self.last("disconnected")
        if d is None:
            return None
        return f"{self.name} disconnected with code {d.code} {d.reason!r}{self.errors_summary()}"

    async def connect(self):
        before = self.count("connected")
        # connect() returns after the first attempt; the event tells whether it worked.
        await within(self.client.connect(), f"{self.name} connect()")
        try:
            await until(f"{self.name} on_connected", lambda: self.count("connected") > before,
                        fail_fast=self.disconnected_reason)
        except Fail as e:
            if self.last("disconnected") is None:
                raise Fail(f"{e}{self.errors_summary()}") from None
            raise
        return self.id

    async def subscribe(self, channel, **options):
        s = TSub(self, channel, options)
        await s.subscribe()
        return s

    async def disconnect(self):
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except Exception as e:
            self.t.log(f"{self.name}: disconnect() raised {type(e).__name__}: {e}")


class _SubEvents(SubscriptionEventHandler):
    def __init__(self, w):
        self.w = w

    async def on_subscribing(self, ctx):
        self.w.record("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self.w.record("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self.w.record("unsubscribed", ctx)

    async def on_error(self, ctx):
        self.w.record("error", ctx)

    async def on_publication(self, ctx):
        pub = {"data": dec(ctx.pub.data), "offset": ctx.pub.offset, "info": client_info(ctx.pub.info)}
        self.w.pubs.append(pub)
        self.w.t.log(f"{self.w.tag}: publication {show(pub)}")

    async def on_join(self, ctx):
        info = client_info(ctx.info)
        self.w.joins.append(info)
        self.w.t.log(f"{self.w.tag}: join {show(info)}")

    async def on_leave(self, ctx):
        info = client_info(ctx.info)
        self.w.leaves.append(info)
        self.w.t.log(f"{self.w.tag}: leave {show(info)}")


class TSub:
    def __init__(self, c, channel, options):
        self.c = c
        self.t = c.t
        self.channel = channel
        self.tag = f"{c.name}/{channel}"
        self.events = []
        self.pubs = []
        self.joins = []
        self.leaves = []
        self.sub = c.client.new_subscription(channel, events=_SubEvents(self), **options)

    def record(self, kind, ctx):
        self.events.append((kind, ctx))
        self.t.log(f"{self.tag}: {kind} {show(ctx)}")

    def count(self, kind):
        return sum(1 for k, _ in self.events if k == kind)

    def subscribed_ctx(self, n):
        found = [c for k, c in self.events if k == "subscribed"]
        return found[n] if n < len(found) else None

    def unsubscribed_reason(self):
        for k, c in self.events:
            if k == "unsubscribed":
                return f"subscription to {self.channel} ended: unsubscribed code {c.code} {c.reason!r}"
        return self.c.disconnected_reason()

    async def subscribe(self):
        await within(self.sub.subscribe(), f"{self.c.name} subscribe()")
        await until(f"{self.c.name} on_subscribed for {self.channel}", lambda: self.count("subscribed") > 0,
                    fail_fast=self.unsubscribed_reason)

    async def wait_pubs(self, n, desc=None):
        await until(f"{desc or f'{n} publication(s)'} on {self.tag} (have {len(self.pubs)})",
                    lambda: len(self.pubs) >= n, fail_fast=self.unsubscribed_reason)


class Proxy:
    """TCP proxy between the SDK and the server. down() aborts every proxied connection and makes
    the proxy refuse (accept-and-abort) new ones; up() lets connections through again."""

    def __init__(self, t):
        self.t = t
        target = urlsplit(WS_URL)
        self.upstream_host = target.hostname
        self.upstream_port = target.port or (443 if target.scheme == "wss" else 80)
        self.open = True
        self.transports = set()
        self.accepted = 0
        self.server = None
        self.url = None

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        parts = urlsplit(WS_URL)
        self.url = urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query, parts.fragment))
        self.t.proxies.append(self)
        self.t.log(f"proxy: listening on 127.0.0.1:{port} -> {self.upstream_host}:{self.upstream_port}, SDK uses {self.url}")
        return self

    async def _handle(self, reader, writer):
        if not self.open:
            self.t.log("proxy: refused a connection (proxy is down)")
            writer.transport.abort()
            return
        self.accepted += 1
        self.t.log(f"proxy: connection #{self.accepted} accepted")
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError as e:
            self.t.log(f"proxy: upstream connect failed: {e}")
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self.transports.update(pair)

        async def pump(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except Exception:
                pass
            finally:
                for tr in pair:
                    tr.abort()
                    self.transports.discard(tr)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def down(self):
        self.open = False
        self.t.log(f"proxy: down, aborting {len(self.transports)} socket(s)")
        for tr in list(self.transports):
            tr.abort()
        self.transports.clear()

    def up(self):
        self.open = True
        self.t.log("proxy: up")

    async def close(self):
        self.open = False
        for tr in list(self.transports):
            tr.abort()
        if self.server:
            self.server.close()


# ---------------------------------------------------------------------------------------------
# scenarios

SCENARIOS = []


def scenario(fn):
    SCENARIOS.append((fn.__name__.removeprefix("scenario_"), fn))
    return fn


@scenario
async def scenario_connect(t):
    c = TClient(t, "A", new_user("u_connect"))
    cid = await c.connect()
    check(isinstance(cid, str) and cid, f"on_connected must carry a non-empty client id, got {show(c.last('connected'))}")
    check_equal(c.client.state.value, "connected", "client state after on_connected")


@scenario
async def scenario_publication(t):
    channel = new_channel()
    c = TClient(t, "A", new_user("u_pub"))
    await c.connect()
    s = await c.subscribe(channel)
    data = {"text": "hello from interop", "n": 42, "ok": True, "none": None, "nested": {"list": [1, "two", 3.5, False]},
            "unicode": "žluťoučký kůň ✓ 😀", "newline": "a\nb"}
    r = await api_publish(t, channel, data)
    check(r["offset"] and r["offset"] > 0,
          f"API publish result must carry an offset (history is on for channels without a namespace), got {show(r)}")
    await s.wait_pubs(1, "the API publication")
    check_equal(s.pubs[0]["data"], data, "publication data")
    check_equal(s.pubs[0]["offset"], r["offset"], "publication offset (the one the API returned)")
    await asyncio.sleep(0.3)
    check_equal(len(s.pubs), 1, "number of publications received")


@scenario
async def scenario_presence(t):
    channel = new_channel()
    user_a, user_b = new_user("u_alice"), new_user("u_bob")
    info_a = {"name": "Alice", "role": "editor"}
    info_b = {"name": "Bob", "device": "python"}
    a = TClient(t, "A", user_a, info=info_a)
    b = TClient(t, "B", user_b, info=info_b)
    id_a = await a.connect()
    sa = await a.subscribe(channel, join_leave=True)
    id_b = await b.connect()
    sb = await b.subscribe(channel)

    join = await until(f"A's on_join for B ({id_b}); joins so far {show(sa.joins)}",
                       lambda: next((j for j in sa.joins if j["client"] == id_b), None),
                       fail_fast=sa.unsubscribed_reason)
    check_equal(join, {"client": id_b, "user": user_b, "conn_info": info_b}, "A's join event for B")

    presence = await within(sa.sub.presence(), "presence() reply")
    clients = presence.clients
    check_equal(sorted(clients), sorted([id_a, id_b]), "presence() client ids")
    check_equal(client_info(clients[id_a]), {"client": id_a, "user": user_a, "conn_info": info_a}, "presence entry of A")
    check_equal(client_info(clients[id_b]), {"client": id_b, "user": user_b, "conn_info": info_b}, "presence entry of B")

    stats = await within(sa.sub.presence_stats(), "presence_stats() reply")
    check_equal({"num_clients": stats.num_clients, "num_users": stats.num_users}, {"num_clients": 2, "num_users": 2},
                "presence_stats()")

    await within(sb.sub.unsubscribe(), "B unsubscribe()")
    leave = await until(f"A's on_leave for B ({id_b}); leaves so far {show(sa.leaves)}",
                        lambda: next((x for x in sa.leaves if x["client"] == id_b), None),
                        fail_fast=sa.unsubscribed_reason)
    check_equal(leave, {"client": id_b, "user": user_b, "conn_info": info_b}, "A's leave event for B")
    check_equal(sum(1 for j in sa.joins if j["client"] == id_b), 1, "number of join events A got for B")

    deadline = time.monotonic() + WAIT
    while True:
        last = sorted((await within(sa.sub.presence(), "presence() reply")).clients)
        if last == [id_a]:
            break
        if time.monotonic() > deadline:
            raise Fail(f"presence() after B unsubscribed: expected {[id_a]}, got {last}")
        await asyncio.sleep(0.1)


@scenario
async def scenario_history(t):
    channel = new_channel()
    c = TClient(t, "A", new_user("u_hist"))
    await c.connect()
    s = await c.subscribe(channel)
    published = [await api_publish(t, channel, {"seq": i}) for i in range(1, 6)]
    offsets = [p["offset"] for p in published]
    epoch = published[0]["epoch"]
    check(all(offsets[i] == offsets[i - 1] + 1 for i in range(1, 5)), f"API publish offsets must be consecutive, got {offsets}")
    check(all(p["epoch"] == epoch for p in published), f"API publish epochs must not change, got {show(published)}")
    await s.wait_pubs(5, "the 5 API publications live")

    def rows(h):
        return [{"data": dec(p.data), "offset": p.offset} for p in h.publications]

    def want(seqs):
        return [{"data": {"seq": i}, "offset": offsets[i - 1]} for i in seqs]

    h = await within(s.sub.history(limit=10), "history(limit=10)")
    check_equal(rows(h), want([1, 2, 3, 4, 5]), "history(limit=10) publications")
    check_equal({"offset": h.offset, "epoch": h.epoch}, {"offset": offsets[4], "epoch": epoch}, "history(limit=10) stream position")

    rev = await within(s.sub.history(limit=2, reverse=True), "history(limit=2, reverse=True)")
    check_equal(rows(rev), want([5, 4]), "history(limit=2, reverse=True) publications")

    since = await within(s.sub.history(limit=10, since=StreamPosition(offset=offsets[1], epoch=epoch)), "history(since=...)")
    check_equal(rows(since), want([3, 4, 5]), f"history(limit=10, since=offset {offsets[1]}) publications")

    top = await within(s.sub.history(), "history() (limit 0)")
    check_equal({"n": len(top.publications), "offset": top.offset, "epoch": top.epoch},
                {"n": 0, "offset": offsets[4], "epoch": epoch}, "history() with limit 0 (stream position only)")


@scenario
async def scenario_rpc(t):
    user = new_user("u_rpc")
    c = TClient(t, "A", user)
    cid = await c.connect()
    r = await within(c.client.rpc("session.info", enc({})), "rpc('session.info')")
    data = dec(r.data)
    t.log(f"A: rpc session.info -> {show(data)}")
    check(isinstance(data, dict), f"rpc('session.info') must return an object, got {show(data)}")
    check_equal({"user": data.get("user"), "client": data.get("client")}, {"user": user, "client": cid},
                "rpc('session.info') user and client")
    try:
        res = await within(c.client.rpc("no.such.method", enc({})), "rpc('no.such.method')")
    except ReplyError as e:
        t.log(f"A: rpc no.such.method raised ReplyError code={e.code} message={e.message!r} temporary={e.temporary}")
        check_equal(e.code, 104, "ReplyError.code of rpc('no.such.method')")
    else:
        raise Fail(f"rpc('no.such.method') must fail with error 104, it returned {show(res)}")
    check_equal(c.client.state.value, "connected", "client state after an rpc error")


@scenario
async def scenario_client_publish(t):
    channel = new_channel()
    user_a = new_user("u_pubA")
    info_a = {"name": "Publisher"}
    a = TClient(t, "A", user_a, info=info_a)
    b = TClient(t, "B", new_user("u_pubB"))
    id_a = await a.connect()
    await b.connect()
    sa = await a.subscribe(channel)
    sb = await b.subscribe(channel)
    data = {"text": "published by a client", "n": 7}
    await within(sa.sub.publish(enc(data)), "sub.publish() reply")
    await sb.wait_pubs(1, "A's publication")
    pub = sb.pubs[0]
    check_equal(pub["data"], data, "data B received")
    check(pub["info"] is not None, f"publication from a client must carry info (ClientInfo of the publisher), got {show(pub)}")
    check_equal(pub["info"], {"client": id_a, "user": user_a, "conn_info": info_a}, "publication info B received")
    await sa.wait_pubs(1, "own publication")
    await asyncio.sleep(0.2)
    check_equal(len(sb.pubs), 1, "number of publications B received")


@scenario
async def scenario_refresh(t):
    user = new_user("u_refresh")
    channel = new_channel()
    calls = 0

    async def get_token():
        nonlocal calls
        calls += 1
        t.log(f"A: get_token called (#{calls})")
        return mint_token(user, ttl=3)

    c = TClient(t, "A", user, token=mint_token(user, ttl=3), get_token=get_token)
    started = time.monotonic()
    await c.connect()
    s = await c.subscribe(channel)
    await until("get_token to be called (server must answer connect with expires: true and ttl ~3)",
                lambda: calls >= 1, fail_fast=c.disconnected_reason)
    while time.monotonic() < started + 6.5:
        reason = c.disconnected_reason()
        if reason:
            raise Fail(reason)
        await asyncio.sleep(0.05)
    await until(f"a second get_token call (the refresh reply must carry expires: true and ttl); calls so far {calls}",
                lambda: calls >= 2, fail_fast=c.disconnected_reason)
    check_equal({"connecting": c.count("connecting"), "disconnected": c.count("disconnected")},
                {"connecting": 1, "disconnected": 0}, "on_connecting/on_disconnected events (only the initial connecting is expected)")
    check_equal(c.count("connected"), 1, "number of on_connected events (a reconnect happened otherwise)")
    check_equal(c.client.state.value, "connected", "client state")
    r = await api_publish(t, channel, {"after": "refresh"})
    await s.wait_pubs(1, "a publication after the refresh")
    check_equal(s.pubs[0], {"data": {"after": "refresh"}, "offset": r["offset"], "info": None}, "publication after the refresh")


async def recovery_common(t, missed):
    proxy = await Proxy(t).start()
    channel = new_channel()
    c = TClient(t, "A", new_user("u_recover"), url=proxy.url)
    await c.connect()
    s = await c.subscribe(channel)
    first = s.subscribed_ctx(0)
    check(first.recoverable is True,
          f"first on_subscribed ctx must have recoverable=True (recovery is on for channels without a namespace), got {show(first)}")
    r0 = await api_publish(t, channel, {"phase": "before", "seq": 0})
    await s.wait_pubs(1, "the publication before the drop")

    connecting_before = c.count("connecting")
    proxy.down()
    await until("on_connecting after the transport drop", lambda: c.count("connecting") > connecting_before,
                fail_fast=c.disconnected_reason)
    check_equal(s.sub.state.value, "subscribing", "subscription state while the transport is down")

    published = [await api_publish(t, channel, {"phase": "missed", "seq": i}, quiet=True) for i in range(1, missed + 1)]
    t.log(f"api: published {missed} while the client was disconnected, offsets {published[0]['offset']}..{published[-1]['offset']}")
    check(published[0]["offset"] == r0["offset"] + 1,
          f"offsets must continue: before-drop offset {r0['offset']}, first missed {published[0]['offset']}")
    proxy.up()

    await until("the second on_subscribed (resubscribe after reconnect)", lambda: s.count("subscribed") >= 2,
                timeout=WAIT + 4, fail_fast=c.disconnected_reason)
    check_equal(c.count("connected"), 2, "number of on_connected events (initial + automatic reconnect)")
    return channel, s, published, s.subscribed_ctx(1)


@scenario
async def scenario_recovery(t):
    channel, s, published, ctx = await recovery_common(t, 50)
    check_equal({"was_recovering": ctx.was_recovering, "recovered": ctx.recovered},
                {"was_recovering": True, "recovered": True}, "second on_subscribed ctx")
    await s.wait_pubs(51, "the 50 missed publications")
    await asyncio.sleep(0.5)  # duplicates would arrive by now
    got = [{"data": p["data"], "offset": p["offset"]} for p in s.pubs[1:]]
    want = [{"data": {"phase": "missed", "seq": i + 1}, "offset": p["offset"]} for i, p in enumerate(published)]
    if canon(got) != canon(want):
        seqs = [p["data"].get("seq") if isinstance(p["data"], dict) else p["data"] for p in got]
        raise Fail(f"recovered publications: expected exactly seq 1..50 with offsets {want[0]['offset']}..{want[-1]['offset']} "
                   f"in order, got {len(got)}: seqs {seqs} offsets {[p['offset'] for p in got]}")
    r = await api_publish(t, channel, {"phase": "after"})
    await s.wait_pubs(52, "a live publication after recovery")
    check_equal(s.pubs[51], {"data": {"phase": "after"}, "offset": r["offset"], "info": None}, "live publication after recovery")


@scenario
async def scenario_recovery_beyond_window(t):
    channel, s, published, ctx = await recovery_common(t, 150)
    check_equal({"was_recovering": ctx.was_recovering, "recovered": ctx.recovered},
                {"was_recovering": True, "recovered": False}, "second on_subscribed ctx (150 missed, history keeps 100)")
    await asyncio.sleep(0.5)
    check_equal(len(s.pubs), 1, "publications delivered after an unsuccessful recovery (must be none of the missed ones)")
    r = await api_publish(t, channel, {"phase": "after"})
    check_equal(r["offset"], published[-1]["offset"] + 1, "offset of the next API publication")
    await s.wait_pubs(2, "a live publication after the failed recovery")
    check_equal(s.pubs[1], {"data": {"phase": "after"}, "offset": r["offset"], "info": None},
                "live publication after the failed recovery")


@scenario
async def scenario_bad_token(t):
    user = new_user("u_badsig")
    c = TClient(t, "A", user, token=mint_token(user, secret=f"wrong-{HMAC_SECRET}-{rand(4)}"))
    await within(c.client.connect(), "connect()")
    await until("on_disconnected for a token signed with the wrong secret",
                lambda: c.count("disconnected") > 0 or c.count("connected") > 0)
    check_equal(c.count("connected"), 0, "on_connected events with a badly signed token")
    d = c.last("disconnected")
    check_equal({"code": d.code}, {"code": 3500}, f"on_disconnected ctx (reason {d.reason!r})")
    connecting = c.count("connecting")
    await asyncio.sleep(1.5)
    check_equal(c.count("connecting") - connecting, 0, "on_connecting events after the 3500 disconnect (must not reconnect)")
    check_equal(c.client.state.value, "disconnected", "client state")


@scenario
async def scenario_expired_token(t):
    user = new_user("u_expired")
    c = TClient(t, "A", user, token=mint_token(user, exp=int(time.time()) - 120))
    await within(c.client.connect(), "connect()")
    await until("on_disconnected for an expired token without get_token",
                lambda: c.count("disconnected") > 0 or c.count("connected") > 0)
    check_equal(c.count("connected"), 0, "on_connected events with an expired token")
    # centrifuge-python 0.7: connect reply error 109 -> on_error(ErrorContext(code=13 CONNECT_ERROR,
    # error=ReplyError(code=109))); the SDK then wants a new token, has no get_token ->
    # on_error(code=12 BAD_CONFIGURATION) and on_disconnected(code=1, reason="unauthorized").
    errors = [(ctx.code, getattr(ctx.error, "code", None), type(ctx.error).__name__) for k, ctx in c.events if k == "error"]
    check(any(code == 13 and inner == 109 for code, inner, _ in errors),
          f"expected on_error with code 13 (connect error) carrying ReplyError code 109, got (ctx.code, error.code, type) {errors}")
    d = c.last("disconnected")
    check_equal({"code": d.code, "reason": d.reason}, {"code": 1, "reason": "unauthorized"},
                "on_disconnected ctx (SDK gives up: token expired and no get_token)")
    check_equal(c.client.state.value, "disconnected", "client state")


@scenario
async def scenario_connect_info(t):
    channel = new_channel()
    user = new_user("u_info")
    info = {"name": "Carol", "tags": ["x", "y"], "n": 1, "nested": {"ok": True}}
    c = TClient(t, "A", user, info=info)
    cid = await c.connect()
    s = await c.subscribe(channel)
    r = await api_publish(t, channel, {"hello": "with info"})
    await s.wait_pubs(1, "the API publication")
    check_equal(s.pubs[0], {"data": {"hello": "with info"}, "offset": r["offset"], "info": None}, "publication received")
    presence = await within(s.sub.presence(), "presence() reply")
    check_equal({k: client_info(v) for k, v in presence.clients.items()},
                {cid: {"client": cid, "user": user, "conn_info": info}}, "presence() with an info claim")


# ---------------------------------------------------------------------------------------------
# runner


class Scenario:
    def __init__(self):
        self.started = time.monotonic()
        self.lines = []
        self.clients = []
        self.proxies = []

    def log(self, msg):
        self.lines.append(f"  [{int((time.monotonic() - self.started) * 1000):5d} ms] {msg}")


_current = None


def _exception_handler(loop, context):
    msg = context.get("message", "")
    exc = context.get("exception")
    text = f"asyncio: {msg}" + (f" ({type(exc).__name__}: {exc})" if exc else "")
    if _current is not None:
        _current.log(text)
    elif DEBUG:
        print(text, file=sys.stderr)


async def run_scenario(name, fn):
    global _current
    t = Scenario()
    _current = t
    failure = None
    try:
        await asyncio.wait_for(fn(t), SCENARIO_TIMEOUT)
    except Fail as e:
        failure = str(e)
    except asyncio.TimeoutError:
        failure = f"the whole scenario took longer than {SCENARIO_TIMEOUT:.0f} s"
    except Exception as e:
        import traceback
        failure = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e))
    finally:
        for c in t.clients:
            await c.disconnect()
        for p in t.proxies:
            await p.close()
        await asyncio.sleep(0.05)
        _current = None
    secs = time.monotonic() - t.started
    if failure:
        print(f"FAIL {name}: {failure}")
        print(f"  --- {name} log ({FORMAT}, {secs:.1f} s) ---")
        for line in t.lines:
            print(line)
    else:
        print(f"PASS {name}")
        if DEBUG:
            for line in t.lines:
                print(line)
    sys.stdout.flush()
    return failure is None


async def preflight():
    """Opens a WebSocket like the SDK does (same subprotocol); returns a problem or None."""
    import websockets

    try:
        ws = await websockets.connect(WS_URL, subprotocols=["centrifuge-protobuf"] if PROTOBUF else None,
                                      proxy=None, open_timeout=3, close_timeout=1)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    try:
        if PROTOBUF and ws.subprotocol != "centrifuge-protobuf":
            return f"the server did not select the centrifuge-protobuf subprotocol (got {ws.subprotocol!r})"
    finally:
        await ws.close()
    return None


async def main(argv):
    arg = argv[1] if len(argv) > 1 else None
    if arg == "--list":
        for name, _ in SCENARIOS:
            print(name)
        return 0
    missing = [k for k, v in (("SYNCHUB_WS_URL", WS_URL), ("SYNCHUB_API_URL", API_URL),
                              ("SYNCHUB_API_KEY", API_KEY), ("SYNCHUB_HMAC_SECRET", HMAC_SECRET)) if not v]
    if missing:
        print(f"missing environment: {', '.join(missing)} (see the docstring of {argv[0]})", file=sys.stderr)
        return 2
    if FORMAT not in ("json", "protobuf"):
        print(f"SYNCHUB_FORMAT must be json or protobuf, got {FORMAT!r}", file=sys.stderr)
        return 2
    selected = SCENARIOS
    if arg:
        selected = [(n, f) for n, f in SCENARIOS if n == arg]
        if not selected:
            print(f"unknown scenario {arg!r}; known: {', '.join(n for n, _ in SCENARIOS)}", file=sys.stderr)
            return 2
    asyncio.get_running_loop().set_exception_handler(_exception_handler)
    try:
        from importlib.metadata import version
        sdk = f"centrifuge-python {version('centrifuge-python')}"
    except Exception:
        sdk = "centrifuge-python"
    print(f"{sdk} interop: format {FORMAT}, server {WS_URL}, {len(selected)} scenario(s)")
    # Preflight: with no WebSocket endpoint at all, fail every scenario at once instead of
    # letting each one time out.
    problem = await preflight()
    if problem:
        for name, _ in selected:
            print(f"FAIL {name}: preflight WebSocket handshake to {WS_URL} failed: {problem}")
        print(f"0 passed, {len(selected)} failed")
        return 1
    passed = failed = 0
    for name, fn in selected:
        if await run_scenario(name, fn):
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if DEBUG else logging.CRITICAL,
                        format="    %(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    sys.exit(asyncio.run(main(sys.argv)))
