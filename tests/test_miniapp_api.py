"""The Mini App's JSON API over real HTTP, authenticated by initData signed as Telegram signs it."""

import threading
import time

import pytest
import requests

import shop
from conftest import TOKEN, emulator, rows, seed, snapshot, user, wait_for_row
from harness import AdminClient

# From Telegram's documentation of initData validation (reference/telegram.md): valid, with an old
# auth_date.
REF_TOKEN = "5768337691:AAGDAe6rjxu1cUgxK4BizYi--Utc3J9v5AU"
REF_INIT_DATA = (
    "user=%7B%22id%22%3A279058397%2C%22first_name%22%3A%22Vladislav%22%2C%22last_name%22%3A%22Kibenko%22%2C"
    "%22username%22%3A%22vdkfrost%22%2C%22language_code%22%3A%22en%22%2C%22is_premium%22%3Atrue%2C"
    "%22allows_write_to_pm%22%3Atrue%7D&chat_instance=-3788475317572404878&chat_type=private&auth_date=1709144340"
    "&hash=371697738012ebd26a111ace4aff23ee265596cd64026c8c3677956a85ca1827"
)


def test_telegrams_own_example_verifies():
    user_ = shop.verify_init_data(REF_INIT_DATA, REF_TOKEN, max_age=None)
    assert user_["id"] == 279058397 and user_["username"] == "vdkfrost"
    with pytest.raises(shop.Unauthorized, match="older than 24 hours"):
        shop.verify_init_data(REF_INIT_DATA, REF_TOKEN)
    with pytest.raises(shop.Unauthorized, match="not signed"):
        shop.verify_init_data(REF_INIT_DATA, TOKEN, max_age=None)


ANN = {"id": 501, "first_name": "Ann <3", "username": "ann_*", "language_code": "en"}


@pytest.fixture
def app(make_shop, fake_tg):
    """A sandbox shop with its bot, whose Mini App initData is signed with the bot's token."""
    s = make_shop(env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url})
    s.conn = shop.connect(s.config.shop_db)
    s.ids = seed(
        s.conn,
        [
            ("Łódź <Centrum>", "Bałuty & Widzew", "gift_card *25*", 2500, 2),
            ("Łódź <Centrum>", "Bałuty & Widzew", "Sticker", 50, 40),
            ("Berlin", "Mitte", "Poster", 1900, 1),
        ],
    )
    yield s
    s.conn.close()


def call(s, method, path, user_=ANN, auth="header", **kw):
    headers = kw.pop("headers", {})
    if user_ is not None:
        init = shop.sign_init_data(user_, TOKEN, query_id="AAH")
        headers["X-Telegram-Init-Data" if auth == "header" else "Authorization"] = (
            init if auth == "header" else f"tma {init}"
        )
    return requests.request(method, s.url + path, headers=headers, timeout=10, **kw)


def ok(r):
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def refused(r, status, words=""):
    assert r.status_code == status, (r.status_code, r.text)
    assert words in r.json()["error"], r.json()
    return r.json()


def test_every_call_needs_initData_signed_by_the_bot(app):
    init = shop.sign_init_data(ANN, TOKEN)
    forged = init[:-1] + ("0" if init[-1] != "0" else "1")
    old = shop.sign_init_data(ANN, TOKEN, auth_date=time.time() - 86401)
    future = shop.sign_init_data(ANN, TOKEN, auth_date=time.time() + 3600)
    other_bot = shop.sign_init_data(ANN, "999:other-bot")
    no_user = shop.sign_init_data(ANN, TOKEN).replace("user=", "usr=", 1)
    for headers, words in [
        ({}, "Missing"),
        ({"X-Telegram-Init-Data": forged}, "not signed"),
        ({"X-Telegram-Init-Data": old}, "older than 24 hours"),
        ({"X-Telegram-Init-Data": future}, "future"),
        ({"X-Telegram-Init-Data": other_bot}, "not signed"),
        ({"X-Telegram-Init-Data": no_user}, ""),
        ({"X-Telegram-Init-Data": init + "&hash=" + "0" * 64}, "repeats"),
        ({"X-Telegram-Init-Data": "%%%"}, ""),
        ({"Authorization": "Bearer " + init}, "Missing"),
    ]:
        for path in ("/api/me", "/api/catalog", "/api/basket", "/api/orders"):
            refused(requests.get(app.url + path, headers=headers, timeout=5), 401, words)
    refused(
        requests.post(
            app.url + "/api/payment/create",
            headers={"X-Telegram-Init-Data": forged},
            json={"type": "basket", "currency": "btc"},
            timeout=5,
        ),
        401,
    )
    assert ok(call(app, "GET", "/api/me", auth="tma"))["id"] == 501
    assert app.conn.execute("SELECT count(*) FROM users WHERE id = 501").fetchone()[0] == 1


def test_me_and_the_catalog_use_strings_for_money_and_show_names_literally(app):
    me = ok(call(app, "GET", "/api/me"))
    assert me == {
        "id": 501,
        "first_name": "Ann <3",
        "username": "ann_*",
        "balance": "0.00",
        "currency": "EUR",
        "shop_name": "Demo Shop",
        "sandbox": True,
        "preview": False,
        "test_mode": True,
        "can_buy": True,
        "min_deposit": "5.00",
        "max_deposit": "10000.00",
        "stars": True,
        "telegram_rule": True,
        # Every amount also as the shopper's language writes it (Ann's Polish is not spoken yet).
        "balance_text": "€0.00",
        "min_deposit_text": "€5.00",
        "max_deposit_text": "€10,000.00",
        "suggested_top_ups": [
            {"amount": "10.00", "amount_text": "€10.00"},
            {"amount": "20.00", "amount_text": "€20.00"},
            {"amount": "50.00", "amount_text": "€50.00"},
            {"amount": "100.00", "amount_text": "€100.00"},
        ],
        "language": "en",
        "language_choice": None,
        "languages": [
            {"code": code, "name": shop.language(code).name()}
            for code in shop.available_languages()
        ],
        "referral": None,  # referrals are off
    }
    packed = call(app, "GET", "/api/catalog")
    assert (
        packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
    )
    plain = call(app, "GET", "/api/catalog", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.json() == packed.json()
    catalog = ok(packed)
    assert [c["name"] for c in catalog["cities"]] == ["Berlin", "Łódź <Centrum>"]
    products = catalog["cities"][1]["districts"][0]["products"]
    assert products[0] == {
        "id": app.ids[("gift_card *25*", "Bałuty & Widzew")][0],
        "name": "gift_card *25*",
        "description": "",
        "price": "25.00",
        "price_text": "€25.00",
        "available": 2,
        "photo_url": None,
        "kind": None,
        "methods": ["stars", "crypto", "balance"],
        "stars": 1250,  # €25.00 at the default 50 Stars per euro
        "stars_text": "1,250 ⭐",
    }
    assert catalog["cities"][1]["districts"][0]["lowest_price_text"] == "€0.50"
    buyer = user(app.conn, 2, balance=1900)
    shop.buy_with_balance(app.conn, buyer, [(*app.ids[("Poster", "Mitte")], 1)])
    assert [c["name"] for c in ok(call(app, "GET", "/api/catalog"))["cities"]] == [
        "Łódź <Centrum>"
    ]  # sold out


def test_the_basket_is_the_bots_basket(app):
    gift, sticker = (
        app.ids[("gift_card *25*", "Bałuty & Widzew")],
        app.ids[("Sticker", "Bałuty & Widzew")],
    )
    basket = ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": gift[0], "district_id": gift[1], "quantity": 2},
        )
    )
    assert basket["total"] == "50.00" and basket["count"] == 2
    ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": sticker[0], "district_id": sticker[1], "quantity": "3"},
        )
    )
    lines = shop.get_basket(app.conn, 501).lines  # what the bot's 🧺 Basket shows
    assert [(item.name, item.quantity) for item in lines] == [("gift_card *25*", 2), ("Sticker", 3)]
    basket = ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": sticker[0], "district_id": sticker[1], "quantity": 1},
        )
    )
    assert basket["total"] == "50.50"
    basket = ok(call(app, "DELETE", f"/api/basket/{basket['items'][0]['id']}"))
    assert [i["name"] for i in basket["items"]] == ["Sticker"]
    shop.add_to_basket(app.conn, 501, *gift)  # and the bot's basket is the app's
    assert ok(call(app, "GET", "/api/basket"))["count"] == 2


def test_basket_lines_carry_their_products_photo_for_thumbnails(app):
    """The product's public photo, None without one, and None once the product is off sale (the
    line stays, so the shopper can take it out)."""
    gift, sticker = (
        app.ids[("gift_card *25*", "Bałuty & Widzew")],
        app.ids[("Sticker", "Bałuty & Widzew")],
    )
    photo = shop.store_media(
        app.config.media_dir, b"\x89PNG\r\n\x1a\n" + b"x" * 50, "png", private=False
    )
    with shop.transaction(app.conn):
        app.conn.execute("UPDATE products SET photo = ? WHERE id = ?", (photo, gift[0]))
    for product, district in (gift, sticker):
        body = {"product_id": product, "district_id": district, "quantity": 1}
        basket = ok(call(app, "POST", "/api/basket", json=body))
    assert [(i["name"], i["photo_url"]) for i in basket["items"]] == [
        ("gift_card *25*", f"/media/{photo}"),
        ("Sticker", None),
    ]
    assert requests.get(app.url + f"/media/{photo}", timeout=5).status_code == 200  # public
    with shop.transaction(app.conn):
        app.conn.execute("UPDATE products SET is_active = 0 WHERE id = ?", (gift[0],))
    basket = ok(call(app, "GET", "/api/basket"))
    assert [(i["name"], i["photo_url"]) for i in basket["items"]] == [
        ("gift_card *25*", None),
        ("Sticker", None),
    ]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"product_id": 999, "district_id": 1, "quantity": 1}, 404, "not in the shop"),
        ({"product_id": 1, "district_id": 1, "quantity": 3}, 409, "only 2 of gift_card"),
        ({"product_id": 1, "district_id": 1, "quantity": 101}, 400, "from 0 to 100"),
        ({"product_id": 1, "district_id": 1, "quantity": -1}, 400, ""),
        ({"product_id": 1, "district_id": 1, "quantity": 1.5}, 400, "whole number"),
        ({"product_id": 1, "district_id": 1, "quantity": True}, 400, "whole number"),
        ({"product_id": "x", "district_id": 1, "quantity": 1}, 400, "whole number"),
        ({"district_id": 1, "quantity": 1}, 400, "product_id"),
    ],
)
def test_bad_basket_requests_get_a_reason_and_change_nothing(app, body, status, words):
    refused(call(app, "POST", "/api/basket", json=body), status, words)
    assert shop.get_basket(app.conn, 501).lines == []


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"{" * 100 + b"}" * 100, b"{}" * 9000]
)
def test_garbage_bodies_are_refused(app, raw):
    r = call(app, "POST", "/api/basket", data=raw, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["error"]


def test_currencies_show_their_minimums(app):
    coins = ok(call(app, "GET", "/api/currencies"))
    assert [c["code"] for c in coins] == shop.COIN_CODES
    assert coins[3] == {
        "code": "usdttrc20",
        "name": "Tether USD",
        "network": "TRC20",
        "label": "USDT · TRC20",
        "asset": "USDT",
        "minimum": "9.30",
        "minimum_text": "€9.30",
    }
    # The Mini App groups coins by asset, each with its networks.
    groups = {}
    for c in coins:
        groups.setdefault(c["asset"], []).append(c["network"])
    assert groups == {
        "BTC": ["BTC"],
        "ETH": ["ERC20"],
        "LTC": ["LTC"],
        "USDT": ["TRC20", "ERC20", "BEP20", "SOL"],
        "USDC": ["TRC20", "ERC20", "SOL"],
        "TON": ["TON"],
        "SOL": ["SOL"],
    }


def test_a_crypto_purchase_from_the_app(app):
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    invoice = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "ton",
                "request_id": "0123456789abcdef",
            },
        )
    )
    assert (
        invoice["status"] == "waiting"
        and invoice["price_amount"] == "25.00"
        and invoice["pay_currency"] == "ton"
    )
    assert invoice["pay_amount"] == "5.000000000" and invoice["payin_extra_id"] and invoice["open"]
    again = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "ton",
                "request_id": "0123456789abcdef",
            },
        )
    )
    assert again["payment_id"] == invoice["payment_id"]  # a repeated tap: one invoice
    for change in ({"currency": "btc"}, {"quantity": 2}):
        refused(
            call(
                app,
                "POST",
                "/api/payment/create",
                json={
                    "type": "product",
                    "product_id": gift[0],
                    "district_id": gift[1],
                    "quantity": 1,
                    "currency": "ton",
                    "request_id": "0123456789abcdef",
                    **change,
                },
            ),
            400,
            "",
        )
    qr = call(app, "GET", invoice["qr_url"])
    assert qr.status_code == 200 and qr.content.startswith(b"\x89PNG")
    ok(
        call(
            app, "POST", f"/api/payment/{invoice['payment_id']}/simulate", json={"outcome": "full"}
        )
    )
    wait_for_row(app.conn, "SELECT 1 FROM payments WHERE status = 'finished'")
    status = ok(call(app, "GET", f"/api/payment/status/{invoice['payment_id']}"))
    assert status["status"] == "finished" and status["final"]
    assert (status["order_status"], status["outcome"]) == ("paid", "delivered")
    orders = ok(call(app, "GET", "/api/orders"))["orders"]
    assert (
        orders[0]["status"] == "paid"
        and orders[0]["items"][0]["content"] == "gift_card *25*-Bałuty & Widzew-0"
    )


def test_paying_the_basket_from_the_balance(app):
    shop.touch_user(app.conn, ANN)
    shop.adjust_balance(app.conn, 501, 3000, "test")
    sticker = app.ids[("Sticker", "Bałuty & Widzew")]
    ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": sticker[0], "district_id": sticker[1], "quantity": 4},
        )
    )
    paid = ok(
        call(app, "POST", "/api/payment/create", json={"type": "basket", "currency": "balance"})
    )
    assert paid == {
        "order_id": paid["order_id"],
        "status": "paid",
        "balance": "28.00",
        "balance_text": "€28.00",
    }
    assert ok(call(app, "GET", "/api/basket"))["items"] == []
    assert ok(call(app, "GET", "/api/me"))["balance"] == "28.00"
    refused(
        call(app, "POST", "/api/payment/create", json={"type": "basket", "currency": "balance"}),
        400,
        "empty",
    )


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"type": "basket", "currency": "btc"}, 400, "basket is empty"),
        (
            {
                "type": "product",
                "product_id": 1,
                "district_id": 1,
                "quantity": 1,
                "currency": "doge",
            },
            400,
            "Unknown currency",
        ),
        (
            {
                "type": "product",
                "product_id": 1,
                "district_id": 1,
                "quantity": 0,
                "currency": "btc",
            },
            400,
            "quantity",
        ),
        (
            {
                "type": "product",
                "product_id": 1,
                "district_id": 1,
                "quantity": 3,
                "currency": "btc",
            },
            409,
            "only 2",
        ),
        (
            {
                "type": "product",
                "product_id": 2,
                "district_id": 1,
                "quantity": 1,
                "currency": "btc",
            },
            400,
            "takes payments from",
        ),
        (
            {
                "type": "product",
                "product_id": 1,
                "district_id": 1,
                "quantity": 1,
                "currency": "balance",
            },
            409,
            "short",
        ),
        ({"type": "gift", "currency": "btc"}, 400, "type must be"),
        (
            {
                "type": "product",
                "product_id": 1,
                "district_id": 1,
                "quantity": 1,
                "currency": "btc",
                "request_id": "../../x",
            },
            400,
            "request_id",
        ),
    ],
)
def test_bad_payment_requests_get_a_reason_and_reserve_nothing(app, body, status, words):
    refused(call(app, "POST", "/api/payment/create", json=body), status, words)
    assert (
        app.conn.execute("SELECT count(*) FROM stock_units WHERE status != 'available'").fetchone()[
            0
        ]
        == 0
    )
    assert app.conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 0


@pytest.mark.parametrize(
    "amount, status, words",
    [
        ("2", 400, "at least €5.00"),
        ("20000", 400, "at most"),
        ("abc", 400, "a number of euros"),
        (None, 400, "amount"),
        (-5, 400, "positive"),
        ("20,50", 200, ""),
    ],
)
def test_top_ups_from_the_app(app, amount, status, words):
    r = call(app, "POST", "/api/payment/refill", json={"amount": amount, "currency": "ltc"})
    if status == 200:
        assert ok(r)["price_amount"] == "20.50" and r.json()["kind"] == "topup"
    else:
        refused(r, status, words)


def test_someone_elses_payment_or_photo_is_not_found(app):
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    media = shop.store_media(
        app.config.media_dir, b"\x89PNG\r\n\x1a\n" + b"x" * 50, "png", private=True
    )
    app.conn.execute("UPDATE stock_units SET media = ?", (media,))
    invoice = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "btc",
            },
        )
    )
    ok(
        call(
            app, "POST", f"/api/payment/{invoice['payment_id']}/simulate", json={"outcome": "full"}
        )
    )
    wait_for_row(app.conn, "SELECT 1 FROM orders WHERE status = 'paid'")
    item = ok(call(app, "GET", "/api/orders"))["orders"][0]["items"][0]
    photo = call(app, "GET", item["media_url"])
    assert photo.status_code == 200 and photo.content.startswith(b"\x89PNG")
    assert "no-store" in photo.headers["Cache-Control"]
    eve = {"id": 666, "first_name": "Eve"}
    for path in (
        f"/api/payment/status/{invoice['payment_id']}",
        invoice["qr_url"],
        item["media_url"],
    ):
        refused(call(app, "GET", path, user_=eve), 404)
        assert call(app, "GET", path, user_=None).status_code == 401
    refused(
        call(
            app,
            "POST",
            f"/api/payment/{invoice['payment_id']}/simulate",
            user_=eve,
            json={"outcome": "full"},
        ),
        404,
    )
    assert ok(call(app, "GET", "/api/orders", user_=eve))["orders"] == []
    assert requests.get(app.url + "/media/" + media, timeout=5).status_code == 404


def test_unpaid_orders_show_no_goods(app):
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "btc",
            },
        )
    )
    order = ok(call(app, "GET", "/api/orders"))["orders"][0]
    assert order["status"] == "pending" and order["payment_id"]
    assert [i["content"] for i in order["items"]] == [None]


def test_invoice_limits_hold_in_the_app_too(make_shop, fake_tg):
    s = make_shop(
        env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url, "MAX_OPEN_INVOICES": "1"}
    )
    conn = shop.connect(s.config.shop_db)
    gift = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 5)])[("Gift card", "Mitte")]
    body = {
        "type": "product",
        "product_id": gift[0],
        "district_id": gift[1],
        "quantity": 1,
        "currency": "btc",
    }
    ok(call(s, "POST", "/api/payment/create", json=body))
    refused(call(s, "POST", "/api/payment/create", json=body), 429, "1 unpaid invoice")
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'reserved'").fetchone()[0]
        == 1
    )
    conn.close()


def test_cancel_from_the_app_frees_the_items(app):
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    invoice = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 2,
                "currency": "btc",
            },
        )
    )
    assert shop.get_offer(app.conn, *gift)["available"] == 0
    cancelled = ok(call(app, "POST", f"/api/payment/{invoice['payment_id']}/cancel"))
    assert not cancelled["open"] and shop.get_offer(app.conn, *gift)["available"] == 2
    assert (cancelled["status_text"], cancelled["order_status"]) == (
        "⌛ No longer open",
        "cancelled",
    )


def test_the_catalog_from_memory_is_the_full_paths_answer(app, fake_tg):
    """GET /api/catalog is answered before Bottle once all it needs is in memory
    (CatalogFastPath): the same bytes and headers as the full path. Whatever it cannot vouch for
    takes the full path: a ban, a commit since the shopper was read, the Authorization header, a
    query string, a header that is not ASCII."""
    fast, init = app.catalog_fast_path, shop.sign_init_data(ANN, TOKEN, query_id="AAH")

    def get(served, path="/api/catalog", **headers):
        """(status, headers but Date, body as sent) of a GET; served: how many of them the fast
        path must have answered (None: either)."""
        before = fast.served
        r = requests.get(
            app.url + path,
            headers={"X-Telegram-Init-Data": init, **headers},
            timeout=10,
            stream=True,
        )
        raw = r.raw.read(decode_content=False)
        assert served is None or fast.served - before == served, (path, headers)
        return r.status_code, {k: v for k, v in r.headers.items() if k != "Date"}, raw

    # Quiet first: the bot notes that it introduced itself (a commit) before it polls.
    fake_tg.wait_for(lambda: fake_tg.calls_to("getUpdates"), what="the bot polling")
    assert get(0)[0] == 200  # verified, recorded, built; the recording is a commit
    assert get(0)[0] == 200  # read again after that commit
    for encoding in ("gzip, deflate, br", "identity"):
        full = get(0, "/api/catalog?full=1", **{"Accept-Encoding": encoding})
        from_memory = get(1, **{"Accept-Encoding": encoding})
        assert from_memory == full and full[0] == 200
    assert from_memory[1]["Content-Type"] == "application/json"
    assert from_memory[1]["Cache-Control"] == "no-store"
    assert from_memory[1]["X-Frame-Options"] == "DENY"
    assert "Content-Encoding" not in from_memory[1]
    gzipped = get(1, **{"Accept-Encoding": "gzip"})
    assert gzipped[1]["Content-Encoding"] == "gzip" and gzipped[2][:2] == b"\x1f\x8b"
    assert get(0, **{"X-Telegram-Init-Data": "", "Authorization": f"tma {init}"})[0] == 200
    assert get(0, **{"X-Note": "caf\u00e9".encode().decode("latin1")})[0] == 200
    shop.set_banned(app.conn, 501, True)  # a commit: the shopper is read again, and refused
    status, _, body = get(0)
    assert status == 403 and "not available to you" in body.decode()
    assert get(0)[0] == 403
    shop.set_banned(app.conn, 501, False)
    assert get(0)[0] == 200 and get(None)[0] == 200 and get(1)[0] == 200
    other = shop.sign_init_data({**ANN, "first_name": "Ann B"}, TOKEN, query_id="AAH")
    assert get(0, **{"X-Telegram-Init-Data": other})[0] == 200  # first seen: verified, recorded


def test_a_banned_shopper_is_refused(app):
    shop.touch_user(app.conn, ANN)
    shop.set_banned(app.conn, 501, True)
    refused(call(app, "GET", "/api/catalog"), 403, "not available to you")


def preview_init_data(s):
    """The preview shopper's initData as the Mini App page in a browser gets it: with a bot
    connected, from the admin, for an owner who logged in."""
    owner = AdminClient(s.url, s.new_admin_password)
    r = owner.login(next_path="/app", token_page=None)
    assert r.status_code == 303 and r.headers["Location"].endswith("/app"), r.text
    return ok(owner.get("/admin/app-preview", timeout=5))["initData"]


def test_the_page_and_the_preview(app, make_shop):
    page = requests.get(app.url + "/app", timeout=5)
    assert page.status_code == 200 and "telegram-web-app.js" in page.text
    assert 'data-preview="/admin/app-preview"' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self' https://telegram.org" in csp and "frame-ancestors" in csp
    assert (
        page.headers["X-Content-Type-Options"] == "nosniff"
        and "X-Frame-Options" not in page.headers
    )
    # With a bot connected, the preview shopper (who may simulate payments) is for owners only.
    assert (
        refused(requests.get(app.url + "/app/preview", timeout=5), 403, "log in to the admin")[
            "login"
        ]
        == "/admin/login?next=/app"
    )
    assert (
        refused(requests.get(app.url + "/admin/app-preview", timeout=5), 401, "log in")["login"]
        == "/admin/login?next=/app"
    )
    init = preview_init_data(app)
    me = ok(requests.get(app.url + "/api/me", headers={"X-Telegram-Init-Data": init}, timeout=5))
    assert me["preview"] and me["id"] == -1
    live = make_shop(
        env={
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": app.config.telegram_api_url,
            "NOWPAYMENTS_API_KEY": "k",
            "NOWPAYMENTS_IPN_SECRET": "s",
            "NOWPAYMENTS_API_URL": "http://127.0.0.1:9",
        },
        name="live",
    )
    refused(requests.get(live.url + "/app/preview", timeout=5), 404, "sandbox")
    refused(
        requests.get(live.url + "/api/me", headers={"X-Telegram-Init-Data": init}, timeout=5), 401
    )
    preview_signed_right = shop.sign_init_data(shop.PREVIEW_USER, TOKEN)
    refused(
        requests.get(
            live.url + "/api/me", headers={"X-Telegram-Init-Data": preview_signed_right}, timeout=5
        ),
        401,
        "Not a Telegram user",
    )


def test_the_preview_shopper_never_gets_telegram_messages(app):
    init = preview_init_data(app)
    h = {"X-Telegram-Init-Data": init}
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    invoice = ok(
        requests.post(
            app.url + "/api/payment/create",
            headers=h,
            timeout=5,
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "btc",
            },
        )
    )
    ok(
        requests.post(
            app.url + f"/api/payment/{invoice['payment_id']}/simulate",
            headers=h,
            timeout=5,
            json={"outcome": "over"},
        )
    )
    wait_for_row(app.conn, "SELECT 1 FROM payments WHERE status = 'finished'")
    assert app.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert ok(requests.get(app.url + "/api/me", headers=h, timeout=5))["balance"] == "12.49"
    assert emulator(app, {"provider_id": invoice["payment_id"]})["payment_status"] == "finished"


def test_many_top_ups_at_once_in_sandbox_mode_never_starve_the_web_server(app):
    """The sandbox answers the shop's provider calls from the same web server: with more invoices
    being made at once than it has threads, the calls queue for a few slots instead of taking every
    thread."""
    from concurrent.futures import ThreadPoolExecutor

    shoppers = [{"id": 700 + i, "first_name": f"S{i}"} for i in range(12)]
    with ThreadPoolExecutor(len(shoppers)) as pool:
        answers = list(
            pool.map(
                lambda u: call(
                    app,
                    "POST",
                    "/api/payment/refill",
                    user_=u,
                    json={"amount": "10", "currency": "ltc"},
                ),
                shoppers,
            )
        )
    assert [r.status_code for r in answers] == [200] * len(shoppers), [
        r.text for r in answers if r.status_code != 200
    ]
    assert app.conn.execute("SELECT count(*) FROM payments WHERE kind = 'topup'").fetchone()[
        0
    ] == len(shoppers)


# Trust under pressure (issue 10)


def at_once(s, requests_):
    """Send [(method, path, user, body)] to shop s all at the same moment; return the answers in
    order."""
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(len(requests_))

    def send(args):
        method, path, user_, body = args
        start.wait()
        return call(s, method, path, user_=user_, json=body)

    with ThreadPoolExecutor(len(requests_)) as pool:
        return list(pool.map(send, requests_))


def shop_with_gift_cards(make_shop, fake_tg, units, **env):
    """A sandbox shop with its bot (so: in test mode) and `units` gift cards;
    (shop, connection, gift ids)."""
    s = make_shop(env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url, **env})
    conn = shop.connect(s.config.shop_db)
    return (
        s,
        conn,
        seed(conn, [("Berlin", "Mitte", "Gift card", 2500, units)])[("Gift card", "Mitte")],
    )


def test_invoice_limits_hold_when_one_shopper_sends_30_requests_at_once(make_shop, fake_tg):
    s, conn, gift = shop_with_gift_cards(
        make_shop,
        fake_tg,
        400,
        MAX_OPEN_INVOICES="3",
        MAX_INVOICES_PER_HOUR="100",
        MAX_UNPAID_UNITS="1000",
    )
    orders = at_once(
        s,
        [
            (
                "POST",
                "/api/payment/create",
                ANN,
                {
                    "type": "product",
                    "product_id": gift[0],
                    "district_id": gift[1],
                    "quantity": 40,
                    "currency": "ltc",
                    "request_id": f"{i:016x}",
                },
            )
            for i in range(30)
        ],
    )
    codes = sorted(r.status_code for r in orders)
    assert codes == [200] * 3 + [429] * 27, [
        r.text for r in orders if r.status_code not in (200, 429)
    ]
    assert all("3 unpaid invoices" in r.json()["error"] for r in orders if r.status_code == 429)
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'reserved'").fetchone()[0]
        == 120
    )
    assert conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()[0] == 3
    # Top-ups: the same race, the same answer (here against a shopper of their own).
    bob = {"id": 502, "first_name": "Bob"}
    topups = at_once(
        s,
        [
            (
                "POST",
                "/api/payment/refill",
                bob,
                {"amount": "10", "currency": "ltc", "request_id": f"{i:016x}"},
            )
            for i in range(100, 130)
        ],
    )
    assert sorted(r.status_code for r in topups) == [200] * 3 + [429] * 27
    assert conn.execute("SELECT count(*) FROM payments WHERE user_id = 502").fetchone()[0] == 3
    assert (
        conn.execute("SELECT count(*) FROM checkouts WHERE invoicing_since IS NOT NULL").fetchone()[
            0
        ]
        == 0
    )
    conn.close()


def test_the_bot_and_the_app_together_stay_within_the_limits(make_shop, fake_tg):
    """Invoices from the bot's coin buttons and the Mini App, for one shopper, at the same
    moment."""
    s, conn, gift = shop_with_gift_cards(
        make_shop, fake_tg, 50, MAX_OPEN_INVOICES="2", MAX_UNPAID_UNITS="1000"
    )
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    fake_tg.user_sends(501, "/start")
    screen = fake_tg.wait_message(501, "Welcome")
    nonces = [shop.create_checkout(conn, 501, "order", 2500, [(*gift, 1)]) for _ in range(6)]
    clicks = [
        fake_tg.user_clicks(501, screen.message_id, f"coin:{n}:ltc", forged=True) for n in nonces
    ]
    answers = at_once(
        s,
        [
            (
                "POST",
                "/api/payment/create",
                ANN,
                {
                    "type": "product",
                    "product_id": gift[0],
                    "district_id": gift[1],
                    "quantity": 1,
                    "currency": "ltc",
                    "request_id": f"{i:016x}",
                },
            )
            for i in range(6)
        ],
    )
    for cq in clicks:
        fake_tg.wait_for(
            lambda cq=cq: cq in fake_tg.callback_answers, what="the bot's answer to a coin button"
        )
    assert conn.execute("SELECT count(*) FROM orders WHERE status = 'pending'").fetchone()[0] == 2
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'reserved'").fetchone()[0]
        == 2
    )
    assert sum(r.status_code == 200 for r in answers) <= 2
    conn.close()


def test_one_shopper_cannot_hold_more_than_the_owner_allows_unpaid(make_shop, fake_tg):
    s, conn, gift = shop_with_gift_cards(make_shop, fake_tg, 400, MAX_UNPAID_UNITS="10")
    body = {"type": "product", "product_id": gift[0], "district_id": gift[1], "currency": "ltc"}
    ok(call(s, "POST", "/api/payment/create", json={**body, "quantity": 6}))
    refused(
        call(s, "POST", "/api/payment/create", json={**body, "quantity": 5}),
        429,
        "at most 10 items at once, and this one would hold 5. Pay or cancel an invoice first, "
        "or buy fewer. Yours hold 6 already.",
    )
    ok(call(s, "POST", "/api/payment/create", json={**body, "quantity": 4}))
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'reserved'").fetchone()[0]
        == 10
    )
    # Paying from the balance holds nothing unpaid, so the cap does not apply to it.
    shop.touch_user(conn, ANN)
    shop.adjust_balance(conn, 501, 50000, "test")
    ok(call(s, "POST", "/api/payment/create", json={**body, "quantity": 12, "currency": "balance"}))
    conn.close()


def test_in_test_mode_only_owners_and_their_testers_can_buy_or_simulate(make_shop, fake_tg):
    s, conn, gift = shop_with_gift_cards(make_shop, fake_tg, 3, ADMIN_IDS="9001", TESTER_IDS="")
    owner = {"id": 9001, "first_name": "Owner"}
    body = {"type": "product", "product_id": gift[0], "district_id": gift[1], "quantity": 1}
    me = ok(call(s, "GET", "/api/me"))
    assert me["test_mode"] and not me["can_buy"]
    shop.adjust_balance(conn, 501, 10000, "a balance that must not buy either")
    before = rows(snapshot(conn))
    for path, payload in (
        ("/api/payment/create", {**body, "currency": "btc"}),
        ("/api/payment/create", {**body, "currency": "balance"}),
        ("/api/payment/refill", {"amount": "20", "currency": "ltc"}),
    ):
        refused(call(s, "POST", path, json=payload), 403, "test mode")
    invoice = ok(
        call(s, "POST", "/api/payment/create", user_=owner, json={**body, "currency": "btc"})
    )
    assert invoice["simulate"] and invoice["sandbox"]
    refused(
        call(s, "POST", f"/api/payment/{invoice['payment_id']}/simulate", json={"outcome": "full"}),
        404,
    )
    after = rows(snapshot(conn))
    assert after["ledger"] == before["ledger"] and [r for r in after["orders"] if r[1] == 501] == []
    ok(
        call(
            s,
            "POST",
            f"/api/payment/{invoice['payment_id']}/simulate",
            user_=owner,
            json={"outcome": "full"},
        )
    )
    wait_for_row(conn, "SELECT 1 FROM orders WHERE user_id = 9001 AND status = 'paid'")
    assert ok(call(s, "GET", "/api/me", user_=owner))["can_buy"]
    conn.close()


def test_without_a_bot_the_preview_shopper_is_open_to_the_browser(make_shop):
    s = make_shop()
    assert 'data-preview="/app/preview"' in requests.get(s.url + "/app", timeout=5).text
    init = ok(requests.get(s.url + "/app/preview", timeout=5))["initData"]
    me = ok(requests.get(s.url + "/api/me", headers={"X-Telegram-Init-Data": init}, timeout=5))
    assert me["preview"] and me["can_buy"] and not me["test_mode"]


def test_a_basket_invoice_empties_the_basket_and_cancelling_it_fills_it_again(app):
    gift, sticker = (
        app.ids[("gift_card *25*", "Bałuty & Widzew")],
        app.ids[("Sticker", "Bałuty & Widzew")],
    )
    ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": gift[0], "district_id": gift[1], "quantity": 2},
        )
    )
    ok(
        call(
            app,
            "POST",
            "/api/basket",
            json={"product_id": sticker[0], "district_id": sticker[1], "quantity": 3},
        )
    )
    body = {"type": "basket", "currency": "btc", "request_id": "00000000000000aa"}
    invoice = ok(call(app, "POST", "/api/payment/create", json=body))
    assert ok(call(app, "GET", "/api/basket"))["items"] == []
    assert (
        ok(call(app, "POST", "/api/payment/create", json=body))["payment_id"]
        == invoice["payment_id"]
    )  # a retry
    refused(
        call(app, "POST", "/api/payment/create", json={**body, "request_id": "00000000000000bb"}),
        400,
        "empty",
    )
    assert app.conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    ok(call(app, "POST", f"/api/payment/{invoice['payment_id']}/cancel"))
    basket = ok(call(app, "GET", "/api/basket"))
    assert [(i["name"], i["quantity"], i["reserved"]) for i in basket["items"]] == [
        ("gift_card *25*", 2, 0),
        ("Sticker", 3, 0),
    ]


# Telegram Stars ##############################################################


def kinds(s, **products):
    """Set products' kind and ways to pay: name=(kind, "stars,crypto" or None)."""
    with shop.transaction(s.conn):
        for name, (kind, methods) in products.items():
            s.conn.execute(
                "UPDATE products SET kind = ?, pay_methods = ? WHERE name = ?",
                (kind, methods, name),
            )


def put(s, product, quantity, user_=ANN):
    ids = s.ids[(product, "Bałuty & Widzew")]
    body = {"product_id": ids[0], "district_id": ids[1], "quantity": quantity}
    return ok(call(s, "POST", "/api/basket", user_=user_, json=body))


def test_a_basket_that_shares_no_way_to_pay_is_checked_out_one_part_at_a_time(app):
    kinds(app, **{"gift_card *25*": ("digital", None), "Sticker": ("physical", "crypto,balance")})
    gift, sticker = (
        app.ids[("gift_card *25*", "Bałuty & Widzew")],
        app.ids[("Sticker", "Bałuty & Widzew")],
    )
    put(app, "gift_card *25*", 2)
    basket = put(app, "Sticker", 3)
    assert basket["payment"] == {
        "methods": [],
        "stars": None,
        "stars_text": None,
        "parts": [
            {
                "methods": ["stars"],
                "lines": [[*gift, 2]],
                "total": "50.00",
                "total_text": "€50.00",
                "stars": 2500,
                "stars_text": "2,500 ⭐",
            },
            {
                "methods": ["crypto", "balance"],
                "lines": [[*sticker, 3]],
                "total": "1.50",
                "total_text": "€1.50",
                "stars": None,
                "stars_text": None,
            },
        ],
    }
    # What checkout shows: each way's amount, for a part paid that way, worded by the shop.
    quote = ok(call(app, "POST", "/api/checkout/quote", json={"type": "basket"}))
    assert quote["parts"] == basket["payment"]["parts"] and quote["methods"] == []
    assert quote["total_text"] == "€51.50"
    assert quote["ways"] == {
        "stars": {
            "total": "50.00",
            "total_text": "€50.00",
            "discount_text": None,
            "stars": 2500,
            "stars_text": "2,500 ⭐",
        },
        "crypto": {"total": "1.50", "total_text": "€1.50", "discount_text": None},
        "balance": {
            "total": "1.50",
            "total_text": "€1.50",
            "discount_text": None,
            "balance_text": "€0.00",
            "short_text": "€1.50",
        },
    }
    whole = {"type": "basket", "currency": "stars"}
    refused(call(app, "POST", "/api/payment/create", json=whole), 400, "Sticker cannot be paid")
    assert ok(call(app, "GET", "/api/basket"))["count"] == 5  # nothing moved

    part = {**whole, "part": True, "request_id": "0000000000000c01"}
    invoice = ok(call(app, "POST", "/api/payment/create", json=part))
    assert (invoice["pay_currency"], invoice["stars"], invoice["price_amount"]) == (
        "xtr",
        2500,
        "50.00",
    )
    assert (invoice["invoice_link"], invoice["payment_uri"], invoice["qr_url"]) == (
        None,
        None,
        None,
    )
    assert invoice["simulate"] is True and invoice["open"]
    assert (
        ok(call(app, "POST", "/api/payment/create", json=part))["payment_id"]
        == invoice["payment_id"]
    )
    rest = ok(call(app, "GET", "/api/basket"))
    assert [(i["name"], i["quantity"]) for i in rest["items"]] == [("Sticker", 3)]
    assert rest["payment"] == {
        "methods": ["crypto", "balance"],
        "stars": None,
        "stars_text": None,
        "parts": [],
    }
    refused(
        call(app, "POST", "/api/payment/create", json={**part, "request_id": "0000000000000c02"}),
        400,
        "Nothing in your basket is paid with ⭐ Telegram Stars",
    )

    pid = invoice["payment_id"]
    refused(call(app, "GET", f"/api/payment/{pid}/qr"), 404, "no QR code")
    refused(
        call(app, "POST", f"/api/payment/{pid}/simulate", json={"outcome": "partial"}),
        400,
        "paid in full or not at all",
    )
    ok(call(app, "POST", f"/api/payment/{pid}/simulate", json={"outcome": "full"}))
    status = ok(call(app, "GET", f"/api/payment/status/{pid}"))
    assert (status["status"], status["order_status"], status["final"]) == ("finished", "paid", True)
    [order] = ok(call(app, "GET", "/api/orders"))["orders"]
    assert (order["method"], order["stars"], order["total"]) == ("stars", 2500, "50.00")
    assert [i["content"] is not None for i in order["items"]] == [True, True]

    shop.adjust_balance(app.conn, 501, 1000, "test")
    paid = ok(
        call(
            app,
            "POST",
            "/api/payment/create",
            json={"type": "basket", "currency": "balance", "part": True},
        )
    )
    assert paid["balance"] == "8.50" and ok(call(app, "GET", "/api/basket"))["items"] == []
    orders = ok(call(app, "GET", "/api/orders"))["orders"]
    assert [(o["method"], o["stars"]) for o in orders] == [("balance", None), ("stars", 2500)]


def test_a_stars_invoice_is_cancelled_like_a_crypto_one(app):
    kinds(app, **{"gift_card *25*": ("digital", None)})
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    body = {"type": "product", "product_id": gift[0], "district_id": gift[1], "quantity": 2}
    refused(
        call(app, "POST", "/api/payment/create", json={**body, "currency": "balance"}),
        400,
        "by Telegram's rule",
    )
    invoice = ok(call(app, "POST", "/api/payment/create", json={**body, "currency": "stars"}))
    assert shop.get_offer(app.conn, *gift)["available"] == 0
    cancelled = ok(call(app, "POST", f"/api/payment/{invoice['payment_id']}/cancel"))
    assert (cancelled["open"], cancelled["order_status"]) == (False, "cancelled")
    assert shop.get_offer(app.conn, *gift)["available"] == 2
    refused(
        call(
            app, "POST", f"/api/payment/{invoice['payment_id']}/simulate", json={"outcome": "full"}
        ),
        400,
    )
    assert (
        app.conn.execute("SELECT count(*) FROM stock_units WHERE status = 'sold'").fetchone()[0]
        == 0
    )


def test_the_catalog_follows_telegrams_rule_and_the_stars_rate_at_once(app):
    kinds(app, **{"gift_card *25*": ("digital", None)})

    def gift():
        catalog = ok(call(app, "GET", "/api/catalog"))
        products = catalog["cities"][1]["districts"][0]["products"]
        return next((p["methods"], p["stars"]) for p in products if p["name"] == "gift_card *25*")

    assert gift() == (["stars"], 1250)
    shop.save_settings(app.conn, {"telegram_rule": "0"})
    assert gift() == (["stars", "crypto", "balance"], 1250)
    shop.save_settings(app.conn, {"stars_per_euro": "60"})
    assert gift() == (["stars", "crypto", "balance"], 1500)


# Languages (issue 14) ########################################################

ANN_PL = {**ANN, "language_code": "pl"}  # Ann's Telegram in Polish
BERND = {"id": 502, "first_name": "Bernd", "username": None, "language_code": "de-AT"}
JOSE = {"id": 503, "first_name": "José", "username": None, "language_code": "fr"}


def spoken(code, fn, *args):
    with shop.speaking(code):
        return fn(*args)


def test_the_app_speaks_telegrams_language_then_the_shoppers_choice(app, shop_languages):
    shop_languages("de", "pl")
    gift = app.ids[("gift_card *25*", "Bałuty & Widzew")]
    with shop.transaction(app.conn):  # the owner named the gift card in German
        app.conn.execute(
            "UPDATE products SET translations = ? WHERE id = ?",
            ('{"de": {"name": "Geschenkgutschein"}}', gift[0]),
        )
    # Telegram's language_code from the signed initData: Polish; Austrian German is German; a
    # language the shop does not speak is the shop's default (English).
    me = ok(call(app, "GET", "/api/me", user_=ANN_PL))
    assert (me["language"], me["language_choice"]) == ("pl", None)
    assert me["languages"] == [
        {"code": "en", "name": "English"},
        {"code": "de", "name": "Deutsch"},
        {"code": "pl", "name": "Polski"},
    ]
    assert me["max_deposit_text"] == "10\u00a0000,00\u00a0€"
    assert ok(call(app, "GET", "/api/me", user_=BERND))["language"] == "de"
    assert ok(call(app, "GET", "/api/me", user_=JOSE))["language"] == "en"
    assert shop.get_user(app.conn, 502)["language_code"] == "de-AT"  # stored, as touch_user does

    # Names and amounts in each language: the catalog is kept once per language.
    def product(user_):
        catalog = ok(call(app, "GET", "/api/catalog", user_=user_))
        return catalog["cities"][1]["districts"][0]["products"][0]

    assert {k: product(BERND)[k] for k in ("name", "price", "price_text", "stars_text")} == {
        "name": "Geschenkgutschein",
        "price": "25.00",
        "price_text": "25,00\u00a0€",
        "stars_text": "1.250 ⭐",
    }
    assert (product(ANN_PL)["name"], product(ANN_PL)["stars_text"]) == (
        "gift_card *25*",
        "1\u00a0250 ⭐",
    )
    assert product(JOSE)["price_text"] == "€25.00"
    basket = ok(
        call(
            app,
            "POST",
            "/api/basket",
            user_=BERND,
            json={"product_id": gift[0], "district_id": gift[1], "quantity": 2},
        )
    )
    assert (basket["items"][0]["name"], basket["total_text"]) == (
        "Geschenkgutschein",
        "50,00\u00a0€",
    )
    quote = ok(call(app, "POST", "/api/checkout/quote", user_=BERND, json={"type": "basket"}))
    assert quote["ways"]["balance"]["short_text"] == "50,00\u00a0€"
    assert quote["lines"][0]["price_text"] == "25,00\u00a0€"

    # Ann chooses German: remembered (the bot reads it too), and said in German from then on.
    chosen = ok(call(app, "POST", "/api/language", user_=ANN_PL, json={"language": "de"}))
    assert (chosen["language"], chosen["language_choice"]) == ("de", "de")
    assert chosen["balance_text"] == "0,00\u00a0€"
    assert shop.get_user(app.conn, 501)["language"] == "de"
    assert ok(call(app, "GET", "/api/me", user_=ANN_PL))["language"] == "de"
    assert product(ANN_PL)["name"] == "Geschenkgutschein"
    refused(
        call(
            app,
            "POST",
            "/api/basket",
            user_=ANN_PL,
            json={"product_id": "x", "district_id": 1, "quantity": 1},
        ),
        400,
        "product_id muss eine ganze Zahl sein.",
    )
    # null: Telegram's language again.
    back = ok(call(app, "POST", "/api/language", user_=ANN_PL, json={"language": None}))
    assert (back["language"], back["language_choice"]) == ("pl", None)
    assert shop.get_user(app.conn, 501)["language"] is None


@pytest.mark.parametrize("language", ["xx", "DE", "", 5, ["de"], {"code": "de"}])
def test_a_language_the_shop_does_not_speak_is_refused(app, shop_languages, language):
    shop_languages("de")
    error = refused(
        call(app, "POST", "/api/language", user_=ANN_PL, json={"language": language}), 400
    )["error"]
    assert "en, de" in error
    assert shop.get_user(app.conn, 501)["language"] is None
    refused(call(app, "POST", "/api/language", user_=ANN_PL, data=b"[1]"), 400, "JSON object")


def test_before_the_shopper_is_known_the_app_speaks_the_shops_default_language(app, shop_languages):
    shop_languages("de", "pl")
    shop.save_settings(app.conn, {"default_language": "de"})
    refused(requests.get(app.url + "/api/me", timeout=5), 401, "Telegram-initData fehlen")
    page = requests.get(app.url + "/app", timeout=5)
    assert '<html lang="de">' in page.text and "Demo Shop wird geladen…" in page.text
    page = requests.get(app.url + "/app?lang=pl", timeout=5)  # where the bot names it
    assert '<html lang="pl">' in page.text and "Ładowanie: Demo Shop…" in page.text
    assert '<html lang="de">' in requests.get(app.url + "/app?lang=xx", timeout=5).text
    assert ok(call(app, "GET", "/api/me", user_=JOSE))["language"] == "de"  # fr: the default
    assert ok(call(app, "GET", "/api/me", user_=shop.PREVIEW_USER))["language"] == "de"
    assert (
        ok(call(app, "GET", "/api/me", user_=ANN_PL))["language"] == "pl"
    )  # Ann's Polish is spoken


def test_the_apps_own_texts_come_from_the_same_catalogs(app, shop_languages):
    shop_languages("de", "pl")
    r = requests.get(app.url + "/app/i18n/pl.json", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    texts = r.json()
    assert (texts["lang"], texts["locale"], texts["plural"]) == ("pl", "pl", 3)
    messages = texts["messages"]
    assert messages["Choose a city"] == "Wybierz miasto"
    assert messages["{n} available"] == [
        "{n} dostępna sztuka",
        "{n} dostępne sztuki",
        "{n} dostępnych sztuk",
    ]
    assert messages["tab\u0004Basket"] == "Koszyk"  # with its context, as gettext keys it
    # Only the app's own: the server's texts stay on the server; untranslated ones are left out.
    assert "Loading {name}…" not in messages and "{key} must be a whole number." not in messages
    assert "Pay for the rest of your basket ({n} item)" not in messages
    # Revalidated like the app's scripts.
    assert r.headers["Cache-Control"] == "no-cache"
    again = requests.get(
        app.url + "/app/i18n/pl.json", headers={"If-None-Match": r.headers["ETag"]}, timeout=5
    )
    assert again.status_code == 304 and not again.content
    assert requests.get(app.url + "/app/i18n/de.json", timeout=5).json()["locale"] == "de"
    # The source language has no texts to send; a language the shop does not speak is not found.
    assert requests.get(app.url + "/app/i18n/en.json", timeout=5).json() == {
        "lang": "en",
        "locale": "en-IE",
        "plural": 2,
        "messages": {},
    }
    for code in ("fr", "xx_YY", "de.json"):
        refused(requests.get(app.url + f"/app/i18n/{code}.json", timeout=5), 404)


def test_pybabel_finds_every_text_of_the_app_even_inside_template_literals():
    """The README's extract command over the Mini App's scripts: every tr/ntr/ptr call's text (a
    regular expression finds them) is in messages.pot, with its plural and its context; babel's
    template-literal parser misses a call whose arguments hold braces, so none may be written so."""
    import re

    import throwaway_catalogs

    pot = throwaway_catalogs.template()
    found = {(m.context, m.id[0] if m.pluralizable else m.id) for m in pot if m.id}
    call_re = re.compile(r'\b(tr|ntr|ptr)\(\s*"((?:[^"\\]|\\.)*)"(?:\s*,\s*"((?:[^"\\]|\\.)*)")?')
    missing, count = [], 0
    for script in sorted((throwaway_catalogs.ROOT / "static" / "app").glob("*.js")):
        code = "\n".join(
            line
            for line in script.read_text(encoding="utf-8").splitlines()
            if not line.strip().startswith(("//", "/*", "*"))  # comments, not calls
        )
        for fn, first, second in call_re.findall(code):
            context, text = (first, second) if fn == "ptr" else (None, first)
            text = text.encode().decode("unicode_escape").encode("latin-1").decode("utf-8")
            count += 1
            if not any(c == context and m.startswith(text) for c, m in found):
                missing.append((script.name, context, text))
    assert count > 150 and not missing, missing
    plural = next(m for m in pot if m.id == ("{n} available", "{n} available"))
    assert plural.locations[0][0] == "static/app/app.js"
    tabs = [m for m in pot if m.context == "tab"]  # short labels: a context (and a comment)
    assert [m.id for m in tabs] == ["Shop", "Basket", "Orders", "Balance"]
    assert tabs[0].auto_comments[0].startswith("TRANSLATORS: the four tabs")
    copy = next(m for m in pot if m.id == "Copy")
    assert copy.auto_comments == [
        "TRANSLATORS: a button that copies an address, an amount or a code"
    ]
