"""The owner's side of Telegram Stars (issue 12): a product's kind, ways to pay and Stars price in
catalog files and the product form; Telegram's rule and its one action; the Stars settings; refunds
in Stars from an order's page (against the Bot API stand-in); revenue per way of paying; orders and
payments by way of paying, with their charge ids and in the CSV exports."""

import csv
import html
import io
import re

import pytest

import shop
from conftest import ADMIN_PASSWORD as PASSWORD
from conftest import TOKEN, Shopper, seed, user, write_catalog
from harness import AdminClient


@pytest.fixture
def admin(make_shop):
    """The owner logged in to a sandbox shop (Telegram Stars played by the shop itself)."""
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    s.conn = shop.connect(s.config.shop_db)
    a = AdminClient(s.url, PASSWORD, shop=s)
    assert a.login().status_code == 303
    yield a
    s.conn.close()


def audit_rows(conn, action):
    return [r[0] for r in conn.execute("SELECT details FROM audit_log WHERE action = ?", (action,))]


def product_row(conn, name):
    return conn.execute(
        "SELECT kind, pay_methods, stars_price FROM products WHERE name = ?", (name,)
    ).fetchone()[:]


def text_of(fragment):
    """Markup as the owner reads it: tags gone (links, bold and code within the text, the rest
    apart from it), entities read, white space folded."""
    inline = re.sub(r"</?(a|b|code)\b[^>]*>", "", fragment)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def section(page, marker):
    """The part of a page from `marker` to the end of its <section>."""
    start = page.index(marker)
    return page[start : page.index("</section>", start)]


# 1. Catalog files ################################################################################


def catalog(*products):
    return {"cities": [{"name": "Berlin", "districts": ["Mitte"]}], "products": list(products)}


def test_a_catalog_file_says_kind_ways_to_pay_and_stars_price_and_a_reimport_updates_them(
    tmp_path, conn
):
    media = tmp_path / "media"
    first = catalog(
        {"name": "Gift card", "price": "25.00", "kind": "digital", "methods": ["stars"]},
        {
            "name": "Coffee beans",
            "price": "12.90",
            "kind": "physical",
            "methods": ["balance", "crypto"],
            "stars_price": 700,
        },
        {"name": "Poster", "price": "19.00"},  # a file from before kinds: nothing said
        {"name": "E-book", "price": "7.50", "methods": ["crypto", "stars", "balance"]},
    )
    counts = shop.import_catalog(conn, first, tmp_path, media)
    assert counts["products_added"] == 4
    assert product_row(conn, "Gift card") == ("digital", "stars", None)
    # Stored in checkout's order, whatever the file's; every way is "every way" (NULL).
    assert product_row(conn, "Coffee beans") == ("physical", "crypto,balance", 700)
    assert product_row(conn, "Poster") == (None, None, None)
    assert product_row(conn, "E-book") == (None, None, None)

    again = shop.import_catalog(conn, first, tmp_path, media)
    assert again["products_updated"] == 0  # the same file changes nothing

    second = catalog(
        {"name": "Gift card", "price": "25.00", "methods": ["stars", "crypto"], "stars_price": 999},
        {"name": "Coffee beans", "price": "12.90", "kind": None, "stars_price": None},
        {"name": "Poster", "price": "19.00", "kind": "physical"},
        {"name": "E-book", "price": "7.50"},
    )
    counts = shop.import_catalog(
        conn, shop.read_catalog_file(write_catalog(tmp_path, second)), tmp_path, media
    )
    assert counts["products_updated"] == 3  # the e-book's file says nothing new
    # A key the file leaves out keeps what the shop has; null says "not said" / "from the rate".
    assert product_row(conn, "Gift card") == ("digital", "stars,crypto", 999)
    assert product_row(conn, "Coffee beans") == (None, "crypto,balance", None)
    assert product_row(conn, "Poster") == ("physical", None, None)
    assert product_row(conn, "E-book") == (None, None, None)


BAD_PAYMENT_FIELDS = catalog(
    {"name": "Gift card", "price": "25.00", "kind": "Digital", "methods": ["stars", "paypal"]},
    {"name": "Voucher", "price": "ten", "stars_price": 12.5, "methods": []},
    {"name": "Beans", "price": "12.90", "methods": "crypto", "stars_price": 0, "kind": 5},
    {"name": "Poster", "price": "19.00", "methods": ["crypto", "crypto"], "stars_price": "250"},
    {"name": "Lamp", "price": "49.00", "stars_price": 100001, "methods": [True]},
)
BAD_PAYMENT_PROBLEMS = [
    'products[0].kind: must be "digital" or "physical", got "Digital" (product \'Gift card\')',
    'products[0].methods[1]: "paypal" is not a way to pay; the ways are "stars", "crypto" and '
    "\"balance\" (product 'Gift card')",
    "products[1].price: 'ten' is not an amount in EUR; write it like \"25.00\" (product 'Voucher')",
    "products[1].stars_price: must be a whole number of Stars from 1 to 100000, like 250 (or null: "
    "the euro price at the shop's rate); got 12.5 (product 'Voucher')",
    'products[1].methods: must list at least one way to pay ("stars", "crypto" or "balance") '
    "(product 'Voucher')",
    'products[2].methods: must be a list of ways to pay, like ["stars"]; got "crypto" '
    "(product 'Beans')",
    "products[2].stars_price: must be a whole number of Stars from 1 to 100000, like 250 (or null: "
    "the euro price at the shop's rate); got 0 (product 'Beans')",
    'products[2].kind: must be "digital" or "physical", got 5 (product \'Beans\')',
    "products[3].methods[1]: \"crypto\" is listed twice (product 'Poster')",
    "products[3].stars_price: must be a whole number of Stars from 1 to 100000, like 250 (or null: "
    "the euro price at the shop's rate); got \"250\" (product 'Poster')",
    "products[4].stars_price: must be a whole number of Stars from 1 to 100000, like 250 (or null: "
    "the euro price at the shop's rate); got 100001 (product 'Lamp')",
    'products[4].methods[0]: true is not a way to pay; the ways are "stars", "crypto" and '
    "\"balance\" (product 'Lamp')",
]


def test_wrong_kinds_ways_and_stars_prices_come_with_every_other_problem_in_file_order(
    tmp_path, conn
):
    path = write_catalog(tmp_path, BAD_PAYMENT_FIELDS)
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, shop.read_catalog_file(path), tmp_path, tmp_path / "media")
    assert e.value.errors == BAD_PAYMENT_PROBLEMS
    assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM cities").fetchone()[0] == 0


def test_an_unknown_product_key_names_the_new_ones(tmp_path, conn):
    data = catalog({"name": "Gift card", "price": "25.00", "method": ["stars"]})
    with pytest.raises(shop.CatalogError) as e:
        shop.import_catalog(conn, data, tmp_path, tmp_path / "media")
    assert e.value.errors == [
        "products[0]: unknown keys ['method'] (expected name, description, price, photo, stock, "
        "kind, methods, stars_price) (product 'Gift card')"
    ]


def test_the_admin_import_previews_and_imports_the_new_fields(admin):
    import json

    upload = json.dumps(BAD_PAYMENT_FIELDS).encode()
    r = admin.post("/admin/import", files={"file": ("c.json", upload, "application/json")})
    shown = re.search(r'<ul class="errors">(.*?)</ul>', r.text, re.S).group(1)
    assert [html.unescape(e) for e in re.findall(r"<li>(.*?)</li>", shown)] == BAD_PAYMENT_PROBLEMS
    good = catalog(
        {
            "name": "Gift card",
            "price": "25.00",
            "kind": "digital",
            "methods": ["stars"],
            "stars_price": 1200,
        }
    )
    r = admin.post(
        "/admin/import", files={"file": ("c.json", json.dumps(good).encode(), "application/json")}
    )
    token = re.search(r'name="token" value="([^"]+)"', r.text).group(1)
    assert admin.post("/admin/import/confirm", {"token": token}).status_code == 303
    assert product_row(admin.shop.conn, "Gift card") == ("digital", "stars", 1200)


# 2. The product form #############################################################################


def place(admin):
    conn = admin.shop.conn
    admin.post("/admin/cities", {"name": "Berlin"})
    admin.post("/admin/districts", {"city_id": 1, "name": "Mitte"})
    return conn


def test_a_new_product_says_its_kind_ways_and_stars_price(admin):
    conn = place(admin)
    form = admin.get("/admin/products/new").text
    assert 'name="kind" value="digital"' in form and 'value="physical"' in form
    assert "Not said yet" not in form  # a new product says what it is
    assert 'name="methods_listed" value="1"' in form
    assert form.count('name="methods"') == 3 and form.count("checked") >= 3  # every way to start
    assert "Blank: its euro price at 50 Stars per euro, rounded up to whole Stars." in form
    r = admin.post(
        "/admin/products",
        {
            "name": "Gift card",
            "price": "25.00",
            "active": "1",
            "kind": "digital",
            "methods_listed": "1",
            "methods": ["stars"],
            "stars_price": "1200",
        },
    )
    assert r.status_code == 303
    assert product_row(conn, "Gift card") == ("digital", "stars", 1200)
    assert audit_rows(conn, "product added") == [
        "#1 Gift card €25.00; kind digital, paid by stars, Stars price 1200"
    ]
    r = admin.post(
        "/admin/products",
        {
            "name": "Beans",
            "price": "12.90",
            "active": "1",
            "kind": "physical",
            "methods_listed": "1",
            "methods": ["balance", "crypto", "stars"],
            "stars_price": " ",
        },
    )
    assert product_row(conn, "Beans") == ("physical", None, None)  # every way, from the rate
    page = admin.get("/admin/products/2").text
    assert "Blank: from the rate: 645 ⭐ (€12.90 at 50 Stars per euro, rounded up)." in page
    facts = text_of(re.search(r'<p class="facts">(.*?)</p>', page, re.S).group(1))
    assert facts == "Physical · €12.90 = 645 ⭐ (at the rate) · paid by ⭐ Stars · crypto · balance"


def test_editing_a_product_changes_its_kind_ways_and_stars_price_and_audits_it(admin):
    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    product = ids[("Gift card", "Mitte")][0]
    page = admin.get(f"/admin/products/{product}").text
    # A product from before kinds: "not said yet", chosen; every way ticked; no Stars price.
    assert re.search(r'name="kind" value="" checked> Not said yet', page)
    assert "Kind not said yet · €25.00 = 1,250 ⭐ (at the rate)" in text_of(page)
    base = {"name": "Gift card", "price": "25.00", "active": "1"}
    r = admin.post(
        f"/admin/products/{product}",
        {
            **base,
            "kind": "digital",
            "methods_listed": "1",
            "methods": ["stars", "crypto"],
            "stars_price": "1100",
        },
    )
    assert r.status_code == 303
    assert product_row(conn, "Gift card") == ("digital", "stars,crypto", 1100)
    assert audit_rows(conn, "product changed")[-1] == (
        "#1 kind: None -> 'digital'; pay_methods: None -> 'stars,crypto'; stars_price: None -> 1100"
    )
    # An older page or a script that does not send the new fields keeps them.
    admin.post(f"/admin/products/{product}", {**base, "price": "26.00"})
    assert product_row(conn, "Gift card") == ("digital", "stars,crypto", 1100)
    assert audit_rows(conn, "product changed")[-1] == "#1 price_cents: 2500 -> 2600"
    # A blank Stars price goes back to the rate.
    admin.post(f"/admin/products/{product}", {**base, "stars_price": ""})
    assert product_row(conn, "Gift card") == ("digital", "stars,crypto", None)
    page = admin.get(f"/admin/products/{product}").text
    assert "Not said yet" not in page  # once said, a kind stays said
    assert re.search(r'name="kind" value="digital" checked', page)
    assert re.search(r'name="methods" value="stars" checked', page)
    assert not re.search(r'name="methods" value="balance" checked', page)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"methods_listed": "1"}, "Choose at least one way the product may be paid."),
        ({"methods_listed": "1", "methods": ["paypal"]}, "Unknown way to pay 'paypal'."),
        ({"stars_price": "12.5"}, "The Stars price must be a whole number of Stars from 1 to"),
        ({"stars_price": "0"}, "The Stars price must be a whole number of Stars from 1 to"),
        ({"stars_price": "100001"}, "The Stars price must be a whole number of Stars from 1 to"),
        ({"kind": "edible"}, "Choose what the product is: digital or physical."),
    ],
)
def test_a_refused_product_form_changes_nothing_and_keeps_what_was_typed(admin, change, words):
    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    product = ids[("Gift card", "Mitte")][0]
    before = conn.execute("SELECT * FROM products").fetchall()
    typed = {"name": "Renamed", "price": "30.00", "active": "1", "kind": "physical"}
    r = admin.post(f"/admin/products/{product}", {**typed, **change})
    assert r.status_code == 400 and words in html.unescape(r.text)
    assert 'value="Renamed"' in r.text
    if "stars_price" in change:
        assert f'name="stars_price" inputmode="numeric" value="{change["stars_price"]}"' in r.text
    if change.get("kind") != "edible":
        assert re.search(r'name="kind" value="physical" checked', r.text)
    assert [tuple(p) for p in conn.execute("SELECT * FROM products")] == [tuple(p) for p in before]
    assert audit_rows(conn, "product changed") == []


def test_a_digital_product_without_stars_is_saved_with_a_warning_while_the_rule_is_on(admin):
    conn = admin.shop.conn
    assert shop.telegram_rule(conn)  # a new shop follows Telegram's rule
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    product = ids[("Gift card", "Mitte")][0]
    form = {
        "name": "Gift card",
        "price": "25.00",
        "active": "1",
        "kind": "digital",
        "methods_listed": "1",
        "methods": ["crypto"],
    }
    admin.post(f"/admin/products/{product}", form)
    said = admin.flash(f"/admin/products/{product}")
    assert said.startswith("⚠️ Product saved, but nobody can buy it now")
    assert product_row(conn, "Gift card") == ("digital", "crypto", None)
    admin.post(f"/admin/products/{product}", {**form, "methods": ["crypto", "stars"]})
    assert admin.flash(f"/admin/products/{product}") == "Product saved."


def test_the_catalog_shows_each_products_kind_ways_and_stars_price(admin):
    conn = admin.shop.conn
    seed(
        conn,
        [
            ("Berlin", "Mitte", "Gift card", 2500, 2),
            ("Berlin", "Mitte", "Beans", 1290, 1),
            ("Berlin", "Mitte", "Poster", 1900, 1),
        ],
    )
    with shop.transaction(conn):
        conn.execute("UPDATE products SET kind = 'digital', pay_methods = 'crypto' WHERE id = 1")
        conn.execute(
            "UPDATE products SET kind = 'physical', pay_methods = 'stars,balance', "
            "stars_price = 700 WHERE id = 2"
        )
    table = section(admin.get("/admin/catalog").text, '<h2 id="products-title">Products</h2>')
    rows = {  # each row's cells after the name (and its photo), up to its Edit button
        text_of(re.search(r'<a href="/admin/products/\d+">(.*?)</a>', row).group(1)): text_of(
            row.split("</td>", 1)[1].split('<td class="actions">')[0]
        )
        for row in re.findall(r"<tr\b[^>]*>(.*?)</tr>", table, re.S)[1:]
    }
    assert rows == {
        "Gift card": "€25.00 1,250 ⭐ at the rate digital crypto (Telegram's rule leaves no way: "
        "it cannot be bought) 2 Berlin / Mitte 2 on sale",
        "Beans": "€12.90 700 ⭐ its own price physical ⭐ Stars · balance 1 Berlin / Mitte 1 "
        "on sale",
        "Poster": "€19.00 950 ⭐ at the rate not said yet ⭐ Stars · crypto · balance 1 "
        "Berlin / Mitte 1 on sale",
    }


# 3. Telegram's rule ##############################################################################


def rule_panel(page):
    return text_of(section(page, '<section class="card rule" id="telegram-rule">'))


def test_the_rule_panel_lists_what_breaks_it_and_one_action_makes_them_stars_only(admin):
    conn = admin.shop.conn
    seed(
        conn,
        [
            ("Berlin", "Mitte", "Gift card", 2500, 1),
            ("Berlin", "Mitte", "E-book", 750, 1),
            ("Berlin", "Mitte", "Licence key", 4000, 1),
            ("Berlin", "Mitte", "Beans", 1290, 1),
            ("Berlin", "Mitte", "Poster", 1900, 1),
        ],
    )
    with shop.transaction(conn):
        conn.execute("UPDATE products SET kind = 'digital' WHERE name = 'Gift card'")
        conn.execute(
            "UPDATE products SET kind = 'digital', pay_methods = 'crypto' WHERE name = 'E-book'"
        )
        conn.execute(
            "UPDATE products SET kind = 'digital', pay_methods = 'stars' WHERE name = 'Licence key'"
        )
        conn.execute(
            "UPDATE products SET kind = 'physical', pay_methods = 'crypto' WHERE name = 'Beans'"
        )
    page = admin.get("/admin/catalog").text
    panel = rule_panel(page)
    assert (
        "Telegram requires digital goods (codes, keys, e-books, download links) sold in a bot or "
        "Mini App to be paid in Telegram Stars, and may hide bots that sell them any other way "
        "from mobile users (Telegram's rules)." in panel
    )
    assert 'href="https://core.telegram.org/bots/payments-stars"' in page
    assert "2 digital products may be paid other than in Stars" in panel
    assert (
        "E-book crypto It does not allow Stars, so under the rule it cannot be bought at all."
        in panel
    )
    assert "Gift card ⭐ Stars · crypto · balance Offered in Stars only inside Telegram" in panel
    assert "Licence key" not in panel and "Beans" not in panel  # Stars only; physical
    assert "1 product does not say whether it is digital or physical" in panel
    assert "Poster ⭐ Stars · crypto · balance" in panel
    # The dashboard and Settings point to it.
    said = "2 digital products may be paid other than in Stars; 1 product does not say whether it "
    assert said in text_of(admin.get("/admin").text)
    assert said in text_of(admin.get("/admin/settings").text)

    assert admin.post("/admin/catalog/stars-only", csrf=False).status_code == 403
    assert product_row(conn, "Gift card") == ("digital", None, None)
    r = admin.post("/admin/catalog/stars-only")
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/catalog#telegram-rule")
    assert admin.flash("/admin/catalog") == (
        "2 digital products are now paid in Telegram Stars only, as Telegram's rule asks."
    )
    assert [product_row(conn, name)[1] for name in ("Gift card", "E-book", "Licence key")] == [
        "stars"
    ] * 3
    assert product_row(conn, "Beans") == ("physical", "crypto", None)  # physical goods: untouched
    assert product_row(conn, "Poster") == (None, None, None)  # not said: the owner decides
    assert audit_rows(conn, "digital products made Stars only") == [
        "#1 Gift card (was every way), #2 E-book (was crypto)"
    ]
    panel = rule_panel(admin.get("/admin/catalog").text)
    assert "✓ Every digital product is paid in Telegram Stars only." in panel
    assert "Make them Stars only" not in panel
    admin.post("/admin/catalog/stars-only")
    assert admin.flash("/admin/catalog").startswith("Nothing to change")
    assert len(audit_rows(conn, "digital products made Stars only")) == 1


def test_with_the_rule_off_the_panel_says_those_products_are_sold_every_way(admin):
    conn = admin.shop.conn
    seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    with shop.transaction(conn):
        conn.execute("UPDATE products SET kind = 'digital'")
    shop.save_settings(conn, {"telegram_rule": "0"})
    panel = rule_panel(admin.get("/admin/catalog").text)
    assert "This shop does not follow the rule now (Settings)" in panel
    assert (
        "Gift card ⭐ Stars · crypto · balance Offered in crypto or from the balance too." in panel
    )
    product = admin.get("/admin/products/1").text
    assert "This shop follows the rule" not in product


# 4. Settings #####################################################################################

OLD_FORM = {  # the Settings form before Stars: it leaves the Stars settings as they are
    "shop_name": "Paper & Ink",
    "welcome_text": "Hi",
    "help_text": "Help",
    "support_contact": "@help",
    "min_deposit": "5.00",
    "reservation_minutes": "30",
}


def test_the_stars_settings_are_saved_checked_and_kept_by_an_older_form(admin):
    conn = admin.shop.conn
    page = admin.get("/admin/settings").text
    assert '<option value="on" selected>' in page and '<option value="off" >' in page
    assert 'name="stars_per_euro" id="stars_per_euro" value="50"' in page
    assert (
        "50 is about what shoppers pay for Stars in Telegram; you receive less when you withdraw "
        "them, so raise it to keep your margin." in page
    )
    # Empty texts: the defaults, shown as the placeholders.
    placeholders = {
        name: html.unescape(text)
        for name, text in re.findall(r'<textarea name="(\w+)"[^>]*placeholder="([^"]*)"></', page)
    }
    assert placeholders == {
        "welcome_text": shop.DEFAULT_SETTINGS["welcome_text"],
        "help_text": shop.DEFAULT_SETTINGS["help_text"],
        "terms_text": shop.default_terms_text(conn),
        "paysupport_text": shop.default_paysupport_text(conn),
    }
    form = {
        **OLD_FORM,
        "telegram_rule": "off",
        "stars_per_euro": "62.5",
        "terms_text": "No returns of codes once delivered.",
        "paysupport_text": "Write to @help with your order number.",
    }
    assert admin.post("/admin/settings", form).status_code == 303
    assert admin.flash("/admin/settings") == (
        "Settings saved: shop name, welcome text, help text, support contact, telegram rule, "
        "stars per euro, terms text, paysupport text."
    )
    assert not shop.telegram_rule(conn) and shop.stars_per_euro(conn) == 62.5
    assert shop.get_setting(conn, "terms_text") == "No returns of codes once delivered."
    page = admin.get("/admin/settings").text
    assert '<option value="off" selected>' in page and 'value="62.5"' in page
    assert ">No returns of codes once delivered.</textarea>" in page
    # The rate prices the products without a Stars price of their own.
    seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    assert "1,563 ⭐" in admin.get("/admin/catalog").text  # 25 x 62.5 = 1562.5, rounded up

    for bad, words in (
        ({"stars_per_euro": "0"}, "The Stars rate must be a number of Stars per euro from 1"),
        ({"stars_per_euro": "fifty"}, "The Stars rate must be a number of Stars per euro from 1"),
        ({"telegram_rule": "maybe"}, "Telegram's rule is on or off"),
        ({"terms_text": "x" * 3001}, "The terms"),
    ):
        r = admin.post("/admin/settings", {**form, "telegram_rule": "on", **bad})
        assert r.status_code == 400 and words in html.unescape(r.text), bad
        assert "Nothing was saved" in r.text
    assert not shop.telegram_rule(conn) and shop.stars_per_euro(conn) == 62.5

    admin.post("/admin/settings", OLD_FORM)  # an older page still open
    assert admin.flash("/admin/settings") == "Nothing changed."
    assert shop.get_setting(conn, "paysupport_text") == "Write to @help with your order number."
    admin.post("/admin/settings", {**form, "terms_text": "", "telegram_rule": "on"})
    assert shop.get_setting(conn, "terms_text") == "" and shop.telegram_rule(conn)
    assert audit_rows(conn, "settings changed")[-1] == "telegram_rule, terms_text"


# 5. Refunds in Stars, against the Bot API stand-in ###############################################


@pytest.fixture
def live(make_shop, fake_tg):
    """A live shop (not the sandbox) with its bot on the stand-in, so Telegram Stars are real
    Stars there: a digital gift card, a shopper who paid for one in Stars, and the owner logged in
    to the admin."""
    s = make_shop(
        env={
            "ADMIN_PASSWORD": PASSWORD,
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": fake_tg.base_url,
            "NOWPAYMENTS_API_KEY": "k",
            "NOWPAYMENTS_IPN_SECRET": "s",
            "NOWPAYMENTS_API_URL": "http://127.0.0.1:9",
        }
    )
    assert not s.config.sandbox and s.payments.stars.name == "stars"
    s.conn = shop.connect(s.config.shop_db)
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    gift = seed(s.conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])[("Gift card", "Mitte")]
    with shop.transaction(s.conn):
        s.conn.execute("UPDATE products SET kind = 'digital'")
    Shopper(fake_tg, 101).send("/start", "Welcome")
    s.order = pay_in_stars(s, fake_tg, 101, gift)
    s.admin = AdminClient(s.url, PASSWORD, shop=s)
    assert s.admin.login().status_code == 303
    yield s
    s.conn.close()


def pay_in_stars(s, fake, user_id, lines_of_one):
    """The shopper pays an order of one unit in Telegram Stars through the stand-in; returns the
    paid order's id."""
    nonce = shop.create_checkout(s.conn, user_id, "order", 2500, [(*lines_of_one, 1)])
    payment = s.payments.open_stars_invoice(user_id, nonce, chat_id=user_id)
    invoice = fake.wait_for(
        lambda: next((m for m in fake.messages(user_id)[::-1] if m.kind == "invoice"), None),
        what="the invoice",
    )
    assert fake.user_pays(user_id, invoice).status == "paid"
    order_id = payment["order_id"]
    fake.wait_for(
        lambda: (
            s.conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
            == "paid"
        ),
        what="the order paid",
    )
    return order_id


def order_status(s, order_id):
    return s.conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()[0]


def test_a_refund_in_stars_calls_telegram_once_however_often_it_is_clicked(live, fake_tg):
    admin, order = live.admin, live.order
    payment = live.conn.execute("SELECT * FROM payments WHERE order_id = ?", (order,)).fetchone()
    page = admin.get(f"/admin/orders/{order}").text
    stars_card = text_of(section(page, '<section class="card stars-order" id="stars">'))
    assert f"Paid 1,250 ⭐ (€25.00 at the prices) Charge id {payment['charge_id']}" in stars_card
    assert "Total €25.00 = 1,250 ⭐, paid with ⭐ Telegram Stars" in text_of(page)
    assert f'action="/admin/orders/{order}/refund-stars"' in page
    assert "Refund to balance" not in page  # Stars go back as Stars

    admin.post(f"/admin/orders/{order}/refund-stars", {"reason": " "})
    assert "reason is empty" in admin.flash(f"/admin/orders/{order}")
    assert fake_tg.calls_to("refundStarPayment") == []

    admin.post(f"/admin/orders/{order}/refund-stars", {"reason": "the code did not work"})
    assert admin.flash(f"/admin/orders/{order}") == (
        "Refunded 1,250 ⭐ to the shopper in Telegram; the order is refunded."
    )
    for _ in range(2):  # a second click, and a third
        r = admin.post(f"/admin/orders/{order}/refund-stars", {"reason": "again"})
        assert r.status_code == 303
        assert admin.flash(f"/admin/orders/{order}").startswith("⚠️ Order #1 is refunded")
    calls = fake_tg.calls_to("refundStarPayment")
    assert len(calls) == 1 and str(calls[0]["telegram_payment_charge_id"]) == payment["charge_id"]
    assert len(fake_tg.refunds) == 1
    assert order_status(live, order) == "refunded"
    assert audit_rows(live.conn, "stars refund") == [
        f"order #1: 1250 Stars, charge {payment['charge_id']}: the code did not work"
    ]
    page = admin.get(f"/admin/orders/{order}").text
    assert 'class="status refunded">refunded</span></h1>' in page
    assert "refund-stars" not in page and "Refunded in Stars to the shopper." in text_of(page)
    refunds = text_of(section(page, "<h2>Refunds in Stars</h2>"))
    assert f"{payment['charge_id']} 1,250 ⭐ refunded 0 the owner" in refunds
    assert "the code did not work" in refunds
    fake_tg.wait_message(101, "1,250 ⭐ were refunded to you for order #1: the code did not work.")


def test_a_refund_telegram_refuses_is_queued_retried_and_still_made_once(live, fake_tg):
    admin, order = live.admin, live.order
    fake_tg.fail_next("refundStarPayment", 502)
    admin.post(f"/admin/orders/{order}/refund-stars", {"reason": "wrong product"})
    said = admin.flash(f"/admin/orders/{order}")
    assert said.startswith("⚠️ Telegram has not made the refund of 1,250 ⭐ yet (Telegram refused")
    assert "It stays queued: the shop tries again by itself" in said
    assert order_status(live, order) == "paid"  # until Telegram confirms
    page = admin.get(f"/admin/orders/{order}").text
    assert "A refund in Stars is under way" in page and "refund-stars" not in page
    refunds = text_of(section(page, "<h2>Refunds in Stars</h2>"))
    assert "pending 1 the owner" in refunds and "Bad Gateway" in refunds
    admin.post(f"/admin/orders/{order}/refund-stars", {"reason": "again"})
    assert admin.flash(f"/admin/orders/{order}") == (
        "⚠️ Order #1's Stars were already refunded (or are being)."
    )
    assert len(fake_tg.calls_to("refundStarPayment")) == 1

    with shop.transaction(live.conn):  # the retry is due (30 s later)
        live.conn.execute("UPDATE star_refunds SET next_attempt_at = ?", (shop.now_iso(),))
    live.payments.make_refunds()
    assert len(fake_tg.calls_to("refundStarPayment")) == 2 and len(fake_tg.refunds) == 1
    assert order_status(live, order) == "refunded"
    refunds = text_of(section(admin.get(f"/admin/orders/{order}").text, "<h2>Refunds in Stars"))
    assert "refunded 1 the owner" in refunds


def test_a_stars_order_is_never_refunded_to_the_balance(live, fake_tg):
    admin, order = live.admin, live.order
    r = admin.post(f"/admin/orders/{order}/refund", {"reason": "to the balance"})
    assert r.status_code == 303
    assert admin.flash(f"/admin/orders/{order}") == (
        "⚠️ Order #1 was paid in Telegram Stars, so it is refunded in Stars (with “Refund in "
        "Stars”), never to the balance."
    )
    assert order_status(live, order) == "paid"
    assert shop.get_user(live.conn, 101)["balance_cents"] == 0
    assert fake_tg.calls_to("refundStarPayment") == []
    assert audit_rows(live.conn, "order refunded") == []


def test_the_refund_to_balance_stays_for_balance_and_crypto_orders(admin):
    conn = admin.shop.conn
    gift = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])[("Gift card", "Mitte")]
    paid = shop.buy_with_balance(conn, user(conn, 11, balance=2500), [(*gift, 1)])
    page = admin.get(f"/admin/orders/{paid}").text
    assert "Refund to balance" in page and "refund-stars" not in page
    assert 'id="stars"' not in page
    admin.post(f"/admin/orders/{paid}/refund-stars", {"reason": "in Stars?"})
    assert admin.flash(f"/admin/orders/{paid}") == (
        f"⚠️ Order #{paid} was not paid in Telegram Stars."
    )
    admin.post(f"/admin/orders/{paid}/refund", {"reason": "damaged"})
    assert order_status(admin.shop, paid) == "refunded"


# 6. Revenue per way of paying, lists, pages and exports ##########################################


def sales(s):
    """A sandbox shop's sales of one unit each: by balance, in crypto (marked as paid), in Stars
    (the sandbox's 🧪), and a Stars order paid and refunded. Returns their order ids by way."""
    conn = s.conn
    ids = seed(
        conn, [("Berlin", "Mitte", "Gift card", 2500, 6), ("Berlin", "Mitte", "Pen", 250, 4)]
    )
    gift, pen = ids[("Gift card", "Mitte")], ids[("Pen", "Mitte")]
    with shop.transaction(conn):
        conn.execute("UPDATE products SET stars_price = 1111 WHERE name = 'Gift card'")
    user(conn, 11, balance=10000)
    balance = shop.buy_with_balance(conn, 11, [(*pen, 2)])

    def invoice(lines, total, coin=None):
        nonce = shop.create_checkout(conn, 11, "order", total, lines)
        if coin:
            return s.payments.open_order_invoice(11, nonce, coin)
        payment = s.payments.open_stars_invoice(11, nonce)
        s.payments.simulate_stars(11, payment, "full")
        return payment

    crypto = invoice([(*gift, 1)], 2500, "btc")
    s.payments.mark_paid(crypto["id"], "cash at the counter")
    stars = [invoice([(*gift, 1)], 2500), invoice([(*pen, 1)], 250), invoice([(*gift, 1)], 2500)]
    shop.request_owner_star_refund(conn, stars[2]["order_id"], "changed their mind")
    s.payments.make_refunds()
    return {
        "balance": balance,
        "crypto": crypto["order_id"],
        "stars": [p["order_id"] for p in stars],
        "crypto_payment": crypto["id"],
        "stars_payment": stars[0]["id"],
    }


def by_method(page):
    """The dashboard's revenue per way of paying: {way: [today, 7 days, 30 days]} as read."""
    part = section(page, '<section class="card by-method">')
    return {
        text_of(key): [
            text_of(cell) for cell in re.findall(r"<td data-label[^>]*>(.*?)</td>", row, re.S)
        ]
        for key, row in re.findall(r'<tr><td class="key">(.*?)</td>(.*?)</tr>', part, re.S)
    }


def test_the_dashboard_splits_revenue_by_way_of_paying_stars_in_stars_and_euros(admin):
    s = admin.shop
    sales(s)
    page = admin.get("/admin").text
    # 1111 ⭐ (its own price) for the gift card, 125 ⭐ for a €2.50 pen at 50 per euro
    today = ["€5.00 1 order"]
    assert by_method(page) == {
        "Balance": today * 3,
        "Crypto": ["€25.00 1 order"] * 3,
        "⭐ Telegram Stars": ["1,236 ⭐ = €27.50 2 orders"] * 3,
    }
    assert "€57.50" in page and "4 paid orders" in page  # the ways add up to the revenue


def test_the_revenue_per_way_follows_a_refund_of_an_earlier_days_order(admin):
    s, conn = admin.shop, admin.shop.conn
    done = sales(s)
    earlier = shop.now_iso(-3 * 86400)
    with shop.transaction(conn):  # two orders paid three days ago (daily_sales follows)
        for order in (done["stars"][0], done["crypto"]):
            conn.execute("UPDATE orders SET paid_at = ? WHERE id = ?", (earlier, order))
            conn.execute("UPDATE payments SET final_at = ? WHERE order_id = ?", (earlier, order))
    rows = by_method(admin.get("/admin").text)
    assert rows["⭐ Telegram Stars"] == [
        "125 ⭐ = €2.50 1 order",
        "1,236 ⭐ = €27.50 2 orders",
        "1,236 ⭐ = €27.50 2 orders",
    ]
    assert rows["Crypto"] == ["€0.00 0 orders", "€25.00 1 order", "€25.00 1 order"]
    # The admin remembers the days before today; a refund of one of their orders still counts.
    assert s.admin_state.revenue_memo
    admin.post(f"/admin/orders/{done['stars'][0]}/refund-stars", {"reason": "broken"})
    rows = by_method(admin.get("/admin").text)
    assert rows["⭐ Telegram Stars"] == ["125 ⭐ = €2.50 1 order"] * 3
    assert rows["Crypto"] == ["€0.00 0 orders", "€25.00 1 order", "€25.00 1 order"]
    assert rows["Balance"] == ["€5.00 1 order"] * 3


def test_revenue_by_method_is_the_paid_orders_counted_by_way_and_day(admin):
    """Against a plain count of the orders (which a big shop cannot afford on every dashboard)."""
    s, conn = admin.shop, admin.shop.conn
    done = sales(s)
    with shop.transaction(conn):
        for back, order in enumerate((done["balance"], done["crypto"], done["stars"][1])):
            when = shop.now_iso(-(back * 5 + 1) * 86400)
            conn.execute("UPDATE orders SET paid_at = ? WHERE id = ?", (when, order))
            conn.execute("UPDATE payments SET final_at = ? WHERE order_id = ?", (when, order))
    memo = {}
    for _ in range(2):  # from the database, then from the memo
        stats = shop.dashboard_stats(conn, memo)
        expected = {}
        for day, method, n, cents in conn.execute(
            "SELECT substr(paid_at, 1, 10), payment_method, count(*), sum(total_cents) "
            "FROM orders WHERE status = 'paid' GROUP BY 1, 2"
        ):
            expected[(day, method)] = (n, cents)
        days = [d for d, _, _ in stats["per_day"]]
        found = shop.revenue_by_method(
            conn, days, {d: (n, c) for d, n, c in stats["per_day"]}, memo
        )
        got = {
            (day, m): tuple(v[:2]) for day, ways in found.items() for m, v in ways.items() if v[0]
        }
        assert got == expected
    assert stats["revenue"]["30 days"]["methods"]["stars"]["stars"] == 1111 + 125


def test_orders_and_payments_are_filtered_by_way_of_paying_with_charge_ids(admin):
    s = admin.shop
    done = sales(s)
    orders = admin.get("/admin/orders").text
    assert '<option value="stars" >⭐ Telegram Stars</option>' in orders
    listed = re.findall(r'href="/admin/orders/(\d+)"', admin.get("/admin/orders?method=stars").text)
    assert sorted(map(int, listed)) == sorted(done["stars"])
    listed = re.findall(
        r'href="/admin/orders/(\d+)"', admin.get("/admin/orders?method=balance").text
    )
    assert listed == [str(done["balance"])]
    both = admin.get("/admin/orders?method=crypto&status=paid").text
    assert re.findall(r'href="/admin/orders/(\d+)"', both) == [str(done["crypto"])]
    assert '<option value="crypto" selected>crypto</option>' in both
    assert admin.get("/admin/orders?method=paypal").status_code == 200  # no filter

    charges = [
        r[0] for r in s.conn.execute("SELECT charge_id FROM payments WHERE charge_id IS NOT NULL")
    ]
    stars_list = admin.get("/admin/payments?method=stars").text
    assert len(charges) == 3 and all(c in stars_list for c in charges)
    assert stars_list.count('href="/admin/payments/') == 3
    assert "1,111 ⭐" in stars_list and "⭐ Telegram Stars" in stars_list
    crypto_list = admin.get("/admin/payments?method=crypto").text
    assert crypto_list.count('href="/admin/payments/') == 1 and "crypto · BTC" in crypto_list
    more = admin.get("/admin/payments?method=stars&status=refunded").text
    assert more.count('href="/admin/payments/') == 1

    page = admin.get(f"/admin/payments/{done['stars_payment']}").text
    charge = s.conn.execute(
        "SELECT charge_id FROM payments WHERE id = ?", (done["stars_payment"],)
    ).fetchone()[0]
    assert f'<code class="charge">{charge}</code>' in page
    assert "Telegram Stars (sandbox)" in page and "1,111 ⭐" in page
    assert "/recheck" not in page and "/mark-paid" not in page and "<h2>IPNs</h2>" not in page
    before = s.conn.execute("SELECT * FROM payments").fetchall()
    admin.post(f"/admin/payments/{done['stars_payment']}/recheck")
    said = admin.flash(f"/admin/payments/{done['stars_payment']}")
    assert said.startswith("⚠️ A Telegram Stars payment is not re-checked on its own")
    with shop.transaction(s.conn):  # even an unpaid one is paid only through Telegram
        s.conn.execute(
            "UPDATE payments SET status = 'waiting' WHERE id = ?", (done["stars_payment"],)
        )
    admin.post(f"/admin/payments/{done['stars_payment']}/mark-paid", {"reason": "cash"})
    said = admin.flash(f"/admin/payments/{done['stars_payment']}")
    assert said == "⚠️ Telegram Stars payments are made only through Telegram."
    with shop.transaction(s.conn):
        s.conn.execute(
            "UPDATE payments SET status = 'finished' WHERE id = ?", (done["stars_payment"],)
        )
    assert s.conn.execute("SELECT * FROM payments").fetchall() == before
    page = admin.get(f"/admin/payments/{done['crypto_payment']}").text
    assert "/recheck" in page and "<h2>IPNs</h2>" in page


def test_the_csv_exports_carry_the_way_of_paying_and_the_charge_ids(admin):
    s = admin.shop
    done = sales(s)
    orders = list(csv.DictReader(io.StringIO(admin.get("/admin/export/orders.csv").text)))
    ways = {int(o["order"]): (o["method"], o["stars"]) for o in orders}
    assert ways[done["balance"]] == ("balance", "")
    assert ways[done["crypto"]] == ("crypto", "")
    assert [ways[o] for o in done["stars"]] == [
        ("stars", "1111"),
        ("stars", "125"),
        ("stars", "1111"),
    ]
    r = admin.get("/admin/export/payments.csv")
    assert r.headers["Content-Disposition"].endswith('"payments.csv"')
    payments = list(csv.DictReader(io.StringIO(r.text)))
    assert list(payments[0]) == shop.PAYMENTS_CSV_COLUMNS
    charges = {row[0]: row[1] for row in s.conn.execute("SELECT id, charge_id FROM payments")}
    for p in payments:
        assert p["charge_id"] == (charges[int(p["payment"])] or "")
        assert p["method"] == ("stars" if p["pay_currency"] == "xtr" else "crypto")
    refunded = next(p for p in payments if p["status"] == "refunded")
    assert (
        refunded["outcome"] == "delivered, refunded in Stars" and refunded["pay_amount"] == "1111"
    )
    assert (
        '<a class="button" href="/admin/export/payments.csv">Payments</a>'
        in admin.get("/admin/data").text
    )
    assert [r[0] for r in s.conn.execute("SELECT action FROM audit_log")][-2:] == [
        "orders exported",
        "payments exported",
    ]
