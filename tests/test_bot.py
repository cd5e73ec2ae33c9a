"""End to end: the real shop process, real polling and a real SQLite file, against the Bot API
stand-in."""

import re
import signal
import socket
import subprocess
import sys

import requests

import pytest

import shop
from conftest import HOSTILE, Shopper
from harness import free_port, png


@pytest.fixture
def hostile_shop(tmp_path, hostile_catalog, run_shop):
    conn = shop.init_db(str(tmp_path / "shop.db"))
    shop.import_catalog(
        conn, shop.read_catalog_file(hostile_catalog), hostile_catalog.parent, tmp_path / "media"
    )
    proc = run_shop()
    yield proc, conn
    conn.close()
    assert " ERROR " not in proc.log, proc.log


def fund(conn, user_id, cents):
    shop.touch_user(conn, {"id": user_id, "first_name": "x"})
    shop.adjust_balance(conn, user_id, cents, "test funds")


def test_start_greets_with_the_menu_and_commands_are_registered(fake_tg, hostile_shop):
    ann = Shopper(fake_tg, 1001)
    reply = ann.send("/start", "Welcome")
    assert reply.keyboard == [
        ["🛒 Shop", "🧺 Basket"],
        ["👤 Profile", "💰 Top up"],
        ["📦 Orders", "❓ Help"],
    ]
    assert [c["command"] for c in fake_tg.commands] == [
        "start",
        "shop",
        "basket",
        "refill",
        "profile",
        "orders",
        "language",
        "help",
        "paysupport",
        "terms",
    ]
    profile = ann.send("👤 Profile", "Telegram ID")
    assert "1001" in profile.text and "€0.00" in profile.text
    assert "Basket" in ann.send("/help", "Basket").text
    assert "menu" in ann.send("what is this?", "menu").text


def test_a_shopper_can_browse_to_every_stocked_product_and_names_show_literally(
    fake_tg, hostile_shop
):
    ann = Shopper(fake_tg, 1002)
    nav = ann.send("🛒 Shop", "Choose a city")
    assert nav.button_texts == ["Łódź <Centrum>", "Berlin"]  # "Empty town" has no stock
    expected = {  # product -> (city, district, description, price, available)
        "gift_card *25*": [("Łódź <Centrum>", "Bałuty & Widzew", 2), ("Berlin", "Mitte", 1)],
        "Kaffee «Grün» 250g": [("Berlin", "Kreuzberg_36", 1)],
        "Плакат A2": [("Łódź <Centrum>", "Śródmieście", 2)],
    }
    seen = set()
    for city in ["Łódź <Centrum>", "Berlin"]:
        ann.click(city)
        assert ann.screen.text.startswith(f"📍 {city}: choose a district")
        districts = [b for b in ann.buttons() if b != "⬅️ Back"]
        for district in districts:
            ann.click(district)
            assert f"{city} / {district}" in ann.screen.text
            products = [b for b in ann.buttons() if b != "⬅️ Back"]
            for label in products:
                name, _, price = label.rpartition(" · ")
                ann.click(label)
                card = ann.screen
                product = next(p for p in HOSTILE["products"] if p["name"] == name)
                assert card.content.startswith(name + "\n")
                assert product["description"] in card.content
                assert f"{city} / {district}" in card.content
                available = dict(((c, d), n) for c, d, n in expected[name])[(city, district)]
                assert f"Available: {available}" in card.content
                assert price in card.content
                assert (card.kind == "photo") == ("photo" in product)
                seen.add((name, city, district))
                ann.click("⬅️ Back")
            ann.click("⬅️ Back")
        ann.click("⬅️ Back")
    assert seen == {(n, c, d) for n, places in expected.items() for c, d, _ in places}
    assert "Sold-out e-book" not in str([m.button_texts for m in fake_tg.all_messages(1002)])
    # Navigation edits one message instead of piling up new ones.
    assert len(fake_tg.messages(1002)) <= 3


def test_photos_are_uploaded_once_then_sent_by_file_id(fake_tg, hostile_shop):
    ann = Shopper(fake_tg, 1003)
    ann.send("🛒 Shop", "Choose a city")
    for _ in range(2):
        ann.click("Łódź <Centrum>")
        ann.click("Bałuty & Widzew")
        ann.click("gift_card *25* · €25.00")
        assert ann.screen.kind == "photo"
        ann.click("⬅️ Back")
        ann.click("⬅️ Back")
        ann.click("⬅️ Back")
    photos = [p["photo"] for p in fake_tg.calls_to("sendPhoto")]
    assert len(photos) == 2
    assert isinstance(photos[0], dict)  # uploaded
    first = next(m for m in fake_tg.all_messages(1003) if m.kind == "photo")
    assert photos[1] == first.photo_file_id  # then reused


def test_a_missing_product_photo_does_not_break_the_card(fake_tg, hostile_shop, tmp_path):
    proc, conn = hostile_shop
    photo = conn.execute("SELECT photo FROM products WHERE photo IS NOT NULL").fetchone()[0]
    (tmp_path / "media" / "public" / photo).unlink()
    card = Shopper(fake_tg, 1007).open_product("Berlin", "Mitte", "gift_card *25* · €25.00")
    assert card.kind == "text" and "Available: 1" in card.text
    proc.wait_log("cannot be read (No such file or directory)")


def test_basket_fill_change_and_totals(fake_tg, hostile_shop):
    ann = Shopper(fake_tg, 1004)
    ann.open_product("Łódź <Centrum>", "Bałuty & Widzew", "gift_card *25* · €25.00")
    assert "Added to your basket (1" in ann.click("➕ Add to basket")
    assert "In your basket: 1" in ann.screen.content
    assert "Added to your basket (2" in ann.click("➕ Add to basket")
    assert "only 2 of gift_card" in ann.click("➕ Add to basket")
    ann.click("⬅️ Back")
    ann.click("⬅️ Back")
    ann.click("Śródmieście")
    ann.click("Плакат A2 · €9.50")
    ann.click("➕ Add to basket")
    ann.click("🧺 Basket")
    text = ann.screen.text
    assert "1. gift_card *25* · Łódź <Centrum> / Bałuty & Widzew\n    2 × €25.00 = €50.00" in text
    assert "2. Плакат A2 · Łódź <Centrum> / Śródmieście\n    1 × €9.50 = €9.50" in text
    assert "Total: €59.50" in text
    rows = ann.screen.buttons
    assert [b["text"] for b in rows[0]] == ["➖", "1. gift_card *25* × 2", "➕", "🗑"]
    ann.press(rows[0][0])
    assert "1 × €25.00" in ann.screen.text and "Total: €34.50" in ann.screen.text
    ann.press(rows[0][2])
    assert "Total: €59.50" in ann.screen.text
    assert "only 2 of gift_card" in ann.press(rows[0][2])
    assert "Total: €59.50" in ann.screen.text
    ann.press(rows[1][3])
    assert "Плакат" not in ann.screen.text and "Total: €50.00" in ann.screen.text
    ann.click("🗑 Clear")
    assert "Your basket is empty" in ann.screen.text
    assert "empty" in ann.send("🧺 Basket", "basket").text


def test_buying_with_balance_delivers_each_unit_and_orders_show_it_again(
    fake_tg, hostile_shop, tmp_path
):
    proc, conn = hostile_shop
    fund(conn, 1005, 10000)
    ann = Shopper(fake_tg, 1005)
    ann.open_product("Berlin", "Kreuzberg_36", "Kaffee «Grün» 250g · €12.90")
    ann.click("➕ Add to basket")
    ann.click("⬅️ Back")
    ann.click("⬅️ Back")
    ann.click("Mitte")
    ann.click("gift_card *25* · €25.00")
    ann.click("➕ Add to basket")
    ann.click("🧺 Basket")
    ann.click("💳 Checkout")
    assert "Total: €37.90" in ann.screen.text and "Your balance: €100.00" in ann.screen.text
    assert ann.click("💰 Pay €37.90 from balance").startswith("Order #")
    order_id = int(re.search(r"order #(\d+)", ann.screen.text).group(1))
    # One receipt: the header and the first item (a photo) in one message, the next item after.
    header = fake_tg.wait_message(1005, "Balance now: €62.10")
    assert f"Order #{order_id} is paid: 2 items" in header.content
    locker = fake_tg.wait_message(1005, "Locker 7 <door>\nCode: 11&22")
    assert locker.kind == "photo" and locker.photo_file_id
    assert locker.message_id == header.message_id
    code = fake_tg.wait_message(1005, "CODE-3")
    assert code.message_id > header.message_id
    assert shop.get_user(conn, 1005)["balance_cents"] == 6210
    assert shop.check_ledger(conn) == []
    assert "empty" in ann.send("🧺 Basket", "basket").text

    ann.send("📦 Orders", "Your orders")
    ann.click(lambda b: b.startswith(f"#{order_id} · "))
    assert "Kaffee «Grün» 250g · Berlin / Kreuzberg_36 × 1 = €12.90" in ann.screen.text
    before = len([m for m in fake_tg.messages(1005) if "CODE-3" in m.content])
    assert "on their way" in ann.click("📨 Send my items again")
    fake_tg.wait_for(
        lambda: len([m for m in fake_tg.messages(1005) if "CODE-3" in m.content]) == before + 1
    )
    private = tmp_path / "media" / "private"
    assert not any(name.name in proc.log for name in private.iterdir())


def test_a_short_balance_says_by_how_much(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    fund(conn, 1006, 2000)
    ann = Shopper(fake_tg, 1006)
    ann.open_product("Berlin", "Mitte", "gift_card *25* · €25.00")
    ann.click("⚡ Buy now")
    assert "Your balance is €5.00 short" in ann.screen.text
    assert not any(b.startswith("💰 Pay") for b in ann.buttons())
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_two_shoppers_racing_for_the_last_unit(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    shoppers = [Shopper(fake_tg, 2001, "A"), Shopper(fake_tg, 2002, "B")]
    for s in shoppers:
        fund(conn, s.id, 5000)
        s.open_product("Berlin", "Mitte", "gift_card *25* · €25.00")
        s.click("⚡ Buy now")
    cqs = [fake_tg.click_button(s.id, "💰 Pay €25.00 from balance") for s in shoppers]
    fake_tg.wait_for(lambda: all(cq in fake_tg.callback_answers for cq in cqs))
    answers = sorted(fake_tg.callback_answers[cq].get("text") or "" for cq in cqs)
    assert answers[0].startswith("Order #") and "sold out" in answers[1]
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    balances = sorted(shop.get_user(conn, s.id)["balance_cents"] for s in shoppers)
    assert balances == [2500, 5000]
    loser = next(s for s in shoppers if shop.get_user(conn, s.id)["balance_cents"] == 5000)
    assert "sold out" in loser.screen.text


def test_a_double_tapped_pay_button_buys_once(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    fund(conn, 2003, 10000)
    ann = Shopper(fake_tg, 2003)
    ann.open_product("Łódź <Centrum>", "Bałuty & Widzew", "gift_card *25* · €25.00")
    ann.click("⚡ Buy now")
    message = ann.screen
    data = next(
        b["callback_data"] for row in message.buttons for b in row if b["text"].startswith("💰 Pay")
    )
    cqs = [fake_tg.user_clicks(2003, message.message_id, data) for _ in range(2)]
    fake_tg.wait_for(lambda: all(cq in fake_tg.callback_answers for cq in cqs))
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    assert shop.get_user(conn, 2003)["balance_cents"] == 7500


def test_a_second_checkout_in_the_same_message_is_a_new_order(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    fund(conn, 2004, 10000)
    ann = Shopper(fake_tg, 2004)
    first = ann.open_product("Łódź <Centrum>", "Śródmieście", "Плакат A2 · €9.50")
    assert first.kind == "text"  # no photo: every screen is one edited message
    for n in (1, 2):
        if n == 2:
            ann.click("🛒 Shop")
            for step in ("Łódź <Centrum>", "Śródmieście", "Плакат A2 · €9.50"):
                ann.click(step)
        ann.click("⚡ Buy now")
        assert ann.click("💰 Pay €9.50 from balance") == f"Order #{n} paid."
        nav = next(m for m in fake_tg.messages(2004) if m.message_id == first.message_id)
        assert f"order #{n} are on their way" in nav.text
    assert conn.execute("SELECT count(*) FROM orders WHERE user_id = 2004").fetchone()[0] == 2
    assert shop.get_user(conn, 2004)["balance_cents"] == 8100
    fake_tg.wait_message(2004, "a=1&b=2")
    fake_tg.wait_message(2004, "a=2&b=3")


def owner(proc, *args):
    """Run one of the owner's shop.py commands against the running shop's database."""
    return subprocess.run(
        [sys.executable, str(shop.ROOT / "shop.py"), *args],
        cwd=proc.workdir,
        env=proc.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_owner_credits_a_balance_and_renames_the_shop_while_it_runs(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    ann = Shopper(fake_tg, 2005)
    ann.send("/start", "Welcome")
    r = owner(proc, "balance", "2005", "20,50", "cash at the counter")
    assert r.returncode == 0 and "balance now €20.50" in r.stdout, r.stderr
    assert owner(proc, "balance", "2005", "-0.50", "correction").returncode == 0
    assert "Balance: €20.00" in ann.send("👤 Profile", "Balance").text
    for bad in (
        ["balance", "2005", "-30", "x"],
        ["balance", "2005", "abc", "x"],
        ["balance", "99", "5", "x"],
        ["balance", "2005", "5", " "],
        ["set", "shop_name", ""],
    ):
        r = owner(proc, *bad)
        assert (
            r.returncode == 1 and r.stderr.startswith("shop.py: ") and "Traceback" not in r.stderr
        ), bad
    assert [
        tuple(x)
        for x in conn.execute("SELECT amount_cents, reason FROM ledger WHERE user_id = 2005")
    ] == [(2050, "cash at the counter"), (-50, "correction")]
    assert owner(proc, "set", "shop_name", "Łódź <Books> & Co").returncode == 0
    assert ann.send("/start", "Welcome").text.startswith("👋 Łódź <Books> & Co\n")


def test_owners_hear_of_paid_orders_and_failed_deliveries(
    fake_tg, tmp_path, hostile_catalog, run_shop
):
    conn = shop.init_db(str(tmp_path / "shop.db"))
    shop.import_catalog(
        conn, shop.read_catalog_file(hostile_catalog), hostile_catalog.parent, tmp_path / "media"
    )
    run_shop(env={"ADMIN_IDS": "9001"})
    Shopper(fake_tg, 9001, "Owner").send("/start", "Welcome")
    ann = Shopper(fake_tg, 2006, "Ann <3")
    fund(conn, 2006, 10000)
    ann.open_product("Berlin", "Mitte", "gift_card *25* · €25.00")
    ann.click("⚡ Buy now")
    ann.click("💰 Pay €25.00 from balance")
    alert = fake_tg.wait_message(9001, "Order #1 paid from balance")
    assert alert.text == "🛒 Order #1 paid from balance: €25.00, 1 item, by Ann <3 (2006)"
    fake_tg.wait_message(2006, "CODE-3")
    fake_tg.wait_for(
        lambda: not conn.execute("SELECT 1 FROM outbox WHERE status = 'pending'").fetchone(),
        what="the delivery sent",
    )
    fake_tg.user_blocks_bot(2006)
    assert shop.resend_delivery(conn, 2006, 1) is True
    fake_tg.wait_for(  # the items again, in one message
        lambda: (
            conn.execute("SELECT count(*) FROM outbox WHERE status = 'failed'").fetchone()[0] == 1
        ),
        what="the message failed",
    )
    warning = fake_tg.wait_message(9001, "⚠️ Order #1")
    assert warning.text == (
        "⚠️ Order #1: a delivery message to user 2006 failed: "
        "403: Forbidden: bot was blocked by the user"
    )
    fake_tg.wait_for(
        lambda: not conn.execute("SELECT 1 FROM outbox WHERE status = 'pending'").fetchone()
    )
    assert sum("⚠️" in m.text for m in fake_tg.messages(9001)) == 1


def test_a_banned_user_gets_one_polite_refusal(fake_tg, hostile_shop):
    proc, conn = hostile_shop
    ann = Shopper(fake_tg, 3001)
    ann.send("/start", "Welcome")
    ann.send("🛒 Shop", "Choose a city")
    shop.set_banned(conn, 3001, True)
    refusal = ann.send("/start", "not available to you")
    assert ann.click("Berlin") is None  # answered silently
    ann.name = "Ann again"
    fake_tg.user_sends(3001, "/shop", first_name=ann.name)
    fake_tg.wait_for(
        lambda: shop.get_user(conn, 3001)["first_name"] == "Ann again", what="the update handled"
    )
    assert ann.click("Berlin") is None
    assert [m.message_id for m in fake_tg.messages(3001) if m.message_id > refusal.message_id] == []
    assert "Choose a city" in fake_tg.messages(3001)[-2].text  # the old screen did not move
    shop.set_banned(conn, 3001, False)
    assert "Choose a city" in ann.send("/shop", "Choose a city").text


def test_unsent_deliveries_survive_a_restart(fake_tg, hostile_shop, run_shop):
    proc, conn = hostile_shop
    Shopper(fake_tg, 4001).send("/start", "Welcome")
    proc.kill()
    fund(conn, 4001, 10000)
    order_id = shop.buy_with_balance(conn, 4001, [(1, 1, 2)])  # while the shop is down
    assert conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] == 1
    run_shop()
    fake_tg.wait_message(4001, f"Order #{order_id} is paid")
    body = fake_tg.wait_message(4001, "CODE-<1>&_*")
    assert "CODE-2" in body.text
    fake_tg.wait_for(
        lambda: (
            conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] == 0
        ),
        what="the outbox to drain",
    )
    assert sum("CODE-2" in m.content for m in fake_tg.messages(4001)) == 1


def test_sigterm_stops_the_shop_within_5_seconds(fake_tg, run_shop):
    proc = run_shop()
    Shopper(fake_tg, 5001).send("/start", "Welcome")  # a long poll is now in flight
    code, seconds = proc.stop(signal.SIGTERM)
    assert code == 0 and seconds < 5, (code, seconds, proc.log)
    assert "stopped" in proc.log


def test_polling_survives_a_telegram_outage(fake_tg, run_shop):
    proc = run_shop()
    fake_tg.set_down(True)
    fake_tg.release_polls()
    proc.wait_log("bot: cannot get updates from Telegram")
    r = proc.health()
    assert r.status_code == 503 and r.json()["bot"].startswith("down: cannot get updates")
    fake_tg.set_down(False)
    Shopper(fake_tg, 5002).send(
        "/start", "Welcome"
    )  # (the first long poll after the outage returns)
    proc.wait_log("getting updates from Telegram again")
    assert proc.health().status_code == 200
    warnings = [line for line in proc.log.splitlines() if "cannot get updates" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0]


def test_health_reports_each_part(fake_tg, run_shop):
    proc = run_shop()
    page = requests.get(proc.url + "/", timeout=5).text
    assert 'href="https://t.me/test_shop_bot"' in page
    state = proc.health().json()
    assert proc.health().status_code == 200
    assert (state["database"], state["scheduler"], state["bot"], state["outbox"]["sender"]) == (
        "ok",
        "running",
        "running",
        "running",
    )


def test_a_refused_token_marks_the_bot_down(fake_tg, run_shop):
    proc = run_shop(env={"BOT_TOKEN": "999:wrong-token"}, ready="shop is running")
    proc.wait_log("Telegram refused BOT_TOKEN")
    r = proc.health()
    assert r.status_code == 503 and r.json()["bot"].startswith("down")
    assert "wrong-token" not in proc.log


def test_a_bot_without_payment_keys_says_test_mode_loudly(fake_tg, run_shop):
    proc = run_shop(env={"ADMIN_IDS": "9001", "TESTER_IDS": ""})
    line = proc.wait_log("TEST MODE")
    assert " WARNING " in line and "9001" in line and "NOWPAYMENTS_API_KEY" in line
    assert "TEST MODE" in proc.wait_log("shop is running")
    assert "owners: log in to the admin first" in proc.wait_log("Mini App preview")
    assert "https://t.me/test_shop_bot" in proc.wait_log("bot: @test_shop_bot is polling")
    page = requests.get(proc.url + "/", timeout=5).text
    assert (
        "Test mode" in page
        and 'href="https://t.me/test_shop_bot"' in page
        and 'href="/admin"' in page
    )
    assert "not selling yet" in Shopper(fake_tg, 6002).send("/start", "Welcome").text
    assert "you may buy here" in Shopper(fake_tg, 9001).send("/start", "Welcome").text


def test_a_photo_card_shown_again_is_edited_in_place_not_sent_anew(fake_tg, hostile_shop):
    """Adding to the basket from a product card with a photo edits that message in place
    (editMessageMedia with the photo's file_id): no delete, no new message, no second upload."""
    ann = Shopper(fake_tg, 1010)
    card = ann.open_product("Berlin", "Mitte", "gift_card *25* · €25.00")
    assert card.kind == "photo"
    uploads, deletes = len(fake_tg.calls_to("sendPhoto")), len(fake_tg.calls_to("deleteMessage"))
    assert ann.click("➕ Add to basket").startswith("Added to your basket")
    again = ann.screen
    assert again.message_id == card.message_id and again.kind == "photo"
    assert "In your basket: 1" in again.content
    assert len(fake_tg.calls_to("editMessageMedia")) == 1
    assert len(fake_tg.calls_to("sendPhoto")) == uploads
    assert len(fake_tg.calls_to("deleteMessage")) == deletes


# How Bot API calls travel (BotApiTransport)


@pytest.fixture
def transport(fake_tg, monkeypatch):
    """telebot's calls sent by the shop's transport, as a started shop sends them; put back
    after."""
    from telebot import apihelper

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(apihelper, "API_URL", fake_tg.base_url + "/bot{0}/{1}")
    monkeypatch.setattr(apihelper, "CUSTOM_REQUEST_SENDER", None)
    sent = shop.BotApiTransport.install(fake_tg.base_url, 4)
    assert sent is not None and apihelper.CUSTOM_REQUEST_SENDER is sent
    yield shop.PollingBot(fake_tg.token, threaded=False)


def test_bot_api_calls_go_over_urllib3_with_their_parameters_in_the_body(fake_tg, transport):
    """Text, keyboards and uploads arrive as sent (the stand-in parses forms and multipart as
    Telegram does); Telegram's refusals stay telebot's ApiTelegramException."""
    fake_tg.open_chat(4242)
    markup = shop.inline_markup([[("Poster · €19.00 & more", "prod:1:2")]])
    sent = transport.send_message(
        4242, "<b>Łódź</b> &amp; 🧺 " + "x" * 3000, parse_mode="HTML", reply_markup=markup
    )
    got = fake_tg.last_message(4242)
    assert got.message_id == sent.message_id and got.content == "Łódź & 🧺 " + "x" * 3000
    assert got.buttons == [[{"text": "Poster · €19.00 & more", "callback_data": "prod:1:2"}]]
    photo = png(6, 5)
    first = transport.send_photo(4242, photo, caption="QR", reply_markup=markup)
    assert fake_tg.uploads == {first.photo[-1].file_id: photo}
    again = transport.send_photo(4242, first.photo[-1].file_id, caption="again")
    assert fake_tg.last_message(4242).message_id == again.message_id
    assert again.photo[-1].file_id == first.photo[-1].file_id and len(fake_tg.uploads) == 1
    with pytest.raises(shop.apihelper.ApiTelegramException) as refused:
        transport.send_message(999_999_001, "nobody")
    assert refused.value.error_code == 400, refused.value


def test_the_parameters_travel_in_the_body_not_the_address(transport, monkeypatch):
    """A message of thousands of characters is not re-encoded into a URL on every call."""
    import http.server
    import threading

    from telebot import apihelper

    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], body))
            answer = b'{"ok": true, "result": {"message_id": 1, "date": 0, "text": "ok", ' + (
                b'"chat": {"id": 77, "type": "private"}}}'
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bot{{0}}/{{1}}"
        monkeypatch.setattr(apihelper, "API_URL", url)
        transport.send_message(77, "Added to your basket " + "x" * 3000)
    finally:
        server.shutdown()
        server.server_close()
    path, kind, body = seen[0]
    assert path.endswith("/sendMessage") and "?" not in path
    assert kind == "application/x-www-form-urlencoded"
    assert b"chat_id=77" in body and b"Added+to+your+basket+" + b"x" * 3000 in body


def test_network_failures_are_the_requests_exceptions_the_shop_handles(transport, monkeypatch):
    from telebot import apihelper

    port = free_port()  # nothing listens there
    monkeypatch.setattr(apihelper, "API_URL", f"http://127.0.0.1:{port}/bot{{0}}/{{1}}")
    with pytest.raises(requests.ConnectionError):
        transport.send_message(1, "hi")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/bot{{0}}/{{1}}"
        monkeypatch.setattr(apihelper, "API_URL", url)
        with pytest.raises(requests.ReadTimeout):
            apihelper._make_request(transport.token, "getMe", params={"timeout": 0.3})


def test_with_a_proxy_in_the_environment_the_transport_stands_aside(monkeypatch):
    """telebot's own requests path, which honours the proxy, is left in place."""
    from telebot import apihelper

    monkeypatch.setattr(apihelper, "CUSTOM_REQUEST_SENDER", object())
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert shop.BotApiTransport.install("https://api.telegram.org", 4) is None
    assert apihelper.CUSTOM_REQUEST_SENDER is None
