"""The Telegram stand-in speaks the real wire format: driven by the real telebot client and by
raw HTTP requests (query string, JSON, urlencoded and multipart bodies)."""

import html
import io
import json
import re
import struct
import threading
import time
import zlib

import pytest
import requests
import telebot
from telebot import apihelper, types
from telebot.apihelper import ApiTelegramException

from fake_telegram import FakeTelegram

TOKEN = "123456:TEST-token"
USER = 1001

pytestmark = pytest.mark.timeout(30)


def png_bytes(width, height):
    """A valid PNG of the given size."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def mdv2_escape(text):
    return re.sub(r"([_*\[\]()~`>#+\-=|{}.!\\])", r"\\\1", text)


@pytest.fixture
def fake():
    server = FakeTelegram(token=TOKEN).start()
    yield server
    server.stop()
    assert server.errors == [], server.errors  # the stand-in itself never crashed


@pytest.fixture
def bot(fake):
    saved = apihelper.API_URL, apihelper.FILE_URL
    apihelper.API_URL = fake.base_url + "/bot{0}/{1}"
    apihelper.FILE_URL = fake.base_url + "/file/bot{0}/{1}"
    try:
        yield telebot.TeleBot(TOKEN, threaded=False)
    finally:
        apihelper.API_URL, apihelper.FILE_URL = saved


@pytest.fixture
def chat(fake):
    fake.user_sends(USER, "hello", first_name="Ann", username="ann")
    return USER


def api(fake, method, **kwargs):
    return requests.post(f"{fake.base_url}/bot{TOKEN}/{method}", timeout=10, **kwargs)


def api_error(excinfo):
    return excinfo.value.error_code, excinfo.value.description


# ---------------------------------------------------------------- routes and encodings


def test_get_me_routes_and_errors(fake, bot):
    me = bot.get_me()
    assert (me.id, me.is_bot, me.username) == (123456, True, "test_shop_bot")
    assert fake.calls[-1] == ("getMe", {})

    wrong = requests.get(f"{fake.base_url}/bot999:nope/getMe", timeout=5)
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}

    unknown = requests.get(f"{fake.base_url}/bot{TOKEN}/sendTelepathy", timeout=5)
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}

    lower = requests.get(f"{fake.base_url}/bot{TOKEN}/getme", timeout=5)
    assert lower.status_code == 200 and lower.json() == {"ok": True, "result": fake.bot_user}
    assert lower.headers["Content-Length"] == str(len(lower.content))


def test_parameters_from_every_encoding(fake, chat):
    markup = {"inline_keyboard": [[{"text": "Buy", "callback_data": "buy:1"}]]}
    as_json = api(
        fake, "sendMessage", json={"chat_id": chat, "text": "json", "reply_markup": markup}
    )
    as_form = api(
        fake,
        "sendMessage",
        data={"chat_id": str(chat), "text": "form", "reply_markup": json.dumps(markup)},
    )
    as_query = api(
        fake,
        "sendMessage",
        params={"chat_id": chat, "text": "query", "reply_markup": json.dumps(markup)},
    )
    as_multipart = api(
        fake,
        "sendMessage",
        data={"chat_id": str(chat), "text": "multi"},
        files={"reply_markup": (None, json.dumps(markup))},
    )
    for response in (as_json, as_form, as_query, as_multipart):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ok"] is True
        assert body["result"]["reply_markup"] == markup
        assert body["result"]["chat"] == {
            "id": chat,
            "first_name": "Ann",
            "username": "ann",
            "type": "private",
        }
        assert body["result"]["from"]["id"] == 123456
    assert [m.text for m in fake.messages(chat)] == ["json", "form", "query", "multi"]
    # the user's "hello" was message 1: ids are shared within the chat
    assert [m.message_id for m in fake.messages(chat)] == [2, 3, 4, 5]
    assert fake.calls_to("sendMessage")[1]["reply_markup"] == markup

    broken = api(
        fake, "sendMessage", params={"chat_id": chat, "text": "x", "reply_markup": "{nope"}
    )
    assert broken.status_code == 400
    assert broken.json() == {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: can't parse reply keyboard markup JSON object",
    }
    unknown_chat = api(fake, "sendMessage", json={"chat_id": 777, "text": "x"})
    assert unknown_chat.json()["description"] == "Bad Request: chat not found"


def test_reply_keyboard_is_stored_but_not_returned(fake, bot, chat):
    keyboard = types.ReplyKeyboardMarkup(resize_keyboard=True)
    keyboard.add(types.KeyboardButton("Catalog"), types.KeyboardButton("Cart"))
    sent = bot.send_message(chat, "Menu", reply_markup=keyboard)
    assert sent.reply_markup is None
    message = fake.last_message(chat)
    assert message.keyboard == [["Catalog", "Cart"]]
    assert message.buttons == [] and message.button_texts == []


# ---------------------------------------------------------------- updates


def test_long_poll_wakes_immediately_and_offsets_confirm(fake):
    results = {}

    def poll():
        started = time.monotonic()
        body = requests.get(
            f"{fake.base_url}/bot{TOKEN}/getUpdates", params={"timeout": 5}, timeout=10
        ).json()
        results["body"], results["took"] = body, time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    fake.wait_for(lambda: fake.calls_to("getUpdates"), timeout=5, what="the long poll to arrive")
    # a send while the long poll is open is answered at once
    fake.user_sends(USER, "/start ref_42")
    poller.join(5)
    assert not poller.is_alive()
    assert results["took"] < 3, results
    updates = results["body"]["result"]
    assert len(updates) == 1
    message = updates[0]["message"]
    assert message["text"] == "/start ref_42"
    assert message["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert message["from"] == {
        "id": USER,
        "is_bot": False,
        "first_name": "Ann",
        "language_code": "en",
    }
    assert message["chat"]["id"] == USER

    first_id = updates[0]["update_id"]
    again = api(fake, "getUpdates", json={"timeout": 0}).json()["result"]
    assert [u["update_id"] for u in again] == [first_id]  # not confirmed yet
    fake.user_sends(USER, "second")
    confirmed = api(fake, "getUpdates", json={"offset": first_id + 1, "timeout": 0}).json()[
        "result"
    ]
    assert [u["message"]["text"] for u in confirmed] == ["second"]
    assert confirmed[0]["update_id"] == first_id + 1
    empty = api(fake, "getUpdates", params={"offset": first_id + 2, "timeout": 0}).json()["result"]
    assert empty == []


def test_second_get_updates_terminates_the_first(fake):
    results = {}

    def poll():
        results["response"] = requests.get(
            f"{fake.base_url}/bot{TOKEN}/getUpdates", params={"timeout": 5}, timeout=10
        )

    poller = threading.Thread(target=poll)
    poller.start()
    fake.wait_for(lambda: fake.calls_to("getUpdates"), timeout=5, what="first long poll")
    second = api(fake, "getUpdates", json={"timeout": 0})
    poller.join(5)
    assert second.json() == {"ok": True, "result": []}
    first = results["response"]
    assert first.status_code == 409
    assert first.json()["description"] == (
        "Conflict: terminated by other getUpdates request; "
        "make sure that only one bot instance is running"
    )


def test_polling_bot_answers_start(fake, bot):
    @bot.message_handler(commands=["start"])
    def start(message):
        bot.send_message(
            message.chat.id,
            f"Welcome, {html.escape(message.from_user.first_name)}! "
            f"<b>payload</b>: {html.escape(message.text.split()[-1])}",
            parse_mode="HTML",
        )

    runner = threading.Thread(
        target=bot.infinity_polling,
        kwargs={"timeout": 5, "long_polling_timeout": 1, "logger_level": None},
    )
    runner.start()
    try:
        fake.user_sends(USER, "/start promo<1>", first_name="Zoë <3")
        reply = fake.wait_message(USER, "Welcome", timeout=10)
        assert reply.text == "Welcome, Zoë <3! payload: promo<1>"
        assert reply.entities == [{"type": "bold", "offset": 17, "length": 7}]
        assert reply.parse_mode == "HTML"
    finally:
        bot.stop_polling()
        fake.release_polls()
        runner.join(10)
    assert not runner.is_alive()
    assert fake.calls_to("getUpdates")[-1].get("offset")  # the update was confirmed


# ---------------------------------------------------------------- formatting


def test_html_hostile_text(fake, bot, chat):
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "Łódź <Centrum>", parse_mode="HTML")
    assert api_error(excinfo) == (
        400,
        'Bad Request: can\'t parse entities: Unsupported start tag "centrum" at byte offset 8',
    )
    sent = bot.send_message(
        chat, f"<b>{html.escape('Łódź <Centrum>')}</b> &amp; more", parse_mode="HTML"
    )
    assert sent.text == "Łódź <Centrum> & more"
    assert fake.last_message(chat).entities == [{"type": "bold", "offset": 0, "length": 14}]

    for bad, fragment in [
        ("a < b", 'Unsupported start tag ""'),
        ("fish & chips", 'Unsupported HTML entity "& chips" at byte offset 5'),
        ("1 &lt 2", 'HTML entity at byte offset 2 is not terminated by ";"'),
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
        ("x</i>", "Unexpected end tag at byte offset 1"),
        ("<a href=https://x.io>x</a>", "Unexpected end of name token at byte offset 8"),
    ]:
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.send_message(chat, bad, parse_mode="HTML")
        assert excinfo.value.error_code == 400
        assert excinfo.value.description.startswith("Bad Request: can't parse entities: ")
        assert fragment in excinfo.value.description, excinfo.value.description

    emoji = bot.send_message(
        chat,
        '🎁 <i>gift</i> <a href="https://shop.example/p?id=1&amp;x=2">card</a>',
        parse_mode="HTML",
    )
    assert emoji.text == "🎁 gift card"
    assert [(e.type, e.offset, e.length, e.url) for e in emoji.entities] == [
        ("italic", 3, 4, None),
        ("text_link", 8, 4, "https://shop.example/p?id=1&x=2"),
    ]
    assert bot.send_message(chat, "no <b>parse</b> mode").text == "no <b>parse</b> mode"


def test_markdown_v2_and_legacy_markdown(fake, bot, chat):
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "gift_card *25*", parse_mode="MarkdownV2")
    assert api_error(excinfo) == (
        400,
        "Bad Request: can't parse entities: Can't find end of Italic entity at byte offset 4",
    )
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "Total: 25.00", parse_mode="MarkdownV2")
    assert excinfo.value.description == (
        "Bad Request: can't parse entities: Character '.' is reserved and "
        "must be escaped with the preceding '\\'"
    )
    ok = bot.send_message(
        chat, "*" + mdv2_escape("gift_card *25* (x1).") + "*", parse_mode="MarkdownV2"
    )
    assert ok.text == "gift_card *25* (x1)."
    assert [(e.type, e.offset, e.length) for e in ok.entities] == [("bold", 0, 20)]

    legacy = bot.send_message(chat, "*bold* and `code`", parse_mode="Markdown")
    assert legacy.text == "bold and code"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "snake_case", parse_mode="Markdown")
    assert excinfo.value.description == (
        "Bad Request: can't parse entities: Can't find end of the entity starting at byte offset 5"
    )


def test_text_length_limits_count_utf16(fake, bot, chat):
    assert len(bot.send_message(chat, "😀" * 2048).text) == 2048  # 4096 UTF-16 units
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "😀" * 2048 + "x")
    assert excinfo.value.description == "Bad Request: message is too long"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, " \n ")
    assert excinfo.value.description == "Bad Request: message text is empty"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "<b></b>", parse_mode="HTML")
    assert excinfo.value.description == "Bad Request: message text is empty"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_photo(chat, io.BytesIO(png_bytes(4, 4)), caption="c" * 1025)
    assert excinfo.value.description == "Bad Request: message caption is too long"
    assert fake.uploads == {}  # the refused photo was not stored


# ---------------------------------------------------------------- keyboards and callbacks


def test_callback_data_is_limited_to_64_bytes(fake, bot, chat):
    def keyboard(**button):
        markup = types.InlineKeyboardMarkup()
        markup.add(types.InlineKeyboardButton("Pay", **button))
        return markup

    sixty_four = "é" * 32  # 32 characters, 64 bytes
    sent = bot.send_message(chat, "ok", reply_markup=keyboard(callback_data=sixty_four))
    assert sent.reply_markup.keyboard[0][0].callback_data == sixty_four
    for data in (sixty_four + "x", ""):
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.send_message(
                chat,
                "no",
                reply_markup=json.dumps(
                    {"inline_keyboard": [[{"text": "Pay", "callback_data": data}]]}
                ),
            )
        assert api_error(excinfo) == (400, "Bad Request: BUTTON_DATA_INVALID"), data
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(
            chat, "no", reply_markup=json.dumps({"inline_keyboard": [[{"text": "Just text"}]]})
        )
    assert excinfo.value.description == (
        "Bad Request: can't parse inline keyboard button: Text buttons are "
        "unallowed in the inline keyboard"
    )
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(
            chat, "no", reply_markup=keyboard(web_app=types.WebAppInfo("http://shop.example/app"))
        )
    assert excinfo.value.description == "Bad Request: BUTTON_URL_INVALID"
    app = bot.send_message(
        chat, "app", reply_markup=keyboard(web_app=types.WebAppInfo("https://shop.example/app"))
    )
    assert app.reply_markup.keyboard[0][0].web_app.url == "https://shop.example/app"
    assert [m.text for m in fake.messages(chat)] == ["ok", "app"]


def test_clicks_only_on_existing_buttons_and_answers(fake, bot, chat):
    markup = types.InlineKeyboardMarkup()
    markup.row(
        types.InlineKeyboardButton("Buy 🎁", callback_data="buy:7"),
        types.InlineKeyboardButton("Site", url="https://shop.example"),
    )
    sent = bot.send_message(chat, "Gift card", reply_markup=markup)

    with pytest.raises(AssertionError, match="no inline button with callback_data 'buy:8'"):
        fake.user_clicks(chat, sent.message_id, "buy:8")
    with pytest.raises(AssertionError, match="visible buttons"):
        fake.click_button(chat, "Sell")
    with pytest.raises(AssertionError, match="without callback_data"):
        fake.click_button(chat, "Site")

    query_id = fake.click_button(chat, lambda text: text.startswith("Buy"))
    update = types.Update.de_json(api(fake, "getUpdates", json={"timeout": 0}).json()["result"][-1])
    query = update.callback_query
    assert (query.id, query.data, query.from_user.id) == (query_id, "buy:7", chat)
    assert query.message.message_id == sent.message_id and query.message.text == "Gift card"

    assert bot.answer_callback_query(query_id, "Added to cart") is True
    assert fake.callback_answers[query_id]["text"] == "Added to cart"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.answer_callback_query(query_id)
    assert excinfo.value.description == (
        "Bad Request: query is too old and response timeout expired or query ID is invalid"
    )

    bot.edit_message_reply_markup(chat, sent.message_id, reply_markup=None)  # keyboard removed
    with pytest.raises(AssertionError):
        fake.user_clicks(chat, sent.message_id, "buy:7")


# ---------------------------------------------------------------- edits and deletes


def test_edits_not_modified_and_wrong_kind(fake, bot, chat):
    markup = types.InlineKeyboardMarkup()
    markup.add(types.InlineKeyboardButton("Refresh", callback_data="refresh"))
    sent = bot.send_message(chat, "<b>Cart</b>: 1 item", parse_mode="HTML", reply_markup=markup)

    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_text(
            "<b>Cart</b>: 1 item", chat, sent.message_id, parse_mode="HTML", reply_markup=markup
        )
    assert api_error(excinfo) == (
        400,
        "Bad Request: message is not modified: specified new message content "
        "and reply markup are exactly the same as a current content and reply "
        "markup of the message",
    )
    # the same text without the markup is a change: it removes the keyboard, as on Telegram
    edited = bot.edit_message_text("<b>Cart</b>: 1 item", chat, sent.message_id, parse_mode="HTML")
    assert edited.message_id == sent.message_id and edited.edit_date
    message = fake.last_message(chat)
    assert (message.edit_count, message.button_texts, message.text) == (1, [], "Cart: 1 item")
    bot.edit_message_text("Cart: 2 items", chat, sent.message_id)
    assert fake.wait_message(chat, "2 items").edit_count == 2

    photo = bot.send_photo(chat, io.BytesIO(png_bytes(8, 8)), caption="Card")
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_text("text", chat, photo.message_id)
    assert excinfo.value.description == "Bad Request: there is no text in the message to edit"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_caption("caption", chat, sent.message_id)
    assert excinfo.value.description == "Bad Request: there is no caption in the message to edit"
    assert (
        bot.edit_message_caption(
            "New <i>caption</i>", chat, photo.message_id, parse_mode="HTML"
        ).caption
        == "New caption"
    )
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_text("x", chat, 999)
    assert excinfo.value.description == "Bad Request: message to edit not found"


def test_delete_and_edit_media(fake, bot, chat):
    sent = bot.send_message(chat, "temporary")
    assert bot.delete_message(chat, sent.message_id) is True
    assert fake.messages(chat) == [] and fake.all_messages(chat)[0].deleted
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.delete_message(chat, sent.message_id)
    assert excinfo.value.description == "Bad Request: message to delete not found"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_text("again", chat, sent.message_id)
    assert excinfo.value.description == "Bad Request: message to edit not found"

    photo = bot.send_photo(chat, io.BytesIO(png_bytes(10, 10)))
    new_image = png_bytes(20, 10)
    edited = bot.edit_message_media(
        types.InputMediaPhoto(io.BytesIO(new_image), caption="v2"), chat, photo.message_id
    )
    assert (edited.photo[-1].width, edited.photo[-1].height, edited.caption) == (20, 10, "v2")
    assert fake.uploads[edited.photo[-1].file_id] == new_image
    assert fake.last_message(chat).photo_file_id == edited.photo[-1].file_id


# ---------------------------------------------------------------- files


def test_photo_upload_then_resend_by_file_id(fake, bot, chat):
    image = png_bytes(1600, 900)
    first = bot.send_photo(chat, io.BytesIO(image), caption="Gift card")
    sizes = first.photo
    assert len(sizes) >= 2
    assert (sizes[-1].width, sizes[-1].height) == (1600, 900)
    assert sizes[-1].file_size == len(image)
    assert [s.width for s in sizes] == sorted(s.width for s in sizes)
    file_id = sizes[-1].file_id
    assert fake.uploads == {file_id: image}
    assert fake.calls_to("sendPhoto")[0]["photo"]["size"] == len(image)

    again = bot.send_photo(chat, file_id)
    assert again.photo[-1].file_id == file_id and len(fake.uploads) == 1
    assert [m.photo_file_id for m in fake.messages(chat)] == [file_id, file_id]

    assert bot.download_file(bot.get_file(file_id).file_path) == image
    for bad_photo, description in [
        (io.BytesIO(b"not an image"), "Bad Request: IMAGE_PROCESS_FAILED"),
        ("no-such-file-id", "Bad Request: wrong file identifier/HTTP URL specified"),
    ]:
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.send_photo(chat, bad_photo)
        assert excinfo.value.description == description
    document = bot.send_document(
        chat, io.BytesIO(b"order,total\n1,25\n"), visible_file_name="orders.csv"
    )
    assert document.document.file_name == "orders.csv"
    assert fake.last_message(chat).kind == "document"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_photo(chat, document.document.file_id)
    assert excinfo.value.description == "Bad Request: type of file mismatch"


# ---------------------------------------------------------------- faults


def test_flood_limit_answers_429_with_retry_after(fake, bot, chat):
    fake.enforce_limits(per_second=30, per_chat_per_second=1.0, per_chat_burst=3)
    for n in range(3):
        bot.send_message(chat, f"burst {n}")
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "one too many")
    error = excinfo.value
    assert error.error_code == 429
    retry_after = error.result_json["parameters"]["retry_after"]
    assert isinstance(retry_after, int) and retry_after >= 1
    assert error.description == f"Too Many Requests: retry after {retry_after}"
    assert (fake.rate_limited, fake.sent_count) == (1, 3)

    fake.enforce_limits(None)
    bot.send_message(chat, "limits off")
    assert fake.sent_count == 4 and fake.last_message(chat).text == "limits off"


def test_fail_next_and_outage(fake, bot, chat):
    fake.fail_next("sendMessage", status=502)
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "lost")
    assert excinfo.value.error_code == 502
    assert excinfo.value.result_json == {
        "ok": False,
        "error_code": 502,
        "description": "Bad Gateway",
    }
    assert bot.send_message(chat, "retried").text == "retried"

    fake.fail_next("sendmessage", status="disconnect")
    with pytest.raises(requests.exceptions.ConnectionError):
        bot.send_message(chat, "cut")
    assert [m.text for m in fake.messages(chat)] == ["retried"]

    fake.set_down(True)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{fake.base_url}/bot{TOKEN}/getMe", timeout=5)
    fake.set_down(False)
    assert bot.get_me().id == 123456


def test_blocked_user_gets_403(fake, bot, chat):
    fake.user_blocks_bot(chat)
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.send_message(chat, "promo")
    assert api_error(excinfo) == (403, "Forbidden: bot was blocked by the user")
    assert excinfo.value.result_json == {
        "ok": False,
        "error_code": 403,
        "description": "Forbidden: bot was blocked by the user",
    }
    updates = [types.Update.de_json(u) for u in api(fake, "getUpdates", json={}).json()["result"]]
    assert updates[-1].my_chat_member.new_chat_member.status == "kicked"
    fake.user_sends(chat, "/start")  # "Restart" unblocks
    assert bot.send_message(chat, "welcome back").text == "welcome back"


# ---------------------------------------------------------------- waiting and concurrency


def test_wait_for_times_out_with_a_useful_message(fake, bot):
    bot.get_me()
    started = time.monotonic()
    with pytest.raises(AssertionError) as excinfo:
        fake.wait_for(lambda: None, timeout=0.3, what="the order confirmation")
    assert time.monotonic() - started < 2
    text = str(excinfo.value)
    assert "the order confirmation" in text and "getMe" in text
    with pytest.raises(AssertionError, match="containing 'Paid'"):
        fake.wait_message(USER, "Paid", timeout=0.2)


def test_concurrent_senders_and_wait_message(fake, bot, chat):
    def sender(n):
        for k in range(5):
            bot.send_message(chat, f"t{n}-{k}")

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    assert fake.wait_message(chat, "t7-4", timeout=10).text == "t7-4"
    for thread in threads:
        thread.join(10)
    ids = [m.message_id for m in fake.messages(chat)]
    assert sorted(ids) == ids and len(set(ids)) == 40 and ids == list(range(2, 42))


def test_commands_and_menu_button(fake, bot, chat):
    commands = [types.BotCommand("start", "Open the shop"), types.BotCommand("orders", "My orders")]
    assert bot.set_my_commands(commands) is True
    assert fake.commands == [
        {"command": "start", "description": "Open the shop"},
        {"command": "orders", "description": "My orders"},
    ]
    assert [c.command for c in bot.get_my_commands()] == ["start", "orders"]
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.set_my_commands([types.BotCommand("Bad Command", "x")])
    assert excinfo.value.description == "Bad Request: BOT_COMMAND_INVALID"
    button = types.MenuButtonWebApp("Shop", types.WebAppInfo("https://shop.example/app"))
    assert bot.set_chat_menu_button(chat, button) is True
    assert fake.menu_buttons[chat] == {
        "type": "web_app",
        "text": "Shop",
        "web_app": {"url": "https://shop.example/app"},
    }
    assert (
        api(fake, "getChatMenuButton", json={"chat_id": chat}).json()["result"]
        == fake.menu_buttons[chat]
    )
    assert bot.send_chat_action(chat, "typing") is True
    assert fake.chat_actions == [(chat, "typing")]
    assert bot.get_chat(chat).first_name == "Ann"


def test_commands_and_descriptions_per_language(fake, bot, chat):
    """One list and one text per language_code (two lowercase letters, or none for everyone
    without their own); the getters return exactly the language asked for; a user's menu is their
    language's list, else the one for everyone."""
    assert bot.set_my_commands([types.BotCommand("start", "Main menu")]) is True
    assert bot.set_my_commands([types.BotCommand("start", "Hauptmenü")], language_code="de")
    assert [c.description for c in bot.get_my_commands(language_code="de")] == ["Hauptmenü"]
    assert [c.description for c in bot.get_my_commands()] == ["Main menu"]
    assert bot.get_my_commands(language_code="pl") == []
    assert fake.commands == [{"command": "start", "description": "Main menu"}]
    fake.user_sends(2002, "hallo", language_code="de-at")
    assert fake.commands_seen_by(2002) == fake.commands_for("de")
    assert fake.commands_seen_by(chat) == fake.commands_for("")
    for bad in ("pt-br", "pt_BR", "EN", "deu"):
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.set_my_commands([types.BotCommand("start", "x")], language_code=bad)
        assert api_error(excinfo) == (400, "Bad Request: invalid language code specified")
    assert bot.set_my_commands([], language_code="de") is True  # an empty list removes it
    assert bot.get_my_commands(language_code="de") == []

    assert bot.set_my_description("A shop.") is True
    assert bot.set_my_description("Ein Laden.", language_code="de") is True
    assert bot.set_my_short_description("Laden", language_code="de") is True
    assert bot.get_my_description(language_code="de").description == "Ein Laden."
    assert bot.get_my_description().description == "A shop."
    assert bot.get_my_description(language_code="pl").description == ""
    assert bot.get_my_short_description(language_code="de").short_description == "Laden"
    assert bot.get_my_short_description().short_description == ""
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.set_my_description("x" * 513, language_code="de")
    assert excinfo.value.error_code == 400
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.set_my_short_description("x" * 121)
    assert excinfo.value.error_code == 400
    assert bot.set_my_description("", language_code="de") is True  # removed
    assert fake.bot_text("description", "de") == ""


def test_stop_releases_long_polls():
    server = FakeTelegram(token=TOKEN).start()
    outcome = {}

    def poll():
        try:
            outcome["body"] = requests.get(
                f"{server.base_url}/bot{TOKEN}/getUpdates", params={"timeout": 20}, timeout=30
            ).json()
        except requests.exceptions.ConnectionError as error:
            outcome["error"] = error

    poller = threading.Thread(target=poll)
    poller.start()
    server.wait_for(lambda: server.calls_to("getUpdates"), timeout=5, what="long poll")
    started = time.monotonic()
    server.stop()
    poller.join(5)
    assert not poller.is_alive() and time.monotonic() - started < 3
    assert outcome.get("body", {"ok": True, "result": []}) == {"ok": True, "result": []}
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{server.base_url}/bot{TOKEN}/getMe", timeout=2)


# ---------------------------------------------------------------- Telegram Stars


def stars(label, amount):
    return [types.LabeledPrice(label, amount)]


def send_stars_invoice(bot, chat, payload="order-7", amount=25, **kwargs):
    return bot.send_invoice(
        chat, "Gift card", "A €25 gift card", payload, None, "XTR", stars("Card", amount), **kwargs
    )


def updates_of(fake, kind, **params):
    """The pending updates of that kind; all pending updates are confirmed."""
    result = api(fake, "getUpdates", json={"timeout": 0, **params}).json()["result"]
    if result:
        api(fake, "getUpdates", json={"timeout": 0, "offset": result[-1]["update_id"] + 1})
    return [u for u in result if kind in u]


def test_send_invoice_and_invoice_link_wire_format(fake, bot, chat):
    sent = send_stars_invoice(bot, chat, payload="order-7:secret")
    assert sent.content_type == "invoice"
    assert sent.json["invoice"] == {
        "title": "Gift card",
        "description": "A €25 gift card",
        "start_parameter": "",
        "currency": "XTR",
        "total_amount": 25,
    }
    assert "order-7:secret" not in json.dumps(sent.json)  # the payload stays server-side
    assert "reply_markup" not in sent.json
    message = fake.wait_message(chat, "Gift card")
    assert (message.kind, message.message_id, message.invoice_payload) == (
        "invoice",
        sent.message_id,
        "order-7:secret",
    )
    assert fake.calls_to("sendInvoice")[0]["prices"] == [{"label": "Card", "amount": 25}]

    pay_first = types.InlineKeyboardMarkup()
    pay_first.add(types.InlineKeyboardButton("Pay ⭐️25", pay=True))
    pay_first.add(types.InlineKeyboardButton("Cancel", callback_data="cancel"))
    with_keyboard = send_stars_invoice(bot, chat, reply_markup=pay_first, start_parameter="gift")
    assert with_keyboard.json["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "Pay ⭐️25", "pay": True}],
            [{"text": "Cancel", "callback_data": "cancel"}],
        ]
    }
    assert with_keyboard.invoice.start_parameter == "gift"
    callback_first = types.InlineKeyboardMarkup()
    callback_first.add(types.InlineKeyboardButton("Cancel", callback_data="cancel"))
    with pytest.raises(ApiTelegramException) as excinfo:
        send_stars_invoice(bot, chat, reply_markup=callback_first)
    assert api_error(excinfo) == (400, "Bad Request: REPLY_MARKUP_BUY_EMPTY")
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_reply_markup(chat, with_keyboard.message_id, reply_markup=callback_first)
    assert excinfo.value.description == "Bad Request: REPLY_MARKUP_BUY_EMPTY"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_text("text", chat, sent.message_id)
    assert excinfo.value.description == "Bad Request: there is no text in the message to edit"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.edit_message_caption("caption", chat, sent.message_id)
    assert excinfo.value.description == "Bad Request: there is no caption in the message to edit"

    link = bot.create_invoice_link(
        "Gift card", "A €25 gift card", "order-8", None, "XTR", stars("Card", 25)
    )
    assert re.fullmatch(r"https://t\.me/\$[A-Za-z0-9_-]{20,}", link), link
    assert fake.invoice_links() == [
        {
            "title": "Gift card",
            "description": "A €25 gift card",
            "start_parameter": "",
            "currency": "XTR",
            "total_amount": 25,
            "url": link,
            "payload": "order-8",
        }
    ]
    assert [m.kind for m in fake.messages(chat)] == ["invoice", "invoice"]  # no link message


def test_invoice_errors_as_telegram_gives_them(fake, bot, chat):
    def error_of(method="sendInvoice", **changes):
        params = {
            "chat_id": chat,
            "title": "Gift card",
            "description": "A gift card",
            "payload": "order-1",
            "currency": "XTR",
            "prices": json.dumps([{"label": "Card", "amount": 25}]),
        }
        params.update(changes)
        if method == "createInvoiceLink":
            params.pop("chat_id")
        params = {key: value for key, value in params.items() if value is not None}
        response = api(fake, method, params=params)
        assert response.status_code == response.json()["error_code"], response.text
        return response.json()["description"]

    assert error_of(title="") == 'Bad Request: parameter "title" is required'
    assert error_of(description=None) == 'Bad Request: parameter "description" is required'
    assert error_of(payload="") == 'Bad Request: parameter "payload" is required'
    assert error_of(prices=None) == 'Bad Request: parameter "prices" is required'
    assert error_of(prices="[{nope") == "Bad Request: can't parse prices JSON object"
    assert error_of(prices="{}") == "Bad Request: expected an Array of labeled prices"
    assert error_of(prices="[]") == "Bad Request: there must be at least one price"
    assert error_of(prices='[{"amount": 5}]') == (
        "Bad Request: can't parse labeled price: Can't find field \"label\""
    )
    assert error_of(prices='[{"label": "", "amount": 5}]') == (
        "Bad Request: can't parse labeled price: LabeledPrice label must be non-empty"
    )
    assert error_of(prices='[{"label": "Card", "amount": 2.5}]') == (
        'Bad Request: can\'t parse labeled price: Field "amount" must be a valid Number'
    )
    assert error_of(prices='[{"label": "Card", "amount": null}]') == (
        'Bad Request: can\'t parse labeled price: Field "amount" must be a Number'
    )
    assert error_of(chat_id=999) == "Bad Request: chat not found"
    for amount in (0, -5):
        assert error_of(prices=json.dumps([{"label": "Card", "amount": amount}])) == (
            "Bad Request: total price must be positive"
        )
    assert error_of(prices='[{"label": "Card", "amount": 100001}]') == (
        "Bad Request: CURRENCY_TOTAL_AMOUNT_INVALID"
    )
    two_prices = json.dumps([{"label": "Card", "amount": 20}, {"label": "Fee", "amount": 5}])
    assert error_of(prices=two_prices) == "Bad Request: STARS_INVOICE_INVALID"
    assert error_of(max_tip_amount=5) == "Bad Request: STARS_INVOICE_INVALID"
    assert error_of(provider_token="284685063:TEST:abc") == "Bad Request: PAYMENT_PROVIDER_INVALID"
    assert error_of(currency="XTS") == "Bad Request: PAYMENT_PROVIDER_INVALID"
    assert error_of(payload="é" * 65) == "Bad Request: INVOICE_PAYLOAD_INVALID"  # 130 bytes
    assert "1-32 characters" in error_of(title="T" * 33)
    assert "1-255 characters" in error_of(description="D" * 256)
    assert error_of("createInvoiceLink", prices=two_prices) == "Bad Request: STARS_INVOICE_INVALID"
    assert error_of("createInvoiceLink", title="") == 'Bad Request: parameter "title" is required'
    assert fake.messages(chat) == [] and fake.invoice_links() == []

    # the limits: 32 characters (not bytes), 128 bytes, 100000 Stars, an empty provider_token
    ok = api(
        fake,
        "sendInvoice",
        params={
            "chat_id": chat,
            "title": "é" * 32,
            "description": "D" * 255,
            "payload": "p" * 128,
            "provider_token": "",
            "currency": "XTR",
            "prices": '[{"label": "Card", "amount": "100000"}]',
        },
    )
    assert ok.json()["result"]["invoice"]["total_amount"] == 100000

    # like sendMessage: a blocked user and the flood limit
    fake.user_blocks_bot(chat)
    with pytest.raises(ApiTelegramException) as excinfo:
        send_stars_invoice(bot, chat)
    assert api_error(excinfo) == (403, "Forbidden: bot was blocked by the user")
    fake.user_unblocks_bot(chat)
    fake.enforce_limits(per_second=30, per_chat_per_second=1.0, per_chat_burst=2)
    send_stars_invoice(bot, chat)
    bot.send_message(chat, "one more")
    with pytest.raises(ApiTelegramException) as excinfo:
        send_stars_invoice(bot, chat)
    assert excinfo.value.error_code == 429


def test_polling_bot_sells_with_telebot_handlers(fake, bot):
    seen = []

    @bot.pre_checkout_query_handler(func=lambda query: True)
    def checkout(query):
        if query.invoice_payload == "sold-out":
            bot.answer_pre_checkout_query(query.id, ok=False, error_message="Sold out, sorry")
        else:
            bot.answer_pre_checkout_query(query.id, ok=True)

    @bot.message_handler(content_types=["successful_payment"])
    def paid(message):
        payment = message.successful_payment
        seen.append(payment)
        bot.send_message(message.chat.id, f"Thanks! Paid {payment.total_amount} ⭐️")

    runner = threading.Thread(
        target=bot.infinity_polling,
        kwargs={
            "timeout": 5,
            "long_polling_timeout": 1,
            "logger_level": None,
            "allowed_updates": ["message", "callback_query", "pre_checkout_query"],
        },
    )
    fake.user_sends(USER, "/start")
    invoice = send_stars_invoice(bot, USER, payload="order-7")
    sold_out = send_stars_invoice(bot, USER, payload="sold-out")
    runner.start()
    try:
        payment = fake.user_pays(USER, fake.messages(USER)[0])
        assert (payment.status, payment.ok, payment.total_amount) == ("paid", True, 25)
        thanks = fake.wait_message(USER, "Thanks!", timeout=10)
        assert thanks.text == "Thanks! Paid 25 ⭐️"
        assert [p.telegram_payment_charge_id for p in seen] == [payment.charge_id]
        assert (seen[0].invoice_payload, seen[0].currency) == ("order-7", "XTR")
        assert seen[0].provider_payment_charge_id == ""
        assert payment.message["successful_payment"]["telegram_payment_charge_id"] == (
            payment.charge_id
        )
        assert payment.message["from"]["id"] == USER
        assert payment.message["message_id"] > invoice.message_id

        refused = fake.user_pays(USER, sold_out)
        assert (refused.status, refused.error_message, refused.charge_id) == (
            "refused",
            "Sold out, sorry",
            None,
        )
    finally:
        bot.stop_polling()
        fake.release_polls()
        runner.join(10)
    assert not runner.is_alive()
    assert len(seen) == 1  # nothing for the refused one
    assert [t["id"] for t in fake.star_transactions()] == [payment.charge_id]
    assert fake.calls_to("getUpdates")[0]["allowed_updates"] == [
        "message",
        "callback_query",
        "pre_checkout_query",
    ]
    with pytest.raises(AssertionError, match="already paid"):
        fake.user_pays(USER, invoice)


def test_pre_checkout_answer_rules_and_timeout(fake, bot, chat):
    link = bot.create_invoice_link("Gift", "A gift", "order-9", "", "XTR", stars("Gift", 10))
    started = time.monotonic()
    late = fake.user_pays(chat, link, timeout=0.3)  # nobody answers
    assert late.status == "timed_out" and 0.3 <= time.monotonic() - started < 3
    assert (late.charge_id, late.done, late.ok) == (None, True, False)
    query = updates_of(fake, "pre_checkout_query")[-1]["pre_checkout_query"]
    assert query == {
        "id": late.query_id,
        "from": {
            "id": chat,
            "is_bot": False,
            "first_name": "Ann",
            "username": "ann",
            "language_code": "en",
        },
        "currency": "XTR",
        "total_amount": 10,
        "invoice_payload": "order-9",
    }
    too_old = "Bad Request: query is too old and response timeout expired or query ID is invalid"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.answer_pre_checkout_query(late.query_id, ok=True)  # after the time ran out
    assert api_error(excinfo) == (400, too_old)
    assert fake.star_transactions() == [] and late.status == "timed_out"

    fake.pre_checkout_timeout = 5
    pending = fake.user_pays(chat, link, wait=False)
    assert pending.status == "pending" and not pending.done
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.answer_pre_checkout_query(pending.query_id, ok=False)  # no error_message
    assert excinfo.value.description == 'Bad Request: parameter "error_message" is required'
    for wrong_id in ("123", "not-a-number"):
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.answer_pre_checkout_query(wrong_id, ok=True)
        assert excinfo.value.description == too_old
    assert pending.status == "pending"
    assert bot.answer_pre_checkout_query(pending.query_id, ok=True) is True
    assert pending.wait().status == "paid"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.answer_pre_checkout_query(pending.query_id, ok=True)  # answered already
    assert excinfo.value.description == too_old
    assert [t["amount"] for t in fake.star_transactions()] == [10]
    # the fake's default is Telegram's 10 seconds
    assert FakeTelegram(token=TOKEN).pre_checkout_timeout == 10


def test_refunds_once_and_star_transactions(fake, bot, chat):
    fake.user_sends(2002, "hi", first_name="Bob")
    payments = []
    for amount in (5, 7, 9):
        link = bot.create_invoice_link(
            "Gift", "A gift", f"order-{amount}", None, "XTR", stars("Gift", amount)
        )
        payment = fake.user_pays(chat, link, wait=False)
        bot.answer_pre_checkout_query(payment.query_id, ok=True)
        payments.append(payment.wait())
    first, second, third = payments
    assert len({p.charge_id for p in payments}) == 3

    assert bot.refund_star_payment(chat, second.charge_id) is True
    assert second.refunded and not first.refunded
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.refund_star_payment(chat, second.charge_id)
    assert api_error(excinfo) == (400, "Bad Request: CHARGE_ALREADY_REFUNDED")
    for user_id, charge_id in ((2002, first.charge_id), (chat, "stx-no-such-charge")):
        with pytest.raises(ApiTelegramException) as excinfo:
            bot.refund_star_payment(user_id, charge_id)
        assert excinfo.value.description == "Bad Request: CHARGE_ID_INVALID"
    with pytest.raises(ApiTelegramException) as excinfo:
        bot.refund_star_payment(chat, "")
    assert excinfo.value.description == (
        'Bad Request: parameter "telegram_payment_charge_id" is required'
    )
    assert len(fake.calls_to("refundStarPayment")) == 5
    assert [r["telegram_payment_charge_id"] for r in fake.refunds] == [second.charge_id]
    assert (fake.refunds[0]["user_id"], fake.refunds[0]["total_amount"]) == (chat, 7)

    # the bot is told with a refunded_payment service message from itself
    message = updates_of(fake, "message")[-1]["message"]
    assert message["from"]["id"] == fake.bot_user["id"] and message["chat"]["id"] == chat
    assert message["refunded_payment"] == {
        "currency": "XTR",
        "total_amount": 7,
        "invoice_payload": "order-7",
        "telegram_payment_charge_id": second.charge_id,
    }
    assert types.Message.de_json(message).refunded_payment.total_amount == 7

    # newest first: the refund (receiver, the id of the original), then the payments (source)
    listed = api(fake, "getStarTransactions", params={}).json()["result"]["transactions"]
    user = {
        "id": chat,
        "is_bot": False,
        "first_name": "Ann",
        "username": "ann",
        "language_code": "en",
    }
    assert listed[0] == {
        "id": second.charge_id,
        "date": listed[0]["date"],
        "receiver": {
            "transaction_type": "invoice_payment",
            "type": "user",
            "user": user,
            "invoice_payload": "order-7",
        },
        "amount": 7,
    }
    assert [(t["id"], "source" in t, t["amount"]) for t in listed] == [
        (second.charge_id, False, 7),
        (third.charge_id, True, 9),
        (second.charge_id, True, 7),
        (first.charge_id, True, 5),
    ]
    assert listed[1]["source"]["invoice_payload"] == "order-9"
    assert listed == fake.star_transactions()

    via_telebot = bot.get_star_transactions(offset=1, limit=2).transactions
    assert [(t.id, t.amount, t.source.user.id) for t in via_telebot] == [
        (third.charge_id, 9, chat),
        (second.charge_id, 7, chat),
    ]
    assert via_telebot[0].source.transaction_type == "invoice_payment"
    clamped = api(fake, "getStarTransactions", params={"limit": 0}).json()["result"]
    assert len(clamped["transactions"]) == 1  # the Bot API clamps limit to 1..100
    assert api(fake, "getStarTransactions", params={"offset": 9}).json()["result"] == {
        "transactions": []
    }
    assert api(fake, "getMyStarBalance").json()["result"] == {"amount": 5 + 9}


def test_dropped_duplicated_and_replayed_payment_updates(fake, bot, chat):
    link = bot.create_invoice_link("Gift", "A gift", "order-1", None, "XTR", stars("Gift", 3))

    def answer_next_query():
        query = updates_of(fake, "pre_checkout_query")[-1]["pre_checkout_query"]
        bot.answer_pre_checkout_query(query["id"], ok=True)

    # dropped: charged, but the successful_payment update never reaches the bot
    dropped = fake.user_pays(chat, link, wait=False, drop_successful_payment=True)
    answer_next_query()
    assert dropped.wait().status == "paid" and dropped.dropped
    assert dropped.update_ids == [] and dropped.update_id is None
    assert updates_of(fake, "message") == []
    assert fake.star_transactions()[0]["id"] == dropped.charge_id  # found again this way
    assert dropped.message["successful_payment"]["invoice_payload"] == "order-1"
    assert dropped.message in fake.user_messages(chat)  # it is in the chat all the same

    # duplicated: two updates, the same message
    twice = fake.user_pays(chat, link, wait=False, duplicate_successful_payment=True)
    answer_next_query()
    assert twice.wait().ok and len(twice.update_ids) == 2
    delivered = updates_of(fake, "message")
    assert [u["update_id"] for u in delivered] == twice.update_ids
    assert delivered[0]["message"] == delivered[1]["message"] == twice.message

    # replayed: any update once more, with a fresh update_id
    replayed_id = fake.replay_update(twice.update_id)
    assert replayed_id > twice.update_ids[-1]
    again = [u for u in updates_of(fake, "message") if u["update_id"] == replayed_id]
    assert again[0]["message"] == twice.message
    with pytest.raises(AssertionError):
        fake.replay_update(1)
    assert [t["id"] for t in fake.star_transactions()] == [twice.charge_id, dropped.charge_id]


def test_pre_checkout_queries_follow_allowed_updates(fake, bot, chat):
    link = bot.create_invoice_link("Gift", "A gift", "order-1", None, "XTR", stars("Gift", 3))
    # the shop polls for messages and callbacks only: Telegram remembers that list
    api(fake, "getUpdates", json={"timeout": 0, "allowed_updates": ["message", "callback_query"]})
    unseen = fake.user_pays(chat, link, timeout=0.3)
    assert unseen.status == "timed_out"
    assert updates_of(fake, "pre_checkout_query") == []  # without allowed_updates: remembered
    assert fake.star_transactions() == []

    with_queries = updates_of(fake, "pre_checkout_query", allowed_updates=["pre_checkout_query"])
    assert with_queries == []  # not created back then
    pending = fake.user_pays(chat, link, wait=False)
    delivered = updates_of(fake, "pre_checkout_query")
    assert [u["pre_checkout_query"]["id"] for u in delivered] == [pending.query_id]
    bot.answer_pre_checkout_query(pending.query_id, ok=True)
    assert pending.wait().ok
    assert pending.update_ids == []  # "message" is not allowed now: no successful_payment update
    api(fake, "getUpdates", json={"timeout": 0, "allowed_updates": []})  # back to the default
    paid_again = fake.user_pays(chat, link, wait=False)
    bot.answer_pre_checkout_query(paid_again.query_id, ok=True)
    assert paid_again.wait().ok and len(paid_again.update_ids) == 1


def test_user_pays_checks_what_is_paid(fake, bot, chat):
    fake.user_sends(2002, "hi")
    invoice = send_stars_invoice(bot, chat)
    with pytest.raises(AssertionError, match="another user's chat"):
        fake.user_pays(2002, invoice)
    with pytest.raises(AssertionError, match="no invoice link"):
        fake.user_pays(chat, "https://t.me/$unknown")
    text = bot.send_message(chat, "not an invoice")
    with pytest.raises(AssertionError, match="not an invoice"):
        fake.user_pays(chat, text)
    bot.delete_message(chat, invoice.message_id)
    with pytest.raises(AssertionError, match="deleted"):
        fake.user_pays(chat, invoice.json)
    assert fake.payments == []
