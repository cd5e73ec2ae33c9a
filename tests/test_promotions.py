"""Discount codes, the shopper's side: the one rounding rule, every rule of a code in the bot and
in the Mini App, each way to pay, the race for the last uses, invoices that lapse or are cancelled,
refunds, and the upgrade of a shop from before codes existed."""

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import shop
from conftest import (
    TOKEN,
    Shopper,
    apply,
    checkout_payment,
    lapse,
    news,
    rows,
    seed,
    snapshot,
    user,
    wait_for_row,
)
from harness import TESTERS

ANN = {"id": 701, "first_name": "Ann", "language_code": "en"}
BOB = {"id": 702, "first_name": "Bob", "language_code": "en"}


def add_code(conn, code, kind="percent", value=10, **fields):
    """A discount code straight into the table (the owner's pages are tested elsewhere)."""
    now = shop.now_iso()
    values = {
        "code": code,
        "kind": kind,
        "value": value,
        "min_total_cents": 0,
        "is_active": 1,
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    for key in ("product_ids", "city_ids"):
        if isinstance(values.get(key), list):
            values[key] = json.dumps(values[key])
    with shop.transaction(conn):
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        return conn.execute(
            f"INSERT INTO promo_codes({names}) VALUES ({marks})", tuple(values.values())
        ).lastrowid


# The one rounding rule ##########################################################################


def test_a_percentage_rounds_down_and_its_split_adds_up_to_the_cent(conn):
    ids = seed(
        conn,
        [
            ("Berlin", "Mitte", "Coffee beans", 333, 5),
            ("Berlin", "Mitte", "Poster", 1999, 2),
            ("Hamburg", "Altona", "E-book", 700, 2),
        ],
    )
    uid = user(conn, 1, balance=100000)
    code = add_code(conn, "TEN", value=10)
    lines = [(*ids[("Coffee beans", "Mitte")], 3), (*ids[("Poster", "Mitte")], 2)]
    quote = shop.quote_lines(conn, uid, lines)
    assert quote.discount_cents == 0 and quote.code == ""  # no code on the basket yet
    shop.apply_promo_code(conn, uid, "ten", lines)  # any case
    quote = shop.quote_lines(conn, uid, lines)
    # 10% of 3 × 3.33 + 2 × 19.99 = 49.97 is 4.997: rounded down to 4.99.
    assert (quote.subtotal_cents, quote.discount_cents, quote.total_cents) == (4997, 499, 4498)
    order_id = shop.buy_with_balance(
        conn, uid, lines, expected_total_cents=4498, promo_id=quote.promo_id
    )
    order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    assert (order["total_cents"], order["discount_cents"], order["promo_id"]) == (4498, 499, code)
    shares = [
        tuple(r)
        for r in conn.execute(
            "SELECT price_cents, discount_cents FROM order_items WHERE order_id = ? ORDER BY id",
            (order_id,),
        )
    ]
    # In proportion to the prices (333: 33.3 each, 1999: 199.9 each), largest remainder first.
    assert shares == [(333, 33), (333, 33), (333, 33), (1999, 200), (1999, 200)]
    assert sum(d for _, d in shares) == 499
    assert shop.get_user(conn, uid)["balance_cents"] == 100000 - 4498
    assert shop.get_user(conn, uid)["promo_id"] is None  # the code went into the order

    # A fixed amount never takes more than the covered items cost, and leaves at least a cent.
    add_code(conn, "FIVER", kind="fixed", value=500, product_ids=[ids[("E-book", "Altona")][0]])
    ebook = [(*ids[("E-book", "Altona")], 1), (*ids[("Coffee beans", "Mitte")], 1)]
    shop.apply_promo_code(conn, uid, "FIVER", ebook)
    assert shop.quote_lines(conn, uid, ebook).discount_cents == 500
    add_code(conn, "HUGE", kind="fixed", value=90000)
    shop.apply_promo_code(conn, uid, "huge", ebook)
    quote = shop.quote_lines(conn, uid, ebook)
    assert (quote.discount_cents, quote.total_cents) == (1032, 1)
    assert shop.split_discount(1032, [700, 333]) == [699, 333]
    assert shop.split_discount(10, [100, 100, 100]) == [4, 3, 3]  # ties to the earlier unit
    assert shop.split_discount(7, [0, 50, 50]) == [0, 4, 3]  # an uncovered unit gets nothing


def test_stars_are_the_list_stars_in_proportion_rounded_up():
    assert shop.stars_after_discount(2500, 3750, 1250) == 1875  # 25% off
    assert shop.stars_after_discount(3, 999, 1) == 3  # 2.997 rounds up
    assert shop.stars_after_discount(1, 1, 999) == 1  # never 0
    assert shop.stars_after_discount(77, 1000, 0) == 77


# Every rule in the bot and in the Mini App ######################################################


@pytest.fixture
def app(make_shop, fake_tg):
    """A sandbox shop with its bot (the stand-in) and its Mini App, selling coffee in Berlin and
    posters in Hamburg."""
    racers = ",".join(str(10000 + i) for i in range(200))  # may buy in the sandbox
    s = make_shop(
        env={
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": fake_tg.base_url,
            "TESTER_IDS": f"{TESTERS},{racers}",
        }
    )
    s.conn = shop.connect(s.config.shop_db)
    s.ids = seed(
        s.conn,
        [
            ("Berlin", "Mitte", "Coffee beans", 1250, 30),
            ("Hamburg", "Altona", "Poster", 1900, 30),
        ],
    )
    s.fake = fake_tg
    yield s
    s.conn.close()


def call(s, method, path, user_=ANN, timeout=30, **kw):
    headers = {"X-Telegram-Init-Data": shop.sign_init_data(user_, TOKEN, query_id="AAH")}
    return requests.request(method, s.url + path, headers=headers, timeout=timeout, **kw)


def ok(r):
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def put(s, product, place, quantity, user_=ANN):
    product_id, district_id = s.ids[(product, place)]
    body = {"product_id": product_id, "district_id": district_id, "quantity": quantity}
    return ok(call(s, "POST", "/api/basket", user_, json=body))


def settled(s):
    """The shop's connection once its outbox has nothing left to send (the sender thread would
    otherwise change rows between two snapshots)."""
    wait_for_row(
        s.conn, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')"
    )
    return s.conn


def paid_order_with(s, code_id, user_id):
    """An order paid with a code (a use), by someone."""
    shop.touch_user(s.conn, {"id": user_id, "first_name": "X"})
    shop.adjust_balance(s.conn, user_id, 5000, "test funds")
    lines = [(*s.ids[("Coffee beans", "Mitte")], 1)]
    shop.buy_with_balance(s.conn, user_id, lines, promo_id=code_id)


# (what the code is like, what else must hold, the words of the refusal)
RULES = {
    "unknown": ({"code": "ELSEWHERE"}, None, "There is no promo code nope."),
    "paused": ({"is_active": 0}, None, "is paused"),
    "not yet": ({"starts_at": "2099-01-01T00:00:00Z"}, None, "can be used from 1 Jan 2099"),
    "over": ({"ends_at": "2020-01-01T00:00:00Z"}, None, "expired on 1 Jan 2020"),
    "used up": ({"max_uses": 1}, "someone", "has been used up"),
    "per shopper": ({"max_uses_per_user": 1}, "me", "once per shopper"),
    "other products": ({"product_ids": "poster"}, None, "not valid for anything in your basket"),
    "other cities": ({"city_ids": "hamburg"}, None, "not valid for anything in your basket"),
    "minimum": ({"min_total_cents": 5000}, None, "needs a basket of at least €50.00"),
}


def code_for_rule(s, rule):
    fields, needs, _ = RULES[rule]
    fields = dict(fields)
    if fields.get("product_ids") == "poster":
        fields["product_ids"] = [s.ids[("Poster", "Altona")][0]]
    if fields.get("city_ids") == "hamburg":
        fields["city_ids"] = [
            s.conn.execute("SELECT id FROM cities WHERE name = 'Hamburg'").fetchone()[0]
        ]
    code = fields.pop("code", "NOPE")
    code_id = add_code(s.conn, code, **fields)
    add_code(s.conn, "WELCOME5", kind="fixed", value=500)  # so that checkout offers a code
    if needs == "someone":
        Shopper(s.fake, 709, "Zoe").send("/start", "Welcome")  # a chat the receipt can go to
        paid_order_with(s, code_id, 709)
    if needs == "me":
        paid_order_with(s, code_id, ANN["id"])
    return "nope"


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_refuses_a_code_with_its_reason_in_the_mini_app(app, rule):
    typed = code_for_rule(app, rule)
    shop.touch_user(app.conn, ANN)
    put(app, "Coffee beans", "Mitte", 2)
    before = rows(snapshot(settled(app)))
    r = call(app, "POST", "/api/basket/promo", json={"code": typed})
    assert r.status_code == 409, r.text
    assert RULES[rule][2] in r.json()["error"], r.json()
    assert rows(snapshot(app.conn)) == before  # nothing changed
    basket = ok(call(app, "GET", "/api/basket"))
    assert basket["promo"] is None and basket["total_text"] == "€25.00"


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_refuses_a_code_with_its_reason_in_the_bot(app, rule):
    typed = code_for_rule(app, rule)
    ann = Shopper(app.fake, ANN["id"], "Ann")
    ann.open_product("Berlin", "Mitte", "Coffee beans · €12.50")
    ann.click("➕ Add to basket")
    ann.click("🧺 Basket")
    ann.click("➕")
    ann.click("💳 Checkout")
    assert "Total: €25.00" in ann.screen.text
    before = rows(snapshot(settled(app)))
    ann.click("🏷 Promo code")
    assert "Send your promo code" in ann.screen.text
    reply = ann.send(typed, "⚠️")
    assert RULES[rule][2] in reply.text and "Send another code" in reply.text
    assert rows(snapshot(app.conn))["orders"] == before["orders"]
    assert shop.get_user(app.conn, ANN["id"])["promo_id"] is None


def test_a_code_applied_in_the_bot_pays_less_from_the_balance_and_the_receipt_says_so(app):
    add_code(app.conn, "Spring10", value=10)
    shop.touch_user(app.conn, ANN)
    shop.adjust_balance(app.conn, ANN["id"], 10000, "test funds")
    ann = Shopper(app.fake, ANN["id"], "Ann")
    ann.open_product("Berlin", "Mitte", "Coffee beans · €12.50")
    ann.click("⚡ Buy now")
    ann.click("🏷 Promo code")
    checkout = ann.send("SPRING10", "Checkout")
    assert "Code Spring10 applied" in checkout.text
    assert "Subtotal: €12.50\n🏷 Code Spring10: −€1.25\nTotal: €11.25" in checkout.text
    assert "✖️ Remove code Spring10" in checkout.button_texts
    assert ann.click("💰 Pay €11.25 from balance").startswith("Order #")
    receipt = app.fake.wait_message(ANN["id"], "is paid")
    assert "€11.25 from your balance" in receipt.content
    assert "🏷 Code Spring10: −€1.25" in receipt.content
    assert shop.get_user(app.conn, ANN["id"])["balance_cents"] == 10000 - 1125
    order = app.conn.execute("SELECT * FROM orders").fetchone()
    assert (order["total_cents"], order["discount_cents"]) == (1125, 125)
    ann.send("📦 Orders", "Your orders")
    ann.click(lambda b: b.startswith(f"#{order['id']} · "))
    assert "🏷 Code Spring10: −€1.25\nTotal: €11.25" in ann.screen.text


def test_removing_a_code_in_the_bot_puts_the_list_price_back(app):
    add_code(app.conn, "TAKE5", kind="fixed", value=500)
    shop.touch_user(app.conn, ANN)
    shop.adjust_balance(app.conn, ANN["id"], 10000, "test funds")
    ann = Shopper(app.fake, ANN["id"], "Ann")
    ann.open_product("Berlin", "Mitte", "Coffee beans · €12.50")
    ann.click("⚡ Buy now")
    ann.click("🏷 Promo code")
    ann.send("take5", "Total: €7.50")
    assert ann.click("✖️ Remove code TAKE5") == "The code was removed."
    assert "Total: €12.50" in ann.screen.text and "🏷 Promo code" in ann.buttons()
    assert shop.get_user(app.conn, ANN["id"])["promo_id"] is None


def test_the_mini_app_basket_shows_the_discount_and_every_way_pays_it(app):
    add_code(app.conn, "COFFEE", kind="fixed", value=300, product_ids=[1])
    shop.touch_user(app.conn, ANN)
    shop.adjust_balance(app.conn, ANN["id"], 10000, "test funds")
    put(app, "Coffee beans", "Mitte", 2)
    put(app, "Poster", "Altona", 1)
    basket = ok(call(app, "POST", "/api/basket/promo", json={"code": "coffee"}))
    assert basket["promo"] == {
        "code": "COFFEE",
        "discount": "3.00",
        "discount_text": "€3.00",
        "subtotal": "44.00",
        "subtotal_text": "€44.00",
        "total": "41.00",
        "total_text": "€41.00",
        "refused": None,
    }
    assert (basket["subtotal_text"], basket["total_text"]) == ("€44.00", "€41.00")
    assert basket["payment"]["stars"] == 2050  # 2,200 list Stars × 41/44, rounded up
    quote = ok(call(app, "POST", "/api/checkout/quote", json={"type": "basket"}))
    assert quote["total_text"] == "€41.00" and quote["subtotal_text"] == "€44.00"
    assert quote["ways"]["balance"]["total_text"] == "€41.00"
    assert quote["ways"]["balance"]["discount_text"] == "€3.00"
    # Taking the coffee out leaves nothing the code covers: the basket says why, at list price.
    coffee = next(i for i in basket["items"] if i["name"] == "Coffee beans")
    basket = ok(call(app, "DELETE", f"/api/basket/{coffee['id']}"))
    assert basket["promo"]["refused"] == "The code COFFEE is not valid for anything in your basket."
    assert basket["total_text"] == "€19.00"
    put(app, "Coffee beans", "Mitte", 1)
    paid = ok(
        call(app, "POST", "/api/payment/create", json={"type": "basket", "currency": "balance"})
    )
    assert paid["balance"] == f"{(10000 - 2850) / 100:.2f}"  # 12.50 + 19.00 - 3.00
    order = app.conn.execute("SELECT * FROM orders WHERE id = ?", (paid["order_id"],)).fetchone()
    assert (order["total_cents"], order["discount_cents"]) == (2850, 300)
    assert ok(call(app, "GET", "/api/orders"))["orders"][0]["discount_text"] == "€3.00"
    # DELETE takes a code off the basket.
    add_code(app.conn, "AGAIN", value=20)
    put(app, "Poster", "Altona", 1)
    assert ok(call(app, "POST", "/api/basket/promo", json={"code": "again"}))["total_text"] == (
        "€15.20"
    )
    basket = ok(call(app, "DELETE", "/api/basket/promo"))
    assert basket["promo"] is None and basket["total_text"] == "€19.00"


def test_a_crypto_and_a_stars_invoice_charge_the_discounted_price(app):
    add_code(app.conn, "QUARTER", value=25)
    for who in (ANN, BOB):
        shop.touch_user(app.conn, who)
        put(app, "Coffee beans", "Mitte", 2, who)
        ok(call(app, "POST", "/api/basket/promo", who, json={"code": "quarter"}))
    crypto = ok(
        call(app, "POST", "/api/payment/create", json={"type": "basket", "currency": "btc"})
    )
    payment = app.conn.execute(
        "SELECT * FROM payments WHERE provider_id = ?", (str(crypto["payment_id"]),)
    ).fetchone()
    assert payment["price_cents"] == 1875  # 25.00 less 25%
    assert crypto["discount_text"] == "🏷 Code QUARTER: −€6.25"  # the invoice says it too
    stars = ok(
        call(app, "POST", "/api/payment/create", BOB, json={"type": "basket", "currency": "stars"})
    )
    stars_payment = app.conn.execute(
        "SELECT * FROM payments WHERE user_id = ? AND pay_currency = 'xtr'", (BOB["id"],)
    ).fetchone()
    assert stars_payment["price_cents"] == 1875 and stars_payment["pay_amount"] == "938"
    assert stars["order_id"] == stars_payment["order_id"]
    uses = app.conn.execute(
        "SELECT count(*) FROM orders WHERE promo_id IS NOT NULL AND status = 'pending'"
    ).fetchone()[0]
    assert uses == 2  # each invoice holds a use while it is open


# Uses: counted when paid, held while an invoice is open, given back when it lapses ###############


def test_200_shoppers_racing_for_a_code_with_50_uses_get_exactly_50_discounted_orders(app):
    add_code(app.conn, "FIFTY", value=50, max_uses=50)
    shoppers = [{"id": 10000 + i, "first_name": f"S{i}", "language_code": "en"} for i in range(200)]
    for who in shoppers:
        app.fake.open_chat(who["id"], who["first_name"])  # their receipts have a chat to go to
        shop.touch_user(app.conn, who)
        shop.adjust_balance(app.conn, who["id"], 5000, "test funds")
    seed(app.conn, [("Berlin", "Mitte", "Coffee beans", 1250, 200)])
    for who in shoppers:  # every one of them sees the code take half off: no use is taken yet
        put(app, "Coffee beans", "Mitte", 1, who)
        assert (
            ok(call(app, "POST", "/api/basket/promo", who, json={"code": "fifty"}))["total_text"]
            == "€6.25"
        )
    start = threading.Barrier(200)

    def pay(who):
        start.wait()
        body = {"type": "basket", "currency": "balance"}
        return call(app, "POST", "/api/payment/create", who, timeout=60, json=body)

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(pay, shoppers))
    paid = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(paid) == 50 and len(refused) == 150
    assert {r.status_code for r in refused} == {409}
    assert {r.json()["error"].split(".")[0] for r in refused} == {"The code FIFTY has been used up"}
    counts = app.conn.execute(
        "SELECT count(*), sum(discount_cents), sum(total_cents) FROM orders WHERE status = 'paid'"
    ).fetchone()
    assert tuple(counts) == (50, 50 * 625, 50 * 625)
    assert shop.promo_uses(app.conn, 1) == 50
    assert shop.check_ledger(app.conn) == []
    # The 150 still have their coffee in the basket and may pay the list price.
    late = shoppers[0] if answers[0].status_code != 200 else shoppers[answers.index(refused[0])]
    basket = ok(call(app, "GET", "/api/basket", late))
    assert basket["promo"]["refused"] == "The code FIFTY has been used up."
    assert basket["total_text"] == "€12.50"


def test_an_open_invoice_holds_its_use_and_a_lapsed_or_cancelled_one_gives_it_back(app):
    code = add_code(app.conn, "ONCE", value=10, max_uses=1)
    for who in (ANN, BOB):
        shop.touch_user(app.conn, who)
        put(app, "Coffee beans", "Mitte", 1, who)
    ok(call(app, "POST", "/api/basket/promo", json={"code": "once"}))
    first = ok(call(app, "POST", "/api/payment/create", json={"type": "basket", "currency": "btc"}))
    assert shop.promo_uses(app.conn, code) == 1
    r = call(app, "POST", "/api/basket/promo", BOB, json={"code": "once"})
    assert r.status_code == 409 and r.json()["error"] == "The code ONCE has been used up."
    # Ann's invoice runs out: its use comes free, and her code goes back on her basket with the
    # coffee.
    assert lapse(app.conn) == 1
    assert app.conn.execute("SELECT status FROM orders").fetchone()[0] == "expired"
    assert shop.promo_uses(app.conn, code) == 0
    assert shop.get_user(app.conn, ANN["id"])["promo_id"] == code
    # Bob takes it now, and cancels: free again.
    ok(call(app, "POST", "/api/basket/promo", BOB, json={"code": "once"}))
    bobs = ok(
        call(app, "POST", "/api/payment/create", BOB, json={"type": "basket", "currency": "btc"})
    )
    assert shop.promo_uses(app.conn, code) == 1
    ok(call(app, "POST", f"/api/payment/{bobs['payment_id']}/cancel", BOB))
    assert shop.promo_uses(app.conn, code) == 0
    assert first["payment_id"] != bobs["payment_id"]


def test_a_code_used_up_while_the_checkout_was_open_is_refused_at_payment(app):
    code = add_code(app.conn, "LAST", kind="fixed", value=200, max_uses=1)
    for who in (ANN, BOB):
        shop.touch_user(app.conn, who)
        shop.adjust_balance(app.conn, who["id"], 5000, "test funds")
    lines = [(*app.ids[("Coffee beans", "Mitte")], 1)]
    nonces = {}
    for who in (ANN, BOB):
        shop.apply_promo_code(app.conn, who["id"], "last", lines)
        nonces[who["id"]] = shop.checkout_order(app.conn, who["id"], lines, False)
    checkout = shop.get_checkout(app.conn, ANN["id"], nonces[ANN["id"]])
    assert checkout["amount_cents"] == 1050 and checkout["promo_id"] == code
    shop.buy_with_balance(
        app.conn,
        BOB["id"],
        lines,
        expected_total_cents=1050,
        checkout_key=nonces[BOB["id"]],
        promo_id=code,
    )
    before = rows(snapshot(settled(app)))
    with pytest.raises(shop.PromoRefused, match="used up"):
        shop.buy_with_balance(
            app.conn,
            ANN["id"],
            lines,
            expected_total_cents=1050,
            checkout_key=nonces[ANN["id"]],
            promo_id=code,
        )
    assert rows(snapshot(app.conn)) == before
    screen = shop.screen_checkout(app.conn, shop.get_user(app.conn, ANN["id"]), checkout, None)
    assert "🏷 The code LAST has been used up." in screen.text


# Refunds ########################################################################################


def test_a_refund_of_a_discounted_order_returns_what_was_paid_not_the_list_price(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Poster", 1999, 3)])
    uid = user(conn, 1, balance=10000)
    code = add_code(conn, "THIRD", value=33)
    lines = [(*ids[("Poster", "Mitte")], 3)]
    shop.apply_promo_code(conn, uid, "third", lines)
    order_id = shop.buy_with_balance(conn, uid, lines, promo_id=code)
    order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    assert (order["total_cents"], order["discount_cents"]) == (4018, 1979)  # 33% of 59.97, down
    shop.refund_order(conn, order_id, "changed their mind")
    refund = conn.execute("SELECT * FROM ledger WHERE kind = 'refund'").fetchone()
    assert refund["amount_cents"] == 4018 != 5997
    assert shop.get_user(conn, uid)["balance_cents"] == 10000
    items = conn.execute(
        "SELECT sum(price_cents - discount_cents) FROM order_items WHERE order_id = ?", (order_id,)
    ).fetchone()[0]
    assert items == 4018  # the items' shares say the same
    assert shop.promo_uses(conn, code) == 0  # a refunded order gives its use back


def test_a_crypto_order_paid_with_a_code_is_refunded_its_discounted_price(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Poster", 2000, 2)])
    uid = user(conn, 1)
    code = add_code(conn, "HALF", value=50)
    lines = [(*ids[("Poster", "Mitte")], 2)]
    shop.apply_promo_code(conn, uid, "half", lines)
    quote = shop.quote_lines(conn, uid, lines)
    nonce = shop.create_checkout(conn, uid, "order", quote.total_cents, lines, False, code)
    payment = checkout_payment(conn, uid, nonce)
    order_id = payment["order_id"]
    assert payment["price_cents"] == 2000
    apply(conn, news(payment, "finished", paid="0.0004"), owners=())
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "paid"
    shop.refund_order(conn, order_id, "damaged in transit")
    assert shop.get_user(conn, uid)["balance_cents"] == 2000


# The upgrade #####################################################################################


def test_a_version_7_database_upgrades_in_place_and_takes_codes(tmp_path):
    """Schema 8 adds the codes to users, checkouts, orders and their items, and rebuilds the ledger
    for its 'referral' kind: every row comes through, the ledger stays append-only, and running
    the migration again changes nothing."""
    path = str(tmp_path / "v7.db")
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "data" / "schema_v7.sql").read_text())
    now = shop.now_iso()
    raw.executescript(
        f"""
        INSERT INTO cities(id, name) VALUES (1, 'Berlin');
        INSERT INTO districts(id, city_id, name) VALUES (1, 1, 'Mitte');
        INSERT INTO products(id, name, price_cents, created_at) VALUES (1, 'Poster', 1000, '{now}');
        INSERT INTO users(id, first_name, balance_cents, created_at, last_seen_at, language)
            VALUES (7, 'Ann', 4000, '{now}', '{now}', 'de');
        INSERT INTO orders(id, user_id, status, total_cents, payment_method, created_at, paid_at)
            VALUES (1, 7, 'paid', 1000, 'balance', '{now}', '{now}');
        INSERT INTO stock_units(id, product_id, district_id, content, status, order_id, sold_at,
                                created_at)
            VALUES (1, 1, 1, 'p-1', 'sold', 1, '{now}', '{now}');
        INSERT INTO stock_units(id, product_id, district_id, content, created_at)
            VALUES (2, 1, 1, 'p-2', '{now}'), (3, 1, 1, 'p-3', '{now}');
        INSERT INTO order_items(order_id, unit_id, product_id, product_name, place_name,
                                price_cents)
            VALUES (1, 1, 1, 'Poster', 'Berlin / Mitte', 1000);
        INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, idempotency_key,
                           created_at)
            VALUES (7, 5000, 5000, 'topup', 'seed', '{now}'),
                   (7, -1000, 4000, 'purchase', 'order:1:balance', '{now}');
        PRAGMA user_version = 7;
        """
    )
    raw.commit()
    tables = ("orders", "order_items", "ledger", "users", "stock_units", "daily_sales")
    before = {t: [tuple(r) for r in raw.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables}
    raw.close()

    conn = shop.init_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION == 8
    after = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables}
    assert after["ledger"] == before["ledger"] and after["stock_units"] == before["stock_units"]
    assert after["daily_sales"] == before["daily_sales"]
    assert [r[:-2] for r in after["orders"]] == before["orders"]
    assert [r[-2:] for r in after["orders"]] == [(None, 0)]
    assert [r[:-1] for r in after["order_items"]] == before["order_items"]
    users = [dict(r) for r in conn.execute("SELECT * FROM users")]
    assert [(u["promo_id"], u["referrer_id"], u["language"]) for u in users] == [(None, None, "de")]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM ledger")
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert shop.check_ledger(conn) == []
    # It takes codes now.
    code = add_code(conn, "WELCOME", value=20)
    shop.apply_promo_code(conn, 7, "welcome", [(1, 1, 2)])
    order_id = shop.buy_with_balance(conn, 7, [(1, 1, 2)], promo_id=code)
    assert conn.execute("SELECT total_cents FROM orders WHERE id = ?", (order_id,)).fetchone()[
        0
    ] == (1600)
    # Running the migration again changes nothing.
    snap = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables}
    with shop.transaction(conn):
        shop._promotions(conn)
    assert snap == {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables
    }
    conn.close()


# What the reviewers found ######################################################################


def test_the_mini_app_pays_what_its_checkout_showed_and_a_code_for_other_things_blocks_nothing(
    app,
):
    """The basket's code covers coffee only: buying a poster at once pays its list price, as its
    checkout shows; a total that is not the one the checkout would show is refused, changing
    nothing."""
    add_code(app.conn, "BEANS", value=10, product_ids=[app.ids[("Coffee beans", "Mitte")][0]])
    shop.touch_user(app.conn, ANN)
    shop.adjust_balance(app.conn, ANN["id"], 10000, "test funds")
    put(app, "Coffee beans", "Mitte", 2)
    ok(call(app, "POST", "/api/basket/promo", json={"code": "beans"}))
    poster = app.ids[("Poster", "Altona")]
    one = {"type": "product", "product_id": poster[0], "district_id": poster[1], "quantity": 1}
    quote = ok(call(app, "POST", "/api/checkout/quote", json=one))
    assert quote["total"] == "19.00" and "not valid" in quote["promo"]["refused"]
    before = rows(snapshot(settled(app)))
    r = call(
        app, "POST", "/api/payment/create", json={**one, "currency": "balance", "total": "17.10"}
    )
    assert r.status_code == 409 and "not valid for anything in your basket" in r.json()["error"]
    assert rows(snapshot(app.conn)) == before
    paid = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={**one, "currency": "balance", "total": "19.00"},
        )
    )
    assert paid["balance"] == "81.00"
    assert shop.get_user(app.conn, ANN["id"])["promo_id"] is not None  # still on the basket
    whole = {"type": "basket", "currency": "balance"}
    r = call(app, "POST", "/api/payment/create", json={**whole, "total": "25.00"})
    assert r.status_code == 409 and "prices changed" in r.json()["error"]
    r = call(app, "POST", "/api/payment/create", json={**whole, "total": "22,5€x"})
    assert r.status_code == 400 and "as a string" in r.json()["error"]
    paid = ok(call(app, "POST", "/api/payment/create", json={**whole, "total": "22.50"}))
    assert paid["balance"] == "58.50"


def test_a_basket_paid_in_parts_takes_a_code_off_one_part_only(conn):
    """Products that share no way to pay are checked out one part at a time; a fixed code is
    taken off the first part it applies to, not off each."""
    ids = seed(
        conn,
        [("Berlin", "Mitte", "Coffee beans", 1000, 3), ("Berlin", "Mitte", "Gift card", 2500, 3)],
    )
    with shop.transaction(conn):
        conn.execute("UPDATE products SET pay_methods = 'balance' WHERE name = 'Coffee beans'")
        conn.execute("UPDATE products SET pay_methods = 'crypto' WHERE name = 'Gift card'")
    uid = user(conn, 1, balance=10000)
    add_code(conn, "FIVE", kind="fixed", value=500)
    lines = [(*ids[("Coffee beans", "Mitte")], 1), (*ids[("Gift card", "Mitte")], 1)]
    for line in lines:
        shop.add_to_basket(conn, uid, line[0], line[1], 1)
    shop.apply_promo_code(conn, uid, "five")
    nonce = shop.checkout_order(conn, uid, lines, True)
    checkout = shop.get_checkout(conn, uid, nonce)
    screen = shop.screen_checkout(conn, shop.get_user(conn, uid), checkout, None)
    parts = conn.execute(
        "SELECT amount_cents, promo_id FROM checkouts WHERE nonce != ? ORDER BY rowid", (nonce,)
    ).fetchall()
    assert [(p["amount_cents"], p["promo_id"] is not None) for p in parts] == [
        (500, True),
        (2500, False),
    ]
    assert "€5.00" in screen.buttons[0][0][0] and "€25.00" in screen.buttons[1][0][0]


def test_a_dropped_reservation_takes_back_its_low_stock_note(conn):
    """An invoice that could not be made: its units go back on sale, and the low-stock note its
    reservation wrote goes too, so the next real fall is told."""
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 5)])
    uid = user(conn, 1)
    lines = [(*ids[("Gift card", "Mitte")], 3)]
    nonce = shop.create_checkout(conn, uid, "order", 7500, lines)
    order_id, _, _ = shop.reserve_for_checkout(conn, uid, nonce, 30, owners=[42])
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 1
    shop.drop_reservation(conn, order_id)
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 0


def test_a_late_payment_keeps_the_code_in_its_order_and_off_the_basket(conn):
    """An invoice lapses (its code goes back on the basket); the money comes after all and the
    items are still there: the order is paid with its code, and the basket no longer has it."""
    ids = seed(conn, [("Berlin", "Mitte", "Poster", 2000, 2)])
    uid = user(conn, 1)
    code = add_code(conn, "HALF", value=50)
    lines = [(*ids[("Poster", "Mitte")], 1)]
    shop.apply_promo_code(conn, uid, "half", lines)
    nonce = shop.checkout_order(conn, uid, lines, False)
    payment = checkout_payment(conn, uid, nonce)
    lapse(conn)
    assert shop.get_user(conn, uid)["promo_id"] == code
    answer = apply(conn, news(payment, "finished", paid="0.0004"), owners=())
    assert answer.endswith(": delivered late")
    order = conn.execute("SELECT * FROM orders").fetchone()
    assert (order["status"], order["promo_id"], order["discount_cents"]) == ("paid", code, 1000)
    assert shop.get_user(conn, uid)["promo_id"] is None


def test_in_the_bot_a_cancelled_question_ends_and_a_refused_code_can_be_removed(app):
    code = add_code(app.conn, "ONE", value=10, max_uses=1)
    shop.touch_user(app.conn, ANN)
    ann = Shopper(app.fake, ANN["id"], "Ann")
    ann.open_product("Berlin", "Mitte", "Coffee beans · €12.50")
    ann.click("⚡ Buy now")
    ann.click("🏷 Promo code")
    ann.click("✖️ Cancel")
    assert "Checkout" in ann.screen.text
    assert "menu" in ann.send("ONE", "menu").text  # not taken for a code any more
    assert shop.get_user(app.conn, ANN["id"])["promo_id"] is None
    ann.click("🏷 Promo code")
    ann.send("one", "Total: €11.25")
    Shopper(app.fake, 709, "Zoe").send("/start", "Welcome")
    paid_order_with(app, code, 709)  # the last use goes to someone else meanwhile
    ann.click("⬅️ Back")
    ann.click("⚡ Buy now")
    assert "🏷 The code ONE has been used up." in ann.screen.text
    assert "Total: €12.50" in ann.screen.text
    assert ann.click("✖️ Remove code ONE") == "The code was removed."
    assert "🏷" not in ann.screen.text.split("Total")[0]
