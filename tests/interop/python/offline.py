#!/usr/bin/env python3
"""A mobile app, played by the official centrifuge-python SDK, that works offline.

It pulls a set of deals, goes offline, queues 100 mutations while two other users (SDK clients
too) edit some of the same records, reconnects, pulls, and pushes the queue with `offline.push`.
Every outcome (applied, merged, conflict) must be the one the server's conflict rules predict;
the open conflicts must appear in `GET /v1/conflicts`; the same push again must come back all
`duplicate`.

The server must run with these rules (tests/it/offline.rs `RULES`; tests/it/interop.rs starts it):

    [conflicts.deals]
    strategy = "merge"          # fields changed on both sides fall back to manual review
    fallback = "manual"
    critical_fields = ["Amount"]
    [conflicts.deals.fields]
    Stage = "remote_wins"
    Owner = "local_wins"

Environment: SYNCHUB_WS_URL, SYNCHUB_API_URL, SYNCHUB_API_KEY, SYNCHUB_HMAC_SECRET (as run.py).
JSON only: the offline methods carry JSON objects. Prints `N passed, N failed` last; exit 0 only
when nothing failed.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.request

try:
    from centrifuge import Client, ReplyError
except ImportError as _e:
    print(f"cannot import the SDK ({_e}); pip install -r tests/interop/python/requirements.txt",
          file=sys.stderr)
    sys.exit(2)

WS_URL = os.environ.get("SYNCHUB_WS_URL", "")
API_URL = os.environ.get("SYNCHUB_API_URL", "").rstrip("/")
API_KEY = os.environ.get("SYNCHUB_API_KEY", "")
HMAC_SECRET = os.environ.get("SYNCHUB_HMAC_SECRET", "")

RECORDS = 40
MUTATIONS = 100
FIELDS = ["City", "Stage", "Amount", "Owner"]
# What the rules do with a field both sides changed.
RULE = {"City": "manual", "Amount": "manual", "Stage": "remote_wins", "Owner": "local_wins"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def token(sub, roles=None):
    claims = {"sub": sub, "exp": int(time.time()) + 3600}
    if roles:
        claims["roles"] = roles
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(HMAC_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def http(method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API_URL + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Fail(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Fail(message)


async def connected(user):
    c = Client(WS_URL, token=token(user), name="offline-interop")
    await asyncio.wait_for(c.connect(), 10)
    await asyncio.wait_for(c.ready(), 10)
    return c


async def rpc(c, method, data):
    r = await asyncio.wait_for(c.rpc(method, data), 20)
    return r.data


def initial_value(field, r):
    return {"City": f"city-{r}", "Stage": "new", "Amount": 1000 + r, "Owner": f"owner-{r}"}[field]


def local_value(field, i):
    return {"City": f"ann-city-{i}", "Stage": f"ann-stage-{i}", "Amount": 5000 + i,
            "Owner": f"ann-{i}"}[field]


def other_value(field, who, r):
    return {"City": f"{who}-city-{r}", "Stage": f"{who}-stage", "Amount": 9000 + r,
            "Owner": f"{who}-{r}"}[field]


async def scenario():
    prefix = "m" + secrets.token_hex(4)
    ids = [f"{prefix}-{r}" for r in range(RECORDS)]
    # A backend seeds the deals.
    for r, rid in enumerate(ids):
        http("POST", "/v1/records/deals", {"id": rid, "fields": {f: initial_value(f, r) for f in FIELDS}},
             {"X-API-Key": API_KEY})

    # The app syncs, then goes offline with what it pulled.
    phone = await connected("ann")
    local = {}
    cursor = 0
    while True:
        page = await rpc(phone, "offline.pull", {"client_id": "ann-phone", "cursor": cursor,
                                                 "entities": ["deals"], "limit": 500})
        for ch in page["changes"]:
            rec = ch["record"]
            local[rec["id"]] = rec
        cursor = page["cursor"]
        if not page["more"]:
            break
    check(all(rid in local for rid in ids), "the first pull must bring every seeded deal")
    await phone.disconnect()

    # 100 queued mutations: mutation i edits field FIELDS[(i // 40 + r) % 4] of record r = i % 40,
    # so no (record, field) pair is edited twice by the app.
    queue = []
    for i in range(MUTATIONS):
        r = i % RECORDS
        field = FIELDS[(i // RECORDS + r) % 4]
        rec = local[ids[r]]
        queue.append({"seq": i + 1, "op": "update", "entity": "deals", "id": ids[r],
                      "base_version": rec["version"], "base": {field: rec["fields"][field]},
                      "fields": {field: local_value(field, i)},
                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    # Meanwhile bob edits records 0..19 and carol records 10..29, one field each.
    others = {}  # (r, field) -> value now on the server
    edits_per_record = {}
    for who, rng, shift in (("bob", range(0, 20), 0), ("carol", range(10, 30), 1)):
        c = await connected(who)
        for r in rng:
            field = FIELDS[(r + shift) % 4]
            cur = (await rpc(c, "record.get", {"entity": "deals", "id": ids[r]}))["record"]
            value = other_value(field, who, r)
            await rpc(c, "record.update", {"entity": "deals", "id": ids[r], "base_version": cur["version"],
                                           "fields": {field: value}})
            others[(r, field)] = value
            edits_per_record[r] = edits_per_record.get(r, 0) + 1
        await c.disconnect()

    # Predict every outcome from the rules, in seq order.
    version = {r: local[ids[r]]["version"] + edits_per_record.get(r, 0) for r in range(RECORDS)}
    server = {(r, f): others.get((r, f), initial_value(f, r)) for r in range(RECORDS) for f in FIELDS}
    predicted = []
    for i, m in enumerate(queue):
        r = i % RECORDS
        (field, value), = m["fields"].items()
        stale = version[r] != m["base_version"]
        remote_changed = (r, field) in others
        if remote_changed and RULE[field] == "manual":
            status, wrote = "conflict", False
        elif remote_changed and RULE[field] == "remote_wins":
            status, wrote = "merged", False
        else:
            status, wrote = ("merged" if stale else "applied"), True
        if wrote:
            version[r] += 1
            server[(r, field)] = value
        predicted.append(status)
    check({"applied", "merged", "conflict"} <= set(predicted),
          f"the scenario must exercise every outcome, predicted {sorted(set(predicted))}")

    # Back online: pull what changed, then push the queue in two batches.
    phone = await connected("ann")
    page = await rpc(phone, "offline.pull", {"client_id": "ann-phone", "cursor": cursor,
                                             "entities": ["deals"], "limit": 500})
    changed = {ch["record"]["id"] for ch in page["changes"]}
    check({ids[r] for r in edits_per_record} <= changed, "the pull must bring the other users' edits")
    check(page["last_seq"] == 0, f"nothing pushed yet, last_seq {page['last_seq']}")
    results = []
    for batch in (queue[:50], queue[50:]):
        res = await rpc(phone, "offline.push", {"client_id": "ann-phone", "mutations": batch})
        results.extend(res["results"])
    check(len(results) == MUTATIONS, f"{len(results)} results for {MUTATIONS} mutations")
    got = [res["status"] for res in results]
    wrong = [(i + 1, p, g) for i, (p, g) in enumerate(zip(predicted, got)) if p != g]
    check(not wrong, f"outcomes differ from the rules' prediction (seq, predicted, got): {wrong[:10]}")

    # The records hold what the rules predict.
    for r, rid in enumerate(ids):
        rec = (await rpc(phone, "record.get", {"entity": "deals", "id": rid}))["record"]
        check(rec["version"] == version[r], f"{rid}: version {rec['version']}, predicted {version[r]}")
        for f in FIELDS:
            check(rec["fields"][f] == server[(r, f)],
                  f"{rid}.{f} = {rec['fields'][f]!r}, predicted {server[(r, f)]!r}")

    # The open conflicts are listed for review, one per conflicting mutation.
    listed = http("GET", "/v1/conflicts?status=open&entity=deals&limit=500",
                  headers={"Authorization": "Bearer " + token("ann")})["conflicts"]
    mine = sorted(c["seq"] for c in listed if c["client_id"] == "ann-phone" and c["record_id"].startswith(prefix))
    expected = sorted(i + 1 for i, p in enumerate(predicted) if p == "conflict")
    check(mine == expected, f"/v1/conflicts lists seqs {mine}, predicted {expected}")

    # The queue pushed again changes nothing.
    again = await rpc(phone, "offline.push", {"client_id": "ann-phone", "mutations": queue[:50]})
    check(all(res["status"] == "duplicate" for res in again["results"]), "a second push is all duplicate")
    check(again["last_seq"] == MUTATIONS, f"last_seq {again['last_seq']}")
    await phone.disconnect()
    counts = {s: predicted.count(s) for s in ("applied", "merged", "conflict")}
    print(f"outcomes: {counts}")


async def main():
    if not (WS_URL and API_URL and API_KEY and HMAC_SECRET):
        print("set SYNCHUB_WS_URL, SYNCHUB_API_URL, SYNCHUB_API_KEY and SYNCHUB_HMAC_SECRET", file=sys.stderr)
        return 2
    try:
        await asyncio.wait_for(scenario(), 120)
        print("PASS offline_mobile_app")
        print("1 passed, 0 failed")
        return 0
    except (Fail, ReplyError, asyncio.TimeoutError, OSError) as e:
        print(f"FAIL offline_mobile_app: {type(e).__name__}: {e}")
        print("0 passed, 1 failed")
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
