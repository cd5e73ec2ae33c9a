"""Services on a real database file: catalog, basket, balance checkout, ledger, outbox,
reservations."""

import threading

import pytest

import shop
from conftest import rows, seed, snapshot, user


# Catalog


def test_only_places_and_products_in_stock_are_offered(conn):
    ids = seed(
        conn,
        [
            ("Berlin", "Mitte", "Gift card", 2500, 2),
            ("Berlin", "Pankow", "Coffee", 990, 0),
            ("Hamburg", "Altona", "Coffee", 990, 0),
            ("Lisbon", "Baixa", "Poster", 1900, 1),
        ],
    )
    assert [c["name"] for c in shop.list_cities(conn)] == ["Berlin", "Lisbon"]
    berlin = shop.list_cities(conn)[0]
    assert berlin["units"] == 2
    assert [d["name"] for d in shop.list_districts(conn, berlin["id"])] == ["Mitte"]
    products = shop.list_products(conn, ids[("Gift card", "Mitte")][1])
    assert [(p["name"], p["price_cents"], p["available"]) for p in products] == [
        ("Gift card", 2500, 2)
    ]
    with shop.transaction(conn):
        conn.execute("UPDATE products SET is_active = 0 WHERE name = 'Poster'")
        conn.execute("UPDATE cities SET is_hidden = 1 WHERE name = 'Berlin'")
    assert shop.list_cities(conn) == []
    with pytest.raises(shop.NotFound):
        shop.get_offer(conn, *ids[("Gift card", "Mitte")])


def test_sold_and_reserved_units_are_not_available(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])
    uid = user(conn, balance=10000)
    shop.buy_with_balance(conn, uid, [(*ids[("Gift card", "Mitte")], 2)])
    assert shop.get_offer(conn, *ids[("Gift card", "Mitte")])["available"] == 1
    assert shop.list_cities(conn)[0]["units"] == 1


# Basket


def test_basket_adds_changes_and_totals(conn):
    ids = seed(
        conn, [("Berlin", "Mitte", "Gift card", 2500, 3), ("Berlin", "Mitte", "Coffee", 990, 5)]
    )
    uid = user(conn)
    gift, coffee = ids[("Gift card", "Mitte")], ids[("Coffee", "Mitte")]
    assert shop.add_to_basket(conn, uid, *gift) == 1
    assert shop.add_to_basket(conn, uid, *gift) == 2
    assert shop.add_to_basket(conn, uid, *coffee, quantity=3) == 3
    basket = shop.get_basket(conn, uid)
    assert [(item.name, item.quantity, item.total_cents) for item in basket.lines] == [
        ("Gift card", 2, 5000),
        ("Coffee", 3, 2970),
    ]
    assert basket.total_cents == 7970 and basket.count == 5
    with pytest.raises(shop.SoldOut, match="only 3 of Gift card are available"):
        shop.add_to_basket(conn, uid, *gift, quantity=2)
    coffee_line = basket.lines[1].item_id
    assert shop.set_basket_quantity(conn, uid, coffee_line, 1) == 1
    with pytest.raises(shop.SoldOut):
        shop.set_basket_quantity(conn, uid, coffee_line, 6)
    assert shop.set_basket_quantity(conn, uid, coffee_line, 0) == 0
    assert shop.get_basket(conn, uid).total_cents == 5000
    with pytest.raises(shop.NotFound):
        shop.set_basket_quantity(conn, 999, basket.lines[0].item_id, 1)  # someone else's line
    shop.clear_basket(conn, uid)
    assert shop.get_basket(conn, uid).lines == []


@pytest.mark.parametrize("quantity", [0, -1, 101, 1.5, True, "2"])
def test_bad_quantities_change_nothing(conn, quantity):
    ids = seed(conn)
    uid = user(conn)
    with pytest.raises(shop.InvalidInput):
        shop.add_to_basket(conn, uid, *ids[("Gift card", "Mitte")], quantity=quantity)
    assert shop.get_basket(conn, uid).lines == []


def test_unknown_products_and_sold_out_places_are_refused(conn):
    ids = seed(
        conn,
        [("Berlin", "Mitte", "Gift card", 2500, 1), ("Berlin", "Pankow", "Gift card", 2500, 0)],
    )
    uid = user(conn)
    with pytest.raises(shop.NotFound):
        shop.add_to_basket(conn, uid, 9999, 1)
    with pytest.raises(shop.SoldOut, match="sold out"):
        shop.add_to_basket(conn, uid, *ids[("Gift card", "Pankow")])


# Balance checkout


def test_buying_with_balance_is_one_complete_transaction(conn):
    ids = seed(
        conn, [("Berlin", "Mitte", "Gift card", 2500, 3), ("Berlin", "Mitte", "Coffee", 990, 2)]
    )
    uid = user(conn, balance=10000)
    gift, coffee = ids[("Gift card", "Mitte")], ids[("Coffee", "Mitte")]
    shop.add_to_basket(conn, uid, *gift, quantity=2)
    shop.add_to_basket(conn, uid, *coffee)
    order_id = shop.buy_with_balance(conn, uid, expected_total_cents=5990)  # the basket

    order = shop.get_order(conn, uid, order_id)
    assert (order["status"], order["total_cents"], order["payment_method"]) == (
        "paid",
        5990,
        "balance",
    )
    sold = conn.execute(
        "SELECT product_id, content FROM stock_units WHERE order_id = ? AND status = 'sold'",
        (order_id,),
    ).fetchall()
    assert len(sold) == 3
    assert [tuple(r) for r in shop.get_order_lines(conn, order_id)] == [
        ("Gift card", "Berlin / Mitte", 2, 2500),
        ("Coffee", "Berlin / Mitte", 1, 990),
    ]
    assert shop.get_user(conn, uid)["balance_cents"] == 4010
    ledger = conn.execute(
        "SELECT amount_cents, kind, idempotency_key FROM ledger WHERE order_id = ?", (order_id,)
    ).fetchall()
    assert [tuple(r) for r in ledger] == [(-5990, "purchase", f"order:{order_id}:balance")]
    assert shop.check_ledger(conn) == []
    assert shop.get_basket(conn, uid).lines == []
    messages = conn.execute(
        "SELECT chat_id, text FROM outbox WHERE order_id = ? ORDER BY id", (order_id,)
    ).fetchall()
    assert all(m["chat_id"] == uid for m in messages)
    # One receipt: the header and every item in one message.
    assert len(messages) == 1
    assert f"Order #{order_id} is paid" in messages[0]["text"] and "€40.10" in messages[0]["text"]
    for unit in sold:
        assert shop.esc(unit["content"]) in messages[0]["text"]


def test_a_purchase_that_cannot_complete_changes_nothing(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])
    poor, rich = user(conn, 1, balance=2000), user(conn, 2, balance=100000)
    gift = ids[("Gift card", "Mitte")]
    before = rows(snapshot(conn))
    with pytest.raises(shop.InsufficientBalance) as e:
        shop.buy_with_balance(conn, poor, [(*gift, 1)])
    assert e.value.short_cents == 500 and "€5.00 short" in str(e.value)
    with pytest.raises(shop.SoldOut, match="only 2"):
        shop.buy_with_balance(conn, rich, [(*gift, 3)])
    with pytest.raises(shop.PriceChanged):
        shop.buy_with_balance(conn, rich, [(*gift, 1)], expected_total_cents=2400)
    with pytest.raises(shop.NotFound):
        shop.buy_with_balance(conn, rich, [(9999, gift[1], 1)])
    with pytest.raises(shop.InvalidInput):
        shop.buy_with_balance(conn, rich, [])
    shop.set_banned(conn, rich, True)
    before = rows(snapshot(conn))
    with pytest.raises(shop.Banned):
        shop.buy_with_balance(conn, rich, [(*gift, 1)])
    assert rows(snapshot(conn)) == before


def test_the_same_checkout_never_buys_twice(conn):
    ids = seed(conn)
    uid = user(conn, balance=10000)
    first = shop.buy_with_balance(
        conn, uid, [(*ids[("Gift card", "Mitte")], 1)], checkout_key="1:55"
    )
    again = shop.buy_with_balance(
        conn, uid, [(*ids[("Gift card", "Mitte")], 1)], checkout_key="1:55"
    )
    assert first == again
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    assert shop.get_user(conn, uid)["balance_cents"] == 7500


@pytest.mark.parametrize("buyers, units", [(2, 1), (12, 3)])
def test_racing_shoppers_never_get_the_same_unit(db_path, conn, buyers, units):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, units)])
    for uid in range(1, buyers + 1):
        user(conn, uid, balance=5000)
    barrier = threading.Barrier(buyers)
    results = {}

    def buy(uid):
        c = shop.connect(str(db_path))
        barrier.wait()
        try:
            results[uid] = shop.buy_with_balance(c, uid, [(*ids[("Gift card", "Mitte")], 1)])
        except shop.SoldOut as e:
            results[uid] = e
        finally:
            c.close()

    threads = [threading.Thread(target=buy, args=(uid,)) for uid in range(1, buyers + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    orders = [r for r in results.values() if isinstance(r, int)]
    assert len(orders) == units
    assert sum(isinstance(r, shop.SoldOut) for r in results.values()) == buyers - units
    assert conn.execute("SELECT count(DISTINCT unit_id), count(*) FROM order_items").fetchone()[
        :
    ] == (units, units)
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'available'").fetchone()[0]
        == 0
    )
    assert shop.check_ledger(conn) == []
    balances = sorted(r[0] for r in conn.execute("SELECT balance_cents FROM users"))
    assert balances == sorted([2500] * units + [5000] * (buyers - units))


# Ledger


def test_ledger_keys_make_credits_idempotent(conn):
    uid = user(conn)
    with shop.transaction(conn):
        assert shop.post_ledger(conn, uid, 1250, "topup", "payment:77:credit") is True
        assert shop.post_ledger(conn, uid, 1250, "topup", "payment:77:credit") is False
    assert shop.get_user(conn, uid)["balance_cents"] == 1250
    with pytest.raises(shop.InsufficientBalance):
        with shop.transaction(conn):
            shop.post_ledger(conn, uid, -1251, "purchase", "order:1:balance")
    for bad in (0, 1.5, True):
        with pytest.raises(shop.InvalidInput):
            with shop.transaction(conn):
                shop.post_ledger(conn, uid, bad, "adjustment", f"k{bad}")
    with pytest.raises(shop.InvalidInput):
        shop.adjust_balance(conn, uid, 500, "   ")
    assert shop.check_ledger(conn) == []
    assert [
        tuple(r) for r in conn.execute("SELECT amount_cents, balance_after_cents FROM ledger")
    ] == [(1250, 1250)]


def test_check_ledger_spots_a_tampered_balance(conn):
    uid = user(conn, balance=1000)
    conn.execute("UPDATE users SET balance_cents = 5000 WHERE id = ?", (uid,))
    assert shop.check_ledger(conn) == [(uid, 5000, 1000)]
    conn.execute("UPDATE users SET balance_cents = 1000 WHERE id = ?", (uid,))


# Delivery messages


def test_many_text_units_share_messages_within_telegram_limits(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Licence", 100, 60)])
    with shop.transaction(conn):
        conn.execute("UPDATE stock_units SET content = content || ' ' || hex(randomblob(700))")
    uid = user(conn, balance=10000)
    order_id = shop.buy_with_balance(conn, uid, [(*ids[("Licence", "Mitte")], 60)])
    texts = [
        r["text"]
        for r in conn.execute("SELECT text FROM outbox WHERE order_id = ? ORDER BY id", (order_id,))
    ]
    assert 60 * 1400 // 4096 <= len(texts) < 60
    assert all(shop.tg_len(shop.html_to_plain(t)) <= 4096 for t in texts)
    assert f"Order #{order_id} is paid" in texts[0]  # the header opens the first message
    body = "\n".join(texts)
    for (content,) in conn.execute(
        "SELECT content FROM stock_units WHERE order_id = ?", (order_id,)
    ):
        assert body.count(shop.esc(content)) == 1


def test_a_unit_with_a_photo_gets_its_own_photo_message(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Coffee", 990, 2)], media="0" * 32 + ".png")
    with shop.transaction(conn):
        conn.execute("UPDATE stock_units SET content = ? WHERE id = 2", ("x" * 2000,))
    uid = user(conn, balance=10000)
    order_id = shop.buy_with_balance(conn, uid, [(*ids[("Coffee", "Mitte")], 2)])
    out = conn.execute(
        "SELECT text, photo FROM outbox WHERE order_id = ? ORDER BY id", (order_id,)
    ).fetchall()
    assert [r["photo"] for r in out] == [
        "private:" + "0" * 32 + ".png",
        "private:" + "0" * 32 + ".png",
        None,
    ]
    # The header and a short content fit the first photo's caption: one receipt.
    assert "is paid" in out[0]["text"] and "Coffee-Mitte-0" in out[0]["text"]
    assert "x" * 2000 not in out[1]["text"] and "x" * 2000 in out[2]["text"]  # long: caption + text


def test_resending_an_order_waits_for_the_first_delivery(conn):
    ids = seed(conn)
    uid = user(conn, balance=10000)
    order_id = shop.buy_with_balance(conn, uid, [(*ids[("Gift card", "Mitte")], 1)])
    assert shop.resend_delivery(conn, uid, order_id) is False
    conn.execute("UPDATE outbox SET status = 'sent'")
    assert shop.resend_delivery(conn, uid, order_id) is True
    again = conn.execute("SELECT text FROM outbox ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert "your items again" in again and "Gift card-Mitte-0" in again
    with pytest.raises(shop.NotFound):
        shop.resend_delivery(conn, 999, order_id)


def test_content_is_escaped_and_codes_are_copyable():
    assert shop.format_content("AB-<12>") == "<code>AB-&lt;12&gt;</code>"
    assert shop.format_content("Door 3 & code 7") == "Door 3 &amp; code 7"
    assert shop.format_content("https://example.com/?a=1&b=2") == "https://example.com/?a=1&amp;b=2"


# Reservations


def test_lapsed_reservations_go_back_on_sale_and_the_buyer_hears_once(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])
    uid = user(conn)
    gift = ids[("Gift card", "Mitte")]
    with shop.transaction(conn):
        lapsed, _ = shop.open_order(conn, uid, [(*gift, 2)], method="crypto", reserve_minutes=1)
        alive, _ = shop.open_order(conn, uid, [(*gift, 1)], method="crypto", reserve_minutes=30)
        conn.execute(
            "UPDATE stock_units SET reserved_until = ? WHERE order_id = ?",
            (shop.now_iso(-1), lapsed),
        )
    assert shop.get_offer(conn, *gift)["available"] == 0
    assert shop.release_expired_reservations(conn) == 2
    assert shop.get_offer(conn, *gift)["available"] == 2
    statuses = dict(conn.execute("SELECT id, status FROM orders").fetchall())
    assert statuses == {lapsed: "expired", alive: "pending"}
    assert shop.release_expired_reservations(conn) == 0
    notes = conn.execute("SELECT text FROM outbox WHERE order_id = ?", (lapsed,)).fetchall()
    assert len(notes) == 1 and "time to pay ran out" in notes[0][0]


# Users


def test_users_are_recorded_and_banned_users_hear_one_refusal(conn):
    row = shop.touch_user(conn, {"id": 42, "first_name": "Ann <3", "username": "ann_*"})
    assert (row["first_name"], row["username"], row["balance_cents"]) == ("Ann <3", "ann_*", 0)
    assert (
        shop.touch_user(conn, {"id": 42, "first_name": "Ann", "username": None})["first_name"]
        == "Ann"
    )
    assert shop.should_tell_banned(conn, 42) is False
    shop.set_banned(conn, 42, True)
    assert shop.should_tell_banned(conn, 42) is True
    assert shop.should_tell_banned(conn, 42) is False
    with pytest.raises(shop.NotFound):
        shop.set_banned(conn, 43, True)


# Telegram's limits hold for the longest names the shop accepts


def test_the_biggest_screens_fit_in_one_telegram_message(conn):
    name = "W" * 62 + "😀"  # 64 Telegram characters
    with shop.transaction(conn):
        conn.execute("INSERT INTO cities(id, name) VALUES (?, ?)", (10**17, name))
        conn.execute(
            "INSERT INTO districts(id, city_id, name) VALUES (?, ?, ?)", (10**17, 10**17, name)
        )
        for i in range(shop.MAX_BASKET_LINES):
            pid = 10**17 + i
            conn.execute(
                "INSERT INTO products(id, name, description, price_cents, photo, created_at) "
                "VALUES (?, ?, ?, ?, ?, '')",
                (
                    pid,
                    f"{i:02d}{name[2:]}",
                    "<&>" * 266 + "xx",
                    shop.MAX_EUR_CENTS,
                    "0" * 32 + ".png",
                ),
            )
            conn.execute(
                "INSERT INTO stock_units(product_id, district_id, content, created_at) "
                "VALUES (?, ?, 'c', '')",
                (pid, 10**17),
            )
    uid = user(conn, 10**15)
    conn.execute(
        "INSERT INTO basket_items(id, user_id, product_id, district_id, quantity, added_at) "
        "SELECT 10000000000000000 + id, ?, id, ?, 100, '' FROM products",
        (uid, 10**17),
    )
    u = shop.get_user(conn, uid)
    lines = [
        (item.product_id, item.district_id, item.quantity)
        for item in shop.get_basket(conn, uid).lines
    ]
    card = shop.screen_product(conn, uid, 10**17, 10**17)
    nonce = shop.create_checkout(
        conn, uid, "order", shop.price_lines(conn, lines)[0], lines, from_basket=True
    )
    coins = [(code, 10**9 if i % 2 else None) for i, (code, _) in enumerate(shop.COINS)]
    checkout = shop.screen_checkout(conn, u, shop.get_checkout(conn, uid, nonce), coins)
    screens = {
        "basket": (shop.screen_basket(conn, uid), 4096),
        "card": (card, 1024),
        "checkout": (checkout, 4096),
    }
    for what, (screen, limit) in screens.items():
        assert shop.tg_len(shop.html_to_plain(screen.text)) <= limit, what
        buttons = [b for row in screen.buttons for b in row]
        assert len(buttons) <= 100, what
        assert all(1 <= len(data.encode()) <= 64 for _, data in buttons), what
    assert card.text.count("…") == 1 and "⚠️" in screens["basket"][0].text


def test_repeated_lines_are_merged_and_never_charged_without_units(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    uid = user(conn, balance=10000)
    gift = ids[("Gift card", "Mitte")]
    before = rows(snapshot(conn))
    with pytest.raises(shop.SoldOut):
        shop.buy_with_balance(conn, uid, [(*gift, 1), (*gift, 1)])
    assert rows(snapshot(conn)) == before
    seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    order_id = shop.buy_with_balance(conn, uid, [(*gift, 1), (*gift, 1)])
    assert shop.get_order(conn, uid, order_id)["total_cents"] == 5000
    assert (
        conn.execute("SELECT count(*) FROM order_items WHERE order_id = ?", (order_id,)).fetchone()[
            0
        ]
        == 2
    )


def test_quick_taps_on_plus_all_count(db_path, conn):
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 10)])
    uid = user(conn)
    shop.add_to_basket(conn, uid, *ids[("Gift card", "Mitte")])
    item = shop.get_basket(conn, uid).lines[0].item_id
    barrier = threading.Barrier(4)

    def tap():
        c = shop.connect(str(db_path))
        barrier.wait()
        shop.change_basket_quantity(c, uid, item, +1)
        c.close()

    threads = [threading.Thread(target=tap) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shop.get_basket(conn, uid).lines[0].quantity == 5
    assert shop.change_basket_quantity(conn, uid, item, -5) == 0
    assert shop.get_basket(conn, uid).lines == []


def test_long_lists_are_paged(conn):
    ids = seed(conn, [("Berlin", "Mitte", f"Product {i:02d}", 100, 1) for i in range(45)])
    district = ids[("Product 00", "Mitte")][1]
    pages = [shop.screen_products(conn, district, page) for page in range(3)]
    names = [b for p in pages for row in p.buttons for b, _ in row if b.startswith("Product")]
    assert names == [f"Product {i:02d} · €1.00" for i in range(45)]
    assert [p.buttons[-2] for p in pages] == [
        [("▶️", f"dist:{district}:1")],
        [("◀️", f"dist:{district}:0"), ("▶️", f"dist:{district}:2")],
        [("◀️", f"dist:{district}:1")],
    ]
    assert "(2/3)" in pages[1].text
    assert (
        shop.screen_products(conn, district, 99).text == pages[2].text
    )  # past the end: the last page


# The dashboard's per-day totals


def recomputed_totals(conn):
    sales = {
        tuple(r)
        for r in conn.execute(
            "SELECT substr(paid_at, 1, 10), count(*), sum(total_cents) FROM orders "
            "WHERE status = 'paid' GROUP BY 1"
        )
    }
    payments = {
        tuple(r)
        for r in conn.execute(
            "SELECT substr(final_at, 1, 10), status, coalesce(final_source, ''), "
            "parent_id IS NOT NULL, count(*) FROM payments WHERE final_at IS NOT NULL "
            "GROUP BY 1, 2, 3, 4"
        )
    }
    return sales, payments


def kept_totals(conn):
    return (
        {tuple(r) for r in conn.execute("SELECT * FROM daily_sales WHERE orders != 0")},
        {tuple(r) for r in conn.execute("SELECT * FROM daily_payments WHERE payments != 0")},
    )


def test_the_daily_totals_follow_every_change_of_an_order_or_payment(conn):
    import random

    rnd = random.Random(7)
    user(conn, 1)
    days = ["2026-11-01T10:00:00Z", "2026-11-02T23:59:59Z", "2026-11-03T00:00:00Z"]
    with shop.transaction(conn):
        for i in range(60):
            status = rnd.choice(["pending", "paid", "cancelled", "refunded"])
            conn.execute(
                "INSERT INTO orders(user_id, status, total_cents, payment_method, created_at, "
                "paid_at) VALUES (1, ?, ?, 'crypto', ?, ?)",
                (
                    status,
                    rnd.randint(1, 9999),
                    days[0],
                    rnd.choice(days) if status != "pending" else None,
                ),
            )
            final = rnd.choice([None, *days])
            conn.execute(
                "INSERT INTO payments(provider_id, kind, user_id, order_id, parent_id, reference, "
                "price_cents, pay_currency, pay_amount, status, final_source, expires_at, "
                "created_at, updated_at, final_at) VALUES (?, 'order', 1, ?, ?, 'r', 100, 'btc', "
                "'0.1', ?, ?, ?, ?, ?, ?)",
                (
                    str(i),
                    i + 1,
                    rnd.choice([None, 1]) if i else None,
                    rnd.choice(["finished", "partially_paid", "expired"]) if final else "waiting",
                    rnd.choice([None, "ipn", "poll"]),
                    days[0],
                    days[0],
                    days[0],
                    final,
                ),
            )
    assert kept_totals(conn) == recomputed_totals(conn)
    for _ in range(200):
        order, payment = rnd.randint(1, 60), rnd.randint(1, 60)
        with shop.transaction(conn):
            match rnd.randrange(6):
                case 0:
                    conn.execute(
                        "UPDATE orders SET status = 'paid', paid_at = ? WHERE id = ?",
                        (rnd.choice(days), order),
                    )
                case 1:
                    conn.execute(
                        "UPDATE orders SET status = 'refunded' WHERE id = ? AND status = 'paid'",
                        (order,),
                    )
                case 2:
                    conn.execute(
                        "UPDATE orders SET total_cents = ? WHERE id = ?",
                        (rnd.randint(1, 9999), order),
                    )
                case 3:
                    conn.execute(
                        "UPDATE payments SET status = ?, final_at = ?, final_source = ? "
                        "WHERE id = ?",
                        (
                            rnd.choice(["finished", "refunded"]),
                            rnd.choice(days),
                            rnd.choice(["ipn", None]),
                            payment,
                        ),
                    )
                case 4:
                    conn.execute(
                        "UPDATE payments SET final_at = NULL, status = 'waiting' WHERE id = ?",
                        (payment,),
                    )
                case 5:
                    conn.execute(
                        "DELETE FROM payments WHERE id = ? "
                        "AND id NOT IN (SELECT coalesce(parent_id, 0) FROM payments)",
                        (payment,),
                    )
        assert kept_totals(conn) == recomputed_totals(conn)


def test_a_version_2_database_gets_its_daily_totals(tmp_path):
    path = str(tmp_path / "v2.db")
    conn = shop.init_db(path)
    user(conn, 1)
    with shop.transaction(conn):
        for i, (status, paid) in enumerate(
            [
                ("paid", "2026-10-01T08:00:00Z"),
                ("paid", "2026-10-01T09:00:00Z"),
                ("refunded", "2026-10-02T08:00:00Z"),
                ("paid", "2026-10-03T08:00:00Z"),
            ]
        ):
            conn.execute(
                "INSERT INTO orders(user_id, status, total_cents, payment_method, created_at, "
                "paid_at) VALUES (1, ?, ?, 'balance', ?, ?)",
                (status, 100 * (i + 1), paid, paid),
            )
        for statement in (
            "DROP TRIGGER daily_sales_insert",
            "DROP TRIGGER daily_sales_update",
            "DROP TRIGGER daily_sales_delete",
            "DROP TABLE daily_sales",
            "DROP TRIGGER daily_payments_insert",
            "DROP TRIGGER daily_payments_update",
            "DROP TRIGGER daily_payments_delete",
            "DROP TABLE daily_payments",
            "PRAGMA user_version = 2",
        ):
            conn.execute(statement)
    conn.close()
    conn = shop.init_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION
    assert kept_totals(conn) == recomputed_totals(conn)
    assert {r[0]: r[1:] for r in kept_totals(conn)[0]} == {
        "2026-10-01": (2, 300),
        "2026-10-03": (1, 400),
    }
    conn.close()


# The basket after a crypto checkout (issue 10)


def basket_of(conn, uid):
    return [(item.name, item.quantity) for item in shop.get_basket(conn, uid).lines]


def test_a_basket_invoice_takes_the_lines_and_an_expiry_or_a_failed_invoice_puts_them_back(conn):
    ids = seed(
        conn,
        [
            ("Berlin", "Mitte", "Gift card", 2500, 3),
            ("Berlin", "Mitte", "Coffee", 990, 5),
            ("Berlin", "Mitte", "Poster", 1900, 1),
        ],
    )
    gift, coffee, poster = (ids[(p, "Mitte")] for p in ("Gift card", "Coffee", "Poster"))
    uid = user(conn)
    shop.add_to_basket(conn, uid, *gift, 2)
    shop.add_to_basket(conn, uid, *coffee, 1)

    def invoice_the_basket():
        lines = [
            (item.product_id, item.district_id, item.quantity)
            for item in shop.get_basket(conn, uid).lines
        ]
        nonce = shop.create_checkout(
            conn, uid, "order", shop.price_lines(conn, lines)[0], lines, from_basket=True
        )
        return shop.reserve_for_checkout(conn, uid, nonce, 30)[0]

    order_id = invoice_the_basket()
    assert basket_of(conn, uid) == []
    with pytest.raises(
        shop.InvalidInput, match="empty"
    ):  # the same items cannot be checked out twice
        shop.normalise_lines(
            [
                (item.product_id, item.district_id, item.quantity)
                for item in shop.get_basket(conn, uid).lines
            ]
        )
    shop.add_to_basket(conn, uid, *poster, 1)  # meanwhile the shopper goes on shopping
    shop.add_to_basket(conn, uid, *coffee, 1)
    with shop.transaction(conn):
        conn.execute(
            "UPDATE stock_units SET reserved_until = ? WHERE status = 'reserved'",
            (shop.now_iso(-1),),
        )
    shop.release_expired_reservations(conn)
    assert basket_of(conn, uid) == [("Poster", 1), ("Coffee", 2), ("Gift card", 2)]
    assert (
        "back on sale and back into your basket"
        in conn.execute("SELECT text FROM outbox WHERE order_id = ?", (order_id,)).fetchone()[0]
    )
    # The provider refusing the invoice puts the basket back exactly as it was.
    shop.clear_basket(conn, uid)
    shop.add_to_basket(conn, uid, *gift, 3)
    order_id = invoice_the_basket()
    assert basket_of(conn, uid) == []
    shop.drop_reservation(conn, order_id)
    assert basket_of(conn, uid) == [("Gift card", 3)]
    # What is no longer on sale does not come back, and the shopper is not told it did.
    order_id = invoice_the_basket()
    with shop.transaction(conn):
        conn.execute("UPDATE products SET is_active = 0 WHERE id = ?", (gift[0],))
        conn.execute(
            "UPDATE stock_units SET reserved_until = ? WHERE status = 'reserved'",
            (shop.now_iso(-1),),
        )
    shop.release_expired_reservations(conn)
    assert basket_of(conn, uid) == []
    told = conn.execute("SELECT text FROM outbox WHERE order_id = ?", (order_id,)).fetchone()[0]
    assert "went back on sale." in told and "basket" not in told


def test_crypto_amounts_read_one_way_in_every_message():
    """fmt_coin: plain digits, no exponent, no trailing zeros, exact."""
    assert [
        shop.fmt_coin(v)
        for v in ("0.00020000", "2E-4", "1.5e1", "0", "0.000", "123456789.12345678")
    ] == ["0.0002", "0.0002", "15", "0", "0", "123456789.12345678"]
    assert shop.fmt_coin("not a number") == "not a number"
