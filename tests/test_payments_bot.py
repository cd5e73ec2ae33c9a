"""Crypto checkout and top-ups as a shopper sees them: the bot through the Bot API stand-in, the
sandbox over HTTP."""

import pytest
import requests

import shop
from conftest import TOKEN, Shopper, emulator, post_ipn, seed, wait_for_row


@pytest.fixture
def bot_shop(make_shop, fake_tg):
    """A sandbox shop with its bot, a small catalog and its owner (9001) listening for alerts."""
    made = []

    def make(**env):
        s = make_shop(
            env={
                "BOT_TOKEN": TOKEN,
                "TELEGRAM_API_URL": fake_tg.base_url,
                "ADMIN_IDS": "9001",
                **env,
            }
        )
        s.conn = shop.connect(s.config.shop_db)
        made.append(s)
        s.ids = seed(
            s.conn,
            [("Berlin", "Mitte", "Gift card", 2500, 2), ("Berlin", "Mitte", "Sticker", 50, 40)],
        )
        fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
        Shopper(fake_tg, 9001, "Owner").send("/start", "Welcome")
        return s

    yield make
    for s in made:
        s.conn.close()


def to_checkout(ann, product, adds=1):
    ann.open_product("Berlin", "Mitte", product)
    for _ in range(adds):
        ann.click("➕ Add to basket")
    ann.click("🧺 Basket")
    ann.click("💳 Checkout")
    return ann.screen


def test_a_crypto_purchase_from_checkout_to_delivery(fake_tg, bot_shop):
    s = bot_shop()
    ann = Shopper(fake_tg, 101)
    checkout = to_checkout(ann, "Sticker · €0.50", adds=20)
    assert "Total: €10.00" in checkout.text and "Your balance is €10.00 short." in checkout.text
    labels = checkout.button_texts
    assert "BTC" in labels and "TON" in labels and "USDT · ERC20 · min €18.60" in labels
    assert not any(label.startswith("💰 Pay") for label in labels)
    assert (
        ann.click("USDT · ERC20 · min €18.60")
        == "USDT · ERC20 takes payments from €18.60. Please choose another coin."
    )
    ann.click("TON")
    bill = ann.screen
    assert bill.kind == "photo" and bill.photo_file_id
    payment = s.conn.execute("SELECT * FROM payments").fetchone()
    assert f"Send exactly {payment['pay_amount']} TON" in bill.caption
    assert f"Memo / tag (required): {payment['payin_extra_id']}" in bill.caption
    assert "SANDBOX" in bill.caption and "Status: ⏳ Waiting for your payment" in bill.caption
    assert shop.get_offer(s.conn, *s.ids[("Sticker", "Mitte")])["available"] == 20  # reserved
    assert ann.click("🔄 Check status") == "⏳ Waiting for your payment"
    assert "pay in full" in ann.click("🧪 Pay in full")
    delivered = fake_tg.wait_message(101, "Sticker · Berlin / Mitte", timeout=15)
    assert "Order #1 (1/1)" in delivered.content or "Order #1" in delivered.content
    fake_tg.wait_message(101, "Order #1 is paid: 20 items, €10.00 in crypto")
    # "On its way" goes out only if it went before the payment finished; never after the receipt.
    texts = [m.content for m in fake_tg.messages(101)]
    receipt = next(i for i, t in enumerate(texts) if "Order #1 is paid" in t)
    assert all(i < receipt for i, t in enumerate(texts) if "seen on the blockchain" in t)
    fake_tg.wait_message(9001, "Order #1 paid in TON: €10.00")
    # The invoice updates itself: final status, and no more buttons to pay or cancel.
    fake_tg.wait_for(
        lambda: "Status: ✅ Paid" in bill_now(fake_tg, 101, bill).caption,
        what="the invoice updated",
    )
    assert bill_now(fake_tg, 101, bill).button_texts == ["📦 Orders"]
    assert (
        s.conn.execute("SELECT count(*) FROM basket_items").fetchone()[0] == 0
    )  # bought, so out of the basket
    assert sum("is paid" in m.content for m in fake_tg.messages(101)) == 1


def bill_now(fake, chat, bill):
    return next(m for m in fake.messages(chat) if m.message_id == bill.message_id)


def test_buy_now_can_be_paid_in_crypto_and_a_double_tap_makes_one_invoice(fake_tg, bot_shop):
    s = bot_shop()
    ann = Shopper(fake_tg, 102)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    screen = ann.screen
    data = next(b["callback_data"] for row in screen.buttons for b in row if b["text"] == "BTC")
    cqs = [fake_tg.user_clicks(102, screen.message_id, data) for _ in range(2)]
    fake_tg.wait_for(lambda: all(cq in fake_tg.callback_answers for cq in cqs))
    assert s.conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 1
    assert s.conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1


def test_cancelling_an_invoice_puts_the_items_back(fake_tg, bot_shop):
    s = bot_shop()
    ann = Shopper(fake_tg, 103)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("BTC")
    assert shop.get_offer(s.conn, *s.ids[("Gift card", "Mitte")])["available"] == 1
    assert ann.click("❌ Cancel") == "Invoice cancelled."
    assert shop.get_offer(s.conn, *s.ids[("Gift card", "Mitte")])["available"] == 2
    assert "no longer open" in ann.screen.caption and "❌ Cancel" not in ann.screen.button_texts


def test_top_ups_from_the_menu_the_command_and_a_deep_link(fake_tg, bot_shop):
    s = bot_shop()
    ann = Shopper(fake_tg, 104)
    ann.send("/start", "Welcome")
    prompt = ann.send("💰 Top up", "How much do you want to add?")
    assert "from €5.00 to €10,000.00" in prompt.text
    for bad, why in (
        ("abc", "must be a number of euros"),
        ("2", "must be at least €5.00"),
        ("20000", "must be at most €10,000.00"),
        ("-5", "must be positive"),
    ):
        assert why in ann.send(bad, "The amount").text
    coins = ann.send("20,50", "Top up €20.50")
    assert "BTC" in coins.button_texts
    ann.click("BTC")
    assert "Top-up" in ann.screen.caption and "€20.50" in ann.screen.caption
    ann.click("🧪 Pay in full")
    fake_tg.wait_message(104, "Top-up received: €20.50 added. Balance: €20.50.", timeout=15)
    fake_tg.wait_message(9001, "Top-up €20.50")

    assert "Top up €30.00" in ann.send("/refill 30", "Top up").text
    ann.send("/refill", "How much do you want to add?")
    ann.click("€10.00")
    assert "Top up €10.00" in ann.screen.text
    ann.click("LTC")
    ann.click("🧪 Pay half")
    fake_tg.wait_message(104, "paid only in part", timeout=15)
    assert shop.get_user(s.conn, 104)["balance_cents"] == 2050 + 500

    assert "Top up €15.00" in ann.send("/start refill_104_15", "Top up").text
    assert "Top up €15.50" in ann.send("/start refill_104_15_50", "Top up").text
    assert "another Telegram account" in ann.send("/start refill_105_15", "top-up link").text
    assert "must be at least €5.00" in ann.send("/start refill_104_1", "top-up link").text
    assert "not valid" in ann.send("/start refill_104_x", "top-up link").text
    # A command while the bot waits for an amount ends the question.
    ann.send("💰 Top up", "How much")
    assert "Profile" in ann.send("👤 Profile", "Profile").text
    assert "Please use the menu" in ann.send("30", "menu").text


def test_invoice_limits_in_the_bot(fake_tg, bot_shop):
    s = bot_shop(MAX_OPEN_INVOICES="1")
    ann = Shopper(fake_tg, 106)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("BTC")
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    assert ann.click("ETH") == "You have 1 unpaid invoice. Pay or cancel it first."
    assert s.conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 1
    assert shop.get_offer(s.conn, *s.ids[("Gift card", "Mitte")])["available"] == 1


def test_a_signed_ipn_posted_by_hand_pays_a_bot_order(fake_tg, bot_shop):
    """The webhook as NOWPayments calls it, for an invoice the bot created."""
    s = bot_shop()
    ann = Shopper(fake_tg, 107)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("ETH")
    payment = s.conn.execute("SELECT * FROM payments").fetchone()
    data = {**emulator(s, payment), "payment_status": "finished"}
    data["actually_paid"] = data["pay_amount"]
    assert post_ipn(s, data).status_code == 200
    fake_tg.wait_message(107, "Gift card · Berlin / Mitte")


def test_a_restart_between_the_ipn_and_the_delivery_loses_nothing(fake_tg, tmp_path, run_shop):
    conn = shop.init_db(str(tmp_path / "shop.db"))
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    proc = run_shop()
    ann = Shopper(fake_tg, 108)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("BTC")
    payment = conn.execute("SELECT * FROM payments").fetchone()
    fake_tg.set_down(True)  # Telegram unreachable: the delivery cannot go out
    fake_tg.release_polls()
    key = conn.execute("SELECT value FROM settings WHERE key = 'sandbox_api_key'").fetchone()[0]
    r = requests.post(
        f"{proc.url}/sandbox/v1/simulate/{payment['provider_id']}/full",
        headers={"x-api-key": key},
        timeout=5,
    )
    r.raise_for_status()
    wait_for_row(conn, "SELECT 1 FROM payments WHERE status = 'finished'")
    assert conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] >= 2
    proc.kill()
    fake_tg.set_down(False)
    run_shop()
    fake_tg.wait_message(108, "Gift card-Mitte-0", timeout=15)
    wait_for_row(conn, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')")
    assert sum("Gift card-Mitte-0" in m.content for m in fake_tg.messages(108)) == 1
    assert ids and shop.check_ledger(conn) == []


def test_cancel_asks_the_provider_first(fake_tg, bot_shop):
    s = bot_shop()
    ann = Shopper(fake_tg, 109)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("BTC")
    payment = s.conn.execute("SELECT * FROM payments").fetchone()
    data = {**emulator(s, payment), "payment_status": "confirming"}
    with shop.transaction(s.conn):  # the money is on the chain; no IPN has told the shop yet
        s.conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(payment["provider_id"])),
        )
    assert ann.click("❌ Cancel") == "🔎 Payment seen, waiting for confirmations"
    assert "❌ Cancel" not in ann.screen.button_texts
    assert shop.get_offer(s.conn, *s.ids[("Gift card", "Mitte")])["available"] == 1
    assert s.conn.execute("SELECT status FROM orders").fetchone()[0] == "pending"


def test_crafted_buttons_and_links_get_polite_refusals(fake_tg, bot_shop, caplog):
    s = bot_shop()
    other = Shopper(fake_tg, 111)
    other.open_product("Berlin", "Mitte", "Gift card · €25.00")
    other.click("⚡ Buy now")
    other.click("BTC")
    theirs = s.conn.execute("SELECT id FROM payments").fetchone()[0]
    their_nonce = s.conn.execute("SELECT nonce FROM checkouts").fetchone()[0]
    ann = Shopper(fake_tg, 110)
    ann.send("💰 Top up", "How much")
    ann.click("€10.00")
    topup_nonce = s.conn.execute("SELECT nonce FROM checkouts WHERE kind = 'topup'").fetchone()[0]
    screen = ann.screen
    crafted = {
        f"pay:{topup_nonce}": "not valid",
        "nocoin:btc:abc": "not valid",
        f"coin:{their_nonce}:btc": "too old",
        f"pay:{their_nonce}": "too old",
        f"chk:{theirs}": "No such payment",
        f"cxl:{theirs}": "No such payment",
        f"sim:{theirs}:full": "No such payment",
        f"tcoin:{topup_nonce}:doge": "not valid",
        "pay:../../etc": "not valid",
        "orders:x": "not valid",
        "prod:1": "not valid",
        "€": "not valid",
        "sim:1:bribe": "not valid",
        f"tamt:{10**12}": "not possible",
    }
    with caplog.at_level("ERROR", logger="shop"):
        for data, answer in crafted.items():
            cq = fake_tg.user_clicks(110, screen.message_id, data, forged=True)
            fake_tg.wait_for(lambda cq=cq: cq in fake_tg.callback_answers, what=data)
            assert answer in (fake_tg.callback_answers[cq].get("text") or ""), data
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert s.conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 1
    for text, answer in (
        ("/start refill_²_5", "not valid"),
        ("/start refill_110_5_5_5", "not valid"),
        ("/start refill_110_20000", "must be at most"),
        ("/start refill_110_99999999999", "must be a number of euros"),
    ):
        assert answer in ann.send(text, "top-up link").text


# Trust under pressure (issue 10)


def test_in_test_mode_a_stranger_sees_it_and_cannot_obtain_goods(fake_tg, bot_shop):
    """A bot but no NOWPayments key: simulated payments would hand out real stock, so only owners
    (and the testers they name) may buy. Here 6001 is neither; 9001 is the owner."""
    s = bot_shop(TESTER_IDS="")
    stranger = Shopper(fake_tg, 6001)
    assert "test mode" in stranger.send("/start", "Welcome").text
    shop.touch_user(s.conn, {"id": 6001, "first_name": "S"})
    shop.adjust_balance(s.conn, 6001, 5000, "a balance that must not buy either")
    checkout = to_checkout(stranger, "Gift card · €25.00")
    assert "test mode" in checkout.text and "not selling yet" in checkout.text
    assert checkout.button_texts == ["⬅️ Back"]  # no coin, no balance button
    assert "not selling yet" in stranger.send("💰 Top up", "test mode").text
    nonce = s.conn.execute("SELECT nonce FROM checkouts WHERE user_id = 6001").fetchone()[0]
    for data in (f"coin:{nonce}:btc", f"pay:{nonce}", "tamt:1000"):
        cq = fake_tg.user_clicks(6001, stranger.screen.message_id, data, forged=True)
        fake_tg.wait_for(lambda cq=cq: cq in fake_tg.callback_answers, what=data)
        assert "test mode" in (fake_tg.callback_answers[cq].get("text") or stranger.screen.text), (
            data
        )
    # The owner's own invoice: the stranger cannot make the sandbox pay it either.
    owner = Shopper(fake_tg, 9001, "Owner")
    to_checkout(owner, "Gift card · €25.00")
    owner.click("BTC")
    # (the owner's newest message may be the low-stock note the reservation sent them meanwhile)
    invoice = next(m for m in reversed(fake_tg.messages(9001)) if m.kind == "photo")
    assert "🧪 Pay in full" in invoice.button_texts
    theirs = s.conn.execute("SELECT id FROM payments WHERE user_id = 9001").fetchone()[0]
    cq = fake_tg.user_clicks(6001, stranger.screen.message_id, f"sim:{theirs}:full", forged=True)
    fake_tg.wait_for(lambda: cq in fake_tg.callback_answers)
    assert "test mode" in fake_tg.callback_answers[cq]["text"]
    assert s.conn.execute("SELECT count(*) FROM orders WHERE user_id = 6001").fetchone()[0] == 0
    assert s.conn.execute("SELECT count(*) FROM payments WHERE user_id = 6001").fetchone()[0] == 0
    assert shop.get_user(s.conn, 6001)["balance_cents"] == 5000
    assert "pay in full" in owner.click("🧪 Pay in full")  # owners try the whole flow
    fake_tg.wait_message(9001, "Order #", timeout=15)


def test_a_basket_checked_out_in_crypto_moves_into_the_order_and_comes_back_if_cancelled(
    fake_tg, bot_shop
):
    s = bot_shop()
    ann = Shopper(fake_tg, 105)
    to_checkout(ann, "Gift card · €25.00", adds=2)
    ann.click("BTC")
    assert shop.get_basket(s.conn, 105).lines == []  # in the order now, not twice
    basket = ann.send("🧺 Basket", "basket")
    assert "Your basket is empty" in basket.text and "sold out" not in basket.text
    invoice = next(m for m in reversed(fake_tg.messages(105)) if m.kind == "photo")
    fake_tg.user_clicks(
        105,
        invoice.message_id,
        next(
            b["callback_data"] for row in invoice.buttons for b in row if b["text"] == "❌ Cancel"
        ),
    )
    fake_tg.wait_for(lambda: shop.get_basket(s.conn, 105).lines, what="the basket back")
    assert [(item.name, item.quantity) for item in shop.get_basket(s.conn, 105).lines] == [
        ("Gift card", 2)
    ]
    basket = ann.send("🧺 Basket", "Your basket")
    assert "Gift card" in basket.text and "sold out" not in basket.text


def test_items_reserved_for_the_shopper_are_never_shown_to_them_as_sold_out(fake_tg, bot_shop):
    bot_shop()
    ann = Shopper(fake_tg, 106)
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("➕ Add to basket")
    ann.click("➕ Add to basket")  # both gift cards in the basket
    ann.click("⚡ Buy now")  # and one of them in crypto now
    ann.click("BTC")
    basket = ann.send("🧺 Basket", "Your basket")
    assert "1 reserved for you in an unpaid order" in basket.text and "sold out" not in basket.text
