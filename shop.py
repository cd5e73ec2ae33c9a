#!/usr/bin/env python3
"""A self-hosted Telegram shop in one script.

Shoppers browse and buy through a Telegram bot or its Mini App and pay in crypto
(NOWPayments, behind a payment-provider seam) or from their balance; what they
bought (a voucher code, a licence key, a download link, pickup instructions, with
an optional photo) arrives in their chat as soon as it is paid. One process, one
SQLite file:

    telebot polling thread --.
    waitress worker threads --+--> services fn(conn, ...) --> SQLite (WAL, one file)
    (Mini App API, IPN webhook,|            |
     sandbox NOWPayments)      |            '--> outbox rows --> sender --> Telegram
    APScheduler jobs ---------+
    outbox sender ------------'

Services are plain functions over a connection. They never talk to Telegram or
the network: what must be said is written to the outbox in the same
transaction as the state change that caused it, and the sender delivers it,
within Telegram's rate limits, even across restarts. Calls to payment providers
happen in PaymentDesk, between transactions.

Flows:
    browse:   /shop -> city -> district -> product card (photo, price, stock)
    basket:   add / change quantity / remove -> checkout
    balance:  one transaction debits the ledger, sells the units, records the
              order and queues the delivery
    crypto:   reserve the units -> provider.create_invoice -> invoice; webhook, poll
              or "check status" -> PaymentNews -> apply_payment_status (one
              transaction, once): deliver, or credit what arrived, or release the units
    deliver:  outbox -> each unit's content (and photo) in the buyer's chat

Sections (grep for their banners, "# Name ####"):
     1. Languages -- gettext catalogs per language, tr()/ntr(), speaking(), CLDR formats
     2. Errors -- ShopError and its kinds (each with its shopper-facing message), storage trouble
     3. Money, time, text and JSON -- cents, exact decimals, timestamps, Telegram HTML
     4. Configuration -- Config from the environment and .env
     5. Logging -- secrets redacted, honest levels
     6. Database -- connect(), transaction(), schema.sql and numbered MIGRATIONS
     7. Services: users and settings
     8. Services: ledger
     9. Services: outbox
    10. Services: catalog
    11. Services: catalog import
    12. Services: basket
    13. Services: discount codes -- their rules, quotes, the one rounding rule
    14. Services: orders
    15. Services: payments -- PaymentNews in, exactly once; checkouts and limits
    16. Services: owner -- the admin's sessions, catalog edits, refunds, pages, exports
    17. Payment providers -- PaymentProvider, NowPayments, the sandbox, PAYMENT_PROVIDERS
    18. Payment desk -- invoices, webhooks, checks, reconciliation, for every provider
    19. Web -- the app's hooks, the storefront, webhooks
    20. Web: Mini App -- /app and its JSON API
    21. Web: admin -- the htmx admin
    22. Bot -- pure screen_* functions, then ShopBot's handlers
    23. Outbox sender
    24. Scheduler -- JOBS
    25. Runtime -- Shop builds and starts everything
    26. Command line

The rule (tests/test_layering.py checks it): a section uses only sections above
it. Services take `conn` and plain values, never the Shop, bottle, telebot or
requests. Adapters (web and bot handlers, scheduler jobs) hold no SQL and no
transaction(): they call services. Only the runtime builds the long-lived
objects (the Shop, the desk, the bot, the sender, the scheduler, the apps).

A new way to pay is a PaymentProvider subclass registered in PAYMENT_PROVIDERS:
it says what it offers, creates invoices and reads its webhooks into PaymentNews;
the desk, the limits, the reservations and the exactly-once settling are shared.

Run `python shop.py --help`. Importing this module has no side effects.
"""

import argparse
import collections
import contextvars
import csv
import email.utils
import functools
import glob
import gzip
import hashlib
import hmac
import html
import http.client
import io
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FuturesTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import bottle
import requests
import telebot
import urllib3
import waitress
import waitress.trigger
import waitress.wasyncore
from apscheduler.schedulers.background import BackgroundScheduler
from dotenv import dotenv_values
from telebot import apihelper, types as tg

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent
SCHEMA_PATH = ROOT / "schema.sql"
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"

log = logging.getLogger("shop")


# Languages #####################################################################

# Shoppers read the shop in their language: gettext catalogs, one file per language
# (locales/<lang>/LC_MESSAGES/messages.po, read on first use; no compiled .mo to keep in step),
# and CLDR's formats through Babel. The language of the moment is a context variable: the bot and
# the web set it for each update and request (speaking()); a service writing to someone else
# speaks the addressee's language. The code's own texts are English, the source language.

LOCALES_DIR = ROOT / "locales"
SOURCE_LANGUAGE = "en"


# CLDR formats a bare language the way one country writes it; where the shop means another, the
# locale it formats with. English: Ireland (€, a 24-hour clock); Portuguese: Portugal, not Brazil.
FORMAT_LOCALES = {"en": "en_IE", "pt": "pt_PT", "es": "es_ES"}


def N_(message):
    """Marks a text for translation where it is defined; tr() translates it where it is shown."""
    return message


def available_languages():
    """The source language, then every language with a catalog under LOCALES_DIR, by code."""
    return _catalogs_in(LOCALES_DIR)


@functools.cache
def _catalogs_in(folder):
    found = sorted(p.parent.parent.name for p in Path(folder).glob("*/LC_MESSAGES/messages.po"))
    return (SOURCE_LANGUAGE, *(code for code in found if code != SOURCE_LANGUAGE))


def match_language(tag):
    """The shop's language for an IETF tag as Telegram sends it ('de', 'pt-br', 'uk'), or None:
    the exact language and region first, then the language alone."""
    if not isinstance(tag, str) or not tag.strip():
        return None
    wanted = tag.strip().replace("-", "_").lower()
    by_lower = _languages_by_lower(LOCALES_DIR)
    return by_lower.get(wanted) or by_lower.get(wanted.split("_")[0])


@functools.cache
def _languages_by_lower(folder):
    return {code.lower(): code for code in _catalogs_in(folder)}


class Language:
    """One language: its catalog (falling back to its base language's, then to the source
    texts) and its formats."""

    def __init__(self, code, folder=None):
        self.code = code
        self.format_locale = FORMAT_LOCALES.get(code, code)
        self.translations = _read_catalog(code, Path(folder or LOCALES_DIR))
        self._money = {}

    def gettext(self, message):
        return self.translations.gettext(message)

    def ngettext(self, singular, plural, n):
        return self.translations.ngettext(singular, plural, n)

    def pgettext(self, context, message):
        return self.translations.pgettext(context, message)

    def money(self, cents):
        """Euro cents as this language writes them: '€25.00', '25,00 €', '1 234,50 €'."""
        text = self._money.get(cents)
        if text is None:
            import babel.numbers

            text = babel.numbers.format_currency(
                Decimal(cents).scaleb(-2), "EUR", locale=self.format_locale
            )
            if len(self._money) < 4096:
                self._money[cents] = text
        return text

    def number(self, n):
        """A whole number with this language's grouping: '1,250', '1.250', '1 250'."""
        import babel.numbers

        return babel.numbers.format_decimal(int(n), locale=self.format_locale)

    def percent(self, n):
        """A whole percentage as this language writes it: '5%', '5 %', '5 %'."""
        import babel.numbers

        return babel.numbers.format_percent(Decimal(int(n)) / 100, locale=self.format_locale)

    def when(self, moment):
        """A UTC moment (datetime or the shop's ISO text) as this language writes a date and
        time to the minute: '14 Mar 2026, 18:05', '14. März 2026, 18:05'."""
        import babel.dates

        if isinstance(moment, str):
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        # CLDR has date and time skeletons apart (Babel cannot match "yMMMdHm" as one): each,
        # then the locale's pattern joining a date and a time.
        date, time = (
            babel.dates.format_skeleton(
                part, moment, tzinfo=timezone.utc, locale=self.format_locale
            )
            for part in ("yMMMd", "Hm")
        )
        joined = babel.dates.get_datetime_format("medium", locale=self.format_locale)
        return str(joined).replace("{1}", date).replace("{0}", time)

    def name(self):
        """The language's name in itself: 'Deutsch', 'Polski', 'Українська'. Its catalog says it
        (no locale data is loaded for a language only named in a list); CLDR's name otherwise."""
        # TRANSLATORS: the name of the language of this catalog, written in it ("Deutsch",
        # "Polski", "Українська"), as the language pickers list it.
        name = self.pgettext("language name", "English")
        if name == "English" and self.code != SOURCE_LANGUAGE:
            import babel

            name = babel.Locale.parse(self.code).get_display_name(self.code) or self.code
        return name[:1].upper() + name[1:]


def _read_catalog(code, folder):
    """The gettext translations of a language from its .po file, chained to its base language
    (pt_BR -> pt); the source language has none."""
    import gettext

    if code == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    import babel.messages.mofile
    import babel.messages.pofile

    with open(folder / code / "LC_MESSAGES" / "messages.po", "rb") as f:
        catalog = babel.messages.pofile.read_po(f, locale=code)
    buffer = io.BytesIO()
    babel.messages.mofile.write_mo(buffer, catalog)
    buffer.seek(0)
    translations = gettext.GNUTranslations(buffer)
    base = code.split("_")[0]
    if base != code and base in _catalogs_in(folder):
        translations.add_fallback(_read_catalog(base, folder))
    return translations


_languages, _languages_lock = {}, threading.Lock()


def language(code):
    """The Language for a code from available_languages(), read on first use and kept (per
    catalogs folder: one read from another LOCALES_DIR is never taken for this one's)."""
    key = (LOCALES_DIR, code)
    found = _languages.get(key)
    if found is None:
        with _languages_lock:
            found = _languages.get(key)
            if found is None:
                if code not in _catalogs_in(key[0]):
                    raise ValueError(f"no catalog for language {code!r} under {key[0]}")
                found = _languages[key] = Language(code, key[0])
    return found


_speaking = contextvars.ContextVar("speaking", default=None)


@contextmanager
def speaking(code):
    """Within the block, tr() and the formats speak this language (a code from
    available_languages())."""
    token = _speaking.set(language(code))
    try:
        yield
    finally:
        _speaking.reset(token)


def current_language():
    return _speaking.get() or language(SOURCE_LANGUAGE)


def tr(message, **values):
    """`message` in the language of the moment, its {placeholders} filled from `values`."""
    text = current_language().gettext(message)
    return text.format(**values) if values else text


def ntr(singular, plural, n, **values):
    """The plural form for `n` in the language of the moment ({n} is filled in too)."""
    return current_language().ngettext(singular, plural, n).format(n=n, **values)


def ptr(context, message, **values):
    """tr() for a short text whose meaning depends on where it stands ('Order' the noun)."""
    text = current_language().pgettext(context, message)
    return text.format(**values) if values else text


# Errors ########################################################################


class Throttle:
    """Lets a repeated event through at most once per `seconds`."""

    def __init__(self, seconds):
        self.seconds, self.last, self.lock = seconds, {}, threading.Lock()

    def __call__(self, key=None):
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, -1e9) < self.seconds:
                return False
            self.last[key] = now
            return True


class ShopError(Exception):
    """A refusal the person who asked reads: its message, in their language (the kind's own
    `message`, translated, unless the raise gives a more precise one), and an HTTP status."""

    message = N_("Something went wrong.")
    status = 400

    def __init__(self, message=None):
        super().__init__(message or tr(self.message))


class InvalidInput(ShopError):
    message = N_("That input is not valid.")


class NotFound(ShopError):
    message = N_("That does not exist (any more).")

    status = 404


class SoldOut(ShopError):
    message = N_("Sorry, that is sold out.")

    status = 409


class PriceChanged(ShopError):
    message = N_(
        "Your basket or its prices changed since you opened checkout; please check the new total."
    )

    status = 409


class Banned(ShopError):
    message = N_("Sorry, this shop is not available to you.")

    status = 403


class NotSellingYet(ShopError):
    message = N_(
        "🧪 This shop is in test mode: it is not selling yet, so nothing can be bought or paid "
        "here. You are welcome to look around."
    )

    status = 403


class PromoRefused(ShopError):
    message = N_("This promo code cannot be used here.")

    status = 409


class LimitReached(ShopError):
    message = N_("You have too many open invoices; pay or cancel one first.")

    status = 429


class ProviderError(ShopError):
    message = N_(
        "The payment service is not answering right now. Please try again in a few minutes."
    )

    status = 502

    def __init__(self, detail, code=None, http=None, message=None):
        super().__init__(message)
        self.detail, self.code, self.http = detail, code, http

    @property
    def outage(self):
        """Every call fails alike (no answer, 5xx, 429, our API key refused), as opposed to this
        one request."""
        return self.http is None or self.http >= 500 or self.http in (401, 403, 429)


class UnknownPayment(ShopError):
    message = N_("No such payment.")

    status = 404


class PaymentMismatch(ShopError):
    message = N_("The payment does not match the one the shop created.")

    status = 409


class Unauthorized(ShopError):
    message = N_("Please open the shop from the Telegram bot.")

    status = 401


class CatalogError(ShopError):
    """The catalog file is invalid."""

    def __init__(self, errors):
        self.errors = list(errors)
        shown = self.errors[:20]
        more = len(self.errors) - len(shown)
        super().__init__("\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))


# SQLite errors that mean the database cannot be written now, and what the owner should look at.
STORAGE_PROBLEMS = {
    "database or disk is full": "the disk holding the database is full; free some space",
    "readonly database": "the database file is read-only; check its permissions and mount",
    "disk I/O error": "the disk reported an I/O error; check the disk",
    "database is locked": "another program holds the database locked; stop it",
    "unable to open database": "the database file cannot be opened; check its folder",
}


STORAGE_BUSY = N_("The shop cannot save anything right now. Please try again in a few minutes.")


_storage_alarm = Throttle(60)


def storage_problem(e):
    """If `e` says the database cannot be written (a full disk, a read-only file ...), log it for
    the owner (once a minute) and return True; the caller tells the shopper STORAGE_BUSY."""
    if not isinstance(e, sqlite3.OperationalError):
        return False
    for key, advice in STORAGE_PROBLEMS.items():
        if key in str(e):
            if _storage_alarm(key):
                log.error(
                    "database: %s (%s); nothing can be saved until then, orders and payments wait",
                    advice,
                    e,
                )
            return True
    return False


def network_reason(e):
    """A network failure in words without its URL (which holds the bot token and the message)."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    detail = errno.group(0) if errno else re.sub(r"\S*://\S*|/bot\S*", "…", text)[:120]
    return f"{type(e).__name__}: {detail}"


# Money, time, text and JSON ####################################################

MAX_EUR_CENTS = 1_000_000_00


_AMOUNT_RE = re.compile(r"^(\d{1,9})(?:[.,](\d{1,2}))?$")


def parse_eur(text, *, minimum=1, maximum=MAX_EUR_CENTS):
    """'20', '20.5', '20,50', '€20', '20 EUR' -> cents. Raises InvalidInput saying why."""
    if isinstance(text, Decimal) or (isinstance(text, int) and not isinstance(text, bool)):
        text = str(text)
    if not isinstance(text, str):
        raise InvalidInput("must be an amount in EUR like 25.00")
    raw = text
    text = text.strip().replace("\u00a0", " ")
    text = re.sub(r"^(€|eur)\s*|\s*(€|eur|euro|euros)$", "", text, flags=re.IGNORECASE).strip()
    if text.startswith("-"):
        raise InvalidInput(f"must be positive, got {raw!r}")
    m = _AMOUNT_RE.match(text)
    if not m:
        raise InvalidInput(f"must be an amount in EUR like 25.00, got {raw!r}")
    cents = int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))
    if cents < minimum:
        raise InvalidInput(f"must be at least {cents_to_str(minimum)} EUR, got {raw!r}")
    if cents > maximum:
        raise InvalidInput(f"must be at most {cents_to_str(maximum)} EUR, got {raw!r}")
    return cents


def deposit_cents(text, minimum, maximum):
    """Cents of a top-up amount as a shopper typed it ('20', '20,50', '€20'; the Mini App's
    "20.50" or 20), within the shop's limits; else InvalidInput saying why in a sentence of the
    shopper's language."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise InvalidInput(tr("The amount must be a number of euros, like 20 or 20.50."))
    try:
        cents = parse_eur(text, minimum=0, maximum=10**11)
    except InvalidInput:
        if re.match(r"\s*(€|eur)?\s*-", text, flags=re.IGNORECASE):
            raise InvalidInput(tr("The amount must be positive.")) from None
        raise InvalidInput(tr("The amount must be a number of euros, like 20 or 20.50.")) from None
    if cents < minimum:
        raise InvalidInput(tr("The amount must be at least {minimum}.", minimum=fmt_eur(minimum)))
    if cents > maximum:
        raise InvalidInput(tr("The amount must be at most {maximum}.", maximum=fmt_eur(maximum)))
    return cents


def cents_to_str(cents):
    """2550 -> '25.50' (the API's and the ledger's notation)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def fmt_eur(cents):
    """2550 -> '€25.50', '25,50 €' ... (what shoppers read, in the language of the moment)."""
    return current_language().money(cents)


def fmt_stars(stars):
    """1250 -> '1,250 ⭐', '1.250 ⭐' ... (whole Telegram Stars)."""
    return f"{current_language().number(stars)} ⭐"


def fmt_percent(n):
    """5 -> '5%', '5 %' ... (a whole percentage, in the language of the moment)."""
    return current_language().percent(n)


class Money:
    """Euro cents that format themselves in the language of the moment when put into a text
    (tr("Balance: {balance}", balance=Money(2550)) -> 'Balance: 25,50 €' in German)."""

    __slots__ = ("cents",)

    def __init__(self, cents):
        self.cents = cents

    def __format__(self, spec):
        return fmt_eur(self.cents)


class StarsAmount(Money):
    """Whole Telegram Stars, formatted like Money: '1.250 ⭐'."""

    def __format__(self, spec):
        return fmt_stars(self.cents)


class Phrase:
    """A part of a text made in the language of the moment when put into it: fn(*args)."""

    __slots__ = ("fn", "args")

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __format__(self, spec):
        return self.fn(*self.args)


def fmt_coin(value):
    """A crypto amount as shoppers read it, one way everywhere: plain digits, no exponent, no
    trailing zeros ('0.00020000' and '2E-4' -> '0.0002'); exact (never through a float)."""
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return str(value)
    if not amount.is_finite():
        return str(value)
    text = f"{amount.normalize():f}"
    return text if text != "-0" else "0"


def esc(value):
    """Escape text typed by owners or shoppers for Telegram's HTML parse mode."""
    return html.escape(str(value), quote=False)


def tg_len(text):
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def shorten(text, limit):
    """Text cut to `limit` Telegram characters, ending in '…' when cut."""
    if tg_len(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        used += tg_len(ch)
        if used > limit - 1:
            break
        out.append(ch)
    return "".join(out).rstrip() + "…"


def html_to_plain(text):
    """What a message built by this module looks like after Telegram parses it."""
    return html.unescape(re.sub(r"<[^>]*>", "", text))


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(value, what, *, max_len, multiline=False, required=True):
    """Normalise owner-typed text (NFC, trimmed); raise InvalidInput saying what is wrong."""
    if value is None:
        if required:
            raise InvalidInput(f"{what} is missing")
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    value = unicodedata.normalize("NFC", value).strip()
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
        if _CONTROL_RE.search(value.replace("\n", "").replace("\t", "")):
            raise InvalidInput(f"{what} contains control characters")
    elif _CONTROL_RE.search(value) or "\n" in value or "\t" in value:
        raise InvalidInput(f"{what} must be one line without control characters")
    if required and not value:
        raise InvalidInput(f"{what} is empty")
    if tg_len(value) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    return value


# Telegram HTML as owners write it (broadcasts). parse_tg_html reads it the way Telegram's own
# parser does, into a tree of the elements Telegram knows, and refuses, with the reason and the
# line, what Telegram would refuse or would quietly show otherwise than typed; tg_html writes the
# tree out again as the HTML the outbox sends, tg_plain as the text a shopper reads (what
# Telegram's limits count).

# The tags Telegram reads (lower case, as written) -> the element they make.
TG_TAGS = {
    "b": "b",
    "strong": "b",
    "i": "i",
    "em": "i",
    "u": "u",
    "ins": "u",
    "s": "s",
    "strike": "s",
    "del": "s",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "a",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}


TG_TAG_LIST = '<b>, <i>, <u>, <s>, <a href="…">, <code>, <pre>, <tg-spoiler> and <blockquote>'


TG_MAX_DEPTH = 16


_TG_SPECIAL = re.compile(r"</?[A-Za-z]|&")


_TG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


_TG_ENTITY = re.compile(r"&(?:#[xX]([0-9A-Fa-f]+)|#([0-9]+)|([A-Za-z]+))(;?)")


_TG_ATTRIBUTE = re.compile(r"[^\s=>/\"']+")


_TG_TOKEN = re.compile(r"[A-Za-z0-9.-]*")


@dataclass
class TgNode:
    """An element of owner-written Telegram HTML (kind: a value of TG_TAGS, "" for the whole text)
    and its children, str and TgNode. tag is the name as written (its end tag must say it), url
    the address a link opens (http(s), tg or ton), language a code block's."""

    kind: str
    tag: str = ""
    line: int = 1
    href: str = ""
    url: str = ""
    language: str = ""
    expandable: bool = False
    children: list = field(default_factory=list)


def parse_tg_html(text):
    """Owner-written Telegram HTML -> its TgNode tree; InvalidInput says what is wrong and where.

    As Telegram reads it: the tags of TG_TAGS only, each closed in order; the entities &lt; &gt;
    &amp; &quot; and numbered ones (&#8364; &#x20AC;); any other "&" is itself. Stricter, with a
    reason, where Telegram would quietly show something else than typed: an unknown &name; entity,
    a link Telegram would not open, formatting inside code, a link or quote inside its own kind.
    Kinder: a "<" not followed by a letter (or "/" and a letter) is itself ("a < b", "<3")."""
    root = TgNode("")
    stack = [root]
    i = 0
    while True:
        m = _TG_SPECIAL.search(text, i)
        _tg_add_text(stack[-1], text[i : m.start() if m else len(text)])
        if m is None:
            break
        if m.group() == "&":
            char, i = _tg_entity(text, m.start())
            _tg_add_text(stack[-1], char)
        elif m.group().startswith("</"):
            i = _tg_end_tag(text, m.start(), stack)
        else:
            i = _tg_start_tag(text, m.start(), stack)
    if len(stack) > 1:
        node = stack[-1]
        raise InvalidInput(
            f"Line {node.line}: <{node.tag}> is never closed: add </{node.tag}> where it ends."
        )
    return root


def _tg_line(text, pos):
    return text.count("\n", 0, pos) + 1


def _tg_add_text(node, text):
    if not text:
        return
    if node.children and isinstance(node.children[-1], str):
        node.children[-1] += text
    else:
        node.children.append(text)


def _tg_entity(text, pos):
    """The character an "&" at pos stands for and where the text goes on."""
    m = _TG_ENTITY.match(text, pos)
    if m is None:
        return "&", pos + 1
    hexa, number, name, semicolon = m.groups()
    where = f"Line {_tg_line(text, pos)}"
    if name is not None:
        known = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(name)
        if known:
            return known, m.end()
        if semicolon:
            raise InvalidInput(
                f'{where}: "&{name};" is not an entity Telegram knows (only &lt; &gt; &amp; &quot; '
                'and numbered ones like &#8364;): type the character itself, and "&" as &amp;.'
            )
        return "&", pos + 1
    digits = hexa or number
    code = int(digits, 16 if hexa else 10) if len(digits) <= 7 else 0
    char = chr(code) if 0 < code < 0x10FFFF and not 0xD800 <= code <= 0xDFFF else ""
    if not char or (_CONTROL_RE.search(char) and char not in "\n\t"):
        raise InvalidInput(f'{where}: "{m.group()}" is not a character that can be sent.')
    return char, m.end()


def _tg_decode(text, line):
    """An attribute's value with its entities decoded."""
    out, i = [], 0
    while (amp := text.find("&", i)) >= 0:
        out.append(text[i:amp])
        try:
            char, i = _tg_entity(text, amp)
        except InvalidInput as e:
            raise InvalidInput(re.sub(r"^Line \d+", f"Line {line}", str(e))) from None
        out.append(char)
    out.append(text[i:])
    return "".join(out)


def _tg_start_tag(text, pos, stack):
    """Read the start tag at pos onto the stack; returns where the text goes on."""
    line = _tg_line(text, pos)
    tag = _TG_NAME.match(text, pos + 1).group().lower()
    if tag not in TG_TAGS:
        hint = " For a new line, just start a new line." if tag in ("br", "p", "div") else ""
        raise InvalidInput(
            f"Line {line}: <{tag}> is not a tag Telegram knows; it knows {TG_TAG_LIST}.{hint} "
            'To show a "<" itself, write &lt;.'
        )
    attributes, end = _tg_attributes(text, pos + 1 + len(tag), tag, line)
    node = TgNode(TG_TAGS[tag], tag, line, expandable="expandable" in attributes)
    if tag == "a":
        node.href = attributes.get("href", "").strip()
        node.url = _tg_link(node.href, line)
    elif tag == "span" and attributes.get("class") != "tg-spoiler":
        raise InvalidInput(
            f'Line {line}: <span> is only for spoilers: <span class="tg-spoiler">…</span>, or '
            "<tg-spoiler>…</tg-spoiler>."
        )
    elif tag == "code" and attributes.get("class", "").startswith("language-"):
        node.language = attributes["class"][len("language-") :]
    _tg_may_nest(stack, node)
    stack[-1].children.append(node)
    stack.append(node)
    return end


def _tg_attributes(text, i, tag, line):
    """The attributes of a start tag from i: ({name: value}, the position after its ">")."""
    attributes = {}
    unfinished = InvalidInput(f'Line {line}: the tag <{tag} … is never finished with ">".')
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            raise unfinished
        if text[i] == ">":
            return attributes, i + 1
        name = _TG_ATTRIBUTE.match(text, i)
        if name is None:
            raise InvalidInput(
                f"Line {line}: <{tag}> is not written as Telegram reads tags: write <{tag}>, "
                f"text, then </{tag}>."
            )
        key, i = name.group().lower(), name.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if text[i : i + 1] != "=":
            if tag == "blockquote" and key == "expandable":
                attributes[key] = ""
                continue
            raise InvalidInput(f'Line {line}: {key} in <{tag}> needs a value, like {key}="…".')
        i += 1
        while i < len(text) and text[i].isspace():
            i += 1
        if text[i : i + 1] in ('"', "'"):
            close = text.find(text[i], i + 1)
            if close < 0:
                raise unfinished
            value, i = _tg_decode(text[i + 1 : close], line), close + 1
        else:
            value = _TG_TOKEN.match(text, i).group()
            i += len(value)
            if i < len(text) and not (text[i].isspace() or text[i] == ">"):
                raise InvalidInput(f'Line {line}: put the {key} of <{tag}> in quotes: {key}="…".')
            value = value.lower()
        attributes.setdefault(key, value)


def _tg_link(href, line):
    """The address a link's href opens, as Telegram reads it; InvalidInput if it opens none."""
    shown = shorten(href, 60)
    if not href:
        raise InvalidInput(
            f'Line {line}: <a> needs the address it opens: <a href="https://…">text</a>.'
        )
    if any(ch.isspace() for ch in href):
        raise InvalidInput(f'Line {line}: the link address "{shown}" has a space in it.')
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(?!\d)", href)
    rest = href[scheme.end() :] if scheme else "//" + href
    kind = scheme.group(1).lower() if scheme else "http"
    if kind not in ("http", "https", "tg", "ton") or not rest.startswith("//") or rest == "//":
        raise InvalidInput(
            f'Line {line}: Telegram opens no link to "{shown}": use an address starting with '
            "https://."
        )
    if kind in ("tg", "ton"):
        return f"{kind}:{rest}"
    host = re.match(r"[^/?#]*", rest[2:]).group().rsplit("@", 1)[-1]
    host = re.sub(r":\d{1,5}$", "", host)
    if (
        not re.fullmatch(r"[\w.-]+", host)
        or host.startswith(".")
        or ".." in host
        or (not scheme and "." not in host.strip("."))
    ):
        raise InvalidInput(
            f'Line {line}: "{shown}" is not a web address; write it in full, like '
            "https://example.com."
        )
    return f"{kind}:{rest}"


def _tg_may_nest(stack, node):
    """Refuse an element where Telegram would drop it or what is around it."""
    where = f"Line {node.line}: <{node.tag}>"
    parent = stack[-1]
    if len(stack) > TG_MAX_DEPTH:
        raise InvalidInput(f"{where} is inside more than {TG_MAX_DEPTH} other tags.")
    if parent.kind == "pre" and node.kind == "code" and not parent.children:
        return  # <pre><code class="language-…">: a code block in that language
    for outer in stack[1:]:
        if outer.kind in ("code", "pre"):
            raise InvalidInput(
                f"{where} cannot be inside <{outer.tag}>: code shows its text exactly as typed, "
                "without formatting."
            )
        if outer.kind == "a" and node.kind in ("a", "code", "pre", "blockquote"):
            raise InvalidInput(f"{where} cannot be inside a link (<a>).")
        if outer.kind == "blockquote" and node.kind == "blockquote":
            raise InvalidInput(f"{where} cannot be inside another quote.")


def _tg_end_tag(text, pos, stack):
    """Close the element the end tag at pos names; returns where the text goes on."""
    line = _tg_line(text, pos)
    tag = _TG_NAME.match(text, pos + 2).group().lower()
    i = pos + 2 + len(tag)
    while i < len(text) and text[i].isspace():
        i += 1
    if text[i : i + 1] != ">":
        raise InvalidInput(f'Line {line}: the end tag </{tag} … is never finished with ">".')
    node = stack[-1]
    if tag != node.tag:
        if any(open_.tag == tag for open_ in stack):
            raise InvalidInput(
                f"Line {line}: </{tag}> comes before </{node.tag}>: close tags in the reverse "
                "order you opened them, like <b><i>…</i></b>."
            )
        raise InvalidInput(f"Line {line}: </{tag}> closes nothing: no <{tag}> is open there.")
    if node.kind == "pre" and any(isinstance(c, TgNode) for c in node.children):
        if len(node.children) != 1:
            raise InvalidInput(
                f"Line {node.line}: inside <pre>, put either text or one "
                '<code class="language-…"> around all of it.'
            )
        code = node.children[0]
        node.language, node.children = code.language, code.children
    stack.pop()
    return i + 1


def tg_plain(node):
    """The text of a TgNode tree as a shopper reads it."""
    return "".join(c if isinstance(c, str) else tg_plain(c) for c in node.children)


def tg_html(node):
    """A TgNode tree as the Telegram HTML the outbox sends: its tags only, the text escaped."""
    out = []
    for child in node.children:
        if isinstance(child, str):
            out.append(esc(child))
            continue
        inner = tg_html(child)
        if child.kind == "a":
            out.append(f'<a href="{html.escape(child.href)}">{inner}</a>')
        elif child.kind == "pre" and child.language:
            language = html.escape(child.language)
            out.append(f'<pre><code class="language-{language}">{inner}</code></pre>')
        elif child.kind == "blockquote" and child.expandable:
            out.append(f"<blockquote expandable>{inner}</blockquote>")
        else:
            tag = "tg-spoiler" if child.kind == "spoiler" else child.kind
            out.append(f"<{tag}>{inner}</{tag}>")
    return "".join(out)


def now_iso(delta_seconds=0.0):
    """UTC time as fixed-width ISO-8601 text, which sorts like the time it is."""
    t = datetime.now(timezone.utc) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else None


class Num(str):
    """A JSON number kept as the exact token the sender wrote (never a float)."""


MAX_JSON_DEPTH = 32


def _refuse_json_constant(name):
    """parse_json's parse_constant: NaN, Infinity and -Infinity are not JSON numbers."""
    raise ValueError(f"{name} is not allowed")


def parse_json(text):
    """Parse provider JSON keeping every number as its Num token. Raises ValueError."""
    data = json.loads(text, parse_float=Num, parse_int=Num, parse_constant=_refuse_json_constant)
    level = [data]
    # breadth-first, so a hostile nesting cannot exhaust the stack later
    for _ in range(MAX_JSON_DEPTH):
        level = [
            v
            for x in level
            for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())
        ]
        if not level:
            return data
    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")


def js_number(token):
    """How JavaScript's JSON.stringify writes the number a JSON token stands for."""
    x = float(token)
    if x != x or x in (float("inf"), float("-inf")):
        return "null"
    if x == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    ds, k = "".join(map(str, digits)), len(digits)
    n = exponent + k
    if k <= n <= 21:
        out = ds + "0" * (n - k)
    elif 0 < n <= 21:
        out = ds[:n] + "." + ds[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + ds
    else:
        e = n - 1
        out = (ds if k == 1 else ds[0] + "." + ds[1:]) + ("e+" if e > 0 else "e-") + str(abs(e))
    return ("-" if x < 0 else "") + out


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Unusual(Exception):
    """A value the quick way of encode_json cannot write exactly."""


_PLACEHOLDER = re.compile(r'"\\u0000(\d+)\\u0000"')


def _swap_numbers(v, tokens, js_numbers):
    """encode_json's quick way: v with each number replaced by a placeholder string naming its
    token, appended to tokens; raises _Unusual for what the quick way cannot write exactly."""
    if isinstance(v, dict):
        if not all(isinstance(k, str) and k.isascii() for k in v):
            raise _Unusual
        return {k: _swap_numbers(x, tokens, js_numbers) for k, x in v.items()}
    if isinstance(v, list):
        return [_swap_numbers(x, tokens, js_numbers) for x in v]
    if isinstance(v, str) and not isinstance(v, Num):
        if "\x00" in v or _LONE_SURROGATE.search(v):
            raise _Unusual
        return v
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (Num, int, Decimal)):
        tokens.append(js_number(v) if js_numbers and isinstance(v, Num) else str(v))
        return f"\x00{len(tokens) - 1}\x00"
    raise TypeError(f"cannot encode {type(v).__name__}")


def encode_json(value, *, sort_keys=False, js_numbers=False):
    """Compact JSON with raw non-ASCII, Num tokens written as they came (or as JavaScript would);
    keys sorted as JavaScript sorts them (by UTF-16 code units) when asked."""
    # Quick way: numbers become placeholder strings, the C encoder writes the rest in one go, then
    # the placeholders are swapped for the tokens. Keys that are not ASCII (whose order may differ
    # in UTF-16), strings holding NUL (the placeholders' mark) or lone surrogates go the careful
    # way.
    tokens = []
    try:
        text = json.dumps(
            _swap_numbers(value, tokens, js_numbers),
            ensure_ascii=False,
            sort_keys=sort_keys,
            separators=(",", ":"),
        )
    except _Unusual:
        return _encode_json_carefully(value, sort_keys=sort_keys, js_numbers=js_numbers)
    return _PLACEHOLDER.sub(lambda m: tokens[int(m.group(1))], text) if tokens else text


def _encode_json_carefully(value, *, sort_keys=False, js_numbers=False):
    """encode_json one value at a time, for what its quick way cannot write exactly."""
    if isinstance(value, dict):
        keys = (
            sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
            if sort_keys
            else value
        )
        return (
            "{"
            + ",".join(
                _encode_json_carefully(str(k))
                + ":"
                + _encode_json_carefully(value[k], sort_keys=sort_keys, js_numbers=js_numbers)
                for k in keys
            )
            + "}"
        )
    if isinstance(value, list):
        return (
            "["
            + ",".join(
                _encode_json_carefully(v, sort_keys=sort_keys, js_numbers=js_numbers) for v in value
            )
            + "]"
        )
    if isinstance(value, Num):
        return js_number(value) if js_numbers else str(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, str):
        return _LONE_SURROGATE.sub(
            lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False)
        )
    raise TypeError(f"cannot encode {type(value).__name__}")


# Configuration #################################################################


class ConfigError(Exception):
    """The configuration is invalid."""


@dataclass(frozen=True)
class Config:
    bot_token: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    nowpayments_api_key: str = ""
    nowpayments_ipn_secret: str = ""
    nowpayments_api_url: str = "https://api.nowpayments.io/v1"
    webhook_url: str = "http://127.0.0.1:8080"
    min_deposit_cents: int = 500
    shop_db: str = "shop.db"
    host: str = "127.0.0.1"
    port: int = 8080
    admin_password: str = ""
    admin_ids: tuple = ()
    tester_ids: tuple = ()
    reservation_minutes: int = 30
    max_deposit_cents: int = 10_000_00
    payment_poll_seconds: int = 60
    max_open_invoices: int = 3
    max_invoices_per_hour: int = 10
    max_unpaid_units: int = 50
    trusted_proxy: str = ""
    log_level: str = "INFO"
    # Litestream's control socket: set when the shop runs under `litestream replicate -exec`.
    litestream_socket: str = ""
    # Secret keys of the object store Litestream copies to (it passes its environment on to the
    # shop): never written to the log.
    storage_secrets: tuple = ()

    @property
    def sandbox(self):
        """No NOWPayments key: payments run against the embedded emulator."""
        return not self.nowpayments_api_key

    @property
    def media_dir(self):
        return Path(self.shop_db).resolve().parent / "media"

    @property
    def bot_id(self):
        return int(self.bot_token.split(":", 1)[0]) if self.bot_token else 0

    def secrets(self):
        return [
            s
            for s in (
                self.bot_token,
                self.nowpayments_api_key,
                self.nowpayments_ipn_secret,
                self.admin_password,
                *self.storage_secrets,
            )
            if s
        ]


# name: (help, default shown in --help)
ENV_VARS = {
    "BOT_TOKEN": ("Telegram bot token from @BotFather; without it the bot is off", ""),
    "TELEGRAM_API_URL": ("Bot API server", "https://api.telegram.org"),
    "NOWPAYMENTS_API_KEY": ("NOWPayments API key; without it payments run in sandbox mode", ""),
    "NOWPAYMENTS_IPN_SECRET": ("NOWPayments IPN secret for webhook signatures", ""),
    "NOWPAYMENTS_API_URL": ("NOWPayments API base URL", "https://api.nowpayments.io/v1"),
    "WEBHOOK_URL": ("public https base URL of this shop", "http://HOST:PORT"),
    "MIN_DEPOSIT_EUR": ("smallest balance top-up in EUR", "5.00"),
    "SHOP_DB": ("SQLite database file; photos go to media/ beside it", "shop.db"),
    "HOST": ("address to listen on", "127.0.0.1"),
    "PORT": ("port to listen on", "8080"),
    "ADMIN_PASSWORD": ("password of the admin pages", ""),
    "ADMIN_IDS": ("Telegram user ids that get owner alerts, comma-separated", ""),
    "TESTER_IDS": (
        "Telegram user ids who, besides ADMIN_IDS, may buy with simulated payments in test mode "
        "(a bot but no NOWPAYMENTS_API_KEY)",
        "",
    ),
    "RESERVATION_MINUTES": ("how long an unpaid order holds its units", "30"),
    "MAX_DEPOSIT_EUR": ("largest balance top-up in EUR", "10000.00"),
    "PAYMENT_POLL_SECONDS": ("how often unfinished payments are checked with NOWPayments", "60"),
    "MAX_OPEN_INVOICES": ("unpaid invoices one shopper may have at once", "3"),
    "MAX_INVOICES_PER_HOUR": ("invoices one shopper may create per hour", "10"),
    "MAX_UNPAID_UNITS": (
        "items one shopper's unpaid invoices may hold at once (the admin can change it)",
        "50",
    ),
    "TRUSTED_PROXY": ("address of a reverse proxy whose X-Forwarded-* headers to trust", ""),
    "LOG_LEVEL": ("DEBUG, INFO, WARNING or ERROR", "INFO"),
    "LITESTREAM_SOCKET": (
        "Litestream's control socket (socket.path in litestream.yml), when the shop runs under "
        "`litestream replicate -exec`: Litestream then does the WAL checkpoints, and /healthz, the "
        "Data page and the owners' alerts follow the replication",
        "",
    ),
}


TOKEN_RE = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{1,100}$")


def _url(name, value):
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{name} must be an http(s) URL like https://example.com, got {value!r}")
    return value.rstrip("/")


def _int(name, value, low, high):
    if not re.fullmatch(r"\s*\d+\s*", value) or not low <= int(value) <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _config_value(values, name):
    return str(values.get(name, "")).strip()


def load_config(environ=None, env_file=".env", overrides=None):
    """Build a Config from a .env file, the environment (which wins) and CLI overrides."""
    values = {}
    if env_file and os.path.isfile(env_file):
        try:
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {env_file}: {e}") from None
    values.update(os.environ if environ is None else environ)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    get = functools.partial(_config_value, values)

    kw = {}
    token = get("BOT_TOKEN")
    if token and not TOKEN_RE.match(token):
        raise ConfigError(
            "BOT_TOKEN does not look like a bot token (digits:letters, from @BotFather)"
        )
    kw["bot_token"] = token
    for name in ("TELEGRAM_API_URL", "NOWPAYMENTS_API_URL"):
        if get(name):
            kw[name.lower()] = _url(name, get(name))
    kw["nowpayments_api_key"] = get("NOWPAYMENTS_API_KEY")
    kw["nowpayments_ipn_secret"] = get("NOWPAYMENTS_IPN_SECRET")
    kw["host"] = get("HOST") or Config.host
    if get("PORT"):
        kw["port"] = _int("PORT", get("PORT"), 1, 65535)
    if get("SHOP_DB"):
        kw["shop_db"] = get("SHOP_DB")
    if get("MIN_DEPOSIT_EUR"):
        try:
            kw["min_deposit_cents"] = parse_eur(get("MIN_DEPOSIT_EUR"))
        except InvalidInput as e:
            raise ConfigError(f"MIN_DEPOSIT_EUR {e}") from None
    if get("MAX_DEPOSIT_EUR"):
        try:
            kw["max_deposit_cents"] = parse_eur(get("MAX_DEPOSIT_EUR"))
        except InvalidInput as e:
            raise ConfigError(f"MAX_DEPOSIT_EUR {e}") from None
    if kw.get("max_deposit_cents", Config.max_deposit_cents) < kw.get(
        "min_deposit_cents", Config.min_deposit_cents
    ):
        raise ConfigError("MAX_DEPOSIT_EUR must not be below MIN_DEPOSIT_EUR")
    for name, low, high in (
        ("RESERVATION_MINUTES", 1, 1440),
        ("PAYMENT_POLL_SECONDS", 5, 3600),
        ("MAX_OPEN_INVOICES", 1, 100),
        ("MAX_INVOICES_PER_HOUR", 1, 1000),
        ("MAX_UNPAID_UNITS", 1, 10000),
    ):
        if get(name):
            kw[name.lower()] = _int(name, get(name), low, high)
    for name in ("ADMIN_IDS", "TESTER_IDS"):
        ids = get(name)
        if ids:
            parts = [p for p in re.split(r"[\s,;]+", ids) if p]
            if not all(re.fullmatch(r"\d{1,20}", p) for p in parts):
                raise ConfigError(
                    f"{name} must be Telegram user ids separated by commas, got {ids[:100]!r}"
                )
            kw[name.lower()] = tuple(int(p) for p in parts)
    kw["admin_password"] = get("ADMIN_PASSWORD")
    kw["trusted_proxy"] = get("TRUSTED_PROXY")
    kw["litestream_socket"] = get("LITESTREAM_SOCKET")
    kw["storage_secrets"] = tuple(
        get(name) for name in ("LITESTREAM_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY") if get(name)
    )
    level = get("LOG_LEVEL").upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {get('LOG_LEVEL')!r}"
        )
    kw["log_level"] = level
    host_for_url = kw["host"] if kw["host"] not in ("0.0.0.0", "::", "") else "127.0.0.1"
    kw["webhook_url"] = (
        _url("WEBHOOK_URL", get("WEBHOOK_URL"))
        if get("WEBHOOK_URL")
        else f"http://{host_for_url}:{kw.get('port', Config.port)}"
    )
    return Config(**kw)


# Logging #######################################################################


class RedactSecrets(logging.Filter):
    """Replaces configured secrets in every log record, whoever logged it."""

    def __init__(self, secrets_):
        super().__init__()
        variants = set()
        for s in secrets_:
            if len(s) >= 6:
                variants.update({s, quote(s, safe=""), quote(s)})
        self.secrets = sorted(variants, key=len, reverse=True)

    def filter(self, record):
        if self.secrets:
            message = record.getMessage()
            for s in self.secrets:
                message = message.replace(s, "[redacted]")
            record.msg, record.args = message, None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                for s in self.secrets:
                    record.exc_text = record.exc_text.replace(s, "[redacted]")
        return True


# Threads that answer web requests (waitress's pool; benchmark 1's bare server has as many).
WEB_THREADS = 8


class BusyWebNote(logging.Filter):
    """Waitress warns "Task queue depth is N" for every request that finds its threads busy:
    thousands a second under load, each one formatted, redacted and written, and the dashboard's
    recent problems filled with them. One line a minute says it, in words an owner can use."""

    def __init__(self):
        super().__init__()
        self.throttle = Throttle(60)

    def filter(self, record):
        if not self.throttle():
            return False
        record.msg, record.args = (  # waitress's args: (depth,)
            "web: %s requests waited for a free web thread (all %d busy); if this repeats every "
            "minute the box is too small for its traffic (more like it this minute not logged)",
            (*record.args, WEB_THREADS),
        )
        return True


def setup_logging(config, stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(RedactSecrets(config.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    # telebot installs its own stderr handler on import; route it through ours.
    telebot.logger.handlers[:] = []
    telebot.logger.setLevel(logging.CRITICAL if config.log_level != "DEBUG" else logging.DEBUG)
    for noisy in ("waitress.queue", "urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    busy = logging.getLogger("waitress.queue")
    busy.filters[:] = [BusyWebNote()]


# Database ######################################################################

SCHEMA_VERSION = 8


def _daily_totals(conn):
    """Fill the dashboard's per-day tables from the orders and payments a shop already has."""
    conn.execute("DROP INDEX IF EXISTS orders_paid")  # the dashboard's old way to its revenue
    for statement in sql_statements(
        SCHEMA_PATH.read_text(encoding="utf-8")
    ):  # the tables as schema.sql has them
        if "CREATE TABLE IF NOT EXISTS daily_" in statement:
            conn.execute(statement)
    conn.execute(
        "INSERT INTO daily_sales SELECT substr(paid_at, 1, 10), count(*), sum(total_cents) "
        "FROM orders WHERE status = 'paid' GROUP BY 1"
    )
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'payments'"
    ).fetchone():  # none before version 2
        conn.execute(
            "INSERT INTO daily_payments SELECT substr(final_at, 1, 10), status, "
            "coalesce(final_source, ''), parent_id IS NOT NULL, count(*) FROM payments "
            "WHERE final_at IS NOT NULL GROUP BY 1, 2, 3, 4"
        )


def _invoicing_claims(conn):
    """checkouts.invoicing_since, where there is a checkouts table already (schema.sql makes
    new ones)."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(checkouts)")]
    if columns and "invoicing_since" not in columns:
        conn.execute("ALTER TABLE checkouts ADD COLUMN invoicing_since TEXT")


def _rebuild_table(conn, name):
    """Make a table again as schema.sql has it now, keeping its rows (SQLite cannot change a
    CHECK in place). Runs with foreign keys off; the references of other tables follow the name.
    Its indexes and triggers go with it; schema.sql makes them again."""
    columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({name})"))
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    table = next(s for s in sql_statements(schema) if f"CREATE TABLE IF NOT EXISTS {name} " in s)
    conn.execute(table.replace(f"IF NOT EXISTS {name} ", f"{name}_new ", 1))
    conn.execute(f"INSERT INTO {name}_new({columns}) SELECT {columns} FROM {name}")
    conn.execute(f"DROP TABLE {name}")
    conn.execute(f"ALTER TABLE {name}_new RENAME TO {name}")


def _language_columns(conn):
    """users.language and products.translations (idempotent: a column already there stays)."""
    for table, column, kind in (
        ("users", "language", "TEXT"),
        (
            "products",
            "translations",
            "TEXT CHECK (translations IS NULL OR json_valid(translations))",
        ),
    ):
        if column not in [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _payment_providers(conn):
    """payments.provider, unique with provider_id (the table is rebuilt, since SQLite cannot drop
    the old UNIQUE on provider_id alone), and ipn_events.provider. Payments the sandbox's emulator
    made are the sandbox's; every other one is NOWPayments'."""
    webhooks = [r[1] for r in conn.execute("PRAGMA table_info(ipn_events)")]
    if webhooks and "provider" not in webhooks:
        conn.execute("ALTER TABLE ipn_events ADD COLUMN provider TEXT")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(payments)")]
    if not columns or "provider" in columns:
        return  # no payments before version 2; schema.sql makes the tables as they are now
    _rebuild_table(conn, "payments")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sandbox_payments'").fetchone():
        conn.execute(
            "UPDATE payments SET provider = 'sandbox' WHERE provider_id IN "
            "(SELECT CAST(id AS TEXT) FROM sandbox_payments)"
        )


def _stars(conn):
    """Telegram Stars: products say what they are, how they may be paid and their Stars price;
    orders may be paid in Stars; payments keep Telegram's charge id. A shop from before keeps
    selling as it did: Telegram's rule for digital goods stays off until its owner turns it on."""
    products = [row[1] for row in conn.execute("PRAGMA table_info(products)")]
    for column, kind in (
        ("kind", "TEXT CHECK (kind IN ('digital', 'physical'))"),
        ("pay_methods", "TEXT"),
        ("stars_price", "INTEGER CHECK (stars_price IS NULL OR stars_price BETWEEN 1 AND 100000)"),
    ):
        if products and column not in products:
            conn.execute(f"ALTER TABLE products ADD COLUMN {column} {kind}")
    payments = [row[1] for row in conn.execute("PRAGMA table_info(payments)")]
    if payments and "charge_id" not in payments:
        conn.execute("ALTER TABLE payments ADD COLUMN charge_id TEXT")
    orders = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'orders'").fetchone()
    if orders and "'stars'" not in orders[0]:
        _rebuild_table(conn, "orders")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'settings'").fetchone():
        conn.execute("INSERT OR IGNORE INTO settings(key, value) VALUES ('telegram_rule', '0')")


def _promotions(conn):
    """Discount codes on users, checkouts, orders and their items; who referred whom; the
    ledger's 'referral' kind (the ledger is rebuilt: SQLite cannot change its CHECK in place).
    Idempotent: what is there already stays. The new tables come from schema.sql."""
    conn.execute(
        next(
            s
            for s in sql_statements(SCHEMA_PATH.read_text(encoding="utf-8"))
            if "TABLE IF NOT EXISTS promo_codes " in s
        )
    )
    for table, column, kind in (
        ("users", "promo_id", "INTEGER REFERENCES promo_codes(id)"),
        ("users", "referrer_id", "INTEGER REFERENCES users(id)"),
        ("users", "referred_at", "TEXT"),
        ("checkouts", "promo_id", "INTEGER REFERENCES promo_codes(id)"),
        ("orders", "promo_id", "INTEGER REFERENCES promo_codes(id)"),
        ("orders", "discount_cents", "INTEGER NOT NULL DEFAULT 0 CHECK (discount_cents >= 0)"),
        (
            "order_items",
            "discount_cents",
            "INTEGER NOT NULL DEFAULT 0 CHECK (discount_cents BETWEEN 0 AND price_cents)",
        ),
    ):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if columns and column not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    ledger = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ledger'").fetchone()
    if ledger and "'referral'" not in ledger[0]:
        _rebuild_table(conn, "ledger")


# Numbered migrations for databases created by older versions: {version: SQL or
# a function of the connection}. A migration brings user_version from version-1
# to version; schema.sql then adds any new tables, indexes and triggers. Keep
# schema.sql describing the latest shape.
MIGRATIONS = {
    # payments, admin
    2: """ALTER TABLE users ADD COLUMN awaiting TEXT;
          ALTER TABLE outbox ADD COLUMN edit_message_id INTEGER;
          ALTER TABLE outbox ADD COLUMN payment_id INTEGER REFERENCES payments(id);
          ALTER TABLE outbox ADD COLUMN broadcast_id INTEGER REFERENCES broadcasts(id);""",
    3: _daily_totals,  # the dashboard's per-day totals
    4: _invoicing_claims,  # top-up invoices being made count against the invoice limits
    5: _payment_providers,  # payments.provider: more than one way to pay
    6: _stars,  # Telegram Stars: product kinds and methods, Stars orders, charge ids
    7: _language_columns,  # the shopper's language; product names, descriptions per language
    8: _promotions,  # discount codes, referrals (stock watches, low-stock notes: schema.sql)
}


class DatabaseError(Exception):
    """The database cannot be used."""


class ShopConnection(sqlite3.Connection):
    """A connection that runs callbacks after the outermost transaction commits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_commit = []
        self.depth = 0
        self.write_lock = None


# One writer at a time per database file within this process. SQLite lets only one
# transaction write anyway; without this, threads waiting for it poll in SQLite's busy
# handler, which sleeps up to 100 ms between tries: a waiting IPN or checkout could sit
# for hundreds of milliseconds after the lock was free. Here they queue and wake at once.
# (Other processes, e.g. `shop.py balance`, still wait through busy_timeout.)
_write_locks = {}


_write_locks_guard = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _translations_of(text):
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def shopper_text(text, translations, field):
    """SQL function shopper_text(p.name, p.translations, 'name'): a product's name or
    description in the language of the moment, else as the owner wrote it in the default
    language."""
    if translations:
        found = _translations_of(translations).get(current_language().code)
        if isinstance(found, dict) and isinstance(found.get(field), str) and found[field]:
            return found[field]
    return text


def connect(path, *, autocheckpoint=True):
    """Open the shop database with the settings every connection needs.

    autocheckpoint=False: its commits never run a WAL checkpoint; the running shop's checkpoint
    thread does them (wal_checkpoint), off the request path."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, factory=ShopConnection)
    with _write_locks_guard:
        conn.write_lock = _write_locks.setdefault(os.path.realpath(path), threading.RLock())
    conn.row_factory = sqlite3.Row
    conn.create_function("shopper_text", 3, shopper_text)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit the shop has acted on (a purchase, a paid IPN) survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def wal_checkpoint(conn):
    """Copy committed pages from the WAL into the database file (PASSIVE: waits for no one)."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


@contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error. Nested calls use savepoints."""
    if conn.depth:
        name = f"sp{conn.depth}"
        conn.execute(f"SAVEPOINT {name}")
        conn.depth += 1
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            conn.depth -= 1
        return
    with conn.write_lock:
        conn.execute("BEGIN IMMEDIATE")
        conn.depth = 1
        try:
            yield conn
        except BaseException:
            conn.after_commit.clear()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
            _commits.bump()
        finally:
            conn.depth = 0
    callbacks, conn.after_commit = conn.after_commit, []
    for callback in callbacks:
        callback()


class CommitCounter:
    """Moves after every commit made through transaction() in this process. What is read after
    taking its value and cached with it is still current while the value has not moved (for this
    process's writes; other processes' are caught by the cache's own time limit)."""

    def __init__(self):
        self.value, self._next = 0, itertools.count(1)

    def bump(self):
        self.value = next(self._next)


_commits = CommitCounter()


def sql_statements(script):
    """Split an SQL script into complete statements (triggers included)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement.strip()
            statement = ""
    if statement.strip() and not statement.strip().startswith("--"):
        raise DatabaseError(f"incomplete SQL statement: {statement.strip()[:60]}")


def _migrate(conn, path, version, schema_version, migrations):
    """Run the migrations from `version` up, each in its transaction, refusing one that would leave
    a reference dangling."""
    for v in range(version + 1, schema_version + 1):
        with transaction(conn):
            if callable(migrations[v]):
                migrations[v](conn)
            else:
                for statement in sql_statements(migrations[v]):
                    conn.execute(statement)
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise DatabaseError(
                    f"upgrading {path} to schema {v} would break {len(broken)} references "
                    f"(first: {tuple(broken[0])}); nothing was changed"
                )
            conn.execute(f"PRAGMA user_version = {v}")


def init_db(path, migrations=None, schema_version=None, *, autocheckpoint=True):
    """Create or upgrade the database at `path`; return a connection to it (autocheckpoint=False:
    one that never checkpoints, for a database Litestream replicates)."""
    migrations = MIGRATIONS if migrations is None else migrations
    schema_version = SCHEMA_VERSION if schema_version is None else schema_version
    try:
        conn = connect(path, autocheckpoint=autocheckpoint)
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{path} cannot be opened as an SQLite database: {e}") from None
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    if version > schema_version:
        raise DatabaseError(
            f"{path} has schema version {version}, newer than this shop.py "
            f"({schema_version}); upgrade shop.py"
        )
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[
            0
        ]
        if tables:
            raise DatabaseError(
                f"{path} holds tables but no schema version: it was not created "
                "by shop.py; point SHOP_DB at a new file"
            )
        with transaction(conn):
            for statement in sql_statements(schema):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(schema_version)}")
        return conn
    if version < schema_version:
        backup = f"{path}.v{version}.bak"
        with connect(backup) as copy:
            conn.backup(copy)
        copy.close()
        log.info(
            "upgrading %s from schema %d to %d (backup in %s)",
            path,
            version,
            schema_version,
            backup,
        )
        # Foreign keys are off while a migration runs (a table being rebuilt is dropped while rows
        # still point at it) and checked before it commits: SQLite's way to change a table.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            _migrate(conn, path, version, schema_version, migrations)
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
    with transaction(conn):
        for statement in sql_statements(schema):
            conn.execute(statement)
    return conn


# Services: users and settings ##################################################

DEFAULT_SETTINGS = {
    "shop_name": "Demo Shop",
    # The texts shoppers read until the owner writes their own: tr() gives them in the
    # shopper's language (shop_text()).
    "welcome_text": N_(
        "Welcome! Browse the shop, fill your basket and pay in Telegram Stars, in crypto or from "
        "your balance. Your goods arrive right here in this chat."
    ),
    "help_text": N_(
        "🛒 Shop: browse by city and district.\n"
        "🧺 Basket: change quantities, then check out.\n"
        "⭐ Digital goods are paid in Telegram Stars; 💳 the rest in crypto (BTC, ETH, LTC, USDT, "
        "USDC, TON, SOL) or from your balance.\n"
        "🛟 /paysupport: help with a payment; 📜 /terms: the terms of sale.\n"
        "💰 Top up: add money to your balance.\n📦 Orders: your orders, and their items again."
    ),
    # The language of shoppers whose Telegram language the shop does not speak, and of the owner's
    # own texts (welcome_text ...; welcome_text.de ... are the same in other languages).
    "default_language": SOURCE_LANGUAGE,
    "support_contact": "",
    "underpayment_tolerance": "0",
    "low_stock_threshold": "2",
    # Per cent of a referred shopper's first paid order credited to who referred them; 0: off.
    "referral_percent": "0",
    # On for new shops; the migration to Stars sets it off for shops from before.
    "telegram_rule": "1",
    # About what shoppers pay for Stars in Telegram (100 ⭐ for about $1.99 in the app stores).
    "stars_per_euro": "50",
    "terms_text": "",  # empty: default_terms_text()
    "paysupport_text": "",  # empty: default_paysupport_text()
}


# Settings the owner changes from the admin while the shop runs; the environment gives their
# defaults.
RUNTIME_SETTINGS = ("min_deposit_cents", "reservation_minutes", "max_unpaid_units", "enabled_coins")


def default_terms_text(conn):
    """/terms when the owner wrote none, in the language of the moment."""
    contact = get_setting(conn, "support_contact")
    terms = tr(
        "{shop} sells the goods in its catalog at the prices shown at checkout. Goods are "
        "delivered in this chat as soon as the payment is final. Digital goods (codes, keys, "
        "downloads) cannot be returned once delivered; if one does not work, we replace it or "
        "refund it. Payments in Telegram Stars are refunded in Stars.",
        shop=get_setting(conn, "shop_name"),
    )
    questions = (
        tr("Questions: {contact}.", contact=contact)
        if contact
        else tr("Questions: use /paysupport.")
    )
    return f"{terms} {questions}"


def default_paysupport_text(conn):
    """/paysupport when the owner wrote none: it names the support contact."""
    contact = get_setting(conn, "support_contact")
    if contact:
        return tr(
            "A problem with a payment or an order? Write to {contact} and say what happened; we "
            "answer within a day. Your orders and their payments are under 📦 Orders. Telegram's "
            "support cannot help with purchases from this shop.",
            contact=contact,
        )
    return tr(
        "A problem with a payment or an order? Reply here with your order number and say what "
        "happened; we answer within a day. Your orders and their payments are under 📦 Orders. "
        "Telegram's support cannot help with purchases from this shop."
    )


# The texts the owner writes for shoppers, in the default language (the key) and optionally in
# others ('welcome_text.de'); shop_text() picks the shopper's.
SHOPPER_TEXTS = ("welcome_text", "help_text", "terms_text", "paysupport_text")


def shop_text(conn, key):
    """An owner's text for shoppers in the language of the moment: the owner's text in it, else
    the owner's text in the default language, else the shop's own default text, translated."""
    code = current_language().code
    if code != default_language(conn):
        row = conn.execute(
            "SELECT value FROM settings WHERE key = ?", (f"{key}.{code}",)
        ).fetchone()
        if row and row["value"]:
            return row["value"]
    return fallback_text(conn, key)


def fallback_text(conn, key):
    """What shoppers in the language of the moment read of an owner's text when the owner wrote
    none in their language: the owner's text in the default language, else the shop's own
    default text, translated."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    if row and row["value"]:
        return row["value"]
    if key == "terms_text":
        return default_terms_text(conn)
    if key == "paysupport_text":
        return default_paysupport_text(conn)
    return tr(DEFAULT_SETTINGS[key])


def default_language(conn):
    """The shop's default language (a code from available_languages())."""
    return match_language(get_setting(conn, "default_language")) or SOURCE_LANGUAGE


def other_languages(conn):
    """The languages the shop speaks besides its default one, by code: those the owner may give
    texts and product names in."""
    default = default_language(conn)
    return [code for code in available_languages() if code != default]


def is_language_code(code):
    """Whether `code` names a language as the locales folders do ('de', 'pt_BR'), whether or not
    the shop speaks it yet."""
    import babel

    try:
        found = babel.Locale.parse(code)
    except (ValueError, TypeError, babel.UnknownLocaleError):
        return False
    return str(found) == code and found.get_display_name(SOURCE_LANGUAGE) is not None


def language_label(code):
    """A language as the owner reads it in the admin and in errors: 'German (de)'."""
    if not is_language_code(code):
        return repr(code)
    import babel

    return f"{babel.Locale.parse(code).get_display_name(SOURCE_LANGUAGE)} ({code})"


def shopper_language(conn, user):
    """The language a shopper reads (a users row, or None for someone the shop has not met):
    their own choice, else Telegram's language_code when the shop speaks it, else the shop's
    default language."""
    if user is not None:
        for tag in (user["language"], user["language_code"]):
            found = match_language(tag)
            if found:
                return found
    return default_language(conn)


def language_of(conn, user_id):
    """The language to write to a user in (for messages the user did not just ask for)."""
    row = conn.execute(
        "SELECT language, language_code FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    return shopper_language(conn, row)


def set_user_language(conn, user_id, code):
    """Remember the language a shopper chose (None: follow Telegram's again). InvalidInput when
    the shop has no such language."""
    if code is not None and code not in available_languages():
        raise InvalidInput(
            tr(
                "This shop speaks {languages}.",
                languages=", ".join(available_languages()),
            )
        )
    with transaction(conn):
        conn.execute("UPDATE users SET language = ? WHERE id = ?", (code, user_id))


def get_setting(conn, key, config=None):
    """The one way to read a setting: the owner's choice (the settings table), else its default.
    The shop's texts default to DEFAULT_SETTINGS and read as text. Given the configuration, a
    runtime setting (RUNTIME_SETTINGS) defaults to it and reads as an int, or for enabled_coins as
    a set of coins (None: every coin the merchant account takes)."""
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    if config is None or key not in RUNTIME_SETTINGS:
        return row["value"] if row else DEFAULT_SETTINGS.get(key, "")
    if key == "enabled_coins":
        return set(row[0].split(",")) - {""} if row else None
    return int(row[0]) if row and row[0].isdigit() else getattr(config, key)


# key: (what it is, longest allowed, may span lines)
SETTING_RULES = {
    "shop_name": ("The shop name", 64, False),
    "welcome_text": ("The welcome text", 1000, True),
    "help_text": ("The help text", 2000, True),
    "support_contact": ("The support contact", 100, False),
    "terms_text": ("The terms", 3000, True),
    "paysupport_text": ("The payment support text", 2000, True),
}


# Texts that may be left empty (the shop then says its default, in each shopper's language).
OPTIONAL_TEXTS = ("support_contact", "welcome_text", "help_text", "terms_text", "paysupport_text")


def clean_setting(key, value):
    if key not in SETTING_RULES:
        raise InvalidInput(f"Unknown setting {key!r}; settings are: {', '.join(SETTING_RULES)}.")
    what, max_len, multiline = SETTING_RULES[key]
    return clean_text(
        value, what, max_len=max_len, multiline=multiline, required=key not in OPTIONAL_TEXTS
    )


# Every setting the owner changes, on the admin's Settings page and with `python shop.py set`, by
# the name the form and the command line use: (stored key, what the owner types).
OWNER_SETTINGS = {
    "shop_name": ("shop_name", "the shop's name, one line of up to 64 characters"),
    "welcome_text": (
        "welcome_text",
        "what the bot says after /start, up to 1000 characters (empty: the shop's own, in each "
        "shopper's language)",
    ),
    "help_text": (
        "help_text",
        "what /help says, up to 2000 characters (empty: the shop's own, in each shopper's "
        "language)",
    ),
    "support_contact": ("support_contact", "how shoppers reach you, shown in /help (may be empty)"),
    "min_deposit": ("min_deposit_cents", "the smallest balance top-up, in EUR like 5.00"),
    "reservation_minutes": (
        "reservation_minutes",
        "minutes an unpaid order holds its items, 1-1440",
    ),
    "max_unpaid_units": ("max_unpaid_units", "items one shopper may hold unpaid at once, 1-10000"),
    "referral_percent": (
        "referral_percent",
        "per cent of a referred shopper's first paid order credited to who referred them, 0-50 "
        "(0: off)",
    ),
    "coins": ("enabled_coins", "the coins offered, comma-separated, like btc,eth,usdttrc20"),
    "underpayment_tolerance": (
        "underpayment_tolerance",
        "a crypto payment short by at most this % pays in full, 0-10 (0: off)",
    ),
    "low_stock_threshold": (
        "low_stock_threshold",
        "low stock: this many left or fewer is listed on the dashboard and told to the owners "
        "once, 0-1000 (0: neither)",
    ),
    "telegram_rule": (
        "telegram_rule",
        "on: digital products are paid only in Telegram Stars, as Telegram requires; off: as "
        "each product allows",
    ),
    "stars_per_euro": (
        "stars_per_euro",
        "Telegram Stars per euro for products without a Stars price, like 50 (1-10000)",
    ),
    "terms_text": ("terms_text", "what /terms says, up to 3000 characters (empty: the default)"),
    "paysupport_text": (
        "paysupport_text",
        "what /paysupport says, up to 2000 characters (empty: the default, naming the contact)",
    ),
    "default_language": (
        "default_language",
        "the language of shoppers whose own the shop does not speak, and of the texts above, "
        "like en or de",
    ),
}


# The whole-number settings: (smallest allowed, largest allowed, what is wrong otherwise).
NUMBER_SETTINGS = {
    "reservation_minutes": (1, 1440, "The reservation must be 1 to 1440 minutes."),
    "referral_percent": (
        0,
        50,
        "The referral credit must be a whole per cent from 0 to 50 (0 turns referrals off).",
    ),
    "max_unpaid_units": (
        1,
        10000,
        "The items one shopper may hold unpaid must be a number from 1 to 10000.",
    ),
    "low_stock_threshold": (
        0,
        1000,
        "The low-stock threshold must be a whole number from 0 to 1000 (0 turns the dashboard's "
        "low-stock list off).",
    ),
}


def clean_owner_setting(name, text, *, max_deposit_cents, coin_codes):
    """A setting as the owner typed it (by its OWNER_SETTINGS name), checked the one way both the
    admin's Settings page and `python shop.py set` check it: (stored key, stored text). The coins
    are codes from `coin_codes`, comma- or space-separated. InvalidInput says what is wrong."""
    if translated_text_setting(name):
        base, _, code = name.partition(".")
        what, max_len, _ = SETTING_RULES[base]
        return name, clean_text(
            text,
            f"{what} in {language_label(code)}",
            max_len=max_len,
            multiline=True,
            required=False,
        )
    if name not in OWNER_SETTINGS:
        raise InvalidInput(
            f"Unknown setting {name!r}; settings are: {', '.join(OWNER_SETTINGS)}, and "
            f"{'/'.join(SHOPPER_TEXTS)}.<language> for a text in another language."
        )
    key = OWNER_SETTINGS[name][0]
    if name == "default_language":
        code = match_language(text)
        if code is None or code.lower() != (text or "").strip().replace("-", "_").lower():
            raise InvalidInput(
                f"The default language must be one the shop speaks: "
                f"{', '.join(available_languages())}; got {(text or '')[:20]!r}."
            )
        return key, code
    if name in SETTING_RULES:
        return key, clean_setting(name, text)
    if name == "min_deposit":
        try:
            return key, str(parse_eur(text or "", maximum=max_deposit_cents))
        except InvalidInput as e:
            raise InvalidInput(f"The minimum top-up {e}.") from None
    text = (text or "").strip()
    if name == "underpayment_tolerance":
        if not re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,2})?", text) or Decimal(text) > 10:
            raise InvalidInput(
                "The underpayment tolerance must be a percentage from 0 to 10, like 0.5 "
                f"(0 turns it off); got {text[:20]!r}."
            )
        return key, f"{Decimal(text).normalize():f}"
    if name == "telegram_rule":
        if text.lower() not in ("on", "off", "1", "0", "yes", "no"):
            raise InvalidInput(f"Telegram's rule is on or off; got {text[:20]!r}.")
        return key, "1" if text.lower() in ("on", "1", "yes") else "0"
    if name == "stars_per_euro":
        if not re.fullmatch(r"[0-9]{1,5}(\.[0-9]{1,4})?", text) or not 1 <= Decimal(text) <= 10000:
            raise InvalidInput(
                f"The Stars rate must be a number of Stars per euro from 1 to 10000, like 50; "
                f"got {text[:20]!r}."
            )
        return key, f"{Decimal(text).normalize():f}"
    if name == "coins":
        typed = set(re.split(r"[\s,]+", text.lower())) - {""}
        unknown = sorted(typed - set(coin_codes))
        if unknown:
            raise InvalidInput(
                f"Unknown coin {unknown[0]!r}; the coins are: {', '.join(coin_codes)}."
            )
        if not typed:
            raise InvalidInput("Enable at least one coin.")
        return key, ",".join(code for code in coin_codes if code in typed)
    lowest, highest, wrong = NUMBER_SETTINGS[name]
    if not re.fullmatch(r"[0-9]{1,%d}" % len(str(highest)), text) or not (
        lowest <= int(text) <= highest
    ):
        raise InvalidInput(wrong)
    return key, str(int(text))


def translated_text_setting(name):
    """Whether `name` is an owner's text in a language other than the default ('help_text.de')."""
    base, dot, code = name.partition(".")
    return bool(dot) and base in SHOPPER_TEXTS and code in available_languages()


def translated_texts(conn):
    """The owner's texts in other languages: {'welcome_text.de': text, ...}, only those written."""
    return {
        row["key"]: row["value"]
        for row in conn.execute(
            "SELECT key, value FROM settings WHERE key LIKE '%\\_text.%' ESCAPE '\\' ORDER BY key"
        )
        if translated_text_setting(row["key"]) and row["value"]
    }


def clean_owner_settings(typed, *, max_deposit_cents, coin_codes):
    """Settings as the owner typed them {name: text}, checked in OWNER_SETTINGS' order (the first
    wrong one raises InvalidInput): {stored key: stored text}."""
    return dict(
        clean_owner_setting(
            name, typed[name], max_deposit_cents=max_deposit_cents, coin_codes=coin_codes
        )
        for name in (*OWNER_SETTINGS, *sorted(n for n in typed if translated_text_setting(n)))
        if name in typed
    )


def owner_setting_text(conn, name, config):
    """A setting (by its OWNER_SETTINGS name) as the owner reads and types it: the minimum top-up
    in EUR like 5.00, whole numbers as digits, the coins comma-separated (None: not chosen, every
    coin the merchant account takes)."""
    key = OWNER_SETTINGS[name][0] if name in OWNER_SETTINGS else name
    if key in SHOPPER_TEXTS:  # only what the owner wrote: else the shop's own, translated
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else ""
    value = get_setting(conn, key, config)
    if name == "min_deposit":
        return cents_to_str(value)
    if name == "coins":  # as stored, in the coin list's order
        return None if value is None else get_setting(conn, key)
    if name == "telegram_rule":
        return "off" if value == "0" else "on"
    return str(value)


def save_settings(conn, changes, remote=None):
    """Store already-checked settings {key: text} together, with one audit row naming them. A new
    default language takes the owner's texts in it as the default ones (see
    _texts_to_new_default)."""
    with transaction(conn):
        old_default = default_language(conn)
        for key, value in changes.items():
            _store_setting(conn, key, value)
        moved = []
        if default_language(conn) != old_default:
            moved = _texts_to_new_default(conn, old_default, default_language(conn))
            if _products_to_new_default(conn, old_default, default_language(conn)):
                moved.append("product names and descriptions")
        if "low_stock_threshold" in changes:
            rearm_low_stock(conn)
        names = [*changes, *(key for key in moved if key not in changes)]
        audit(conn, "settings changed", ", ".join(names) or "nothing", remote)


def _store_setting(conn, key, value):
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def low_stock_threshold(conn):
    """The owner's low-stock threshold (0: no low-stock list, no low-stock notes)."""
    return int(get_setting(conn, "low_stock_threshold") or 0)


def rearm_low_stock(conn, product_id=None, district_id=None):
    """Forget the low-stock notes (low_stock_notes) of places whose product is above the threshold
    again, so that the next fall to it is told again (note_low_stock); all of them when the
    threshold is 0. Run where units are added and when the threshold changes, in that
    transaction; None: every product, or every district."""
    place = ""
    if product_id is not None:
        place += " AND n.product_id = :product"
    if district_id is not None:
        place += " AND n.district_id = :district"
    conn.execute(
        "DELETE FROM low_stock_notes AS n WHERE (:threshold <= 0 OR "
        "(SELECT count(*) FROM stock_units u INDEXED BY stock_units_available "
        "WHERE u.district_id = n.district_id AND u.product_id = n.product_id "
        f"AND u.status = 'available') > :threshold){place}",
        {"product": product_id, "district": district_id, "threshold": low_stock_threshold(conn)},
    )


def _texts_to_new_default(conn, old, new):
    """The default language changed from `old` to `new`: each owner's text written in `new`
    becomes the default one (welcome_text), and the one it replaces is kept as the text in `old`
    (welcome_text.en), so every shopper reads what they read before. Where the owner had written
    no default text (shoppers read the shop's own, in their language), every other language
    without its own text keeps the shop's own too, written down. A text without one in `new`
    stays as it is. Returns the keys it changed."""
    moved = []
    for key in SHOPPER_TEXTS:
        own = get_setting(conn, f"{key}.{new}")
        if not own:
            continue
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        keep = [old] if row and row["value"] else available_languages()
        stores = [(key, own), (f"{key}.{new}", "")]
        for code in keep:
            if code != new and (code == old or not get_setting(conn, f"{key}.{code}")):
                with speaking(code):  # the owner's text, else the shop's own as `code` read it
                    stores.append((f"{key}.{code}", fallback_text(conn, key)))
        for stored, value in stores:
            _store_setting(conn, stored, value)
            moved.append(stored)
    return moved


def _products_to_new_default(conn, old, new):
    """The default language changed from `old` to `new`: a product's name and description in
    `new` become its own (the ones the admin edits first and a catalog import matches), its
    former ones its texts in `old`. A product whose name in `new` another product has keeps its
    texts as they are. Returns how many changed."""
    changed = 0
    for product in conn.execute(
        "SELECT id, name, description, translations FROM products WHERE translations IS NOT NULL"
    ).fetchall():
        texts = json.loads(product["translations"])
        theirs = texts.get(new) or {}
        if (
            not theirs.get("name")
            or conn.execute(
                "SELECT 1 FROM products WHERE name = ? AND id != ?", (theirs["name"], product["id"])
            ).fetchone()
        ):
            continue
        texts.pop(new)
        texts[old] = {"name": product["name"], "description": product["description"]}
        conn.execute(
            "UPDATE products SET name = ?, description = ?, translations = ? WHERE id = ?",
            (
                theirs["name"],
                theirs.get("description") or product["description"],
                json.dumps(texts, ensure_ascii=False, sort_keys=True),
                product["id"],
            ),
        )
        changed += 1
    return changed


def stored_secret(path, key):
    """A random secret kept in the settings table, made on first use (e.g. the sandbox's IPN
    secret)."""
    conn = connect(path, autocheckpoint=False)  # the running shop's checkpoints, or Litestream's
    try:
        with transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)",
                (key, secrets.token_hex(24)),
            )
            return conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]
    finally:
        conn.close()


def bot_introduced(conn):
    """The fingerprint of what the bot last told Telegram about itself (its commands and
    descriptions in each language), "" before the first time."""
    return get_setting(conn, "bot_introduced")


def note_bot_introduced(conn, fingerprint):
    """Remember the fingerprint of what the bot told Telegram about itself, so that a start with
    nothing new to tell makes no call."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO settings(key, value) VALUES ('bot_introduced', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (fingerprint,),
        )


def touch_user(conn, tg_user):
    """Record a Telegram user (dict with id, first_name, username, language_code); return the
    row."""
    user_id = int(tg_user["id"])
    fields = (
        tg_user.get("username"),
        tg_user.get("first_name") or "",
        tg_user.get("language_code"),
    )
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    stale = now_iso(-300)
    if (
        row
        and (row["username"], row["first_name"], row["language_code"]) == fields
        and row["last_seen_at"] > stale
    ):
        return row
    now = now_iso()
    with transaction(conn):
        return conn.execute(
            "INSERT INTO users(id, username, first_name, language_code, created_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username, "
            "first_name = excluded.first_name, language_code = excluded.language_code, "
            "last_seen_at = excluded.last_seen_at RETURNING *",
            (user_id, *fields, now, now),
        ).fetchone()


def set_awaiting(conn, user_id, what):
    """Remember what the bot asked the user to type next (None: nothing)."""
    with transaction(conn):
        conn.execute("UPDATE users SET awaiting = ? WHERE id = ?", (what, user_id))


def get_user(conn, user_id):
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise NotFound("No such user.")
    return row


def set_banned(conn, user_id, banned):
    with transaction(conn):
        if (
            conn.execute(
                "UPDATE users SET is_banned = ?, ban_notified_at = NULL WHERE id = ?",
                (int(bool(banned)), user_id),
            ).rowcount
            != 1
        ):
            raise NotFound("No such user.")


def should_tell_banned(conn, user_id):
    """A banned user hears one polite refusal a day, however often they write."""
    with transaction(conn):
        return (
            conn.execute(
                "UPDATE users SET ban_notified_at = ? WHERE id = ? AND is_banned = 1 "
                "AND (ban_notified_at IS NULL OR ban_notified_at < ?)",
                (now_iso(), user_id, now_iso(-86400)),
            ).rowcount
            == 1
        )


# Referrals: each shopper's link (/start ref_<their id>) records who brought a new shopper; the
# first order the newcomer pays credits who brought them (credit_referrer, in Services: orders).


def referral_percent(conn):
    """The per cent of a referred shopper's first paid order credited to who referred them; 0:
    referrals are off (no link is shown and nothing is credited)."""
    text = get_setting(conn, "referral_percent")
    return int(text) if text.isdigit() else 0


def referral_link(conn, user_id, bot_username):
    """The shopper's link that brings friends (t.me/<bot>?start=ref_<id>), None while referrals
    are off or the bot's username is not known yet."""
    if not bot_username or referral_percent(conn) <= 0:
        return None
    return f"https://t.me/{bot_username}?start=ref_{user_id}"


def record_referral(conn, user_id, referrer_id):
    """The shopper `user_id` came through the link of `referrer_id`: remember who brought them.
    Returns None when recorded, else why nothing changed: 'unknown' (no such referrer), 'self',
    'referred' (someone brought them already), 'customer' (they have paid an order, so they did
    not arrive through the link) or 'loop' (the referrer was brought, directly or not, by them).
    Recorded with referrals off too: were referrals turned on before the shopper's first paid
    order, it counts."""
    with transaction(conn):
        user = get_user(conn, user_id)
        if referrer_id == user_id:
            why = "self"
        elif not conn.execute("SELECT 1 FROM users WHERE id = ?", (referrer_id,)).fetchone():
            why = "unknown"
        elif user["referrer_id"] is not None:
            why = "referred"
        elif conn.execute(
            "SELECT 1 FROM orders WHERE user_id = ? AND paid_at IS NOT NULL LIMIT 1", (user_id,)
        ).fetchone():
            why = "customer"
        elif conn.execute(
            "WITH RECURSIVE up(id) AS (SELECT ? UNION SELECT u.referrer_id FROM users u "
            "JOIN up ON u.id = up.id WHERE u.referrer_id IS NOT NULL) "
            "SELECT 1 FROM up WHERE id = ?",
            (referrer_id, user_id),
        ).fetchone():
            why = "loop"
        else:
            why = None
            conn.execute(
                "UPDATE users SET referrer_id = ?, referred_at = ? WHERE id = ?",
                (referrer_id, now_iso(), user_id),
            )
    if why is None:
        log.info("referral: user %d came through the link of user %d", user_id, referrer_id)
    else:
        log.debug("referral: user %d, link of user %d: refused (%s)", user_id, referrer_id, why)
    return why


def referral_summary(conn, user_id):
    """How many shoppers `user_id` brought, and the cents their referrals credited: (n, cents)."""
    return (
        conn.execute("SELECT count(*) FROM users WHERE referrer_id = ?", (user_id,)).fetchone()[0],
        conn.execute(
            "SELECT coalesce(sum(amount_cents), 0) FROM ledger WHERE user_id = ? "
            "AND kind = 'referral'",
            (user_id,),
        ).fetchone()[0],
    )


def admin_password_is_stored(conn):
    """Whether the settings hold an admin password's hash (set_admin_password made one)."""
    return bool(conn.execute("SELECT 1 FROM settings WHERE key = 'admin_password_hash'").fetchone())


def probe_database(conn):
    """Read from the database (for the health check); raises sqlite3.Error if it cannot."""
    conn.execute("SELECT 1 FROM settings LIMIT 1").fetchall()


def prune_sent_outbox(conn, days=90):
    """Delete sent outbox messages older than `days`; return how many."""
    with transaction(conn):
        return conn.execute(
            "DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?", (now_iso(-days * 86400),)
        ).rowcount


def audit(conn, action, details="", remote=None):
    """Record an admin action; call inside the action's own transaction."""
    conn.execute(
        "INSERT INTO audit_log(at, action, details, remote_addr) VALUES (?, ?, ?, ?)",
        (now_iso(), action, details[:2000], remote),
    )


# Services: ledger ##############################################################


class InsufficientBalance(ShopError):
    message = N_("Your balance is too low.")
    status = 409

    def __init__(self, short_cents, message=None):
        super().__init__(
            message or tr("Your balance is {short} short.", short=fmt_eur(short_cents))
        )
        self.short_cents = short_cents


def post_ledger(conn, user_id, amount_cents, kind, key, *, reason="", order_id=None):
    """Append one balance change. Returns False (and changes nothing) if `key` was posted before.

    Must run inside a transaction: the cached users.balance_cents moves with it.
    """
    assert conn.in_transaction, "post_ledger needs a transaction"
    if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents == 0:
        raise InvalidInput("A balance change must be a non-zero whole number of cents.")
    if conn.execute("SELECT 1 FROM ledger WHERE idempotency_key = ?", (key,)).fetchone():
        return False
    row = conn.execute("SELECT balance_cents FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise NotFound("No such user.")
    balance = row["balance_cents"] + amount_cents
    if balance < 0:
        raise InsufficientBalance(-balance)
    conn.execute(
        "INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, reason, "
        "idempotency_key, order_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (user_id, amount_cents, balance, kind, reason, key, order_id, now_iso()),
    )
    conn.execute("UPDATE users SET balance_cents = ? WHERE id = ?", (balance, user_id))
    return True


def adjust_balance(conn, user_id, amount_cents, reason, key=None):
    """An owner's manual balance change; the reason is required and kept in the ledger."""
    reason = clean_text(reason, "The reason", max_len=200)
    with transaction(conn):
        return post_ledger(
            conn,
            user_id,
            amount_cents,
            "adjustment",
            key or f"adjustment:{secrets.token_hex(8)}",
            reason=reason,
        )


def check_ledger(conn):
    """Users whose cached balance differs from their ledger sum: [(id, cached, ledger)]."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT u.id, u.balance_cents, coalesce(sum(l.amount_cents), 0) AS total FROM users u "
            "LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id HAVING u.balance_cents <> total"
        )
    ]


# Services: outbox ##############################################################

# Set after a transaction that queued messages commits; wakes the sender.
outbox_ready = threading.Event()


def tell(conn, user_id, message, values=None, **where):
    """Queue `message` (an N_() text) for a shopper in their language, its {placeholders} filled
    from `values` (Money, StarsAmount and Phrase values are made in that language too). where:
    enqueue_message's order_id, payment_id ... Needs a transaction."""
    with speaking(language_of(conn, user_id)):
        text = tr(message, **(values or {}))
    return enqueue_message(conn, user_id, text, **where)


def enqueue_message(
    conn, chat_id, text, *, photo=None, buttons=None, order_id=None, payment_id=None
):
    """Queue a Telegram message (HTML text, optional 'public:'/'private:' photo) for the sender.
    payment_id: a note about an open payment, dropped if it is still unsent when the payment
    becomes final (drop_open_payment_notes)."""
    assert conn.in_transaction, "enqueue_message needs a transaction"
    if chat_id <= 0:  # not a private chat: the Mini App's preview shopper, who has no Telegram chat
        return
    markup = (
        json.dumps(
            {
                "inline_keyboard": [
                    [{"text": t, "callback_data": d} for t, d in row] for row in buttons
                ]
            }
        )
        if buttons
        else None
    )
    now = now_iso()
    conn.execute(
        "INSERT INTO outbox(chat_id, text, photo, reply_markup, order_id, payment_id, "
        "next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (chat_id, text, photo, markup, order_id, payment_id, now, now),
    )
    if outbox_ready.set not in conn.after_commit:
        conn.after_commit.append(outbox_ready.set)


def drop_open_payment_notes(conn, payment_id):
    """A payment became final: its notes written while it was open ("on its way") that are not
    sent yet would only contradict the invoice, which now says how it ended. They are closed
    unsent, with the reason (kept, not deleted: a deleted last row's id would be used again, and
    the sender remembers rows by id)."""
    conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?, "
        "last_error = 'not sent: the payment became final first' "
        "WHERE payment_id = ? AND edit_message_id IS NULL AND status = 'pending'",
        (now_iso(), payment_id),
    )


def enqueue_invoice_refresh(conn, payment):
    """Queue an update of the bot message that shows this payment's invoice (status, buttons)."""
    if payment["invoice_message_id"] and payment["user_id"] > 0:
        now = now_iso()
        conn.execute(
            "INSERT INTO outbox(chat_id, edit_message_id, payment_id, order_id, next_attempt_at, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                payment["user_id"],
                payment["invoice_message_id"],
                payment["id"],
                payment["order_id"],
                now,
                now,
            ),
        )
        if outbox_ready.set not in conn.after_commit:
            conn.after_commit.append(outbox_ready.set)


def owner_eur(cents):
    """Euro cents as the owner's notes write them (the admin's language, whoever's update made
    the note)."""
    return language(SOURCE_LANGUAGE).money(cents)


def owner_stars(stars):
    return f"{language(SOURCE_LANGUAGE).number(stars)} ⭐"


def alert_owners(conn, owners, text):
    """Queue a short note (HTML) to each owner in ADMIN_IDS."""
    for owner in owners:
        enqueue_message(conn, owner, text)


def outbox_counts(conn):
    """Messages waiting to be sent and messages that could not be delivered."""
    return {
        status: conn.execute("SELECT count(*) FROM outbox WHERE status = ?", (status,)).fetchone()[
            0
        ]
        for status in ("pending", "failed")
    }


def catch_up_outbox(conn):
    """Telegram answers again: messages waiting out a retry backoff go now, not minutes later."""
    with transaction(conn):
        n = conn.execute(
            "UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' "
            "AND next_attempt_at > ? AND last_error IS NOT NULL AND last_error NOT LIKE '429%'",
            (now_iso(), now_iso()),
        ).rowcount
    if n:
        log.info("outbox: Telegram is back; sending %d delayed message(s) now", n)
        outbox_ready.set()


def outbox_heads(conn, limit=200):
    """The first pending message of each chat that is due now, oldest first."""
    return conn.execute(
        "SELECT o.id, o.chat_id FROM outbox o JOIN (SELECT chat_id, min(id) AS id FROM outbox "
        "WHERE status = 'pending' GROUP BY chat_id) h ON h.id = o.id "
        "WHERE o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
        (now_iso(), limit),
    ).fetchall()


def outbox_row_due(conn, row_id):
    """The message, if it is still pending and due."""
    return conn.execute(
        "SELECT * FROM outbox WHERE id = ? AND status = 'pending' AND next_attempt_at <= ?",
        (row_id, now_iso()),
    ).fetchone()


def mark_outbox_sent(conn, row_id, message_id, note=None):
    with transaction(conn):
        conn.execute(
            "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1, "
            "telegram_message_id = coalesce(?, telegram_message_id), last_error = ? "
            "WHERE id = ?",
            (now_iso(), message_id, note, row_id),
        )


def reschedule_outbox(conn, row_id, delay, error, count=True):
    """Try the message again in `delay` seconds (counting this attempt unless count is False)."""
    with transaction(conn):
        conn.execute(
            "UPDATE outbox SET next_attempt_at = ?, attempts = attempts + ?, last_error = ? "
            "WHERE id = ? AND status = 'pending'",  # a note closed unsent meanwhile stays closed
            (now_iso(delay), int(count), error, row_id),
        )


def fail_outbox_row(conn, row, error, owners):
    """The message failed for good; the owners hear of the first failed delivery of an order."""
    with transaction(conn):
        first = (
            row["order_id"]
            and not conn.execute(
                "SELECT 1 FROM outbox WHERE order_id = ? AND status = 'failed'",
                (row["order_id"],),
            ).fetchone()
        )
        # A note closed unsent while it was being tried (drop_open_payment_notes) stays closed.
        failed = conn.execute(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? "
            "WHERE id = ? AND status = 'pending'",
            (error, row["id"]),
        ).rowcount
        if failed and first and row["chat_id"] not in owners:
            alert_owners(
                conn,
                owners,
                f"⚠️ Order #{row['order_id']}: a delivery message to user "
                f"<code>{row['chat_id']}</code> failed: {esc(error)}",
            )


def tell_owners(conn, owners, text):
    """A message to every owner, on its own."""
    if owners:
        with transaction(conn):
            alert_owners(conn, owners, text)


# Services: catalog #############################################################

# Units on sale joined to their visible place and active product. INDEXED BY:
# the partial index holds only available units, so browsing never walks the
# sold ones, however many orders the shop has had.
_AVAILABLE = (
    "INDEXED BY stock_units_available "
    "JOIN districts d ON d.id = u.district_id AND d.is_hidden = 0 "
    "JOIN cities c ON c.id = d.city_id AND c.is_hidden = 0 "
    "JOIN products p ON p.id = u.product_id AND p.is_active = 1 "
    "WHERE u.status = 'available'"
)


def list_cities(conn):
    """Cities with something in stock: [{id, name, units}]."""
    return conn.execute(
        f"SELECT c.id, c.name, count(*) AS units FROM stock_units u {_AVAILABLE} "
        "GROUP BY c.id ORDER BY c.position, c.name COLLATE NOCASE"
    ).fetchall()


def get_city(conn, city_id):
    row = conn.execute("SELECT * FROM cities WHERE id = ? AND is_hidden = 0", (city_id,)).fetchone()
    if row is None:
        raise NotFound(tr("That city is not in the shop any more."))
    return row


def list_districts(conn, city_id):
    """Districts of a city with something in stock."""
    return conn.execute(
        f"SELECT d.id, d.name, count(*) AS units FROM stock_units u {_AVAILABLE} AND c.id = ? "
        "GROUP BY d.id ORDER BY d.position, d.name COLLATE NOCASE",
        (city_id,),
    ).fetchall()


def get_district(conn, district_id):
    row = conn.execute(
        "SELECT d.*, c.name AS city_name FROM districts d JOIN cities c ON c.id = d.city_id "
        "WHERE d.id = ? AND d.is_hidden = 0 AND c.is_hidden = 0",
        (district_id,),
    ).fetchone()
    if row is None:
        raise NotFound(tr("That district is not in the shop any more."))
    return row


def list_products(conn, district_id):
    """Products in stock in a district, with how many are available."""
    return conn.execute(
        "SELECT p.id, shopper_text(p.name, p.translations, 'name') AS name, p.price_cents, "
        f"count(*) AS available FROM stock_units u {_AVAILABLE} "
        "AND d.id = ? GROUP BY p.id ORDER BY 2 COLLATE NOCASE",
        (district_id,),
    ).fetchall()


# An order item's product name in the shopper's language (the item keeps the name it was sold as).
_ITEM_NAME = (
    "shopper_text(i.product_name, "
    "(SELECT translations FROM products WHERE id = i.product_id), 'name')"
)


def get_offer(conn, product_id, district_id):
    """A product as offered in one district, with its available count (possibly 0)."""
    row = conn.execute(
        "SELECT p.id, p.price_cents, p.photo, p.is_active, p.kind, p.pay_methods, p.stars_price, "
        "shopper_text(p.name, p.translations, 'name') AS name, "
        "shopper_text(p.description, p.translations, 'description') AS description, "
        "p.name AS source_name, d.id AS district_id, d.name AS district_name, d.city_id, "
        "c.name AS city_name, "
        "(SELECT count(*) FROM stock_units u WHERE u.product_id = p.id AND u.district_id = d.id "
        " AND u.status = 'available') AS available "
        "FROM products p, districts d JOIN cities c ON c.id = d.city_id "
        "WHERE p.id = ? AND d.id = ? AND p.is_active = 1 AND d.is_hidden = 0 AND c.is_hidden = 0",
        (product_id, district_id),
    ).fetchone()
    if row is None:
        raise NotFound(tr("That product is not in the shop any more."))
    return row


def place_name(city, district):
    return f"{city} / {district}"


def catalog_is_empty(conn):
    return conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0


def list_catalog_offers(conn):
    """Everything in stock, a row per product and district with its available count, in the
    catalog's order: cities, then their districts, then their products."""
    return conn.execute(
        "SELECT c.id AS city_id, c.name AS city, d.id AS district_id, d.name AS district, "
        "p.id, shopper_text(p.name, p.translations, 'name') AS name, "
        "shopper_text(p.description, p.translations, 'description') AS description, "
        "p.price_cents, p.photo, p.kind, p.pay_methods, p.stars_price, count(*) AS available "
        f"FROM stock_units u {_AVAILABLE} "
        "GROUP BY d.id, p.id ORDER BY c.position, c.name COLLATE NOCASE, d.position, "
        "d.name COLLATE NOCASE, p.name COLLATE NOCASE"
    ).fetchall()


# The ways a product may be paid, in the order checkout offers them.
PAY_METHODS = ("stars", "crypto", "balance")
# How shoppers read the ways to pay (translated where shown: tr(METHOD_LABELS[method])).
METHOD_LABELS = {"stars": N_("⭐ Telegram Stars"), "crypto": N_("crypto"), "balance": N_("balance")}
INVOICE_OF = {"stars": N_("a Telegram Stars invoice"), "crypto": N_("a crypto invoice")}
PRODUCT_KINDS = ("digital", "physical")


def invoice_words(order):
    """'a Telegram Stars invoice' / 'a crypto invoice' for an order's way to pay, translated."""
    words = INVOICE_OF[order["payment_method"]]  # (a key written inside tr() would be extracted)
    return tr(words)


def declared_methods(product):
    """The ways the owner lets a product be paid (every way unless they said otherwise)."""
    chosen = set((product["pay_methods"] or ",".join(PAY_METHODS)).split(","))
    return tuple(m for m in PAY_METHODS if m in chosen)


def telegram_rule(conn):
    """Whether the shop follows Telegram's rule that digital goods are paid only in Stars inside
    Telegram (on for new shops; a shop from before Stars keeps it off until its owner decides)."""
    return get_setting(conn, "telegram_rule") != "0"


def product_methods(product, rule):
    """The ways a product may be paid now: what the owner allows, and for digital goods under
    Telegram's rule, Stars alone."""
    methods = declared_methods(product)
    if rule and product["kind"] == "digital":
        methods = tuple(m for m in methods if m == "stars")
    return methods


def breaks_rule(product):
    """A digital product its owner lets be paid other than in Stars (or not in Stars at all)."""
    return product["kind"] == "digital" and declared_methods(product) != ("stars",)


def stars_per_euro(conn):
    """The owner's rate for products without a Stars price of their own: Stars per euro."""
    return Decimal(get_setting(conn, "stars_per_euro") or DEFAULT_SETTINGS["stars_per_euro"])


def stars_of(product, rate):
    """A product's price in whole Stars: its own, else its euro price at the rate, rounded up."""
    if product["stars_price"]:
        return product["stars_price"]
    return math.ceil(Fraction(product["price_cents"]) * Fraction(rate) / 100)


def get_catalog_version(conn):
    """Moved by triggers with every change to places, products and units."""
    return conn.execute("SELECT version FROM catalog_version").fetchone()[0]


# Sold out and back again. Availability in a place falls only where an order takes units
# (open_order, and a late payment taking its units again, _retake_units): there note_low_stock
# tells the owners, once per crossing of the threshold. It rises for good where the owner adds
# units (add_units, the catalog import): there stock_arrived tells the shoppers waiting for it
# (🔔 Notify me) and re-arms the note. Units back on sale from a lapsed, failed or cancelled
# reservation (release_order_units) do neither: they come and go with every unpaid invoice (a
# shopper opening and dropping invoices would make an owner's note, and a "back in stock" message,
# per cycle), and a basket order's units mostly go straight back into its shopper's basket. So a
# note stays until a restock lifts the place above the threshold (or the owner changes it), and
# watchers wait for a restock; the product card shows units back from a reservation meanwhile.

# Active products with nothing available in a visible district where they had units (sold, or
# held by an unpaid order; units the owner deleted unsold are gone): the sold-out offers a shopper
# may still open, to ask to be told when they are back. One seek per district and product, so it
# costs the catalog's size, never the sales'.
_SOLD_OUT_OFFERS = (
    "SELECT d.id AS district_id, p.id, shopper_text(p.name, p.translations, 'name') AS name, "
    "shopper_text(p.description, p.translations, 'description') AS description, "
    "p.price_cents, p.photo, p.kind, p.pay_methods, p.stars_price, 0 AS available "
    "FROM districts d JOIN cities c ON c.id = d.city_id AND c.is_hidden = 0 "
    "JOIN products p ON p.is_active = 1 WHERE d.is_hidden = 0 {district} "
    "AND NOT EXISTS (SELECT 1 FROM stock_units a INDEXED BY stock_units_available "
    "WHERE a.district_id = d.id AND a.product_id = p.id AND a.status = 'available') "
    "AND EXISTS (SELECT 1 FROM stock_units e INDEXED BY stock_units_dedupe "
    "WHERE e.product_id = p.id AND e.district_id = d.id) "
    "ORDER BY d.id, 3 COLLATE NOCASE"
)


def list_sold_out_offers(conn, district_id=None):
    """Products sold out in a district (every district: None) where they had units, in the
    catalog's columns, available 0, by name."""
    one = "AND d.id = :district" if district_id is not None else ""
    return conn.execute(_SOLD_OUT_OFFERS.format(district=one), {"district": district_id}).fetchall()


def watch_offer(conn, user_id, product_id, district_id):
    """🔔 Notify me: the shopper waits for a product sold out in a district, to be told once when
    units are added there (stock_arrived). Asking twice is asking once. InvalidInput while it is
    in stock there, NotFound when it is not in the shop."""
    with transaction(conn):
        offer = get_offer(conn, product_id, district_id)
        if offer["available"]:
            raise InvalidInput(
                tr(
                    "{product} is in stock here, so there is nothing to wait for: you can buy it "
                    "now.",
                    product=offer["name"],
                )
            )
        conn.execute(
            "INSERT INTO stock_watches(user_id, product_id, district_id, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (user_id, product_id, district_id, now_iso()),
        )


def unwatch_offer(conn, user_id, product_id, district_id):
    """🔕 The shopper stops waiting for the product there; whether they were. NotFound for a
    product or place not in the shop that they were not waiting for."""
    with transaction(conn):
        gone = conn.execute(
            "DELETE FROM stock_watches WHERE user_id = ? AND product_id = ? AND district_id = ?",
            (user_id, product_id, district_id),
        ).rowcount
        if not gone:
            get_offer(conn, product_id, district_id)
        return bool(gone)


def is_watching(conn, user_id, product_id, district_id):
    return (
        conn.execute(
            "SELECT 1 FROM stock_watches WHERE user_id = ? AND product_id = ? AND district_id = ?",
            (user_id, product_id, district_id),
        ).fetchone()
        is not None
    )


def list_watches(conn, user_id):
    """What the shopper waits for: [(product_id, district_id)], oldest first."""
    return conn.execute(
        "SELECT product_id, district_id FROM stock_watches WHERE user_id = ? "
        "ORDER BY created_at, product_id, district_id",
        (user_id,),
    ).fetchall()


def _offer_stock(conn, product_id, district_id, visible=True):
    """A product in a district: names, price and units available and held, or None (with
    visible: None too when the product is inactive or the place hidden)."""
    return conn.execute(
        "SELECT p.name, p.translations, p.price_cents, d.name AS district, c.name AS city, "
        "(SELECT count(*) FROM stock_units u INDEXED BY stock_units_available "
        " WHERE u.district_id = d.id AND u.product_id = p.id AND u.status = 'available') "
        " AS available, "
        "(SELECT count(*) FROM stock_units r INDEXED BY stock_units_product "
        " WHERE r.product_id = p.id AND r.status = 'reserved' AND r.district_id = d.id) AS held "
        "FROM products p, districts d JOIN cities c ON c.id = d.city_id "
        "WHERE p.id = :product AND d.id = :district AND (NOT :visible OR "
        "(p.is_active = 1 AND d.is_hidden = 0 AND c.is_hidden = 0))",
        {"product": product_id, "district": district_id, "visible": visible},
    ).fetchone()


def notify_watchers(conn, product_id, district_id):
    """Units of a product were added in a district: queue one message to each shopper waiting for
    it there (in their language, with a button to its card), and forget them. Nothing while it is
    not on sale there (inactive, hidden): they wait on. Returns how many were told. Needs the
    transaction that added the units."""
    assert conn.in_transaction, "notify_watchers needs the transaction that added the units"
    offer = _offer_stock(conn, product_id, district_id)
    if offer is None or not offer["available"]:
        return 0
    watchers = conn.execute(
        "SELECT w.user_id, u.is_banned FROM stock_watches w JOIN users u ON u.id = w.user_id "
        "WHERE w.product_id = ? AND w.district_id = ? ORDER BY w.created_at, w.user_id",
        (product_id, district_id),
    ).fetchall()
    place = esc(place_name(offer["city"], offer["district"]))
    for watcher in watchers:
        if watcher["is_banned"]:
            continue
        with speaking(language_of(conn, watcher["user_id"])):
            name = shopper_text(offer["name"], offer["translations"], "name")
            # TRANSLATORS: the button under "back in stock", opening the product's card
            label = tr("🛒 Open {product}", product=shorten(name, 40))
        tell(
            conn,
            watcher["user_id"],
            N_("🔔 <b>{product}</b> is back in stock in {place}."),
            {"product": esc(name), "place": place},
            buttons=[[(label, f"prod:{product_id}:{district_id}")]],
        )
    conn.execute(
        "DELETE FROM stock_watches WHERE product_id = ? AND district_id = ?",
        (product_id, district_id),
    )
    return sum(not w["is_banned"] for w in watchers)


def stock_arrived(conn, product_id, district_id):
    """The owner added units of a product in a district (see "Sold out and back again" above):
    the shoppers waiting for it are told, and its low-stock note re-armed if it is above the
    threshold again. Inside the transaction that added them."""
    notify_watchers(conn, product_id, district_id)
    rearm_low_stock(conn, product_id, district_id)


def note_low_stock(conn, product_id, district_id, owners):
    """An order took units of a product in a district: when what is left there is down to the
    owner's threshold and they were not told since it last was above it, tell the owners (one
    note per crossing: low_stock_notes remembers it until stock_arrived re-arms it). Nothing
    without owners to tell, or with the threshold 0. Returns whether a note was queued."""
    threshold = low_stock_threshold(conn)
    if threshold <= 0 or not owners:
        return False
    noted = conn.execute(
        "SELECT 1 FROM low_stock_notes WHERE product_id = ? AND district_id = ?",
        (product_id, district_id),
    ).fetchone()
    offer = None if noted else _offer_stock(conn, product_id, district_id, visible=False)
    if offer is None or offer["available"] > threshold:
        return False
    conn.execute(
        "INSERT INTO low_stock_notes(product_id, district_id, available, noted_at) "
        "VALUES (?, ?, ?, ?)",
        (product_id, district_id, offer["available"], now_iso()),
    )
    what = f"<b>{esc(offer['name'])}</b> ({owner_eur(offer['price_cents'])})"
    where = esc(place_name(offer["city"], offer["district"]))
    if offer["available"]:
        text = (
            f"📉 Low stock: {what} in {where}: {offer['available']} left "
            f"(your threshold is {threshold})."
        )
    else:
        held = f", {offer['held']} held by unpaid orders" if offer["held"] else ""
        text = f"📉 Sold out: {what} in {where}: none left{held}."
    alert_owners(conn, owners, text)
    return True


# Services: catalog import ######################################################

MAX_IMAGE_BYTES = 10 * 1024 * 1024


IMAGE_TYPES = {
    b"\xff\xd8\xff": "jpg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
}


def image_kind(data):
    """'jpg', 'png', 'gif' or 'webp' from the file's first bytes; None if not an image."""
    for magic, kind in IMAGE_TYPES.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def store_media(media_dir, data, kind, *, private):
    """Save an image under media/public (named by its hash) or media/private (random name)."""
    folder = Path(media_dir) / ("private" if private else "public")
    folder.mkdir(parents=True, exist_ok=True)
    name = (
        (secrets.token_hex(16) if private else hashlib.sha256(data).hexdigest()[:32]) + "." + kind
    )
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return name


def media_path(media_dir, ref):
    """'public:<name>' / 'private:<name>' -> the file's path."""
    scope, _, name = ref.partition(":")
    if scope not in ("public", "private") or not re.fullmatch(
        r"[0-9a-f]{32}\.(jpg|png|gif|webp)", name
    ):
        raise ValueError(f"bad media reference {ref!r}")
    return Path(media_dir) / scope / name


def _no_json_constants(name):
    raise ValueError(f"{name} is not a number")


def read_catalog_file(path):
    """Parse a catalog JSON file exactly (prices as Decimal); raise CatalogError saying why not."""
    path = Path(path)
    try:
        if path.stat().st_size > 20 * 1024 * 1024:
            raise CatalogError([f"{path}: larger than 20 MB"])
        raw = path.read_bytes()
    except OSError as e:
        raise CatalogError([f"{path}: cannot read: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CatalogError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_json_constants)
    except json.JSONDecodeError as e:
        raise CatalogError(
            [f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"]
        ) from None
    except (ValueError, RecursionError) as e:
        raise CatalogError([f"{path}: not valid JSON: {e}"]) from None


# A product's name and description in the shop's other languages: products.translations holds
# {"de": {"name": ..., "description": ...}, ...} (products.name and description are the default
# language's); the catalog file and the product form give them per field, {field: {code: text}}.
PRODUCT_TEXTS = ("name", "description")


def product_translations(stored):
    """products.translations (JSON text or None) per field: {"name": {code: text},
    "description": {code: text}}, languages in order, empty texts left out."""
    try:
        found = json.loads(stored) if stored else {}
    except ValueError:
        found = {}
    by_field = {key: {} for key in PRODUCT_TEXTS}
    for code, texts in sorted(found.items() if isinstance(found, dict) else ()):
        for key in PRODUCT_TEXTS:
            if isinstance(texts, dict) and isinstance(texts.get(key), str) and texts[key]:
                by_field[key][code] = texts[key]
    return by_field


def stored_translations(stored, given, codes=None):
    """products.translations after a change: the stored ones (JSON text or None) with, for each
    field in `given` ({field: {code: text}}), that field's texts in the languages `codes` (None:
    in every language) replaced by the given ones. JSON text, or None when none are left."""
    by_field = product_translations(stored)
    for key, texts in given.items():
        kept = {} if codes is None else {c: t for c, t in by_field[key].items() if c not in codes}
        by_field[key] = {**kept, **{c: t for c, t in texts.items() if t}}
    by_code = {}
    for key in PRODUCT_TEXTS:
        for code, text in by_field[key].items():
            by_code.setdefault(code, {})[key] = text
    return json.dumps(dict(sorted(by_code.items())), ensure_ascii=False) if by_code else None


@dataclass
class CatalogPlan:
    cities: list  # [(name, [district names])]
    # [dict(name, description, price_cents, photo: (bytes, kind) | None, has_photo,
    #       fields: {kind, pay_methods, stars_price} as far as the file says them,
    #       translations: {field: {code: text}} of the fields the file gives per language)]
    products: list
    units: list  # [dict(product, city, district, content, media: (bytes, kind) | None, where)]


def read_image(path, ref):
    """(bytes, kind) of an image file, or the reason it cannot be one. Reads at most 10 MB + 1
    byte."""
    try:
        if not path.is_file():
            return (
                f"{ref} is not a file"
                if path.exists()
                else f"cannot read {ref}: No such file or directory"
            )
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        return f"cannot read {ref}: {e.strerror}"
    if len(data) > MAX_IMAGE_BYTES:
        return f"{ref} is larger than 10 MB"
    kind = image_kind(data)
    return (data, kind) if kind else f"{ref} is not a JPEG, PNG, GIF or WebP image"


@dataclass
class _CatalogCheck:
    """What plan_catalog has found so far: the problems, as (place, message) with the place a path
    like ("products", 3, "price"), the images it has read, the names of the cities and products by
    their place, and the places a stock line may name."""

    base_dir: Path
    confine: bool
    problems: list = field(default_factory=list)
    images: dict = field(default_factory=dict)  # each file is read once, however many name it
    labels: dict = field(default_factory=dict)  # ("products", 3) -> "product 'Gift card'"
    places: dict = field(default_factory=dict)  # city -> {districts}; None: its list is unreadable
    cities_readable: bool = True  # False when "cities" is not a list: no city can be called unknown
    default_code: str = SOURCE_LANGUAGE  # the shop's default language: its texts are required


def _plan_error(check, path, message):
    check.problems.append((tuple(path), message))


def _catalog_where(path):
    """("products", 3, "stock", 0, "city") -> 'products[3].stock[0].city'; () -> 'catalog'."""
    where = ""
    for step in path:
        where += f"[{step}]" if isinstance(step, int) else (f".{step}" if where else step)
    return where or "catalog"


def _catalog_order(data, path):
    """Where a place is in the file, as a tuple that sorts in file order (a missing key sorts
    after the keys its object has)."""
    order, node = [], data
    for step in path:
        if isinstance(node, dict):
            keys = list(node)
            order.append(keys.index(step) if step in node else len(keys))
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            order.append(step)
            node = node[step]
        else:
            order.append(0)
            node = None
    return tuple(order)


def _catalog_problems(check, data):
    """The problems as lines, each once, in the order of their places in the file; a problem in a
    city or product that has a name says the name (without one, its position names it)."""
    found = sorted(
        (_catalog_order(data, path), n, path, message)
        for n, (path, message) in enumerate(dict.fromkeys(check.problems))
    )
    lines = []
    for _, _, path, message in found:
        label = check.labels.get(path[:2])
        lines.append(f"{_catalog_where(path)}: {message}" + (f" ({label})" if label else ""))
    return lines


def _plan_text(check, path, obj, key, what, **kw):
    try:
        return clean_text(obj.get(key), what, **kw)
    except InvalidInput as e:
        _plan_error(check, (*path, key), str(e))


def _plan_texts(check, path, obj, key, what, **kw):
    """A text that may be given per language, {"en": ..., "de": ...}, as well as plain: (the
    default language's text, {code: text} of the others, or None when it is plain). The default
    language's is required in an object; each is checked as the plain text is, and one left empty
    in another language means none in it."""
    given = obj.get(key)
    if not isinstance(given, dict):
        return _plan_text(check, path, obj, key, what, **kw), None
    text, others = None, {}
    for code, value in given.items():
        if not is_language_code(code):
            _plan_error(
                check,
                (*path, key, code),
                f"{_json_text(code)} is not a language code; write them as the shop's "
                'languages are written, like "de", "pl" or "pt_BR"',
            )
            continue
        default = code == check.default_code
        required = kw.get("required", True) and default
        try:
            value = clean_text(
                value, f"{what} in {language_label(code)}", **{**kw, "required": required}
            )
        except InvalidInput as e:
            _plan_error(check, (*path, key, code), str(e))
            continue
        if default:
            text = value
        elif value:
            others[code] = value
    if check.default_code not in given:
        _plan_error(
            check,
            (*path, key),
            f"{what} in {language_label(check.default_code)}, the shop's default language, is "
            f'missing: write it as "{check.default_code}": ... in the object',
        )
    return text, others


def _plan_image(check, path, ref):
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref.strip() or "\x00" in ref:
        return _plan_error(check, path, "must be a file path relative to the catalog file")
    file = (check.base_dir / ref).resolve()
    if check.confine and not str(file).startswith(str(check.base_dir.resolve()) + os.sep):
        return _plan_error(check, path, f"{ref} is outside the uploaded catalog")
    if file not in check.images:
        check.images[file] = read_image(file, ref)
    found = check.images[file]
    return _plan_error(check, path, found) if isinstance(found, str) else found


def _plan_list(check, obj, key, path, what):
    """obj[key] if it is a list (missing: empty); None, the problem noted, if it is not one."""
    items = obj.get(key, [])
    if isinstance(items, list):
        return items
    _plan_error(check, (*path, key), f"must be a list of {what}")
    return None


def _plan_keys(check, path, obj, allowed):
    extra = set(obj) - set(allowed)
    if extra:
        _plan_error(check, path, f"unknown keys {sorted(extra)} (expected {', '.join(allowed)})")


def _plan_districts(check, path, city):
    """The city's district names; None if its "districts" is not a list."""
    districts, seen = [], set()
    raw = _plan_list(check, city, "districts", path, "names")
    for j, d in enumerate(raw or []):
        try:
            d = clean_text(d, "The district name", max_len=64)
        except InvalidInput as e:
            _plan_error(check, (*path, "districts", j), str(e))
            continue
        if d in seen:
            _plan_error(check, (*path, "districts", j), f"district {d!r} is listed twice")
        seen.add(d)
        districts.append(d)
    return None if raw is None else districts


def _plan_cities(check, data):
    """[(name, [district names])] of the file's cities; notes them as places stock may name."""
    cities, first = [], {}
    raw = _plan_list(check, data, "cities", (), "cities")
    check.cities_readable = raw is not None
    for i, c in enumerate(raw or []):
        path = ("cities", i)
        if not isinstance(c, dict):
            _plan_error(check, path, 'must be an object with "name" and "districts"')
            continue
        _plan_keys(check, path, c, ("name", "districts"))
        name = _plan_text(check, path, c, "name", "The city name", max_len=64)
        districts = _plan_districts(check, path, c)
        if name is None:
            continue
        check.labels[path] = f"city {name!r}"
        if name in first:
            _plan_error(check, path, f"listed twice, first as cities[{first[name]}]")
        first.setdefault(name, i)
        cities.append((name, districts or []))
        if districts is None:
            check.places[name] = None  # which districts it has is unknown
        elif check.places.get(name, set()) is not None:
            check.places[name] = check.places.get(name, set()) | set(districts)
    return cities


_PRICE_HINT = 'write it like "25.00"'


def _price_text(check, path, price):
    """A price as text parse_eur reads (a JSON number exactly, "1E+3" as "1000.00"); None, the
    problem noted, if it cannot be one."""
    if price is None:
        return _plan_error(check, path, f"the price is missing; {_PRICE_HINT}")
    if isinstance(price, str):
        return price
    if isinstance(price, int) and not isinstance(price, bool):
        return str(price)
    if isinstance(price, float):  # (only from Python: read_catalog_file reads numbers exactly)
        return _plan_error(check, path, f"{price!r} is a float, not exact; {_PRICE_HINT}")
    if not isinstance(price, Decimal):  # true, a list, an object
        shown = json.dumps(price, ensure_ascii=False, default=str)[:40]
        return _plan_error(check, path, f"{shown} is not an amount in EUR; {_PRICE_HINT}")
    if not price.is_finite() or not -(10**12) < price < 10**12:
        return _plan_error(check, path, f"{price} is not a price in EUR; {_PRICE_HINT}")
    if price != round(price, 2):
        return _plan_error(check, path, f"{price} has more than 2 decimals (a price is in cents)")
    return f"{price:.2f}"


def _price_problem(text, error):
    """Why parse_eur refused a price, with how to write it instead. A comma before the last one or
    two digits is read as the decimal point ("25,00"), never guessed otherwise: "1.234,50",
    "1,234.50" and "1,234" are refused."""
    shown = text.strip()
    try:
        parse_eur(shown, minimum=0, maximum=10**30)
        return str(error)  # an amount, but out of range
    except InvalidInput:
        pass
    if shown.startswith("-"):
        return str(error)
    if re.fullmatch(r"[0-9]+(?:[.,'\u00a0 ][0-9]+)+", shown):
        return (
            f'{text!r} has a thousands separator or more than 2 decimals; write it like "1234.50"'
        )
    if re.fullmatch(r"[0-9]+", shown):
        return f"must be at most {cents_to_str(MAX_EUR_CENTS)} EUR, got {text!r}"
    return f"{text!r} is not an amount in EUR; {_PRICE_HINT}"


def _plan_price(check, path, price):
    """The price in cents, or None (with the problem noted)."""
    text = _price_text(check, path, price)
    if text is None:
        return None
    try:
        return parse_eur(text)
    except InvalidInput as e:
        return _plan_error(check, path, _price_problem(text, e))


def _plan_place(check, path, city, district):
    """Note a stock line naming a city or district that is neither in the file nor in the shop."""
    if city is None or district is None or not check.cities_readable:
        return
    if city not in check.places:
        _plan_error(check, (*path, "city"), f'unknown city {city!r}; add it under "cities"')
    elif check.places[city] is not None and district not in check.places[city]:
        _plan_error(
            check,
            (*path, "district"),
            f"{district!r} is not a district of {city!r}: an unknown district; "
            'add it to the city\'s "districts"',
        )


def _plan_units(check, path, product_name, product):
    """The units of one product's "stock"."""
    units = []
    for j, s in enumerate(_plan_list(check, product, "stock", path, "units") or []):
        w = (*path, "stock", j)
        if not isinstance(s, dict):
            _plan_error(check, w, 'must be an object with "city", "district" and "content"')
            continue
        _plan_keys(check, w, s, ("city", "district", "content", "media"))
        city = _plan_text(check, w, s, "city", "The city", max_len=64)
        district = _plan_text(check, w, s, "district", "The district", max_len=64)
        _plan_place(check, w, city, district)
        content = _plan_text(check, w, s, "content", "The content", max_len=3500, multiline=True)
        media = _plan_image(check, (*w, "media"), s.get("media"))
        units.append(
            {
                "product": product_name,
                "city": city,
                "district": district,
                "content": content,
                "media": media,
                "where": _catalog_where(w),
            }
        )
    return units


def _json_text(value):
    """A value of a catalog file as it is written there (at most 40 characters)."""
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)[:40]


def stored_pay_methods(methods):
    """The ways to pay as products.pay_methods stores them: in PAY_METHODS' order, comma-separated;
    None when they are every way (as a product that never said)."""
    chosen = [m for m in PAY_METHODS if m in methods]
    return None if len(chosen) == len(PAY_METHODS) else ",".join(chosen)


_METHODS_HINT = '"stars", "crypto" and "balance"'


def _plan_kind(check, path, kind):
    """A product's "kind": 'digital', 'physical', or None (null: not said)."""
    if kind is None or kind in PRODUCT_KINDS:
        return kind
    return _plan_error(check, path, f'must be "digital" or "physical", got {_json_text(kind)}')


def _plan_methods(check, path, methods):
    """A product's "methods", the ways it may be paid: a list of PAY_METHODS, each once, at least
    one. Returns what products.pay_methods stores (None: null or all of them, every way)."""
    if methods is None:
        return None
    if not isinstance(methods, list):
        return _plan_error(
            check,
            path,
            f'must be a list of ways to pay, like ["stars"]; got {_json_text(methods)}',
        )
    if not methods:
        return _plan_error(
            check, path, 'must list at least one way to pay ("stars", "crypto" or "balance")'
        )
    for j, method in enumerate(methods):
        if not isinstance(method, str) or method not in PAY_METHODS:
            _plan_error(
                check,
                (*path, j),
                f"{_json_text(method)} is not a way to pay; the ways are {_METHODS_HINT}",
            )
        elif method in methods[:j]:
            _plan_error(check, (*path, j), f'"{method}" is listed twice')
    return stored_pay_methods(methods)


MAX_STARS_PRICE = 100000


def _plan_stars_price(check, path, price):
    """A product's own "stars_price": whole Stars, or None (null: the euro price at the shop's
    rate)."""
    if price is None or (
        isinstance(price, int) and not isinstance(price, bool) and 1 <= price <= MAX_STARS_PRICE
    ):
        return price
    return _plan_error(
        check,
        path,
        f"must be a whole number of Stars from 1 to {MAX_STARS_PRICE}, like 250 (or null: the "
        f"euro price at the shop's rate); got {_json_text(price)}",
    )


def _plan_payment_fields(check, path, p):
    """The product's kind, ways to pay and Stars price, as the products table stores them: only
    those the file says (a missing key keeps what the shop has; null sets "not said")."""
    fields = {}
    if "kind" in p:
        fields["kind"] = _plan_kind(check, (*path, "kind"), p["kind"])
    if "methods" in p:
        fields["pay_methods"] = _plan_methods(check, (*path, "methods"), p["methods"])
    if "stars_price" in p:
        fields["stars_price"] = _plan_stars_price(check, (*path, "stars_price"), p["stars_price"])
    return fields


_PRODUCT_KEYS = ("name", "description", "price", "photo", "stock", "kind", "methods", "stars_price")


def _plan_product(check, i, p, first):
    """(product, units) of products[i]; first: the position of each product name seen so far."""
    path = ("products", i)
    _plan_keys(check, path, p, _PRODUCT_KEYS)
    name, names = _plan_texts(check, path, p, "name", "The product name", max_len=64)
    if name is not None:
        check.labels[path] = f"product {name!r}"
        if name in first:
            _plan_error(check, path, f"listed twice, first as products[{first[name]}]")
        first.setdefault(name, i)
    elif names:  # named in another language only: that names it in the problems
        check.labels[path] = f"product {next(iter(names.values()))!r}"
    description, descriptions = _plan_texts(
        check,
        path,
        p,
        "description",
        "The description",
        max_len=800,
        multiline=True,
        required=False,
    )
    translations = {"name": names, "description": descriptions}
    product = {
        "name": name,
        "description": description,
        # {field: {code: text}} of the fields the file gives per language
        "translations": {k: v for k, v in translations.items() if v is not None},
        "price_cents": _plan_price(check, (*path, "price"), p.get("price")),
        "photo": _plan_image(check, (*path, "photo"), p.get("photo")),
        "has_photo": p.get("photo") is not None,
        "fields": _plan_payment_fields(check, path, p),
    }
    return product, _plan_units(check, path, name, p)


def _plan_products(check, data):
    """(products, units) of the file's products."""
    products, units, first = [], [], {}
    if "products" not in data:
        _plan_error(
            check, ("products",), 'the list of products is missing (write "products": [] for none)'
        )
    for i, p in enumerate(_plan_list(check, data, "products", (), "products") or []):
        if not isinstance(p, dict):
            _plan_error(
                check, ("products", i), 'must be an object with "name", "price" and "stock"'
            )
            continue
        product, product_units = _plan_product(check, i, p, first)
        products.append(product)
        units += product_units
    return products, units


def plan_catalog(data, base_dir, confine=False, shop_places=None, default_code=SOURCE_LANGUAGE):
    """Check a parsed catalog file completely, reading its images; raise CatalogError listing every
    problem, each once, in file order.

    confine: images must lie inside base_dir (an upload may not name the server's own files).
    shop_places: {city: {districts}} the shop has already; a stock line may name them too.
    default_code: the shop's default language, whose name and description a product given per
    language must have."""
    if not isinstance(data, dict):
        raise CatalogError(['the catalog must be a JSON object with "cities" and "products"'])
    check = _CatalogCheck(Path(base_dir), confine, default_code=default_code)
    check.places = {city: set(districts) for city, districts in (shop_places or {}).items()}
    _plan_keys(check, (), data, ("cities", "products"))
    cities = _plan_cities(check, data)  # first, wherever they are: stock lines name them
    products, units = _plan_products(check, data)
    if check.problems:
        raise CatalogError(_catalog_problems(check, data))
    return CatalogPlan(cities, products, units)


def _shop_places(conn):
    """{city: {districts}} of the places the shop has."""
    places = {}
    for row in conn.execute(
        "SELECT c.name AS city, d.name AS district "
        "FROM cities c LEFT JOIN districts d ON d.city_id = c.id"
    ):
        places.setdefault(row["city"], set())
        if row["district"] is not None:
            places[row["city"]].add(row["district"])
    return places


class _DryRun(Exception):
    """Rolls back a catalog import that was only counting."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts


_IMPORT_COUNTS = (
    "cities_added",
    "districts_added",
    "products_added",
    "products_updated",
    "units_added",
    "units_present",
    "units_repeated",
)


@dataclass
class _CatalogImport:
    """One import under way: where its images go, the files it wrote, what it changed."""

    media_dir: Path
    dry_run: bool
    written: list = field(default_factory=list)
    counts: dict = field(default_factory=lambda: dict.fromkeys(_IMPORT_COUNTS, 0))


def _import_image(job, image, private):
    """Store an image of the catalog; return its name (a dry run stores nothing)."""
    if job.dry_run:
        return "0" * 32 + "." + image[1]
    name = store_media(job.media_dir, image[0], image[1], private=private)
    job.written.append(Path(job.media_dir) / ("private" if private else "public") / name)
    return name


def _import_places(conn, job, plan):
    """Add the cities and districts the shop lacks; return their ids by name and (city, name)."""
    city_ids, district_ids = {}, {}
    for row in conn.execute("SELECT id, name FROM cities"):
        city_ids[row["name"]] = row["id"]
    for row in conn.execute(
        "SELECT d.id, d.name, c.name AS city FROM districts d JOIN cities c ON c.id = d.city_id"
    ):
        district_ids[(row["city"], row["name"])] = row["id"]
    for name, districts in plan.cities:
        if name not in city_ids:
            (position,) = conn.execute(
                "SELECT coalesce(max(position), 0) + 1 FROM cities"
            ).fetchone()
            city_ids[name] = conn.execute(
                "INSERT INTO cities(name, position) VALUES (?, ?)", (name, position)
            ).lastrowid
            job.counts["cities_added"] += 1
        for d in districts:
            if (name, d) not in district_ids:
                position = conn.execute(
                    "SELECT coalesce(max(position), 0) + 1 FROM districts WHERE city_id = ?",
                    (city_ids[name],),
                ).fetchone()[0]
                district_ids[(name, d)] = conn.execute(
                    "INSERT INTO districts(city_id, name, position) VALUES (?, ?, ?)",
                    (city_ids[name], d, position),
                ).lastrowid
                job.counts["districts_added"] += 1
    return city_ids, district_ids


def _import_products(conn, job, plan):
    """Add or update the file's products; return their ids by name."""
    product_ids = {}
    for p in plan.products:
        row = conn.execute("SELECT * FROM products WHERE name = ?", (p["name"],)).fetchone()
        photo = _import_image(job, p["photo"], private=False) if p["photo"] else None
        fields = p["fields"]
        translations = stored_translations(row and row["translations"], p["translations"])
        if row is None:
            product_ids[p["name"]] = conn.execute(
                "INSERT INTO products(name, description, price_cents, photo, created_at, kind, "
                "pay_methods, stars_price, translations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    p["name"],
                    p["description"],
                    p["price_cents"],
                    photo,
                    now_iso(),
                    *(fields.get(k) for k in ("kind", "pay_methods", "stars_price")),
                    translations,
                ),
            ).lastrowid
            job.counts["products_added"] += 1
            continue
        product_ids[p["name"]] = row["id"]
        new = {
            "description": p["description"],
            "price_cents": p["price_cents"],
            "photo": photo if p["has_photo"] else row["photo"],
            "translations": translations,
            **fields,
        }
        if any(row[k] != v for k, v in new.items()):
            conn.execute(
                f"UPDATE products SET {', '.join(f'{k} = ?' for k in new)} WHERE id = ?",
                (*new.values(), row["id"]),
            )
            job.counts["products_updated"] += 1
    return product_ids


def _import_units(conn, job, plan, product_ids, district_ids):
    """Add the units the shop does not have yet (sold or not); the shoppers waiting for them are
    told (stock_arrived)."""
    added, arrived = set(), {}
    for u in plan.units:
        key = (
            product_ids[u["product"]],
            district_ids[(u["city"], u["district"])],
            u["content"],
        )
        if key in added:
            job.counts["units_repeated"] += 1  # the file lists the same unit twice
            continue
        added.add(key)
        if conn.execute(
            "SELECT 1 FROM stock_units WHERE product_id = ? AND district_id = ? AND content = ?",
            key,
        ).fetchone():
            job.counts["units_present"] += 1
            continue
        media = _import_image(job, u["media"], private=True) if u["media"] else None
        conn.execute(
            "INSERT INTO stock_units(product_id, district_id, content, media, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (*key, media, now_iso()),
        )
        job.counts["units_added"] += 1
        arrived[key[:2]] = True
    for product_id, district_id in arrived:  # (in the order the file first adds to each)
        stock_arrived(conn, product_id, district_id)


def _import_plan(conn, job, plan):
    """The import itself, inside the caller's transaction."""
    _, district_ids = _import_places(conn, job, plan)
    missing = [
        f"{u['where']}.district: {u['district']!r} is not a district of {u['city']!r} "
        '(list it under "cities")'
        for u in plan.units
        if (u["city"], u["district"]) not in district_ids
    ]
    if missing:
        raise CatalogError(missing)
    product_ids = _import_products(conn, job, plan)
    _import_units(conn, job, plan, product_ids, district_ids)


def _forget_written(conn, written):
    """Delete the image files a failed import wrote that nothing in the database names."""
    for path in written:
        referenced = conn.execute(
            "SELECT 1 FROM products WHERE photo = ? "
            "UNION SELECT 1 FROM stock_units WHERE media = ?",
            (path.name, path.name),
        ).fetchone()
        if not referenced:
            path.unlink(missing_ok=True)


def import_catalog(conn, data, base_dir, media_dir, dry_run=False, confine=False):
    """Import a parsed catalog file atomically and idempotently; return counts of what changed.

    Cities, districts and products match existing rows by name (a product's
    description, price and photo are updated to the file's, and so are its kind,
    ways to pay and Stars price when the file says them). A name or description
    given per language ({"en": ..., "de": ...}) stores the default language's text
    as the product's own (a product is matched by that name) and the others in
    place of what the product had in other languages for that field; given as
    plain text, the product keeps its texts in other languages. A unit whose
    product, district and content already exist, sold or not, is not added
    again, so re-importing a file never re-sells a code. Any problem raises
    CatalogError and nothing is imported. A unit listed twice in the file is
    added once (counted as units_repeated). dry_run counts what would change and
    changes nothing.
    """
    plan = plan_catalog(data, base_dir, confine, _shop_places(conn), default_language(conn))
    job = _CatalogImport(media_dir, dry_run)
    try:
        with transaction(conn):
            _import_plan(conn, job, plan)
            if dry_run:
                raise _DryRun(job.counts)
    except _DryRun as done:
        return done.counts
    except BaseException:
        _forget_written(conn, job.written)
        raise
    return job.counts


DEMO_IMAGES = STATIC_DIR / "img" / "demo"


# The demo catalog, as a catalog file. Product photos come with the shop (DEMO_IMAGES); the pickup
# photos (locker-door-N.png, door N highlighted) are drawn by load_demo beside the file. Names and
# descriptions in each language the shop is made for: shoppers read the ones the shop speaks.
DEMO_LOCKER_DOORS = (3, 17)


DEMO_CATALOG = {
    "cities": [
        {"name": "Berlin", "districts": ["Mitte", "Kreuzberg"]},
        {"name": "Lisbon", "districts": ["Baixa", "Alfama"]},
        {"name": "Kraków", "districts": ["Stare Miasto", "Kazimierz"]},
    ],
    "products": [
        {
            "name": {
                "en": "Paper & Ink gift card 25 €",
                "de": "Paper & Ink Geschenkkarte",
                "pl": "Karta podarunkowa Paper & Ink",
                "pt": "Cartão-oferta Paper & Ink",
                "es": "Tarjeta regalo Paper & Ink",
                "uk": "Подарункова картка Paper & Ink",
                "ru": "Подарочная карта Paper & Ink",
            },
            "kind": "digital",
            "price": "25.00",
            "photo": str(DEMO_IMAGES / "giftcard-books.jpg"),
            "description": {
                "en": "A gift card for Paper & Ink Books, valid in every shop and online for "
                "three years. Redeem the code at the till or at checkout.",
                "de": "Geschenkkarte über 25 € für Paper & Ink Books, drei Jahre gültig in allen "
                "Filialen und online. Den Code an der Kasse oder im Onlineshop einlösen.",
                "pl": "Karta podarunkowa o wartości 25 € do Paper & Ink Books, ważna przez trzy "
                "lata we wszystkich księgarniach i online. Kod zrealizujesz przy kasie lub "
                "przy zamówieniu online.",
                "pt": "Cartão-oferta de 25 € para a Paper & Ink Books, válido durante três anos "
                "em todas as lojas e online. Utilize o código na caixa ou ao finalizar a "
                "encomenda.",
                "es": "Tarjeta regalo de 25 € para Paper & Ink Books, válida durante tres años "
                "en todas las tiendas y online. Canjea el código en caja o al finalizar la "
                "compra.",
                "uk": "Подарункова картка на 25 € для Paper & Ink Books, дійсна три роки в усіх "
                "книгарнях і онлайн. Код можна використати на касі або під час оформлення "
                "замовлення.",
                "ru": "Подарочная карта на 25 € для Paper & Ink Books, действует три года во "
                "всех магазинах и онлайн. Код можно использовать на кассе или при оформлении "
                "заказа.",
            },
            "stock": [
                {"city": c, "district": d, "content": code}
                for c, d, code in [
                    ("Berlin", "Mitte", "PINK-25-7F3K-Q9D2"),
                    ("Berlin", "Mitte", "PINK-25-M2XW-4RTA"),
                    ("Berlin", "Kreuzberg", "PINK-25-H8NC-ZP61"),
                    ("Lisbon", "Baixa", "PINK-25-UV5E-3KDM"),
                    ("Lisbon", "Baixa", "PINK-25-BQ7Y-W0LS"),
                    ("Kraków", "Stare Miasto", "PINK-25-9JHF-C2VE"),
                ]
            ],
        },
        {
            "name": {
                "en": "Corner Café voucher 10 €",
                "de": "Gutschein Corner Café",
                "pl": "Voucher do Corner Café",
                "pt": "Vale Corner Café",
                "es": "Vale Corner Café",
                "uk": "Ваучер Corner Café",
                "ru": "Ваучер Corner Café",
            },
            "kind": "digital",
            "price": "10.00",
            "photo": str(DEMO_IMAGES / "voucher-coffee.jpg"),
            "description": {
                "en": "Coffee, cake or breakfast for 10 € at any Corner Café. Show the code at "
                "the counter.",
                "de": "Kaffee, Kuchen oder Frühstück für 10 € in jedem Corner Café. Einfach den "
                "Code an der Theke zeigen.",
                "pl": "Kawa, ciasto lub śniadanie za 10 € w każdej kawiarni Corner Café. Pokaż "
                "kod przy ladzie.",
                "pt": "Café, bolo ou pequeno-almoço no valor de 10 € em qualquer Corner Café. "
                "Mostre o código ao balcão.",
                "es": "Café, tarta o desayuno por 10 € en cualquier Corner Café. Enseña el código "
                "en la barra.",
                "uk": "Кава, тістечко або сніданок на 10 € у будь-якому Corner Café. Покажіть код "
                "на касі.",
                "ru": "Кофе, пирожное или завтрак на 10 € в любом Corner Café. Покажите код на "
                "кассе.",
            },
            "stock": [
                {"city": c, "district": d, "content": code}
                for c, d, code in [
                    ("Berlin", "Kreuzberg", "CAFE-10-QX4T8N"),
                    ("Berlin", "Kreuzberg", "CAFE-10-LM3R7D"),
                    ("Berlin", "Mitte", "CAFE-10-ZK9W2P"),
                    ("Kraków", "Kazimierz", "CAFE-10-HV6J5S"),
                    ("Kraków", "Kazimierz", "CAFE-10-TB1F8G"),
                ]
            ],
        },
        {
            "name": {
                "en": "Ethiopian Yirgacheffe beans 250 g",
                "de": "Äthiopien Yirgacheffe, ganze Bohne, 250 g",
                "pl": "Etiopia Yirgacheffe, kawa ziarnista 250 g",
                "pt": "Café Etiópia Yirgacheffe em grão, 250 g",
                "es": "Café Etiopía Yirgacheffe en grano, 250 g",
                "uk": "Кава Ефіопія Іргачеффе в зернах, 250 г",
                "ru": "Кофе Эфиопия Иргачеффе в зёрнах, 250 г",
            },
            "kind": "physical",
            "methods": ["crypto", "balance"],
            "price": "12.90",
            "photo": str(DEMO_IMAGES / "coffee-beans.jpg"),
            "description": {
                "en": "Washed Yirgacheffe, light roast: jasmine, lemon and honey. Whole beans, "
                "roasted this week. Collected from a parcel locker near you.",
                "de": "Gewaschener Yirgacheffe, helle Röstung: Jasmin, Zitrone und Honig. Ganze "
                "Bohnen, diese Woche geröstet. Abholung an einer Paketstation in der Nähe.",
                "pl": "Yirgacheffe obróbki mytej, jasno palona: jaśmin, cytryna i miód. Całe "
                "ziarna, palone w tym tygodniu. Odbiór z paczkomatu w pobliżu.",
                "pt": "Yirgacheffe lavado, torra clara: jasmim, limão e mel. Café em grão, "
                "torrado esta semana. Levantamento num cacifo perto de si.",
                "es": "Yirgacheffe lavado, tueste claro: jazmín, limón y miel. Café en grano, "
                "tostado esta semana. Recógelo en un locker cerca de ti.",
                "uk": "Іргачеффе митої обробки, світле обсмаження: жасмин, лимон і мед. Цілі "
                "зерна, обсмажені цього тижня. Отримання в поштоматі поблизу.",
                "ru": "Иргачеффе мытой обработки, светлая обжарка: жасмин, лимон и мёд. Цельные "
                "зёрна, обжарены на этой неделе. Получение в постамате рядом с вами.",
            },
            "stock": [
                {
                    "city": "Berlin",
                    "district": "Mitte",
                    "media": "locker-door-3.png",
                    "content": 'Parcel locker "Mitte 14", Invalidenstraße 112 '
                    "(next to the bakery).\n"
                    "Door 3 (highlighted in the photo), pickup code 4711-2093.\n"
                    "Please collect within 48 hours.",
                },
                {
                    "city": "Berlin",
                    "district": "Mitte",
                    "media": "locker-door-17.png",
                    "content": 'Parcel locker "Mitte 14", Invalidenstraße 112 '
                    "(next to the bakery).\n"
                    "Door 17 (highlighted in the photo), pickup code 4711-5528.\n"
                    "Please collect within 48 hours.",
                },
                {
                    "city": "Lisbon",
                    "district": "Alfama",
                    "media": "locker-door-3.png",
                    "content": 'Cacifo "Alfama 2", Rua dos Remédios 41 '
                    "(inside the pharmacy entrance).\n"
                    "Door 3, pickup code 2026-8814. Please collect within 48 hours.",
                },
            ],
        },
        {
            "name": {
                "en": "E-book: The Little Sourdough Handbook",
                "de": "E-Book: The Little Sourdough Handbook",
                "pl": "E-book: The Little Sourdough Handbook",
                "pt": "E-book: The Little Sourdough Handbook",
                "es": "Ebook: The Little Sourdough Handbook",
                "uk": "Електронна книга: The Little Sourdough Handbook",
                "ru": "Электронная книга: The Little Sourdough Handbook",
            },
            "kind": "digital",
            "price": "7.50",
            "photo": str(DEMO_IMAGES / "ebook-sourdough.jpg"),
            "description": {
                "en": "From starter to first loaf in a weekend. EPUB and PDF, 142 pages, no DRM.",
                "de": "Vom Anstellgut zum ersten Brot an einem Wochenende. EPUB und PDF, "
                "142 Seiten, ohne DRM, auf Englisch.",
                "pl": "Od zakwasu do pierwszego bochenka w jeden weekend. EPUB i PDF, 142 strony, "
                "bez DRM, po angielsku.",
                "pt": "Da massa-mãe ao primeiro pão num fim de semana. EPUB e PDF, 142 páginas, "
                "sem DRM, em inglês.",
                "es": "De la masa madre a tu primer pan en un fin de semana. EPUB y PDF, "
                "142 páginas, sin DRM, en inglés.",
                "uk": "Від закваски до першої хлібини за вихідні. EPUB і PDF, 142 сторінки, "
                "без DRM, англійською.",
                "ru": "От закваски до первой буханки за выходные. EPUB и PDF, 142 страницы, "
                "без DRM, на английском.",
            },
            "stock": [
                {
                    "city": c,
                    "district": d,
                    "content": f"Download your copy (EPUB + PDF): "
                    f"https://example.com/dl/sourdough/{key}\n"
                    "The link works for 30 days.",
                }
                for c, d, key in [
                    ("Berlin", "Mitte", "8f3a1c72"),
                    ("Berlin", "Kreuzberg", "b41e09d5"),
                    ("Lisbon", "Baixa", "2c7d6e18"),
                    ("Kraków", "Stare Miasto", "e95f3a40"),
                    ("Kraków", "Kazimierz", "71ab2c6f"),
                ]
            ],
        },
        {
            "name": {
                "en": "Poster: Lisbon Tram 28 (A2)",
                "de": "Poster: Lissabonner Tram 28 (A2)",
                "pl": "Plakat: Tramwaj 28 w Lizbonie (A2)",
                "pt": "Poster: Elétrico 28 de Lisboa (A2)",
                "es": "Póster: Tranvía 28 de Lisboa (A2)",
                "uk": "Постер: Лісабонський трамвай 28 (A2)",
                "ru": "Постер: Лиссабонский трамвай 28 (A2)",
            },
            "kind": "physical",
            "methods": ["crypto", "balance"],
            "price": "19.00",
            "photo": str(DEMO_IMAGES / "poster-tram.jpg"),
            "description": {
                "en": "Screen-printed A2 poster of the yellow tram 28 on heavy matte paper, "
                "rolled in a tube.",
                "de": "Siebdruck-Poster der gelben Tram 28 im Format A2 auf schwerem Mattpapier, "
                "gerollt in einer Versandhülse.",
                "pl": "Plakat A2 z żółtym tramwajem 28, sitodruk na grubym matowym papierze, "
                "zwinięty w tubie.",
                "pt": "Poster A2 serigrafado do elétrico amarelo 28 em papel mate grosso, "
                "enrolado num tubo.",
                "es": "Póster A2 serigrafiado del tranvía amarillo 28 en papel mate grueso, "
                "enrollado en un tubo.",
                "uk": "Постер A2 із жовтим трамваєм 28, шовкодрук на щільному матовому папері, "
                "скручений у тубус.",
                "ru": "Постер A2 с жёлтым трамваем 28, шелкография на плотной матовой бумаге, "
                "свёрнут в тубус.",
            },
            "stock": [
                {
                    "city": "Lisbon",
                    "district": "Baixa",
                    "media": "locker-door-17.png",
                    "content": 'Cacifo "Baixa 7", Rua Augusta 210 (arcade, left side).\n'
                    "Door 17, pickup code 2026-3391. Please collect within 48 hours.",
                },
                {
                    "city": "Lisbon",
                    "district": "Alfama",
                    "content": "Pickup at the Alfama kiosk, Largo das Portas do Sol, "
                    "10:00-18:00.\nSay order word TRAM-28-LUA.",
                },
            ],
        },
    ],
}


def demo_locker_png(door):
    """A small PNG of a wall of parcel lockers with `door` highlighted (the demo's pickup photo)."""
    import zlib  # (only here: the shop itself never compresses)

    width, height, cols, rows = 360, 240, 6, 4
    cell_w, cell_h = width // cols, height // rows
    pixels = bytearray()
    for y in range(height):
        pixels.append(0)  # PNG filter: none
        for x in range(width):
            col, row = x // cell_w, y // cell_h
            edge = x % cell_w in (0, 1, cell_w - 1) or y % cell_h in (0, 1, cell_h - 1)
            handle = (
                cell_w - 12 <= x % cell_w <= cell_w - 8
                and cell_h // 2 - 8 <= y % cell_h <= cell_h // 2 + 8
            )
            if edge:
                rgb = (60, 64, 72)
            elif row * cols + col + 1 == door:
                rgb = (40, 40, 40) if handle else (245, 180, 40)
            else:
                rgb = (40, 40, 40) if handle else (170, 178, 190)
            pixels += bytes(rgb)
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n"
    for kind, data in (
        (b"IHDR", header),
        (b"IDAT", zlib.compress(bytes(pixels), 9)),
        (b"IEND", b""),
    ):
        crc = zlib.crc32(kind + data)
        png += len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")
    return png


def demo_catalog(code):
    """DEMO_CATALOG for a shop whose default language is `code`: where the demo has no text in it,
    the English one stands in."""
    products = []
    for product in DEMO_CATALOG["products"]:
        product = dict(product)
        for key in PRODUCT_TEXTS:
            texts = product[key]
            if isinstance(texts, dict) and code not in texts:
                product[key] = {**texts, code: texts[SOURCE_LANGUAGE]}
        products.append(product)
    return {**DEMO_CATALOG, "products": products}


def load_demo(conn, media_dir):
    """Import the demo catalog (DEMO_CATALOG); returns the import counts."""
    with tempfile.TemporaryDirectory() as folder:
        for door in DEMO_LOCKER_DOORS:
            Path(folder, f"locker-door-{door}.png").write_bytes(demo_locker_png(door))
        return import_catalog(conn, demo_catalog(default_language(conn)), folder, media_dir)


# Services: basket ##############################################################

MAX_QUANTITY = 100


# 15 lines of the longest names still fit the basket and checkout in one
# Telegram message (4096) and its buttons under the 100-button limit.
MAX_BASKET_LINES = 15


@dataclass
class BasketLine:
    item_id: int
    product_id: int
    district_id: int
    name: str
    place: str
    price_cents: int
    quantity: int
    available: int
    reserved: int = (
        0  # units of it held for this shopper by their unpaid orders: never "sold out" to them
    )

    @property
    def total_cents(self):
        return self.price_cents * self.quantity


@dataclass
class Basket:
    lines: list = field(default_factory=list)

    @property
    def total_cents(self):
        return sum(line.total_cents for line in self.lines)

    @property
    def count(self):
        return sum(line.quantity for line in self.lines)


def get_basket(conn, user_id):
    rows = conn.execute(
        "SELECT b.id, b.product_id, b.district_id, b.quantity, p.price_cents, "
        "shopper_text(p.name, p.translations, 'name') AS name, "
        "d.name AS district_name, c.name AS city_name, "
        "(SELECT count(*) FROM stock_units u WHERE u.product_id = b.product_id "
        " AND u.district_id = b.district_id AND u.status = 'available' AND p.is_active = 1 "
        " AND d.is_hidden = 0 AND c.is_hidden = 0) AS available, "
        "(SELECT count(*) FROM stock_units u JOIN orders o ON o.id = u.order_id "
        "WHERE u.product_id = b.product_id "
        " AND u.status = 'reserved' AND u.district_id = b.district_id AND o.user_id = b.user_id) "
        "AS reserved "
        "FROM basket_items b JOIN products p ON p.id = b.product_id "
        "JOIN districts d ON d.id = b.district_id JOIN cities c ON c.id = d.city_id "
        "WHERE b.user_id = ? ORDER BY b.id",
        (user_id,),
    ).fetchall()
    return Basket(
        [
            BasketLine(
                r["id"],
                r["product_id"],
                r["district_id"],
                r["name"],
                place_name(r["city_name"], r["district_name"]),
                r["price_cents"],
                r["quantity"],
                r["available"],
                r["reserved"],
            )
            for r in rows
        ]
    )


def _check_quantity(quantity):
    if (
        not isinstance(quantity, int)
        or isinstance(quantity, bool)
        or not 1 <= quantity <= MAX_QUANTITY
    ):
        raise InvalidInput(
            tr("The quantity must be a whole number from 1 to {most}.", most=MAX_QUANTITY)
        )


def sold_out(offer, left):
    place = place_name(offer["city_name"], offer["district_name"])
    if not left:
        return SoldOut(
            tr("Sorry, {product} in {place} is sold out.", product=offer["name"], place=place)
        )
    return SoldOut(
        ntr(
            "Sorry, only {n} of {product} is available in {place}.",
            "Sorry, only {n} of {product} are available in {place}.",
            left,
            product=offer["name"],
            place=place,
        )
    )


def add_to_basket(conn, user_id, product_id, district_id, quantity=1):
    """Add units of a product in a district; returns the line's new quantity."""
    _check_quantity(quantity)
    with transaction(conn):
        offer = get_offer(conn, product_id, district_id)
        row = conn.execute(
            "SELECT id, quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
            "AND district_id = ?",
            (user_id, product_id, district_id),
        ).fetchone()
        new = (row["quantity"] if row else 0) + quantity
        if offer["available"] == 0:
            raise sold_out(offer, 0)
        if new > offer["available"]:
            raise sold_out(offer, offer["available"])
        _check_quantity(new)
        if row:
            conn.execute("UPDATE basket_items SET quantity = ? WHERE id = ?", (new, row["id"]))
        else:
            lines = conn.execute(
                "SELECT count(*) FROM basket_items WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            if lines >= MAX_BASKET_LINES:
                raise InvalidInput(
                    ntr(
                        "Your basket holds at most {n} different item.",
                        "Your basket holds at most {n} different items.",
                        MAX_BASKET_LINES,
                    )
                )
            conn.execute(
                "INSERT INTO basket_items(user_id, product_id, district_id, quantity, added_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, product_id, district_id, new, now_iso()),
            )
        return new


def set_basket_quantity(conn, user_id, item_id, quantity):
    """Set a basket line's quantity; 0 removes it. Increases are checked against stock."""
    if quantity != 0:
        _check_quantity(quantity)
    with transaction(conn):
        row = conn.execute(
            "SELECT * FROM basket_items WHERE id = ? AND user_id = ?", (item_id, user_id)
        ).fetchone()
        if row is None:
            raise NotFound(tr("That item is no longer in your basket."))
        if quantity == 0:
            conn.execute("DELETE FROM basket_items WHERE id = ?", (item_id,))
            return 0
        if quantity > row["quantity"]:
            offer = get_offer(conn, row["product_id"], row["district_id"])
            if quantity > offer["available"]:
                raise sold_out(offer, offer["available"])
        conn.execute("UPDATE basket_items SET quantity = ? WHERE id = ?", (quantity, item_id))
        return quantity


def change_basket_quantity(conn, user_id, item_id, delta):
    """Add delta (+1/-1) to a basket line inside one transaction; returns the new quantity
    (0: removed)."""
    with transaction(conn):
        row = conn.execute(
            "SELECT quantity FROM basket_items WHERE id = ? AND user_id = ?", (item_id, user_id)
        ).fetchone()
        if row is None:
            raise NotFound(tr("That item is no longer in your basket."))
        return set_basket_quantity(
            conn, user_id, item_id, max(0, min(MAX_QUANTITY, row["quantity"] + delta))
        )


def clear_basket(conn, user_id):
    with transaction(conn):
        conn.execute("DELETE FROM basket_items WHERE user_id = ?", (user_id,))


def find_basket_line(conn, user_id, product_id, district_id):
    """The user's basket line (id, quantity) for a product from a district, or None."""
    return conn.execute(
        "SELECT id, quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
        "AND district_id = ?",
        (user_id, product_id, district_id),
    ).fetchone()


def price_lines(conn, lines):
    """[(product_id, district_id, quantity)] -> (total_cents, [offer rows]) at today's prices."""
    offers = []
    for product_id, district_id, quantity in lines:
        _check_quantity(quantity)
        offers.append(get_offer(conn, product_id, district_id))
    return sum(o["price_cents"] * q for o, (_, _, q) in zip(offers, lines, strict=False)), offers


def normalise_lines(lines):
    """Merge repeated (product, district) lines and check each quantity."""
    merged = {}
    for product_id, district_id, quantity in lines:
        _check_quantity(quantity)
        merged[(product_id, district_id)] = merged.get((product_id, district_id), 0) + quantity
    if not merged:
        raise InvalidInput(tr("Your basket is empty."))
    for quantity in merged.values():
        _check_quantity(quantity)
    return [(p, d, q) for (p, d), q in merged.items()]


def list_basket_lines(conn, user_id):
    """The shopper's basket as order lines [(product_id, district_id, quantity)]."""
    return [
        (line.product_id, line.district_id, line.quantity)
        for line in get_basket(conn, user_id).lines
    ]


# Services: discount codes ######################################################

# A code is case-insensitive letters, digits, - and _.
PROMO_CODE = re.compile(r"[A-Za-z0-9_-]{3,32}")

# The order statuses that hold a use of their code: paid (counted), pending (reserved while its
# invoice is open). Expired, cancelled and refunded orders give theirs back.
PROMO_HOLDING = ("paid", "pending")


def find_promo_code(conn, code):
    """The discount code as typed (any case), or None."""
    code = str(code or "").strip()
    if not PROMO_CODE.fullmatch(code):
        return None
    return conn.execute("SELECT * FROM promo_codes WHERE code = ?", (code,)).fetchone()


def _utc_when(moment):
    return tr("{when} UTC", when=current_language().when(moment))


def promo_by_id(conn, promo_id):
    """A discount code's row by its id, or None."""
    return conn.execute("SELECT * FROM promo_codes WHERE id = ?", (promo_id,)).fetchone()


def basket_promo(conn, user_id):
    """The code on the shopper's basket (its row), or None."""
    return conn.execute(
        "SELECT p.* FROM users u JOIN promo_codes p ON p.id = u.promo_id WHERE u.id = ?",
        (user_id,),
    ).fetchone()


def promo_used_up(conn, promo, user_id):
    """Whether a code has no use left: "all" (its uses in all), "mine" (the shopper's), else
    None."""
    if promo["max_uses"] is not None and promo_uses(conn, promo["id"]) >= promo["max_uses"]:
        return "all"
    most = promo["max_uses_per_user"]
    if most is not None and promo_uses(conn, promo["id"], user_id) >= most:
        return "mine"
    return None


def promo_uses(conn, promo_id, user_id=None):
    """Uses of a code (by one shopper): its paid orders and the pending ones that reserve a use."""
    if user_id is None:
        return conn.execute(
            "SELECT count(*) FROM orders WHERE promo_id = ? AND status IN (?, ?)",
            (promo_id, *PROMO_HOLDING),
        ).fetchone()[0]
    return conn.execute(
        "SELECT count(*) FROM orders WHERE promo_id = ? AND status IN (?, ?) AND user_id = ?",
        (promo_id, *PROMO_HOLDING, user_id),
    ).fetchone()[0]


def promo_scope(promo):
    """(product ids, city ids) a code is limited to; None: no limit of that kind."""
    return tuple(
        set(json.loads(promo[column])) if promo[column] else None
        for column in ("product_ids", "city_ids")
    )


def promo_covers(promo, offer):
    """Whether a code takes something off this offer (a get_offer row)."""
    products, cities = promo_scope(promo)
    return (products is None or offer["id"] in products) and (
        cities is None or offer["city_id"] in cities
    )


def check_promo_code(conn, promo, user_id):
    """PromoRefused, saying why, when the code cannot be used now by this shopper (whatever the
    basket)."""
    code, now = promo["code"], now_iso()
    if not promo["is_active"]:
        raise PromoRefused(tr("The code {code} is paused right now.", code=code))
    if promo["starts_at"] and now < promo["starts_at"]:
        raise PromoRefused(
            tr(
                "The code {code} can be used from {when}.",
                code=code,
                when=_utc_when(promo["starts_at"]),
            )
        )
    if promo["ends_at"] and now >= promo["ends_at"]:
        raise PromoRefused(
            tr("The code {code} expired on {when}.", code=code, when=_utc_when(promo["ends_at"]))
        )
    used_up = promo_used_up(conn, promo, user_id)
    if used_up == "all":
        raise PromoRefused(tr("The code {code} has been used up.", code=code))
    if used_up == "mine":
        raise PromoRefused(
            ntr(
                "You have used the code {code} already; it can be used once per shopper.",
                "You have used the code {code} {n} times already, as often as it can be used "
                "per shopper.",
                promo["max_uses_per_user"],
                code=code,
            )
        )


def promo_discount(conn, promo, user_id, lines, offers):
    """What a code takes off these lines (normalised, with their get_offer rows): (cents, each
    line's unit discounts [[cents per unit]]), or PromoRefused saying why.

    The one rounding rule: a percentage is taken of the list prices of the items the code covers
    and rounded down to the cent (the shopper never gets more than the code says); a fixed amount
    is at most what those items cost. Either way the order keeps at least 1 cent to pay. The
    discount is then split over the covered units in proportion to their prices, largest remainder
    first (ties: the earlier unit), so the units' shares add up to the discount exactly."""
    check_promo_code(conn, promo, user_id)
    subtotal = sum(o["price_cents"] * q for o, (_, _, q) in zip(offers, lines, strict=True))
    covered = [promo_covers(promo, offer) for offer in offers]
    base = sum(
        o["price_cents"] * q for o, c, (_, _, q) in zip(offers, covered, lines, strict=True) if c
    )
    if not base:
        raise PromoRefused(
            tr("The code {code} is not valid for anything in your basket.", code=promo["code"])
        )
    if subtotal < promo["min_total_cents"]:
        raise PromoRefused(
            tr(
                "The code {code} needs a basket of at least {minimum}; yours comes to {total}.",
                code=promo["code"],
                minimum=fmt_eur(promo["min_total_cents"]),
                total=fmt_eur(subtotal),
            )
        )
    if promo["kind"] == "percent":
        cents = base * promo["value"] // 100
    else:
        cents = promo["value"]
    cents = max(0, min(cents, base, subtotal - 1))
    prices = [
        o["price_cents"] if c else 0
        for o, c, (_, _, q) in zip(offers, covered, lines, strict=True)
        for _ in range(q)
    ]
    shares = iter(split_discount(cents, prices))
    return cents, [[next(shares) for _ in range(q)] for _, _, q in lines]


def split_discount(cents, prices):
    """cents split over units of these prices in proportion to them (largest remainder, ties to
    the earlier unit); a unit priced 0 gets nothing."""
    total = sum(prices)
    if not total or not cents:
        return [0] * len(prices)
    shares = [cents * price // total for price in prices]
    left = cents - sum(shares)
    by_remainder = sorted(range(len(prices)), key=lambda i: (-(cents * prices[i] % total), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


@dataclass
class Quote:
    """What lines cost a shopper: list price, what their code takes off (or why it does not) and
    what they pay."""

    lines: list
    offers: list
    subtotal_cents: int
    discount_cents: int = 0
    promo: object = None  # the code that applies (a promo_codes row), else None
    refused: str = ""  # why the shopper's code does not apply to these lines
    code: str = ""  # the shopper's code, applying or not

    @property
    def total_cents(self):
        return self.subtotal_cents - self.discount_cents

    @property
    def promo_id(self):
        return self.promo["id"] if self.promo is not None else None

    def without_code(self):
        """The same lines at list price."""
        return Quote(self.lines, self.offers, self.subtotal_cents)


def quote_lines(conn, user_id, lines, promo_id=None):
    """Quote [(product_id, district_id, quantity)] for a shopper, with the code on their basket
    (or the one promo_id names)."""
    lines = normalise_lines(lines)
    subtotal, offers = price_lines(conn, lines)
    quote = Quote(lines, offers, subtotal)
    row = promo_by_id(conn, promo_id) if promo_id is not None else basket_promo(conn, user_id)
    if row is None:
        return quote
    quote.code = row["code"]
    try:
        quote.discount_cents = promo_discount(conn, row, user_id, lines, offers)[0]
        quote.promo = row
    except PromoRefused as e:
        quote.refused = str(e)
    return quote


def apply_promo_code(conn, user_id, code, lines=None):
    """The shopper types a code: it goes on their basket when it takes something off `lines` (the
    basket's when None; with an empty basket, when the code can be used at all). Returns the
    code's row; PromoRefused says why not, and changes nothing."""
    with transaction(conn):
        promo = find_promo_code(conn, code)
        if promo is None:
            raise PromoRefused(
                tr("There is no promo code {code}.", code=shorten(str(code or "").strip(), 40))
            )
        if lines is None:
            lines = list_basket_lines(conn, user_id)
        if lines:
            lines = normalise_lines(lines)
            promo_discount(conn, promo, user_id, lines, price_lines(conn, lines)[1])
        else:
            check_promo_code(conn, promo, user_id)
        conn.execute("UPDATE users SET promo_id = ? WHERE id = ?", (promo["id"], user_id))
        return promo


def remove_promo_code(conn, user_id):
    """Take the code off the shopper's basket."""
    with transaction(conn):
        conn.execute("UPDATE users SET promo_id = NULL WHERE id = ?", (user_id,))


def promo_codes_offered(conn):
    """Whether the shop has a discount code a shopper could use now (else checkout does not ask
    for one)."""
    now = now_iso()
    return (
        conn.execute(
            "SELECT 1 FROM promo_codes WHERE is_active = 1 AND (starts_at IS NULL OR starts_at "
            "<= ?) AND (ends_at IS NULL OR ends_at > ?) LIMIT 1",
            (now, now),
        ).fetchone()
        is not None
    )


def lapsed_order_promo_refusal(conn, order):
    """An order whose time ran out is to be paid after all (a Stars invoice still open): why its
    discount code cannot count it again (used up meanwhile), else None."""
    if order["promo_id"] is None:
        return None
    promo = promo_by_id(conn, order["promo_id"])
    if promo_used_up(conn, promo, order["user_id"]):
        return tr(
            "Sorry, the code {code} of order #{order} was used up after its time to pay ran out. "
            "Nothing was charged; please check out again.",
            code=promo["code"],
            order=order["id"],
        )
    return None


def promo_back_in_order(conn, order):
    """A lapsed order is paid after all: its code, which went back on the basket when it lapsed,
    is the order's again."""
    if order["promo_id"] is not None:
        conn.execute(
            "UPDATE users SET promo_id = NULL WHERE id = ? AND promo_id = ?",
            (order["user_id"], order["promo_id"]),
        )


def stars_after_discount(stars, paid, off):
    """The Stars to pay when a code took `off` cents off and `paid` are paid: the list Stars times
    what is paid over the list price, rounded up to a whole Star (Telegram takes whole Stars
    only)."""
    if not off:
        return stars
    return max(1, -(-stars * paid // (paid + off)))


# Services: orders ##############################################################


def check_methods(conn, offers, method):
    """InvalidInput, naming the product, when one of them may not be paid this way."""
    rule = telegram_rule(conn)
    for offer in offers:
        if method not in product_methods(offer, rule):
            if rule and offer["kind"] == "digital":
                raise InvalidInput(
                    tr(
                        "{product} cannot be paid with {way} (digital goods are paid in Telegram "
                        "Stars, by Telegram's rule). Please choose another way to pay.",
                        product=offer["name"],
                        way=tr(METHOD_LABELS[method]),
                    )
                )
            raise InvalidInput(
                tr(
                    "{product} cannot be paid with {way}. Please choose another way to pay.",
                    product=offer["name"],
                    way=tr(METHOD_LABELS[method]),
                )
            )


def checkout_methods(conn, offers):
    """The ways every one of these offers may be paid, in PAY_METHODS order."""
    rule = telegram_rule(conn)
    common = set(PAY_METHODS)
    for offer in offers:
        common &= set(product_methods(offer, rule))
    return tuple(m for m in PAY_METHODS if m in common)


def split_by_methods(conn, lines, offers):
    """A basket whose products share no way to pay, in parts that each do: [(methods, lines)],
    the parts in the order their first line appears."""
    rule = telegram_rule(conn)
    parts = {}
    for line, offer in zip(lines, offers, strict=True):
        parts.setdefault(product_methods(offer, rule), []).append(line)
    return list(parts.items())


def stars_total(conn, offers, lines):
    """What the lines cost in Telegram Stars (each product's Stars price times its quantity)."""
    rate = stars_per_euro(conn)
    return sum(stars_of(o, rate) * q for o, (_, _, q) in zip(offers, lines, strict=True))


def open_order(
    conn,
    user_id,
    lines,
    *,
    method,
    expected_total_cents=None,
    checkout_key=None,
    reserve_minutes=None,
    promo_id=None,
    owners=(),
):
    """Inside a transaction: check the lines, create an order and take its units.

    method 'balance' sells the units at once (order 'paid'); 'crypto' and 'stars' reserve
    them for reserve_minutes (order 'pending'). Every product must allow the method
    (product_methods). promo_id: the discount code the checkout was priced with, checked again
    here (PromoRefused), so that its uses are decided one order at a time. A place left low is
    told to the owners (note_low_stock). Returns (order_id, total_cents paid).
    """
    user = get_user(conn, user_id)
    if user["is_banned"]:
        raise Banned()
    lines = normalise_lines(lines)
    total, offers = price_lines(conn, lines)
    discount, shares = 0, [[0] * q for _, _, q in lines]
    if promo_id is not None:
        promo = promo_by_id(conn, promo_id)
        if promo is None:
            raise PromoRefused()
        discount, shares = promo_discount(conn, promo, user_id, lines, offers)
        total -= discount
    if expected_total_cents is not None and total != expected_total_cents:
        raise PriceChanged()
    check_methods(conn, offers, method)
    for offer, (_, _, quantity) in zip(offers, lines, strict=False):
        if offer["available"] < quantity:
            raise sold_out(offer, offer["available"])
    if method == "balance" and user["balance_cents"] < total:
        raise InsufficientBalance(total - user["balance_cents"])
    now = now_iso()
    paid = method == "balance"
    order_id = conn.execute(
        "INSERT INTO orders(user_id, status, total_cents, payment_method, checkout_key, "
        "created_at, paid_at, promo_id, discount_cents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            "paid" if paid else "pending",
            total,
            method,
            checkout_key,
            now,
            now if paid else None,
            promo_id if discount else None,
            discount,
        ),
    ).lastrowid
    if discount:  # the code is in the order now (it comes back with the lines if that lapses)
        conn.execute(
            "UPDATE users SET promo_id = NULL WHERE id = ? AND promo_id = ?", (user_id, promo_id)
        )
    until = None if paid else now_iso(reserve_minutes * 60)
    _take_units(conn, order_id, offers, lines, shares, until)
    for _, (product_id, district_id, _) in zip(offers, lines, strict=True):
        note_low_stock(conn, product_id, district_id, owners)
    return order_id, total


def _take_units(conn, order_id, offers, lines, shares, until):
    """An order's units: sold (until None) or reserved until then, each an order item with its
    share of the discount."""
    now, paid = now_iso(), until is None
    for offer, (product_id, district_id, quantity), off in zip(offers, lines, shares, strict=True):
        units = conn.execute(
            "SELECT id FROM stock_units WHERE product_id = ? AND district_id = ? "
            "AND status = 'available' ORDER BY id LIMIT ?",
            (product_id, district_id, quantity),
        ).fetchall()
        if len(units) < quantity:  # (cannot happen after the check above; guards the invariant)
            raise sold_out(offer, len(units))
        for unit, unit_off in zip(units, off, strict=True):
            conn.execute(
                "UPDATE stock_units SET status = ?, order_id = ?, reserved_until = ?, sold_at = ? "
                "WHERE id = ? AND status = 'available'",
                (
                    "sold" if paid else "reserved",
                    order_id,
                    until,
                    now if paid else None,
                    unit["id"],
                ),
            )
            conn.execute(
                "INSERT INTO order_items(order_id, unit_id, product_id, product_name, place_name, "
                "price_cents, discount_cents) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    order_id,
                    unit["id"],
                    product_id,
                    offer["source_name"],  # as the owner named it (the shopper may read another)
                    place_name(offer["city_name"], offer["district_name"]),
                    offer["price_cents"],
                    unit_off,
                ),
            )


def remove_bought_from_basket(conn, order_id):
    """What an order bought leaves its buyer's basket."""
    conn.execute(
        "DELETE FROM basket_items WHERE (user_id, product_id, district_id) IN "
        "(SELECT o.user_id, i.product_id, s.district_id FROM orders o "
        " JOIN order_items i ON i.order_id = o.id JOIN stock_units s ON s.id = i.unit_id "
        " WHERE o.id = ?)",
        (order_id,),
    )


def order_from_basket(conn, order_id):
    """Whether the order was made from its buyer's basket (rather than ⚡ Buy now)."""
    row = conn.execute(
        "SELECT c.from_basket FROM orders o JOIN checkouts c ON c.nonce = o.checkout_key "
        "AND c.user_id = o.user_id WHERE o.id = ?",
        (order_id,),
    ).fetchone()
    return bool(row and row[0])


def _order_quantities(conn, order_id):
    """[(user_id, product_id, district_id, quantity)] of an order."""
    return conn.execute(
        "SELECT o.user_id, i.product_id, s.district_id, count(*) FROM orders o "
        "JOIN order_items i ON i.order_id = o.id JOIN stock_units s ON s.id = i.unit_id "
        "WHERE o.id = ? GROUP BY i.product_id, s.district_id ORDER BY min(i.id)",
        (order_id,),
    ).fetchall()


def take_from_basket(conn, order_id):
    """An invoice was opened for the basket: its lines move into the order (so they cannot be
    checked out twice), leaving whatever the basket holds beyond them."""
    for user_id, product_id, district_id, quantity in _order_quantities(conn, order_id):
        conn.execute(
            "DELETE FROM basket_items WHERE user_id = ? AND product_id = ? AND district_id = ? "
            "AND quantity <= ?",
            (user_id, product_id, district_id, quantity),
        )
        conn.execute(
            "UPDATE basket_items SET quantity = quantity - ? WHERE user_id = ? AND product_id = ? "
            "AND district_id = ?",
            (quantity, user_id, product_id, district_id),
        )


def return_to_basket(conn, order_id):
    """A basket order's invoice was cancelled or ran out: its lines go back into the basket, as far
    as they are still on sale (call after its units were released). Returns how many lines came
    back."""
    if not order_from_basket(conn, order_id):
        return 0
    restored = 0
    for user_id, product_id, district_id, quantity in _order_quantities(conn, order_id):
        try:
            available = get_offer(conn, product_id, district_id)["available"]
        except NotFound:
            continue
        row = conn.execute(
            "SELECT id, quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
            "AND district_id = ?",
            (user_id, product_id, district_id),
        ).fetchone()
        have = row["quantity"] if row else 0
        new = min(have + quantity, available, MAX_QUANTITY)
        if new <= have:
            continue
        if row:
            conn.execute("UPDATE basket_items SET quantity = ? WHERE id = ?", (new, row["id"]))
        elif (
            conn.execute(
                "SELECT count(*) FROM basket_items WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
            < MAX_BASKET_LINES
        ):
            conn.execute(
                "INSERT INTO basket_items(user_id, product_id, district_id, quantity, added_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (user_id, product_id, district_id, new, now_iso()),
            )
        else:
            continue
        restored += 1
    return restored


def describe_user(user):
    return (
        esc(user["first_name"])
        + (f" @{esc(user['username'])}" if user["username"] else "")
        + f" (<code>{user['id']}</code>)"
    )


def buy_with_balance(
    conn,
    user_id,
    lines=None,
    *,
    expected_total_cents=None,
    checkout_key=None,
    owners=(),
    promo_id=None,
):
    """Buy [(product_id, district_id, quantity)], or the whole basket (lines=None), with the
    balance.

    One transaction debits the ledger, marks the units sold, records the order,
    queues the delivery and the owners' note, and takes what was bought out of
    the basket. A checkout_key already used returns that order instead of buying
    again. Raises SoldOut, InsufficientBalance or PriceChanged and then changes nothing.
    """
    with transaction(conn):
        if checkout_key:
            done = conn.execute(
                "SELECT id, payment_method FROM orders WHERE checkout_key = ? AND user_id = ?",
                (checkout_key, user_id),
            ).fetchone()
            if done and done["payment_method"] != "balance":
                raise InvalidInput(
                    tr(
                        "This checkout already has {invoice}. Pay or cancel that one, or check "
                        "out again.",
                        invoice=invoice_words(done),
                    )
                )
            if done:
                return done["id"]
        if lines is None:
            lines = [
                (line.product_id, line.district_id, line.quantity)
                for line in get_basket(conn, user_id).lines
            ]
        order_id, total = open_order(
            conn,
            user_id,
            lines,
            method="balance",
            expected_total_cents=expected_total_cents,
            checkout_key=checkout_key,
            promo_id=promo_id,
            owners=owners,
        )
        remove_bought_from_basket(conn, order_id)
        post_ledger(
            conn,
            user_id,
            -total,
            "purchase",
            f"order:{order_id}:balance",
            reason=f"Order #{order_id}",
            order_id=order_id,
        )
        enqueue_delivery(conn, order_id, first=True)
        count = conn.execute(
            "SELECT count(*) FROM order_items WHERE order_id = ?", (order_id,)
        ).fetchone()[0]
        alert_owners(
            conn,
            owners,
            f"🛒 Order #{order_id} paid from balance: {owner_eur(total)}, "
            f"{count} item{'s' if count != 1 else ''}, by {describe_user(get_user(conn, user_id))}",
        )
        credit_referrer(conn, order_id, owners)
        log.info(
            "order #%d paid from balance by user %d: %s, %d unit(s)",
            order_id,
            user_id,
            owner_eur(total),
            count,
        )
        return order_id


def format_content(content):
    """A unit's content for HTML: a lone code in <code> (tap to copy), anything else as text."""
    if (
        "\n" not in content
        and " " not in content
        and len(content) <= 200
        and not re.match(r"(?i)https?://", content)
    ):
        return f"<code>{esc(content)}</code>"
    return esc(content)


CAPTION_LIMIT = 1024


TEXT_LIMIT = 4096


def _delivery_header(conn, order, n, first):
    """The receipt's first lines (in the language of the moment)."""
    order_id = order["id"]
    items = ntr("{n} item", "{n} items", n)
    if first and order["payment_method"] == "stars":
        stars = conn.execute(
            "SELECT pay_amount FROM payments WHERE order_id = ? AND charge_id IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (order_id,),
        ).fetchone()
        return tr(
            "✅ <b>Order #{order} is paid</b>: {items}, {amount} in Telegram Stars.\n\nYour items:",
            order=order_id,
            items=items,
            amount=fmt_stars(stars[0]) if stars else fmt_eur(order["total_cents"]),
        )
    if first:
        values = {
            "order": order_id,
            "items": items,
            "amount": fmt_eur(order["total_cents"]),
            "balance": fmt_eur(order["balance_cents"]),
        }
        if order["payment_method"] == "balance":
            return tr(
                "✅ <b>Order #{order} is paid</b>: {items}, {amount} from your balance.\n"
                "Balance now: {balance}.\n\nYour items:",
                **values,
            )
        return tr(
            "✅ <b>Order #{order} is paid</b>: {items}, {amount} in crypto.\n"
            "Balance now: {balance}.\n\nYour items:",
            **values,
        )
    return tr("📨 <b>Order #{order}</b>: your items again.", order=order_id)


def enqueue_delivery(conn, order_id, *, first=False):
    """Queue the messages that hand over an order's goods, in the buyer's language: a header,
    then each unit's content.

    Text-only units share messages up to Telegram's length limit; a unit with a
    photo gets its own photo message (with the content as caption when it fits).
    """
    order = conn.execute(
        "SELECT o.*, u.balance_cents FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = ?",
        (order_id,),
    ).fetchone()
    with speaking(language_of(conn, order["user_id"])):
        items = conn.execute(
            f"SELECT {_ITEM_NAME} AS product_name, "
            "i.place_name, s.content, s.media FROM order_items i "
            "JOIN stock_units s ON s.id = i.unit_id WHERE i.order_id = ? ORDER BY i.id",
            (order_id,),
        ).fetchall()
        header = _delivery_header(conn, order, len(items), first)
        discount = order_discount(conn, order_id) if first else None
        if discount:  # under the header's first line (what was paid)
            first_line, _, rest = header.partition("\n")
            header = "\n".join(filter(None, [first_line, discount_line(discount), rest]))
        titles = [
            tr(
                "📦 Order #{order} ({i}/{n}): <b>{product}</b> · {place}",
                order=order_id,
                i=i,
                n=len(items),
                product=esc(item["product_name"]),
                place=esc(item["place_name"]),
            )
            for i, item in enumerate(items, 1)
        ]
    _queue_receipt(conn, order, items, header, titles)


def _queue_receipt(conn, order, items, header, titles):
    """The receipt's messages: the header and the goods in as few messages as fit."""
    chat, order_id = order["user_id"], order["id"]
    # One receipt: the header and the goods in one message as far as they fit (a photo's caption
    # holds less, so a long one comes after its photo).
    block = header
    for item, title in zip(items, titles, strict=True):
        part = f"{title}\n{format_content(item['content'])}"
        with_block = f"{block}\n\n{part}" if block else part
        if item["media"] and tg_len(html_to_plain(with_block)) <= CAPTION_LIMIT:
            enqueue_message(
                conn, chat, with_block, photo=f"private:{item['media']}", order_id=order_id
            )
            block = ""
            continue
        if item["media"]:
            if block:
                enqueue_message(conn, chat, block, order_id=order_id)
                block = ""
            if tg_len(html_to_plain(part)) <= CAPTION_LIMIT:
                enqueue_message(
                    conn, chat, part, photo=f"private:{item['media']}", order_id=order_id
                )
            else:
                enqueue_message(
                    conn, chat, title, photo=f"private:{item['media']}", order_id=order_id
                )
                enqueue_message(conn, chat, part, order_id=order_id)
            continue
        joined = f"{block}\n\n{part}" if block else part
        if tg_len(html_to_plain(joined)) > TEXT_LIMIT:
            enqueue_message(conn, chat, block, order_id=order_id)
            joined = part
        block = joined
    if block:
        enqueue_message(conn, chat, block, order_id=order_id)


def resend_delivery(conn, user_id, order_id):
    """Queue an order's goods again for its buyer. Returns False if they are still on their way."""
    with transaction(conn):
        order = get_order(conn, user_id, order_id)
        if order["status"] != "paid":
            raise InvalidInput(
                tr("Order #{order} was not paid; it has nothing to deliver.", order=order_id)
            )
        if conn.execute(
            "SELECT 1 FROM outbox WHERE order_id = ? AND status = 'pending'", (order_id,)
        ).fetchone():
            return False
        enqueue_delivery(conn, order_id)
        return True


def get_order(conn, user_id, order_id):
    """One of the user's orders (someone else's is NotFound)."""
    row = conn.execute(
        "SELECT * FROM orders WHERE id = ? AND user_id = ?", (order_id, user_id)
    ).fetchone()
    if row is None:
        raise NotFound(tr("No such order."))
    return row


def order_discount(conn, order_id):
    """(code, cents) a discount code took off an order, or None."""
    if order_id is None:
        return None
    row = conn.execute(
        "SELECT p.code, o.discount_cents FROM orders o JOIN promo_codes p ON p.id = o.promo_id "
        "WHERE o.id = ? AND o.discount_cents > 0",
        (order_id,),
    ).fetchone()
    return (row[0], row[1]) if row else None


def discount_line(discount):
    """'🏷 Code SPRING10: −€2.50' in the language of the moment (discount: (code, cents))."""
    # TRANSLATORS: the discount line of a checkout, invoice or receipt: "🏷 Code SPRING10: −€2.50".
    return tr(
        "🏷 Code {code}: −{amount}",
        code=f"<code>{esc(discount[0])}</code>",
        amount=fmt_eur(discount[1]),
    )


def get_order_lines(conn, order_id):
    """An order's items grouped by product and place:
    [{product_name, place_name, quantity, price_cents}]."""
    return conn.execute(
        f"SELECT {_ITEM_NAME} AS product_name, "
        "place_name, count(*) AS quantity, price_cents FROM order_items i "
        "WHERE order_id = ? GROUP BY product_id, place_name, price_cents ORDER BY min(id)",
        (order_id,),
    ).fetchall()


def list_orders(conn, user_id, *, before_id=None, limit=10):
    """The user's orders, newest first, keyset-paginated by id."""
    return conn.execute(
        "SELECT o.*, (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items "
        "FROM orders o WHERE o.user_id = ? AND o.id < ? ORDER BY o.id DESC LIMIT ?",
        (user_id, before_id or 2**62, limit),
    ).fetchall()


def release_order_units(conn, order_id):
    """Put an unpaid order's reserved units back on sale, and a basket order's lines back in the
    basket; returns (units freed, basket lines back)."""
    freed = conn.execute(
        "UPDATE stock_units SET status = 'available', order_id = NULL, reserved_until = NULL "
        "WHERE order_id = ? AND status = 'reserved'",
        (order_id,),
    ).rowcount
    if not freed:
        return 0, 0
    # Its discount code goes back on the basket too, unless the shopper put another there since.
    conn.execute(
        "UPDATE users SET promo_id = o.promo_id FROM orders o WHERE o.id = ? "
        "AND users.id = o.user_id AND users.promo_id IS NULL AND o.promo_id IS NOT NULL",
        (order_id,),
    )
    return freed, return_to_basket(conn, order_id)


def went_back(lines_back):
    """'The items went back on sale' for a shopper, and into their basket when it got lines
    back (in the language of the moment)."""
    if lines_back:
        return tr("The items went back on sale and back into your basket.")
    return tr("The items went back on sale.")


def release_expired_reservations(conn):
    """Put units of lapsed reservations back on sale, expire their orders and tell each buyer
    once."""
    with transaction(conn):
        # An order whose payment is already on the chain keeps its items until the payment settles.
        orders = conn.execute(
            "SELECT DISTINCT o.id, o.user_id, o.payment_method FROM stock_units s "
            "JOIN orders o ON o.id = s.order_id "
            "WHERE s.status = 'reserved' AND s.reserved_until < ? "
            "AND NOT EXISTS (SELECT 1 FROM payments p "
            "WHERE p.order_id = o.id AND p.status IN ('confirming', 'confirmed', 'sending'))",
            (now_iso(),),
        ).fetchall()
        freed = 0
        for order in orders:
            units, lines_back = release_order_units(conn, order["id"])
            freed += units
            if conn.execute(
                "UPDATE orders SET status = 'expired' WHERE id = ? AND status = 'pending'",
                (order["id"],),
            ).rowcount:
                tell(
                    conn,
                    order["user_id"],
                    N_(
                        "⌛ <b>Order #{order}</b>: the time to pay ran out. {back} You can still "
                        "pay its invoice while the items are there."
                    )
                    if order["payment_method"] == "stars"
                    else N_(
                        "⌛ <b>Order #{order}</b>: the time to pay ran out. {back} If you already "
                        "sent the payment, it is not lost: you get the items if they are still "
                        "there, or the amount on your balance."
                    ),
                    {"order": order["id"], "back": Phrase(went_back, lines_back)},
                    order_id=order["id"],
                )
    if freed:
        log.info("released %d reserved unit(s) of %d unpaid order(s)", freed, len(orders))
    return freed


def get_basket_line_quantity(conn, user_id, product_id, district_id):
    """How many of a product in a place the shopper has in their basket (None: not there)."""
    row = conn.execute(
        "SELECT quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
        "AND district_id = ?",
        (user_id, product_id, district_id),
    ).fetchone()
    return row["quantity"] if row is not None else None


def count_user_paid_orders(conn, user_id):
    return conn.execute(
        "SELECT count(*) FROM orders WHERE user_id = ? AND status = 'paid'", (user_id,)
    ).fetchone()[0]


def get_telegram_file_id(conn, photo, bot_id):
    """Telegram's file_id of a photo ref this bot uploaded before, or None."""
    row = conn.execute(
        "SELECT file_id FROM telegram_files WHERE photo = ? AND bot_id = ?", (photo, bot_id)
    ).fetchone()
    return row["file_id"] if row is not None else None


def save_telegram_file_id(conn, photo, bot_id, file_id):
    """Remember the file_id Telegram gave a photo ref this bot uploaded."""
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO telegram_files(photo, bot_id, file_id) VALUES (?, ?, ?)",
            (photo, bot_id, file_id),
        )


def credit_referrer(conn, order_id, owners=()):
    """The order was just paid (call in that transaction): if it is its buyer's first paid order
    and someone brought them (record_referral), that referrer gets referral_percent of what the
    buyer paid (total_cents, in euros for a Stars order too: the shop's reward to someone else, not
    the payer's Stars turned into balance), once per referred shopper ever, and is told. Nothing
    when referrals are off, the share rounds down to nothing, or the referrer is banned; a later
    refund of the order leaves the credit. Returns the cents credited."""
    order = conn.execute(
        "SELECT o.user_id, o.total_cents, u.referrer_id FROM orders o "
        "JOIN users u ON u.id = o.user_id WHERE o.id = ?",
        (order_id,),
    ).fetchone()
    if order is None or order["referrer_id"] is None:
        return 0
    buyer_id, referrer_id = order["user_id"], order["referrer_id"]
    cents = order["total_cents"] * referral_percent(conn) // 100
    if (
        cents <= 0
        or get_user(conn, referrer_id)["is_banned"]
        or conn.execute(
            "SELECT 1 FROM orders WHERE user_id = ? AND id != ? AND paid_at IS NOT NULL LIMIT 1",
            (buyer_id, order_id),
        ).fetchone()
    ):
        return 0
    reason = f"Referral: the first order (#{order_id}) of user {buyer_id}"
    key = f"referral:{buyer_id}"
    if not post_ledger(conn, referrer_id, cents, "referral", key, reason=reason, order_id=order_id):
        return 0
    tell(
        conn,
        referrer_id,
        N_(
            "🎁 A friend you invited paid their first order: {amount} was added to your balance. "
            "Balance: {balance}."
        ),
        {"amount": Money(cents), "balance": Money(get_user(conn, referrer_id)["balance_cents"])},
    )
    alert_owners(
        conn,
        owners,
        f"🎁 Referral: {owner_eur(cents)} credited to "
        f"{describe_user(get_user(conn, referrer_id))} for the first order #{order_id} of "
        f"{describe_user(get_user(conn, buyer_id))}",
    )
    log.info("referral: user %d credited %s for order #%d", referrer_id, owner_eur(cents), order_id)
    return cents


# Services: payments ############################################################

# Provider statuses in the order a payment moves through them. Money states
# (finished, partially_paid, refunded) are final. expired and failed are final
# too, except that money arriving later still counts: a payment never loses
# money by having expired first.
STATUS_RANK = {
    "waiting": 0,
    "confirming": 1,
    "confirmed": 2,
    "sending": 3,
    "partially_paid": 4,
    "finished": 4,
    "refunded": 4,
    "failed": 4,
    "expired": 4,
}


OPEN_STATUSES = ("waiting", "confirming", "confirmed", "sending")


MONEY_STATUSES = ("finished", "partially_paid", "refunded")


@dataclass(frozen=True)
class PaymentNews:
    """What a payment provider says about one of its payments, in the shop's terms: the status in
    the shop's words (STATUS_RANK; a provider maps its own onto them) and amounts as exact decimal
    strings in the payment's currency. Fields the provider did not send are None; a number it sent
    that is not one is kept in `unreadable` ({field: what is wrong}), for the checks to report."""

    provider: str  # payments.provider: the provider's name in PAYMENT_PROVIDERS
    provider_id: str  # the provider's own id for the payment
    status: str
    by: str = "The payment provider"  # who says so, in messages to the owners
    paid: str = None  # what actually arrived
    currency: str = None  # what it is paid in (a coin's code)
    amount: str = None  # what the invoice asks for, in that currency
    price: str = None  # the price the provider was given, in price_currency
    price_currency: str = None
    reference: str = None  # the reference the shop gave the invoice (order-12, topup-...)
    address: str = None  # where the money is sent
    parent_id: str = None  # a repeated deposit: the provider id of the payment it follows
    # The id of the money movement, where one invoice could be paid twice (Telegram Stars:
    # telegram_payment_charge_id); kept with the payment, and a second one is given back.
    charge_id: str = None
    unreadable: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewInvoice:
    """An invoice a provider has just created, as the shop stores it."""

    provider: str
    provider_id: str
    currency: str
    amount: str  # exact decimal string
    address: str = ""
    extra_id: str = None  # a memo or tag some coins need besides the address
    expires_at: str = None  # when the provider closes it (our notation), if it says


def can_move(old, new):
    if old in MONEY_STATUSES:
        return False
    if old in ("failed", "expired"):
        return new in MONEY_STATUSES
    return STATUS_RANK[new] > STATUS_RANK[old]


def crypto_amount(value, what="amount"):
    """A provider's crypto amount (number token or string) as a Decimal; InvalidInput if it is not
    one."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{what} is not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(f"{what} is not a valid amount: {value!r}")
    if amount and not -30 <= amount.adjusted() <= 15:  # no coin amount is near 1e16 or 1e-31
        raise InvalidInput(f"{what} is out of range: {value!r}")
    return amount


def value_of(price_cents, paid, asked):
    """EUR cents that `paid` of a coin is worth when `asked` of it was the price: exact floor, never
    float."""
    paid, asked = crypto_amount(paid, "actually_paid"), crypto_amount(asked, "pay_amount")
    if asked <= 0:
        return 0
    return math.floor(Fraction(price_cents) * Fraction(paid) / Fraction(asked))


def create_checkout(conn, user_id, kind, amount_cents, lines=(), from_basket=False, promo_id=None):
    """Remember a checkout screen (what it sells and for how much, and the discount code that
    amount was worked out with); returns its nonce."""
    nonce = secrets.token_hex(8)
    with transaction(conn):
        conn.execute("DELETE FROM checkouts WHERE created_at < ?", (now_iso(-7 * 86400),))
        conn.execute(
            "INSERT INTO checkouts(nonce, user_id, kind, lines, from_basket, amount_cents, "
            "created_at, promo_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                nonce,
                user_id,
                kind,
                json.dumps([list(line) for line in lines]),
                int(from_basket),
                amount_cents,
                now_iso(),
                promo_id,
            ),
        )
    return nonce


def checkout_order(conn, user_id, lines, from_basket):
    """A checkout of these lines at what the shopper pays (their code taken off where it
    applies); returns its nonce."""
    quote = quote_lines(conn, user_id, lines)
    return create_checkout(
        conn, user_id, "order", quote.total_cents, lines, from_basket, quote.promo_id
    )


def get_checkout(conn, user_id, nonce):
    row = conn.execute(
        "SELECT * FROM checkouts WHERE nonce = ? AND user_id = ?", (nonce, user_id)
    ).fetchone()
    if row is None:
        raise NotFound(tr("This checkout is too old. Please open your basket again."))
    return row


def checkout_lines(checkout):
    return [tuple(line) for line in json.loads(checkout["lines"])]


# An invoice being made (the provider has not answered yet) counts against the limits for this
# long at most, so that one lost in a crash stops counting.
CLAIM_SECONDS = 120


def check_invoice_limits(
    conn, user_id, max_open, max_per_hour, max_unpaid_units=None, units=0, claim=None
):
    """Inside the transaction that opens an invoice (BEGIN IMMEDIATE: one decision at a time,
    however the bot's and the Mini App's requests interleave), refuse it if the shopper would then
    have more than max_open unpaid invoices, more than max_per_hour invoices in the last hour, or
    more than max_unpaid_units items held by unpaid invoices. Invoices still being made count too:
    a pending order (its units reserved before the provider is asked) and a claimed top-up
    (checkouts.invoicing_since). `units`: what the new invoice would hold; `claim`: the top-up
    checkout being decided (not counted)."""
    with transaction(conn):  # (a savepoint within the caller's transaction)
        _check_invoice_limits(conn, user_id, max_open, max_per_hour, max_unpaid_units, units, claim)


def _check_invoice_limits(conn, user_id, max_open, max_per_hour, max_unpaid_units, units, claim):
    now = now_iso()
    # Orders waiting for money (or for their invoice): their units are held until the reservation
    # ends.
    orders = conn.execute(
        "SELECT o.id, (SELECT count(*) FROM stock_units s WHERE s.order_id = o.id "
        "AND s.status = 'reserved') "
        "AS units, EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id "
        "AND p.parent_id IS NULL) AS invoiced "
        "FROM orders o WHERE o.user_id = ? AND o.status = 'pending' "
        "AND EXISTS (SELECT 1 FROM stock_units s WHERE s.order_id = o.id AND s.status = 'reserved' "
        "            AND s.reserved_until > ?) "
        "AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id "
        "                AND p.status IN ('confirming', 'confirmed', 'sending'))",
        (user_id, now),
    ).fetchall()
    topups = conn.execute(
        "SELECT count(*) FROM payments WHERE user_id = ? AND kind = 'topup' AND parent_id IS NULL "
        "AND status = 'waiting' AND expires_at > ?",
        (user_id, now),
    ).fetchone()[0]
    claims = conn.execute(
        "SELECT count(*) FROM checkouts WHERE user_id = ? AND invoicing_since > ? "
        "AND nonce IS NOT ?",
        (user_id, now_iso(-CLAIM_SECONDS), claim),
    ).fetchone()[0]
    open_ = len(orders) + topups + claims
    if open_ >= max_open:
        raise LimitReached(
            ntr(
                "You have {n} unpaid invoice. Pay or cancel it first.",
                "You have {n} unpaid invoices. Pay or cancel one of them first.",
                open_,
            )
        )
    being_made = sum(1 for o in orders if not o["invoiced"]) + claims
    recent = (
        conn.execute(
            "SELECT count(*) FROM payments WHERE user_id = ? AND parent_id IS NULL "
            "AND created_at > ?",
            (user_id, now_iso(-3600)),
        ).fetchone()[0]
        + being_made
    )
    if recent >= max_per_hour:
        raise LimitReached(
            ntr(
                "You created {n} invoice in the last hour. Please wait a little before creating "
                "another.",
                "You created {n} invoices in the last hour. Please wait a little before creating "
                "another.",
                recent,
            )
        )
    held = sum(o["units"] for o in orders)
    if max_unpaid_units is not None and units and held + units > max_unpaid_units:
        raise LimitReached(
            ntr(
                "Unpaid invoices can hold at most {n} item at once, and this one would hold "
                "{units}. Pay or cancel an invoice first, or buy fewer.",
                "Unpaid invoices can hold at most {n} items at once, and this one would hold "
                "{units}. Pay or cancel an invoice first, or buy fewer.",
                max_unpaid_units,
                units=units,
            )
            + (
                " " + ntr("Yours hold {n} already.", "Yours hold {n} already.", held)
                if held
                else ""
            )
        )


def reserve_for_checkout(conn, user_id, nonce, minutes, limits=None, method="crypto", owners=()):
    """Reserve a checkout's units in a pending order paid by `method` (crypto or stars); returns
    (order_id, total, created). owners: who hears of a place left low (note_low_stock).

    limits: check_invoice_limits' keywords, decided in the same transaction as the reservation. A
    basket checkout moves its lines out of the basket into the order (a cancelled or expired invoice
    puts them back)."""
    with transaction(conn):
        done = conn.execute(
            "SELECT id, total_cents, payment_method FROM orders WHERE checkout_key = ? "
            "AND user_id = ?",
            (nonce, user_id),
        ).fetchone()
        if done and done["payment_method"] == "balance":
            raise InvalidInput(tr("This checkout was already paid from your balance."))
        if done and done["payment_method"] != method:
            raise InvalidInput(
                tr(
                    "This checkout already has {invoice}. Pay or cancel that one, or check "
                    "out again.",
                    invoice=invoice_words(done),
                )
            )
        if done:
            return done["id"], done["total_cents"], False
        checkout = get_checkout(conn, user_id, nonce)
        lines = checkout_lines(checkout)
        if limits:
            check_invoice_limits(
                conn, user_id, **limits, units=sum(q for _, _, q in normalise_lines(lines))
            )
        order_id, total = open_order(
            conn,
            user_id,
            lines,
            method=method,
            expected_total_cents=checkout["amount_cents"],
            checkout_key=nonce,
            reserve_minutes=minutes,
            promo_id=checkout["promo_id"],
            owners=owners,
        )
        if checkout["from_basket"]:
            take_from_basket(conn, order_id)
        return order_id, total, True


def claim_topup_invoice(conn, user_id, nonce, limits):
    """A top-up invoice is about to be made: decide the limits and mark its checkout as being
    invoiced, in one transaction, so that top-ups requested at once are counted one after
    another."""
    with transaction(conn):
        checkout = get_checkout(conn, user_id, nonce)
        if checkout["kind"] != "topup":
            raise NotFound(tr("This top-up is too old. Please start again with 💰 Top up."))
        check_invoice_limits(conn, user_id, **limits, claim=nonce)
        conn.execute("UPDATE checkouts SET invoicing_since = ? WHERE nonce = ?", (now_iso(), nonce))


def release_topup_claim(conn, nonce):
    with transaction(conn):
        conn.execute("UPDATE checkouts SET invoicing_since = NULL WHERE nonce = ?", (nonce,))


def drop_reservation(conn, order_id):
    """The invoice could not be created: release the units, put the lines back in the basket and
    free the checkout for another try."""
    with transaction(conn):
        places = _order_quantities(conn, order_id)
        release_order_units(conn, order_id)
        conn.execute(
            "UPDATE orders SET status = 'cancelled', checkout_key = NULL WHERE id = ? "
            "AND status = 'pending'",
            (order_id,),
        )
        for _, product_id, district_id, _ in places:  # its low-stock note was never true
            rearm_low_stock(conn, product_id, district_id)


def record_payment(
    conn, *, kind, user_id, reference, price_cents, invoice, expires_at, order_id=None, claim=None
):
    """Store the payment a provider just created (a NewInvoice), ending the top-up checkout's claim;
    returns its row."""
    now = now_iso()
    with transaction(conn):
        conn.execute(
            "INSERT INTO payments(provider, provider_id, kind, user_id, order_id, reference, "
            "price_cents, pay_currency, pay_amount, pay_address, payin_extra_id, status, "
            "expires_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?)",
            (
                invoice.provider,
                invoice.provider_id,
                kind,
                user_id,
                order_id,
                reference,
                price_cents,
                invoice.currency,
                invoice.amount,
                invoice.address,
                invoice.extra_id,
                expires_at,
                now,
                now,
            ),
        )
        if claim:
            conn.execute("UPDATE checkouts SET invoicing_since = NULL WHERE nonce = ?", (claim,))
        return conn.execute(
            "SELECT * FROM payments WHERE provider = ? AND provider_id = ?",
            (invoice.provider, invoice.provider_id),
        ).fetchone()


def find_checkout_payment(conn, user_id, nonce):
    """The invoice already made for an order checkout, if any."""
    return conn.execute(
        "SELECT p.* FROM payments p JOIN orders o ON o.id = p.order_id "
        "WHERE o.checkout_key = ? AND p.user_id = ? AND p.parent_id IS NULL",
        (nonce, user_id),
    ).fetchone()


def find_topup_payment(conn, user_id, reference):
    """The invoice already made for a top-up checkout, if any."""
    return conn.execute(
        "SELECT * FROM payments WHERE reference = ? AND user_id = ? AND parent_id IS NULL",
        (reference, user_id),
    ).fetchone()


def reservation_end(conn, order_id):
    """When the order's reserved units go back on sale (None if it holds none)."""
    return conn.execute(
        "SELECT min(reserved_until) FROM stock_units WHERE order_id = ?", (order_id,)
    ).fetchone()[0]


def find_payment(conn, payment_id):
    """Any payment by our id (for the owner)."""
    row = conn.execute("SELECT * FROM payments WHERE id = ?", (payment_id,)).fetchone()
    if row is None:
        raise NotFound("No such payment.")
    return row


def payment_is_known(conn, provider, provider_id, parent=None):
    """Whether a provider's payment (or the parent of a new one) is one of this shop's."""
    return any(
        conn.execute(
            "SELECT 1 FROM payments WHERE provider = ? AND provider_id = ?", (provider, pid)
        ).fetchone()
        for pid in (provider_id, parent)
        if pid
    )


def payments_to_reconcile(conn, providers):
    """Payments younger than a week, of the given providers, that may still move."""
    return conn.execute(
        "SELECT provider, provider_id, created_at, status FROM payments WHERE status IN "
        "('waiting', 'confirming', 'confirmed', 'sending', 'expired', 'failed') "
        "AND created_at > ? AND provider IN (SELECT value FROM json_each(?)) ORDER BY id",
        (now_iso(-7 * 86400), json.dumps(providers)),
    ).fetchall()


def flag_stuck_payments(conn, owners):
    """Payments still under way an hour after their invoice ran out: the owners are told once.
    Returns them."""
    stuck = conn.execute(
        "SELECT * FROM payments WHERE status IN ('confirming', 'confirmed', 'sending') "
        "AND stuck_alerted = 0 AND expires_at < ?",
        (now_iso(-3600),),
    ).fetchall()
    for p in stuck:
        with transaction(conn):
            conn.execute("UPDATE payments SET stuck_alerted = 1 WHERE id = ?", (p["id"],))
            alert_owners(
                conn,
                owners,
                f"⚠️ Payment {p['provider_id']} "
                f"({'order #%s' % p['order_id'] if p['order_id'] else 'top-up'}) "
                f"is still '{p['status']}' an hour after its invoice ran out.",
            )
    return stuck


def audit_payment_marked_paid(conn, payment, reason, outcome, remote):
    with transaction(conn):
        audit(
            conn,
            "payment marked as paid",
            f"payment {payment['provider_id']}: {reason} ({outcome})",
            remote,
        )


def store_webhook(conn, provider, ids, body, signature, verdict, remote, *, keep, refused=False):
    """Keep a webhook as it arrived, with what the shop made of it. ids: (provider id, status).
    Refused ones cost their senders nothing, so only the latest `keep` of them are kept."""
    with transaction(conn):
        row = conn.execute(
            "INSERT INTO ipn_events(provider, received_at, provider_id, status, body, signature, "
            "verdict, remote_addr, refused) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                provider,
                now_iso(),
                *ids,
                body.decode("utf-8", "replace"),
                (signature or "")[:256] or None,
                verdict[:500],
                remote,
                int(refused),
            ),
        ).lastrowid
        if refused and row % 100 == 0:
            conn.execute(
                "DELETE FROM ipn_events WHERE refused = 1 AND id <= (SELECT id FROM ipn_events "
                "WHERE refused = 1 ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (keep,),
            )


def save_sandbox_payment(conn, payment_id, data):
    """The sandbox emulator's new payment (its JSON as the API returns it)."""
    with transaction(conn):
        conn.execute("INSERT INTO sandbox_payments(id, data) VALUES (?, ?)", (payment_id, data))


def load_sandbox_payment(conn, payment_id):
    """The emulator's payment JSON, or None (also for an id that is not a number)."""
    if not re.fullmatch(r"[0-9]{1,18}", str(payment_id)):
        return None
    row = conn.execute(
        "SELECT data FROM sandbox_payments WHERE id = ?", (int(payment_id),)
    ).fetchone()
    return row["data"] if row else None


# What the sandbox can make of a payment (the bot's and Mini App's 🧪 buttons, tests):
# outcome: (what it does, share of the amount paid, final status).
SANDBOX_OUTCOMES = {
    "full": ("pay in full", Decimal(1), "finished"),
    "partial": ("pay half", Decimal("0.5"), "partially_paid"),
    "over": ("pay 1.5 times", Decimal("1.5"), "finished"),
    "expire": ("let it expire", Decimal(0), "expired"),
}


def settle_sandbox_payment(conn, payment_id, outcome):
    """The emulator's waiting payment paid (in full, half, 1.5x) or expired. Returns its JSON data
    and the statuses its IPNs announce."""
    with transaction(conn):
        text = load_sandbox_payment(conn, payment_id)
        if text is None:
            raise NotFound("No such sandbox payment.")
        data = parse_json(text)
        if data["payment_status"] != "waiting":
            raise InvalidInput(f"This sandbox payment is already {data['payment_status']}.")
        _, factor, final = SANDBOX_OUTCOMES[outcome]
        step = Decimal(1).scaleb(-int(data["network_precision"]))
        paid = (Decimal(data["pay_amount"]) * factor).quantize(step, rounding="ROUND_FLOOR")
        data["payment_status"] = final
        data["actually_paid"] = Num(str(paid.normalize()) if paid else "0")
        data["updated_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        conn.execute(
            "UPDATE sandbox_payments SET data = ? WHERE id = ?",
            (encode_json(data), int(payment_id)),
        )
    return data, (["confirming", final] if outcome != "expire" else [final])


def set_invoice_message(conn, payment_id, message_id):
    with transaction(conn):
        conn.execute(
            "UPDATE payments SET invoice_message_id = ? WHERE id = ?", (message_id, payment_id)
        )


def get_payment(conn, user_id, payment_id):
    """One of the user's payments by our id (someone else's is NotFound)."""
    row = conn.execute(
        "SELECT * FROM payments WHERE id = ? AND user_id = ?", (payment_id, user_id)
    ).fetchone()
    if row is None:
        raise NotFound(tr("No such payment."))
    return row


def invoice_is_open(payment):
    """Waiting for money and not yet past its time (or cancelled, which ends its time at once)."""
    return payment["status"] == "waiting" and payment["expires_at"] > now_iso()


def cancel_invoice(conn, user_id, payment_id):
    """The shopper gives up on an invoice: an unpaid order releases its units. Money sent later
    still counts. Returns False, changing nothing, when the invoice was closed already."""
    with transaction(conn):
        payment = get_payment(conn, user_id, payment_id)
        if payment["status"] != "waiting":
            raise InvalidInput(tr("This payment is already under way and cannot be cancelled."))
        if not invoice_is_open(payment):
            return False
        if payment["order_id"]:
            release_order_units(conn, payment["order_id"])
            conn.execute(
                "UPDATE orders SET status = 'cancelled' WHERE id = ? AND status = 'pending'",
                (payment["order_id"],),
            )
        conn.execute(
            "UPDATE payments SET expires_at = ?, updated_at = ? WHERE id = ?",
            (now_iso(), now_iso(), payment_id),
        )
        enqueue_invoice_refresh(conn, get_payment(conn, user_id, payment_id))
        return True


def check_payment_matches(payment, news):
    """Raise PaymentMismatch when the provider's news contradicts the payment we created.

    A field the provider left out contradicts nothing; one that differs stops everything.
    """
    problems = []
    if news.currency is not None and news.currency.lower() != payment["pay_currency"]:
        problems.append(f"pay_currency {news.currency!r} is not {payment['pay_currency']!r}")
    if payment["parent_id"] is None:
        if news.reference is not None and news.reference != payment["reference"]:
            problems.append(f"order_id {news.reference!r} is not {payment['reference']!r}")
        price = cents_to_str(payment["price_cents"])
        if "price_amount" in news.unreadable:
            problems.append(news.unreadable["price_amount"])
        elif news.price is not None and crypto_amount(news.price) != Decimal(price):
            problems.append(f"price_amount {crypto_amount(news.price)} is not {price}")
        if news.price_currency is not None and news.price_currency.lower() != "eur":
            problems.append(f"price_currency {news.price_currency!r} is not 'eur'")
        if "pay_amount" in news.unreadable:
            problems.append(news.unreadable["pay_amount"])
        elif news.amount is not None and crypto_amount(news.amount) != crypto_amount(
            payment["pay_amount"]
        ):
            problems.append(f"pay_amount {news.amount} is not {payment['pay_amount']}")
    if problems:
        raise PaymentMismatch("; ".join(problems))


def payment_status_text(payment):
    """What a payment's status says to the shopper: a payment short within the owner's tolerance
    paid its order, so it reads as paid."""
    if payment["status"] == "partially_paid" and (payment["outcome"] or "").startswith("delivered"):
        return STATUS_TEXT["finished"]
    return STATUS_TEXT[payment["status"]]


# A payment's state as its shopper reads it (translated where shown: tr(payment_status_text(p))).
STATUS_TEXT = {
    "waiting": N_("⏳ Waiting for your payment"),
    "confirming": N_("🔎 Payment seen, waiting for confirmations"),
    "confirmed": N_("🔎 Payment confirmed, finishing"),
    "sending": N_("🔎 Payment confirmed, finishing"),
    "finished": N_("✅ Paid"),
    "partially_paid": N_("⚠️ Partly paid"),
    "failed": N_("❌ Payment failed"),
    "refunded": N_("↩️ Refunded"),
    "expired": N_("⌛ Expired"),
}


def apply_payment_status(conn, news, *, source, owners=()):
    """Apply what a provider says about a payment (PaymentNews), in one transaction; the one path
    for every provider and every source (webhook, poll, check, the owner).

    Idempotent and forward-only: a status seen before, or lower than the current one, changes
    nothing. Returns a short description of what happened.
    """
    if news.status not in STATUS_RANK:
        raise InvalidInput(f"unknown payment_status {news.status!r}")
    with transaction(conn):
        payment = conn.execute(
            "SELECT * FROM payments WHERE provider = ? AND provider_id = ?",
            (news.provider, news.provider_id),
        ).fetchone()
        if payment is None:
            payment = _child_payment(conn, news)
        check_payment_matches(payment, news)
        old, status = payment["status"], news.status
        if news.charge_id and payment["charge_id"] not in (None, news.charge_id):
            return _second_charge(conn, payment, news, owners)
        if status == "refunded" and old in ("finished", "partially_paid"):
            return _refund_reported(conn, payment, news, owners)
        if status == old or not can_move(old, status):
            return f"unchanged ({old})"
        if "actually_paid" in news.unreadable:
            raise InvalidInput(news.unreadable["actually_paid"])
        payment = _move_payment(conn, payment, news, source)
        if status not in OPEN_STATUSES:
            drop_open_payment_notes(conn, payment["id"])
        if payment["parent_id"]:
            outcome = _settle_child(conn, payment, owners)
        elif payment["kind"] == "topup":
            outcome = _settle_topup(conn, payment, owners)
        else:
            outcome = _settle_order(conn, payment, owners)
        if outcome:
            conn.execute("UPDATE payments SET outcome = ? WHERE id = ?", (outcome, payment["id"]))
        enqueue_invoice_refresh(conn, payment)
        log.info(
            "payment %s (%s #%s) %s -> %s via %s%s",
            news.provider_id,
            payment["kind"],
            payment["order_id"] or payment["id"],
            old,
            status,
            source,
            f": {outcome}" if outcome else "",
        )
        return f"{old} -> {status}" + (f": {outcome}" if outcome else "")


def _refund_reported(conn, payment, news, owners):
    """A provider refunded a payment the shop had already settled: the owners decide."""
    old = payment["status"]
    if "refunded by the provider" in (payment["outcome"] or ""):
        return f"unchanged ({old})"
    conn.execute(
        "UPDATE payments SET outcome = coalesce(outcome, '') || ' (refunded by the provider)' "
        "WHERE id = ?",
        (payment["id"],),
    )
    alert_owners(
        conn,
        owners,
        f"⚠️ {news.by} reports payment {news.provider_id} as refunded after it was "
        f"{old}. The shop already {esc(payment['outcome'] or 'settled it')}; "
        "check whether the shopper keeps goods or credit twice.",
    )
    return f"unchanged ({old}); refund reported to the owners"


def _move_payment(conn, payment, news, source):
    """The payment's new status (and what arrived), with when and how it became final."""
    now = now_iso()
    final = news.status not in OPEN_STATUSES
    conn.execute(
        "UPDATE payments SET status = ?, actually_paid = coalesce(?, actually_paid), "
        "updated_at = ?, final_at = CASE WHEN ? THEN ? ELSE final_at END, "
        "final_source = CASE WHEN ? THEN ? ELSE final_source END, "
        "charge_id = coalesce(charge_id, ?) WHERE id = ?",
        (news.status, news.paid, now, final, now, final, source, news.charge_id, payment["id"]),
    )
    return conn.execute("SELECT * FROM payments WHERE id = ?", (payment["id"],)).fetchone()


def _child_payment(conn, news):
    """A repeated deposit to a known payment's address arrives as a new payment naming its
    parent."""
    if "parent_payment_id" in news.unreadable:
        raise InvalidInput(news.unreadable["parent_payment_id"])
    parent = None
    if news.parent_id is not None:
        parent = conn.execute(
            "SELECT * FROM payments WHERE provider = ? AND provider_id = ?",
            (news.provider, news.parent_id),
        ).fetchone()
    if parent is None:
        raise UnknownPayment(f"payment {news.provider_id} is not one of this shop's")
    if news.address is not None and news.address != parent["pay_address"]:
        raise PaymentMismatch(
            f"payment {news.provider_id} names parent {parent['provider_id']} but was paid "
            "to another address"
        )
    now = now_iso()
    conn.execute(
        "INSERT INTO payments(provider, provider_id, kind, user_id, order_id, parent_id, "
        "reference, price_cents, pay_currency, pay_amount, pay_address, status, expires_at, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?, ?)",
        (
            news.provider,
            news.provider_id,
            parent["kind"],
            parent["user_id"],
            parent["order_id"],
            parent["id"],
            parent["reference"],
            parent["price_cents"],
            parent["pay_currency"],
            parent["pay_amount"],
            parent["pay_address"],
            now_iso(86400),
            now,
            now,
        ),
    )
    return conn.execute(
        "SELECT * FROM payments WHERE provider = ? AND provider_id = ?",
        (news.provider, news.provider_id),
    ).fetchone()


def _credit(conn, payment, cents, kind, key_suffix, reason):
    """Credit the payment's shopper; returns the cents credited (0 if nothing or already done)."""
    if cents <= 0:
        return 0
    if (
        cents > MAX_EUR_CENTS
    ):  # worth more than the shop ever takes at once: for the owner to check, not to book
        raise InvalidInput(
            f"payment {payment['provider_id']} would credit {owner_eur(cents)}; refused: check it "
            f"with its provider ({payment['provider']})"
        )
    done = post_ledger(
        conn,
        payment["user_id"],
        cents,
        kind,
        f"payment:{payment['provider_id']}:{key_suffix}",
        reason=reason,
        order_id=payment["order_id"],
    )
    if done:
        conn.execute(
            "UPDATE payments SET credited_cents = credited_cents + ? WHERE id = ?",
            (cents, payment["id"]),
        )
    return cents if done else 0


def _paid_in(payment):
    """How a payment was made, for the owners: "BTC", "Telegram Stars (1,250 ⭐)"."""
    if payment["pay_currency"] == "xtr":
        return f"Telegram Stars ({owner_stars(payment['pay_amount'])})"
    return esc(payment["pay_currency"].upper())


def _balance(conn, user_id):
    return Money(get_user(conn, user_id)["balance_cents"])


def _paid_text(payment):
    return (
        f"{esc(fmt_coin(payment['actually_paid'] or '0'))} {esc(payment['pay_currency'].upper())}"
    )


def _notify_seen(conn, payment):
    if not payment["seen_notified"]:
        conn.execute("UPDATE payments SET seen_notified = 1 WHERE id = ?", (payment["id"],))
        tell(
            conn,
            payment["user_id"],
            N_(
                "🔎 Your payment for order #{order} is on its way: seen on the blockchain, "
                "waiting for confirmations. Nothing to do but wait."
            )
            if payment["order_id"]
            else N_(
                "🔎 Your payment for the {amount} top-up is on its way: seen on the blockchain, "
                "waiting for confirmations. Nothing to do but wait."
            ),
            {"order": payment["order_id"], "amount": Money(payment["price_cents"])},
            order_id=payment["order_id"],
            payment_id=payment["id"],
        )


def _settle_child(conn, payment, owners):
    if payment["status"] not in ("finished", "partially_paid"):
        return None
    cents = _credit(
        conn,
        payment,
        value_of(payment["price_cents"], payment["actually_paid"] or 0, payment["pay_amount"]),
        "repeat_deposit",
        "credit",
        "Another payment to an invoice's address",
    )
    if cents:
        tell(
            conn,
            payment["user_id"],
            N_(
                "💰 Another payment of {paid} arrived at the address of an earlier invoice. "
                "{amount} was added to your balance. Balance: {balance}."
            ),
            {
                "paid": _paid_text(payment),
                "amount": Money(cents),
                "balance": _balance(conn, payment["user_id"]),
            },
        )
        parent = conn.execute(
            "SELECT provider_id FROM payments WHERE id = ?", (payment["parent_id"],)
        ).fetchone()
        alert_owners(
            conn,
            owners,
            f"💰 Repeat deposit of {_paid_text(payment)} to the address of payment "
            f"{parent['provider_id']}"
            f"{' (order #%s)' % payment['order_id'] if payment['order_id'] else ''}: "
            f"{owner_eur(cents)} credited to <code>{payment['user_id']}</code>",
        )
    return f"credited {cents_to_str(cents)}"


def _settle_topup(conn, payment, owners):
    status, user_id = payment["status"], payment["user_id"]
    if status in OPEN_STATUSES:
        _notify_seen(conn, payment)
        return None
    if status in ("finished", "partially_paid"):
        value = value_of(
            payment["price_cents"], payment["actually_paid"] or 0, payment["pay_amount"]
        )
        cents = max(value, payment["price_cents"]) if status == "finished" else value
        cents = _credit(
            conn, payment, cents, "topup", "credit", f"Top-up, {payment['pay_currency'].upper()}"
        )
        tell(
            conn,
            user_id,
            N_("✅ Top-up received: {amount} added. Balance: {balance}.")
            if status == "finished"
            else N_(
                "⚠️ Your top-up was paid only in part: {paid} of {due} arrived, worth {amount}, "
                "which was added. Balance: {balance}."
            ),
            {
                "amount": Money(cents),
                "balance": _balance(conn, user_id),
                "paid": _paid_text(payment),
                "due": f"{esc(fmt_coin(payment['pay_amount']))} "
                f"{esc(payment['pay_currency'].upper())}",
            },
        )
        alert_owners(
            conn,
            owners,
            f"💰 Top-up {owner_eur(cents)} ({_paid_text(payment)}) by "
            f"{describe_user(get_user(conn, user_id))}",
        )
        return f"credited {cents_to_str(cents)}"
    if status in ("expired", "failed"):
        tell(
            conn,
            user_id,
            N_("⌛ The invoice for your {amount} top-up expired; nothing was charged.")
            if status == "expired"
            else N_("⌛ The invoice for your {amount} top-up failed; nothing was charged."),
            {"amount": Money(payment["price_cents"])},
        )
    return None


def _settle_order(conn, payment, owners):
    status, order_id, user_id = payment["status"], payment["order_id"], payment["user_id"]
    order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
    if status in OPEN_STATUSES:
        _notify_seen(conn, payment)
        return None
    if status == "finished":
        return _order_paid(conn, payment, order, owners)
    if status == "partially_paid" and order["status"] == "pending":
        short = _short_percent(payment)
        if short <= underpayment_tolerance(conn):
            note = f"{short:f}% short, within the tolerance"
            return _order_paid(conn, payment, order, owners, note=note) + f", {note}"
    if status == "partially_paid":
        if order["status"] == "pending":
            release_order_units(conn, order_id)
            conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))
        cents = _credit(
            conn,
            payment,
            value_of(payment["price_cents"], payment["actually_paid"] or 0, payment["pay_amount"]),
            "underpayment",
            "credit",
            f"Order #{order_id} paid in part",
        )
        tell(
            conn,
            user_id,
            N_(
                "⚠️ <b>Order #{order}</b>: only {paid} of {due} arrived, {missing} short. The "
                "order is cancelled and the value received, {amount}, was added to your "
                "balance. Balance: {balance}."
            ),
            {
                "order": order_id,
                "paid": _paid_text(payment),
                "due": f"{esc(fmt_coin(payment['pay_amount']))} "
                f"{esc(payment['pay_currency'].upper())}",
                "missing": _missing_text(payment),
                "amount": Money(cents),
                "balance": _balance(conn, user_id),
            },
            order_id=order_id,
        )
        alert_owners(
            conn,
            owners,
            f"⚠️ Order #{order_id} underpaid ({_paid_text(payment)}): cancelled, "
            f"{owner_eur(cents)} credited",
        )
        return f"cancelled, credited {cents_to_str(cents)}"
    if order["status"] == "pending":  # expired, failed or refunded before any money counted
        _, lines_back = release_order_units(conn, order_id)
        conn.execute(
            "UPDATE orders SET status = ? WHERE id = ?",
            ("expired" if status == "expired" else "cancelled", order_id),
        )
        tell(
            conn,
            user_id,
            {
                "expired": N_(
                    "⌛ <b>Order #{order}</b>: the invoice expired without a payment, and nothing "
                    "was charged. {back}"
                ),
                "failed": N_(
                    "⌛ <b>Order #{order}</b>: the payment failed, and nothing was charged. {back}"
                ),
                "refunded": N_(
                    "⌛ <b>Order #{order}</b>: the payment was refunded by the payment service, "
                    "and nothing was charged. {back}"
                ),
            }[status],
            {"order": order_id, "back": Phrase(went_back, lines_back)},
            order_id=order_id,
        )
    return None


def _credit_late_payment(conn, payment, order_id):
    """A payment after the order's items were gone: its full price goes to the balance."""
    user_id = payment["user_id"]
    cents = _credit(
        conn,
        payment,
        payment["price_cents"],
        "late_payment",
        "credit",
        f"Order #{order_id} paid after its items were gone",
    )
    tell(
        conn,
        user_id,
        N_(
            "⚠️ Your payment for <b>order #{order}</b> arrived after the time to pay had run out, "
            "and the items are gone. The full price, {amount}, was added to your balance. "
            "Balance: {balance}."
        ),
        {"order": order_id, "amount": Money(cents), "balance": _balance(conn, user_id)},
        order_id=order_id,
    )
    return f"late, credited {cents_to_str(cents)}"


def _order_paid(conn, payment, order, owners, note=None):
    """A finished payment: deliver (late or not) if the goods can be had, else credit the full
    price. `note`: what the owners should know besides (a payment short within the tolerance)."""
    order_id, user_id = order["id"], payment["user_id"]
    late = order["status"] != "pending"
    if not late:
        outcome = "delivered"
    elif _retake_units(conn, order_id, owners):
        outcome = "delivered late"
    else:
        outcome = None
    if outcome:
        now = now_iso()
        conn.execute(
            "UPDATE stock_units SET status = 'sold', sold_at = ?, reserved_until = NULL "
            "WHERE order_id = ? AND status = 'reserved'",
            (now, order_id),
        )
        conn.execute("UPDATE orders SET status = 'paid', paid_at = ? WHERE id = ?", (now, order_id))
        if late:
            promo_back_in_order(conn, order)
        if not order_from_basket(conn, order_id):
            remove_bought_from_basket(conn, order_id)
        elif (
            late
        ):  # its lines went back into the basket when it lapsed; now they are bought after all
            take_from_basket(conn, order_id)
        if late:
            tell(
                conn,
                user_id,
                N_(
                    "✅ Your payment for <b>order #{order}</b> arrived after the time to pay had "
                    "run out, but the items were still there: here they are."
                ),
                {"order": order_id},
                order_id=order_id,
            )
        enqueue_delivery(conn, order_id, first=True)
        alert_owners(
            conn,
            owners,
            f"🛒 Order #{order_id} paid in {_paid_in(payment)}: "
            f"{owner_eur(payment['price_cents'])}{' (late)' if late else ''}"
            f"{f' ({esc(note)})' if note else ''}, by "
            f"{describe_user(get_user(conn, user_id))}",
        )
        credit_referrer(conn, order_id, owners)
    elif payment["provider"] in STARS_PROVIDERS:
        return _give_back(
            conn, payment, owners, f"order #{order_id} was paid after its items were gone"
        )
    else:
        outcome = _credit_late_payment(conn, payment, order_id)
    outcome += _credit_overpayment(conn, payment, order_id)
    if outcome.startswith("late, credited"):
        credited = conn.execute(
            "SELECT credited_cents FROM payments WHERE id = ?", (payment["id"],)
        ).fetchone()[0]
        alert_owners(
            conn,
            owners,
            f"⚠️ Order #{order_id} paid late and its items are gone: "
            f"{owner_eur(credited)} credited to the shopper's balance",
        )
    return outcome


# Telegram Stars' providers (real and the sandbox's). Their money the shop cannot turn into
# balance credit (Telegram's rule: Stars buy digital goods, not a balance for anything): a payment
# it cannot honour goes back to the payer.
STARS_PROVIDERS = ("stars", "sandbox_stars")


def _refund_charge(conn, owners, charge_id, user_id, stars, reason, told, noted, **where):
    """Queue a Stars charge's refund (made after this commits) and tell the shopper (`told`: an
    N_() text and its values, for tell()) and
    the owners (`noted`); a charge already queued or refunded changes nothing and nobody is told
    again. where: payment_id and order_id. Returns whether it is new."""
    if not queue_star_refund(
        conn,
        charge_id=charge_id,
        user_id=user_id,
        stars=stars,
        reason=reason,
        requested_by="shop",
        payment_id=where.get("payment_id"),
    ):
        return False
    tell(conn, user_id, *told, order_id=where.get("order_id"))
    alert_owners(conn, owners, noted)
    return True


def _give_back(conn, payment, owners, why):
    """A Stars payment the shop cannot honour: its refund is queued and everyone told."""
    stars, why_ = payment["pay_amount"], why[0].upper() + why[1:]
    _refund_charge(
        conn,
        owners,
        payment["charge_id"],
        payment["user_id"],
        int(stars),
        why_,
        (
            N_(
                "⚠️ Sorry: order #{order} was paid after its items were gone. Your {stars} are "
                "being refunded to you."
            ),
            {"order": payment["order_id"], "stars": StarsAmount(int(stars))},
        ),
        f"↩️ {esc(why_)}: refunding {stars} ⭐ to "
        f"{describe_user(get_user(conn, payment['user_id']))}",
        payment_id=payment["id"],
        order_id=payment["order_id"],
    )
    return f"refunding {stars} Stars"


def _second_charge(conn, payment, news, owners):
    """One invoice paid twice (a second charge for a payment the shop already has money for):
    the second charge goes back."""
    paid, order_id = news.paid or payment["pay_amount"], payment["order_id"]
    _refund_charge(
        conn,
        owners,
        news.charge_id,
        payment["user_id"],
        int(Decimal(paid)),
        f"Payment {payment['id']} was paid twice",
        (
            N_(
                "↩️ You paid for order #{order} twice; the second payment of {stars} is being "
                "refunded to you."
            )
            if order_id
            else N_("↩️ You paid for this twice; the second payment of {stars} is being refunded."),
            {"order": order_id, "stars": StarsAmount(int(Decimal(paid)))},
        ),
        f"↩️ Payment {payment['id']} was paid twice; refunding the second.",
        order_id=order_id,
    )
    return f"unchanged ({payment['status']}); a second charge is refunded"


def queue_star_refund(conn, *, charge_id, user_id, stars, reason, requested_by, payment_id=None):
    """Inside a transaction: a refund of a Stars charge, to be made once (a charge already queued
    or refunded is left alone). Returns whether it is new."""
    now = now_iso()
    return (
        conn.execute(
            "INSERT OR IGNORE INTO star_refunds(charge_id, user_id, payment_id, stars, reason, "
            "requested_by, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (charge_id, user_id, payment_id, stars, reason, requested_by, now, now),
        ).rowcount
        == 1
    )


def refund_unknown_charge(conn, news, user_id, owners):
    """Stars paid for an invoice this shop does not know (or cannot match): given back, once."""
    invoice = esc(news.provider_id[:40])
    with transaction(conn):
        if not _refund_charge(
            conn,
            owners,
            news.charge_id,
            user_id,
            int(Decimal(news.paid or news.amount or "0")) or 1,
            f"A payment for an invoice this shop does not know ({news.provider_id[:40]})",
            (
                N_(
                    "⚠️ Sorry: the shop could not match your Stars payment to an open order. Your "
                    "{stars} are being refunded to you."
                ),
                {"stars": StarsAmount(int(Decimal(news.paid or news.amount or "0")))},
            ),
            f"↩️ Telegram Stars paid for an unknown invoice ({invoice}) by "
            f"<code>{user_id}</code>: refunding {esc(news.paid)} ⭐",
        ):
            return "already being refunded"
        return "unknown invoice: refunding"


def star_refunds_due(conn, limit=20):
    """Refunds waiting to be made now, oldest first."""
    return conn.execute(
        "SELECT * FROM star_refunds WHERE status = 'pending' AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at LIMIT ?",
        (now_iso(), limit),
    ).fetchall()


def star_refund_done(conn, charge_id, note=""):
    """Telegram gave the Stars back: the refund, its payment and (an owner's refund) its order
    say so, and the shopper is told. Idempotent."""
    with transaction(conn):
        refund = conn.execute(
            "SELECT * FROM star_refunds WHERE charge_id = ?", (charge_id,)
        ).fetchone()
        if refund is None or refund["status"] == "done":
            return False
        now = now_iso()
        conn.execute(
            "UPDATE star_refunds SET status = 'done', done_at = ?, last_error = ? "
            "WHERE charge_id = ?",
            (now, note or None, charge_id),
        )
        payment = None
        if refund["payment_id"]:
            payment = find_payment(conn, refund["payment_id"])
        if payment is not None and payment["charge_id"] == charge_id:
            conn.execute(
                "UPDATE payments SET status = 'refunded', updated_at = ?, "
                "outcome = coalesce(outcome || ', ', '') || 'refunded in Stars' WHERE id = ?",
                (now, payment["id"]),
            )
            if refund["requested_by"] == "owner":
                conn.execute(
                    "UPDATE orders SET status = 'refunded' WHERE id = ? AND status = 'paid'",
                    (payment["order_id"],),
                )
        order = payment["order_id"] if payment else None
        values = {"stars": StarsAmount(refund["stars"]), "order": order}
        values["reason"] = esc(refund["reason"])  # the owner's words, as they wrote them
        by_owner = refund["requested_by"] == "owner"
        tell(
            conn,
            refund["user_id"],
            (
                N_("↩️ {stars} were refunded to you for order #{order}: {reason}.")
                if by_owner
                else N_("↩️ {stars} were refunded to you for order #{order}.")
            )
            if order
            else (
                N_("↩️ {stars} were refunded to you: {reason}.")
                if by_owner
                else N_("↩️ {stars} were refunded to you.")
            ),
            values,
            order_id=order,
        )
        log.info("stars: refunded %d Stars of charge %s", refund["stars"], charge_id[:12])
        return True


def star_refund_failed(conn, charge_id, error):
    """Telegram did not make the refund now: tried again later (30 s, doubling up to an hour).
    Returns how many times it failed."""
    with transaction(conn):
        row = conn.execute(
            "SELECT attempts FROM star_refunds WHERE charge_id = ?", (charge_id,)
        ).fetchone()
        attempts = row["attempts"] + 1
        conn.execute(
            "UPDATE star_refunds SET attempts = ?, last_error = ?, next_attempt_at = ? "
            "WHERE charge_id = ?",
            (attempts, error[:300], now_iso(min(3600, 30 * 2 ** (attempts - 1))), charge_id),
        )
        return attempts


def request_owner_star_refund(conn, order_id, reason, remote=None):
    """The owner refunds a paid Stars order ("Refund in Stars"): queued once, audited. Returns the
    refund's charge id; InvalidInput when there is nothing to refund or it was asked already."""
    reason = clean_text(reason, "The reason", max_len=200)
    with transaction(conn):
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if order is None:
            raise NotFound("No such order.")
        payment = conn.execute(
            "SELECT * FROM payments WHERE order_id = ? AND charge_id IS NOT NULL "
            "AND provider IN (SELECT value FROM json_each(?)) ORDER BY id DESC LIMIT 1",
            (order_id, json.dumps(STARS_PROVIDERS)),
        ).fetchone()
        if payment is None or order["payment_method"] != "stars":
            raise InvalidInput(f"Order #{order_id} was not paid in Telegram Stars.")
        if order["status"] != "paid":
            raise InvalidInput(
                f"Order #{order_id} is {order['status']}; only a paid one is refunded."
            )
        if not queue_star_refund(
            conn,
            charge_id=payment["charge_id"],
            user_id=order["user_id"],
            stars=int(payment["pay_amount"]),
            reason=reason,
            requested_by="owner",
            payment_id=payment["id"],
        ):
            raise InvalidInput(f"Order #{order_id}'s Stars were already refunded (or are being).")
        audit(
            conn,
            "stars refund",
            f"order #{order_id}: {payment['pay_amount']} Stars, charge {payment['charge_id']}: "
            f"{reason}",
            remote,
        )
        return payment["charge_id"]


STARS_HOLD_SECONDS = 300  # a pre-checkout holds the items this long for Telegram to charge


def stars_pre_checkout(conn, providers, user_id, payload, currency, total, owners=()):
    """Telegram asks whether a Stars payment may go ahead (pre_checkout_query). Returns None (yes:
    the items are held for it) or the reason, for the shopper, why not; the shopper is then not
    charged. An order whose reservation lapsed takes its items again if they are still there
    (a place left low is told to the owners)."""
    with transaction(conn):
        payment = conn.execute(
            "SELECT * FROM payments WHERE provider IN (SELECT value FROM json_each(?)) "
            "AND provider_id = ?",
            (json.dumps(list(providers)), payload),
        ).fetchone()
        if payment is None or payment["user_id"] != user_id or not payment["order_id"]:
            return tr("This invoice is not valid any more. Please check out again.")
        if currency != "XTR" or str(total) != payment["pay_amount"]:
            return tr("The price of this order changed. Please check out again.")
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (payment["order_id"],)).fetchone()
        if get_user(conn, user_id)["is_banned"]:
            return tr(Banned.message)
        if payment["status"] in MONEY_STATUSES or order["status"] == "paid":
            return tr("Order #{order} is already paid.", order=order["id"])
        if order["status"] in ("cancelled", "refunded") or payment["status"] == "failed":
            return tr("Order #{order} was cancelled. Please check out again.", order=order["id"])
        if order["status"] == "expired":
            refused = lapsed_order_promo_refusal(conn, order)
            if refused:
                return refused
            if not _retake_units(conn, order["id"], owners):
                return tr(
                    "Sorry, the items of order #{order} sold out after its time to pay ran out. "
                    "Please check out again.",
                    order=order["id"],
                )
            conn.execute("UPDATE orders SET status = 'pending' WHERE id = ?", (order["id"],))
            promo_back_in_order(conn, order)
            if order_from_basket(conn, order["id"]):
                take_from_basket(conn, order["id"])
        hold = now_iso(STARS_HOLD_SECONDS)
        conn.execute(
            "UPDATE stock_units SET reserved_until = max(reserved_until, ?) "
            "WHERE order_id = ? AND status = 'reserved'",
            (hold, order["id"]),
        )
        conn.execute(
            "UPDATE payments SET expires_at = max(expires_at, ?), updated_at = ? WHERE id = ?",
            (hold, now_iso(), payment["id"]),
        )
        return None


def stars_news(provider, payload, charge_id, total, currency="XTR"):
    """A Stars payment Telegram reports (successful_payment, or found in getStarTransactions)."""
    return PaymentNews(
        provider=provider,
        provider_id=payload,
        status="finished",
        by="Telegram",
        currency=currency.lower(),
        amount=str(total),
        paid=str(total),
        charge_id=charge_id,
    )


def lapsed_stars_invoices(conn, providers, grace_seconds=600):
    """Stars invoices still waiting well after their items were released (Telegram never says an
    invoice ran out): their provider ids, to be marked expired."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT p.provider_id FROM payments p JOIN orders o ON o.id = p.order_id "
            "WHERE p.status = 'waiting' AND p.provider IN (SELECT value FROM json_each(?)) "
            "AND p.expires_at < ? AND o.status != 'pending'",
            (json.dumps(list(providers)), now_iso(-grace_seconds)),
        )
    ]


def known_charges(conn, charge_ids):
    """What the shop knows of these Stars charges, in one query: {charge id: "paid" (applied to a
    payment), or its refund's status, "pending" or "done" (a refund wins over "paid")}."""
    ids = json.dumps(list(charge_ids))
    return dict(
        conn.execute(
            "SELECT charge_id, 'paid' FROM payments "
            "WHERE charge_id IN (SELECT value FROM json_each(?)) UNION ALL "
            "SELECT charge_id, status FROM star_refunds "
            "WHERE charge_id IN (SELECT value FROM json_each(?))",
            (ids, ids),
        ).fetchall()
    )


def stars_invoice_description(conn, order_id, total):
    """A Stars invoice's description (Telegram: at most 255 characters): the items, the code's
    discount when one was taken off, and the price in euros."""
    discount = order_discount(conn, order_id)
    off = f" · 🏷 {discount[0]} −{fmt_eur(discount[1])}" if discount else ""
    tail = f"{off} · {fmt_eur(total)}"
    return f"{shorten(order_summary(conn, order_id), 255 - len(tail))}{tail}"


def order_summary(conn, order_id):
    """An order's items in one line, like "Gift card €25 × 2, Coffee beans" (for an invoice)."""
    counts = conn.execute(
        f"SELECT {_ITEM_NAME}, count(*) FROM order_items i WHERE order_id = ? GROUP BY product_id "
        "ORDER BY min(id)",
        (order_id,),
    ).fetchall()
    return ", ".join(f"{name} × {n}" if n > 1 else name for name, n in counts) or f"#{order_id}"


def underpayment_tolerance(conn):
    """The owner's underpayment tolerance, a percentage (Decimal, 0 unless set): a crypto payment
    short by at most this much of its amount pays its order in full, as BTCPay's "payment
    tolerance" does (network fees and wallets that round make small shortfalls common)."""
    return Decimal(get_setting(conn, "underpayment_tolerance") or "0")


def _short_percent(payment):
    """How much of the invoice's amount did not arrive, in percent of it, exactly (0 if none)."""
    asked, paid = crypto_amount(payment["pay_amount"]), crypto_amount(payment["actually_paid"] or 0)
    if asked <= 0 or paid >= asked:
        return Decimal(0)
    return ((asked - paid) * 100 / asked).quantize(Decimal("0.01"), rounding="ROUND_CEILING")


def _missing_text(payment):
    """What did not arrive, in the payment's coin and exactly."""
    missing = crypto_amount(payment["pay_amount"]) - crypto_amount(payment["actually_paid"] or 0)
    return f"{esc(fmt_coin(missing))} {esc(payment['pay_currency'].upper())}"


def _credit_overpayment(conn, payment, order_id):
    """What arrived beyond the invoice's amount, credited to the shopper; returns the words for
    the payment's outcome ("" when nothing was over)."""
    paid, asked, user_id = payment["actually_paid"], payment["pay_amount"], payment["user_id"]
    if not paid or crypto_amount(paid) <= crypto_amount(asked):
        return ""
    extra = value_of(payment["price_cents"], crypto_amount(paid) - crypto_amount(asked), asked)
    extra = _credit(conn, payment, extra, "overpayment", "overpaid", f"Order #{order_id} overpaid")
    if not extra:
        return ""
    tell(
        conn,
        user_id,
        N_(
            "💰 You sent more than needed for order #{order}; the extra {amount} was added to "
            "your balance. Balance: {balance}."
        ),
        {"order": order_id, "amount": Money(extra), "balance": _balance(conn, user_id)},
        order_id=order_id,
    )
    return f", overpaid {cents_to_str(extra)} credited"


def _retake_units(conn, order_id, owners=()):
    """Reserve again, for a late payment, the order's units or others of the same product and
    place (a place left low is told to the owners, as open_order does)."""
    items = conn.execute(
        "SELECT i.id, i.unit_id, i.product_id, s.district_id FROM order_items i "
        "JOIN stock_units s ON s.id = i.unit_id WHERE i.order_id = ?",
        (order_id,),
    ).fetchall()
    taken = []
    for item in items:
        unit = conn.execute(
            "SELECT id FROM stock_units WHERE status = 'available' AND product_id = ? "
            "AND district_id = ? "
            "AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY id = ? DESC, id LIMIT 1",
            (item["product_id"], item["district_id"], json.dumps(taken), item["unit_id"]),
        ).fetchone()
        if unit is None:
            return False
        taken.append(unit["id"])
    for item, unit_id in zip(items, taken, strict=False):
        conn.execute(
            "UPDATE stock_units SET status = 'reserved', order_id = ?, reserved_until = ? "
            "WHERE id = ?",
            (order_id, now_iso(), unit_id),
        )
        conn.execute("UPDATE order_items SET unit_id = ? WHERE id = ?", (unit_id, item["id"]))
    for product_id, district_id in {(i["product_id"], i["district_id"]) for i in items}:
        note_low_stock(conn, product_id, district_id, owners)
    return True


def checkout_for_request(
    conn, user_id, kind, amount_cents, lines=(), from_basket=False, request_id=None, promo_id=None
):
    """A checkout's nonce. With a client-made request_id, that is the nonce: a repeated request
    finds its checkout instead of making another (InvalidInput if it was for something else; an
    order's amount may differ, its discount code having gone into the first request's order)."""
    if not request_id:
        return create_checkout(conn, user_id, kind, amount_cents, lines, from_basket, promo_id)
    encoded = json.dumps([list(line) for line in lines])
    existing = conn.execute("SELECT * FROM checkouts WHERE nonce = ?", (request_id,)).fetchone()
    if existing:
        same = (existing["user_id"], existing["kind"], existing["lines"]) == (
            user_id,
            kind,
            encoded,
        ) and (kind == "order" or existing["amount_cents"] == amount_cents)
        if not same:
            raise InvalidInput(
                tr("That request_id was used for a different checkout; make a new one.")
            )
        return request_id
    with transaction(conn):
        conn.execute(
            "INSERT INTO checkouts(nonce, user_id, kind, lines, from_basket, amount_cents, "
            "created_at, promo_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_id,
                user_id,
                kind,
                encoded,
                int(from_basket),
                amount_cents,
                now_iso(),
                promo_id,
            ),
        )
    return request_id


def is_basket_checkout(conn, user_id, nonce):
    """Whether the user has a checkout of their basket with this nonce."""
    return (
        conn.execute(
            "SELECT 1 FROM checkouts WHERE nonce = ? AND user_id = ? AND from_basket = 1",
            (nonce, user_id),
        ).fetchone()
        is not None
    )


def get_payment_by_provider_id(conn, user_id, provider_id):
    """One of the user's invoices (not a child payment) by the provider's payment id; someone
    else's is NotFound."""
    row = conn.execute(
        "SELECT * FROM payments WHERE provider_id = ? AND user_id = ? AND parent_id IS NULL",
        (provider_id, user_id),
    ).fetchone()
    if row is None:
        raise NotFound(tr("No such payment."))
    return row


def get_order_status(conn, order_id):
    """An order's status; None without an order."""
    if not order_id:
        return None
    row = conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
    return row["status"] if row else None


def list_order_goods(conn, order_id):
    """An order's items with their units' goods (content, media), in order."""
    return conn.execute(
        f"SELECT i.id, {_ITEM_NAME} AS product_name, "
        "i.place_name, i.price_cents, s.content, s.media "
        "FROM order_items i JOIN stock_units s ON s.id = i.unit_id WHERE i.order_id = ? "
        "ORDER BY i.id",
        (order_id,),
    ).fetchall()


def latest_order_payment(conn, order_id):
    """An order's latest invoice (not a child payment), or None."""
    return conn.execute(
        "SELECT * FROM payments WHERE order_id = ? AND parent_id IS NULL ORDER BY id DESC LIMIT 1",
        (order_id,),
    ).fetchone()


def find_paid_item_media(conn, user_id, order_id, item_id):
    """The media file of an item of one of the user's paid orders, or None."""
    row = conn.execute(
        "SELECT s.media FROM order_items i JOIN orders o ON o.id = i.order_id JOIN stock_units s "
        "ON s.id = i.unit_id WHERE i.id = ? AND o.id = ? AND o.user_id = ? AND o.status = 'paid'",
        (item_id, order_id, user_id),
    ).fetchone()
    return row["media"] if row else None


# Services: owner ###############################################################

ADMIN_IDLE_SECONDS = 30 * 60


ADMIN_MAX_SECONDS = 12 * 3600


def hash_password(password):
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


def check_password(password, stored):
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def set_admin_password(conn, password=None):
    """Store the hash of a new admin password (random if None) and end every admin session, which
    were opened with the old one; returns the password."""
    password = password or secrets.token_urlsafe(12)
    stored = hash_password(password)
    with transaction(conn):
        conn.execute(
            "INSERT INTO settings(key, value) VALUES ('admin_password_hash', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (stored,),
        )
        ended = _end_admin_sessions(conn, "stored:" + stored)
        audit(conn, "admin password set", f"{ended} session(s) ended")
    return password


def _end_admin_sessions(conn, password_mark):
    """Inside a transaction: delete every admin session and note which password the next ones
    belong to."""
    ended = conn.execute("DELETE FROM admin_sessions").rowcount
    conn.execute(
        "INSERT INTO settings(key, value) VALUES ('admin_sessions_password', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (password_mark,),
    )
    return ended


def end_sessions_of_an_old_password(conn, configured):
    """At start: sessions opened under another password than today's (ADMIN_PASSWORD changed, set or
    removed since) end here, across restarts. Returns how many ended."""
    mark = conn.execute(
        "SELECT value FROM settings WHERE key = 'admin_sessions_password'"
    ).fetchone()
    mark = mark[0] if mark else ""
    if configured:
        if mark.startswith("env:") and check_password(configured, mark[4:]):
            return 0
        new = "env:" + hash_password(configured)
    else:
        stored = conn.execute(
            "SELECT value FROM settings WHERE key = 'admin_password_hash'"
        ).fetchone()
        new = "stored:" + (stored[0] if stored else "")
        if mark == new:
            return 0
    with transaction(conn):
        ended = _end_admin_sessions(conn, new)
        if ended:
            audit(conn, "admin sessions ended", f"{ended} session(s): the admin password changed")
    return ended


def end_all_admin_sessions(conn, remote=None):
    """'Log out everywhere': every session of every browser ends; returns how many."""
    with transaction(conn):
        ended = conn.execute("DELETE FROM admin_sessions").rowcount
        audit(conn, "logged out everywhere", f"{ended} session(s) ended", remote)
    return ended


def verify_admin_password(conn, attempt, configured):
    """ADMIN_PASSWORD when set, else the stored hash."""
    if configured:
        return hmac.compare_digest(attempt.encode(), configured.encode())
    stored = conn.execute("SELECT value FROM settings WHERE key = 'admin_password_hash'").fetchone()
    return bool(stored) and check_password(attempt, stored[0])


def create_admin_session(conn, remote):
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    now = now_iso()
    with transaction(conn):
        conn.execute(
            "DELETE FROM admin_sessions WHERE last_seen_at < ? OR created_at < ?",
            (now_iso(-ADMIN_IDLE_SECONDS), now_iso(-ADMIN_MAX_SECONDS)),
        )
        conn.execute(
            "INSERT INTO admin_sessions(token_hash, csrf_token, remote_addr, created_at, "
            "last_seen_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (hashlib.sha256(token.encode()).hexdigest(), csrf, remote, now, now),
        )
        audit(conn, "logged in", remote=remote)
    return token, csrf


def get_admin_session(conn, token):
    """The live session for a cookie's token (touching it), or None when missing, idle or too
    old."""
    if not token or len(token) > 100:
        return None
    key = hashlib.sha256(token.encode()).hexdigest()
    row = conn.execute("SELECT * FROM admin_sessions WHERE token_hash = ?", (key,)).fetchone()
    if row is None:
        return None
    if row["last_seen_at"] < now_iso(-ADMIN_IDLE_SECONDS) or row["created_at"] < now_iso(
        -ADMIN_MAX_SECONDS
    ):
        with transaction(conn):
            conn.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (key,))
        return None
    if row["last_seen_at"] < now_iso(-30):
        with transaction(conn):
            conn.execute(
                "UPDATE admin_sessions SET last_seen_at = ? WHERE token_hash = ?", (now_iso(), key)
            )
    return row


def end_admin_session(conn, token, remote):
    with transaction(conn):
        conn.execute(
            "DELETE FROM admin_sessions WHERE token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
        audit(conn, "logged out", remote=remote)


def database_report(conn):
    """What the database holds as the shop starts (after a restore above all): whether SQLite finds
    it sound, the balances whose ledger rows say otherwise, the last order and the last payment,
    and how many payments are still open at a provider (reconciliation asks about them)."""
    integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    if integrity != "ok":
        return {"integrity": integrity}
    order = conn.execute(
        "SELECT id, status, created_at FROM orders ORDER BY id DESC LIMIT 1"
    ).fetchone()
    payment = conn.execute(
        "SELECT id, provider, status, updated_at FROM payments ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return {
        "integrity": integrity,
        "ledger": check_ledger(conn),
        "order": dict(order) if order else None,
        "payment": dict(payment) if payment else None,
        "open_payments": conn.execute(
            "SELECT count(*) FROM payments WHERE status IN (?, ?, ?, ?)", OPEN_STATUSES
        ).fetchone()[0],
    }


# Replication more than this far behind (or Litestream not answering) is a problem to report.
REPLICATION_LAG_SECONDS = 60


def replication_problem(status):
    """What is wrong with a litestream_status() for the owner, or None."""
    if status.get("error"):
        return f"replication: {status['state']} ({status['error']})"
    if status["state"] != "replicating":
        return f"replication: Litestream says {status['state']}"
    if status.get("last_sync_at") is None and status.get("waiting_seconds", 0) > (
        REPLICATION_LAG_SECONDS
    ):
        return (
            f"replication: no copy made in {status['waiting_seconds']} s since Litestream started"
        )
    if (status["behind_seconds"] or 0) > REPLICATION_LAG_SECONDS:
        return (
            f"replication: {status['behind_seconds']} s behind (last sync {status['last_sync_at']})"
        )
    return None


# Catalog management


def _name(value, what):
    return clean_text(value, what, max_len=64)


def add_city(conn, name, remote=None):
    name = _name(name, "The city name")
    with transaction(conn):
        if conn.execute("SELECT 1 FROM cities WHERE name = ?", (name,)).fetchone():
            raise InvalidInput(f"There is already a city called “{name}”.")
        position = conn.execute("SELECT coalesce(max(position), 0) + 1 FROM cities").fetchone()[0]
        city_id = conn.execute(
            "INSERT INTO cities(name, position) VALUES (?, ?)", (name, position)
        ).lastrowid
        audit(conn, "city added", f"#{city_id} {name}", remote)
        return city_id


def add_district(conn, city_id, name, remote=None):
    name = _name(name, "The district name")
    with transaction(conn):
        city = conn.execute("SELECT name FROM cities WHERE id = ?", (city_id,)).fetchone()
        if city is None:
            raise NotFound("No such city.")
        if conn.execute(
            "SELECT 1 FROM districts WHERE city_id = ? AND name = ?", (city_id, name)
        ).fetchone():
            raise InvalidInput(f"{city['name']} already has a district called “{name}”.")
        position = conn.execute(
            "SELECT coalesce(max(position), 0) + 1 FROM districts WHERE city_id = ?", (city_id,)
        ).fetchone()[0]
        district_id = conn.execute(
            "INSERT INTO districts(city_id, name, position) VALUES (?, ?, ?)",
            (city_id, name, position),
        ).lastrowid
        audit(conn, "district added", f"#{district_id} {city['name']} / {name}", remote)
        return district_id


PLACE_TABLES = {
    "city": ("cities", "The city name", None),
    "district": ("districts", "The district name", "city_id"),
}


def update_place(
    conn, kind, place_id, *, name=None, hidden=None, move=None, position=None, remote=None
):
    """Rename, hide/show or move a city or a district among its siblings: `move` -1 up or +1
    down, or `position` 1 (first) to the number of siblings. InvalidInput, changing nothing, for
    a name that is wrong or taken and a position out of range."""
    table, what, group = PLACE_TABLES[kind]
    with transaction(conn):
        row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (place_id,)).fetchone()
        if row is None:
            raise NotFound(f"No such {kind}.")
        if name is not None:
            name = _name(name, what)
            clash = conn.execute(
                f"SELECT 1 FROM {table} WHERE name = ? AND id != ?"
                + (f" AND {group} = ?" if group else ""),
                (name, place_id, *([row[group]] if group else [])),
            ).fetchone()
            if clash:
                raise InvalidInput(f"That name is taken: “{name}”.")
            if name != row["name"]:
                conn.execute(f"UPDATE {table} SET name = ? WHERE id = ?", (name, place_id))
                audit(conn, f"{kind} renamed", f"#{place_id} {row['name']} -> {name}", remote)
        if hidden is not None and bool(hidden) != bool(row["is_hidden"]):
            conn.execute(
                f"UPDATE {table} SET is_hidden = ? WHERE id = ?", (int(bool(hidden)), place_id)
            )
            audit(
                conn,
                f"{kind} {'hidden' if hidden else 'shown'}",
                f"#{place_id} {row['name']}",
                remote,
            )
        if move in (-1, 1) or position is not None:
            _move_place(conn, kind, row, move, position, remote)


def _move_place(conn, kind, row, move, position, remote):
    """update_place's move: one step (move -1 or +1) or to `position` among the place's siblings."""
    table, _, group = PLACE_TABLES[kind]
    siblings = conn.execute(
        f"SELECT id FROM {table}"
        + (f" WHERE {group} = ?" if group else "")
        + " ORDER BY position, name COLLATE NOCASE",
        ([row[group]] if group else []),
    ).fetchall()
    order = [r["id"] for r in siblings]
    i = order.index(row["id"])
    if position is not None:
        if not (isinstance(position, int) and 1 <= position <= len(order)):
            raise InvalidInput(f"Choose a position from 1 to {len(order)}.")
        j, said = position - 1, f"{kind} moved"
    else:
        j, said = i + move, f"{kind} moved {'up' if move < 0 else 'down'}"
    if j == i or not 0 <= j < len(order):
        return
    order.insert(j, order.pop(i))
    for number, pid in enumerate(order, 1):
        conn.execute(f"UPDATE {table} SET position = ? WHERE id = ?", (number, pid))
    where = f" to {j + 1} of {len(order)}" if position is not None else ""
    audit(conn, said, f"#{row['id']} {row['name']}{where}", remote)


def _check_order(given, stored, plural):
    """InvalidInput unless the ids `given` are the ids `stored`, each once, in any order."""
    seen = set()
    for i in given:
        if i in seen:
            raise InvalidInput(f"The new order names one of the {plural} twice (#{i}).")
        seen.add(i)
    if seen != set(stored):
        raise InvalidInput(
            f"The new order does not list the shop's {plural} as they are now (one may have "
            "been added since the page was loaded), so nothing was moved."
        )


def reorder_places(conn, city_ids, district_ids, remote=None):
    """Put the cities, and the districts of each city, in the order given: every city once and
    every district once, as the catalog page lists them (a district stays in its city). One
    transaction; InvalidInput, changing nothing, when the lists are not exactly the shop's
    places. Returns what moved in words ('' when nothing did), which the audit log records."""
    with transaction(conn):
        cities = conn.execute(
            "SELECT id, name FROM cities ORDER BY position, name COLLATE NOCASE"
        ).fetchall()
        districts = conn.execute(
            "SELECT id, city_id, name FROM districts ORDER BY position, name COLLATE NOCASE"
        ).fetchall()
        _check_order(city_ids, [c["id"] for c in cities], "cities")
        _check_order(district_ids, [d["id"] for d in districts], "districts")
        moved = []
        city_names = {c["id"]: c["name"] for c in cities}
        if list(city_ids) != list(city_names):
            for number, city_id in enumerate(city_ids, 1):
                conn.execute("UPDATE cities SET position = ? WHERE id = ?", (number, city_id))
            moved.append("cities: " + ", ".join(city_names[i] for i in city_ids))
        city_of = {d["id"]: d["city_id"] for d in districts}
        names = {d["id"]: d["name"] for d in districts}
        for city_id in city_ids:
            before = [d["id"] for d in districts if d["city_id"] == city_id]
            after = [i for i in district_ids if city_of[i] == city_id]
            if after == before:
                continue
            for number, district_id in enumerate(after, 1):
                conn.execute(
                    "UPDATE districts SET position = ? WHERE id = ?", (number, district_id)
                )
            moved.append(f"{city_names[city_id]}: " + ", ".join(names[i] for i in after))
        if moved:
            audit(conn, "places reordered", "; ".join(moved), remote)
        return "; ".join(moved)


def clean_product_payment(kind=None, methods=None, stars_price=None):
    """The product form's kind, ways to pay and Stars price as the products table stores them,
    only those given (None: keep what the product has). kind: 'digital', 'physical' or '' (not
    said); methods: the ways chosen, at least one; stars_price: whole Stars as typed, '' for the
    euro price at the shop's rate. InvalidInput says what is wrong."""
    fields = {}
    if kind is not None:
        if kind not in ("", *PRODUCT_KINDS):
            raise InvalidInput("Choose what the product is: digital or physical.")
        fields["kind"] = kind or None
    if methods is not None:
        unknown = [m for m in methods if m not in PAY_METHODS]
        if unknown:
            raise InvalidInput(f"Unknown way to pay {unknown[0][:20]!r}.")
        if not methods:
            raise InvalidInput("Choose at least one way the product may be paid.")
        fields["pay_methods"] = stored_pay_methods(methods)
    if stars_price is not None:
        text = stars_price.strip().replace("⭐", "").strip()
        if text and not (re.fullmatch(r"[0-9]{1,6}", text) and 1 <= int(text) <= MAX_STARS_PRICE):
            raise InvalidInput(
                f"The Stars price must be a whole number of Stars from 1 to {MAX_STARS_PRICE}, "
                f"like 250 (empty: the euro price at the shop's rate); got {text[:20]!r}."
            )
        fields["stars_price"] = int(text) if text else None
    return fields


def product_payment_words(kind, pay_methods, stars_price):
    """A product's kind, ways to pay and Stars price in the owner's words, for the audit log."""
    ways = declared_methods({"pay_methods": pay_methods})
    return (
        f"kind {kind or 'not said'}, paid by "
        + ("every way" if pay_methods is None else "/".join(ways))
        + f", Stars price {stars_price or 'from the rate'}"
    )


def clean_product_translations(typed):
    """The product form's names and descriptions in other languages as typed, {code: {"name": ...,
    "description": ...}}, checked as the default language's are: {field: {code: text}}, an empty
    text for none in that language. InvalidInput says what is wrong."""
    by_field = {key: {} for key in PRODUCT_TEXTS}
    for code, texts in typed.items():
        if code not in available_languages():
            raise InvalidInput(
                f"The shop does not speak {language_label(code)}; its languages are "
                f"{', '.join(available_languages())}."
            )
        label = language_label(code)
        by_field["name"][code] = clean_text(
            texts.get("name"), f"The product name in {label}", max_len=64, required=False
        )
        by_field["description"][code] = clean_text(
            texts.get("description"),
            f"The description in {label}",
            max_len=800,
            multiline=True,
            required=False,
        )
    return by_field


def _translation_changes(old, new):
    """What a save changed of a product's texts in other languages (products.translations before
    and after), for the audit log."""
    before, after = product_translations(old), product_translations(new)
    changes = []
    for code in sorted(set(before["name"]) | set(after["name"])):
        was, now = before["name"].get(code, ""), after["name"].get(code, "")
        if was != now:
            changes.append(f"name in {code}: {was!r} -> {now!r}")
    for code in sorted(set(before["description"]) | set(after["description"])):
        if before["description"].get(code) != after["description"].get(code):
            changes.append(f"description in {code} changed")
    return changes


def _product_changes(old, new, description, stored):
    """What a product's save changed, for the audit log."""
    changes = [
        f"{k}: {old[k]!r} -> {v!r}"
        for k, v in new.items()
        if k not in ("description", "translations") and old[k] != v
    ]
    if description != old["description"]:
        changes.append("description changed")
    if "translations" in new:
        changes += _translation_changes(old["translations"], new["translations"])
    if stored:
        changes.append("new photo")
    return "; ".join(changes) or "no change"


def _add_product(conn, new, remote):
    """Insert a product, its columns {column: value} already checked, with its audit row; return
    its id."""
    product_id = conn.execute(
        f"INSERT INTO products({', '.join(new)}) VALUES ({', '.join('?' for _ in new)})",
        tuple(new.values()),
    ).lastrowid
    payment = product_payment_words(new["kind"], new["pay_methods"], new["stars_price"])
    added = "".join(f"; {c}" for c in _translation_changes(None, new["translations"]))
    audit(
        conn,
        "product added",
        f"#{product_id} {new['name']} {fmt_eur(new['price_cents'])}; {payment}{added}",
        remote,
    )
    return product_id


def save_product(
    conn,
    media_dir,
    product_id,
    *,
    name,
    description,
    price,
    active,
    photo=None,
    kind=None,
    methods=None,
    stars_price=None,
    translations=None,
    remote=None,
):
    """Create (product_id None) or change a product; photo is (bytes, kind) or None to keep it;
    description None keeps it (a new product's is empty); kind, methods and stars_price as
    clean_product_payment takes them (None: keep, or for a new product not said, every way, from
    the rate); translations, its name and description in other languages as
    clean_product_translations takes them, replace those languages' (None: keep them all)."""
    name = _name(name, "The product name")
    if description is not None:
        description = clean_text(
            description, "The description", max_len=800, multiline=True, required=False
        )
    try:
        price_cents = parse_eur(price)
    except InvalidInput as e:
        raise InvalidInput(f"The price {e}.") from None
    fields = clean_product_payment(kind, methods, stars_price)
    given = None if translations is None else clean_product_translations(translations)
    stored = store_media(media_dir, photo[0], photo[1], private=False) if photo else None
    with transaction(conn):
        clash = conn.execute(
            "SELECT id FROM products WHERE name = ? AND id IS NOT ?", (name, product_id)
        ).fetchone()
        if clash:
            raise InvalidInput(f"There is already a product called “{name}”.")
        if product_id is None:
            new = {"name": name, "description": description or "", "price_cents": price_cents}
            new.update(photo=stored, is_active=int(active), created_at=now_iso())
            new.update({k: fields.get(k) for k in ("kind", "pay_methods", "stars_price")})
            new["translations"] = stored_translations(None, given) if given else None
            return _add_product(conn, new, remote)
        old = conn.execute("SELECT * FROM products WHERE id = ?", (product_id,)).fetchone()
        if old is None:
            raise NotFound("No such product.")
        description = old["description"] if description is None else description
        new = {"name": name, "description": description, "price_cents": price_cents}
        new.update(is_active=int(active), **fields)
        if given is not None:
            new["translations"] = stored_translations(old["translations"], given, set(translations))
        conn.execute(
            f"UPDATE products SET {', '.join(f'{k} = ?' for k in new)}, "
            "photo = coalesce(?, photo) WHERE id = ?",
            (*new.values(), stored, product_id),
        )
        changes = _product_changes(old, new, description, stored)
        audit(conn, "product changed", f"#{product_id} {changes}", remote)
        return product_id


def split_units(text):
    """Unit contents from a textarea: blocks separated by a blank line when there are any, else
    one per line."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return []
    if re.search(r"\n[ \t]*\n", text):
        return [b.strip() for b in re.split(r"\n[ \t]*\n", text) if b.strip()]
    return [line.strip() for line in text.split("\n") if line.strip()]


def add_units(conn, media_dir, product_id, district_id, text, media=None, remote=None):
    """Add stock units (see split_units), each with the same optional private photo, by the catalog
    import's rule: a unit whose product, district and content exist already, sold or not, is not
    added again (so no code is sold twice), and one pasted twice is added once.
    Returns {"added": n, "present": [contents], "repeated": [contents]}."""
    contents = [
        clean_text(c, f"Unit {i}", max_len=3500, multiline=True)
        for i, c in enumerate(split_units(text), 1)
    ]
    if not contents:
        raise InvalidInput("Write at least one unit: its code, link or pickup instructions.")
    if len(contents) > 1000:
        raise InvalidInput("At most 1000 units at a time.")
    unique, repeated = [], []
    for content in contents:
        (repeated if content in unique else unique).append(content)
    with transaction(conn):
        product = conn.execute("SELECT name FROM products WHERE id = ?", (product_id,)).fetchone()
        district = conn.execute(
            "SELECT d.name, c.name AS city FROM districts d JOIN cities c ON c.id = d.city_id "
            "WHERE d.id = ?",
            (district_id,),
        ).fetchone()
        if product is None or district is None:
            raise NotFound("No such product or district.")
        present = [
            c
            for c in unique
            if conn.execute(
                "SELECT 1 FROM stock_units WHERE product_id = ? AND district_id = ? "
                "AND content = ?",
                (product_id, district_id, c),
            ).fetchone()
        ]
        new = [c for c in unique if c not in present]
        name = store_media(media_dir, media[0], media[1], private=True) if media and new else None
        for content in new:
            conn.execute(
                "INSERT INTO stock_units(product_id, district_id, content, media, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (product_id, district_id, content, name, now_iso()),
            )
        if new:
            stock_arrived(conn, product_id, district_id)
        skipped = (
            f"; skipped {len(present)} already in the shop, {len(repeated)} repeated"
            if present or repeated
            else ""
        )
        audit(
            conn,
            "units added",
            f"{len(new)} x #{product_id} {product['name']} in {district['city']} / "
            f"{district['name']}{' with a photo' if name else ''}{skipped}",
            remote,
        )
    return {"added": len(new), "present": present, "repeated": repeated}


def quote_units(contents):
    """The first five contents, each shortened to one line, joined by commas (and how many more)."""
    return ", ".join(shorten(c.replace("\n", " "), 40) for c in contents[:5]) + (
        f" and {len(contents) - 5} more" if len(contents) > 5 else ""
    )


def units_added_text(result):
    """What the owner reads after adding units: how many, and which were skipped and why (a code
    pasted twice is 'kept once': added, unless it was in the shop already)."""
    n = result["added"]
    parts = [f"{n} unit{'s' if n != 1 else ''} added."]
    if result["present"]:
        k = len(result["present"])
        parts.append(
            f"{k} skipped: already in the shop for this product and district, sold or not, so they "
            f"are not added again ({quote_units(result['present'])})."
        )
    if result["repeated"]:
        k = len(result["repeated"])
        parts.append(
            f"{k} skipped: pasted more than once, so kept once ({quote_units(result['repeated'])})."
        )
    return " ".join(parts)


def delete_unit(conn, unit_id, remote=None):
    with transaction(conn):
        unit = conn.execute("SELECT * FROM stock_units WHERE id = ?", (unit_id,)).fetchone()
        if unit is None:
            raise NotFound("No such unit.")
        if (
            unit["status"] != "available"
            or conn.execute("SELECT 1 FROM order_items WHERE unit_id = ?", (unit_id,)).fetchone()
        ):
            raise InvalidInput("Only units never ordered can be deleted.")
        conn.execute("DELETE FROM stock_units WHERE id = ?", (unit_id,))
        audit(conn, "unit deleted", f"#{unit_id} of product #{unit['product_id']}", remote)


# Telegram's rule: digital goods are paid in Stars inside Telegram


def find_rule_report(conn):
    """Where the catalog stands with Telegram's rule: {rule: whether the shop follows it,
    breaking: digital products the owner lets be paid other than in Stars alone, unsaid: products
    whose kind is not said}, each list in name order."""
    products = conn.execute("SELECT * FROM products ORDER BY name COLLATE NOCASE").fetchall()
    return {
        "rule": telegram_rule(conn),
        "breaking": [p for p in products if breaks_rule(p)],
        "unsaid": [p for p in products if p["kind"] is None],
    }


def make_digital_stars_only(conn, remote=None):
    """The rule's one action: every digital product paid other than in Stars alone becomes Stars
    only. Returns how many changed (audited when any did)."""
    with transaction(conn):
        breaking = [
            p
            for p in conn.execute("SELECT * FROM products WHERE kind = 'digital' ORDER BY id")
            if breaks_rule(p)
        ]
        for p in breaking:
            conn.execute("UPDATE products SET pay_methods = 'stars' WHERE id = ?", (p["id"],))
        if breaking:
            audit(
                conn,
                "digital products made Stars only",
                ", ".join(
                    f"#{p['id']} {p['name']} (was {p['pay_methods'] or 'every way'})"
                    for p in breaking
                ),
                remote,
            )
    return len(breaking)


# Discount codes, the owner's side: codes created, changed, paused and resumed from the admin or
# `shop.py promo`, checked the one way (clean_promo_fields) and audited. The shopper's side (their
# rules, the rounding) is in "Services: discount codes".

PROMO_KIND_WORDS = {"percent": "a percentage off", "fixed": "an amount off in EUR"}

# What the owner types for a code, by its name in the admin's form and `shop.py promo`'s fields.
PROMO_FIELDS = (
    "code",
    "kind",
    "value",
    "min_total",
    "starts",
    "ends",
    "max_uses",
    "max_uses_per_user",
    "products",
    "cities",
    "note",
)

PROMO_MAX_USES = 1_000_000

# A code's scope: (field, column, table, what one of them is called).
PROMO_SCOPES = (
    ("products", "product_ids", "products", "product"),
    ("cities", "city_ids", "cities", "city"),
)

_PROMO_MOMENT = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(:\d{2})?)?\s*(?:Z|UTC)?", re.IGNORECASE
)


def promo_moment(text, what, end=False):
    """A start or end as the owner types it, in UTC: a day ('2026-12-01': its start, or for an end
    the end of that day) or a day and time ('2026-12-01T18:00', as a datetime-local field sends
    it, or '2026-12-01 18:00'), as stored ('2026-12-01T18:00:00.000000Z'); None for ''.
    InvalidInput says what is wrong."""
    text = str(text or "").strip()
    if not text:
        return None
    m = _PROMO_MOMENT.fullmatch(text)
    try:
        if not m:
            raise ValueError(text)
        day, clock, seconds = m.groups()
        moment = datetime.strptime(
            f"{day} {clock or '00:00'}{seconds or ':00'}", "%Y-%m-%d %H:%M:%S"
        )
    except ValueError:
        raise InvalidInput(
            f"{what} must be a day like 2026-12-01 or a day and time like 2026-12-01 18:00, in "
            f"UTC; got {shorten(text, 40)!r}."
        ) from None
    if not 2000 <= moment.year <= 9998:
        raise InvalidInput(f"{what} must be a day between the years 2000 and 9998.")
    if end and clock is None:
        moment += timedelta(days=1)  # to the end of that day
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def promo_moment_words(stored, end=False):
    """A stored start or end as the owner reads it, UTC: '2026-12-01 18:00', a whole day as
    '2026-12-01' (an end at midnight as 'end of' the day before it)."""
    moment = datetime.fromisoformat(stored.replace("Z", "+00:00"))
    if (moment.hour, moment.minute, moment.second) != (0, 0, 0):
        return moment.strftime("%Y-%m-%d %H:%M")
    if end:
        return "end of " + (moment - timedelta(days=1)).strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d")


def promo_moment_field(stored):
    """A stored start or end as a datetime-local field shows it ('2026-12-01T18:00'), '' for
    none."""
    return stored[:16] if stored else ""


def _promo_count(text, what):
    """A limit as typed: a whole number from 1, or None for '' (no limit)."""
    text = str(text or "").strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,7}", text) or not 1 <= int(text) <= PROMO_MAX_USES:
        raise InvalidInput(
            f"{what} must be a whole number from 1 to {PROMO_MAX_USES} (empty: no limit); got "
            f"{shorten(text, 20)!r}."
        )
    return int(text)


def _promo_value(kind, text):
    """The code's value as typed: a whole percentage from 1 to 99, or an amount in EUR ('5',
    '5.50', '5,50') as cents."""
    text = str(text or "").strip()
    if kind == "percent":
        number = text.removesuffix("%").strip()
        if not re.fullmatch(r"[0-9]{1,3}", number) or not 1 <= int(number) <= 99:
            raise InvalidInput(
                f"The percentage must be a whole number from 1 to 99; got {shorten(text, 20)!r}."
            )
        return int(number)
    try:
        return parse_eur(text)
    except InvalidInput as e:
        raise InvalidInput(f"The amount off {e}.") from None


def _promo_ids(conn, given, table, what):
    """Products or cities a code is limited to, as JSON (None: all of them): ids, or names (any
    case), in a list or comma-separated; each must exist."""
    if given is None or isinstance(given, str):
        given = [part for part in str(given or "").split(",")]
    names = [str(part).strip() for part in given if str(part).strip()]
    ids = []
    for name in names:
        if re.fullmatch(r"[0-9]{1,18}", name):
            row = conn.execute(f"SELECT id FROM {table} WHERE id = ?", (int(name),)).fetchone()
        else:
            row = conn.execute(
                f"SELECT id FROM {table} WHERE name = ? COLLATE NOCASE", (name,)
            ).fetchone()
        if row is None:
            raise InvalidInput(f"There is no {what} {shorten(name, 64)!r} (give its name or id).")
        if row["id"] not in ids:
            ids.append(row["id"])
    return json.dumps(sorted(ids)) if ids else None


def clean_promo_fields(conn, fields, old=None):
    """The promo_codes columns for fields as the owner typed them (PROMO_FIELDS; texts, products
    and cities also as lists), over the code `old` (a row; None: a new code, whose missing fields
    are empty). A field left out keeps the old value; '' empties it. InvalidInput says what is
    wrong."""
    unknown = set(fields) - set(PROMO_FIELDS)
    if unknown:
        raise InvalidInput(f"Unknown field {sorted(unknown)[0]!r}.")
    new = {}
    if "code" in fields or old is None:
        code = str(fields.get("code") or "").strip()
        if not PROMO_CODE.fullmatch(code):
            raise InvalidInput(
                "A code is 3 to 32 letters (A to Z), digits, - or _, like SPRING10; got "
                f"{shorten(code, 40)!r}."
            )
        new["code"] = code
    if "kind" in fields or old is None:
        if fields.get("kind") not in PROMO_KIND_WORDS:
            raise InvalidInput("Choose what the code takes off: a percentage or an amount.")
        new["kind"] = fields["kind"]
    kind = new.get("kind", old and old["kind"])
    if "value" in fields or old is None:
        new["value"] = _promo_value(kind, fields.get("value"))
    elif kind != old["kind"]:
        raise InvalidInput("Give the new value with the new kind (a percentage or an amount).")
    if "min_total" in fields or old is None:
        try:
            new["min_total_cents"] = parse_eur(fields.get("min_total") or "0", minimum=0)
        except InvalidInput as e:
            raise InvalidInput(f"The minimum basket {e}.") from None
    if "starts" in fields or old is None:
        new["starts_at"] = promo_moment(fields.get("starts"), "The start")
    if "ends" in fields or old is None:
        new["ends_at"] = promo_moment(fields.get("ends"), "The end", end=True)
    for key, what in (
        ("max_uses", "The uses in all"),
        ("max_uses_per_user", "The uses per shopper"),
    ):
        if key in fields or old is None:
            new[key] = _promo_count(fields.get(key), what)
    for key, column, table, what in PROMO_SCOPES:
        if key in fields or old is None:
            new[column] = _promo_ids(conn, fields.get(key), table, what)
    if "note" in fields or old is None:
        new["note"] = clean_text(fields.get("note"), "The note", max_len=200, required=False)
    starts = new.get("starts_at", old and old["starts_at"])
    ends = new.get("ends_at", old and old["ends_at"])
    if starts and ends and starts >= ends:
        raise InvalidInput(
            f"The end ({promo_moment_words(ends, end=True)} UTC) must come after the start "
            f"({promo_moment_words(starts)} UTC)."
        )
    return new


def _promo_names(conn, stored, table):
    """The names of a scope's ids (a JSON list), by id; an id gone from the table as #id."""
    ids = json.loads(stored)
    found = dict(
        conn.execute(
            f"SELECT id, name FROM {table} WHERE id IN ({', '.join('?' for _ in ids)})", ids
        ).fetchall()
    )
    return [found.get(i, f"#{i}") for i in ids]


def promo_terms(conn, promo):
    """A code's terms as the owner reads them: {value, minimum, period, products, cities, limits}
    (each a short English text)."""
    if promo["kind"] == "percent":
        value = f"{promo['value']}% off"
    else:
        value = f"{fmt_eur(promo['value'])} off"
    starts, ends = promo["starts_at"], promo["ends_at"]
    if starts and ends:
        period = f"{promo_moment_words(starts)} to {promo_moment_words(ends, end=True)} UTC"
    elif starts:
        period = f"from {promo_moment_words(starts)} UTC"
    elif ends:
        period = f"until {promo_moment_words(ends, end=True)} UTC"
    else:
        period = "no dates"
    scope = {}
    for key, column, table, _ in PROMO_SCOPES:
        stored = promo[column]
        scope[key] = ", ".join(_promo_names(conn, stored, table)) if stored else f"all {key}"
    limits = [
        f"{promo['max_uses']} in all" if promo["max_uses"] else "no limit in all",
        f"{promo['max_uses_per_user']} per shopper"
        if promo["max_uses_per_user"]
        else "no limit per shopper",
    ]
    minimum = promo["min_total_cents"]
    return {
        "value": value,
        "minimum": f"basket from {fmt_eur(minimum)}" if minimum else "any basket",
        "period": period,
        **scope,
        "limits": ", ".join(limits),
    }


def promo_terms_words(conn, promo):
    """A code's terms in one line, for the audit log and `shop.py promo list`."""
    terms = promo_terms(conn, promo)
    return "; ".join(
        terms[k] for k in ("value", "minimum", "period", "products", "cities", "limits")
    )


_PROMO_COUNTS = (
    "SELECT p.*, "
    "(SELECT count(*) FROM orders o WHERE o.promo_id = p.id AND o.status = 'paid') AS uses_paid, "
    "(SELECT count(*) FROM orders o WHERE o.promo_id = p.id AND o.status = 'pending') "
    "AS uses_reserved, "
    "(SELECT coalesce(sum(o.discount_cents), 0) FROM orders o WHERE o.promo_id = p.id "
    "AND o.status = 'paid') AS discount_paid_cents "
    "FROM promo_codes p"
)


def _promo_with_uses(conn, row, now):
    """A promo_codes row with its uses (paid, reserved by open invoices, left: None for no limit),
    the discount its paid orders got, its state now and its terms in words, as a dict."""
    promo = dict(row)
    used = promo["uses_paid"] + promo["uses_reserved"]
    promo["uses_left"] = None if promo["max_uses"] is None else max(0, promo["max_uses"] - used)
    if not promo["is_active"]:
        promo["state"] = "paused"
    elif promo["starts_at"] and now < promo["starts_at"]:
        promo["state"] = "not started"
    elif promo["ends_at"] and now >= promo["ends_at"]:
        promo["state"] = "ended"
    elif promo["uses_left"] == 0:
        promo["state"] = "used up"
    else:
        promo["state"] = "active"
    promo["terms"] = promo_terms(conn, row)
    return promo


def list_promo_codes(conn):
    """Every discount code, newest first, with its uses and state (_promo_with_uses)."""
    now = now_iso()
    rows = conn.execute(f"{_PROMO_COUNTS} ORDER BY p.id DESC").fetchall()
    return [_promo_with_uses(conn, row, now) for row in rows]


def get_promo_code(conn, promo_id):
    """One discount code with its uses and state (_promo_with_uses); NotFound when there is none."""
    row = conn.execute(f"{_PROMO_COUNTS} WHERE p.id = ?", (promo_id,)).fetchone()
    if row is None:
        raise NotFound("No such discount code.")
    return _promo_with_uses(conn, row, now_iso())


def find_promo_id(conn, code):
    """The id of the code as typed (any case); InvalidInput when there is none."""
    promo = find_promo_code(conn, code)
    if promo is None:
        raise InvalidInput(f"There is no discount code {shorten(str(code or ''), 40)!r}.")
    return promo["id"]


def find_promo_orders(conn, promo_id, limit=20):
    """The newest orders with a code, as find_orders lists them."""
    return conn.execute(
        "SELECT o.*, u.first_name, u.username, p.code AS promo_code, "
        "(SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items "
        "FROM orders o JOIN users u ON u.id = o.user_id JOIN promo_codes p ON p.id = o.promo_id "
        f"WHERE o.promo_id = ? ORDER BY o.id DESC LIMIT {int(limit)}",
        (promo_id,),
    ).fetchall()


def promo_scope_choices(conn):
    """What a code may be limited to, for the admin's form: {"products": [(id, name)], "cities":
    [(id, name)]}, by name."""
    return {
        table: [tuple(r) for r in conn.execute(f"SELECT id, name FROM {table} ORDER BY name")]
        for table in ("products", "cities")
    }


def _promo_clash(conn, code, promo_id):
    clash = conn.execute(
        "SELECT code FROM promo_codes WHERE code = ? AND id IS NOT ?", (code, promo_id)
    ).fetchone()
    if clash:
        raise InvalidInput(
            f"There is already a code {clash['code']} (codes are the same in any case)."
        )


def create_promo_code(conn, fields, remote=None):
    """A new discount code from fields as the owner typed them (clean_promo_fields), active;
    returns its id. InvalidInput says what is wrong, and nothing is stored."""
    with transaction(conn):
        new = clean_promo_fields(conn, fields)
        _promo_clash(conn, new["code"], None)
        now = now_iso()
        new.update(is_active=1, created_at=now, updated_at=now)
        promo_id = conn.execute(
            f"INSERT INTO promo_codes({', '.join(new)}) VALUES ({', '.join('?' for _ in new)})",
            tuple(new.values()),
        ).lastrowid
        promo = promo_by_id(conn, promo_id)
        audit(
            conn,
            "promo code added",
            f"#{promo_id} {promo['code']}: {promo_terms_words(conn, promo)}",
            remote,
        )
        return promo_id


def update_promo_code(conn, promo_id, fields, remote=None):
    """Change a code: the fields given (clean_promo_fields), the others as they are. Everything may
    change once it has been used (orders keep what they were given) but its text, but for its
    case: orders show the code they were given by it. Returns what changed, in words ('' for
    nothing). InvalidInput says what is wrong, and nothing changes."""
    with transaction(conn):
        old = promo_by_id(conn, promo_id)
        if old is None:
            raise NotFound("No such discount code.")
        new = clean_promo_fields(conn, fields, old)
        new = {k: v for k, v in new.items() if v != old[k]}
        if "code" in new:
            _promo_clash(conn, new["code"], promo_id)
            given = conn.execute("SELECT 1 FROM orders WHERE promo_id = ? LIMIT 1", (promo_id,))
            if new["code"].lower() != old["code"].lower() and given.fetchone():
                raise InvalidInput(
                    f"The code {old['code']} has been used, and its orders show it by that "
                    "name, so it keeps it. To give shoppers another code, add that one and "
                    "pause this one."
                )
        if not new:
            return ""
        conn.execute(
            f"UPDATE promo_codes SET {', '.join(f'{k} = ?' for k in new)}, updated_at = ? "
            "WHERE id = ?",
            (*new.values(), now_iso(), promo_id),
        )
        changes = "; ".join(f"{k}: {old[k]!r} -> {v!r}" for k, v in new.items())
        audit(conn, "promo code changed", f"#{promo_id} {old['code']}: {changes}", remote)
        return changes


def set_promo_active(conn, promo_id, active, remote=None):
    """Pause (active False) or resume a code; returns whether that changed anything. Open invoices
    with the code keep their price; a paused code is refused at checkout."""
    with transaction(conn):
        promo = promo_by_id(conn, promo_id)
        if promo is None:
            raise NotFound("No such discount code.")
        if bool(promo["is_active"]) == bool(active):
            return False
        conn.execute(
            "UPDATE promo_codes SET is_active = ?, updated_at = ? WHERE id = ?",
            (int(bool(active)), now_iso(), promo_id),
        )
        action = "promo code resumed" if active else "promo code paused"
        audit(conn, action, f"#{promo_id} {promo['code']}", remote)
        return True


# Orders, payments, users

# The providers whose payments are Telegram Stars (the ones refunded in kind).


def refund_order(conn, order_id, reason, remote=None):
    """Refund a paid order to its buyer's balance; the order becomes 'refunded'. The goods were
    delivered. An order paid in Stars is refunded in Stars (request_owner_star_refund) instead."""
    reason = clean_text(reason, "The reason", max_len=200)
    with transaction(conn):
        order = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        if order is None:
            raise NotFound("No such order.")
        if order["payment_method"] == "stars":
            raise InvalidInput(
                f"Order #{order_id} was paid in Telegram Stars, so it is refunded in Stars (with "
                "“Refund in Stars”), never to the balance."
            )
        if order["status"] != "paid":
            raise InvalidInput(
                f"Order #{order_id} is {order['status']}; only paid orders can be refunded."
            )
        conn.execute("UPDATE orders SET status = 'refunded' WHERE id = ?", (order_id,))
        post_ledger(
            conn,
            order["user_id"],
            order["total_cents"],
            "refund",
            f"order:{order_id}:refund",
            reason=f"Refund of order #{order_id}: {reason}",
            order_id=order_id,
        )
        tell(
            conn,
            order["user_id"],
            N_(
                "↩️ <b>Order #{order}</b> was refunded: {amount} is back on your balance. "
                "Reason: {reason}. Balance: {balance}."
            ),
            {
                "order": order_id,
                "amount": Money(order["total_cents"]),
                "reason": esc(reason),
                "balance": _balance(conn, order["user_id"]),
            },
            order_id=order_id,
        )
        audit(
            conn,
            "order refunded",
            f"#{order_id} {fmt_eur(order['total_cents'])} to user {order['user_id']}: {reason}",
            remote,
        )


def set_user_banned(conn, user_id, banned, remote=None):
    set_banned(conn, user_id, banned)
    with transaction(conn):
        audit(conn, "user banned" if banned else "user unbanned", f"user {user_id}", remote)


def admin_adjust_balance(conn, user_id, amount, reason, remote=None):
    """An owner's balance change from the admin: amount like '12.50' or '-5'."""
    amount = str(amount or "").strip()
    try:
        cents = -parse_eur(amount[1:]) if amount.startswith("-") else parse_eur(amount.lstrip("+"))
    except InvalidInput as e:
        raise InvalidInput(f"The amount {e}.") from None
    reason = clean_text(reason, "The reason", max_len=200)
    with transaction(conn):
        balance = get_user(conn, user_id)["balance_cents"]
        if balance + cents < 0:
            raise InvalidInput(f"The balance is only {fmt_eur(balance)}; it cannot go below zero.")
        post_ledger(
            conn, user_id, cents, "adjustment", f"adjustment:{secrets.token_hex(8)}", reason=reason
        )
        tell(
            conn,
            user_id,
            N_("💰 Your balance was credited {amount}: {reason}. Balance: {balance}.")
            if cents > 0
            else N_("💰 Your balance was debited {amount}: {reason}. Balance: {balance}."),
            {
                "amount": Money(abs(cents)),
                "reason": esc(reason),
                "balance": _balance(conn, user_id),
            },
        )
        audit(conn, "balance adjusted", f"user {user_id} {fmt_eur(cents)}: {reason}", remote)
    return cents


# Broadcasts: the owner's message, in Telegram HTML (parse_tg_html), to every shopper the bot can
# reach: not banned, and not refused by Telegram with a 403 (they blocked the bot or deleted their
# account) since they last wrote to it. The confirmation page and the send count them alike.
_BROADCAST_AUDIENCE = (
    "FROM users WHERE is_banned = 0 AND id > 0 AND id NOT IN (SELECT o.chat_id FROM outbox o "
    "JOIN users b ON b.id = o.chat_id WHERE o.status = 'failed' AND o.last_error LIKE '403%' "
    "AND o.created_at >= b.last_seen_at)"
)


# Characters of HTML an owner may type; the tags do not count toward Telegram's limits.
BROADCAST_HTML_LIMIT = 20000


class AudienceChanged(InvalidInput):
    """The number of shoppers this broadcast reaches changed since you looked: check it and confirm
    again."""

    status = 409


NOBODY_TO_SEND_TO = (
    "There is nobody to send it to: no shopper the bot can reach (not banned and not blocking "
    "the bot) yet."
)


def broadcast_message(text, photo=None):
    """The owner's broadcast read as Telegram will read it: (its TgNode tree, the Telegram HTML to
    send, its length as Telegram counts it). InvalidInput says what is wrong: a tag Telegram
    refuses (see parse_tg_html), no text, or more than 4096 characters (1024 under a photo) once
    the tags are gone."""
    text = clean_text(text, "The message", max_len=BROADCAST_HTML_LIMIT, multiline=True)
    root = parse_tg_html(text)
    plain = tg_plain(root).strip()
    if not plain:
        raise InvalidInput("The message has tags but no text.")
    limit = CAPTION_LIMIT if photo else TEXT_LIMIT
    length = tg_len(plain)
    if length > limit:
        raise InvalidInput(
            f"The message is {length} characters long as Telegram counts them (the tags do not "
            f"count, an emoji counts as 2); the limit is {limit}"
            f"{' under a photo' if photo else ''}."
        )
    return root, tg_html(root), length


def broadcast_photo(media_dir, photo):
    """The outbox's reference to a broadcast's photo, stored already (its public name), or None."""
    if not photo:
        return None
    try:
        path = media_path(media_dir, f"public:{photo}")
    except ValueError:
        raise InvalidInput("That photo is not one this shop stored; choose it again.") from None
    if not path.exists():
        raise InvalidInput("That photo is gone; choose it again.")
    return f"public:{photo}"


def broadcast_audience(conn):
    """Who a broadcast would reach now: {recipients, shoppers, banned, blocked}."""
    recipients = conn.execute(f"SELECT count(*) {_BROADCAST_AUDIENCE}").fetchone()[0]
    shoppers, banned = conn.execute(
        "SELECT count(*), coalesce(sum(is_banned), 0) FROM users WHERE id > 0"
    ).fetchone()
    return {
        "recipients": recipients,
        "shoppers": shoppers,
        "banned": banned,
        "blocked": shoppers - banned - recipients,
    }


def start_broadcast(conn, text, photo=None, media_dir=None, remote=None, *, expected=None):
    """Queue the owner's message (Telegram HTML, see broadcast_message) and optional photo (the name
    store_media gave it) to every shopper the bot can reach; returns the broadcast's id. expected:
    the number of recipients the owner confirmed; AudienceChanged if it is not the number now.
    Nothing is queued when there is nobody to send to."""
    root, message, _ = broadcast_message(text, photo)
    ref = broadcast_photo(media_dir, photo)
    with transaction(conn):
        users = [r[0] for r in conn.execute(f"SELECT id {_BROADCAST_AUDIENCE} ORDER BY id")]
        if not users:
            raise InvalidInput(NOBODY_TO_SEND_TO)
        if expected is not None and expected != len(users):
            raise AudienceChanged()
        now = now_iso()
        broadcast_id = conn.execute(
            "INSERT INTO broadcasts(text, photo, recipients, created_at) VALUES (?, ?, ?, ?)",
            (message, photo, len(users), now),
        ).lastrowid
        conn.executemany(
            "INSERT INTO outbox(chat_id, text, photo, broadcast_id, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(u, message, ref, broadcast_id, now, now) for u in users],
        )
        conn.after_commit.append(outbox_ready.set)
        audit(
            conn,
            "broadcast started",
            f"#{broadcast_id} to {len(users)} shoppers: {tg_plain(root)[:80]}",
            remote,
        )
    return broadcast_id


def send_broadcast_test(conn, text, photo, media_dir, owners, remote=None):
    """Queue the broadcast to the owners' own chats (ADMIN_IDS) only, through the outbox as the
    real one goes; returns how many chats. InvalidInput when no owner is set."""
    root, message, _ = broadcast_message(text, photo)
    ref = broadcast_photo(media_dir, photo)
    owners = [o for o in owners if o > 0]
    if not owners:
        raise InvalidInput(
            "No owner chat is set, so there is nowhere to send a test: put your Telegram id "
            "(👤 Profile in the bot shows it) in ADMIN_IDS in .env and restart the shop."
        )
    with transaction(conn):
        for owner in owners:
            enqueue_message(conn, owner, message, photo=ref)
        audit(
            conn,
            "broadcast test sent",
            f"to {', '.join(map(str, owners))}: {tg_plain(root)[:80]}",
            remote,
        )
    return len(owners)


def broadcast_progress(conn, broadcast_id):
    row = conn.execute("SELECT * FROM broadcasts WHERE id = ?", (broadcast_id,)).fetchone()
    if row is None:
        raise NotFound("No such broadcast.")
    counts = dict(
        conn.execute(
            "SELECT status, count(*) FROM outbox WHERE broadcast_id = ? GROUP BY status",
            (broadcast_id,),
        ).fetchall()
    )
    return {
        "id": broadcast_id,
        "text": row["text"],
        "total": row["recipients"],
        "sent": counts.get("sent", 0),
        "failed": counts.get("failed", 0),
        "left": counts.get("pending", 0),
        "created_at": row["created_at"],
    }


def backup_database(conn, path):
    """A consistent copy of the live database (SQLite's online backup), checked before it is
    kept."""
    tmp = Path(f"{path}.part")
    target = sqlite3.connect(tmp)
    try:
        conn.backup(target)
        if target.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise DatabaseError("the backup copy failed its integrity check")
    finally:
        target.close()
    os.replace(tmp, path)
    return Path(path)


def find_delivery_seconds(conn, since):
    """Seconds from an order's payment (by balance or by its provider) to the first message of its
    goods sent, for the orders paid since a day: every paid order, the bot's and the Mini App's
    alike. Over the last 1000 paid orders (orders_status), so the page costs the same in a big
    shop; SQLite works out the seconds (parsing 2000 timestamps with strptime took 80 ms)."""
    return [
        seconds
        for (seconds,) in conn.execute(
            "SELECT (julianday(sent_at) - julianday(paid_at)) * 86400.0 FROM (SELECT o.paid_at, "
            "(SELECT min(sent_at) FROM outbox x WHERE x.order_id = o.id "
            "AND x.status = 'sent' AND x.sent_at >= o.paid_at) AS sent_at "
            "FROM orders o WHERE o.status = 'paid' ORDER BY o.id DESC LIMIT 1000) "
            "WHERE paid_at >= ? AND sent_at IS NOT NULL",
            (since,),
        )
    ]


# Stock the owner should see to, over indexes that hold only what is on sale (or, for "was it ever
# here", one seek per place and product), so they cost the catalog's size, never the sales'. Each
# row carries the count of all rows (total) since the dashboard shows only the first DASHBOARD_ROWS.
_PLACE_ORDER = (
    "c.position, c.name COLLATE NOCASE, d.position, d.name COLLATE NOCASE, p.name COLLATE NOCASE"
)
# When the owners were told a place ran low (note_low_stock), or NULL.
_NOTED_AT = (
    "(SELECT n.noted_at FROM low_stock_notes n WHERE n.product_id = p.id "
    "AND n.district_id = d.id) AS noted_at"
)
# Products with 1 to ? units available in a place, the fewest first.
_LOW_STOCK = (
    "SELECT p.id, p.name, c.name AS city, d.name AS district, count(*) AS available, "
    f"count(*) OVER () AS total, {_NOTED_AT} FROM stock_units u {_AVAILABLE} GROUP BY d.id, p.id "
    f"HAVING available <= ? ORDER BY available, {_PLACE_ORDER} LIMIT ?"
)
# Active products with nothing available in a visible place where they had units (sold or held by
# an unpaid order; units the owner deleted unsold do not count), with how many are held.
_SOLD_OUT = (
    "SELECT p.id, p.name, c.name AS city, d.name AS district, "
    "(SELECT count(*) FROM stock_units r INDEXED BY stock_units_product WHERE r.product_id = p.id "
    "AND r.status = 'reserved' AND r.district_id = d.id) AS reserved, count(*) OVER () AS total, "
    f"{_NOTED_AT} FROM cities c JOIN districts d ON d.city_id = c.id AND d.is_hidden = 0 "
    "JOIN products p ON p.is_active = 1 WHERE c.is_hidden = 0 "
    "AND NOT EXISTS (SELECT 1 FROM stock_units a INDEXED BY stock_units_available "
    "WHERE a.district_id = d.id AND a.product_id = p.id AND a.status = 'available') "
    "AND EXISTS (SELECT 1 FROM stock_units e INDEXED BY stock_units_dedupe "
    "WHERE e.product_id = p.id AND e.district_id = d.id) "
    f"ORDER BY {_PLACE_ORDER} LIMIT ?"
)
DASHBOARD_ROWS = 20


def find_stock_alerts(conn, threshold, limit=DASHBOARD_ROWS):
    """(low, sold out): a place's products with 1 to `threshold` units available (none when the
    threshold is 0), and those sold out there; at most `limit` rows each, every row with the
    count of all (total)."""
    low = conn.execute(_LOW_STOCK, (threshold, limit)).fetchall() if threshold > 0 else []
    return low, conn.execute(_SOLD_OUT, (limit,)).fetchall()


# The ways of paying the dashboard splits revenue by, in its order.
REVENUE_METHODS = ("balance", "crypto", "stars")


def _revenue_by_method_of(conn, days, per_day):
    """revenue_by_method for some days, from the database: orders paid in crypto or Stars are found
    through their payments, over the index of payments by when they became final (from the day
    before the first, so an order paid a moment after its payment still counts, with no end, so
    one whose payment moved later does too); what daily_sales has left over was paid from the
    balance. Costs the payments made since the first day."""
    found = {day: {m: [0, 0, 0] for m in REVENUE_METHODS} for day in days}
    since = datetime.strptime(min(days), "%Y-%m-%d") - timedelta(days=1)
    for day, method, orders, cents, stars in conn.execute(
        "SELECT substr(o.paid_at, 1, 10), o.payment_method, count(*), sum(o.total_cents), "
        "coalesce(sum((SELECT CAST(s.pay_amount AS INTEGER) FROM payments s "
        "WHERE s.order_id = o.id AND s.charge_id IS NOT NULL AND o.payment_method = 'stars' "
        "ORDER BY s.id DESC LIMIT 1)), 0) FROM orders o "
        "WHERE o.id IN (SELECT order_id FROM payments WHERE final_at >= ? "
        "AND order_id IS NOT NULL) AND o.status = 'paid' AND o.paid_at >= ? "
        "AND o.payment_method != 'balance' GROUP BY 1, 2",
        (since.strftime("%Y-%m-%d"), min(days)),
    ):
        if day in found and method in found[day]:
            found[day][method] = [orders, cents, stars]
    for day, methods in found.items():
        orders, cents = per_day.get(day, (0, 0))
        methods["balance"] = [
            orders - sum(m[0] for m in methods.values()),
            cents - sum(m[1] for m in methods.values()),
            0,
        ]
    return found


def revenue_by_method(conn, days, per_day, memo=None):
    """Paid orders and revenue per way of paying, for each of `days` (YYYY-MM-DD, oldest first,
    the last today), counted as per_day ({day: (orders, cents)} from daily_sales) counts them:
    orders paid that UTC day and not refunded since. Returns {day: {method: [orders, cents,
    stars]}}, stars being the Stars the orders paid in Telegram Stars took.

    memo (a dict the caller keeps between calls) holds the days before today as they were found,
    with their daily_sales totals: a day is read again only when its totals changed (an order of
    it was refunded), so a dashboard costs today's payments, not the month's."""
    memo = {} if memo is None else memo
    found, needed = {}, []
    for day in days:
        kept = memo.get(day)
        if day != days[-1] and kept and kept[0] == per_day.get(day, (0, 0)):
            found[day] = kept[1]
        else:
            needed.append(day)
    if needed:
        found.update(_revenue_by_method_of(conn, needed, per_day))
    for day in set(memo) - set(days[:-1]):
        memo.pop(day, None)
    for day in days[:-1]:
        memo[day] = (per_day.get(day, (0, 0)), found[day])
    return found


def _methods_over(by_method, days):
    """revenue_by_method's rows summed over some days: {method: {orders, revenue_cents, stars}}."""
    return {
        m: {
            key: sum(by_method[d][m][i] for d in days)
            for i, key in enumerate(("orders", "revenue_cents", "stars"))
        }
        for m in REVENUE_METHODS
    }


def dashboard_stats(conn, memo=None):
    """What the owner sees first: revenue (in all and per way of paying), orders, open invoices,
    stock, payments, deliveries. memo: kept between calls for revenue_by_method."""
    now = datetime.now(timezone.utc)
    days = [(now - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(29, -1, -1)]
    since30 = days[0]
    # Per-day totals kept by triggers (schema.sql): 30 rows, however big the shop.
    per_day = {
        d: (n, cents)
        for d, n, cents in conn.execute(
            "SELECT day, orders, revenue_cents FROM daily_sales WHERE day >= ?", (since30,)
        )
    }
    by_method = revenue_by_method(conn, days, per_day, memo)
    revenue = {}
    for label, span in (("today", 1), ("7 days", 7), ("30 days", 30)):
        picked = [per_day.get(d, (0, 0)) for d in days[-span:]]
        revenue[label] = {
            "orders": sum(n for n, _ in picked),
            "revenue_cents": sum(c for _, c in picked),
            "methods": _methods_over(by_method, days[-span:]),
        }
    outcomes = {
        status: n
        for status, n in conn.execute(
            "SELECT status, sum(payments) FROM daily_payments WHERE day >= ? AND NOT is_child "
            "GROUP BY status HAVING sum(payments) > 0",
            (since30,),
        )
    }
    sources = {
        source or None: n
        for source, n in conn.execute(
            "SELECT source, sum(payments) FROM daily_payments WHERE day >= ? "
            "AND status IN ('finished', 'partially_paid') GROUP BY source "
            "HAVING sum(payments) > 0",
            (since30,),
        )
    }
    latencies = find_delivery_seconds(conn, since30)
    # The status IN (...) term lets SQLite use the partial index payments_open (only unpaid
    # invoices); without it this counted by scanning every payment the shop ever had.
    open_invoices = conn.execute(
        "SELECT count(*) FROM payments WHERE status IN ('waiting', 'confirming', "
        "'confirmed', 'sending') AND status = 'waiting' AND expires_at > ? "
        "AND parent_id IS NULL",
        (now_iso(),),
    ).fetchone()[0]
    threshold = low_stock_threshold(conn)
    low_stock, sold_out = find_stock_alerts(conn, threshold)
    return {
        "revenue": revenue,
        "per_day": [(d, *per_day.get(d, (0, 0))) for d in days],  # (day, orders, cents)
        "outcomes": outcomes,
        "sources": sources,
        "open_invoices": open_invoices,
        "low_stock": low_stock,
        "low_stock_threshold": threshold,
        "sold_out": sold_out,
        "delivery_median": percentile(latencies, 0.5),
        "delivery_worst": max(latencies) if latencies else None,
        "deliveries": len(latencies),
        "outbox": outbox_counts(conn),
    }


# The admin's pages: what they read, and the actions they record


def record_audit(conn, action, details="", remote=None):
    """An admin action that changes nothing else, recorded in a transaction of its own."""
    with transaction(conn):
        audit(conn, action, details, remote)


def set_admin_flash(conn, token_hash, message):
    """The message a session's next page shows once."""
    with transaction(conn):
        conn.execute(
            "UPDATE admin_sessions SET flash = ? WHERE token_hash = ?",
            (message, token_hash),
        )


def clear_admin_flash(conn, token_hash):
    with transaction(conn):
        conn.execute("UPDATE admin_sessions SET flash = NULL WHERE token_hash = ?", (token_hash,))


def find_live_admin_sessions(conn):
    """The sessions not yet idle or too old, the most recently used first."""
    return conn.execute(
        "SELECT * FROM admin_sessions WHERE last_seen_at >= ? AND created_at >= ? "
        "ORDER BY last_seen_at DESC",
        (now_iso(-ADMIN_IDLE_SECONDS), now_iso(-ADMIN_MAX_SECONDS)),
    ).fetchall()


# The catalog page's products: each with its units on sale.
CATALOG_PRODUCTS = (
    "SELECT p.*, (SELECT count(*) FROM stock_units u WHERE u.product_id = p.id "
    "AND u.status = 'available') AS available FROM products p"
)


def find_catalog_stock(conn, product_id=None):
    """Units on sale per product and place, in the shop's order of places: {product id: [rows
    of city, district, available]} (of one product when product_id is given)."""
    rows = conn.execute(
        "SELECT u.product_id, c.name AS city, d.name AS district, count(*) AS available "
        "FROM stock_units u JOIN districts d ON d.id = u.district_id "
        "JOIN cities c ON c.id = d.city_id WHERE u.status = 'available' "
        "AND (? IS NULL OR u.product_id = ?) GROUP BY u.product_id, d.id "
        "ORDER BY c.position, c.name COLLATE NOCASE, d.position, d.name COLLATE NOCASE",
        (product_id, product_id),
    ).fetchall()
    stock = {}
    for row in rows:
        stock.setdefault(row["product_id"], []).append(row)
    return stock


def find_catalog(conn):
    """Every city, district and product, hidden or not, as the catalog page shows them: each
    place with its units on sale ("available"), each product with its units on sale in all and
    per place ("stock", as find_catalog_stock)."""
    return {
        "cities": conn.execute(
            "SELECT c.*, (SELECT count(*) FROM stock_units u JOIN districts d "
            "ON d.id = u.district_id WHERE d.city_id = c.id AND u.status = 'available') "
            "AS available FROM cities c ORDER BY c.position, c.name COLLATE NOCASE"
        ).fetchall(),
        "districts": conn.execute(
            "SELECT d.*, (SELECT count(*) FROM stock_units u WHERE u.district_id = d.id "
            "AND u.status = 'available') AS available FROM districts d "
            "ORDER BY d.position, d.name COLLATE NOCASE"
        ).fetchall(),
        "products": conn.execute(CATALOG_PRODUCTS + " ORDER BY p.name COLLATE NOCASE").fetchall(),
        "stock": find_catalog_stock(conn),
    }


def find_catalog_product(conn, product_id):
    """A product as the catalog page lists it (with its units on sale), or None."""
    return conn.execute(CATALOG_PRODUCTS + " WHERE p.id = ?", (product_id,)).fetchone()


def find_product(conn, product_id):
    """A product's row, or None."""
    return conn.execute("SELECT * FROM products WHERE id = ?", (product_id,)).fetchone()


def find_product_stock(conn, product_id):
    """Per district (all, in the shop's order): a product's units available, reserved, sold."""
    return conn.execute(
        "SELECT d.id, d.name, c.name AS city, sum(u.status = 'available') AS available, "
        "sum(u.status = 'reserved') AS reserved, sum(u.status = 'sold') AS sold "
        "FROM districts d "
        "JOIN cities c ON c.id = d.city_id LEFT JOIN stock_units u ON u.district_id = d.id "
        "AND u.product_id = ? "
        "GROUP BY d.id ORDER BY c.position, c.name COLLATE NOCASE, d.position, "
        "d.name COLLATE NOCASE",
        (product_id,),
    ).fetchall()


def find_product_units(conn, product_id, before, limit):
    """A page of a product's units, newest first, below the id `before`."""
    return conn.execute(
        "SELECT u.*, d.name AS district, c.name AS city FROM stock_units u "
        "JOIN districts d ON d.id = u.district_id JOIN cities c ON c.id = d.city_id "
        f"WHERE u.product_id = ? AND u.id < ? ORDER BY u.id DESC LIMIT {int(limit)}",
        (product_id, before),
    ).fetchall()


def find_unit_product_id(conn, unit_id):
    """The product a unit belongs to, or None when there is no such unit."""
    row = conn.execute("SELECT product_id FROM stock_units WHERE id = ?", (unit_id,)).fetchone()
    return row[0] if row else None


def find_orders(conn, filters, before, limit):
    """A page of orders, newest first, below the id `before`, by the admin's filters: status,
    method (how it was paid: balance, crypto or stars), from and to (days, YYYY-MM-DD, both
    included) and q (an order or user id, or a username); an empty filter is no filter."""
    where, args = ["o.id < ?"], [before]
    for column in ("status", "method"):
        if filters.get(column):
            where.append(f"o.{'payment_method' if column == 'method' else column} = ?")
            args.append(filters[column])
    if filters["from"]:
        where.append("o.created_at >= ?")
        args.append(filters["from"])
    if filters["to"]:
        where.append("o.created_at < ?")
        until = datetime.strptime(filters["to"], "%Y-%m-%d") + timedelta(days=1)
        args.append(until.strftime("%Y-%m-%d"))
    search = filters["q"]
    if search:
        digits = search.lstrip("#@")
        if re.fullmatch(r"[0-9]{1,18}", digits):
            where.append("(o.id = ? OR o.user_id = ?)")
            args += [int(digits), int(digits)]
        else:
            where.append("o.user_id IN (SELECT id FROM users WHERE username = ? COLLATE NOCASE)")
            args.append(search.lstrip("@"))
    return conn.execute(
        "SELECT o.*, u.first_name, u.username, p.code AS promo_code, "
        "(SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items "
        "FROM orders o JOIN users u ON u.id = o.user_id "
        f"LEFT JOIN promo_codes p ON p.id = o.promo_id WHERE {' AND '.join(where)} "
        f"ORDER BY o.id DESC LIMIT {int(limit)}",
        args,
    ).fetchall()


def find_order_details(conn, order_id):
    """An order with its buyer's name and its discount code (promo_code), its items (with their
    units), its payments, their IPNs and its messages per status."""
    order = conn.execute(
        "SELECT o.*, u.first_name, u.username, p.code AS promo_code FROM orders o "
        "JOIN users u ON u.id = o.user_id LEFT JOIN promo_codes p ON p.id = o.promo_id "
        "WHERE o.id = ?",
        (order_id,),
    ).fetchone()
    if order is None:
        raise NotFound("No such order.")
    items = conn.execute(
        "SELECT i.*, s.content, s.media, s.status AS unit_status FROM order_items i "
        "JOIN stock_units s ON s.id = i.unit_id WHERE i.order_id = ? ORDER BY i.id",
        (order_id,),
    ).fetchall()
    payments = conn.execute(
        "SELECT * FROM payments WHERE order_id = ? ORDER BY id", (order_id,)
    ).fetchall()
    ipns = conn.execute(
        "SELECT * FROM ipn_events WHERE provider_id IN (SELECT provider_id FROM payments "
        "WHERE order_id = ?) ORDER BY id",
        (order_id,),
    ).fetchall()
    messages = conn.execute(
        "SELECT status, count(*) AS n, max(last_error) AS error FROM outbox "
        "WHERE order_id = ? GROUP BY status",
        (order_id,),
    ).fetchall()
    return {
        "order": order,
        "items": items,
        "payments": payments,
        "ipns": ipns,
        "messages": messages,
        # The Stars payment that paid it (the one a refund in Stars gives back), or None.
        "stars_payment": next(
            (p for p in reversed(payments) if p["charge_id"] and p["provider"] in STARS_PROVIDERS),
            None,
        ),
        "star_refunds": conn.execute(
            "SELECT * FROM star_refunds WHERE payment_id IN (SELECT id FROM payments "
            "WHERE order_id = ?) ORDER BY created_at",
            (order_id,),
        ).fetchall(),
    }


def find_star_refund(conn, charge_id):
    """A Stars refund's row (star_refunds), or None."""
    return conn.execute("SELECT * FROM star_refunds WHERE charge_id = ?", (charge_id,)).fetchone()


def resend_order_delivery(conn, order_id, remote=None):
    """Queue an order's delivery again, unless it is still on its way; returns whether it was."""
    order = conn.execute("SELECT user_id FROM orders WHERE id = ?", (order_id,)).fetchone()
    if order is None:
        raise NotFound("No such order.")
    queued = resend_delivery(conn, order["user_id"], order_id)
    with transaction(conn):
        audit(
            conn,
            "delivery re-sent",
            f"order #{order_id}" + ("" if queued else " (already on its way)"),
            remote,
        )
    return queued


def find_payments(conn, status, before, limit, method=None):
    """A page of payments, newest first, below the id `before`; of one status unless it is None,
    and paid one way ('stars' or 'crypto') unless method is None."""
    where, args = ["p.id < ?"], [before]
    if status:
        where.append("p.status = ?")
        args.append(status)
    if method:
        where.append(
            f"p.provider {'IN' if method == 'stars' else 'NOT IN'} (SELECT value FROM json_each(?))"
        )
        args.append(json.dumps(STARS_PROVIDERS))
    return conn.execute(
        "SELECT p.*, u.first_name, u.username FROM payments p JOIN users u ON u.id = p.user_id "
        f"WHERE {' AND '.join(where)} ORDER BY p.id DESC LIMIT {int(limit)}",
        args,
    ).fetchall()


def find_payment_details(conn, payment_id):
    """A payment with its payer's name, its IPNs and the payments made after it (its children)."""
    payment = conn.execute(
        "SELECT p.*, u.first_name, u.username FROM payments p JOIN users u ON u.id = p.user_id "
        "WHERE p.id = ?",
        (payment_id,),
    ).fetchone()
    if payment is None:
        raise NotFound("No such payment.")
    # Webhooks stored before schema 5 name no provider.
    ipns = conn.execute(
        "SELECT * FROM ipn_events WHERE provider_id = ? AND coalesce(provider, ?) = ? ORDER BY id",
        (payment["provider_id"], payment["provider"], payment["provider"]),
    ).fetchall()
    children = conn.execute("SELECT * FROM payments WHERE parent_id = ?", (payment_id,)).fetchall()
    refunds = conn.execute(
        "SELECT * FROM star_refunds WHERE payment_id = ? ORDER BY created_at", (payment_id,)
    ).fetchall()
    return {"payment": payment, "ipns": ipns, "children": children, "star_refunds": refunds}


def find_users(conn, search, before, limit):
    """A page of users, newest first, below the id `before`; search is an id, a username or part
    of a first name ('' for everyone)."""
    where, args = ["id < ?"], [before]
    if re.fullmatch(r"[0-9]{1,18}", search):
        where.append("id = ?")
        args.append(int(search))
    elif search:
        where.append("(username = ? COLLATE NOCASE OR first_name LIKE ? ESCAPE '\\')")
        args += [search, "%" + re.sub(r"([%_\\])", r"\\\1", search) + "%"]
    return conn.execute(
        f"SELECT * FROM users WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT {int(limit)}",
        args,
    ).fetchall()


def find_user_details(conn, user_id):
    """A user with their last 50 orders and payments and last 100 ledger entries."""
    return {
        "user": get_user(conn, user_id),
        "orders": conn.execute(
            "SELECT * FROM orders WHERE user_id = ? ORDER BY id DESC LIMIT 50", (user_id,)
        ).fetchall(),
        "payments": conn.execute(
            "SELECT * FROM payments WHERE user_id = ? ORDER BY id DESC LIMIT 50", (user_id,)
        ).fetchall(),
        "ledger": conn.execute(
            "SELECT * FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT 100", (user_id,)
        ).fetchall(),
        **find_user_referrals(conn, user_id),
    }


def find_user_referrals(conn, user_id):
    """Who brought a user (referrer: a users row or None), the last 100 shoppers they brought
    (referred: each with the credit their first paid order earned, credit_cents and
    credit_order_id, or None), how many in all and the cents all their referrals credited."""
    referred_count, referral_cents = referral_summary(conn, user_id)
    return {
        "referrer": conn.execute(
            "SELECT r.* FROM users u JOIN users r ON r.id = u.referrer_id WHERE u.id = ?",
            (user_id,),
        ).fetchone(),
        "referred": conn.execute(
            "SELECT u.id, u.first_name, u.username, u.referred_at, l.amount_cents AS credit_cents, "
            "l.order_id AS credit_order_id FROM users u LEFT JOIN ledger l "
            "ON l.idempotency_key = 'referral:' || u.id AND l.user_id = u.referrer_id "
            "WHERE u.referrer_id = ? ORDER BY u.referred_at DESC, u.id DESC LIMIT 100",
            (user_id,),
        ).fetchall(),
        "referred_count": referred_count,
        "referral_cents": referral_cents,
    }


def find_broadcasts(conn):
    """The last 10 broadcasts, and who a new one would reach (broadcast_audience)."""
    return {
        "recent": conn.execute("SELECT * FROM broadcasts ORDER BY id DESC LIMIT 10").fetchall(),
        "audience": broadcast_audience(conn),
    }


def find_audit_log(conn, before, limit):
    """A page of the audit log, newest first, below the id `before`."""
    return conn.execute(
        f"SELECT * FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT {int(limit)}", (before,)
    ).fetchall()


ORDERS_CSV_COLUMNS = [
    "order",
    "created_at",
    "paid_at",
    "status",
    "method",
    "total_eur",
    "user_id",
    "username",
    "items",
    "stars",
    "promo_code",
    "discount_eur",
]


PAYMENTS_CSV_COLUMNS = [
    "payment",
    "created_at",
    "final_at",
    "status",
    "method",
    "provider",
    "provider_id",
    "for",
    "order",
    "user_id",
    "price_eur",
    "pay_currency",
    "pay_amount",
    "actually_paid",
    "charge_id",
    "outcome",
]


LEDGER_CSV_COLUMNS = [
    "entry",
    "created_at",
    "user_id",
    "amount_eur",
    "balance_after_eur",
    "kind",
    "reason",
    "order",
    "key",
]


def export_orders(conn):
    """Every order as a CSV row (ORDERS_CSV_COLUMNS), read from `conn` as the rows are used.
    total_eur is what was paid; discount_eur what its discount code (promo_code) took off, 0.00
    without one (the list price is their sum)."""
    rows = conn.execute(
        "SELECT o.id, o.created_at, o.paid_at, o.status, o.payment_method, o.total_cents, "
        "o.user_id, u.username, "
        "(SELECT group_concat(product_name || ' @ ' || place_name, '; ') FROM order_items i "
        "WHERE i.order_id = o.id), "
        "CASE WHEN o.payment_method = 'stars' THEN (SELECT s.pay_amount FROM payments s "
        "WHERE s.order_id = o.id AND s.charge_id IS NOT NULL ORDER BY s.id DESC LIMIT 1) END, "
        "p.code, o.discount_cents "
        "FROM orders o JOIN users u ON u.id = o.user_id "
        "LEFT JOIN promo_codes p ON p.id = o.promo_id ORDER BY o.id"
    )
    return (
        (
            r[0],
            r[1],
            r[2] or "",
            r[3],
            r[4],
            cents_to_str(r[5]),
            r[6],
            r[7] or "",
            r[8] or "",
            r[9] or "",
            r[10] or "",
            cents_to_str(r[11]),
        )
        for r in rows
    )


def export_payments(conn):
    """Every payment as a CSV row (PAYMENTS_CSV_COLUMNS): its method ('stars' or 'crypto') and,
    for Telegram Stars, the charge id a refund needs; read from `conn` as the rows are used."""
    rows = conn.execute(
        "SELECT id, created_at, final_at, status, provider IN (SELECT value FROM json_each(?)), "
        "provider, provider_id, kind, order_id, user_id, price_cents, pay_currency, pay_amount, "
        "actually_paid, charge_id, outcome FROM payments ORDER BY id",
        (json.dumps(STARS_PROVIDERS),),
    )
    return (
        [*r[:2], r[2] or "", r[3], "stars" if r[4] else "crypto", *r[5:8], r[8] or "", r[9]]
        + [cents_to_str(r[10]), r[11], r[12], r[13] or "", r[14] or "", r[15] or ""]
        for r in rows
    )


def export_ledger(conn):
    """Every ledger entry as a CSV row (LEDGER_CSV_COLUMNS), read from `conn` as the rows are
    used."""
    rows = conn.execute(
        "SELECT id, created_at, user_id, amount_cents, balance_after_cents, kind, reason, "
        "order_id, idempotency_key FROM ledger ORDER BY id"
    )
    return (
        (r[0], r[1], r[2], cents_to_str(r[3]), cents_to_str(r[4]), r[5], r[6], r[7] or "", r[8])
        for r in rows
    )


# Payment providers #############################################################

COINS = [
    ("btc", "BTC"),
    ("eth", "ETH"),
    ("ltc", "LTC"),
    ("usdttrc20", "USDT · TRC20"),
    ("usdterc20", "USDT · ERC20"),
    ("usdtbsc", "USDT · BEP20"),
    ("usdtsol", "USDT · SOL"),
    ("usdctrc20", "USDC · TRC20"),
    ("usdcerc20", "USDC · ERC20"),
    ("usdcsol", "USDC · SOL"),
    ("ton", "TON"),
    ("sol", "SOL"),
]


COIN_LABELS = dict(COINS)


# code: (name, network) for the Mini App
COIN_INFO = {
    "btc": ("Bitcoin", "BTC"),
    "eth": ("Ethereum", "ERC20"),
    "ltc": ("Litecoin", "LTC"),
    "usdttrc20": ("Tether USD", "TRC20"),
    "usdterc20": ("Tether USD", "ERC20"),
    "usdtbsc": ("Tether USD", "BEP20"),
    "usdtsol": ("Tether USD", "SOL"),
    "usdctrc20": ("USD Coin", "TRC20"),
    "usdcerc20": ("USD Coin", "ERC20"),
    "usdcsol": ("USD Coin", "SOL"),
    "ton": ("Toncoin", "TON"),
    "sol": ("Solana", "SOL"),
}


COIN_CODES = [code for code, _ in COINS]


URI_SCHEMES = {
    "btc": "bitcoin",
    "ltc": "litecoin",
}  # BIP21-style payment URIs; others get the plain address


def ipn_signature(data, secret, *, js_numbers=True):
    """NOWPayments' x-nowpayments-sig: HMAC-SHA512 of the body with keys sorted at every depth."""
    message = encode_json(data, sort_keys=True, js_numbers=js_numbers).encode("utf-8")
    return hmac.new(secret.strip().encode("utf-8"), message, hashlib.sha512).hexdigest()


def verify_ipn(body, signature, secret):
    """Parse an IPN body and check its signature. Returns (data, verdict); data is None if unusable.

    The provider signs JSON.stringify of the sorted parsed body, so numbers are
    checked as JavaScript writes them, and as the body wrote them.
    """
    try:
        data = parse_json(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return None, f"malformed: {str(e)[:80]}"
    if not isinstance(data, dict):
        return None, "malformed: not a JSON object"
    if not secret:
        return data, "unsigned"
    if not signature:
        return data, "missing signature"
    given = signature.strip().lower().encode()
    # As JavaScript writes the numbers first (what NOWPayments signs); the body's own tokens only if
    # that fails. Each comparison is constant-time; which variant matched tells nothing about the
    # secret.
    good = any(
        hmac.compare_digest(ipn_signature(data, secret, js_numbers=js).encode(), given)
        for js in (True, False)
    )
    return data, "valid signature" if good else "bad signature"


class PaymentProvider:
    """One way for shoppers to pay, as the payment desk sees it. A provider says what it offers for
    an amount, creates invoices, fetches a payment's state and reads its webhooks, always answering
    in the shop's terms (NewInvoice, PaymentNews); the desk does everything else: limits,
    reservations, applying news exactly once, reconciliation, alerts.

    Adding a provider: subclass this, fill in the methods, and register the class in
    PAYMENT_PROVIDERS. Its payments are stored with its `name`; its webhooks arrive at
    `webhook_path` (by default /webhook/<name>)."""

    name = ""  # stored in payments.provider; the key in PAYMENT_PROVIDERS
    label = ""  # what owners read ("NOWPayments")
    failing_since = None  # monotonic time of the first failure of an ongoing outage
    refused = None  # the provider's words when it refuses the shop's credentials, else None
    credentials = "the provider's credentials"  # what the owner checks when they are refused
    signature_header = None  # the webhook header kept with each webhook

    @property
    def webhook_path(self):
        return f"/webhook/{self.name}"

    @classmethod
    def configured(cls, shop):
        """The constructor's keywords for this shop, or None when it does not use this provider."""
        return None

    def methods(self, fresh=False):
        """The payment methods (coins, for a crypto provider) the merchant takes, in order."""
        raise NotImplementedError

    def minimum_cents(self, method, fresh=False):
        """The smallest payment a method takes, in EUR cents, or None when there is none."""
        return None

    def create_invoice(self, *, method, price_cents, reference, description, webhook_url):
        """Ask the provider for an invoice; returns a NewInvoice or raises ProviderError (or
        InvalidInput with what the shopper can do about it)."""
        raise NotImplementedError

    def fetch(self, provider_id):
        """The provider's word on one of its payments, as PaymentNews."""
        raise NotImplementedError

    def read_webhook(self, body, headers, remote):
        """A webhook's body and headers as a Webhook (news to apply, a payment to look up, or a
        refusal). Never raises for bad input."""
        raise NotImplementedError

    def ping(self):
        """Ask the provider whether it answers (after an outage); raises ProviderError if not."""

    def close(self):
        """Release connections and threads at shutdown."""


@dataclass
class Webhook:
    """What a provider made of a webhook. Exactly one of: `refuse` (HTTP status, JSON answer),
    `look_up` (the body proves nothing by itself: ask the API about `payload`'s payment), or news
    to apply (read from `payload` by provider.news, inside the desk's transaction)."""

    payload: dict = None
    verdict: str = ""
    provider_id: str = None  # as the body names them, for the record of webhooks
    status: str = None
    refuse: tuple = None
    look_up: bool = False
    alert: tuple = None  # (kind, text, level): something for the owners


class NowPayments(PaymentProvider):
    """NOWPayments (API v1): crypto invoices, signed IPNs at /webhook. The sandbox is the same
    client talking to the shop's own emulator."""

    name = "nowpayments"
    label = "NOWPayments"
    credentials = "NOWPAYMENTS_API_KEY"
    signature_header = "x-nowpayments-sig"
    TIMEOUT = (5, 10)
    CACHE_SECONDS = 600
    # Calls at once. A slow provider then holds at most this many of the web server's 8 threads,
    # and the rest stay free for IPNs, pages and, in sandbox mode, the emulator that answers these
    # calls.
    CONCURRENT = 4

    def __init__(self, base_url, api_key, ipn_secret=""):
        self.base_url, self.api_key, self.ipn_secret = base_url.rstrip("/"), api_key, ipn_secret
        self.session = requests.Session()
        self.lock = threading.Lock()
        self.coins_cache = (0.0, None)
        self.minimum_cache = {}
        self.failing_since = None
        self.refused = None
        self.slots = threading.BoundedSemaphore(self.CONCURRENT)

    webhook_path = "/webhook"  # the address NOWPayments has always been given

    @classmethod
    def configured(cls, shop):
        c = shop.config
        if c.sandbox:
            return None
        return {
            "base_url": c.nowpayments_api_url,
            "api_key": c.nowpayments_api_key,
            "ipn_secret": c.nowpayments_ipn_secret,
        }

    def _call(self, method, path, **kw):
        if not self.slots.acquire(timeout=self.TIMEOUT[1]):
            raise ProviderError(
                f"{method} {path}: {self.CONCURRENT} calls to NOWPayments already waiting",
                message=tr("The payment service is busy right now. Please try again in a moment."),
            )
        try:
            return self._request(method, path, **kw)
        finally:
            self.slots.release()

    def _request(self, method, path, *, params=None, body=None, auth=True):
        headers = {"x-api-key": self.api_key} if auth else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = self.session.request(
                method,
                self.base_url + path,
                params=params,
                data=body,
                headers=headers,
                timeout=self.TIMEOUT,
            )
        except requests.RequestException as e:
            self.failing_since = self.failing_since or time.monotonic()
            raise ProviderError(f"{method} {path}: {network_reason(e)}") from None
        if r.status_code >= 500:
            self.failing_since = self.failing_since or time.monotonic()
        else:
            self.failing_since = None
        if auth and r.status_code in (401, 403):
            self.refused = f"HTTP {r.status_code} {r.text[:120]}"
        elif auth and r.status_code < 400:
            self.refused = None
        return self._answer(method, path, r)

    def _answer(self, method, path, r):
        try:
            data = parse_json(r.text)
        except ValueError:
            raise ProviderError(
                f"{method} {path}: HTTP {r.status_code} with a body that is not JSON",
                http=r.status_code,
            ) from None
        if r.status_code >= 400 or (isinstance(data, dict) and data.get("status") is False):
            code = data.get("code") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            raise ProviderError(
                f"{method} {path}: HTTP {r.status_code} {code or ''} {message or ''}".strip(),
                code=code,
                http=r.status_code,
            )
        if not isinstance(data, dict):
            raise ProviderError(
                f"{method} {path}: the answer is not a JSON object", http=r.status_code
            )
        return data

    def status(self):
        return self._call("GET", "/status", auth=False)

    def ping(self):
        self.status()

    def close(self):
        self.session.close()  # and the sandbox's own threads, if any

    def merchant_coins(self, fresh=False):
        """The coins this shop can take: our list, in our order, as far as the merchant enabled
        them."""
        with self.lock:
            stamp, coins = self.coins_cache
        if coins is not None and not fresh and time.monotonic() - stamp < self.CACHE_SECONDS:
            return coins
        data = self._call("GET", "/merchant/coins")
        listed = data.get("selectedCurrencies", data.get("currencies"))
        if not isinstance(listed, list):
            raise ProviderError(
                "GET /merchant/coins: no list of currencies in the answer", http=200
            )
        enabled = {str(c.get("code") if isinstance(c, dict) else c).lower() for c in listed}
        coins = [code for code in COIN_CODES if code in enabled]
        with self.lock:
            self.coins_cache = (time.monotonic(), coins)
        return coins

    def minimum_eur(self, coin, fresh=False):
        """The provider's minimum payment in a coin, in EUR cents (None if it cannot say)."""
        with self.lock:
            stamp, cents = self.minimum_cache.get(coin, (0.0, None))
        if not fresh and time.monotonic() - stamp < self.CACHE_SECONDS:
            return cents
        data = self._call(
            "GET",
            "/min-amount",
            params={"currency_from": coin, "currency_to": coin, "fiat_equivalent": "eur"},
        )
        try:
            fiat = data.get("fiat_equivalent")
            if fiat in (None, ""):
                minimum = crypto_amount(data.get("min_amount"), "min_amount")
                fiat = self._call(
                    "GET",
                    "/estimate",
                    params={"amount": str(minimum), "currency_from": coin, "currency_to": "eur"},
                ).get("estimated_amount")
            cents = int(
                (crypto_amount(fiat, "fiat_equivalent") * 100).to_integral_value(
                    rounding="ROUND_CEILING"
                )
            )
        except InvalidInput as e:
            raise ProviderError(f"GET /min-amount for {coin}: {e}", http=200) from None
        with self.lock:
            self.minimum_cache[coin] = (time.monotonic(), cents)
        return cents

    def methods(self, fresh=False):
        return self.merchant_coins(fresh=fresh)

    def minimum_cents(self, method, fresh=False):
        return self.minimum_eur(method, fresh=fresh)

    def create_payment(self, *, price_cents, coin, reference, description, ipn_url):
        # The price goes out as a JSON number written from cents, never through a float.
        body = encode_json(
            {
                "price_amount": Num(cents_to_str(price_cents)),
                "price_currency": "eur",
                "pay_currency": coin,
                "order_id": reference,
                "order_description": description,
                "ipn_callback_url": ipn_url,
            }
        )
        return self._call("POST", "/payment", body=body.encode("utf-8"))

    def get_payment(self, provider_id):
        return self._call("GET", f"/payment/{provider_payment_id(provider_id)}")

    def create_invoice(self, *, method, price_cents, reference, description, webhook_url):
        try:
            data = self.create_payment(
                price_cents=price_cents,
                coin=method,
                reference=reference,
                description=description,
                ipn_url=webhook_url,
            )
        except ProviderError as e:
            raise self._invoice_refused(e, method, price_cents) from None
        return self.new_invoice(data)

    def _invoice_refused(self, e, coin, price_cents):
        """What a refused POST /payment means for the shopper (or the outage itself)."""
        log.warning("payments: creating a %s payment failed: %s", coin, e.detail)
        if e.code == "AMOUNT_MINIMAL_ERROR":
            self.minimum_cache.pop(coin, None)
            return InvalidInput(
                tr(
                    "{amount} is below what {coin} can take. Please choose another coin.",
                    amount=fmt_eur(price_cents),
                    coin=COIN_LABELS[coin],
                )
            )
        if e.outage:
            return e
        self.coins_cache = (0.0, None)  # what is enabled may have changed: ask again next time
        return InvalidInput(
            tr(
                "The payment service cannot take {coin} right now. Please choose another coin.",
                coin=COIN_LABELS[coin],
            )
        )

    @classmethod
    def new_invoice(cls, data):
        """POST /payment's answer as a NewInvoice (ProviderError if it lacks what a shopper
        needs)."""
        try:
            provider_id = provider_payment_id(data.get("payment_id"))
            for key in ("pay_amount", "pay_currency", "pay_address"):
                if data.get(key) in (None, ""):
                    raise InvalidInput(f"the new payment has no {key}")
            crypto_amount(data["pay_amount"], "pay_amount")
        except InvalidInput as e:
            raise ProviderError(f"POST /payment: {e}", http=201) from None
        extra = data.get("payin_extra_id")
        return NewInvoice(
            provider=cls.name,
            provider_id=provider_id,
            currency=str(data["pay_currency"]).lower(),
            amount=str(data["pay_amount"]),
            address=str(data["pay_address"]),
            extra_id=str(extra) if extra not in (None, "") else None,
            expires_at=provider_time(data.get("expiration_estimate_date"), None),
        )

    def fetch(self, provider_id):
        return self.news(self.get_payment(provider_id))

    @classmethod
    def news(cls, data):
        """A payment as GET /payment/{id} or an IPN describes it, as PaymentNews. InvalidInput when
        its id or status cannot be read; numbers that are not numbers are kept as `unreadable`."""
        provider_id = provider_payment_id(data.get("payment_id"))
        status = str(data.get("payment_status") or "")
        if status not in STATUS_RANK:
            raise InvalidInput(f"unknown payment_status {status!r}")
        unreadable = {}
        amounts = {}
        for key in ("actually_paid", "pay_amount", "price_amount"):
            if data.get(key) not in (None, ""):
                try:
                    crypto_amount(data[key], key)
                    amounts[key] = str(data[key])
                except InvalidInput as e:
                    unreadable[key] = str(e)
        parent = data.get("parent_payment_id")
        if parent not in (None, ""):
            try:
                parent = provider_payment_id(parent)
            except InvalidInput as e:
                unreadable["parent_payment_id"] = str(e)
                parent = None
        return PaymentNews(
            provider=cls.name,
            provider_id=provider_id,
            status=status,
            by=cls.label,
            paid=amounts.get("actually_paid"),
            currency=_given(data, "pay_currency"),
            amount=amounts.get("pay_amount"),
            price=amounts.get("price_amount"),
            price_currency=_given(data, "price_currency"),
            reference=_given(data, "order_id"),
            address=_given(data, "pay_address"),
            parent_id=parent,
            unreadable=unreadable,
        )

    def read_webhook(self, body, headers, remote):
        """An IPN: the body, signed by x-nowpayments-sig with the IPN secret (HMAC-SHA512 of the
        body with sorted keys). Unsigned (no secret set), or money without actually_paid: only a
        hint of which payment to look up with the API."""
        signature = headers.get(self.signature_header)
        data, verdict = verify_ipn(body, signature, self.ipn_secret)
        hook = Webhook(payload=data, verdict=verdict)
        if data is None:
            hook.refuse = (400, {"error": f"the body is not a JSON object ({verdict})"})
            return hook
        if data.get("payment_id") is not None:
            hook.provider_id = str(data.get("payment_id"))[:40]
        if data.get("payment_status") is not None:
            hook.status = str(data.get("payment_status"))[:40]
        if verdict in ("missing signature", "bad signature"):
            hook.refuse = (
                401,
                {"error": f"{verdict}: x-nowpayments-sig must be the HMAC of this body"},
            )
            hook.alert = (
                "signature",
                f"⚠️ An IPN with a {verdict} was refused (from {esc(remote)}). If this "
                "repeats, check that NOWPAYMENTS_IPN_SECRET matches the dashboard.",
                logging.WARNING,
            )
        elif verdict == "unsigned" or (
            hook.status in MONEY_STATUSES and data.get("actually_paid") in (None, "")
        ):
            # Unsigned, the body proves nothing; without actually_paid it cannot be settled. Either
            # way it only says which payment to look up with the API.
            hook.look_up = True
        return hook

    def look_up_ids(self, data):
        """(payment id, parent payment id or None) an IPN names; InvalidInput if unreadable."""
        parent = data.get("parent_payment_id")
        return (
            provider_payment_id(data.get("payment_id")),
            provider_payment_id(parent) if parent not in (None, "") else None,
        )


def _given(data, key):
    """A field the provider sent, as text; None when it left it out or empty."""
    return str(data[key]) if data.get(key) not in (None, "") else None


def provider_payment_id(value):
    """A NOWPayments payment id (number or string) as the digits we store."""
    text = str(value).strip() if value is not None else ""
    if not re.fullmatch(r"\d{1,30}", text):
        raise InvalidInput(f"payment_id must be a number, got {value!r}")
    return text


def provider_time(text, default):
    """The provider's ISO time ('2026-11-26T11:55:00.000Z') in our notation, or default if
    unreadable."""
    try:
        t = datetime.strptime(str(text)[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return default
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def payment_uri(coin, address, amount):
    scheme = URI_SCHEMES.get(coin)
    return f"{scheme}:{address}?amount={amount}" if scheme else address


def qr_png(text):
    """A QR code of text as PNG bytes."""
    buffer = io.BytesIO()
    # here, not at the top: most shops draw a QR code now and then, and memory is tight
    import segno

    segno.make(text, error="m").save(buffer, kind="png", scale=8, border=3)
    return buffer.getvalue()


# The sandbox: a NOWPayments emulator mounted at /sandbox/v1 when no API key is set.
# The shop's real client talks to it over HTTP, and "simulate" makes it send signed
# IPNs to the shop's /webhook, so every layer runs as in production.


class SandboxPayments(NowPayments):
    """NOWPayments as the sandbox emulates it: the same client and the same IPNs, against the
    emulator at /sandbox/v1 with secrets of the sandbox's own; payments are simulated."""

    name = "sandbox"
    simulated = True

    @classmethod
    def configured(cls, shop):
        if not shop.config.sandbox:
            return None
        return {
            "base_url": shop.url + "/sandbox/v1",
            "api_key": shop.sandbox_api_key,
            "ipn_secret": shop.ipn_secret,
        }


STARS_PAYLOAD = re.compile(r"order-\d{1,18}-[0-9a-f]{16}")


class StarsPayments(PaymentProvider):
    """Telegram Stars (currency XTR) through the Bot API: invoices sent into the shopper's chat
    (sendInvoice) or opened from the Mini App (createInvoiceLink). Telegram's word arrives as
    updates to the bot (pre_checkout_query, successful_payment), not as webhooks; what an update
    lost on the way would have said is found again in getStarTransactions (sweep)."""

    name = "stars"
    label = "Telegram Stars"
    credentials = "BOT_TOKEN"
    method = "stars"  # the PAY_METHODS entry it serves
    bulk = True  # reconciled by sweep() over recent transactions, not payment by payment
    SWEEP_PAGES = 10  # at most this many pages of 100 transactions per sweep

    def __init__(self, token):
        self.token = token
        self.api = telebot.TeleBot(token, threaded=False)

    @classmethod
    def configured(cls, shop):
        c = shop.config
        return {"token": c.bot_token} if c.bot_token and not c.sandbox else None

    def methods(self, fresh=False):
        return ["xtr"]

    @staticmethod
    def payload(reference):
        """The invoice's payload: the order it is for and 64 random bits, so that no one can name
        another's invoice (Telegram hands it back in every update about the payment)."""
        return f"{reference}-{secrets.token_hex(8)}"

    def _call(self, what, fn, *args, **kw):
        try:
            result = fn(*args, **kw)
        except apihelper.ApiTelegramException as e:
            raise ProviderError(
                f"Telegram refused {what}: {e.description}",
                http=e.error_code,
                message=tr(
                    "Telegram could not make the invoice. Please try again in a few minutes."
                ),
            ) from None
        except (requests.RequestException, OSError) as e:
            self.failing_since = self.failing_since or time.monotonic()
            raise ProviderError(f"cannot reach Telegram for {what} ({type(e).__name__})") from None
        self.failing_since = None
        return result

    def create_invoice(self, *, method, price_cents, reference, description, webhook_url, **stars):
        """stars: amount (whole Stars), title, and chat_id to send the invoice into a chat (else a
        link for the Mini App)."""
        payload = self.payload(reference)
        title, amount = stars["title"][:32], stars["amount"]
        prices = [tg.LabeledPrice(label=title, amount=amount)]
        if stars.get("chat_id"):
            self._send_invoice(stars["chat_id"], title, description, payload, prices)
            link = ""
        else:
            link = self._invoice_link(title, description, payload, prices)
        return NewInvoice(
            provider=self.name,
            provider_id=payload,
            currency="xtr",
            amount=str(amount),
            address=link,
        )

    def _send_invoice(self, chat_id, title, description, payload, prices):
        self._call(
            "the invoice",
            self.api.send_invoice,
            chat_id,
            title,
            description[:255],
            payload,
            None,
            "XTR",
            prices,
        )

    def _invoice_link(self, title, description, payload, prices):
        return self._call(
            "the invoice link",
            self.api.create_invoice_link,
            title,
            description[:255],
            payload,
            None,
            "XTR",
            prices,
        )

    def fetch(self, provider_id):
        raise ProviderError("Telegram Stars payments are found by sweep()", http=400)

    def read_webhook(self, body, headers, remote):
        return Webhook(refuse=(404, {"error": "Telegram Stars have no webhook"}), verdict="refused")

    def refund(self, user_id, charge_id):
        """Give a charge's Stars back (refundStarPayment). Returns a note: "" when done now,
        or Telegram's words when it was refunded before. ProviderError otherwise."""
        try:
            self._call("the refund", self.api.refund_star_payment, user_id, charge_id)
        except ProviderError as e:
            if "ALREADY_REFUNDED" not in e.detail:
                raise
            return e.detail.removeprefix("Telegram refused the refund: ")
        return ""

    def sweep(self, since):
        """Telegram's record of recent Star transactions (newest first, back to `since`, a Unix
        time): ([(PaymentNews, user id)] for payments of the shop's invoices, {refunded charge
        ids})."""
        payments, refunded, offset = [], set(), 0
        for _ in range(self.SWEEP_PAGES):
            page = self._call(
                "the Star transactions", apihelper.get_star_transactions, self.token, offset, 100
            )
            transactions = (page or {}).get("transactions") or []
            for t in transactions:
                self._read_transaction(t, payments, refunded)
            offset += len(transactions)
            if len(transactions) < 100 or min(t.get("date", 0) for t in transactions) < since:
                break
        return payments, refunded

    def _read_transaction(self, t, payments, refunded):
        partner = t.get("source") or t.get("receiver") or {}
        if partner.get("type") != "user" or not isinstance(partner.get("user"), dict):
            return
        if t.get("receiver"):  # money going out to a user: a refund of the charge with this id
            refunded.add(str(t.get("id")))
            return
        payload = partner.get("invoice_payload") or ""
        if STARS_PAYLOAD.fullmatch(payload) and isinstance(t.get("amount"), int):
            news = stars_news(self.name, payload, str(t["id"]), t["amount"])
            payments.append((news, partner["user"].get("id")))


class SandboxStars(StarsPayments):
    """Telegram Stars as the sandbox plays them: invoices that exist only in the shop, paid with
    the 🧪 buttons (which go through the same pre-checkout and payment as real Stars)."""

    name = "sandbox_stars"
    label = "Telegram Stars (sandbox)"
    simulated = True

    def __init__(self):
        self.token = ""

    @classmethod
    def configured(cls, shop):
        return {} if shop.config.sandbox else None

    def _send_invoice(self, chat_id, title, description, payload, prices):
        pass  # the bot shows the sandbox's invoice itself

    def _invoice_link(self, title, description, payload, prices):
        return ""

    def refund(self, user_id, charge_id):
        return ""

    def sweep(self, since):
        return [], set()


# Every provider the shop can use, by the name its payments are stored with. The runtime starts
# the ones the configuration asks for (Shop.start_providers).
PAYMENT_PROVIDERS = {
    "nowpayments": NowPayments,
    "sandbox": SandboxPayments,
    "stars": StarsPayments,
    "sandbox_stars": SandboxStars,
}


SANDBOX_COINS = {
    "btc": ("60000", 8, "0.0001"),
    "eth": ("3000", 8, "0.004"),
    "ltc": ("75", 8, "0.05"),
    "usdttrc20": ("0.93", 6, "10"),
    "usdterc20": ("0.93", 6, "20"),
    "usdtbsc": ("0.93", 6, "5"),
    "usdtsol": ("0.93", 6, "5"),
    "usdctrc20": ("0.93", 6, "10"),
    "usdcerc20": ("0.93", 6, "20"),
    "usdcsol": ("0.93", 6, "5"),
    "ton": ("5", 9, "1"),
    "sol": ("150", 9, "0.05"),
}


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _random_chars(alphabet, n):
    """n characters drawn at random from alphabet."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _sandbox_address(coin):
    if coin == "btc":
        return "tb1q" + _random_chars("023456789acdefghjklmnpqrstuvwxyz", 38)
    if coin in ("eth", "usdterc20", "usdcerc20", "usdtbsc"):
        return "0x" + secrets.token_hex(20)
    if coin in ("usdttrc20", "usdctrc20"):
        return "T" + _random_chars(_B58, 33)
    if coin == "ltc":
        return "tltc1q" + _random_chars("023456789acdefghjklmnpqrstuvwxyz", 38)
    if coin == "ton":
        return "EQ" + _random_chars(_B58 + "-_", 46)
    return _random_chars(_B58, 44)


def _np_error(status, code, message):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps({"status": False, "statusCode": status, "code": code, "message": message})


class InProcess(requests.adapters.BaseAdapter):
    """Answers requests under a URL prefix with a WSGI app of this process (the sandbox emulator) on
    threads of its own: the shop's calls to its own sandbox take no web-server thread and no socket,
    so however many invoices are made at once, the shop never waits on itself."""

    def __init__(self, app, prefix, threads=NowPayments.CONCURRENT):
        super().__init__()
        self.app, self.prefix = app, prefix.rstrip("/")
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="sandbox")

    def send(self, request, timeout=None, **kw):
        url = urlsplit(request.url)
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        environ = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": self.prefix,
            "PATH_INFO": url.path[len(self.prefix) :] or "/",
            "QUERY_STRING": url.query,
            "SERVER_NAME": url.hostname or "localhost",
            "SERVER_PORT": str(url.port or 80),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": url.scheme,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                environ["HTTP_" + name.upper().replace("-", "_")] = value

        try:
            started, content = self.pool.submit(self._run_app, environ).result(
                timeout=timeout[1] if isinstance(timeout, tuple) else timeout
            )
        except FuturesTimeout:
            raise requests.exceptions.ReadTimeout(
                f"the sandbox did not answer {request.method} {url.path}"
            ) from None
        response = requests.Response()
        response.status_code = int(started["status"].split(" ", 1)[0])
        response.reason = started["status"].partition(" ")[2]
        response.headers = requests.structures.CaseInsensitiveDict(started["headers"])
        response._content, response.url, response.request = content, request.url, request
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        return response

    def _run_app(self, environ):
        started = {}
        chunks = self.app(
            environ,
            lambda status, headers, exc_info=None: started.update(status=status, headers=headers),
        )
        try:
            return started, b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()

    def close(self):
        self.pool.shutdown(wait=False)


def sandbox_answer(data, status=200):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return encode_json(data)


def sandbox_refused(shop):
    """The emulator's answer to a request without the sandbox's API key, else None."""
    if hmac.compare_digest(
        bottle.request.headers.get("x-api-key", "").encode(), shop.sandbox_api_key.encode()
    ):
        return None
    return _np_error(403, "INVALID_API_KEY", "Invalid api key")


def sandbox_status(shop):
    return sandbox_answer({"message": "OK"})


def sandbox_currencies(shop):
    return sandbox_refused(shop) or sandbox_answer({"currencies": list(SANDBOX_COINS)})


def sandbox_merchant_coins(shop):
    return sandbox_refused(shop) or sandbox_answer(
        {"selectedCurrencies": [c.upper() for c in SANDBOX_COINS]}
    )


def sandbox_min_amount(shop):
    if refused := sandbox_refused(shop):
        return refused
    coin = bottle.request.query.get("currency_from", "").lower()
    if coin not in SANDBOX_COINS:
        return _np_error(400, "INVALID_REQUEST_PARAMS", "currency_from is not supported")
    rate, _, minimum = SANDBOX_COINS[coin]
    data = {
        "currency_from": coin,
        "currency_to": bottle.request.query.get("currency_to", coin).lower(),
        "min_amount": Num(minimum),
    }
    if bottle.request.query.get("fiat_equivalent", "").lower() == "eur":
        data["fiat_equivalent"] = Num(
            str((Decimal(minimum) * Decimal(rate)).quantize(Decimal("0.01")))
        )
    return sandbox_answer(data)


def _sandbox_eur(currency):
    """EUR per unit of a currency the emulator knows, else None."""
    if currency == "eur":
        return Decimal(1)
    return Decimal(SANDBOX_COINS[currency][0]) if currency in SANDBOX_COINS else None


def sandbox_estimate(shop):
    if refused := sandbox_refused(shop):
        return refused
    q = bottle.request.query
    frm, to = q.get("currency_from", "").lower(), q.get("currency_to", "").lower()
    try:
        amount = crypto_amount(q.get("amount", ""))
    except InvalidInput:
        return _np_error(400, "INVALID_REQUEST_PARAMS", "amount must be a number")
    if _sandbox_eur(frm) is None or _sandbox_eur(to) is None:
        return _np_error(400, "INVALID_REQUEST_PARAMS", "currency is not supported")
    value = amount * _sandbox_eur(frm) / _sandbox_eur(to)
    places = 2 if to == "eur" else SANDBOX_COINS[to][1]
    return sandbox_answer(
        {
            "currency_from": frm,
            "amount_from": Num(str(amount)),
            "currency_to": to,
            "estimated_amount": Num(str(value.quantize(Decimal(1).scaleb(-places)))),
        }
    )


def _sandbox_request():
    """POST /payment's body checked as NOWPayments checks it: (body, None) or (None, error)."""
    try:
        body = parse_json(bottle.request.body.read(65536).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return None, _np_error(400, "INVALID_REQUEST_PARAMS", "body must be a JSON object")
    for key in ("price_amount", "price_currency", "pay_currency"):
        if body.get(key) in (None, ""):
            return None, _np_error(400, "INVALID_REQUEST_PARAMS", f"{key} is required")
    coin = str(body["pay_currency"]).lower()
    if coin not in SANDBOX_COINS:
        return None, _np_error(
            400, "INVALID_REQUEST_PARAMS", f"pay_currency {coin} is not supported"
        )
    if str(body["price_currency"]).lower() != "eur":
        return None, _np_error(400, "INVALID_REQUEST_PARAMS", "the sandbox prices in eur only")
    try:
        crypto_amount(body["price_amount"], "price_amount")
    except InvalidInput:
        return None, _np_error(400, "INVALID_REQUEST_PARAMS", "price_amount must be a number")
    url = body.get("ipn_callback_url")
    if url is not None and urlsplit(str(url)).scheme not in ("http", "https"):
        return None, _np_error(
            400, "INVALID_REQUEST_PARAMS", "ipn_callback_url must be an http(s) URL"
        )
    return body, None


def _sandbox_stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def sandbox_create_payment(shop):
    if refused := sandbox_refused(shop):
        return refused
    body, error = _sandbox_request()
    if error:
        return error
    coin = str(body["pay_currency"]).lower()
    rate, places, minimum = SANDBOX_COINS[coin]
    price = crypto_amount(body["price_amount"], "price_amount")
    pay_amount = (price / Decimal(rate)).quantize(
        Decimal(1).scaleb(-places), rounding="ROUND_CEILING"
    )
    if pay_amount < Decimal(minimum):
        return _np_error(400, "AMOUNT_MINIMAL_ERROR", "amountTo is too small")
    now = datetime.now(timezone.utc)
    payment_id = secrets.randbelow(9 * 10**9) + 10**9
    minutes = shop.setting("reservation_minutes")
    data = {
        "payment_id": Num(str(payment_id)),
        "payment_status": "waiting",
        "pay_address": _sandbox_address(coin),
        "price_amount": body["price_amount"],
        "price_currency": "eur",
        "pay_amount": Num(str(pay_amount)),
        "actually_paid": Num("0"),
        "pay_currency": coin,
        "order_id": body.get("order_id"),
        "order_description": body.get("order_description"),
        "ipn_callback_url": body.get("ipn_callback_url"),
        "payin_extra_id": str(secrets.randbelow(10**9)) if coin == "ton" else None,
        "purchase_id": Num(str(secrets.randbelow(9 * 10**9) + 10**9)),
        "network": coin,
        "network_precision": Num(str(places)),
        "outcome_amount": Num(str(pay_amount)),
        "outcome_currency": coin,
        "created_at": _sandbox_stamp(now),
        "updated_at": _sandbox_stamp(now),
        "expiration_estimate_date": _sandbox_stamp(now + timedelta(minutes=minutes)),
    }
    save_sandbox_payment(shop.db(), payment_id, encode_json(data))
    created = dict(data)
    created["payment_id"] = str(payment_id)  # POST answers the id as a string, GET as a number
    del created["actually_paid"], created["ipn_callback_url"]
    return sandbox_answer(created, 201)


def sandbox_get_payment(shop, payment_id):
    if refused := sandbox_refused(shop):
        return refused
    row = load_sandbox_payment(shop.db(), payment_id)
    if row is None:
        return _np_error(404, "PAYMENT_NOT_FOUND", f"Payment {payment_id} not found")
    data = parse_json(row)
    data.pop("ipn_callback_url", None)
    return sandbox_answer(data)


def sandbox_simulate_route(shop, payment_id, outcome):
    """Not part of NOWPayments: make a payment paid or expired (the Mini App and tests use it)."""
    if refused := sandbox_refused(shop):
        return refused
    try:
        sandbox_simulate(shop, payment_id, outcome)
    except (NotFound, InvalidInput) as e:
        return _np_error(404 if isinstance(e, NotFound) else 400, "SIMULATION_ERROR", str(e))
    return sandbox_answer({"simulated": outcome, "payment_id": Num(payment_id)})


SANDBOX_ROUTES = [
    ("GET", "/status", sandbox_status),
    ("GET", "/currencies", sandbox_currencies),
    ("GET", "/merchant/coins", sandbox_merchant_coins),
    ("GET", "/min-amount", sandbox_min_amount),
    ("GET", "/estimate", sandbox_estimate),
    ("POST", "/payment", sandbox_create_payment),
    ("GET", "/payment/<payment_id>", sandbox_get_payment),
    ("POST", "/simulate/<payment_id>/<outcome>", sandbox_simulate_route),
]


SIMULATIONS = {outcome: what for outcome, (what, _, _) in SANDBOX_OUTCOMES.items()}


def sandbox_simulate(shop, payment_id, outcome):
    """Make the emulator's payment paid (in full, half, 1.5x) or expired, then send its IPNs."""
    if outcome not in SIMULATIONS:
        raise InvalidInput(
            tr("outcome must be one of {outcomes}.", outcomes=", ".join(SIMULATIONS))
        )
    data, steps = settle_sandbox_payment(shop.db(), payment_id, outcome)
    threading.Thread(
        target=_send_sandbox_ipns, args=(shop, data, steps), name="sandbox-ipn", daemon=True
    ).start()


def _send_sandbox_ipns(shop, data, steps):
    """POST the IPNs as NOWPayments does: unsorted keys, a nested fee object, signed, retried on
    errors."""
    url = data.get("ipn_callback_url")
    if not url:
        return
    for step in steps:
        body = {
            "payment_status": step,
            "pay_address": data["pay_address"],
            "price_amount": data["price_amount"],
            "fee": {
                "withdrawalFee": Num("0"),
                "serviceFee": Num("0"),
                "depositFee": Num("0"),
                "currency": data["pay_currency"],
            },
            "payment_id": data["payment_id"],
            "price_currency": "eur",
            "pay_amount": data["pay_amount"],
            "actually_paid": data["actually_paid"] if step != "confirming" else Num("0"),
            "pay_currency": data["pay_currency"],
            "order_id": data["order_id"],
            "order_description": data["order_description"],
            "purchase_id": data["purchase_id"],
            "outcome_amount": data["outcome_amount"],
            "outcome_currency": data["outcome_currency"],
            "payin_extra_id": data["payin_extra_id"],
            "parent_payment_id": None,
            "invoice_id": None,
            "payment_extra_ids": None,
            "updated_at": Num(str(int(time.time() * 1000))),
        }
        text = encode_json(body)
        signature = ipn_signature(parse_json(text), shop.ipn_secret)
        for attempt in range(3):
            try:
                r = requests.post(
                    url,
                    data=text.encode("utf-8"),
                    timeout=10,
                    headers={"Content-Type": "application/json", "x-nowpayments-sig": signature},
                )
                if r.status_code < 500:
                    break
            except requests.RequestException as e:
                log.warning("sandbox: IPN to %s failed (%s); retrying", url, network_reason(e))
            if shop.stopping.wait(1.0 + attempt):
                return


# Payment desk ##################################################################


class PaymentDesk:
    """Runs the shop's payments through its providers: opens invoices, applies what a provider
    says, reconciles. Provider-neutral: each payment names its provider, and the desk asks that one.

    Network calls happen here, between transactions, never inside one.
    """

    def __init__(self, shop, providers):
        self.shop = shop
        self.providers = {p.name: p for p in providers}
        # The provider of coins (NOWPayments, or the sandbox's emulation of it).
        self.client = next(p for p in providers if isinstance(p, NowPayments))
        # Telegram Stars (real with a bot, played in the sandbox), or None.
        self.stars = next((p for p in providers if isinstance(p, StarsPayments)), None)
        self.refund_lock = threading.Lock()
        self.alerts = Throttle(600)
        self.refusals_logged = Throttle(60)
        self.last_refresh = {}
        self.busy = set()
        self.lock = threading.Lock()
        self.hints = queue.Queue(maxsize=100)
        self.outage_alerted = set()

    @property
    def owners(self):
        return self.shop.config.admin_ids

    def close(self):
        for provider in self.providers.values():
            provider.close()

    def health(self):
        """ "ok", or what is wrong with each provider that is not."""
        problems = []
        for p in self.providers.values():
            if p.refused:
                problems.append(f"{p.label} refuses the API key ({p.refused})")
            elif p.failing_since is not None:
                seconds = int(time.monotonic() - p.failing_since)
                problems.append(f"{p.label} not answering for {seconds} s")
        return "; ".join(problems) or "ok"

    def label_of(self, name):
        """A provider's name as owners read it ("NOWPayments")."""
        provider = self.providers.get(name) or PAYMENT_PROVIDERS.get(name)
        return provider.label if provider else name

    def coins(self):
        """[(coin, minimum in EUR cents or None)] for the coins the merchant takes."""
        coins = []
        enabled = self.shop.setting("enabled_coins")
        for coin in self.client.methods():
            if enabled is not None and coin not in enabled:
                continue
            try:
                coins.append((coin, self.client.minimum_cents(coin)))
            except ProviderError as e:
                if self.alerts(f"minimum:{coin}"):
                    log.warning(
                        "payments: no minimum for %s (%s); offering it anyway", coin, e.detail
                    )
                coins.append((coin, None))
        return coins

    def refresh_coins(self):
        """Scheduled: keep the coin list and minimums fresh so menus need no network."""
        try:
            for coin in self.client.methods(fresh=True):
                try:
                    self.client.minimum_cents(coin, fresh=True)
                except ProviderError as e:
                    if e.outage:
                        raise
                    log.warning("payments: no minimum for %s: %s", coin, e.detail)
        except ProviderError as e:
            if not self.shop.stopping.is_set():
                log.warning("payments: cannot refresh the coin list: %s", e.detail)

    def _check_coin(self, coin, amount_cents):
        if coin not in COIN_LABELS:
            raise InvalidInput(tr("That coin is not offered."))
        offered = dict(self.coins())
        if coin not in offered:
            raise InvalidInput(
                tr(
                    "{coin} is not offered right now. Please choose another coin.",
                    coin=COIN_LABELS[coin],
                )
            )
        if offered[coin] is not None and offered[coin] > amount_cents:
            raise InvalidInput(
                tr(
                    "{coin} takes payments from {minimum}. Please choose another coin.",
                    coin=COIN_LABELS[coin],
                    minimum=fmt_eur(offered[coin]),
                )
            )

    def _create(self, provider, method, price_cents, reference, description):
        return provider.create_invoice(
            method=method,
            price_cents=price_cents,
            reference=reference,
            description=description,
            webhook_url=self.shop.config.webhook_url + provider.webhook_path,
        )

    @contextmanager
    def opening(self, nonce):
        """One invoice per checkout: a second tap while the first is still talking to the provider
        waits its turn."""
        with self.lock:
            if nonce in self.busy:
                raise InvalidInput(tr("Your invoice is being prepared, one moment."))
            self.busy.add(nonce)
        try:
            yield
        finally:
            with self.lock:
                self.busy.discard(nonce)

    def open_order_invoice(self, user_id, nonce, coin):
        """Reserve a checkout's units and create its payment; a repeated tap gets the same
        invoice."""
        self.shop.check_may_buy(user_id)
        with self.opening(nonce):
            return self._open_order_invoice(user_id, nonce, coin)

    def _open_order_invoice(self, user_id, nonce, coin):
        conn = self.shop.db()
        existing = find_checkout_payment(conn, user_id, nonce)
        if existing and existing["pay_currency"] != coin:
            raise InvalidInput(
                tr(
                    "This checkout already has an invoice in {coin}.",
                    coin=COIN_LABELS.get(existing["pay_currency"], existing["pay_currency"]),
                )
            )
        if existing:
            return existing
        checkout = get_checkout(conn, user_id, nonce)
        self._check_coin(coin, checkout["amount_cents"])
        return self._invoice_order(
            conn,
            user_id,
            nonce,
            "crypto",
            lambda order_id, total: self._create(
                self.client, coin, total, f"order-{order_id}", f"Order #{order_id}"
            ),
        )

    def _invoice_order(self, conn, user_id, nonce, method, create):
        """Reserve a checkout's units in an order paid by `method`, have `create(order_id, total)`
        make its invoice (a NewInvoice) and record it; the reservation is dropped if that fails."""
        minutes = self.shop.setting("reservation_minutes")
        order_id, total, created = reserve_for_checkout(
            conn, user_id, nonce, minutes, self.limits(), method=method, owners=self.owners
        )
        if not created:  # an earlier attempt stopped between the reservation and the provider
            raise InvalidInput(tr("This checkout already has an order; please check out again."))
        try:
            invoice = create(order_id, total)
            reserved = reservation_end(conn, order_id) or now_iso(minutes * 60)
            return record_payment(
                conn,
                kind="order",
                user_id=user_id,
                reference=f"order-{order_id}",
                price_cents=total,
                invoice=invoice,
                expires_at=min(reserved, invoice.expires_at or reserved),
                order_id=order_id,
            )
        except BaseException:
            drop_reservation(conn, order_id)
            raise

    def open_topup_invoice(self, user_id, nonce, coin):
        self.shop.check_may_buy(user_id)
        with self.opening(nonce):
            return self._open_topup_invoice(user_id, nonce, coin)

    def _open_topup_invoice(self, user_id, nonce, coin):
        conn = self.shop.db()
        reference = f"topup-{nonce}"
        existing = find_topup_payment(conn, user_id, reference)
        if existing and existing["pay_currency"] != coin:
            raise InvalidInput(
                tr(
                    "This top-up already has an invoice in {coin}.",
                    coin=COIN_LABELS.get(existing["pay_currency"], existing["pay_currency"]),
                )
            )
        if existing:
            return existing
        checkout = get_checkout(conn, user_id, nonce)
        if checkout["kind"] != "topup":
            raise NotFound(tr("This top-up is too old. Please start again with 💰 Top up."))
        self._check_coin(coin, checkout["amount_cents"])
        claim_topup_invoice(conn, user_id, nonce, self.limits())
        try:
            amount = checkout["amount_cents"]
            invoice = self._create(
                self.client, coin, amount, reference, f"Balance top-up {cents_to_str(amount)} EUR"
            )
            expires = invoice.expires_at or now_iso(self.shop.setting("reservation_minutes") * 60)
            return record_payment(
                conn,
                kind="topup",
                user_id=user_id,
                reference=reference,
                price_cents=amount,
                invoice=invoice,
                expires_at=expires,
                claim=nonce,
            )
        except BaseException:
            release_topup_claim(conn, nonce)
            raise

    def open_stars_invoice(self, user_id, nonce, chat_id=None):
        """Reserve a checkout's units in an order paid in Telegram Stars and make its invoice: sent
        into the chat (the bot) or as a link (the Mini App). A repeated tap gets the same one."""
        self.shop.check_may_buy(user_id)
        if self.stars is None:
            raise InvalidInput(tr("Telegram Stars are not taken here (the shop has no bot)."))
        with self.opening(nonce):
            conn = self.shop.db()
            existing = find_checkout_payment(conn, user_id, nonce)
            if existing and existing["pay_currency"] != "xtr":
                raise InvalidInput(tr("This checkout already has a crypto invoice."))
            if existing:
                return existing
            lines = normalise_lines(checkout_lines(get_checkout(conn, user_id, nonce)))
            stars = stars_total(conn, price_lines(conn, lines)[1], lines)
            return self._invoice_order(
                conn,
                user_id,
                nonce,
                "stars",
                lambda order_id, total: self.stars.create_invoice(
                    method="xtr",
                    price_cents=total,
                    reference=f"order-{order_id}",
                    description=stars_invoice_description(conn, order_id, total),
                    webhook_url="",
                    amount=stars_after_discount(
                        stars, total, get_order(conn, user_id, order_id)["discount_cents"]
                    ),
                    # TRANSLATORS: the title of a Telegram Stars invoice: at most 32 characters.
                    title=shorten(tr("Order #{order}", order=order_id), 32),
                    chat_id=chat_id,
                ),
            )

    def stars_pre_checkout(self, user_id, payload, currency, total):
        """Telegram's pre_checkout_query: None to let the payment go ahead, else the reason for the
        shopper. Telegram waits 10 s at most, so a failure here refuses rather than raises."""
        try:
            return stars_pre_checkout(
                self.shop.db(), STARS_PROVIDERS, user_id, payload, currency, total, self.owners
            )
        except Exception as e:
            log.warning("stars: could not check a payment before it was made: %s", e)
            return tr(
                "The shop could not check this order right now. Nothing was charged; please try "
                "again."
            )

    def stars_paid(self, user_id, payload, charge_id, total, currency="XTR", source="telegram"):
        """Telegram took the Stars (successful_payment, or found again by the sweep): deliver once,
        or give them back when the shop cannot honour the payment. Returns what happened."""
        news = stars_news(self.stars.name, payload, charge_id, total, currency)
        conn = self.shop.db()
        try:
            outcome = apply_payment_status(conn, news, source=source, owners=self.owners)
        except (UnknownPayment, PaymentMismatch) as e:
            log.warning("stars: a payment of %s Stars cannot be honoured: %s", total, e)
            outcome = refund_unknown_charge(conn, news, user_id, self.owners)
        self.make_refunds()
        return outcome

    def make_refunds(self):
        """Ask Telegram for the Stars refunds that are due (after the transaction that decided
        them, and again later when Telegram did not make one); the owners hear of failures."""
        if self.stars is None:
            return
        conn = self.shop.db()
        with self.refund_lock:
            for refund in star_refunds_due(conn):
                try:
                    note = self.stars.refund(refund["user_id"], refund["charge_id"])
                except ProviderError as e:
                    attempts = star_refund_failed(conn, refund["charge_id"], e.detail)
                    self.alert(
                        f"refund:{refund['charge_id']}",
                        f"⚠️ A refund of {refund['stars']} ⭐ to <code>{refund['user_id']}</code> "
                        f"failed ({esc(e.detail)}); tried {attempts} time(s), trying again.",
                        logging.ERROR,
                    )
                    continue
                star_refund_done(conn, refund["charge_id"], note)

    def sweep_stars(self):
        """Scheduled: find Stars payments whose update never reached the shop in Telegram's record
        of the last week, apply each (once), note refunds made, and close lapsed invoices."""
        if self.stars is None:
            return
        conn = self.shop.db()
        payments, refunded = self.stars.sweep(int(time.time()) - 7 * 86400)
        known = known_charges(conn, [news.charge_id for news, _ in payments] + list(refunded))
        for charge_id in refunded:
            if known.get(charge_id) == "pending":  # made, though the shop did not hear it
                star_refund_done(conn, charge_id, "found refunded in Telegram's record")
        for news, user_id in payments:
            if news.charge_id in refunded or news.charge_id in known:
                continue
            log.warning("stars: payment %s found by the sweep", news.charge_id[:12])
            self.stars_paid(user_id, news.provider_id, news.charge_id, news.paid, source="poll")
        for provider_id in lapsed_stars_invoices(conn, STARS_PROVIDERS):
            news = PaymentNews(provider=self.stars.name, provider_id=provider_id, status="expired")
            apply_payment_status(conn, news, source="poll", owners=self.owners)
        self.make_refunds()

    def limits(self):
        """The invoice limits as they are now (check_invoice_limits' keywords)."""
        c = self.shop.config
        return {
            "max_open": c.max_open_invoices,
            "max_per_hour": c.max_invoices_per_hour,
            "max_unpaid_units": self.shop.setting("max_unpaid_units"),
        }

    def simulate(self, user_id, payment_id, outcome):
        """🧪 in the bot or the Mini App: the sandbox's NOWPayments pays (or lets expire) one of the
        shopper's invoices. Only in sandbox mode, and with a bot connected only for owners."""
        if not self.shop.config.sandbox:
            raise NotFound(tr("Simulated payments exist only in sandbox mode."))
        self.shop.check_may_buy(user_id)
        payment = get_payment(self.shop.db(), user_id, payment_id)
        provider = self.providers.get(payment["provider"])
        if not getattr(provider, "simulated", False):
            raise NotFound(tr("This payment was not made in the sandbox."))
        if isinstance(provider, StarsPayments):
            return self.simulate_stars(user_id, payment, outcome)
        sandbox_simulate(self.shop, payment["provider_id"], outcome)

    def simulate_stars(self, user_id, payment, outcome):
        """🧪 Pay with Stars: the sandbox's shopper pays, through the same pre-checkout and payment
        as Telegram's updates."""
        if outcome != "full":
            raise InvalidInput(tr("A Stars invoice is paid in full or not at all."))
        args = (user_id, payment["provider_id"])
        reason = self.stars_pre_checkout(*args, "XTR", int(payment["pay_amount"]))
        if reason:
            raise InvalidInput(reason)
        charge = "sandbox-" + secrets.token_hex(12)
        return self.stars_paid(*args, charge, payment["pay_amount"], source="check")

    def mark_paid(self, payment_id, reason, remote=None):
        """The owner confirms money that arrived outside the flow: applied as 'finished' in full, by
        the same function as an IPN (so the order is delivered, or the top-up credited, exactly
        once)."""
        reason = clean_text(reason, "The reason", max_len=200)
        conn = self.shop.db()
        p = find_payment(conn, payment_id)
        if p["status"] in MONEY_STATUSES:
            raise InvalidInput(f"This payment is already {p['status']}.")
        if p["provider"] in STARS_PROVIDERS:
            raise InvalidInput("Telegram Stars payments are made only through Telegram.")
        news = PaymentNews(
            provider=p["provider"],
            provider_id=p["provider_id"],
            status="finished",
            currency=p["pay_currency"],
            amount=p["pay_amount"],
            paid=p["pay_amount"],
        )
        outcome = apply_payment_status(conn, news, source="admin", owners=self.owners)
        audit_payment_marked_paid(conn, p, reason, outcome, remote)
        return outcome

    def refresh(self, provider_id, source, throttle=0, provider=None):
        """Ask the provider (by default the coins' one) for a payment's status and apply it.
        Returns what happened. With throttle, a payment looked up less than that many seconds ago
        is left alone."""
        provider = self.providers.get(provider or self.client.name)
        if provider is None:  # a payment of a provider this shop no longer uses: nobody to ask
            return "not asked: its provider is not in use"
        if getattr(provider, "bulk", False):  # its news comes by update, or in its sweep
            return "not asked: its provider reports in bulk"
        key = (provider.name, provider_id)
        with self.lock:
            if throttle and time.monotonic() - self.last_refresh.get(key, -1e9) < throttle:
                return "throttled"
            self.last_refresh[key] = time.monotonic()
        return self.apply(provider.fetch(provider_id), source)

    CHECK_SECONDS = 5  # 🔄 Check status and ❌ Cancel ask about one payment at most this often

    def check(self, user_id, payment_id):
        """🔄 Check status (bot or Mini App): an unfinished payment is looked up with the provider,
        at most every CHECK_SECONDS; returns the payment as it is now."""
        conn = self.shop.db()
        payment = get_payment(conn, user_id, payment_id)
        if payment["status"] in OPEN_STATUSES:
            self.refresh(
                payment["provider_id"],
                "check",
                throttle=self.CHECK_SECONDS,
                provider=payment["provider"],
            )
            payment = get_payment(conn, user_id, payment_id)
        return payment

    def cancel(self, user_id, payment_id):
        """❌ Cancel (bot or Mini App): an open invoice is first looked up with the provider, which
        may know of money on its way, at most every CHECK_SECONDS as for 🔄 Check status; a closed
        one answers from the database without asking anyone. Returns (the payment as it is now,
        whether this cancelled it)."""
        conn = self.shop.db()
        payment = get_payment(conn, user_id, payment_id)
        if not invoice_is_open(payment):
            return payment, False
        self.refresh(
            payment["provider_id"],
            "check",
            throttle=self.CHECK_SECONDS,
            provider=payment["provider"],
        )
        payment = get_payment(conn, user_id, payment_id)
        if payment["status"] != "waiting":
            return payment, False
        cancelled = cancel_invoice(conn, user_id, payment_id)
        return get_payment(conn, user_id, payment_id), cancelled

    def apply(self, news, source):
        try:
            return apply_payment_status(self.shop.db(), news, source=source, owners=self.owners)
        except (PaymentMismatch, InvalidInput) as e:
            self.alert(
                type(e).__name__,
                f"⚠️ A payment update ({source}) could not be applied: {esc(e)}",
                logging.ERROR if isinstance(e, PaymentMismatch) else logging.WARNING,
            )
            raise

    def alert(self, kind, text, level=logging.ERROR):
        """Tell the owners (and the log) about something that needs them, at most every ten minutes
        per kind."""
        if not self.alerts(kind):
            return
        log.log(level, "payments: %s", html_to_plain(text))
        tell_owners(self.shop.db(), self.owners, text)

    def handle_ipn(self, body, signature, remote):
        """POST /webhook: NOWPayments' IPN (the sandbox's in sandbox mode)."""
        return self.handle_webhook(self.client.name, body, {"x-nowpayments-sig": signature}, remote)

    def handle_webhook(self, name, body, headers, remote):
        """POST /webhook/<provider>: read, store, apply. Returns (HTTP status, JSON answer)."""
        provider = self.providers.get(name)
        if provider is None:
            return 404, {"error": f"no payment provider {name[:40]!r} in this shop"}
        try:
            return self._handle_webhook(provider, body, headers, remote)
        except Exception as e:
            if storage_problem(e):  # nothing was applied; the provider sends it again later
                return 503, {"error": "the shop cannot save this IPN now; please retry"}
            log.exception("webhook: an IPN from %s could not be handled", remote)
            signature = headers.get(provider.signature_header)
            failed = "error: the shop failed; see its log"
            store_webhook(
                self.shop.db(),
                name,
                (None, None),
                body,
                signature,
                failed,
                remote,
                keep=self.REFUSED_KEPT,
            )
            return 500, {"error": "the shop could not handle this IPN now; please retry"}

    def _handle_webhook(self, provider, body, headers, remote):
        hook = provider.read_webhook(body, headers, remote)
        if hook.alert:
            self.alert(*hook.alert)
        # The news applied and the IPN stored commit together: one disk sync per IPN, not two.
        with transaction(self.shop.db()):
            if hook.refuse:
                (code, answer), verdict = hook.refuse, hook.verdict
            elif hook.look_up:
                code, answer, verdict = self._hint(provider, hook.payload)
            else:
                code, answer, verdict = self._apply_webhook(provider, hook)
            # A refused IPN costs its sender nothing, so it is kept short and only the latest
            # ones are kept.
            store_webhook(
                self.shop.db(),
                provider.name,
                (hook.provider_id, hook.status),
                body if code < 400 else body[:512],
                headers.get(provider.signature_header),
                verdict,
                remote,
                refused=code >= 400,
                keep=self.REFUSED_KEPT,
            )
        if code >= 400 and self.refusals_logged(f"refused:{code}"):
            log.warning("webhook: refused an IPN from %s (%d): %s", remote, code, verdict)
        return code, answer

    REFUSED_KEPT = 1000  # refused webhooks kept

    def _apply_webhook(self, provider, hook):
        """Apply a webhook's news: (HTTP status, JSON answer, verdict)."""
        try:
            return (
                200,
                {"status": "ok"},
                "applied: " + self.apply(provider.news(hook.payload), "ipn"),
            )
        except UnknownPayment as e:
            # A 'waiting' IPN may beat the answer to our own invoice request; the provider retries
            # it. Money for a reference that looks like ours is another matter.
            reference = str(hook.payload.get("order_id"))
            if hook.status in MONEY_STATUSES and re.fullmatch(
                r"(order-\d+|topup-[0-9a-f]+)", reference
            ):
                self.alert(
                    "unknown",
                    f"⚠️ {provider.label} reports money ({esc(hook.status)}) for payment "
                    f"{esc(hook.provider_id)}, {esc(reference)}, which this shop does not know.",
                )
            return 404, {"error": str(e)}, "unknown payment"
        except PaymentMismatch as e:
            return 409, {"error": str(e)}, f"mismatch: {e}"
        except InvalidInput as e:
            return 400, {"error": str(e)}, f"invalid: {e}"

    def _hint(self, provider, data):
        """Queue a look-up of the payment a webhook names (or of its parent's new child). Returns
        (HTTP status, JSON answer, verdict)."""
        try:
            provider_id, parent = provider.look_up_ids(data)
        except InvalidInput as e:
            return 400, {"error": str(e)}, f"invalid: {e}"
        if not payment_is_known(self.shop.db(), provider.name, provider_id, parent):
            return 404, {"error": "unknown payment"}, "hint for an unknown payment"
        try:
            self.hints.put_nowait((provider.name, provider_id, time.monotonic()))
        except queue.Full:
            return 503, {"error": "busy; please retry"}, "hint dropped: too many waiting"
        return (
            202,
            {"status": "accepted; checking with the API"},
            "hint: status fetched from the API",
        )

    def work_hints(self):
        """One thread looks up hinted payments. A hint older than the last look-up of its payment
        adds nothing and is skipped; look-ups of one payment are two seconds apart. So a flood of
        hints costs the provider a request every two seconds at most, and no real news is lost."""
        while (item := self.hints.get()) is not None:
            name, provider_id, queued = item
            try:
                with self.lock:
                    last = self.last_refresh.get((name, provider_id), -1e9)
                if last < queued:
                    self.shop.stopping.wait(max(0.0, last + 2 - time.monotonic()))
                    self.refresh(provider_id, "ipn", provider=name)
            except (ShopError, sqlite3.Error) as e:
                log.warning(
                    "payments: checking payment %s failed: %s", provider_id, getattr(e, "detail", e)
                )
            finally:
                self.hints.task_done()

    def reconcile(self):
        """Scheduled: ask each provider about its payments younger than a week that may still move.

        Open payments are asked about every run (older ones every ten minutes);
        expired and failed ones every half hour, since money may still arrive.
        """
        conn = self.shop.db()
        paused = set()
        asked = [p.name for p in self.providers.values() if not getattr(p, "bulk", False)]
        for row in payments_to_reconcile(conn, asked):
            if self.shop.stopping.is_set():
                return
            if row["provider"] in paused:
                continue
            if row["status"] in ("expired", "failed"):
                every = 1800
            else:
                every = 0 if row["created_at"] > now_iso(-7200) else 600
            self._reconcile_one(row, every, paused)
        for p in flag_stuck_payments(conn, self.owners):
            log.warning(
                "payments: payment %s stuck in %s past its expiry", p["provider_id"], p["status"]
            )
        for provider in self.providers.values():
            self.check_outage(provider)

    def _reconcile_one(self, row, every, paused):
        provider = self.providers[row["provider"]]
        try:
            self.refresh(row["provider_id"], "poll", throttle=every, provider=provider.name)
        except ProviderError as e:
            if e.outage:
                log.warning(
                    "payments: reconciliation paused, %s is not answering: %s",
                    provider.label,
                    e.detail,
                )
                paused.add(provider.name)
                return
            self.alert(
                f"poll:{row['provider_id']}",
                f"⚠️ {provider.label} refuses to report payment "
                f"{row['provider_id']}: {esc(e.detail)}",
                logging.WARNING,
            )
        except (PaymentMismatch, UnknownPayment, InvalidInput):
            pass

    def check_outage(self, provider):
        if provider.failing_since is not None:
            # nothing else may call the provider for a while: ask it directly whether it is back
            try:
                provider.ping()
            except ProviderError:
                pass
        if provider.refused:
            self.alert(
                "refused",
                f"⚠️ {provider.label} refuses the shop's API key ({esc(provider.refused)}). "
                f"Check {provider.credentials}; until then no invoice can be created.",
            )
        since = provider.failing_since
        if since and time.monotonic() - since > 300 and provider.name not in self.outage_alerted:
            self.outage_alerted.add(provider.name)
            self.alert(
                "outage",
                f"⚠️ {provider.label} has not been answering for over 5 minutes. Invoices cannot "
                "be created; payments are checked again when it is back.",
            )
        elif since is None and provider.name in self.outage_alerted:
            self.outage_alerted.discard(provider.name)
            log.info("payments: %s answers again", provider.label)
            tell_owners(self.shop.db(), self.owners, f"✅ {provider.label} answers again.")


# Web ###########################################################################

ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def json_response(status, payload):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps(payload)


def add_routes(app, shop, routes):
    """Registers a route table, [(method, path, handler)], on a Bottle app. Handlers are
    module-level functions called as handler(shop, **url_args), so each can be read and tested on
    its own."""
    for method, path, handler in routes:
        app.route(path, method, functools.partial(handler, shop))


def header(name):
    """A request header, or None when missing or not text (a header that cannot be decoded is
    junk)."""
    try:
        return bottle.request.get_header(name)
    except UnicodeError:
        return None


def web_id_filter(conf):
    """Ids in paths: at most 18 digits, so they always fit SQLite's integers."""
    return r"[0-9]{1,18}", int, str


def web_undecodable_input():
    """Headers and form fields that are not text get a 400 here, not a traceback later."""
    environ = bottle.request.environ
    try:
        for key, value in environ.items():  # as bottle decodes a header when it is read
            if (key[:5] == "HTTP_" or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) and isinstance(
                value, str
            ):
                value.encode("latin1").decode("utf8")
        kind = (bottle.request.content_type or "").lower()
        if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            bottle.request.forms.decode()
            for upload in bottle.request.files.values():
                _ = upload.filename  # reading it decodes it
        if environ.get("QUERY_STRING"):
            bottle.request.query.decode()
    except (UnicodeError, LookupError, ValueError):
        raise bottle.HTTPError(400, "The request is not readable text.") from None


# What every answer carries unless it says otherwise (the Mini App's page may be framed: see its
# CSP).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)


def web_security_headers():
    h = bottle.response.headers
    if bottle.request.path.startswith("/admin"):
        h["Content-Security-Policy"] = ADMIN_CSP
        h["Cache-Control"] = "no-store"
    for name, value in SECURITY_HEADERS:
        if name != "X-Frame-Options" or bottle.request.path != "/app":
            h.setdefault(name, value)


def web_favicon(shop):
    return bottle.HTTPResponse(status=204, headers={"Cache-Control": "public, max-age=86400"})


def web_healthz(shop):
    state = shop.health()
    return json_response(200 if state["status"] == "ok" else 503, state)


def web_webhook_body():
    """A webhook's body, or None when it is over 64 KB (no provider sends one that large)."""
    if (bottle.request.content_length or 0) > 65536:
        return None
    body = bottle.request.body.read(65537)
    return body if len(body) <= 65536 else None


def web_nowpayments_ipn(shop):
    """The NOWPayments IPN (the sandbox's, in sandbox mode), at the address it has always had."""
    body = web_webhook_body()
    if body is None:
        return json_response(413, {"error": "the body is larger than 64 KB"})
    code, answer = shop.payments.handle_ipn(
        body, header("x-nowpayments-sig"), bottle.request.remote_addr
    )
    return json_response(code, answer)


def web_webhook(shop, provider):
    """POST /webhook/<provider>: a payment provider's news."""
    body = web_webhook_body()
    if body is None:
        return json_response(413, {"error": "the body is larger than 64 KB"})
    code, answer = shop.payments.handle_webhook(
        provider, body, bottle.request.headers, bottle.request.remote_addr
    )
    return json_response(code, answer)


def browser_language(conn, header):
    """The language a browser asks for (Accept-Language, by its q weights) that the shop speaks,
    else the shop's default language."""
    wanted = []
    for i, part in enumerate((header or "")[:500].split(",")):
        tag, *parameters = [piece.strip() for piece in part.split(";")]
        weight = 1.0  # (a weight, not money)
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if 0 < weight <= 1:  # q=0 means "not this one"
            wanted.append((-weight, i, tag))
    for _, _, tag in sorted(wanted):
        found = match_language(tag)
        if found:
            return found
    return default_language(conn)


def web_index(shop):
    """The shop's public page, in the browser's language."""
    conn = shop.db()
    code = browser_language(conn, bottle.request.headers.get("Accept-Language"))
    bottle.response.set_header("Content-Language", code)
    bottle.response.set_header("Vary", "Accept-Language")
    with speaking(code):
        words = {
            "test_mode": tr(
                "Test mode: payments are simulated and only the shop's owners can buy. The shop "
                "opens once it takes real payments."
            ),
            "sandbox": tr("Sandbox mode: no real payments are taken."),
            "in_stock": tr("In stock now in:"),
            "empty": tr("The shop is empty right now."),
            "open_bot": tr("Shop in Telegram: @{bot}", bot=shop.bot_username or ""),
            "bot": tr("Shop through our Telegram bot."),
            "status": tr("Status:"),
        }
        cities = [
            {**city, "units_text": ntr("{n} item", "{n} items", city["units"])}
            for city in list_cities(conn)
        ]
    return bottle.template(
        "index",
        template_lookup=[str(TEMPLATES_DIR)],
        shop=shop,
        lang=code.replace("_", "-"),
        words=words,
        name=get_setting(conn, "shop_name"),
        cities=cities,
        health=shop.health(),
    )


class StaticGzip:
    """Text assets (scripts, styles, SVG) gzipped once per version of the file and kept, shared
    by the web server's threads: phones fetch a fraction of the bytes, the server compresses each
    file once."""

    TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

    def __init__(self):
        self.files = {}  # path -> (mtime_ns, size, gzipped bytes)
        self.lock = threading.Lock()

    def get(self, path):
        """(gzipped bytes, ETag, mtime) of a text asset under STATIC_DIR; None for any other."""
        full = (STATIC_DIR / path).resolve()
        if full.suffix not in self.TYPES or not full.is_relative_to(STATIC_DIR.resolve()):
            return None
        try:
            stat = full.stat()
        except OSError:
            return None
        with self.lock:
            cached = self.files.get(path)
            if not cached or cached[:2] != (stat.st_mtime_ns, stat.st_size):
                cached = (stat.st_mtime_ns, stat.st_size, gzip.compress(full.read_bytes(), 9))
                self.files[path] = cached
        return cached[2], f'"{stat.st_mtime_ns:x}-{stat.st_size:x}-gz"', stat.st_mtime


def web_static(shop, path):
    # The Mini App's code revalidates on every load (a cheap 304): new versions reach phones now.
    cache = "no-cache" if path.startswith("app/") else "public, max-age=3600"
    packed = None
    if "gzip" in (header("Accept-Encoding") or "").lower():
        packed = shop.static_gzip.get(path)
    if packed is None:
        return bottle.static_file(path, root=str(STATIC_DIR), headers={"Cache-Control": cache})
    body, etag, mtime = packed
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "Last-Modified": email.utils.formatdate(mtime, usegmt=True),
    }
    if header("If-None-Match") == etag:
        return bottle.HTTPResponse(status=304, headers=headers)
    content_type = StaticGzip.TYPES[Path(path).suffix]
    return bottle.HTTPResponse(
        body,
        headers={
            **headers,
            "Content-Type": f"{content_type}; charset=UTF-8",
            "Content-Encoding": "gzip",
        },
    )


def web_media(shop, name):
    # Only product photos live here; unit media (the goods) are in media/private, never routed.
    return bottle.static_file(
        name,
        root=str(shop.config.media_dir / "public"),
        headers={"Cache-Control": "public, max-age=86400"},
    )


def web_error_page(error):
    """An error as a JSON or HTML page; ours in the language of the request (a Mini App API call
    records the shopper's in the environ), else the source language."""
    message = error.body
    code = bottle.request.environ.get("shop.language")
    with speaking(code if code in available_languages() else SOURCE_LANGUAGE):
        if storage_problem(error.exception):  # logged there for the owner
            bottle.response.status = 503
            bottle.response.set_header("Retry-After", "60")
            message = tr(STORAGE_BUSY)
        elif error.status_code >= 500:
            log.error(
                "web: %s %s failed: %s",
                bottle.request.method,
                bottle.request.path,
                error.exception or error.body,
                exc_info=error.exception,
            )
            message = tr("Internal error; the owner can find it in the log.")
    if bottle.request.path.startswith(("/api", "/app/i18n", "/healthz", "/webhook", "/sandbox")):
        bottle.response.content_type = "application/json"
        return json.dumps({"error": message})
    bottle.response.content_type = "text/html; charset=utf-8"
    return (
        f"<!doctype html><title>{error.status_code}</title><h1>{error.status_code}</h1>"
        f"<p>{html.escape(str(message))}</p>"
    )


WEB_ROUTES = [
    ("GET", "/favicon.ico", web_favicon),
    ("GET", "/healthz", web_healthz),
    ("POST", "/webhook", web_nowpayments_ipn),
    ("POST", "/webhook/<provider:re:[a-z0-9_]{1,40}>", web_webhook),
    ("GET", "/", web_index),
    ("GET", "/static/<path:path>", web_static),
    ("GET", "/media/<name:re:[0-9a-f]{32}\\.(jpg|png|gif|webp)>", web_media),
]


WEB_ERROR_CODES = (400, 403, 404, 405, 409, 413, 429, 500)


# Web: Mini App #################################################################

# Telegram tells no language for the preview shopper: the preview speaks the shop's default one.
PREVIEW_USER = {"id": -1, "first_name": "Preview shopper", "username": None, "language_code": None}


INIT_DATA_MAX_AGE = 24 * 3600


def init_data_hash(fields, bot_token):
    """Telegram's Mini App signature: HMAC-SHA256 over the sorted key=value lines, keyed by
    HMAC-SHA256("WebAppData", bot token)."""
    check = "\n".join(f"{k}={fields[k]}" for k in sorted(fields))
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    return hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()


PREVIEW_FOR_OWNERS = N_(
    "With a bot connected, the Mini App preview in a browser is for the shop's owners: "
    "log in to the admin first, or open the shop from the bot."
)


def preview_init_data(shop):
    return sign_init_data(PREVIEW_USER, shop.webapp_token, query_id="preview")


def sign_init_data(user, bot_token, auth_date=None, **fields):
    """initData as Telegram would make it for this user (the preview shopper's, and tests')."""
    fields = {
        "user": json.dumps(user, ensure_ascii=False, separators=(",", ":")),
        "auth_date": str(int(auth_date if auth_date is not None else time.time())),
        **fields,
    }
    return urlencode({**fields, "hash": init_data_hash(fields, bot_token)}, quote_via=quote)


def verify_init_data(init_data, bot_token, *, max_age=INIT_DATA_MAX_AGE, now=None):
    """Check a Mini App's raw initData; return its user (a dict with an int id) or raise
    Unauthorized (in the language of the moment: the shop's default, as no user is known yet)."""
    if not init_data:
        raise Unauthorized(tr("Missing Telegram initData: open the shop from the bot."))
    if len(init_data) > 8192:
        raise Unauthorized(tr("initData is too long."))
    try:
        pairs = parse_qsl(init_data, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise Unauthorized(tr("initData is not a query string.")) from None
    fields = {}
    for key, value in pairs:
        if key in fields:
            raise Unauthorized(tr("initData repeats a field."))
        fields[key] = value
    given = fields.pop("hash", "")
    if not re.fullmatch(r"[0-9a-f]{64}", given):
        raise Unauthorized(tr("initData has no valid hash."))
    if not hmac.compare_digest(init_data_hash(fields, bot_token), given):
        raise Unauthorized(tr("initData is not signed by this shop's bot."))
    if not re.fullmatch(r"\d{1,12}", fields.get("auth_date", "")):
        raise Unauthorized(tr("initData has no auth_date."))
    age = (time.time() if now is None else now) - int(fields["auth_date"])
    if max_age is not None and age > max_age:
        raise Unauthorized(
            tr(
                "This session is older than 24 hours: close the shop and open it again from "
                "the bot."
            )
        )
    if age < -300:
        raise Unauthorized(tr("initData comes from the future."))
    try:
        user = json.loads(fields.get("user", ""))
    except ValueError:
        user = None
    if (
        not isinstance(user, dict)
        or not isinstance(user.get("id"), int)
        or isinstance(user["id"], bool)
    ):
        raise Unauthorized(tr("initData has no user."))
    # Telegram writes ids that fit SQLite's integers and text for names; anything else is no user.
    if not -(2**63) < user["id"] < 2**63 or not all(
        isinstance(user.get(k), (str, type(None)))
        for k in ("first_name", "username", "language_code")
    ):
        raise Unauthorized(tr("initData has no valid user."))
    return user


def _body_int(body, key, low, high):
    value = body.get(key)
    if isinstance(value, bool) or not re.fullmatch(
        r"-?\d{1,18}", str(value) if value is not None else ""
    ):
        # TRANSLATORS: key is a field of the app's request to the shop, like product_id
        raise InvalidInput(tr("{key} must be a whole number.", key=key))
    value = int(value)
    if not low <= value <= high:
        # TRANSLATORS: key is a field of the app's request to the shop, like quantity
        raise InvalidInput(tr("{key} must be from {low} to {high}.", key=key, low=low, high=high))
    return value


def stars_amount(payment):
    """A payment's amount in whole Telegram Stars, or None: not a Stars payment (or no payment)."""
    if payment and payment["pay_currency"] == "xtr":
        return int(payment["pay_amount"])
    return None


def offered_methods(methods, stars):
    """The ways to pay the Mini App offers: methods, less Stars when the shop takes none."""
    return [m for m in methods if m != "stars" or stars]


def invoice_json(conn, payment, sandbox, simulate=False):
    """An invoice as the Mini App shows it; amounts also as the shopper's language writes them
    (the *_text fields)."""
    closed = payment["status"] == "waiting" and not invoice_is_open(payment)
    stars = payment["pay_currency"] == "xtr"
    order_status = get_order_status(conn, payment["order_id"])
    discount = order_discount(conn, payment["order_id"])
    return {
        "payment_id": payment["provider_id"],
        "order_id": payment["order_id"],
        "kind": payment["kind"],
        "pay_address": payment["pay_address"],
        "pay_amount": payment["pay_amount"],
        "pay_currency": payment["pay_currency"],
        "payin_extra_id": payment["payin_extra_id"],
        "price_amount": cents_to_str(payment["price_cents"]),
        "price_text": fmt_eur(payment["price_cents"]),
        "price_currency": "EUR",
        # What a discount code took off its order ('🏷 Code SPRING10: −€2.50'), else None.
        "discount_text": html_to_plain(discount_line(discount)) if discount else None,
        "expires_at": payment["expires_at"][:19] + "Z",
        "status": payment["status"],
        # STATUS_TEXT's words, in the shopper's language once the catalogs have them.
        "status_text": tr("⌛ No longer open") if closed else tr(payment_status_text(payment)),
        "final": payment["status"] not in OPEN_STATUSES,
        "open": payment["status"] == "waiting" and not closed,
        # What the shop did: the order 'paid' (delivered), or 'cancelled'/'expired' (money, if
        # any, credited).
        "order_status": order_status,
        "outcome": payment["outcome"],
        "credited": cents_to_str(payment["credited_cents"]),
        "credited_text": fmt_eur(payment["credited_cents"]),
        "payment_uri": None
        if stars
        else payment_uri(payment["pay_currency"], payment["pay_address"], payment["pay_amount"]),
        "qr_url": None if stars else f"/api/payment/{payment['provider_id']}/qr",
        # Telegram Stars: the link Telegram.WebApp.openInvoice opens (none in the sandbox), and
        # the amount in whole Stars.
        "invoice_link": payment["pay_address"] or None if stars else None,
        "stars": stars_amount(payment),
        "stars_text": fmt_stars(stars_amount(payment)) if stars else None,
        "sandbox": sandbox,
        "simulate": simulate and invoice_is_open(payment),
    }


def _catalog_product(r, rule, rate, stars):
    methods = offered_methods(product_methods(r, rule), stars)
    in_stars = stars_of(r, rate) if "stars" in methods else None
    return {
        "id": r["id"],
        "name": r["name"],
        "description": r["description"],
        "price": cents_to_str(r["price_cents"]),
        "price_text": fmt_eur(r["price_cents"]),
        "available": r["available"],
        "photo_url": f"/media/{r['photo']}" if r["photo"] else None,
        "kind": r["kind"],
        "methods": methods,
        "stars": in_stars,
        "stars_text": fmt_stars(in_stars) if in_stars is not None else None,
    }


def catalog_json(conn, stars=True):
    """Everything in stock: cities > districts > products, with availability, price in Stars
    (None when not paid in Stars) and the ways each may be paid; names and prices in the
    language of the moment. stars: whether the shop takes Telegram Stars. After a district's
    products in stock come those sold out there (available 0: 🔔 Notify me), as in the bot."""
    rule, rate, cities, lowest = telegram_rule(conn), stars_per_euro(conn), {}, {}
    districts = {}
    for r in list_catalog_offers(conn):
        city = cities.setdefault(
            r["city_id"], {"id": r["city_id"], "name": r["city"], "districts": {}}
        )
        district = city["districts"].setdefault(
            r["district_id"], {"id": r["district_id"], "name": r["district"], "products": []}
        )
        districts[r["district_id"]] = district
        lowest[r["district_id"]] = min(
            lowest.get(r["district_id"], r["price_cents"]), r["price_cents"]
        )
        district["products"].append(_catalog_product(r, rule, rate, stars))
    for r in list_sold_out_offers(conn):
        if r["district_id"] in districts:
            districts[r["district_id"]]["products"].append(_catalog_product(r, rule, rate, stars))
    return {
        "cities": [
            dict(
                c,
                districts=[
                    dict(d, lowest_price_text=fmt_eur(lowest[d["id"]]))
                    for d in c["districts"].values()
                ],
            )
            for c in cities.values()
        ]
    }


class CatalogCache:
    """The Mini App's catalog encoded, plain and gzipped, one per language (names and prices are
    the shopper's), built again only when catalog_version moved (triggers move it with every change
    to places, products and units, from any connection or process). While nothing was committed in
    this process it is served without asking SQLite, checked once a second for other processes'
    changes (an import from the command line). Gzip makes a 1,000-offer catalog many times
    smaller, for phones and for the server's buffers."""

    CHECK_SECONDS = 1.0
    EMPTY = (None, None, 0.0, b"", b"")

    def __init__(self):
        # language -> (version, commits, checked at, plain, gzipped), each replaced whole
        self.built = {}
        self.lock = threading.Lock()  # one build at a time; the others wait for it and share it

    def fresh(self, code, commits=None, now=None):
        """(plain, gzipped) of the catalog in language `code` when it may be served without asking
        SQLite (nothing committed in this process since, checked within the second), else None."""
        commits = _commits.value if commits is None else commits
        now = time.monotonic() if now is None else now
        _, seen, checked, raw, packed = self.built.get(code, self.EMPTY)
        if seen == commits and now - checked < self.CHECK_SECONDS:
            return raw, packed
        return None

    def get(self, conn, stars=True):
        """The catalog in the language of the moment. stars: whether the shop takes Telegram
        Stars (the same for the life of the process)."""
        code = current_language().code
        commits, now = _commits.value, time.monotonic()  # both before anything is read
        found = self.fresh(code, commits, now)
        if found is not None:
            return found
        version = self.built.get(code, self.EMPTY)[0]
        current = get_catalog_version(conn)
        if current != version:
            with self.lock:
                if self.built.get(code, self.EMPTY)[0] != current:
                    raw = json.dumps(catalog_json(conn, stars)).encode()
                    built = (current, commits, now, raw, gzip.compress(raw, 6, mtime=0))
                    self.built[code] = built
                    return built[3:]
        built = (current, commits, now, *self.built.get(code, self.EMPTY)[3:])
        self.built[code] = built
        return built[3:]


def payment_ways_json(conn, user_id, lines, stars=True):
    """How lines [(product_id, district_id, quantity)] may be paid: the ways all of them allow,
    their price in Stars (None unless Stars is one), and when they share none, the parts that
    each do (checked out one at a time with {"part": true}); the shopper's code taken off."""
    quote = quote_lines(conn, user_id, lines)
    lines, offers = quote.lines, quote.offers
    methods = offered_methods(checkout_methods(conn, offers), stars)
    in_stars = (
        stars_after_discount(
            stars_total(conn, offers, lines), quote.total_cents, quote.discount_cents
        )
        if "stars" in methods
        else None
    )
    ways = {
        "methods": methods,
        "stars": in_stars,
        "stars_text": fmt_stars(in_stars) if in_stars is not None else None,
        "parts": [],
    }
    if not methods:
        for part_methods, part in split_by_methods(conn, lines, offers):
            part_quote = quote_lines(conn, user_id, part)
            part_total = part_quote.total_cents
            usable = offered_methods(part_methods, stars)
            part_stars = (
                stars_after_discount(
                    stars_total(conn, part_quote.offers, part),
                    part_quote.total_cents,
                    part_quote.discount_cents,
                )
                if "stars" in usable
                else None
            )
            ways["parts"].append(
                {
                    "methods": usable,
                    "lines": [[p, d, q] for p, d, q in part],
                    "total": cents_to_str(part_total),
                    "total_text": fmt_eur(part_total),
                    "stars": part_stars,
                    "stars_text": fmt_stars(part_stars) if part_stars is not None else None,
                }
            )
    return ways


def payment_amounts_json(conn, user, lines, stars=True):
    """What paying lines [(product_id, district_id, quantity)] costs each way some of them may be
    paid, the shopper's code taken off: {way: {"total", "total_text", ...}}, with the Stars for
    "stars" and the balance and what it lacks for "balance", and what the code took off
    ("discount_text", None when nothing). A basket that shares no way to pay checks out, paid one
    way, every line that allows it (api_order_lines, part)."""
    lines = normalise_lines(lines)
    offers = price_lines(conn, lines)[1]
    rule, amounts, balance_cents = telegram_rule(conn), {}, user["balance_cents"]
    for way in PAY_METHODS:
        chosen = [
            (line, offer)
            for line, offer in zip(lines, offers, strict=True)
            if way in offered_methods(product_methods(offer, rule), stars)
        ]
        if not chosen:
            continue
        quote = quote_lines(conn, user["id"], [line for line, _ in chosen])
        total = quote.total_cents
        amount = amounts[way] = {
            "total": cents_to_str(total),
            "total_text": fmt_eur(total),
            "discount_text": fmt_eur(quote.discount_cents) if quote.discount_cents else None,
        }
        if way == "stars":
            in_stars = stars_after_discount(
                stars_total(conn, quote.offers, quote.lines),
                quote.total_cents,
                quote.discount_cents,
            )
            amount.update(stars=in_stars, stars_text=fmt_stars(in_stars))
        if way == "balance":
            short = total - balance_cents
            amount.update(
                balance_text=fmt_eur(balance_cents),
                short_text=fmt_eur(short) if short > 0 else None,
            )
    return amounts


def basket_photo_url(conn, line):
    """A basket line's product photo (its thumbnail), or None: no photo, or no longer on sale."""
    try:
        photo = get_offer(conn, line.product_id, line.district_id)["photo"]
    except NotFound:
        return None
    return f"/media/{photo}" if photo else None


def promo_json(conn, user_id, lines, list_cents):
    """The code on the shopper's basket and what it does to these lines: {"code", "discount",
    "discount_text", "subtotal", "subtotal_text", "total", "total_text", "refused"} ("refused":
    why it takes nothing off, else None), or None when there is no code."""
    promo = basket_promo(conn, user_id)
    if promo is None:
        return None
    try:
        quote = quote_lines(conn, user_id, lines) if lines else None
    except ShopError:  # a line no longer on sale: checkout says what to do; no discount till then
        quote = None
    off = quote.discount_cents if quote else 0
    subtotal = quote.subtotal_cents if quote else list_cents
    return {
        "code": promo["code"],
        "discount": cents_to_str(off),
        "discount_text": fmt_eur(off),
        "subtotal": cents_to_str(subtotal),
        "subtotal_text": fmt_eur(subtotal),
        "total": cents_to_str(subtotal - off),
        "total_text": fmt_eur(subtotal - off),
        "refused": (quote.refused or None) if quote else None,
    }


def basket_json(conn, user_id, stars=True):
    """The shopper's basket, its amounts also as their language writes them (*_text): "total" is
    what it costs with the shopper's code taken off ("subtotal" before; "promo" says how)."""
    basket = get_basket(conn, user_id)
    lines = [(line.product_id, line.district_id, line.quantity) for line in basket.lines]
    try:
        ways = payment_ways_json(conn, user_id, lines, stars) if lines else None
    except ShopError:  # a line no longer on sale: the basket shows it; checkout says what to do
        ways = None
    promo = promo_json(conn, user_id, lines, basket.total_cents)
    return {
        "payment": ways,
        "items": [
            {
                "id": line.item_id,
                "product_id": line.product_id,
                "district_id": line.district_id,
                "name": line.name,
                "place": line.place,
                "price": cents_to_str(line.price_cents),
                "price_text": fmt_eur(line.price_cents),
                "sum_text": fmt_eur(line.total_cents),
                "quantity": line.quantity,
                "available": line.available,
                "reserved": line.reserved,
                "photo_url": basket_photo_url(conn, line),
            }
            for line in basket.lines
        ],
        "subtotal": cents_to_str(basket.total_cents),
        "subtotal_text": fmt_eur(basket.total_cents),
        "promo": promo,
        # Whether the shop has a code a shopper could use now (the basket then offers a field).
        "promo_offered": promo_codes_offered(conn),
        "total": promo["total"] if promo else cents_to_str(basket.total_cents),
        "total_text": promo["total_text"] if promo else fmt_eur(basket.total_cents),
        "count": basket.count,
    }


def orders_json(conn, user_id, before_id=None):
    orders = list_orders(conn, user_id, before_id=before_id, limit=20)
    out = []
    for o in orders:
        items = list_order_goods(conn, o["id"])
        paid = o["status"] == "paid"
        payment = latest_order_payment(conn, o["id"])
        in_stars = stars_amount(payment)
        out.append(
            {
                "id": o["id"],
                "status": o["status"],
                "total": cents_to_str(o["total_cents"]),
                "total_text": fmt_eur(o["total_cents"]),
                # What a discount code took off (the total is what was paid), else None.
                "discount_text": fmt_eur(o["discount_cents"]) if o["discount_cents"] else None,
                "method": o["payment_method"],
                # Paid (or to be paid) in Telegram Stars: how many, else None.
                "stars": in_stars,
                "stars_text": fmt_stars(in_stars) if in_stars is not None else None,
                "created_at": o["created_at"][:19] + "Z",
                "created_text": tr("{when} UTC", when=current_language().when(o["created_at"])),
                "payment_id": payment["provider_id"] if payment else None,
                "items": [
                    {
                        "id": i["id"],
                        "name": i["product_name"],
                        "place": i["place_name"],
                        "price": cents_to_str(i["price_cents"]),
                        "price_text": fmt_eur(i["price_cents"]),
                        # The goods themselves, only once paid for, and only to their buyer.
                        "content": i["content"] if paid else None,
                        "media_url": f"/api/orders/{o['id']}/items/{i['id']}/media"
                        if paid and i["media"]
                        else None,
                    }
                    for i in items
                ],
            }
        )
    return {"orders": out, "next_before": orders[-1]["id"] if len(orders) == 20 else None}


class MiniAppCache:
    """A dict shared by the web server's threads, behind a lock, emptied when it holds `limit`
    entries (what it holds is found again at the cost of a query or a signature check)."""

    def __init__(self, limit=4096):
        self.items, self.limit, self.lock = {}, limit, threading.Lock()

    def get(self, key, default=None):
        with self.lock:
            return self.items.get(key, default)

    def put(self, key, value):
        with self.lock:
            if len(self.items) >= self.limit:
                self.items.clear()
            self.items[key] = value


class MiniAppTexts:
    """The Mini App's own texts per language, as GET /app/i18n/<lang>.json serves them: from the
    language's catalog, only the messages found in static/app/ (the Python ones stay on the
    server), built once per version of the .po files and kept, shared by the web server's
    threads."""

    def __init__(self):
        self.built = {}  # language -> (the .po files' (mtime_ns, size), body, ETag)
        self.lock = threading.Lock()

    def get(self, code):
        """(JSON bytes, ETag) of a language from available_languages()."""
        chain = [code] + [base for base in (code.split("_")[0],) if base != code]
        paths = [LOCALES_DIR / c / "LC_MESSAGES" / "messages.po" for c in chain]
        stamp = tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in paths if p.exists()))
        with self.lock:
            built = self.built.get(code)
            if built is None or built[0] != stamp:
                body = json.dumps(app_texts_json(code), ensure_ascii=False).encode()
                etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                built = self.built[code] = (stamp, body, etag)
        return built[1:]


def app_texts_json(code):
    """{"lang", "locale", "plural", "messages": {msgid: text or [plural forms]}} for the Mini
    App: a message with context is keyed "context\u0004msgid" (as gettext keys it); a language
    whose catalog lacks a text has it from its base language's (pt_BR from pt), else the app
    shows the source text."""
    import babel.messages.pofile

    messages, plural = {}, 2
    base = code.split("_")[0]
    for c in ([base] if base != code and base in available_languages() else []) + [code]:
        if c == SOURCE_LANGUAGE:
            continue
        with open(LOCALES_DIR / c / "LC_MESSAGES" / "messages.po", "rb") as f:
            catalog = babel.messages.pofile.read_po(f, locale=c)
        plural = catalog.num_plurals
        for message in catalog:
            if not message.id or message.fuzzy or not message.string:
                continue
            if not any(path.startswith("static/app/") for path, _ in message.locations):
                continue
            key = message.id[0] if message.pluralizable else message.id
            if message.context:
                key = f"{message.context}\x04{key}"
            text = list(message.string) if message.pluralizable else message.string
            if any(text):
                messages[key] = text
    locale = language(code).format_locale.replace("_", "-")
    return {"lang": code, "locale": locale, "plural": plural, "messages": messages}


class MiniAppCaches:
    """What the Mini App keeps between requests, shared by the web server's threads."""

    def __init__(self):
        self.catalog = CatalogCache()
        # (id, names) -> (row, commits, when): no query per request while nothing changed
        self.users = MiniAppCache()
        # initData -> (its user, its auth_date): the app sends the same one all session long
        self.verified = MiniAppCache()
        self.texts = MiniAppTexts()
        # "default" -> (the shop's default language, commits, when), as for users
        self.default = MiniAppCache(limit=1)

    def signed_user(self, init_data):
        """The user an initData was found to sign, while it has not expired; None when it must be
        checked (again)."""
        user, signed_at = self.verified.get(init_data, (None, 0))
        if user is None or time.time() - signed_at > INIT_DATA_MAX_AGE:
            return None
        return user

    def shopper_row(self, person):
        """The users row of api_person(user) when it was read since the last commit in this
        process and within 2 s (a commit, here or elsewhere, may have changed it), else None."""
        row, seen, fetched = self.users.get(tuple(person.values()), (None, None, 0.0))
        if row is None or seen != _commits.value or time.monotonic() - fetched > 2.0:
            return None
        return row

    def default_language(self, conn):
        """The shop's default language, read again after a commit (the owner may have changed
        it) or after 2 seconds (another process may have)."""
        commits, now = _commits.value, time.monotonic()
        code, seen, fetched = self.default.get("default", (None, None, 0.0))
        if code is None or seen != commits or now - fetched > 2.0:
            code = default_language(conn)
            self.default.put("default", (code, commits, now))
        return code


def api_init_data():
    """The request's raw initData: its own header, or the Authorization header's "tma" one."""
    init_data = header("X-Telegram-Init-Data") or ""
    if not init_data:
        auth = header("Authorization") or ""
        init_data = auth[4:].strip() if auth[:4].lower() == "tma " else ""
    return init_data


def api_person(user):
    """What touch_user records of an initData user (and the key of its row in the users cache)."""
    return {
        "id": user["id"],
        "first_name": str(user.get("first_name") or "")[:64],
        "username": user.get("username"),
        "language_code": user.get("language_code"),
    }


def api_current_user(shop):
    """The shopper whose initData signs this request (their users row), or Unauthorized/Banned."""
    caches, init_data = shop.miniapp, api_init_data()
    user = caches.signed_user(init_data)
    if user is None:
        user = verify_init_data(init_data, shop.webapp_token)
        caches.verified.put(init_data, (user, int(dict(parse_qsl(init_data))["auth_date"])))
    if user["id"] <= 0 and not (shop.config.sandbox and user["id"] == PREVIEW_USER["id"]):
        raise Unauthorized(tr("Not a Telegram user."))
    person = api_person(user)
    commits, now = _commits.value, time.monotonic()  # before the row is read
    row = caches.shopper_row(person)
    if row is None:
        row = touch_user(shop.db(), person)
        caches.users.put(tuple(person.values()), (row, commits, now))
    if row["is_banned"]:
        with speaking(shopper_language(shop.db(), row)):  # told in their own language
            raise Banned()
    return row


def api_body():
    """The request's JSON object (at most 16 KB); an empty body is {}."""
    if (bottle.request.content_length or 0) > 16384:
        raise InvalidInput(tr("The request is too large."))
    raw = bottle.request.body.read(16385)
    try:
        data = parse_json(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput(tr("The request body must be a JSON object.")) from None
    if not isinstance(data, dict):
        raise InvalidInput(tr("The request body must be a JSON object."))
    return data


def api_call(shop, method, fn, **url_args):
    """Runs a Mini App API handler, fn(shop, conn, user, data, **url_args), for the shopper whose
    initData signs the request, in their language (until they are known, in the shop's default
    one): its result as JSON (or the response it made), errors as JSON."""
    bottle.response.headers["Cache-Control"] = "no-store"
    conn, environ = shop.db(), bottle.request.environ
    try:
        environ["shop.language"] = shop.miniapp.default_language(conn)
        with speaking(environ["shop.language"]):
            user = api_current_user(shop)
        environ["shop.language"] = shopper_language(conn, user)
        with speaking(environ["shop.language"]):
            body = api_body() if method in ("POST", "DELETE") else {}
            result = fn(shop, conn, user, body, **url_args)
    except ProviderError as e:
        log.warning("mini app: %s", e.detail)
        return json_response(e.status, {"error": str(e)})
    except ShopError as e:
        return json_response(e.status, {"error": str(e)})
    if isinstance(result, bottle.HTTPResponse):
        return result
    return json_response(200, result)


def api_coin_of(data):
    coin = str(data.get("currency") or "").lower()
    if coin not in ("balance", "stars") and coin not in COIN_LABELS:
        raise InvalidInput(
            tr("Unknown currency {currency}.", currency=repr(str(data.get("currency"))[:20]))
        )
    return coin


def api_request_id(data):
    """A client-made id for one checkout, so a repeated request reuses it instead of buying
    twice."""
    rid = data.get("request_id")
    if rid is None:
        return None
    if not re.fullmatch(r"[0-9a-f]{16}", str(rid)):
        raise InvalidInput(tr("request_id must be 16 hex digits."))
    return str(rid)


def api_invoice(shop, conn, user, payment):
    return invoice_json(conn, payment, shop.config.sandbox, shop.may_simulate(user["id"]))


def takes_stars(shop):
    """Whether the shop takes Telegram Stars (set for the life of the process)."""
    return shop.payments.stars is not None


# What the Mini App offers to top up with, in cents, where the shop's limits allow them.
SUGGESTED_TOP_UPS = (1000, 2000, 5000, 10000)


def api_me(shop, conn, user, data):
    """The shopper, the shop, and the language the shop speaks to them (with those it speaks, by
    their own names); amounts also as that language writes them."""
    c = shop.config
    low, high = shop.setting("min_deposit_cents"), c.max_deposit_cents
    return {
        "id": user["id"],
        "first_name": user["first_name"],
        "username": user["username"],
        "balance": cents_to_str(user["balance_cents"]),
        "balance_text": fmt_eur(user["balance_cents"]),
        "currency": "EUR",
        "shop_name": get_setting(conn, "shop_name"),
        "sandbox": c.sandbox,
        "preview": user["id"] == PREVIEW_USER["id"],
        "test_mode": shop.test_mode,
        "can_buy": shop.may_buy(user["id"]),
        "stars": takes_stars(shop),
        "telegram_rule": telegram_rule(conn),
        "min_deposit": cents_to_str(low),
        "min_deposit_text": fmt_eur(low),
        "max_deposit": cents_to_str(high),
        "max_deposit_text": fmt_eur(high),
        "suggested_top_ups": [
            {"amount": cents_to_str(cents), "amount_text": fmt_eur(cents)}
            for cents in SUGGESTED_TOP_UPS
            if low <= cents <= high
        ],
        "language": current_language().code,
        "language_choice": match_language(user["language"]),
        "languages": [
            {"code": code, "name": language(code).name()} for code in available_languages()
        ],
        "referral": api_referral(conn, user["id"], shop.bot_username),
    }


def api_referral(conn, user_id, bot_username):
    """The shopper's link that brings friends, and what it earns them; None while referrals are
    off (referral_link)."""
    link = referral_link(conn, user_id, bot_username)
    if link is None:
        return None
    return {
        "link": link,
        "text": tr(
            "You get {percent} of the first order of each friend who joins through it.",
            percent=fmt_percent(referral_percent(conn)),
        ),
    }


def api_set_language(shop, conn, user, data):
    """POST /api/language {"language": "de"}: the shop speaks that language to the shopper from
    now on (in the bot too); null: Telegram's language again. Answers as /api/me does, in it."""
    code = data.get("language")
    if code is not None and code not in available_languages():
        raise InvalidInput(
            tr(
                "The shop does not speak {language}; it speaks {languages}.",
                language=repr(str(code)[:20]),
                languages=", ".join(available_languages()),
            )
        )
    set_user_language(conn, user["id"], code)
    user = get_user(conn, user["id"])
    code = shopper_language(conn, user)
    bottle.request.environ["shop.language"] = code
    with speaking(code):
        return api_me(shop, conn, user, data)


def catalog_headers(packing):
    """The headers of GET /api/catalog's answer (packing: gzipped)."""
    return {
        "Content-Type": "application/json",
        "Cache-Control": "no-store",
        "Vary": "Accept-Encoding",
        **({"Content-Encoding": "gzip"} if packing else {}),
    }


def api_catalog(shop, conn, user, data):
    raw, packed = shop.miniapp.catalog.get(conn, takes_stars(shop))
    packing = "gzip" in (header("Accept-Encoding") or "").lower()
    return bottle.HTTPResponse(packed if packing else raw, headers=catalog_headers(packing))


class CatalogFastPath:
    """GET /api/catalog answered before Bottle, in a WSGI layer around the app. The Mini App asks
    for the catalog each time it opens, so a broadcast brings hundreds at once, and Bottle's own
    work per request (routing, request and response objects, hooks) was most of what the shop
    spent on one. When everything the answer needs is already in memory it is given here: the
    shopper's initData was verified and has not expired, their row was read since the last commit
    and they are not banned, and the catalog in their language was built and checked within the
    second. The answer is the one the full path gives, byte for byte, headers included (a test
    compares them). Anything else takes the full path, which answers it and fills the caches: a
    first or expired initData, one in the Authorization header, a banned or unknown shopper, the
    preview shopper, a query string, a header that is not ASCII."""

    def __init__(self, shop, app):
        self.shop, self.app, self.served = shop, app, 0

    def __call__(self, environ, start_response):
        if (
            environ.get("PATH_INFO") == "/api/catalog"
            and environ.get("REQUEST_METHOD") == "GET"
            and not environ.get("QUERY_STRING")
        ):
            found = self.answer(environ)
            if found is not None:
                start_response("200 OK", found[0])
                self.served += 1
                return [found[1]]
        return self.app(environ, start_response)

    def answer(self, environ):
        """(headers, body) of the answer, or None for the full path."""
        if not all(v.isascii() for k, v in environ.items() if k[:5] == "HTTP_"):
            return None
        caches = self.shop.miniapp
        user = caches.signed_user(environ.get("HTTP_X_TELEGRAM_INIT_DATA"))
        if user is None or user["id"] <= 0:
            return None
        row = caches.shopper_row(api_person(user))
        if row is None or row["is_banned"]:
            return None
        found = caches.catalog.fresh(shopper_language(self.shop.db(), row))
        if found is None:
            return None
        packing = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "").lower()
        body = found[1] if packing else found[0]
        headers = [*catalog_headers(packing).items(), *SECURITY_HEADERS]
        return [*headers, ("Content-Length", str(len(body)))], body


def api_basket(shop, conn, user, data):
    return basket_json(conn, user["id"], takes_stars(shop))


def api_set_basket_line(shop, conn, user, data):
    """Set the quantity of a product from a district in the basket (0 takes it out)."""
    product_id = _body_int(data, "product_id", 1, 2**62)
    district_id = _body_int(data, "district_id", 1, 2**62)
    quantity = _body_int(data, "quantity", 0, MAX_QUANTITY)
    row = find_basket_line(conn, user["id"], product_id, district_id)
    if row and quantity == 0:
        set_basket_quantity(conn, user["id"], row["id"], 0)
    elif row:
        set_basket_quantity(conn, user["id"], row["id"], quantity)
    elif quantity:
        add_to_basket(conn, user["id"], product_id, district_id, quantity)
    return basket_json(conn, user["id"], takes_stars(shop))


def check_shown_total(quote, data, whole_basket):
    """A Mini App checkout is paid at the total its screen showed ("total" in the body): never
    another amount (PriceChanged; PromoRefused saying why, when the basket's code stopped
    applying). Without one, a whole basket whose code stopped applying is refused likewise."""
    shown = data.get("total")
    if shown is not None:
        try:
            shown = parse_eur(str(shown), minimum=0, maximum=MAX_EUR_CENTS)
        except InvalidInput:
            raise InvalidInput(
                tr('"total" must be the amount as a string, like "12.50".')
            ) from None
    if shown is None and not whole_basket:
        return
    if shown == quote.total_cents:
        return
    if quote.refused:
        raise PromoRefused(quote.refused + " " + tr("Remove the code to pay the full price."))
    if shown is not None:
        raise PriceChanged()


def api_set_promo(shop, conn, user, data):
    """POST /api/basket/promo {"code": "SPRING10"}: the code goes on the basket when it takes
    something off it (409 with the reason otherwise); returns the basket."""
    code = data.get("code")
    if not isinstance(code, str) or not code.strip():
        raise InvalidInput(tr("Please type a promo code."))
    apply_promo_code(conn, user["id"], code)
    return basket_json(conn, user["id"], takes_stars(shop))


def api_remove_promo(shop, conn, user, data):
    """DELETE /api/basket/promo: the basket without its code."""
    remove_promo_code(conn, user["id"])
    return basket_json(conn, user["id"], takes_stars(shop))


def api_delete_basket_line(shop, conn, user, data, item_id):
    set_basket_quantity(conn, user["id"], item_id, 0)
    return basket_json(conn, user["id"], takes_stars(shop))


def watches_json(conn, user_id):
    return {
        "watches": [
            {"product_id": w["product_id"], "district_id": w["district_id"]}
            for w in list_watches(conn, user_id)
        ]
    }


def api_watches(shop, conn, user, data):
    """GET /api/watch: the sold-out products the shopper waits for, [{product_id, district_id}]."""
    return watches_json(conn, user["id"])


def api_watch(shop, conn, user, data):
    """POST /api/watch {"product_id", "district_id"}: 🔔 tell the shopper once when the product,
    sold out in that district, is back there. Answers as GET does."""
    watch_offer(conn, user["id"], *_body_offer(data))
    return watches_json(conn, user["id"])


def api_unwatch(shop, conn, user, data):
    """DELETE /api/watch {"product_id", "district_id"}: stop waiting. Answers as GET does."""
    unwatch_offer(conn, user["id"], *_body_offer(data))
    return watches_json(conn, user["id"])


def _body_offer(data):
    """(product_id, district_id) a request's body names."""
    return _body_int(data, "product_id", 1, 2**62), _body_int(data, "district_id", 1, 2**62)


def api_currencies(shop, conn, user, data):
    return [
        {
            "code": code,
            "name": COIN_INFO[code][0],
            "network": COIN_INFO[code][1],
            "label": COIN_LABELS[code],
            # What the shopper picks first (USDT), then the network (TRC20), when there are several.
            "asset": COIN_LABELS[code].split(" · ")[0],
            "minimum": cents_to_str(minimum) if minimum is not None else None,
            "minimum_text": fmt_eur(minimum) if minimum is not None else None,
        }
        for code, minimum in shop.payments.coins()
    ]


# Why a part of a basket cannot be checked out, per way to pay: whole sentences for translators.
NOTHING_PAID_WITH = {
    "stars": N_("Nothing in your basket is paid with ⭐ Telegram Stars."),
    "crypto": N_("Nothing in your basket is paid with crypto."),
    "balance": N_("Nothing in your basket is paid with balance."),
}


def api_order_lines(conn, user, kind, data):
    """What an order checkout of this type sells: [(product_id, district_id, quantity)]."""
    if kind == "basket":
        lines = [
            (line.product_id, line.district_id, line.quantity)
            for line in get_basket(conn, user["id"]).lines
        ]
        if not lines:
            raise InvalidInput(tr("Your basket is empty."))
        if data.get("part") is True:  # only what may be paid the chosen way; the rest stays
            coin = str(data.get("currency") or "").lower()
            method = coin if coin in ("stars", "balance") else "crypto"
            lines = normalise_lines(lines)
            offers = price_lines(conn, lines)[1]
            rule = telegram_rule(conn)
            lines = [
                line
                for line, offer in zip(lines, offers, strict=True)
                if method in product_methods(offer, rule)
            ]
            if not lines:
                raise InvalidInput(tr(NOTHING_PAID_WITH[method]))
        return lines
    if kind == "product":
        return [
            (
                _body_int(data, "product_id", 1, 2**62),
                _body_int(data, "district_id", 1, 2**62),
                _body_int(data, "quantity", 1, MAX_QUANTITY),
            )
        ]
    raise InvalidInput(tr('type must be "basket" or "product".'))


def api_checkout_lines(conn, user, data):
    """What a checkout (the body of payment/create) would sell, as its screen lists them: lines
    with their price in cents and in the shopper's words."""
    if data.get("type") == "basket":
        return [
            {
                "product_id": line.product_id,
                "district_id": line.district_id,
                "name": line.name,
                "place": line.place,
                "quantity": line.quantity,
                "price_cents": line.price_cents,
                "price_text": fmt_eur(line.price_cents),
                "photo_url": basket_photo_url(conn, line),
            }
            for line in get_basket(conn, user["id"]).lines
        ]
    [(product_id, district_id, quantity)] = api_order_lines(conn, user, "product", data)
    offer = get_offer(conn, product_id, district_id)
    return [
        {
            "product_id": product_id,
            "district_id": district_id,
            "name": offer["name"],
            "place": place_name(offer["city_name"], offer["district_name"]),
            "quantity": quantity,
            "price_cents": offer["price_cents"],
            "price_text": fmt_eur(offer["price_cents"]),
            "photo_url": f"/media/{offer['photo']}" if offer["photo"] else None,
        }
    ]


def api_checkout_quote(shop, conn, user, data):
    """POST /api/checkout/quote, with the body payment/create takes: what that checkout sells and
    what it costs each way the shop takes, worded for the shopper, so the checkout screen computes
    no amount itself. "methods" None: a line is no longer sold (the screen says so)."""
    shown = api_checkout_lines(conn, user, data)
    lines = [(x["product_id"], x["district_id"], x["quantity"]) for x in shown]
    total = sum(x.pop("price_cents") * x["quantity"] for x in shown)
    quote = {"lines": shown, "total": cents_to_str(total), "total_text": fmt_eur(total)}
    quote.update(methods=None, stars=None, stars_text=None, parts=[], ways={})
    quote["subtotal"], quote["subtotal_text"] = quote["total"], quote["total_text"]
    quote["promo"] = promo_json(conn, user["id"], lines, total)
    if quote["promo"]:
        quote["total"], quote["total_text"] = quote["promo"]["total"], quote["promo"]["total_text"]
    if lines:
        try:
            quote.update(payment_ways_json(conn, user["id"], lines, takes_stars(shop)))
            quote["ways"] = payment_amounts_json(conn, user, lines, takes_stars(shop))
        except ShopError:  # no longer sold
            pass
    return quote


def api_create_payment(shop, conn, user, data):
    kind, coin, rid = data.get("type"), api_coin_of(data), api_request_id(data)
    shop.check_may_buy(user["id"])
    # A basket checkout moves the basket into its order: the same request again finds that checkout.
    if kind == "basket" and rid and is_basket_checkout(conn, user["id"], rid):
        nonce = rid
    else:
        lines = api_order_lines(conn, user, kind, data)
        quote = quote_lines(conn, user["id"], lines)
        check_shown_total(quote, data, kind == "basket" and data.get("part") is not True)
        nonce = checkout_for_request(
            conn,
            user["id"],
            "order",
            quote.total_cents,
            lines,
            kind == "basket",
            rid,
            quote.promo_id,
        )
    checkout = get_checkout(conn, user["id"], nonce)
    if coin == "stars":
        payment = shop.payments.open_stars_invoice(user["id"], nonce)
        return api_invoice(shop, conn, user, payment)
    if coin == "balance":
        order_id = buy_with_balance(
            conn,
            user["id"],
            checkout_lines(checkout),
            expected_total_cents=checkout["amount_cents"],
            checkout_key=nonce,
            owners=shop.config.admin_ids,
            promo_id=checkout["promo_id"],
        )
        balance = get_user(conn, user["id"])["balance_cents"]
        return {
            "order_id": order_id,
            "status": "paid",
            "balance": cents_to_str(balance),
            "balance_text": fmt_eur(balance),
        }
    return api_invoice(shop, conn, user, shop.payments.open_order_invoice(user["id"], nonce, coin))


def api_top_up_cents(shop, amount):
    """A top-up's amount (the API's "20.50"; "20,50" and "20" too) in cents, within the shop's
    limits, else InvalidInput saying why in a whole sentence."""
    return deposit_cents(amount, shop.setting("min_deposit_cents"), shop.config.max_deposit_cents)


def api_refill_quote(shop, conn, user, data):
    """GET /api/payment/refill/quote?amount=20.50: the amount as the shopper's language writes
    it, for the button that tops it up (or why it cannot be topped up)."""
    cents = api_top_up_cents(shop, bottle.request.query.get("amount"))
    return {"amount": cents_to_str(cents), "amount_text": fmt_eur(cents)}


def api_refill(shop, conn, user, data):
    shop.check_may_buy(user["id"])
    coin, rid = api_coin_of(data), api_request_id(data)
    if coin == "balance":
        raise InvalidInput(tr("Top up with a coin, not with the balance."))
    cents = api_top_up_cents(shop, data.get("amount"))
    nonce = checkout_for_request(conn, user["id"], "topup", cents, request_id=rid)
    return api_invoice(shop, conn, user, shop.payments.open_topup_invoice(user["id"], nonce, coin))


def api_payment_status(shop, conn, user, data, payment_id):
    payment = get_payment_by_provider_id(conn, user["id"], payment_id)
    try:
        payment = shop.payments.check(user["id"], payment["id"])
    except ProviderError as e:
        log.warning("mini app: status check failed: %s", e.detail)
    return api_invoice(shop, conn, user, payment)


def api_payment_qr(shop, conn, user, data, payment_id):
    p = get_payment_by_provider_id(conn, user["id"], payment_id)
    if p["pay_currency"] == "xtr":
        raise NotFound(tr("A Telegram Stars invoice is paid in Telegram: it has no QR code."))
    return bottle.HTTPResponse(
        qr_png(payment_uri(p["pay_currency"], p["pay_address"], p["pay_amount"])),
        headers={"Content-Type": "image/png", "Cache-Control": "private, max-age=3600"},
    )


def api_payment_cancel(shop, conn, user, data, payment_id):
    own = get_payment_by_provider_id(conn, user["id"], payment_id)
    payment, _ = shop.payments.cancel(user["id"], own["id"])
    return api_invoice(shop, conn, user, payment)


def api_payment_simulate(shop, conn, user, data, payment_id):
    if not shop.config.sandbox:
        raise NotFound(tr("Simulated payments exist only in sandbox mode."))
    own = get_payment_by_provider_id(conn, user["id"], payment_id)
    shop.payments.simulate(user["id"], own["id"], str(data.get("outcome") or ""))
    return {"simulating": data.get("outcome")}


def api_orders(shop, conn, user, data):
    before = bottle.request.query.get("before", "")
    return orders_json(conn, user["id"], int(before) if re.fullmatch(r"\d{1,18}", before) else None)


def api_order_media(shop, conn, user, data, order_id, item_id):
    media = find_paid_item_media(conn, user["id"], order_id, item_id)
    if not media:
        raise NotFound(tr("No such photo."))
    response = bottle.static_file(media, root=str(shop.config.media_dir / "private"))
    response.set_header("Cache-Control", "private, no-store")
    return response


# A payment's id in URLs: NOWPayments' (digits), or a Stars invoice's payload (order-12-<hex>).
API_ROUTES = [
    ("GET", "/api/me", api_me),
    ("GET", "/api/catalog", api_catalog),
    ("GET", "/api/basket", api_basket),
    ("POST", "/api/basket", api_set_basket_line),
    ("DELETE", "/api/basket/<item_id:id>", api_delete_basket_line),
    ("POST", "/api/basket/promo", api_set_promo),
    ("DELETE", "/api/basket/promo", api_remove_promo),
    ("GET", "/api/watch", api_watches),
    ("POST", "/api/watch", api_watch),
    ("DELETE", "/api/watch", api_unwatch),
    ("GET", "/api/currencies", api_currencies),
    ("POST", "/api/language", api_set_language),
    ("POST", "/api/checkout/quote", api_checkout_quote),
    ("POST", "/api/payment/create", api_create_payment),
    ("POST", "/api/payment/refill", api_refill),
    ("GET", "/api/payment/refill/quote", api_refill_quote),
    ("GET", "/api/payment/status/<payment_id:re:[0-9a-z-]{1,64}>", api_payment_status),
    ("GET", "/api/payment/<payment_id:re:[0-9a-z-]{1,64}>/qr", api_payment_qr),
    ("POST", "/api/payment/<payment_id:re:[0-9a-z-]{1,64}>/cancel", api_payment_cancel),
    ("POST", "/api/payment/<payment_id:re:[0-9a-z-]{1,64}>/simulate", api_payment_simulate),
    ("GET", "/api/orders", api_orders),
    ("GET", "/api/orders/<order_id:id>/items/<item_id:id>/media", api_order_media),
]


# Telegram shows Mini Apps in its own frames (web.telegram.org too): framing by Telegram is allowed.
MINIAPP_CSP = (
    "default-src 'self'; script-src 'self' https://telegram.org; style-src 'self'; "
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self' https://web.telegram.org https://*.telegram.org"
)


def web_miniapp_page(shop):
    """The Mini App's page, in the shop's default language until the app knows the shopper's
    (Telegram passes the shopper in the URL's fragment, which browsers never send), or in the one
    its address names (/app?lang=de, where the bot knows it)."""
    conn = shop.db()
    # Where a plain browser gets the preview shopper's initData, if anywhere: see
    # web_miniapp_preview.
    preview_url = (
        ""
        if not shop.config.sandbox
        else "/admin/app-preview"
        if shop.config.bot_token
        else "/app/preview"
    )
    name = get_setting(conn, "shop_name")
    code = match_language(bottle.request.query.get("lang")) or shop.miniapp.default_language(conn)
    with speaking(code):
        page = bottle.template(
            "app",
            template_lookup=[str(TEMPLATES_DIR)],
            name=name,
            lang=code.replace("_", "-"),
            loading=tr("Loading {name}…", name=name),
            needs_js=tr("This shop needs JavaScript. Please open it from the Telegram bot."),
            preview_url=preview_url,
        )
    response = bottle.HTTPResponse(page)
    response.set_header("Content-Security-Policy", MINIAPP_CSP)
    response.set_header("Cache-Control", "no-cache")
    return response


def web_miniapp_preview(shop):
    """Sandbox without a bot: initData for the preview shopper, so the Mini App can be tried in a
    browser. With a bot connected, anyone who can reach the shop could use it to simulate payments
    and take real goods: then the admin hands it out to owners (/admin/app-preview)."""
    with speaking(shop.miniapp.default_language(shop.db())):
        if not shop.config.sandbox:
            return json_response(
                404,
                {
                    "error": tr(
                        "The preview exists only in sandbox mode; open the shop from the bot."
                    )
                },
            )
        if shop.config.bot_token:
            return json_response(
                403, {"error": tr(PREVIEW_FOR_OWNERS), "login": "/admin/login?next=/app"}
            )
    bottle.response.headers["Cache-Control"] = "no-store"
    return json_response(200, {"initData": preview_init_data(shop)})


def web_miniapp_texts(shop, code):
    """GET /app/i18n/<lang>.json: the Mini App's own texts in a language (MiniAppTexts); the
    source language's are empty. Revalidated like the app's scripts (a cheap 304)."""
    if code not in available_languages():
        with speaking(shop.miniapp.default_language(shop.db())):
            return json_response(
                404,
                {
                    "error": tr(
                        "The shop does not speak {language}; it speaks {languages}.",
                        language=repr(code),
                        languages=", ".join(available_languages()),
                    )
                },
            )
    body, etag = shop.miniapp.texts.get(code)
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if header("If-None-Match") == etag:
        return bottle.HTTPResponse(status=304, headers=headers)
    return bottle.HTTPResponse(
        body, headers={**headers, "Content-Type": "application/json; charset=UTF-8"}
    )


MINIAPP_ROUTES = [
    ("GET", "/app", web_miniapp_page),
    ("GET", "/app/preview", web_miniapp_preview),
    ("GET", "/app/i18n/<code:re:[A-Za-z_]{2,12}>.json", web_miniapp_texts),
]


# Web: admin ####################################################################

ADMIN_PAGE = 50


ORDER_STATUSES = ("pending", "paid", "cancelled", "expired", "refunded")


# The ways of paying, as the admin names them (orders.payment_method, PAY_METHODS), and in short
# where a product's ways are listed together.
ADMIN_METHOD_WORDS = {"balance": "balance", "crypto": "crypto", "stars": "⭐ Telegram Stars"}
ADMIN_METHOD_SHORT = {"balance": "balance", "crypto": "crypto", "stars": "⭐ Stars"}


# Where Telegram states its rule for digital goods (the admin links to it wherever it says it).
TELEGRAM_RULE_SOURCE = "https://core.telegram.org/bots/payments-stars"


def read_upload(upload, what):
    """An uploaded image as (bytes, kind), or None when no file was chosen; InvalidInput if it is
    not one."""
    if upload is None or not getattr(upload, "filename", ""):
        return None
    data = upload.file.read(MAX_IMAGE_BYTES + 1)
    if not data:
        return None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{what} is larger than 10 MB.")
    kind = image_kind(data)
    if not kind:
        raise InvalidInput(f"{what} is not a JPEG, PNG, GIF or WebP image.")
    return data, kind


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def day_label(day, long=False):
    """'2026-12-02' -> '2 Dec', or with `long` 'Wed 2 Dec 2026' (the same in every locale)."""
    d = datetime.strptime(day, "%Y-%m-%d")
    short = f"{d.day} {MONTHS[d.month - 1]}"
    return f"{WEEKDAYS[d.weekday()]} {short} {d.year}" if long else short


def eur_tick(cents):
    """An axis label: whole euros with thousands separators (€1,500), cents only when needed."""
    return f"€{cents // 100:,}" if cents % 100 == 0 else fmt_eur(cents)


def nice_step(top, most=4):
    """The smallest 1, 2 or 5 times a power of ten (in cents) covering `top` in `most` steps."""
    power = 1
    while True:
        for m in (1, 2, 5):
            if m * power * most >= top:
                return m * power
        power *= 10


def chart_summary(days):
    """The chart in words, for screen readers: [(day, orders, cents)] -> text."""
    span = f"{day_label(days[0][0])} to {day_label(days[-1][0])}"
    orders, cents = sum(n for _, n, _ in days), sum(c for _, _, c in days)
    if not orders and not cents:
        return f"Revenue per day, {span}: no sales."
    best = max(days, key=lambda row: row[2])
    return (
        f"Revenue per day, {span}: {fmt_eur(cents)} from {orders} paid "
        f"order{'s' if orders != 1 else ''}; best day {day_label(best[0])} with {fmt_eur(best[2])}."
    )


def revenue_chart(days, height=160):
    """A bar chart of revenue per day [(day 'YYYY-MM-DD', orders, cents)] as SVG markup (numbers
    and dates only: nothing typed by anyone). Across in percent and down in pixels, so its text
    keeps its size on a phone and a desk: a y axis in round euros (its labels left of the SVG's
    box, in the margin admin.css gives it), dates every 7 days back from the last, and each day a
    <title> with its exact total. Pixel heights may be fractions; the money shown never is."""
    top_pad, base = 10, 10 + height
    high = max((max(c, 0) for _, _, c in days), default=0)
    step = nice_step(high) if high else 0
    top = -(-high // step) * step if high else 0  # the highest tick: a whole number of steps
    parts = [f'<line class="axis" x1="0" x2="0" y1="{top_pad}" y2="{base}"/>']
    for tick in range(0, top + 1, step) if top else [0]:
        y = base - (tick * height / top if top else 0)
        parts.append(
            f'<line class="{"axis" if tick == 0 else "grid"}" x1="0" x2="100%" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="ytick" x="-6" y="{y:.1f}" dy="0.35em">'
            f"{eur_tick(tick)}</text>"
        )
    slot = 100 / max(len(days), 1)
    for i, (day, orders, cents) in enumerate(days):
        h = max(cents, 0) * height / top if top else 0
        h = max(h, 1.5) if cents > 0 else 0  # a small day still shows
        what = f"{fmt_eur(cents)}, {orders} paid order{'s' if orders != 1 else ''}"
        parts.append(
            f"<g><title>{day_label(day, long=True)}: {what}</title>"
            f'<rect class="hit" x="{i * slot:.3f}%" y="{top_pad}" width="{slot:.3f}%" '
            f'height="{height}"/><rect class="bar" x="{(i + 0.15) * slot:.3f}%" '
            f'y="{base - h:.1f}" width="{slot * 0.7:.3f}%" height="{h:.1f}"/></g>'
        )
        if (len(days) - 1 - i) % 7 == 0:
            x = (i + 0.5) * slot
            parts.append(
                f'<line class="axis" x1="{x:.3f}%" x2="{x:.3f}%" y1="{base}" y2="{base + 4}"/>'
                f'<text class="xtick" x="{x:.3f}%" y="{base + 18}">{day_label(day)}</text>'
            )
    if not top:
        parts.append(
            f'<text class="empty" x="50%" y="{top_pad + height / 2:.0f}">'
            "No sales in the last 30 days</text>"
        )
    return (
        f'<svg class="chart revenue-chart" height="{base + 24}" role="img" '
        f'aria-label="{html.escape(chart_summary(days))}">{"".join(parts)}</svg>'
    )


class LoginThrottle:
    """At most 5 failed logins per address in 15 minutes, counted before the password is checked,
    so that many attempts at once cannot slip through together."""

    def __init__(self, limit=5, window=900):
        self.limit, self.window, self.failures, self.lock = limit, window, {}, threading.Lock()

    def attempt(self, addr):
        """Count an attempt; returns its stamp, or None when the address must wait."""
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.failures.get(addr, []) if now - t < self.window]
            if len(recent) >= self.limit:
                self.failures[addr] = recent
                return None
            self.failures[addr] = recent + [now]
            return now

    def succeeded(self, addr, stamp):
        with self.lock:
            if stamp in self.failures.get(addr, []):
                self.failures[addr].remove(stamp)


ADMIN_COOKIE = "shop_admin"


class AdminImportPreviews:
    """Uploaded catalogs waiting for the owner's confirmation, token -> (folder, expires), shared by
    the web server's threads: an hour each, at most 3 at once."""

    def __init__(self):
        self.waiting, self.lock = {}, threading.Lock()

    def sweep(self, keep=None):
        """Drop the previews older than an hour and the oldest beyond `keep`, and their folders."""
        now, dropped = time.monotonic(), []
        with self.lock:
            for token, (folder, expires) in list(self.waiting.items()):
                if expires < now or (keep is not None and len(self.waiting) > keep):
                    self.waiting.pop(token, None)
                    dropped.append(folder)
        for folder in dropped:
            shutil.rmtree(folder, ignore_errors=True)

    def add(self, folder):
        """Keep a preview's folder for an hour; returns the token that confirms it."""
        token = secrets.token_urlsafe(16)
        with self.lock:
            self.waiting[token] = (folder, time.monotonic() + 3600)
        return token

    def take(self, token):
        """The folder of a waiting preview, which waits no more; None when there is none."""
        with self.lock:
            folder, _ = self.waiting.pop(token, (None, 0))
        return folder


class AdminState:
    """What the admin keeps between requests, shared by the web server's threads: the login
    throttle, the catalog previews waiting for confirmation, the lock that lets one backup be
    made at a time, and the dashboard's revenue per way of paying of the days before today."""

    def __init__(self):
        self.throttle = LoginThrottle()
        self.previews = AdminImportPreviews()
        self.backup_lock = threading.Lock()
        self.revenue_memo = {}  # the dashboard's revenue per way of paying, day by day
        self.revenue_lock = threading.Lock()  # one dashboard at a time reads and fills it


def admin_remote():
    return bottle.request.remote_addr or ""


def admin_render(shop, name, sess=None, **kw):
    """An admin template; the session's flash message is shown once."""
    flash = None
    if sess is not None and sess["flash"]:
        flash = sess["flash"]
        clear_admin_flash(shop.db(), sess["token_hash"])
    return bottle.template(
        f"admin/{name}",
        template_lookup=[str(TEMPLATES_DIR)],
        csrf=sess["csrf_token"] if sess else "",
        flash=flash,
        fmt=fmt_eur,
        stars=fmt_stars,
        method_words=ADMIN_METHOD_WORDS,
        coin_labels=COIN_LABELS,
        shop_name=get_setting(shop.db(), "shop_name"),
        sandbox=shop.config.sandbox,
        test_mode=shop.test_mode,
        **kw,
    )


def admin_fragment_or_page(shop, fragment, page, sess, **kw):
    """contact.app's pattern: htmx asks for the fragment, a browser for the whole page around it."""
    return admin_render(shop, fragment if header("HX-Request") else page, sess, **kw)


def admin_to_login():
    """The answer to a request without a live session (bottle.redirect raises it)."""
    if header("HX-Request"):
        return bottle.HTTPResponse(status=200, headers={"HX-Redirect": "/admin/login"})
    target = bottle.request.fullpath if bottle.request.method == "GET" else "/admin"
    return bottle.redirect("/admin/login?next=" + quote(target, safe="/"), 303)


def admin_same_origin():
    """Refuse cross-site requests: browsers say where a request comes from."""
    site = header("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        return False
    origin = header("Origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == header("Host")
    return True


def admin_flash(shop, sess, message):
    """Say something on the session's next page."""
    set_admin_flash(shop.db(), sess["token_hash"], message[:500])


def admin_redirect(target):
    """Go to an admin page after a change: htmx follows an HX-Redirect instead of a 303 (which
    bottle.redirect raises)."""
    if header("HX-Request"):
        return bottle.HTTPResponse(status=204, headers={"HX-Redirect": target})
    return bottle.redirect(target, 303)


def admin_done(shop, sess, target, message):
    """The end of a change: go to `target`, which says `message`."""
    admin_flash(shop, sess, message)
    return admin_redirect(target)


def admin_back():
    """The admin page a request came from (its Referer), else the dashboard."""
    ref = urlsplit(header("Referer") or "")
    if ref.netloc in ("", header("Host")) and ref.path.startswith("/admin"):
        return ref.path + (f"?{ref.query}" if ref.query else "")
    return "/admin"


def admin_start(shop, change):
    """The checks before every admin page: a live session, else the login page, and for a change
    (change=True) a same-origin request with the session's CSRF token. Returns (conn, session);
    raises the answer to a request refused."""
    conn = shop.db()
    bottle.response.headers["Content-Security-Policy"] = ADMIN_CSP
    bottle.response.headers["Cache-Control"] = "no-store"
    sess = get_admin_session(conn, bottle.request.get_cookie(ADMIN_COOKIE))
    if sess is None:
        raise admin_to_login()
    if change:
        token = header("X-CSRF-Token") or bottle.request.forms.get("csrf_token") or ""
        if not admin_same_origin():
            raise bottle.HTTPResponse("Cross-site requests are refused.", 403)
        if not hmac.compare_digest(token.encode(), sess["csrf_token"].encode()):
            raise bottle.HTTPResponse(
                "The form is missing its CSRF token or it is wrong: reload the page and try again.",
                403,
            )
    return conn, sess


@contextmanager
def admin_page(shop):
    """`with admin_page(shop) as (conn, sess):` around the work of a page (a GET): a ShopError
    shows the error page, with its status."""
    conn, sess = admin_start(shop, change=False)
    try:
        yield conn, sess
    except ShopError as e:
        page = admin_render(shop, "error.tpl", sess, message=str(e))
        raise bottle.HTTPResponse(page, e.status) from None


@contextmanager
def admin_change(shop):
    """`with admin_change(shop) as (conn, sess):` around the work of a change (a POST): a
    ShopError is said on the page the owner came from."""
    conn, sess = admin_start(shop, change=True)
    try:
        yield conn, sess
    except ShopError as e:
        if isinstance(e, ProviderError):
            log.warning("admin: %s", e.detail)
        admin_flash(shop, sess, f"⚠️ {e}")
        raise admin_redirect(admin_back()) from None


def admin_before():
    """Where a page of a list starts: below the id in ?before=, else at the newest."""
    value = bottle.request.query.get("before", "")
    return (int(value) if re.fullmatch(r"\d{1,18}", value) else None) or 2**62


def admin_more(rows):
    """The id the next page starts below, when there is one (the rows are a page and one more)."""
    return rows[ADMIN_PAGE - 1]["id"] if len(rows) > ADMIN_PAGE else None


# Access


def admin_login_form(shop):
    bottle.response.headers["Content-Security-Policy"] = ADMIN_CSP
    if get_admin_session(shop.db(), bottle.request.get_cookie(ADMIN_COOKIE)):
        return bottle.redirect("/admin", 303)
    return admin_render(
        shop, "login.tpl", error=None, next=bottle.request.query.get("next", "/admin")
    )


def admin_login(shop):
    bottle.response.headers["Content-Security-Policy"] = ADMIN_CSP
    addr = admin_remote()
    target = bottle.request.forms.get("next") or "/admin"
    if target != "/app" and (not target.startswith("/admin") or target.startswith("//")):
        target = "/admin"
    if not admin_same_origin():
        return bottle.HTTPResponse("Cross-site requests are refused.", 403)
    throttle = shop.admin_state.throttle
    stamp = throttle.attempt(addr)
    if stamp is None:
        log.warning("admin: logins from %s are paused after repeated failures", addr)
        return bottle.HTTPResponse(
            admin_render(
                shop,
                "login.tpl",
                error="Too many failed attempts. Wait 15 minutes.",
                next=target,
            ),
            429,
        )
    conn = shop.db()
    if not verify_admin_password(
        conn, bottle.request.forms.getunicode("password") or "", shop.config.admin_password
    ):
        record_audit(conn, "login failed", remote=addr)
        log.warning("admin: a failed login from %s", addr)
        return bottle.HTTPResponse(
            admin_render(shop, "login.tpl", error="Wrong password.", next=target), 403
        )
    throttle.succeeded(addr, stamp)
    token, _ = create_admin_session(conn, addr)
    bottle.response.set_cookie(
        ADMIN_COOKIE,
        token,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=shop.config.webhook_url.startswith("https://"),
        max_age=ADMIN_MAX_SECONDS,
    )
    return bottle.redirect(target, 303)


def admin_logout(shop):
    with admin_change(shop) as (conn, _):
        end_admin_session(conn, bottle.request.get_cookie(ADMIN_COOKIE), admin_remote())
        bottle.response.delete_cookie(ADMIN_COOKIE, path="/admin")
        return bottle.redirect("/admin/login", 303)


def admin_app_preview(shop):
    """Sandbox with a bot: the preview shopper's initData, for owners logged in to the admin
    only."""
    bottle.response.headers["Cache-Control"] = "no-store"
    if not shop.config.sandbox:
        return json_response(
            404,
            {"error": "The preview exists only in sandbox mode; open the shop from the bot."},
        )
    if get_admin_session(shop.db(), bottle.request.get_cookie(ADMIN_COOKIE)) is None:
        return json_response(401, {"error": PREVIEW_FOR_OWNERS, "login": "/admin/login?next=/app"})
    return json_response(200, {"initData": preview_init_data(shop)})


def admin_logout_everywhere(shop):
    """Every browser's session ends, this one's too (a lost phone, a shared computer)."""
    with admin_change(shop) as (conn, _):
        end_all_admin_sessions(conn, admin_remote())
        bottle.response.delete_cookie(ADMIN_COOKIE, path="/admin")
        return bottle.redirect("/admin/login", 303)


# Dashboard


def admin_dashboard(shop):
    with admin_page(shop) as (conn, sess):
        with shop.admin_state.revenue_lock:
            stats = dashboard_stats(conn, shop.admin_state.revenue_memo)
        return admin_render(
            shop,
            "dashboard.tpl",
            sess,
            stats=stats,
            chart=revenue_chart(stats["per_day"]),
            day_label=day_label,
            problems=list(shop.problems.records)[::-1][:20],
            health=shop.health(),
            rule_summary=admin_rule_summary(find_rule_report(conn)),
        )


# Catalog


def admin_product_ways(product, rule):
    """How a product may be paid, in words: the ways its owner allows, and what Telegram's rule
    leaves of them when the shop follows it."""
    declared = declared_methods(product)
    words = " · ".join(ADMIN_METHOD_SHORT[m] for m in declared)
    if not (rule and breaks_rule(product)):
        return words
    if "stars" in declared:
        return f"{words} (Telegram's rule: Stars only)"
    return f"{words} (Telegram's rule leaves no way: it cannot be bought)"


def admin_rule_summary(report):
    """What find_rule_report found that the owner should see to, in a line ('' when nothing)."""
    n, k = len(report["breaking"]), len(report["unsaid"])
    parts = []
    if n:
        parts.append(f"{n} digital product{'s' if n != 1 else ''} may be paid other than in Stars")
    if k:
        parts.append(
            f"{k} product{'s do' if k != 1 else ' does'} not say whether "
            f"{'they are' if k != 1 else 'it is'} digital or physical"
        )
    return "; ".join(parts)


def admin_catalog_helpers(conn):
    """What the catalog's pages show beside each product: its ways to pay and its Stars price,
    and where Telegram states its rule."""
    return {
        "rule_source": TELEGRAM_RULE_SOURCE,
        "rate": stars_per_euro(conn),
        "rule_on": telegram_rule(conn),
        "ways_of": admin_product_ways,  # (product, rule_on)
        "stars_of": stars_of,  # (product, rate)
    }


def admin_catalog_page(shop, conn, sess, part="catalog.tpl", **kw):
    """The catalog page, or its places section alone (part="_places.tpl", for htmx)."""
    catalog = find_catalog(conn)
    return admin_render(
        shop,
        part,
        sess,
        report=find_rule_report(conn),
        rule_summary=admin_rule_summary,
        places=admin_place_tree(catalog),
        **catalog,
        **admin_catalog_helpers(conn),
        **kw,
    )


# A place on the catalog page, as ?edit= names the one whose form is open: "city-3", "district-5".
ADMIN_PLACE_KEY = re.compile(r"(city|district)-[0-9]{1,18}")


def admin_on_sale(n):
    return f"{n} on sale" if n else "nothing on sale"


def admin_place_tree(catalog):
    """The places as the catalog page lists them, each city with its districts: [{kind, key,
    place, pos (1 = first), count (of its siblings), meta (what it holds, in words),
    districts}]."""
    tree, cities = [], catalog["cities"]
    for i, city in enumerate(cities, 1):
        its = [d for d in catalog["districts"] if d["city_id"] == city["id"]]
        n = len(its)
        tree.append(
            {
                "kind": "city",
                "key": f"city-{city['id']}",
                "place": city,
                "pos": i,
                "count": len(cities),
                "meta": f"{n} district{'s' if n != 1 else ''} · {admin_on_sale(city['available'])}",
                "districts": [
                    {
                        "kind": "district",
                        "key": f"district-{d['id']}",
                        "place": d,
                        "pos": j,
                        "count": n,
                        "meta": admin_on_sale(d["available"]),
                    }
                    for j, d in enumerate(its, 1)
                ],
            }
        )
    return tree


def admin_find_place(conn, kind, place_id):
    """One place of admin_place_tree; NotFound when there is no such place."""
    key = f"{kind}-{place_id}"
    for city in admin_place_tree(find_catalog(conn)):
        for entry in (city, *city["districts"]):
            if entry["key"] == key:
                return entry
    raise NotFound(f"No such {kind}.")


def admin_catalog(shop):
    """The catalog: products and places to read, each changed in place on demand. Without
    JavaScript, ?edit=city-3 opens that place's form."""
    with admin_page(shop) as (conn, sess):
        key = bottle.request.query.get("edit", "")
        editing = {"key": key} if ADMIN_PLACE_KEY.fullmatch(key) else None
        return admin_catalog_page(shop, conn, sess, editing=editing)


def admin_place_part(shop, kind, place_id, editing):
    """A place's row on the catalog page (htmx): to read, or its form."""
    with admin_page(shop) as (conn, sess):
        entry = admin_find_place(conn, kind, place_id)
        return admin_render(shop, "_place.tpl", sess, **entry, editing=editing, focus=not editing)


def admin_place_edit(shop, kind, place_id):
    return admin_place_part(shop, kind, place_id, editing=True)


def admin_place_row(shop, kind, place_id):
    return admin_place_part(shop, kind, place_id, editing=False)


def admin_place_change(shop, kind, place_id):
    with admin_change(shop) as (conn, sess):
        action = bottle.request.forms.get("action")
        if action == "save":
            return admin_place_save(shop, conn, sess, kind, place_id)
        kw = {
            "rename": {"name": bottle.request.forms.getunicode("name")},
            "hide": {"hidden": True},
            "show": {"hidden": False},
            "up": {"move": -1},
            "down": {"move": 1},
        }.get(action)
        if kw is None:
            raise InvalidInput("Unknown action.")
        update_place(conn, kind, place_id, remote=admin_remote(), **kw)
    return admin_done(shop, sess, "/admin/catalog", f"{kind.title()} updated.")


def admin_place_save(shop, conn, sess, kind, place_id):
    """A place's form on the catalog page: its name, position and whether it is hidden, at once.
    htmx gets the places section back, saying so, or the form as typed with the reason it was
    refused (400); a plain form goes back to the catalog."""
    f = bottle.request.forms
    typed = f.get("position", "")
    position = int(typed) if re.fullmatch(r"[0-9]{1,6}", typed) else None
    try:
        if position is None:
            raise InvalidInput("Choose a position.")
        update_place(
            conn,
            kind,
            place_id,
            name=f.getunicode("name"),
            hidden=f.get("hidden") == "1",
            position=position,
            remote=admin_remote(),
        )
    except InvalidInput as e:
        if not header("HX-Request"):
            raise
        entry = admin_find_place(conn, kind, place_id)
        values = {"name": f.getunicode("name") or "", "hidden": f.get("hidden") == "1"}
        values["position"] = position or entry["pos"]
        page = admin_render(
            shop, "_place.tpl", sess, **entry, editing=True, error=str(e), values=values
        )
        return bottle.HTTPResponse(page, 400)
    said = f"{admin_find_place(conn, kind, place_id)['place']['name']} saved."
    if not header("HX-Request"):
        return admin_done(shop, sess, f"/admin/catalog#{kind}-{place_id}", said)
    page = admin_catalog_page(
        shop, conn, sess, part="_places.tpl", status=said, focus=f"{kind}-{place_id}"
    )
    return admin_places_swap(page)


def admin_places_swap(page, status=200):
    """An htmx answer that replaces the catalog page's whole places section with `page`."""
    return bottle.HTTPResponse(
        page, status, headers={"HX-Retarget": "#places", "HX-Reswap": "outerHTML"}
    )


def admin_form_ids(name):
    """The ids a form lists under `name`, in its order; InvalidInput for one that is not an id."""
    values = bottle.request.forms.getall(name)
    if not all(re.fullmatch(r"[0-9]{1,18}", v) for v in values):
        raise InvalidInput(f"The new order lists a {name} that is not one of the shop's.")
    return [int(v) for v in values]


def admin_places_order(shop):
    """The places in a new order, every city and every district (the catalog page's drag and
    drop, and its arrow keys). htmx gets a line to say; a refused order brings the places
    section back as it is, with the reason (400)."""
    with admin_change(shop) as (conn, sess):
        try:
            moved = reorder_places(
                conn, admin_form_ids("city"), admin_form_ids("district"), admin_remote()
            )
        except InvalidInput as e:
            if not header("HX-Request"):
                raise
            page = admin_catalog_page(shop, conn, sess, part="_places.tpl", alert=str(e))
            return admin_places_swap(page, 400)
    said = "Order saved: shoppers see the places in this order." if moved else "Nothing moved."
    if not header("HX-Request"):
        return admin_done(shop, sess, "/admin/catalog#places", said)
    return said


def admin_catalog_stars_only(shop):
    """Telegram's rule in one action: the digital products that may be paid other than in Stars
    become Stars only."""
    with admin_change(shop) as (conn, sess):
        n = make_digital_stars_only(conn, admin_remote())
    if not n:
        said = "Nothing to change: every digital product is paid in Stars only already."
    else:
        said = (
            f"{n} digital product{'s are' if n != 1 else ' is'} now paid in Telegram Stars only, "
            "as Telegram's rule asks."
        )
    return admin_done(shop, sess, "/admin/catalog#telegram-rule", said)


def admin_place_added(shop, conn, sess, what, said=None, error=None):
    """After the catalog's "Add a city or a district" (htmx): the places section with the form
    still open for the next one, saying so, or with the reason it was refused and what the owner
    typed (400). what: "city" or "district"."""
    f = bottle.request.forms
    typed = {"what": what, "name": f.getunicode("name") or "", "city_id": f.get("city_id", "")}
    page = admin_catalog_page(
        shop,
        conn,
        sess,
        part="_places.tpl",
        status=said,
        adding=typed if error else {"what": what, "city_id": typed["city_id"]},
        add_error=error,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_place_create(conn, what):
    """Add the city or district the catalog's form names; InvalidInput when refused."""
    f = bottle.request.forms
    if what == "city":
        return add_city(conn, f.getunicode("name"), admin_remote())
    city_id = f.get("city_id", "")
    if not re.fullmatch(r"[0-9]{1,18}", city_id):
        raise InvalidInput("Choose a city.")
    return add_district(conn, int(city_id), f.getunicode("name"), admin_remote())


def admin_place_add(shop, what):
    """The catalog's "Add a city or a district" (what: "city" or "district"). htmx gets
    admin_place_added; a plain form goes back to the catalog."""
    said = f"{what.title()} added."
    with admin_change(shop) as (conn, sess):
        try:
            admin_place_create(conn, what)
        except InvalidInput as e:
            if not header("HX-Request"):
                raise
            return admin_place_added(shop, conn, sess, what, error=str(e))
        if header("HX-Request"):
            return admin_place_added(shop, conn, sess, what, said=said)
    return admin_done(shop, sess, "/admin/catalog", said)


def admin_city_add(shop):
    return admin_place_add(shop, "city")


def admin_district_add(shop):
    return admin_place_add(shop, "district")


def admin_product_values(product, form=None):
    """The product form's fields: the product's (a new one's defaults when it is None), or after a
    refused save what the owner typed."""
    if form is not None:
        listed = bool(form.get("methods_listed"))
        return {
            "name": form.getunicode("name") or "",
            "description": form.getunicode("description") or "",
            "price": form.getunicode("price") or "",
            "active": form.get("active") == "1",
            "kind": form.get("kind", (product["kind"] or "") if product else ""),
            "methods": set(form.getall("methods")) if listed else set(PAY_METHODS),
            "stars_price": form.getunicode("stars_price") or "",
        }
    if product is None:
        return {
            "name": "",
            "description": "",
            "price": "",
            "active": True,
            "kind": "",
            "methods": set(PAY_METHODS),
            "stars_price": "",
        }
    return {
        "name": product["name"],
        "description": product["description"],
        "price": cents_to_str(product["price_cents"]),
        "active": bool(product["is_active"]),
        "kind": product["kind"] or "",
        "methods": set(declared_methods(product)),
        "stars_price": str(product["stars_price"] or ""),
    }


def admin_language_name(code):
    """A language as the admin lists it: its own name and its code, 'Deutsch (de)'."""
    return f"{language(code).name()} ({code})"


def admin_product_languages(conn, product, form=None):
    """The product form's names and descriptions in the shop's other languages, [{code, label,
    name, description}]: the product's (none for a new one), or after a refused save as typed."""
    stored = product_translations(product["translations"] if product else None)
    rows = []
    for code in other_languages(conn):
        if form is not None:
            texts = {key: form.getunicode(f"{key}.{code}") or "" for key in PRODUCT_TEXTS}
        else:
            texts = {key: stored[key].get(code, "") for key in PRODUCT_TEXTS}
        rows.append({"code": code, "label": admin_language_name(code), **texts})
    return rows


def admin_typed_translations(conn, form):
    """The product form's names and descriptions in the shop's other languages as typed,
    {code: {"name": ..., "description": ...}}; None when the form has none (the catalog's row,
    an older page)."""
    typed = {
        code: {key: form.getunicode(f"{key}.{code}") or "" for key in PRODUCT_TEXTS}
        for code in other_languages(conn)
        if f"name.{code}" in form or f"description.{code}" in form
    }
    return typed or None


def admin_stars_hint(product, rate):
    """What a blank Stars price means for this product."""
    rate_words = f"{rate:f} Stars per euro"
    if product is None:
        return f"Blank: its euro price at {rate_words}, rounded up to whole Stars."
    at_rate = stars_of({"stars_price": None, "price_cents": product["price_cents"]}, rate)
    return (
        f"Blank: from the rate: {fmt_stars(at_rate)} ({fmt_eur(product['price_cents'])} at "
        f"{rate_words}, rounded up)."
    )


def admin_product_form(shop, conn, sess, product, error=None, form=None):
    """A product's page (a new one's when product is None): its form, stock and units; after a
    refused save, the form as the owner typed it, with the reason, and status 400."""
    product_id = product["id"] if product else -1
    stock = find_product_stock(conn, product_id)
    units = find_product_units(conn, product_id, admin_before(), ADMIN_PAGE + 1)
    more = (
        f"/admin/products/{product['id']}?before={units[ADMIN_PAGE - 1]['id']}"
        if product and len(units) > ADMIN_PAGE
        else None
    )
    helpers = admin_catalog_helpers(conn)
    languages = admin_product_languages(conn, product, form)
    page = admin_render(
        shop,
        "product.tpl",
        sess,
        product=product,
        stock=stock,
        units=units[:ADMIN_PAGE],
        values=admin_product_values(product, form),
        languages=languages,
        # open after a refused save with texts in other languages: the owner sees them as typed
        languages_open=form is not None and any(t["name"] or t["description"] for t in languages),
        default_language=admin_language_name(default_language(conn)),
        error=error,
        more=more,
        stars_hint=admin_stars_hint(product, helpers["rate"]),
        **helpers,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_product_new(shop):
    with admin_page(shop) as (conn, sess):
        return admin_product_form(shop, conn, sess, None)


def admin_product_edit(shop, product_id):
    with admin_page(shop) as (conn, sess):
        product = find_product(conn, product_id)
        if product is None:
            raise NotFound("No such product.")
        return admin_product_form(shop, conn, sess, product)


def admin_product_fields(form):
    """save_product's fields from a product form (the product page's or the catalog's row); a
    field the form did not send (an older page, a script) keeps its value."""
    return {
        "name": form.getunicode("name"),
        "price": form.getunicode("price"),
        "active": form.get("active") == "1",
        "kind": form.get("kind") if "kind" in form else None,
        "methods": form.getall("methods") if form.get("methods_listed") else None,
        "stars_price": form.getunicode("stars_price") if "stars_price" in form else None,
    }


def admin_product_saved(conn, product_id, named=False):
    """What the owner reads after saving a product: saved, or saved but nobody can buy it. named:
    the product by its name, not "Product"."""
    product = find_product(conn, product_id)
    subject = product["name"] if named else "Product"
    if product_methods(product, telegram_rule(conn)):
        return f"{subject} saved."
    return (
        f"⚠️ {subject} saved, but nobody can buy it now: it is digital and does not allow "
        "Telegram Stars, the only way this shop offers digital goods under Telegram's "
        "rule. Tick Telegram Stars (or turn the rule off in Settings)."
    )


def admin_product_save(shop, product_id=None):
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        product = find_product(conn, product_id) if product_id else None
        if product_id and product is None:
            raise NotFound("No such product.")
        try:
            product_id = save_product(
                conn,
                shop.config.media_dir,
                product_id,
                description=f.getunicode("description") or "",
                photo=read_upload(bottle.request.files.get("photo"), "The photo"),
                translations=admin_typed_translations(conn, f),
                remote=admin_remote(),
                **admin_product_fields(f),
            )
        except InvalidInput as e:
            return admin_product_form(shop, conn, sess, product, error=str(e), form=f)
        said = admin_product_saved(conn, product_id)
    return admin_done(shop, sess, f"/admin/products/{product_id}", said)


def admin_product_part(shop, conn, sess, product_id, editing, error=None, form=None, said=None):
    """A product's row on the catalog page (htmx): to read, or its form (after a refused save as
    the owner typed it, with the reason, and status 400). After a save (`said`), the page's
    status line and Telegram's rule panel come along, as they are now."""
    product = find_catalog_product(conn, product_id)
    if product is None:
        raise NotFound("No such product.")
    helpers = admin_catalog_helpers(conn)
    page = admin_render(
        shop,
        "_product_row.tpl",
        sess,
        p=product,
        places=find_catalog_stock(conn, product_id).get(product_id, []),
        editing=editing,
        error=error,
        values=admin_product_values(product, form) if editing else None,
        stars_hint=admin_stars_hint(product, helpers["rate"]),
        focus=not editing,
        oob=said is not None,
        said=said or "",
        report=find_rule_report(conn),
        rule_summary=admin_rule_summary,
        **helpers,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_product_row_edit(shop, product_id):
    with admin_page(shop) as (conn, sess):
        return admin_product_part(shop, conn, sess, product_id, editing=True)


def admin_product_row(shop, product_id):
    with admin_page(shop) as (conn, sess):
        return admin_product_part(shop, conn, sess, product_id, editing=False)


def admin_product_row_save(shop, product_id):
    """A product's form on the catalog page: what the catalog lists of it (its description and
    photo stay as they are). htmx gets the row back, or the form with the reason it was refused;
    a plain form goes back to the catalog."""
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        if find_product(conn, product_id) is None:
            raise NotFound("No such product.")
        try:
            save_product(
                conn,
                shop.config.media_dir,
                product_id,
                description=None,
                remote=admin_remote(),
                **admin_product_fields(f),
            )
        except InvalidInput as e:
            if not header("HX-Request"):
                raise
            return admin_product_part(shop, conn, sess, product_id, True, error=str(e), form=f)
        said = admin_product_saved(conn, product_id, named=True)
        if not header("HX-Request"):
            return admin_done(shop, sess, f"/admin/catalog#product-{product_id}", said)
        return admin_product_part(shop, conn, sess, product_id, False, said=said)


def admin_units_add(shop, product_id):
    with admin_change(shop) as (conn, sess):
        district_id = bottle.request.forms.get("district_id", "")
        if not re.fullmatch(r"[0-9]{1,18}", district_id):
            raise InvalidInput("Choose a district.")
        result = add_units(
            conn,
            shop.config.media_dir,
            product_id,
            int(district_id),
            bottle.request.forms.getunicode("units"),
            read_upload(bottle.request.files.get("media"), "The photo"),
            admin_remote(),
        )
        message = units_added_text(result)
    return admin_done(shop, sess, f"/admin/products/{product_id}", message)


def admin_unit_delete(shop, unit_id):
    with admin_change(shop) as (conn, sess):
        product_id = find_unit_product_id(conn, unit_id)
        delete_unit(conn, unit_id, admin_remote())  # NotFound when there is no such unit
    return admin_done(shop, sess, f"/admin/products/{product_id}", "Unit deleted.")


def admin_import_form(shop):
    with admin_page(shop) as (_, sess):
        return admin_render(shop, "import.tpl", sess, preview=None, token=None, errors=None)


def admin_import_preview(shop):
    """Read an uploaded catalog (JSON, or a ZIP holding catalog.json and its images) and show what
    would change."""
    with admin_change(shop) as (conn, sess):
        upload = bottle.request.files.get("file")
        if upload is None or not upload.filename:
            raise InvalidInput("Choose a catalog file.")
        data = upload.file.read(50 * 1024 * 1024 + 1)
        if len(data) > 50 * 1024 * 1024:
            raise InvalidInput("The file is larger than 50 MB.")
        previews = shop.admin_state.previews
        previews.sweep(keep=2)
        shop.import_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="import-", dir=shop.import_dir))
        try:
            if data[:4] == b"PK\x03\x04":
                unpack_zip(data, folder)
            else:
                (folder / "catalog.json").write_bytes(data)
            parsed = read_catalog_file(folder / "catalog.json")
            counts = import_catalog(
                conn, parsed, folder, shop.config.media_dir, dry_run=True, confine=True
            )
        except CatalogError as e:
            shutil.rmtree(folder, ignore_errors=True)
            shown = upload.filename or "the file"
            errors = [
                m.replace(str(folder / "catalog.json"), shown).replace(str(folder), shown)
                for m in e.errors
            ]
            return admin_render(shop, "import.tpl", sess, preview=None, token=None, errors=errors)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        token = previews.add(folder)
        return admin_render(shop, "import.tpl", sess, preview=counts, token=token, errors=None)


def admin_import_confirm(shop):
    with admin_change(shop) as (conn, sess):
        previews = shop.admin_state.previews
        previews.sweep()
        folder = previews.take(bottle.request.forms.get("token", ""))
        if folder is None:
            raise InvalidInput("That preview is too old; upload the file again.")
        try:
            counts = import_catalog(
                conn,
                read_catalog_file(folder / "catalog.json"),
                folder,
                shop.config.media_dir,
                confine=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
        record_audit(conn, "catalog imported", done, admin_remote())
    return admin_done(shop, sess, "/admin/catalog", "Catalog imported: " + done)


# Orders


def admin_day(value):
    """A day typed in a filter (YYYY-MM-DD), or None."""
    try:
        datetime.strptime(value or "", "%Y-%m-%d")
        return value if value < "9999" else None
    except ValueError:
        return None


def admin_orders(shop):
    with admin_page(shop) as (conn, sess):
        q = bottle.request.query
        filters = {
            "status": q.get("status") if q.get("status") in ORDER_STATUSES else "",
            "method": q.get("method") if q.get("method") in ADMIN_METHOD_WORDS else "",
            "from": admin_day(q.get("from")) or "",
            "to": admin_day(q.get("to")) or "",
            "q": (q.getunicode("q") or "").strip(),
        }
        rows = find_orders(conn, filters, admin_before(), ADMIN_PAGE + 1)
        more = admin_more(rows)
        more = f"/admin/orders?{urlencode({'before': more, **filters})}" if more else None
        return admin_fragment_or_page(
            shop,
            "_orders.tpl",
            "orders.tpl",
            sess,
            orders=rows[:ADMIN_PAGE],
            more=more,
            filters=filters,
            statuses=ORDER_STATUSES,
        )


def admin_order(shop, order_id):
    with admin_page(shop) as (conn, sess):
        return admin_render(shop, "order.tpl", sess, **find_order_details(conn, order_id))


def admin_star_refund_words(refund):
    """What became of a refund in Stars the owner just asked for (its star_refunds row)."""
    stars = fmt_stars(refund["stars"])
    if refund["status"] == "done":
        return f"Refunded {stars} to the shopper in Telegram; the order is refunded."
    if refund["last_error"]:
        return (
            f"⚠️ Telegram has not made the refund of {stars} yet ({refund['last_error']}). It "
            "stays queued: the shop tries again by itself, and alerts the owners if it keeps "
            "failing."
        )
    return f"The refund of {stars} is queued: the shop asks Telegram for it and retries until done."


def admin_order_star_refund(shop, order_id):
    """Refund in Stars: queued once (a second click is refused), then asked of Telegram at once."""
    with admin_change(shop) as (conn, sess):
        charge_id = request_owner_star_refund(
            conn, order_id, bottle.request.forms.getunicode("reason"), admin_remote()
        )
        shop.payments.make_refunds()
        said = admin_star_refund_words(find_star_refund(conn, charge_id))
    return admin_done(shop, sess, f"/admin/orders/{order_id}", said)


def admin_order_resend(shop, order_id):
    with admin_change(shop) as (conn, sess):
        queued = resend_order_delivery(conn, order_id, admin_remote())
    return admin_done(
        shop,
        sess,
        f"/admin/orders/{order_id}",
        "Delivery queued again." if queued else "The delivery is still on its way.",
    )


def admin_order_refund(shop, order_id):
    with admin_change(shop) as (conn, sess):
        refund_order(conn, order_id, bottle.request.forms.getunicode("reason"), admin_remote())
    return admin_done(shop, sess, f"/admin/orders/{order_id}", "Order refunded to the balance.")


# Payments


# The payments page's status filter says these words; its query values stay the provider's.
PAYMENT_STATUS_WORDS = {
    "waiting": "waiting for payment",
    "confirming": "confirming",
    "confirmed": "confirmed",
    "sending": "being forwarded",
    "partially_paid": "partly paid",
    "finished": "paid",
    "refunded": "refunded",
    "failed": "failed",
    "expired": "expired",
}


# The payments page's filter by way of paying (a payment is an invoice: never the balance).
PAYMENT_METHOD_WORDS = {m: ADMIN_METHOD_WORDS[m] for m in ("crypto", "stars")}


def admin_payments(shop):
    with admin_page(shop) as (conn, sess):
        status = bottle.request.query.get("status")
        status = status if status in STATUS_RANK else None
        method = bottle.request.query.get("method")
        method = method if method in PAYMENT_METHOD_WORDS else None
        rows = find_payments(conn, status, admin_before(), ADMIN_PAGE + 1, method)
        more = admin_more(rows)
        query = {"status": status or "", "method": method or ""}
        more = f"/admin/payments?{urlencode({'before': more, **query})}" if more else None
        return admin_fragment_or_page(
            shop,
            "_payments.tpl",
            "payments.tpl",
            sess,
            payments=rows[:ADMIN_PAGE],
            more=more,
            status=status or "",
            statuses=[(s, PAYMENT_STATUS_WORDS.get(s, s)) for s in STATUS_RANK],
            method=method or "",
            methods=PAYMENT_METHOD_WORDS,
        )


def admin_payment(shop, payment_id):
    with admin_page(shop) as (conn, sess):
        details = find_payment_details(conn, payment_id)
        provider = shop.payments.label_of(details["payment"]["provider"])
        is_stars = details["payment"]["provider"] in STARS_PROVIDERS
        return admin_render(
            shop, "payment.tpl", sess, provider=provider, is_stars=is_stars, **details
        )


def admin_payment_recheck(shop, payment_id):
    with admin_change(shop) as (conn, sess):
        p = find_payment(conn, payment_id)
        if p["provider"] in STARS_PROVIDERS:
            raise InvalidInput(
                "A Telegram Stars payment is not re-checked on its own: the shop reads Telegram's "
                "record of Star transactions regularly and applies what it finds."
            )
        outcome = shop.payments.refresh(p["provider_id"], "admin", provider=p["provider"])
        record_audit(
            conn, "payment re-checked", f"payment {p['provider_id']}: {outcome}", admin_remote()
        )
    said = f"{shop.payments.label_of(p['provider'])} says: {outcome}"
    return admin_done(shop, sess, f"/admin/payments/{payment_id}", said)


def admin_payment_mark_paid(shop, payment_id):
    with admin_change(shop) as (_, sess):
        outcome = shop.payments.mark_paid(
            payment_id, bottle.request.forms.getunicode("reason"), admin_remote()
        )
    return admin_done(shop, sess, f"/admin/payments/{payment_id}", f"Marked as paid: {outcome}")


# Users


def admin_users(shop):
    with admin_page(shop) as (conn, sess):
        search = (bottle.request.query.getunicode("q") or "").strip().lstrip("@")
        rows = find_users(conn, search, admin_before(), ADMIN_PAGE + 1)
        more = admin_more(rows)
        more = f"/admin/users?{urlencode({'before': more, 'q': search})}" if more else None
        return admin_fragment_or_page(
            shop, "_users.tpl", "users.tpl", sess, users=rows[:ADMIN_PAGE], more=more, q=search
        )


def admin_user(shop, user_id):
    with admin_page(shop) as (conn, sess):
        return admin_render(shop, "user.tpl", sess, **find_user_details(conn, user_id))


def admin_user_balance(shop, user_id):
    with admin_change(shop) as (conn, sess):
        cents = admin_adjust_balance(
            conn,
            user_id,
            bottle.request.forms.getunicode("amount"),
            bottle.request.forms.getunicode("reason"),
            admin_remote(),
        )
    return admin_done(
        shop,
        sess,
        f"/admin/users/{user_id}",
        f"Balance {'credited' if cents > 0 else 'debited'} {fmt_eur(abs(cents))}.",
    )


def admin_user_ban(shop, user_id, action):
    with admin_change(shop) as (conn, sess):
        set_user_banned(conn, user_id, action == "ban", admin_remote())
    return admin_done(
        shop,
        sess,
        f"/admin/users/{user_id}",
        "User banned." if action == "ban" else "User unbanned.",
    )


# Discount codes


def admin_promo_values(promo, form=None):
    """The code form's fields: the code's (a new one's defaults when it is None), or after a
    refused save what the owner typed."""
    if form is not None:
        values = {k: form.getunicode(k) or "" for k in PROMO_FIELDS}
        values.update(products=set(form.getall("products")), cities=set(form.getall("cities")))
        return values
    if promo is None:
        values = dict.fromkeys(PROMO_FIELDS, "")
        values.update(kind="percent", products=set(), cities=set())
        return values
    fixed = promo["kind"] == "fixed"
    return {
        "code": promo["code"],
        "kind": promo["kind"],
        "value": cents_to_str(promo["value"]) if fixed else str(promo["value"]),
        "min_total": cents_to_str(promo["min_total_cents"]) if promo["min_total_cents"] else "",
        "starts": promo_moment_field(promo["starts_at"]),
        "ends": promo_moment_field(promo["ends_at"]),
        "max_uses": str(promo["max_uses"] or ""),
        "max_uses_per_user": str(promo["max_uses_per_user"] or ""),
        "products": {str(i) for i in json.loads(promo["product_ids"] or "[]")},
        "cities": {str(i) for i in json.loads(promo["city_ids"] or "[]")},
        "note": promo["note"],
    }


def admin_promo_fields(form):
    """create_promo_code's and update_promo_code's fields from the code form."""
    fields = {k: form.getunicode(k) or "" for k in PROMO_FIELDS if k not in ("products", "cities")}
    fields.update(products=form.getall("products"), cities=form.getall("cities"))
    return fields


def admin_promos_page(shop, conn, sess, error=None, form=None):
    """The Promotions page: every code with its uses, and the form for a new one (after a refused
    save as the owner typed it, with the reason, and status 400)."""
    page = admin_render(
        shop,
        "promos.tpl",
        sess,
        promos=list_promo_codes(conn),
        values=admin_promo_values(None, form),
        choices=promo_scope_choices(conn),
        error=error,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_promo_page(shop, conn, sess, promo_id, error=None, form=None):
    """A code's page: its uses, its orders and its form (after a refused save as the owner typed
    it, with the reason, and status 400)."""
    promo = get_promo_code(conn, promo_id)
    page = admin_render(
        shop,
        "promo.tpl",
        sess,
        p=promo,
        values=admin_promo_values(promo, form),
        choices=promo_scope_choices(conn),
        orders=find_promo_orders(conn, promo_id),
        more=None,
        error=error,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_promos(shop):
    with admin_page(shop) as (conn, sess):
        return admin_promos_page(shop, conn, sess)


def admin_promo(shop, promo_id):
    with admin_page(shop) as (conn, sess):
        return admin_promo_page(shop, conn, sess, promo_id)


def admin_promo_create(shop):
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        try:
            promo_id = create_promo_code(conn, admin_promo_fields(f), admin_remote())
        except InvalidInput as e:
            return admin_promos_page(shop, conn, sess, error=str(e), form=f)
        code = get_promo_code(conn, promo_id)["code"]
    return admin_done(shop, sess, "/admin/promos", f"Code {code} added: shoppers can use it.")


def admin_promo_save(shop, promo_id):
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        try:
            changed = update_promo_code(conn, promo_id, admin_promo_fields(f), admin_remote())
        except InvalidInput as e:
            return admin_promo_page(shop, conn, sess, promo_id, error=str(e), form=f)
        code = get_promo_code(conn, promo_id)["code"]
    said = f"Code {code} saved." if changed else "Nothing changed."
    return admin_done(shop, sess, f"/admin/promos/{promo_id}", said)


def admin_promo_active(shop, promo_id, action):
    """Pause or resume a code: htmx gets its row on the Promotions page back, a form the page it
    came from."""
    with admin_change(shop) as (conn, sess):
        set_promo_active(conn, promo_id, action == "resume", admin_remote())
        promo = get_promo_code(conn, promo_id)
        if header("HX-Request"):
            return admin_render(shop, "_promo_row.tpl", sess, p=promo)
    said = f"Code {promo['code']} {'resumed' if action == 'resume' else 'paused'}."
    return admin_done(shop, sess, admin_back(), said)


# Broadcast

_ADMIN_TG_TAGS = {
    "b": ("<b>", "</b>"),
    "i": ("<i>", "</i>"),
    "u": ("<u>", "</u>"),
    "s": ("<s>", "</s>"),
    "spoiler": ('<span class="tg-spoiler" title="A spoiler: hidden until tapped">', "</span>"),
    "code": ("<code>", "</code>"),
    "pre": ("<pre>", "</pre>"),
    "blockquote": ("<blockquote>", "</blockquote>"),
}


_ADMIN_AUTOLINK = re.compile(r"(?i)\bhttps?://[^\s<>\"']+")


def admin_tg_link(url, inner):
    """A link in a preview: http(s) ones open (in a new tab), tg:// and ton:// ones only show."""
    url = html.escape(url)
    if re.match(r"(?i)https?://", url):
        return (
            f'<a href="{url}" title="{url}" target="_blank" rel="noopener noreferrer">{inner}</a>'
        )
    return f'<span class="tg-link" title="{url}">{inner}</span>'


def admin_autolinks(text):
    """Plain text, escaped, with the web addresses in it as links (Telegram finds them itself)."""
    out, i = [], 0
    for m in _ADMIN_AUTOLINK.finditer(text):
        url = m.group().rstrip(".,;:!?)]}")
        out += [html.escape(text[i : m.start()]), admin_tg_link(url, html.escape(url))]
        i = m.start() + len(url)
    return "".join(out) + html.escape(text[i:])


def admin_tg_preview(node, plain=False):
    """A TgNode tree as the admin shows it, the way Telegram does: HTML built from the tree's
    whitelisted elements, every text and address escaped, never the owner's HTML itself. plain:
    inside a link or code, where Telegram finds no links."""
    out = []
    for child in node.children:
        if isinstance(child, str):
            out.append(html.escape(child) if plain else admin_autolinks(child))
            continue
        inner = admin_tg_preview(child, plain or child.kind in ("a", "code", "pre"))
        if child.kind == "a":
            out.append(admin_tg_link(child.url, inner))
        else:
            start, end = _ADMIN_TG_TAGS[child.kind]
            out.append(f"{start}{inner}{end}")
    return "".join(out)


def admin_tg_message(text):
    """A stored broadcast's Telegram HTML as a preview (an old one that was plain text, as text)."""
    try:
        return admin_tg_preview(parse_tg_html(text))
    except InvalidInput:
        return html.escape(text)


def admin_tg_plain(text):
    try:
        return tg_plain(parse_tg_html(text))
    except InvalidInput:
        return text


def admin_audience_words(audience):
    """Who a broadcast reaches, in a sentence."""
    n, left_out = audience["recipients"], []
    if audience["banned"]:
        left_out.append(f"{audience['banned']} banned")
    if audience["blocked"]:
        left_out.append(f"{audience['blocked']} who blocked the bot")
    if n:
        but = f" (left out: {', '.join(left_out)})" if left_out else ""
        return f"It goes to {n} shopper{'s' if n != 1 else ''}{but}."
    if not audience["shoppers"]:
        return "Nobody can get it yet: no shopper has started the bot."
    return f"Nobody can get it: every shopper is left out ({', '.join(left_out)})."


def admin_broadcast_check(text, photo=None):
    """What the preview shows of a message: the message as Telegram shows it and its length, or
    why Telegram would refuse it."""
    limit = CAPTION_LIMIT if photo else TEXT_LIMIT
    if not text.strip():
        return {"error": None, "html": None, "length": 0, "limit": limit}
    try:
        root, _, length = broadcast_message(text, photo)
    except InvalidInput as e:
        return {"error": str(e), "html": None, "length": None, "limit": limit}
    return {"error": None, "html": admin_tg_preview(root), "length": length, "limit": limit}


def admin_broadcast_page(shop, conn, sess, text="", photo=None, error=None, notice=None):
    """The Broadcast page: the form (as the owner left it, after a refusal with the reason and
    status 400), its preview, and the recent broadcasts."""
    found = find_broadcasts(conn)
    page = admin_render(
        shop,
        "broadcast.tpl",
        sess,
        recent=[dict(b, plain=admin_tg_plain(b["text"])) for b in found["recent"]],
        audience=found["audience"],
        audience_words=admin_audience_words(found["audience"]),
        text=text,
        photo=photo,
        check=admin_broadcast_check(text, photo),
        error=error,
        notice=notice,
    )
    return bottle.HTTPResponse(page, 400) if error else page


def admin_broadcast_confirm(shop, conn, sess, text, photo, changed=False):
    """The confirmation: the message as Telegram shows it, and the exact number of shoppers who get
    it, counted as the send counts them; no Send button when that is nobody."""
    root, _, length = broadcast_message(text, photo)
    broadcast_photo(shop.config.media_dir, photo)
    audience = broadcast_audience(conn)
    page = admin_render(
        shop,
        "broadcast_confirm.tpl",
        sess,
        text=text,
        photo=photo,
        preview=admin_tg_preview(root),
        length=length,
        audience=audience,
        audience_words=admin_audience_words(audience),
        changed=changed,
    )
    return bottle.HTTPResponse(page, 409) if changed else page


def admin_broadcast_photo(shop):
    """The broadcast's photo (its public name): a new upload, stored now so that the next step
    needs none, else the one the form carries unless the owner removed it. InvalidInput if the
    upload is not an image."""
    f = bottle.request.forms
    upload = read_upload(bottle.request.files.get("photo"), "The photo")
    if upload:
        return store_media(shop.config.media_dir, *upload, private=False)
    kept = f.get("photo_ref") or ""
    if f.get("drop_photo") or not re.fullmatch(r"[0-9a-f]{32}\.(jpg|png|gif|webp)", kept):
        return None
    return kept


def admin_broadcast_form(shop):
    with admin_page(shop) as (conn, sess):
        return admin_broadcast_page(shop, conn, sess)


def admin_broadcast_preview(shop):
    with admin_page(shop) as (_, sess):
        q = bottle.request.query
        photo = q.get("photo_ref") or None
        check = admin_broadcast_check(q.getunicode("text") or "", photo)
        return admin_render(shop, "_broadcast_preview.tpl", sess, check=check)


def admin_broadcast_send(shop):
    """The form's "Review and send" shows the confirmation; its "Send to N shoppers" (with the N
    the owner saw) starts the broadcast, "Change the message" goes back to the form."""
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        text, photo = f.getunicode("text") or "", None
        try:
            photo = admin_broadcast_photo(shop)
            if f.get("action") == "edit":
                return admin_broadcast_page(shop, conn, sess, text, photo)
            if "recipients" not in f:
                return admin_broadcast_confirm(shop, conn, sess, text, photo)
            confirmed = f.get("recipients")
            broadcast_id = start_broadcast(
                conn,
                text,
                photo,
                shop.config.media_dir,
                admin_remote(),
                expected=int(confirmed) if re.fullmatch(r"\d{1,9}", confirmed) else -1,
            )
        except AudienceChanged:
            return admin_broadcast_confirm(shop, conn, sess, text, photo, changed=True)
        except InvalidInput as e:
            return admin_broadcast_page(shop, conn, sess, text, photo, error=str(e))
    return admin_done(shop, sess, f"/admin/broadcast/{broadcast_id}", "Broadcast started.")


def admin_broadcast_test(shop):
    """Send the message being written to the owners' own chats (ADMIN_IDS) only; then the form
    again, as it was."""
    with admin_change(shop) as (conn, sess):
        text, photo = bottle.request.forms.getunicode("text") or "", None
        try:
            photo = admin_broadcast_photo(shop)
            owners = shop.config.admin_ids
            n = send_broadcast_test(
                conn, text, photo, shop.config.media_dir, owners, admin_remote()
            )
        except InvalidInput as e:
            return admin_broadcast_page(shop, conn, sess, text, photo, error=str(e))
        notice = (
            f"Test sent to {'your own chat' if n == 1 else f'the {n} owner chats'} "
            f"(ADMIN_IDS {', '.join(map(str, owners))}); it arrives in a few seconds. If it does "
            "not, send /start to the bot from there first."
        )
        return admin_broadcast_page(shop, conn, sess, text, photo, notice=notice)


def admin_broadcast_status(shop, broadcast_id):
    with admin_page(shop) as (conn, sess):
        progress = broadcast_progress(conn, broadcast_id)
        return admin_fragment_or_page(
            shop,
            "_broadcast_progress.tpl",
            "broadcast_status.tpl",
            sess,
            progress=progress,
            preview=admin_tg_message(progress["text"]),
        )


# Settings, data, audit


def admin_settings_page(shop, conn, sess, form=None, error=None):
    """The settings, the coins the merchant can take and the live sessions; after a refused save,
    the form as the owner typed it, with the reason, and status 400."""
    try:
        coins = [code for code in shop.payments.client.merchant_coins()]
    except ProviderError as e:
        log.warning("admin: cannot list the merchant's coins: %s", e.detail)
        coins = None
    values = {
        name: owner_setting_text(conn, name, shop.config)
        for name in OWNER_SETTINGS
        if name != "coins"
    }
    enabled = shop.setting("enabled_coins")
    if form is not None:  # a refused save: show what the owner typed, with the reason
        values.update({k: form.getunicode(k) or "" for k in values})
        enabled = set(form.getall("coins")) if form.get("coins_listed") else enabled
    sessions = find_live_admin_sessions(conn)
    with speaking(default_language(conn)):  # what shoppers read while the box is empty
        defaults = {
            **{key: tr(DEFAULT_SETTINGS[key]) for key in ("welcome_text", "help_text")},
            "terms_text": default_terms_text(conn),
            "paysupport_text": default_paysupport_text(conn),
        }
    page = admin_render(
        shop,
        "settings.tpl",
        sess,
        values=values,
        coins=coins,
        enabled=enabled,
        labels=COIN_LABELS,
        error=error,
        sessions=sessions,
        session_hash=sess["token_hash"],
        defaults=defaults,
        language_options=[(code, admin_language_name(code)) for code in available_languages()],
        default_language=admin_language_name(default_language(conn)),
        other_languages=admin_settings_languages(conn, form),
        rule_summary=admin_rule_summary(find_rule_report(conn)),
        rule_source=TELEGRAM_RULE_SOURCE,
    )
    return bottle.HTTPResponse(page, 400) if error else page


# The owner's texts as the Settings page shows them in other languages: (label, rows).
ADMIN_TEXT_FIELDS = {
    "welcome_text": ("Welcome text (after /start)", 3),
    "help_text": ("Help text", 5),
    "terms_text": ("/terms", 5),
    "paysupport_text": ("/paysupport", 4),
}


def admin_settings_languages(conn, form=None):
    """The owner's texts in the shop's other languages as the Settings page shows them: [{code,
    label, written, texts: [{name, label, value, placeholder, max_len, rows}]}], stored or after a
    refused save as typed. A placeholder is what shoppers in that language read while the box is
    empty (the default language's text, or the shop's own in their language)."""
    stored = translated_texts(conn)
    found = []
    for code in other_languages(conn):
        texts = []
        for key in SHOPPER_TEXTS:
            name = f"{key}.{code}"
            value = stored.get(name, "") if form is None else form.getunicode(name) or ""
            with speaking(code):
                placeholder = fallback_text(conn, key)
            label, rows = ADMIN_TEXT_FIELDS[key]
            texts.append(
                {
                    "name": name,
                    "label": label,
                    "value": value,
                    "placeholder": placeholder,
                    "max_len": SETTING_RULES[key][1],
                    "rows": rows,
                }
            )
        written = sum(1 for t in texts if t["value"])
        found.append(
            {"code": code, "label": admin_language_name(code), "written": written, "texts": texts}
        )
    return found


def admin_settings_form(shop):
    with admin_page(shop) as (conn, sess):
        return admin_settings_page(shop, conn, sess)


# Settings the form gained after its first version: a form without them (an older page still
# open, a script) keeps their values instead of being refused.
ADMIN_SETTINGS_ADDED_LATER = (
    "max_unpaid_units",
    "underpayment_tolerance",
    "low_stock_threshold",
    "telegram_rule",
    "referral_percent",
    "stars_per_euro",
    "terms_text",
    "paysupport_text",
    "default_language",
)


def admin_settings_read(shop, f):
    """The settings form, checked as `python shop.py set` checks them: {stored key: text} with the
    coins only when the form listed them; InvalidInput says what is wrong."""
    typed = {name: f.getunicode(name) or "" for name in OWNER_SETTINGS if name != "coins"}
    for name in ADMIN_SETTINGS_ADDED_LATER:
        if name not in f:
            typed[name] = owner_setting_text(shop.db(), name, shop.config)
    if f.get("coins_listed"):
        typed["coins"] = ",".join(f.getall("coins"))
    typed.update({name: f.getunicode(name) or "" for name in f if translated_text_setting(name)})
    return clean_owner_settings(
        typed, max_deposit_cents=shop.config.max_deposit_cents, coin_codes=COIN_CODES
    )


def admin_settings_changes(shop, conn, checked):
    """Those of the checked settings that differ from what the shop uses now."""
    changes = {}
    for key, value in checked.items():
        if key == "enabled_coins":
            current = shop.setting(key)
            if current is None:
                current = set(shop.payments.client.merchant_coins())
            changed = set(value.split(",")) != current
        elif key in RUNTIME_SETTINGS:
            changed = int(value) != shop.setting(key)
        elif key in SHOPPER_TEXTS:  # (an empty box: the shop's own text, as before)
            changed = value != owner_setting_text(conn, key, shop.config)
        else:
            changed = value != get_setting(conn, key)
        if changed:
            changes[key] = value
    return changes


def admin_setting_words(key):
    """A stored setting's name as the owner reads it: 'welcome text', 'welcome text in de'."""
    base, _, code = key.partition(".")
    return base.replace("_", " ") + (f" in {code}" if code else "")


def admin_settings_save(shop):
    with admin_change(shop) as (conn, sess):
        f = bottle.request.forms
        try:
            checked = admin_settings_read(shop, f)
        except InvalidInput as e:
            return admin_settings_page(shop, conn, sess, form=f, error=str(e))
        changes = admin_settings_changes(shop, conn, checked)
        if not changes:
            message = "Nothing changed."
        else:
            save_settings(conn, changes, admin_remote())
            message = "Settings saved: " + ", ".join(map(admin_setting_words, changes)) + "."
    return admin_done(shop, sess, "/admin/settings", message)


def admin_data(shop):
    with admin_page(shop) as (_, sess):
        return admin_render(
            shop,
            "data.tpl",
            sess,
            backups=sorted(shop.backup_dir.glob("shop-*.db"), reverse=True)
            if shop.backup_dir.exists()
            else [],
            replication=shop.replication() if shop.config.litestream_socket else None,
            replication_problem=replication_problem,
        )


def admin_csv_lines(columns, rows, export):
    """CSV text in blocks of about 64 KB; `export` is the connection the rows come from, closed at
    the end."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    try:
        writer.writerow(columns)
        for row in rows:
            writer.writerow([spreadsheet_text(cell) for cell in row])
            if buffer.tell() > 65536:
                yield buffer.getvalue().encode("utf-8")
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode("utf-8")
    finally:
        export.close()


def admin_csv_response(name, columns, rows, export):
    """Stream rows as CSV; `export` is the connection they come from, closed at the end."""
    bottle.response.content_type = "text/csv; charset=utf-8"
    bottle.response.set_header("Content-Disposition", f'attachment; filename="{name}"')
    return admin_csv_lines(columns, rows, export)


def admin_export_orders(shop):
    with admin_page(shop) as (conn, _):
        record_audit(conn, "orders exported", remote=admin_remote())
        export = connect(
            shop.config.shop_db, autocheckpoint=False
        )  # its own: the rows stream after this handler returns
        return admin_csv_response("orders.csv", ORDERS_CSV_COLUMNS, export_orders(export), export)


def admin_export_payments(shop):
    with admin_page(shop) as (conn, _):
        record_audit(conn, "payments exported", remote=admin_remote())
        export = connect(shop.config.shop_db, autocheckpoint=False)
        return admin_csv_response(
            "payments.csv", PAYMENTS_CSV_COLUMNS, export_payments(export), export
        )


def admin_export_ledger(shop):
    with admin_page(shop) as (conn, _):
        record_audit(conn, "ledger exported", remote=admin_remote())
        export = connect(shop.config.shop_db, autocheckpoint=False)
        return admin_csv_response("ledger.csv", LEDGER_CSV_COLUMNS, export_ledger(export), export)


def admin_file_chunks(handle):
    """A file's content in blocks of 1 MB; the file is closed at the end."""
    with handle:
        while block := handle.read(1 << 20):
            yield block


def admin_backup(shop):
    """A consistent copy, streamed from disk; one at a time."""
    with admin_page(shop) as (conn, _):
        if bottle.request.method == "HEAD":
            return bottle.HTTPResponse(
                status=200, headers={"Content-Type": "application/vnd.sqlite3"}
            )
        backup_lock = shop.admin_state.backup_lock
        if not backup_lock.acquire(blocking=False):
            return bottle.HTTPResponse(
                "A backup is being made already; try again in a moment.", 429
            )
        try:
            shop.backup_dir.mkdir(parents=True, exist_ok=True)
            path = backup_database(conn, shop.backup_dir / f"download-{secrets.token_hex(8)}.db")
            record_audit(conn, "backup downloaded", remote=admin_remote())
            handle = open(path, "rb")
            path.unlink()  # gone from the folder; the open handle still reads it
        finally:
            backup_lock.release()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
        return bottle.HTTPResponse(
            admin_file_chunks(handle),
            headers={
                "Content-Type": "application/vnd.sqlite3",
                "Content-Disposition": f'attachment; filename="shop-{stamp}.db"',
            },
        )


def admin_audit(shop):
    with admin_page(shop) as (conn, sess):
        rows = find_audit_log(conn, admin_before(), ADMIN_PAGE + 1)
        more = admin_more(rows)
        more = f"/admin/audit?before={more}" if more else None
        return admin_fragment_or_page(
            shop, "_audit.tpl", "audit.tpl", sess, rows=rows[:ADMIN_PAGE], more=more
        )


ADMIN_PAGES = [
    ("GET", "/admin/login", admin_login_form),
    ("POST", "/admin/login", admin_login),
    ("POST", "/admin/logout", admin_logout),
    ("GET", "/admin/app-preview", admin_app_preview),
    ("POST", "/admin/logout-everywhere", admin_logout_everywhere),
    ("GET", "/admin", admin_dashboard),
    ("GET", "/admin/catalog", admin_catalog),
    ("POST", "/admin/catalog/stars-only", admin_catalog_stars_only),
    ("POST", "/admin/cities", admin_city_add),
    ("POST", "/admin/districts", admin_district_add),
    ("POST", "/admin/<kind:re:city|district>/<place_id:id>", admin_place_change),
    ("GET", "/admin/<kind:re:city|district>/<place_id:id>/edit", admin_place_edit),
    ("GET", "/admin/<kind:re:city|district>/<place_id:id>/row", admin_place_row),
    ("POST", "/admin/places/order", admin_places_order),
    ("GET", "/admin/products/new", admin_product_new),
    ("GET", "/admin/products/<product_id:id>", admin_product_edit),
    ("POST", "/admin/products/<product_id:id>", admin_product_save),
    ("GET", "/admin/products/<product_id:id>/edit", admin_product_row_edit),
    ("GET", "/admin/products/<product_id:id>/row", admin_product_row),
    ("POST", "/admin/products/<product_id:id>/row", admin_product_row_save),
    ("POST", "/admin/products", admin_product_save),
    ("POST", "/admin/products/<product_id:id>/units", admin_units_add),
    ("POST", "/admin/units/<unit_id:id>/delete", admin_unit_delete),
    ("GET", "/admin/import", admin_import_form),
    ("POST", "/admin/import", admin_import_preview),
    ("POST", "/admin/import/confirm", admin_import_confirm),
    ("GET", "/admin/orders", admin_orders),
    ("GET", "/admin/orders/<order_id:id>", admin_order),
    ("POST", "/admin/orders/<order_id:id>/resend", admin_order_resend),
    ("POST", "/admin/orders/<order_id:id>/refund", admin_order_refund),
    ("POST", "/admin/orders/<order_id:id>/refund-stars", admin_order_star_refund),
    ("GET", "/admin/payments", admin_payments),
    ("GET", "/admin/payments/<payment_id:id>", admin_payment),
    ("POST", "/admin/payments/<payment_id:id>/recheck", admin_payment_recheck),
    ("POST", "/admin/payments/<payment_id:id>/mark-paid", admin_payment_mark_paid),
    ("GET", "/admin/users", admin_users),
    ("GET", "/admin/users/<user_id:id>", admin_user),
    ("POST", "/admin/users/<user_id:id>/balance", admin_user_balance),
    ("POST", "/admin/users/<user_id:id>/<action:re:ban|unban>", admin_user_ban),
    ("GET", "/admin/promos", admin_promos),
    ("POST", "/admin/promos", admin_promo_create),
    ("GET", "/admin/promos/<promo_id:id>", admin_promo),
    ("POST", "/admin/promos/<promo_id:id>", admin_promo_save),
    ("POST", "/admin/promos/<promo_id:id>/<action:re:pause|resume>", admin_promo_active),
    ("GET", "/admin/broadcast", admin_broadcast_form),
    ("GET", "/admin/broadcast/preview", admin_broadcast_preview),
    ("POST", "/admin/broadcast", admin_broadcast_send),
    ("POST", "/admin/broadcast/test", admin_broadcast_test),
    ("GET", "/admin/broadcast/<broadcast_id:id>", admin_broadcast_status),
    ("GET", "/admin/settings", admin_settings_form),
    ("POST", "/admin/settings", admin_settings_save),
    ("GET", "/admin/data", admin_data),
    ("GET", "/admin/export/orders.csv", admin_export_orders),
    ("GET", "/admin/export/payments.csv", admin_export_payments),
    ("GET", "/admin/export/ledger.csv", admin_export_ledger),
    ("GET", "/admin/backup", admin_backup),
    ("GET", "/admin/audit", admin_audit),
]


def admin_in_english(handler, shop, **url_args):
    """An admin page, in the admin's language (the source language), explicitly: a shopper's
    language never leaks into the owner's pages, their money formats or what they audit."""
    with speaking(SOURCE_LANGUAGE):
        return handler(shop, **url_args)


# The admin's pages, each in the admin's language.
ADMIN_ROUTES = [
    (method, path, functools.partial(admin_in_english, handler))
    for method, path, handler in ADMIN_PAGES
]


_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")


def spreadsheet_text(cell):
    """A CSV cell that a spreadsheet shows as the text it is: one beginning with = + - @, a tab or a
    carriage return would be read as a formula (OWASP's CSV injection), so it gets a leading ' ,
    which spreadsheets show as text. Numbers the shop wrote (-5.00) stay numbers."""
    if (
        isinstance(cell, str)
        and cell[:1] in ("=", "+", "-", "@", "\t", "\r")
        and not _NUMBER_RE.fullmatch(cell)
    ):
        return "'" + cell
    return cell


def unpack_zip(data, folder):
    """Extract a catalog ZIP safely: no paths outside the folder, bounded size and count."""
    import zipfile
    import zlib

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise CatalogError(["the file is not a valid ZIP archive"]) from None
    if len(members) > 5000 or sum(m.file_size for m in members) > 200 * 1024 * 1024:
        raise CatalogError(["the ZIP holds more than 5000 files or 200 MB"])
    root = folder.resolve()
    for m in members:
        target = (folder / m.filename).resolve()
        if not str(target).startswith(str(root) + os.sep):
            raise CatalogError([f"the ZIP entry {m.filename!r} points outside the archive"])
        if m.is_dir():
            continue
        if m.flag_bits & 1:
            raise CatalogError([f"the ZIP entry {m.filename!r} is encrypted"])
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (
            zipfile.BadZipFile,
            RuntimeError,
            NotImplementedError,
            OSError,
            EOFError,
            zlib.error,
        ) as e:
            raise CatalogError(
                [f"the ZIP entry {m.filename!r} cannot be read: {type(e).__name__}"]
            ) from None
    if not (folder / "catalog.json").is_file():
        raise CatalogError(["the ZIP has no catalog.json at its top level"])


# Bot ###########################################################################

# Every text a shopper reads here is in the language of the moment: ShopBot speaks the language
# of whoever sent the update (speaking()) while it handles it, so the screens just call tr().

# The reply keyboard under the message field. A pressed button comes back as its label in the
# language the keyboard was sent in, so the bot knows it by its emoji (menu_choice()).
# TRANSLATORS: a button of the keyboard under the message field, two to a row: at most about
# 16 characters. Keep the emoji first: the bot knows which button was pressed by it.
MENU_SHOP = N_("🛒 Shop")
# TRANSLATORS: a button of the keyboard under the message field (see "🛒 Shop").
MENU_BASKET = N_("🧺 Basket")
# TRANSLATORS: a button of the keyboard under the message field (see "🛒 Shop").
MENU_PROFILE = N_("👤 Profile")
# TRANSLATORS: a button of the keyboard under the message field (see "🛒 Shop"); a verb: add
# money to one's balance.
MENU_TOPUP = N_("💰 Top up")
# TRANSLATORS: a button of the keyboard under the message field (see "🛒 Shop"); a noun: the
# shopper's orders.
MENU_ORDERS = N_("📦 Orders")
# TRANSLATORS: a button of the keyboard under the message field (see "🛒 Shop").
MENU_HELP = N_("❓ Help")


MENU = [[MENU_SHOP, MENU_BASKET], [MENU_PROFILE, MENU_TOPUP], [MENU_ORDERS, MENU_HELP]]


# TRANSLATORS: the menu button beside the message field in the chat with the bot, which opens
# the Mini App: very short.
# (One for every chat, in the shop's default language: Telegram has no menu button per language,
# and a chat's own would keep an old address after the shop moves, until that chat wrote again.)
MENU_APP = N_("🛍 Shop")


# Telegram's command menu (setMyCommands, in each language): /command and what it does.
COMMANDS = [
    # TRANSLATORS: what a /command does, in Telegram's command menu (at most 256 characters;
    # best under 25, the menu is narrow).
    ("start", N_("Main menu")),
    ("shop", N_("Browse the shop")),
    ("basket", N_("Your basket")),
    ("refill", N_("Top up your balance")),
    ("profile", N_("Your balance and id")),
    ("orders", N_("Your orders")),
    ("language", N_("Choose your language")),
    ("help", N_("How this shop works")),
    ("paysupport", N_("Help with a payment")),
    ("terms", N_("Terms of sale")),
]


ORDERS_PAGE = 8


# TRANSLATORS: the answer to a button from a message too old or changed to work.
STALE_BUTTON = N_("That button is not valid any more.")


SOMETHING_WRONG = N_("Something went wrong on our side. Please try again.")


# What a shopper is told when a 🧪 button makes the sandbox pay an invoice (SIMULATIONS).
SIMULATING = {
    "full": N_("🧪 Simulating: pay in full. The payment service tells the shop in a moment."),
    "partial": N_("🧪 Simulating: pay half. The payment service tells the shop in a moment."),
    "over": N_("🧪 Simulating: pay 1.5 times. The payment service tells the shop in a moment."),
    "expire": N_("🧪 Simulating: let it expire. The payment service tells the shop in a moment."),
}


@dataclass
class Screen:
    """What one bot message shows: HTML text, inline buttons [[(label, data)]], an optional photo
    (a 'public:'/'private:' media ref, or PNG bytes made for this message)."""

    text: str
    buttons: list = field(default_factory=list)
    photo: str = None


LIST_PAGE = 20  # buttons per page of cities, districts or products (Telegram allows 100 in all)


def paged(rows, page, data, back=None):
    """One page of one-button rows, with ◀️/▶️ to the neighbours (callback `data:<page>`) and
    back."""
    pages = max(1, -(-len(rows) // LIST_PAGE))
    page = min(max(page, 0), pages - 1)
    out = rows[page * LIST_PAGE : (page + 1) * LIST_PAGE]
    nav = ([("◀️", f"{data}:{page - 1}")] if page > 0 else []) + (
        [("▶️", f"{data}:{page + 1}")] if page < pages - 1 else []
    )
    suffix = f" ({page + 1}/{pages})" if pages > 1 else ""
    return out + ([nav] if nav else []) + ([back] if back else []), suffix


def fitted(limit, render, texts):
    """render(texts) with the owner's `texts` (names, places) shortened alike until the message
    fits Telegram's `limit`: a screen fits however long its words are in the shopper's language."""
    cap = max(map(tg_len, texts), default=0)
    while True:
        text = render([shorten(t, cap) for t in texts])
        over = tg_len(html_to_plain(text)) - limit
        if over <= 0 or cap <= 1:
            return text
        cap = max(1, cap - max(1, over // len(texts)))


def back_button(data):
    # TRANSLATORS: a button back to the previous screen (at most about 16 characters).
    return (tr("⬅️ Back"), data)


def screen_cities(conn, page=0):
    cities = list_cities(conn)
    if not cities:
        return Screen(
            tr("🛒 The shop is empty right now. Please come back later."),
            [[(tr("🔄 Refresh"), "cities")]],
        )
    rows, suffix = paged([[(c["name"], f"city:{c['id']}")] for c in cities], page, "cities")
    return Screen(tr("🛒 <b>Choose a city</b>") + suffix, rows)


def screen_districts(conn, city_id, page=0):
    city = get_city(conn, city_id)
    districts = list_districts(conn, city_id)
    back = [back_button("cities")]
    if not districts:
        return Screen(tr("📍 Nothing is left in {place}.", place=esc(city["name"])), [back])
    rows, suffix = paged(
        [[(d["name"], f"dist:{d['id']}")] for d in districts], page, f"city:{city_id}", back
    )
    return Screen(tr("📍 <b>{city}</b>: choose a district", city=esc(city["name"])) + suffix, rows)


def screen_products(conn, district_id, page=0):
    """The products in stock in a district, then those sold out there (which a shopper may open
    to be told when they are back)."""
    district = get_district(conn, district_id)
    products = list_products(conn, district_id)
    sold_out = list_sold_out_offers(conn, district_id)
    back = [back_button(f"city:{district['city_id']}")]
    place = esc(place_name(district["city_name"], district["name"]))
    if not products and not sold_out:
        return Screen(tr("📍 Nothing is left in {place}.", place=place), [back])
    # TRANSLATORS: a button of a product sold out in the district, in the list of its products
    gone = [(tr("{product} · sold out", product=p["name"]), p["id"]) for p in sold_out]
    rows, suffix = paged(
        [
            [(label, f"prod:{product_id}:{district_id}")]
            for label, product_id in [
                *((f"{p['name']} · {fmt_eur(p['price_cents'])}", p["id"]) for p in products),
                *gone,
            ]
        ],
        page,
        f"dist:{district_id}",
        back,
    )
    return Screen(tr("📦 <b>{place}</b>: choose a product", place=place) + suffix, rows)


def screen_product(conn, user_id, product_id, district_id):
    offer = get_offer(conn, product_id, district_id)
    in_basket = get_basket_line_quantity(conn, user_id, product_id, district_id)
    photo = f"public:{offer['photo']}" if offer["photo"] else None
    stars = offer_stars(offer, telegram_rule(conn), stars_per_euro(conn))
    price = f"<b>{fmt_eur(offer['price_cents'])}</b>" + (f" · {fmt_stars(stars)}" if stars else "")
    facts = [
        "",
        tr("💶 Price: {price}", price=price),
        f"📍 {esc(place_name(offer['city_name'], offer['district_name']))}",
        tr("📦 Available: {n}", n=offer["available"])
        if offer["available"]
        else tr("❌ Sold out here"),
    ]
    if in_basket is not None:
        facts.append(tr("🧺 In your basket: {n}", n=in_basket))
    lines = [f"<b>{esc(offer['name'])}</b>"]
    if offer["description"]:
        room = (
            (CAPTION_LIMIT if photo else TEXT_LIMIT)
            - tg_len(html_to_plain("\n".join(lines + facts)))
            - 1
        )
        lines.append(esc(shorten(offer["description"], room)))
    lines += facts
    rows = []
    if offer["available"]:
        rows.append(
            [
                (tr("➕ Add to basket"), f"add:{product_id}:{district_id}"),
                (tr("⚡ Buy now"), f"buy:{product_id}:{district_id}"),
            ]
        )
    elif is_watching(conn, user_id, product_id, district_id):
        lines.append(tr("🔔 We will message you when it is back here."))
        # TRANSLATORS: a button: stop waiting for a sold-out product (at most about 30 characters)
        rows.append([(tr("🔕 Don't notify me"), f"unwatch:{product_id}:{district_id}")])
    else:
        # TRANSLATORS: a button: be told when a sold-out product is back (at most about 30
        # characters)
        rows.append([(tr("🔔 Notify me"), f"watch:{product_id}:{district_id}")])
    rows.append([(tr(MENU_BASKET), "basket"), back_button(f"dist:{district_id}")])
    return Screen("\n".join(lines), rows, photo)


def screen_basket(conn, user_id):
    basket = get_basket(conn, user_id)
    if not basket.lines:
        return Screen(tr("🧺 Your basket is empty."), [[(tr(MENU_SHOP), "cities")]])
    rows = [
        [
            ("➖", f"dec:{line.item_id}"),
            (f"{i}. {line.name} × {line.quantity}", f"prod:{line.product_id}:{line.district_id}"),
            ("➕", f"inc:{line.item_id}"),
            ("🗑", f"del:{line.item_id}"),
        ]
        for i, line in enumerate(basket.lines, 1)
    ]
    rows.append([(tr("🗑 Clear"), "clear"), (tr("💳 Checkout"), "checkout")])
    rows.append([(tr("🛒 Continue shopping"), "cities")])
    names = [text for line in basket.lines for text in (line.name, line.place)]
    return Screen(fitted(TEXT_LIMIT, lambda fit: basket_text(basket, fit), names), rows)


def basket_text(basket, names):
    """The basket's message, with its lines' names and places as given (fitted to the limit)."""
    text = [tr("🧺 <b>Your basket</b>"), ""]
    for i, line in enumerate(basket.lines, 1):
        name, place = names[2 * i - 2], names[2 * i - 1]
        text.append(
            f"{i}. <b>{esc(name)}</b> · {esc(place)}\n"
            f"    {line.quantity} × {fmt_eur(line.price_cents)} = {fmt_eur(line.total_cents)}"
        )
        if line.reserved:  # held for this shopper, so not for sale to them either: never "sold out"
            reserved = ntr(
                "⏳ {n} reserved for you in an unpaid order ({orders})",
                "⏳ {n} reserved for you in an unpaid order ({orders})",
                line.reserved,
                orders=tr(MENU_ORDERS),
            )
            text.append(f"    {reserved}")
        elif line.available < line.quantity:
            short = (
                ntr("⚠️ only {n} available now", "⚠️ only {n} available now", line.available)
                if line.available
                else tr("⚠️ sold out now")
            )
            text.append(f"    {short}")
    text += ["", tr("Total: <b>{total}</b>", total=fmt_eur(basket.total_cents))]
    return "\n".join(text)


def coin_rows(coins, amount_cents, data):
    """Coin buttons two to a row; a coin whose minimum is above the amount shows that minimum
    instead."""
    buttons = []
    for code, minimum in coins:
        if minimum is not None and minimum > amount_cents:
            # TRANSLATORS: a coin's button when the amount is below the least it takes, like
            # "BTC · min €18.60"; "min" is short for the minimum (keep it short).
            label = tr("{coin} · min {minimum}", coin=COIN_LABELS[code], minimum=fmt_eur(minimum))
            buttons.append((label, f"nocoin:{code}:{minimum}"))
        else:
            buttons.append((COIN_LABELS[code], f"{data}:{code}"))
    return [buttons[i : i + 2] for i in range(0, len(buttons), 2)]


TEST_MODE_OWNER = N_(
    "🧪 <b>Test mode</b>: you may buy here and pay with the 🧪 buttons, which simulate payments "
    "(you are in ADMIN_IDS or TESTER_IDS). Other shoppers cannot buy until NOWPAYMENTS_API_KEY "
    "is set."
)


def screen_not_selling():
    return Screen(
        esc(tr(NotSellingYet.message)),
        [[(tr(MENU_SHOP), "cities"), (tr(MENU_PROFILE), "profile")]],
    )


RULE_NOTE = N_("Digital goods are paid in Telegram Stars, by Telegram's rule.")


def offer_stars(offer, rule, rate):
    """What an offer costs in Stars (under Telegram's rule or not, at the rate), or None when it
    is not paid in Stars."""
    return stars_of(offer, rate) if "stars" in product_methods(offer, rule) else None


def screen_checkout(conn, user, checkout, coins, selling=True, stars=True):
    """A checkout (see create_checkout) with its ways to pay: those every product in it allows
    (checkout_methods). coins is None when crypto is unavailable; stars: whether the shop takes
    Telegram Stars. A basket whose products share no way to pay is split into parts that do.
    selling=False: test mode for a shopper who may not buy, who is told so instead."""
    quote = checkout_quote(conn, checkout)
    lines, offers = quote.lines, quote.offers
    items, short = _checkout_items(conn, offers, lines, stars)
    methods = [m for m in checkout_methods(conn, offers) if m != "stars" or stars]
    totals = _checkout_totals(quote)
    if "balance" in methods:
        totals.append(tr("Your balance: {balance}", balance=fmt_eur(user["balance_cents"])))
    back = back_button("basket" if checkout["from_basket"] else f"prod:{lines[0][0]}:{lines[0][1]}")
    parts, rows = [], []
    if short:
        notes = [
            tr(
                "⚠️ Some items are not available in that quantity any more. Please change your "
                "basket."
            )
        ]
    elif not methods:
        parts, notes, rows = _checkout_parts(conn, user, checkout, lines, offers, stars)
    elif not selling:
        notes = [esc(tr(NotSellingYet.message))]
    else:
        notes, rows = _checkout_ways(conn, user, checkout, quote, methods, coins)
    if quote.refused:
        notes.insert(0, f"🏷 {esc(quote.refused)}")
    if not short and selling and (quote.code or promo_codes_offered(conn)):
        rows.append([_promo_button(quote, checkout["nonce"])])
    names = [
        text
        for offer in offers
        for text in (offer["name"], place_name(offer["city_name"], offer["district_name"]))
    ]
    text = fitted(TEXT_LIMIT, lambda fit: _checkout_text(fit, items, totals, parts, notes), names)
    return Screen(text, rows + [[back]])


def _checkout_items(conn, offers, lines, stars):
    """What each line of a checkout says after its name and place (quantity, price, and what is
    missing), and whether any is short."""
    rule, rate = telegram_rule(conn), stars_per_euro(conn)
    items, short = [], False
    for offer, (_, _, quantity) in zip(offers, lines, strict=False):
        each_stars = offer_stars(offer, rule, rate) if stars else None
        item = f" × {quantity} = {fmt_eur(offer['price_cents'] * quantity)}" + (
            f" · {fmt_stars(each_stars * quantity)}" if each_stars else ""
        )
        if offer["available"] < quantity:
            short, left = True, offer["available"]
            item += " " + (
                ntr("⚠️ only {n} available", "⚠️ only {n} available", left)
                if left
                else tr("⚠️ sold out")
            )
        items.append(item)
    return items, short


def _checkout_text(names, items, totals, parts, notes):
    """A checkout's message: its lines with these names and places (fitted to the limit), the
    totals, the parts it is checked out in, the notes."""
    text = [tr("💳 <b>Checkout</b>"), ""]
    text += [
        f"• <b>{esc(names[2 * i])}</b> · {esc(names[2 * i + 1])}{item}"
        for i, item in enumerate(items)
    ]
    text += ["", *totals]
    if parts:
        text += [
            "",
            tr(
                "These items are paid in different ways, so they are checked out one part at a "
                "time:"
            ),
        ]
        text += [
            f"• {', '.join(esc(names[2 * i]) for i in indexes)}: {ways}" for indexes, ways in parts
        ]
    for note in notes:
        text += ["", note]
    return "\n".join(text)


def checkout_quote(conn, checkout):
    """What a checkout costs as its screen was priced: with the discount code it was made with;
    without one, why the shopper's code (if any) does not apply."""
    lines = normalise_lines(checkout_lines(checkout))
    if checkout["promo_id"] is not None:
        return quote_lines(conn, checkout["user_id"], lines, promo_id=checkout["promo_id"])
    quote = quote_lines(conn, checkout["user_id"], lines)
    if quote.promo is not None:  # applied after this checkout was made: not in its price
        return quote.without_code()
    return quote


def _checkout_totals(quote):
    """A checkout's total, and before it the list price and the code's discount when one applies."""
    total = tr("Total: <b>{total}</b>", total=fmt_eur(quote.total_cents))
    if not quote.discount_cents:
        return [total]
    return [
        tr("Subtotal: {amount}", amount=fmt_eur(quote.subtotal_cents)),
        discount_line((quote.promo["code"], quote.discount_cents)),
        total,
    ]


def _promo_button(quote, nonce):
    if quote.code:  # applying or not (its note says why not)
        return (tr("✖️ Remove code {code}", code=quote.code), f"unpromo:{nonce}")
    return (tr("🏷 Promo code"), f"promo:{nonce}")


def _checkout_ways(conn, user, checkout, quote, methods, coins):
    """The ways to pay a checkout that every product in it allows: (notes, button rows)."""
    notes, rows, nonce = [], [], checkout["nonce"]
    lines, offers, total = quote.lines, quote.offers, quote.total_cents
    if "stars" in methods:
        if "crypto" not in methods and "balance" not in methods and telegram_rule(conn):
            notes.append(tr(RULE_NOTE))
        amount = fmt_stars(
            stars_after_discount(
                stars_total(conn, offers, lines), quote.total_cents, quote.discount_cents
            )
        )
        rows.append([(tr("⭐ Pay {amount}", amount=amount), f"stars:{nonce}")])
    if "balance" in methods and user["balance_cents"] >= total:
        label = tr("💰 Pay {amount} from balance", amount=fmt_eur(total))
        rows.append([(label, f"pay:{nonce}")])
    elif "balance" in methods:
        short = fmt_eur(total - user["balance_cents"])
        notes.append(tr("Your balance is <b>{amount}</b> short.", amount=short))
    if "crypto" in methods and coins is None:
        notes.append(
            tr("⚠️ Crypto payments are unavailable right now. Please try again in a few minutes.")
        )
    elif "crypto" in methods and coins:
        notes.append(tr("Or pay in crypto:") if rows else tr("Pay in crypto:"))
        rows += coin_rows(coins, total, f"coin:{nonce}")
    if "balance" in methods and user["balance_cents"] < total:
        rows.append([(tr(MENU_TOPUP), "topup")])
    return notes, rows


def _checkout_parts(conn, user, checkout, lines, offers, stars):
    """A basket whose products share no way to pay: each part that does is checked out on its
    own (the rest stays in the basket). ([(its lines' indexes, how it is paid)], notes, button
    rows)."""
    import babel.lists

    parts, rows, coded = [], [], False
    for methods, part in split_by_methods(conn, lines, offers):
        indexes = [lines.index(line) for line in part]
        ways = [tr(METHOD_LABELS[m]) for m in methods if m != "stars" or stars]
        if not ways:
            parts.append((indexes, tr("not on sale right now")))
            continue
        said = babel.lists.format_list(ways, "or", locale=current_language().format_locale)
        parts.append((indexes, said))
        # The basket's code takes its discount off one part: the first it applies to.
        quote = quote_lines(conn, user["id"], part)
        if coded:
            quote = quote.without_code()
        coded = coded or quote.promo is not None
        cents = quote.total_cents
        nonce = create_checkout(
            conn, user["id"], "order", cents, part, checkout["from_basket"], quote.promo_id
        )
        label = ", ".join(offers[i]["name"] for i in indexes)
        rows.append([(f"💳 {shorten(label, 40)} · {fmt_eur(cents)}", f"part:{nonce}")])
    rule = telegram_rule(conn) and any(o["kind"] == "digital" for o in offers)
    return parts, [tr(RULE_NOTE)] if rule else [], rows


def screen_profile(conn, user, bot_username=None):
    """👤 Profile; with referrals on (and the bot's username known), the shopper's link to bring
    friends, and what it earned."""
    orders = count_user_paid_orders(conn, user["id"])
    name = esc(user["first_name"]) + (f" (@{esc(user['username'])})" if user["username"] else "")
    text = [
        tr("👤 <b>Profile</b>"),
        "",
        tr("Name: {name}", name=name),
        tr("Telegram ID: {id}", id=f"<code>{user['id']}</code>"),
        tr("Balance: {balance}", balance=f"<b>{fmt_eur(user['balance_cents'])}</b>"),
        tr("Orders: {n}", n=orders),
        tr("Language: {language}", language=esc(current_language().name())),
    ]
    rows = [
        [(tr(MENU_TOPUP), "topup"), (tr(MENU_ORDERS), "orders")],
        # TRANSLATORS: the button to choose the language the shop speaks.
        [(tr("🌐 Language"), "lang")],
    ]
    link = referral_link(conn, user["id"], bot_username)
    if link:
        brought, earned = referral_summary(conn, user["id"])
        text += [
            "",
            tr("🤝 <b>Invite friends</b>: {link}", link=esc(link)),
            tr(
                "You get {percent} of the first order of each friend who joins through it.",
                percent=fmt_percent(referral_percent(conn)),
            ),
            tr(
                "Friends who joined: {n} · earned: {amount}",
                n=brought,
                amount=fmt_eur(earned),
            ),
        ]
        share = "https://t.me/share/url?" + urlencode({"url": link})
        # TRANSLATORS: the button that opens Telegram's "share with" list for the invite link.
        rows.append([(tr("📤 Share my link"), share)])
    return Screen("\n".join(text), rows)


def screen_language(chosen):
    """/language: a button per language the shop speaks, in its own name (✓ on the one spoken
    now), and one to follow Telegram's language again (✓ when no language is chosen)."""
    spoken = current_language().code
    buttons = [
        (("✓ " if code == spoken else "") + language(code).name(), f"lang:{language_key(code)}")
        for code in available_languages()
    ]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    # TRANSLATORS: the button to follow the language of the shopper's Telegram app again.
    auto = ("✓ " if chosen is None else "") + tr("📱 Telegram's language")
    rows += [[(auto, "lang:auto")], [(tr(MENU_PROFILE), "profile")]]
    text = tr("🌐 <b>Language</b>") + "\n\n" + tr("Choose the language the shop speaks to you:")
    return Screen(text, rows)


def language_key(code):
    """A language's code as a button carries it ('pt_BR' -> 'ptbr')."""
    return code.lower().replace("_", "")


def language_by_key(key):
    """The language a button's language_key() names, None for 'auto' (Telegram's), else
    NotFound."""
    if key == "auto":
        return None
    for code in available_languages():
        if language_key(code) == key:
            return code
    raise NotFound(tr(STALE_BUTTON))


def screen_topup_prompt(user, minimum, maximum):
    quick = [c for c in (1000, 2000, 5000, 10000) if minimum <= c <= maximum]
    rows = [[(fmt_eur(c), f"tamt:{c}") for c in quick]] if quick else []
    ask = tr(
        "How much do you want to add? Send an amount in EUR from {minimum} to {maximum}, for "
        "example <code>20</code> or <code>20.50</code>, or pick one:",
        minimum=fmt_eur(minimum),
        maximum=fmt_eur(maximum),
    )
    balance = tr("Balance: {balance}", balance=fmt_eur(user["balance_cents"]))
    return Screen(
        "\n\n".join([tr("💰 <b>Top up your balance</b>"), balance, ask]),
        rows + [[(tr("✖️ Cancel"), "profile")]],
    )


def screen_topup_coins(checkout, coins):
    title = tr("💰 <b>Top up {amount}</b>", amount=fmt_eur(checkout["amount_cents"]))
    if coins is None:
        unavailable = tr(
            "⚠️ Crypto payments are unavailable right now. Please try again in a few minutes."
        )
        return Screen(f"{title}\n\n{unavailable}", [[(tr(MENU_PROFILE), "profile")]])
    return Screen(
        title + "\n\n" + tr("Choose the coin you want to pay with:"),
        coin_rows(coins, checkout["amount_cents"], f"tcoin:{checkout['nonce']}")
        + [[(tr("✖️ Cancel"), "profile")]],
    )


def screen_invoice(payment, sandbox, with_qr=True, simulate=False, discount=None):
    """The invoice for a payment: exact amount and address, memo, expiry, status; QR code as the
    photo.
    simulate: the 🧪 buttons that make the sandbox pay it (for whom Shop.may_simulate allows).
    discount: (code, cents) a discount code took off its order (order_discount)."""
    if payment["pay_currency"] == "xtr":
        return screen_stars_invoice(payment, sandbox, simulate, discount)
    coin = payment["pay_currency"]
    label = COIN_LABELS.get(coin, coin.upper())
    price = fmt_eur(payment["price_cents"])
    lines = [
        tr("🧾 <b>Order #{order}</b> · {price}", order=payment["order_id"], price=price)
        if payment["order_id"]
        else tr("🧾 <b>Top-up</b> · {price}", price=price)
    ]
    if discount:
        lines.append(discount_line(discount))
    if sandbox:
        lines.append(
            tr("🧪 <b>SANDBOX</b>: a test invoice, no real money.")
            + (" " + tr("Use the 🧪 buttons to simulate a payment.") if simulate else "")
        )
    lines += [
        "",
        tr(
            "Send exactly {amount} {coin}\nto {address}",
            amount=f"<code>{esc(payment['pay_amount'])}</code>",
            coin=esc(label),
            address=f"<code>{esc(payment['pay_address'])}</code>",
        ),
    ]
    if payment["payin_extra_id"]:
        memo = f"<code>{esc(payment['payin_extra_id'])}</code>"
        lines.append(tr("Memo / tag (required): {memo}", memo=memo))
    expires = parse_iso(payment["expires_at"])
    seconds = (expires - datetime.now(timezone.utc)).total_seconds()
    left = math.ceil(seconds / 60) if seconds > 0 else -1
    status = payment["status"]
    if status == "waiting" and left < 0:
        lines += [
            "",
            tr(
                "⌛ This invoice is no longer open. Money sent to it anyway is not lost: it is "
                "delivered or credited to your balance."
            ),
        ]
    else:
        if status == "waiting":
            by = ntr(
                "Pay by {when} UTC ({n} min left).",
                "Pay by {when} UTC ({n} min left).",
                left,
                when=current_language().when(expires),
            )
            reserved = " " + tr("The items are reserved until then.")
            lines += ["", by + (reserved if payment["order_id"] else "")]
        lines += ["", tr("Status: {status}", status=tr(payment_status_text(payment)))]
    lines.append(tr("Payment id: {id}", id=f"<code>{payment['provider_id']}</code>"))
    rows = _invoice_buttons(payment, left, simulate)
    photo = (
        qr_png(payment_uri(coin, payment["pay_address"], payment["pay_amount"]))
        if with_qr
        else None
    )
    return Screen("\n".join(lines), rows, photo)


def _invoice_buttons(payment, left, simulate):
    rows, status, pid = [], payment["status"], payment["id"]
    if status in OPEN_STATUSES and left >= 0:
        rows.append(
            [(tr("🔄 Check status"), f"chk:{pid}")]
            + ([(tr("❌ Cancel"), f"cxl:{pid}")] if status == "waiting" else [])
        )
        if simulate and status == "waiting":
            rows += [
                [
                    (tr("🧪 Pay in full"), f"sim:{pid}:full"),
                    (tr("🧪 Pay half"), f"sim:{pid}:partial"),
                ],
                [
                    (tr("🧪 Overpay"), f"sim:{pid}:over"),
                    (tr("🧪 Let it expire"), f"sim:{pid}:expire"),
                ],
            ]
    back = (MENU_ORDERS, "orders") if payment["order_id"] else (MENU_PROFILE, "profile")
    return rows + [[(tr(back[0]), back[1])]]


def screen_stars_invoice(payment, sandbox, simulate=False, discount=None):
    """A Stars invoice's state, above Telegram's own invoice message (which has the Pay button);
    in the sandbox there is none, and 🧪 pays."""
    stars = int(payment["pay_amount"])
    lines = [
        tr(
            "⭐ <b>Order #{order}</b> · {stars} ({price})",
            order=payment["order_id"],
            stars=fmt_stars(stars),
            price=fmt_eur(payment["price_cents"]),
        )
    ]
    if discount:
        lines.append(discount_line(discount))
    if sandbox:
        lines.append(
            tr("🧪 <b>SANDBOX</b>: a test invoice, no real Stars.")
            + (" " + tr("Use the 🧪 button to simulate the payment.") if simulate else "")
        )
    expires = parse_iso(payment["expires_at"])
    seconds = (expires - datetime.now(timezone.utc)).total_seconds()
    status, open_ = payment["status"], payment["status"] == "waiting" and seconds > 0
    if open_:
        left, when = math.ceil(seconds / 60), current_language().when(expires)
        by = (
            ntr(
                "Pay with the 🧪 button by {when} UTC ({n} min left).",
                "Pay with the 🧪 button by {when} UTC ({n} min left).",
                left,
                when=when,
            )
            if sandbox
            else ntr(
                "Pay with <b>Pay</b> on the invoice below by {when} UTC ({n} min left).",
                "Pay with <b>Pay</b> on the invoice below by {when} UTC ({n} min left).",
                left,
                when=when,
            )
        )
        lines += ["", by + " " + tr("The items are reserved until then.")]
    elif status == "waiting":
        lines += [
            "",
            tr(
                "⌛ The time to pay ran out. The invoice still works while the items are there; "
                "if they are gone, Telegram does not charge you."
            ),
        ]
    else:
        lines += ["", tr("Status: {status}", status=tr(payment_status_text(payment)))]
    rows = []
    if open_:
        rows.append([(tr("❌ Cancel"), f"cxl:{payment['id']}")])
        if simulate:
            pay = tr("🧪 Pay {amount}", amount=fmt_stars(stars))
            rows.insert(0, [(pay, f"sim:{payment['id']}:full")])
    rows.append([(tr(MENU_ORDERS), "orders")])
    return Screen("\n".join(lines), rows)


def order_state(status):
    """An order's status as the shopper reads it."""
    # TRANSLATORS: an order's state, after its number (the orders list, the order's page).
    return {
        "pending": ptr("order status", "pending"),
        "paid": ptr("order status", "paid"),
        "cancelled": ptr("order status", "cancelled"),
        "expired": ptr("order status", "expired"),
        "refunded": ptr("order status", "refunded"),
    }.get(status, status)


def screen_orders(conn, user_id, before_id=None):
    orders = list_orders(conn, user_id, before_id=before_id, limit=ORDERS_PAGE + 1)
    if not orders and not before_id:
        return Screen(tr("📦 You have no orders yet."), [[(tr(MENU_SHOP), "cities")]])
    when = current_language().when
    rows = [
        [
            (
                f"#{o['id']} · {when(o['created_at'])} · {fmt_eur(o['total_cents'])}"
                f" · {order_state(o['status'])}",
                f"order:{o['id']}",
            )
        ]
        for o in orders[:ORDERS_PAGE]
    ]
    nav = []
    if before_id:
        nav.append((tr("⏮ Newest"), "orders"))
    if len(orders) > ORDERS_PAGE:
        nav.append((tr("Older ▶️"), f"orders:{orders[ORDERS_PAGE - 1]['id']}"))
    return Screen(tr("📦 <b>Your orders</b>"), rows + ([nav] if nav else []))


def screen_order(conn, user_id, order_id):
    order = get_order(conn, user_id, order_id)
    title = tr(
        "📦 <b>Order #{order}</b> · {state}", order=order["id"], state=order_state(order["status"])
    )
    placed = tr("Placed {when} UTC", when=current_language().when(order["created_at"]))
    order_lines = get_order_lines(conn, order_id)
    total = tr("Total: <b>{total}</b>", total=fmt_eur(order["total_cents"]))
    payment = latest_order_payment(conn, order_id)
    if payment is not None and payment["pay_currency"] == "xtr" and payment["charge_id"]:
        stars = fmt_stars(int(payment["pay_amount"]))
        total = tr(
            "Total: <b>{total}</b> · paid {stars} in Telegram Stars",
            total=fmt_eur(order["total_cents"]),
            stars=stars,
        )

    discount = order_discount(conn, order_id)
    totals = [discount_line(discount), total] if discount else [total]

    def render(names):
        text = [title, placed, ""]
        text += [
            f"• <b>{esc(names[2 * i])}</b> · {esc(names[2 * i + 1])} × {line['quantity']}"
            f" = {fmt_eur(line['price_cents'] * line['quantity'])}"
            for i, line in enumerate(order_lines)
        ]
        return "\n".join([*text, "", *totals])

    names = [text for line in order_lines for text in (line["product_name"], line["place_name"])]
    rows = (
        [[(tr("📨 Send my items again"), f"resend:{order_id}")]]
        if order["status"] == "paid"
        else []
    )
    return Screen(fitted(TEXT_LIMIT, render, names), rows + [[(tr("⬅️ Orders"), "orders")]])


def screen_help(conn):
    text = f"❓ <b>{esc(get_setting(conn, 'shop_name'))}</b>\n\n{esc(shop_text(conn, 'help_text'))}"
    contact = get_setting(conn, "support_contact")
    if contact:
        text += "\n\n" + tr("Support: {contact}", contact=esc(contact))
    return Screen(text)


def screen_terms(conn):
    """/terms: the owner's terms, or the default."""
    return Screen(tr("📜 <b>Terms</b>") + "\n\n" + esc(shop_text(conn, "terms_text")))


def screen_paysupport(conn):
    """/paysupport: how to get help with a payment (Telegram asks Stars sellers to answer it)."""
    text = esc(shop_text(conn, "paysupport_text"))
    return Screen(tr("🛟 <b>Payment support</b>") + "\n\n" + text)


def bot_introduction(conn):
    """What the bot tells Telegram about itself in each language the shop speaks: [(language code
    for Telegram, its commands [(command, description)], description, short description)], the
    default language's first, with code None: for everyone whose language has none of its own."""
    default, name = default_language(conn), get_setting(conn, "shop_name")
    out = []
    for code in (default, *(c for c in available_languages() if c != default)):
        if code != default and not re.fullmatch(r"[a-z]{2}", code):
            continue  # Telegram keeps them for two-letter codes only: 'pt' serves 'pt_BR' too
        with speaking(code):
            commands = [(command, tr(does)) for command, does in COMMANDS]
            # TRANSLATORS: the bot's description, which Telegram shows in an empty chat with it
            # ("What can this bot do?"); {shop} is the shop's name. At most 512 characters.
            description = tr(
                "{shop}: browse the shop, pay in Telegram Stars, in crypto or from your balance, "
                "and get your goods right here in this chat.",
                shop=name,
            )
            # TRANSLATORS: the bot's short description, on its profile page and in shared links;
            # {shop} is the shop's name (up to 64 characters). At most 120 characters in all.
            short = tr("{shop}: shop in Telegram, pay in Stars, crypto or balance.", shop=name)
        out.append(
            (
                None if code == default else code,
                commands,
                shorten(description, 512),
                shorten(short, 120),
            )
        )
    return out


def introduce_bot(api, conn, bot_id):
    """Tell Telegram the bot's commands and descriptions in each language the shop speaks
    (setMyCommands, setMyDescription, setMyShortDescription), unless they are what this bot was
    told last time. Returns whether it told anything; raises what the Bot API raises.

    What was told is known by what it is made of (the bot, the shop's name and default language,
    the commands, each catalog file's bytes), so a start with nothing changed reads no catalog:
    a shop whose shoppers speak one language keeps only that one in memory."""
    made_of = [bot_id, get_setting(conn, "shop_name"), default_language(conn), COMMANDS]
    for code in available_languages()[1:]:
        po = (LOCALES_DIR / code / "LC_MESSAGES" / "messages.po").read_bytes()
        made_of.append([code, hashlib.sha256(po).hexdigest()])
    said = json.dumps(made_of, ensure_ascii=False, sort_keys=True)
    fingerprint = hashlib.sha256(said.encode()).hexdigest()
    if bot_introduced(conn) == fingerprint:
        return False
    introduction = bot_introduction(conn)
    for code, commands, description, short in introduction:
        api.set_my_commands([tg.BotCommand(c, d) for c, d in commands], language_code=code)
        api.set_my_description(description, language_code=code)
        api.set_my_short_description(short, language_code=code)
    note_bot_introduced(conn, fingerprint)
    return True


def inline_markup(buttons):
    if not buttons:
        return None
    markup = tg.InlineKeyboardMarkup()
    for row in buttons:
        markup.row(*[inline_button(text, data) for text, data in row])
    return markup


def inline_button(text, data):
    """A button that calls back with `data`, or opens it when it is an https link."""
    if data.startswith("https://"):
        return tg.InlineKeyboardButton(text, url=data)
    return tg.InlineKeyboardButton(text, callback_data=data)


def main_menu():
    """The reply keyboard, in the language of the moment."""
    markup = tg.ReplyKeyboardMarkup(resize_keyboard=True, is_persistent=True)
    for row in MENU:
        markup.row(*[tg.KeyboardButton(tr(label)) for label in row])
    return markup


# The reply keyboard's buttons by their emoji: the labels' first word in every language.
MENU_EMOJI = {label.split()[0]: label for row in MENU for label in row}


def menu_choice(text):
    """The MENU label of the reply keyboard's button a message is, whatever language the keyboard
    was sent in (known by its emoji), else None."""
    text = (text or "").strip().replace("\ufe0f", "")
    if tg_len(text) > 64:
        return None
    return next((label for emoji, label in MENU_EMOJI.items() if text.startswith(emoji)), None)


NO_PREVIEW = tg.LinkPreviewOptions(is_disabled=True)
# Threads that run update handlers (telebot's pool); the bot benchmarks give the echo bot as many.
BOT_WORKERS = 6


# Failures of the link to Telegram itself, as opposed to Telegram refusing a request.
NETWORK_ERRORS = (
    requests.RequestException,
    apihelper.ApiHTTPException,
    apihelper.ApiInvalidJSONException,
)


def api_error(e):
    """(code, description) of a Telegram API failure."""
    return getattr(e, "error_code", None), getattr(e, "description", None) or str(e)


def send_photo_cached(shop, conn, chat_id, photo, caption, markup=None):
    """Send a photo ref, uploading its file once per bot and reusing Telegram's file_id after."""
    api, bot_id = shop.telegram, shop.config.bot_id
    file_id = get_telegram_file_id(conn, photo, bot_id)
    if file_id is not None:
        try:
            return api.send_photo(
                chat_id, file_id, caption=caption, parse_mode="HTML", reply_markup=markup
            )
        except apihelper.ApiTelegramException as e:
            if e.error_code != 400 or "file" not in (e.description or "").lower():
                raise
            log.warning("Telegram no longer knows the file_id of %s; uploading it again", photo)
    with open(media_path(shop.config.media_dir, photo), "rb") as f:
        message = api.send_photo(
            chat_id, f, caption=caption, parse_mode="HTML", reply_markup=markup
        )
    save_telegram_file_id(conn, photo, bot_id, message.photo[-1].file_id)
    return message


class BotApiAnswer:
    """Telegram's answer to one Bot API call, with what telebot reads of a requests.Response."""

    __slots__ = ("status_code", "reason", "content")

    def __init__(self, status_code, reason, content):
        self.status_code, self.reason, self.content = status_code, reason, content

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class BotApiTransport:
    """How telebot's Bot API calls travel (apihelper.CUSTOM_REQUEST_SENDER): straight over
    urllib3's keep-alive pool, the pool requests itself sends through. requests' own work per
    call (reading the proxy variables and ~/.netrc, cookies, hooks, re-parsing a URL carrying the
    whole message) cost 0.6 of the 1.1 ms of CPU each call took, and under a burst every worker
    waits its turn for that CPU. The parameters go in the body (a form, or multipart with files)
    as Telegram takes them, not in the URL. Failures are raised as the requests exceptions telebot
    and the shop already handle. Not used when the environment names a proxy for the Bot API
    (install() says so): telebot's requests then honours it as it always did."""

    def __init__(self, workers):
        ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if not ca:
            import certifi  # requests' own bundle, so both ways trust the same authorities

            ca = certifi.where()
        self.pool = urllib3.PoolManager(maxsize=workers, block=False, retries=False, ca_certs=ca)

    @classmethod
    def install(cls, api_url, workers):
        """Send telebot's calls through a new transport unless a proxy is set for api_url."""
        if requests.utils.get_environ_proxies(api_url):
            apihelper.CUSTOM_REQUEST_SENDER = None
            return None
        apihelper.CUSTOM_REQUEST_SENDER = transport = cls(workers)
        return transport

    @staticmethod
    def file_field(key, value):
        """(file name, bytes) of a file telebot passes: a file, bytes, or (name, file or bytes);
        named as requests names it."""
        if isinstance(value, tuple):
            name, value = value[0], value[1]
        else:
            name = getattr(value, "name", None)
            name = os.path.basename(name) if isinstance(name, str) and name[:1] != "<" else key
        return name, value.read() if hasattr(value, "read") else value

    def __call__(self, method, url, params=None, files=None, timeout=None, proxies=None):
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        kw = {"timeout": urllib3.Timeout(connect=connect, read=read), "redirect": False}
        method = method.upper()
        if files:
            fields = dict(params or {})
            fields.update((k, self.file_field(k, v)) for k, v in files.items())
            kw.update(fields=fields)
        elif method == "GET":
            kw.update(fields=params)
        else:
            kw.update(fields=params or {}, encode_multipart=False)
        try:
            r = self.pool.request(method, url, **kw)
        except urllib3.exceptions.NewConnectionError as e:
            raise requests.ConnectionError(e) from None
        except urllib3.exceptions.ConnectTimeoutError as e:
            raise requests.ConnectTimeout(e) from None
        except urllib3.exceptions.ReadTimeoutError as e:
            raise requests.ReadTimeout(e) from None
        except urllib3.exceptions.HTTPError as e:
            raise requests.ConnectionError(e) from None
        return BotApiAnswer(r.status, r.reason, r.data)


class PollingBot(telebot.TeleBot):
    """A TeleBot that notes when getUpdates last succeeded, so /healthz can tell a stalled bot."""

    last_poll = None

    def get_updates(self, *args, **kwargs):
        updates = super().get_updates(*args, **kwargs)
        self.last_poll = time.monotonic()
        if isinstance(self.exception_handler, PollingErrors):
            self.exception_handler.recovered()
        return updates


class PollingErrors(telebot.ExceptionHandler):
    """What telebot does with errors: polling failures back off and log once a minute, not per
    try."""

    def __init__(self, shop):
        self.shop, self.failures, self.warn = shop, 0, Throttle(60)

    def handle(self, exception):
        if threading.current_thread() is not self.shop.threads.get("bot"):
            log.error("bot: an update handler failed", exc_info=exception)
            return True
        self.failures += 1
        code = getattr(exception, "error_code", None)
        if code == 409:
            reason = (
                "another process is polling with this BOT_TOKEN (409 Conflict); "
                "run one shop per bot"
            )
        elif code == 401:
            reason = (
                "Telegram refused BOT_TOKEN (401 Unauthorized); check the token with @BotFather"
            )
        else:
            detail = api_error(exception)[1] if code else type(exception).__name__
            reason = f"cannot get updates from Telegram ({detail})"
        self.shop.bot_state = f"down: {reason}"
        if self.warn():
            log.log(
                logging.ERROR if code in (401, 409) else logging.WARNING,
                "bot: %s; retrying",
                reason,
            )
        self.shop.stopping.wait(min(10.0, 0.5 * 2 ** min(self.failures, 5)))
        return True

    def recovered(self):
        if self.failures:
            log.info(
                "bot: getting updates from Telegram again after %d failed tries", self.failures
            )
            self.failures = 0
            self.warn = Throttle(60)
            self.shop.bot_state = "running"
            catch_up_outbox(self.shop.db())


class ShopBot:
    """The Telegram adapter: parses updates, calls services, renders screens."""

    def __init__(self, shop):
        self.shop = shop
        self.bot = shop.telegram
        b = self.bot
        for command, handler in (
            ("start", self.msg_start),
            ("shop", self.msg_shop),
            ("basket", self.msg_basket),
            ("refill", self.msg_topup),
            ("profile", self.msg_profile),
            ("orders", self.msg_orders),
            ("language", self.msg_language),
            ("help", self.msg_help),
            ("paysupport", self.msg_paysupport),
            ("terms", self.msg_terms),
        ):
            b.register_message_handler(
                self.guarded(handler), commands=[command], chat_types=["private"]
            )
        # Telegram Stars: before the catch-all below, which would take a successful_payment too.
        b.register_pre_checkout_query_handler(self.on_pre_checkout, func=lambda q: True)
        b.register_message_handler(
            self.msg_successful_payment, content_types=["successful_payment"]
        )
        menu = {
            MENU_SHOP: self.msg_shop,
            MENU_BASKET: self.msg_basket,
            MENU_PROFILE: self.msg_profile,
            MENU_TOPUP: self.msg_topup,
            MENU_ORDERS: self.msg_orders,
            MENU_HELP: self.msg_help,
        }
        b.register_message_handler(
            lambda m: self.run_guarded(menu[menu_choice(m.text)], m),
            chat_types=["private"],
            func=lambda m: menu_choice(m.text) is not None,
        )
        b.register_message_handler(
            self.guarded(self.msg_other),
            chat_types=["private"],
            content_types=telebot.util.content_type_media,
        )
        b.register_message_handler(
            self.msg_group, func=lambda m: m.chat.type != "private", commands=["start"]
        )
        b.register_callback_query_handler(self.on_callback, func=lambda c: True)

    # Plumbing

    def language_for(self, tg_user, shopper=True):
        """The language to answer an update in: its sender's (shopper_language), recorded first
        (touch_user keeps Telegram's language_code) unless shopper=False (someone writing in a
        group, who does not become a shopper by it). When the database cannot say, Telegram's
        language: the handler then tells of the failure in it."""
        conn = self.shop.db()
        try:
            if shopper:
                return shopper_language(conn, self.user_of(conn, tg_user))
            try:
                chosen = get_user(conn, tg_user.id)["language"]
            except NotFound:
                chosen = None
            return shopper_language(
                conn, {"language": chosen, "language_code": tg_user.language_code}
            )
        except sqlite3.Error:
            return match_language(tg_user.language_code) or SOURCE_LANGUAGE

    def user_of(self, conn, tg_user):
        return touch_user(
            conn,
            {
                "id": tg_user.id,
                "first_name": tg_user.first_name,
                "username": tg_user.username,
                "language_code": tg_user.language_code,
            },
        )

    def guard(self, message):
        """The shopper's row, or None (after at most one polite refusal) when banned."""
        conn = self.shop.db()
        user = self.user_of(conn, message.from_user)
        if user["is_banned"]:
            if should_tell_banned(conn, user["id"]):
                self.reply(
                    message.chat.id, tr(Banned.message), reply_markup=tg.ReplyKeyboardRemove()
                )
            return None
        return user

    @staticmethod
    def api(fn, *args, **kw):
        """Call the Bot API; on a short 429 wait it out once (the shopper is waiting for this
        answer)."""
        try:
            return fn(*args, **kw)
        except apihelper.ApiTelegramException as e:
            retry_after = ((e.result_json or {}).get("parameters") or {}).get("retry_after")
            if e.error_code != 429 or not isinstance(retry_after, int) or retry_after > 5:
                raise
            time.sleep(retry_after)
            return fn(*args, **kw)

    def reply(self, chat_id, text, **kw):
        """Send a message straight away (an answer to what the shopper just did)."""
        self.shop.limiter.note(chat_id)
        return self.api(self.bot.send_message, chat_id, text, **kw)

    def send(self, chat_id, screen, reply_keyboard=None):
        if isinstance(screen.photo, bytes):  # made for this message (an invoice's QR code)
            self.shop.limiter.note(chat_id)
            return self.api(
                self.bot.send_photo,
                chat_id,
                screen.photo,
                caption=screen.text,
                parse_mode="HTML",
                reply_markup=inline_markup(screen.buttons),
            )
        if screen.photo:
            self.shop.limiter.note(chat_id)
            try:
                return self.api(
                    send_photo_cached,
                    self.shop,
                    self.shop.db(),
                    chat_id,
                    screen.photo,
                    screen.text,
                    inline_markup(screen.buttons),
                )
            except OSError as e:
                log.warning(
                    "bot: photo %s cannot be read (%s); showing the screen without it",
                    screen.photo,
                    e.strerror,
                )
        return self.reply(
            chat_id,
            screen.text,
            parse_mode="HTML",
            reply_markup=reply_keyboard or inline_markup(screen.buttons),
            link_preview_options=NO_PREVIEW,
        )

    def show(self, message, screen):
        """Replace the navigation message with a screen: edit in place (a photo card's photo too,
        with editMessageMedia), or swap when a photo message must become text or the other way
        round. Returns the new message when one was sent."""
        chat_id = message.chat.id
        has_photo = bool(getattr(message, "photo", None))
        if has_photo and isinstance(screen.photo, str) and self.edit_photo(message, screen):
            return None
        if not has_photo and not screen.photo:
            try:
                self.api(
                    self.bot.edit_message_text,
                    screen.text,
                    chat_id,
                    message.message_id,
                    parse_mode="HTML",
                    reply_markup=inline_markup(screen.buttons),
                    link_preview_options=NO_PREVIEW,
                )
                return
            except apihelper.ApiTelegramException as e:
                if "not modified" in (e.description or ""):
                    return
                if "not found" not in (e.description or "") and "no text" not in (
                    e.description or ""
                ):
                    raise
        sent = self.send(chat_id, screen)  # first, so a failure leaves the old screen in place
        try:
            self.bot.delete_message(chat_id, message.message_id)
        except apihelper.ApiTelegramException as e:
            log.debug("could not delete message %s: %s", message.message_id, e.description)
        return sent

    def edit_photo(self, message, screen):
        """Show a photo screen in a photo message's place, with a photo Telegram already has (its
        file_id); False when there is none yet (the caller sends it, which uploads it once)."""
        file_id = get_telegram_file_id(self.shop.db(), screen.photo, self.shop.config.bot_id)
        if file_id is None:
            return False
        try:
            self.api(
                self.bot.edit_message_media,
                tg.InputMediaPhoto(file_id, caption=screen.text, parse_mode="HTML"),
                message.chat.id,
                message.message_id,
                reply_markup=inline_markup(screen.buttons),
            )
        except apihelper.ApiTelegramException as e:
            return "not modified" in (e.description or "")  # else: sent anew
        return True

    def recaption(self, message, screen):
        """Update an invoice's message in place: the caption under its QR code, or the text of a
        Stars invoice's state."""
        has_photo = bool(getattr(message, "photo", None))
        try:
            self.api(
                self.bot.edit_message_caption if has_photo else self.bot.edit_message_text,
                screen.text,
                message.chat.id,
                message.message_id,
                parse_mode="HTML",
                reply_markup=inline_markup(screen.buttons),
            )
        except apihelper.ApiTelegramException as e:
            if "not modified" not in (e.description or ""):
                raise

    # Messages

    def guarded(self, handler):
        """A message handler for telebot: handler(message) run by run_guarded."""
        return functools.partial(self.run_guarded, handler)

    def run_guarded(self, handler, message):
        """Run a message handler for a shopper who is not banned, in their language; any command
        ends a question, and failures become a short answer instead of an exception."""
        with speaking(self.language_for(message.from_user)):
            try:
                user = self.guard(message)
                if user is None:
                    return
                if user["awaiting"] and handler != self.msg_other:
                    set_awaiting(self.shop.db(), user["id"], None)  # any command ends a question
                handler(message)
            except ShopError as e:
                self.reply(message.chat.id, str(e))
            except NETWORK_ERRORS as e:
                log.warning(
                    "bot: could not answer user %s, Telegram unreachable: %s",
                    message.from_user.id,
                    type(e).__name__,
                )
                return
            except sqlite3.OperationalError as e:
                if not storage_problem(e):
                    log.exception(
                        "bot: handling %r from user %s failed",
                        (message.text or "")[:40],
                        message.from_user.id,
                    )
                self.tell_failure(message, tr(STORAGE_BUSY))
            except Exception:
                log.exception(
                    "bot: handling %r from user %s failed",
                    (message.text or "")[:40],
                    message.from_user.id,
                )
                self.tell_failure(message, tr(SOMETHING_WRONG))

    def tell_failure(self, message, text):
        try:
            self.reply(message.chat.id, text)
        except Exception:
            log.warning("bot: could not tell user %s about the failure", message.from_user.id)

    def parse_deposit(self, text):
        """Cents of a top-up amount the shopper typed, within the shop's limits (else
        InvalidInput saying why)."""
        return deposit_cents(
            text,
            minimum=self.shop.setting("min_deposit_cents"),
            maximum=self.shop.config.max_deposit_cents,
        )

    def msg_start(self, message):
        conn = self.shop.db()
        payload = (message.text or "").partition(" ")[2].strip()
        if payload.startswith("refill_"):
            return self.start_refill_link(conn, message, payload)
        referrer = re.fullmatch(r"ref_([1-9][0-9]{0,15})", payload)
        if referrer:  # refused or not, the newcomer just sees the welcome
            record_referral(conn, message.from_user.id, int(referrer.group(1)))
        welcome = (
            f"👋 <b>{esc(get_setting(conn, 'shop_name'))}</b>\n\n"
            f"{esc(shop_text(conn, 'welcome_text'))}"
        )
        if self.shop.test_mode:
            welcome += "\n\n" + (
                tr(TEST_MODE_OWNER)
                if self.shop.may_buy(message.from_user.id)
                else esc(tr(NotSellingYet.message))
            )
        self.reply(message.chat.id, welcome, parse_mode="HTML", reply_markup=main_menu())
        if self.shop.webapp_url:
            code = current_language().code
            markup = tg.InlineKeyboardMarkup()
            app = tg.WebAppInfo(f"{self.shop.webapp_url}?lang={code}")
            markup.row(tg.InlineKeyboardButton(tr("🛍 Open shop"), web_app=app))
            self.reply(message.chat.id, tr("Or shop in the app:"), reply_markup=markup)

    def start_refill_link(self, conn, message, payload):
        """/start refill_<telegram id>_<euros>[_<cents>]: straight to the coin menu for that
        amount."""
        parts = payload.split("_")
        topup = tr(MENU_TOPUP)
        if len(parts) not in (3, 4) or not all(re.fullmatch(r"[0-9]{1,20}", p) for p in parts[1:]):
            raise InvalidInput(
                tr("This top-up link is not valid. Use {topup} instead.", topup=topup)
            )
        if int(parts[1]) != message.from_user.id:
            raise InvalidInput(
                tr(
                    "This top-up link was made for another Telegram account. Use {topup} instead.",
                    topup=topup,
                )
            )
        try:
            cents = self.parse_deposit(".".join(parts[2:]))
        except InvalidInput as e:
            raise InvalidInput(tr("This top-up link cannot be used.") + f" {e}") from None
        self.send(message.chat.id, self.topup_coins(conn, message.from_user.id, cents))

    def msg_shop(self, message):
        self.send(message.chat.id, screen_cities(self.shop.db()))

    def msg_basket(self, message):
        self.send(message.chat.id, screen_basket(self.shop.db(), message.from_user.id))

    def msg_profile(self, message):
        conn = self.shop.db()
        user = get_user(conn, message.from_user.id)
        self.send(message.chat.id, screen_profile(conn, user, self.shop.bot_username))

    def msg_topup(self, message):
        conn, uid = self.shop.db(), message.from_user.id
        amount = (
            (message.text or "").partition(" ")[2].strip()
            if (message.text or "").startswith("/")
            else ""
        )
        if amount:  # /refill 30
            return self.send(
                message.chat.id, self.topup_coins(conn, uid, self.parse_deposit(amount))
            )
        self.send(message.chat.id, self.topup_prompt(conn, uid))

    def msg_orders(self, message):
        self.send(message.chat.id, screen_orders(self.shop.db(), message.from_user.id))

    def msg_language(self, message):
        user = get_user(self.shop.db(), message.from_user.id)
        self.send(message.chat.id, screen_language(user["language"]))

    def msg_help(self, message):
        self.send(message.chat.id, screen_help(self.shop.db()), reply_keyboard=main_menu())

    def msg_paysupport(self, message):
        self.send(message.chat.id, screen_paysupport(self.shop.db()), reply_keyboard=main_menu())

    def msg_terms(self, message):
        self.send(message.chat.id, screen_terms(self.shop.db()), reply_keyboard=main_menu())

    def on_pre_checkout(self, query):
        """Telegram asks, before charging, whether a Stars payment may go ahead: answered within
        its 10 seconds, yes only when the order is open, its price unchanged and its items held."""
        with speaking(self.language_for(query.from_user)):
            reason = self.shop.payments.stars_pre_checkout(
                query.from_user.id, query.invoice_payload, query.currency, query.total_amount
            )
        try:
            self.bot.answer_pre_checkout_query(
                query.id, ok=reason is None, error_message=reason and shorten(reason, 200)
            )
        except Exception as e:  # too late or refused: Telegram does not charge the shopper
            log.warning("stars: could not answer a pre-checkout query: %s", api_error(e))

    def msg_successful_payment(self, message):
        """Telegram took the Stars: deliver (once; a repeated update changes nothing)."""
        paid = message.successful_payment
        try:
            with speaking(self.language_for(message.from_user)):
                self.shop.payments.stars_paid(
                    message.from_user.id,
                    paid.invoice_payload,
                    paid.telegram_payment_charge_id,
                    paid.total_amount,
                    paid.currency,
                )
        except Exception:  # the sweep over getStarTransactions finds it again
            log.exception("stars: a successful payment could not be applied now")

    def msg_other(self, message):
        conn = self.shop.db()
        user = get_user(conn, message.from_user.id)
        if (user["awaiting"] or "").startswith("promo:") and message.text:
            return self.promo_typed(conn, user, message, user["awaiting"].split(":", 1)[1])
        if user["awaiting"] == "topup_amount" and message.text:
            try:
                cents = self.parse_deposit(message.text)
            except InvalidInput as e:
                again = tr(
                    "Send an amount in EUR like 20 or 20.50, or press {cancel}.",
                    cancel=tr("✖️ Cancel"),
                )
                return self.reply(message.chat.id, f"{e} {again}")
            set_awaiting(conn, user["id"], None)
            return self.send(message.chat.id, self.topup_coins(conn, user["id"], cents))
        self.reply(message.chat.id, tr("Please use the menu below."), reply_markup=main_menu())

    def msg_group(self, message):
        try:
            with speaking(self.language_for(message.from_user, shopper=False)):
                answer = tr("I work in private chats: open a chat with me to shop.")
            self.bot.reply_to(message, answer)
        except apihelper.ApiTelegramException as e:
            log.debug("could not answer in group %s: %s", message.chat.id, e.description)

    # Screens that need the payment service

    def coins(self):
        """[(coin, minimum cents)] the shop can take now, or None when the payment service is
        down."""
        try:
            return self.shop.payments.coins()
        except ProviderError as e:
            log.warning("payments: cannot list coins: %s", e.detail)
            return None

    def checkout(self, conn, user, lines, from_basket):
        nonce = checkout_order(conn, user["id"], lines, from_basket)
        return self.checkout_screen(conn, user, get_checkout(conn, user["id"], nonce))

    def checkout_screen(self, conn, user, checkout):
        if checkout["promo_id"] is not None and checkout_quote(conn, checkout).refused:
            # Its code stopped applying (used up, paused...): the same lines at today's price.
            lines, basket = checkout_lines(checkout), bool(checkout["from_basket"])
            checkout = get_checkout(
                conn, user["id"], checkout_order(conn, user["id"], lines, basket)
            )
        stars = self.shop.payments.stars is not None
        if not self.shop.may_buy(user["id"]):
            return screen_checkout(conn, user, checkout, None, selling=False, stars=stars)
        return screen_checkout(conn, user, checkout, self.coins(), stars=stars)

    def topup_prompt(self, conn, user_id):
        if not self.shop.may_buy(user_id):
            return screen_not_selling()
        set_awaiting(conn, user_id, "topup_amount")
        c = self.shop.config
        return screen_topup_prompt(
            get_user(conn, user_id), self.shop.setting("min_deposit_cents"), c.max_deposit_cents
        )

    def topup_coins(self, conn, user_id, cents):
        if not self.shop.may_buy(user_id):
            return screen_not_selling()
        nonce = create_checkout(conn, user_id, "topup", cents)
        return screen_topup_coins(get_checkout(conn, user_id, nonce), self.coins())

    def invoice_screen(self, payment, with_qr=True):
        return screen_invoice(
            payment,
            self.shop.config.sandbox,
            with_qr,
            simulate=self.shop.may_simulate(payment["user_id"]),
            discount=order_discount(self.shop.db(), payment["order_id"]),
        )

    # Buttons: callback data is `verb[:arg...]`, each argument [0-9a-z]{1,18}. CALLBACKS maps a
    # verb to (the arguments it takes, the method that runs it as method(conn, user, message,
    # *args)). The arguments: a pattern with one letter per argument (ARG_KINDS: "i" digits,
    # passed as an int; "s" any, "c" a coin, "m" a simulation, passed as text), a tuple of such
    # patterns, or ARGS_ANY (any arguments, which the method does not get).

    ARGS_ANY = None
    ARGS_PAGE = ("", "i")  # an optional page (or position) number
    ARG_KINDS = {
        "i": str.isdigit,
        "s": lambda arg: True,
        "c": lambda arg: arg in COIN_LABELS,
        "m": lambda arg: arg in SIMULATIONS,
    }
    CALLBACKS = {
        "cities": (ARGS_PAGE, "on_cities"),
        "city": (("i", "ii"), "on_city"),
        "dist": (("i", "ii"), "on_district"),
        "prod": ("ii", "on_product"),
        "add": ("ii", "on_add"),
        "buy": ("ii", "on_buy"),
        "watch": ("ii", "on_watch"),
        "unwatch": ("ii", "on_unwatch"),
        "basket": (ARGS_ANY, "on_basket"),
        "inc": ("i", "on_inc"),
        "dec": ("i", "on_dec"),
        "del": ("i", "on_del"),
        "clear": (ARGS_ANY, "on_clear"),
        "checkout": (ARGS_ANY, "on_checkout"),
        "pay": ("s", "on_pay"),
        "coin": ("sc", "on_coin"),
        "stars": ("s", "on_stars"),
        "part": ("s", "on_part"),
        "promo": ("s", "on_promo"),
        "unpromo": ("s", "on_unpromo"),
        "tcoin": ("sc", "on_tcoin"),
        "nocoin": ("ci", "on_nocoin"),
        "topup": (ARGS_ANY, "on_topup"),
        "tamt": ("i", "on_tamt"),
        "chk": ("i", "on_check"),
        "cxl": ("i", "on_cancel"),
        "sim": ("im", "on_simulate"),
        "orders": (ARGS_PAGE, "on_orders"),
        "order": ("i", "on_order"),
        "resend": ("i", "on_resend"),
        "profile": (ARGS_ANY, "on_profile"),
        "lang": (("", "s"), "on_language"),
    }

    def on_callback(self, call):
        with speaking(self.language_for(call.from_user)):
            alert = self.run_button(call)
        if alert is False:  # Telegram unreachable: no answer can get through
            return
        if alert:
            # Telegram refuses longer notices, leaving the button spinning
            alert = shorten(alert, 200)
        try:
            self.bot.answer_callback_query(
                call.id, text=alert, show_alert=bool(alert and len(alert) > 60)
            )
        except (apihelper.ApiTelegramException, *NETWORK_ERRORS) as e:
            log.debug("could not answer callback: %s", e)

    def run_button(self, call):
        """Run a button press for a shopper who is not banned: the notice to answer it with (None:
        none; False: none can be sent), failures included."""
        try:
            conn = self.shop.db()
            user = self.user_of(conn, call.from_user)
            if user["is_banned"]:
                return tr(Banned.message) if should_tell_banned(conn, user["id"]) else None
            if call.message is None or not getattr(call.message, "chat", None):
                return tr("This menu is too old. Send /shop to start again.")
            return self.dispatch(conn, user, call)
        except ProviderError as e:
            log.warning("payments: %s", e.detail)
            return str(e)
        except ShopError as e:
            return str(e)
        except NETWORK_ERRORS as e:
            log.warning(
                "bot: could not answer a button of user %s, Telegram unreachable: %s",
                call.from_user.id,
                type(e).__name__,
            )
            return False
        except Exception as e:
            if storage_problem(e):
                return tr(STORAGE_BUSY)
            log.exception("bot: button %r from user %s failed", call.data, call.from_user.id)
            return tr(SOMETHING_WRONG)

    @classmethod
    def button_args(cls, spec, args):
        """The values of a button's arguments when they fit its spec (see CALLBACKS), else None."""
        if spec is cls.ARGS_ANY:
            return []
        for pattern in (spec,) if isinstance(spec, str) else spec:
            if len(pattern) == len(args) and all(
                cls.ARG_KINDS[kind](arg) for kind, arg in zip(pattern, args, strict=True)
            ):
                return [
                    int(arg) if kind == "i" else arg
                    for kind, arg in zip(pattern, args, strict=True)
                ]
        return None

    def dispatch(self, conn, user, call):
        """Run one button press; returns a short notice for the shopper, or None."""
        verb, _, rest = (call.data or "").partition(":")
        args = rest.split(":") if rest else []
        if not all(re.fullmatch(r"[0-9a-z]{1,18}", a) for a in args):
            return tr(STALE_BUTTON)
        spec, method = self.CALLBACKS.get(verb, ((), None))
        values = self.button_args(spec, args)
        if method is None or values is None:
            return tr(STALE_BUTTON)
        try:
            return getattr(self, method)(conn, user, call.message, *values)
        except NotFound as e:
            return str(e)

    # Buttons: the shop

    def on_cities(self, conn, user, message, page=0):
        self.show(message, screen_cities(conn, page))

    def on_city(self, conn, user, message, city_id, page=0):
        self.show(message, screen_districts(conn, city_id, page))

    def on_district(self, conn, user, message, district_id, page=0):
        self.show(message, screen_products(conn, district_id, page))

    def on_product(self, conn, user, message, product_id, district_id):
        self.show(message, screen_product(conn, user["id"], product_id, district_id))

    def on_add(self, conn, user, message, product_id, district_id):
        quantity = add_to_basket(conn, user["id"], product_id, district_id)
        self.show(message, screen_product(conn, user["id"], product_id, district_id))
        return ntr(
            "Added to your basket ({n} there now).",
            "Added to your basket ({n} there now).",
            quantity,
        )

    def on_buy(self, conn, user, message, product_id, district_id):
        lines = [(product_id, district_id, 1)]
        self.show(message, self.checkout(conn, user, lines, from_basket=False))

    def on_watch(self, conn, user, message, product_id, district_id):
        """🔔 Notify me; the card again either way (it may be back in stock meanwhile)."""
        try:
            watch_offer(conn, user["id"], product_id, district_id)
        finally:
            self.show(message, screen_product(conn, user["id"], product_id, district_id))
        return tr("🔔 We will message you when it is back here.")

    def on_unwatch(self, conn, user, message, product_id, district_id):
        unwatch_offer(conn, user["id"], product_id, district_id)
        self.show(message, screen_product(conn, user["id"], product_id, district_id))
        return tr("🔕 You will not be told when it is back.")

    # Buttons: the basket

    def on_basket(self, conn, user, message):
        self.show(message, screen_basket(conn, user["id"]))

    def on_inc(self, conn, user, message, item_id):
        self.change_basket(conn, user, message, change_basket_quantity, item_id, 1)

    def on_dec(self, conn, user, message, item_id):
        self.change_basket(conn, user, message, change_basket_quantity, item_id, -1)

    def on_del(self, conn, user, message, item_id):
        self.change_basket(conn, user, message, set_basket_quantity, item_id, 0)

    def change_basket(self, conn, user, message, change, item_id, number):
        """change(conn, user id, item_id, number), then the basket, whether the change worked or
        not."""
        try:
            change(conn, user["id"], item_id, number)
        finally:
            self.show(message, screen_basket(conn, user["id"]))

    def on_clear(self, conn, user, message):
        clear_basket(conn, user["id"])
        self.show(message, screen_basket(conn, user["id"]))

    def on_checkout(self, conn, user, message):
        lines = list_basket_lines(conn, user["id"])
        if not lines:
            self.show(message, screen_basket(conn, user["id"]))
            return tr("Your basket is empty.")
        self.show(message, self.checkout(conn, user, lines, from_basket=True))

    # Buttons: paying

    def on_pay(self, conn, user, message, nonce):
        """Pay a checkout from the balance; its nonce makes a double tap or a replayed update buy
        once."""
        uid = user["id"]
        self.shop.check_may_buy(uid)
        checkout = get_checkout(conn, uid, nonce)
        if checkout["kind"] != "order":
            return tr(STALE_BUTTON)
        lines = checkout_lines(checkout)
        back = (
            [[(tr(MENU_BASKET), "basket")]]
            if checkout["from_basket"]
            else [[back_button(f"prod:{lines[0][0]}:{lines[0][1]}")]]
        )
        try:
            order_id = buy_with_balance(
                conn,
                uid,
                lines,
                expected_total_cents=checkout["amount_cents"],
                checkout_key=nonce,
                owners=self.shop.config.admin_ids,
                promo_id=checkout["promo_id"],
            )
        except (SoldOut, PriceChanged, InsufficientBalance, PromoRefused) as e:
            self.show(message, Screen(f"⚠️ {esc(e)}", back))
            return str(e)
        order = get_order(conn, uid, order_id)
        thanks = tr(
            "✅ Thank you! {amount} paid from your balance.\n"
            "Your items for order #{order} are on their way.",
            amount=fmt_eur(order["total_cents"]),
            order=order_id,
        )
        buttons = [[(tr(MENU_ORDERS), "orders"), (tr(MENU_SHOP), "cities")]]
        self.show(message, Screen(thanks, buttons))
        return tr("Order #{order} paid.", order=order_id)

    def on_coin(self, conn, user, message, nonce, coin):
        payment = self.shop.payments.open_order_invoice(user["id"], nonce, coin)
        self.show_invoice(conn, message, payment)

    def on_stars(self, conn, user, message, nonce):
        """⭐ Pay N Stars: the order's items are reserved and Telegram's invoice (with its Pay
        button) is sent below this message, which then shows the invoice's state."""
        payment = self.shop.payments.open_stars_invoice(
            user["id"], nonce, chat_id=None if self.shop.config.sandbox else message.chat.id
        )
        sent = self.show(message, self.invoice_screen(payment))
        set_invoice_message(conn, payment["id"], (sent or message).message_id)

    def on_part(self, conn, user, message, nonce):
        """One part of a basket whose products are paid in different ways (and a checkout shown
        again, after ✖️ Cancel on the promo code question, which it ends)."""
        checkout = get_checkout(conn, user["id"], nonce)
        if checkout["kind"] != "order":
            return tr(STALE_BUTTON)
        if (user["awaiting"] or "").startswith("promo:"):
            set_awaiting(conn, user["id"], None)
        self.show(message, self.checkout_screen(conn, user, checkout))

    def on_promo(self, conn, user, message, nonce):
        """🏷 Promo code: the next message the shopper sends is the code for this checkout."""
        if get_checkout(conn, user["id"], nonce)["kind"] != "order":
            return tr(STALE_BUTTON)
        set_awaiting(conn, user["id"], f"promo:{nonce}")
        ask = tr("🏷 Send your promo code as a message.")
        self.show(message, Screen(ask, [[(tr("✖️ Cancel"), f"part:{nonce}")]]))

    def on_unpromo(self, conn, user, message, nonce):
        """✖️ Remove code: the checkout again at list price."""
        checkout = get_checkout(conn, user["id"], nonce)
        if checkout["kind"] != "order":
            return tr(STALE_BUTTON)
        remove_promo_code(conn, user["id"])
        lines = checkout_lines(checkout)
        self.show(message, self.checkout(conn, user, lines, bool(checkout["from_basket"])))
        return tr("The code was removed.")

    def promo_typed(self, conn, user, message, nonce):
        """The code the shopper sent after 🏷 Promo code: the checkout again with it, or why not
        (and they may send another)."""
        try:
            checkout = get_checkout(conn, user["id"], nonce)
            lines = checkout_lines(checkout)
            promo = apply_promo_code(conn, user["id"], message.text, lines)
        except (PromoRefused, NotFound, InvalidInput, SoldOut) as e:
            again = tr("Send another code, or press {cancel}.", cancel=tr("✖️ Cancel"))
            rows = [[(tr("✖️ Cancel"), f"part:{nonce}")]]
            return self.send(message.chat.id, Screen(f"⚠️ {esc(e)} {esc(again)}", rows))
        set_awaiting(conn, user["id"], None)
        screen = self.checkout(conn, user, lines, bool(checkout["from_basket"]))
        done = tr("🏷 Code {code} applied.", code=f"<code>{esc(promo['code'])}</code>")
        return self.send(message.chat.id, Screen(f"{done}\n\n{screen.text}", screen.buttons))

    def on_tcoin(self, conn, user, message, nonce, coin):
        payment = self.shop.payments.open_topup_invoice(user["id"], nonce, coin)
        self.show_invoice(conn, message, payment)

    def show_invoice(self, conn, message, payment):
        """Show a new invoice in place of the coin menu, and note its message to update later."""
        sent = self.show(message, self.invoice_screen(payment))
        if sent is not None:
            set_invoice_message(conn, payment["id"], sent.message_id)

    def on_nocoin(self, conn, user, message, coin, minimum):
        return tr(
            "{coin} takes payments from {minimum}. Please choose another coin.",
            coin=COIN_LABELS[coin],
            minimum=fmt_eur(minimum),
        )

    def on_topup(self, conn, user, message):
        self.show(message, self.topup_prompt(conn, user["id"]))

    def on_tamt(self, conn, user, message, cents):
        c = self.shop.config
        if not self.shop.setting("min_deposit_cents") <= cents <= c.max_deposit_cents:
            return tr("That amount is not possible any more.")
        set_awaiting(conn, user["id"], None)
        self.show(message, self.topup_coins(conn, user["id"], cents))

    def on_check(self, conn, user, message, payment_id):
        """🔄 Check status: ask the provider now (at most every few seconds), then show the
        invoice's state."""
        try:
            payment = self.shop.payments.check(user["id"], payment_id)
        except ProviderError as e:
            log.warning("payments: status check failed: %s", e.detail)
            return tr(
                "The payment service is not answering right now; the shop keeps checking by itself."
            )
        self.recaption(message, self.invoice_screen(payment, with_qr=False))
        return tr(payment_status_text(payment))

    def on_cancel(self, conn, user, message, payment_id):
        try:  # the provider may know of money our records have not seen yet
            payment, cancelled = self.shop.payments.cancel(user["id"], payment_id)
        except ProviderError as e:
            log.warning("payments: status check before cancelling failed: %s", e.detail)
            return tr(
                "The payment service is not answering, so the invoice cannot be cancelled now."
            )
        self.recaption(message, self.invoice_screen(payment, with_qr=False))
        if cancelled:
            return tr("Invoice cancelled.")
        return (
            tr("This invoice is closed already.")
            if payment["status"] == "waiting"
            else tr(payment_status_text(payment))
        )

    def on_simulate(self, conn, user, message, payment_id, how):
        if not self.shop.config.sandbox:
            return tr("Simulated payments exist only in sandbox mode.")
        outcome = self.shop.payments.simulate(user["id"], payment_id, how)
        if outcome is not None:  # Stars: paid at once, through the same path as Telegram's
            self.recaption(message, self.invoice_screen(get_payment(conn, user["id"], payment_id)))
            return tr("🧪 Paid with Stars (simulated).")
        return tr(SIMULATING[how])

    # Buttons: orders and profile

    def on_orders(self, conn, user, message, before_id=None):
        self.show(message, screen_orders(conn, user["id"], before_id))

    def on_order(self, conn, user, message, order_id):
        self.show(message, screen_order(conn, user["id"], order_id))

    def on_resend(self, conn, user, message, order_id):
        queued = resend_delivery(conn, user["id"], order_id)
        if queued:
            return tr("Your items are on their way.")
        return tr("Your items are already on their way.")

    def on_profile(self, conn, user, message):
        set_awaiting(conn, user["id"], None)
        self.show(message, screen_profile(conn, get_user(conn, user["id"]), self.shop.bot_username))

    def on_language(self, conn, user, message, key=None):
        """🌐 Language: the languages (lang); one chosen (lang:<language_key>, or lang:auto to
        follow Telegram's again), then everything in it, the reply keyboard too."""
        if key is None:
            self.show(message, screen_language(user["language"]))
            return None
        code = language_by_key(key)
        set_user_language(conn, user["id"], code)
        with speaking(shopper_language(conn, get_user(conn, user["id"]))):
            name = current_language().name()
            self.show(message, screen_language(code))
            said = tr("🌐 Language: {language}", language=esc(name))
            self.reply(message.chat.id, said, parse_mode="HTML", reply_markup=main_menu())
        return f"✓ {name}"


# Outbox sender #################################################################


class RateLimiter:
    """Token buckets for Telegram's flood limits: one for the whole bot, one per chat.

    The outbox sender asks before each message; the bot's direct replies are
    noted too, so a delivery right after a reply does not overrun the chat.
    The rates sit a little under Telegram's so that network jitter does not trip them.
    """

    def __init__(self, per_second=29.0, chat_per_second=0.95, chat_burst=3, burst=2.0):
        # burst: a sender woken a little late may catch up by one message instead of losing the slot
        self.rate, self.chat_rate, self.chat_burst, self.burst = (
            per_second,
            chat_per_second,
            chat_burst,
            burst,
        )
        self.tokens, self.stamp = 1.0, float("-inf")
        self.chats = {}  # chat_id -> (tokens, stamp, blocked_until)
        self.lock = threading.Lock()

    def _chat(self, chat_id, now):
        tokens, stamp, blocked = self.chats.get(chat_id, (self.chat_burst, now, 0.0))
        return min(self.chat_burst, tokens + (now - stamp) * self.chat_rate), blocked

    def acquire(self, chat_id, now=None):
        """Take a slot for a message to chat_id and return 0, or return the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, blocked = self._chat(chat_id, now)
            global_tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            wait = max(
                blocked - now, (1 - tokens) / self.chat_rate, (1 - global_tokens) / self.rate, 0.0
            )
            if wait > 1e-6:  # (float dust from the refill arithmetic is not a wait)
                return wait
            self._take(chat_id, now, tokens, blocked, global_tokens)
            return 0.0

    def note(self, chat_id, now=None):
        """Count a message that went out without asking (a direct reply to the shopper).

        It uses up the chat's burst but never puts the chat in debt: however
        fast someone taps, their delivery waits at most one interval.
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, blocked = self._chat(chat_id, now)
            global_tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self._take(chat_id, now, max(tokens, 1.0), blocked, max(global_tokens, 1.0))

    def _take(self, chat_id, now, tokens, blocked, global_tokens):
        self.chats[chat_id] = (tokens - 1, now, blocked)
        self.tokens, self.stamp = global_tokens - 1, now
        if len(self.chats) > 10000:
            self.chats = {
                c: v
                for c, v in self.chats.items()
                if v[0] + (now - v[1]) * self.chat_rate < self.chat_burst or v[2] > now
            }

    def block(self, chat_id, seconds, now=None):
        """Telegram said 429 retry_after: nothing to this chat for `seconds`, then one message."""
        until = (time.monotonic() if now is None else now) + seconds
        with self.lock:
            self.chats[chat_id] = (1.0, until, until)


OUTBOX_GIVE_UP_SECONDS = 24 * 3600


class OutboxSender:
    """Sends pending outbox rows in order per chat within Telegram's limits; survives restarts.

    The rule: a row is `sent` only after Telegram answered ok for that row (mark_sent is reached
    only from a successful answer, with that answer's message id; an edit Telegram answers 'not
    modified' or 'not found' counts as done). Anything else leaves it pending or, for a refusal,
    failed: a message is never recorded as delivered on a guess. The price is that a crash between
    Telegram's ok and the commit sends it again.

    429: wait retry_after. 5xx and network errors: retry with backoff for a day.
    401/404 (the token or the API address is wrong): wait for the owner, lose nothing.
    403 (blocked by the user) and other 4xx: failed, with the reason kept and the owners told.
    """

    def __init__(self, shop, limiter, *, workers=4):
        self.shop = shop
        self.limiter = limiter
        self.workers = workers
        self.stopping = threading.Event()
        self.in_flight = set()
        self.lock = threading.Lock()
        self.queue = queue.Queue()
        self.thread = None
        self.outage_log = Throttle(60)
        # outbox id -> (message id, note): Telegram has it, the database not yet
        self.unrecorded = {}

    def start(self):
        # Daemon threads: a send stuck on a slow network must not hold up shutdown; its row
        # stays pending and goes out after the restart.
        for i in range(self.workers):
            threading.Thread(target=self.work, name=f"outbox-{i}", daemon=True).start()
        self.thread = threading.Thread(target=self.run, name="outbox-sender", daemon=True)
        self.thread.start()

    def stop(self, timeout=2.0):
        self.stopping.set()
        outbox_ready.set()
        for _ in range(self.workers):
            self.queue.put(None)
        if self.thread:
            self.thread.join(timeout)

    def alive(self):
        return bool(self.thread and self.thread.is_alive())

    def run(self):
        conn = connect(self.shop.config.shop_db, autocheckpoint=False)
        try:
            while not self.stopping.is_set():
                outbox_ready.clear()
                try:
                    wait = self.dispatch(conn)
                except sqlite3.Error as e:
                    log.error("outbox: database error, retrying in 5 s: %s", e)
                    wait = 5.0
                outbox_ready.wait(wait)
        finally:
            conn.close()

    def dispatch(self, conn):
        """Hand every sendable head-of-chat row to a worker; return seconds until worth looking
        again."""
        rows = outbox_heads(conn)
        wait = 1.0
        for row in rows:
            with self.lock:
                if row["chat_id"] in self.in_flight:
                    continue
                if len(self.in_flight) >= self.workers * 2:
                    return min(wait, 0.05)
                delay = self.limiter.acquire(row["chat_id"])
                if delay > 0:
                    wait = min(wait, delay)
                    continue
                self.in_flight.add(row["chat_id"])
            self.queue.put(row)
        return wait

    def work(self):
        while (job := self.queue.get()) is not None:
            self.deliver(job["id"], job["chat_id"])

    def deliver(self, row_id, chat_id):
        conn, row = self.shop.db(), None
        try:
            # Read again: the list dispatch() worked from may be older than a send that just
            # finished.
            row = outbox_row_due(conn, row_id)
            if (
                row is not None and row["id"] in self.unrecorded
            ):  # sent; only our record of it is missing
                self.mark_sent(conn, row["id"], *self.unrecorded[row["id"]])
            elif row is not None:
                self.send(conn, row)
        except Exception as e:
            if storage_problem(e):
                # It stays pending and is recorded (never sent again) once the database can be
                # written; until then the chat is left alone for a few seconds rather than retried
                # at once.
                self.limiter.block(chat_id, 5)
                return
            log.exception("outbox: message #%d to chat %d failed unexpectedly", row_id, chat_id)
            if row is not None:
                self.retry(conn, row, "unexpected error")
        finally:
            with self.lock:
                self.in_flight.discard(chat_id)
            outbox_ready.set()

    def send(self, conn, row):
        api = self.shop.telegram
        markup = (
            tg.InlineKeyboardMarkup.de_json(row["reply_markup"]) if row["reply_markup"] else None
        )
        try:
            if row["edit_message_id"]:
                return self.refresh_invoice(conn, row)
            if row["photo"]:
                message = send_photo_cached(
                    self.shop, conn, row["chat_id"], row["photo"], row["text"] or None, markup
                )
            else:
                message = api.send_message(
                    row["chat_id"],
                    row["text"],
                    parse_mode="HTML",
                    reply_markup=markup,
                    link_preview_options=NO_PREVIEW,
                )
        except apihelper.ApiTelegramException as e:
            code, description = api_error(e)
            if code == 429:
                retry_after = int(
                    ((e.result_json or {}).get("parameters") or {}).get("retry_after") or 5
                )
                self.limiter.block(row["chat_id"], retry_after)
                self.reschedule(conn, row, retry_after, f"429: {description}", count=False)
            elif code in (401, 404):
                if self.outage_log():
                    log.error(
                        "outbox: Telegram answers %s %s to every message: check BOT_TOKEN and "
                        "TELEGRAM_API_URL; messages wait until then",
                        code,
                        description,
                    )
                self.reschedule(conn, row, 60, f"{code}: {description}", count=False)
            elif code is not None and code >= 500:
                self.retry(conn, row, f"{code}: {description}")
            else:
                self.fail(conn, row, f"{code}: {description}")
            return
        except NETWORK_ERRORS as e:
            self.retry(conn, row, network_reason(e))
            return
        except (OSError, ValueError) as e:
            self.fail(conn, row, f"photo {row['photo']} cannot be read: {type(e).__name__}")
            return
        self.unrecorded[row["id"]] = (message.message_id, None)
        self.mark_sent(conn, row["id"], message.message_id, None)

    def mark_sent(self, conn, row_id, message_id, note):
        """Record a message Telegram answered ok for (and only such a one). Until that commits the
        row is remembered in memory, so a database that cannot be written (a full disk) never makes
        a shopper get it again and again."""
        mark_outbox_sent(conn, row_id, message_id, note)
        self.unrecorded.pop(row_id, None)

    def refresh_invoice(self, conn, row):
        """Show an invoice as it is now, under its own message (the QR photo stays)."""
        payment = find_payment(conn, row["payment_id"])
        with speaking(language_of(conn, payment["user_id"])):
            screen = screen_invoice(
                payment,
                self.shop.config.sandbox,
                with_qr=False,
                simulate=self.shop.may_simulate(payment["user_id"]),
                discount=order_discount(conn, payment["order_id"]),
            )
        note = None
        edit = (
            self.shop.telegram.edit_message_text
            if payment["pay_currency"] == "xtr"  # a Stars invoice's state is a text message
            else self.shop.telegram.edit_message_caption
        )
        try:
            edit(
                screen.text,
                row["chat_id"],
                row["edit_message_id"],
                parse_mode="HTML",
                reply_markup=inline_markup(screen.buttons),
            )
        except apihelper.ApiTelegramException as e:
            description = e.description or ""
            if e.error_code != 400 or not any(
                s in description for s in ("not modified", "not found", "can't be edited")
            ):
                raise
            note = description  # nothing to change, or the shopper deleted it: fine either way
        self.unrecorded[row["id"]] = (None, note)
        self.mark_sent(conn, row["id"], None, note)

    def reschedule(self, conn, row, delay, error, count=True):
        reschedule_outbox(conn, row["id"], delay, error, count)

    def retry(self, conn, row, error):
        if parse_iso(row["created_at"]) < datetime.now(timezone.utc) - timedelta(
            seconds=OUTBOX_GIVE_UP_SECONDS
        ):
            return self.fail(conn, row, f"gave up after {row['attempts'] + 1} attempts: {error}")
        delay = min(600.0, 2.0 ** min(row["attempts"], 10)) * random.uniform(0.5, 1.0)
        if self.outage_log():
            log.warning("outbox: cannot reach Telegram (%s); retrying, nothing is lost", error)
        self.reschedule(conn, row, delay, error)
        owners = self.shop.config.admin_ids
        if row["attempts"] + 1 == 5 and row["order_id"] and row["chat_id"] not in owners:
            # once per message, on its fifth failed try
            tell_owners(
                conn,
                owners,
                f"⚠️ Order #{row['order_id']}: a delivery message to user "
                f"<code>{row['chat_id']}</code> keeps failing ({esc(error)}); "
                "the shop keeps trying for a day.",
            )

    def fail(self, conn, row, error):
        fail_outbox_row(conn, row, error, self.shop.config.admin_ids)
        level = logging.WARNING if error.startswith("403") else logging.ERROR
        log.log(
            level,
            "outbox: message #%d to chat %d failed for good: %s%s",
            row["id"],
            row["chat_id"],
            error,
            f" (order #{row['order_id']})" if row["order_id"] else "",
        )


# Scheduler #####################################################################

# The background jobs, each a function of the running shop. run_job runs them: a failure is logged
# and the job runs again on schedule.


def job_reservations(shop):
    release_expired_reservations(shop.db())


def job_reconcile_payments(shop):
    shop.payments.reconcile()


def job_stars(shop):
    """Telegram Stars: refunds due, payments whose update was lost, lapsed invoices."""
    try:
        shop.payments.sweep_stars()
    except ProviderError as e:
        if not shop.stopping.is_set():
            log.warning("stars: cannot read the Star transactions now: %s", e.detail)
            shop.payments.make_refunds()


def job_refresh_coins(shop):
    shop.payments.refresh_coins()


def job_verify_ledger(shop):
    log_ledger_differences(check_ledger(shop.db()))


def log_ledger_differences(differences):
    """An ERROR line for each balance its ledger rows disagree with (check_ledger's list)."""
    for user_id, cached, total in differences:
        log.error(
            "ledger: user %d has a cached balance of %s but ledger rows summing to %s; "
            "the database was changed outside the shop",
            user_id,
            cents_to_str(cached),
            cents_to_str(total),
        )


def job_prune_outbox(shop):
    n = prune_sent_outbox(shop.db(), days=90)
    if n:
        log.info("pruned %d sent outbox message(s) older than 90 days", n)


def job_replication(shop):
    """Under Litestream: the owners are told when replication stops or falls behind."""
    if shop.config.litestream_socket:
        shop.watch_replication()


def job_backup(shop):
    try:
        shop.backup()
    except Exception:
        log.exception("the nightly backup failed; it runs again tomorrow")


# (id, job, trigger, the trigger's arguments). An argument given as a string is the Config field
# holding its value; "first_run": seconds from the start to the first run (else one interval).
JOBS = [
    ("reservations", job_reservations, "interval", {"seconds": 30}),
    ("reconcile_payments", job_reconcile_payments, "interval", {"seconds": "payment_poll_seconds"}),
    ("stars", job_stars, "interval", {"seconds": "payment_poll_seconds", "first_run": 5}),
    ("refresh_coins", job_refresh_coins, "interval", {"minutes": 10, "first_run": 0}),
    ("verify_ledger", job_verify_ledger, "interval", {"hours": 1, "first_run": 60}),
    ("prune_outbox", job_prune_outbox, "interval", {"hours": 24}),
    ("backup", job_backup, "cron", {"hour": 3, "minute": 17}),
    ("replication", job_replication, "interval", {"seconds": 15}),
]


JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}


def schedule_arguments(config, arguments):
    """A JOBS entry's trigger arguments for BackgroundScheduler.add_job, read from `config`."""
    kwargs = {k: getattr(config, v) if isinstance(v, str) else v for k, v in arguments.items()}
    first = kwargs.pop("first_run", None)
    if first is not None:
        kwargs["next_run_time"] = datetime.now(timezone.utc) + timedelta(seconds=first)
    return kwargs


def run_job(shop, name, job):
    """Run one of JOBS; a failure is logged (a full disk and the like by storage_problem)."""
    try:
        job(shop)
    except Exception as e:
        if not storage_problem(e):
            log.exception("job %s failed; it runs again on schedule", name)


# Runtime #######################################################################


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (Litestream's control socket)."""

    def __init__(self, path, timeout):
        super().__init__("litestream", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def litestream_status(socket_path, db_path, timeout=2.0):
    """Litestream's word on the shop's database, from its control socket (GET /list):
    {"state": "replicating" (or Litestream's other word), "last_sync_at", "behind_seconds"}, or
    {"state": "unreachable" | "not replicated", "error"} when it cannot say."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/list")
        answer = conn.getresponse()
        databases = json.loads(answer.read(1 << 20)).get("databases") or []
    except (OSError, ValueError, AttributeError, http.client.HTTPException) as e:
        return {"state": "unreachable", "error": f"{socket_path}: {e}"}
    finally:
        conn.close()
    wanted = os.path.realpath(db_path)
    found = next(
        (
            d
            for d in databases
            if isinstance(d, dict) and os.path.realpath(str(d.get("path"))) == wanted
        ),
        None,
    )
    if found is None:
        return {"state": "not replicated", "error": f"Litestream does not list {wanted}"}
    synced = re.sub(r"(\.\d{6})\d*", r"\1", str(found.get("last_sync_at") or ""))
    try:
        behind = time.time() - datetime.fromisoformat(synced.replace("Z", "+00:00")).timestamp()
    except ValueError:  # just started: its first sync follows within a second
        return {"state": str(found.get("status")), "last_sync_at": None, "behind_seconds": None}
    moment = datetime.fromisoformat(synced.replace("Z", "+00:00")).astimezone(timezone.utc)
    return {  # (Litestream writes its local time; the shop says UTC)
        "state": str(found.get("status")),
        "last_sync_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "behind_seconds": max(0, int(behind)),
    }


def make_app(shop):
    """The Bottle app: health check, public pages, static files, product photos, the IPN webhook,
    the sandbox's NOWPayments emulator, the Mini App and the admin."""
    app = bottle.Bottle()
    app.config["catchall"] = True
    app.router.add_filter("id", web_id_filter)
    app.add_hook("before_request", web_undecodable_input)
    app.add_hook("after_request", web_security_headers)
    add_routes(app, shop, WEB_ROUTES)
    if shop.config.sandbox:
        app.mount("/sandbox/v1/", shop.sandbox_app)
    make_webapp(shop, app)
    make_admin(shop, app)
    for code in WEB_ERROR_CODES:
        app.error(code)(web_error_page)
    return app


def make_webapp(shop, app):
    """The Mini App: its page at /app and its JSON API under /api, each call signed by Telegram
    initData."""
    shop.miniapp = MiniAppCaches()
    shop.static_gzip = StaticGzip()
    for method, path, handler in API_ROUTES:
        app.route(path, method, functools.partial(api_call, shop, method, handler))
    add_routes(app, shop, MINIAPP_ROUTES)


def make_admin(shop, app):
    """The owner's admin: server-rendered pages with htmx; a session cookie and a CSRF token for
    every change. Its pages are ADMIN_ROUTES; what it keeps between requests, shop.admin_state."""
    shop.admin_state = AdminState()
    add_routes(app, shop, ADMIN_ROUTES)


def make_sandbox(shop):
    """The NOWPayments emulator as a Bottle app (mounted at /sandbox/v1)."""
    api = bottle.Bottle()
    add_routes(api, shop, SANDBOX_ROUTES)
    return api


class StartupError(Exception):
    """The shop cannot start."""


class RecentProblems(logging.Handler):
    """The last warnings and errors, for the admin dashboard (secrets redacted like the log's)."""

    def __init__(self, secrets_, size=50):
        super().__init__(logging.WARNING)
        self.records = collections.deque(maxlen=size)
        self.addFilter(RedactSecrets(secrets_))

    def emit(self, record):
        self.records.append(
            (
                datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                record.levelname,
                record.name,
                record.getMessage(),
            )
        )


def hold_instance_lock(db_path, holder):
    """One running shop per database. An exclusive lock on `<database>.lock`, held for as long as
    this process lives: the operating system drops it when the process ends, however it ends (kill
    -9 included), so a crash never blocks the next start. The file names the holder for the
    refusal. Returns the open file (close it to let go), or None where the system has no flock()."""
    try:
        import fcntl
    except ImportError:
        log.warning("this system cannot lock %s; make sure only one shop runs on it", db_path)
        return None
    path = f"{db_path}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartupError(
            f"{db_path} cannot be opened for writing: its lock file {path} cannot be made "
            f"({e.strerror}); check the owner and permissions of its folder"
        ) from None
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        running = handle.read().strip() or "a process that has not said which"
        handle.close()
        raise StartupError(
            f"another shop is already running on {db_path} ({running}); stop it first, "
            "or give this one its own database with SHOP_DB"
        ) from None
    handle.truncate(0)
    handle.write(holder + "\n")
    handle.flush()
    return handle


def make_files_private(config):
    """Everything the shop keeps (the database and its companions, copies, backups, media with the
    goods, uploads) readable by the shop's user only. New files are, by the umask main() sets; this
    tightens what an older version or another tool left open. Returns (tightened, not ours)
    paths."""
    db = Path(config.shop_db)
    folder = db.resolve().parent
    paths = [db.with_name(db.name + suffix) for suffix in ("", "-wal", "-shm", ".lock")]
    paths += sorted(folder.glob(glob.escape(db.name) + ".v*.bak"))
    for tree in (config.media_dir, folder / "backups", folder / "imports"):
        if tree.is_dir() and not tree.is_symlink():
            paths.append(tree)
            paths += [p for p in sorted(tree.rglob("*")) if not p.is_symlink()]
    tightened, stuck = [], []
    for path in paths:
        try:
            mode = path.lstat().st_mode
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
                tightened.append(os.path.relpath(path))
        except FileNotFoundError:
            continue
        except PermissionError:
            stuck.append(os.path.relpath(path))
    return tightened, stuck


class Shop:
    """The running shop: configuration, the web server, the bot, the sender and the jobs."""

    def __init__(self, config, *, demo=True):
        self.config = config
        self.demo = demo
        self._local = threading.local()
        self.telegram = None
        self.server = None
        self.threads = {}
        self.sender = None
        self.scheduler = None
        self.bot_state = "off"
        self.bot_username = None
        self.stopping = threading.Event()
        self.limiter = RateLimiter()
        self.payments = None
        self.problems = RecentProblems(config.secrets())
        self.ipn_secret = ""
        self.sandbox_api_key = ""
        self.sandbox_app = None  # the sandbox's NOWPayments emulator (a WSGI app), in sandbox mode
        self.webapp_token = ""
        self.replication_alerted = False  # the owners were told replication stopped
        self.replication_good = 0  # checks in a row that found it running
        self._replication, self._replication_lock = (0.0, None), threading.Lock()
        self._unsynced_since = None
        self.instance_lock = None
        self.new_admin_password = (
            None  # generated on the first start without ADMIN_PASSWORD, shown once
        )

    def db(self):
        """This thread's connection to the shop database."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # The checkpoint thread does them, off the request path.
            conn = self._local.conn = connect(self.config.shop_db, autocheckpoint=False)
        return conn

    def replication(self):
        """Litestream's word on the database (litestream_status), asked at most every 5 s: a
        request that finds another one asking (Litestream may take its 2 s to answer while its
        store does not) gets the last answer. "waiting_seconds": how long it has listed the
        database without a first copy."""
        now = time.monotonic()
        asked_at, status = self._replication
        if status is not None and now - asked_at < 5:
            return status
        # With nothing to answer yet, wait for the one asking (Litestream answers within its 2 s)
        # rather than report a state that is no state, which the job would tell the owners.
        if not self._replication_lock.acquire(timeout=3 if status is None else 0):
            return status or {"state": "being asked", "last_sync_at": None, "behind_seconds": None}
        try:
            asked_at, known = self._replication
            if known is not None and time.monotonic() - asked_at < 5:  # asked while we waited
                return known
            status = litestream_status(self.config.litestream_socket, self.config.shop_db)
            if status.get("last_sync_at", "") is None:
                self._unsynced_since = self._unsynced_since or now
                status["waiting_seconds"] = int(now - self._unsynced_since)
            else:
                self._unsynced_since = None
            self._replication = (time.monotonic(), status)
            return status
        finally:
            self._replication_lock.release()

    def watch_replication(self):
        """Scheduled under Litestream: tell the owners once when replication stops or falls behind,
        and once when it is back."""
        problem = replication_problem(self.replication())
        self.replication_good = 0 if problem else self.replication_good + 1
        if bool(problem) == self.replication_alerted or (not problem and self.replication_good < 2):
            return  # told already; or back, but only once it has stayed back for two checks
        if problem:
            log.error(
                "%s: shoppers' orders and balances are not being copied off this box", problem
            )
            text = (
                f"⚠️ <b>Replication stopped</b>: {esc(problem)}. Orders and balances are not "
                "being copied off the box; see the Data page."
            )
        else:
            log.info("replication: Litestream is copying the database again")
            text = (
                "✅ Replication is running again: Litestream is copying the database off the box."
            )
        tell_owners(self.db(), self.config.admin_ids, text)
        self.replication_alerted = bool(problem)  # only once the note is queued

    def report_database(self, conn):
        """Say what the database holds as the shop starts (after a restore, what survived): a
        damaged one stops the start."""
        try:
            found = database_report(conn)
        except sqlite3.DatabaseError as e:
            found = {"integrity": str(e)}
        if found["integrity"] != "ok":
            raise StartupError(
                f"{self.config.shop_db} is damaged (SQLite's check: {found['integrity']}); restore "
                "it (litestream restore, or the newest file in backups/)"
            )
        log_ledger_differences(found["ledger"])
        order, payment = found["order"], found["payment"]
        log.info(
            "database: integrity ok; %s; last order %s; last payment %s; %d payment(s) open at "
            "the providers (reconciliation asks about them)",
            "ledger = balances" if not found["ledger"] else "LEDGER DIFFERS (see above)",
            f"#{order['id']} ({order['status']}, {order['created_at'][:19]}Z)" if order else "none",
            f"#{payment['id']} ({payment['provider']}, {payment['status']}, "
            f"{payment['updated_at'][:19]}Z)"
            if payment
            else "none",
            found["open_payments"],
        )

    def checkpoint_wal(self, every=1.0):
        """Copy committed pages from the WAL into the database file once a second, so no IPN or
        checkout pays for a checkpoint inside its commit (SQLite would otherwise run one every 1000
        pages)."""
        conn = connect(self.config.shop_db)
        try:
            while not self.stopping.wait(every):
                try:
                    wal_checkpoint(conn)
                except sqlite3.Error as e:
                    if not storage_problem(e):
                        log.warning("database: checkpoint failed, trying again: %s", e)
        finally:
            conn.close()

    @property
    def import_dir(self):
        """Where uploaded catalogs wait for their confirmation; emptied at every start."""
        return Path(self.config.shop_db).resolve().parent / "imports"

    @property
    def backup_dir(self):
        return Path(self.config.shop_db).resolve().parent / "backups"

    def backup(self):
        """Scheduled nightly: a consistent copy in backups/, keeping the last 7."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        path = backup_database(
            self.db(), self.backup_dir / f"shop-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.db"
        )
        for old in sorted(self.backup_dir.glob("shop-*.db"))[:-7]:
            old.unlink()
        log.info("backup written to %s", path)

    def setting(self, key):
        """A runtime setting: the owner's choice from the admin, else the configuration's."""
        return get_setting(self.db(), key, self.config)

    @property
    def webapp_url(self):
        """The Mini App's public address, or None: Telegram opens Mini Apps only over https."""
        base = self.config.webhook_url
        return base + "/app" if base.startswith("https://") else None

    @property
    def url(self):
        """The local address the web server answers on."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{'[%s]' % host if ':' in host else host}:{self.config.port}"

    def addresses(self):
        """What the owner needs once the shop listens: [(what, where)], the storefront first."""
        c, base = self.config, self.config.webhook_url
        mode = (
            "live: payments through NOWPayments"
            if not c.sandbox
            else "TEST MODE: payments are simulated, only ADMIN_IDS and TESTER_IDS can buy"
            if self.test_mode
            else "sandbox: payments are simulated, no real money"
        )
        rows = [("shop is running", f"{base}/  (storefront; {mode})"), ("admin", f"{base}/admin")]
        if self.webapp_url:
            rows.append(("Mini App", f"{self.webapp_url}  (the bot's 🛍 Shop button opens it)"))
        if c.sandbox:
            rows.append(
                (
                    "Mini App preview",
                    f"{base}/app"
                    + (
                        "  (for owners: log in to the admin first)"
                        if c.bot_token
                        else "  (a preview shopper)"
                    ),
                )
            )
        rows.append(("health", f"{base}/healthz"))
        if base != self.url:
            rows.append(("listening on", self.url))
        rows.append(("database", str(Path(c.shop_db).resolve())))
        return rows

    @property
    def test_mode(self):
        """A bot is connected but payments are simulated: only owners may buy or simulate
        anything."""
        return self.config.sandbox and bool(self.config.bot_token)

    def may_buy(self, user_id):
        """Everyone may buy, except in test mode: there simulated payments would hand out real
        goods, so only owners (ADMIN_IDS), the testers they name (TESTER_IDS) and the browser
        preview's shopper (whom the admin hands out to owners) may buy or simulate anything."""
        c = self.config
        return (
            not self.test_mode
            or user_id in c.admin_ids
            or user_id in c.tester_ids
            or user_id == PREVIEW_USER["id"]
        )

    def check_may_buy(self, user_id):
        if not self.may_buy(user_id):
            raise NotSellingYet()

    def may_simulate(self, user_id):
        return self.config.sandbox and self.may_buy(user_id)

    def claim_files(self):
        """Before anything is read or written: this process's lock on the database (one shop per
        database) and the shop's files for its own user only."""
        c = self.config
        self.instance_lock = hold_instance_lock(
            c.shop_db,
            f"pid {os.getpid()}, web server {self.url}, "
            f"started {now_iso()[:19].replace('T', ' ')} UTC",
        )
        exposed, stuck = make_files_private(c)
        if exposed:
            log.warning(
                "files: %d of the shop's files were readable by other users of this machine (%s); "
                "now only the shop's own user can read them",
                len(exposed),
                ", ".join(exposed[:5]) + (", ..." if len(exposed) > 5 else ""),
            )
        if stuck:
            log.warning(
                "files: cannot make %s readable by the shop's user only; check who owns them",
                ", ".join(stuck[:5]),
            )
        shutil.rmtree(self.import_dir, ignore_errors=True)

    def announce_mode(self):
        c = self.config
        if self.test_mode:
            ids = c.admin_ids + c.tester_ids
            buyers = (
                ", ".join(map(str, ids[:10]))
                + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
                or "none yet: set ADMIN_IDS to your Telegram id"
            )
            log.warning(
                "TEST MODE (SANDBOX mode with a bot): NOWPAYMENTS_API_KEY is not set, so payments "
                "are simulated. Only owners and testers (ADMIN_IDS, TESTER_IDS: %s) can buy and "
                "simulate payments, in the bot and the Mini App; every other shopper is told the "
                "shop is in test mode and can buy nothing. Set NOWPAYMENTS_API_KEY to open the "
                "shop.",
                buyers,
            )
        elif c.sandbox:
            log.info(
                "SANDBOX mode (no NOWPAYMENTS_API_KEY): payments are simulated, "
                "no real money is taken"
            )
        if not c.sandbox and not c.webhook_url.startswith("https://"):
            log.warning(
                "payments: WEBHOOK_URL is %s, which NOWPayments cannot call (it needs a public "
                "https address); payments are then confirmed only by polling every %d s",
                c.webhook_url,
                c.payment_poll_seconds,
            )
        if not c.sandbox and not c.nowpayments_ipn_secret:
            log.warning(
                "payments: NOWPAYMENTS_IPN_SECRET is not set, so IPNs cannot be verified; each one "
                "only makes the shop ask the NOWPayments API for the payment's status"
            )

    def start(self):
        logging.getLogger().addHandler(self.problems)
        self.claim_files()
        self.prepare_database()
        self.start_payments()
        if self.config.litestream_socket:
            # Litestream does the checkpoints (it holds a read transaction that caps the shop's
            # anyway, and one outside it costs a new snapshot); the shop's connections never do.
            log.info(
                "database: replicated by Litestream (socket %s), which does the checkpoints",
                self.config.litestream_socket,
            )
        else:
            self._thread("checkpoint", self.checkpoint_wal)
        self.start_web()
        # Only now, with the shop listening: a start that fails never uses up the password shown
        # once.
        if not self.config.admin_password and not admin_password_is_stored(self.db()):
            self.new_admin_password = set_admin_password(self.db())
        self.announce_mode()
        self.start_jobs()
        self.start_bot()
        return self

    def prepare_database(self):
        """Create or upgrade the database, end the sessions of an old admin password, make the
        media folders and, in a sandbox with an empty catalog, load the demo catalog."""
        c = self.config
        try:
            conn = init_db(c.shop_db, autocheckpoint=not c.litestream_socket)
        except (DatabaseError, sqlite3.Error, OSError) as e:
            raise StartupError(str(e)) from None
        try:
            self.report_database(conn)
        except StartupError:
            conn.close()
            raise
        ended = end_sessions_of_an_old_password(conn, c.admin_password)
        if ended:
            log.info("admin: the admin password changed, so %d earlier session(s) ended", ended)
        try:
            c.media_dir.joinpath("public").mkdir(parents=True, exist_ok=True)
            c.media_dir.joinpath("private").mkdir(parents=True, exist_ok=True)
            if c.sandbox and self.demo and catalog_is_empty(conn):
                counts = load_demo(conn, c.media_dir)
                log.info(
                    "sandbox: loaded the demo catalog (%d products, %d units)",
                    counts["products_added"],
                    counts["units_added"],
                )
        except (OSError, ShopError) as e:
            raise StartupError(f"cannot prepare {c.media_dir}: {e}") from None
        finally:
            conn.close()

    def start_payments(self):
        """The payment providers and the desk over them, and the key the Mini App's initData is
        signed with."""
        c = self.config
        if c.bot_token:  # every Bot API call, the bot's and Telegram Stars', goes here
            apihelper.API_URL = c.telegram_api_url + "/bot{0}/{1}"
            apihelper.FILE_URL = c.telegram_api_url + "/file/bot{0}/{1}"
            # connections kept: the bot's workers, the outbox sender's 4 and a few web threads'
            BotApiTransport.install(c.telegram_api_url, BOT_WORKERS + 8)
        self.start_providers()
        # initData is signed with the bot token; a sandbox without a bot signs its preview itself.
        self.webapp_token = c.bot_token or stored_secret(c.shop_db, "sandbox_webapp_token")
        self._thread("payment-hints", self.payments.work_hints)

    def start_web(self):
        """The web server, in its own thread."""
        c = self.config
        proxy = (
            {
                "trusted_proxy": c.trusted_proxy,
                "trusted_proxy_count": 1,
                "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto x-forwarded-host",
                "clear_untrusted_proxy_headers": True,
            }
            if c.trusted_proxy
            else {}
        )
        self._web_map = {}
        try:
            # poll(), not select(): select() cannot watch a socket whose number is 1024 or more.
            self.catalog_fast_path = CatalogFastPath(self, make_app(self))
            self.server = waitress.create_server(
                self.catalog_fast_path,
                map=self._web_map,
                host=c.host,
                port=c.port,
                threads=WEB_THREADS,
                ident="shop",
                # Waitress counts idle keep-alive connections against this limit (100 by default)
                # until channel_timeout closes them: 100 Mini App clients keeping theirs open made
                # every other shopper wait up to a minute for a connection.
                connection_limit=1000,
                channel_timeout=60,
                asyncore_use_poll=True,
                max_request_body_size=60 * 1024 * 1024,
                **proxy,
            )
        except OSError as e:
            raise StartupError(
                f"cannot listen on {c.host}:{c.port}: {e.strerror}"
                " (is the shop already running? set PORT)"
            ) from None
        # Closing the server's sockets must happen in its own loop thread; this trigger gets us
        # there.
        self._web_wake = waitress.trigger.trigger(self._web_map)
        self._thread("web", self.server.run)

    def start_jobs(self):
        """The background jobs (JOBS), in the scheduler's thread."""
        self.scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults=JOB_DEFAULTS)
        for name, job, trigger, arguments in JOBS:
            self.scheduler.add_job(
                functools.partial(run_job, self, name, job),
                trigger,
                id=name,
                name=name,
                **schedule_arguments(self.config, arguments),
            )
        self.scheduler.start()

    def start_bot(self):
        """The bot (polling) and the outbox sender, if there is a BOT_TOKEN."""
        c = self.config
        if c.bot_token:
            self.polling_errors = PollingErrors(self)
            self.telegram = PollingBot(
                c.bot_token,
                threaded=True,
                num_threads=BOT_WORKERS,
                exception_handler=self.polling_errors,
            )
            ShopBot(self)
            self.sender = OutboxSender(self, self.limiter)
            self.sender.start()
            self.bot_state = "starting"
            self._thread("bot", self._run_bot)
        else:
            log.info("bot: off (set BOT_TOKEN to connect the Telegram bot)")

    def start_providers(self):
        """The payment providers this configuration uses (PAYMENT_PROVIDERS), and the desk."""
        c = self.config
        if c.sandbox:
            # The sandbox signs and checks with secrets of its own, never the owner's real ones.
            self.ipn_secret = stored_secret(c.shop_db, "sandbox_ipn_secret")
            self.sandbox_api_key = stored_secret(c.shop_db, "sandbox_api_key")
            self.sandbox_app = make_sandbox(self)
        else:
            self.ipn_secret = c.nowpayments_ipn_secret
        providers = []
        for cls in PAYMENT_PROVIDERS.values():
            settings = cls.configured(self)
            if settings is not None:
                providers.append(cls(**settings))
        for provider in providers:
            if isinstance(provider, SandboxPayments):  # its API answers in this process
                # Two threads: the emulator answers in a millisecond, and each thread that has
                # run it keeps its stack and a database connection (some 0.5 MB after a load).
                adapter = InProcess(self.sandbox_app, "/sandbox/v1", threads=2)
                provider.session.mount(self.url + "/sandbox/v1/", adapter)
        self.payments = PaymentDesk(self, providers)

    def _thread(self, name, target):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads[name] = thread

    def _run_bot(self):
        delay, warn = 1, Throttle(300)
        while not self.stopping.is_set():
            try:
                me = self.telegram.get_me()
                break
            except apihelper.ApiTelegramException as e:
                if e.error_code in (401, 404):
                    self.bot_state = "down: Telegram refused BOT_TOKEN"
                    log.error(
                        "bot: Telegram refused BOT_TOKEN (%s); check the token with @BotFather",
                        e.description,
                    )
                    return
                self.bot_state = f"down: {e.description}"
            except Exception as e:
                self.bot_state = f"down: cannot reach Telegram ({type(e).__name__})"
            if warn():
                log.warning("bot: %s; retrying", self.bot_state)
            self.stopping.wait(delay)
            delay = min(60, delay * 2)
        else:
            return
        try:
            if introduce_bot(self.telegram, self.db(), me.id):
                log.info("bot: told Telegram its commands and descriptions in each language")
        except Exception as e:
            log.warning("bot: could not tell Telegram its commands and descriptions: %s", e)
        if self.webapp_url:
            try:
                with speaking(default_language(self.db())):
                    button = tg.MenuButtonWebApp(tr(MENU_APP), tg.WebAppInfo(self.webapp_url))
                self.telegram.set_chat_menu_button(menu_button=button)
            except Exception as e:
                log.warning("bot: could not set the menu button to the Mini App: %s", e)
        else:
            log.info(
                "bot: the Mini App needs a public https WEBHOOK_URL; "
                "until then the menu button stays as it is"
            )
        # polling() asks getMe again for the username unless it is cached; an outage at that
        # moment would bypass our error handling.
        self.telegram._user = me
        self.bot_username = me.username
        self.bot_state = "running"
        log.info(
            "bot: @%s is polling for updates; shoppers find it at https://t.me/%s",
            me.username,
            me.username,
        )
        self.telegram.infinity_polling(
            timeout=30,
            long_polling_timeout=25,
            logger_level=logging.ERROR,
            allowed_updates=["message", "callback_query", "pre_checkout_query"],
        )

    def health(self):
        state = {
            "status": "ok",
            "mode": "sandbox" if self.config.sandbox else "live",
            "version": __version__,
        }
        try:
            conn = self.db()
            probe_database(conn)
            state["database"] = "ok"
            state["outbox"] = outbox_counts(conn)
        except sqlite3.Error as e:
            state["database"] = f"error: {e}"
        state["scheduler"] = "running" if self.scheduler and self.scheduler.running else "down"
        state["bot"] = self.bot_state
        if self.telegram and self.telegram.last_poll is not None:
            # A long poll returns at least every 25 s when Telegram is reachable.
            if time.monotonic() - self.telegram.last_poll > 60 and not self.bot_state.startswith(
                "down"
            ):
                state["bot"] = "down: no answer from Telegram for over a minute"
            if not self.threads["bot"].is_alive() and not self.stopping.is_set():
                state["bot"] = "down: polling stopped"
        if self.sender:
            state.setdefault("outbox", {})["sender"] = "running" if self.sender.alive() else "down"
        if self.payments:
            # Informational: balance purchases and deliveries go on while a provider is away.
            state["payments"] = self.payments.health()
        if self.config.litestream_socket:
            status = self.replication()
            state["replication"] = {k: v for k, v in status.items() if k != "error"}  # no paths
            if replication_problem(status):
                state["status"] = "degraded"  # the shop sells; its copy off the box is not current
        down = (
            state["database"] != "ok"
            or state["scheduler"] != "running"
            or state["bot"].startswith("down")
            or (self.sender and not self.sender.alive())
        )
        if down:
            state["status"] = "down"
        return state

    def stop(self):
        """Stop everything; returns within a few seconds even with a long poll in flight."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self.telegram:
            self.telegram.stop_polling()
            for worker in (
                self.telegram.worker_pool.workers
            ):  # (stop_polling leaves them waiting for updates)
                worker.stop()
        if self.sender:
            self.sender.stop()
        if self.scheduler and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.payments:
            self.payments.hints.put(None)
            self.payments.close()  # and the sandbox's own threads, if any
        if self.server:
            self.server.task_dispatcher.shutdown(timeout=2)  # lets requests in flight finish
            self._web_wake.pull_trigger(lambda: waitress.wasyncore.close_all(self._web_map))
        for name in ("web", "bot"):
            if name in self.threads:
                self.threads[name].join(1.0)
        if self.instance_lock:
            self.instance_lock.close()  # the next shop on this database may start
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # this thread's; the other threads' go with their threads
            self._local.conn = None
            conn.close()
        logging.getLogger().removeHandler(self.problems)


# Command line ##################################################################


# The owner's one-off commands, for --help: name: (its arguments, what it does).
OWNER_COMMANDS = {
    "balance": ("ID AMOUNT REASON", "credit (20.00) or debit (-5.00) a shopper's balance"),
    "admin-password": ("[NEW]", "set the admin password (prints a random one if NEW is left out)"),
    "set": ("[KEY [VALUE]]", "list the settings, show one, or change one"),
    "promo": ("ACTION ...", "list, add, change, pause or resume discount codes"),
}


def owner_setting_name(text):
    """`shop.py set`'s KEY: a setting the Settings page has, by its name, or an owner's text in
    another language the shop speaks ('welcome_text.de')."""
    if text in OWNER_SETTINGS or translated_text_setting(text):
        return text
    others = [code for code in available_languages() if code != SOURCE_LANGUAGE]
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(map(repr, OWNER_SETTINGS))}"
        + (f", or TEXT.LANG, like 'welcome_text.{others[0]}'" if others else "")
        + ")"
    )


def parse_args(argv):
    description = (
        "Run the Telegram shop: web server, bot, outbox sender and scheduler in one process.\n"
        "With no NOWPAYMENTS_API_KEY it runs in sandbox mode with a demo catalog.\n\n"
        "commands (without one, the shop runs; shop.py COMMAND --help says more):\n"
        + "\n".join(
            f"  {f'{name} {args}':<26}{what}" for name, (args, what) in OWNER_COMMANDS.items()
        )
    )
    epilog = (
        "Configuration comes from the environment and a .env file in the working directory "
        "(the environment wins):\n"
        + "\n".join(
            f"  {name:<24}{help_}" + (f" (default {default})" if default else "")
            for name, (help_, default) in ENV_VARS.items()
        )
    )
    parser = argparse.ArgumentParser(
        prog="shop.py",
        usage="%(prog)s [OPTIONS] [COMMAND ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
        epilog=epilog,
    )
    parser.add_argument("--host", help="address to listen on (overrides HOST)")
    parser.add_argument("--port", help="port to listen on (overrides PORT)")
    parser.add_argument("--db", help="SQLite database file (overrides SHOP_DB)")
    parser.add_argument(
        "--env-file", default=".env", help="file with VAR=value lines (default .env)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (overrides LOG_LEVEL)")
    parser.add_argument(
        "--no-demo",
        action="store_true",
        help="in sandbox mode, do not load the demo catalog into an empty shop",
    )
    parser.add_argument("--version", action="version", version=f"shop.py {__version__}")
    # Listed once, in the description: argparse's own list would repeat them without arguments.
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog="shop.py"
    )
    balance = commands.add_parser("balance", description=OWNER_COMMANDS["balance"][1])
    balance.add_argument("user_id", metavar="ID", help="the shopper's Telegram id (👤 Profile)")
    balance.add_argument("amount", metavar="AMOUNT", help="EUR to add, like 20.00; -5.00 takes off")
    balance.add_argument("reason", metavar="REASON", help="why (kept in the ledger)")
    password = commands.add_parser(
        "admin-password", description=OWNER_COMMANDS["admin-password"][1]
    )
    password.add_argument("password", nargs="?", metavar="NEW", help="at least 10 characters")
    setting = commands.add_parser(
        "set",
        description=OWNER_COMMANDS["set"][1] + ", with the checks of the admin's Settings page",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings:\n"
        + "\n".join(f"  {name:<24}{what}" for name, (_, what) in OWNER_SETTINGS.items())
        + f"\n  {'TEXT.LANG':<24}"
        + f"{', '.join(SHOPPER_TEXTS)} in another language the shop speaks, like "
        + "welcome_text.de (empty: the default language's)"
        + f"\n\nlanguages: {', '.join(available_languages())}"
        + f"\ncoins: {', '.join(COIN_CODES)}"
        + "\n\nA change applies at once, also while the shop runs, and goes in the audit log.",
    )
    setting.add_argument(
        "key", nargs="?", type=owner_setting_name, metavar="KEY", help="one of the settings"
    )
    setting.add_argument("value", nargs="?", metavar="VALUE", help="its new value")
    add_promo_parser(commands)
    return parser.parse_args(argv)


def add_promo_parser(commands):
    """`shop.py promo ...`: the admin's Promotions page for scripts."""
    promo = commands.add_parser(
        "promo",
        description=OWNER_COMMANDS["promo"][1] + ", with the checks of the admin's Promotions page",
        epilog="Days and times are UTC: 2026-12-01 (an end: to the end of that day) or "
        "'2026-12-01 18:00'. Every change goes in the audit log.",
    )
    verbs = promo.add_subparsers(dest="promo_command", metavar="ACTION", required=True)
    verbs.add_parser("list", help="every code with its terms and uses (tab-separated)")
    add = verbs.add_parser("add", help="a new code, active at once")
    edit = verbs.add_parser("edit", help="change a code: only the options given ('' empties one)")
    for parser, required in ((add, True), (edit, False)):
        parser.add_argument("code", metavar="CODE", help="3 to 32 letters, digits, - or _")
        off = parser.add_mutually_exclusive_group(required=required)
        off.add_argument("--percent", metavar="N", help="a percentage off, 1 to 99")
        off.add_argument("--amount", metavar="EUR", help="an amount off in EUR, like 5.00")
        for option, metavar, what in PROMO_OPTIONS:
            parser.add_argument(option, metavar=metavar, help=what)
    edit.add_argument("--code", dest="new_code", metavar="NEW", help="its new text")
    for verb in ("pause", "resume"):
        verbs.add_parser(verb, help=f"{verb} a code").add_argument("code", metavar="CODE")


# `shop.py promo add/edit`'s options: (option, metavar, help); PROMO_CLI_FIELDS: their fields.
PROMO_OPTIONS = (
    ("--min", "EUR", "the basket it needs, at least"),
    ("--starts", "WHEN", "from this day or time (UTC)"),
    ("--ends", "WHEN", "until this day (to its end) or time (UTC)"),
    ("--uses", "N", "how often it may be used in all"),
    ("--per-shopper", "N", "how often one shopper may use it"),
    ("--products", "LIST", "only these products: names or ids, comma-separated"),
    ("--cities", "LIST", "only in these cities: names or ids, comma-separated"),
    ("--note", "TEXT", "a note for yourself"),
)
PROMO_CLI_FIELDS = {
    "min": "min_total",
    "starts": "starts",
    "ends": "ends",
    "uses": "max_uses",
    "per_shopper": "max_uses_per_user",
    "products": "products",
    "cities": "cities",
    "note": "note",
}


def balance_cents(text):
    """The balance command's AMOUNT in cents, '20.00' to add, '-5.00' to take off; InvalidInput
    says to the owner what is wrong."""
    amount = text.strip()
    sign = -1 if amount.startswith("-") else 1
    try:
        cents = parse_eur(amount.removeprefix("-").removeprefix("+"), minimum=0, maximum=10**12)
    except InvalidInput:
        raise InvalidInput(
            f"The amount must be in EUR, like 20.00 to add or -5.00 to take off; got {text!r}."
        ) from None
    if cents == 0:
        raise InvalidInput(
            "The amount is zero, which changes nothing: give 20.00 to add or -5.00 to take off."
        )
    if cents > MAX_EUR_CENTS:
        raise InvalidInput(f"The amount must be at most {fmt_eur(MAX_EUR_CENTS)}, got {text!r}.")
    return sign * cents


def run_balance(conn, args):
    """`shop.py balance ID AMOUNT REASON`; InvalidInput says to the owner what is wrong."""
    if not re.fullmatch(r"\d{1,20}", args.user_id):
        raise InvalidInput(
            f"The user id must be a shopper's Telegram id (digits, under 👤 Profile in the bot), "
            f"got {args.user_id!r}."
        )
    user_id, cents = int(args.user_id), balance_cents(args.amount)
    try:
        get_user(conn, user_id)
    except NotFound:
        raise InvalidInput(
            f"No shopper has the Telegram id {user_id}: they have not talked to the bot yet "
            "(a shopper appears once they send /start)."
        ) from None
    try:
        adjust_balance(conn, user_id, cents, args.reason)
    except InsufficientBalance as e:
        raise InvalidInput(
            f"The shopper's balance is {fmt_eur(-cents - e.short_cents)}; a debit of "
            f"{fmt_eur(-cents)} would take it below zero. Nothing was changed."
        ) from None
    balance = get_user(conn, user_id)["balance_cents"]
    print(f"{fmt_eur(cents)} for user {user_id}: balance now {fmt_eur(balance)}")


def setting_shown(conn, name, config, one=False):
    """A setting as `shop.py set` shows it: texts quoted in the list (as they are when `one`),
    the minimum top-up in EUR, the coins as they can be typed back."""
    text = owner_setting_text(conn, name, config)
    if name in SETTING_RULES or translated_text_setting(name):
        return text if one else repr(text)
    if name == "min_deposit":
        return f"{text} EUR"
    if text is None:  # the coins, never chosen
        return "every coin the merchant account takes (none chosen)"
    return text


def run_set(conn, args, config):
    """`shop.py set [KEY [VALUE]]`: a change is checked and stored as the admin's Settings page
    does it, with an audit row; InvalidInput says what is wrong."""
    if args.key is None:
        texts = [f"{key}.{code}" for code in other_languages(conn) for key in SHOPPER_TEXTS]
        for name in (*OWNER_SETTINGS, *texts):
            print(f"{name}: {setting_shown(conn, name, config)}")
    elif args.value is None:
        print(setting_shown(conn, args.key, config, one=True))
    else:
        key, value = clean_owner_setting(
            args.key,
            args.value,
            max_deposit_cents=config.max_deposit_cents,
            coin_codes=COIN_CODES,
        )
        save_settings(conn, {key: value}, "command line")
        print(f"{args.key} set to {setting_shown(conn, args.key, config)}")


def promo_cli_fields(args):
    """The fields `shop.py promo add/edit` was given (clean_promo_fields' names)."""
    fields = {
        field: getattr(args, option)
        for option, field in PROMO_CLI_FIELDS.items()
        if getattr(args, option) is not None
    }
    if args.percent is not None:
        fields.update(kind="percent", value=args.percent)
    if args.amount is not None:
        fields.update(kind="fixed", value=args.amount)
    return fields


def promo_cli_line(promo):
    """A code as `shop.py promo list` prints it: code, state, uses, terms, tab-separated."""
    left = "no limit" if promo["uses_left"] is None else f"{promo['uses_left']} left"
    uses = f"{promo['uses_paid']} paid, {promo['uses_reserved']} reserved, {left}"
    terms = promo["terms"]
    words = "; ".join(terms[k] for k in ("value", "minimum", "period", "products", "cities"))
    return "\t".join([promo["code"], promo["state"], uses, f"{words}; {terms['limits']}"])


def run_promo_list(conn, args):
    for promo in list_promo_codes(conn):
        print(promo_cli_line(promo))


def run_promo_add(conn, args):
    promo_id = create_promo_code(
        conn, {"code": args.code, **promo_cli_fields(args)}, "command line"
    )
    print("added: " + promo_cli_line(get_promo_code(conn, promo_id)))


def run_promo_edit(conn, args):
    promo_id = find_promo_id(conn, args.code)
    fields = promo_cli_fields(args)
    if args.new_code is not None:
        fields["code"] = args.new_code
    if not fields:
        raise InvalidInput("Say what to change, like --percent 15 or --ends 2026-12-31.")
    changed = update_promo_code(conn, promo_id, fields, "command line")
    said = "changed" if changed else "unchanged"
    print(f"{said}: " + promo_cli_line(get_promo_code(conn, promo_id)))


def run_promo_active(conn, args):
    promo_id = find_promo_id(conn, args.code)
    resume = args.promo_command == "resume"
    changed = set_promo_active(conn, promo_id, resume, "command line")
    code = get_promo_code(conn, promo_id)["code"]
    was = "" if changed else " already"
    print(f"{code} is{was} {'active' if resume else 'paused'}")


# `shop.py promo ACTION`'s handlers.
PROMO_COMMANDS = {
    "list": run_promo_list,
    "add": run_promo_add,
    "edit": run_promo_edit,
    "pause": run_promo_active,
    "resume": run_promo_active,
}


def run_command(args, config):
    """The owner's one-off commands; returns the exit status."""
    try:
        conn = init_db(config.shop_db, autocheckpoint=not config.litestream_socket)
    except (DatabaseError, sqlite3.Error) as e:
        print(f"shop.py: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "balance":
            run_balance(conn, args)
        elif args.command == "admin-password":
            if config.admin_password:
                raise InvalidInput(
                    "ADMIN_PASSWORD is set in the environment or .env; change it there."
                )
            if args.password is not None and len(args.password) < 10:
                raise InvalidInput("Choose a password of at least 10 characters.")
            print(f"Admin password set: {set_admin_password(conn, args.password)}")
        elif args.command == "promo":
            PROMO_COMMANDS[args.promo_command](conn, args)
        else:
            run_set(conn, args, config)
        return 0
    except ShopError as e:
        print(f"shop.py: {e}", file=sys.stderr)
    finally:
        conn.close()
    return 1


def limit_malloc_arenas(arenas=2):
    """glibc gives each busy thread its own heap (up to 8 per core); with some 25 threads that keeps
    memory the shop freed long ago. Two heaps are plenty for threads that mostly wait on I/O
    (what MALLOC_ARENA_MAX=2 does). And a fixed mmap threshold: glibc otherwise raises it to the
    size of the largest block it has given back, and scrypt (an admin password checked at start or
    at a login) takes 16 MB at once, after which blocks up to that size stay in the heaps for good
    (8 MB more after the benchmark's mixed load). Nothing happens on other C libraries."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, glibc's default, kept from moving
    except (OSError, AttributeError):
        pass


def main(argv=None):
    # Whatever the shop writes (the database with the goods and balances, backups, media) is for its
    # own user only.
    os.umask(0o077)
    args = parse_args(argv)
    try:
        config = load_config(
            env_file=args.env_file,
            overrides={
                "HOST": args.host,
                "PORT": args.port,
                "SHOP_DB": args.db,
                "LOG_LEVEL": args.log_level,
            },
        )
    except ConfigError as e:
        print(f"shop.py: configuration error: {e}", file=sys.stderr)
        return 2
    if args.command:
        return run_command(args, config)
    setup_logging(config)
    limit_malloc_arenas()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    shop = Shop(config, demo=not args.no_demo)
    try:
        shop.start()
    except StartupError as e:
        log.error("cannot start: %s", e)
        shop.stop()
        return 1
    for label, address in shop.addresses():
        log.info("%-16s %s", label, address)
    if shop.new_admin_password:
        # Shown once, on the console only (never the log file's business): only its hash is kept.
        print(
            "\n  Admin password (shown once; set ADMIN_PASSWORD or run "
            f"`python shop.py admin-password` to change it): {shop.new_admin_password}\n",
            file=sys.stderr,
            flush=True,
        )
    stop.wait()
    log.info("stopping")
    shop.stop()
    log.info("stopped")
    return 0


def run_as_module():
    """`python shop.py` starts again, in the same process (exec keeps its pid), as
    `python -P -m shop`. CPython keeps the syntax tree of the script it was started with in memory
    for as long as that script runs (this file's takes some 12 MB of a 65 MB shop), while a module's
    tree is freed once compiled, and later starts read the compiled module from __pycache__ (8 MB
    less again). -P and PYTHONPATH: this file is found, not one of the same name in the current
    folder. Returns where exec or -P does not exist, or PYTHONPATH would be ignored."""
    if os.name != "posix" or not sys.executable or sys.version_info < (3, 11):
        return
    if sys.flags.isolated or sys.flags.ignore_environment:  # -I or -E: PYTHONPATH would not count
        return
    options = sys.orig_argv[1 : len(sys.orig_argv) - len(sys.argv)]  # -u, -X ... as given
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    module = Path(__file__).stem
    os.execve(sys.executable, [sys.executable, *options, "-P", "-m", module, *sys.argv[1:]], env)


if __name__ == "__main__":
    if __spec__ is None:  # run as a script, not imported (nor run with -m)
        run_as_module()
    sys.exit(main())
