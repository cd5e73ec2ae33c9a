"""Referral credit (issue 15): a shopper's link (/start ref_<id>) records who brought a friend; the
friend's first paid order credits the one who brought them the owner's percentage, once, through
the ledger. Services on a real database, the bot through the Bot API stand-in, the admin over
HTTP."""

import re
import subprocess
import sys
from urllib.parse import urlencode

import pytest
import requests

import shop
from conftest import ADMIN_PASSWORD, ROOT, TOKEN, Shopper, news, order_payment, seed, user
from harness import AdminClient


def referral_rows(conn, user_id=None):
    """The 'referral' ledger rows (of one user, or all): (user, amount, key, reason, order)."""
    sql = "SELECT user_id, amount_cents, idempotency_key, reason, order_id FROM ledger "
    sql += "WHERE kind = 'referral'" + (" AND user_id = ?" if user_id else "") + " ORDER BY id"
    return [tuple(r) for r in conn.execute(sql, (user_id,) if user_id else ())]


def referrer_of(conn, user_id):
    return shop.get_user(conn, user_id)["referrer_id"]


def set_percent(conn, percent):
    shop.save_settings(conn, {"referral_percent": str(percent)})


def outbox(conn, chat):
    return [
        r[0] for r in conn.execute("SELECT text FROM outbox WHERE chat_id = ? ORDER BY id", (chat,))
    ]


@pytest.fixture
def gift(conn):
    return seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 5)])[("Gift card", "Mitte")]


# Services, on a real database


def test_referrals_are_off_by_default_and_credit_nothing(conn, gift):
    ann, bob = user(conn, 1), user(conn, 2, balance=10000)
    assert shop.referral_percent(conn) == 0
    assert shop.referral_link(conn, ann, "test_shop_bot") is None
    # Who brought whom is recorded even while off (so turning it on before the first order counts).
    assert shop.record_referral(conn, bob, ann) is None
    assert referrer_of(conn, bob) == ann
    shop.buy_with_balance(conn, bob, [(*gift, 1)], owners=(900,))
    assert referral_rows(conn) == []
    assert shop.get_user(conn, ann)["balance_cents"] == 0
    assert outbox(conn, ann) == []


def test_the_first_paid_order_credits_the_referrer_once(conn, gift):
    ann, bob = user(conn, 1), user(conn, 2, balance=10000)
    set_percent(conn, 7)
    assert (
        shop.referral_link(conn, ann, "test_shop_bot") == "https://t.me/test_shop_bot?start=ref_1"
    )
    assert shop.record_referral(conn, bob, ann) is None
    first = shop.buy_with_balance(conn, bob, [(*gift, 1)], owners=(900,))
    # 7% of €25.00 = €1.75
    reason = f"Referral: the first order (#{first}) of user 2"
    assert referral_rows(conn) == [(ann, 175, "referral:2", reason, first)]
    assert shop.get_user(conn, ann)["balance_cents"] == 175
    told = outbox(conn, ann)
    assert told == [
        "🎁 A friend you invited paid their first order: €1.75 was added to your balance. "
        "Balance: €1.75."
    ]
    assert any("🎁 Referral: €1.75 credited to U1" in t for t in outbox(conn, 900))
    shop.buy_with_balance(conn, bob, [(*gift, 2)], owners=(900,))  # the second order: nothing
    assert len(referral_rows(conn)) == 1 and len(outbox(conn, ann)) == 1
    assert shop.referral_summary(conn, ann) == (1, 175)
    # A refund of the first order leaves the credit.
    shop.refund_order(conn, first, "changed their mind")
    assert referral_rows(conn, ann) == [(ann, 175, "referral:2", reason, first)]
    assert shop.check_ledger(conn) == []


def test_a_crypto_payment_credits_the_referrer_in_its_transaction(conn, gift):
    ann, bob = user(conn, 1), user(conn, 2)
    set_percent(conn, 10)
    shop.record_referral(conn, bob, ann)
    p = order_payment(conn, bob, [(*gift, 2)], pay_amount="0.001")
    assert shop.apply_payment_status(
        conn, shop.SandboxPayments.news(news(p, "confirming")), source="ipn"
    ) == ("waiting -> confirming")
    assert referral_rows(conn) == []  # not paid yet
    shop.apply_payment_status(
        conn, shop.SandboxPayments.news(news(p, "finished", "0.001")), source="ipn"
    )
    assert referral_rows(conn) == [
        (
            ann,
            500,
            "referral:2",
            f"Referral: the first order (#{p['order_id']}) of user 2",
            p["order_id"],
        )
    ]
    shop.apply_payment_status(  # the news again changes nothing
        conn, shop.SandboxPayments.news(news(p, "finished", "0.001")), source="poll"
    )
    assert len(referral_rows(conn)) == 1 and shop.get_user(conn, ann)["balance_cents"] == 500


def test_an_unpaid_or_lapsed_order_is_not_the_first_paid_one(conn, gift):
    ann, bob = user(conn, 1), user(conn, 2, balance=10000)
    set_percent(conn, 10)
    shop.record_referral(conn, bob, ann)
    p = order_payment(conn, bob, [(*gift, 1)])
    shop.apply_payment_status(conn, shop.SandboxPayments.news(news(p, "expired")), source="ipn")
    assert referral_rows(conn) == []
    order = shop.buy_with_balance(conn, bob, [(*gift, 1)])
    assert referral_rows(conn, ann) == [
        (ann, 250, "referral:2", f"Referral: the first order (#{order}) of user 2", order)
    ]


def test_a_share_that_rounds_to_nothing_or_a_banned_referrer_gets_nothing(conn):
    ids = seed(conn, [("Berlin", "Mitte", "Sticker", 19, 5), ("Berlin", "Mitte", "Tea", 999, 5)])
    ann, bob, cid, dan = user(conn, 1), user(conn, 2, 1000), user(conn, 3, 1000), user(conn, 4)
    set_percent(conn, 5)
    shop.record_referral(conn, bob, ann)
    shop.buy_with_balance(conn, bob, [(*ids[("Sticker", "Mitte")], 1)])  # 5% of 19 cents: 0
    assert referral_rows(conn) == []
    shop.record_referral(conn, cid, dan)
    shop.set_banned(conn, dan, True)
    shop.buy_with_balance(conn, cid, [(*ids[("Tea", "Mitte")], 1)])
    assert referral_rows(conn) == []
    # floor: 5% of €9.99 is 49.95 cents, 49 credited
    eve = user(conn, 5, 1000)
    shop.record_referral(conn, eve, ann)
    shop.buy_with_balance(conn, eve, [(*ids[("Tea", "Mitte")], 1)])
    assert [r[1] for r in referral_rows(conn)] == [49]


def test_self_referral_loops_second_referrers_customers_and_strangers_are_refused(conn, gift):
    ann, bob, cid = user(conn, 1), user(conn, 2), user(conn, 3, balance=5000)
    assert shop.record_referral(conn, ann, ann) == "self"
    assert shop.record_referral(conn, ann, 999999999) == "unknown"
    assert shop.record_referral(conn, bob, ann) is None
    assert shop.record_referral(conn, ann, bob) == "loop"  # Ann brought Bob
    assert shop.record_referral(conn, cid, bob) is None
    assert shop.record_referral(conn, ann, cid) == "loop"  # Ann -> Bob -> Cid
    assert shop.record_referral(conn, cid, ann) == "referred"  # Bob brought Cid already
    dan = user(conn, 4, balance=5000)
    shop.buy_with_balance(conn, dan, [(*gift, 1)])
    assert shop.record_referral(conn, dan, ann) == "customer"
    assert [referrer_of(conn, u) for u in (ann, bob, cid, dan)] == [None, ann, bob, None]


# The bot, through the Bot API stand-in


@pytest.fixture
def bot_shop(make_shop, fake_tg):
    """A sandbox shop with its bot, gift cards and stickers, and its owner (9001) listening."""
    s = make_shop(
        env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url, "ADMIN_IDS": "9001"}
    )
    s.conn = shop.connect(s.config.shop_db)
    seed(
        s.conn, [("Berlin", "Mitte", "Gift card", 2500, 3), ("Berlin", "Mitte", "Sticker", 50, 40)]
    )
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    Shopper(fake_tg, 9001, "Owner").send("/start", "Welcome")
    yield s
    s.conn.close()


def checkout(shopper, product, adds=1):
    shopper.open_product("Berlin", "Mitte", product)
    for _ in range(adds):
        shopper.click("➕ Add to basket")
    shopper.click("🧺 Basket")
    shopper.click("💳 Checkout")
    return shopper.screen


def test_a_friend_who_came_through_the_link_earns_the_referrer_once(fake_tg, bot_shop):
    conn = bot_shop.conn
    ann, bob = Shopper(fake_tg, 101, "Ann"), Shopper(fake_tg, 102, "Bob")
    ann.send("/start", "Welcome")
    profile = ann.send("👤 Profile", "Telegram ID")
    assert "ref_" not in profile.text and "Invite" not in profile.text  # off by default
    assert "📤 Share my link" not in profile.button_texts
    set_percent(conn, 10)
    profile = ann.send("👤 Profile", "Telegram ID")
    link = "https://t.me/test_shop_bot?start=ref_101"
    assert f"🤝 Invite friends: {link}" in profile.text
    assert "You get 10% of the first order of each friend who joins through it." in profile.text
    assert "Friends who joined: 0 · earned: €0.00" in profile.text
    share = next(b for row in profile.buttons for b in row if b["text"] == "📤 Share my link")
    assert share["url"] == "https://t.me/share/url?" + urlencode({"url": link})

    assert "Welcome" in bob.send("/start ref_101", "Welcome").text
    assert referrer_of(conn, 102) == 101
    shop.adjust_balance(conn, 102, 10000, "test funds")
    checkout(bob, "Gift card · €25.00")
    assert bob.click("💰 Pay €25.00 from balance").startswith("Order #")
    told = fake_tg.wait_message(101, "A friend you invited paid their first order")
    assert "€2.50 was added to your balance. Balance: €2.50." in told.content
    fake_tg.wait_message(9001, "🎁 Referral: €2.50 credited to Ann")
    assert referral_rows(conn) == [(101, 250, "referral:102", referral_reason(conn, 102), 1)]

    checkout(bob, "Sticker · €0.50", adds=4)
    bob.click("💰 Pay €2.00 from balance")
    fake_tg.wait_message(102, "Order #2 is paid")  # paid and credited (or not) together
    assert len(referral_rows(conn)) == 1
    assert sum("A friend you invited" in m.content for m in fake_tg.messages(101)) == 1
    profile = ann.send("👤 Profile", "Telegram ID")
    assert "Friends who joined: 1 · earned: €2.50" in profile.text
    assert shop.check_ledger(conn) == []
    # The Mini App shows the same link.
    init = shop.sign_init_data({"id": 101, "first_name": "Ann"}, TOKEN)
    me = requests.get(bot_shop.url + "/api/me", headers={"X-Telegram-Init-Data": init}, timeout=10)
    assert me.json()["referral"] == {
        "link": link,
        "text": "You get 10% of the first order of each friend who joins through it.",
    }


def referral_reason(conn, buyer):
    first = conn.execute("SELECT min(id) FROM orders WHERE user_id = ?", (buyer,)).fetchone()[0]
    return f"Referral: the first order (#{first}) of user {buyer}"


def test_a_friends_first_order_paid_in_crypto_in_the_sandbox_credits_the_referrer(
    fake_tg, bot_shop
):
    conn = bot_shop.conn
    set_percent(conn, 5)
    Shopper(fake_tg, 103, "Ann").send("/start", "Welcome")
    cid = Shopper(fake_tg, 104, "Cid")
    cid.send("/start ref_103", "Welcome")
    checkout(cid, "Sticker · €0.50", adds=20)
    cid.click("TON")
    assert referral_rows(conn) == []  # an open invoice is not a paid order
    assert "pay in full" in cid.click("🧪 Pay in full")
    told = fake_tg.wait_message(103, "A friend you invited paid their first order", timeout=15)
    assert "€0.50 was added to your balance" in told.content  # 5% of €10.00
    assert referral_rows(conn) == [(103, 50, "referral:104", referral_reason(conn, 104), 1)]
    assert shop.check_ledger(conn) == []


def test_the_bot_quietly_refuses_self_referral_loops_customers_and_garbage(fake_tg, bot_shop):
    conn = bot_shop.conn
    set_percent(conn, 10)
    ann, bob, dan = (Shopper(fake_tg, i, n) for i, n in ((105, "Ann"), (106, "Bob"), (107, "Dan")))
    ann.send("/start", "Welcome")
    bob.send("/start ref_105", "Welcome")
    assert referrer_of(conn, 106) == 105
    for payload in ("ref_106", "ref_105", "ref_abc", "ref_999999999", "ref_", "ref_0106", "ref_-1"):
        assert "Welcome" in ann.send(f"/start {payload}", "Welcome").text, payload
        assert referrer_of(conn, 105) is None, payload
    dan.send("/start", "Welcome")
    shop.adjust_balance(conn, 107, 5000, "test funds")
    checkout(dan, "Gift card · €25.00")
    dan.click("💰 Pay €25.00 from balance")
    fake_tg.wait_message(107, "Order #1 is paid")
    dan.send("/start ref_105", "Welcome")
    assert referrer_of(conn, 107) is None  # a customer already: they did not come through it
    bob.send("/start ref_107", "Welcome")
    assert referrer_of(conn, 106) == 105  # the first one who brought them stays
    assert referral_rows(conn) == []
    # Refused or not, Ann only ever read the welcome: nothing that tells a refusal from a success.
    assert all(m.content.startswith("👋 ") for m in fake_tg.messages(105))


# The owner: settings and the admin's user pages


def test_the_owner_sets_the_percentage_on_the_settings_page_and_the_command_line(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    admin = AdminClient(s.url, ADMIN_PASSWORD, shop=s)
    assert admin.login().status_code == 303
    conn = shop.connect(s.config.shop_db)
    page = admin.get("/admin/settings").text
    assert 'name="referral_percent" id="referral_percent" value="0"' in page
    form = {
        "shop_name": "Demo Shop",
        "welcome_text": "",
        "help_text": "",
        "min_deposit": "5.00",
        "reservation_minutes": "30",
        "referral_percent": " 12 ",
    }
    assert admin.post("/admin/settings", form).status_code == 303
    assert shop.get_setting(conn, "referral_percent") == "12"
    for bad in ("51", "-1", "2.5", "ten", ""):
        r = admin.post("/admin/settings", {**form, "referral_percent": bad})
        assert r.status_code == 400 and "Nothing was saved" in r.text, bad
        assert "The referral credit must be a whole per cent from 0 to 50" in r.text, bad
    assert shop.get_setting(conn, "referral_percent") == "12"
    env = {"SHOP_DB": s.config.shop_db, "PATH": __import__("os").environ["PATH"]}
    for value, said, code in (("5", "referral_percent set to 5\n", 0), ("99", "", 1)):
        r = subprocess.run(
            [sys.executable, str(ROOT / "shop.py"), "set", "referral_percent", value],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode, r.stdout) == (code, said), r.stderr
    assert shop.referral_percent(conn) == 5
    conn.close()


def test_the_admin_user_page_shows_who_referred_whom_and_the_credit(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    admin = AdminClient(s.url, ADMIN_PASSWORD, shop=s)
    assert admin.login().status_code == 303
    conn = shop.connect(s.config.shop_db)
    gift = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])[("Gift card", "Mitte")]
    shop.touch_user(conn, {"id": 201, "first_name": "Ann", "username": "ann"})
    shop.touch_user(conn, {"id": 202, "first_name": "Bob <b>"})
    shop.touch_user(conn, {"id": 203, "first_name": "Cid"})
    set_percent(conn, 10)
    shop.record_referral(conn, 202, 201)
    shop.record_referral(conn, 203, 201)
    shop.adjust_balance(conn, 202, 5000, "test funds")
    order = shop.buy_with_balance(conn, 202, [(*gift, 1)])

    page = admin.get("/admin/users/201").text
    section = page[page.index('id="referrals"') : page.index("<h2>Orders</h2>")]
    assert "Nobody referred them." in section
    assert "Brought 2 shoppers through their link; referral credit earned: €2.50." in section
    assert '<a href="/admin/users/202">Bob &lt;b&gt; (202)</a>' in section  # escaped
    assert f'€2.50 (<a href="/admin/orders/{order}">order #{order}</a>)' in section
    cid = section[section.index('href="/admin/users/203"') :]
    assert "none yet" in cid
    assert "Referral: the first order" in page  # the ledger row, with its reason

    page = admin.get("/admin/users/202").text
    section = page[page.index('id="referrals"') : page.index("<h2>Orders</h2>")]
    assert re.search(
        r'Referred by <a href="/admin/users/201">Ann @ann \(201\)</a> on \d{4}-', section
    )
    assert "Brought 0 shoppers through their link; referral credit earned: €0.00." in section
    conn.close()
