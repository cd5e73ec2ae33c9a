"""Crypto payments: IPN signatures, the status rules on a real database, the sandbox and /webhook
over HTTP."""

from decimal import Decimal

import pytest
import requests

import shop
from conftest import (
    apply,
    checkout_payment,
    lapse,
    PAYMENT_IDS,
    emulator,
    news,
    order_payment,
    post_ipn,
    rows,
    seed,
    snapshot,
    topup_payment,
    user,
    wait_for_row,
)

SECRET = "test-ipn-secret"

# Bodies as NOWPayments sends them, with JSON.stringify(sortObjectDeep(JSON.parse(body))) and its
# HMAC-SHA512 under SECRET as Node.js computed them (node -e, crypto.createHmac).
VECTORS = [
    (
        '{"payment_status":"finished","pay_address":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh","price_amount":25,'
        '"fee":{"withdrawalFee":0,"serviceFee":0.00000125,"depositFee":0,"currency":"btc"},"payment_id":5077125051,'
        '"price_currency":"eur","pay_amount":0.00005,"actually_paid":0.00005,"pay_currency":"btc","order_id":"order-1",'
        '"order_description":"Łódź <Centrum> – café «Grün» 😀","purchase_id":"5918194356",'
        '"outcome_amount":0.0000487,'
        '"outcome_currency":"btc","payin_extra_id":null,"parent_payment_id":null,"updated_at":1767082687409}',
        '{"actually_paid":0.00005,"fee":{"currency":"btc","depositFee":0,"serviceFee":0.00000125,"withdrawalFee":0},'
        '"order_description":"Łódź <Centrum> – café «Grün» 😀","order_id":"order-1",'
        '"outcome_amount":0.0000487,'
        '"outcome_currency":"btc","parent_payment_id":null,"pay_address":"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",'
        '"pay_amount":0.00005,"pay_currency":"btc","payin_extra_id":null,"payment_id":5077125051,'
        '"payment_status":"finished","price_amount":25,"price_currency":"eur","purchase_id":"5918194356",'
        '"updated_at":1767082687409}',
        "9efe1b15f4ccad876e040d6e6565c412a9e1ec507beed89ccc18cb2f41dc647616cb8ac405d9c24fc59b6534eac1cd018e87404738"
        "aaa1fef35339119da35569",
    ),
    (
        '{"payment_id":4961871049,"payment_status":"partially_paid","pay_address":"TXYZ","price_amount":10.5,'
        '"price_currency":"eur","pay_amount":11.290323,"actually_paid":5.64516,"pay_currency":"usdttrc20",'
        '"order_id":"topup-0a1b2c3d","fee":{"currency":"usdttrc20","depositFee":1e-7,"serviceFee":0.05645,'
        '"withdrawalFee":0},"payment_extra_ids":[{"b":1,"a":"x"}],"updated_at":1767082687409}',
        '{"actually_paid":5.64516,"fee":{"currency":"usdttrc20","depositFee":1e-7,"serviceFee":0.05645,"withdrawalFee":0},'
        '"order_id":"topup-0a1b2c3d","pay_address":"TXYZ","pay_amount":11.290323,"pay_currency":"usdttrc20",'
        '"payment_extra_ids":[{"a":"x","b":1}],"payment_id":4961871049,"payment_status":"partially_paid",'
        '"price_amount":10.5,"price_currency":"eur","updated_at":1767082687409}',
        "ab1e06b5e5b82b558199d26b3e10c700327def6dc83ab0dedd367db8963c4980a972e538ef1db26da1633ceacc20728c57bd3e2395cf7"
        "94d49b6283719a2b7a8",
    ),
    (
        '{"a":1e21,"b":1E-7,"c":123456789012345678901,"d":-0.000001,"e":5.00,"f":0.1,'
        '"g":"tab\\tnl\\nquote\\"back\\\\slash/ctrl\\u0007","h":true,"i":null}',
        '{"a":1e+21,"b":1e-7,"c":123456789012345680000,"d":-0.000001,"e":5,"f":0.1,'
        '"g":"tab\\tnl\\nquote\\"back\\\\slash/ctrl\\u0007","h":true,"i":null}',
        "bc2162ab3f5c584e7b321e7b777e5f11a75d6a0f5c86eed57dff0b622680e0922b91efd89c6f2d88ed7f2c068b7c2ddcdc9372ecd3c7"
        "7f4767e8188f30be7739",
    ),
]


# Signatures


@pytest.mark.parametrize("body, canonical, signature", VECTORS)
def test_signatures_match_what_the_provider_computes(body, canonical, signature):
    data = shop.parse_json(body)
    assert shop.encode_json(data, sort_keys=True, js_numbers=True) == canonical
    assert shop.ipn_signature(data, f"  {SECRET}\n") == signature  # the secret is trimmed
    assert shop.verify_ipn(body.encode(), signature, SECRET) == (data, "valid signature")
    assert shop.verify_ipn(body.encode(), signature.upper(), SECRET)[1] == "valid signature"


@pytest.mark.parametrize(
    "token, js",
    [
        ("0.00005", "0.00005"),
        ("5e-05", "0.00005"),
        ("1e-7", "1e-7"),
        ("0.000001", "0.000001"),
        ("1E21", "1e+21"),
        ("1e16", "10000000000000000"),
        ("25.00", "25"),
        ("-0.0", "0"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("123.456e2", "12345.6"),
        ("1.5e300", "1.5e+300"),
        ("-1.5e-9", "-1.5e-9"),
    ],
)
def test_numbers_are_written_the_javascript_way(token, js):
    assert shop.js_number(token) == js


def test_a_body_whose_tokens_differ_from_javascript_verifies_when_signed_over_its_own_tokens():
    """A stand-in may sign its body as written (e.g. 5e-05); that is the same data, so it is
    accepted."""
    body = '{"payment_id":1,"pay_amount":5e-05,"payment_status":"waiting"}'
    data = shop.parse_json(body)
    raw_signed = shop.ipn_signature(data, SECRET, js_numbers=False)
    assert shop.verify_ipn(body.encode(), raw_signed, SECRET)[1] == "valid signature"


@pytest.mark.parametrize(
    "body, signature, verdict",
    [
        (VECTORS[0][0], None, "missing signature"),
        (VECTORS[0][0], "", "missing signature"),
        (VECTORS[0][0], "00" * 64, "bad signature"),
        (VECTORS[0][0], VECTORS[1][2], "bad signature"),
        (
            VECTORS[0][0].replace('"price_amount":25', '"price_amount":2500'),
            VECTORS[0][2],
            "bad signature",
        ),
        ("{not json", VECTORS[0][2], "malformed"),
        ('["a list"]', VECTORS[0][2], "malformed"),
        ('{"a": NaN}', VECTORS[0][2], "malformed"),
    ],
)
def test_forged_or_broken_ipns_are_recognised(body, signature, verdict):
    assert shop.verify_ipn(body.encode(), signature, SECRET)[1].startswith(verdict)
    assert shop.verify_ipn(b"\xff\xfe", signature, SECRET)[1].startswith("malformed")


# The status rules, on a real database


@pytest.fixture
def gift(conn):
    return seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])[("Gift card", "Mitte")]


def outbox(conn, chat):
    return [
        r[0] for r in conn.execute("SELECT text FROM outbox WHERE chat_id = ? ORDER BY id", (chat,))
    ]


def status_of(conn, payment):
    return conn.execute(
        "SELECT status, outcome, credited_cents FROM payments WHERE id = ?", (payment["id"],)
    ).fetchone()[:]


def test_a_finished_payment_delivers_once_whatever_the_order_of_the_news(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 2)], pay_amount="0.00083334")
    assert apply(conn, news(p, "confirming")) == "waiting -> confirming"
    assert apply(conn, news(p, "finished", "0.00083334")) == "confirming -> finished: delivered"
    for again in ("finished", "confirming", "waiting", "sending", "expired", "partially_paid"):
        assert apply(conn, news(p, again, "0.00083334")).startswith("unchanged")
    assert status_of(conn, p) == ("finished", "delivered", 0)
    order = conn.execute("SELECT status FROM orders WHERE id = ?", (p["order_id"],)).fetchone()[0]
    assert order == "paid"
    sold = conn.execute(
        "SELECT content FROM stock_units WHERE order_id = ? AND status = 'sold'", (p["order_id"],)
    ).fetchall()
    assert len(sold) == 2
    texts = outbox(conn, uid)
    # "On its way" was still unsent when the payment finished: closed unsent, as the invoice now
    # says ✅ Paid.
    note = conn.execute(
        "SELECT status, telegram_message_id, last_error FROM outbox WHERE text LIKE ?",
        ("%is on its way: seen on the blockchain%",),
    ).fetchall()
    assert [tuple(r) for r in note] == [("sent", None, "not sent: the payment became final first")]
    # The sender was trying it meanwhile and Telegram did not answer: it stays closed unsent.
    (note_id,) = conn.execute("SELECT id FROM outbox WHERE text LIKE '%is on its way%'").fetchone()
    shop.reschedule_outbox(conn, note_id, 5, "network: timeout")
    shop.fail_outbox_row(conn, {"id": note_id, "order_id": p["order_id"], "chat_id": uid}, "x", [])
    assert tuple(
        conn.execute("SELECT status, last_error FROM outbox WHERE id = ?", (note_id,)).fetchone()
    ) == ("sent", "not sent: the payment became final first")
    assert sum(f"Order #{p['order_id']} is paid" in t for t in texts) == 1
    for (content,) in sold:
        assert sum(shop.esc(content) in t for t in texts) == 1
    assert any("Order #1 paid in BTC: €50.00" in t for t in outbox(conn, 900))
    assert conn.execute("SELECT final_source FROM payments").fetchone()[0] == "ipn"


def test_a_payment_short_within_the_owners_tolerance_pays_in_full(conn, gift):
    """Underpayment tolerance (issue 13): off by default; a payment short by at most the owner's
    percentage delivers as if paid in full; one short by more is cancelled and credited, and the
    shopper is told exactly how much is missing."""
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    assert apply(conn, news(p, "partially_paid", "0.000397")).endswith("cancelled, credited 24.81")
    assert "only 0.000397 BTC of 0.0004 BTC arrived, 0.000003 BTC short." in outbox(conn, uid)[-1]
    shop.save_settings(conn, {"underpayment_tolerance": "1"})
    within = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    outcome = apply(conn, news(within, "partially_paid", "0.000397"))
    assert outcome.endswith("delivered, 0.75% short, within the tolerance"), outcome
    order = shop.get_order(conn, uid, within["order_id"])
    assert order["status"] == "paid"
    assert shop.get_user(conn, uid)["balance_cents"] == 2481  # only the first payment's credit
    assert any("(0.75% short, within the tolerance)" in t for t in outbox(conn, 900))
    paid = conn.execute("SELECT * FROM payments WHERE id = ?", (within["id"],)).fetchone()
    assert shop.payment_status_text(paid) == "✅ Paid"
    beyond = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.00040000")
    assert apply(conn, news(beyond, "partially_paid", "3.95E-4")).startswith("waiting -> ")
    assert shop.get_order(conn, uid, beyond["order_id"])["status"] == "cancelled"
    # Every crypto amount in the message in one format, whatever way the provider wrote it.
    assert "only 0.000395 BTC of 0.0004 BTC arrived, 0.000005 BTC short" in outbox(conn, uid)[-1]


def test_an_underpayment_cancels_and_credits_what_arrived(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    assert shop.get_offer(conn, *gift)["available"] == 2
    assert apply(conn, news(p, "partially_paid", "0.00013333")).endswith("cancelled, credited 8.33")
    assert shop.get_offer(conn, *gift)["available"] == 3  # the unit is back on sale
    assert shop.get_user(conn, uid)["balance_cents"] == 833  # floor(2500 * 0.00013333 / 0.0004)
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "cancelled"
    assert "only 0.00013333 BTC of 0.0004 BTC arrived" in outbox(conn, uid)[-1]
    assert apply(conn, news(p, "partially_paid", "0.00013333")).startswith("unchanged")
    assert apply(conn, news(p, "finished", "0.0004")).startswith("unchanged")
    assert shop.get_user(conn, uid)["balance_cents"] == 833


def test_an_overpayment_delivers_and_credits_the_excess(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    assert (
        apply(conn, news(p, "finished", "0.0005"))
        == "waiting -> finished: delivered, overpaid 6.25 credited"
    )
    assert shop.get_user(conn, uid)["balance_cents"] == 625
    assert "extra €6.25" in outbox(conn, uid)[-1]


def test_a_late_payment_is_delivered_when_the_units_are_still_there(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)])
    conn.execute(
        "UPDATE stock_units SET reserved_until = ? WHERE order_id = ?",
        (shop.now_iso(-1), p["order_id"]),
    )
    shop.release_expired_reservations(conn)
    assert apply(conn, news(p, "finished", "0.0004")).endswith("delivered late")
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "paid"
    assert any(
        "arrived after the time to pay had run out, but the items were still there" in t
        for t in outbox(conn, uid)
    )
    assert shop.get_user(conn, uid)["balance_cents"] == 0


def test_a_late_payment_takes_another_unit_of_the_same_product_and_place(conn, gift):
    uid, other = user(conn, 1), user(conn, 2, balance=2500)
    p = order_payment(conn, uid, [(*gift, 1)])
    first_unit = conn.execute(
        "SELECT unit_id FROM order_items WHERE order_id = ?", (p["order_id"],)
    ).fetchone()[0]
    shop.cancel_invoice(conn, uid, p["id"])
    conn.execute("UPDATE stock_units SET content = 'taken-by-other' WHERE id = ?", (first_unit,))
    shop.buy_with_balance(conn, other, [(*gift, 1)])  # takes the lowest id: our old unit
    assert apply(conn, news(p, "finished", "0.0004")).endswith("delivered late")
    unit = conn.execute(
        "SELECT unit_id FROM order_items WHERE order_id = ?", (p["order_id"],)
    ).fetchone()[0]
    assert unit != first_unit
    assert conn.execute(
        "SELECT status, order_id FROM stock_units WHERE id = ?", (unit,)
    ).fetchone()[:] == ("sold", p["order_id"])


def test_a_late_payment_for_goods_that_are_gone_credits_the_full_price(conn, gift):
    uid, other = user(conn, 1), user(conn, 2, balance=10000)
    p = order_payment(conn, uid, [(*gift, 2)], pay_amount="0.0008")
    shop.cancel_invoice(conn, uid, p["id"])
    shop.buy_with_balance(conn, other, [(*gift, 2)])  # one unit left: not enough for us
    before = rows(snapshot(conn))["stock_units"]
    assert apply(conn, news(p, "finished", "0.0008")).endswith("late, credited 50.00")
    assert shop.get_user(conn, uid)["balance_cents"] == 5000
    assert rows(snapshot(conn))["stock_units"] == before
    assert (
        conn.execute("SELECT status FROM orders WHERE id = ?", (p["order_id"],)).fetchone()[0]
        == "cancelled"
    )
    assert "the items are gone. The full price, €50.00" in outbox(conn, uid)[-1]


def test_an_expired_invoice_releases_its_units_and_money_arriving_later_still_counts(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)])
    assert apply(conn, news(p, "expired", "0")) == "waiting -> expired"
    assert shop.get_offer(conn, *gift)["available"] == 3
    assert apply(conn, news(p, "expired", "0")).startswith("unchanged")
    assert sum("invoice expired" in t for t in outbox(conn, uid)) == 1
    assert apply(conn, news(p, "confirming")).startswith("unchanged")  # no going back
    assert apply(conn, news(p, "finished", "0.0004")).endswith("delivered late")


def test_a_repeated_deposit_is_credited_and_never_ships(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    apply(conn, news(p, "finished", "0.0004"))
    sold = conn.execute("SELECT count(*) FROM stock_units WHERE status = 'sold'").fetchone()[0]
    child = news(
        p,
        "finished",
        "0.0002",
        payment_id=shop.Num(str(next(PAYMENT_IDS))),
        parent_payment_id=shop.Num(p["provider_id"]),
        price_amount=shop.Num("12.5"),
        order_id=None,
    )
    assert apply(conn, child).endswith("credited 12.50")
    assert apply(conn, child).startswith("unchanged")
    assert shop.get_user(conn, uid)["balance_cents"] == 1250
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE status = 'sold'").fetchone()[0] == sold
    )
    assert (
        conn.execute("SELECT count(*) FROM payments WHERE parent_id IS NOT NULL").fetchone()[0] == 1
    )


def test_news_that_does_not_match_the_payment_changes_nothing(conn, gift):
    uid = user(conn)
    cheap = order_payment(conn, uid, [(*gift, 1)])
    dear = order_payment(conn, uid, [(*gift, 2)], pay_amount="0.0008")
    before = rows(snapshot(conn))
    forged = [
        news(
            dear, "finished", "0.0008", price_amount=shop.Num("25.00"), order_id=cheap["reference"]
        ),
        news(dear, "finished", "0.0008", pay_currency="ltc"),
        news(dear, "finished", "0.0008", price_amount=shop.Num("49.99")),
        news(dear, "finished", "0.0008", price_currency="usd"),
        news(dear, "finished", "0.0008", order_id="order-999"),
    ]
    for data in forged:
        with pytest.raises(shop.PaymentMismatch):
            apply(conn, data)
    for data in (
        news(dear, "finished", "0.0008", payment_id=shop.Num("1")),
        news(dear, "finished", "0.0008", payment_id=shop.Num("1"), parent_payment_id=shop.Num("2")),
    ):
        with pytest.raises(shop.UnknownPayment):
            apply(conn, data)
    bare = {"payment_id": shop.Num(dear["provider_id"]), "payment_status": "confirming"}
    assert apply(conn, bare) == "waiting -> confirming"  # fields left out contradict nothing
    before = rows(snapshot(conn))
    for data in (
        news(dear, "paid"),
        news(dear, "finished", "lots"),
        news(dear, "finished", "-1"),
        news(dear, "finished", payment_id="12; DROP TABLE"),
    ):
        with pytest.raises(shop.InvalidInput):
            apply(conn, data)
    assert rows(snapshot(conn)) == before


def test_top_ups_credit_what_arrived(conn):
    uid = user(conn)
    full = topup_payment(conn, uid, 2000, pay_amount="0.0004")
    over = topup_payment(conn, uid, 2000, pay_amount="0.0004")
    part = topup_payment(conn, uid, 2000, pay_amount="0.0004")
    gone = topup_payment(conn, uid, 2000, pay_amount="0.0004")
    assert apply(conn, news(full, "finished", "0.0004")).endswith("credited 20.00")
    assert apply(conn, news(over, "finished", "0.0005")).endswith("credited 25.00")
    assert apply(conn, news(part, "partially_paid", "0.0001")).endswith("credited 5.00")
    assert apply(conn, news(gone, "expired", "0")) == "waiting -> expired"
    for p in (full, over, part):
        assert apply(conn, news(p, "finished", "0.0009")).startswith("unchanged")
    assert shop.get_user(conn, uid)["balance_cents"] == 5000
    texts = outbox(conn, uid)
    assert "✅ Top-up received: €20.00 added. Balance: €20.00." in texts
    assert any("paid only in part" in t and "€5.00" in t for t in texts)
    assert any("invoice for your €20.00 top-up expired" in t for t in texts)
    kinds = [
        r[0] for r in conn.execute("SELECT kind FROM ledger WHERE user_id = ? ORDER BY id", (uid,))
    ]
    assert kinds == ["topup", "topup", "topup"]


def test_the_value_received_is_computed_exactly():
    assert shop.value_of(1999, "0.333333333", "0.999999999") == 666
    assert shop.value_of(2500, "0.00005", "0.0001") == 1250
    assert shop.value_of(100, "1E-8", "3E-8") == 33
    assert shop.value_of(10**8, "0.1", "0.3") == 33333333
    assert shop.value_of(2500, "0", "0.0004") == 0
    with pytest.raises(shop.InvalidInput):
        shop.value_of(2500, "NaN", "1")


def test_cancelling_an_invoice_frees_its_units(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 3)], pay_amount="0.0012")
    assert shop.get_offer(conn, *gift)["available"] == 0
    shop.cancel_invoice(conn, uid, p["id"])
    assert shop.get_offer(conn, *gift)["available"] == 3
    with pytest.raises(shop.NotFound):
        shop.cancel_invoice(conn, 999, p["id"])
    apply(conn, news(p, "confirming"))
    p2 = order_payment(conn, uid, [(*gift, 1)])
    apply(conn, news(p2, "confirming"))
    with pytest.raises(shop.InvalidInput, match="under way"):
        shop.cancel_invoice(conn, uid, p2["id"])


def test_invoice_limits(conn, gift):
    uid = user(conn)
    shop.check_invoice_limits(conn, uid, max_open=2, max_per_hour=3)
    first, second = order_payment(conn, uid, [(*gift, 1)]), order_payment(conn, uid, [(*gift, 1)])
    with pytest.raises(shop.LimitReached, match="2 unpaid invoices"):
        shop.check_invoice_limits(conn, uid, max_open=2, max_per_hour=3)
    shop.cancel_invoice(conn, uid, first["id"])
    shop.check_invoice_limits(conn, uid, max_open=2, max_per_hour=3)
    topup_payment(conn, uid, 1000)
    with pytest.raises(shop.LimitReached, match="3 invoices in the last hour"):
        shop.check_invoice_limits(conn, uid, max_open=5, max_per_hour=3)
    shop.check_invoice_limits(conn, user(conn, 2), max_open=2, max_per_hour=3)  # per shopper
    assert second


# The sandbox emulator and /webhook over real HTTP


@pytest.fixture
def sandbox(make_shop):
    """A sandbox shop (its emulator at /sandbox/v1) with a small catalog and a shopper with no
    balance."""
    s = make_shop()
    conn = shop.connect(s.config.shop_db)
    ids = seed(
        conn, [("Berlin", "Mitte", "Gift card", 2500, 3), ("Berlin", "Mitte", "Sticker", 50, 45)]
    )
    user(conn, 1)
    s.conn, s.ids = conn, ids
    yield s
    conn.close()


def invoice(s, uid=1, product=("Gift card", "Mitte"), quantity=1, coin="btc"):
    lines = [(*s.ids[product], quantity)]
    nonce = shop.create_checkout(s.conn, uid, "order", shop.price_lines(s.conn, lines)[0], lines)
    return s.payments.open_order_invoice(uid, nonce, coin)


def test_the_sandbox_answers_like_nowpayments(sandbox):
    api = sandbox.url + "/sandbox/v1"
    key = {"x-api-key": sandbox.sandbox_api_key}
    assert requests.get(api + "/status", timeout=5).json() == {"message": "OK"}
    refused = requests.get(api + "/merchant/coins", timeout=5)
    assert (
        refused.status_code == 403 and refused.json()["status"] is False and refused.json()["code"]
    )
    coins = requests.get(api + "/merchant/coins", headers=key, timeout=5).json()[
        "selectedCurrencies"
    ]
    assert "BTC" in coins and "USDTTRC20" in coins
    minimum = requests.get(
        api + "/min-amount",
        params={"currency_from": "btc", "currency_to": "btc", "fiat_equivalent": "eur"},
        headers=key,
        timeout=5,
    ).json()
    assert minimum == {
        "currency_from": "btc",
        "currency_to": "btc",
        "min_amount": 0.0001,
        "fiat_equivalent": 6.0,
    }
    body = {
        "price_amount": 25,
        "price_currency": "eur",
        "pay_currency": "btc",
        "order_id": "x",
        "ipn_callback_url": sandbox.url + "/webhook",
    }
    created = requests.post(api + "/payment", json=body, headers=key, timeout=5)
    assert created.status_code == 201
    assert (
        isinstance(created.json()["payment_id"], str)
        and created.json()["payment_status"] == "waiting"
    )
    assert created.text.count('"pay_amount":0.00041667') == 1  # a JSON number, exact
    got = requests.get(
        f"{api}/payment/{created.json()['payment_id']}", headers=key, timeout=5
    ).json()
    assert isinstance(got["payment_id"], int) and got["actually_paid"] == 0
    small = requests.post(
        api + "/payment", json={**body, "price_amount": 1}, headers=key, timeout=5
    )
    assert small.status_code == 400 and small.json()["code"] == "AMOUNT_MINIMAL_ERROR"
    bad = requests.post(
        api + "/payment", json={**body, "ipn_callback_url": "ftp://x"}, headers=key, timeout=5
    )
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_REQUEST_PARAMS"
    assert requests.get(api + "/payment/1", headers=key, timeout=5).status_code == 404


def test_coins_show_their_minimums_in_eur(sandbox):
    coins = dict(sandbox.payments.coins())
    assert list(coins) == shop.COIN_CODES
    assert coins["btc"] == 600 and coins["usdterc20"] == 1860
    with pytest.raises(shop.InvalidInput, match="USDT · ERC20 takes payments from €18.60"):
        invoice(sandbox, product=("Sticker", "Mitte"), quantity=5, coin="usdterc20")
    assert sandbox.conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_an_invoice_reserves_its_units_and_carries_the_providers_exact_amount(sandbox):
    p = invoice(sandbox, coin="ton", quantity=2)
    data = emulator(sandbox, p)
    assert p["pay_amount"] == str(data["pay_amount"]) == "10.000000000"
    assert p["payin_extra_id"] == data["payin_extra_id"] and p["payin_extra_id"]
    assert data["order_id"] == p["reference"] == f"order-{p['order_id']}"
    assert data["ipn_callback_url"] == sandbox.config.webhook_url + "/webhook"
    assert str(data["price_amount"]) == "50.00"
    assert shop.get_offer(sandbox.conn, *sandbox.ids[("Gift card", "Mitte")])["available"] == 1
    screen = shop.screen_invoice(p, sandbox=True)
    assert "<code>10.000000000</code> TON" in screen.text and "Memo / tag (required)" in screen.text
    assert "SANDBOX" in screen.text and screen.photo.startswith(b"\x89PNG")


def test_a_purchase_paid_by_ipn_is_delivered_once_though_the_ipn_comes_three_times_out_of_order(
    sandbox,
):
    p = invoice(sandbox)
    data = emulator(sandbox, p)
    finished = {
        **data,
        "payment_status": "finished",
        "actually_paid": data["pay_amount"],
        "fee": {
            "serviceFee": shop.Num("0.0000002"),
            "currency": "btc",
            "depositFee": shop.Num("0"),
        },
    }
    for status in ("finished", "confirming", "finished", "finished"):
        r = post_ipn(sandbox, {**finished, "payment_status": status})
        assert r.status_code == 200, r.text
    assert sandbox.conn.execute("SELECT status, outcome FROM payments").fetchone()[:] == (
        "finished",
        "delivered",
    )
    headers = sandbox.conn.execute(
        "SELECT count(*) FROM outbox WHERE text LIKE '%is paid%'"
    ).fetchone()[0]
    assert headers == 1
    verdicts = [r[0] for r in sandbox.conn.execute("SELECT verdict FROM ipn_events ORDER BY id")]
    assert verdicts == [
        "applied: waiting -> finished: delivered",
        "applied: unchanged (finished)",
        "applied: unchanged (finished)",
        "applied: unchanged (finished)",
    ]


def test_provider_style_bodies_verify(sandbox):
    p = invoice(sandbox, product=("Sticker", "Mitte"), coin="usdttrc20", quantity=20)
    data = emulator(sandbox, p)
    text = (
        '{"fee":{"withdrawalFee":0,"serviceFee":0.00005,"depositFee":1e-7,"currency":"usdttrc20"},'
        f'"payment_status":"confirming","payment_id":{p["provider_id"]},'
        '"order_description":"Łódź – «Grün» 😀",'
        f'"price_amount":10,"pay_amount":{data["pay_amount"]},"actually_paid":0.00005,'
        f'"pay_currency":"usdttrc20","order_id":"{p["reference"]}","price_currency":"eur"}}'
    )
    r = post_ipn(sandbox, body=text.encode())
    assert r.status_code == 200, r.text
    assert sandbox.conn.execute("SELECT status FROM payments").fetchone()[0] == "confirming"


def test_the_webhook_refuses_what_it_cannot_trust_and_changes_nothing(sandbox):
    cheap = invoice(sandbox, product=("Sticker", "Mitte"), coin="usdttrc20", quantity=20)
    dear = invoice(sandbox, quantity=2)
    cheap_ipn = {**emulator(sandbox, cheap), "payment_status": "finished"}
    before = rows(snapshot(sandbox.conn))
    replay = {**cheap_ipn, "payment_id": shop.Num(dear["provider_id"])}
    cases = [
        (post_ipn(sandbox, cheap_ipn, signature=None), 401, "missing signature"),
        (post_ipn(sandbox, cheap_ipn, signature="ab" * 64), 401, "bad signature"),
        (post_ipn(sandbox, cheap_ipn, secret="another-secret"), 401, "bad signature"),
        (post_ipn(sandbox, replay), 409, "mismatch"),
        (post_ipn(sandbox, {**cheap_ipn, "payment_id": shop.Num("123")}), 404, "unknown payment"),
        (post_ipn(sandbox, {**cheap_ipn, "payment_status": "paid"}), 400, "invalid"),
        (
            post_ipn(
                sandbox, body=b'{"payment_id": 1, "payment_status": "finished"', signature="x"
            ),
            400,
            "malformed",
        ),
        (post_ipn(sandbox, body=b"\x00\xff" * 10, signature="x"), 400, "malformed"),
        (post_ipn(sandbox, body=b"[]", signature="x"), 400, "malformed"),
        (post_ipn(sandbox, body=b"{}" + b" " * 70000, signature="x"), 413, None),
    ]
    for r, code, verdict in cases:
        assert r.status_code == code, (verdict, r.text)
        assert "error" in r.json()
    verdicts = [r[0] for r in sandbox.conn.execute("SELECT verdict FROM ipn_events ORDER BY id")]
    assert [v.split(":")[0] for v in verdicts] == [v for _, _, v in cases if v]
    after = rows(snapshot(sandbox.conn))
    assert after == before
    bodies = [r[0] for r in sandbox.conn.execute("SELECT body FROM ipn_events")]
    assert shop.encode_json(cheap_ipn)[:512] in bodies  # stored raw (refused ones, their start)


def test_simulated_payments_run_every_layer(sandbox):
    p = invoice(sandbox)
    assert simulate(sandbox, p, "over", key="wrong").status_code == 403
    simulate(sandbox, p, "over").raise_for_status()
    row = wait_for_row(
        sandbox.conn, "SELECT status, outcome FROM payments WHERE status = 'finished'"
    )
    # 1.5 x 0.00041667 BTC = 0.00062500 sent; the extra 0.00020833 is worth floor(1249.97) cents.
    assert row[:] == ("finished", "delivered, overpaid 12.49 credited")
    verdicts = [r[0] for r in sandbox.conn.execute("SELECT verdict FROM ipn_events ORDER BY id")]
    assert verdicts == [
        "applied: waiting -> confirming",
        "applied: confirming -> finished: delivered, overpaid 12.49 credited",
    ]
    assert simulate(sandbox, p, "full").status_code == 400
    assert simulate(sandbox, p, "bribe").status_code == 400
    assert simulate(sandbox, {"provider_id": "9" * 40}, "full").status_code == 404


def simulate(s, payment, outcome, key=None):
    return requests.post(
        f"{s.url}/sandbox/v1/simulate/{payment['provider_id']}/{outcome}",
        headers={"x-api-key": key or s.sandbox_api_key},
        timeout=5,
    )


def test_a_missed_webhook_is_caught_by_reconciliation(make_shop):
    s = make_shop()
    conn = shop.connect(s.config.shop_db)
    s.conn, s.ids = conn, seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    user(conn, 1)
    p = invoice(s)
    data = emulator(s, p)
    data.update(payment_status="finished", actually_paid=data["pay_amount"])
    with shop.transaction(conn):  # the money arrived; the IPN never came
        conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(p["provider_id"])),
        )
    s.payments.reconcile()
    row = conn.execute(
        "SELECT final_source, outcome FROM payments WHERE status = 'finished'"
    ).fetchone()
    assert row[:] == ("poll", "delivered")
    jobs = {job.id: job.trigger for job in s.scheduler.get_jobs()}
    assert jobs["reconcile_payments"].interval.total_seconds() == s.config.payment_poll_seconds
    assert conn.execute("SELECT count(*) FROM ipn_events").fetchone()[0] == 0


@pytest.fixture
def live_pair(make_shop):
    """Factory: a sandbox shop serving as NOWPayments, and a live shop using it as its provider
    (knowing its IPN secret when signed=True). Returns the live shop; .provider_shop is the
    other."""
    conns = []

    def pair(signed=True, units=2):
        np_shop = make_shop(name="provider")
        env = {
            "NOWPAYMENTS_API_KEY": np_shop.sandbox_api_key,
            "NOWPAYMENTS_API_URL": np_shop.url + "/sandbox/v1",
        }
        if signed:
            env["NOWPAYMENTS_IPN_SECRET"] = np_shop.ipn_secret
        live = make_shop(env=env, name="live")
        live.conn = shop.connect(live.config.shop_db)
        conns.append(live.conn)
        live.ids, live.provider_shop = (
            seed(live.conn, [("Berlin", "Mitte", "Gift card", 2500, units)]),
            np_shop,
        )
        user(live.conn, 1)
        return live

    yield pair
    for c in conns:
        c.close()


@pytest.fixture
def provider(live_pair):
    return live_pair(signed=True)


def test_a_live_shop_pays_through_the_provider_over_http(provider):
    assert not provider.config.sandbox
    p = invoice(provider)
    simulate(provider.provider_shop, p, "full").raise_for_status()
    row = wait_for_row(provider.conn, "SELECT outcome FROM payments WHERE status = 'finished'")
    assert row[0] == "delivered"
    assert (
        requests.get(provider.url + "/sandbox/v1/status", timeout=5).status_code == 404
    )  # no emulator in live mode


def test_the_provider_down_while_creating_an_invoice_leaves_nothing_reserved(provider):
    provider.payments.coins()  # the coin list is cached, as the menu would have it
    provider.provider_shop.stop()
    before = rows(snapshot(provider.conn))
    with pytest.raises(shop.ProviderError) as e:
        invoice(provider)
    assert "not answering" in str(e.value)
    assert shop.get_offer(provider.conn, *provider.ids[("Gift card", "Mitte")])["available"] == 2
    after = rows(snapshot(provider.conn))
    assert after["stock_units"] == before["stock_units"] and after["payments"] == before["payments"]
    assert [r[2:4] for r in after["orders"]] == [("cancelled", 2500)]
    health = provider.health()
    assert health["payments"].startswith("NOWPayments not answering") and health["status"] == "ok"


def test_without_an_ipn_secret_an_ipn_is_only_a_hint(live_pair):
    live = live_pair(signed=False)
    np_shop, conn = live.provider_shop, live.conn
    p = invoice(live)
    forged = {**emulator(np_shop, p), "payment_status": "finished", "actually_paid": shop.Num("1")}
    for _ in range(20):
        assert post_ipn(live, forged, signature=None).status_code == 202
    live.payments.hints.join()  # every hint looked up with the API
    # The API still says "waiting": the forged news changed nothing.
    assert conn.execute("SELECT status FROM payments").fetchone()[0] == "waiting"
    assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 0
    assert [v for (v,) in conn.execute("SELECT DISTINCT verdict FROM ipn_events")] == [
        "hint: status fetched from the API"
    ]
    simulate(np_shop, p, "full").raise_for_status()
    row = wait_for_row(conn, "SELECT final_source FROM payments WHERE status = 'finished'")
    assert row[0] == "ipn"


# Regressions from review: money must not be lost at the edges


def test_an_order_whose_payment_is_on_the_chain_keeps_its_items_past_the_deadline(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)])
    apply(conn, news(p, "confirming"))
    conn.execute(
        "UPDATE stock_units SET reserved_until = ? WHERE order_id = ?",
        (shop.now_iso(-60), p["order_id"]),
    )
    assert shop.release_expired_reservations(conn) == 0
    assert conn.execute("SELECT status FROM orders").fetchone()[0] == "pending"
    assert apply(conn, news(p, "finished", "0.0004")).endswith("delivered")


def test_paying_from_the_balance_a_checkout_that_has_a_crypto_invoice_is_refused(conn, gift):
    uid = user(conn, balance=10000)
    nonce = shop.create_checkout(conn, uid, "order", 2500, [(*gift, 1)])
    shop.reserve_for_checkout(conn, uid, nonce, 30)
    with pytest.raises(shop.InvalidInput, match="crypto invoice"):
        shop.buy_with_balance(
            conn, uid, [(*gift, 1)], expected_total_cents=2500, checkout_key=nonce
        )
    assert shop.get_user(conn, uid)["balance_cents"] == 10000
    other = user(conn, 2, balance=10000)  # a nonce is only ever looked up for its own shopper
    assert shop.buy_with_balance(conn, other, [(*gift, 1)], checkout_key=nonce)
    with pytest.raises(shop.InvalidInput, match="already paid from your balance"):
        shop.reserve_for_checkout(conn, other, nonce, 30)


def test_a_repeat_deposit_to_another_address_is_refused(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)])
    child = news(
        p,
        "finished",
        "0.0002",
        payment_id=shop.Num("1234"),
        parent_payment_id=shop.Num(p["provider_id"]),
        pay_address="someone-elses-address",
        order_id=None,
    )
    with pytest.raises(shop.PaymentMismatch, match="another address"):
        apply(conn, child)
    assert shop.get_user(conn, uid)["balance_cents"] == 0


def test_a_refund_after_settlement_is_reported_to_the_owners_once(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)])
    apply(conn, news(p, "finished", "0.0004"))
    assert apply(conn, news(p, "refunded", "0.0004")).endswith("refund reported to the owners")
    assert apply(conn, news(p, "refunded", "0.0004")) == "unchanged (finished)"
    assert sum("refunded after it was finished" in t for t in outbox(conn, 900)) == 1
    assert status_of(conn, p)[0] == "finished"


def test_exact_floor_beyond_decimal_precision():
    assert shop.value_of(100, "99999999999.999999999999999999", "100000000000") == 99


def test_the_reconciliation_goes_on_past_a_payment_the_provider_refuses(sandbox):
    now = shop.now_iso()
    with shop.transaction(
        sandbox.conn
    ):  # e.g. a payment made with another API key: GET answers 404
        sandbox.conn.execute(
            "INSERT INTO payments(provider_id, kind, user_id, reference, price_cents, "
            "pay_currency, pay_amount, status, expires_at, created_at, updated_at) "
            "VALUES ('1234', 'topup', 1, 'topup-x', 500, 'btc', '0.0001', 'waiting', ?, ?, ?)",
            (now, now, now),
        )
    p = invoice(sandbox)
    data = {**emulator(sandbox, p), "payment_status": "finished"}
    data["actually_paid"] = data["pay_amount"]
    with shop.transaction(sandbox.conn):
        sandbox.conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(p["provider_id"])),
        )
    sandbox.payments.reconcile()
    assert (
        sandbox.conn.execute("SELECT status FROM payments WHERE id = ?", (p["id"],)).fetchone()[0]
        == "finished"
    )


def test_money_after_an_expiry_is_found_by_the_reconciliation(sandbox):
    p = invoice(sandbox)
    simulate(sandbox, p, "expire").raise_for_status()
    wait_for_row(sandbox.conn, "SELECT 1 FROM payments WHERE status = 'expired'")
    data = {**emulator(sandbox, p), "payment_status": "finished"}
    data["actually_paid"] = data["pay_amount"]
    with shop.transaction(sandbox.conn):  # the money came; its IPN was lost
        sandbox.conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(p["provider_id"])),
        )
    sandbox.payments.reconcile()
    assert sandbox.conn.execute("SELECT status, outcome FROM payments").fetchone()[:] == (
        "finished",
        "delivered late",
    )


def test_a_settling_ipn_without_actually_paid_is_settled_from_the_api(sandbox):
    p = invoice(sandbox)
    data = {
        **emulator(sandbox, p),
        "payment_status": "partially_paid",
        "actually_paid": shop.Num("0.0001"),
    }
    with shop.transaction(sandbox.conn):
        sandbox.conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(p["provider_id"])),
        )
    bare = {k: v for k, v in data.items() if k != "actually_paid"}
    assert post_ipn(sandbox, bare).status_code == 202
    sandbox.payments.hints.join()
    assert sandbox.conn.execute("SELECT status, credited_cents FROM payments").fetchone()[:] == (
        "partially_paid",
        599,
    )  # floor(2500 * 0.0001 / 0.00041667)


def test_a_deeply_nested_ipn_is_refused_not_a_crash(sandbox):
    body = ('{"a":' * 600 + "1" + "}" * 600).encode()
    r = post_ipn(sandbox, body=body, signature="x")
    assert r.status_code == 400 and "nested deeper" in r.json()["error"]
    assert (
        sandbox.conn.execute("SELECT verdict FROM ipn_events").fetchone()[0].startswith("malformed")
    )


def test_without_an_ipn_secret_a_repeat_deposit_is_still_credited(live_pair):
    live = live_pair(signed=False)
    np_shop, conn = live.provider_shop, live.conn
    p = invoice(live)
    parent = emulator(np_shop, p)
    child = {
        **parent,
        "payment_id": shop.Num("5550001111"),
        "parent_payment_id": parent["payment_id"],
        "payment_status": "finished",
        "actually_paid": shop.Num(str(Decimal(parent["pay_amount"]) / 2)),
        "order_id": None,
    }
    np_conn = shop.connect(np_shop.config.shop_db)
    with shop.transaction(
        np_conn
    ):  # a second deposit to the invoice's address, as NOWPayments records it
        np_conn.execute(
            "INSERT INTO sandbox_payments(id, data) VALUES (5550001111, ?)",
            (shop.encode_json(child),),
        )
    np_conn.close()
    assert post_ipn(live, child, signature=None).status_code == 202
    live.payments.hints.join()
    assert (
        conn.execute(
            "SELECT credited_cents FROM payments WHERE provider_id = '5550001111'"
        ).fetchone()[0]
        == 1250
    )
    assert shop.get_user(conn, 1)["balance_cents"] == 1250


def test_odd_provider_minimums_leave_the_coin_offered(tmp_path):
    """A NOWPayments stand-in that answers /min-amount without the amounts."""
    import threading
    import bottle
    import waitress
    from conftest import free_port

    api = bottle.Bottle()
    api.route("/merchant/coins", callback=lambda: {"currencies": ["btc", {"code": "LTC"}]})
    api.route("/min-amount", callback=lambda: {"currency_from": "btc", "currency_to": "btc"})
    port = free_port()
    server = waitress.create_server(api, host="127.0.0.1", port=port)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        client = shop.NowPayments(f"http://127.0.0.1:{port}", "key")
        assert client.merchant_coins() == ["btc", "ltc"]
        with pytest.raises(shop.ProviderError) as e:
            client.minimum_eur("btc")
        assert not e.value.outage and "min_amount is not a number" in e.value.detail
    finally:
        server.close()


def test_news_with_another_pay_amount_is_refused(conn, gift):
    uid = user(conn)
    p = order_payment(conn, uid, [(*gift, 1)], pay_amount="0.0004")
    with pytest.raises(shop.PaymentMismatch, match="pay_amount"):
        apply(conn, news(p, "partially_paid", "0.0001", pay_amount=shop.Num("0.0002")))
    assert apply(conn, news(p, "finished", "0.0004", pay_amount=shop.Num("4E-4"))).endswith(
        "delivered"
    )


def test_a_refused_api_key_is_reported_to_the_owners_and_in_health(make_shop):
    np_shop = make_shop(name="provider")
    live = make_shop(
        env={
            "NOWPAYMENTS_API_KEY": "revoked-key",
            "NOWPAYMENTS_IPN_SECRET": "x",
            "NOWPAYMENTS_API_URL": np_shop.url + "/sandbox/v1",
            "ADMIN_IDS": "900",
        },
        name="live",
    )
    with pytest.raises(shop.ProviderError) as e:
        live.payments.coins()
    assert e.value.outage
    live.payments.reconcile()
    assert live.health()["payments"].startswith("NOWPayments refuses the API key (HTTP 403")
    conn = shop.connect(live.config.shop_db)
    notes = [r[0] for r in conn.execute("SELECT text FROM outbox WHERE chat_id = 900")]
    assert len(notes) == 1 and "refuses the shop's API key" in notes[0]
    conn.close()


def test_an_outage_that_ended_is_noticed_without_other_traffic(provider):
    import time

    provider.scheduler.shutdown(wait=True)  # no background job talks to the provider from here on
    provider.payments.client.failing_since = (
        time.monotonic() - 400
    )  # a failure long ago, nothing since
    assert provider.health()["payments"].startswith("NOWPayments not answering")
    provider.payments.reconcile()  # asks /status
    assert provider.health()["payments"] == "ok"


def test_only_unknown_money_that_looks_like_ours_bothers_the_owners(make_shop):
    s = make_shop(env={"ADMIN_IDS": "900"})
    conn = shop.connect(s.config.shop_db)
    waiting = {"payment_id": shop.Num("42"), "payment_status": "waiting", "order_id": "order-7"}
    assert post_ipn(s, waiting).status_code == 404  # may beat our own POST /payment: no alert
    assert conn.execute("SELECT count(*) FROM outbox WHERE chat_id = 900").fetchone()[0] == 0
    paid = {**waiting, "payment_status": "finished", "actually_paid": shop.Num("0.1")}
    assert post_ipn(s, paid).status_code == 404
    notes = [r[0] for r in conn.execute("SELECT text FROM outbox WHERE chat_id = 900")]
    assert len(notes) == 1 and "money (finished) for payment 42, order-7" in notes[0]
    conn.close()


# Trust under pressure (issue 10): cancelling costs the provider little, limits hold however
# requests arrive


def test_cancel_asks_the_provider_at_most_every_few_seconds_and_closed_invoices_answer_from_the_db(
    make_shop,
):
    from flaky_proxy import FlakyProxy

    np_shop = make_shop(name="provider")
    link = FlakyProxy("127.0.0.1", np_shop.config.port).start()
    live = make_shop(
        env={
            "NOWPAYMENTS_API_KEY": np_shop.sandbox_api_key,
            "NOWPAYMENTS_IPN_SECRET": np_shop.ipn_secret,
            "NOWPAYMENTS_API_URL": link.url + "/sandbox/v1",
        },
        name="live",
    )
    conn = shop.connect(live.config.shop_db)
    try:
        ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])
        gift = ids[("Gift card", "Mitte")]
        init = shop.sign_init_data({"id": 1, "first_name": "Ann"}, live.webapp_token)

        def call(method, path):
            return requests.request(
                method, live.url + path, timeout=20, headers={"X-Telegram-Init-Data": init}
            )

        made = requests.post(
            live.url + "/api/payment/create",
            headers={"X-Telegram-Init-Data": init},
            timeout=20,
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "btc",
            },
        )
        assert made.status_code == 200, made.text
        pid = made.json()["payment_id"]
        assert call("GET", f"/api/payment/status/{pid}").json()[
            "open"
        ]  # 🔄 Check status: asked just now
        link.set_mode("refuse")  # NOWPayments unreachable from here on
        # Asked a moment ago, so ❌ Cancel does not ask again: it cancels.
        cancelled = call("POST", f"/api/payment/{pid}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert not cancelled.json()["open"] and cancelled.json()["order_status"] == "cancelled"
        assert shop.get_offer(conn, *gift)["available"] == 3
        # A cancelled invoice answers from the database, however often it is tapped; nothing is
        # queued for it.
        before = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        for _ in range(10):
            again = call("POST", f"/api/payment/{pid}/cancel")
            assert again.status_code == 200 and again.json() == cancelled.json()
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == before
        # An open invoice not looked at for a while is still checked first: money may be on its way.
        link.set_mode("pass")
        second = requests.post(
            live.url + "/api/payment/create",
            headers={"X-Telegram-Init-Data": init},
            timeout=20,
            json={
                "type": "product",
                "product_id": gift[0],
                "district_id": gift[1],
                "quantity": 1,
                "currency": "btc",
            },
        ).json()["payment_id"]
        live.payments.last_refresh.clear()
        link.set_mode("refuse")
        refused = call("POST", f"/api/payment/{second}/cancel")
        assert refused.status_code == 502 and "not answering" in refused.json()["error"]
        assert call("GET", f"/api/payment/status/{second}").json()["open"]
    finally:
        conn.close()
        link.stop()


def test_invoice_limits_are_decided_with_the_reservation(conn, gift):
    """The count and the reservation are one transaction: an order being invoiced counts at once."""
    uid = user(conn)
    limits = {"max_open": 2, "max_per_hour": 10, "max_unpaid_units": 5}
    for _ in range(2):  # reserved, the provider not yet asked (no payment row): they count already
        lines = [(*gift, 1)]
        nonce = shop.create_checkout(conn, uid, "order", shop.price_lines(conn, lines)[0], lines)
        shop.reserve_for_checkout(conn, uid, nonce, 30, limits)
    lines = [(*gift, 1)]
    nonce = shop.create_checkout(conn, uid, "order", shop.price_lines(conn, lines)[0], lines)
    before = rows(snapshot(conn))
    with pytest.raises(shop.LimitReached, match="2 unpaid invoices"):
        shop.reserve_for_checkout(conn, uid, nonce, 30, limits)
    assert rows(snapshot(conn)) == before
    topup = shop.create_checkout(conn, uid, "topup", 1000)
    with pytest.raises(shop.LimitReached, match="2 unpaid invoices"):
        shop.claim_topup_invoice(conn, uid, topup, limits)
    # What one shopper may hold unpaid is capped in items, whatever the number of invoices.
    other = user(conn, 2)
    lines = [(*gift, 3)]
    big = shop.create_checkout(conn, other, "order", shop.price_lines(conn, lines)[0], lines)
    with pytest.raises(shop.LimitReached, match="at most 2 items"):
        shop.reserve_for_checkout(conn, other, big, 30, {**limits, "max_unpaid_units": 2})
    shop.claim_topup_invoice(conn, other, shop.create_checkout(conn, other, "topup", 1000), limits)
    second = shop.create_checkout(conn, other, "topup", 1000)
    with pytest.raises(
        shop.LimitReached, match="1 unpaid invoice"
    ):  # a top-up being made counts too
        shop.claim_topup_invoice(conn, other, second, {**limits, "max_open": 1})


def test_a_late_payment_for_a_basket_order_takes_its_lines_out_of_the_basket_again(conn, gift):
    uid = user(conn)
    shop.add_to_basket(conn, uid, *gift, 2)
    lines = [(*gift, 2)]
    nonce = shop.create_checkout(
        conn, uid, "order", shop.price_lines(conn, lines)[0], lines, from_basket=True
    )
    p = checkout_payment(conn, uid, nonce, "0.0008")
    lapse(conn)
    assert [(item.name, item.quantity) for item in shop.get_basket(conn, uid).lines] == [
        ("Gift card", 2)
    ]
    assert apply(conn, news(p, "finished", paid="0.0008")).endswith("delivered late")
    assert shop.get_basket(conn, uid).lines == []
