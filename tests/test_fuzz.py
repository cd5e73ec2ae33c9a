"""Fuzz: generated inputs for everything the shop parses, through its real entry points.

Amounts (parse_eur, the top-up amount typed in the bot or sent to the API), /start payloads through
the Bot API stand-in, Mini App initData (directly and over HTTP), IPN bodies and signatures over
HTTP, catalog files and ZIPs (directly and uploaded in the admin), and the admin's forms and query
parameters. The properties: never a crash or a 500, always a clear answer, and nothing changes
when the input is refused. Deterministic (derandomize) and bounded (max_examples), so CI runs the
same examples every time.
"""

import io
import json
import logging
import string
import time
import zipfile
from decimal import Decimal, InvalidOperation

import pytest
import requests
from hypothesis import HealthCheck, assume, given, note, settings, strategies as st

import shop
from conftest import (
    ADMIN_PASSWORD,
    HOSTILE,
    HOSTILE_IMAGES,
    TOKEN,
    free_port,
    news,
    order_payment,
    png,
    rows,
    seed,
    snapshot,
    topup_payment,
    user,
    write_catalog,
)
from harness import AdminClient

pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")]


def fuzz(examples):
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# Shared strategies ##########################################################

# Text that has broken parsers before: controls, NUL, bidi marks, zero-width, non-ASCII digits,
# HTML and Markdown specials, emoji and astral characters, very long runs.
SPECIAL = [
    "",
    " ",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\u200b",
    "\u202e",
    "\ufeff",
    "<b>",
    "&amp;",
    "*_[`",
    "'",
    '"',
    "\\",
    "%",
    "%00",
    "%%",
    "&",
    "=",
    "+",
    "€",
    "😀",
    "𝟓",
    "٣",
    "５",
    "ⅷ",
    "½",
    "NaN",
    "Infinity",
    "-0",
    "1e3",
    "0x10",
    "9" * 40,
    "1" * 20,
    "-" * 10,
    "../",
    "/etc/passwd",
    "a" * 300,
]
weird_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=40),
    st.lists(st.sampled_from(SPECIAL), max_size=4).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=200),
)

amount_like = st.one_of(
    weird_text,
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.builds(
        lambda pre, euros, sep, cents, post: f"{pre}{euros}{sep}{cents}{post}",
        st.sampled_from(["", " ", "€", "€ ", "EUR ", "eur", "-", "+", "\u00a0"]),
        st.integers(0, 10**10).map(str),
        st.sampled_from(["", ".", ",", ". ", "..", "'"]),
        st.sampled_from(["", "0", "5", "50", "05", "500", "99", "٣"]),
        st.sampled_from(["", " ", "€", " EUR", " euros", "euro", "\u00a0€", " $"]),
    ),
)

# JSON values of every shape (Python objects json.dumps can write).
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    weird_text,
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(weird_text, kids, max_size=4)
    ),
    max_leaves=12,
)

# JSON number tokens as a provider (or a forger) might write them.
number_tokens = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "0.0",
            "1",
            "-1",
            "25",
            "25.00",
            "0.0004",
            "0.0004000",
            "4e-4",
            "1e-7",
            "1e21",
            "1E400",
            "-1e400",
            "1e30",
            "123456789012345678901234567890",
            "1e999999999",
            "9" * 400,
            "0." + "0" * 300 + "1",
            "1.5e-320",
        ]
    ),
    st.integers(-(2**80), 2**80).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
)


@fuzz(400)
@given(
    value=st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            number_tokens.map(shop.Num),
            weird_text,
            st.text(max_size=8),
        ),  # what the shop encodes: never floats
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.dictionaries(
                st.one_of(weird_text, st.text(st.characters(codec="utf-8"), max_size=3)),
                kids,
                max_size=5,
            ),
        ),
        max_leaves=16,
    ),
    sort_keys=st.booleans(),
    js_numbers=st.booleans(),
)
def test_the_quick_json_encoder_writes_exactly_what_the_careful_one_writes(
    value, sort_keys, js_numbers
):
    """IPN signatures are computed over encode_json; its quick way must agree with the careful
    one."""
    assert shop.encode_json(
        value, sort_keys=sort_keys, js_numbers=js_numbers
    ) == shop._encode_json_carefully(value, sort_keys=sort_keys, js_numbers=js_numbers)


# The shops the tests talk to ################################################


class ErrorLog(logging.Handler):
    """Every traceback the shop logs while a test runs (an exception nothing expected: a crash)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(
                f"{record.name}: {record.getMessage()}"
                + (
                    f" [{record.exc_info[0].__name__}: {record.exc_info[1]}]"
                    if record.exc_info
                    else ""
                )
            )


FUZZ_UIDS = range(880001, 890000)  # the Telegram ids the fuzzing shoppers take, one each


def start_shop(folder, **env):
    config = shop.load_config(
        environ={
            "SHOP_DB": str(folder / "shop.db"),
            "PORT": str(free_port()),
            "PAYMENT_POLL_SECONDS": "3600",
            **env,
        },
        env_file=None,
    )
    s = shop.Shop(config, demo=False).start()
    s.conn = shop.connect(config.shop_db)
    s.errors = ErrorLog()
    logging.getLogger().addHandler(s.errors)
    return s


def stop_shop(s):
    logging.getLogger().removeHandler(s.errors)
    s.stop()
    assert shop.check_ledger(s.conn) == []
    s.conn.close()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """One sandbox shop for the module's HTTP fuzzing: Mini App API, /webhook, admin (logged in)."""
    s = start_shop(tmp_path_factory.mktemp("fuzz-web"), ADMIN_PASSWORD=ADMIN_PASSWORD)
    s.ids = seed(
        s.conn,
        [("Berlin", "Mitte", "Gift card", 2500, 400), ("Berlin", "Mitte", "Sticker", 50, 400)],
    )
    s.admin = AdminClient(s.url, ADMIN_PASSWORD)
    assert s.admin.login().status_code == 303
    yield s
    stop_shop(s)


@pytest.fixture(scope="module")
def bot(tmp_path_factory):
    """A sandbox shop with its bot, polling the Bot API stand-in."""
    from fake_telegram import FakeTelegram

    fake = FakeTelegram(token=TOKEN).start()
    # A sandbox shop with a bot is in test mode: the fuzzing shoppers are its testers, so they may
    # buy.
    s = start_shop(
        tmp_path_factory.mktemp("fuzz-bot"),
        BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=fake.base_url,
        TESTER_IDS=",".join(map(str, FUZZ_UIDS)),
    )
    s.fake = fake
    yield s
    stop_shop(s)
    fake.stop()
    assert fake.errors == []


def no_new_errors(s, before):
    assert s.errors.records[before:] == [], s.errors.records[before:]


# Amounts ####################################################################


@fuzz(600)
@given(
    value=st.one_of(amount_like, json_values, st.decimals(), st.floats()),
    minimum=st.integers(1, 1000),
    maximum=st.sampled_from([500, 10**6, shop.MAX_EUR_CENTS]),
)
def test_parse_eur_returns_cents_in_range_or_says_why(value, minimum, maximum):
    try:
        cents = shop.parse_eur(value, minimum=minimum, maximum=maximum)
    except shop.InvalidInput as e:
        assert str(e).startswith("must "), str(e)  # reads on after "The amount ..."
        return
    assert type(cents) is int and minimum <= cents <= maximum
    text = str(value)
    assert "-" not in text  # never a negative amount
    # What was accepted is the number written: its digits are the euros and at most two decimals.
    digits = int("".join(c for c in text if c.isdecimal()))
    assert cents in (digits, digits * 10, digits * 100)


@fuzz(300)
@given(
    cents=st.integers(1, shop.MAX_EUR_CENTS),
    style=st.sampled_from(["{}", "€{}", "{} EUR", " {} ", "{}€"]),
    comma=st.booleans(),
)
def test_parse_eur_reads_back_what_the_shop_writes(cents, style, comma):
    text = style.format(shop.cents_to_str(cents).replace(".", "," if comma else "."))
    assert shop.parse_eur(text) == cents


# Deep links and typed amounts, through the Bot API stand-in #################

_uids = iter(FUZZ_UIDS)


def bot_reply(s, uid, text):
    sent = s.fake.user_sends(uid, text, first_name="Fuzz")
    return s.fake.wait_for(
        lambda: next((m for m in s.fake.messages(uid) if m.message_id > sent["message_id"]), None),
        timeout=10,
        what=f"a reply to {text!r}",
    )


refill_payloads = st.builds(
    lambda parts, sep: sep.join(parts),
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "refill",
                    "UID",
                    "OTHER",
                    "5",
                    "20",
                    "50",
                    "0",
                    "00",
                    "5000000",
                    "10000",
                    "10001",
                    "99",
                    "9" * 21,
                    "",
                    "-5",
                    "٣",
                ]
            ),
            st.integers(0, 10**12).map(str),
            st.text(string.ascii_letters + string.digits + "_-", max_size=10),
        ),
        min_size=1,
        max_size=5,
    ).map(lambda p: ["refill"] + p[1:] if p[0] != "refill" else p),
    st.sampled_from(["_", "_", "_", "-", ""]),
)
deep_links = st.one_of(
    refill_payloads,
    st.text(string.ascii_letters + string.digits + "_-", max_size=64),
    weird_text.filter(lambda t: "\x00" not in t),
)


@fuzz(60)
@given(payload=deep_links, spaces=st.sampled_from([" ", "  ", " \t"]))
def test_start_payloads_get_the_menu_the_coins_or_a_clear_refusal(bot, payload, spaces):
    uid = next(_uids)
    payload = payload.replace("UID", str(uid)).replace("OTHER", str(uid + 1))
    text = f"/start{spaces}{payload}"[:4096]
    assume(
        text.partition(" ")[2].strip() == payload.strip()
        or not payload.strip().startswith("refill_")
    )
    before, checkouts = (
        len(bot.errors.records),
        bot.conn.execute("SELECT count(*) FROM checkouts").fetchone()[0],
    )
    reply = bot_reply(bot, uid, text)
    note(f"reply: {reply.content!r}")
    assert "Something went wrong" not in reply.content
    no_new_errors(bot, before)
    arg = text.partition(" ")[2].strip()
    parts = arg.split("_")
    wanted = None
    if (
        arg.startswith("refill_")
        and len(parts) in (3, 4)
        and parts[1] == str(uid)
        and all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts[1:])
    ):
        try:
            wanted = shop.parse_eur(
                ".".join(parts[2:]),
                minimum=bot.config.min_deposit_cents,
                maximum=bot.config.max_deposit_cents,
            )
        except shop.InvalidInput:
            pass
    added = bot.conn.execute("SELECT count(*) FROM checkouts").fetchone()[0] - checkouts
    if wanted is not None:  # a good link: straight to the coins
        assert shop.fmt_eur(wanted) in reply.content and added == 1, reply.content
    elif arg.startswith("refill_"):  # a bad one: said so, nothing made
        assert "top-up link" in reply.content and added == 0, reply.content
    else:  # anything else: the welcome
        assert "Welcome" in reply.content and added == 0, reply.content


@fuzz(50)
@given(
    amount=amount_like.filter(lambda t: t.strip() and "\x00" not in t and len(t) <= 4096),
    how=st.sampled_from(["typed", "command"]),
)
def test_a_typed_top_up_amount_gets_the_coins_or_a_clear_refusal(bot, amount, how):
    uid = next(_uids)
    before = len(bot.errors.records)
    if how == "typed":
        assert "amount" in bot_reply(bot, uid, "💰 Top up").content
        reply = bot_reply(bot, uid, amount)
    else:
        reply = bot_reply(bot, uid, f"/refill {amount}")
    note(f"reply: {reply.content!r}")
    assert "Something went wrong" not in reply.content
    no_new_errors(bot, before)
    arg = amount if how == "typed" else f"/refill {amount}".partition(" ")[2].strip()
    try:
        wanted = shop.parse_eur(
            arg, minimum=bot.config.min_deposit_cents, maximum=bot.config.max_deposit_cents
        )
    except shop.InvalidInput:
        wanted = None
    checkouts = bot.conn.execute(
        "SELECT count(*) FROM checkouts WHERE user_id = ?", (uid,)
    ).fetchone()[0]
    if wanted is not None:
        assert shop.fmt_eur(wanted) in reply.content and checkouts == 1, reply.content
    elif arg:
        assert reply.content.startswith("The amount ") and checkouts == 0, reply.content


# Mini App initData ##########################################################


def good_init(user_, token, **kw):
    return shop.sign_init_data(user_, token, query_id="AAH", **kw)


def mutate_text(data, text):
    """One random edit of a string: replace, insert or delete characters."""
    i = data.draw(st.integers(0, len(text)))
    how = data.draw(st.sampled_from(["replace", "insert", "delete", "swapcase", "truncate"]))
    piece = data.draw(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=3)
    )
    if how == "replace":
        return text[:i] + piece + text[i + len(piece) :]
    if how == "insert":
        return text[:i] + piece + text[i:]
    if how == "delete":
        return text[:i] + text[i + len(piece) :]
    if how == "swapcase":
        return text[:i] + text[i : i + 3].swapcase() + text[i + 3 :]
    return text[:i]


users_ = st.one_of(
    st.fixed_dictionaries({"id": st.integers(1, 2**40), "first_name": weird_text}),
    st.fixed_dictionaries(
        {"id": st.one_of(st.integers(-(2**70), 2**70), json_values)},
        optional={"first_name": json_values, "username": json_values, "language_code": json_values},
    ),
    json_values,
)


@fuzz(300)
@given(data=st.data())
def test_verify_init_data_accepts_only_what_the_bot_signed(data):
    token = TOKEN
    kind = data.draw(st.sampled_from(["random", "mutated", "signed", "other-bot"]))
    original = None
    if kind == "random":
        init = data.draw(st.one_of(weird_text, st.text(max_size=300)))
    else:
        u = data.draw(users_)
        extra = data.draw(
            st.dictionaries(
                st.sampled_from(["chat_type", "start_param", "hash2", "signature"]),
                weird_text,
                max_size=2,
            )
        )
        auth = data.draw(st.one_of(st.just(time.time()), st.integers(0, 2**40)))
        original = shop.sign_init_data(
            u, token if kind != "other-bot" else "999:other", auth_date=auth, **extra
        )
        init = mutate_text(data, original) if kind == "mutated" else original
    note(f"initData: {init!r}")
    try:
        got = shop.verify_init_data(init, token)
    except shop.Unauthorized as e:
        assert str(e).strip()
        return
    assert kind != "random" and kind != "other-bot"
    assert isinstance(got, dict) and type(got["id"]) is int
    from urllib.parse import parse_qsl

    assert dict(parse_qsl(init)) == dict(
        parse_qsl(original)
    )  # accepted: what was signed, nothing else


@fuzz(120)
@given(data=st.data())
def test_the_api_answers_forged_and_odd_init_data_with_a_clear_401(web, data):
    token = web.webapp_token
    kind = data.draw(st.sampled_from(["random", "mutated", "signed", "other-bot"]))
    if kind == "random":
        init = data.draw(st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300))
    else:
        u = data.draw(users_)
        auth = data.draw(st.one_of(st.just(time.time()), st.integers(0, 2**40)))
        init = shop.sign_init_data(u, token if kind != "other-bot" else "999:other", auth_date=auth)
        if kind == "mutated":
            init = mutate_text(data, init)
    path = data.draw(st.sampled_from(["/api/me", "/api/basket", "/api/orders", "/api/catalog"]))
    how = data.draw(st.sampled_from(["header", "tma"]))
    headers = (
        {"X-Telegram-Init-Data": init} if how == "header" else {"Authorization": "tma " + init}
    )
    headers = {k: v.strip() for k, v in headers.items()}
    note(f"headers: {headers!r}")
    before, errors = rows(snapshot(web.conn)), len(web.errors.records)
    try:
        r = requests.get(web.url + path, headers=headers, timeout=10)
    except (ValueError, requests.exceptions.InvalidHeader):
        assume(False)  # no client can send that header
    if r.status_code == 400 and "Invalid header" in r.text:
        return  # waitress refuses bytes HTTP does not allow
    assert r.status_code in (200, 400, 401), (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    if r.status_code != 200:
        assert r.json()["error"].strip()
        assert rows(snapshot(web.conn)) == before
    no_new_errors(web, errors)


# IPN over HTTP ##############################################################

IPN_TABLES = ("users", "stock_units", "orders", "order_items", "ledger", "payments")
MATCHED = ("payment_id", "pay_currency", "order_id", "price_amount", "price_currency", "pay_amount")


def money_state(conn):
    return {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in IPN_TABLES
    }


def as_provider_json(value):
    """A generated value with its numbers as JSON tokens (Num), as shop.parse_json gives them."""
    if isinstance(value, dict):
        return {k: as_provider_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_provider_json(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return shop.Num(json.dumps(value))
    return value


odd_values = st.one_of(
    json_values.map(as_provider_json),
    number_tokens.map(shop.Num),
    weird_text,
    st.sampled_from(
        [
            "finished",
            "FINISHED",
            "waiting",
            "refunded",
            "eur",
            "EUR",
            "btc",
            "BTC",
            "order-1",
            "topup-1",
            " 25 ",
            "25.000",
            "0x19",
        ]
    ),
)


def post(s, body, signature):
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["x-nowpayments-sig"] = signature
    return requests.post(s.url + "/webhook", data=body, headers=headers, timeout=30)


@fuzz(120)
@given(
    body=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(
                [
                    "payment_id",
                    "payment_status",
                    "order_id",
                    "actually_paid",
                    "pay_amount",
                    "parent_payment_id",
                ]
            ),
            odd_values,
            max_size=6,
        ).map(lambda d: shop.encode_json(d).encode()),
        st.binary(max_size=300),
    ),
    sign=st.sampled_from(["valid", "none", "random", "upper", "empty", "other-secret"]),
)
def test_the_webhook_gives_random_bodies_a_clear_verdict_and_changes_nothing(web, body, sign):
    signature = {
        "none": None,
        "random": "ab" * 64,
        "empty": "",
        "valid": "valid",
        "upper": "valid",
        "other-secret": "other",
    }[sign]
    if signature in ("valid", "other"):
        try:
            signature = shop.ipn_signature(
                shop.parse_json(body.decode()),
                web.ipn_secret if signature == "valid" else "another secret",
            )
        except (ValueError, UnicodeDecodeError, TypeError):
            signature = "ab" * 64
        if sign == "upper":
            signature = signature.upper()
    before, errors = money_state(web.conn), len(web.errors.records)
    r = post(web, body, signature)
    note(f"{r.status_code} {r.text}")
    assert r.status_code < 500 and r.headers["Content-Type"].startswith("application/json"), (
        r.status_code,
        r.text,
    )
    answer = r.json()
    assert ("error" in answer) == (r.status_code >= 400) and (
        answer.get("error") or answer.get("status")
    )
    if sign not in ("valid", "upper"):
        assert r.status_code in (400, 401)
    assert money_state(web.conn) == before  # no body here names a payment of this shop's
    no_new_errors(web, errors)


def same(key, value, original):
    """Does the provider's `value` for a matched field say the same as what the shop stored?"""
    if value in (None, ""):
        return True  # left out: contradicts nothing
    if key in ("pay_currency", "price_currency"):
        return str(value).lower() == str(original).lower()
    if key == "order_id":
        return str(value) == str(original)
    if key == "payment_id":
        return str(value).strip() == str(original)
    try:
        return Decimal(str(value).strip()) == Decimal(str(original))
    except (InvalidOperation, ValueError):
        return False


@fuzz(150)
@given(data=st.data())
def test_signed_ipns_with_odd_fields_are_applied_only_when_they_match(web, data):
    conn = web.conn
    uid = user(conn, next(_uids))
    kind = data.draw(st.sampled_from(["order", "topup"]))
    coin = data.draw(st.sampled_from(["btc", "usdttrc20"]))
    if kind == "order":
        p = order_payment(
            conn, uid, [(*web.ids[("Gift card", "Mitte")], 1)], pay_amount="0.0004", coin=coin
        )
    else:
        p = topup_payment(conn, uid, 2000, pay_amount="0.0004", coin=coin)
    status = data.draw(
        st.sampled_from(
            [
                "finished",
                "partially_paid",
                "confirming",
                "expired",
                "failed",
                "refunded",
                "waiting",
                "sending",
            ]
        )
    )
    ipn = news(
        p,
        status,
        "0.0004" if status in shop.MONEY_STATUSES else None,
        pay_address="addr",
        fee={"currency": coin, "serviceFee": shop.Num("0.000001")},
    )
    edits = data.draw(
        st.dictionaries(
            st.sampled_from(
                sorted(ipn) + ["actually_paid", "parent_payment_id", "outcome_amount", "fee"]
            ),
            odd_values,
            min_size=1,
            max_size=3,
        )
    )
    ipn.update(edits)
    original = {
        "payment_id": p["provider_id"],
        "pay_currency": coin,
        "order_id": p["reference"],
        "price_amount": shop.cents_to_str(p["price_cents"]),
        "price_currency": "eur",
        "pay_amount": "0.0004",
    }
    body = shop.encode_json(ipn).encode()
    signed = data.draw(st.booleans())
    signature = (
        shop.ipn_signature(shop.parse_json(body.decode()), web.ipn_secret)
        if signed
        else shop.ipn_signature(shop.parse_json(body.decode()), web.ipn_secret)[::-1]
    )
    note(f"body: {body!r}")
    before, errors = money_state(conn), len(web.errors.records)
    r = post(web, body, signature)
    note(f"{r.status_code} {r.text}")
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json") and r.json()
    no_new_errors(web, errors)
    if not signed:
        assert r.status_code == 401
    if r.status_code >= 300 or not signed:
        assert money_state(conn) == before
        return
    # Applied (200) or a hint to ask the API (202): every matched field said what the shop stored...
    mismatched = [k for k in MATCHED if k in edits and not same(k, edits[k], original[k])]
    if r.status_code == 200 and "parent_payment_id" not in edits:
        assert mismatched == [], (mismatched, r.text)
    # ...and the books still balance, and a unit is sold only with its order paid.
    assert shop.check_ledger(conn) == []
    unpaid_sold = conn.execute(
        "SELECT count(*) FROM stock_units u JOIN orders o ON o.id = u.order_id "
        "WHERE u.status = 'sold' AND o.status != 'paid'"
    ).fetchone()[0]
    assert unpaid_sold == 0


@fuzz(100)
@given(
    paid=st.one_of(number_tokens.map(shop.Num), odd_values),
    status=st.sampled_from(["finished", "partially_paid"]),
    kind=st.sampled_from(["order", "topup"]),
    pay_amount=st.sampled_from(["0.0004", "1e-8", "250"]),
)
def test_a_signed_ipn_settles_whatever_amount_it_says_arrived_or_refuses_it(
    web, paid, status, kind, pay_amount
):
    """Everything matches the payment; only actually_paid is odd: zero, negative, huge, tiny, not a
    number."""
    conn = web.conn
    uid = user(conn, next(_uids))
    if kind == "order":
        p = order_payment(conn, uid, [(*web.ids[("Sticker", "Mitte")], 1)], pay_amount=pay_amount)
    else:
        p = topup_payment(conn, uid, 2000, pay_amount=pay_amount)
    body = shop.encode_json(news(p, status, None, actually_paid=paid)).encode()
    note(f"body: {body!r}")
    before, errors = money_state(conn), len(web.errors.records)
    r = post(web, body, shop.ipn_signature(shop.parse_json(body.decode()), web.ipn_secret))
    note(f"{r.status_code} {r.text}")
    assert r.status_code < 500, (r.status_code, r.text)
    no_new_errors(web, errors)
    if r.status_code >= 300:
        assert money_state(conn) == before
        return
    assert shop.check_ledger(conn) == []
    credited = conn.execute(
        "SELECT credited_cents FROM payments WHERE id = ?", (p["id"],)
    ).fetchone()[0]
    amount = Decimal(str(paid).strip()) if r.status_code == 200 else None
    if amount is not None and status == "partially_paid":  # never more than the value received
        assert credited <= p["price_cents"] * amount / Decimal(pay_amount)


# Catalog files ##############################################################


@pytest.fixture(scope="module")
def catalog_place(tmp_path_factory):
    """A folder with the hostile catalog's images, and a database to import into."""
    folder = tmp_path_factory.mktemp("fuzz-catalog")
    write_catalog(folder, HOSTILE, HOSTILE_IMAGES)
    conn = shop.init_db(str(folder / "shop.db"))
    yield folder, conn
    conn.close()


CATALOG_TABLES = ("cities", "districts", "products", "stock_units")


def catalog_state(conn, media):
    files = (
        sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())
        if media.exists()
        else []
    )
    return {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in CATALOG_TABLES
    }, files


def paths_in(value, prefix=()):
    """Every (path, value) inside a JSON structure, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_in(v, prefix + (i,))


def set_at(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


catalog_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "img/gift.png",
            "img/locker.png",
            "img",
            "catalog.json",
            "../catalog/img/gift.png",
            "/etc/passwd",
            "img/\x00x",
            "\x00",
            "~",
            "a" * 5000,
            " ",
            "Berlin",
            "Mitte",
            "25.00",
            "-5",
            "9.999",
            "1e2",
            "0.001",
        ]
    ),
)


@st.composite
def catalogs(draw):
    """A catalog structure: the hostile one with a few parts replaced, or anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    data = HOSTILE
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths_in(data))
        fields = [
            p
            for p in places
            if p[0]
            and p[0][-1]
            in (
                "photo",
                "media",
                "price",
                "name",
                "content",
                "city",
                "district",
                "stock",
                "districts",
            )
        ]
        path, _ = draw(
            st.sampled_from(fields) if fields and draw(st.booleans()) else st.sampled_from(places)
        )
        data = set_at(data, path, draw(catalog_values))
    return data


def import_file(conn, path, folder, media, confine=False):
    """What seed_catalog.py and the admin do with a file; returns counts or the CatalogError."""
    try:
        return shop.import_catalog(
            conn, shop.read_catalog_file(path), folder, media, confine=confine
        )
    except shop.CatalogError as e:
        return e


@fuzz(150)
@given(
    data=catalogs(),
    raw=st.one_of(
        st.none(),
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"",
                b"\xef\xbb\xbf{}",
                b"[]",
                b'{"cities": NaN}',
                b"\xff\xfe{}",
                b"{" * 5000,
                b"1" * 5000,
                b'{"products": [{"price": 1e999999}]}',
            ]
        ),
    ),
)
def test_catalog_files_import_whole_or_are_refused_naming_the_problem(catalog_place, data, raw):
    folder, conn = catalog_place
    path = folder / "fuzz.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    media = folder / "media"
    before = catalog_state(conn, media)
    got = import_file(conn, path, folder, media)
    note(repr(got))
    if isinstance(got, shop.CatalogError):
        assert got.errors and all(e.strip() for e in got.errors)
        assert catalog_state(conn, media) == before
    else:
        assert set(got) >= {"units_added", "products_added"}
        again = import_file(conn, path, folder, media)  # idempotent
        assert isinstance(again, dict) and again["units_added"] == again["products_added"] == 0


def zip_of(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content, compress in entries:
            z.writestr(
                zipfile.ZipInfo(name) if not compress else name,
                content,
                zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
            )
    return buffer.getvalue()


zip_names = st.one_of(
    st.sampled_from(
        [
            "catalog.json",
            "img/gift.png",
            "img/locker.png",
            "../evil.json",
            "../../evil",
            "/abs/evil",
            "img/",
            "a/../../evil",
            "catalog.json/x",
            "img/../catalog.json",
            "ÿ.png",
            "\\evil",
        ]
    ),
    st.text(string.ascii_letters + "./_-", min_size=1, max_size=20),
)


@st.composite
def zips(draw):
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(zip_names)
        content = draw(
            st.one_of(
                catalogs().map(lambda d: json.dumps(d).encode()),
                st.just(png()),
                st.binary(max_size=100),
            )
        )
        entries.append((name, content, draw(st.booleans())))
    data = zip_of(entries)
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        flip = draw(st.booleans())
        data = data[:cut] + (
            bytes([data[cut] ^ 0xFF]) + data[cut + 1 :] if flip and cut < len(data) else b""
        )
    return data


@fuzz(100)
@given(data=zips())
def test_catalog_zips_are_unpacked_inside_their_folder_or_refused(tmp_path, data):
    root = tmp_path / f"z{time.monotonic_ns()}"
    folder = root / "inside" / "upload"
    folder.mkdir(parents=True)
    conn = shop.init_db(str(root / "shop.db"))
    try:
        try:
            shop.unpack_zip(data, folder)
            got = import_file(conn, folder / "catalog.json", folder, root / "media", confine=True)
        except shop.CatalogError as e:
            got = e
        note(repr(got))
        outside = sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file()
            and folder not in p.parents
            and p.name not in ("shop.db", "shop.db-wal", "shop.db-shm")
            and root / "media" not in p.parents
        )
        assert outside == []
        if isinstance(got, shop.CatalogError):
            assert got.errors and all(e.strip() for e in got.errors)
            assert catalog_state(conn, root / "media")[0] == {t: [] for t in CATALOG_TABLES}
    finally:
        conn.close()


@fuzz(40)
@given(
    upload=st.one_of(
        zips(),
        catalogs().map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
        st.binary(max_size=200),
    ),
    name=st.sampled_from(["catalog.json", "c.zip", "x", "../../etc/passwd", "ä.json"]),
)
def test_the_admin_previews_or_refuses_any_uploaded_catalog(web, upload, name):
    before, errors = catalog_state(web.conn, web.config.media_dir), len(web.errors.records)
    web.conn.execute("UPDATE admin_sessions SET flash = NULL")
    r = web.admin.post("/admin/import", files={"file": (name, upload, "application/octet-stream")})
    note(f"{r.status_code} {r.text[-500:]}")
    assert r.status_code in (200, 303), r.status_code
    if r.status_code == 200:
        assert (
            "Nothing was imported" in r.text
            or "would" in r.text.lower()
            or "error" in r.text.lower()
        )
    else:
        assert (
            web.conn.execute("SELECT flash FROM admin_sessions").fetchone()[0] or ""
        ).startswith("⚠️")
    assert catalog_state(web.conn, web.config.media_dir) == before  # a preview changes nothing
    no_new_errors(web, errors)


# Admin forms ################################################################

ADMIN_TABLES = (
    "users",
    "stock_units",
    "orders",
    "ledger",
    "outbox",
    "payments",
    "products",
    "cities",
    "districts",
    "settings",
    "audit_log",
)


def admin_state(conn):
    return {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in ADMIN_TABLES
    }


form_text = st.one_of(weird_text, amount_like, st.text(max_size=3000))


def admin_post(s, path, data, **kw):
    """POST a form as the owner; returns (response, the flash it left or None, state before)."""
    s.conn.execute("UPDATE admin_sessions SET flash = NULL")
    before = admin_state(s.conn)
    errors = len(s.errors.records)
    data = {k: v for k, v in data.items() if v is not None}
    r = s.admin.post(path, data=data, **kw)
    note(f"{path} {data!r} -> {r.status_code}")
    assert r.status_code in (303, 400, 403, 404), (r.status_code, r.text[-800:])
    assert r.status_code != 403 or "CSRF" not in r.text
    no_new_errors(s, errors)
    flash = s.conn.execute("SELECT flash FROM admin_sessions").fetchone()[0]
    refused = r.status_code >= 400 or (flash or "").startswith("⚠️")
    if refused:
        assert admin_state(s.conn) == before, (
            f"refused ({flash or r.status_code}) but the database changed"
        )
        assert flash or "error" in r.text.lower() or "⚠️" in r.text or r.status_code == 400
    return r, flash, before


@fuzz(60)
@given(
    name=form_text,
    description=form_text,
    price=amount_like,
    active=st.sampled_from([None, "1", "0", "on"]),
    existing=st.booleans(),
)
def test_the_product_form_saves_or_refuses_with_the_reason(
    web, name, description, price, active, existing
):
    path = f"/admin/products/{web.ids[('Sticker', 'Mitte')][0]}" if existing else "/admin/products"
    r, flash, before = admin_post(
        web, path, {"name": name, "description": description, "price": price, "active": active}
    )
    if r.status_code == 400:
        assert "⚠️" in r.text or "error" in r.text


@fuzz(50)
@given(
    units=form_text,
    district=st.one_of(
        st.sampled_from(["DISTRICT", "", "0", "999999", "9" * 30, "-1", "1.0"]), weird_text
    ),
    product=st.sampled_from(["PRODUCT", "999999", "1" * 18]),
)
def test_adding_units_adds_each_or_refuses_with_the_reason(web, units, district, product):
    district = district.replace("DISTRICT", str(web.ids[("Sticker", "Mitte")][1]))
    product = product.replace("PRODUCT", str(web.ids[("Sticker", "Mitte")][0]))
    r, flash, before = admin_post(
        web, f"/admin/products/{product}/units", {"district_id": district, "units": units}
    )
    if r.status_code == 303 and not (flash or "").startswith("⚠️"):
        added = len(admin_state(web.conn)["stock_units"]) - len(before["stock_units"])
        assert added == len(shop.split_units(units)) and f"{added} unit" in flash


@fuzz(60)
@given(amount=amount_like, reason=form_text, who=st.sampled_from(["USER", "999999999", "1" * 18]))
def test_balance_adjustments_move_exactly_the_amount_or_nothing(web, amount, reason, who):
    uid = user(web.conn, 777)
    if shop.get_user(web.conn, uid)["balance_cents"] < 1000:
        shop.adjust_balance(web.conn, uid, 5000, "fuzz funds")
    old = shop.get_user(web.conn, uid)["balance_cents"]
    r, flash, before = admin_post(
        web,
        f"/admin/users/{who.replace('USER', str(uid))}/balance",
        {"amount": amount, "reason": reason},
    )
    if r.status_code == 303 and not (flash or "").startswith("⚠️"):
        text = str(amount).strip()
        cents = (
            -shop.parse_eur(text[1:]) if text.startswith("-") else shop.parse_eur(text.lstrip("+"))
        )
        assert shop.get_user(web.conn, uid)["balance_cents"] == old + cents
        assert shop.fmt_eur(abs(cents)) in flash
    assert shop.check_ledger(web.conn) == []


SETTING_FIELDS = (
    "shop_name",
    "welcome_text",
    "help_text",
    "support_contact",
    "min_deposit",
    "reservation_minutes",
)


@fuzz(40)
@given(
    values=st.fixed_dictionaries({}, optional={k: form_text for k in SETTING_FIELDS}),
    coins=st.lists(st.sampled_from(shop.COIN_CODES + ["doge", "", "BTC"]), max_size=4),
    listed=st.sampled_from([None, "1"]),
)
def test_settings_are_saved_together_or_refused_with_the_reason(web, values, coins, listed):
    form = {
        "shop_name": "Fuzz shop",
        "welcome_text": "Hi",
        "help_text": "Help",
        "support_contact": "",
        "min_deposit": "5.00",
        "reservation_minutes": "30",
        **values,
        "coins_listed": listed,
    }
    files = [("coins", (None, c)) for c in coins]
    r, flash, before = admin_post(web, "/admin/settings", form, files=files or None)
    if r.status_code == 400:
        assert "⚠️" in r.text or "error" in r.text.lower()


@fuzz(60)
@given(
    what=st.sampled_from(["city", "district", "rename-city", "rename-district", "action"]),
    name=form_text,
    action=st.one_of(st.sampled_from(["rename", "hide", "show", "up", "down"]), weird_text),
    place=st.sampled_from(["CITY", "DISTRICT", "999999", "0"]),
)
def test_places_are_changed_or_refused_with_the_reason(web, what, name, action, place):
    city, district = web.conn.execute(
        "SELECT city_id, id FROM districts ORDER BY id LIMIT 1"
    ).fetchone()
    place = place.replace("CITY", str(city)).replace("DISTRICT", str(district))
    if what == "city":
        admin_post(web, "/admin/cities", {"name": name})
    elif what == "district":
        admin_post(
            web,
            "/admin/districts",
            {"city_id": place if place != "DISTRICT" else str(city), "name": name},
        )
    else:
        kind = "district" if what == "rename-district" else "city"
        admin_post(
            web,
            f"/admin/{kind}/{place}",
            {"action": "rename" if what.startswith("rename") else action, "name": name},
        )


@fuzz(80)
@given(
    page=st.sampled_from(
        [
            "/admin/orders",
            "/admin/users",
            "/admin/payments",
            "/admin/audit",
            "/admin/products/PRODUCT",
            "/admin/broadcast/preview",
        ]
    ),
    params=st.dictionaries(
        st.sampled_from(["q", "status", "from", "to", "before", "text", "next"]),
        st.one_of(
            weird_text,
            st.sampled_from(
                [
                    "2024-01-01",
                    "9999-12-31",
                    "0001-01-01",
                    "2024-1-1",
                    "2024-02-30",
                    "paid",
                    "finished",
                    "#12",
                    "@ann",
                    "1" * 19,
                    "-1",
                ]
            ),
        ),
        max_size=4,
    ),
    htmx=st.booleans(),
)
def test_search_and_paging_parameters_never_break_a_page(web, page, params, htmx):
    page = page.replace("PRODUCT", str(web.ids[("Sticker", "Mitte")][0]))
    errors = len(web.errors.records)
    r = web.admin.get(page, params=params, headers={"HX-Request": "true"} if htmx else {})
    note(f"{page} {params!r} -> {r.status_code}")
    assert r.status_code == 200, (r.status_code, r.text[-500:])
    no_new_errors(web, errors)
