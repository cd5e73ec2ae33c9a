"""Benchmarks of the shop's web side (issue 6, figures 1, 4, 5 and 6), run by tests/bench.py:

- catalog:  GET /api/catalog requests/s at 32 keep-alive clients vs a bare Bottle app on waitress
            (the same waitress settings) answering the same bytes.
- checkout: 200 shoppers racing over HTTP for 50 units with their balance; checkouts/s and
            correctness.
- ipn:      2,000 sandbox top-ups, each finished IPN delivered 3 times, shuffled, by 8 senders;
            IPNs/s and latency vs a bare Bottle app that only checks the HMAC; each applied once.
- memory:   VmRSS of the shop after start and after a mixed load vs a bare process importing the
            same libraries.

The shop runs for real: `python shop.py --no-demo` as a subprocess (tests/harness.py) in sandbox
mode, talking to the Bot API stand-in; data is seeded with the shop's own functions. Clients are
threads with keep-alive http.client connections, the same client for the shop and for each baseline.
Standard library plus the shop's own dependencies only.
"""

import http.client
import itertools
import gzip
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import shop  # noqa: E402
from fake_telegram import FakeTelegram  # noqa: E402
from harness import ROOT, TOKEN, Row, ShopProcess, free_port, pct, png, ratio, shop_env  # noqa: E402


def note(text):
    print(f"#   {text}", file=sys.stderr, flush=True)


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


# The shop and the baselines as subprocesses ###################################


@contextmanager
def running_shop(tmp, seed=None, wait_bot=True, litestream=False, **env):
    """A fresh database seeded by seed(conn, db_path, port), the Bot API stand-in, and the real
    shop (litestream=True: run by `litestream replicate -exec`, replicating to a folder)."""
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "shop.db"
    fake = FakeTelegram(token=TOKEN).start()
    env = shop_env(tmp, fake.base_url, **{"ADMIN_PASSWORD": "bench-admin-password", **env})
    command, args, socket_dir = None, ["--no-demo"], None
    if litestream:
        socket_dir = Path(tempfile.mkdtemp(prefix="ls-"))  # a socket's path has 107 bytes at most
        config = tmp / "litestream.yml"
        config.write_text(
            f"socket:\n  enabled: true\n  path: {socket_dir / 'ls.sock'}\n"
            f"dbs:\n  - path: {db}\n    replica:\n"
            f"      type: file\n      path: {tmp / 'replica'}\n",
            encoding="utf-8",
        )
        env["LITESTREAM_SOCKET"] = str(socket_dir / "ls.sock")
        env.pop("AWS_CA_BUNDLE", None)
        command = ["litestream", "replicate", "-config", str(config), "-exec"]
        command, args = [*command, f"{sys.executable} {ROOT / 'shop.py'} --no-demo"], []
    proc = ShopProcess(tmp, env, command)
    try:
        conn = shop.init_db(str(db))
        try:
            info = seed(conn, db, proc.port) if seed else None
        finally:
            conn.close()
        proc.start(*args, ready="shop is running", timeout=30)
        if wait_bot:
            proc.wait_log("bot: @", timeout=20)
        yield proc, fake, info
    finally:
        proc.stop()
        fake.stop()
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)


BARE_APP = r"""
import hashlib, hmac, json, sys
import bottle, waitress

port, body_file, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(body_file, "rb") as f:
    catalog_body = f.read()
app = bottle.Bottle()


@app.get("/api/catalog")
def catalog():
    bottle.response.content_type = "application/json"
    bottle.response.headers["Cache-Control"] = "no-store"
    if catalog_body[:2] == b"\x1f\x8b":     # the same gzipped bytes the shop sends
        bottle.response.headers["Content-Encoding"] = "gzip"
        bottle.response.headers["Vary"] = "Accept-Encoding"
    return catalog_body


@app.post("/webhook")
def webhook():
    raw = bottle.request.body.read(65537)
    signature = (bottle.request.get_header("x-nowpayments-sig") or "").lower()
    bottle.response.content_type = "application/json"
    try:
        data = json.loads(raw)
    except ValueError:
        bottle.response.status = 400
        return '{"error": "malformed"}'
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hmac.new(secret.encode(), canonical.encode(), hashlib.sha512).hexdigest()
    if not hmac.compare_digest(expected, signature):
        bottle.response.status = 401
        return '{"error": "bad signature"}'
    return '{"status": "ok"}'


server = waitress.create_server(app, host="127.0.0.1", port=port, threads=8, ident="bare",
                                channel_timeout=60, max_request_body_size=60 * 1024 * 1024)
print("bare is running", flush=True)
server.run()
"""


@contextmanager
def bare_app(tmp, catalog_body=b"{}", secret="-"):
    """The baseline: a bare Bottle app on waitress with the shop's waitress settings (8 threads)."""
    body_file = tmp / "bare-body.json"
    body_file.write_bytes(catalog_body)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(port), str(body_file), secret],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if "bare is running" not in line:
            raise RuntimeError(f"the bare app did not start: {line}{proc.stdout.read()}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield port
    finally:
        proc.kill()
        proc.wait()


# HTTP clients #################################################################


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def connect(self):
        self.conn.connect()
        return self

    def request(self, method, path, body=None, headers=None):
        """(status, body bytes); a broken connection is reopened for the next request."""
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0, b""

    def close(self):
        self.conn.close()


def hammer(port, make_request, clients, warmup, duration):
    """`clients` threads send make_request(i) -> (method, path, body, headers) back to back over
    keep-alive connections; returns (requests/s, latencies, statuses, a sample body) of the requests
    that finished within the measured window after the warm-up."""
    start = time.monotonic() + 0.2
    measure_from, measure_to = start + warmup, start + warmup + duration
    results = [None] * clients

    def run(i):
        client = Client(port).connect()
        latencies, statuses, sample = [], {}, None
        method, path, body, headers = make_request(i)
        while time.monotonic() < start:
            time.sleep(0.005)
        try:
            while True:
                t0 = time.monotonic()
                if t0 >= measure_to:
                    break
                status, data = client.request(method, path, body, headers)
                t1 = time.monotonic()
                if measure_from <= t0 and t1 <= measure_to:
                    latencies.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                    sample = data
        finally:
            client.close()
        results[i] = (latencies, statuses, sample)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies, statuses, sample = [], {}, None
    for lat, st, smp in results:
        latencies += lat
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
        sample = smp or sample
    return len(latencies) / duration, latencies, statuses, sample


def init_headers(user_id, **extra):
    user = {"id": user_id, "first_name": f"Shopper {user_id}", "language_code": "en"}
    return {
        "X-Telegram-Init-Data": shop.sign_init_data(user, TOKEN, query_id=f"AAH{user_id}"),
        **extra,
    }


# 1. Mini App catalog API #######################################################


def seed_catalog(conn, media_dir, cities=20, districts=5, products=10, units=3):
    """cities x districts x products offers, `units` units each, through the admin's own
    functions."""
    with shop.transaction(conn):
        product_ids = [
            shop.save_product(
                conn,
                media_dir,
                None,
                name=f"Product {p + 1:02d} – gift card",
                description=f"Product {p + 1}: a voucher for all our stores, valid "
                "for two years, delivered as a code in the chat.",
                price=f"{5 + p * 2.5:.2f}",
                active=True,
                photo=(png(rgb=(p * 20, 80, 160)), "png"),
            )
            for p in range(products)
        ]
        for c in range(cities):
            city_id = shop.add_city(conn, f"City {c + 1:02d}")
            for d in range(districts):
                district_id = shop.add_district(conn, city_id, f"District {d + 1}")
                for p, product_id in enumerate(product_ids):
                    shop.add_units(
                        conn,
                        media_dir,
                        product_id,
                        district_id,
                        "\n".join(f"CODE-{c}-{d}-{p}-{u}" for u in range(units)),
                    )


def bench_catalog(ctx):
    clients = 32
    warmup, duration = (0.5, 1.5) if ctx.quick else (2.0, 8.0)

    def seed(conn, db, port):
        seed_catalog(conn, db.parent / "media")

    # As the Mini App's browser asks: gzip welcome.
    headers = [
        init_headers(1000 + i, **{"Accept-Encoding": "gzip, deflate, br"}) for i in range(clients)
    ]

    def request(i):
        return ("GET", "/api/catalog", None, headers[i])

    with running_shop(ctx.tmp / "shop", seed) as (proc, fake, _):
        r = Client(proc.port).connect()
        status, body = r.request("GET", "/api/catalog", headers=headers[0])
        r.close()
        plain = gzip.decompress(body)
        offers = sum(
            len(d["products"]) for c in json.loads(plain)["cities"] for d in c["districts"]
        )
        assert status == 200 and offers == 1000, (status, offers, body[:200])
        shop_rps, shop_lat, shop_status, _ = hammer(proc.port, request, clients, warmup, duration)
    with bare_app(ctx.tmp, catalog_body=body) as port:
        bare_rps, bare_lat, bare_status, sample = hammer(port, request, clients, warmup, duration)
        assert sample == body
    note(
        f"catalog: {len(plain)} bytes, {len(body)} gzipped, {offers} offers; shop {shop_status}, "
        f"bare {bare_status}"
    )
    ok = set(shop_status) == {200} and set(bare_status) == {200}
    errors = "" if ok else f" (answers {shop_status})"
    r = shop_rps / bare_rps if bare_rps else 0
    return [
        Row(
            "1. Mini App catalog API",
            f"requests/s, {clients} keep-alive clients, {len(plain) // 1024} KB catalog "
            f"({len(body) // 1024} KB gzipped)",
            f"{shop_rps:.0f}{errors}",
            f"{bare_rps:.0f}",
            ratio(shop_rps, bare_rps),
            "≥ 0.9x",
            "yes" if ok and r >= 0.9 else "no",
        ),
        Row(
            "1. Mini App catalog API",
            "latency p50 / p99",
            f"{ms(pct(shop_lat, 0.5))} / {ms(pct(shop_lat, 0.99))}",
            f"{ms(pct(bare_lat, 0.5))} / {ms(pct(bare_lat, 0.99))}",
            ratio(pct(shop_lat, 0.5), pct(bare_lat, 0.5)),
            "",
            "",
        ),
    ]


# 4. Checkout under contention ###################################################


def bench_checkout(ctx):
    shoppers, units = (40, 10) if ctx.quick else (200, 50)
    answers, elapsed, problems = checkout_run(ctx.tmp / "shop", shoppers, units)
    sold = sum(a[0] == 200 for a in answers)
    sold_out = sum(a[0] == 409 for a in answers)
    other = shoppers - sold - sold_out
    rate = shoppers / elapsed
    lat = [a[2] for a in answers]
    for p in problems:
        note(f"checkout PROBLEM: {p}")
    note(
        f"checkout: {shoppers} answers in {elapsed:.2f} s, latency p50 {ms(pct(lat, 0.5))} p99 "
        f"{ms(pct(lat, 0.99))}"
    )
    met = "no" if problems else "yes"
    why = f"; FAILED: {'; '.join(problems)[:300]}" if problems else ""
    return [
        Row(
            "4. Checkout under contention",
            f"checkouts/s, {shoppers} shoppers paying by balance for {units} units",
            f"{rate:.0f}/s (p99 {ms(pct(lat, 0.99))})",
            "",
            "",
            "",
            "",
        ),
        Row(
            "4. Checkout under contention",
            "sold / sold out / other answers; ledger",
            f"{sold} / {sold_out} / {other}; "
            + ("ledger consistent" if not problems else "see below")
            + why,
            "",
            "",
            f"{units} / {shoppers - units} / 0, no unit twice, ledger consistent",
            met,
        ),
    ]


PRICE, FUNDS, FIRST_BUYER = 1500, 5000, 4_000_000


def checkout_run(tmp, shoppers, units, litestream=False):
    """`shoppers` buyers paying by balance at once for `units` units: (answers, seconds from the
    start to the last answer, problems)."""
    price, funds, first_user = PRICE, FUNDS, FIRST_BUYER

    def seed(conn, db, port):
        media = db.parent / "media"
        with shop.transaction(conn):
            city = shop.add_city(conn, "Berlin")
            district = shop.add_district(conn, city, "Mitte")
            product = shop.save_product(
                conn,
                media,
                None,
                name="Gift card 15",
                description="A voucher.",
                price=shop.cents_to_str(price),
                active=True,
            )
            shop.add_units(
                conn, media, product, district, "\n".join(f"GC-{i:04d}" for i in range(units))
            )
            for uid in range(first_user, first_user + shoppers):
                shop.touch_user(
                    conn, {"id": uid, "first_name": f"Shopper {uid}", "language_code": "en"}
                )
                shop.adjust_balance(conn, uid, funds, "bench funds")
        return product, district

    # A sandbox shop with a bot is in test mode: the benchmark's shoppers are its testers, so they
    # may buy.
    testers = ",".join(str(uid) for uid in range(first_user, first_user + shoppers))
    with running_shop(tmp, seed, litestream=litestream, TESTER_IDS=testers) as (
        proc,
        fake,
        (product, district),
    ):
        body = json.dumps(
            {
                "type": "product",
                "product_id": product,
                "district_id": district,
                "quantity": 1,
                "currency": "balance",
            }
        )
        answers = [None] * shoppers
        barrier = threading.Barrier(shoppers + 1)

        def buy(i):
            client = Client(proc.port).connect()
            headers = init_headers(first_user + i, **{"Content-Type": "application/json"})
            barrier.wait()
            t0 = time.monotonic()
            status, data = client.request("POST", "/api/payment/create", body, headers)
            answers[i] = (status, data, time.monotonic() - t0, time.monotonic())
            client.close()

        threads = [threading.Thread(target=buy, args=(i,), daemon=True) for i in range(shoppers)]
        for t in threads:
            t.start()
        barrier.wait()
        started = time.monotonic()
        for t in threads:
            t.join()
        elapsed = max(a[3] for a in answers) - started
        conn = shop.connect(str(tmp / "shop.db"))
        try:
            problems = check_checkout(conn, answers, first_user, units, price, funds)
        finally:
            conn.close()
    return answers, elapsed, problems


def check_checkout(conn, answers, first_user, units, price, funds):
    problems = []
    buyers = set()
    for i, (status, data, _, _) in enumerate(answers):
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if status == 200:
            if not (
                isinstance(payload, dict)
                and payload.get("status") == "paid"
                and payload.get("balance") == shop.cents_to_str(funds - price)
            ):
                problems.append(f"a 200 without a paid order: {data[:120]!r}")
            buyers.add(first_user + i)
        elif status == 409:
            if not (isinstance(payload, dict) and "sold out" in str(payload.get("error"))):
                problems.append(f"a 409 that is not a clean sold-out answer: {data[:120]!r}")
        else:
            problems.append(f"HTTP {status}: {data[:120]!r}")
    if len(buyers) != units:
        problems.append(f"{len(buyers)} shoppers told they bought, not {units}")
    sold = conn.execute("SELECT count(*) FROM stock_units WHERE status = 'sold'").fetchone()[0]
    left = conn.execute("SELECT count(*) FROM stock_units WHERE status != 'sold'").fetchone()[0]
    if (sold, left) != (units, 0):
        problems.append(f"{sold} units sold and {left} left, not {units} and 0")
    items, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT unit_id) FROM order_items"
    ).fetchone()
    if items != distinct:
        problems.append(f"a unit sold twice: {items} order items for {distinct} units")
    owners = {r[0] for r in conn.execute("SELECT user_id FROM orders WHERE status = 'paid'")}
    if owners != buyers or conn.execute("SELECT count(*) FROM orders").fetchone()[0] != units:
        problems.append(f"orders ({len(owners)} paid) do not match the shoppers told they bought")
    for uid, balance in conn.execute(
        "SELECT id, balance_cents FROM users WHERE id >= ?", (first_user,)
    ):
        if balance != (funds - price if uid in buyers else funds):
            problems.append(f"user {uid} has {balance} cents")
            break
    if shop.check_ledger(conn):
        problems.append(f"ledger inconsistent: {shop.check_ledger(conn)[:3]}")
    return problems


# 5. IPN storm ###################################################################


def create_topups(port, users, count, workers=4):
    """`count` sandbox top-up invoices (10.00 EUR in LTC) through the Mini App's API;
    [(user, provider id)]."""
    body = json.dumps({"amount": "10.00", "currency": "ltc"})
    made, failures, counter, lock = [], [], itertools.count(), threading.Lock()

    def run():
        client = Client(port).connect()
        while (i := next(counter)) < count:
            uid = users[i % len(users)]
            status, data = client.request(
                "POST",
                "/api/payment/refill",
                body,
                init_headers(uid, **{"Content-Type": "application/json"}),
            )
            with lock:
                if status == 200:
                    made.append((uid, json.loads(data)["payment_id"]))
                else:
                    failures.append((status, data[:200]))
        client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise AssertionError(f"{len(failures)} invoices failed, e.g. {failures[:3]}")
    return made


def seed_topups(conn, users, count, webhook_url):
    """`count` open 10.00 EUR top-up invoices in LTC, made as the shop makes them in sandbox mode:
    the checkout, the emulator's payment (sandbox_payments, as its POST /payment stores it) and the
    shop's payment row (record_payment), in one transaction. [The emulator's payment data]"""
    rate, places, _ = shop.SANDBOX_COINS["ltc"]
    pay_amount = str(
        (Decimal("10.00") / Decimal(rate)).quantize(
            Decimal(1).scaleb(-places), rounding="ROUND_CEILING"
        )
    )
    made, ids = [], random.Random(5).sample(range(10**9, 10**10), count)
    stamp = shop.now_iso()[:23] + "Z"
    with shop.transaction(conn):
        for i, provider_id in enumerate(ids):
            uid = users[i % len(users)]
            nonce = shop.create_checkout(conn, uid, "topup", 1000)
            data = {
                "payment_id": shop.Num(str(provider_id)),
                "payment_status": "waiting",
                "pay_address": shop._sandbox_address("ltc"),
                "price_amount": shop.Num("10.00"),
                "price_currency": "eur",
                "pay_amount": shop.Num(pay_amount),
                "actually_paid": shop.Num("0"),
                "pay_currency": "ltc",
                "order_id": f"topup-{nonce}",
                "order_description": "Balance top-up €10.00",
                "ipn_callback_url": webhook_url + "/webhook",
                "payin_extra_id": None,
                "purchase_id": shop.Num(str(provider_id + 7)),
                "network": "ltc",
                "network_precision": shop.Num(str(places)),
                "outcome_amount": shop.Num(pay_amount),
                "outcome_currency": "ltc",
                "created_at": stamp,
                "updated_at": stamp,
                "expiration_estimate_date": stamp,
            }
            conn.execute(
                "INSERT INTO sandbox_payments(id, data) VALUES (?, ?)",
                (provider_id, shop.encode_json(data)),
            )
            shop.record_payment(
                conn,
                kind="topup",
                user_id=uid,
                reference=f"topup-{nonce}",
                price_cents=1000,
                invoice=shop.SandboxPayments.new_invoice({**data, "payment_id": str(provider_id)}),
                expires_at=shop.now_iso(1800),
            )
            made.append(data)
    return made


def finished_ipn(data, secret):
    """The finished IPN NOWPayments (and the sandbox) sends for a payment: its body and
    signature."""
    body = {
        "payment_status": "finished",
        "pay_address": data["pay_address"],
        "price_amount": data["price_amount"],
        "fee": {
            "withdrawalFee": shop.Num("0"),
            "serviceFee": shop.Num("0"),
            "depositFee": shop.Num("0"),
            "currency": data["pay_currency"],
        },
        "payment_id": data["payment_id"],
        "price_currency": "eur",
        "pay_amount": data["pay_amount"],
        "actually_paid": data["pay_amount"],
        "pay_currency": data["pay_currency"],
        "order_id": data["order_id"],
        "order_description": data["order_description"],
        "purchase_id": data["purchase_id"],
        "outcome_amount": data["outcome_amount"],
        "outcome_currency": data["outcome_currency"],
        "payin_extra_id": data["payin_extra_id"],
        "parent_payment_id": None,
        "invoice_id": None,
        "payment_extra_ids": None,
        "updated_at": shop.Num(str(int(time.time() * 1000))),
    }
    # Numbers as NOWPayments (Node.js, JSON.stringify) writes them: 10, not 10.00.

    def js(v):
        if isinstance(v, dict):
            return {k: js(x) for k, x in v.items()}
        return shop.Num(shop.js_number(v)) if isinstance(v, shop.Num) else v

    text = shop.encode_json(js(body))
    return text.encode("utf-8"), shop.ipn_signature(shop.parse_json(text), secret)


def storm(port, deliveries, senders=8):
    """POST every (body, signature) to /webhook from `senders` keep-alive clients;
    (seconds, [(status, latency)])."""
    counter, answers = itertools.count(), [None] * len(deliveries)

    def run():
        client = Client(port).connect()
        while (i := next(counter)) < len(deliveries):
            body, signature = deliveries[i]
            t0 = time.monotonic()
            status, data = client.request(
                "POST",
                "/webhook",
                body,
                {"Content-Type": "application/json", "x-nowpayments-sig": signature},
            )
            answers[i] = (status, time.monotonic() - t0, data)
        client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(senders)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, answers


def register_chats(fake, users):
    """The shoppers have talked to the bot (so its messages to them can be delivered)."""
    for uid in users:
        fake.user_sends(uid, "/start", first_name=f"Shopper {uid}")
    for uid in users:
        fake.wait_message(uid, "", timeout=30)


def bench_ipn(ctx):
    payments = 200 if ctx.quick else 2000
    users = list(range(5_000_000, 5_000_000 + (10 if ctx.quick else 40)))
    shop_time, shop_answers, deliveries, problems, secret = ipn_run(
        ctx.tmp / "shop", payments, users
    )
    with bare_app(ctx.tmp, secret=secret["ipn"]) as port:
        bare_time, bare_answers = storm(port, deliveries)
    bad_bare = [a for a in bare_answers if a[0] != 200]
    if bad_bare:
        problems.append(f"the bare baseline refused {len(bad_bare)} IPNs: {bad_bare[0]}")
    for p in problems:
        note(f"ipn PROBLEM: {p}")
    n = len(deliveries)
    shop_rate, bare_rate = n / shop_time, n / bare_time
    shop_lat, bare_lat = [a[1] for a in shop_answers], [a[1] for a in bare_answers]
    p99 = pct(shop_lat, 0.99)
    note(
        f"ipn: shop p50 {ms(pct(shop_lat, 0.5))} p99 {ms(p99)} max {ms(max(shop_lat))}; "
        f"bare p50 {ms(pct(bare_lat, 0.5))} p99 {ms(pct(bare_lat, 0.99))}"
    )
    why = f"; FAILED: {'; '.join(problems)[:300]}" if problems else ""
    return [
        Row(
            "5. IPN storm",
            f"IPNs/s, {payments:,} payments x 3 deliveries shuffled, 8 senders",
            f"{shop_rate:.0f}",
            f"{bare_rate:.0f}",
            ratio(shop_rate, bare_rate),
            "",
            "",
        ),
        Row(
            "5. IPN storm",
            "latency p50 / p99",
            f"{ms(pct(shop_lat, 0.5))} / {ms(p99)}",
            f"{ms(pct(bare_lat, 0.5))} / {ms(pct(bare_lat, 0.99))}",
            ratio(p99, pct(bare_lat, 0.99)),
            "p99 < 50 ms",
            "yes" if p99 < 0.05 else "no",
        ),
        Row(
            "5. IPN storm",
            "payments applied exactly once; ledger",
            ("all once, ledger consistent" if not problems else "see below") + why,
            "",
            "",
            f"{payments:,} credited once each",
            "no" if problems else "yes",
        ),
    ]


def ipn_run(tmp, payments, users, litestream=False):
    """A storm of finished IPNs for `payments` top-ups, each sent 3 times, shuffled: (seconds,
    answers, the deliveries, problems, {"ipn": the secret they are signed with})."""
    secret = {}

    def seed(conn, db, port):
        secret["ipn"] = shop.stored_secret(
            str(db), "sandbox_ipn_secret"
        )  # the sandbox signs with its own
        for uid in users:
            shop.touch_user(
                conn, {"id": uid, "first_name": f"Shopper {uid}", "language_code": "en"}
            )
        # Made directly (2,000 through POST /api/payment/refill take ~13 s on 2 cores; the memory
        # benchmark creates its invoices over HTTP).
        return seed_topups(conn, users, payments, f"http://127.0.0.1:{port}")

    with running_shop(tmp, seed, litestream=litestream) as (proc, fake, made):
        register_chats(fake, users)
        conn = shop.connect(str(tmp / "shop.db"))
        try:
            bodies = [finished_ipn(data, secret["ipn"]) for data in made]
            deliveries = bodies * 3
            random.Random(6).shuffle(deliveries)
            shop_time, shop_answers = storm(proc.port, deliveries)
            problems = check_ipns(conn, shop_answers, payments)
        finally:
            conn.close()
    return shop_time, shop_answers, deliveries, problems, secret


def check_ipns(conn, answers, payments):
    problems = []
    refused = [a for a in answers if a[0] != 200]
    if refused:
        problems.append(
            f"{len(refused)} IPNs answered non-200, "
            f"e.g. HTTP {refused[0][0]} {refused[0][2][:100]!r}"
        )
    finished = conn.execute(
        "SELECT count(*) FROM payments WHERE status = 'finished' AND final_source = 'ipn'"
    ).fetchone()[0]
    if finished != payments:
        problems.append(f"{finished} payments finished by IPN, not {payments}")
    credits, total = conn.execute(
        "SELECT count(*), coalesce(sum(amount_cents), 0) FROM ledger WHERE kind = 'topup'"
    ).fetchone()
    if (credits, total) != (payments, payments * 1000):
        problems.append(
            f"{credits} top-up credits worth {total} cents, not {payments} worth {payments * 1000}"
        )
    twice = conn.execute(
        "SELECT count(*) FROM (SELECT reason, count(*) FROM ledger WHERE kind = 'topup' "
        "GROUP BY idempotency_key HAVING count(*) > 1)"
    ).fetchone()[0]
    if twice:
        problems.append(f"{twice} payments credited twice")
    applied = conn.execute(
        "SELECT count(*) FROM ipn_events WHERE verdict LIKE 'applied: waiting -> finished%'"
    ).fetchone()[0]
    unchanged = conn.execute(
        "SELECT count(*) FROM ipn_events WHERE verdict LIKE 'applied: unchanged%'"
    ).fetchone()[0]
    if (applied, unchanged) != (payments, 2 * payments):
        problems.append(
            f"IPN verdicts: {applied} applied, {unchanged} unchanged; expected {payments}, "
            f"{2 * payments}"
        )
    if shop.check_ledger(conn):
        problems.append(f"ledger inconsistent: {shop.check_ledger(conn)[:3]}")
    return problems


# 6. Memory ######################################################################

# The libraries the shop is built on, and a process that only imports them (the baseline).
BARE_LIBRARIES = (
    "import telebot, telebot.apihelper, telebot.types, bottle, waitress, waitress.trigger, "
    "apscheduler.schedulers.background, requests\n"
)
BARE_IMPORTS = (
    BARE_LIBRARIES + "print('bare is running', flush=True)\nimport time\ntime.sleep(600)\n"
)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def bare_rss():
    proc = subprocess.Popen([sys.executable, "-c", BARE_IMPORTS], stdout=subprocess.PIPE, text=True)
    try:
        if "bare is running" not in proc.stdout.readline():
            raise RuntimeError("the bare import process did not start")
        return rss_kb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


# What each part costs, in a process of its own: VmRSS after each step, and how many of the part
# the step made (JSON on stdout).
MEMORY_PARTS = (
    r"""
import json, sys, tempfile, threading
from pathlib import Path

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

steps = []
def step(name, made=1):
    steps.append((name, rss(), made))

"""
    + BARE_LIBRARIES
    + r"""step("libraries")
sys.path.insert(0, sys.argv[1])
import shop
step("import shop")
shop.limit_malloc_arenas()
with shop.speaking("en"):
    shop.fmt_eur(1250)
step("first price (Babel, CLDR)")
with shop.speaking("de"):
    shop.fmt_eur(1250)
step("another language")
import bottle
for tpl in sorted(Path(sys.argv[1], "templates").rglob("*.tpl")):
    bottle.SimpleTemplate(tpl.read_text(encoding="utf-8"), lookup=[str(tpl.parent)]).co
step("templates compiled")
folder = tempfile.TemporaryDirectory()
db = str(Path(folder.name) / "shop.db")
shop.init_db(db).close()
step("database ready")
conns = [shop.connect(db) for _ in range(10)]
for c in conns:
    c.execute("SELECT count(*) FROM users").fetchone()
step("each connection", 10)
go = threading.Event()
threads = [threading.Thread(target=go.wait, daemon=True) for _ in range(10)]
for t in threads:
    t.start()
step("each thread", 10)
print(json.dumps(steps), flush=True)
for c in conns:
    c.close()
folder.cleanup()
"""
)


def memory_parts():
    """[(part, KB one of it adds)] measured step by step in one process (see MEMORY_PARTS),
    from the libraries on."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PARTS, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    steps = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        (name, (kb - was) / made)
        for (_, was, _), (name, kb, made) in zip(steps, steps[1:], strict=False)
    ]


def bench_memory(ctx):
    quick = ctx.quick
    first_user, shoppers = 6_000_000, 20 if quick else 100
    bot_users = list(range(6_500_000, 6_500_000 + (10 if quick else 50)))
    secret = {}

    def seed(conn, db, port):
        media = db.parent / "media"
        seed_catalog(conn, media)
        secret["ipn"] = shop.stored_secret(str(db), "sandbox_ipn_secret")
        with shop.transaction(conn):
            product = conn.execute("SELECT id FROM products ORDER BY id LIMIT 1").fetchone()[0]
            district = conn.execute("SELECT id FROM districts ORDER BY id LIMIT 1").fetchone()[0]
            shop.add_units(
                conn, media, product, district, "\n".join(f"MEM-{i}" for i in range(shoppers))
            )
            for uid in range(first_user, first_user + shoppers):
                shop.touch_user(
                    conn, {"id": uid, "first_name": f"Shopper {uid}", "language_code": "en"}
                )
                shop.adjust_balance(conn, uid, 10000, "bench funds")
        return product, district

    testers = ",".join(
        str(uid) for uid in range(first_user, first_user + shoppers)
    )  # (test mode, as above)
    with running_shop(
        ctx.tmp / "shop",
        seed,
        wait_bot=False,
        MAX_OPEN_INVOICES=100,
        MAX_INVOICES_PER_HOUR=1000,
        TESTER_IDS=testers,
    ) as (proc, fake, (product, district)):
        started = rss_kb(proc.proc.pid)  # right after "shop is running"
        proc.wait_log("bot: @", timeout=20)
        # Bot traffic: shoppers open the bot and browse the catalog (answers and edits through the
        # API).
        register_chats(fake, bot_users)
        for uid in bot_users:
            fake.user_sends(uid, "🛒 Shop", first_name=f"Shopper {uid}")
        for uid in bot_users:
            fake.wait_message(uid, "Choose a city", timeout=30)
        for uid in bot_users:
            fake.click_button(uid, lambda t: t.startswith("City 02"))
        for uid in bot_users:
            fake.wait_message(uid, "City 02: choose a district", timeout=30)
        for uid in bot_users:
            fake.click_button(uid, lambda t: t.startswith("District 3"))
        for uid in bot_users:
            fake.wait_message(uid, "District 3", timeout=30)
        # The Mini App catalog under 32 clients.
        headers = [init_headers(first_user + i) for i in range(32)]
        hammer(
            proc.port,
            lambda i: ("GET", "/api/catalog", None, headers[i]),
            32,
            0,
            1.0 if quick else 3.0,
        )
        # Checkouts with the balance (deliveries go out through the outbox).
        body = json.dumps(
            {
                "type": "product",
                "product_id": product,
                "district_id": district,
                "quantity": 1,
                "currency": "balance",
            }
        )
        counter = itertools.count()

        def buy():
            client = Client(proc.port).connect()
            while (i := next(counter)) < shoppers:
                client.request(
                    "POST",
                    "/api/payment/create",
                    body,
                    init_headers(first_user + i, **{"Content-Type": "application/json"}),
                )
            client.close()

        threads = [threading.Thread(target=buy, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Top-ups paid by IPN, each delivered twice.
        register_chats(fake, range(first_user, first_user + shoppers))
        made = create_topups(
            proc.port, list(range(first_user, first_user + shoppers)), 100 if quick else 400
        )
        conn = shop.connect(str(ctx.tmp / "shop" / "shop.db"))
        try:
            bodies = [
                finished_ipn(
                    shop.parse_json(
                        conn.execute(
                            "SELECT data FROM sandbox_payments WHERE id = ?", (int(pid),)
                        ).fetchone()[0]
                    ),
                    secret["ipn"],
                )
                for _, pid in made
            ]
            storm(proc.port, bodies * 2)
            # Let the outbox send for a while (it keeps Telegram's 30 messages/s).
            deadline = time.monotonic() + (3 if quick else 8)
            while (
                time.monotonic() < deadline
                and conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[
                    0
                ]
            ):
                time.sleep(0.2)
            pending = conn.execute(
                "SELECT count(*) FROM outbox WHERE status = 'pending'"
            ).fetchone()[0]
            sent = conn.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()[0]
        finally:
            conn.close()
        loaded = rss_kb(proc.proc.pid)
        note(
            f"memory: outbox {sent} sent, {pending} still pending when measured; fake got "
            f"{fake.sent_count} sends"
        )
    bare = bare_rss()
    parts = memory_parts()

    def mb(kb):
        return f"{kb / 1024:.1f} MB"

    costs = "; ".join(
        f"{name} +{kb / 1024:.{2 if name.startswith('each') else 1}f} MB" for name, kb in parts
    )

    return [
        Row(
            "6. Memory",
            "VmRSS right after start",
            mb(started),
            mb(bare),
            ratio(started, bare),
            "≤ 1.3x",
            "yes" if started <= 1.3 * bare else "no",
        ),
        Row(
            "6. Memory",
            "VmRSS after mixed load (catalog, checkouts, IPNs, bot, outbox)",
            mb(loaded),
            mb(bare),
            ratio(loaded, bare),
            "≤ 1.8x",
            "yes" if loaded <= 1.8 * bare else "no",
        ),
        Row("6. Memory", "what each part adds (measured apart, in steps)", costs, "", "", "", ""),
    ]


def bench_litestream(ctx):
    """The IPN storm and the checkout race with the shop run by Litestream (replicating to a
    folder) against the same without it, in this run."""
    if not shutil.which("litestream"):
        note("litestream: not installed (pip install -r requirements-litestream.txt); skipped")
        return []
    payments, shoppers, units = (200, 40, 10) if ctx.quick else (1000, 200, 50)
    users = list(range(5_000_000, 5_000_000 + 10))
    ipn, buy = {}, {}
    for under in (False, True):
        name = "litestream" if under else "plain"
        seconds, answers, _, problems, _ = ipn_run(ctx.tmp / f"ipn-{name}", payments, users, under)
        ipn[under] = (pct([a[1] for a in answers], 0.99), len(answers) / seconds, problems)
        answers, elapsed, problems = checkout_run(ctx.tmp / f"buy-{name}", shoppers, units, under)
        buy[under] = (shoppers / elapsed, pct([a[2] for a in answers], 0.99), problems)
    problems = ipn[True][2] + ipn[False][2] + buy[True][2] + buy[False][2]
    for p in problems:
        note(f"litestream PROBLEM: {p}")
    return [
        Row(
            "8. Under Litestream",
            f"IPN storm p99 ({payments:,} payments x 3), IPNs/s",
            f"{ms(ipn[True][0])}, {ipn[True][1]:.0f}/s",
            f"{ms(ipn[False][0])}, {ipn[False][1]:.0f}/s (without)",
            ratio(ipn[True][0], ipn[False][0]),
            "p99 < 100 ms",
            "yes" if ipn[True][0] < 0.1 and not ipn[True][2] + ipn[False][2] else "no",
        ),
        Row(
            "8. Under Litestream",
            f"checkouts/s, {shoppers} shoppers by balance for {units} units (p99)",
            f"{buy[True][0]:.0f}/s ({ms(buy[True][1])})",
            f"{buy[False][0]:.0f}/s ({ms(buy[False][1])}) (without)",
            ratio(buy[True][0], buy[False][0]),
            f"{units} sold, ledger consistent",
            "no" if buy[True][2] + buy[False][2] else "yes",
        ),
    ]


BENCHMARKS = {
    "catalog": bench_catalog,
    "checkout": bench_checkout,
    "ipn": bench_ipn,
    "memory": bench_memory,
    "litestream": bench_litestream,
}
