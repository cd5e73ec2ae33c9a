"""Telegram Stars as shoppers and owners meet them: a live shop (not the sandbox) whose bot talks to
the Bot API stand-in, which plays Telegram's side of Stars (invoices, pre-checkout, the charge,
refunds, the transaction record); NOWPayments is a second shop's sandbox over HTTP."""

import pytest
import requests

import shop
from conftest import TOKEN, Shopper, lapse, seed, user, wait_for_row

OWNER = 9001


@pytest.fixture
def stars_shop(make_shop, fake_tg):
    """Factory: a live shop with its bot and a small catalog: a digital gift card (1,250 ⭐ at the
    default rate), physical coffee beans (crypto or balance only) and a poster (every way)."""
    made = []

    def make(**env):
        provider = make_shop(name="provider")
        s = make_shop(
            env={
                "NOWPAYMENTS_API_KEY": provider.sandbox_api_key,
                "NOWPAYMENTS_API_URL": provider.url + "/sandbox/v1",
                "NOWPAYMENTS_IPN_SECRET": provider.ipn_secret,
                "BOT_TOKEN": TOKEN,
                "TELEGRAM_API_URL": fake_tg.base_url,
                "ADMIN_IDS": str(OWNER),
                **env,
            },
            name="live",
        )
        s.conn = shop.connect(s.config.shop_db)
        made.append(s)
        s.ids = seed(
            s.conn,
            [
                ("Berlin", "Mitte", "Gift card", 2500, 2),
                ("Berlin", "Mitte", "Coffee beans", 1290, 5),
                ("Berlin", "Mitte", "Poster", 1900, 3),
            ],
        )
        with shop.transaction(s.conn):
            s.conn.execute("UPDATE products SET kind = 'digital' WHERE name = 'Gift card'")
            s.conn.execute(
                "UPDATE products SET kind = 'physical', pay_methods = 'crypto,balance' "
                "WHERE name = 'Coffee beans'"
            )
        fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
        Shopper(fake_tg, OWNER, "Owner").send("/start", "Welcome")
        return s

    yield make
    for s in made:
        s.conn.close()


def invoice_of(fake, chat_id):
    """The newest Stars invoice message in a chat."""
    return fake.wait_for(
        lambda: next((m for m in reversed(fake.messages(chat_id)) if m.kind == "invoice"), None),
        what="an invoice message",
    )


def buy_now_in_stars(ann, product="Gift card · €25.00"):
    ann.open_product("Berlin", "Mitte", product)
    ann.click("⚡ Buy now")
    ann.click(next(label for label in ann.buttons() if label.startswith("⭐ Pay")))
    return invoice_of(ann.fake, ann.id)


def app_buy(s, uid, product, currency, **extra):
    """POST /api/payment/create for one unit of a product, as Mini App user uid."""
    body = {"type": "product", "product_id": product[0], "district_id": product[1]}
    return app_call(
        s,
        uid,
        "POST",
        "/api/payment/create",
        json={**body, "quantity": 1, "currency": currency, **extra},
    )


def app_call(s, uid, method, path, **kw):
    init = shop.sign_init_data({"id": uid, "first_name": "Ann"}, TOKEN)
    headers = {"X-Telegram-Init-Data": init}
    return requests.request(method, s.url + path, headers=headers, timeout=10, **kw)


def deliveries(fake, chat_id, content):
    return sum(content in m.content for m in fake.messages(chat_id))


def test_a_digital_product_bought_with_stars_in_the_bot_is_delivered_exactly_once(
    fake_tg, stars_shop
):
    s = stars_shop()
    ann = Shopper(fake_tg, 101)
    card = ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    assert "Price: €25.00 · 1,250 ⭐" in card.content
    ann.click("⚡ Buy now")
    checkout = ann.screen
    # Telegram's rule (on for a new shop): a digital product is paid in Stars alone.
    assert checkout.button_texts == ["⭐ Pay 1,250 ⭐", "⬅️ Back"]
    assert "Digital goods are paid in Telegram Stars, by Telegram's rule." in checkout.content
    ann.click("⭐ Pay 1,250 ⭐")
    bill = invoice_of(fake_tg, 101)
    assert bill.invoice == {
        "title": "Order #1",
        "description": "Gift card · €25.00",
        "start_parameter": "",
        "currency": "XTR",
        "total_amount": 1250,
    }
    sent = fake_tg.calls_to("sendInvoice")[-1]
    assert sent.get("provider_token") in (None, "") and sent["prices"] == [
        {"label": "Order #1", "amount": 1250}
    ]
    payload = bill.invoice_payload
    assert payload.startswith("order-1-") and len(payload) == len("order-1-") + 16
    status = ann.fake.wait_for(
        lambda: next(m for m in fake_tg.messages(101) if "⭐ Order #1" in m.content)
    )
    assert "Pay with Pay on the invoice below" in status.content
    assert shop.get_offer(s.conn, *s.ids[("Gift card", "Mitte")])["available"] == 1  # held

    paid = fake_tg.user_pays(101, bill, duplicate_successful_payment=True)
    assert paid.status == "paid"
    fake_tg.wait_message(101, "Gift card-Mitte-0")
    row = wait_for_row(
        s.conn,
        "SELECT p.status, p.outcome, p.charge_id, o.status, o.payment_method FROM payments p "
        "JOIN orders o ON o.id = p.order_id WHERE p.status = 'finished'",
    )
    assert tuple(row) == ("finished", "delivered", paid.charge_id, "paid", "stars")
    fake_tg.wait_message(101, "Order #1 is paid: 1 item, 1,250 ⭐ in Telegram Stars.")
    fake_tg.wait_message(OWNER, "Order #1 paid in Telegram Stars (1,250 ⭐): €25.00")
    # The second (duplicated) update changed nothing: one delivery, one paid order.
    fake_tg.wait_for(lambda: len(fake_tg.pending_updates()) == 0, what="both updates read")
    s.payments.make_refunds()
    assert deliveries(fake_tg, 101, "Gift card-Mitte-0") == 1
    assert s.conn.execute("SELECT count(*) FROM star_refunds").fetchone()[0] == 0
    assert fake_tg.calls_to("refundStarPayment") == []
    fake_tg.wait_for(
        lambda: (
            "Status: ✅ Paid"
            in next(m for m in fake_tg.messages(101) if m.message_id == status.message_id).content
        ),
        what="the invoice's state updated",
    )


def test_the_rule_off_offers_every_way_and_a_product_says_which_ways_it_takes(fake_tg, stars_shop):
    s = stars_shop()
    shop.save_settings(s.conn, {"telegram_rule": "0"})
    user(s.conn, 102, balance=5000)
    ann = Shopper(fake_tg, 102)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    labels = ann.buttons()
    assert labels[0] == "⭐ Pay 1,250 ⭐" and "💰 Pay €25.00 from balance" in labels
    assert "BTC" in labels
    # Coffee beans are physical and taken in crypto or from the balance only: no Stars.
    card = ann.open_product("Berlin", "Mitte", "Coffee beans · €12.90")
    assert "⭐" not in card.content
    ann.click("⚡ Buy now")
    assert not any("⭐" in label for label in ann.buttons())
    assert "💰 Pay €12.90 from balance" in ann.buttons()


def test_the_rule_refuses_crypto_and_balance_for_digital_goods_on_every_path(stars_shop):
    s = stars_shop()
    buyer = user(s.conn, 103, balance=5000)
    gift = s.ids[("Gift card", "Mitte")]
    with pytest.raises(shop.InvalidInput, match="by Telegram's rule"):
        shop.buy_with_balance(s.conn, buyer, [(*gift, 1)])
    nonce = shop.create_checkout(s.conn, buyer, "order", 2500, [(*gift, 1)])
    with pytest.raises(shop.InvalidInput, match="Gift card cannot be paid with crypto"):
        s.payments.open_order_invoice(buyer, nonce, "btc")
    assert s.conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    assert shop.get_user(s.conn, buyer)["balance_cents"] == 5000
    # The Mini App's API says the same, as a 400 with the reason.
    r = app_buy(s, buyer, gift, "balance")
    assert r.status_code == 400 and "by Telegram's rule" in r.json()["error"]


def test_a_basket_whose_products_share_no_way_to_pay_is_checked_out_in_parts(fake_tg, stars_shop):
    s = stars_shop()
    ann = Shopper(fake_tg, 104)
    user(s.conn, 104, balance=5000)
    for product in ("Gift card · €25.00", "Coffee beans · €12.90"):
        ann.open_product("Berlin", "Mitte", product)
        ann.click("➕ Add to basket")
    ann.click("🧺 Basket")
    ann.click("💳 Checkout")
    screen = ann.screen
    assert "paid in different ways" in screen.content
    assert "• Gift card: ⭐ Telegram Stars" in screen.content
    assert "• Coffee beans: crypto or balance" in screen.content
    parts = [label for label in screen.button_texts if label.startswith("💳 ")]
    assert parts == ["💳 Gift card · €25.00", "💳 Coffee beans · €12.90"]
    ann.click("💳 Coffee beans · €12.90")
    assert "⭐" not in " ".join(ann.buttons())
    ann.click("💰 Pay €12.90 from balance")
    fake_tg.wait_message(104, "Coffee beans-Mitte-0")
    # The gift card is still in the basket, and now checks out on its own, in Stars.
    lines = shop.list_basket_lines(s.conn, 104)
    assert lines == [(*s.ids[("Gift card", "Mitte")], 1)]
    ann.send("🧺 Basket", "Your basket")
    ann.click("💳 Checkout")
    assert ann.buttons()[0] == "⭐ Pay 1,250 ⭐"


def test_the_pre_checkout_refuses_a_sold_out_or_cancelled_order_and_nobody_is_charged(
    fake_tg, stars_shop
):
    s = stars_shop()
    ann = Shopper(fake_tg, 105)
    bill = buy_now_in_stars(ann)
    assert ann.click("❌ Cancel") == "Invoice cancelled."
    refused = fake_tg.user_pays(105, bill)
    assert refused.status == "refused"
    assert refused.error_message == "Order #1 was cancelled. Please check out again."

    # An order whose time ran out, and its items sold to someone else meanwhile.
    bill = buy_now_in_stars(ann)
    lapse(s.conn)
    other = user(s.conn, 106, balance=9000)
    shop.save_settings(s.conn, {"telegram_rule": "0"})  # so the other shopper may pay by balance
    shop.buy_with_balance(s.conn, other, [(*s.ids[("Gift card", "Mitte")], 2)])
    refused = fake_tg.user_pays(105, bill)
    assert refused.status == "refused"
    assert "sold out after its time to pay ran out" in refused.error_message
    assert fake_tg.star_transactions() == [] and fake_tg.refunds == []
    assert (
        s.conn.execute(
            "SELECT count(*) FROM payments WHERE status IN ('finished', 'partially_paid')"
        ).fetchone()[0]
        == 0
    )


def test_a_lapsed_order_whose_items_remain_is_paid_and_delivered_after_all(fake_tg, stars_shop):
    s = stars_shop()
    ann = Shopper(fake_tg, 107)
    bill = buy_now_in_stars(ann)
    lapse(s.conn)
    assert shop.get_order_status(s.conn, 1) == "expired"
    assert fake_tg.user_pays(107, bill).status == "paid"
    fake_tg.wait_message(107, "Gift card-Mitte-0")
    wait_for_row(s.conn, "SELECT 1 FROM orders WHERE id = 1 AND status = 'paid'")


def test_a_lapsed_order_whose_code_was_used_up_meanwhile_is_refused_before_any_charge(
    fake_tg, stars_shop
):
    """A Stars invoice with a discount code outlives its order; when the shopper pays it later,
    the code's last use has gone to someone else: Telegram is told no, with the reason, and no
    Star is taken."""
    s = stars_shop()
    now = shop.now_iso()
    with shop.transaction(s.conn):
        code = s.conn.execute(
            "INSERT INTO promo_codes(code, kind, value, max_uses, created_at, updated_at) "
            "VALUES ('ONCE', 'percent', 10, 1, ?, ?)",
            (now, now),
        ).lastrowid
    ann = Shopper(fake_tg, 111)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("🏷 Promo code")
    ann.send("once", "Total: €22.50")
    ann.click("⭐ Pay 1,125 ⭐")
    bill = invoice_of(fake_tg, 111)
    lapse(s.conn)
    assert shop.promo_uses(s.conn, code) == 0 and shop.get_user(s.conn, 111)["promo_id"] == code
    shop.touch_user(s.conn, {"id": 112, "first_name": "Bob"})
    shop.adjust_balance(s.conn, 112, 5000, "test funds")
    shop.buy_with_balance(s.conn, 112, [(*s.ids[("Poster", "Mitte")], 1)], promo_id=code)
    refused = fake_tg.user_pays(111, bill)
    assert refused.status == "refused"
    assert refused.error_message == (
        "Sorry, the code ONCE of order #1 was used up after its time to pay ran out. Nothing "
        "was charged; please check out again."
    )
    assert fake_tg.star_transactions() == []
    assert shop.get_order_status(s.conn, 1) == "expired" and shop.promo_uses(s.conn, code) == 1
    assert shop.get_user(s.conn, 111)["promo_id"] == code  # still on Ann's basket


def test_a_dropped_successful_payment_is_found_by_the_sweep_and_delivered_once(fake_tg, stars_shop):
    s = stars_shop()
    ann = Shopper(fake_tg, 108)
    bill = buy_now_in_stars(ann)
    paid = fake_tg.user_pays(108, bill, drop_successful_payment=True)
    assert paid.status == "paid" and paid.dropped
    assert shop.get_order_status(s.conn, 1) == "pending"
    s.payments.sweep_stars()
    fake_tg.wait_message(108, "Gift card-Mitte-0")
    row = s.conn.execute("SELECT status, charge_id, final_source FROM payments").fetchone()
    assert tuple(row) == ("finished", paid.charge_id, "poll")
    s.payments.sweep_stars()  # again: nothing new
    assert deliveries(fake_tg, 108, "Gift card-Mitte-0") == 1
    assert fake_tg.refunds == []


def test_a_payment_the_shop_cannot_honour_is_refunded_in_stars_and_the_shopper_told(
    fake_tg, stars_shop
):
    s = stars_shop()
    ann = Shopper(fake_tg, 109)
    bill = buy_now_in_stars(ann)
    # Telegram charged, the update was lost, and meanwhile the order lapsed and its items sold.
    paid = fake_tg.user_pays(109, bill, drop_successful_payment=True)
    lapse(s.conn)
    shop.save_settings(s.conn, {"telegram_rule": "0"})
    other = user(s.conn, 110, balance=9000)
    shop.buy_with_balance(s.conn, other, [(*s.ids[("Gift card", "Mitte")], 2)])
    s.payments.sweep_stars()
    assert [r["telegram_payment_charge_id"] for r in fake_tg.refunds] == [paid.charge_id]
    fake_tg.wait_message(109, "Your 1,250 ⭐ are being refunded to you")
    fake_tg.wait_message(109, "1,250 ⭐ were refunded to you for order #1")
    fake_tg.wait_message(OWNER, "refunding 1250 ⭐")
    row = s.conn.execute("SELECT status, outcome FROM payments").fetchone()
    assert tuple(row) == ("refunded", "refunding 1250 Stars, refunded in Stars")
    s.payments.sweep_stars()  # the refund is in Telegram's record now: nothing more happens
    assert len(fake_tg.calls_to("refundStarPayment")) == 1


def test_an_owner_refund_calls_telegram_once_and_a_failed_one_is_retried_with_an_alert(
    fake_tg, stars_shop
):
    s = stars_shop()
    ann = Shopper(fake_tg, 111)
    paid = fake_tg.user_pays(111, buy_now_in_stars(ann))
    fake_tg.wait_message(111, "Gift card-Mitte-0")
    wait_for_row(s.conn, "SELECT 1 FROM orders WHERE id = 1 AND status = 'paid'")
    fake_tg.fail_next("refundStarPayment", status=502)
    assert shop.request_owner_star_refund(s.conn, 1, "Code did not work") == paid.charge_id
    s.payments.make_refunds()
    refund = s.conn.execute("SELECT status, attempts, last_error FROM star_refunds").fetchone()
    assert refund["status"] == "pending" and refund["attempts"] == 1
    fake_tg.wait_message(OWNER, "A refund of 1250 ⭐ to")
    with pytest.raises(shop.InvalidInput, match="already refunded"):
        shop.request_owner_star_refund(s.conn, 1, "Again")
    with shop.transaction(s.conn):
        s.conn.execute("UPDATE star_refunds SET next_attempt_at = ?", (shop.now_iso(),))
    s.payments.make_refunds()
    assert [r["telegram_payment_charge_id"] for r in fake_tg.refunds] == [paid.charge_id]
    assert shop.get_order_status(s.conn, 1) == "refunded"
    fake_tg.wait_message(111, "1,250 ⭐ were refunded to you for order #1: Code did not work.")
    s.payments.make_refunds()
    assert len(fake_tg.refunds) == 1
    audit = s.conn.execute("SELECT details FROM audit_log WHERE action = 'stars refund'").fetchall()
    assert len(audit) == 1 and "Code did not work" in audit[0][0]


def test_the_mini_app_pays_in_stars_through_an_invoice_link(fake_tg, stars_shop):
    s = stars_shop()
    gift = s.ids[("Gift card", "Mitte")]
    r = app_buy(s, 112, gift, "stars", request_id="00112aaaaaaaaaaa")
    assert r.status_code == 200, r.text
    bill = r.json()
    assert bill["pay_currency"] == "xtr" and bill["stars"] == 1250
    assert bill["invoice_link"].startswith("https://t.me/$") and bill["payment_uri"] is None
    assert fake_tg.calls_to("sendInvoice") == []
    assert fake_tg.user_pays(112, bill["invoice_link"]).status == "paid"
    fake_tg.wait_message(112, "Gift card-Mitte-0")
    wait_for_row(s.conn, "SELECT 1 FROM payments WHERE status = 'finished'")
    status = app_call(s, 112, "GET", f"/api/payment/status/{bill['payment_id']}").json()
    assert (status["status"], status["order_status"]) == ("finished", "paid")


def test_a_version_5_database_upgrades_with_every_order_and_payment_intact(tmp_path):
    """Schema 6 rebuilds orders (so they may be paid in Stars) and adds the products' kind, ways
    to pay and Stars price, and the payments' charge id: every order, item, unit, payment, ledger
    row and daily total comes through, the triggers work again, and the shop keeps selling as it
    did (Telegram's rule off until its owner turns it on)."""
    import sqlite3
    from pathlib import Path

    path = str(tmp_path / "v5.db")
    raw = sqlite3.connect(path)
    raw.executescript((Path(__file__).parent / "data" / "schema_v5.sql").read_text())
    now = shop.now_iso()
    raw.executescript(
        f"""
        INSERT INTO cities(id, name) VALUES (1, 'Berlin');
        INSERT INTO districts(id, city_id, name) VALUES (1, 1, 'Mitte');
        INSERT INTO products(id, name, price_cents, created_at)
            VALUES (1, 'Gift card', 2500, '{now}');
        INSERT INTO users(id, first_name, balance_cents, created_at, last_seen_at)
            VALUES (7, 'Ann', 2500, '{now}', '{now}');
        INSERT INTO orders(id, user_id, status, total_cents, payment_method, created_at, paid_at)
            VALUES (1, 7, 'paid', 2500, 'balance', '{now}', '{now}'),
                   (2, 7, 'pending', 2500, 'crypto', '{now}', NULL);
        INSERT INTO stock_units(id, product_id, district_id, content, status, order_id,
                                reserved_until, sold_at, created_at)
            VALUES (1, 1, 1, 'code-1', 'sold', 1, NULL, '{now}', '{now}'),
                   (2, 1, 1, 'code-2', 'reserved', 2, '{shop.now_iso(1800)}', NULL, '{now}'),
                   (3, 1, 1, 'code-3', 'available', NULL, NULL, NULL, '{now}');
        INSERT INTO order_items(order_id, unit_id, product_id, product_name, place_name,
                                price_cents)
            VALUES (1, 1, 1, 'Gift card', 'Berlin / Mitte', 2500),
                   (2, 2, 1, 'Gift card', 'Berlin / Mitte', 2500);
        INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, idempotency_key,
                           created_at)
            VALUES (7, 5000, 5000, 'topup', 'seed', '{now}'),
                   (7, -2500, 2500, 'purchase', 'order:1:balance', '{now}');
        INSERT INTO payments(provider, provider_id, kind, user_id, order_id, reference,
                             price_cents, pay_currency, pay_amount, status, expires_at,
                             created_at, updated_at)
            VALUES ('nowpayments', '5001', 'order', 7, 2, 'order-2', 2500, 'btc', '0.0004',
                    'waiting', '{shop.now_iso(1800)}', '{now}', '{now}');
        PRAGMA user_version = 5;
        """
    )
    raw.commit()
    pending = 2
    conn = raw
    tables = ("orders", "order_items", "stock_units", "payments", "ledger", "daily_sales", "users")
    before = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables}
    conn.close()

    conn = shop.init_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION >= 6
    after = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables}
    # + promo_id, discount_cents (schema 8): every order as it was, at its list price
    assert [r[:-2] for r in after["orders"]] == before["orders"]
    assert {r[-2:] for r in after["orders"]} == {(None, 0)}
    assert [r[:-1] for r in after["order_items"]] == before["order_items"]
    assert after["ledger"] == before["ledger"] and after["daily_sales"] == before["daily_sales"]
    assert [r[:-1] for r in after["payments"]] == before["payments"]  # + charge_id (NULL)
    assert [r[:-3] for r in conn.execute("SELECT * FROM products")][0][1] == "Gift card"
    assert conn.execute("SELECT kind, pay_methods, stars_price FROM products").fetchone()[:] == (
        None,
        None,
        None,
    )
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not shop.telegram_rule(conn)  # an old shop keeps selling as it did
    assert shop.check_ledger(conn) == []
    # The orders' triggers came back: paying the pending order counts in the day's sales.
    with shop.transaction(conn):
        conn.execute(
            "UPDATE orders SET status = 'paid', paid_at = ? WHERE id = ?", (shop.now_iso(), pending)
        )
    day = conn.execute("SELECT orders, revenue_cents FROM daily_sales").fetchall()
    assert sum(r[0] for r in day) == 2 and sum(r[1] for r in day) == 5000
    # And an order may now be paid in Stars.
    with shop.transaction(conn):
        conn.execute(
            "INSERT INTO orders(user_id, status, total_cents, payment_method, created_at) "
            "VALUES (7, 'pending', 100, 'stars', ?)",
            (shop.now_iso(),),
        )
    # A second start changes nothing.
    conn.close()
    conn = shop.init_db(path)
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 3
    conn.close()


def test_in_the_sandbox_an_owner_pays_a_stars_invoice_with_the_test_button(make_shop, fake_tg):
    """Test mode (a bot, payments simulated): no real invoice is sent; the 🧪 button pays through
    the same pre-checkout and delivery as Telegram's updates."""
    s = make_shop(env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url})
    conn = shop.connect(s.config.shop_db)
    seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    tester = Shopper(fake_tg, 7)  # in TESTER_IDS
    tester.open_product("Berlin", "Mitte", "Gift card · €25.00")
    tester.click("⚡ Buy now")
    tester.click("⭐ Pay 1,250 ⭐")
    screen = tester.screen
    assert "SANDBOX" in screen.content and "Pay with the 🧪 button" in screen.content
    assert screen.button_texts == ["🧪 Pay 1,250 ⭐", "❌ Cancel", "📦 Orders"]
    assert tester.click("🧪 Pay 1,250 ⭐") == "🧪 Paid with Stars (simulated)."
    fake_tg.wait_message(7, "Gift card-Mitte-0")
    assert (
        "Status: ✅ Paid" in tester.screen.content
        or "Status: ✅ Paid"
        in next(m for m in fake_tg.messages(7) if m.message_id == screen.message_id).content
    )
    assert fake_tg.calls_to("sendInvoice") == [] and fake_tg.payments == []
    row = conn.execute("SELECT provider, status, charge_id FROM payments").fetchone()
    assert row["provider"] == "sandbox_stars" and row["status"] == "finished"
    assert row["charge_id"].startswith("sandbox-")
    tester.send("📦 Orders", "Your orders")
    tester.click(next(label for label in tester.buttons() if "#1" in label))
    assert "paid 1,250 ⭐ in Telegram Stars" in tester.screen.content
    conn.close()


def test_an_invoice_paid_twice_gives_the_second_charge_back_once(make_shop):
    """Two charges for one invoice (two payment sheets confirmed at once): the order is delivered
    once and the second charge refunded once; that charge's update coming again changes
    nothing and tells nobody again."""
    s = make_shop()  # the sandbox: its Stars refunds need no Telegram
    conn = shop.connect(s.config.shop_db)
    gift = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])[("Gift card", "Mitte")]
    uid = user(conn, 5)
    nonce = shop.create_checkout(conn, uid, "order", 2500, [(*gift, 1)])
    bill = s.payments.open_stars_invoice(uid, nonce)
    paid = s.payments.stars_paid(uid, bill["provider_id"], "charge-a", 1250)
    assert paid == "waiting -> finished: delivered"
    for _ in range(2):
        again = s.payments.stars_paid(uid, bill["provider_id"], "charge-b", 1250)
        assert again == "unchanged (finished); a second charge is refunded"
    refunds = conn.execute("SELECT charge_id, stars, status FROM star_refunds").fetchall()
    assert [tuple(r) for r in refunds] == [("charge-b", 1250, "done")]
    texts = [r[0] for r in conn.execute("SELECT text FROM outbox WHERE chat_id = ?", (uid,))]
    assert sum("twice" in t for t in texts) == 1
    assert sum("1,250 ⭐ were refunded to you" in t for t in texts) == 1
    row = conn.execute("SELECT status, charge_id FROM payments").fetchone()
    assert tuple(row) == ("finished", "charge-a")
    conn.close()


def test_a_charge_refunded_outside_the_shop_is_taken_as_refunded(fake_tg, stars_shop):
    """Telegram answers CHARGE_ALREADY_REFUNDED (someone gave the Stars back another way): the
    shop's refund is done, with Telegram's words, and not tried again."""
    s = stars_shop()
    paid = fake_tg.user_pays(113, buy_now_in_stars(Shopper(fake_tg, 113)))
    wait_for_row(s.conn, "SELECT 1 FROM orders WHERE id = 1 AND status = 'paid'")
    r = requests.post(
        f"{fake_tg.base_url}/bot{TOKEN}/refundStarPayment",
        data={"user_id": 113, "telegram_payment_charge_id": paid.charge_id},
        timeout=5,
    )
    assert r.json()["ok"] is True
    shop.request_owner_star_refund(s.conn, 1, "Refunded by hand")
    s.payments.make_refunds()
    row = s.conn.execute("SELECT status, attempts, last_error FROM star_refunds").fetchone()
    assert row["status"] == "done" and row["attempts"] == 0
    assert "CHARGE_ALREADY_REFUNDED" in row["last_error"]
    assert shop.get_order_status(s.conn, 1) == "refunded"
    s.payments.make_refunds()
    assert len(fake_tg.calls_to("refundStarPayment")) == 2  # ours and the one by hand, no more
