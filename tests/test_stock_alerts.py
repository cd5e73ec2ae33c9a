"""Stock alerts: shoppers told once when a sold-out product is back in their district (🔔 Notify
me, in the bot and the Mini App), and owners told once when a place runs low. Real SQLite, the real
shop over real HTTP, its bot on the Bot API stand-in."""

import json
import re

import pytest
import requests

import shop
from conftest import ADMIN_PASSWORD, TOKEN, Shopper, seed, user, wait_for_row, write_catalog
from harness import AdminClient

OWNERS = (9001, 9002)
BACK = "is back in stock in"


def call(s, method, path, user_id, **kw):
    """The Mini App API as the shopper `user_id` calls it, with initData signed by the bot."""
    headers = kw.pop("headers", {})
    if user_id is not None:
        tg_user = {"id": user_id, "first_name": f"U{user_id}", "language_code": "en"}
        headers["X-Telegram-Init-Data"] = shop.sign_init_data(tg_user, TOKEN, query_id="AAH")
    return requests.request(method, s.url + path, headers=headers, timeout=10, **kw)


def back_in_stock(conn):
    """The queued "back in stock" messages: [(chat_id, text, reply_markup)] in order."""
    return [
        (r["chat_id"], r["text"], r["reply_markup"])
        for r in conn.execute("SELECT * FROM outbox WHERE text LIKE ? ORDER BY id", (f"%{BACK}%",))
    ]


def watches(conn):
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT user_id, product_id, district_id FROM stock_watches ORDER BY 1"
        )
    ]


def owner_notes(conn):
    """The owners' low-stock notes queued: [(chat_id, text)] in order."""
    return [
        (r["chat_id"], r["text"])
        for r in conn.execute("SELECT chat_id, text FROM outbox WHERE text LIKE '📉 %' ORDER BY id")
    ]


def sell_out(conn, ids, product, district):
    """A shopper with money buys every unit of the product there from their balance."""
    buyer = user(conn, 900, balance=1_000_000)
    left = shop.get_offer(conn, *ids[(product, district)])["available"]
    shop.buy_with_balance(conn, buyer, [(*ids[(product, district)], left)])


@pytest.fixture
def live(make_shop, fake_tg):
    """The shop with its bot on the stand-in and two owners, who have opened the bot's chat."""
    s = make_shop(
        env={
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": fake_tg.base_url,
            "ADMIN_IDS": ",".join(map(str, OWNERS)),
        }
    )
    s.conn = shop.connect(s.config.shop_db)
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    for chat in (*OWNERS, 900):  # the owners, and the buyer who sells things out (sell_out)
        Shopper(fake_tg, chat, "Owner").send("/start", "Welcome")
    yield s
    s.conn.close()


# Back in stock ###############################################################


def test_shoppers_from_the_bot_and_the_app_are_told_once_when_units_are_added(live, fake_tg):
    conn = live.conn
    ids = seed(
        conn,
        [("Berlin", "Mitte", "Gift card <25>", 2500, 1), ("Berlin", "Mitte", "Coffee", 900, 3)],
    )
    gift = ids[("Gift card <25>", "Mitte")]
    sell_out(conn, ids, "Gift card <25>", "Mitte")

    # In the bot: the sold-out product is still listed in its district, and its card offers 🔔.
    ann = Shopper(fake_tg, 1001)
    card = ann.open_product("Berlin", "Mitte", "Gift card <25> · sold out")
    assert "❌ Sold out here" in card.content
    assert "🔔 Notify me" in card.button_texts and "➕ Add to basket" not in card.button_texts
    assert "We will message you" in ann.click("🔔 Notify me")
    card = ann.screen
    assert "🔔 We will message you when it is back here." in card.content
    assert "🔕 Don't notify me" in card.button_texts and "🔔 Notify me" not in card.button_texts

    # In the Mini App: the catalog lists it as sold out; Bob asks too (twice: asking once).
    bob = 502
    Shopper(fake_tg, bob, "Bob").send("/start", "Welcome")
    catalog = call(live, "GET", "/api/catalog", bob).json()
    mitte = catalog["cities"][0]["districts"][0]
    assert [(p["name"], p["available"]) for p in mitte["products"]] == [
        ("Coffee", 3),
        ("Gift card <25>", 0),
    ]
    assert mitte["lowest_price_text"] == "€9.00"  # what can be bought
    assert call(live, "GET", "/api/watch", bob).json() == {"watches": []}
    body = {"product_id": gift[0], "district_id": gift[1]}
    for _ in range(2):
        r = call(live, "POST", "/api/watch", bob, json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"watches": [body]}
    assert watches(conn) == [(bob, *gift), (1001, *gift)]
    assert back_in_stock(conn) == []

    # The owner adds two units: one message each, in the same transaction, and they are forgotten.
    added = shop.add_units(conn, live.config.media_dir, *gift, "GC-NEW-1\nGC-NEW-2")
    assert added["added"] == 2
    told = back_in_stock(conn)
    assert sorted(chat for chat, _, _ in told) == [bob, 1001]
    assert told[0][1] == "🔔 <b>Gift card &lt;25&gt;</b> is back in stock in Berlin / Mitte."
    assert f'"callback_data": "prod:{gift[0]}:{gift[1]}"' in told[0][2]
    assert watches(conn) == []
    for chat in (1001, bob):
        fake_tg.wait_message(chat, BACK)
    # The message's button opens the product's card, in stock again.
    ann.click("🛒 Open Gift card <25>")
    fake_tg.wait_for(
        lambda: "Available: 2" in ann.screen.content, what="the card of the product back in stock"
    )

    # A second restock tells nobody: nobody waits any more.
    shop.add_units(conn, live.config.media_dir, *gift, "GC-NEW-3")
    assert len(back_in_stock(conn)) == 2
    wait_for_row(conn, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE status = 'pending')")
    sent = [(c["chat_id"], c["text"]) for c in fake_tg.calls_to("sendMessage")]
    for chat in (1001, bob):
        assert sum(str(to) == str(chat) and BACK in text for to, text in sent) == 1


def test_dont_notify_me_takes_the_wish_back(live, fake_tg):
    conn = live.conn
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 1), ("Berlin", "Mitte", "Mug", 900, 1)])
    tea = ids[("Tea", "Mitte")]
    sell_out(conn, ids, "Tea", "Mitte")
    ann = Shopper(fake_tg, 1002)
    ann.open_product("Berlin", "Mitte", "Tea · sold out")
    ann.click("🔔 Notify me")
    assert "not be told" in ann.click("🔕 Don't notify me")
    assert "🔔 Notify me" in ann.screen.button_texts
    body = {"product_id": tea[0], "district_id": tea[1]}
    assert call(live, "POST", "/api/watch", 503, json=body).status_code == 200
    r = call(live, "DELETE", "/api/watch", 503, json=body)
    assert r.status_code == 200 and r.json() == {"watches": []}
    assert call(live, "DELETE", "/api/watch", 503, json=body).status_code == 200  # idempotent
    assert watches(conn) == []
    shop.add_units(conn, live.config.media_dir, *tea, "TEA-2")
    assert back_in_stock(conn) == []


def test_watching_needs_a_sold_out_product_and_bad_input_changes_nothing(live, fake_tg):
    conn = live.conn
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 2), ("Berlin", "Mitte", "Mug", 900, 1)])
    tea, mug = ids[("Tea", "Mitte")], ids[("Mug", "Mitte")]
    sell_out(conn, ids, "Mug", "Mitte")
    before = watches(conn)

    # In stock: refused, in words.
    r = call(live, "POST", "/api/watch", 504, json={"product_id": tea[0], "district_id": tea[1]})
    assert r.status_code == 400
    assert r.json()["error"] == (
        "Tea is in stock here, so there is nothing to wait for: you can buy it now."
    )
    cases = [  # (body, status, words)
        ({"product_id": 999, "district_id": tea[1]}, 404, "not in the shop any more"),
        ({"product_id": mug[0], "district_id": 999}, 404, "not in the shop any more"),
        ({"product_id": "abc", "district_id": tea[1]}, 400, "product_id must be a whole number"),
        ({"product_id": True, "district_id": tea[1]}, 400, "product_id must be a whole number"),
        ({"product_id": 1.5, "district_id": tea[1]}, 400, "product_id must be a whole number"),
        ({"product_id": -3, "district_id": tea[1]}, 400, "product_id must be from 1"),
        ({"product_id": mug[0]}, 400, "district_id must be a whole number"),
        ([mug[0], mug[1]], 400, "must be a JSON object"),
    ]
    for method in ("POST", "DELETE"):
        for body, status, words in cases:
            r = call(live, method, "/api/watch", 504, json=body)
            assert r.status_code == status, (method, body, r.text)
            assert words in r.json()["error"], (method, body, r.json())
        r = call(live, method, "/api/watch", 504, data=b"{not json")
        assert r.status_code == 400 and "JSON object" in r.json()["error"]
    assert call(live, "POST", "/api/watch", None).status_code == 401  # no initData
    assert watches(conn) == before == []

    # In the bot: the in-stock card has no 🔔, and a made-up button is refused the same way.
    ann = Shopper(fake_tg, 1003)
    card = ann.open_product("Berlin", "Mitte", "Tea · €5.00")
    assert "🔔 Notify me" not in card.button_texts

    def forge(data):
        """Press a button the card does not have (as a modified client could)."""
        cq = fake_tg.user_clicks(ann.id, card.message_id, data, forged=True)
        fake_tg.wait_for(lambda: cq in fake_tg.callback_answers, what=f"an answer to {data}")
        return fake_tg.callback_answers[cq].get("text") or ""

    assert "Tea is in stock here" in forge(f"watch:{tea[0]}:{tea[1]}")
    assert "not valid any more" in forge("watch:abc:1")
    assert "not in the shop" in forge(f"watch:999:{tea[1]}")
    assert watches(conn) == []


def test_a_catalog_import_tells_the_watchers_and_a_released_reservation_does_not(conn, tmp_path):
    """Units back on sale from an unpaid order are not a restock: the watchers wait for the owner's
    units (the import's here)."""
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 1), ("Berlin", "Mitte", "Mug", 900, 2)])
    tea = ids[("Tea", "Mitte")]
    holder, ann = user(conn, 700), user(conn, 701)
    nonce = shop.create_checkout(conn, holder, "order", 500, [(*tea, 1)])
    order_id, _, _ = shop.reserve_for_checkout(conn, holder, nonce, 30)
    shop.watch_offer(conn, ann, *tea)  # sold out: its one unit is held
    with shop.transaction(conn):
        shop.release_order_units(conn, order_id)
    assert shop.get_offer(conn, *tea)["available"] == 1
    assert back_in_stock(conn) == [] and watches(conn) == [(ann, *tea)]

    nonce = shop.create_checkout(conn, holder, "order", 500, [(*tea, 1)])
    shop.reserve_for_checkout(conn, holder, nonce, 30)
    catalog = {
        "cities": [{"name": "Berlin", "districts": ["Mitte"]}],
        "products": [
            {
                "name": "Tea",
                "price": "5.00",
                "stock": [{"city": "Berlin", "district": "Mitte", "content": "TEA-NEW"}],
            }
        ],
    }
    path = write_catalog(tmp_path, catalog)
    data = shop.read_catalog_file(path)
    shop.import_catalog(conn, data, tmp_path, tmp_path / "media", dry_run=True)
    assert back_in_stock(conn) == [] and watches(conn) == [(ann, *tea)]  # a dry run told nobody
    counts = shop.import_catalog(conn, data, tmp_path, tmp_path / "media")
    assert counts["units_added"] == 1
    assert [chat for chat, _, _ in back_in_stock(conn)] == [ann]
    assert watches(conn) == []


# Low stock ###################################################################


@pytest.fixture
def admin(make_shop):
    """The owner's admin over HTTP, in a shop with two owners (no bot: their notes stay queued)."""
    s = make_shop(env={"ADMIN_PASSWORD": ADMIN_PASSWORD, "ADMIN_IDS": "9001,9002"})
    s.conn = shop.connect(s.config.shop_db)
    a = AdminClient(s.url, ADMIN_PASSWORD, shop=s)
    assert a.login().status_code == 303
    yield a
    s.conn.close()


def noted_rows(page, card):
    """The dashboard's rows of a stock list that say the owners were told: [(product, when)]."""
    part = re.search(rf'<div class="card stock" id="{card}">.*?</div>', page, re.S).group(0)
    return re.findall(
        r'<a href="/admin/products/\d+">([^<]*)</a>.*?(?:Owners told ([0-9: -]+) UTC|</li>)',
        part,
        re.S,
    )


def test_balance_sales_tell_the_owners_once_per_fall_to_the_threshold(admin):
    s, conn = admin.shop, admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 5), ("Berlin", "Mitte", "Mug", 900, 9)])
    tea = ids[("Tea", "Mitte")]
    buyer = user(conn, 901, balance=1_000_000)

    def buy(n):
        shop.buy_with_balance(conn, buyer, [(*tea, n)], owners=s.config.admin_ids)

    buy(1)
    buy(1)  # 3 left: above the threshold (2)
    assert owner_notes(conn) == []
    buy(1)  # 2 left: the fall
    note = "📉 Low stock: <b>Tea</b> (€5.00) in Berlin / Mitte: 2 left (your threshold is 2)."
    assert owner_notes(conn) == [(9001, note), (9002, note)]
    buy(1)  # 1 left, then none: still the same fall
    page = admin.get("/admin").text
    noted_at = conn.execute("SELECT noted_at FROM low_stock_notes").fetchone()[0]
    assert noted_rows(page, "low-stock") == [("Tea", noted_at[:16].replace("T", " "))]
    buy(1)
    assert len(owner_notes(conn)) == 2
    page = admin.get("/admin").text
    assert noted_rows(page, "sold-out") == [("Tea", noted_at[:16].replace("T", " "))]

    # One unit back is not above the threshold: no new fall to tell. Three more are.
    shop.add_units(conn, s.config.media_dir, *tea, "TEA-A")
    assert conn.execute("SELECT available FROM low_stock_notes").fetchone()[0] == 2
    shop.add_units(conn, s.config.media_dir, *tea, "TEA-B\nTEA-C\nTEA-D")
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 0
    page = admin.get("/admin").text
    assert noted_rows(page, "low-stock") == [] and noted_rows(page, "sold-out") == []
    buy(1)  # 3 left
    assert len(owner_notes(conn)) == 2
    buy(2)  # 1 left: a new fall, one more note each
    again = "📉 Low stock: <b>Tea</b> (€5.00) in Berlin / Mitte: 1 left (your threshold is 2)."
    assert owner_notes(conn)[2:] == [(9001, again), (9002, again)]
    assert [name for name, when in noted_rows(admin.get("/admin").text, "low-stock") if when] == [
        "Tea"
    ]


def test_the_app_and_the_payment_desk_pass_the_owners_along(live, fake_tg):
    """A balance purchase in the Mini App and a crypto invoice from the desk both tell the owners;
    their notes reach the owners' chats."""
    conn = live.conn
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 3), ("Berlin", "Pankow", "Mug", 900, 2)])
    tea, mug = ids[("Tea", "Mitte")], ids[("Mug", "Pankow")]
    shop.adjust_balance(conn, user(conn, 505), 10_000, "test funds")
    body = {"type": "product", "product_id": tea[0], "district_id": tea[1], "quantity": 1}
    r = call(live, "POST", "/api/payment/create", 505, json={**body, "currency": "balance"})
    assert r.status_code == 200, r.text
    assert [chat for chat, _ in owner_notes(conn)] == list(OWNERS)
    nonce = shop.create_checkout(conn, 505, "order", 900, [(*mug, 1)])
    live.payments.open_order_invoice(505, nonce, "btc")  # holds one mug: 1 left in Pankow
    assert [text for chat, text in owner_notes(conn) if chat == OWNERS[0]] == [
        "📉 Low stock: <b>Tea</b> (€5.00) in Berlin / Mitte: 2 left (your threshold is 2).",
        "📉 Low stock: <b>Mug</b> (€9.00) in Berlin / Pankow: 1 left (your threshold is 2).",
    ]
    for owner in OWNERS:
        fake_tg.wait_for(
            lambda o=owner: sum("📉 Low stock" in m.content for m in fake_tg.messages(o)) == 2,
            what="both notes in the owner's chat",
        )


def test_reservations_that_come_and_go_do_not_tell_the_owners_again(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 3)])
    tea = ids[("Tea", "Mitte")]
    shopper = user(conn, 702)

    def reserve(n):
        nonce = shop.create_checkout(conn, shopper, "order", 500 * n, [(*tea, n)])
        return shop.reserve_for_checkout(conn, shopper, nonce, 30, owners=OWNERS)[0]

    order_id = reserve(1)  # 2 left: the fall
    assert len(owner_notes(conn)) == 2
    for _ in range(3):  # the invoice lapses, another is opened: the same fall, no new note
        with shop.transaction(conn):
            shop.release_order_units(conn, order_id)
        assert shop.get_offer(conn, *tea)["available"] == 3
        order_id = reserve(1)
    assert len(owner_notes(conn)) == 2
    with shop.transaction(conn):
        shop.release_order_units(conn, order_id)
    shop.add_units(conn, None, *tea, "TEA-NEW")  # 4 available: re-armed
    reserve(2)  # 2 left: told again
    assert len(owner_notes(conn)) == 4


def test_a_new_threshold_rearms_the_notes_and_zero_turns_them_off(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 4)])
    tea = ids[("Tea", "Mitte")]
    buyer = user(conn, 703, balance=100_000)

    def buy():
        shop.buy_with_balance(conn, buyer, [(*tea, 1)], owners=OWNERS)

    buy()
    buy()  # 2 left
    assert len(owner_notes(conn)) == 2
    shop.save_settings(conn, {"low_stock_threshold": "3"})  # still at or under it: kept
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 1
    shop.save_settings(conn, {"low_stock_threshold": "1"})  # 2 is above it now: re-armed
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 0
    buy()  # 1 left: the fall to the new threshold
    assert owner_notes(conn)[-1][1].endswith("1 left (your threshold is 1).")
    assert len(owner_notes(conn)) == 4
    shop.save_settings(conn, {"low_stock_threshold": "0"})
    assert conn.execute("SELECT count(*) FROM low_stock_notes").fetchone()[0] == 0
    buy()  # sold out, but the notes are off
    assert len(owner_notes(conn)) == 4


def test_each_shopper_is_told_in_their_own_language(conn, shop_languages):
    shop_languages(
        "de",
        de={
            "🔔 <b>{product}</b> is back in stock in {place}.": (
                "🔔 <b>{product}</b> ist wieder da in {place}."
            ),
            "🛒 Open {product}": "🛒 {product} öffnen",
        },
    )
    ids = seed(conn, [("Berlin", "Mitte", "Tea", 500, 1)])
    tea = ids[("Tea", "Mitte")]
    with shop.transaction(conn):
        conn.execute(
            "UPDATE products SET translations = ? WHERE id = ?",
            ('{"de": {"name": "Tee"}}', tea[0]),
        )
    buyer = user(conn, 704, balance=10_000)
    shop.buy_with_balance(conn, buyer, [(*tea, 1)])
    jonas, ann = user(conn, 705), user(conn, 706)
    shop.set_user_language(conn, jonas, "de")
    for shopper in (jonas, ann):
        shop.watch_offer(conn, shopper, *tea)
    shop.add_units(conn, None, *tea, "TEA-2")
    told = {chat: (text, markup) for chat, text, markup in back_in_stock(conn)}
    assert told[ann][0] == "🔔 <b>Tea</b> is back in stock in Berlin / Mitte."
    assert json.loads(told[ann][1])["inline_keyboard"][0][0]["text"] == "🛒 Open Tea"
    german = conn.execute("SELECT text, reply_markup FROM outbox WHERE chat_id = ?", (jonas,))
    text, markup = german.fetchone()
    assert text == "🔔 <b>Tee</b> ist wieder da in Berlin / Mitte."
    assert json.loads(markup)["inline_keyboard"] == [
        [{"text": "🛒 Tee öffnen", "callback_data": f"prod:{tea[0]}:{tea[1]}"}]
    ]
