"""An in-process stand-in for the Telegram Bot API, for tests (standard library only).

    fake = FakeTelegram(token="123456:TEST-token").start()
    # point the client at fake.base_url ("http://127.0.0.1:PORT"):
    #   BASE + "/bot{token}/{method}" and BASE + "/file/bot{token}/{file_path}"
    fake.user_sends(42, "/start")                 # the bot receives it through getUpdates
    msg = fake.wait_message(42, "Welcome")        # what the bot sent back
    fake.click_button(42, "Buy")                  # a callback query for that button
    fake.stop()

Telegram Stars (currency "XTR"): the bot sends an invoice (sendInvoice) or makes a link
(createInvoiceLink, listed by fake.invoice_links()); the test plays the buyer:

    invoice = fake.wait_message(42, "Gift card")  # the sendInvoice message (kind "invoice")
    payment = fake.user_pays(42, invoice)         # or fake.user_pays(42, "https://t.me/$...")
    # a pre_checkout_query update, then up to 10 s (fake.pre_checkout_timeout, or timeout=)
    # for answerPreCheckoutQuery; ok -> the user is charged: a StarTransaction, and a `message`
    # update with successful_payment in the user's chat
    assert payment.status == "paid" and payment.charge_id  # or "refused" / "timed_out"
    later = fake.user_pays(42, link, wait=False)  # "pending" at once; later.wait() blocks
    fake.user_pays(42, link, drop_successful_payment=True)  # charged, the update is lost
    fake.replay_update(payment.update_id)         # that update delivered once more
    fake.star_transactions()                      # what getStarTransactions lists
    fake.refunds                                  # the refundStarPayment calls that refunded

The server speaks the wire format of api.telegram.org: parameters from the query string,
urlencoded, JSON or multipart bodies; {"ok":true,"result":...} or {"ok":false,"error_code":N,
"description":"..."} with HTTP status N; Telegram's error texts for the mistakes a bot makes
(entity parsing, not-modified edits, callback_data size, unknown chats, flood limits ...).
It is deliberately at least as strict as Telegram: a stray "&" in HTML text is rejected here
(Telegram would keep it literally), so a shop that passes these tests escapes correctly.
"""

from __future__ import annotations

import copy
import http.server
import json
import math
import mimetypes
import re
import secrets
import socket
import struct
import threading
import time
import traceback
import urllib.parse

__all__ = ["FakeTelegram", "Message", "Payment", "TelegramApiError"]


# --------------------------------------------------------------------------------------------
# errors


class TelegramApiError(Exception):
    """An error answer of the API; the HTTP status equals error_code."""

    def __init__(self, code, description, parameters=None):
        super().__init__(f"{code} {description}")
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self):
        body = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description):
    return TelegramApiError(400, "Bad Request: " + description)


class _EntityError(Exception):
    """A parse error of formatted text; reported as "can't parse entities: <message>"."""


_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
_QUERY_TOO_OLD = "query is too old and response timeout expired or query ID is invalid"
_BLOCKED = "Forbidden: bot was blocked by the user"

# Telegram Stars. Sources: core.telegram.org/bots/api (sendInvoice, Invoice, SuccessfulPayment,
# RefundedPayment, StarTransaction, TransactionPartnerUser), the telegram-bot-api server source
# (Client.cpp: parameter parsing and its error texts, JSON shapes) and tdlib (InputInvoice.cpp:
# "Total price must be positive"). Errors that come from Telegram's servers are named as in the
# MTProto error lists (STARS_INVOICE_INVALID, CURRENCY_TOTAL_AMOUNT_INVALID,
# INVOICE_PAYLOAD_INVALID, PAYMENT_PROVIDER_INVALID, REPLY_MARKUP_BUY_EMPTY,
# CHARGE_ALREADY_REFUNDED) and in public reports of them; see the notes at each check.
_XTR = "XTR"
# The largest one-off Stars invoice: 100000 was accepted and 150000 refused with
# CURRENCY_TOTAL_AMOUNT_INVALID in a public measurement (createInvoiceLink, 2026-09); the exact
# ceiling between the two is not documented, the stand-in uses 100000.
_XTR_MAX_AMOUNT = 100000
_PRE_CHECKOUT_TIMEOUT = 10.0  # seconds Telegram waits for answerPreCheckoutQuery


# --------------------------------------------------------------------------------------------
# small helpers


def _u16len(s):
    """Length of a str in UTF-16 code units (Telegram's unit for offsets and lengths)."""
    return len(s.encode("utf-16-le")) // 2


def _to_str(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _to_int(value, default=None):
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def _to_float(value, default=0.0):
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("true", "1")


def _json_value(value, error):
    """A parameter that carries JSON: text in query/form/multipart, an object in a JSON body."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, str):
        if value.strip() == "":
            return None
        try:
            return json.loads(value)
        except ValueError:
            raise error from None
    return value


# --------------------------------------------------------------------------------------------
# formatted text: ports of tdlib's parse_html / parse_markdown_v2 / parse_markdown, operating on
# UTF-8 bytes so that error offsets are byte offsets and entity offsets UTF-16 units, as in td.


class _Bytes:
    """UTF-8 bytes of a str where reading past the end gives 0, like td's C strings."""

    __slots__ = ("b", "n")

    def __init__(self, s):
        self.b = s.encode("utf-8")
        self.n = len(self.b)

    def __getitem__(self, k):
        return self.b[k] if 0 <= k < self.n else 0


def _is_space(c):  # td::is_space
    return c in (0x20, 0x09, 0x0D, 0x0A, 0x00, 0x0B)


def _is_alpha(c):
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _is_digit(c):
    return 0x30 <= c <= 0x39


def _is_hex(c):
    return _is_digit(c) or 0x41 <= c <= 0x46 or 0x61 <= c <= 0x66


def _u16_units(lead_byte):
    if 0x80 <= lead_byte < 0xC0:  # continuation byte
        return 0
    return 2 if lead_byte >= 0xF0 else 1


def _ascii_lower(b):
    return b.decode("utf-8", "replace").translate(
        str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    )


def _ent(kind, offset, length, **extra):
    entity = {"type": kind, "offset": offset, "length": length}
    entity.update(extra)
    return entity


def _checked_link(url):
    """Approximation of td's LinkManager::get_checked_link: a normalised URL, or None."""
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        return None
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", url, re.S)
    if m:
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme in ("tg", "ton"):
            return f"{scheme}://{rest}" if rest else None
        if scheme not in ("http", "https"):
            return None
        need_dot = False
    else:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:(?!\d)", url):  # mailto:, javascript: ...
            return None
        scheme, rest, need_dot = "http", url, True
    cut = re.search(r"[/?#]", rest)
    host, tail = (rest[: cut.start()], rest[cut.start() :]) if cut else (rest, "")
    hostname = host.rsplit("@", 1)[-1]
    port_match = re.match(r"^(.*?)(?::(\d{1,5}))?$", hostname)
    hostname = port_match.group(1)
    if (
        not hostname
        or not re.fullmatch(r"[\w\-.]+", hostname)
        or hostname.startswith(".")
        or ".." in hostname
    ):
        return None
    if need_dot and "." not in hostname.strip("."):
        return None
    if not tail.startswith("/"):
        tail = "/" + tail
    return f"{scheme}://{host}{tail}"


def _link_entity(url, offset, length):
    m = re.match(r"(?i)^tg://user\?id=(\d+)$", url.strip())
    if m:
        return _ent(
            "text_mention",
            offset,
            length,
            user={"id": int(m.group(1)), "is_bot": False, "first_name": ""},
        )
    checked = _checked_link(url)
    if checked is None:
        return None  # td silently drops links it can't accept
    return _ent("text_link", offset, length, url=checked)


def _decode_html_entity(t, pos):
    """td's decode_html_entity: (code point or 0, end position, terminated by ';')."""
    end = pos + 1
    res = 0
    if t[pos + 1] == 0x23:  # '#'
        end += 1
        if t[pos + 2] == 0x78:  # 'x'
            end += 1
            while _is_hex(t[end]):
                res = res * 16 + int(chr(t[end]), 16)
                end += 1
        else:
            while _is_digit(t[end]):
                res = res * 10 + t[end] - 0x30
                end += 1
        if res == 0 or res >= 0x10FFFF or end - pos >= 10:
            return 0, pos, False
    else:
        while _is_alpha(t[end]):
            end += 1
        res = {b"lt": 0x3C, b"gt": 0x3E, b"amp": 0x26, b"quot": 0x22}.get(t.b[pos + 1 : end], 0)
        if not res:
            return 0, pos, False
    if t[end] == 0x3B:
        return res, end + 1, True
    return res, end, False


def _html_entity_at(t, pos):
    """Decode an HTML entity strictly (stricter than Telegram, see module docstring)."""
    code, end, terminated = _decode_html_entity(t, pos)
    snippet = t.b[pos : pos + 10].decode("utf-8", "replace")
    if not code:
        raise _EntityError(
            f'Unsupported HTML entity "{snippet}" at byte offset {pos}: a literal "&" must be '
            'written as "&amp;" (the test stand-in is stricter than Telegram here)'
        )
    if not terminated:
        raise _EntityError(
            f'HTML entity at byte offset {pos} is not terminated by ";" '
            f"(the test stand-in is stricter than Telegram here)"
        )
    if 0xD800 <= code <= 0xDFFF:
        raise _EntityError(
            "Text contains invalid Unicode characters after decoding HTML entities, "
            "check for unmatched surrogate code units"
        )
    return code, end


_HTML_TAGS = frozenset(
    "a b strong i em s strike del u ins tg-spoiler tg-emoji span pre code blockquote".split()
)
_HTML_SIMPLE = {
    "i": "italic",
    "em": "italic",
    "b": "bold",
    "strong": "bold",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "u": "underline",
    "ins": "underline",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}


def _parse_html(text):
    t = _Bytes(text)
    n = t.n
    out = bytearray()
    u16 = 0
    entities = []
    stack = []  # (tag, argument, utf16 offset, out position, expandable)
    i = 0
    while i < n:
        c = t[i]
        if c == 0x26:  # '&'
            code, i = _html_entity_at(t, i)
            out += chr(code).encode("utf-8")
            u16 += 2 if code > 0xFFFF else 1
            continue
        if c != 0x3C:  # not '<'
            u16 += _u16_units(c)
            out.append(c)
            i += 1
            continue
        begin = i
        i += 1
        if t[i] != 0x2F:  # start tag
            while not _is_space(t[i]) and t[i] != 0x3E:
                i += 1
            if i >= n:
                raise _EntityError(f"Unclosed start tag at byte offset {begin}")
            tag = _ascii_lower(t.b[begin + 1 : i])
            if tag not in _HTML_TAGS:
                raise _EntityError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            expandable = False
            while t[i] != 0x3E:
                while i < n and _is_space(t[i]):
                    i += 1
                if t[i] == 0x3E:
                    break
                attr_begin = i
                while not _is_space(t[i]) and t[i] != 0x3D and t[i] != 0x3E:
                    i += 1
                attr_name = t.b[attr_begin:i].decode("utf-8", "replace")
                if not attr_name:
                    raise _EntityError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {begin}'
                    )
                while i < n and _is_space(t[i]):
                    i += 1
                if t[i] != 0x3D:
                    if tag == "blockquote" and attr_name.lower() == "expandable":
                        expandable = True
                        continue
                    raise _EntityError(
                        "Expected equal sign in declaration of an attribute of the "
                        f'tag "{tag}" at byte offset {begin}'
                    )
                i += 1
                while i < n and _is_space(t[i]):
                    i += 1
                if i >= n:
                    raise _EntityError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                if t[i] not in (0x27, 0x22):
                    token_begin = i
                    while _is_alpha(t[i]) or _is_digit(t[i]) or t[i] in (0x2E, 0x2D):
                        i += 1
                    value = _ascii_lower(t.b[token_begin:i])
                    if not _is_space(t[i]) and t[i] != 0x3E:
                        raise _EntityError(
                            f"Unexpected end of name token at byte offset {token_begin}"
                        )
                else:
                    quote = t[i]
                    i += 1
                    raw = bytearray()
                    while i < n and t[i] != quote:
                        if t[i] == 0x26:
                            code, i = _html_entity_at(t, i)
                            raw += chr(code).encode("utf-8")
                            continue
                        raw.append(t[i])
                        i += 1
                    if t[i] == quote and i < n:
                        i += 1
                    value = raw.decode("utf-8", "replace")
                if i >= n:
                    raise _EntityError(f"Unclosed start tag at byte offset {begin}")
                if tag == "a" and attr_name == "href":
                    argument = value
                elif tag == "code" and attr_name == "class" and value.startswith("language-"):
                    argument = value[9:]
                elif tag == "span" and attr_name == "class" and value.startswith("tg-"):
                    argument = value[3:]
                elif tag == "tg-emoji" and attr_name == "emoji-id":
                    argument = value
            if tag == "span" and argument != "spoiler":
                raise _EntityError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset {begin}'
                )
            stack.append((tag, argument, u16, len(out), expandable))
            i += 1  # past '>'
            continue
        # end tag
        if not stack:
            raise _EntityError(f"Unexpected end tag at byte offset {begin}")
        while not _is_space(t[i]) and t[i] != 0x3E:
            i += 1
        end_name = _ascii_lower(t.b[begin + 2 : i])
        while i < n and _is_space(t[i]):
            i += 1
        if t[i] != 0x3E or i >= n:
            raise _EntityError(f"Unclosed end tag at byte offset {begin}")
        tag, argument, offset, out_pos, expandable = stack[-1]
        if end_name and end_name != tag:
            raise _EntityError(
                f'Unmatched end tag at byte offset {begin}, expected "</{tag}>", '
                f'found "</{end_name}>"'
            )
        length = u16 - offset
        if length > 0:
            if tag in _HTML_SIMPLE:
                entities.append(_ent(_HTML_SIMPLE[tag], offset, length))
            elif tag == "tg-emoji":
                if not argument.isdigit() or int(argument) == 0:
                    raise _EntityError("Invalid custom emoji identifier specified")
                entities.append(_ent("custom_emoji", offset, length, custom_emoji_id=argument))
            elif tag == "a":
                url = argument or out[out_pos:].decode("utf-8", "replace")
                entity = _link_entity(url, offset, length)
                if entity:
                    entities.append(entity)
            elif tag == "pre":
                last = entities[-1] if entities else None
                if (
                    last
                    and last["type"] == "code"
                    and last["offset"] == offset
                    and last["length"] == length
                ):
                    language = last.pop("_language", "")
                    last["type"] = "pre"
                    if language:
                        last["language"] = language
                else:
                    entities.append(_ent("pre", offset, length))
            elif tag == "code":
                last = entities[-1] if entities else None
                if (
                    last
                    and last["type"] == "pre"
                    and last["offset"] == offset
                    and last["length"] == length
                ):
                    if argument:
                        last["language"] = argument
                else:
                    entity = _ent("code", offset, length)
                    if argument:
                        entity["_language"] = argument
                    entities.append(entity)
            elif tag == "blockquote":
                entities.append(
                    _ent("expandable_blockquote" if expandable else "blockquote", offset, length)
                )
        stack.pop()
        i += 1
    if stack:
        raise _EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    for entity in entities:
        entity.pop("_language", None)
    return out.decode("utf-8"), entities


_MDV2_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
    "blockquote": "BlockQuote",
}


def _mdv2_name(kind, argument):
    if kind == "pre" and argument:
        return "PreCode"
    return _MDV2_NAMES.get(kind, kind)


def _reserved(ch):
    return _EntityError(
        f"Character '{chr(ch)}' is reserved and must be escaped with the preceding '\\'"
    )


def _parse_markdown_v2(text):
    t = _Bytes(text)
    n = t.n
    out = bytearray()
    u16 = 0
    entities = []
    stack = []  # [kind, argument, utf16 offset, byte offset, out position]
    have_blockquote = False
    i = 0
    while i < n:
        c = t[i]
        if c == 0x5C and 0 < t[i + 1] <= 126:  # backslash escape
            i += 1
            u16 += 1
            out.append(t[i])
            i += 1
            continue
        reserved = b"_*[]()~`>#+-=|{}.!\n"
        if stack and stack[-1][0] in ("code", "pre"):
            reserved = b"`"
        if c not in reserved:
            u16 += _u16_units(c)
            out.append(c)
            i += 1
            continue
        is_end = False
        if stack:
            kind = stack[-1][0]
            if have_blockquote and c == 0x0A and (i + 1 == n or t[i + 1] != 0x3E):
                is_end = True
            elif kind == "bold":
                is_end = c == 0x2A
            elif kind == "italic":
                is_end = c == 0x5F and t[i + 1] != 0x5F
            elif kind == "code":
                is_end = c == 0x60
            elif kind == "pre":
                is_end = c == 0x60 and t[i + 1] == 0x60 and t[i + 2] == 0x60
            elif kind in ("text_link", "custom_emoji"):
                is_end = c == 0x5D
            elif kind == "underline":
                is_end = c == 0x5F and t[i + 1] == 0x5F
            elif kind == "strikethrough":
                is_end = c == 0x7E
            elif kind == "spoiler":
                is_end = c == 0x7C and t[i + 1] == 0x7C
        if not is_end:
            byte_offset = i
            argument = ""
            if c == 0x5F:  # _
                if t[i + 1] == 0x5F:
                    kind = "underline"
                    i += 1
                else:
                    kind = "italic"
            elif c == 0x2A:
                kind = "bold"
            elif c == 0x7E:
                kind = "strikethrough"
            elif c == 0x7C:
                if t[i + 1] != 0x7C:
                    raise _reserved(c)
                i += 1
                kind = "spoiler"
            elif c == 0x5B:
                kind = "text_link"
            elif c == 0x60:
                if t[i + 1] == 0x60 and t[i + 2] == 0x60:
                    i += 3
                    kind = "pre"
                    language_end = i
                    while not _is_space(t[language_end]) and t[language_end] != 0x60:
                        language_end += 1
                    if i != language_end and language_end < n and t[language_end] != 0x60:
                        argument = t.b[i:language_end].decode("utf-8", "replace")
                        i = language_end
                    if t[i] in (0x0A, 0x0D):
                        if t[i + 1] in (0x0A, 0x0D) and t[i] != t[i + 1]:
                            i += 2
                        else:
                            i += 1
                    i -= 1
                else:
                    kind = "code"
            elif c == 0x21:
                if t[i + 1] != 0x5B:
                    raise _reserved(c)
                i += 1
                kind = "custom_emoji"
            elif c == 0x0A:
                u16 += 1
                out.append(0x0A)
                kind = None
                if i + 1 < n and t[i + 1] == 0x3E:
                    i += 1
                    if not have_blockquote:
                        kind = "blockquote"
                        have_blockquote = True
            elif c == 0x3E:
                if i != 0:
                    raise _reserved(c)
                kind = "blockquote"
                have_blockquote = True
            else:
                raise _reserved(c)
            if kind is not None:
                stack.append([kind, argument, u16, byte_offset, len(out)])
            i += 1
            continue
        # end of an entity
        kind, argument, offset, byte_offset, out_pos = stack[-1]
        if c == 0x0A and kind != "blockquote":
            raise _EntityError(
                f"Can't find end of {_mdv2_name(kind, argument)} entity at byte "
                f"offset {byte_offset}"
            )
        skip = u16 == offset
        extra = {}
        if kind in ("underline", "spoiler"):
            i += 1
        elif kind == "pre":
            i += 2
            if argument:
                extra["language"] = argument
        elif kind in ("text_link", "custom_emoji"):
            if t[i + 1] != 0x28:
                if kind == "custom_emoji":
                    raise _EntityError("Custom emoji entity must contain a tg://emoji URL")
                url = out[out_pos:].decode("utf-8", "replace")
            else:
                i += 2
                url_begin = i
                raw = bytearray()
                while i < n and t[i] != 0x29:
                    if t[i] == 0x5C and 0 < t[i + 1] <= 126:
                        raw.append(t[i + 1])
                        i += 2
                        continue
                    raw.append(t[i])
                    i += 1
                if t[i] != 0x29 or i >= n:
                    what = "a custom emoji URL" if kind == "custom_emoji" else "a URL"
                    raise _EntityError(f"Can't find end of {what} at byte offset {url_begin}")
                url = raw.decode("utf-8", "replace")
            if kind == "custom_emoji":
                m = re.match(r"^tg://emoji\?id=(\d+)$", url)
                if not m or int(m.group(1)) == 0:
                    raise _EntityError("Invalid custom emoji identifier specified")
                extra["custom_emoji_id"] = m.group(1)
            else:
                link = _link_entity(url, 0, 0)
                if link is None:
                    skip = True
                else:
                    kind = link["type"]
                    extra = {k: v for k, v in link.items() if k not in ("type", "offset", "length")}
        elif kind == "blockquote":
            have_blockquote = False
            out.append(c)
            u16 += 1
        if not skip:
            entities.append(_ent(kind, offset, u16 - offset, **extra))
        stack.pop()
        i += 1
    if have_blockquote and stack and stack[-1][0] == "blockquote":
        offset = stack[-1][2]
        if u16 > offset:
            entities.append(_ent("blockquote", offset, u16 - offset))
        stack.pop()
    if stack:
        kind, argument, _, byte_offset, _ = stack[-1]
        raise _EntityError(
            f"Can't find end of {_mdv2_name(kind, argument)} entity at byte offset {byte_offset}"
        )
    return out.decode("utf-8"), entities


def _parse_markdown(text):
    t = _Bytes(text)
    n = t.n
    out = bytearray()
    u16 = 0
    entities = []
    i = 0
    while i < n:
        c = t[i]
        if c == 0x5C and t[i + 1] in (0x5F, 0x2A, 0x60, 0x5B):
            i += 1
            out.append(t[i])
            u16 += 1
            i += 1
            continue
        if c not in (0x5F, 0x2A, 0x60, 0x5B):
            u16 += _u16_units(c)
            out.append(c)
            i += 1
            continue
        begin = i
        end_char = 0x5D if c == 0x5B else c
        is_pre = False
        i += 1
        language = ""
        if c == 0x60 and t[i] == 0x60 and t[i + 1] == 0x60:
            i += 2
            is_pre = True
            language_end = i
            while not _is_space(t[language_end]) and t[language_end] != 0x60:
                language_end += 1
            if i != language_end and language_end < n and t[language_end] != 0x60:
                language = t.b[i:language_end].decode("utf-8", "replace")
                i = language_end
            if t[i] in (0x0A, 0x0D):
                if t[i + 1] in (0x0A, 0x0D) and t[i] != t[i + 1]:
                    i += 2
                else:
                    i += 1
        offset = u16
        while i < n and (
            t[i] != end_char or (is_pre and not (t[i + 1] == 0x60 and t[i + 2] == 0x60))
        ):
            u16 += _u16_units(t[i])
            out.append(t[i])
            i += 1
        if i >= n:
            raise _EntityError(f"Can't find end of the entity starting at byte offset {begin}")
        if u16 != offset:
            length = u16 - offset
            if c == 0x5F:
                entities.append(_ent("italic", offset, length))
            elif c == 0x2A:
                entities.append(_ent("bold", offset, length))
            elif c == 0x5B:
                if t[i + 1] != 0x28:
                    url = t.b[begin + 1 : i].decode("utf-8", "replace")
                else:
                    i += 2
                    raw = bytearray()
                    while i < n and t[i] != 0x29:
                        raw.append(t[i])
                        i += 1
                    url = raw.decode("utf-8", "replace")
                entity = _link_entity(url, offset, length)
                if entity:
                    entities.append(entity)
            elif is_pre:
                entity = _ent("pre", offset, length)
                if language:
                    entity["language"] = language
                entities.append(entity)
            else:
                entities.append(_ent("code", offset, length))
        if is_pre:
            i += 2
        i += 1
    return out.decode("utf-8"), entities


# entities Telegram finds by itself (a simplified find_entities: bot commands, mentions,
# hashtags and URLs with an explicit http(s) scheme)
_AUTO_ENTITY_PATTERNS = (
    ("url", re.compile(r"(?i)(?<![\w@])https?://[^\s<>\"]+")),
    (
        "bot_command",
        re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/<>])"),
    ),
    ("mention", re.compile(r"(?<!\w)@[A-Za-z0-9_]{4,32}(?!\w)")),
    ("hashtag", re.compile(r"(?<![\w#])#\w{1,256}(?!\w*#)")),
)
_SPLITTABLE = frozenset(
    (
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "blockquote",
        "expandable_blockquote",
    )
)
_HIDDEN_DATA = frozenset(("text_link", "text_mention", "custom_emoji"))


def _find_entities(text):
    found = []
    taken = []
    for kind, pattern in _AUTO_ENTITY_PATTERNS:
        for m in pattern.finditer(text):
            start, end = m.start(), m.end()
            if kind == "url":
                while end > start and text[end - 1] in ".,;:!?)]}'\"":
                    end -= 1
            if kind == "hashtag" and not any(ch.isalpha() for ch in text[start + 1 : end]):
                continue
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            found.append(_ent(kind, _u16len(text[:start]), _u16len(text[start:end])))
    return found


def _sort_entities(entities):
    entities.sort(key=lambda e: (e["offset"], -e["length"], e["type"]))
    return entities


def _finish_text(text, entities, allow_empty):
    """td's fix_formatted_text, simplified: drop empty / whitespace-only entities, trim ' ' and
    '\\n' at the end and at the start (before the first entity), then add the entities Telegram
    detects by itself. Returns (text, entities); text is "" when nothing is left."""
    units = text.encode("utf-16-le")
    total = len(units) // 2

    def unit(k):
        return units[2 * k] | (units[2 * k + 1] << 8)

    ws = (0x20, 0x0A)
    kept = []
    for entity in entities:
        offset, length = entity["offset"], entity["length"]
        if offset < 0 or length <= 0 or offset >= total:
            continue
        entity = dict(entity, length=min(length, total - offset))
        if entity["type"] not in _HIDDEN_DATA:
            while entity["length"] > 0 and unit(entity["offset"]) in ws:
                entity["offset"] += 1
                entity["length"] -= 1
            if entity["length"] == 0:
                continue
            end = entity["offset"] + entity["length"]
            if all(unit(k) in ws for k in range(entity["offset"], end)):
                continue
        kept.append(entity)
    last = total - 1
    while last >= 0 and unit(last) in ws:
        last -= 1
    if last < 0:
        return "", []
    new_total = last + 1
    kept = [e for e in kept if e["offset"] < new_total]
    for entity in kept:
        entity["length"] = min(entity["length"], new_total - entity["offset"])
    first_entity = min((e["offset"] for e in kept), default=new_total)
    start = 0
    while start < first_entity and unit(start) in ws:
        start += 1
    for entity in kept:
        entity["offset"] -= start
    result = units[2 * start : 2 * new_total].decode("utf-16-le")
    continuous = [
        (e["offset"], e["offset"] + e["length"]) for e in kept if e["type"] not in _SPLITTABLE
    ]
    for entity in _find_entities(result):
        s, e = entity["offset"], entity["offset"] + entity["length"]
        if not any(s < ce and cs < e for cs, ce in continuous):
            kept.append(entity)
    return result, _sort_entities(kept)


_ENTITY_TYPES = frozenset(
    (
        "mention",
        "hashtag",
        "cashtag",
        "bot_command",
        "url",
        "email",
        "phone_number",
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "blockquote",
        "expandable_blockquote",
        "code",
        "pre",
        "text_link",
        "text_mention",
        "custom_emoji",
    )
)


def _explicit_entities(raw):
    if not isinstance(raw, list):
        raise _bad("can't parse entities JSON object")
    result = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise _bad('can\'t parse MessageEntity: Field "type" must be of type String')
        offset, length = _to_int(item.get("offset")), _to_int(item.get("length"))
        if offset is None or length is None:
            raise _bad('can\'t parse MessageEntity: Field "offset" must be of type Number')
        kind = item["type"]
        if kind not in _ENTITY_TYPES:
            raise _bad("can't parse MessageEntity: Unsupported type specified")
        entity = _ent(kind, offset, length)
        if kind == "text_link":
            url = _checked_link(str(item.get("url", "")))
            if url is None:
                raise _bad("can't parse MessageEntity: Entity URL is invalid")
            entity["url"] = url
        elif kind == "pre" and item.get("language"):
            entity["language"] = str(item["language"])
        elif kind == "custom_emoji":
            entity["custom_emoji_id"] = str(item.get("custom_emoji_id", ""))
        elif kind == "text_mention":
            entity["user"] = item.get("user") or {}
        if kind in ("mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number"):
            continue  # Telegram re-detects these itself
        result.append(entity)
    return result


# --------------------------------------------------------------------------------------------
# images


def _image_size(data):
    """(width, height) from a PNG/JPEG/GIF/WebP header, or None. Raises ValueError if the
    data is not an image of those kinds."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) >= 10:
            return struct.unpack("<HH", data[6:10])
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        chunk = data[12:16]
        try:
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b0, b1, b2, b3 = data[21:25]
                return 1 + (((b1 & 0x3F) << 8) | b0), 1 + (
                    ((b3 & 0xF) << 10) | (b2 << 2) | ((b1 & 0xC0) >> 6)
                )
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
        except (struct.error, ValueError):
            return None
        return None
    if data[:3] == b"\xff\xd8\xff":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            if i + 4 > len(data):
                return None
            seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(data):
                    return None
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + seg_len
        return None
    raise ValueError("not an image")


# --------------------------------------------------------------------------------------------
# state objects


class _File:
    __slots__ = (
        "file_id",
        "file_unique_id",
        "kind",
        "data",
        "url",
        "size",
        "path",
        "width",
        "height",
        "file_name",
        "mime_type",
        "group",
    )

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))


class Message:
    """A message the bot sent, as the stand-in stores it. Objects are live: edits and deletions
    through the API update them in place."""

    def __init__(self, fake, chat_id, message_id, kind):
        self._fake = fake
        self.message_id = message_id
        self.chat_id = chat_id
        self.kind = kind  # "text" | "photo" | "document" | "invoice"
        self.date = int(time.time())
        self.edit_date = None
        self.text = None
        self.caption = None
        self._entities = []
        self.photo = None  # list of PhotoSize dicts, largest last
        self.document = None  # Document dict
        self.invoice = None  # Invoice dict (as in the JSON) for kind "invoice"
        self._invoice = None  # the server-side _Invoice record (payload, paid ...)
        self.media_url = None  # when a photo/document was sent by http(s) URL
        self.reply_markup = None  # the markup as the bot last sent it (parsed JSON), or None
        self._inline = None  # normalised inline keyboard rows, or None
        self.keyboard = None  # reply keyboard rows of button texts, or None
        self.remove_keyboard = False
        self.parse_mode = None
        self.deleted = False
        self.edit_count = 0
        self.reply_to_message_id = None
        self._reply_to_json = None
        self.params = None  # the parameters of the call that created the message

    @property
    def entities(self):
        return copy.deepcopy(self._entities)

    @property
    def content(self):
        if self.kind == "text":
            return self.text or ""
        if self.kind == "invoice":
            return f"{self.invoice['title']}\n{self.invoice['description']}"
        return self.caption or ""

    @property
    def invoice_payload(self):
        """The payload of an invoice message (never part of the message JSON)."""
        return self._invoice.payload if self._invoice else None

    @property
    def photo_file_id(self):
        return self.photo[-1]["file_id"] if self.photo else None

    @property
    def document_file_id(self):
        return self.document["file_id"] if self.document else None

    @property
    def buttons(self):
        return copy.deepcopy(self._inline) if self._inline else []

    @property
    def button_texts(self):
        return [b["text"] for row in (self._inline or []) for b in row]

    def to_json(self):
        """The Message object as Telegram returns it."""
        fake = self._fake
        d = {
            "message_id": self.message_id,
            "from": fake._bot_from(),
            "chat": fake._chat_json(self.chat_id),
            "date": self.date,
        }
        if self.edit_date:
            d["edit_date"] = self.edit_date
        if self._reply_to_json is not None:
            d["reply_to_message"] = copy.deepcopy(self._reply_to_json)
        if self.kind == "text":
            d["text"] = self.text
            if self._entities:
                d["entities"] = copy.deepcopy(self._entities)
        elif self.kind == "invoice":
            d["invoice"] = copy.deepcopy(self.invoice)
        else:
            if self.kind == "photo":
                d["photo"] = copy.deepcopy(self.photo)
            else:
                d["document"] = copy.deepcopy(self.document)
            if self.caption:
                d["caption"] = self.caption
                if self._entities:
                    d["caption_entities"] = copy.deepcopy(self._entities)
        if self._inline:
            d["reply_markup"] = {"inline_keyboard": copy.deepcopy(self._inline)}
        return d

    def __repr__(self):
        flags = " deleted" if self.deleted else ""
        if self.edit_count:
            flags += f" edited×{self.edit_count}"
        return (
            f"<Message {self.chat_id}/{self.message_id} {self.kind}{flags} {self.content!r}"
            f"{' buttons=' + repr(self.button_texts) if self._inline else ''}>"
        )


class _Markup:
    __slots__ = ("raw", "inline", "keyboard", "remove_keyboard")

    def __init__(self, raw, inline=None, keyboard=None, remove_keyboard=False):
        self.raw = raw
        self.inline = inline
        self.keyboard = keyboard
        self.remove_keyboard = remove_keyboard


class _Invoice:
    """An invoice as Telegram keeps it server-side: from sendInvoice (chat_id, message_id) or
    createInvoiceLink (link). The payload never appears in the invoice message's JSON."""

    __slots__ = (
        "title",
        "description",
        "payload",
        "currency",
        "prices",
        "total_amount",
        "start_parameter",
        "chat_id",
        "message_id",
        "link",
        "paid",
    )

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))
        self.paid = False

    def to_json(self):
        """The Invoice object of the message."""
        return {
            "title": self.title,
            "description": self.description,
            "start_parameter": self.start_parameter,
            "currency": self.currency,
            "total_amount": self.total_amount,
        }


class Payment:
    """A user's attempt to pay an invoice (FakeTelegram.user_pays). Live: the stand-in updates it
    when the bot answers the pre-checkout query, when the answer time runs out and on refund.

    status: "pending" (the pre_checkout_query is out, no answer yet), "paid", "refused" (the bot
    answered ok=False; error_message is what Telegram showed the user) or "timed_out" (no answer
    in time: nobody was charged). When paid: charge_id (telegram_payment_charge_id), message
    (the successful_payment Message dict in the user's chat) and update_ids (the updates that
    carried it to the bot: [] when dropped, two when duplicated)."""

    def __init__(self, fake, user_id, invoice, query_id, deadline, drop, duplicate):
        self._fake = fake
        self._invoice = invoice
        self._deadline = deadline
        self._drop = drop
        self._duplicate = duplicate
        self._status = "pending"
        self._answered = False
        self.user_id = user_id
        self.query_id = query_id
        self.currency = invoice.currency
        self.total_amount = invoice.total_amount
        self.invoice_payload = invoice.payload
        self.invoice_link = invoice.link
        self.invoice_message_id = invoice.message_id
        self.error_message = None
        self.charge_id = None
        self.message = None
        self.update_ids = []
        self.refunded = False

    @property
    def status(self):
        with self._fake._lock:
            self._fake._expire(self)
            return self._status

    @property
    def done(self):
        return self.status != "pending"

    @property
    def ok(self):
        return self.status == "paid"

    @property
    def update_id(self):
        """The update_id of the successful_payment update (None when dropped or not paid)."""
        return self.update_ids[0] if self.update_ids else None

    @property
    def dropped(self):
        return self.status == "paid" and self._drop

    def wait(self):
        """Block until the bot answers the pre-checkout query or its time runs out (or the
        stand-in stops); returns self."""
        fake = self._fake
        with fake._cond:
            while not fake._stopped:
                fake._expire(self)
                if self._status != "pending":
                    break
                fake._cond.wait(max(0.001, self._deadline - time.monotonic()))
        return self

    def __repr__(self):
        what = self.invoice_link or f"message {self.user_id}/{self.invoice_message_id}"
        extra = ""
        if self.charge_id:
            extra = f" charge={self.charge_id}" + (" refunded" if self.refunded else "")
        elif self.error_message is not None:
            extra = f" error_message={self.error_message!r}"
        return (
            f"<Payment {self.status} user={self.user_id} {self.total_amount} {self.currency} "
            f"payload={self.invoice_payload!r} for {what}{extra}>"
        )


_INLINE_ACTIONS = (
    "url",
    "login_url",
    "callback_data",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "callback_game",
    "pay",
    "web_app",
    "copy_text",
)

_CHAT_ACTIONS = frozenset(
    (
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    )
)

_DEFAULT_UPDATE_TYPES = frozenset(
    (
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    )
)

_RATE_LIMITED = frozenset(
    (
        "sendmessage",
        "sendphoto",
        "senddocument",
        "editmessagetext",
        "editmessagecaption",
        "editmessagemedia",
        "editmessagereplymarkup",
        "copymessage",
        "forwardmessage",
        "sendinvoice",
    )
)

_PHOTO_LIMIT = 10 * 1024 * 1024
_DOCUMENT_LIMIT = 50 * 1024 * 1024
_BODY_LIMIT = 60 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# HTTP plumbing


def _disposition_param(header, key):
    m = re.search(rb"(?:^|;)\s*" + key.encode() + rb"\*=([^;]*)", header, re.I)
    if m:  # RFC 5987: charset'lang'percent-encoded
        value = m.group(1).strip().decode("latin-1")
        charset, _, rest = value.partition("'")
        _, _, encoded = rest.partition("'")
        return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
    m = re.search(rb"(?:^|;)\s*" + key.encode() + rb'="((?:[^"\\]|\\.)*)"', header, re.I)
    if m:
        return re.sub(rb"\\(.)", rb"\1", m.group(1)).decode("utf-8", "replace")
    # unquoted: telebot sends `filename=<raw name>` as the last parameter, so a filename runs
    # to the end of the header (it may contain ";" or spaces)
    tail = rb"=([^\r\n]*)$" if key == "filename" else rb"=([^;\r\n]*)"
    m = re.search(rb"(?:^|;)\s*" + key.encode() + tail, header, re.I)
    if m:
        return m.group(1).strip().decode("utf-8", "replace")
    return None


def _parse_multipart(body, content_type):
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.I)
    if not m:
        raise _bad("can't parse multipart/form-data: no boundary")
    boundary = (m.group(1) or m.group(2)).encode("latin-1")
    fields, files = {}, {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        if part.endswith(b"\r\n"):
            part = part[:-2]
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip()
        disposition = headers.get("content-disposition", b"")
        name = _disposition_param(disposition, "name")
        if name is None:
            continue
        filename = _disposition_param(disposition, "filename")
        if filename is not None:
            files[name] = {
                "filename": filename,
                "data": data,
                "content_type": headers.get("content-type", b"").decode("latin-1") or None,
            }
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, files


def _parse_request(query, content_type, body):
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    files = {}
    media_type = content_type.split(";")[0].strip().lower()
    if body:
        if media_type == "application/json":
            try:
                obj = json.loads(body.decode("utf-8"))
            except ValueError:
                raise _bad("can't parse JSON encoded request") from None
            if not isinstance(obj, dict):
                raise _bad("JSON encoded request must be an Object")
            params.update(obj)
        elif media_type == "multipart/form-data":
            fields, files = _parse_multipart(body, content_type)
            params.update(fields)
        else:
            params.update(
                urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            )
    return params, files


_JSON_PARAMS = frozenset(
    (
        "reply_markup",
        "media",
        "commands",
        "entities",
        "caption_entities",
        "allowed_updates",
        "scope",
        "menu_button",
        "reply_parameters",
        "link_preview_options",
        "prices",
        "suggested_tip_amounts",
    )
)


def _params_for_record(params, files):
    record = {}
    for key, value in params.items():
        if key in _JSON_PARAMS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        record[key] = value
    for key, upload in files.items():
        record[key] = {"filename": upload["filename"], "size": len(upload["data"])}
    return record


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # connection resets are normal here
        if not self.fake._stopped:
            self.fake._note_error("HTTP handler error:\n" + traceback.format_exc())


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nginx/1.18.0"
    sys_version = ""

    def log_message(self, format, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.fake._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, False)

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _BODY_LIMIT:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self):
        fake = self.server.fake
        body = self._read_body()
        if fake._down or fake._stopped:
            self.close_connection = True  # an outage: no answer at all
            return
        if body is None:
            answer = fake._json_answer(
                TelegramApiError(413, "Request Entity Too Large").body(), 413
            )
            self.close_connection = True
        else:
            answer = fake._dispatch(self.path, self.headers.get("Content-Type", ""), body)
        if answer is None:
            self.close_connection = True
            return
        status, payload, content_type = answer
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            # headers and body in one write (no Nagle / delayed-ACK stall between them)
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()
        except OSError:
            self.close_connection = True

    do_GET = _handle
    do_POST = _handle


# --------------------------------------------------------------------------------------------
# the fake


class FakeTelegram:
    """A Telegram Bot API server for tests. See the module docstring."""

    def __init__(self, token="123456:TEST-token", host="127.0.0.1", port=0):
        self.token = token
        prefix = token.split(":", 1)[0]
        self.bot_user = {
            "id": int(prefix) if prefix.isdigit() else 123456,
            "is_bot": True,
            "first_name": "Test Shop",
            "username": "test_shop_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._generation = 0
        self._server = None
        self._thread = None
        self._stopped = False
        self._down = False
        self._connections = set()
        # updates
        self._updates = []
        self._next_update_id = 700000001
        self._poll_generation = 0
        self._release_generation = 0
        self._allowed_updates = None
        self._webhook_url = ""
        # chats and messages
        self._chats = {}  # chat id -> {"user": dict, "next_id": int, "chat_instance": str}
        self._bot_messages = {}  # chat id -> {message id: Message}
        self._user_messages = {}  # chat id -> {message id: {"json": dict, "deleted": bool}}
        self._blocked = set()
        self._callback_queries = {}
        self._next_query = secrets.randbelow(10**12) * 10**6
        # files
        self._files = {}
        self._files_by_path = {}
        self._file_counter = 0
        # public records
        self.calls = []
        self.callback_answers = {}
        self.uploads = {}
        self.chat_actions = []  # (chat_id, action)
        self.menu_buttons = {}  # chat id (None = default) -> MenuButton dict
        self.errors = []  # internal errors of the stand-in itself (should stay empty)
        self.rate_limited = 0
        self.sent_count = 0
        self._commands_by_scope = {}  # (scope JSON, language code or "") -> [BotCommand]
        self._bot_texts = {}  # (kind: "name"/"description"/"short_description", language) -> text
        # Telegram Stars
        self.pre_checkout_timeout = _PRE_CHECKOUT_TIMEOUT  # seconds; tests may shorten it
        self.payments = []  # Payment objects, oldest first
        self.refunds = []  # successful refundStarPayment calls (dicts), oldest first
        self._pre_checkout = {}  # query id (int) -> Payment
        self._charges = {}  # telegram_payment_charge_id -> Payment
        self._star_transactions = []  # StarTransaction dicts, oldest first
        self._invoice_links = {}  # url -> _Invoice
        self._update_log = {}  # update_id -> (kind, object) of every update created
        # faults
        self._failures = {}
        self._limits = None
        self._global_bucket = None
        self._chat_buckets = {}
        self._methods = self._method_table()

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self):
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="FakeTelegram",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def base_url(self):
        if self._server is None:
            raise RuntimeError("FakeTelegram is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self):
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._notify()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def _track(self, conn, add):
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _notify(self):
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _note_error(self, text):
        with self._cond:
            self.errors.append(text)
            self._notify()

    # ----- shopper actions -------------------------------------------------------------------

    def open_chat(self, user_id, first_name="Shopper", language_code="en"):
        """A user who has a chat with the bot already (started it before the test), so that the
        shop's messages to them arrive, without an update the bot would answer."""
        with self._cond:
            self._ensure_chat(user_id, first_name, None, language_code)

    def _ensure_chat(self, user_id, first_name, username, language_code):
        chat = self._chats.get(user_id)
        user = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        if chat is None:
            chat = {"user": user, "next_id": 1, "chat_instance": str(-secrets.randbelow(2**62))}
            self._chats[user_id] = chat
            self._bot_messages[user_id] = {}
            self._user_messages[user_id] = {}
        else:
            chat["user"] = user
        return chat

    def _next_message_id(self, chat_id):
        chat = self._chats[chat_id]
        message_id = chat["next_id"]
        chat["next_id"] += 1
        return message_id

    def _allowed_types(self):
        return set(self._allowed_updates) if self._allowed_updates else _DEFAULT_UPDATE_TYPES

    def _push_update(self, kind, obj):
        """Queue an update for getUpdates and return it; None when the allowed_updates the bot
        last gave exclude its kind (Telegram then does not create the update at all)."""
        if kind not in self._allowed_types():
            return None
        update = {"update_id": self._next_update_id, kind: obj}
        self._next_update_id += 1
        self._updates.append(update)
        self._update_log[update["update_id"]] = (kind, copy.deepcopy(obj))
        self._notify()
        return update

    def _member_update(self, user_id, old_status, new_status):
        bot = self._bot_from()
        new = {"user": bot, "status": new_status}
        if new_status == "kicked":
            new["until_date"] = 0
        old = {"user": bot, "status": old_status}
        if old_status == "kicked":
            old["until_date"] = 0
        self._push_update(
            "my_chat_member",
            {
                "chat": self._chat_json(user_id),
                "from": copy.deepcopy(self._chats[user_id]["user"]),
                "date": int(time.time()),
                "old_chat_member": old,
                "new_chat_member": new,
            },
        )

    def user_sends(self, user_id, text, first_name="Ann", username=None, language_code="en"):
        """The user writes `text` to the bot in their private chat; returns the Message dict."""
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            raise ValueError("user_id must be a positive int")
        with self._cond:
            self._ensure_chat(user_id, first_name, username, language_code)
            if user_id in self._blocked:  # "Restart bot" unblocks, then sends
                self._blocked.discard(user_id)
                self._member_update(user_id, "kicked", "member")
            message = {
                "message_id": self._next_message_id(user_id),
                "from": copy.deepcopy(self._chats[user_id]["user"]),
                "chat": self._chat_json(user_id),
                "date": int(time.time()),
                "text": text,
            }
            entities = _sort_entities(_find_entities(text))
            if entities:
                message["entities"] = entities
            self._user_messages[user_id][message["message_id"]] = {
                "json": message,
                "deleted": False,
            }
            self._push_update("message", copy.deepcopy(message))
            return copy.deepcopy(message)

    def user_clicks(self, user_id, message_id, callback_data, forged=False):
        """The user presses the inline button with `callback_data` under a bot message; returns
        the callback query id. forged=True sends data no button carries (a modified client)."""
        with self._cond:
            if user_id not in self._chats:
                raise AssertionError(f"user {user_id} has never talked to the bot")
            message = self._bot_messages[user_id].get(message_id)
            if message is None or message.deleted:
                state = "was deleted" if message is not None else "does not exist"
                raise AssertionError(
                    f"user {user_id} cannot click: bot message {message_id} in that chat {state}"
                )
            if not forged and not any(
                b.get("callback_data") == callback_data
                for row in (message._inline or [])
                for b in row
            ):
                raise AssertionError(
                    f"bot message {message_id} in chat {user_id} has no inline button with "
                    f"callback_data {callback_data!r}; its buttons now: {message.buttons}"
                )
            self._next_query += 1
            query_id = str(self._next_query)
            self._callback_queries[query_id] = {
                "user_id": user_id,
                "answered": False,
                "data": callback_data,
                "message_id": message_id,
            }
            self._push_update(
                "callback_query",
                {
                    "id": query_id,
                    "from": copy.deepcopy(self._chats[user_id]["user"]),
                    "message": message.to_json(),
                    "chat_instance": self._chats[user_id]["chat_instance"],
                    "data": callback_data,
                },
            )
            return query_id

    def click_button(self, user_id, text):
        """Click the inline button with this text (or for which text(button_text) is true) under
        the newest visible bot message that has one; returns the callback query id."""
        matches = text if callable(text) else (lambda t: t == text)
        with self._cond:
            non_callback = []
            for message in reversed(self._visible(user_id)):
                for row in message._inline or []:
                    for button in row:
                        if matches(button["text"]):
                            if "callback_data" in button:
                                return self.user_clicks(
                                    user_id, message.message_id, button["callback_data"]
                                )
                            non_callback.append((message.message_id, button))
            listing = (
                "\n".join(
                    f"  message {m.message_id}: {m.button_texts}"
                    for m in self._visible(user_id)
                    if m._inline
                )
                or "  (none)"
            )
            hint = (
                f"\nmatching buttons without callback_data: {non_callback}" if non_callback else ""
            )
            raise AssertionError(
                f"no visible inline button {text!r} in chat {user_id}{hint}\n"
                f"visible buttons:\n{listing}"
            )

    def user_blocks_bot(self, user_id):
        """From now on sends to this chat fail with 403 (until the user writes again)."""
        with self._cond:
            if user_id not in self._chats:
                self._ensure_chat(user_id, "Ann", None, "en")
            if user_id not in self._blocked:
                self._blocked.add(user_id)
                self._member_update(user_id, "member", "kicked")
            self._notify()

    def user_unblocks_bot(self, user_id):
        with self._cond:
            if user_id in self._blocked:
                self._blocked.discard(user_id)
                self._member_update(user_id, "kicked", "member")
            self._notify()

    def user_pays(
        self,
        user_id,
        invoice,
        wait=True,
        timeout=None,
        drop_successful_payment=False,
        duplicate_successful_payment=False,
    ):
        """The user confirms paying `invoice` in Telegram Stars: an invoice message the bot sent
        with sendInvoice (a Message from messages()/wait_message(), its JSON dict or a telebot
        Message) or a link the bot made with createInvoiceLink. Returns a Payment.

        Telegram sends the bot a pre_checkout_query update and waits `timeout` seconds (default
        fake.pre_checkout_timeout, 10 like Telegram) for answerPreCheckoutQuery. Answered ok:
        the user is charged (a StarTransaction is recorded) and a `message` update with
        successful_payment goes to the bot in the user's private chat. Refused or not answered
        in time: nobody is charged and nothing is sent. wait=False returns at once (status
        "pending"; Payment.wait() blocks, Payment.status tells). drop_successful_payment=True:
        the charge happens but its update never reaches the bot (a shop that died after
        getUpdates returned it); duplicate_successful_payment=True: it is delivered twice."""
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            raise ValueError("user_id must be a positive int")
        with self._cond:
            record = self._invoice_to_pay(user_id, invoice)
            if user_id not in self._chats:
                self._ensure_chat(user_id, "Ann", None, "en")
            self._next_query += 1
            query_id = self._next_query
            seconds = self.pre_checkout_timeout if timeout is None else timeout
            payment = Payment(
                self,
                user_id,
                record,
                str(query_id),
                time.monotonic() + seconds,
                bool(drop_successful_payment),
                bool(duplicate_successful_payment),
            )
            self._pre_checkout[query_id] = payment
            self.payments.append(payment)
            self._push_update(
                "pre_checkout_query",
                {
                    "id": str(query_id),
                    "from": copy.deepcopy(self._chats[user_id]["user"]),
                    "currency": record.currency,
                    "total_amount": record.total_amount,
                    "invoice_payload": record.payload,
                },
            )
        if wait:
            payment.wait()
        return payment

    def _invoice_to_pay(self, user_id, invoice):
        if isinstance(invoice, str):
            record = self._invoice_links.get(invoice.strip())
            if record is None:
                raise AssertionError(
                    f"no invoice link {invoice!r}; links the bot created: "
                    f"{list(self._invoice_links) or '(none)'}"
                )
            return record
        if isinstance(invoice, Message):
            chat_id, message_id = invoice.chat_id, invoice.message_id
        elif isinstance(invoice, dict):
            chat_id = (invoice.get("chat") or {}).get("id")
            message_id = invoice.get("message_id")
        else:  # a telebot Message
            chat_id = getattr(getattr(invoice, "chat", None), "id", None)
            message_id = getattr(invoice, "message_id", None)
        message = self._bot_messages.get(chat_id, {}).get(message_id)
        if message is None or message.kind != "invoice":
            raise AssertionError(
                f"bot message {message_id} in chat {chat_id} is not an invoice: {message!r}"
            )
        if message.deleted:
            raise AssertionError(f"invoice message {chat_id}/{message_id} was deleted")
        if chat_id != user_id:
            raise AssertionError(
                f"invoice message {chat_id}/{message_id} is in another user's chat, not {user_id}"
            )
        if message._invoice.paid:
            raise AssertionError(
                f"invoice message {chat_id}/{message_id} is already paid: Telegram shows a "
                "Receipt button instead of Pay"
            )
        return message._invoice

    def _expire(self, payment):
        """A pending pre-checkout query whose answer time is over fails (lock held)."""
        if payment._status == "pending" and time.monotonic() >= payment._deadline:
            payment._status = "timed_out"
            self._notify()

    def _charge(self, payment):
        """The bot said ok in time: charge the user and tell the bot (lock held)."""
        record, user_id = payment._invoice, payment.user_id
        user = copy.deepcopy(self._chats[user_id]["user"])
        charge_id = "stx" + secrets.token_urlsafe(36)
        now = int(time.time())
        self._star_transactions.append(
            {
                "id": charge_id,
                "date": now,
                "source": self._partner_json(user, record.payload),
                "amount": record.total_amount,
            }
        )
        message = {
            "message_id": self._next_message_id(user_id),
            "from": user,
            "chat": self._chat_json(user_id),
            "date": now,
            "successful_payment": {
                "currency": record.currency,
                "total_amount": record.total_amount,
                "invoice_payload": record.payload,
                "telegram_payment_charge_id": charge_id,
                # Stars have no payment provider: an empty string, as the public Stars
                # examples show it (not verified against Telegram)
                "provider_payment_charge_id": "",
            },
        }
        self._user_messages[user_id][message["message_id"]] = {"json": message, "deleted": False}
        payment._status, payment.charge_id = "paid", charge_id
        payment.message = copy.deepcopy(message)
        self._charges[charge_id] = payment
        if record.message_id is not None:
            record.paid = True
        if not payment._drop:
            for _ in range(2 if payment._duplicate else 1):
                update = self._push_update("message", copy.deepcopy(message))
                if update is not None:
                    payment.update_ids.append(update["update_id"])
        self._notify()

    @staticmethod
    def _partner_json(user, payload):
        """TransactionPartnerUser of an invoice payment or of its refund."""
        partner = {"transaction_type": "invoice_payment", "type": "user", "user": user}
        if payload:
            partner["invoice_payload"] = payload
        return partner

    def replay_update(self, update_id):
        """Deliver an update created earlier once more as a new update: a fresh update_id, the
        same content (the same message_id, the same charge id ...), like a duplicated or
        replayed delivery. Returns the new update_id (None if allowed_updates now exclude it).
        (A redelivery with the same update_id needs no help: getUpdates without a confirming
        offset returns the unconfirmed updates again, as Telegram does.)"""
        with self._cond:
            entry = self._update_log.get(update_id)
            if entry is None:
                raise AssertionError(f"no update {update_id} was ever created")
            update = self._push_update(entry[0], copy.deepcopy(entry[1]))
            return update["update_id"] if update else None

    # ----- reading what the bot did -----------------------------------------------------------

    def star_transactions(self):
        """The bot's StarTransaction dicts, newest first (what getStarTransactions lists)."""
        with self._lock:
            return copy.deepcopy(self._star_transactions[::-1])

    def invoice_links(self):
        """The links the bot made with createInvoiceLink, oldest first, with what they sell."""
        with self._lock:
            return [
                dict(record.to_json(), url=url, payload=record.payload)
                for url, record in self._invoice_links.items()
            ]

    def _visible(self, chat_id):
        return [m for _, m in sorted(self._bot_messages.get(chat_id, {}).items()) if not m.deleted]

    def messages(self, chat_id):
        with self._lock:
            return self._visible(chat_id)

    def all_messages(self, chat_id):
        with self._lock:
            return [m for _, m in sorted(self._bot_messages.get(chat_id, {}).items())]

    def last_message(self, chat_id):
        with self._lock:
            visible = self._visible(chat_id)
            return visible[-1] if visible else None

    def user_messages(self, chat_id):
        """The messages the user sent in that chat (dicts), deleted ones excluded."""
        with self._lock:
            return [
                copy.deepcopy(v["json"])
                for _, v in sorted(self._user_messages.get(chat_id, {}).items())
                if not v["deleted"]
            ]

    def calls_to(self, method):
        method = method.lower()
        with self._lock:
            return [params for name, params in self.calls if name.lower() == method]

    def pending_updates(self):
        with self._lock:
            return copy.deepcopy(self._updates)

    def _recent_calls(self, count=20):
        with self._lock:
            calls = self.calls[-count:]
            total = len(self.calls)
        lines = []
        for name, params in calls:
            text = json.dumps(params, ensure_ascii=False, default=str)
            lines.append(f"  {name} {text[:300]}{'…' if len(text) > 300 else ''}")
        return f"recent API calls ({len(calls)} of {total}):\n" + ("\n".join(lines) or "  (none)")

    def wait_for(self, predicate, timeout=10, what=""):
        """Call predicate() until it returns something truthy and return that. Woken by every
        API call and user action (and re-checked at least every 0.2 s in case it depends on
        state outside the stand-in). On timeout: AssertionError with `what` and recent calls."""
        return self._wait(predicate, timeout, what, None)

    def _wait(self, predicate, timeout, what, details):
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                generation = self._generation
            result = predicate()  # outside the lock: it may call into the application
            if result:
                return result
            with self._cond:
                while self._generation == generation:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(min(remaining, 0.2))
                    if self._generation == generation:
                        break  # periodic re-check
            if time.monotonic() >= deadline:
                result = predicate()
                if result:
                    return result
                waited_for = what or getattr(predicate, "__name__", predicate)
                message = f"timed out after {timeout}s waiting for {waited_for}"
                if details:
                    message += "\n" + details()
                message += "\n" + self._recent_calls()
                if self.errors:
                    message += "\nstand-in internal errors:\n" + "\n".join(self.errors[-3:])
                raise AssertionError(message)

    def wait_message(self, chat_id, contains, timeout=10):
        """Wait for a visible bot message in that chat whose content contains `contains`
        (edited messages count with their current content); returns the newest such message."""

        def find():
            for message in reversed(self.messages(chat_id)):
                if contains in message.content:
                    return message
            return None

        def details():
            listing = "\n".join(f"  {m!r}" for m in self.messages(chat_id)) or "  (none)"
            return f"visible bot messages in chat {chat_id}:\n{listing}"

        return self._wait(
            find, timeout, f"a bot message in chat {chat_id} containing {contains!r}", details
        )

    def release_polls(self):
        """Make every waiting getUpdates return now (with whatever is pending, usually [])."""
        with self._cond:
            self._release_generation += 1
            self._notify()

    # ----- faults ----------------------------------------------------------------------------

    def enforce_limits(self, per_second=30, per_chat_per_second=1.0, per_chat_burst=3):
        """Enforce flood limits on message-producing methods; enforce_limits(None) turns it off."""
        with self._cond:
            if per_second is None:
                self._limits = None
            else:
                self._limits = (
                    float(per_second),
                    float(per_chat_per_second),
                    float(per_chat_burst),
                )
                self._global_bucket = [float(per_second), time.monotonic()]
                self._chat_buckets = {}
            self._notify()

    def fail_next(self, method, status=502, times=1, description=None, retry_after=1):
        """The next `times` calls to `method` answer HTTP `status` with a Telegram-shaped error
        body; status="disconnect" closes the connection without an answer; status="hang" keeps
        the request waiting `retry_after` seconds (or until stop()) and then disconnects."""
        if description is None:
            description = {
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden",
                404: "Not Found",
                409: "Conflict",
                429: f"Too Many Requests: retry after {retry_after}",
                500: "Internal Server Error",
                502: "Bad Gateway",
                503: "Service Unavailable",
                504: "Gateway Timeout",
            }.get(status, "Bad Gateway")
        with self._cond:
            queue = self._failures.setdefault(method.lower(), [])
            for _ in range(times):
                queue.append((status, description, retry_after))
            self._notify()

    def set_down(self, down=True):
        """While down, every request is answered by closing the connection."""
        with self._cond:
            self._down = bool(down)
            self._notify()

    def _rate_check(self, chat_id, consume=True):
        if self._limits is None:
            return
        per_second, per_chat, burst = self._limits
        now = time.monotonic()
        bucket = self._global_bucket
        bucket[0] = min(per_second, bucket[0] + (now - bucket[1]) * per_second)
        bucket[1] = now
        chat_bucket = self._chat_buckets.setdefault(chat_id, [burst, now])
        chat_bucket[0] = min(burst, chat_bucket[0] + (now - chat_bucket[1]) * per_chat)
        chat_bucket[1] = now
        wait = 0.0
        if bucket[0] < 1:
            wait = max(wait, (1 - bucket[0]) / per_second)
        if chat_bucket[0] < 1:
            wait = max(wait, (1 - chat_bucket[0]) / per_chat if per_chat > 0 else 3600)
        if wait > 0:
            self.rate_limited += 1
            retry_after = max(1, math.ceil(wait))
            raise TelegramApiError(
                429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )
        if consume:
            bucket[0] -= 1
            chat_bucket[0] -= 1

    # ----- HTTP dispatch ---------------------------------------------------------------------

    @staticmethod
    def _json_answer(body, status=200):
        return status, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json"

    def _dispatch(self, raw_path, content_type, body):
        split = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(split.path)
        unauthorized = TelegramApiError(401, "Unauthorized").body()
        not_found = TelegramApiError(404, "Not Found").body()
        if path.startswith("/file/bot"):
            token, _, file_path = path[len("/file/bot") :].partition("/")
            if token != self.token:
                return self._json_answer(unauthorized, 401)
            with self._lock:
                record = self._files_by_path.get(file_path)
            if record is None or record.data is None:
                return self._json_answer(not_found, 404)
            return 200, record.data, record.mime_type or "application/octet-stream"
        if not path.startswith("/bot"):
            return self._json_answer(not_found, 404)
        token, _, method = path[len("/bot") :].partition("/")
        if token != self.token:
            return self._json_answer(unauthorized, 401)
        handler, canonical = self._methods.get(method.lower(), (None, method))
        try:
            params, files = _parse_request(split.query, content_type, body)
        except TelegramApiError as error:
            with self._cond:
                self.calls.append((canonical, {}))
                self._notify()
            return self._json_answer(error.body(), error.code)
        with self._cond:
            self.calls.append((canonical, _params_for_record(params, files)))
            self._notify()
            if handler is None:
                return self._json_answer(not_found, 404)
            queue = self._failures.get(canonical.lower())
            if queue:
                status, description, retry_after = queue.pop(0)
                if status == "disconnect":
                    return None
                if (
                    status == "hang"
                ):  # a slow network: no answer for retry_after seconds, then a drop
                    deadline = time.monotonic() + retry_after
                    while not self._stopped and time.monotonic() < deadline:
                        self._cond.wait(deadline - time.monotonic())
                    return None
                error = TelegramApiError(
                    int(status),
                    description,
                    {"retry_after": retry_after} if int(status) == 429 else None,
                )
                return self._json_answer(error.body(), error.code)
            try:
                result = handler(params, files)
                answer = self._json_answer({"ok": True, "result": result})
            except TelegramApiError as error:
                answer = self._json_answer(error.body(), error.code)
            except Exception:  # a bug in the stand-in: make it loud
                text = traceback.format_exc()
                self.errors.append(f"{canonical}: {text}")
                answer = self._json_answer(
                    TelegramApiError(
                        500,
                        f"Internal Server Error: stand-in crashed in {canonical}: "
                        f"{text.splitlines()[-1]}",
                    ).body(),
                    500,
                )
            self._notify()
            return answer

    def _method_table(self):
        names = [
            "getMe",
            "getUpdates",
            "deleteWebhook",
            "setWebhook",
            "getWebhookInfo",
            "setMyCommands",
            "getMyCommands",
            "deleteMyCommands",
            "setChatMenuButton",
            "getChatMenuButton",
            "sendMessage",
            "sendPhoto",
            "sendDocument",
            "editMessageText",
            "editMessageCaption",
            "editMessageMedia",
            "editMessageReplyMarkup",
            "deleteMessage",
            "answerCallbackQuery",
            "sendChatAction",
            "getFile",
            "getChat",
            "setMyDescription",
            "getMyDescription",
            "setMyShortDescription",
            "getMyShortDescription",
            "setMyName",
            "getMyName",
            "sendInvoice",
            "createInvoiceLink",
            "answerPreCheckoutQuery",
            "refundStarPayment",
            "getStarTransactions",
            "getMyStarBalance",
        ]
        return {name.lower(): (getattr(self, "_m_" + name), name) for name in names}

    # ----- JSON shapes -----------------------------------------------------------------------

    def _bot_from(self):
        return {k: self.bot_user[k] for k in ("id", "is_bot", "first_name", "username")}

    def _chat_json(self, chat_id):
        user = self._chats[chat_id]["user"]
        chat = {"id": chat_id, "first_name": user["first_name"]}
        if user.get("username"):
            chat["username"] = user["username"]
        chat["type"] = "private"
        return chat

    # ----- parameter helpers -----------------------------------------------------------------

    def _chat_id(self, params, required=True):
        raw = params.get("chat_id")
        if raw is None or raw == "":
            if not required:
                return None
            raise _bad("chat_id is empty")
        chat_id = _to_int(raw)
        if chat_id is None or chat_id not in self._chats:
            raise _bad("chat not found")
        return chat_id

    def _check_not_blocked(self, chat_id):
        if chat_id in self._blocked:
            raise TelegramApiError(403, _BLOCKED)

    def _format(self, raw, parse_mode, entities_param, limit, too_long, allow_empty):
        """Returns (text, entities, parse_mode) or raises the Bot API's errors."""
        raw = _to_str(raw) or ""
        mode = (_to_str(parse_mode) or "").strip()
        explicit = _json_value(entities_param, _bad("can't parse entities JSON object"))
        try:
            if explicit is not None:
                text, entities = raw, _explicit_entities(explicit)
            elif mode.lower() == "html":
                text, entities = _parse_html(raw)
            elif mode.lower() == "markdownv2":
                text, entities = _parse_markdown_v2(raw)
            elif mode.lower() == "markdown":
                text, entities = _parse_markdown(raw)
            elif mode == "":
                text, entities = raw, []
            else:
                raise _bad("unsupported parse_mode")
        except _EntityError as error:
            raise _bad(f"can't parse entities: {error}") from None
        text, entities = _finish_text(text, entities, allow_empty)
        for entity in entities:
            if entity["type"] == "text_mention":
                known = self._chats.get(entity["user"].get("id"))
                if known:
                    entity["user"] = copy.deepcopy(known["user"])
        if _u16len(text) > limit:
            raise _bad(too_long)
        return text, entities, (mode or None)

    def _markup(self, params, inline_only=False):
        raw = params.get("reply_markup")
        error = _bad("can't parse reply keyboard markup JSON object")
        value = _json_value(raw, error)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise error
        if "inline_keyboard" in value:
            rows = value["inline_keyboard"]
            if not isinstance(rows, list):
                raise _bad('Field "inline_keyboard" of the InlineKeyboardMarkup must be an Array')
            result = []
            total = 0
            for row in rows:
                if not isinstance(row, list):
                    raise _bad(
                        'Field "inline_keyboard" of the InlineKeyboardMarkup '
                        "must be an Array of Arrays"
                    )
                out_row = [self._inline_button(button) for button in row]
                total += len(out_row)
                if out_row:
                    result.append(out_row)
            if total > 100:
                raise _bad("REPLY_MARKUP_TOO_LONG")
            return _Markup(value, inline=result or None)
        if inline_only:
            raise _bad("inline keyboard expected")
        if "keyboard" in value:
            rows = value["keyboard"]
            if not isinstance(rows, list):
                raise _bad('Field "keyboard" of the ReplyKeyboardMarkup must be an Array')
            texts = []
            for row in rows:
                if not isinstance(row, list):
                    raise _bad(
                        'Field "keyboard" of the ReplyKeyboardMarkup must be an Array of Arrays'
                    )
                out_row = []
                for button in row:
                    if isinstance(button, str):
                        out_row.append(button)
                    elif isinstance(button, dict) and isinstance(button.get("text"), str):
                        out_row.append(button["text"])
                    else:
                        raise _bad(
                            'can\'t parse keyboard button: Field "text" must be of type String'
                        )
                if out_row:
                    texts.append(out_row)
            return _Markup(value, keyboard=texts)
        if value.get("remove_keyboard"):
            return _Markup(value, remove_keyboard=True)
        if value.get("force_reply"):
            return _Markup(value)
        raise error

    @staticmethod
    def _inline_button(button):
        if not isinstance(button, dict):
            raise _bad("can't parse inline keyboard button: InlineKeyboardButton must be an Object")
        if "text" not in button:
            raise _bad("can't parse inline keyboard button: Can't find field \"text\"")
        text = button["text"]
        if not isinstance(text, str):
            raise _bad('can\'t parse inline keyboard button: Field "text" must be of type String')
        if text.strip() == "":
            raise _bad("BUTTON_TEXT_INVALID")
        for action in _INLINE_ACTIONS:
            if action not in button:
                continue
            value = button[action]
            out = {"text": text}
            if action == "callback_data":
                if not isinstance(value, str):
                    raise _bad(
                        "can't parse inline keyboard button: "
                        'Field "callback_data" must be of type String'
                    )
                if not 1 <= len(value.encode("utf-8")) <= 64:
                    raise _bad("BUTTON_DATA_INVALID")
            elif action == "url":
                if not isinstance(value, str) or _checked_link(value) is None:
                    raise _bad("BUTTON_URL_INVALID")
            elif action == "web_app":
                url = value.get("url") if isinstance(value, dict) else None
                if (
                    not isinstance(url, str)
                    or not url.lower().startswith("https://")
                    or _checked_link(url) is None
                ):
                    raise _bad("BUTTON_URL_INVALID")
                value = {"url": url}
            out[action] = copy.deepcopy(value)
            if "style" in button:
                out["style"] = button["style"]
            return out
        raise _bad(
            "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
        )

    def _reply_to(self, chat_id, params):
        reply = _json_value(
            params.get("reply_parameters"), _bad("can't parse reply parameters JSON object")
        )
        allow_missing = _to_bool(params.get("allow_sending_without_reply"))
        message_id = _to_int(params.get("reply_to_message_id"))
        if isinstance(reply, dict):
            message_id = _to_int(reply.get("message_id"))
            allow_missing = bool(reply.get("allow_sending_without_reply"))
        if not message_id:
            return None, None
        bot_message = self._bot_messages[chat_id].get(message_id)
        if bot_message is not None and not bot_message.deleted:
            reply_json = bot_message.to_json()
            reply_json.pop("reply_to_message", None)
            return message_id, reply_json
        user_message = self._user_messages[chat_id].get(message_id)
        if user_message is not None and not user_message["deleted"]:
            return message_id, copy.deepcopy(user_message["json"])
        if allow_missing:
            return None, None
        raise _bad("message to be replied not found")

    def _new_message(self, chat_id, kind, params, markup, reply):
        message = Message(self, chat_id, self._next_message_id(chat_id), kind)
        message.params = _params_for_record(params, {})
        self._apply_markup(message, markup)
        if markup is not None:
            message.keyboard = (
                copy.deepcopy(markup.keyboard) if markup.keyboard is not None else None
            )
            message.remove_keyboard = markup.remove_keyboard
        message.reply_to_message_id, message._reply_to_json = reply
        self._bot_messages[chat_id][message.message_id] = message
        self.sent_count += 1
        return message

    @staticmethod
    def _apply_markup(message, markup):
        message.reply_markup = copy.deepcopy(markup.raw) if markup is not None else None
        message._inline = (
            copy.deepcopy(markup.inline) if markup is not None and markup.inline else None
        )

    # ----- files -----------------------------------------------------------------------------

    def _new_file_ids(self, prefix):
        return prefix + secrets.token_urlsafe(48)[:60], "AQAD" + secrets.token_urlsafe(12)[:14]

    def _register_file(self, record, extension):
        self._file_counter += 1
        folder = "photos" if record.kind == "photo" else "documents"
        record.path = f"{folder}/file_{self._file_counter}{extension}"
        self._files[record.file_id] = record
        self._files_by_path[record.path] = record
        return record

    def _photo_from_bytes(self, upload):
        data = upload["data"]
        if len(data) > _PHOTO_LIMIT:
            raise _bad("file is too big")
        try:
            size = _image_size(data)
        except ValueError:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        width, height = size if size and size[0] and size[1] else (512, 512)
        if width + height > 10000 or max(width, height) > 20 * min(width, height):
            raise _bad("PHOTO_INVALID_DIMENSIONS")
        mime = (
            "image/png"
            if data[:4] == b"\x89PNG"
            else "image/gif"
            if data[:3] == b"GIF"
            else "image/webp"
            if data[:4] == b"RIFF"
            else "image/jpeg"
        )
        group = self._photo_group(width, height, len(data), data, None, mime)
        self.uploads[group[-1].file_id] = data
        return group

    def _photo_group(self, width, height, size, data, url, mime):
        boxes = [90, 320, 800, 1280, 2560]
        dims = []
        for box in boxes:
            scale = min(1.0, box / max(width, height))
            dims.append((max(1, round(width * scale)), max(1, round(height * scale))))
            if max(width, height) <= box:
                break
        if len(dims) == 1:
            dims.insert(0, dims[0])
        group = []
        for index, (w, h) in enumerate(dims):
            file_id, unique_id = self._new_file_ids("AgACAgIAAxkBAAI")
            last = index == len(dims) - 1
            file_size = size if last else max(1, int(size * (w * h) / max(1, width * height)))
            record = _File(
                file_id=file_id,
                file_unique_id=unique_id,
                kind="photo",
                data=data,
                url=url,
                size=file_size,
                width=w,
                height=h,
                mime_type=mime,
            )
            self._register_file(record, ".jpg")
            group.append(record)
        for record in group:
            record.group = group
        return group

    @staticmethod
    def _photo_json(group):
        return [
            {
                "file_id": r.file_id,
                "file_unique_id": r.file_unique_id,
                "file_size": r.size,
                "width": r.width,
                "height": r.height,
            }
            for r in group
        ]

    def _resolve_photo(self, value, files):
        if isinstance(value, dict) and "data" in value:
            return self._photo_from_bytes(value), None
        value = (_to_str(value) or "").strip()
        if not value:
            raise _bad("there is no photo in the request")
        if value.startswith("attach://"):
            upload = files.get(value[len("attach://") :])
            if upload is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            return self._photo_from_bytes(upload), None
        if re.match(r"(?i)^https?://", value):
            if _checked_link(value) is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            return self._photo_group(800, 600, 50000, None, value, "image/jpeg"), value
        record = self._files.get(value)
        if record is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        if record.kind != "photo":
            raise _bad("type of file mismatch")
        return record.group, record.url

    def _resolve_document(self, value, files):
        if isinstance(value, dict) and "data" in value:
            return self._document_from_bytes(value), None
        value = (_to_str(value) or "").strip()
        if not value:
            raise _bad("there is no document in the request")
        if value.startswith("attach://"):
            upload = files.get(value[len("attach://") :])
            if upload is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            return self._document_from_bytes(upload), None
        if re.match(r"(?i)^https?://", value):
            if _checked_link(value) is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            name = urllib.parse.urlsplit(value).path.rsplit("/", 1)[-1] or "file"
            file_id, unique_id = self._new_file_ids("BQACAgIAAxkBAAI")
            record = _File(
                file_id=file_id,
                file_unique_id=unique_id,
                kind="document",
                data=None,
                url=value,
                size=0,
                file_name=name,
                mime_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
            )
            return self._register_file(record, ""), value
        record = self._files.get(value)
        if record is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        if record.kind != "document":
            raise _bad("type of file mismatch")
        return record, record.url

    def _document_from_bytes(self, upload):
        data = upload["data"]
        if len(data) > _DOCUMENT_LIMIT:
            raise _bad("file is too big")
        if not data:
            raise _bad("file must be non-empty")
        name = upload.get("filename") or "document"
        mime = upload.get("content_type")
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        file_id, unique_id = self._new_file_ids("BQACAgIAAxkBAAI")
        record = _File(
            file_id=file_id,
            file_unique_id=unique_id,
            kind="document",
            data=data,
            size=len(data),
            file_name=name,
            mime_type=mime,
        )
        extension = "." + name.rsplit(".", 1)[-1] if "." in name else ""
        self._register_file(record, extension)
        self.uploads[file_id] = data
        return record

    @staticmethod
    def _document_json(record):
        d = {
            "file_name": record.file_name,
            "mime_type": record.mime_type,
            "file_id": record.file_id,
            "file_unique_id": record.file_unique_id,
        }
        if record.size:
            d["file_size"] = record.size
        return d

    @staticmethod
    def _file_param(name, params, files):
        return files[name] if name in files else params.get(name)

    # ----- methods: bot ----------------------------------------------------------------------

    def _m_getMe(self, params, files):
        return copy.deepcopy(self.bot_user)

    def _m_getUpdates(self, params, files):
        if self._webhook_url:
            raise TelegramApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is "
                "active; use deleteWebhook to delete the webhook first",
            )
        offset = _to_int(params.get("offset"), 0)
        limit = min(100, max(1, _to_int(params.get("limit"), 100)))
        timeout = max(0.0, _to_float(params.get("timeout"), 0.0))
        allowed = _json_value(
            params.get("allowed_updates"), _bad("can't parse allowed_updates JSON object")
        )
        if allowed is not None:
            self._allowed_updates = list(allowed) if allowed else None
        self._poll_generation += 1
        mine = self._poll_generation
        release = self._release_generation
        self._notify()  # terminates an earlier concurrent getUpdates
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        deadline = time.monotonic() + timeout
        while True:
            if self._stopped:
                return []
            if self._poll_generation != mine:
                raise TelegramApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; make "
                    "sure that only one bot instance is running",
                )
            allowed_types = self._allowed_types()
            self._updates = [u for u in self._updates if (set(u) - {"update_id"}) & allowed_types]
            if self._updates:
                return copy.deepcopy(self._updates[:limit])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._release_generation != release:
                return []
            self._cond.wait(remaining)

    def _m_deleteWebhook(self, params, files):
        if _to_bool(params.get("drop_pending_updates")):
            self._updates = []
        self._webhook_url = ""
        return True

    def _m_setWebhook(self, params, files):
        url = (_to_str(params.get("url")) or "").strip()
        if url and not url.lower().startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        if _to_bool(params.get("drop_pending_updates")):
            self._updates = []
        self._webhook_url = url
        return True

    def _m_getWebhookInfo(self, params, files):
        info = {
            "url": self._webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self._allowed_updates:
            info["allowed_updates"] = list(self._allowed_updates)
        return info

    @staticmethod
    def _bot_language(params):
        """The language_code of a per-language setting (commands, name, descriptions): empty for
        everyone without one of their own, else two lowercase letters (tdlib's
        validate_bot_language_code; "pt-br" or "EN" are refused)."""
        code = _to_str(params.get("language_code")) or ""
        if code and not re.fullmatch(r"[a-z]{2}", code):
            raise _bad("invalid language code specified")
        return code

    def _scope_key(self, params):
        scope = _json_value(params.get("scope"), _bad("can't parse BotCommandScope JSON object"))
        scope = scope if isinstance(scope, dict) else {"type": "default"}
        return json.dumps(scope, sort_keys=True), self._bot_language(params)

    @property
    def commands(self):
        """The command list for everyone (default scope, no language), None when there is none."""
        return copy.deepcopy(self._commands_by_scope.get(('{"type": "default"}', "")))

    def commands_for(self, language_code="", scope=None):
        """The command list set for exactly this scope (a dict, default scope if None) and
        language_code ("" for none), as getMyCommands returns it."""
        key = (json.dumps(scope or {"type": "default"}, sort_keys=True), language_code)
        return copy.deepcopy(self._commands_by_scope.get(key, []))

    def commands_seen_by(self, user_id):
        """The command list a user sees in their private chat with the bot: the first one set of
        chat + their language, chat, all private chats + language, all private chats, default +
        language, default (core.telegram.org/bots/api#determining-list-of-commands), their
        language being the first part of their language_code ("pt" for "pt-br")."""
        user = self._chats.get(user_id, {}).get("user", {})
        language = (user.get("language_code") or "").lower().split("-")[0]
        scopes = ({"type": "chat", "chat_id": user_id}, {"type": "all_private_chats"}, None)
        for scope in scopes:
            for code in ([language] if language else []) + [""]:
                found = self.commands_for(code, scope)
                if found:
                    return found
        return []

    def bot_text(self, kind, language_code=""):
        """The bot's name, description or short description (kind "name", "description",
        "short_description") set for exactly this language_code ("" for none), "" if none."""
        return self._bot_texts.get((kind, language_code), "")

    def _set_bot_text(self, params, kind, limit):
        """setMyName / setMyDescription / setMyShortDescription: one text per language; empty
        removes it. Telegram documents the limits (64, 512, 120 characters) but the stand-in does
        not know the wording of its refusal; it refuses with a description that says the limit."""
        text = _to_str(params.get(kind)) or ""
        code = self._bot_language(params)
        if len(text) > limit:
            raise _bad(f"{kind} is longer than {limit} characters")
        if text:
            self._bot_texts[(kind, code)] = text
        else:
            self._bot_texts.pop((kind, code), None)
        return True

    def _m_setMyCommands(self, params, files):
        commands = _json_value(params.get("commands"), _bad("can't parse commands JSON object"))
        if commands is None:  # no list: as deleteMyCommands
            commands = []
        if not isinstance(commands, list):
            raise _bad('Field "commands" must be an Array')
        if len(commands) > 100:
            raise _bad("BOT_COMMANDS_TOO_MUCH")
        result = []
        for item in commands:
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("command"), str)
                or not isinstance(item.get("description"), str)
            ):
                raise _bad('can\'t parse BotCommand: Field "command" must be of type String')
            command = item["command"]
            if command.startswith("/"):
                command = command[1:]
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(item["description"].strip()) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
            result.append({"command": command, "description": item["description"]})
        if result:
            self._commands_by_scope[self._scope_key(params)] = result
        else:
            self._commands_by_scope.pop(self._scope_key(params), None)
        return True

    def _m_getMyCommands(self, params, files):
        return copy.deepcopy(self._commands_by_scope.get(self._scope_key(params), []))

    def _m_deleteMyCommands(self, params, files):
        self._commands_by_scope.pop(self._scope_key(params), None)
        return True

    def _m_setChatMenuButton(self, params, files):
        chat_id = self._chat_id(params, required=False)
        button = _json_value(params.get("menu_button"), _bad("can't parse menu button JSON object"))
        if button is None:
            button = {"type": "default"}
        if not isinstance(button, dict) or button.get("type") not in (
            "default",
            "commands",
            "web_app",
        ):
            raise _bad("can't parse menu button: unsupported type")
        if button["type"] == "web_app":
            url = (
                (button.get("web_app") or {}).get("url")
                if isinstance(button.get("web_app"), dict)
                else None
            )
            if not isinstance(button.get("text"), str) or not button["text"]:
                raise _bad('can\'t parse menu button: Field "text" must be of type String')
            if (
                not isinstance(url, str)
                or not url.lower().startswith("https://")
                or _checked_link(url) is None
            ):
                raise _bad("BUTTON_URL_INVALID")
        self.menu_buttons[chat_id] = copy.deepcopy(button)
        return True

    def _m_getChatMenuButton(self, params, files):
        chat_id = self._chat_id(params, required=False)
        button = (
            self.menu_buttons.get(chat_id) or self.menu_buttons.get(None) or {"type": "default"}
        )
        return copy.deepcopy(button)

    def _m_setMyDescription(self, params, files):
        return self._set_bot_text(params, "description", 512)

    def _m_getMyDescription(self, params, files):
        return {"description": self.bot_text("description", self._bot_language(params))}

    def _m_setMyShortDescription(self, params, files):
        return self._set_bot_text(params, "short_description", 120)

    def _m_getMyShortDescription(self, params, files):
        code = self._bot_language(params)
        return {"short_description": self.bot_text("short_description", code)}

    def _m_setMyName(self, params, files):
        return self._set_bot_text(params, "name", 64)

    def _m_getMyName(self, params, files):
        code = self._bot_language(params)
        default = "" if code else self.bot_user["first_name"]
        return {"name": self.bot_text("name", code) or default}

    # ----- methods: messages -----------------------------------------------------------------

    def _m_sendMessage(self, params, files):
        chat_id = self._chat_id(params)
        if params.get("text") is None:
            raise _bad("message text is empty")
        text, entities, mode = self._format(
            params.get("text"),
            params.get("parse_mode"),
            params.get("entities"),
            4096,
            "message is too long",
            False,
        )
        if not text:
            raise _bad("message text is empty")
        markup = self._markup(params)
        reply = self._reply_to(chat_id, params)
        self._check_not_blocked(chat_id)
        self._rate_check(chat_id)
        message = self._new_message(chat_id, "text", params, markup, reply)
        message.text, message._entities, message.parse_mode = text, entities, mode
        return message.to_json()

    def _caption(self, params, source=None):
        source = params if source is None else source
        return self._format(
            source.get("caption"),
            source.get("parse_mode"),
            source.get("caption_entities"),
            1024,
            "message caption is too long",
            True,
        )

    def _m_sendPhoto(self, params, files):
        chat_id = self._chat_id(params)
        caption, entities, mode = self._caption(params)
        markup = self._markup(params)
        reply = self._reply_to(chat_id, params)
        self._check_not_blocked(chat_id)
        self._rate_check(chat_id, consume=False)  # no upload is stored for a refused send
        group, url = self._resolve_photo(self._file_param("photo", params, files), files)
        self._rate_check(chat_id)
        message = self._new_message(chat_id, "photo", params, markup, reply)
        message.photo, message.media_url = self._photo_json(group), url
        message.caption, message._entities, message.parse_mode = caption or None, entities, mode
        return message.to_json()

    def _m_sendDocument(self, params, files):
        chat_id = self._chat_id(params)
        caption, entities, mode = self._caption(params)
        markup = self._markup(params)
        reply = self._reply_to(chat_id, params)
        self._check_not_blocked(chat_id)
        self._rate_check(chat_id, consume=False)
        record, url = self._resolve_document(self._file_param("document", params, files), files)
        self._rate_check(chat_id)
        message = self._new_message(chat_id, "document", params, markup, reply)
        message.document, message.media_url = self._document_json(record), url
        message.caption, message._entities, message.parse_mode = caption or None, entities, mode
        return message.to_json()

    def _edit_target(self, params):
        if params.get("inline_message_id") not in (None, ""):
            raise _bad("MESSAGE_ID_INVALID")
        chat_id = self._chat_id(params)
        message_id = _to_int(params.get("message_id"))
        if message_id is None:
            raise _bad("message identifier is not specified")
        message = self._bot_messages[chat_id].get(message_id)
        if message is None or message.deleted:
            user_message = self._user_messages[chat_id].get(message_id)
            if user_message is not None and not user_message["deleted"]:
                raise _bad("message can't be edited")
            raise _bad("message to edit not found")
        return chat_id, message

    def _mark_edited(self, message, markup):
        self._apply_markup(message, markup)
        message.edit_count += 1
        message.edit_date = int(time.time())
        return message.to_json()

    def _m_editMessageText(self, params, files):
        chat_id, message = self._edit_target(params)
        if message.kind != "text":
            raise _bad("there is no text in the message to edit")
        if params.get("text") is None:
            raise _bad("message text is empty")
        text, entities, mode = self._format(
            params.get("text"),
            params.get("parse_mode"),
            params.get("entities"),
            4096,
            "message is too long",
            False,
        )
        if not text:
            raise _bad("message text is empty")
        markup = self._markup(params, inline_only=True)
        inline = markup.inline if markup else None
        if text == message.text and entities == message._entities and inline == message._inline:
            raise _bad(_NOT_MODIFIED)
        self._rate_check(chat_id)
        message.text, message._entities, message.parse_mode = text, entities, mode
        return self._mark_edited(message, markup)

    def _m_editMessageCaption(self, params, files):
        chat_id, message = self._edit_target(params)
        if message.kind in ("text", "invoice"):
            raise _bad("there is no caption in the message to edit")
        caption, entities, mode = self._caption(params)
        markup = self._markup(params, inline_only=True)
        inline = markup.inline if markup else None
        if (
            (caption or None) == message.caption
            and entities == message._entities
            and inline == message._inline
        ):
            raise _bad(_NOT_MODIFIED)
        self._rate_check(chat_id)
        message.caption, message._entities, message.parse_mode = caption or None, entities, mode
        return self._mark_edited(message, markup)

    def _m_editMessageReplyMarkup(self, params, files):
        chat_id, message = self._edit_target(params)
        markup = self._markup(params, inline_only=True)
        if message.kind == "invoice":
            self._check_pay_button(markup)
        inline = markup.inline if markup else None
        if inline == message._inline:
            raise _bad(_NOT_MODIFIED)
        self._rate_check(chat_id)
        return self._mark_edited(message, markup)

    def _m_editMessageMedia(self, params, files):
        chat_id, message = self._edit_target(params)
        media = _json_value(params.get("media"), _bad("can't parse InputMedia JSON object"))
        if not isinstance(media, dict):
            raise _bad("can't parse InputMedia JSON object")
        kind = media.get("type")
        if kind not in ("photo", "document"):
            raise _bad(
                "can't parse InputMedia: unsupported media type"
                if kind
                else 'can\'t parse InputMedia: Field "type" must be of type String'
            )
        if message.kind in ("text", "invoice"):
            raise _bad("there is no media in the message to edit")
        caption, entities, mode = self._caption(params, media)
        markup = self._markup(params, inline_only=True)
        inline = markup.inline if markup else None
        self._rate_check(chat_id, consume=False)
        if kind == "photo":
            group, url = self._resolve_photo(media.get("media"), files)
            photo, document = self._photo_json(group), None
            same_file = message.kind == "photo" and message.photo_file_id == group[-1].file_id
        else:
            record, url = self._resolve_document(media.get("media"), files)
            photo, document = None, self._document_json(record)
            same_file = message.kind == "document" and message.document_file_id == record.file_id
        if (
            same_file
            and (caption or None) == message.caption
            and entities == message._entities
            and inline == message._inline
        ):
            raise _bad(_NOT_MODIFIED)
        self._rate_check(chat_id)
        message.kind, message.photo, message.document, message.media_url = (
            kind,
            photo,
            document,
            url,
        )
        message.caption, message._entities, message.parse_mode = caption or None, entities, mode
        return self._mark_edited(message, markup)

    def _m_deleteMessage(self, params, files):
        chat_id = self._chat_id(params)
        message_id = _to_int(params.get("message_id"))
        if message_id is None:
            raise _bad("message identifier is not specified")
        message = self._bot_messages[chat_id].get(message_id)
        if message is not None and not message.deleted:
            message.deleted = True
            return True
        user_message = self._user_messages[chat_id].get(message_id)
        if user_message is not None and not user_message["deleted"]:
            user_message["deleted"] = True
            return True
        raise _bad("message to delete not found")

    def _m_answerCallbackQuery(self, params, files):
        query_id = _to_str(params.get("callback_query_id")) or ""
        query = self._callback_queries.get(query_id)
        if query is None or query["answered"]:
            raise _bad(_QUERY_TOO_OLD)
        text = _to_str(params.get("text"))
        if text is not None and len(text) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        query["answered"] = True
        self.callback_answers[query_id] = _params_for_record(params, {})
        return True

    # ----- methods: Telegram Stars -----------------------------------------------------------

    @staticmethod
    def _labeled_price(item):
        """telegram-bot-api's get_labeled_price_part; raises its error message."""
        if not isinstance(item, dict):
            raise ValueError("LabeledPrice must be an Object")
        if "label" not in item:
            raise ValueError('Can\'t find field "label"')
        label = item["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            raise ValueError('Field "label" must be of type String')
        label = label if isinstance(label, str) else json.dumps(label)
        if not label:
            raise ValueError("LabeledPrice label must be non-empty")
        if "amount" not in item:
            raise ValueError('Can\'t find field "amount"')
        amount = item["amount"]
        if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
            raise ValueError('Field "amount" must be a Number')
        text = amount if isinstance(amount, str) else json.dumps(amount)
        if not re.fullmatch(r"-?[0-9]+", text) or not -(2**63) <= int(text) < 2**63:
            raise ValueError('Field "amount" must be a valid Number')  # 1.5, "5.0", "1e3"
        return {"label": label, "amount": int(text)}

    def _invoice_params(self, params):
        """sendInvoice/createInvoiceLink parameters, checked in the order the Bot API server
        parses them (telegram-bot-api get_input_message_invoice); returns an _Invoice."""
        found = {}
        for name in ("title", "description", "payload", "currency", "prices"):
            value = params.get(name)
            if value is None or value == "":
                raise _bad(f'parameter "{name}" is required')
            found[name] = value if name == "prices" else _to_str(value)
        prices = _json_value(found["prices"], _bad("can't parse prices JSON object"))
        if not isinstance(prices, list):
            raise _bad("expected an Array of labeled prices")
        parts = []
        for item in prices:
            try:
                parts.append(self._labeled_price(item))
            except ValueError as error:
                raise _bad(f"can't parse labeled price: {error}") from None
        if not parts:
            raise _bad("there must be at least one price")
        tip = params.get("max_tip_amount")
        if tip not in (None, "") and _to_int(tip) is None:
            raise _bad('can\'t parse "max_tip_amount" as Number')
        _json_value(
            params.get("suggested_tip_amounts"),
            _bad("can't parse suggested_tip_amounts JSON object"),
        )
        if params.get("subscription_period") not in (None, "", 0, "0"):
            raise _bad("subscription invoices are not simulated by the test stand-in")
        return _Invoice(
            title=found["title"],
            description=found["description"],
            payload=found["payload"],
            currency=found["currency"],
            prices=parts,
            total_amount=sum(part["amount"] for part in parts),
            start_parameter=_to_str(params.get("start_parameter")) or "",
        )

    @staticmethod
    def _check_invoice(invoice, params):
        """The checks tdlib and Telegram's servers make on an invoice."""
        # tdlib (InputInvoice.cpp), before anything reaches the server
        for part in invoice.prices:
            if abs(part["amount"]) > 9999999999999:
                raise _bad("too big amount of the currency specified")
        if invoice.total_amount <= 0:
            raise _bad("total price must be positive")
        if invoice.total_amount > 9999999999999:
            raise _bad("total price is too big")
        # the server. Only Stars are simulated: no payment provider is connected to the test
        # bot, so another currency fails as a mistyped "XTS"/"TXR" is reported to fail on
        # Telegram; a provider token with XTR is refused the same way (unverified).
        if invoice.currency != _XTR or (_to_str(params.get("provider_token")) or ""):
            raise _bad("PAYMENT_PROVIDER_INVALID")
        # exactly one price, no tips: reported as STARS_INVOICE_INVALID (e.g. an XTR invoice
        # with max_tip_amount/suggested_tip_amounts)
        suggested = _json_value(params.get("suggested_tip_amounts"), _bad("STARS_INVOICE_INVALID"))
        if len(invoice.prices) != 1 or _to_int(params.get("max_tip_amount"), 0) or suggested:
            raise _bad("STARS_INVOICE_INVALID")
        if invoice.total_amount > _XTR_MAX_AMOUNT:
            raise _bad("CURRENCY_TOTAL_AMOUNT_INVALID")
        if len(invoice.payload.encode("utf-8")) > 128:
            raise _bad("INVOICE_PAYLOAD_INVALID")
        # The Bot API documents 1-32 and 1-255 characters; Telegram's own error text for a
        # longer title/description is not documented, so these texts are the stand-in's.
        if len(invoice.title) > 32:
            raise _bad("invoice title must be 1-32 characters (the test stand-in's wording)")
        if len(invoice.description) > 255:
            raise _bad("invoice description must be 1-255 characters (the test stand-in's wording)")

    @staticmethod
    def _check_pay_button(markup):
        """An invoice's keyboard must start with a Pay button (MTProto REPLY_MARKUP_BUY_EMPTY)."""
        if markup is not None and markup.inline and not markup.inline[0][0].get("pay"):
            raise _bad("REPLY_MARKUP_BUY_EMPTY")

    def _m_sendInvoice(self, params, files):
        invoice = self._invoice_params(params)
        chat_id = self._chat_id(params)
        markup = self._markup(params, inline_only=True)
        reply = self._reply_to(chat_id, params)
        self._check_invoice(invoice, params)
        self._check_pay_button(markup)
        self._check_not_blocked(chat_id)
        self._rate_check(chat_id)
        message = self._new_message(chat_id, "invoice", params, markup, reply)
        invoice.chat_id, invoice.message_id = chat_id, message.message_id
        message.invoice, message._invoice = invoice.to_json(), invoice
        return message.to_json()

    def _m_createInvoiceLink(self, params, files):
        invoice = self._invoice_params(params)
        self._check_invoice(invoice, params)
        invoice.link = "https://t.me/$" + secrets.token_urlsafe(20)
        self._invoice_links[invoice.link] = invoice
        return invoice.link

    def _m_answerPreCheckoutQuery(self, params, files):
        ok = _to_bool(params.get("ok"))
        error_message = _to_str(params.get("error_message")) or ""
        if not ok and not error_message:
            raise _bad('parameter "error_message" is required')
        # the Bot API reads the id as an integer; anything else is query 0, which never exists
        payment = self._pre_checkout.get(_to_int(params.get("pre_checkout_query_id"), 0))
        if payment is not None:
            self._expire(payment)
        if payment is None or payment._answered or payment._status != "pending":
            raise _bad(_QUERY_TOO_OLD)
        payment._answered = True
        if ok:
            self._charge(payment)
        else:
            payment._status, payment.error_message = "refused", error_message
            self._notify()
        return True

    def _m_refundStarPayment(self, params, files):
        user_id = _to_int(params.get("user_id"), 0)
        if user_id <= 0:
            raise _bad("invalid user_id specified")
        charge_id = _to_str(params.get("telegram_payment_charge_id")) or ""
        if not charge_id:
            raise _bad('parameter "telegram_payment_charge_id" is required')
        if user_id not in self._chats:
            raise _bad("user not found")
        payment = self._charges.get(charge_id)
        if payment is None or payment.user_id != user_id:
            # refundStarsCharge documents CHARGE_ALREADY_REFUNDED, CHARGE_ID_EMPTY and
            # USER_ID_INVALID only; for a charge id that is not this user's payment the MTProto
            # error list offers CHARGE_ID_INVALID (and CHARGE_NOT_FOUND), which bots report
            # handling: the stand-in answers CHARGE_ID_INVALID (unverified against Telegram)
            raise _bad("CHARGE_ID_INVALID")
        if payment.refunded:
            raise _bad("CHARGE_ALREADY_REFUNDED")
        record = payment._invoice
        now = int(time.time())
        user = copy.deepcopy(self._chats[user_id]["user"])
        # an outgoing transaction: the id of the original charge, the user as receiver
        self._star_transactions.append(
            {
                "id": charge_id,
                "date": now,
                "receiver": self._partner_json(user, record.payload),
                "amount": record.total_amount,
            }
        )
        payment.refunded = True
        # the service message the bot gets about it (telegram-bot-api does not skip this
        # outgoing message): from the bot, in the user's chat
        message = {
            "message_id": self._next_message_id(user_id),
            "from": self._bot_from(),
            "chat": self._chat_json(user_id),
            "date": now,
            "refunded_payment": {
                "currency": record.currency,
                "total_amount": record.total_amount,
                "invoice_payload": record.payload,
                "telegram_payment_charge_id": charge_id,
            },
        }
        self.refunds.append(
            {
                "user_id": user_id,
                "telegram_payment_charge_id": charge_id,
                "total_amount": record.total_amount,
                "invoice_payload": record.payload,
                "date": now,
                "message": copy.deepcopy(message),
            }
        )
        self._push_update("message", message)
        return True

    def _m_getStarTransactions(self, params, files):
        # the Bot API clamps both (get_integer_arg): offset >= 0, limit 1..100, default 100;
        # newest first, the server's default order
        offset = max(0, _to_int(params.get("offset"), 0) or 0)
        limit = min(100, max(1, _to_int(params.get("limit"), 100)))
        newest_first = self._star_transactions[::-1]
        return {"transactions": copy.deepcopy(newest_first[offset : offset + limit])}

    def _m_getMyStarBalance(self, params, files):
        balance = sum(
            t["amount"] if "source" in t else -t["amount"] for t in self._star_transactions
        )
        return {"amount": balance}

    def _m_sendChatAction(self, params, files):
        chat_id = self._chat_id(params)
        action = _to_str(params.get("action")) or ""
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._check_not_blocked(chat_id)
        self.chat_actions.append((chat_id, action))
        return True

    def _m_getFile(self, params, files):
        file_id = _to_str(params.get("file_id")) or ""
        record = self._files.get(file_id)
        if record is None:
            raise _bad("invalid file_id")
        result = {"file_id": record.file_id, "file_unique_id": record.file_unique_id}
        if record.size:
            result["file_size"] = record.size
        if record.data is not None:
            result["file_path"] = record.path
        return result

    def _m_getChat(self, params, files):
        chat_id = self._chat_id(params)
        chat = self._chat_json(chat_id)
        chat.update({"accent_color_id": 0, "max_reaction_count": 11})
        return chat
