"""Throwaway gettext catalogs for the tests: the real messages (extracted with the README's pybabel
command), a few of them translated here into German and Polish with their long words, written to a
temporary locales folder. Translators write the real catalogs; none is committed from here."""

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent

# The README's command, keywords and all (run from the project's folder).
EXTRACT = [
    "extract",
    "-F",
    "babel.cfg",
    "-k",
    "tr",
    "-k",
    "ntr:1,2",
    "-k",
    "ptr:1c,2",
    "-k",
    "N_",
    "-c",
    "TRANSLATORS:",
    "--add-location=file",
]


@functools.cache
def template():
    """The messages.pot pybabel extracts from shop.py and the Mini App's scripts (once a run)."""
    with tempfile.TemporaryDirectory() as folder:
        pot = Path(folder) / "messages.pot"
        subprocess.run(
            [sys.executable, "-m", "babel.messages.frontend", *EXTRACT, "-o", str(pot), "."],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
        with open(pot, "rb") as f:
            return read_po(f)


def write_catalog(locales, code, texts):
    """locales/<code>/LC_MESSAGES/messages.po: the template's messages, those in `texts` translated
    (msgid, or (context, msgid), -> text, or [forms] for a plural); others, and texts the template
    lacks (shop.py's not marked yet), are added as they are given."""
    catalog = Catalog(locale=code)
    given = dict(texts)
    for message in template():
        if not message.id:
            continue
        singular = message.id[0] if message.pluralizable else message.id
        key = (message.context, singular) if message.context else singular
        text = given.pop(key, None)
        if message.pluralizable:
            text = tuple(text) if text else ("",) * catalog.num_plurals
            assert len(text) == catalog.num_plurals, (code, singular, text)
        catalog.add(
            message.id,
            text or "",
            locations=message.locations,
            auto_comments=message.auto_comments,
            flags=message.flags,
            context=message.context,
        )
    for key, text in given.items():  # the Python side's, until they are marked for extraction
        context, msgid = key if isinstance(key, tuple) else (None, key)
        catalog.add(msgid, text, locations=[("shop.py", 1)], context=context)
    return _write(locales, code, catalog)


def write_texts(locales, code, texts=()):
    """locales/<code>/LC_MESSAGES/messages.po holding only `texts` (msgid -> text, a tuple of
    forms for a plural): the shop speaks the language, in English where it has no text."""
    catalog = Catalog(locale=code)
    for source, translated in dict(texts).items():
        catalog.add(source, translated)
    return _write(locales, code, catalog)


def _write(locales, code, catalog):
    folder = Path(locales) / code / "LC_MESSAGES"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "messages.po", "wb") as f:
        write_po(f, catalog)
    return catalog


# German and Polish for the shopper's walk (catalog, product, basket, checkout, balance), as a
# native speaker would write them, long words included: the layout must hold them.
GERMAN = {
    ("tab", "Shop"): "Shop",
    ("tab", "Basket"): "Warenkorb",
    ("tab", "Orders"): "Bestellungen",
    ("tab", "Balance"): "Guthaben",
    "Back": "Zurück",
    "Preview (sandbox)": "Vorschau (Sandbox)",
    "🧪 Test mode": "🧪 Testmodus",
    "You are browsing as a preview shopper in the sandbox: nothing here is real, and payments can "
    "be simulated.": "Sie stöbern als Vorschaukundin oder Vorschaukunde in der Sandbox: Hier ist "
    "nichts echt, und Zahlungen lassen sich simulieren.",
    "🧪 Test mode: you may buy here and simulate payments. Other shoppers cannot buy until the "
    "shop takes real payments.": "🧪 Testmodus: Sie dürfen hier einkaufen und Zahlungen "
    "simulieren. Andere Kundschaft kann erst einkaufen, wenn der Shop echte Zahlungen annimmt.",
    "Loading…": "Wird geladen…",
    "Loading {name}…": "{name} wird geladen…",
    "Choose a city": "Stadt auswählen",
    "{n} district": ["{n} Bezirk", "{n} Bezirke"],
    "{n} product": ["{n} Produkt", "{n} Produkte"],
    "from {price}": "ab {price}",
    "⛶ Full screen": "⛶ Vollbildmodus",
    "↙ Leave full screen": "↙ Vollbildmodus verlassen",
    "📲 Add to home screen": "📲 Zum Startbildschirm hinzufügen",
    "{n} available": ["{n} verfügbar", "{n} verfügbar"],
    "Sold out": "Ausverkauft",
    "In your basket": "Im Warenkorb",
    "View basket · {total}": "Warenkorb ansehen · {total}",
    "Add to basket · {price}": "In den Warenkorb legen · {price}",
    "Buy now": "Sofortkaufbestätigung",
    "⭐ Paid in Telegram Stars": "⭐ Bezahlung ausschließlich in Telegram Stars",
    "In your basket: {amount}": "Im Warenkorb: {amount}",
    "One more {name}": "Ein Stück mehr: {name}",
    "One less {name}": "Ein Stück weniger: {name}",
    "Quantity": "Menge",
    "Added to the basket": "In den Warenkorb gelegt",
    "Basket": "Warenkorb",
    "Checkout · {total}": "Zur Kasse gehen · {total}",
    "Remove": "Aus dem Warenkorb entfernen",
    "Remove {name}": "{name} aus dem Warenkorb entfernen",
    "Total": "Gesamtsumme",
    "item": ["Artikel", "Artikel"],
    "Your basket is empty.": "Ihr Warenkorb ist leer.",
    "Browse the shop": "Im Shop stöbern",
    "Checkout": "Kasse",
    "Pay with": "Bezahlen mit",
    "⭐ Telegram Stars — {stars}": "⭐ Telegram Stars — {stars}",
    "Paid inside Telegram": "Bezahlung direkt in Telegram",
    "🧪 Simulated here: no real Stars": "🧪 Hier nur simuliert: keine echten Stars",
    "💰 Balance": "💰 Guthaben",
    "{balance} available": "{balance} verfügbar",
    "{balance} · {short} short": "{balance} · es fehlen {short}",
    "{name} · choose the network": "{name} · Netzwerk auswählen",
    "{asset}, {name}: networks": "{asset}, {name}: Netzwerke",
    "from {amount}": "ab {amount}",
    "Choose how to pay": "Zahlungsmethodenauswahl",
    "Pay {amount} with {coin}": "{amount} mit {coin} bezahlen",
    "Pay {amount} from balance": "{amount} vom Guthaben bezahlen",
    "Pay {stars}": "{stars} bezahlen",
    "Top up your balance": "Guthabenaufladung",
    "Digital goods are paid in Telegram Stars, by Telegram's rule.": "Digitale Waren werden nach "
    "den Regeln von Telegram ausschließlich in Telegram Stars bezahlt.",
    "{quantity} × {price}": "{quantity} × {price}",
    "{quantity} × {price} = {sum}": "{quantity} × {price} = {sum}",
    "Balance": "Guthaben",
    "Balance: {amount}": "Guthaben: {amount}",
    "Top up": "Guthaben aufladen",
    "Amount in EUR": "Betrag in EUR",
    "From {min} to {max}.": "Von {min} bis {max}.",
    "From {min} to {max}": "Von {min} bis {max}",
    "Enter an amount": "Betrag eingeben",
    "Choose a coin": "Kryptowährung auswählen",
    "Top up with": "Aufladen mit",
    "e.g. 20": "z. B. 20",
    "Telegram ID {id}": "Telegram-ID {id}",
    "Language": "Sprache",
    "Telegram's language": "Sprache von Telegram",
    "Order #{id} · {amount}": "Bestellung Nr. {id} · {amount}",
    "Send exactly": "Genau diesen Betrag senden",
    "Copy": "Kopieren",
    "Copy amount": "Betrag kopieren",
    "Copy address": "Adresse kopieren",
    "To this address": "An diese Adresse",
    "Cancel invoice": "Rechnungsstornierung",
    "Pay in full": "Vollständig bezahlen",
    "Open my orders": "Meine Bestellungen öffnen",
    "Pay within {time} · the items are reserved until then": "Zahlungsfrist {time} · bis dahin "
    "sind die Artikel für Sie reserviert",
    "🧪 Sandbox: a test invoice, no real money.": "🧪 Sandbox: eine Testrechnung, kein echtes "
    "Geld.",
    "🧪 Simulate payment (sandbox):": "🧪 Zahlung simulieren (Sandbox):",
    "Pay half": "Hälfte bezahlen",
    "Overpay": "Zu viel bezahlen",
    "Let it expire": "Ablaufen lassen",
    "Open in wallet": "In der Wallet öffnen",
    "QR code with the address and amount": "QR-Code mit Adresse und Betrag",
    "{key} must be a whole number.": "{key} muss eine ganze Zahl sein.",
    "Missing Telegram initData: open the shop from the bot.": "Telegram-initData fehlen: Öffnen "
    "Sie den Shop über den Bot.",
    "⏳ Waiting for your payment": "⏳ Wir warten auf Ihre Zahlung",
}

POLISH = {
    ("tab", "Shop"): "Sklep",
    ("tab", "Basket"): "Koszyk",
    ("tab", "Orders"): "Zamówienia",
    ("tab", "Balance"): "Saldo",
    "Back": "Wstecz",
    "Preview (sandbox)": "Podgląd (piaskownica)",
    "🧪 Test mode": "🧪 Tryb testowy",
    "You are browsing as a preview shopper in the sandbox: nothing here is real, and payments can "
    "be simulated.": "Przeglądasz sklep jako klient podglądu w piaskownicy: nic tu nie jest "
    "prawdziwe, a płatności można symulować.",
    "🧪 Test mode: you may buy here and simulate payments. Other shoppers cannot buy until the "
    "shop takes real payments.": "🧪 Tryb testowy: możesz tu kupować i symulować płatności. Inni "
    "klienci nie mogą kupować, dopóki sklep nie przyjmuje prawdziwych płatności.",
    "Loading…": "Ładowanie…",
    "Loading {name}…": "Ładowanie: {name}…",
    "Choose a city": "Wybierz miasto",
    "{n} district": ["{n} dzielnica", "{n} dzielnice", "{n} dzielnic"],
    "{n} product": ["{n} produkt", "{n} produkty", "{n} produktów"],
    "from {price}": "od {price}",
    "⛶ Full screen": "⛶ Pełny ekran",
    "↙ Leave full screen": "↙ Zamknij pełny ekran",
    "📲 Add to home screen": "📲 Dodaj do ekranu głównego",
    "{n} available": ["{n} dostępna sztuka", "{n} dostępne sztuki", "{n} dostępnych sztuk"],
    "Sold out": "Wyprzedane",
    "In your basket": "W koszyku",
    "View basket · {total}": "Zobacz koszyk · {total}",
    "Add to basket · {price}": "Dodaj do koszyka · {price}",
    "Buy now": "Kup natychmiast",
    "⭐ Paid in Telegram Stars": "⭐ Płatność wyłącznie w Telegram Stars",
    "In your basket: {amount}": "W koszyku: {amount}",
    "One more {name}": "Jeszcze jedna sztuka: {name}",
    "One less {name}": "Jedna sztuka mniej: {name}",
    "Quantity": "Ilość",
    "Added to the basket": "Dodano do koszyka",
    "Basket": "Koszyk",
    "Checkout · {total}": "Przejdź do kasy · {total}",
    "Remove": "Usuń z koszyka",
    "Remove {name}": "Usuń z koszyka: {name}",
    "Total": "Razem do zapłaty",
    "item": ["produkt", "produkty", "produktów"],
    "Your basket is empty.": "Twój koszyk jest pusty.",
    "Browse the shop": "Przeglądaj sklep",
    "Checkout": "Kasa",
    "Pay with": "Zapłać przez",
    "⭐ Telegram Stars — {stars}": "⭐ Telegram Stars — {stars}",
    "Paid inside Telegram": "Płatność bezpośrednio w Telegramie",
    "🧪 Simulated here: no real Stars": "🧪 Tu tylko symulacja: bez prawdziwych Stars",
    "💰 Balance": "💰 Saldo",
    "{balance} available": "{balance} dostępne",
    "{balance} · {short} short": "{balance} · brakuje {short}",
    "{name} · choose the network": "{name} · wybierz sieć",
    "{asset}, {name}: networks": "{asset}, {name}: sieci",
    "from {amount}": "od {amount}",
    "Choose how to pay": "Wybierz sposób płatności",
    "Pay {amount} with {coin}": "Zapłać {amount} w {coin}",
    "Pay {amount} from balance": "Zapłać {amount} z salda",
    "Pay {stars}": "Zapłać {stars}",
    "Top up your balance": "Doładuj saldo",
    "Digital goods are paid in Telegram Stars, by Telegram's rule.": "Zgodnie z zasadami "
    "Telegrama za towary cyfrowe płaci się wyłącznie w Telegram Stars.",
    "{quantity} × {price}": "{quantity} × {price}",
    "{quantity} × {price} = {sum}": "{quantity} × {price} = {sum}",
    "Balance": "Saldo",
    "Balance: {amount}": "Saldo: {amount}",
    "Top up": "Doładowanie salda",
    "Amount in EUR": "Kwota w EUR",
    "From {min} to {max}.": "Od {min} do {max}.",
    "From {min} to {max}": "Od {min} do {max}",
    "Enter an amount": "Wpisz kwotę",
    "Choose a coin": "Wybierz kryptowalutę",
    "Top up with": "Doładuj przez",
    "e.g. 20": "np. 20",
    "Telegram ID {id}": "Identyfikator w Telegramie {id}",
    "Language": "Język",
    "Telegram's language": "Język Telegrama",
    "Order #{id} · {amount}": "Zamówienie nr {id} · {amount}",
    "Send exactly": "Wyślij dokładnie",
    "Copy": "Kopiuj",
    "Copy amount": "Kopiuj kwotę",
    "Copy address": "Kopiuj adres",
    "To this address": "Na ten adres",
    "Cancel invoice": "Anuluj fakturę",
    "Pay in full": "Zapłać całość",
    "Open my orders": "Otwórz moje zamówienia",
    "Pay within {time} · the items are reserved until then": "Zapłać w ciągu {time} · do tego "
    "czasu produkty są zarezerwowane",
    "🧪 Sandbox: a test invoice, no real money.": "🧪 Piaskownica: faktura testowa, bez "
    "prawdziwych pieniędzy.",
    "🧪 Simulate payment (sandbox):": "🧪 Symuluj płatność (piaskownica):",
    "Pay half": "Zapłać połowę",
    "Overpay": "Nadpłać",
    "Let it expire": "Pozwól wygasnąć",
    "Open in wallet": "Otwórz w portfelu",
    "QR code with the address and amount": "Kod QR z adresem i kwotą",
    "{key} must be a whole number.": "{key} musi być liczbą całkowitą.",
    "⏳ Waiting for your payment": "⏳ Czekamy na Twoją płatność",
}

TEXTS = {"de": GERMAN, "pl": POLISH}
