"""Shoppers in their own language, end to end: the real shop process against the Bot API stand-in.

A shopper per language sends /start with Telegram's language_code and walks a purchase (browse, add
to the basket, check out, pay from the balance, get the goods), then opens the other screens. Every
text the bot sent them (messages, captions, buttons, the reply keyboard, callback answers) is read
back from the stand-in's record of the calls, and the walk fails if any of it is English where the
language's catalog has its own words, or if a price is not written the language's way.
"""

import json
import re

import pytest
import requests
from babel.messages.pofile import read_po

import shop
from conftest import TOKEN, seed
from test_locales import LOCALES, PLACEHOLDER, TAG, TEMPLATE

# ids inside the tests' TESTER_IDS (a sandbox shop with a bot sells only to them)
SHOPPERS = {"en": 1090, "de": 1091, "pl": 1092, "pt": 1093, "es": 1094, "uk": 1095, "ru": 1096}
# How each language writes the poster's price (CLDR through Babel; U+00A0 no-break spaces), and a
# form of euro amount that only English writes.
PRICES = {
    "en": "€1,234.50",
    "de": "1.234,50\u00a0€",
    "pl": "1\u00a0234,50\u00a0€",
    "pt": "1\u00a0234,50\u00a0€",
    "es": "1.234,50\u00a0€",
    "uk": "1\u00a0234,50\u00a0EUR",
    "ru": "1\u00a0234,50\u00a0€",
}
ENGLISH_PRICE = re.compile(r"€\d")
SENDS = {
    "sendMessage",
    "editMessageText",
    "sendPhoto",
    "editMessageCaption",
    "editMessageMedia",
    "sendInvoice",
    "answerCallbackQuery",
}


def english_fragments(code):
    """Pieces of English the catalog of `code` says differently: the words between a message's
    placeholders and tags, where they are at least two words or one long one, and do not occur in
    any of its translations (brand names such as Telegram Stars stay)."""
    with open(TEMPLATE, "rb") as f:
        ids = {m.id for m in read_po(f) if m.id}
    with open(LOCALES / code / "LC_MESSAGES" / "messages.po", "rb") as f:
        catalog = read_po(f, locale=code)
    everything = " ".join(
        " ".join(m.string if isinstance(m.string, tuple) else (m.string,)) for m in catalog if m.id
    )
    fragments = {}
    for message in catalog:
        if not message.id or message.id not in ids or message.context == "language name":
            continue  # (a language's own name is in it, English's in English)
        english = message.id if isinstance(message.id, tuple) else (message.id,)
        for text in english:
            breaks = r"\n|[.:;!?()·,]\s|" + PLACEHOLDER.pattern + "|" + TAG.pattern
            for piece in re.split(breaks, text):
                piece = piece.strip(" .,:;!?()·—-\"'“”")
                words = re.findall(r"[A-Za-z]+", piece)
                if (len(words) >= 2 or any(len(w) >= 7 for w in words)) and piece not in everything:
                    fragments.setdefault(piece, text)
    return fragments


def english_in(texts, code):
    """The English pieces (english_fragments) in what a shopper of `code` was shown."""
    return [
        f"{where}: {text!r} has {piece!r} (from {source!r})"
        for piece, source in english_fragments(code).items()
        for where, text in texts
        if piece in text
    ]


def sent_texts(calls, chat_id):
    """Every text a shopper was shown by these Bot API calls: (where, text)."""
    found = []
    for method, params in calls:
        if method not in SENDS:
            continue
        if method != "answerCallbackQuery" and str(params.get("chat_id")) != str(chat_id):
            continue
        for key in ("text", "caption", "title", "description"):
            if params.get(key):
                found.append((f"{method} {key}", str(params[key])))
        media = params.get("media")
        if isinstance(media, str) and media.startswith("{"):
            media = json.loads(media)
        if isinstance(media, dict) and media.get("caption"):
            found.append((f"{method} caption", media["caption"]))
        markup = params.get("reply_markup")
        if isinstance(markup, str) and markup:
            markup = json.loads(markup)
        for row in (markup or {}).get("inline_keyboard", []) + (markup or {}).get("keyboard", []):
            for button in row:
                label = button["text"] if isinstance(button, dict) else button
                found.append((f"{method} button", label))
    return found


@pytest.fixture
def language_shop(tmp_path, run_shop):
    conn = shop.init_db(str(tmp_path / "shop.db"))
    seed(conn, units=[("Lisboa", "Baixa", "Poster A2", 123450, 20)])
    with shop.transaction(conn):
        conn.execute(
            "UPDATE products SET kind = 'physical', description = 'Printed on matte paper.'"
        )
    for user_id in SHOPPERS.values():
        shop.touch_user(conn, {"id": user_id, "first_name": "Ann"})
        shop.adjust_balance(conn, user_id, 500_000, "test funds")
    proc = run_shop()
    yield proc, conn
    conn.close()
    assert " ERROR " not in proc.log, proc.log


class Walker:
    """One shopper with a language_code, pressing buttons by their callback data (the labels
    are in their language)."""

    def __init__(self, fake, user_id, code):
        self.fake, self.id, self.code = fake, user_id, code

    def send(self, text):
        sent = self.fake.user_sends(self.id, text, language_code=self.code)
        return self.fake.wait_for(
            lambda: next(
                (m for m in self.fake.messages(self.id) if m.message_id > sent["message_id"]),
                None,
            ),
            what=f"a reply to {text!r} in {self.code}",
        )

    def button(self, prefix):
        """The newest message's button whose callback data starts with `prefix`."""
        for message in reversed(self.fake.messages(self.id)):
            for row in message.buttons:
                for b in row:
                    if b.get("callback_data", "").startswith(prefix):
                        return message, b
        return None

    def press(self, prefix, then):
        """Press the button `prefix`, then wait for a button `then` to be shown."""
        message, b = self.fake.wait_for(
            lambda: self.button(prefix), what=f"a {prefix!r} button in {self.code}"
        )
        cq = self.fake.user_clicks(self.id, message.message_id, b["callback_data"])
        self.fake.wait_for(lambda: cq in self.fake.callback_answers, what=f"{prefix} answered")
        if then:
            self.fake.wait_for(lambda: self.button(then), what=f"a {then!r} button in {self.code}")

    def walk(self):
        start = self.send("/start")
        keyboard = start.keyboard or self.fake.wait_for(
            lambda: next((m.keyboard for m in self.fake.messages(self.id) if m.keyboard), None),
            what="the reply keyboard",
        )
        assert [len(row) for row in keyboard] == [2, 2, 2], keyboard
        self.send(keyboard[0][0])  # 🛒 Shop
        self.press("city:", "dist:")
        self.press("dist:", "prod:")
        self.press("prod:", "add:")
        self.press("add:", "basket")
        self.press("basket", "checkout")
        self.press("checkout", "pay:")
        self.press("pay:", None)
        self.fake.wait_message(self.id, "Poster A2-Baixa-")  # the goods arrived
        for label in (keyboard[1][0], keyboard[2][0], keyboard[2][1], keyboard[1][1]):
            self.send(label)  # 👤 Profile, 📦 Orders, ❓ Help, 💰 Top up
        self.press("order", None)
        for command in ("/terms", "/paysupport", "/basket", "/language"):
            self.send(command)
        self.fake.wait_for(lambda: self.button("lang:"), what="the language choice")


@pytest.mark.parametrize("code", list(SHOPPERS))
def test_a_shopper_reads_the_whole_purchase_in_their_language(fake_tg, language_shop, code):
    walker = Walker(fake_tg, SHOPPERS[code], code)
    first_call = len(fake_tg.calls)
    walker.walk()
    texts = sent_texts(fake_tg.calls[first_call:], walker.id)
    assert len(texts) > 40, texts
    shown = "\n".join(text for _, text in texts)
    assert PRICES[code] in shown, f"no {PRICES[code]!r} in what {code} was shown:\n{shown}"
    with shop.speaking(code):
        assert shop.fmt_eur(123450) == PRICES[code]
    if code == "en":  # the check below does see English: the English walk read as German's
        assert len(english_in(texts, "de")) > 30
        return
    english = english_in(texts, code)
    assert not english, f"{code} shopper read English:\n" + "\n".join(english[:20])
    wrong_prices = [f"{where}: {text!r}" for where, text in texts if ENGLISH_PRICE.search(text)]
    assert not wrong_prices, f"{code} prices written the English way:\n" + "\n".join(wrong_prices)


def test_the_public_page_speaks_the_browsers_language(make_shop):
    s = make_shop(demo=True)
    asked = {
        "pl-PL,pl;q=0.9,en;q=0.5": "pl",
        "fr-CA, fr;q=0.9, de;q=0.5, en;q=0.1": "de",  # no French: the next one the shop speaks
        "pt-BR": "pt",  # Brazilian Portuguese falls back to the shop's (Portugal's)
        "xx, ;q=abc, *;q=0.1": "en",  # nothing it speaks, and garbage: the default language
        "": "en",
    }
    for header, code in asked.items():
        r = requests.get(s.url + "/", headers={"Accept-Language": header}, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Language"] == code, header
        assert f'<html lang="{code}">' in r.text
        with shop.speaking(code):
            in_stock = shop.tr("In stock now in:")
        assert in_stock in r.text
        assert (in_stock == "In stock now in:") == (code == "en"), code


def app_button(fake, chat_id):
    """The message with a button that opens the Mini App, or None."""
    return next(
        (m for m in fake.messages(chat_id) if m.buttons and "web_app" in m.buttons[0][0]), None
    )


def test_the_mini_app_buttons_speak_the_shoppers_language(make_shop, fake_tg):
    """Telegram has one menu button for every chat: in the shop's default language. /start's own
    button to the app is in the shopper's, and opens the app in it (?lang=)."""
    s = make_shop(
        env={
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": fake_tg.base_url,
            "WEBHOOK_URL": "https://shop.example.com",
        }
    )
    fake_tg.wait_for(lambda: None in fake_tg.menu_buttons, what="the default menu button")
    assert fake_tg.menu_buttons[None]["text"] == "🛍 Shop"
    assert fake_tg.menu_buttons[None]["web_app"]["url"] == "https://shop.example.com/app"
    ola = Walker(fake_tg, 1097, "pl")
    ola.send("/start")
    app = fake_tg.wait_for(lambda: app_button(fake_tg, 1097), what="the Mini App's button")
    with shop.speaking("pl"):
        assert app.button_texts == [shop.tr("🛍 Open shop")]
        label = shop.tr(shop.MENU_APP)
    assert app.buttons[0][0]["web_app"]["url"] == "https://shop.example.com/app?lang=pl"
    assert label == "🛍 Sklep"
    assert set(fake_tg.menu_buttons) == {None}  # one for every chat (see MENU_APP)
    assert s.bot_state == "running"


def test_a_new_default_language_changes_nothing_any_shopper_reads(tmp_path):
    """The owner writes their welcome only in German and names a product in German too, then
    makes German the default: every language's shoppers read the welcome they read before; the
    German name becomes the product's own (English keeps its), and a language without a name of
    its own reads the default language's, now German."""
    conn = shop.init_db(str(tmp_path / "shop.db"))
    ids = seed(conn, units=[("Berlin", "Mitte", "Gift card", 2500, 1)])
    product_id, district_id = ids[("Gift card", "Mitte")]
    with shop.transaction(conn):
        conn.execute(
            "UPDATE products SET description = 'Valid in every café.', translations = ? "
            "WHERE id = ?",
            (
                '{"de": {"name": "Geschenkkarte", "description": "In jedem Café gültig."}}',
                product_id,
            ),
        )
    shop.save_settings(conn, {"welcome_text.de": "Willkommen bei uns!"})

    def read():
        seen = {}
        for code in shop.available_languages():
            with shop.speaking(code):
                offer = shop.get_offer(conn, product_id, district_id)
                seen[code] = (
                    shop.shop_text(conn, "welcome_text"),
                    offer["name"],
                    offer["description"],
                )
        return seen

    before = read()
    assert before["de"] == ("Willkommen bei uns!", "Geschenkkarte", "In jedem Café gültig.")
    assert before["pl"][1:] == ("Gift card", "Valid in every café.")
    shop.save_settings(conn, {"default_language": "de"})
    after = read()
    assert {c: w for c, (w, _, _) in after.items()} == {c: w for c, (w, _, _) in before.items()}
    for code, (_, *product) in after.items():
        assert product == list(before["en" if code == "en" else "de"][1:]), code
    row = conn.execute("SELECT name, translations FROM products WHERE id = ?", (product_id,))
    name, translations = row.fetchone()
    assert name == "Geschenkkarte"
    assert json.loads(translations) == {
        "en": {"name": "Gift card", "description": "Valid in every café."}
    }
    assert shop.get_setting(conn, "welcome_text") == "Willkommen bei uns!"
    conn.close()
