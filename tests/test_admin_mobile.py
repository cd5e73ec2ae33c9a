"""The admin on a phone (390x844, touch) and on a desk: headless Chromium against a shop with data.

Every admin page fits the phone's width (nothing scrolls sideways, long codes and addresses wrap),
the menu is one "Menu" button until it is opened, and what a thumb presses is at least 44 px tall.
"""

import re
import time

import pytest

import shop
from conftest import ADMIN_PASSWORD as PASSWORD
from conftest import BROWSER_WAIT_MS as WAIT_MS
from conftest import expect, seed, user

PHONE = {"width": 390, "height": 844}
DESK = {"width": 1280, "height": 800}

# What owners and shoppers type, at its longest: nothing here may widen a page.
LONG_NAME = "Premium-gift-card-for-the-whole-family-valid-everywhere-2025"[:64]
LONG_CODE = "GIFT-" + "7F3A9C2E" * 10  # a licence key with no place to break
LONG_USERNAME = "a_shopper_with_a_very_long_username_x"


def fill(s):
    """A shop with what the admin shows: places, products with long names and codes, a paid
    balance order, a crypto order paid through the sandbox's IPNs, an open crypto invoice, an
    expired one, a top-up, a banned shopper and an audit log. Returns the ids the pages need."""
    conn = shop.connect(s.config.shop_db)
    try:
        ids = seed(
            conn,
            [
                ("Berlin", "Mitte", "Gift card", 2500, 6),
                ("Berlin", "Kreuzberg_36", LONG_NAME, 4999, 4),
                ("Łódź <Centrum>", "Bałuty & Widzew", "Kaffee «Grün» 250g", 1290, 2),
            ],
            content=lambda n, product, district, i: (
                f"{LONG_CODE}-{n}{i}" if n == 1 else f"{product}-{district}-{i}"
            ),
        )
        gift, long_one = ids[("Gift card", "Mitte")], ids[(LONG_NAME, "Kreuzberg_36")]
        user(conn, 11, balance=20000)
        shop.touch_user(
            conn, {"id": 5551234567, "first_name": "Anna-Maria", "username": LONG_USERNAME}
        )
        paid = shop.buy_with_balance(conn, 11, [(*gift, 1), (*long_one, 1)])

        def invoice(uid, lines, coin):
            total = shop.price_lines(conn, lines)[0]
            nonce = shop.create_checkout(conn, uid, "order", total, lines)
            return s.payments.open_order_invoice(uid, nonce, coin)

        crypto = invoice(5551234567, [(*long_one, 2)], "usdttrc20")
        shop.sandbox_simulate(s, crypto["provider_id"], "full")
        user(conn, 12)
        waiting = invoice(12, [(*gift, 1)], "btc")
        expired = invoice(12, [(*gift, 1)], "ton")
        shop.sandbox_simulate(s, expired["provider_id"], "expire")
        nonce = shop.create_checkout(conn, 11, "topup", 5000)
        topup = s.payments.open_topup_invoice(11, nonce, "eth")
        user(conn, 13)
        with shop.transaction(conn):
            conn.execute("UPDATE users SET is_banned = 1 WHERE id = 13")
        shop.record_audit(conn, "settings changed", "welcome_text, help_text, " + LONG_CODE)
        broadcast = shop.start_broadcast(conn, f"Sale on {LONG_NAME}!\nCode: {LONG_CODE}")
        deadline = 200
        while deadline:  # the sandbox's IPNs arrive from a thread
            done = conn.execute(
                "SELECT count(*) FROM payments WHERE status IN ('finished', 'expired')"
            ).fetchone()[0]
            if done == 2:
                break
            deadline -= 1
            time.sleep(0.05)
        assert deadline, "the sandbox's IPNs did not arrive"
        promo, promo_order = fill_promos(conn, gift, long_one)
        stars = fill_stars(s, conn, gift, long_one)
        return {
            "promo": promo,
            "promo_order": promo_order,
            "product": long_one[0],
            "paid_order": paid,
            "crypto_order": crypto["order_id"],
            "crypto_payment": crypto["id"],
            "waiting_payment": waiting["id"],
            "topup_payment": topup["id"],
            "user": 5551234567,
            "broadcast": broadcast,
            **stars,
        }
    finally:
        conn.close()


def fill_stars(s, conn, gift, long_one):
    """Telegram Stars in the sandbox: products that say what they are (the gift card digital but
    payable every way, so it breaks Telegram's rule; the long one physical with its own Stars
    price; the coffee not said), and three gift cards paid in Stars: one refunded, one whose
    refund Telegram refused so far, one to refund."""
    with shop.transaction(conn):
        conn.execute("UPDATE products SET kind = 'digital' WHERE id = ?", (gift[0],))
        conn.execute(
            "UPDATE products SET kind = 'physical', pay_methods = 'stars,crypto', "
            "stars_price = 2499 WHERE id = ?",
            (long_one[0],),
        )
    orders = []
    for _ in range(3):
        nonce = shop.create_checkout(conn, 11, "order", 2500, [(*gift, 1)])
        payment = s.payments.open_stars_invoice(11, nonce)
        s.payments.simulate_stars(11, payment, "full")
        orders.append(payment)
    shop.request_owner_star_refund(conn, orders[0]["order_id"], "the code did not work")
    s.payments.make_refunds()
    charge = shop.request_owner_star_refund(conn, orders[1]["order_id"], f"wrong {LONG_CODE}")
    shop.star_refund_failed(conn, charge, "Telegram refused the refund: Bad Request: " + LONG_CODE)
    return {
        "stars_refunded": orders[0]["order_id"],
        "stars_refunding": orders[1]["order_id"],
        "stars_order": orders[2]["order_id"],
        "stars_payment": orders[2]["id"],
    }


def fill_promos(conn, gift, long_one):
    """Discount codes: one at its longest, for the long product in Berlin with every limit and a
    long note, used once; one paused. Returns that code's id and its order's."""
    promo = shop.create_promo_code(
        conn,
        {
            "code": "BLACK_FRIDAY_2026_EVERYTHING_XL",
            "kind": "percent",
            "value": "15",
            "min_total": "20",
            "starts": "2026-11-27",
            "ends": "2030-11-30 18:00",
            "max_uses": "500",
            "max_uses_per_user": "1",
            "products": [str(long_one[0]), str(gift[0])],
            "cities": "Berlin",
            "note": f"Newsletter: {LONG_CODE}",
        },
    )
    paused = shop.create_promo_code(conn, {"code": "FIVE-OFF", "kind": "fixed", "value": "5"})
    shop.set_promo_active(conn, paused, False)
    order = shop.buy_with_balance(conn, 11, [(*gift, 1), (*long_one, 1)], promo_id=promo)
    return promo, order


def admin_pages(ids):
    """Every page of the admin a logged-in owner opens, with data on it."""
    return [
        "/admin",
        "/admin/catalog",
        "/admin/catalog?edit=city-1",  # a place's form, as it opens without JavaScript
        f"/admin/products/{ids['product']}",
        "/admin/products/new",
        "/admin/import",
        "/admin/orders",
        f"/admin/orders/{ids['crypto_order']}",
        f"/admin/orders/{ids['paid_order']}",
        f"/admin/orders/{ids['stars_order']}",
        f"/admin/orders/{ids['stars_refunded']}",
        f"/admin/orders/{ids['stars_refunding']}",
        f"/admin/payments/{ids['stars_payment']}",
        "/admin/payments",
        f"/admin/payments/{ids['crypto_payment']}",
        f"/admin/payments/{ids['waiting_payment']}",
        f"/admin/payments/{ids['topup_payment']}",
        "/admin/users",
        f"/admin/users/{ids['user']}",
        "/admin/promos",
        f"/admin/promos/{ids['promo']}",
        f"/admin/orders/{ids['promo_order']}",
        "/admin/broadcast",
        f"/admin/broadcast/{ids['broadcast']}",
        "/admin/settings",
        "/admin/data",
        "/admin/audit",
        "/admin/orders/999999",  # the error page
    ]


@pytest.fixture
def busy_shop(make_shop):
    s = make_shop(env={"ADMIN_PASSWORD": PASSWORD})
    s.ids = fill(s)
    return s


def open_tab(browser, s, viewport, phone):
    context = browser.new_context(
        viewport=viewport, device_scale_factor=1, is_mobile=phone, has_touch=phone
    )
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(s.url + "/admin/login")
    page.get_by_label("Admin password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(s.url + "/admin")
    return context, page


WIDTHS = """() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
    wide: [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.textContent.slice(0, 40)),
})"""

# What a thumb presses in the page's main part, and how tall it is.
TARGETS = """() => [...document.querySelectorAll(
        'main button, main .button, main select, main summary, header summary, header button,'
        + ' main input:not([type=hidden]):not([type=checkbox]):not([type=radio])')]
    .filter(e => e.getClientRects().length)
    .map(e => [e.outerHTML.slice(0, 80), e.getBoundingClientRect().height,
               parseFloat(getComputedStyle(e).fontSize)])"""


def test_no_admin_page_scrolls_sideways_on_a_phone_and_everything_is_thumb_sized(
    browser, busy_shop
):
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(busy_shop.url + "/admin/login")
    login = page.evaluate(WIDTHS)
    assert login["scroll"] <= login["inner"] == PHONE["width"], login
    context.close()

    context, page = open_tab(browser, busy_shop, PHONE, phone=True)
    too_wide, too_small = [], []
    try:
        for path in admin_pages(busy_shop.ids):
            page.goto(busy_shop.url + path)
            expect(page.locator("main h1")).to_be_visible()
            widths = page.evaluate(WIDTHS)
            # A page wider than the phone makes Chromium zoom out: innerWidth grows with it.
            if not widths["scroll"] <= widths["inner"] == PHONE["width"]:
                too_wide.append((path, widths["scroll"], widths["inner"], widths["wide"]))
            for html, height, font in page.evaluate(TARGETS):
                if height < 44:
                    too_small.append((path, html, height))
                if font < 16 and not html.startswith(("<button", "<a", "<summary")):
                    too_small.append((path, html, f"{font}px font"))  # iOS zooms into those
    finally:
        context.close()
    assert too_wide == [], "pages that scroll sideways on a phone"
    assert too_small == [], "controls too small for a thumb"


def assert_fits_a_phone(page, state):
    """Nothing scrolls sideways and every control is thumb-sized, in the page as it is now."""
    widths = page.evaluate(WIDTHS)
    assert widths["scroll"] <= widths["inner"] == PHONE["width"], (state, widths)
    small = [
        (html, height, font)
        for html, height, font in page.evaluate(TARGETS)
        if height < 44 or (font < 16 and not html.startswith(("<button", "<a", "<summary")))
    ]
    assert small == [], (state, small)


def touch_drag(page, handle, onto):
    """A thumb on a handle, moved in steps to the top edge of `onto`, then lifted."""
    cdp = page.context.new_cdp_session(page)
    start, end = handle.bounding_box(), onto.bounding_box()
    x, y = start["x"] + start["width"] / 2, start["y"] + start["height"] / 2
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for i in range(1, 11):
        at = {"x": x, "y": y + (end["y"] + 2 - y) * i / 10}
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [at]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_the_catalog_is_changed_in_place_and_put_in_order_by_thumb_on_a_phone(browser, busy_shop):
    context, page = open_tab(browser, busy_shop, PHONE, phone=True)
    try:
        page.goto(busy_shop.url + "/admin/catalog")
        assert_fits_a_phone(page, "read")
        for handle in page.locator("#places [data-handle]").all():
            box = handle.bounding_box()
            assert box["width"] >= 44 and box["height"] >= 44, box

        edit = page.locator("#products tbody tr").last.get_by_role("link", name=re.compile("^Ed"))
        edit.evaluate("e => window.scrollBy(0, e.getBoundingClientRect().top - 120)")
        edit.tap()  # at the foot of its card, the card's top above the screen
        form = page.locator("#products tr.editing")
        expect(form.get_by_label("Name")).to_be_focused()
        header = page.locator("header").bounding_box()
        assert form.bounding_box()["y"] >= header["y"] + header["height"]  # scrolled to show it
        assert_fits_a_phone(page, "a product's form")
        form.get_by_label("Price in EUR").fill("twelve")
        form.get_by_role("button", name="Save").tap()
        expect(form.get_by_role("alert")).to_contain_text("The price must be an amount in EUR")
        assert_fits_a_phone(page, "a product's form, refused")
        form.get_by_role("link", name="Cancel").tap()
        expect(form).to_have_count(0)

        berlin = page.locator("#city-1-row")
        berlin.locator(".place-meta").tap()  # anywhere on the row
        expect(page.get_by_label("City name")).to_be_focused()
        assert_fits_a_phone(page, "a place's form")
        page.get_by_label("City name").fill("Łódź <Centrum>")
        page.get_by_role("button", name="Save", exact=True).tap()
        expect(page.locator("#city-1-row [role=alert]")).to_contain_text("That name is taken")
        assert_fits_a_phone(page, "a place's form, refused")
        page.locator("#city-1-row").get_by_role("link", name="Cancel").tap()
        page.get_by_text("Add a city or a district").tap()
        assert_fits_a_phone(page, "adding a place")

        cities = page.locator("#places li.city > .place-row .place-name")
        expect(cities).to_have_text(["Berlin", "Łódź <Centrum>"])
        lodz = page.locator("#places li.city").nth(1).locator("> .place-row [data-handle]")
        lodz.scroll_into_view_if_needed()
        touch_drag(page, lodz, page.locator("#city-1"))
        expect(page.locator("#places-status")).to_have_text(
            "Order saved: shoppers see the places in this order."
        )
        expect(cities).to_have_text(["Łódź <Centrum>", "Berlin"])
    finally:
        context.close()


# Each table's cells, with their column's heading, their label and how the label shows.
CELLS = """() => [...document.querySelectorAll('table.rows')].flatMap(table => {
    const heads = [...table.tHead.rows[0].cells].map(th => th.textContent);
    return [...table.tBodies[0].rows].flatMap(tr => [...tr.cells].map((td, i) => [
        heads[i], td.dataset.label ?? null, td.className,
        getComputedStyle(td, '::before').content, td.colSpan]));
})"""


def test_tables_become_labelled_rows_on_a_phone(browser, busy_shop):
    ids = busy_shop.ids
    context, page = open_tab(browser, busy_shop, PHONE, phone=True)
    try:
        for path in admin_pages(ids):
            page.goto(busy_shop.url + path)
            for heading, label, classes, shown, span in page.evaluate(CELLS):
                if span > 1 or not heading:  # "No orders match."; the "banned" mark
                    continue
                if label is None and "key" in classes.split():  # a card's title: #12, a name
                    continue
                if label is None and "actions" in classes.split():  # buttons say what they do
                    continue
                # Each value says what it is, as its column's heading did on a wide screen.
                assert label == heading, (path, heading, label)
                if (
                    "aside" not in classes.split()
                ):  # a status in the card's corner speaks for itself
                    assert shown == f'"{heading}"', (path, heading, shown)
            expect(page.locator("table.rows > thead")).to_have_count(
                page.locator("table.rows").count()
            )
            for thead in page.locator("table.rows > thead").all():
                expect(thead).to_be_hidden()

        page.goto(busy_shop.url + f"/admin/orders/{ids['crypto_order']}")
        goods = page.locator("td.content").first
        expect(goods).to_contain_text(LONG_CODE)  # wrapped, not cut
        assert goods.bounding_box()["width"] < PHONE["width"] - 40

        page.goto(busy_shop.url + "/admin/orders")
        card = page.locator("#orders tbody tr").filter(
            has=page.get_by_role("link", name=f"#{ids['crypto_order']}", exact=True)
        )
        created, total = (
            card.locator("td[data-label='Created (UTC)']"),
            card.locator("td[data-label='Total']"),
        )
        assert total.bounding_box()["y"] > created.bounding_box()["y"]  # stacked, not side by side
        total.scroll_into_view_if_needed()
        box = total.bounding_box()  # anywhere on the card opens the order
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("main h1")).to_contain_text(f"Order #{ids['crypto_order']}")
        page.go_back()
        card.get_by_role("link", name="Anna-Maria").tap()  # its other links still work
        expect(page.locator("main h1")).to_contain_text("Anna-Maria")
    finally:
        context.close()


def test_the_menu_is_one_button_on_a_phone_and_opens_by_keyboard_and_touch(browser, busy_shop):
    context, page = open_tab(browser, busy_shop, PHONE, phone=True)
    try:
        menu = page.locator("header summary")
        links = page.locator("header nav a")
        expect(menu).to_be_visible()
        expect(menu).to_have_text(re.compile("Menu"))
        expect(links.first).to_be_hidden()
        expect(page.get_by_role("button", name="Log out")).to_be_hidden()
        header = page.locator("header").bounding_box()
        assert header["height"] < 70, header  # one row, not five

        menu.tap()
        for link in links.all():
            expect(link).to_be_visible()
            assert link.bounding_box()["height"] >= 44
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        page.locator("header nav").get_by_role("link", name="Orders", exact=True).tap()
        expect(page.locator("main h1")).to_have_text("Orders")
        expect(links.first).to_be_hidden()  # a new page starts with the menu closed
        expect(page.locator("header nav a.on")).to_have_text("Orders")

        page.keyboard.press("Tab")  # the keyboard: the shop's name, then the menu
        page.keyboard.press("Tab")
        expect(menu).to_be_focused()
        assert menu.evaluate("e => e.matches(':focus-visible')")
        assert menu.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"
        page.keyboard.press("Enter")
        expect(links.first).to_be_visible()
        page.keyboard.press("Enter")
        expect(links.first).to_be_hidden()
    finally:
        context.close()


def test_on_a_desk_the_menu_is_a_row_of_links(browser, busy_shop):
    context, page = open_tab(browser, busy_shop, DESK, phone=False)
    try:
        expect(page.locator("header summary")).to_be_hidden()
        links = page.locator("header nav a")
        expect(links).to_have_count(10)
        tops = {round(b["y"]) for b in (link.bounding_box() for link in links.all())}
        assert len(tops) == 1, tops  # one row
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        for path in admin_pages(busy_shop.ids):
            page.goto(busy_shop.url + path)
            widths = page.evaluate(WIDTHS)
            assert widths["scroll"] <= widths["inner"], (path, widths)
        page.goto(busy_shop.url + "/admin/orders")
        expect(page.locator("#orders thead")).to_be_visible()  # a table, as before
    finally:
        context.close()
