"""Fixtures: real database files, the Bot API stand-in, and the real shop as a subprocess."""

import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pytest
import requests

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import shop  # noqa: E402
import harness  # noqa: E402
from harness import ROOT, TESTERS, TESTS, TOKEN, ShopProcess, free_port, png  # noqa: E402,F401


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chaos: kill -9, outages and full disks (slow; CI runs them)"
    )
    config.addinivalue_line(
        "markers", "fuzz: generated inputs for everything the shop parses (CI runs them)"
    )


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture says so
    expect = sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BROWSER_WAIT_MS = 10000


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through Playwright. Without it the browser tests are skipped with
    a loud warning, except in CI, where that is a failure."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif sync_playwright is None:
        reason = "the playwright package is missing (pip install -r requirements-dev.txt)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"The browser tests cannot run in CI: {reason}")
        message = f"!!! BROWSER TESTS SKIPPED: {reason} !!!"
        warnings.warn(pytest.PytestWarning(message), stacklevel=2)
        pytest.skip(message)
    expect.set_options(timeout=BROWSER_WAIT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def write_catalog(folder, data, images=()):
    """Write a catalog file (and the named PNG images) into folder; return its path."""
    folder = Path(folder)
    for i, name in enumerate(images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(rgb=(i * 40 % 256, 100, 200)))
    path = folder / "catalog.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# A catalog whose names would break an unescaped message: non-Latin letters,
# HTML specials, Markdown specials; plus a city without stock and a product
# that has none.
HOSTILE = {
    "cities": [
        {"name": "Łódź <Centrum>", "districts": ["Bałuty & Widzew", "Śródmieście"]},
        {"name": "Berlin", "districts": ["Mitte", "Kreuzberg_36"]},
        {"name": "Empty town", "districts": ["Nowhere"]},
    ],
    "products": [
        {
            "name": "gift_card *25*",
            "description": "A <b>bold</b> claim & [link](x) _under_",
            "price": "25.00",
            "photo": "img/gift.png",
            "stock": [
                {"city": "Łódź <Centrum>", "district": "Bałuty & Widzew", "content": "CODE-<1>&_*"},
                {"city": "Łódź <Centrum>", "district": "Bałuty & Widzew", "content": "CODE-2"},
                {"city": "Berlin", "district": "Mitte", "content": "CODE-3"},
            ],
        },
        {
            "name": "Kaffee «Grün» 250g",
            "description": "Bohnen.",
            "price": "12.90",
            "stock": [
                {
                    "city": "Berlin",
                    "district": "Kreuzberg_36",
                    "content": "Locker 7 <door>\nCode: 11&22",
                    "media": "img/locker.png",
                }
            ],
        },
        {
            "name": "Плакат A2",
            "description": "",
            "price": 9.5,
            "stock": [
                {
                    "city": "Łódź <Centrum>",
                    "district": "Śródmieście",
                    "content": "https://example.com/p?a=1&b=2",
                },
                {
                    "city": "Łódź <Centrum>",
                    "district": "Śródmieście",
                    "content": "https://example.com/p?a=2&b=3",
                },
            ],
        },
        {"name": "Sold-out e-book", "description": "None left.", "price": "5", "stock": []},
    ],
}
HOSTILE_IMAGES = ("img/gift.png", "img/locker.png")


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "shop.db"
    shop.init_db(str(path)).close()
    return path


@pytest.fixture
def conn(db_path):
    """A connection to a fresh shop database; after the test every balance must equal its ledger
    sum."""
    c = shop.connect(str(db_path))
    yield c
    assert shop.check_ledger(c) == []
    c.close()


@pytest.fixture
def hostile_catalog(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    return write_catalog(folder, HOSTILE, HOSTILE_IMAGES)


@pytest.fixture
def languages(tmp_path, monkeypatch):
    """The shop speaks German, Polish and Portuguese besides English, from throwaway catalogs under
    a folder of the test's own (shop.LOCALES_DIR); returns their codes. Only this process (an
    in-process shop) sees them, not a subprocess."""
    import throwaway_catalogs

    codes = ("de", "pl", "pt")
    folder = tmp_path / "locales"
    for code in codes:  # translating nothing: the formats, owner's texts and names in them
        throwaway_catalogs.write_texts(folder, code)
    monkeypatch.setattr(shop, "LOCALES_DIR", folder)  # (the shop keeps catalogs per folder)
    yield codes


@pytest.fixture
def fake_tg():
    from fake_telegram import FakeTelegram

    fake = FakeTelegram(token=TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def shop_env(tmp_path, fake_tg):
    """Environment for a shop subprocess talking to the Bot API stand-in."""
    return harness.shop_env(tmp_path, fake_tg.base_url)


@pytest.fixture
def run_shop(tmp_path, shop_env):
    """Factory: start the real shop (no demo catalog) against the stand-in; stopped at teardown."""
    procs = []

    def start(*args, env=None, ready="bot: @", **kw):
        p = ShopProcess(tmp_path, {**shop_env, **(env or {})})
        procs.append(p)
        return p.start("--no-demo", *args, ready=ready, **kw)

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def make_shop(tmp_path):
    """Factory: the real shop started in this process (web server, jobs, and the bot when BOT_TOKEN
    is given) on its own database; stopped at teardown, after checking every balance against its
    ledger."""
    shops = []

    def make(env=None, demo=False, name="shop"):
        base = {
            "SHOP_DB": str(tmp_path / f"{name}.db"),
            "PORT": str(free_port()),
            "TESTER_IDS": TESTERS,
        }
        config = shop.load_config(environ={**base, **(env or {})}, env_file=None)
        s = shop.Shop(config, demo=demo).start()
        shops.append(s)
        return s

    yield make
    for s in shops:
        s.stop()
        conn = shop.connect(s.config.shop_db)
        assert shop.check_ledger(conn) == []
        conn.close()


# Helpers the test modules share ##############################################

# The admin password of the tests' shops that log in to the admin over HTTP (harness.AdminClient).
ADMIN_PASSWORD = "correct horse battery"


# The database: a catalog, shoppers, and what a failed purchase must leave untouched.


def seed(
    conn,
    units=(("Berlin", "Mitte", "Gift card", 2500, 3),),
    media=None,
    content=lambda n, product, district, i: f"{product}-{district}-{i}",
):
    """Cities, districts, products and available units: [(city, district, product, price, count)];
    the i-th unit of the n-th line holds content(n, product, district, i)."""
    ids = {}
    with shop.transaction(conn):
        for n, (city, district, product, price, count) in enumerate(units):
            conn.execute("INSERT OR IGNORE INTO cities(name) VALUES (?)", (city,))
            city_id = conn.execute("SELECT id FROM cities WHERE name = ?", (city,)).fetchone()[0]
            conn.execute(
                "INSERT OR IGNORE INTO districts(city_id, name) VALUES (?, ?)", (city_id, district)
            )
            district_id = conn.execute(
                "SELECT id FROM districts WHERE city_id = ? AND name = ?", (city_id, district)
            ).fetchone()[0]
            conn.execute(
                "INSERT OR IGNORE INTO products(name, price_cents, created_at) VALUES (?, ?, ?)",
                (product, price, shop.now_iso()),
            )
            product_id = conn.execute(
                "SELECT id FROM products WHERE name = ?", (product,)
            ).fetchone()[0]
            for i in range(count):
                conn.execute(
                    "INSERT INTO stock_units(product_id, district_id, content, media, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        product_id,
                        district_id,
                        content(n, product, district, i),
                        media,
                        shop.now_iso(),
                    ),
                )
            ids[(product, district)] = (product_id, district_id)
    return ids


def user(conn, user_id=1, balance=0):
    shop.touch_user(conn, {"id": user_id, "first_name": f"U{user_id}"})
    if balance:
        shop.adjust_balance(conn, user_id, balance, "test funds")
    return user_id


def snapshot(conn):
    """Everything a failed purchase must leave untouched."""
    return {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
        for t in (
            "users",
            "stock_units",
            "orders",
            "order_items",
            "ledger",
            "outbox",
            "basket_items",
            "payments",
        )
    }


def rows(snap):
    return {t: [tuple(r) for r in v] for t, v in snap.items()}


# Payments: invoices with made-up provider answers, IPNs, the sandbox provider's view.

# Made-up provider payment ids, unique within the test run.
PAYMENT_IDS = iter(range(7000000000, 8000000000))


def made_up_invoice(pay_amount="0.0004", coin="btc"):
    """The sandbox provider's answer to an invoice request, made up: a NewInvoice."""
    return shop.SandboxPayments.new_invoice(
        {
            "payment_id": str(next(PAYMENT_IDS)),
            "pay_amount": pay_amount,
            "pay_currency": coin,
            "pay_address": "addr",
        }
    )


def order_payment(conn, uid, lines, pay_amount="0.0004", coin="btc", minutes=30):
    """An invoice as the desk opens it, with a made-up provider answer."""
    total = shop.price_lines(conn, lines)[0]
    nonce = shop.create_checkout(conn, uid, "order", total, lines)
    return checkout_payment(conn, uid, nonce, pay_amount, coin, minutes)


def checkout_payment(conn, uid, nonce, pay_amount="0.0004", coin="btc", minutes=30):
    """The invoice the desk opens for a checkout the test made (its units reserved for
    `minutes`), with a made-up provider answer."""
    order_id, total, _ = shop.reserve_for_checkout(conn, uid, nonce, minutes)
    return shop.record_payment(
        conn,
        kind="order",
        user_id=uid,
        reference=f"order-{order_id}",
        price_cents=total,
        invoice=made_up_invoice(pay_amount, coin),
        expires_at=shop.now_iso(minutes * 60),
        order_id=order_id,
    )


def topup_payment(conn, uid, cents, pay_amount="0.0004", coin="btc"):
    return shop.record_payment(
        conn,
        kind="topup",
        user_id=uid,
        reference=f"topup-{next(PAYMENT_IDS)}",
        price_cents=cents,
        invoice=made_up_invoice(pay_amount, coin),
        expires_at=shop.now_iso(1800),
    )


def news(payment, status, paid=None, **extra):
    """What the provider says about a payment (IPN or GET /payment)."""
    data = {
        "payment_id": shop.Num(payment["provider_id"]),
        "payment_status": status,
        "pay_currency": payment["pay_currency"],
        "price_amount": shop.Num(shop.cents_to_str(payment["price_cents"])),
        "price_currency": "eur",
        "order_id": payment["reference"],
        "pay_amount": shop.Num(payment["pay_amount"]),
    }
    if paid is not None:
        data["actually_paid"] = shop.Num(paid)
    data.update(extra)
    return data


def apply(conn, data, source="ipn", owners=(900,)):
    """Apply what the provider says (news(...)) as the desk does, owner 900 told of problems."""
    return shop.apply_payment_status(
        conn, shop.SandboxPayments.news(data), source=source, owners=owners
    )


def lapse(conn):
    """Every reservation runs out now, as the scheduler would find it; how many orders lapsed."""
    with shop.transaction(conn):
        conn.execute(
            "UPDATE stock_units SET reserved_until = ? WHERE status = 'reserved'",
            (shop.now_iso(-1),),
        )
    return shop.release_expired_reservations(conn)


def post_ipn(s, data=None, *, body=None, signature="sign", secret=None):
    """POST an IPN to a shop's /webhook, signed with its IPN secret unless told otherwise."""
    body = body if body is not None else shop.encode_json(data).encode()
    headers = {"Content-Type": "application/json"}
    if signature == "sign":
        signature = shop.ipn_signature(shop.parse_json(body.decode()), secret or s.ipn_secret)
    if signature is not None:
        headers["x-nowpayments-sig"] = signature
    return requests.post(s.url + "/webhook", data=body, headers=headers, timeout=10)


def emulator(np_shop, payment):
    """The payment as the sandbox shop `np_shop` (acting as NOWPayments) holds it."""
    c = shop.connect(np_shop.config.shop_db)
    data = shop.parse_json(
        c.execute(
            "SELECT data FROM sandbox_payments WHERE id = ?", (int(payment["provider_id"]),)
        ).fetchone()[0]
    )
    c.close()
    return data


def wait_for_row(conn, sql, args=(), timeout=10):
    """Poll the database for a row that a background thread writes (nothing signals it)."""
    deadline = time.monotonic() + timeout
    while (row := conn.execute(sql, args).fetchone()) is None:
        assert time.monotonic() < deadline, f"no row for {sql}"
        time.sleep(0.02)
    return row


# The bot: a Telegram user talking to it through the stand-in.


class Shopper:
    """One Telegram user talking to the bot through the stand-in."""

    def __init__(self, fake, user_id, name="Ann", language_code="en"):
        self.fake, self.id, self.name = fake, user_id, name
        self.language_code = language_code  # Telegram's, as the app sends it ("de", "pt-br")

    def send(self, text, expect=""):
        """Send a message; return the bot's first reply after it that contains `expect`."""
        sent = self.fake.user_sends(
            self.id, text, first_name=self.name, language_code=self.language_code
        )
        return self.fake.wait_for(
            lambda: next(
                (
                    m
                    for m in self.fake.messages(self.id)
                    if m.message_id > sent["message_id"] and expect in m.content
                ),
                None,
            ),
            what=f"a reply to {text!r} containing {expect!r}",
        )

    def click(self, label):
        """Press an inline button on the newest message that has it; return the callback's
        notice."""
        cq = self.fake.click_button(self.id, label)
        self.fake.wait_for(lambda: cq in self.fake.callback_answers, what=f"an answer to {label!r}")
        return self.fake.callback_answers[cq].get("text")

    def open_product(self, city, district, label):
        """From a new 🛒 Shop message, through city and district to a product card."""
        self.send("🛒 Shop", "Choose a city")
        for step in (city, district, label):
            self.click(step)
        return self.screen

    def press(self, button):
        """Press a button dict (from Message.buttons) on the current screen."""
        cq = self.fake.user_clicks(self.id, self.screen.message_id, button["callback_data"])
        self.fake.wait_for(
            lambda: cq in self.fake.callback_answers, what=f"an answer to {button['text']!r}"
        )
        return self.fake.callback_answers[cq].get("text") or ""

    @property
    def screen(self):
        return self.fake.last_message(self.id)

    def buttons(self):
        return self.screen.button_texts


# Languages: throwaway catalogs (tests/throwaway_catalogs.py) in a temporary locales folder.


@pytest.fixture
def shop_languages(tmp_path):
    """Factory: shop_languages("de", "pl", de={msgid: text}) makes the shop speak those languages
    from throwaway catalogs (German and Polish come with translations for the shopper's walk; more
    texts per language by keyword). The real locales folder is back after the test."""
    import throwaway_catalogs

    before, made = shop.LOCALES_DIR, itertools.count()

    def speak(*codes, **texts):
        # a new folder each time: the shop keeps the catalogs it read per folder
        folder = tmp_path / f"locales-{next(made)}"
        for code in codes:
            given = {**throwaway_catalogs.TEXTS.get(code, {}), **texts.get(code, {})}
            throwaway_catalogs.write_catalog(folder, code, given)
        shop.LOCALES_DIR = folder
        return folder

    yield speak
    shop.LOCALES_DIR = before
