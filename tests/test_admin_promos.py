"""Discount codes, the owner's side: the Promotions page over real HTTP (login, CSRF, htmx), the
discount on the owner's order views and export, and `shop.py promo` as a subprocess."""

import csv
import html
import io
import json
import os
import re
import subprocess
import sys

import pytest

import shop
from conftest import ADMIN_PASSWORD as PASSWORD
from conftest import ROOT, seed, user
from harness import AdminClient

HTMX = {"HX-Request": "true"}

# A new code's form as the owner fills it in: every field, the scope boxes unticked.
BLANK = {
    "code": "",
    "kind": "percent",
    "value": "",
    "min_total": "",
    "starts": "",
    "ends": "",
    "max_uses": "",
    "max_uses_per_user": "",
    "note": "",
}


@pytest.fixture
def admin(make_shop):
    """The owner logged in to a shop selling gift cards in Berlin and coffee beans in Vienna."""
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    s.conn = shop.connect(s.config.shop_db)
    s.ids = seed(
        s.conn,
        [
            ("Berlin", "Mitte", "Gift card", 2500, 6),
            ("Wien", "Innere Stadt", "Coffee beans", 1290, 6),
        ],
    )
    a = AdminClient(s.url, PASSWORD, shop=s)
    assert a.login().status_code == 303
    yield a
    s.conn.close()


def codes(conn):
    """The promo_codes table as it is, for comparing before and after."""
    return [tuple(r) for r in conn.execute("SELECT * FROM promo_codes ORDER BY id")]


def audit_actions(conn):
    return [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]


def text(response):
    """A page's text without its tags, as the owner reads it."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", response.text)))


def row_of(page, promo_id):
    """A code's row on the Promotions page, as text."""
    found = re.search(rf'<tr id="promo-{promo_id}".*?</tr>', page, re.S)
    assert found, f"no row for code {promo_id}"
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", found.group(0))))


def add_code(admin, **fields):
    return admin.post("/admin/promos", {**BLANK, **fields})


def test_the_owner_adds_a_percent_and_a_fixed_code_and_the_list_shows_their_terms(admin):
    conn = admin.shop.conn
    r = add_code(
        admin,
        code="Spring10",
        value="10",
        min_total="20",
        starts="2026-12-01T09:30",  # as a datetime-local field sends it
        ends="2026-12-31T23:00",
        max_uses="50",
        max_uses_per_user="1",
        products=["1"],
        cities=["1"],
        note="Newsletter",
    )
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/promos")
    assert admin.flash("/admin/promos") == "Code Spring10 added: shoppers can use it."
    r = add_code(admin, code="FIVE_OFF", kind="fixed", value="5,50")
    assert r.status_code == 303
    spring = conn.execute("SELECT * FROM promo_codes WHERE code = 'SPRING10'").fetchone()
    assert (spring["kind"], spring["value"], spring["min_total_cents"]) == ("percent", 10, 2000)
    assert (spring["starts_at"], spring["ends_at"]) == (
        "2026-12-01T09:30:00.000000Z",
        "2026-12-31T23:00:00.000000Z",
    )
    assert (spring["max_uses"], spring["max_uses_per_user"]) == (50, 1)
    assert (json.loads(spring["product_ids"]), json.loads(spring["city_ids"])) == ([1], [1])
    assert (spring["is_active"], spring["note"]) == (1, "Newsletter")
    five = conn.execute("SELECT * FROM promo_codes WHERE code = 'five_off'").fetchone()
    assert (five["kind"], five["value"], five["min_total_cents"]) == ("fixed", 550, 0)
    assert five["starts_at"] is five["ends_at"] is five["product_ids"] is five["city_ids"] is None
    assert audit_actions(conn).count("promo code added") == 2

    page = admin.get("/admin/promos").text
    row = row_of(page, spring["id"])
    for words in (
        "Spring10",
        "Newsletter",
        "10% off",
        "€20.00",
        "2026-12-01 09:30 to 2026-12-31 23:00",
        "Gift card · Berlin",
        "50 in all 1 per shopper",
        "0 paid 0 reserved 50 left",
        "active",
        "Pause",
    ):
        assert words in row, (words, row)
    row = row_of(page, five["id"])
    for words in ("FIVE_OFF", "€5.50 off", "no dates", "all products · all cities", "no limit"):
        assert words in row, (words, row)
    assert '<a href="/admin/promos" class="on" aria-current="page">Promotions</a>' in page

    edit = admin.get(f"/admin/promos/{spring['id']}").text  # the form shows what is stored
    assert 'name="starts" value="2026-12-01T09:30"' in edit
    assert 'name="ends" value="2026-12-31T23:00"' in edit
    assert re.search(r'name="products" value="1"\s+checked', edit)
    assert not re.search(r'name="products" value="2"\s+checked', edit)


def test_a_day_without_a_time_starts_at_its_beginning_and_ends_at_its_end(admin):
    conn = admin.shop.conn
    assert add_code(admin, code="DEC", value="5", starts="2026-12-01", ends="2026-12-31").ok
    row = conn.execute("SELECT starts_at, ends_at FROM promo_codes").fetchone()
    assert tuple(row) == ("2026-12-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z")
    assert "2026-12-01 to end of 2026-12-31" in admin.get("/admin/promos").text


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"code": "ab"}, "A code is 3 to 32 letters"),
        ({"code": "NO SPACE"}, "A code is 3 to 32 letters"),
        ({"code": "x" * 33}, "A code is 3 to 32 letters"),
        ({"code": "taken"}, "There is already a code TAKEN (codes are the same in any case)."),
        ({"kind": "free"}, "Choose what the code takes off"),
        ({"value": "0"}, "The percentage must be a whole number from 1 to 99; got '0'."),
        ({"value": "100"}, "The percentage must be a whole number from 1 to 99; got '100'."),
        ({"value": "abc"}, "The percentage must be a whole number from 1 to 99; got 'abc'."),
        ({"value": "12.5"}, "The percentage must be a whole number from 1 to 99"),
        ({"value": ""}, "The percentage must be a whole number from 1 to 99"),
        ({"kind": "fixed", "value": "-5"}, "The amount off must be positive"),
        ({"kind": "fixed", "value": "5.555"}, "The amount off must be an amount in EUR"),
        ({"kind": "fixed", "value": "1e3"}, "The amount off must be an amount in EUR"),
        ({"kind": "fixed", "value": "0"}, "The amount off must be at least 0.01 EUR"),
        ({"min_total": "-1"}, "The minimum basket must be positive"),
        ({"min_total": "twenty"}, "The minimum basket must be an amount in EUR"),
        ({"starts": "tomorrow"}, "The start must be a day like 2026-12-01"),
        ({"ends": "2026-02-30"}, "The end must be a day like 2026-12-01"),
        ({"ends": "9999-12-31"}, "The end must be a day between the years 2000 and 9998."),
        (
            {"starts": "2026-12-10", "ends": "2026-12-01"},
            "The end (end of 2026-12-01 UTC) must come after the start (2026-12-10 UTC).",
        ),
        (
            {"starts": "2026-12-01T10:00", "ends": "2026-12-01T10:00"},
            "must come after the start",
        ),
        ({"max_uses": "0"}, "The uses in all must be a whole number from 1"),
        ({"max_uses_per_user": "1.5"}, "The uses per shopper must be a whole number from 1"),
        ({"products": ["1", "99"]}, "There is no product '99'"),
        ({"cities": ["7"]}, "There is no city '7'"),
        ({"note": "x" * 201}, "The note is longer than 200 characters"),
    ],
)
def test_a_refused_code_says_why_keeps_what_was_typed_and_changes_nothing(admin, fields, words):
    conn = admin.shop.conn
    assert add_code(admin, code="TAKEN", value="10").status_code == 303
    before, audited = codes(conn), audit_actions(conn)
    form = {**BLANK, "code": "NEW1", "value": "10", **fields}
    r = admin.post("/admin/promos", form)
    assert r.status_code == 400, r.text
    assert words in html.unescape(r.text)
    assert (
        'role="alert"' in r.text and '<details class="card add-promo" id="new-code" open' in r.text
    )
    typed = re.escape(html.escape(form["code"]))
    assert re.search(f'name="code"[^>]* value="{typed}"', r.text)  # as typed
    assert codes(conn) == before and audit_actions(conn) == audited


def test_a_missing_or_wrong_csrf_token_adds_or_changes_nothing(admin):
    conn = admin.shop.conn
    assert add_code(admin, code="KEEP", value="10").status_code == 303
    promo_id = shop.find_promo_code(conn, "KEEP")["id"]
    before = codes(conn)
    for path, data in (
        ("/admin/promos", {**BLANK, "code": "SNEAKY", "value": "50"}),
        (f"/admin/promos/{promo_id}", {**BLANK, "code": "KEEP", "value": "99"}),
        (f"/admin/promos/{promo_id}/pause", {}),
    ):
        for token in ({}, {"csrf_token": "forged"}):
            r = admin.post(path, {**data, **token}, csrf=False)
            assert r.status_code == 403 and "CSRF" in r.text, path
        r = admin.post(path, data, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "Cross-site" in r.text, path
    assert codes(conn) == before


def test_pause_and_resume_from_the_list_with_htmx_and_from_the_codes_page(admin):
    conn = admin.shop.conn
    assert add_code(admin, code="PAUSEME", value="10").status_code == 303
    promo_id = shop.find_promo_code(conn, "pauseme")["id"]
    r = admin.post(f"/admin/promos/{promo_id}/pause", headers=HTMX)
    assert r.status_code == 200 and r.text.lstrip().startswith(f'<tr id="promo-{promo_id}"')
    assert "paused" in row_of(r.text, promo_id) and "Resume" in row_of(r.text, promo_id)
    assert shop.find_promo_code(conn, "PAUSEME")["is_active"] == 0
    gift = admin.shop.ids[("Gift card", "Mitte")]
    user(conn, 21, balance=5000)
    with pytest.raises(shop.PromoRefused, match="paused"):  # the shopper's side sees it at once
        shop.buy_with_balance(conn, 21, [(*gift, 1)], promo_id=promo_id)

    page = f"/admin/promos/{promo_id}"
    r = admin.post(f"/admin/promos/{promo_id}/resume", headers={"Referer": admin.url + page})
    assert r.status_code == 303 and r.headers["Location"].endswith(page)
    assert admin.flash(page) == "Code PAUSEME resumed."
    assert shop.find_promo_code(conn, "PAUSEME")["is_active"] == 1
    assert "active" in row_of(admin.get("/admin/promos").text, promo_id)
    order = shop.buy_with_balance(conn, 21, [(*gift, 1)], promo_id=promo_id)
    assert conn.execute("SELECT discount_cents FROM orders WHERE id = ?", (order,)).fetchone()[0]
    admin.post(f"/admin/promos/{promo_id}/resume")  # already active: nothing to record
    assert [a for a in audit_actions(conn) if a.startswith("promo code")] == [
        "promo code added",
        "promo code paused",
        "promo code resumed",
    ]


def order_with_code(conn, uid, lines, promo_id):
    """A crypto order with the code, pending while its invoice is open (a reserved use)."""
    total = shop.quote_lines(conn, uid, lines, promo_id=promo_id).total_cents
    nonce = shop.create_checkout(conn, uid, "order", total, lines, promo_id=promo_id)
    return shop.reserve_for_checkout(conn, uid, nonce, 30)[0]


def test_the_list_counts_each_codes_uses_paid_reserved_and_left(admin):
    conn = admin.shop.conn
    gift = admin.shop.ids[("Gift card", "Mitte")]
    add_code(admin, code="FIFTY", value="10", max_uses="5", max_uses_per_user="2")
    add_code(admin, code="UNUSED", kind="fixed", value="1")
    fifty = shop.find_promo_code(conn, "FIFTY")["id"]
    for uid in (31, 32):
        user(conn, uid, balance=10000)
        shop.buy_with_balance(conn, uid, [(*gift, 1)], promo_id=fifty)
    user(conn, 33)
    order_with_code(conn, 33, [(*gift, 1)], fifty)
    lapsed = order_with_code(conn, 33, [(*gift, 1)], fifty)
    conn.execute(
        "UPDATE stock_units SET reserved_until = ? WHERE order_id = ?", (shop.now_iso(-60), lapsed)
    )
    shop.release_expired_reservations(conn)  # an expired order gives its use back
    assert shop.get_order_status(conn, lapsed) == "expired"
    shop.buy_with_balance(conn, 31, [(*gift, 1)])  # without the code: not a use

    page = admin.get("/admin/promos").text
    assert "2 paid 1 reserved 2 left" in row_of(page, fifty)
    assert "0 paid 0 reserved no limit" in row_of(page, shop.find_promo_code(conn, "UNUSED")["id"])
    listed = {p["code"]: p for p in shop.list_promo_codes(conn)}
    assert (listed["FIFTY"]["uses_paid"], listed["FIFTY"]["uses_reserved"]) == (2, 1)
    assert listed["FIFTY"]["discount_paid_cents"] == 2 * 250
    assert listed["FIFTY"]["uses_left"] == 2 == 5 - shop.promo_uses(conn, fifty)
    code_page = text(admin.get(f"/admin/promos/{fifty}"))
    assert "Paid orders 2 €5.00 taken off" in code_page and "Reserved 1" in code_page
    assert "Left 2 of 5" in code_page

    user(conn, 34, balance=10000)
    shop.buy_with_balance(conn, 34, [(*gift, 1)], promo_id=fifty)
    shop.buy_with_balance(conn, 32, [(*gift, 1)], promo_id=fifty)
    row = row_of(admin.get("/admin/promos").text, fifty)
    assert "4 paid 1 reserved 0 left" in row and "used up" in row


def test_the_order_page_the_list_and_the_csv_show_the_discount_and_each_items_share(admin):
    conn = admin.shop.conn
    ids = admin.shop.ids
    gift, coffee = ids[("Gift card", "Mitte")], ids[("Coffee beans", "Innere Stadt")]
    add_code(admin, code="FIVE", kind="fixed", value="5.50")
    five = shop.find_promo_code(conn, "FIVE")["id"]
    user(conn, 41, balance=20000)
    order = shop.buy_with_balance(conn, 41, [(*gift, 2), (*coffee, 1)], promo_id=five)
    plain = shop.buy_with_balance(conn, 41, [(*coffee, 1)])
    items = conn.execute(
        "SELECT price_cents, discount_cents FROM order_items WHERE order_id = ? ORDER BY id",
        (order,),
    ).fetchall()
    shares = [i["discount_cents"] for i in items]
    assert sum(shares) == 550 and all(shares)

    page = admin.get(f"/admin/orders/{order}")
    words = text(page)
    assert "List price €62.90 − discount €5.50 (code FIVE ) = €57.40 paid" in words
    assert f'href="/admin/promos/{five}"' in page.text
    for item in items:
        paid = item["price_cents"] - item["discount_cents"]
        cells = f"−{shop.fmt_eur(item['discount_cents'])} {shop.fmt_eur(paid)}"
        assert cells in words, cells
    assert "Refund €57.40" in words  # a refund gives back what was paid
    plain_page = admin.get(f"/admin/orders/{plain}")
    assert "List price" not in plain_page.text and "Discount</th>" not in plain_page.text

    listed = admin.get("/admin/orders").text
    card = re.search(rf"#{order}<.*?</tr>", listed, re.S).group(0)
    assert "🏷 FIVE −€5.50" in html.unescape(card)
    assert "🏷" not in re.search(rf"#{plain}<.*?</tr>", listed, re.S).group(0)

    rows = list(csv.DictReader(io.StringIO(admin.get("/admin/export/orders.csv").text)))
    by_id = {int(r["order"]): r for r in rows}
    assert (by_id[order]["total_eur"], by_id[order]["promo_code"]) == ("57.40", "FIVE")
    assert by_id[order]["discount_eur"] == "5.50"
    assert (by_id[plain]["promo_code"], by_id[plain]["discount_eur"]) == ("", "0.00")
    assert list(rows[0])[-2:] == ["promo_code", "discount_eur"]  # new columns at the end


def test_a_used_code_may_change_anything_but_its_text(admin):
    conn = admin.shop.conn
    gift = admin.shop.ids[("Gift card", "Mitte")]
    add_code(admin, code="USED", value="10")
    used = shop.find_promo_code(conn, "USED")["id"]
    user(conn, 51, balance=10000)
    order = shop.buy_with_balance(conn, 51, [(*gift, 1)], promo_id=used)
    form = {**BLANK, "code": "used", "kind": "fixed", "value": "3", "ends": "2027-01-31"}
    r = admin.post(f"/admin/promos/{used}", form)
    assert r.status_code == 303 and admin.flash(f"/admin/promos/{used}") == "Code used saved."
    promo = shop.get_promo_code(conn, used)
    assert (promo["code"], promo["kind"], promo["value"]) == ("used", "fixed", 300)
    assert promo["ends_at"] == "2027-02-01T00:00:00.000000Z"
    assert (
        conn.execute("SELECT discount_cents FROM orders WHERE id = ?", (order,)).fetchone()[0]
        == 250
    )

    before = codes(conn)
    r = admin.post(f"/admin/promos/{used}", {**form, "code": "RENAMED"})
    assert r.status_code == 400 and "has been used" in html.unescape(r.text)
    assert re.search('name="code"[^>]* value="RENAMED"', r.text)  # as typed, with the reason
    r = admin.post(f"/admin/promos/{used}", {**form, "value": "0"})
    assert r.status_code == 400 and "The amount off must be at least 0.01 EUR" in r.text
    assert codes(conn) == before
    assert admin.post(f"/admin/promos/{used}", form).status_code == 303
    assert admin.flash(f"/admin/promos/{used}") == "Nothing changed."

    add_code(admin, code="FRESH", value="10")
    fresh = shop.find_promo_code(conn, "FRESH")["id"]
    assert admin.post(f"/admin/promos/{fresh}", {**BLANK, "code": "NEWNAME", "value": "10"}).ok
    assert shop.get_promo_code(conn, fresh)["code"] == "NEWNAME"
    r = admin.post(f"/admin/promos/{fresh}", {**BLANK, "code": "USED", "value": "10"})
    assert r.status_code == 400 and "There is already a code used" in r.text
    changes = [a for a in audit_actions(conn) if a == "promo code changed"]
    assert len(changes) == 2
    assert admin.get("/admin/promos/99999").status_code == 404


# The command line


def promo_cli(admin, *args):
    """`python shop.py promo ...` on the admin's shop, as a script runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), "promo", *args],
        cwd=ROOT,
        env={"SHOP_DB": admin.shop.config.shop_db, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_line_adds_lists_edits_pauses_and_resumes_codes(admin):
    conn = admin.shop.conn
    r = promo_cli(
        admin,
        "add",
        "XMAS",
        "--percent",
        "15",
        "--min",
        "20,00",
        "--starts",
        "2026-12-01",
        "--ends",
        "2026-12-31",
        "--uses",
        "50",
        "--per-shopper",
        "1",
        "--products",
        "gift card, 2",
        "--cities",
        "Berlin",
        "--note",
        "for the newsletter",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added: XMAS\tactive\t0 paid, 0 reserved, 50 left\t15% off")
    xmas = shop.find_promo_code(conn, "xmas")
    assert (xmas["value"], xmas["min_total_cents"], xmas["max_uses_per_user"]) == (15, 2000, 1)
    assert (json.loads(xmas["product_ids"]), json.loads(xmas["city_ids"])) == ([1, 2], [1])
    assert (xmas["starts_at"], xmas["ends_at"]) == (
        "2026-12-01T00:00:00.000000Z",
        "2027-01-01T00:00:00.000000Z",
    )
    assert promo_cli(admin, "add", "TENNER", "--amount", "10").returncode == 0
    assert shop.find_promo_code(conn, "TENNER")["value"] == 1000

    r = promo_cli(admin, "list")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    assert r.stdout.splitlines()[1].split("\t")[:3] == [
        "XMAS",
        "active",
        "0 paid, 0 reserved, 50 left",
    ]
    assert "2026-12-01 to end of 2026-12-31 UTC; Gift card, Coffee beans; Berlin" in r.stdout

    r = promo_cli(admin, "edit", "xmas", "--amount", "4.50", "--ends", "", "--uses", "")
    assert r.returncode == 0, r.stderr
    xmas = shop.find_promo_code(conn, "XMAS")
    assert (xmas["kind"], xmas["value"], xmas["ends_at"], xmas["max_uses"]) == (
        "fixed",
        450,
        None,
        None,
    )
    assert xmas["min_total_cents"] == 2000  # what was not given stays
    assert promo_cli(admin, "pause", "XMAS").stdout == "XMAS is paused\n"
    assert shop.find_promo_code(conn, "XMAS")["is_active"] == 0
    assert "XMAS\tpaused" in promo_cli(admin, "list").stdout
    assert promo_cli(admin, "resume", "xmas").stdout == "XMAS is active\n"
    assert shop.find_promo_code(conn, "XMAS")["is_active"] == 1
    remote = conn.execute(
        "SELECT DISTINCT remote_addr FROM audit_log WHERE action LIKE 'promo code %'"
    ).fetchall()
    assert [r[0] for r in remote] == ["command line"]
    assert audit_actions(conn)[-5:] == [
        "promo code added",
        "promo code added",
        "promo code changed",
        "promo code paused",
        "promo code resumed",
    ]


@pytest.mark.parametrize(
    "args, words",
    [
        (["add", "x!", "--percent", "10"], "A code is 3 to 32 letters"),
        (["add", "Xmas", "--percent", "10"], "There is already a code XMAS"),
        (["add", "NEW", "--percent", "100"], "The percentage must be a whole number from 1 to 99"),
        (["add", "NEW", "--amount", "5.5.5"], "The amount off must be an amount in EUR"),
        (["add", "NEW", "--amount=-5"], "The amount off must be positive"),
        (
            ["add", "NEW", "--percent", "5", "--starts", "2027-01-02", "--ends", "2027-01-01"],
            "must come after the start",
        ),
        (["add", "NEW", "--percent", "5", "--products", "Teapot"], "There is no product 'Teapot'"),
        (["add", "NEW", "--percent", "5", "--cities", "Paris"], "There is no city 'Paris'"),
        (["add", "NEW", "--percent", "5", "--per-shopper", "0"], "The uses per shopper must be"),
        (["edit", "NOPE", "--percent", "5"], "There is no discount code 'NOPE'"),
        (["edit", "XMAS"], "Say what to change"),
        (["edit", "XMAS", "--ends", "someday"], "The end must be a day like 2026-12-01"),
        (["edit", "XMAS", "--ends", "9999-12-31"], "between the years 2000 and 9998"),
        (["pause", "NOPE"], "There is no discount code 'NOPE'"),
        (["add", "NEW"], "one of the arguments --percent --amount is required"),
        (["add", "NEW", "--percent", "5", "--amount", "5"], "not allowed with argument"),
    ],
)
def test_the_command_line_refuses_bad_input_and_changes_nothing(admin, args, words):
    conn = admin.shop.conn
    assert promo_cli(admin, "add", "XMAS", "--percent", "10").returncode == 0
    before, audited = codes(conn), audit_actions(conn)
    r = promo_cli(admin, *args)
    assert r.returncode != 0 and r.stdout == ""
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert codes(conn) == before and audit_actions(conn) == audited
