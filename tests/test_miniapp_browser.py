"""The Mini App as shoppers use it: headless Chromium against the real shop (and its bot on the
stand-in).

Inside "Telegram" the page gets a stand-in window.Telegram.WebApp (STUB below) that records what the
app asks of Telegram: MainButton and BackButton state, haptics, alerts. telegram.org itself is
unreachable. Stars invoices the app opens with openInvoice are recorded too (window.__tg.invoices),
and window.__invoiceClosed(status) plays Telegram closing the last one with that status. The stub
is the Telegram version the test asks for (8.0 unless told): full screen and the home screen
(Bot API 8.0) are recorded in window.__tg.fullscreen / .homeScreen, and window.__tgEvent(name,
data) plays one of Telegram's events.
"""

import functools
import gettext
import json
import re
import time
from pathlib import Path

import pytest

import shop
from conftest import BROWSER_WAIT_MS as WAIT_MS
from conftest import ROOT, TOKEN, expect, png, seed, user


# Names as owners type them: they must show literally, never as markup.
TEA = '<img src=x onerror="window.__pwned=1">Tea & "Co"'
TEA_TEXT = "Green <b>sencha</b>\n100 g & more"
LOCKER = "Locker 7 <door>\nCode: 11&22"

DARK = {
    "bg_color": "#17212b",
    "text_color": "#f5f5f5",
    "hint_color": "#708499",
    "link_color": "#6ab3f3",
    "button_color": "#5288c1",
    "button_text_color": "#ffffff",
    "secondary_bg_color": "#232e3c",
}
LIGHT = {
    "bg_color": "#ffffff",
    "text_color": "#000000",
    "hint_color": "#999999",
    "link_color": "#2481cc",
    "button_color": "#2481cc",
    "button_text_color": "#ffffff",
    "secondary_bg_color": "#efeff3",
}

# What Telegram's client provides, minus any painting; window.__tg records,
# __mainButton/__backButton press.
STUB = """
(() => {
  const cfg = __CONFIG__;
  const rec = window.__tg = { main: { text: "", visible: false, active: true, progress: false },
    back: { visible: false }, haptics: [], alerts: [], confirms: [], links: [], invoices: [],
    fullscreen: [], homeScreen: [], ready: false };
  const on = { main: [], back: [], events: {} };
  const chain = (obj, fns) => {
    for (const [k, f] of Object.entries(fns)) obj[k] = (...a) => { f(...a); return obj; };
    return obj;
  };
  const MainButton = chain({}, {
    setText: (t) => { rec.main.text = String(t); }, show: () => { rec.main.visible = true; },
    hide: () => { rec.main.visible = false; }, enable: () => { rec.main.active = true; },
    disable: () => { rec.main.active = false; }, showProgress: () => { rec.main.progress = true; },
    hideProgress: () => { rec.main.progress = false; },
    setParams: (p) => { if ("text" in p) rec.main.text = p.text;
                        if ("is_visible" in p) rec.main.visible = p.is_visible;
                        if ("is_active" in p) rec.main.active = p.is_active; },
    onClick: (f) => on.main.push(f),
    offClick: (f) => { on.main = on.main.filter((g) => g !== f); } });
  const BackButton = chain({}, {
    show: () => { rec.back.visible = true; }, hide: () => { rec.back.visible = false; },
    onClick: (f) => on.back.push(f),
    offClick: (f) => { on.back = on.back.filter((g) => g !== f); } });
  window.__mainButton = { click() {
    if (!rec.main.visible || !rec.main.active)
      throw new Error("the MainButton is hidden or disabled: " + JSON.stringify(rec.main));
    on.main.forEach((f) => f());
  } };
  window.__backButton = { click() {
    if (!rec.back.visible) throw new Error("the BackButton is hidden");
    on.back.forEach((f) => f());
  } };
  const atLeast = (v) => {
    const [a, b] = [cfg.version, v].map((x) => x.split(".").map(Number));
    return a[0] > b[0] || (a[0] === b[0] && (a[1] || 0) >= (b[1] || 0));
  };
  const fire = window.__tgEvent = (name, data) => (on.events[name] || []).forEach((f) => f(data));
  const W = {
    initData: cfg.initData, initDataUnsafe: { user: cfg.user, auth_date: cfg.authDate },
    version: cfg.version,
    platform: "android", colorScheme: cfg.colorScheme, themeParams: cfg.themeParams,
    MainButton, BackButton,
    HapticFeedback: {
      impactOccurred: (s) => rec.haptics.push("impact:" + s),
      notificationOccurred: (s) => rec.haptics.push("notification:" + s),
      selectionChanged: () => rec.haptics.push("selection") },
    showAlert: (m, cb) => { rec.alerts.push(String(m)); if (cb) setTimeout(cb, 0); },
    showConfirm: (m, cb) => {
      rec.confirms.push(String(m)); if (cb) setTimeout(() => cb(true), 0); },
    openLink: (u) => rec.links.push(u), ready: () => { rec.ready = true; }, expand: () => {},
    openInvoice: (u, cb) => { rec.invoices.push(String(u));
                              window.__invoiceClosed = (status) => cb && cb(status); },
    onEvent: (e, f) => { (on.events[e] = on.events[e] || []).push(f); }, offEvent: () => {},
    isVersionAtLeast: atLeast, isFullscreen: false,
    safeAreaInset: { top: 0, bottom: 0, left: 0, right: 0 },
    contentSafeAreaInset: { top: 0, bottom: 0, left: 0, right: 0 } };
  if (atLeast("8.0")) {   // Bot API 8.0; in full screen Telegram's buttons take the top 46 px
    const full = (yes) => {
      rec.fullscreen.push(yes ? "request" : "exit");
      const failed = (error) => fire("fullscreenFailed", { error });
      if (W.isFullscreen === yes) { failed("ALREADY_FULLSCREEN"); return; }
      if (!cfg.fullscreenWorks) { failed("UNSUPPORTED"); return; }
      W.isFullscreen = yes;
      W.contentSafeAreaInset = { top: yes ? 46 : 0, bottom: 0, left: 0, right: 0 };
      fire("fullscreenChanged"); fire("contentSafeAreaChanged");
    };
    Object.assign(W, {
      requestFullscreen: () => full(true), exitFullscreen: () => full(false),
      addToHomeScreen: () => rec.homeScreen.push("add"),
      checkHomeScreenStatus: (cb) => { rec.homeScreen.push("check");
                                       setTimeout(() => cb(cfg.homeScreen), 0); } });
  }
  window.Telegram = { WebApp: W };
})();
"""


@pytest.fixture
def live(make_shop, fake_tg):
    """A sandbox shop whose bot talks to the stand-in, so initData is signed with the bot token."""
    s = make_shop(env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url})
    s.conn = shop.connect(s.config.shop_db)
    yield s
    s.conn.close()


@pytest.fixture
def botless(make_shop):
    """A sandbox shop without a bot: only the web server, its jobs and the payment emulator."""
    s = make_shop()
    s.conn = shop.connect(s.config.shop_db)
    yield s
    s.conn.close()


def stock(s):
    """Berlin/Mitte: the tea (2 units, a photo, one unit with a locker photo); Berlin/Pankow: a
    mug."""
    conn = s.conn
    ids = seed(conn, [("Berlin", "Mitte", TEA, 1290, 2), ("Berlin", "Pankow", "Mug", 800, 3)])
    tea, _ = ids[(TEA, "Mitte")]
    photo = shop.store_media(s.config.media_dir, png(8, 8, (30, 140, 60)), "png", private=False)
    locker = shop.store_media(s.config.media_dir, png(6, 4, (200, 30, 30)), "png", private=True)
    with shop.transaction(conn):
        conn.execute(
            "UPDATE products SET photo = ?, description = ? WHERE id = ?", (photo, TEA_TEXT, tea)
        )
        first = conn.execute(
            "SELECT min(id) FROM stock_units WHERE product_id = ?", (tea,)
        ).fetchone()[0]
        conn.execute(
            "UPDATE stock_units SET content = ?, media = ? WHERE id = ?", (LOCKER, locker, first)
        )
    return ids


class MiniApp:
    """One shopper's Mini App in a browser tab."""

    def __init__(self, page):
        self.page = page

    def tg(self, what):
        """What the app asked of Telegram (the stub's records), e.g. tg("haptics")."""
        return self.page.evaluate(f"window.__tg.{what}")

    def press_main(self, text):
        """Wait until the MainButton offers `text` (a prefix) and press it."""
        self.page.wait_for_function(
            "t => { const m = window.__tg.main; return m.visible && m.active && !m.progress && "
            "m.text.startsWith(t); }",
            arg=text,
            timeout=WAIT_MS,
        )
        self.page.evaluate("window.__mainButton.click()")

    def press_back(self):
        self.page.wait_for_function("() => window.__tg.back.visible", timeout=WAIT_MS)
        self.page.evaluate("window.__backButton.click()")

    def button(self, name):
        return self.page.get_by_role("button", name=name)

    def heading(self):
        return self.page.locator("main h1")

    def image_loaded(self, selector):
        """Wait until the image has really been decoded; return its src."""
        self.page.wait_for_function(
            "s => { const i = document.querySelector(s); return i && i.complete && "
            "i.naturalWidth > 0; }",
            arg=selector,
            timeout=WAIT_MS,
        )
        return self.page.eval_on_selector(selector, "i => i.src")


@pytest.fixture
def open_app(browser):
    """Factory: open_app(shop, user_id) is the Mini App as Telegram opens it for that user;
    telegram=False is the page in a plain browser. Its tabs are closed after the test (list this
    fixture last, so that happens before the shop stops)."""
    contexts = []

    def open_(s, user_id=None, viewport=None, color_scheme="light", **kw):
        context = browser.new_context(
            viewport=viewport or {"width": 390, "height": 800}, color_scheme=color_scheme
        )
        contexts.append(context)
        return _open(context, s, user_id, **kw)

    yield open_
    for context in contexts:
        context.close()


def _open(
    context,
    s,
    user_id,
    *,
    theme=LIGHT,
    scheme="light",
    telegram=True,
    auth_date=None,
    version="8.0",
    home_screen="missed",
    fullscreen_works=True,
    language_code="en",
):
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=s.url)
    context.set_default_timeout(WAIT_MS)
    context.route("https://telegram.org/**", lambda route: route.abort())
    if telegram:
        tg_user = {
            "id": user_id,
            "first_name": "Ann",
            "username": "ann",
            "language_code": language_code,
        }
        auth_date = int(time.time()) if auth_date is None else auth_date
        init_data = shop.sign_init_data(tg_user, s.webapp_token, auth_date, query_id="AAtest")
        config = {
            "initData": init_data,
            "user": tg_user,
            "authDate": auth_date,
            "themeParams": theme,
            "colorScheme": scheme,
            "version": version,
            "homeScreen": home_screen,
            "fullscreenWorks": fullscreen_works,
        }
        context.add_init_script(STUB.replace("__CONFIG__", json.dumps(config)))
    page = context.new_page()
    page.errors, page.asked = [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.asked.append(r.url))
    page.goto(s.url + "/app")
    return MiniApp(page)


def text_of(locator):
    """The element's text exactly as shown (no whitespace folding)."""
    return locator.evaluate("e => e.textContent")


# Stories #####################################################################


def test_a_shopper_browses_fills_the_basket_the_bot_sees_and_pays_in_crypto(
    live, fake_tg, open_app
):
    stock(live)
    ann = open_app(live, 101)
    page = ann.page
    fake_tg.wait_for(lambda: live.bot_state == "running", what="the bot polling")

    ann.button(re.compile("^Berlin")).click()
    expect(ann.heading()).to_have_text("Berlin")
    assert ann.tg("back.visible")
    ann.button(re.compile("^Mitte")).click()
    card = page.locator(".card").filter(has_text="€12.90")
    expect(card).to_contain_text("2 available")
    expect(card.locator(".card-name")).to_have_text(TEA)  # the owner's name, literally
    ann.image_loaded(".card img")
    card.click()
    expect(ann.heading()).to_have_text(TEA)
    assert text_of(page.locator(".description")) == TEA_TEXT
    ann.press_back()  # BackButton: back to the grid
    expect(ann.heading()).to_have_text("Mitte")
    card.click()

    ann.press_main("Add to basket · €12.90")
    qty = page.locator(".stepper output")
    expect(qty).to_have_text("1")
    assert "impact:medium" in ann.tg("haptics")
    ann.button(f"One more {TEA}").click()
    expect(qty).to_have_text("2")
    expect(ann.button(f"One more {TEA}")).to_be_disabled()  # only 2 in stock
    expect(page.locator(".tab .count")).to_have_text("2 items")  # "2" on the tab, then read out
    expect(page.locator(".tab").nth(1)).to_have_accessible_name("Basket 2 items")

    # The basket is the bot's basket too.
    fake_tg.user_sends(101, "🧺 Basket")
    assert "2 × €12.90 = €25.80" in fake_tg.wait_message(101, "Your basket").content

    ann.press_main("View basket · €25.80")
    expect(ann.heading()).to_have_text("Basket")
    ann.press_main("Checkout · €25.80")
    expect(page.locator(".option[data-key=balance]")).to_be_disabled()  # €0.00, €25.80 short
    expect(page.locator(".option[data-key=balance]")).to_contain_text("€25.80 short")
    page.locator(".option[data-key=btc]").click()
    ann.press_main("Pay €25.80 with BTC")

    expect(ann.heading()).to_have_text("Order #1 · €25.80")
    payment = live.conn.execute("SELECT * FROM payments").fetchone()
    expect(page.locator(".pay-amount")).to_have_text(payment["pay_amount"])
    expect(page.locator(".copy-row code").nth(1)).to_have_text(payment["pay_address"])
    assert ann.image_loaded(".qr").startswith("blob:")
    expect(page.locator(".countdown")).to_contain_text(re.compile(r"Pay within (30:00|29:\d\d)"))
    expect(page.locator(".status")).to_contain_text("Waiting for your payment")
    ann.button("Copy address").click()
    assert page.evaluate("navigator.clipboard.readText()") == payment["pay_address"]

    ann.button("Pay in full").click()
    expect(page.locator(".status .pill")).to_have_text(
        "✅ Paid", timeout=15000
    )  # by itself: no reload
    assert "notification:success" in ann.tg("haptics")
    expect(page.locator(".pay-details")).to_be_hidden()

    ann.press_main("Open my orders")
    order = page.locator("#order-1")
    expect(order).to_contain_text("✅ Paid")
    contents = page.locator("#order-1 .content")
    expect(contents).to_have_count(2)
    assert sorted(text_of(contents.nth(i)) for i in range(2)) == sorted([LOCKER, f"{TEA}-Mitte-1"])
    assert ann.image_loaded("#order-1 img.media").startswith(
        "blob:"
    )  # the locker photo, for its buyer only
    expect(page.locator(".tab .count")).to_be_hidden()  # bought, so out of the basket

    # And the bot knows the order.
    fake_tg.user_sends(101, "📦 Orders")
    orders = fake_tg.wait_message(101, "Your orders")
    assert any(
        t.startswith("#1 ·") and "€25.80" in t and t.endswith("paid") for t in orders.button_texts
    )
    assert page.evaluate("window.__pwned") is None and page.locator("img[src=x]").count() == 0
    assert page.errors == []


def test_a_top_up_raises_the_balance_and_then_pays_for_an_order(live, open_app):
    stock(live)
    ann = open_app(live, 102)
    page = ann.page
    balance = page.locator(".balance-chip")
    expect(balance).to_have_text("€0.00")

    page.locator(".tab").filter(has_text="Balance").click()
    expect(ann.heading()).to_have_text("Balance")
    page.get_by_label("Amount in EUR").fill("20,50")
    page.locator(".option[data-key=ltc]").click()
    ann.press_main("Top up €20.50 with LTC")
    expect(ann.heading()).to_have_text("Top-up · €20.50")
    payment = live.conn.execute("SELECT * FROM payments WHERE kind = 'topup'").fetchone()
    expect(page.locator(".pay-amount")).to_have_text(payment["pay_amount"])
    ann.button("Pay in full").click()
    expect(page.locator(".status")).to_contain_text(
        "€20.50 was added to your balance.", timeout=15000
    )
    expect(balance).to_have_text("€20.50")

    page.locator(".tab").filter(has_text="Shop").click()
    ann.button(re.compile("^Berlin")).click()
    ann.button(re.compile("^Mitte")).click()
    page.locator(".card").first.click()
    ann.button("Buy now").click()
    expect(ann.heading()).to_have_text("Checkout")
    erc20 = page.locator(".net[data-key=usdterc20]")  # USDT on the ERC20 network
    expect(erc20).to_be_disabled()  # its minimum is above €12.90
    expect(erc20).to_contain_text("from €18.60")
    expect(page.locator(".option[data-key=balance]")).to_have_attribute("aria-checked", "true")
    expect(page.locator("main")).not_to_contain_text("null")
    ann.press_main("Pay €12.90 from balance")
    # The paid screen shows the goods at once, as after a crypto or Stars payment.
    expect(ann.heading()).to_have_text("Order #1 · €12.90")
    expect(page.locator(".status .pill")).to_have_text("✅ Paid")
    expect(page.locator(".status")).to_contain_text("Paid from your balance; €7.60 is left.")
    expect(page.locator(".goods .content")).to_have_count(1)
    expect(balance).to_have_text("€7.60")
    ann.press_main("Open my orders")
    expect(page.locator(".order.highlight")).to_contain_text("✅ Paid")
    expect(page.locator(".order.highlight .content")).to_have_count(1)
    assert shop.get_user(live.conn, 102)["balance_cents"] == 760
    assert page.errors == []


def test_someone_else_buys_the_last_unit_and_the_shop_says_so_in_an_alert(botless, open_app):
    ids = stock(botless)
    ann = open_app(botless, 103)
    page = ann.page
    ann.button(re.compile("^Berlin")).click()
    ann.button(re.compile("^Mitte")).click()
    page.locator(".card").first.click()
    ann.press_main("Add to basket")
    expect(page.locator(".stepper output")).to_have_text("1")

    user(botless.conn, 7, balance=5000)  # meanwhile, Bob buys one of the two
    shop.buy_with_balance(botless.conn, 7, [(*ids[(TEA, "Mitte")], 1)])
    ann.button(f"One more {TEA}").click()
    page.wait_for_function("() => window.__tg.alerts.length > 0")
    assert ann.tg("alerts") == [f"Sorry, only 1 of {TEA} is available in Berlin / Mitte."]
    assert "notification:error" in ann.tg("haptics")
    expect(page.locator(".stepper output")).to_have_text("1")
    expect(page.locator(".price-row .stock")).to_have_text(
        "1 available"
    )  # the page shows the stock as it is now
    expect(ann.button(f"One more {TEA}")).to_be_disabled()


def test_in_a_plain_browser_the_sandbox_runs_a_labelled_preview_shopper(botless, open_app):
    stock(botless)
    app = open_app(botless, telegram=False)
    page = app.page
    expect(page.locator(".badge.preview")).to_have_text("Preview (sandbox)")
    expect(page.locator(".preview-note")).to_contain_text("preview shopper")
    app.button(re.compile("^Berlin")).click()
    app.button(re.compile("^Pankow")).click()
    page.locator(".card").filter(has_text="Mug").click()
    main = page.locator(".main-button")  # the page's own, outside Telegram
    expect(main).to_have_text("Add to basket · €8.00")
    main.click()
    expect(main).to_have_text("View basket · €8.00")
    main.click()
    expect(main).to_have_text("Checkout · €8.00")
    main.click()
    page.locator(".option[data-key=ltc]").click()
    expect(main).to_have_text("Pay €8.00 with LTC")
    main.click()
    expect(page.locator(".pay-amount")).to_be_visible()
    app.button("Pay in full").click()
    expect(page.locator(".status .pill")).to_have_text("✅ Paid", timeout=15000)
    page.locator(".tab").filter(has_text="Orders").click()
    expect(page.locator(".order .content")).to_have_text(re.compile(r"^Mug-Pankow-\d$"))
    assert botless.conn.execute("SELECT id FROM orders").fetchone()[0] == 1
    assert (
        botless.conn.execute("SELECT user_id FROM orders").fetchone()[0] == shop.PREVIEW_USER["id"]
    )
    assert page.errors == []


def test_in_production_outside_telegram_it_asks_to_be_opened_from_the_bot(make_shop, open_app):
    s = make_shop(
        env={"NOWPAYMENTS_API_KEY": "live-key", "NOWPAYMENTS_API_URL": "http://127.0.0.1:9/v1"}
    )
    app = open_app(s, telegram=False)
    expect(app.page.locator(".fatal")).to_contain_text("Please open the shop from the Telegram bot")
    expect(app.page.locator(".tabs")).to_have_count(0)
    assert not any("/api/" in url or "/app/preview" in url for url in app.page.asked)


def test_a_session_older_than_a_day_is_told_to_open_the_shop_again(botless, open_app):
    app = open_app(botless, 105, auth_date=1_700_000_000)
    expect(app.page.locator(".fatal")).to_contain_text(
        "older than 24 hours: close the shop and open it again"
    )
    assert app.tg("main.visible") is False


def test_the_app_wears_telegrams_theme_dark_or_light(botless, open_app):
    background = "getComputedStyle(document.body).backgroundColor"
    for theme, scheme, colour in (
        (DARK, "dark", "rgb(23, 33, 43)"),
        (LIGHT, "light", "rgb(255, 255, 255)"),
        ({}, "dark", "rgb(23, 33, 43)"),
    ):  # no theme params: the dark fallbacks
        app = open_app(botless, 104, theme=theme, scheme=scheme)
        expect(app.page.locator(".tabs")).to_be_visible()
        assert app.page.evaluate(background) == colour, (theme, scheme)
        if theme:
            text = app.page.evaluate("getComputedStyle(document.body).color")
            assert text == ("rgb(245, 245, 245)" if scheme == "dark" else "rgb(0, 0, 0)")


def test_the_app_is_small_and_builds_no_html_from_data():
    files = sorted((ROOT / "static" / "app").rglob("*.js")) + sorted(
        (ROOT / "static" / "app").rglob("*.css")
    )
    template = ROOT / "templates" / "app.tpl"
    total = sum(f.stat().st_size for f in files + [template])
    assert total < 100_000, (
        f"the Mini App is {total} bytes: {[(f.name, f.stat().st_size) for f in files]}"
    )
    for f in files:
        if f.suffix == ".js":
            code = f.read_text(encoding="utf-8")
            for banned in (
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ):
                assert banned not in code, f"{f.name} uses {banned}"
    page = template.read_text(encoding="utf-8")
    assert " style=" not in page and "<style" not in page
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert all(not body.strip() for _, body in scripts), "no inline scripts (the CSP forbids them)"
    assert [re.search(r'src="([^"]+)"', attrs).group(1) for attrs, _ in scripts] == [
        "https://telegram.org/js/telegram-web-app.js",
        "/static/app/app.js",
    ]


# Telegram Stars ##############################################################

EBOOK = "E-book <licence>"


def stars_stock(s):
    """Berlin/Mitte: a digital e-book (€25.00: 1,250 Stars at the default rate; by Telegram's rule
    paid in Stars only) and physical coffee beans (€12.90, paid in crypto or from the balance)."""
    ids = seed(
        s.conn, [("Berlin", "Mitte", EBOOK, 2500, 2), ("Berlin", "Mitte", "Coffee", 1290, 3)]
    )
    with shop.transaction(s.conn):
        s.conn.execute(
            "UPDATE products SET kind = 'digital' WHERE id = ?", (ids[(EBOOK, "Mitte")][0],)
        )
        s.conn.execute(
            "UPDATE products SET kind = 'physical', pay_methods = 'crypto,balance' WHERE id = ?",
            (ids[("Coffee", "Mitte")][0],),
        )
    return ids


def open_mitte(app):
    app.button(re.compile("^Berlin")).click()
    app.button(re.compile("^Mitte")).click()
    expect(app.heading()).to_have_text("Mitte")


# A screen at 390 px, scrolled to its end: nothing wider than the screen, and nothing to read or tap
# under the dock (the page's own main button outside Telegram, and the tabs) or under a toast.
LAYOUT = """() => {
  window.scrollTo(0, document.scrollingElement.scrollHeight);
  const problems = [];
  const wide = document.scrollingElement.scrollWidth;
  if (wide > innerWidth) problems.push(`the page is ${wide}px wide in a ${innerWidth}px screen`);
  const dock = document.querySelector(".dock");
  const floor = dock ? dock.getBoundingClientRect().top : innerHeight;
  const ownText = (e) => [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  const say = (e) => `<${e.tagName.toLowerCase()} class="${e.className}"> ` +
    (e.textContent || e.getAttribute("alt") || "").trim().slice(0, 40);
  for (const e of document.querySelectorAll("header *, aside, main *, .toast")) {
    const r = e.getBoundingClientRect();
    if (!r.width || !r.height || getComputedStyle(e).visibility === "hidden") continue;
    if (!e.matches("button, a, input, img, [role=radio]") && !ownText(e)) continue;
    if (r.right > innerWidth + 0.5 || r.left < -0.5) problems.push(`${say(e)} sticks out sideways`);
    if (r.bottom > floor + 0.5 && r.top < innerHeight) {
      problems.push(`${say(e)} is under the dock (${Math.round(r.bottom)} > ${Math.round(floor)})`);
    }
  }
  return problems;
}"""


def settle(page):
    """Wait until the screen is drawn and its images have loaded (they may move what is below)."""
    page.wait_for_function(
        """() => { const m = document.getElementById("app");
        return !m.hasAttribute("aria-busy") &&
          [...m.querySelectorAll("img")].every((i) => i.getAttribute("src") && i.complete); }"""
    )


def covers_nothing(page, screen=""):
    """The screen scrolls no way but down, and the dock covers none of it at its end."""
    settle(page)
    problems = page.evaluate(LAYOUT)
    assert not problems, f"{screen}: {problems}"


def sold(conn, product_id):
    return conn.execute(
        "SELECT count(*) FROM stock_units WHERE product_id = ? AND status = 'sold'", (product_id,)
    ).fetchone()[0]


def test_a_digital_product_is_paid_in_stars_in_the_sandbox_preview(botless, open_app):
    ids = stars_stock(botless)
    app = open_app(botless, telegram=False)
    page = app.page
    open_mitte(app)
    expect(page.locator(".card").filter(has_text=EBOOK).locator(".price")).to_have_text(
        "€25.00 · 1,250 ⭐"
    )
    expect(page.locator(".card").filter(has_text="Coffee").locator(".price")).to_have_text(
        "€12.90"
    )  # not paid in Stars
    page.locator(".card").filter(has_text=EBOOK).click()
    expect(page.locator(".price-row .price")).to_have_text("€25.00 · 1,250 ⭐")
    app.button("Buy now").click()

    # Telegram's rule: a digital product is paid in Stars only, and the page says why.
    options = page.locator(".option")
    expect(options).to_have_count(1)
    expect(options.first).to_have_attribute("data-key", "stars")
    expect(options.first).to_contain_text("⭐ Telegram Stars — 1,250 ⭐")
    expect(options.first).to_have_attribute("aria-checked", "true")
    expect(page.locator(".rule-note")).to_have_text(
        "Digital goods are paid in Telegram Stars, by Telegram's rule."
    )
    main = page.locator(".main-button")
    expect(main).to_have_text("Pay 1,250 ⭐")
    covers_nothing(page)
    main.click()

    expect(app.heading()).to_have_text("Order #1 · 1,250 ⭐")
    expect(page.locator(".status .pill")).to_have_text("⏳ Waiting for your payment")
    expect(page.locator(".status .sandbox")).to_contain_text("no real Stars")
    expect(page.locator(".countdown")).to_contain_text("Pay within")
    pay = app.button("🧪 Pay 1,250 ⭐ (simulated)")
    pay.dblclick()  # a double tap pays once
    expect(page.locator(".status .pill")).to_have_text("✅ Paid")
    expect(page.locator(".status")).to_contain_text("Paid with 1,250 ⭐. Here are your items")
    expect(page.locator(".goods .content")).to_have_text(
        re.compile(rf"^{re.escape(EBOOK)}-Mitte-\d$")
    )
    expect(pay).to_have_count(0)
    expect(page.locator(".pay-details")).to_be_hidden()
    expect(main).to_have_text("Open my orders")
    covers_nothing(page)

    conn, ebook = botless.conn, ids[(EBOOK, "Mitte")][0]
    orders = conn.execute("SELECT status, payment_method FROM orders").fetchall()
    assert [tuple(o) for o in orders] == [("paid", "stars")]
    payments = conn.execute("SELECT status, pay_currency, pay_amount, charge_id FROM payments")
    [(status, currency, amount, charge)] = payments.fetchall()
    assert (status, currency, amount) == ("finished", "xtr", "1250") and charge
    assert sold(conn, ebook) == 1  # delivered exactly once
    assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] == 1

    main.click()
    expect(page.locator("#order-1")).to_contain_text("€25.00 · 1,250 ⭐ · Stars")
    expect(page.locator("#order-1 .content")).to_have_count(1)
    assert page.errors == []


def test_in_telegram_a_stars_purchase_in_the_sandbox_is_delivered_once(live, fake_tg, open_app):
    ids = stars_stock(live)
    ann = open_app(live, 101)
    page = ann.page
    fake_tg.wait_for(lambda: live.bot_state == "running", what="the bot polling")
    fake_tg.user_sends(101, "/start")  # Ann has a chat with the bot, where her goods go
    open_mitte(ann)
    page.locator(".card").filter(has_text=EBOOK).click()
    ann.button("Buy now").click()
    expect(page.locator(".option")).to_have_count(1)
    ann.press_main("Pay 1,250 ⭐")
    expect(ann.heading()).to_have_text("Order #1 · 1,250 ⭐")
    assert ann.tg("invoices") == []  # the sandbox has no Telegram invoice to open
    ann.button("🧪 Pay 1,250 ⭐ (simulated)").click()
    expect(page.locator(".goods .content")).to_have_count(1)
    assert "notification:success" in ann.tg("haptics")
    fake_tg.wait_message(101, "Order #1 is paid")
    content = text_of(page.locator(".goods .content"))
    fake_tg.wait_message(101, content)
    ann.press_main("Open my orders")  # by now the outbox has sent what it will
    expect(page.locator("#order-1")).to_contain_text("· Stars")
    texts = [m.content for m in fake_tg.messages(101)]
    assert sum("Order #1 is paid" in t for t in texts) == 1
    assert sum(content in t for t in texts) == 1
    assert sold(live.conn, ids[(EBOOK, "Mitte")][0]) == 1
    assert page.errors == []


def test_real_stars_open_telegrams_invoice_and_the_shops_status_decides(
    make_shop, fake_tg, open_app
):
    s = make_shop(
        env={
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": fake_tg.base_url,
            "NOWPAYMENTS_API_KEY": "live-key",
            "NOWPAYMENTS_API_URL": "http://127.0.0.1:9/v1",
        }
    )
    s.conn = shop.connect(s.config.shop_db)
    try:
        ids = stars_stock(s)
        ann = open_app(s, 101)
        page = ann.page
        fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
        fake_tg.user_sends(101, "/start")
        open_mitte(ann)
        page.locator(".card").filter(has_text=EBOOK).click()
        ann.button("Buy now").click()
        ann.press_main("Pay 1,250 ⭐")
        expect(ann.heading()).to_have_text("Order #1 · 1,250 ⭐")
        page.wait_for_function("() => window.__tg.invoices.length === 1")
        [link] = ann.tg("invoices")
        assert link.startswith("https://t.me/$")
        assert [i["url"] for i in fake_tg.invoice_links()] == [link]
        expect(page.locator(".simulate-stars")).to_have_count(0)  # no 🧪 outside the sandbox

        # Telegram's callback is a hint: "paid" alone changes nothing the shop has not seen.
        page.evaluate("window.__invoiceClosed('paid')")
        expect(page.locator(".status .hint")).to_have_text(
            "Telegram says it is paid: waiting for the shop to confirm…"
        )
        expect(page.locator(".status .pill")).to_have_text("⏳ Waiting for your payment")
        assert s.conn.execute("SELECT status FROM orders").fetchone()[0] == "pending"

        payment = fake_tg.user_pays(101, link, duplicate_successful_payment=True)
        assert payment.status == "paid"
        expect(page.locator(".status .pill")).to_have_text("✅ Paid")
        expect(page.locator(".goods .content")).to_have_count(1)
        fake_tg.wait_message(101, text_of(page.locator(".goods .content")))
        ann.press_main("Open my orders")
        expect(page.locator("#order-1")).to_contain_text("1,250 ⭐ · Stars")
        texts = [m.content for m in fake_tg.messages(101)]
        assert sum("Order #1 is paid" in t for t in texts) == 1
        assert sold(s.conn, ids[(EBOOK, "Mitte")][0]) == 1
        assert page.errors == []
    finally:
        s.conn.close()


def test_a_basket_that_shares_no_way_to_pay_is_paid_one_part_at_a_time(botless, open_app):
    ids = stars_stock(botless)
    shop.touch_user(botless.conn, shop.PREVIEW_USER)
    for product in (EBOOK, "Coffee"):
        shop.add_to_basket(botless.conn, shop.PREVIEW_USER["id"], *ids[(product, "Mitte")])
    app = open_app(botless, telegram=False)
    page = app.page
    page.locator(".tab").filter(has_text="Basket").click()
    expect(page.locator(".split-note")).to_contain_text("paid in different ways")
    main = page.locator(".main-button")
    expect(main).to_have_text("Checkout · €37.90")
    main.click()

    # Never refused: each part with its ways and total, and a way to pay one of them.
    expect(page.locator(".split-note")).to_contain_text("the rest stays in your basket")
    expect(page.locator(".rule-note")).to_be_visible()
    parts = page.locator(".part")
    expect(parts).to_have_count(2)
    expect(parts.nth(0)).to_contain_text(f"{EBOOK} × 1")
    expect(parts.nth(0)).to_contain_text("€25.00 · 1,250 ⭐")
    expect(parts.nth(0)).to_contain_text("Paid with ⭐ Telegram Stars")
    expect(parts.nth(1)).to_contain_text("Coffee × 1")
    expect(parts.nth(1)).to_contain_text("€12.90")
    expect(parts.nth(1)).to_contain_text("Paid with crypto or your balance")
    expect(parts.nth(0)).to_have_attribute("aria-checked", "true")
    expect(page.locator(".option")).to_have_count(1)
    parts.nth(1).click()
    expect(page.locator(".option[data-key=stars]")).to_have_count(0)
    expect(page.locator(".option[data-key=balance]")).to_be_disabled()  # €0.00
    expect(page.locator(".option[data-key=ltc]")).to_be_visible()
    expect(main).to_have_text("Choose how to pay")
    covers_nothing(page)
    parts.nth(0).click()
    expect(main).to_have_text("Pay 1,250 ⭐")
    main.click()

    expect(app.heading()).to_have_text("Order #1 · 1,250 ⭐")
    app.button("🧪 Pay 1,250 ⭐ (simulated)").click()
    expect(page.locator(".status .pill")).to_have_text("✅ Paid")
    rest = app.button("Pay for the rest of your basket (1 item)")
    rest.click()
    expect(app.heading()).to_have_text("Basket")
    expect(page.locator(".line-name")).to_have_text(["Coffee"])
    expect(page.locator(".split-note")).to_have_count(0)
    assert [i.name for i in shop.get_basket(botless.conn, shop.PREVIEW_USER["id"]).lines] == [
        "Coffee"
    ]
    assert sold(botless.conn, ids[(EBOOK, "Mitte")][0]) == 1
    assert sold(botless.conn, ids[("Coffee", "Mitte")][0]) == 0
    main.click()  # the rest checks out as usual, the ways it allows
    expect(page.locator(".part")).to_have_count(0)
    expect(page.locator(".option[data-key=stars]")).to_have_count(0)
    expect(page.locator(".option[data-key=balance]")).to_be_visible()
    assert page.errors == []


def test_telegrams_rule_hides_balance_and_crypto_for_digital_goods(botless, open_app):
    ids = stars_stock(botless)
    user(botless.conn, 104, balance=5000)
    ann = open_app(botless, 104)
    page = ann.page
    open_mitte(ann)
    page.locator(".card").filter(has_text=EBOOK).click()
    ann.button("Buy now").click()
    expect(page.locator(".option")).to_have_count(1)
    expect(page.locator(".option[data-key=balance]")).to_have_count(0)  # though €50 would pay it
    expect(page.locator(".option[data-key=btc]")).to_have_count(0)
    expect(page.locator(".rule-note")).to_be_visible()

    key, value = shop.clean_owner_setting(
        "telegram_rule", "off", max_deposit_cents=10**6, coin_codes=list(shop.COIN_LABELS)
    )
    shop.save_settings(botless.conn, {key: value})
    page.reload()
    open_mitte(ann)
    page.locator(".card").filter(has_text=EBOOK).click()
    ann.button("Buy now").click()
    expect(page.locator(".option[data-key=stars]")).to_contain_text("1,250 ⭐")
    expect(page.locator(".option[data-key=balance]")).to_have_attribute("aria-checked", "true")
    expect(page.locator(".option[data-key=btc]")).to_be_visible()
    expect(page.locator(".rule-note")).to_have_count(0)
    ann.press_main("Pay €25.00 from balance")
    expect(page.locator(".goods .content")).to_have_count(1)
    ann.press_main("Open my orders")
    expect(page.locator(".order.highlight")).to_contain_text("€25.00 · from balance")
    assert sold(botless.conn, ids[(EBOOK, "Mitte")][0]) == 1
    assert page.errors == []


# Issue 13: a Mini App as polished as the ones shoppers use every day ######################

PHONE = {"width": 390, "height": 844}
MACHINE = "Espresso machine"
LONG_NAME = "Die kleine Kaffeerösterei am Prenzlauer Berg: Bohnen und Zubehör"  # 64 characters


def tour_stock(s):
    """stars_stock (a Stars-only e-book, coffee paid in crypto or from the balance) and an espresso
    machine without a photo at €1,234.50 (61,725 ⭐), two units each of all but the coffee."""
    ids = stars_stock(s)
    ids.update(seed(s.conn, [("Berlin", "Mitte", MACHINE, 123450, 2)]))
    return ids


class Shopper:
    """The Mini App in Telegram (its MainButton and BackButton) or in a plain browser (the page's
    own), driven the same way."""

    def __init__(self, app, telegram):
        self.app, self.page, self.telegram = app, app.page, telegram

    def main(self, text):
        if self.telegram:
            self.app.press_main(text)
        else:
            button = self.page.locator(".main-button")
            expect(button).to_have_text(re.compile("^" + re.escape(text)))
            button.click()

    def tab(self, name):
        self.page.locator(".tab").filter(has_text=name).click()

    def shows(self, heading, screen):
        expect(self.app.heading()).to_have_text(heading)
        covers_nothing(self.page, screen)
        expect(self.page.locator("main")).not_to_contain_text(re.compile(r"\bnull\b|undefined|NaN"))


@pytest.mark.parametrize("telegram", [False, True], ids=["browser", "telegram"])
def test_no_screen_scrolls_sideways_and_the_dock_covers_nothing(botless, open_app, telegram):
    """Every screen at 390x844, scrolled to its end, with a long shop name and four-digit prices."""
    tour_stock(botless)
    key, value = shop.clean_owner_setting(
        "shop_name", LONG_NAME, max_deposit_cents=10**6, coin_codes=list(shop.COIN_LABELS)
    )
    shop.save_settings(botless.conn, {key: value})
    uid = 130 if telegram else shop.PREVIEW_USER["id"]
    shop.touch_user(botless.conn, {"id": uid, "first_name": "Ann"})
    shop.adjust_balance(botless.conn, uid, 2000, "test funds")
    ann = Shopper(open_app(botless, uid, telegram=telegram, viewport=PHONE), telegram)
    page = ann.page
    ann.shows("Choose a city", "catalog")
    ann.app.button(re.compile("^Berlin")).click()
    ann.shows("Berlin", "city")
    ann.app.button(re.compile("^Mitte")).click()
    ann.shows("Mitte", "district")
    page.locator(".card").filter(has_text=MACHINE).click()
    ann.shows(MACHINE, "product")
    ann.main("Add to basket · €1,234.50")
    expect(page.locator(".toast")).to_be_visible()
    covers_nothing(page, "product with a toast")
    ann.shows(MACHINE, "product in the basket")
    ann.tab("Shop")
    open_mitte(ann.app)
    page.locator(".card").filter(has_text="Coffee").click()
    ann.main("Add to basket · €12.90")
    ann.tab("Basket")
    ann.shows("Basket", "basket")
    ann.main("Checkout · €1,247.40")
    expect(page.locator(".coin-group")).to_have_count(2)
    ann.shows("Checkout", "checkout in crypto")
    page.locator("[data-key=ltc]").click()
    ann.main("Pay €1,247.40 with LTC")
    expect(page.locator(".pay-amount")).to_be_visible()
    ann.shows("Order #1 · €1,247.40", "crypto invoice")
    ann.app.button("Pay in full").click()
    expect(page.locator(".goods .content")).to_have_count(2, timeout=15000)
    ann.shows("Order #1 · €1,247.40", "paid in crypto")
    ann.tab("Orders")
    ann.shows("My orders", "orders")
    ann.tab("Balance")
    page.get_by_label("Amount in EUR").fill("1,234.50")
    page.locator("[data-key=usdttrc20]").click()
    ann.shows("Balance", "top-up")
    ann.tab("Shop")
    open_mitte(ann.app)
    page.locator(".card").filter(has_text=EBOOK).click()
    ann.app.button("Buy now").click()
    ann.shows("Checkout", "checkout in Stars")
    ann.main("Pay 1,250 ⭐")
    ann.shows("Order #2 · 1,250 ⭐", "Stars invoice")
    ann.app.button("🧪 Pay 1,250 ⭐ (simulated)").click()
    expect(page.locator(".goods .content")).to_have_count(1)
    ann.shows("Order #2 · 1,250 ⭐", "paid in Stars")
    ann.tab("Shop")
    open_mitte(ann.app)
    page.locator(".card").filter(has_text="Coffee").click()
    ann.app.button("Buy now").click()
    ann.main("Pay €12.90 from balance")
    expect(page.locator(".goods .content")).to_have_count(1)
    ann.shows("Order #3 · €12.90", "paid from the balance")
    assert page.errors == []


@pytest.mark.parametrize("name", ["Demo Shop", LONG_NAME])
def test_the_shops_name_is_never_cut(botless, open_app, name):
    """Beside Back, the preview badge and the balance: the whole name, on up to two lines."""
    stock(botless)
    key, value = shop.clean_owner_setting(
        "shop_name", name, max_deposit_cents=10**6, coin_codes=list(shop.COIN_LABELS)
    )
    shop.save_settings(botless.conn, {key: value})
    app = open_app(botless, telegram=False, viewport=PHONE)
    app.button(re.compile("^Berlin")).click()
    expect(app.page.locator(".top .back")).to_be_visible()
    box = app.page.evaluate(
        """() => {
      const rect = (s) => document.querySelector(s).getBoundingClientRect();
      const n = document.querySelector(".shop-name");
      return { text: n.textContent, clipped: n.scrollWidth > n.clientWidth || n.scrollHeight >
               n.clientHeight, name: rect(".shop-name").toJSON(), back: rect(".top .back").toJSON(),
               badge: rect(".badge").toJSON(), chip: rect(".balance-chip").toJSON(),
               lineHeight: parseFloat(getComputedStyle(n).lineHeight) };
    }"""
    )
    assert box["text"] == name and not box["clipped"], box
    for other in ("back", "badge", "chip"):  # nothing is drawn over the name
        a, b = box["name"], box[other]
        apart = a["right"] <= b["left"] or b["right"] <= a["left"]
        assert apart or a["bottom"] <= b["top"] or b["bottom"] <= a["top"], (other, box)
    assert box["name"]["left"] >= 16 and box["name"]["right"] <= 390 - 16, box
    assert box["name"]["height"] <= 2 * box["lineHeight"] + 1, box
    expect(app.page.locator(".badge.preview")).to_have_text("Preview (sandbox)")


def test_basket_lines_have_thumbnails(botless, open_app):
    """The product's photo, or its initial on a tint when it has none; at checkout too."""
    ids = stock(botless)
    shop.touch_user(botless.conn, shop.PREVIEW_USER)
    for product, district in ((TEA, "Mitte"), ("Mug", "Pankow")):
        shop.add_to_basket(botless.conn, shop.PREVIEW_USER["id"], *ids[(product, district)])
    photo = botless.conn.execute(
        "SELECT photo FROM products WHERE id = ?", (ids[(TEA, "Mitte")][0],)
    ).fetchone()[0]
    app = open_app(botless, telegram=False, viewport=PHONE)
    page = app.page
    page.locator(".tab").filter(has_text="Basket").click()
    lines = page.locator(".line")
    expect(lines).to_have_count(2)
    src = app.image_loaded(".line:nth-child(1) img.thumb")
    assert src.endswith(f"/media/{photo}")
    placeholder = lines.nth(1).locator(".thumb.no-photo")
    expect(placeholder).to_have_text("M")
    expect(placeholder).to_have_attribute("aria-hidden", "true")
    for thumb in (lines.nth(0).locator(".thumb"), placeholder):
        size = thumb.bounding_box()
        assert (size["width"], size["height"]) == (56, 56)
    page.locator(".main-button").click()  # checkout shows them as well, smaller
    expect(page.locator(".summary .line img.thumb.small")).to_have_count(1)
    expect(page.locator(".summary .line .thumb.small.no-photo")).to_have_text("M")
    assert page.errors == []


def test_stock_is_worded_one_way_everywhere(botless, open_app):
    """Stock reads "N available" on cards, the product page and in the basket, never "left"."""
    ids = stock(botless)
    tea = ids[(TEA, "Mitte")]
    user(botless.conn, 131)
    shop.add_to_basket(botless.conn, 131, *tea, quantity=2)
    ann = open_app(botless, 131, viewport=PHONE)
    page = ann.page
    open_mitte(ann)
    card = page.locator(".card").filter(has_text=TEA)
    expect(card.locator(".stock")).to_have_text("2 available")
    card.click()
    expect(page.locator(".price-row .stock")).to_have_text("2 available")
    user(botless.conn, 7, balance=5000)
    for left, says in ((1, "Only 1 available now"), (0, "Sold out now")):
        shop.buy_with_balance(botless.conn, 7, [(*tea, 1)])  # meanwhile, Bob buys one
        again = open_app(botless, 131, viewport=PHONE)
        again.page.locator(".tab").filter(has_text="Basket").click()
        expect(again.page.locator(".line .warn")).to_have_text(says)
        if left:
            again.page.locator(".line-name").click()  # the product page agrees
            expect(again.page.locator(".price-row .stock")).to_have_text("1 available")
        for words in (" left", "in stock"):
            expect(again.page.locator("main")).not_to_contain_text(words)
        assert again.page.errors == []


def test_a_sold_out_product_offers_to_tell_the_shopper_when_it_is_back(botless, open_app):
    """A product sold out in a district where it had units is still in the district's grid; its
    page offers 🔔 Notify me instead of the basket, and takes the wish back with 🔕."""
    conn = botless.conn
    stock(botless)
    vase = seed(conn, [("Berlin", "Mitte", "Vase", 3000, 1)])[("Vase", "Mitte")]
    user(conn, 132)
    nonce = shop.create_checkout(conn, 132, "order", 3000, [(*vase, 1)])
    shop.reserve_for_checkout(conn, 132, nonce, 30)  # Bob's unpaid order holds the only vase
    ann = open_app(botless, 131, viewport=PHONE)
    page = ann.page
    ann.button(re.compile("^Berlin")).click()
    expect(page.locator(".row-sub").first).to_have_text("1 product · from €12.90")  # in stock
    ann.button(re.compile("^Mitte")).click()
    card = page.locator(".card.sold-out")
    expect(card).to_have_count(1)
    expect(card.locator(".card-name")).to_have_text("Vase")
    expect(card.locator(".stock")).to_have_text("Sold out")
    card.click()
    expect(ann.heading()).to_have_text("Vase")
    notify = ann.button("🔔 Notify me")
    expect(notify).to_be_visible()
    assert not ann.tg("main.visible")  # nothing to add to the basket
    expect(page.locator("main")).not_to_contain_text("Buy now")
    notify.click()
    expect(ann.button("🔕 Don't notify me")).to_be_visible()
    expect(page.locator(".watch-note")).to_have_text(
        "🔔 We will message you in Telegram when it is back here."
    )
    rows = "SELECT user_id, product_id, district_id FROM stock_watches"
    assert [tuple(r) for r in conn.execute(rows)] == [(131, *vase)]
    ann.press_back()
    expect(card.locator(".card-badge")).to_have_text("🔔")
    card.click()
    ann.button("🔕 Don't notify me").click()
    expect(ann.button("🔔 Notify me")).to_be_visible()
    assert conn.execute(rows).fetchall() == []
    # Back on sale meanwhile: asking is refused in words, and the page shows it in stock.
    with shop.transaction(conn):
        shop.release_order_units(conn, conn.execute("SELECT max(id) FROM orders").fetchone()[0])
    ann.button("🔔 Notify me").click()
    ann.page.wait_for_function("() => window.__tg.alerts.length > 0")
    assert "Vase is in stock here" in ann.tg("alerts")[0]
    expect(page.locator(".price-row .stock")).to_have_text("1 available")
    assert conn.execute(rows).fetchall() == []
    assert page.errors == []


def test_coins_are_grouped_by_asset_with_their_networks(botless, open_app):
    stock(botless)
    ann = open_app(botless, 132, viewport=PHONE)
    page = ann.page
    ann.button(re.compile("^Berlin")).click()
    ann.button(re.compile("^Pankow")).click()
    page.locator(".card").filter(has_text="Mug").click()
    ann.button("Buy now").click()  # €8.00
    groups = page.locator(".coin-group")
    expect(groups).to_have_count(2)
    expect(groups.nth(0)).to_have_attribute("aria-label", "USDT, Tether USD: networks")
    expect(groups.nth(0).locator(".net")).to_have_text(
        ["TRC20 · from €9.30", "ERC20 · from €18.60", "BEP20", "SOL"]
    )
    expect(groups.nth(0).locator(".net[data-key=usdterc20]")).to_be_disabled()
    expect(groups.nth(0).locator(".net[data-key=usdtbsc]")).to_be_enabled()
    expect(groups.nth(1).locator(".net")).to_have_text(
        ["TRC20 · from €9.30", "ERC20 · from €18.60", "SOL"]
    )
    singles = page.locator(".options > .option[data-key]")
    expect(singles).to_have_text(
        [
            re.compile("^⭐ Telegram Stars"),
            re.compile("^💰 Balance"),
            "BTCBitcoin",
            "ETHfrom €12.00",
            "LTCLitecoin",
            "TONToncoin",
            "SOLSolana",
        ]  # fmt: skip
    )
    keys = page.eval_on_selector_all("[role=radio][data-key]", "es => es.map(e => e.dataset.key)")
    coins = sorted(k for k in keys if k not in ("stars", "balance"))
    assert coins == sorted(shop.COIN_CODES)  # each coin once
    page.locator("[data-key=usdtbsc]").click()
    checked = page.locator("[role=radio][aria-checked=true]")
    expect(checked).to_have_count(1)
    expect(checked).to_have_attribute("data-key", "usdtbsc")
    assert ann.tg("main.text") == "Pay €8.00 with USDT · BEP20"
    page.locator("[data-key=btc]").click()
    expect(checked).to_have_count(1)
    expect(checked).to_have_attribute("data-key", "btc")
    page.locator("[data-key=usdtsol]").click()
    ann.press_main("Pay €8.00 with USDT · SOL")
    expect(page.locator(".pay-details .copy-value").first).to_contain_text("USDT · SOL")

    # Top-ups: the same groups; a network's minimum counts once there is an amount.
    page.locator(".tab").filter(has_text="Balance").click()
    expect(page.locator(".coin-group")).to_have_count(2)
    erc20 = page.locator(".net[data-key=usdterc20]")
    expect(erc20).to_have_text("ERC20")
    expect(erc20).to_be_enabled()
    erc20.click()
    amount = page.get_by_label("Amount in EUR")
    amount.fill("20")
    ann.press_main("Top up €20.00 with USDT · ERC20")
    expect(ann.heading()).to_have_text("Top-up · €20.00")
    ann.press_back()
    expect(ann.heading()).to_have_text("Balance")
    amount.fill("10")
    expect(erc20).to_contain_text("ERC20 · from €18.60")
    expect(erc20).to_be_disabled()
    page.wait_for_function("() => window.__tg.main.text.startsWith('USDT · ERC20 takes €18.60')")
    assert ann.tg("main.active") is False
    assert page.errors == []


def test_amounts_have_thousands_separators_and_crypto_amounts_stay_exact(botless, open_app):
    tour_stock(botless)
    ann = open_app(botless, 133, viewport=PHONE)
    page = ann.page
    expect(page.locator(".tabs")).to_be_visible()
    # The shop formats every amount (the API's *_text); the app only reads what shoppers type.
    parsed = page.evaluate(
        """async () => {
      const m = await import("/static/app/ui.js");
      return [typeof m.eur, m.plainAmount(123450), m.parseAmount("1,234.50"),
              m.parseAmount("1.234,50"), m.parseAmount("20,50"), m.parseAmount("1 234"),
              String(m.parseAmount("1,23,4"))];
    }"""
    )
    assert parsed == ["undefined", "1234.50", 123450, 123450, 2050, 123400, "NaN"]
    open_mitte(ann)
    card = page.locator(".card").filter(has_text=MACHINE)
    expect(card.locator(".price")).to_have_text("€1,234.50 · 61,725 ⭐")
    card.click()
    ann.press_main("Add to basket · €1,234.50")
    ann.button(f"One more {MACHINE}").click()
    expect(page.locator(".in-basket")).to_contain_text("In your basket: €2,469.00")
    page.locator(".tab").filter(has_text="Basket").click()
    expect(page.locator(".line-sum")).to_have_text("2 × €1,234.50 = €2,469.00")
    expect(page.locator(".total")).to_have_text("Total€2,469.00 · 123,450 ⭐")
    ann.press_main("Checkout · €2,469.00")
    page.locator("[data-key=ltc]").click()
    ann.press_main("Pay €2,469.00 with LTC")
    expect(ann.heading()).to_have_text("Order #1 · €2,469.00")
    payment = botless.conn.execute("SELECT pay_amount FROM payments").fetchone()
    expect(page.locator(".pay-amount")).to_have_text(payment["pay_amount"])  # exactly as issued

    page.locator(".tab").filter(has_text="Balance").click()
    expect(page.locator("#amount-hint")).to_have_text("From €5.00 to €10,000.00.")
    page.get_by_label("Amount in EUR").fill("1,234.50")
    page.locator("[data-key=ltc]").click()
    ann.press_main("Top up €1,234.50 with LTC")
    expect(ann.heading()).to_have_text("Top-up · €1,234.50")
    top_up = botless.conn.execute("SELECT * FROM payments WHERE kind = 'topup'").fetchone()
    assert top_up["price_cents"] == 123450
    expect(page.locator(".pay-amount")).to_have_text(top_up["pay_amount"])
    ann.button("Pay in full").click()
    expect(page.locator(".status")).to_contain_text(
        "€1,234.50 was added to your balance.", timeout=15000
    )
    expect(page.locator(".balance-chip")).to_have_text("€1,234.50")
    assert page.errors == []


def test_full_screen_and_the_home_screen_where_telegram_has_them(botless, open_app):
    """Bot API 8.0: offered on the catalog's first screen, feature-detected by version."""
    ann = open_app(botless, 134, viewport=PHONE)
    page = ann.page
    full, home = ann.button("⛶ Full screen"), ann.button("📲 Add to home screen")
    expect(full).to_be_visible()
    expect(home).to_be_visible()  # Telegram says it is not on the home screen yet
    assert ann.tg("homeScreen") == ["check"]
    full.click()
    leave = ann.button("↙ Leave full screen")
    expect(leave).to_be_visible()
    assert ann.tg("fullscreen") == ["request"]
    # Telegram's own buttons take the top 46 px in full screen: the header starts below them.
    expect(page.locator("html")).to_have_class(re.compile(r"\bfullscreen\b"))
    assert page.locator(".shop-name").bounding_box()["y"] >= 46
    leave.click()
    expect(full).to_be_visible()
    assert ann.tg("fullscreen") == ["request", "exit"]
    assert page.locator(".shop-name").bounding_box()["y"] < 46
    home.click()
    assert ann.tg("homeScreen") == ["check", "add"]
    page.evaluate("window.__tgEvent('homeScreenAdded', {})")
    expect(home).to_be_hidden()

    # Already on the home screen; a Telegram that cannot go full screen says so.
    bob = open_app(botless, 135, home_screen="added", fullscreen_works=False)
    bob.button("⛶ Full screen").click()
    expect(bob.page.locator(".toast")).to_have_text("Full screen is not available here.")
    expect(bob.button("📲 Add to home screen")).to_be_hidden()
    assert bob.tg("homeScreen") == ["check"]

    # An older Telegram, and a plain browser: neither is offered, nothing is asked.
    for app in (open_app(botless, 136, version="7.10"), open_app(botless, telegram=False)):
        expect(app.heading()).to_have_text("Shop")
        expect(app.page.locator(".app-tools")).to_be_hidden()
        expect(app.page.locator(".app-tools button:visible")).to_have_count(0)
        assert app.page.errors == []
    assert ann.page.errors == [] and bob.page.errors == []


def back_shown(app, telegram, shown):
    """Wait until Telegram's BackButton (or the page's own) is shown, or hidden."""
    if telegram:
        app.page.wait_for_function("s => window.__tg.back.visible === s", arg=shown)
    else:
        expect(app.page.locator(".top .back")).to_be_visible(visible=shown)


def press_back(app, telegram):
    if telegram:
        app.press_back()
    else:
        app.page.locator(".top .back").click()


@pytest.mark.parametrize("telegram", [True, False], ids=["telegram", "browser"])
def test_the_back_button_is_on_every_screen_but_the_catalogs_first(botless, open_app, telegram):
    """Telegram's BackButton and the page's own go the same way: a tab's first screen goes back to
    the catalog, the catalog's first screen has none (Telegram shows Close there)."""
    stock(botless)
    app = open_app(botless, 137, telegram=telegram, viewport=PHONE)
    page = app.page
    expect(app.heading()).to_have_text("Choose a city")
    back_shown(app, telegram, False)
    for tab, heading in (("Basket", "Basket"), ("Orders", "My orders"), ("Balance", "Balance")):
        page.locator(".tab").filter(has_text=tab).click()
        expect(app.heading()).to_have_text(heading)
        back_shown(app, telegram, True)
        press_back(app, telegram)
        expect(app.heading()).to_have_text("Choose a city")
        back_shown(app, telegram, False)
    open_mitte(app)
    page.locator(".card").filter(has_text=TEA).click()
    expect(app.heading()).to_have_text(TEA)
    for heading in ("Mitte", "Berlin", "Choose a city"):
        back_shown(app, telegram, True)
        press_back(app, telegram)
        expect(app.heading()).to_have_text(heading)
    back_shown(app, telegram, False)
    assert page.errors == []


# Like axe's color-contrast and label-content-name-mismatch: every piece of text against the
# background it is drawn on (WCAG AA: 4.5:1, large text 3:1; disabled controls are exempt), and
# every control's accessible name holds the words it shows.
A11Y = r"""() => {
  const parse = (c) => {
    const m = /rgba?\(([^)]+)\)/.exec(c);
    if (!m) return null;
    const p = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, base) =>
    [0, 1, 2].map((i) => top[i] * top[3] + base[i] * (1 - top[3])).concat(1);
  const lum = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
                            return (x + 0.05) / (y + 0.05); };
  const backdrop = (e) => {
    const layers = [];
    for (let n = e; n; n = n.parentElement) {
      const c = parse(getComputedStyle(n).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    return layers.reverse().reduce((bg, layer) => over(layer, bg), [255, 255, 255, 1]);
  };
  const problems = [];
  const ownText = (e) => [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  for (const e of document.querySelectorAll("body *")) {
    if (!e.getClientRects().length || !ownText(e) || e.closest(":disabled, noscript")) continue;
    const style = getComputedStyle(e);
    if (style.visibility === "hidden" || e.closest(".sr-only")) continue;
    const bg = backdrop(e);
    const fg = over(parse(style.color), bg);
    const size = parseFloat(style.fontSize);
    const need = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700) ? 3 : 4.5;
    const got = ratio(fg, bg);
    if (got < need) {
      problems.push(`"${e.textContent.trim().slice(0, 30)}" (${e.className}): ${got.toFixed(2)}:1`);
    }
  }
  for (const b of document.querySelectorAll("button, a, [role=radio]")) {
    if (!b.getClientRects().length) continue;
    const text = b.textContent.replace(/\s+/g, " ").trim();
    const label = b.getAttribute("aria-label");
    if (!label && !text) problems.push(`a ${b.tagName} (${b.className}) has no name`);
    // Its words, less symbols such as "‹" or "−" (which a name need not repeat).
    const words = text.toLowerCase().match(/[\p{L}\p{N}][\p{L}\p{N}.,:']*/gu) || [];
    if (label && !words.every((w) => label.toLowerCase().includes(w))) {
      problems.push(`"${label}" does not say what its button shows: "${text}"`);
    }
  }
  return problems;
}"""


def readable(page, scheme, screen):
    settle(page)
    problems = page.evaluate(A11Y)
    assert not problems, f"{scheme}, {screen}: {problems}"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_has_enough_contrast_and_buttons_say_what_they_show(botless, open_app, scheme):
    """The page's own colours (a plain browser, light or dark; in Telegram they are Telegram's) on
    every kind of screen."""
    ids = stock(botless)
    shop.touch_user(botless.conn, shop.PREVIEW_USER)
    shop.add_to_basket(botless.conn, shop.PREVIEW_USER["id"], *ids[("Mug", "Pankow")])
    app = open_app(botless, telegram=False, viewport=PHONE, color_scheme=scheme)
    page = app.page
    check = functools.partial(readable, page, scheme)

    check("catalog")
    open_mitte(app)
    check("district")
    page.locator(".card").first.click()
    check("product")
    page.locator(".tab").filter(has_text="Basket").click()
    expect(page.locator(".line")).to_have_count(1)
    check("basket")
    page.locator(".main-button").click()
    expect(page.locator(".coin-group")).to_have_count(2)
    check("checkout")
    page.locator("[data-key=ltc]").click()
    page.locator(".main-button").click()
    expect(page.locator(".pay-amount")).to_be_visible()
    check("invoice")
    app.button("Pay in full").click()
    expect(page.locator(".goods .content")).to_have_count(1, timeout=15000)
    check("paid")
    page.locator(".tab").filter(has_text="Orders").click()
    expect(page.locator(".order")).to_have_count(1)
    check("orders")
    page.locator(".tab").filter(has_text="Balance").click()
    page.get_by_label("Amount in EUR").fill("3")
    check("balance")
    assert page.errors == []


# Issue 14: the shopper's language ############################################

SHOTS = Path("/work/shots14")
DESKTOP = {"width": 1280, "height": 800}
# The espresso machine's name as the owner gave it in German and Polish (long, as such names are).
MACHINE_NAMES = {
    "de": "Siebträger-Espressomaschine mit Milchaufschäumdüse",
    "pl": "Ekspres kolbowy do espresso z dyszą do spieniania mleka",
}

# Nothing cut off or drawn over: the page scrolls no way but down, no button (nor any box that
# sizes to its text) is narrower or lower than its words, and the dock's buttons do not overlap.
CUT_OFF = """() => {
  const problems = [];
  const wide = document.scrollingElement.scrollWidth;
  if (wide > innerWidth) problems.push(`the page is ${wide}px wide in a ${innerWidth}px screen`);
  const shown = (e) => e.getClientRects().length && getComputedStyle(e).visibility !== "hidden";
  const boxes = "button, a.btn, select, .chip, .pill, .badge, .option, .net, .tab-label, h1, h2";
  for (const e of document.querySelectorAll(boxes)) {
    if (!shown(e) || getComputedStyle(e).display === "inline") continue;
    if (e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1) {
      problems.push(`"${e.textContent.trim().slice(0, 40)}" is cut off: ` +
                    `${e.scrollWidth}x${e.scrollHeight} in ${e.clientWidth}x${e.clientHeight}`);
    }
  }
  const dock = [...document.querySelectorAll(".dock button")].filter(shown)
    .map((b) => [b.textContent.trim(), b.getBoundingClientRect()]);
  for (const [i, [a, r]] of dock.entries()) {
    if (r.left < -0.5 || r.right > innerWidth + 0.5) problems.push(`"${a}" sticks out of the dock`);
    for (const [b, q] of dock.slice(i + 1)) {
      const apart = r.right <= q.left + 0.5 || q.right <= r.left + 0.5 || r.bottom <= q.top + 0.5 ||
        q.bottom <= r.top + 0.5;
      if (!apart) problems.push(`"${a}" and "${b}" overlap in the dock`);
    }
  }
  return problems;
}"""


def fits(page, code, screen):
    """At 390x844 nothing is cut off, overlaps or scrolls sideways (and the dock covers nothing);
    screenshots at 390x844 and 1280x800 go to /work/shots14/ for a person to look at."""
    covers_nothing(page, f"{code}, {screen}")
    problems = page.evaluate(CUT_OFF)
    assert not problems, f"{code}, {screen}: {problems}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = screen.replace(" ", "-")
    page.wait_for_function("() => !document.querySelector('.toast')")  # gone after 2 s
    for size, viewport in (("390", PHONE), ("1280", DESKTOP)):
        page.set_viewport_size(viewport)
        settle(page)
        assert not page.evaluate(CUT_OFF), f"{code}, {screen} at {size} px"
        # As the shopper sees it: the screen's top, and its end above the dock.
        for end, y in (("", 0), ("-end", "document.scrollingElement.scrollHeight")):
            page.evaluate(f"window.scrollTo(0, {y})")
            page.screenshot(path=str(SHOTS / f"app-{code}-{size}-{name}{end}.png"))
    page.set_viewport_size(PHONE)
    settle(page)


@pytest.mark.parametrize("catalogs", ["shop's", "long words"])
@pytest.mark.parametrize("code", ["de", "pl"])
def test_german_and_polish_fit_a_phone_from_the_catalog_to_checkout(
    botless, open_app, shop_languages, code, catalogs
):
    """German and Polish wrap: the walk from the catalog to checkout at 390x844, with the page's
    own main button in the dock, in the shop's own catalogs and in throwaway ones with longer
    words still (Sofortkaufbestätigung, Zahlungsmethodenauswahl)."""
    if catalogs == "long words":
        shop_languages("de", "pl")
    ids = tour_stock(botless)
    with shop.transaction(botless.conn):
        botless.conn.execute(
            "UPDATE products SET translations = ? WHERE id = ?",
            (
                json.dumps({c: {"name": n} for c, n in MACHINE_NAMES.items()}),
                ids[(MACHINE, "Mitte")][0],
            ),
        )
    uid = shop.PREVIEW_USER["id"]
    shop.touch_user(botless.conn, shop.PREVIEW_USER)
    shop.set_user_language(botless.conn, uid, code)  # the preview shopper chose it
    shop.adjust_balance(botless.conn, uid, 2000, "test funds")
    app = open_app(botless, telegram=False, viewport=PHONE)
    page, words = app.page, shop_languages_words(code)
    ann = Shopper(app, telegram=False)
    expect(app.heading()).to_have_text(words["Choose a city"])
    expect(page.locator("html")).to_have_attribute("lang", code)
    expect(page.locator(".tab-label")).to_have_text(words["tabs"])
    shot = code if catalogs == "shop's" else f"{code}-long"
    fits(page, shot, "catalog")
    app.button(re.compile("^Berlin")).click()
    expect(page.locator(".row-sub")).to_have_text(words["Mitte"])
    app.button(re.compile("^Mitte")).click()
    machine = MACHINE_NAMES[code]
    expect(page.locator(".card").filter(has_text=machine).locator(".price")).to_have_text(
        words["machine price"]
    )
    fits(page, shot, "district")
    page.locator(".card").filter(has_text=machine).click()
    expect(app.heading()).to_have_text(machine)
    fits(page, shot, "product")
    ann.main(words["add"])
    expect(page.locator(".in-basket")).to_be_visible()
    fits(page, shot, "product in the basket")
    ann.tab(words["tabs"][0])
    open_mitte(app)
    page.locator(".card").filter(has_text="Coffee").click()
    ann.main(words["add coffee"])
    ann.tab(words["tabs"][1])
    expect(page.locator(".line")).to_have_count(2)
    expect(page.locator(".total")).to_contain_text(words["total"])
    fits(page, shot, "basket")
    ann.main(words["checkout"])
    expect(app.heading()).to_have_text(words["Checkout"])
    expect(page.locator(".option[data-key=balance]")).to_contain_text(words["short"])
    fits(page, shot, "checkout")
    page.locator("[data-key=ltc]").click()
    expect(page.locator(".main-button")).to_have_text(words["pay"])
    fits(page, shot, "checkout with a coin")
    ann.tab(words["tabs"][3])
    expect(page.locator("#language")).to_have_value(code)
    fits(page, shot, "balance")
    assert page.errors == []


def shop_languages_words(code):
    """What the walk reads in German or Polish, from the catalogs the shop speaks now (its own, or
    the throwaway ones), amounts as Babel writes them."""
    eur = shop.fmt_eur
    with shop.speaking(code):
        return {
            "Choose a city": shop.tr("Choose a city"),
            "tabs": [shop.ptr("tab", t) for t in ("Shop", "Basket", "Orders", "Balance")],
            "Mitte": [
                f"{shop.ntr('{n} product', '{n} products', 3)} · "
                f"{shop.tr('from {price}', price=eur(1290))}"
            ],
            "machine price": f"{eur(123450)} · {shop.fmt_stars(61725)}",
            "add": shop.tr("Add to basket · {price}", price=eur(123450)),
            "add coffee": shop.tr("Add to basket · {price}", price=eur(1290)),
            "total": shop.tr("Total") + eur(124740),
            "checkout": shop.tr("Checkout · {total}", total=eur(124740)),
            "Checkout": shop.tr("Checkout"),
            "short": shop.tr("{balance} · {short} short", balance=eur(2000), short=eur(122740)),
            "pay": shop.tr("Pay {amount} with {coin}", amount=eur(124740), coin="LTC"),
        }


def test_the_app_speaks_telegrams_language_and_the_shopper_can_switch(
    botless, open_app, shop_languages
):
    """Telegram says Polish: the app speaks it at once (its texts fetched beside the first API
    calls); the shopper picks German in the Balance tab, then Telegram's language again."""
    shop_languages("de", "pl")
    stock(botless)
    ann = open_app(botless, 140, language_code="pl", viewport=PHONE)
    page = ann.page
    expect(ann.heading()).to_have_text("Wybierz miasto")
    expect(page.locator("html")).to_have_attribute("lang", "pl")
    expect(page.locator(".tab-label")).to_have_text(["Sklep", "Koszyk", "Zamówienia", "Saldo"])
    expect(page.locator(".balance-chip")).to_have_text("0,00\u00a0€")
    texts = [url for url in page.asked if "/app/i18n/" in url]
    assert [url.rsplit("/", 1)[1] for url in texts] == ["pl.json"]  # guessed from Telegram's
    open_mitte(ann)
    page.locator(".card").first.click()
    ann.press_main("Dodaj do koszyka · 12,90\u00a0€")
    expect(page.locator(".toast")).to_have_text("Dodano do koszyka")

    page.locator(".tab").filter(has_text="Saldo").click()
    picker = page.locator("#language")
    expect(picker).to_have_value("")
    expect(picker.locator("option")).to_have_text(
        ["Język Telegrama", "English", "Deutsch", "Polski"]
    )
    picker.select_option("de")
    expect(ann.heading()).to_have_text("Guthaben")
    expect(page.locator("html")).to_have_attribute("lang", "de")
    expect(page.locator(".tab-label")).to_have_text(
        ["Shop", "Warenkorb", "Bestellungen", "Guthaben"]
    )
    expect(picker).to_have_value("de")
    assert shop.get_user(botless.conn, 140)["language"] == "de"  # the bot speaks it too
    page.locator(".tab").filter(has_text="Warenkorb").click()
    expect(page.locator(".line-sum")).to_have_text("1 × 12,90\u00a0€ = 12,90\u00a0€")
    assert ann.tg("main.text") == "Zur Kasse gehen · 12,90\u00a0€"

    # Opened again: German from the first screen, its texts the only ones fetched.
    page.reload()
    expect(ann.heading()).to_have_text("Stadt auswählen")
    texts = [url.rsplit("/", 1)[1] for url in page.asked if "/app/i18n/" in url]
    assert texts[-1:] == ["de.json"] and texts.count("de.json") == 2

    page.locator(".tab").filter(has_text="Guthaben").click()
    page.locator("#language").select_option("")
    expect(ann.heading()).to_have_text("Saldo")
    expect(page.locator("#language")).to_have_value("")
    assert shop.get_user(botless.conn, 140)["language"] is None
    assert page.errors == []


def test_plural_forms_in_the_app_are_the_catalogs(botless, open_app):
    """The app's choice of a plural form (Intl.PluralRules mapped to gettext's order) is the one
    gettext's Plural-Forms makes, in every language the shop starts with."""
    from babel.messages.plurals import get_plural

    app = open_app(botless, 141, viewport=PHONE)
    expect(app.heading()).to_have_text("Shop")
    numbers = [0, 1, 2, 5, 12, 21, 22, 1000000]
    for code in ("en", "de", "pl", "pt", "es", "uk", "ru"):
        forms, rule = get_plural(code)
        expected = [gettext.c2py(rule)(n) for n in numbers]
        locale = shop.FORMAT_LOCALES.get(code, code).replace("_", "-")
        got = app.page.evaluate(
            """async ([code, locale, forms, numbers]) => {
          const m = await import("/static/app/i18n.js");
          m.useCatalog({ lang: code, locale, plural: forms, messages: {} });
          return numbers.map((n) => m.pluralIndex(n));
        }""",
            [code, locale, forms, numbers],
        )
        assert got == expected, (code, locale, got, expected)
    # And the forms a Polish catalog gives are the ones a Pole writes.
    words = app.page.evaluate(
        """async (numbers) => {
      const m = await import("/static/app/i18n.js");
      m.useCatalog({ lang: "pl", locale: "pl", plural: 3,
                     messages: { "{n} item": ["{n} sztuka", "{n} sztuki", "{n} sztuk"] } });
      return numbers.map((n) => m.ntr("{n} item", "{n} items", n));
    }""",
        [1, 2, 5, 12, 21, 22, 0],
    )
    assert words == [
        "1 sztuka",
        "2 sztuki",
        "5 sztuk",
        "12 sztuk",
        "21 sztuk",
        "22 sztuki",
        "0 sztuk",
    ]
    assert app.page.errors == []


def test_a_promo_code_in_the_basket_takes_its_discount_off_and_checkout_shows_it(botless, open_app):
    """The basket's field takes a code; an unknown one is refused in an alert and changes
    nothing; a good one shows the list price, the discount and the new total, in the basket, on
    the MainButton and at checkout, and comes off again with Remove."""
    ids = stock(botless)
    now = shop.now_iso()
    with shop.transaction(botless.conn):
        botless.conn.execute(
            "INSERT INTO promo_codes(code, kind, value, created_at, updated_at) "
            "VALUES ('MUG2', 'fixed', 200, ?, ?)",
            (now, now),
        )
    user(botless.conn, 104)
    shop.add_to_basket(botless.conn, 104, *ids[("Mug", "Pankow")], 2)
    ann = open_app(botless, 104, viewport=PHONE)
    page = ann.page
    page.locator(".tab").filter(has_text="Basket").click()
    expect(page.locator(".total strong")).to_have_text(re.compile("^€16.00"))
    page.locator(".promo summary").click()
    page.locator("#promo").fill("nope")
    ann.button("Apply").click()
    page.wait_for_function("() => window.__tg.alerts.length > 0")
    assert ann.tg("alerts") == ["There is no promo code nope."]
    assert shop.get_user(botless.conn, 104)["promo_id"] is None
    page.locator("#promo").fill("mug2")
    page.locator("#promo").press("Enter")
    expect(page.locator(".discount .subtotal").first).to_contain_text("€16.00")
    expect(page.locator(".discount .subtotal").nth(1)).to_contain_text("Code MUG2")
    expect(page.locator(".discount .subtotal").nth(1)).to_contain_text("−€2.00")
    expect(page.locator(".total strong")).to_have_text(re.compile("^€14.00 · 700 ⭐"))
    ann.press_main("Checkout · €14.00")
    expect(ann.heading()).to_have_text("Checkout")
    expect(page.locator(".discount .subtotal").nth(1)).to_contain_text("−€2.00")
    expect(page.locator(".total strong")).to_have_text(re.compile("^€14.00 · 700 ⭐"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ann.press_back()
    ann.button("Remove the code MUG2").click()
    expect(page.locator(".total strong")).to_have_text(re.compile("^€16.00"))
    expect(page.locator(".discount")).to_have_count(0)
    assert shop.get_user(botless.conn, 104)["promo_id"] is None
    assert page.errors == []
