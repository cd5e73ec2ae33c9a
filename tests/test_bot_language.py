"""The bot in the shopper's language: /language and the reply keyboard after a switch, Telegram's
language_code followed, prices in the shopper's format, and the bot's commands and descriptions
told to Telegram in each language once (again only when they change). The real shop in this
process with its bot, against the Bot API stand-in, speaking throwaway German and Polish catalogs
of a few texts (in place of the shop's own, so the tests do not depend on translators)."""

import pytest

import shop
import throwaway_catalogs
from conftest import TOKEN, Shopper, seed

# A few of the bot's texts in German and Polish; everything else stays in English (the source).
THROWAWAY = {
    "de": {
        "🛒 Shop": "🛒 Laden",
        "🧺 Basket": "🧺 Warenkorb",
        "👤 Profile": "👤 Profil",
        "💰 Top up": "💰 Aufladen",
        "📦 Orders": "📦 Bestellungen",
        "❓ Help": "❓ Hilfe",
        "🛒 <b>Choose a city</b>": "🛒 <b>Stadt wählen</b>",
        "💶 Price: {price}": "💶 Preis: {price}",
        "🌐 Language: {language}": "🌐 Sprache: {language}",
        "Main menu": "Hauptmenü",
        "Choose your language": "Sprache wählen",
        "{shop}: browse the shop, pay in Telegram Stars, in crypto or from your balance, and get "
        "your goods right here in this chat.": "{shop}: stöbern, mit Telegram Stars, Krypto oder "
        "Guthaben bezahlen; die Ware kommt hier im Chat an.",
        "{shop}: shop in Telegram, pay in Stars, crypto or balance.": "{shop}: einkaufen in "
        "Telegram.",
    },
    "pl": {
        "🛒 Shop": "🛒 Sklep",
        "🧺 Basket": "🧺 Koszyk",
        "👤 Profile": "👤 Profil",
        "💰 Top up": "💰 Doładuj",
        "📦 Orders": "📦 Zamówienia",
        "❓ Help": "❓ Pomoc",
        "Main menu": "Menu główne",
        ("Added to your basket ({n} there now).",) * 2: (
            "Dodano do koszyka (teraz {n} sztuka).",
            "Dodano do koszyka (teraz {n} sztuki).",
            "Dodano do koszyka (teraz {n} sztuk).",
        ),
    },
}


GERMAN_KEYBOARD = [
    ["🛒 Laden", "🧺 Warenkorb"],
    ["👤 Profil", "💰 Aufladen"],
    ["📦 Bestellungen", "❓ Hilfe"],
]
ENGLISH_KEYBOARD = [["🛒 Shop", "🧺 Basket"], ["👤 Profile", "💰 Top up"], ["📦 Orders", "❓ Help"]]


@pytest.fixture
def catalogs(tmp_path, monkeypatch):
    """The throwaway catalogs as the shop's locales/ (read afresh, and forgotten afterwards)."""
    folder = tmp_path / "locales"
    for code, texts in THROWAWAY.items():
        throwaway_catalogs.write_texts(folder, code, texts)
    monkeypatch.setattr(shop, "LOCALES_DIR", folder)  # (the shop keeps catalogs per folder)
    yield folder


@pytest.fixture
def bot_shop(catalogs, make_shop, fake_tg):
    """Factory: a sandbox shop with its bot, speaking the throwaway catalogs, on one database (a
    second call starts it again on the same file), with a gift card in Berlin."""

    made = []

    def make(**env):
        s = make_shop(env={"BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_tg.base_url, **env})
        s.conn = shop.connect(s.config.shop_db)
        made.append(s)
        fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
        return s

    yield make
    for s in made:
        s.conn.close()


def telegram_calls(fake_tg, *methods):
    return [(method, params) for method, params in fake_tg.calls if method in methods]


def test_language_switches_and_is_remembered_and_the_keyboard_follows(fake_tg, bot_shop):
    s = bot_shop()
    seed(s.conn, [("Berlin", "Mitte", "Gift card", 2500, 3)])
    ann = Shopper(fake_tg, 101)  # Telegram in English
    assert ann.send("/start", "Welcome").keyboard == ENGLISH_KEYBOARD
    menu = ann.send("/language", "Language")
    assert menu.button_texts == [
        "✓ English",
        "Deutsch",
        "Polski",
        "✓ 📱 Telegram's language",
        "👤 Profile",
    ]
    assert ann.click("Deutsch") == "✓ Deutsch"
    switched = fake_tg.wait_message(101, "🌐 Sprache: Deutsch")
    assert switched.keyboard == GERMAN_KEYBOARD
    assert shop.get_user(s.conn, 101)["language"] == "de"
    assert menu.button_texts == [  # the menu itself, now in German (as far as translated)
        "English",
        "✓ Deutsch",
        "Polski",
        "📱 Telegram's language",
        "👤 Profil",
    ]

    # The German keyboard works, and so does the English one the chat may still show.
    assert "Stadt wählen" in ann.send("🛒 Laden", "Stadt").text
    assert "Stadt wählen" in ann.send("🛒 Shop", "Stadt").text
    ann.click("Berlin")
    ann.click("Mitte")
    ann.click("Gift card · 25,00\u00a0€")
    assert "💶 Preis: 25,00\u00a0€" in ann.screen.text
    # Remembered: Telegram still says English.
    assert ann.send("/start", "Welcome").keyboard == GERMAN_KEYBOARD

    # Back to Telegram's language from the profile.
    ann.send("👤 Profil", "Telegram ID")
    ann.click("🌐 Language")
    assert "✓ 📱 Telegram's language" not in ann.screen.button_texts
    assert ann.click("📱 Telegram's language") == "✓ English"
    back = fake_tg.wait_message(101, "🌐 Language: English")
    assert back.keyboard == ENGLISH_KEYBOARD
    assert shop.get_user(s.conn, 101)["language"] is None
    ann.send("🛒 Shop", "Choose a city")
    ann.click("Berlin")
    ann.click("Mitte")
    assert "Gift card · €25.00" in ann.screen.button_texts


def test_telegrams_language_is_followed_with_its_plural_forms(fake_tg, bot_shop):
    s = bot_shop()
    seed(s.conn, [("Kraków", "Stare Miasto", "Naklejka", 150, 6)])
    ola = Shopper(fake_tg, 102, "Ola", language_code="pl")
    assert ola.send("/start", "Welcome").keyboard[0] == ["🛒 Sklep", "🧺 Koszyk"]
    ola.send("🛒 Sklep", "Choose a city")
    for step in ("Kraków", "Stare Miasto", "Naklejka · 1,50\u00a0€"):
        ola.click(step)
    said = [ola.click("➕ Add to basket") for _ in range(5)]
    assert said[0] == "Dodano do koszyka (teraz 1 sztuka)."
    assert said[1] == "Dodano do koszyka (teraz 2 sztuki)."
    assert said[4] == "Dodano do koszyka (teraz 5 sztuk)."
    # A language the shop does not speak: its default, English.
    joao = Shopper(fake_tg, 103, "João", language_code="pt-br")
    assert joao.send("/start", "Welcome").keyboard == ENGLISH_KEYBOARD


def test_commands_and_descriptions_are_told_per_language_once(fake_tg, bot_shop):
    kinds = ("setMyCommands", "setMyDescription", "setMyShortDescription")
    first = bot_shop()
    calls = telegram_calls(fake_tg, *kinds)
    assert sorted((m, p.get("language_code", "")) for m, p in calls) == sorted(
        (m, code) for m in kinds for code in ("", "de", "pl")
    )
    assert fake_tg.commands_for("")[0] == {"command": "start", "description": "Main menu"}
    assert fake_tg.commands_for("de")[0] == {"command": "start", "description": "Hauptmenü"}
    assert {"command": "language", "description": "Sprache wählen"} in fake_tg.commands_for("de")
    assert fake_tg.commands_for("pl")[0]["description"] == "Menu główne"
    assert [c["command"] for c in fake_tg.commands_for("pl")] == [c for c, _ in shop.COMMANDS]
    assert fake_tg.bot_text("description", "de").startswith("Demo Shop: stöbern")
    assert fake_tg.bot_text("short_description", "") == (
        "Demo Shop: shop in Telegram, pay in Stars, crypto or balance."
    )
    Shopper(fake_tg, 104, language_code="de-at").send("/start", "Welcome")
    assert fake_tg.commands_seen_by(104)[0]["description"] == "Hauptmenü"

    first.stop()  # nothing changed: the next start tells Telegram nothing
    bot_shop().stop()
    assert len(telegram_calls(fake_tg, *kinds)) == len(calls)

    shop.save_settings(first.conn, {"shop_name": "Łódź Books"})  # a new name: told again
    bot_shop()
    again = telegram_calls(fake_tg, *kinds)[len(calls) :]
    assert len(again) == len(calls)
    assert fake_tg.bot_text("description", "de").startswith("Łódź Books: stöbern")
    assert fake_tg.bot_text("description", "").startswith("Łódź Books: browse the shop")
