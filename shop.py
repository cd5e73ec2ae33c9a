#!/usr/bin/env python3
"""A self-hosted Telegram shop in one script.

Shoppers browse and buy through a Telegram bot; what they bought (a voucher
code, a licence key, a download link, pickup instructions, with an optional
photo) arrives in their chat as soon as it is paid. One process, one SQLite file:

    telebot polling thread --.
    waitress worker threads --+--> services fn(conn, ...) --> SQLite (WAL, one file)
    APScheduler jobs ---------+            |
    outbox sender ------------'            '--> outbox rows --> sender --> Telegram

Services are plain functions over a connection. They never talk to Telegram or
the network: what must be said is written to the outbox in the same
transaction as the state change that caused it, and the sender delivers it,
within Telegram's rate limits, even across restarts.

Flows:
    browse:   /shop -> city -> district -> product card (photo, price, stock)
    basket:   add / change quantity / remove -> checkout
    buy:      checkout -> pay from balance: one transaction debits the ledger,
              marks the units sold, records the order and queues the delivery
    deliver:  outbox -> each unit's content (and photo) in the buyer's chat

Sections, in dependency order (grep for the banners):
    Configuration, Logging, Database, Money and text, Errors,
    Services: users, ledger, outbox, catalog, basket, orders, catalog import,
    Web, Bot, Outbox sender, Scheduler, Runtime, Command line.

Run `python shop.py --help`. Importing this module has no side effects.
"""

import argparse
import hashlib
import html
import json
import logging
import os
import queue
import random
import re
import secrets
import signal
import sqlite3
import sys
import threading
import time
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import quote, urlsplit

import bottle
import requests
import telebot
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


# Configuration ###############################################################

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
    reservation_minutes: int = 30
    trusted_proxy: str = ""
    log_level: str = "INFO"

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
        return [s for s in (self.bot_token, self.nowpayments_api_key,
                            self.nowpayments_ipn_secret, self.admin_password) if s]


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
    "RESERVATION_MINUTES": ("how long an unpaid order holds its units", "30"),
    "TRUSTED_PROXY": ("address of a reverse proxy whose X-Forwarded-* headers to trust", ""),
    "LOG_LEVEL": ("DEBUG, INFO, WARNING or ERROR", "INFO"),
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
    get = lambda name: str(values.get(name, "")).strip()

    kw = {}
    token = get("BOT_TOKEN")
    if token and not TOKEN_RE.match(token):
        raise ConfigError("BOT_TOKEN does not look like a bot token (digits:letters, from @BotFather)")
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
    if get("RESERVATION_MINUTES"):
        kw["reservation_minutes"] = _int("RESERVATION_MINUTES", get("RESERVATION_MINUTES"), 1, 1440)
    ids = get("ADMIN_IDS")
    if ids:
        parts = [p for p in re.split(r"[\s,;]+", ids) if p]
        if not all(re.fullmatch(r"\d{1,20}", p) for p in parts):
            raise ConfigError(f"ADMIN_IDS must be Telegram user ids separated by commas, got {ids!r}")
        kw["admin_ids"] = tuple(int(p) for p in parts)
    kw["admin_password"] = get("ADMIN_PASSWORD")
    kw["trusted_proxy"] = get("TRUSTED_PROXY")
    level = get("LOG_LEVEL").upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {get('LOG_LEVEL')!r}")
    kw["log_level"] = level
    host_for_url = kw["host"] if kw["host"] not in ("0.0.0.0", "::", "") else "127.0.0.1"
    kw["webhook_url"] = (_url("WEBHOOK_URL", get("WEBHOOK_URL")) if get("WEBHOOK_URL")
                         else f"http://{host_for_url}:{kw.get('port', Config.port)}")
    return Config(**kw)


# Logging #####################################################################

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


def setup_logging(config, stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactSecrets(config.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)
    # telebot installs its own stderr handler on import; route it through ours.
    telebot.logger.handlers[:] = []
    telebot.logger.setLevel(logging.CRITICAL if config.log_level != "DEBUG" else logging.DEBUG)
    for noisy in ("waitress.queue", "urllib3", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


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


# Database ####################################################################

SCHEMA_VERSION = 1

# Numbered migrations for databases created by older versions: {version: SQL}.
# A migration brings user_version from version-1 to version; schema.sql then
# adds any new tables and indexes. Keep schema.sql describing the latest shape.
MIGRATIONS = {}


class DatabaseError(Exception):
    """The database cannot be used."""


class ShopConnection(sqlite3.Connection):
    """A connection that runs callbacks after the outermost transaction commits."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_commit = []
        self.depth = 0


def connect(path):
    """Open the shop database with the settings every connection needs."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, factory=ShopConnection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit the shop has acted on (a purchase, a paid IPN) survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


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
        callbacks, conn.after_commit = conn.after_commit, []
        for callback in callbacks:
            callback()
    finally:
        conn.depth = 0


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


def init_db(path, migrations=None, schema_version=None):
    """Create or upgrade the database at `path`; return a connection to it."""
    migrations = MIGRATIONS if migrations is None else migrations
    schema_version = SCHEMA_VERSION if schema_version is None else schema_version
    try:
        conn = connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"{path} cannot be opened as an SQLite database: {e}") from None
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    if version > schema_version:
        raise DatabaseError(f"{path} has schema version {version}, newer than this shop.py "
                            f"({schema_version}); upgrade shop.py")
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise DatabaseError(f"{path} holds tables but no schema version: it was not created "
                                "by shop.py; point SHOP_DB at a new file")
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
        log.info("upgrading %s from schema %d to %d (backup in %s)", path, version, schema_version, backup)
        for v in range(version + 1, schema_version + 1):
            with transaction(conn):
                for statement in sql_statements(migrations[v]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")
    with transaction(conn):
        for statement in sql_statements(schema):
            conn.execute(statement)
    return conn


def now_iso(delta_seconds=0.0):
    """UTC time as fixed-width ISO-8601 text, which sorts like the time it is."""
    t = datetime.now(timezone.utc) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


# Money and text ##############################################################

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


def cents_to_str(cents):
    """2550 -> '25.50' (the API's and the ledger's notation)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def fmt_eur(cents):
    """2550 -> '€25.50' (what shoppers read)."""
    return ("-€" if cents < 0 else "€") + cents_to_str(abs(cents))


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


# Errors ######################################################################

class ShopError(Exception):
    """Something went wrong."""
    status = 400

    def __init__(self, message=None):
        super().__init__(message or self.__doc__)


class InvalidInput(ShopError):
    """That input is not valid."""


class NotFound(ShopError):
    """That does not exist (any more)."""
    status = 404


class SoldOut(ShopError):
    """Sorry, that is sold out."""
    status = 409


class InsufficientBalance(ShopError):
    """Your balance is too low."""
    status = 409

    def __init__(self, short_cents, message=None):
        super().__init__(message or f"Your balance is {fmt_eur(short_cents)} short.")
        self.short_cents = short_cents


class PriceChanged(ShopError):
    """Your basket or its prices changed since you opened checkout; please check the new total."""
    status = 409


class Banned(ShopError):
    """Sorry, this shop is not available to you."""
    status = 403


class CatalogError(ShopError):
    """The catalog file is invalid."""

    def __init__(self, errors):
        self.errors = list(errors)
        shown = self.errors[:20]
        more = len(self.errors) - len(shown)
        super().__init__("\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))


# Services: users and settings ################################################

DEFAULT_SETTINGS = {
    "shop_name": "Demo Shop",
    "welcome_text": "Welcome! Browse the shop, fill your basket and pay from your balance. "
                    "Your goods arrive right here in this chat.",
    "help_text": "🛒 Shop: browse by city and district.\n🧺 Basket: change quantities, then check out.\n"
                 "💰 Top up: add money to your balance.\n📦 Orders: your orders, and their items again.",
    "support_contact": "",
}


def get_setting(conn, key):
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else DEFAULT_SETTINGS.get(key, "")


# key: (what it is, longest allowed, may span lines)
SETTING_RULES = {
    "shop_name": ("The shop name", 64, False),
    "welcome_text": ("The welcome text", 1000, True),
    "help_text": ("The help text", 2000, True),
    "support_contact": ("The support contact", 100, False),
}


def set_setting(conn, key, value):
    """Change a shop setting (see SETTING_RULES); takes effect on the next message."""
    if key not in SETTING_RULES:
        raise InvalidInput(f"Unknown setting {key!r}; settings are: {', '.join(SETTING_RULES)}.")
    what, max_len, multiline = SETTING_RULES[key]
    value = clean_text(value, what, max_len=max_len, multiline=multiline, required=key != "support_contact")
    with transaction(conn):
        conn.execute("INSERT INTO settings(key, value) VALUES (?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
    return value


def touch_user(conn, tg_user):
    """Record a Telegram user (dict with id, first_name, username, language_code); return the row."""
    user_id = int(tg_user["id"])
    fields = (tg_user.get("username"), tg_user.get("first_name") or "", tg_user.get("language_code"))
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    stale = now_iso(-300)
    if row and (row["username"], row["first_name"], row["language_code"]) == fields \
            and row["last_seen_at"] > stale:
        return row
    now = now_iso()
    with transaction(conn):
        return conn.execute(
            "INSERT INTO users(id, username, first_name, language_code, created_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username, "
            "first_name = excluded.first_name, language_code = excluded.language_code, "
            "last_seen_at = excluded.last_seen_at RETURNING *", (user_id, *fields, now, now)).fetchone()


def get_user(conn, user_id):
    row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise NotFound("No such user.")
    return row


def set_banned(conn, user_id, banned):
    with transaction(conn):
        if conn.execute("UPDATE users SET is_banned = ?, ban_notified_at = NULL WHERE id = ?",
                        (int(bool(banned)), user_id)).rowcount != 1:
            raise NotFound("No such user.")


def should_tell_banned(conn, user_id):
    """A banned user hears one polite refusal a day, however often they write."""
    with transaction(conn):
        return conn.execute(
            "UPDATE users SET ban_notified_at = ? WHERE id = ? AND is_banned = 1 "
            "AND (ban_notified_at IS NULL OR ban_notified_at < ?)",
            (now_iso(), user_id, now_iso(-86400))).rowcount == 1


# Services: ledger ############################################################

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
    conn.execute("INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, reason, "
                 "idempotency_key, order_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (user_id, amount_cents, balance, kind, reason, key, order_id, now_iso()))
    conn.execute("UPDATE users SET balance_cents = ? WHERE id = ?", (balance, user_id))
    return True


def adjust_balance(conn, user_id, amount_cents, reason, key=None):
    """An owner's manual balance change; the reason is required and kept in the ledger."""
    reason = clean_text(reason, "The reason", max_len=200)
    with transaction(conn):
        return post_ledger(conn, user_id, amount_cents, "adjustment",
                           key or f"adjustment:{secrets.token_hex(8)}", reason=reason)


def check_ledger(conn):
    """Users whose cached balance differs from their ledger sum: [(id, cached, ledger)]."""
    return [tuple(r) for r in conn.execute(
        "SELECT u.id, u.balance_cents, coalesce(sum(l.amount_cents), 0) AS total FROM users u "
        "LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id HAVING u.balance_cents <> total")]


# Services: outbox ############################################################

# Set after a transaction that queued messages commits; wakes the sender.
outbox_ready = threading.Event()


def enqueue_message(conn, chat_id, text, *, photo=None, buttons=None, order_id=None):
    """Queue a Telegram message (HTML text, optional 'public:'/'private:' photo) for the sender."""
    assert conn.in_transaction, "enqueue_message needs a transaction"
    markup = json.dumps({"inline_keyboard": [[{"text": t, "callback_data": d} for t, d in row]
                                             for row in buttons]}) if buttons else None
    now = now_iso()
    conn.execute("INSERT INTO outbox(chat_id, text, photo, reply_markup, order_id, next_attempt_at, "
                 "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (chat_id, text, photo, markup, order_id, now, now))
    if outbox_ready.set not in conn.after_commit:
        conn.after_commit.append(outbox_ready.set)


def alert_owners(conn, owners, text):
    """Queue a short note (HTML) to each owner in ADMIN_IDS."""
    for owner in owners:
        enqueue_message(conn, owner, text)


def outbox_counts(conn):
    """Messages waiting to be sent and messages that could not be delivered."""
    return {status: conn.execute("SELECT count(*) FROM outbox WHERE status = ?", (status,)).fetchone()[0]
            for status in ("pending", "failed")}


# Services: catalog ###########################################################

# Units on sale joined to their visible place and active product. INDEXED BY:
# the partial index holds only available units, so browsing never walks the
# sold ones, however many orders the shop has had.
_AVAILABLE = ("INDEXED BY stock_units_available "
              "JOIN districts d ON d.id = u.district_id AND d.is_hidden = 0 "
              "JOIN cities c ON c.id = d.city_id AND c.is_hidden = 0 "
              "JOIN products p ON p.id = u.product_id AND p.is_active = 1 "
              "WHERE u.status = 'available'")


def list_cities(conn):
    """Cities with something in stock: [{id, name, units}]."""
    return conn.execute(
        f"SELECT c.id, c.name, count(*) AS units FROM stock_units u {_AVAILABLE} "
        "GROUP BY c.id ORDER BY c.position, c.name").fetchall()


def get_city(conn, city_id):
    row = conn.execute("SELECT * FROM cities WHERE id = ? AND is_hidden = 0", (city_id,)).fetchone()
    if row is None:
        raise NotFound("That city is not in the shop any more.")
    return row


def list_districts(conn, city_id):
    """Districts of a city with something in stock."""
    return conn.execute(
        f"SELECT d.id, d.name, count(*) AS units FROM stock_units u {_AVAILABLE} AND c.id = ? "
        "GROUP BY d.id ORDER BY d.position, d.name", (city_id,)).fetchall()


def get_district(conn, district_id):
    row = conn.execute(
        "SELECT d.*, c.name AS city_name FROM districts d JOIN cities c ON c.id = d.city_id "
        "WHERE d.id = ? AND d.is_hidden = 0 AND c.is_hidden = 0", (district_id,)).fetchone()
    if row is None:
        raise NotFound("That district is not in the shop any more.")
    return row


def list_products(conn, district_id):
    """Products in stock in a district, with how many are available."""
    return conn.execute(
        f"SELECT p.id, p.name, p.price_cents, count(*) AS available FROM stock_units u {_AVAILABLE} "
        "AND d.id = ? GROUP BY p.id ORDER BY p.name", (district_id,)).fetchall()


def get_offer(conn, product_id, district_id):
    """A product as offered in one district, with its available count (possibly 0)."""
    row = conn.execute(
        "SELECT p.*, d.id AS district_id, d.name AS district_name, d.city_id, c.name AS city_name, "
        "(SELECT count(*) FROM stock_units u WHERE u.product_id = p.id AND u.district_id = d.id "
        " AND u.status = 'available') AS available "
        "FROM products p, districts d JOIN cities c ON c.id = d.city_id "
        "WHERE p.id = ? AND d.id = ? AND p.is_active = 1 AND d.is_hidden = 0 AND c.is_hidden = 0",
        (product_id, district_id)).fetchone()
    if row is None:
        raise NotFound("That product is not in the shop any more.")
    return row


def place_name(city, district):
    return f"{city} / {district}"


def catalog_is_empty(conn):
    return conn.execute("SELECT count(*) FROM products").fetchone()[0] == 0


# Services: basket ############################################################

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
        "SELECT b.id, b.product_id, b.district_id, b.quantity, p.name, p.price_cents, "
        "d.name AS district_name, c.name AS city_name, "
        "(SELECT count(*) FROM stock_units u WHERE u.product_id = b.product_id "
        " AND u.district_id = b.district_id AND u.status = 'available' AND p.is_active = 1 "
        " AND d.is_hidden = 0 AND c.is_hidden = 0) AS available "
        "FROM basket_items b JOIN products p ON p.id = b.product_id "
        "JOIN districts d ON d.id = b.district_id JOIN cities c ON c.id = d.city_id "
        "WHERE b.user_id = ? ORDER BY b.id", (user_id,)).fetchall()
    return Basket([BasketLine(r["id"], r["product_id"], r["district_id"], r["name"],
                              place_name(r["city_name"], r["district_name"]), r["price_cents"],
                              r["quantity"], r["available"]) for r in rows])


def _check_quantity(quantity):
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"The quantity must be a whole number from 1 to {MAX_QUANTITY}.")


def add_to_basket(conn, user_id, product_id, district_id, quantity=1):
    """Add units of a product in a district; returns the line's new quantity."""
    _check_quantity(quantity)
    with transaction(conn):
        offer = get_offer(conn, product_id, district_id)
        row = conn.execute("SELECT id, quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
                           "AND district_id = ?", (user_id, product_id, district_id)).fetchone()
        new = (row["quantity"] if row else 0) + quantity
        if offer["available"] == 0:
            raise SoldOut(f"Sorry, {offer['name']} is sold out in "
                          f"{place_name(offer['city_name'], offer['district_name'])}.")
        if new > offer["available"]:
            raise SoldOut(f"Only {offer['available']} of {offer['name']} available in "
                          f"{place_name(offer['city_name'], offer['district_name'])}.")
        _check_quantity(new)
        if row:
            conn.execute("UPDATE basket_items SET quantity = ? WHERE id = ?", (new, row["id"]))
        else:
            lines = conn.execute("SELECT count(*) FROM basket_items WHERE user_id = ?",
                                 (user_id,)).fetchone()[0]
            if lines >= MAX_BASKET_LINES:
                raise InvalidInput(f"Your basket holds at most {MAX_BASKET_LINES} different items.")
            conn.execute("INSERT INTO basket_items(user_id, product_id, district_id, quantity, added_at) "
                         "VALUES (?, ?, ?, ?, ?)", (user_id, product_id, district_id, new, now_iso()))
        return new


def set_basket_quantity(conn, user_id, item_id, quantity):
    """Set a basket line's quantity; 0 removes it. Increases are checked against stock."""
    if quantity != 0:
        _check_quantity(quantity)
    with transaction(conn):
        row = conn.execute("SELECT * FROM basket_items WHERE id = ? AND user_id = ?",
                           (item_id, user_id)).fetchone()
        if row is None:
            raise NotFound("That item is no longer in your basket.")
        if quantity == 0:
            conn.execute("DELETE FROM basket_items WHERE id = ?", (item_id,))
            return 0
        if quantity > row["quantity"]:
            offer = get_offer(conn, row["product_id"], row["district_id"])
            if quantity > offer["available"]:
                raise SoldOut(f"Only {offer['available']} of {offer['name']} available.")
        conn.execute("UPDATE basket_items SET quantity = ? WHERE id = ?", (quantity, item_id))
        return quantity


def change_basket_quantity(conn, user_id, item_id, delta):
    """Add delta (+1/-1) to a basket line inside one transaction; returns the new quantity (0: removed)."""
    with transaction(conn):
        row = conn.execute("SELECT quantity FROM basket_items WHERE id = ? AND user_id = ?",
                           (item_id, user_id)).fetchone()
        if row is None:
            raise NotFound("That item is no longer in your basket.")
        return set_basket_quantity(conn, user_id, item_id, max(0, min(MAX_QUANTITY, row["quantity"] + delta)))


def clear_basket(conn, user_id):
    with transaction(conn):
        conn.execute("DELETE FROM basket_items WHERE user_id = ?", (user_id,))


# Services: orders ############################################################

def price_lines(conn, lines):
    """[(product_id, district_id, quantity)] -> (total_cents, [offer rows]) at today's prices."""
    offers = []
    for product_id, district_id, quantity in lines:
        _check_quantity(quantity)
        offers.append(get_offer(conn, product_id, district_id))
    return sum(o["price_cents"] * q for o, (_, _, q) in zip(offers, lines)), offers


def sold_out(offer, left):
    place = place_name(offer["city_name"], offer["district_name"])
    return SoldOut(f"Sorry, {offer['name']} in {place} is sold out." if not left
                   else f"Sorry, only {left} of {offer['name']} left in {place}.")


def buy_with_balance(conn, user_id, lines=None, *, expected_total_cents=None, checkout_key=None, owners=()):
    """Buy [(product_id, district_id, quantity)], or the whole basket (lines=None), with the balance.

    One transaction debits the ledger, marks the units sold, records the order,
    queues the delivery and the owners' note, and (for the basket) empties the
    basket. A checkout_key already used returns that order instead of buying
    again. Raises SoldOut, InsufficientBalance or PriceChanged and then changes nothing.
    """
    with transaction(conn):
        if checkout_key:
            done = conn.execute("SELECT id FROM orders WHERE checkout_key = ?", (checkout_key,)).fetchone()
            if done:
                return done["id"]
        user = get_user(conn, user_id)
        if user["is_banned"]:
            raise Banned()
        from_basket = lines is None
        if from_basket:
            lines = [(l.product_id, l.district_id, l.quantity) for l in get_basket(conn, user_id).lines]
        merged = {}
        for product_id, district_id, quantity in lines:
            _check_quantity(quantity)
            merged[(product_id, district_id)] = merged.get((product_id, district_id), 0) + quantity
        lines = [(p, d, q) for (p, d), q in merged.items()]
        if not lines:
            raise InvalidInput("Your basket is empty.")
        total, offers = price_lines(conn, lines)
        if expected_total_cents is not None and total != expected_total_cents:
            raise PriceChanged()
        for offer, (_, _, quantity) in zip(offers, lines):
            if offer["available"] < quantity:
                raise sold_out(offer, offer["available"])
        if user["balance_cents"] < total:
            raise InsufficientBalance(total - user["balance_cents"])
        now = now_iso()
        order_id = conn.execute(
            "INSERT INTO orders(user_id, status, total_cents, payment_method, checkout_key, "
            "created_at, paid_at) VALUES (?, 'paid', ?, 'balance', ?, ?, ?)",
            (user_id, total, checkout_key, now, now)).lastrowid
        for offer, (product_id, district_id, quantity) in zip(offers, lines):
            units = conn.execute(
                "SELECT id FROM stock_units WHERE product_id = ? AND district_id = ? "
                "AND status = 'available' ORDER BY id LIMIT ?", (product_id, district_id, quantity)).fetchall()
            if len(units) < quantity:   # (cannot happen after the check above; guards the invariant)
                raise sold_out(offer, len(units))
            for unit in units:
                conn.execute("UPDATE stock_units SET status = 'sold', order_id = ?, sold_at = ? "
                             "WHERE id = ? AND status = 'available'", (order_id, now, unit["id"]))
                conn.execute(
                    "INSERT INTO order_items(order_id, unit_id, product_id, product_name, place_name, "
                    "price_cents) VALUES (?, ?, ?, ?, ?, ?)",
                    (order_id, unit["id"], product_id, offer["name"],
                     place_name(offer["city_name"], offer["district_name"]), offer["price_cents"]))
        if from_basket:
            conn.execute("DELETE FROM basket_items WHERE user_id = ?", (user_id,))
        post_ledger(conn, user_id, -total, "purchase", f"order:{order_id}:balance",
                    reason=f"Order #{order_id}", order_id=order_id)
        enqueue_delivery(conn, order_id, first=True)
        count = sum(q for _, _, q in lines)
        who = esc(user["first_name"]) + (f" @{esc(user['username'])}" if user["username"] else "")
        alert_owners(conn, owners, f"🛒 Order #{order_id} paid from balance: {fmt_eur(total)}, "
                                   f"{count} item{'s' if count != 1 else ''}, by {who} (<code>{user_id}</code>)")
        log.info("order #%d paid from balance by user %d: %s, %d unit(s)", order_id, user_id, fmt_eur(total), count)
        return order_id


def format_content(content):
    """A unit's content for HTML: a lone code in <code> (tap to copy), anything else as text."""
    if "\n" not in content and " " not in content and len(content) <= 200 \
            and not re.match(r"(?i)https?://", content):
        return f"<code>{esc(content)}</code>"
    return esc(content)


CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096


def enqueue_delivery(conn, order_id, *, first=False):
    """Queue the messages that hand over an order's goods: a header, then each unit's content.

    Text-only units share messages up to Telegram's length limit; a unit with a
    photo gets its own photo message (with the content as caption when it fits).
    """
    order = conn.execute("SELECT o.*, u.balance_cents FROM orders o JOIN users u ON u.id = o.user_id "
                         "WHERE o.id = ?", (order_id,)).fetchone()
    items = conn.execute(
        "SELECT i.product_name, i.place_name, s.content, s.media FROM order_items i "
        "JOIN stock_units s ON s.id = i.unit_id WHERE i.order_id = ? ORDER BY i.id", (order_id,)).fetchall()
    chat = order["user_id"]
    n = len(items)
    if first:
        paid = "from your balance" if order["payment_method"] == "balance" else "in crypto"
        header = (f"✅ <b>Order #{order_id} is paid</b>: {n} item{'s' if n != 1 else ''}, "
                  f"{fmt_eur(order['total_cents'])} {paid}.\n"
                  f"Balance now: {fmt_eur(order['balance_cents'])}.\n\nYour items:")
    else:
        header = f"📨 <b>Order #{order_id}</b>: your items again."
    enqueue_message(conn, chat, header, order_id=order_id)
    block = ""
    for i, item in enumerate(items, 1):
        title = f"📦 Order #{order_id} ({i}/{n}): <b>{esc(item['product_name'])}</b> · {esc(item['place_name'])}"
        part = f"{title}\n{format_content(item['content'])}"
        if item["media"]:
            if block:
                enqueue_message(conn, chat, block, order_id=order_id)
                block = ""
            if tg_len(html_to_plain(part)) <= CAPTION_LIMIT:
                enqueue_message(conn, chat, part, photo=f"private:{item['media']}", order_id=order_id)
            else:
                enqueue_message(conn, chat, title, photo=f"private:{item['media']}", order_id=order_id)
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
            raise InvalidInput(f"Order #{order_id} is {order['status']}; it has nothing to deliver.")
        if conn.execute("SELECT 1 FROM outbox WHERE order_id = ? AND status = 'pending'",
                        (order_id,)).fetchone():
            return False
        enqueue_delivery(conn, order_id)
        return True


def get_order(conn, user_id, order_id):
    """One of the user's orders (someone else's is NotFound)."""
    row = conn.execute("SELECT * FROM orders WHERE id = ? AND user_id = ?", (order_id, user_id)).fetchone()
    if row is None:
        raise NotFound("No such order.")
    return row


def get_order_lines(conn, order_id):
    """An order's items grouped by product and place: [{product_name, place_name, quantity, price_cents}]."""
    return conn.execute(
        "SELECT product_name, place_name, count(*) AS quantity, price_cents FROM order_items "
        "WHERE order_id = ? GROUP BY product_id, place_name, price_cents ORDER BY min(id)",
        (order_id,)).fetchall()


def list_orders(conn, user_id, *, before_id=None, limit=10):
    """The user's orders, newest first, keyset-paginated by id."""
    return conn.execute(
        "SELECT o.*, (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items "
        "FROM orders o WHERE o.user_id = ? AND o.id < ? ORDER BY o.id DESC LIMIT ?",
        (user_id, before_id or 2 ** 62, limit)).fetchall()


def release_expired_reservations(conn):
    """Put units of lapsed reservations back on sale and expire their orders; returns units freed."""
    now = now_iso()
    with transaction(conn):
        orders = [r["order_id"] for r in conn.execute(
            "SELECT DISTINCT order_id FROM stock_units WHERE status = 'reserved' AND reserved_until < ?",
            (now,))]
        freed = conn.execute(
            "UPDATE stock_units SET status = 'available', order_id = NULL, reserved_until = NULL "
            "WHERE status = 'reserved' AND reserved_until < ?", (now,)).rowcount
        for order_id in orders:
            conn.execute("UPDATE orders SET status = 'expired' WHERE id = ? AND status = 'pending'",
                         (order_id,))
    if freed:
        log.info("released %d reserved unit(s) of %d unpaid order(s)", freed, len(orders))
    return freed


# Services: catalog import ####################################################

MAX_IMAGE_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = {b"\xff\xd8\xff": "jpg", b"\x89PNG\r\n\x1a\n": "png", b"GIF87a": "gif", b"GIF89a": "gif"}


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
    name = (secrets.token_hex(16) if private else hashlib.sha256(data).hexdigest()[:32]) + "." + kind
    path = folder / name
    if not path.exists():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return name


def media_path(media_dir, ref):
    """'public:<name>' / 'private:<name>' -> the file's path."""
    scope, _, name = ref.partition(":")
    if scope not in ("public", "private") or not re.fullmatch(r"[0-9a-f]{32}\.(jpg|png|gif|webp)", name):
        raise ValueError(f"bad media reference {ref!r}")
    return Path(media_dir) / scope / name


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

    def no_constants(name):
        raise ValueError(f"{name} is not a number")
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise CatalogError([f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"]) from None
    except (ValueError, RecursionError) as e:
        raise CatalogError([f"{path}: not valid JSON: {e}"]) from None


@dataclass
class CatalogPlan:
    cities: list          # [(name, [district names])]
    products: list        # [dict(name, description, price_cents, photo: (bytes, kind) | None)]
    units: list           # [dict(product, city, district, content, media: (bytes, kind) | None, where)]


def plan_catalog(data, base_dir):
    """Check a parsed catalog file completely, reading its images; raise CatalogError listing every problem."""
    errors = []
    base_dir = Path(base_dir)

    def err(where, message):
        errors.append(f"{where}: {message}")

    def text(where, obj, key, what, **kw):
        try:
            return clean_text(obj.get(key), what, **kw)
        except InvalidInput as e:
            err(f"{where}.{key}", str(e))

    def image(where, ref):
        if ref is None:
            return None
        if not isinstance(ref, str) or not ref.strip():
            return err(where, "must be a file path relative to the catalog file")
        path = (base_dir / ref).resolve()
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                return err(where, f"{ref} is larger than 10 MB")
            data = path.read_bytes()
        except OSError as e:
            return err(where, f"cannot read {ref}: {e.strerror}")
        kind = image_kind(data)
        if not kind:
            return err(where, f"{ref} is not a JPEG, PNG, GIF or WebP image")
        return data, kind

    if not isinstance(data, dict):
        raise CatalogError(["the catalog must be a JSON object with \"cities\" and \"products\""])
    unknown = set(data) - {"cities", "products"}
    if unknown:
        err("catalog", f"unknown keys {sorted(unknown)} (expected \"cities\" and \"products\")")
    cities, seen_cities = [], set()
    raw_cities = data.get("cities", [])
    if not isinstance(raw_cities, list):
        err("cities", "must be a list")
        raw_cities = []
    for i, c in enumerate(raw_cities):
        where = f"cities[{i}]"
        if not isinstance(c, dict):
            err(where, "must be an object with \"name\" and \"districts\"")
            continue
        name = text(where, c, "name", "The city name", max_len=64)
        if name in seen_cities:
            err(where, f"city {name!r} is listed twice")
        seen_cities.add(name)
        districts, seen = [], set()
        raw = c.get("districts", [])
        if not isinstance(raw, list):
            err(f"{where}.districts", "must be a list of names")
            raw = []
        for j, d in enumerate(raw):
            try:
                d = clean_text(d, "The district name", max_len=64)
            except InvalidInput as e:
                err(f"{where}.districts[{j}]", str(e))
                continue
            if d in seen:
                err(f"{where}.districts[{j}]", f"district {d!r} is listed twice")
            seen.add(d)
            districts.append(d)
        if name:
            cities.append((name, districts))
    products, units, seen_products = [], [], set()
    raw_products = data.get("products", [])
    if not isinstance(raw_products, list):
        err("products", "must be a list")
        raw_products = []
    for i, p in enumerate(raw_products):
        where = f"products[{i}]"
        if not isinstance(p, dict):
            err(where, "must be an object with \"name\", \"price\" and \"stock\"")
            continue
        extra = set(p) - {"name", "description", "price", "photo", "stock"}
        if extra:
            err(where, f"unknown keys {sorted(extra)}")
        name = text(where, p, "name", "The product name", max_len=64)
        if name in seen_products:
            err(where, f"product {name!r} is listed twice")
        seen_products.add(name)
        description = text(where, p, "description", "The description", max_len=800,
                           multiline=True, required=False)
        price = p.get("price")
        if isinstance(price, float) or isinstance(price, bool) or price is None:
            err(f"{where}.price", "must be a price in EUR like \"25.00\"")
            price_cents = None
        else:
            try:
                if isinstance(price, Decimal) and price != price.quantize(Decimal("0.01")):
                    raise InvalidInput(f"must have at most 2 decimals, got {price}")
                price_cents = parse_eur(price)
            except (InvalidInput, InvalidOperation) as e:
                err(f"{where}.price", str(e))
                price_cents = None
        photo = image(f"{where}.photo", p.get("photo"))
        products.append({"name": name, "description": description, "price_cents": price_cents,
                         "photo": photo, "has_photo": p.get("photo") is not None})
        stock = p.get("stock", [])
        if not isinstance(stock, list):
            err(f"{where}.stock", "must be a list")
            stock = []
        for j, s in enumerate(stock):
            w = f"{where}.stock[{j}]"
            if not isinstance(s, dict):
                err(w, "must be an object with \"city\", \"district\" and \"content\"")
                continue
            extra = set(s) - {"city", "district", "content", "media"}
            if extra:
                err(w, f"unknown keys {sorted(extra)}")
            city = text(w, s, "city", "The city", max_len=64)
            district = text(w, s, "district", "The district", max_len=64)
            content = text(w, s, "content", "The content", max_len=3500, multiline=True)
            media = image(f"{w}.media", s.get("media"))
            units.append({"product": name, "city": city, "district": district, "content": content,
                          "media": media, "where": w})
    if errors:
        raise CatalogError(errors)
    return CatalogPlan(cities, products, units)


def import_catalog(conn, data, base_dir, media_dir):
    """Import a parsed catalog file atomically and idempotently; return counts of what changed.

    Cities, districts and products match existing rows by name (a product's
    description, price and photo are updated to the file's). A unit whose
    product, district and content already exist, sold or not, is not added
    again, so re-importing a file never re-sells a code. Any problem raises
    CatalogError and nothing is imported. A unit listed twice in the file is
    added once (counted as units_repeated).
    """
    plan = plan_catalog(data, base_dir)
    counts = dict.fromkeys(["cities_added", "districts_added", "products_added", "products_updated",
                            "units_added", "units_present", "units_repeated"], 0)
    written = []

    def save(image, private):
        name = store_media(media_dir, image[0], image[1], private=private)
        written.append(Path(media_dir) / ("private" if private else "public") / name)
        return name
    try:
        with transaction(conn):
            city_ids, district_ids = {}, {}
            for row in conn.execute("SELECT id, name FROM cities"):
                city_ids[row["name"]] = row["id"]
            for row in conn.execute("SELECT d.id, d.name, c.name AS city FROM districts d "
                                    "JOIN cities c ON c.id = d.city_id"):
                district_ids[(row["city"], row["name"])] = row["id"]
            for name, districts in plan.cities:
                if name not in city_ids:
                    position = conn.execute("SELECT coalesce(max(position), 0) + 1 FROM cities").fetchone()[0]
                    city_ids[name] = conn.execute("INSERT INTO cities(name, position) VALUES (?, ?)",
                                                  (name, position)).lastrowid
                    counts["cities_added"] += 1
                for d in districts:
                    if (name, d) not in district_ids:
                        position = conn.execute("SELECT coalesce(max(position), 0) + 1 FROM districts "
                                                "WHERE city_id = ?", (city_ids[name],)).fetchone()[0]
                        district_ids[(name, d)] = conn.execute(
                            "INSERT INTO districts(city_id, name, position) VALUES (?, ?, ?)",
                            (city_ids[name], d, position)).lastrowid
                        counts["districts_added"] += 1
            missing = [f"{u['where']}.district: {u['district']!r} is not a district of {u['city']!r} "
                       "(list it under \"cities\")" for u in plan.units
                       if (u["city"], u["district"]) not in district_ids]
            if missing:
                raise CatalogError(missing)
            product_ids = {}
            for p in plan.products:
                row = conn.execute("SELECT * FROM products WHERE name = ?", (p["name"],)).fetchone()
                photo = save(p["photo"], private=False) if p["photo"] else None
                if row is None:
                    product_ids[p["name"]] = conn.execute(
                        "INSERT INTO products(name, description, price_cents, photo, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (p["name"], p["description"], p["price_cents"], photo, now_iso())).lastrowid
                    counts["products_added"] += 1
                    continue
                product_ids[p["name"]] = row["id"]
                new = (p["description"], p["price_cents"], photo if p["has_photo"] else row["photo"])
                if new != (row["description"], row["price_cents"], row["photo"]):
                    conn.execute("UPDATE products SET description = ?, price_cents = ?, photo = ? "
                                 "WHERE id = ?", (*new, row["id"]))
                    counts["products_updated"] += 1
            added = set()
            for u in plan.units:
                key = (product_ids[u["product"]], district_ids[(u["city"], u["district"])], u["content"])
                if key in added:
                    counts["units_repeated"] += 1   # the file lists the same unit twice
                    continue
                added.add(key)
                if conn.execute("SELECT 1 FROM stock_units WHERE product_id = ? AND district_id = ? "
                                "AND content = ?", key).fetchone():
                    counts["units_present"] += 1
                    continue
                media = save(u["media"], private=True) if u["media"] else None
                conn.execute("INSERT INTO stock_units(product_id, district_id, content, media, created_at) "
                             "VALUES (?, ?, ?, ?, ?)", (*key, media, now_iso()))
                counts["units_added"] += 1
    except BaseException:
        for path in written:
            referenced = conn.execute(
                "SELECT 1 FROM products WHERE photo = ? UNION SELECT 1 FROM stock_units WHERE media = ?",
                (path.name, path.name)).fetchone()
            if not referenced:
                path.unlink(missing_ok=True)
        raise
    return counts


# Web #########################################################################

def json_response(status, payload):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps(payload)


def make_app(shop):
    """The Bottle app: health check, public pages, static files, public product photos."""
    app = bottle.Bottle()
    app.config["catchall"] = True

    @app.hook("after_request")
    def security_headers():
        h = bottle.response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")

    @app.get("/healthz")
    def healthz():
        state = shop.health()
        return json_response(200 if state["status"] == "ok" else 503, state)

    @app.get("/")
    def index():
        conn = shop.db()
        return bottle.template("index", template_lookup=[str(TEMPLATES_DIR)], shop=shop,
                               name=get_setting(conn, "shop_name"), cities=list_cities(conn),
                               health=shop.health())

    @app.get("/static/<path:path>")
    def static(path):
        return bottle.static_file(path, root=str(STATIC_DIR), headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/media/<name:re:[0-9a-f]{32}\\.(jpg|png|gif|webp)>")
    def public_media(name):
        # Only product photos live here; unit media (the goods) are in media/private, never routed.
        return bottle.static_file(name, root=str(shop.config.media_dir / "public"),
                                  headers={"Cache-Control": "public, max-age=86400"})

    def error_page(error):
        if error.status_code >= 500:
            log.error("web: %s %s failed: %s", bottle.request.method, bottle.request.path,
                      error.exception or error.body, exc_info=error.exception)
        message = error.body if error.status_code < 500 else "Internal error; the owner can find it in the log."
        if bottle.request.path.startswith(("/api", "/healthz", "/webhook", "/sandbox")):
            bottle.response.content_type = "application/json"
            return json.dumps({"error": message})
        bottle.response.content_type = "text/html; charset=utf-8"
        return f"<!doctype html><title>{error.status_code}</title><h1>{error.status_code}</h1><p>{html.escape(str(message))}</p>"

    for code in (400, 403, 404, 405, 409, 413, 429, 500):
        app.error(code)(error_page)
    return app


# Bot #########################################################################

MENU_SHOP, MENU_BASKET, MENU_PROFILE = "🛒 Shop", "🧺 Basket", "👤 Profile"
MENU_TOPUP, MENU_ORDERS, MENU_HELP = "💰 Top up", "📦 Orders", "❓ Help"
MENU = [[MENU_SHOP, MENU_BASKET], [MENU_PROFILE, MENU_TOPUP], [MENU_ORDERS, MENU_HELP]]
COMMANDS = [("start", "Main menu"), ("shop", "Browse the shop"), ("basket", "Your basket"),
            ("refill", "Top up your balance"), ("profile", "Your balance and id"),
            ("orders", "Your orders"), ("help", "How this shop works")]
ORDERS_PAGE = 8


@dataclass
class Screen:
    """What one bot message shows: HTML text, inline buttons [[(label, data)]], optional photo ref."""
    text: str
    buttons: list = field(default_factory=list)
    photo: str = None


LIST_PAGE = 20   # buttons per page of cities, districts or products (Telegram allows 100 in all)


def paged(rows, page, data, back=None):
    """One page of one-button rows, with ◀️/▶️ to the neighbours (callback `data:<page>`) and back."""
    pages = max(1, -(-len(rows) // LIST_PAGE))
    page = min(max(page, 0), pages - 1)
    out = rows[page * LIST_PAGE:(page + 1) * LIST_PAGE]
    nav = ([("◀️", f"{data}:{page - 1}")] if page > 0 else []) + \
          ([("▶️", f"{data}:{page + 1}")] if page < pages - 1 else [])
    suffix = f" ({page + 1}/{pages})" if pages > 1 else ""
    return out + ([nav] if nav else []) + ([back] if back else []), suffix


def screen_cities(conn, page=0):
    cities = list_cities(conn)
    if not cities:
        return Screen("🛒 The shop is empty right now. Please come back later.", [[("🔄 Refresh", "cities")]])
    rows, suffix = paged([[(c["name"], f"city:{c['id']}")] for c in cities], page, "cities")
    return Screen(f"🛒 <b>Choose a city</b>{suffix}", rows)


def screen_districts(conn, city_id, page=0):
    city = get_city(conn, city_id)
    districts = list_districts(conn, city_id)
    back = [("⬅️ Back", "cities")]
    if not districts:
        return Screen(f"📍 Nothing is left in {esc(city['name'])}.", [back])
    rows, suffix = paged([[(d["name"], f"dist:{d['id']}")] for d in districts], page, f"city:{city_id}", back)
    return Screen(f"📍 <b>{esc(city['name'])}</b>: choose a district{suffix}", rows)


def screen_products(conn, district_id, page=0):
    district = get_district(conn, district_id)
    products = list_products(conn, district_id)
    back = [("⬅️ Back", f"city:{district['city_id']}")]
    place = esc(place_name(district["city_name"], district["name"]))
    if not products:
        return Screen(f"📦 Nothing is left in {place}.", [back])
    rows, suffix = paged([[(f"{p['name']} · {fmt_eur(p['price_cents'])}", f"prod:{p['id']}:{district_id}")]
                          for p in products], page, f"dist:{district_id}", back)
    return Screen(f"📦 <b>{place}</b>: choose a product{suffix}", rows)


def screen_product(conn, user_id, product_id, district_id):
    offer = get_offer(conn, product_id, district_id)
    in_basket = conn.execute("SELECT quantity FROM basket_items WHERE user_id = ? AND product_id = ? "
                             "AND district_id = ?", (user_id, product_id, district_id)).fetchone()
    photo = f"public:{offer['photo']}" if offer["photo"] else None
    facts = ["", f"💶 Price: <b>{fmt_eur(offer['price_cents'])}</b>",
             f"📍 {esc(place_name(offer['city_name'], offer['district_name']))}",
             f"📦 Available: {offer['available']}" if offer["available"] else "❌ Sold out here"]
    if in_basket:
        facts.append(f"🧺 In your basket: {in_basket['quantity']}")
    lines = [f"<b>{esc(offer['name'])}</b>"]
    if offer["description"]:
        room = (CAPTION_LIMIT if photo else TEXT_LIMIT) - tg_len(html_to_plain("\n".join(lines + facts))) - 1
        lines.append(esc(shorten(offer["description"], room)))
    lines += facts
    rows = []
    if offer["available"]:
        rows.append([("➕ Add to basket", f"add:{product_id}:{district_id}"),
                     ("⚡ Buy now", f"buy:{product_id}:{district_id}")])
    rows.append([("🧺 Basket", "basket"), ("⬅️ Back", f"dist:{district_id}")])
    return Screen("\n".join(lines), rows, photo)


def screen_basket(conn, user_id):
    basket = get_basket(conn, user_id)
    if not basket.lines:
        return Screen("🧺 Your basket is empty.", [[("🛒 Shop", "cities")]])
    text = ["🧺 <b>Your basket</b>", ""]
    rows = []
    for i, line in enumerate(basket.lines, 1):
        text.append(f"{i}. <b>{esc(line.name)}</b> · {esc(line.place)}\n"
                    f"    {line.quantity} × {fmt_eur(line.price_cents)} = {fmt_eur(line.total_cents)}")
        if line.available < line.quantity:
            text.append(f"    ⚠️ only {line.available} available now" if line.available
                        else "    ⚠️ sold out now")
        rows.append([("➖", f"dec:{line.item_id}"),
                     (f"{i}. {line.name} × {line.quantity}", f"prod:{line.product_id}:{line.district_id}"),
                     ("➕", f"inc:{line.item_id}"), ("🗑", f"del:{line.item_id}")])
    text += ["", f"Total: <b>{fmt_eur(basket.total_cents)}</b>"]
    rows.append([("🗑 Clear", "clear"), ("💳 Checkout", "checkout")])
    rows.append([("🛒 Continue shopping", "cities")])
    return Screen("\n".join(text), rows)


def screen_checkout(conn, user, lines, source):
    """Checkout for [(product_id, district_id, qty)]; source is 'b' (basket) or 'p:<pid>:<did>'."""
    total, offers = price_lines(conn, lines)
    text = ["💳 <b>Checkout</b>", ""]
    short = False
    for offer, (_, _, quantity) in zip(offers, lines):
        line = (f"• <b>{esc(offer['name'])}</b> · {esc(place_name(offer['city_name'], offer['district_name']))}"
                f" × {quantity} = {fmt_eur(offer['price_cents'] * quantity)}")
        if offer["available"] < quantity:
            short = True
            line += f" ⚠️ only {offer['available']} left" if offer["available"] else " ⚠️ sold out"
        text.append(line)
    text += ["", f"Total: <b>{fmt_eur(total)}</b>", f"Your balance: {fmt_eur(user['balance_cents'])}"]
    back = [("⬅️ Back", "basket" if source == "b" else "prod:" + source[2:])]
    if short:
        text += ["", "⚠️ Some items are not available in that quantity any more. Please change your basket."]
        return Screen("\n".join(text), [back])
    if user["balance_cents"] >= total:
        # A fresh nonce per checkout screen: a replayed update or a double tap of this button
        # finds the order it already made, while a later checkout in the same message is new.
        pay = f"pay:{secrets.token_hex(3)}:{source}:{total}"
        return Screen("\n".join(text), [[(f"💰 Pay {fmt_eur(total)} from balance", pay)], back])
    text += ["", f"Your balance is <b>{fmt_eur(total - user['balance_cents'])}</b> short. "
                 "Top up your balance, then come back to pay."]
    return Screen("\n".join(text), [[("💰 Top up", "topup")], back])


def screen_profile(conn, user):
    orders = conn.execute("SELECT count(*) FROM orders WHERE user_id = ? AND status = 'paid'",
                          (user["id"],)).fetchone()[0]
    name = esc(user["first_name"]) + (f" (@{esc(user['username'])})" if user["username"] else "")
    return Screen(f"👤 <b>Profile</b>\n\nName: {name}\nTelegram ID: <code>{user['id']}</code>\n"
                  f"Balance: <b>{fmt_eur(user['balance_cents'])}</b>\nOrders: {orders}",
                  [[("💰 Top up", "topup"), ("📦 Orders", "orders")]])


def screen_topup(conn, user):
    return Screen(f"💰 <b>Top up</b>\n\nYour balance: {fmt_eur(user['balance_cents'])}\n\n"
                  "Crypto top-ups are not switched on in this shop yet. "
                  "Please contact the shop owner to add funds.", [[("👤 Profile", "profile")]])


def screen_orders(conn, user_id, before_id=None):
    orders = list_orders(conn, user_id, before_id=before_id, limit=ORDERS_PAGE + 1)
    if not orders and not before_id:
        return Screen("📦 You have no orders yet.", [[("🛒 Shop", "cities")]])
    rows = [[(f"#{o['id']} · {o['created_at'][:10]} · {fmt_eur(o['total_cents'])} · {o['status']}",
              f"order:{o['id']}")] for o in orders[:ORDERS_PAGE]]
    nav = []
    if before_id:
        nav.append(("⏮ Newest", "orders"))
    if len(orders) > ORDERS_PAGE:
        nav.append(("Older ▶️", f"orders:{orders[ORDERS_PAGE - 1]['id']}"))
    return Screen("📦 <b>Your orders</b>", rows + ([nav] if nav else []))


def screen_order(conn, user_id, order_id):
    order = get_order(conn, user_id, order_id)
    text = [f"📦 <b>Order #{order['id']}</b> · {order['status']}", f"Placed {order['created_at'][:16].replace('T', ' ')} UTC", ""]
    for line in get_order_lines(conn, order_id):
        text.append(f"• <b>{esc(line['product_name'])}</b> · {esc(line['place_name'])} × {line['quantity']}"
                    f" = {fmt_eur(line['price_cents'] * line['quantity'])}")
    text += ["", f"Total: <b>{fmt_eur(order['total_cents'])}</b>"]
    rows = [[("📨 Send my items again", f"resend:{order_id}")]] if order["status"] == "paid" else []
    return Screen("\n".join(text), rows + [[("⬅️ Orders", "orders")]])


def screen_help(conn):
    text = f"❓ <b>{esc(get_setting(conn, 'shop_name'))}</b>\n\n{esc(get_setting(conn, 'help_text'))}"
    contact = get_setting(conn, "support_contact")
    if contact:
        text += f"\n\nSupport: {esc(contact)}"
    return Screen(text)


def inline_markup(buttons):
    if not buttons:
        return None
    markup = tg.InlineKeyboardMarkup()
    for row in buttons:
        markup.row(*[tg.InlineKeyboardButton(text, callback_data=data) for text, data in row])
    return markup


def main_menu():
    markup = tg.ReplyKeyboardMarkup(resize_keyboard=True, is_persistent=True)
    for row in MENU:
        markup.row(*[tg.KeyboardButton(label) for label in row])
    return markup


NO_PREVIEW = tg.LinkPreviewOptions(is_disabled=True)
# Failures of the link to Telegram itself, as opposed to Telegram refusing a request.
NETWORK_ERRORS = (requests.RequestException, apihelper.ApiHTTPException, apihelper.ApiInvalidJSONException)


def api_error(e):
    """(code, description) of a Telegram API failure."""
    return getattr(e, "error_code", None), getattr(e, "description", None) or str(e)


def send_photo_cached(shop, conn, chat_id, photo, caption, markup=None):
    """Send a photo ref, uploading its file once per bot and reusing Telegram's file_id after."""
    api, bot_id = shop.telegram, shop.config.bot_id
    row = conn.execute("SELECT file_id FROM telegram_files WHERE photo = ? AND bot_id = ?",
                       (photo, bot_id)).fetchone()
    if row:
        try:
            return api.send_photo(chat_id, row["file_id"], caption=caption, parse_mode="HTML",
                                  reply_markup=markup)
        except apihelper.ApiTelegramException as e:
            if e.error_code != 400 or "file" not in (e.description or "").lower():
                raise
            log.warning("Telegram no longer knows the file_id of %s; uploading it again", photo)
    with open(media_path(shop.config.media_dir, photo), "rb") as f:
        message = api.send_photo(chat_id, f, caption=caption, parse_mode="HTML", reply_markup=markup)
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO telegram_files(photo, bot_id, file_id) VALUES (?, ?, ?)",
                     (photo, bot_id, message.photo[-1].file_id))
    return message


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
    """What telebot does with errors: polling failures back off and log once a minute, not per try."""

    def __init__(self, shop):
        self.shop, self.failures, self.warn = shop, 0, Throttle(60)

    def handle(self, exception):
        if threading.current_thread() is not self.shop.threads.get("bot"):
            log.error("bot: an update handler failed", exc_info=exception)
            return True
        self.failures += 1
        code = getattr(exception, "error_code", None)
        if code == 409:
            reason = "another process is polling with this BOT_TOKEN (409 Conflict); run one shop per bot"
        elif code == 401:
            reason = "Telegram refused BOT_TOKEN (401 Unauthorized); check the token with @BotFather"
        else:
            reason = f"cannot get updates from Telegram ({api_error(exception)[1] if code else type(exception).__name__})"
        self.shop.bot_state = f"down: {reason}"
        if self.warn():
            log.log(logging.ERROR if code in (401, 409) else logging.WARNING, "bot: %s; retrying", reason)
        self.shop.stopping.wait(min(30.0, 0.5 * 2 ** min(self.failures, 6)))
        return True

    def recovered(self):
        if self.failures:
            log.info("bot: getting updates from Telegram again after %d failed tries", self.failures)
            self.failures = 0
            self.warn = Throttle(60)
            self.shop.bot_state = "running"


class ShopBot:
    """The Telegram adapter: parses updates, calls services, renders screens."""

    def __init__(self, shop):
        self.shop = shop
        self.bot = shop.telegram
        b = self.bot
        b.register_message_handler(self.on_start, commands=["start"], chat_types=["private"])
        for command, handler in (("shop", self.on_shop), ("basket", self.on_basket),
                                 ("refill", self.on_topup), ("profile", self.on_profile),
                                 ("orders", self.on_orders), ("help", self.on_help)):
            b.register_message_handler(handler, commands=[command], chat_types=["private"])
        menu = {MENU_SHOP: self.on_shop, MENU_BASKET: self.on_basket, MENU_PROFILE: self.on_profile,
                MENU_TOPUP: self.on_topup, MENU_ORDERS: self.on_orders, MENU_HELP: self.on_help}
        b.register_message_handler(lambda m: menu[m.text](m), chat_types=["private"],
                                   func=lambda m: m.text in menu)
        b.register_message_handler(self.on_other, chat_types=["private"],
                                   content_types=telebot.util.content_type_media)
        b.register_message_handler(self.on_group, func=lambda m: m.chat.type != "private",
                                   commands=["start"])
        b.register_callback_query_handler(self.on_callback, func=lambda c: True)

    # Plumbing

    def user_of(self, conn, tg_user):
        return touch_user(conn, {"id": tg_user.id, "first_name": tg_user.first_name,
                                 "username": tg_user.username, "language_code": tg_user.language_code})

    def guard(self, message):
        """The shopper's row, or None (after at most one polite refusal) when banned."""
        conn = self.shop.db()
        user = self.user_of(conn, message.from_user)
        if user["is_banned"]:
            if should_tell_banned(conn, user["id"]):
                self.reply(message.chat.id, Banned.__doc__, reply_markup=tg.ReplyKeyboardRemove())
            return None
        return user

    @staticmethod
    def api(fn, *args, **kw):
        """Call the Bot API; on a short 429 wait it out once (the shopper is waiting for this answer)."""
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
        if screen.photo:
            self.shop.limiter.note(chat_id)
            try:
                return self.api(send_photo_cached, self.shop, self.shop.db(), chat_id, screen.photo, screen.text,
                                inline_markup(screen.buttons))
            except OSError as e:
                log.warning("bot: photo %s cannot be read (%s); showing the screen without it",
                            screen.photo, e.strerror)
        return self.reply(chat_id, screen.text, parse_mode="HTML",
                          reply_markup=reply_keyboard or inline_markup(screen.buttons),
                          link_preview_options=NO_PREVIEW)

    def show(self, message, screen):
        """Replace the navigation message with a screen: edit in place, or swap when a photo is involved."""
        chat_id = message.chat.id
        has_photo = bool(getattr(message, "photo", None))
        if not has_photo and not screen.photo:
            try:
                self.api(self.bot.edit_message_text, screen.text, chat_id, message.message_id,
                         parse_mode="HTML", reply_markup=inline_markup(screen.buttons),
                         link_preview_options=NO_PREVIEW)
                return
            except apihelper.ApiTelegramException as e:
                if "not modified" in (e.description or ""):
                    return
                if "not found" not in (e.description or "") and "no text" not in (e.description or ""):
                    raise
        self.send(chat_id, screen)   # first, so a failure leaves the old screen in place
        try:
            self.bot.delete_message(chat_id, message.message_id)
        except apihelper.ApiTelegramException as e:
            log.debug("could not delete message %s: %s", message.message_id, e.description)

    # Messages

    def safely(handler):
        def wrapper(self, message):
            try:
                if self.guard(message) is not None:
                    handler(self, message)
            except ShopError as e:
                self.reply(message.chat.id, str(e))
            except NETWORK_ERRORS as e:
                log.warning("bot: could not answer user %s, Telegram unreachable: %s", message.from_user.id,
                            type(e).__name__)
                return
            except Exception:
                log.exception("bot: handling %r from user %s failed", (message.text or "")[:40],
                              message.from_user.id)
                try:
                    self.reply(message.chat.id, "Something went wrong on our side. Please try again.")
                except Exception:
                    log.warning("bot: could not tell user %s about the failure", message.from_user.id)
        wrapper.__name__ = handler.__name__
        return wrapper

    @safely
    def on_start(self, message):
        conn = self.shop.db()
        welcome = f"👋 <b>{esc(get_setting(conn, 'shop_name'))}</b>\n\n{esc(get_setting(conn, 'welcome_text'))}"
        self.reply(message.chat.id, welcome, parse_mode="HTML", reply_markup=main_menu())

    @safely
    def on_shop(self, message):
        self.send(message.chat.id, screen_cities(self.shop.db()))

    @safely
    def on_basket(self, message):
        self.send(message.chat.id, screen_basket(self.shop.db(), message.from_user.id))

    @safely
    def on_profile(self, message):
        conn = self.shop.db()
        self.send(message.chat.id, screen_profile(conn, get_user(conn, message.from_user.id)))

    @safely
    def on_topup(self, message):
        conn = self.shop.db()
        self.send(message.chat.id, screen_topup(conn, get_user(conn, message.from_user.id)))

    @safely
    def on_orders(self, message):
        self.send(message.chat.id, screen_orders(self.shop.db(), message.from_user.id))

    @safely
    def on_help(self, message):
        self.send(message.chat.id, screen_help(self.shop.db()), reply_keyboard=main_menu())

    @safely
    def on_other(self, message):
        self.reply(message.chat.id, "Please use the menu below.", reply_markup=main_menu())

    def on_group(self, message):
        try:
            self.bot.reply_to(message, "I work in private chats: open a chat with me to shop.")
        except apihelper.ApiTelegramException as e:
            log.debug("could not answer in group %s: %s", message.chat.id, e.description)

    del safely

    # Buttons

    def on_callback(self, call):
        alert = None
        try:
            conn = self.shop.db()
            user = self.user_of(conn, call.from_user)
            if user["is_banned"]:
                alert = Banned.__doc__ if should_tell_banned(conn, user["id"]) else None
            elif call.message is None or not getattr(call.message, "chat", None):
                alert = "This menu is too old. Send /shop to start again."
            else:
                alert = self.dispatch(conn, user, call)
        except ShopError as e:
            alert = str(e)
        except NETWORK_ERRORS as e:
            log.warning("bot: could not answer a button of user %s, Telegram unreachable: %s",
                        call.from_user.id, type(e).__name__)
            return
        except Exception:
            log.exception("bot: button %r from user %s failed", call.data, call.from_user.id)
            alert = "Something went wrong on our side. Please try again."
        if alert:
            alert = shorten(alert, 200)   # Telegram refuses longer notices, leaving the button spinning
        try:
            self.bot.answer_callback_query(call.id, text=alert, show_alert=bool(alert and len(alert) > 60))
        except (apihelper.ApiTelegramException, *NETWORK_ERRORS) as e:
            log.debug("could not answer callback: %s", e)

    def dispatch(self, conn, user, call):
        """Run one button press; returns a short notice for the shopper, or None."""
        verb, _, rest = (call.data or "").partition(":")
        args = rest.split(":") if rest else []
        if not all(re.fullmatch(r"\d{1,18}|[bp]|[0-9a-f]{6}", a) for a in args):
            return "That button is not valid any more."
        ints = [int(a) if a.isdigit() else a for a in args]
        uid, message = user["id"], call.message
        show = lambda screen: self.show(message, screen)
        try:
            if verb == "cities" and len(ints) <= 1:
                show(screen_cities(conn, *ints))
            elif verb == "city" and len(ints) in (1, 2):
                show(screen_districts(conn, *ints))
            elif verb == "dist" and len(ints) in (1, 2):
                show(screen_products(conn, *ints))
            elif verb == "prod" and len(ints) == 2:
                show(screen_product(conn, uid, *ints))
            elif verb == "add" and len(ints) == 2:
                quantity = add_to_basket(conn, uid, *ints)
                show(screen_product(conn, uid, *ints))
                return f"Added to your basket ({quantity} there now)."
            elif verb == "buy" and len(ints) == 2:
                show(screen_checkout(conn, user, [(*ints, 1)], f"p:{ints[0]}:{ints[1]}"))
            elif verb == "basket":
                show(screen_basket(conn, uid))
            elif verb in ("inc", "dec", "del") and len(ints) == 1:
                try:
                    if verb == "del":
                        set_basket_quantity(conn, uid, ints[0], 0)
                    else:
                        change_basket_quantity(conn, uid, ints[0], 1 if verb == "inc" else -1)
                finally:
                    show(screen_basket(conn, uid))
            elif verb == "clear":
                clear_basket(conn, uid)
                show(screen_basket(conn, uid))
            elif verb == "checkout":
                lines = [(l.product_id, l.district_id, l.quantity) for l in get_basket(conn, uid).lines]
                if not lines:
                    show(screen_basket(conn, uid))
                    return "Your basket is empty."
                show(screen_checkout(conn, user, lines, "b"))
            elif verb == "pay" and len(args) in (3, 5) and len(args[0]) == 6:
                return self.pay(conn, user, message, args[0], ints[1:])
            elif verb == "orders":
                show(screen_orders(conn, uid, ints[0] if ints else None))
            elif verb == "order" and len(ints) == 1:
                show(screen_order(conn, uid, ints[0]))
            elif verb == "resend" and len(ints) == 1:
                queued = resend_delivery(conn, uid, ints[0])
                return "Your items are on their way." if queued else "Your items are already on their way."
            elif verb == "profile":
                show(screen_profile(conn, user))
            elif verb == "topup":
                show(screen_topup(conn, user))
            else:
                return "That button is not valid any more."
        except NotFound as e:
            return str(e)
        return None

    def pay(self, conn, user, message, nonce, ints):
        """Pay a checkout screen from the balance; the screen's message and nonce make it idempotent."""
        uid = user["id"]
        if ints[0] == "b":
            lines, expected, back = None, ints[1], [[("🧺 Basket", "basket")]]
        else:
            lines, expected = [(ints[1], ints[2], 1)], ints[3]
            back = [[("⬅️ Back", f"prod:{ints[1]}:{ints[2]}")]]
        try:
            order_id = buy_with_balance(conn, uid, lines, expected_total_cents=expected,
                                        checkout_key=f"{message.chat.id}:{message.message_id}:{nonce}",
                                        owners=self.shop.config.admin_ids)
        except (SoldOut, PriceChanged, InsufficientBalance) as e:
            self.show(message, Screen(f"⚠️ {esc(e)}", back))
            return str(e)
        order = get_order(conn, uid, order_id)
        self.show(message, Screen(f"✅ Thank you! {fmt_eur(order['total_cents'])} paid from your balance.\n"
                                  f"Your items for order #{order_id} are on their way.",
                                  [[("📦 Orders", "orders"), ("🛒 Shop", "cities")]]))
        return f"Order #{order_id} paid."


# Outbox sender ###############################################################

class RateLimiter:
    """Token buckets for Telegram's flood limits: one for the whole bot, one per chat.

    The outbox sender asks before each message; the bot's direct replies are
    noted too, so a delivery right after a reply does not overrun the chat.
    The rates sit a little under Telegram's so that network jitter does not trip them.
    """

    def __init__(self, per_second=29.0, chat_per_second=0.95, chat_burst=3):
        self.rate, self.chat_rate, self.chat_burst = per_second, chat_per_second, chat_burst
        self.tokens, self.stamp = 1.0, float("-inf")
        self.chats = {}   # chat_id -> (tokens, stamp, blocked_until)
        self.lock = threading.Lock()

    def _chat(self, chat_id, now):
        tokens, stamp, blocked = self.chats.get(chat_id, (self.chat_burst, now, 0.0))
        return min(self.chat_burst, tokens + (now - stamp) * self.chat_rate), blocked

    def acquire(self, chat_id, now=None):
        """Take a slot for a message to chat_id and return 0, or return the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, blocked = self._chat(chat_id, now)
            global_tokens = min(1.0, self.tokens + (now - self.stamp) * self.rate)
            wait = max(blocked - now, (1 - tokens) / self.chat_rate, (1 - global_tokens) / self.rate, 0.0)
            if wait > 1e-6:   # (float dust from the refill arithmetic is not a wait)
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
            global_tokens = min(1.0, self.tokens + (now - self.stamp) * self.rate)
            self._take(chat_id, now, max(tokens, 1.0), blocked, max(global_tokens, 1.0))

    def _take(self, chat_id, now, tokens, blocked, global_tokens):
        self.chats[chat_id] = (tokens - 1, now, blocked)
        self.tokens, self.stamp = global_tokens - 1, now
        if len(self.chats) > 10000:
            self.chats = {c: v for c, v in self.chats.items()
                          if v[0] + (now - v[1]) * self.chat_rate < self.chat_burst or v[2] > now}

    def block(self, chat_id, seconds, now=None):
        """Telegram said 429 retry_after: nothing to this chat for `seconds`, then one message."""
        until = (time.monotonic() if now is None else now) + seconds
        with self.lock:
            self.chats[chat_id] = (1.0, until, until)


OUTBOX_GIVE_UP_SECONDS = 24 * 3600


class OutboxSender:
    """Sends pending outbox rows in order per chat within Telegram's limits; survives restarts.

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
        conn = connect(self.shop.config.shop_db)
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
        """Hand every sendable head-of-chat row to a worker; return seconds until worth looking again."""
        rows = conn.execute(
            "SELECT o.id, o.chat_id FROM outbox o JOIN (SELECT chat_id, min(id) AS id FROM outbox "
            "WHERE status = 'pending' GROUP BY chat_id) h ON h.id = o.id "
            "WHERE o.next_attempt_at <= ? ORDER BY o.id LIMIT 200", (now_iso(),)).fetchall()
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
            # Read again: the list dispatch() worked from may be older than a send that just finished.
            row = conn.execute("SELECT * FROM outbox WHERE id = ? AND status = 'pending' AND next_attempt_at <= ?",
                               (row_id, now_iso())).fetchone()
            if row is not None:
                self.send(conn, row)
        except Exception:
            log.exception("outbox: message #%d to chat %d failed unexpectedly", row_id, chat_id)
            if row is not None:
                self.retry(conn, row, "unexpected error")
        finally:
            with self.lock:
                self.in_flight.discard(chat_id)
            outbox_ready.set()

    def send(self, conn, row):
        api = self.shop.telegram
        markup = tg.InlineKeyboardMarkup.de_json(row["reply_markup"]) if row["reply_markup"] else None
        try:
            if row["photo"]:
                message = send_photo_cached(self.shop, conn, row["chat_id"], row["photo"], row["text"] or None, markup)
            else:
                message = api.send_message(row["chat_id"], row["text"], parse_mode="HTML",
                                           reply_markup=markup, link_preview_options=NO_PREVIEW)
        except apihelper.ApiTelegramException as e:
            code, description = api_error(e)
            if code == 429:
                retry_after = int(((e.result_json or {}).get("parameters") or {}).get("retry_after") or 5)
                self.limiter.block(row["chat_id"], retry_after)
                self.reschedule(conn, row, retry_after, f"429: {description}", count=False)
            elif code in (401, 404):
                if self.outage_log():
                    log.error("outbox: Telegram answers %s %s to every message: check BOT_TOKEN and "
                              "TELEGRAM_API_URL; messages wait until then", code, description)
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
        with transaction(conn):
            conn.execute("UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1, "
                         "telegram_message_id = ?, last_error = NULL WHERE id = ?",
                         (now_iso(), message.message_id, row["id"]))

    def reschedule(self, conn, row, delay, error, count=True):
        with transaction(conn):
            conn.execute("UPDATE outbox SET next_attempt_at = ?, attempts = attempts + ?, last_error = ? "
                         "WHERE id = ?", (now_iso(delay), int(count), error, row["id"]))

    def retry(self, conn, row, error):
        if parse_iso(row["created_at"]) < datetime.now(timezone.utc) - timedelta(seconds=OUTBOX_GIVE_UP_SECONDS):
            return self.fail(conn, row, f"gave up after {row['attempts'] + 1} attempts: {error}")
        delay = min(600.0, 2.0 ** min(row["attempts"], 10)) * random.uniform(0.5, 1.0)
        if self.outage_log():
            log.warning("outbox: cannot reach Telegram (%s); retrying, nothing is lost", error)
        self.reschedule(conn, row, delay, error)

    def fail(self, conn, row, error):
        owners = self.shop.config.admin_ids
        with transaction(conn):
            first = row["order_id"] and not conn.execute(
                "SELECT 1 FROM outbox WHERE order_id = ? AND status = 'failed'", (row["order_id"],)).fetchone()
            conn.execute("UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ? "
                         "WHERE id = ?", (error, row["id"]))
            if first and row["chat_id"] not in owners:
                alert_owners(conn, owners, f"⚠️ Order #{row['order_id']}: a delivery message to user "
                                           f"<code>{row['chat_id']}</code> failed: {esc(error)}")
        level = logging.WARNING if error.startswith("403") else logging.ERROR
        log.log(level, "outbox: message #%d to chat %d failed for good: %s%s", row["id"], row["chat_id"],
                error, f" (order #{row['order_id']})" if row["order_id"] else "")


def network_reason(e):
    """A network failure in words without its URL (which holds the bot token and the message)."""
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    detail = errno.group(0) if errno else re.sub(r"\S*://\S*|/bot\S*", "…", text)[:120]
    return f"{type(e).__name__}: {detail}"


# Scheduler ###################################################################

def make_scheduler(shop):
    """Background jobs; each opens its own connection and logs instead of raising."""
    scheduler = BackgroundScheduler(timezone=timezone.utc,
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 60})

    def job(fn):
        def run():
            conn = connect(shop.config.shop_db)
            try:
                fn(conn)
            except Exception:
                log.exception("job %s failed; it runs again on schedule", fn.__name__)
            finally:
                conn.close()
        run.__name__ = fn.__name__
        return run

    def prune_outbox(conn):
        with transaction(conn):
            n = conn.execute("DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?",
                             (now_iso(-90 * 86400),)).rowcount
        if n:
            log.info("pruned %d sent outbox message(s) older than 90 days", n)

    def verify_ledger(conn):
        for user_id, cached, total in check_ledger(conn):
            log.error("ledger: user %d has a cached balance of %s but ledger rows summing to %s; "
                      "the database was changed outside the shop", user_id, cents_to_str(cached), cents_to_str(total))

    scheduler.add_job(job(release_expired_reservations), "interval", seconds=30, id="reservations")
    scheduler.add_job(job(verify_ledger), "interval", hours=1, id="verify_ledger",
                      next_run_time=datetime.now(timezone.utc) + timedelta(minutes=1))
    scheduler.add_job(job(prune_outbox), "interval", hours=24, id="prune_outbox")
    return scheduler


# Runtime #####################################################################

class StartupError(Exception):
    """The shop cannot start."""


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

    def db(self):
        """This thread's connection to the shop database."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.config.shop_db)
        return conn

    @property
    def url(self):
        """The local address the web server answers on."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{'[%s]' % host if ':' in host else host}:{self.config.port}"

    def start(self):
        c = self.config
        try:
            conn = init_db(c.shop_db)
        except (DatabaseError, sqlite3.Error, OSError) as e:
            raise StartupError(str(e)) from None
        try:
            c.media_dir.joinpath("public").mkdir(parents=True, exist_ok=True)
            c.media_dir.joinpath("private").mkdir(parents=True, exist_ok=True)
            if c.sandbox and self.demo and catalog_is_empty(conn):
                import seed_catalog
                counts = seed_catalog.load_demo(conn, c.media_dir, importer=import_catalog)
                log.info("sandbox: loaded the demo catalog (%d products, %d units)",
                         counts["products_added"], counts["units_added"])
        except (OSError, ShopError) as e:
            raise StartupError(f"cannot prepare {c.media_dir}: {e}") from None
        finally:
            conn.close()
        proxy = {"trusted_proxy": c.trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto x-forwarded-host",
                 "clear_untrusted_proxy_headers": True} if c.trusted_proxy else {}
        self._web_map = {}
        try:
            self.server = waitress.create_server(make_app(self), map=self._web_map, host=c.host, port=c.port,
                                                 threads=8, ident="shop", channel_timeout=60, **proxy)
        except OSError as e:
            raise StartupError(f"cannot listen on {c.host}:{c.port}: {e.strerror}"
                               " (is the shop already running? set PORT)") from None
        # Closing the server's sockets must happen in its own loop thread; this trigger gets us there.
        self._web_wake = waitress.trigger.trigger(self._web_map)
        self._thread("web", self.server.run)
        self.scheduler = make_scheduler(self)
        self.scheduler.start()
        if c.bot_token:
            apihelper.API_URL = c.telegram_api_url + "/bot{0}/{1}"
            apihelper.FILE_URL = c.telegram_api_url + "/file/bot{0}/{1}"
            self.polling_errors = PollingErrors(self)
            self.telegram = PollingBot(c.bot_token, threaded=True, num_threads=6,
                                       exception_handler=self.polling_errors)
            ShopBot(self)
            self.sender = OutboxSender(self, self.limiter)
            self.sender.start()
            self.bot_state = "starting"
            self._thread("bot", self._run_bot)
        else:
            log.info("bot: off (set BOT_TOKEN to connect the Telegram bot)")
        return self

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
                    log.error("bot: Telegram refused BOT_TOKEN (%s); check the token with @BotFather",
                              e.description)
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
            self.telegram.set_my_commands([tg.BotCommand(c, d) for c, d in COMMANDS])
        except Exception as e:
            log.warning("bot: could not register the command list: %s", e)
        # polling() asks getMe again for the username unless it is cached; an outage at that
        # moment would bypass our error handling.
        self.telegram._user = me
        self.bot_username = me.username
        self.bot_state = "running"
        log.info("bot: @%s is polling for updates", me.username)
        self.telegram.infinity_polling(timeout=30, long_polling_timeout=25, logger_level=logging.ERROR,
                                       allowed_updates=["message", "callback_query"])

    def health(self):
        state = {"status": "ok", "mode": "sandbox" if self.config.sandbox else "live", "version": __version__}
        try:
            conn = self.db()
            conn.execute("SELECT 1 FROM settings LIMIT 1").fetchall()
            state["database"] = "ok"
            state["outbox"] = outbox_counts(conn)
        except sqlite3.Error as e:
            state["database"] = f"error: {e}"
        state["scheduler"] = "running" if self.scheduler and self.scheduler.running else "down"
        state["bot"] = self.bot_state
        if self.telegram and self.telegram.last_poll is not None:
            # A long poll returns at least every 25 s when Telegram is reachable.
            if time.monotonic() - self.telegram.last_poll > 60 and not self.bot_state.startswith("down"):
                state["bot"] = "down: no answer from Telegram for over a minute"
            if not self.threads["bot"].is_alive() and not self.stopping.is_set():
                state["bot"] = "down: polling stopped"
        if self.sender:
            state.setdefault("outbox", {})["sender"] = "running" if self.sender.alive() else "down"
        down = (state["database"] != "ok" or state["scheduler"] != "running"
                or state["bot"].startswith("down") or (self.sender and not self.sender.alive()))
        if down:
            state["status"] = "down"
        return state

    def stop(self):
        """Stop everything; returns within a few seconds even with a long poll in flight."""
        self.stopping.set()
        if self.telegram:
            self.telegram.stop_polling()
        if self.sender:
            self.sender.stop()
        if self.scheduler and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.server:
            self.server.task_dispatcher.shutdown(timeout=2)   # lets requests in flight finish
            self._web_wake.pull_trigger(lambda: waitress.wasyncore.close_all(self._web_map))
        for name in ("web", "bot"):
            if name in self.threads:
                self.threads[name].join(1.0)


# Command line ################################################################

def parse_args(argv):
    epilog = ("commands (run without one to start the shop):\n"
              "  balance ID AMOUNT REASON  credit (20.00) or debit (-5.00) a shopper's balance\n"
              "  set [KEY VALUE]           show the settings, or change one "
              f"({', '.join(SETTING_RULES)})\n\n"
              "Configuration comes from the environment and a .env file in the working directory "
              "(the environment wins):\n" + "\n".join(
                  f"  {name:<24}{help_}" + (f" (default {default})" if default else "")
                  for name, (help_, default) in ENV_VARS.items()))
    parser = argparse.ArgumentParser(
        prog="shop.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog,
        description="Run the Telegram shop: web server, bot, outbox sender and scheduler in one process. "
                    "With no NOWPAYMENTS_API_KEY it runs in sandbox mode with a demo catalog.")
    parser.add_argument("--host", help="address to listen on (overrides HOST)")
    parser.add_argument("--port", help="port to listen on (overrides PORT)")
    parser.add_argument("--db", help="SQLite database file (overrides SHOP_DB)")
    parser.add_argument("--env-file", default=".env", help="file with VAR=value lines (default .env)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (overrides LOG_LEVEL)")
    parser.add_argument("--no-demo", action="store_true",
                        help="in sandbox mode, do not load the demo catalog into an empty shop")
    parser.add_argument("--version", action="version", version=f"shop.py {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="")
    balance = commands.add_parser("balance", help="credit or debit a shopper's balance")
    balance.add_argument("user_id", help="the shopper's Telegram id (👤 Profile shows it)")
    balance.add_argument("amount", help="EUR to add, like 20.00; a leading - takes money off")
    balance.add_argument("reason", help="why (kept in the ledger)")
    setting = commands.add_parser("set", help="show or change shop settings")
    setting.add_argument("key", nargs="?", choices=list(SETTING_RULES))
    setting.add_argument("value", nargs="?")
    return parser.parse_args(argv)


def run_command(args, config):
    """The owner's one-off commands; returns the exit status."""
    try:
        conn = init_db(config.shop_db)
    except (DatabaseError, sqlite3.Error) as e:
        print(f"shop.py: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "balance":
            if not re.fullmatch(r"\d{1,20}", args.user_id):
                raise InvalidInput(f"The user id must be a Telegram id (digits), got {args.user_id!r}.")
            user_id, amount = int(args.user_id), args.amount.strip()
            try:
                cents = -parse_eur(amount[1:]) if amount.startswith("-") else parse_eur(amount.lstrip("+"))
            except InvalidInput as e:
                raise InvalidInput(f"The amount {e}.") from None
            get_user(conn, user_id)
            adjust_balance(conn, user_id, cents, args.reason)
            print(f"{fmt_eur(cents)} for user {user_id}: balance now {fmt_eur(get_user(conn, user_id)['balance_cents'])}")
        elif args.key and args.value is None:
            print(get_setting(conn, args.key))
        elif args.key:
            set_setting(conn, args.key, args.value)
            print(f"{args.key} set")
        else:
            for key in SETTING_RULES:
                print(f"{key}: {get_setting(conn, key)!r}")
        return 0
    except NotFound:
        print(f"shop.py: user {args.user_id} has not talked to the bot yet (they must send /start first)",
              file=sys.stderr)
    except ShopError as e:
        print(f"shop.py: {e}", file=sys.stderr)
    finally:
        conn.close()
    return 1


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_config(env_file=args.env_file, overrides={
            "HOST": args.host, "PORT": args.port, "SHOP_DB": args.db, "LOG_LEVEL": args.log_level})
    except ConfigError as e:
        print(f"shop.py: configuration error: {e}", file=sys.stderr)
        return 2
    if args.command:
        return run_command(args, config)
    setup_logging(config)
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
    base = shop.url
    if config.sandbox:
        log.info("SANDBOX mode (no NOWPAYMENTS_API_KEY): no real payments are taken")
    log.info("shop is running: storefront %s/  health %s/healthz  database %s", base, base,
             Path(config.shop_db).resolve())
    stop.wait()
    log.info("stopping")
    shop.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
