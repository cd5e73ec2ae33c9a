"""The owner's admin as the owner uses it: headless Chromium against the real shop and its bot on
the stand-in.

Every story logs in with the password and works the pages as an owner does (forms, htmx fragments,
flash messages), then looks for the result where it matters: in the bot through the Bot API
stand-in, in the database, in the audit log. A script error or a CSP refusal in any admin page fails
the story.
"""

import re
import sqlite3

import pytest
import requests

import shop
from conftest import BROWSER_WAIT_MS as WAIT_MS
from conftest import TOKEN, Shopper, expect, png, seed

PASSWORD = "correct horse battery staple"

# Names as owners type them: they must show literally, in the admin and in the bot.
TEA = 'Tea <b>& "Co"'
TEA_TEXT = "Green <i>sencha</i>\n100 g & more"
CITY = "Łódź <Centrum>"
DISTRICT = "Bałuty & Widzew"


@pytest.fixture
def owner_shop(make_shop, fake_tg):
    """A sandbox shop with an admin password and its bot polling the stand-in."""
    s = make_shop(
        env={"ADMIN_PASSWORD": PASSWORD, "BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url}
    )
    s.conn = shop.connect(s.config.shop_db)
    fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    yield s
    s.conn.close()


class AdminTab:
    """The owner's browser tab on the admin."""

    def __init__(self, page, shop_):
        self.page, self.shop = page, shop_

    def go(self, path):
        self.page.goto(self.shop.url + path)

    def log_in(self, password):
        self.page.get_by_label("Admin password").fill(password)
        self.page.get_by_role("button", name="Log in").click()

    def log_in_at(self, path):
        """Open a page of the admin, which asks for the password first, and land on it."""
        self.go(path)
        expect(self.page).to_have_url(re.compile(r"/admin/login\?next="))
        self.log_in(PASSWORD)
        expect(self.page).to_have_url(self.shop.url + path)

    def nav(self, label):
        self.page.locator("header nav").get_by_role("link", name=label, exact=True).click()
        expect(self.heading()).to_be_visible()

    def heading(self):
        return self.page.locator("main h1")

    def button(self, name):
        return self.page.get_by_role("button", name=name, exact=True)

    def says(self, text):
        """The flash message after a change: good news, or a refusal starting with ⚠️."""
        flash = self.page.locator("main p.flash")
        expect(flash).to_have_text(text)
        expect(flash).to_have_class(re.compile(r"\bbad\b" if text.startswith("⚠️") else r"\bgood\b"))

    def audit(self):
        """The Audit log page's rows, newest first: [(action, details)]."""
        self.nav("Audit log")
        return self.page.locator("#audit tbody tr").evaluate_all(
            "rows => rows.map(r => [r.cells[1].textContent, r.cells[2].textContent])"
        )


@pytest.fixture
def admin(browser, owner_shop):
    """A fresh browser (no cookies) for the owner; its tab is closed before the shop stops."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # A script or style the CSP refuses is a console error; failed loads are told apart below.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    # Every page, fragment, script and style loads, save the 403 that answers a wrong password and
    # the 400 of a form shown again with the reason it was refused.
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.request.method} {r.url}")
            if r.status >= 400
            and not (r.status == 403 and r.url.endswith("/admin/login"))
            and not (r.status == 400 and r.request.method == "POST")
            else None
        ),
    )
    yield AdminTab(page, owner_shop)
    context.close()
    assert errors == [], f"errors in the admin's pages: {errors}"


def text_of(locator):
    """The element's text exactly as shown (no whitespace folding)."""
    return locator.evaluate("e => e.textContent")


def stat_card(page, title):
    return page.locator(".card.stat").filter(
        has=page.get_by_role("heading", name=title, exact=True)
    )


# Stories #####################################################################


def test_the_owner_logs_in_builds_a_catalog_and_a_shopper_sees_it_in_the_bot(
    admin, owner_shop, fake_tg, tmp_path
):
    page = admin.page
    admin.go("/admin/catalog")  # a bookmark: the password first
    expect(page).to_have_url(owner_shop.url + "/admin/login?next=/admin/catalog")
    admin.log_in("not the password")
    expect(page.get_by_role("alert")).to_have_text("Wrong password.")
    admin.log_in(PASSWORD)
    expect(page).to_have_url(owner_shop.url + "/admin/catalog")  # back where the owner was going
    expect(admin.heading()).to_have_text("Catalog")
    expect(page.locator("main")).to_contain_text("No products yet.")

    page.evaluate("window.__stayed = true")  # gone if the page reloads
    places_say = page.locator("#places-status")
    page.get_by_label("New city").fill(CITY)  # no places yet: the form is open
    admin.button("Add city").click()
    expect(places_say).to_have_text("City added.")
    expect(page.get_by_label("New city")).to_be_focused()  # still open, for the next one
    page.get_by_label("New district in").select_option(label=CITY)
    page.get_by_label("named").fill(DISTRICT)
    admin.button("Add district").click()
    expect(places_say).to_have_text("District added.")
    page.get_by_label("named").fill(" ")  # spaces pass the browser's "required"
    admin.button("Add district").click()
    expect(page.locator("#add-place [role=alert]")).to_have_text("⚠️ The district name is empty")
    assert page.evaluate("window.__stayed") is True
    expect(page.locator("#places li.city > .place-row .place-name")).to_have_text(CITY)
    expect(page.locator("#places li.district .place-name")).to_have_text(DISTRICT)

    page.get_by_role("link", name="New product").click()
    expect(admin.heading()).to_have_text("New product")
    photo = tmp_path / "tea.png"
    photo.write_bytes(png(8, 8, (30, 140, 60)))
    page.get_by_label("Name", exact=True).fill(TEA)
    page.get_by_label("Description", exact=True).fill(TEA_TEXT)
    page.get_by_label("Price in EUR").fill("12,90")
    page.get_by_label("Photo").set_input_files(photo)
    admin.button("Save").click()
    admin.says("Product saved.")
    expect(admin.heading()).to_have_text(TEA)  # literally: no <b> made of the name
    expect(admin.heading().locator("b")).to_have_count(0)
    expect(page.get_by_label("Price in EUR")).to_have_value("12.90")
    page.wait_for_function(
        "() => { const i = document.querySelector('img.thumb'); "
        "return i && i.complete && i.naturalWidth === 8; }"
    )

    page.get_by_label("Add units in").select_option(label=f"{CITY} / {DISTRICT}")
    page.get_by_label("Contents").fill("CODE-1 <x>\nCODE-2 & y\nCODE-3")
    admin.button("Add units").click()
    admin.says("3 units added.")
    stock_row = page.locator("tr").filter(
        has=page.get_by_role("cell", name=f"{CITY} / {DISTRICT}", exact=True)
    )
    expect(stock_row.locator("td.num").first).to_have_text("3")
    expect(page.locator("td.content")).to_have_text(["CODE-3", "CODE-2 & y", "CODE-1 <x>"])

    ann = Shopper(fake_tg, 301)
    card = ann.open_product(CITY, DISTRICT, f"{TEA} · €12.90")
    assert card.kind == "photo" and card.photo_file_id
    assert card.content.startswith(f"{TEA}\n{TEA_TEXT}\n")
    assert "Available: 3" in card.content and "Price: €12.90" in card.content
    assert f"{CITY} / {DISTRICT}" in card.content


def places_shown(page):
    """The places as the catalog page lists them: [(city, [its districts])]."""
    return [
        tuple(row)
        for row in page.locator("#places li.city").evaluate_all(
            "cities => cities.map(c => [c.querySelector(':scope > .place-row .place-name')"
            ".textContent, [...c.querySelectorAll('li.district .place-name')]"
            ".map(d => d.textContent)])"
        )
    ]


def places_stored(conn):
    """The places in the order shoppers see them: [(city, [its districts])]."""
    return [
        (
            city,
            [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM districts WHERE city_id = ? ORDER BY position, name", (cid,)
                )
            ],
        )
        for cid, city in conn.execute("SELECT id, name FROM cities ORDER BY position, name")
    ]


def drag(page, handle, onto):
    """Press the mouse on a handle, move it in steps to the top edge of `onto`, let go."""
    onto.scroll_into_view_if_needed()
    handle.scroll_into_view_if_needed()
    start, end = handle.bounding_box(), onto.bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + 2, steps=12)


def test_the_owner_changes_a_product_in_its_row_cancels_and_is_told_what_is_wrong(
    admin, owner_shop, fake_tg
):
    conn = owner_shop.conn
    seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 2), ("Berlin", "Mitte", "Beans", 1290, 1)])
    with shop.transaction(conn):
        conn.execute("UPDATE products SET kind = 'digital', description = 'Any shop' WHERE id = 1")
        conn.execute("UPDATE products SET kind = 'physical' WHERE id = 2")
    before = [tuple(r) for r in conn.execute("SELECT * FROM products ORDER BY id")]
    page = admin.page
    admin.log_in_at("/admin/catalog")
    page.evaluate("window.__stayed = true")  # gone if the page reloads
    expect(page.locator("#rule-notice")).to_contain_text("1 digital product may be paid other")
    row = page.locator("#product-1")
    expect(row.locator("td[data-label=Kind]")).to_have_text("digital")
    expect(row.locator("td[data-label='In stock']")).to_contain_text("Berlin / Mitte 2")

    row.locator("td[data-label=Price]").click()  # anywhere on the row opens its form
    expect(row.get_by_label("Name")).to_be_focused()
    row.get_by_label("Price in EUR").fill("1.00")
    row.get_by_role("link", name="Cancel").click()
    expect(row.locator("td[data-label=Price]")).to_have_text("€25.00")
    expect(row.get_by_role("link", name="Edit Gift card")).to_be_focused()  # back where it was

    row.get_by_role("link", name="Edit Gift card").click()
    row.get_by_label("Price in EUR").fill("twelve")
    admin.button("Save").click()
    expect(row.get_by_role("alert")).to_have_text(
        "⚠️ The price must be an amount in EUR like 25.00, got 'twelve'."
    )
    expect(row.get_by_label("Price in EUR")).to_have_value("twelve")  # as typed, unsaved
    assert [tuple(r) for r in conn.execute("SELECT * FROM products ORDER BY id")] == before

    row.get_by_label("Price in EUR").fill("19.90")
    row.get_by_label("crypto", exact=True).uncheck()
    row.get_by_label("balance", exact=True).uncheck()
    admin.button("Save").click()
    expect(page.locator("#catalog-status")).to_have_text("Gift card saved.")
    expect(row.locator("td[data-label=Price]")).to_have_text("€19.90")
    expect(row.locator("td[data-label='Ways to pay']")).to_have_text("⭐ Stars")
    expect(page.locator("#rule-notice")).to_have_text("")  # Telegram's rule is kept now
    expect(page.locator("#telegram-rule")).to_contain_text(
        "✓ Every digital product is paid in Telegram Stars only."
    )
    saved = conn.execute("SELECT * FROM products WHERE name = 'Gift card'").fetchone()
    assert (saved["price_cents"], saved["pay_methods"], saved["description"]) == (
        1990,
        "stars",
        "Any shop",
    )

    beans = page.locator("#product-2")
    beans.get_by_role("link", name="Edit Beans").click()
    beans.get_by_label("Name").press("Escape")  # Escape cancels too
    expect(beans.get_by_role("link", name="Edit Beans")).to_be_focused()
    assert page.evaluate("window.__stayed") is True
    assert (
        "Price: €19.90"
        in Shopper(fake_tg, 303).open_product("Berlin", "Mitte", "Gift card · €19.90").content
    )


def test_the_owner_puts_places_in_order_by_dragging_and_by_keyboard(admin, owner_shop, fake_tg):
    conn = owner_shop.conn
    seed(
        conn,
        [
            (c, d, "Gift card", 2500, 1)
            for c, d in [
                ("Berlin", "Mitte"),
                ("Berlin", "Kreuzberg"),
                ("Lisbon", "Alfama"),
                ("Porto", "Ribeira"),
            ]
        ],
    )
    page = admin.page
    admin.log_in_at("/admin/catalog")
    page.evaluate("window.__stayed = true")  # gone if the page reloads
    status = page.locator("#places-status")
    saved = "Order saved: shoppers see the places in this order."
    assert places_shown(page) == [
        ("Berlin", ["Kreuzberg", "Mitte"]),
        ("Lisbon", ["Alfama"]),
        ("Porto", ["Ribeira"]),
    ]

    porto = page.get_by_role("button", name="Move Porto, 3 of 3")
    drag(page, porto, page.get_by_role("button", name="Move Berlin, 1 of 3"))
    page.mouse.up()
    expect(status).to_have_text(saved)
    new_order = [("Porto", ["Ribeira"]), ("Berlin", ["Kreuzberg", "Mitte"]), ("Lisbon", ["Alfama"])]
    assert places_shown(page) == new_order and places_stored(conn) == new_order
    expect(page.get_by_role("button", name="Move Porto, 1 of 3")).to_be_focused()

    page.get_by_role("button", name="Move Mitte, 2 of 2").focus()  # the keyboard
    page.keyboard.press("ArrowUp")
    expect(page.get_by_role("button", name="Move Mitte, 1 of 2")).to_be_focused()
    expect(status).to_have_text(saved)
    new_order[1] = ("Berlin", ["Mitte", "Kreuzberg"])
    assert places_stored(conn) == new_order
    page.keyboard.press("ArrowUp")  # already first: nothing is sent
    expect(page.get_by_role("button", name="Move Mitte, 1 of 2")).to_be_focused()

    drag(page, page.get_by_role("button", name="Move Lisbon, 3 of 3"), page.locator("#city-3"))
    assert places_shown(page)[0][0] == "Lisbon"  # on its way ...
    page.keyboard.press("Escape")  # ... and back
    page.mouse.up()
    assert places_shown(page) == new_order

    buttons = Shopper(fake_tg, 304).send("🛒 Shop", "Choose a city").button_texts
    assert buttons[:3] == ["Porto", "Berlin", "Lisbon"]  # the shoppers' order too

    shop.add_city(conn, "Faro")  # meanwhile, in another tab
    page.get_by_role("button", name="Move Lisbon, 3 of 3").focus()
    page.keyboard.press("ArrowUp")
    expect(page.locator("#places [role=alert]")).to_have_text(
        "⚠️ The new order does not list the shop's cities as they are now (one may have been "
        "added since the page was loaded), so nothing was moved."
    )
    assert places_shown(page) == [*new_order, ("Faro", [])]  # as they are now
    expect(page.get_by_role("button", name="Move Lisbon, 3 of 4")).to_be_focused()
    assert places_stored(conn) == [*new_order, ("Faro", [])]
    page.get_by_role("button", name="Move Faro, 4 of 4").focus()
    page.keyboard.press("Home")
    expect(status).to_have_text(saved)
    assert [c for c, _ in places_stored(conn)] == ["Faro", "Porto", "Berlin", "Lisbon"]

    lisbon = page.locator("#city-2-row")
    lisbon.locator(".place-meta").click()  # its form
    lisbon.get_by_label("City name").fill("Porto")
    admin.button("Save").click()
    expect(lisbon.get_by_role("alert")).to_have_text("⚠️ That name is taken: “Porto”.")
    lisbon.get_by_label("City name").fill("Lisboa")
    lisbon.get_by_label("Position").select_option("2")
    lisbon.get_by_label("Hidden from shoppers").check()
    admin.button("Save").click()
    expect(status).to_have_text("Lisboa saved.")
    expect(page.get_by_role("link", name="Edit Lisboa")).to_be_focused()
    expect(page.locator("#city-2-row .tag")).to_have_text("hidden")
    assert [c for c, _ in places_stored(conn)] == ["Faro", "Lisboa", "Porto", "Berlin"]
    assert page.evaluate("window.__stayed") is True
    actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")][-7:]
    assert actions == ["places reordered"] * 2 + ["city added", "places reordered"] + [
        "city renamed",
        "city hidden",
        "city moved",
    ]


def test_a_paid_order_shows_on_the_dashboard_and_the_owner_refunds_it(admin, owner_shop, fake_tg):
    seed(owner_shop.conn, [("Berlin", "Mitte", "Gift card", 2500, 2)])
    ann = Shopper(fake_tg, 302, "Ann")
    ann.open_product("Berlin", "Mitte", "Gift card · €25.00")
    ann.click("⚡ Buy now")
    ann.click("BTC")
    provider_id = owner_shop.conn.execute("SELECT provider_id FROM payments").fetchone()[0]
    shop.sandbox_simulate(owner_shop, provider_id, "full")
    fake_tg.wait_message(302, "Order #1 is paid", timeout=15)

    page = admin.page
    admin.log_in_at("/admin")
    today = stat_card(page, "today")
    expect(today).to_contain_text("€25.00")
    expect(today).to_contain_text("1 paid order")

    admin.nav("Orders")
    row = page.locator("#orders tbody tr").filter(
        has=page.get_by_role("link", name="#1", exact=True)
    )
    expect(row).to_contain_text("Ann")
    expect(row).to_contain_text("€25.00")
    expect(row.locator(".status")).to_have_text("paid")
    row.get_by_role("link", name="#1", exact=True).click()

    expect(admin.heading()).to_have_text("Order #1 paid")
    expect(page.locator("td.content")).to_have_text(re.compile(r"^Gift card-Mitte-[01]$"))
    reason = 'Wrong <code> & "sorry"'
    page.get_by_label("Reason").fill(reason)
    admin.button("Refund €25.00").click()
    admin.says("Order refunded to the balance.")
    expect(admin.heading()).to_have_text("Order #1 refunded")
    expect(page.get_by_role("button", name=re.compile("^Refund"))).to_have_count(
        0
    )  # once is enough
    told = fake_tg.wait_message(302, "was refunded")
    assert told.content == (
        f"↩️ Order #1 was refunded: €25.00 is back on your balance. Reason: {reason}. "
        "Balance: €25.00."
    )

    page.get_by_role("link", name=re.compile(r"^Ann .*\(302\)$")).click()  # the shopper's page
    expect(page.locator(".card.stat .big")).to_have_text("€25.00")
    credit = page.locator("tr").filter(has=page.get_by_role("cell", name="refund", exact=True))
    expect(credit).to_contain_text(f"Refund of order #1: {reason}")
    expect(credit.locator("td.num").first).to_have_text("€25.00")
    assert "Balance: €25.00" in ann.send("👤 Profile", "Balance").content

    admin.nav("Orders")
    page.evaluate("window.__stayed = true")  # gone if the page reloads
    page.get_by_label("Status").select_option("paid")  # htmx swaps the list in
    expect(page.locator("#orders tbody")).to_have_text("No orders match.")
    page.get_by_label("Status").select_option("refunded")
    expect(page.locator("#orders tbody tr .status")).to_have_text(["refunded"])
    expect(page).to_have_url(re.compile(r"/admin/orders\?status=refunded"))
    assert page.evaluate("window.__stayed") is True


def test_a_broadcast_reaches_every_shopper_and_its_progress_fills_by_itself(
    admin, owner_shop, fake_tg
):
    shoppers = [
        Shopper(fake_tg, 310 + i, name) for i, name in enumerate(("Ann", "Bob", "Cy", "Di"))
    ]
    for s in shoppers:
        s.send("/start", "Welcome")
    typed = 'Sale on tea & "coffee": 20% off\nSee you in Mitte!'
    news = 'Sale on <b>tea</b> & "coffee": 20% off\nSee you in Mitte!'

    page = admin.page
    admin.log_in_at("/admin/broadcast")
    expect(page.locator("form .audience")).to_have_text("It goes to 4 shoppers.")
    message = page.get_by_label("Message", exact=True)
    message.fill(typed)
    message.evaluate("t => t.setSelectionRange(8, 11)")  # "tea"
    page.get_by_role("toolbar", name="Formatting").get_by_role("button", name="B").click()
    expect(message).to_have_value(news)
    bubble = page.locator("#preview .bubble")  # the live preview, from the server
    expect(bubble.locator("b")).to_have_text("tea")  # shown as Telegram shows it
    assert text_of(bubble) == typed
    expect(page.locator("#preview")).to_contain_text(f"({len(typed)} of 4096 characters)")

    admin.button("Review and send…").click()
    expect(admin.heading()).to_have_text("Send this broadcast?")
    expect(page.locator(".tg-confirm .bubble b")).to_have_text("tea")
    fake_tg.fail_next(
        "sendMessage", status=429, times=2, retry_after=3
    )  # Telegram holds two back a while
    admin.button("Send to 4 shoppers").click()
    admin.says("Broadcast started.")
    expect(admin.heading()).to_have_text("Broadcast #1")
    left = page.locator("#progress .left")
    expect(left).not_to_have_text("0 left")
    page.evaluate("window.__stayed = true")  # gone if the page reloads
    expect(left).to_have_text("0 left", timeout=15000)  # htmx polls every second by itself
    expect(page.locator("#progress .sent")).to_have_text("4 sent")
    expect(page.locator("#progress .failed")).to_have_text("0 failed")
    expect(page.locator("#progress progress")).to_have_attribute("value", "4")
    expect(page.locator("#progress")).to_contain_text("done")
    assert page.evaluate("window.__stayed") is True

    for s in shoppers:
        got = fake_tg.wait_message(s.id, "Sale on")
        assert got.content == typed  # the text came through the hidden field, new line and all
        assert got.entities == [{"type": "bold", "offset": 8, "length": 3}]


def test_the_owner_finds_a_shopper_adjusts_the_balance_bans_and_unbans_and_the_audit_log_has_it_all(
    admin, owner_shop, fake_tg
):
    Shopper(fake_tg, 320, "Ann").send("/start", "Welcome")
    fake_tg.user_sends(321, "/start", first_name="Bob", username="bobby_b")
    fake_tg.wait_message(321, "Welcome")
    bob = Shopper(fake_tg, 321, "Bob")

    page = admin.page
    admin.log_in_at("/admin/users")
    rows = page.locator("#users tbody tr")
    expect(rows).to_have_count(2)
    search = page.get_by_label("Telegram id, @username or name")
    search.fill("@bobby_b")  # htmx searches as the owner types
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("Bob")
    search.fill("nobody like that")
    expect(rows).to_have_text(["No users match."])
    search.fill("an")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("Ann")
    search.fill("321")
    expect(rows).to_contain_text("@bobby_b")
    rows.get_by_role("link", name="321").click()
    expect(admin.heading()).to_have_text("Bob @bobby_b")
    balance = page.locator(".card.stat .big")
    expect(balance).to_have_text("€0.00")

    def adjust(amount, reason):
        page.get_by_label("Amount in EUR").fill(amount)
        page.get_by_label("Reason").fill(reason)
        admin.button("Adjust").click()

    adjust("10", "Welcome gift")
    admin.says("Balance credited €10.00.")
    expect(balance).to_have_text("€10.00")
    fake_tg.wait_message(321, "Your balance was credited €10.00: Welcome gift. Balance: €10.00.")
    adjust("-2.50", "   ")  # spaces pass the browser's "required"
    admin.says("⚠️ The reason is empty")
    expect(balance).to_have_text("€10.00")
    adjust("-100", "Too much")
    expect(page.locator("main p.flash.bad")).to_contain_text("The balance is only €10.00")
    expect(balance).to_have_text("€10.00")
    adjust("-2.50", "Typo <fixed> & sorry")
    admin.says("Balance debited €2.50.")
    expect(balance).to_have_text("€7.50")
    fake_tg.wait_message(
        321, "Your balance was debited €2.50: Typo <fixed> & sorry. Balance: €7.50."
    )

    admin.button("Ban").click()
    admin.says("User banned.")
    expect(admin.heading()).to_have_text(re.compile(r"^Bob .*\(banned\)$"))
    assert (
        bob.send("🛒 Shop", "not available").content == "Sorry, this shop is not available to you."
    )
    admin.button("Unban").click()
    admin.says("User unbanned.")
    expect(admin.heading()).not_to_contain_text("banned")
    bob.send("🛒 Shop", "The shop is empty")  # served again

    about_bob = [(action, details) for action, details in admin.audit() if "user 321" in details]
    assert about_bob == [
        ("user unbanned", "user 321"),
        ("user banned", "user 321"),
        ("balance adjusted", "user 321 -€2.50: Typo <fixed> & sorry"),
        ("balance adjusted", "user 321 €10.00: Welcome gift"),
    ]


def test_settings_apply_to_the_bot_at_once(admin, owner_shop, fake_tg):
    ann = Shopper(fake_tg, 330)
    assert ann.send("/start", "Welcome").content.startswith("👋 Demo Shop\n")
    name = "Tea & Co <Berlin>"

    page = admin.page
    admin.log_in_at("/admin/settings")
    page.get_by_label("Shop name").fill(name)
    page.get_by_label("Minimum top-up in EUR").fill("7.50")
    admin.button("Save").click()
    expect(page.locator("main p.flash.good")).to_contain_text("Settings saved")
    expect(page.get_by_label("Shop name")).to_have_value(name)
    expect(page.get_by_label("Minimum top-up in EUR")).to_have_value("7.50")
    expect(page.locator("header .brand")).to_have_text(name)
    expect(page).to_have_title(f"Settings · {name} admin")

    assert ann.send("/start", "Welcome").content.startswith(f"👋 {name}\n")  # no restart
    assert "from €7.50 to" in ann.send("💰 Top up", "How much").content
    assert "must be at least €7.50" in ann.send("5", "The amount").content
    action, details = admin.audit()[0]
    assert action == "settings changed" and {"shop_name", "min_deposit_cents"} <= set(
        details.split(", ")
    )


def test_the_owner_names_a_product_and_writes_the_texts_in_other_languages(
    admin, owner_shop, languages
):
    conn = owner_shop.conn
    ids = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])
    product = ids[("Gift card", "Mitte")][0]
    page = admin.page
    admin.log_in_at(f"/admin/products/{product}")
    translations = page.locator("details#translations")
    expect(translations.locator("summary")).to_have_text("Translations (0 of 3 languages)")
    german = page.get_by_label("Name in Deutsch (de)")
    expect(german).to_be_hidden()  # folded until the owner opens it
    translations.locator("summary").click()
    german.fill("Geschenkkarte")
    page.get_by_label("Description in Deutsch (de)").fill("Überall gültig.\nDrei Jahre.")
    page.get_by_label("Name in Polski (pl)").fill("Karta podarunkowa")
    expect(german).to_have_attribute("lang", "de")  # the browser spells-checks it as German
    admin.button("Save").click()
    admin.says("Product saved.")
    expect(translations.locator("summary")).to_have_text("Translations (2 of 3 languages)")
    translations.locator("summary").click()
    expect(german).to_have_value("Geschenkkarte")
    with shop.speaking("de"):
        assert [p["name"] for p in shop.list_products(conn, ids[("Gift card", "Mitte")][1])] == [
            "Geschenkkarte"
        ]

    admin.nav("Settings")
    default = page.get_by_label("Default language")
    expect(default).to_have_value("en")
    expect(default.locator("option")).to_have_text(
        ["English (en)", "Deutsch (de)", "Polski (pl)", "Português (pt)"]
    )
    welcome = page.get_by_label("Welcome text (after /start) in Deutsch (de)", exact=True)
    expect(welcome).to_be_hidden()
    page.locator("details#texts-de > summary").click()
    expect(welcome).to_have_attribute("placeholder", shop.get_setting(conn, "welcome_text"))
    welcome.fill("Willkommen! Schön, dass du da bist.")
    admin.button("Save").click()
    admin.says("Settings saved: welcome text in de.")
    expect(page.locator("details#texts-de > summary")).to_have_text("Deutsch (de) (1 of 4 written)")
    with shop.speaking("de"):
        assert shop.shop_text(conn, "welcome_text") == "Willkommen! Schön, dass du da bist."
    with shop.speaking("pl"):
        assert shop.shop_text(conn, "welcome_text") == shop.get_setting(conn, "welcome_text")
    assert admin.audit()[:2] == [
        ["settings changed", "welcome_text.de"],
        [
            "product changed",
            f"#{product} name in de: '' -> 'Geschenkkarte'; name in pl: '' -> "
            "'Karta podarunkowa'; description in de changed",
        ],
    ]


def test_a_file_that_is_not_an_image_is_refused_and_the_backup_is_a_sound_database(
    admin, owner_shop, tmp_path
):
    conn = owner_shop.conn
    product_id, _ = seed(conn, [("Berlin", "Mitte", "Gift card", 2500, 1)])[("Gift card", "Mitte")]
    photo = shop.store_media(owner_shop.config.media_dir, png(), "png", private=False)
    with shop.transaction(conn):
        conn.execute("UPDATE products SET photo = ? WHERE id = ?", (photo, product_id))
    before = conn.execute("SELECT * FROM products").fetchall()
    media = sorted(owner_shop.config.media_dir.rglob("*"))
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("just some text in a file called .png", encoding="utf-8")

    page = admin.page
    admin.log_in_at(f"/admin/products/{product_id}")
    page.get_by_label("Price in EUR").fill("99.00")
    page.get_by_label("Photo (JPEG").set_input_files(not_an_image)
    admin.button("Save").click()
    admin.says("⚠️ The photo is not a JPEG, PNG, GIF or WebP image.")
    expect(page).to_have_url(owner_shop.url + f"/admin/products/{product_id}")
    expect(page.get_by_label("Price in EUR")).to_have_value(
        "99.00"
    )  # what was typed stays, unsaved
    expect(page.locator("img.thumb")).to_have_attribute("src", f"/media/{photo}")

    admin.nav("Catalog")
    page.get_by_role("link", name="New product").click()
    page.get_by_label("Name", exact=True).fill("Poster")
    page.get_by_label("Price in EUR").fill("9")
    page.get_by_label("Photo").set_input_files(not_an_image)
    admin.button("Save").click()
    admin.says("⚠️ The photo is not a JPEG, PNG, GIF or WebP image.")
    assert [tuple(r) for r in conn.execute("SELECT * FROM products").fetchall()] == [
        tuple(r) for r in before
    ]
    assert sorted(owner_shop.config.media_dir.rglob("*")) == media

    admin.nav("Data")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download backup").click()
    backup = download.value
    assert re.fullmatch(r"shop-\d{8}-\d{4}\.db", backup.suggested_filename)
    path = tmp_path / backup.suggested_filename
    backup.save_as(path)
    copy = sqlite3.connect(path)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT name, price_cents, photo FROM products").fetchall() == [
            ("Gift card", 2500, photo)
        ]
    finally:
        copy.close()
    assert list(owner_shop.backup_dir.glob("*")) == []  # the download's copy is not left behind
    assert admin.audit()[0][0] == "backup downloaded"


def test_logging_out_ends_the_session(admin, owner_shop):
    page = admin.page
    admin.log_in_at("/admin/audit")
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "shop_admin")
    admin.button("Log out").click()
    expect(page).to_have_url(owner_shop.url + "/admin/login")
    expect(page.get_by_label("Admin password")).to_be_visible()

    page.go_back()  # the page before is not shown again
    expect(page).to_have_url(owner_shop.url + "/admin/login?next=/admin/audit")
    expect(page.locator("#audit")).to_have_count(0)
    admin.go("/admin")
    expect(page).to_have_url(owner_shop.url + "/admin/login?next=/admin")

    # Not just the cookie gone from this browser: the server forgot the session.
    r = requests.get(
        owner_shop.url + "/admin", cookies={"shop_admin": token}, allow_redirects=False, timeout=5
    )
    assert r.status_code == 303 and r.headers["Location"].endswith("/admin/login?next=/admin")
    actions = [r[0] for r in owner_shop.conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions[-2:] == ["logged in", "logged out"]
