"""Broadcasts an owner dares to send (issue 13, point 6), over real HTTP with the bot on the
stand-in: Telegram's HTML formatting checked as Telegram reads it and previewed as Telegram shows
it, a test send to the owners' own chats, a confirmation with the exact number of recipients and
no Send when that is nobody; and the payments page's status filter in words."""

import html
import re

import pytest

import shop
from conftest import ADMIN_PASSWORD, TOKEN, png, user, wait_for_row
from harness import AdminClient


def start(make_shop, fake_tg=None, **env):
    """A shop (with its bot on the stand-in when fake_tg is given) and the owner logged in."""
    env = {"ADMIN_PASSWORD": ADMIN_PASSWORD, **env}
    if fake_tg is not None:
        env.update(BOT_TOKEN=TOKEN, TELEGRAM_API_URL=fake_tg.base_url)
    s = make_shop(env=env)
    s.conn = shop.connect(s.config.shop_db)
    if fake_tg is not None:
        fake_tg.wait_for(lambda: s.bot_state == "running", what="the bot polling")
    admin = AdminClient(s.url, ADMIN_PASSWORD, shop=s)
    assert admin.login().status_code == 303
    return admin


@pytest.fixture
def admin(make_shop):
    a = start(make_shop)
    yield a
    a.shop.conn.close()


def shown(page):
    """A page's text with its entities decoded, to find the sentences the owner reads."""
    return html.unescape(page.text if hasattr(page, "text") else page)


def queued(conn):
    return conn.execute("SELECT count(*) FROM outbox").fetchone()[0], conn.execute(
        "SELECT count(*) FROM broadcasts"
    ).fetchone()[0]


NEWS = (
    'Big <b>sale</b> & <i>new</i> <a href="https://example.com/tea?a=1&amp;b=2">tea</a>\n'
    "<tg-spoiler>-20%</tg-spoiler> with <code>TEA20</code>"
)
NEWS_TEXT = "Big sale & new tea\n-20% with TEA20"
NEWS_ENTITIES = [
    {"type": "bold", "offset": 4, "length": 4},
    {"type": "italic", "offset": 11, "length": 3},
    {"type": "text_link", "offset": 15, "length": 3, "url": "https://example.com/tea?a=1&b=2"},
    {"type": "spoiler", "offset": 19, "length": 4},
    {"type": "code", "offset": 29, "length": 5},
]


def test_a_formatted_broadcast_arrives_as_telegram_html_and_a_blocked_shopper_is_not_counted(
    make_shop, fake_tg
):
    admin = start(make_shop, fake_tg)
    conn = admin.shop.conn
    for uid in (41, 42, 43):
        fake_tg.user_sends(uid, "/start")
        fake_tg.wait_message(uid, "Welcome")
    fake_tg.user_blocks_bot(43)

    preview = admin.get("/admin/broadcast/preview", params={"text": NEWS}).text
    for element in (
        "<b>sale</b>",
        "<i>new</i>",
        '<a href="https://example.com/tea?a=1&amp;b=2"',
        '<span class="tg-spoiler"',
        "<code>TEA20</code>",
        f"({len(NEWS_TEXT)} of 4096 characters)",
    ):
        assert element in preview, element
    r = admin.broadcast(NEWS)
    assert r.status_code == 303, r.text
    broadcast = int(r.headers["Location"].rsplit("/", 1)[1])
    for uid in (41, 42):
        message = fake_tg.wait_message(uid, "Big sale")
        assert message.parse_mode == "HTML"
        assert message.content == NEWS_TEXT
        assert message.entities == NEWS_ENTITIES
    sent = conn.execute("SELECT text FROM broadcasts WHERE id = ?", (broadcast,)).fetchone()[0]
    assert sent == (
        'Big <b>sale</b> &amp; <i>new</i> <a href="https://example.com/tea?a=1&amp;b=2">tea</a>\n'
        "<tg-spoiler>-20%</tg-spoiler> with <code>TEA20</code>"
    )
    status = admin.get(f"/admin/broadcast/{broadcast}").text
    assert "<b>sale</b>" in status and "<code>TEA20</code>" in status

    # Telegram refuses the one who blocked the bot: the next broadcast counts only the others,
    # on the form, on the confirmation and in the send, until they write to the bot again.
    wait_for_row(conn, "SELECT 1 FROM outbox WHERE chat_id = 43 AND status = 'failed'")
    form = shown(admin.get("/admin/broadcast"))
    assert "It goes to 2 shoppers (left out: 1 who blocked the bot)." in form
    assert "Send to 2 shoppers" in shown(admin.post("/admin/broadcast", {"text": "Again"}))
    fake_tg.user_unblocks_bot(43)
    conn.execute("UPDATE users SET last_seen_at = ? WHERE id = 43", (shop.now_iso(-600),))
    fake_tg.user_sends(43, "/start")  # seen again
    fake_tg.wait_for(
        lambda: "It goes to 3 shoppers." in shown(admin.get("/admin/broadcast")),
        what="the shopper counted again",
    )
    admin.shop.conn.close()


BAD = [
    ("<b>Sale today", "Line 1: <b> is never closed: add </b> where it ends."),
    ("Hi\n<blink>now</blink>", "Line 2: <blink> is not a tag Telegram knows"),
    ("<b><i>x</b></i>", "close tags in the reverse order you opened them"),
    ("</i>x", "</i> closes nothing"),
    ('<a href="javascript:alert(1)">x</a>', 'Telegram opens no link to "javascript:alert(1)"'),
    ("<a>x</a>", "<a> needs the address it opens"),
    ("Price&nbsp;5", '"&nbsp;" is not an entity Telegram knows'),
    ("<code><b>x</b></code>", "<b> cannot be inside <code>"),
    ("<b></b>", "The message has tags but no text."),
    ("x" * 4097, "The message is 4097 characters long as Telegram counts them"),
    ("😀" * 2049, "The message is 4098 characters long"),
]


def test_a_message_telegram_would_refuse_is_refused_with_the_reason_and_nothing_is_queued(admin):
    conn = admin.shop.conn
    for uid in (21, 22):
        user(conn, uid)
    for text, reason in BAD:
        preview = shown(admin.get("/admin/broadcast/preview", params={"text": text}))
        assert "Telegram would refuse this" in preview and reason in preview, text
        for data in ({"text": text}, {"text": text, "recipients": "2"}):
            r = admin.post("/admin/broadcast", data)
            assert r.status_code == 400 and reason in shown(r), (text, data)
            assert "Nothing was sent." in shown(r)
            textarea = re.search(r"<textarea[^>]*>(.*?)</textarea>", r.text, re.S).group(1)
            assert html.unescape(textarea) == text  # the owner's text is kept to be fixed
        assert admin.post("/admin/broadcast/test", {"text": text}).status_code == 400
    assert queued(conn) == (0, 0)
    assert not conn.execute("SELECT 1 FROM audit_log WHERE action LIKE 'broadcast%'").fetchone()

    # Telegram counts the text once the tags are gone: 8000 characters of HTML are 1000.
    long_html = "<b>a</b>" * 1000
    confirm = admin.post("/admin/broadcast", {"text": long_html})
    assert confirm.status_code == 200 and "As Telegram shows it (1000 characters)" in confirm.text
    under_photo = admin.post(
        "/admin/broadcast",
        {"text": long_html + "x" * 25},
        files={"photo": ("p.png", png(), "image/png")},
    )
    assert under_photo.status_code == 400
    assert "1025 characters long" in under_photo.text and "limit is 1024 under a photo" in (
        under_photo.text
    )
    assert re.search(r'name="photo_ref" value="[0-9a-f]{32}\.png"', under_photo.text)  # kept
    assert queued(conn) == (0, 0)


def test_the_preview_shows_the_formatting_but_never_the_owners_own_html(admin):
    conn = admin.shop.conn
    user(conn, 21)
    text = (
        "<b>bold</b> <em>it</em> <u>u</u> <s>s</s> <blockquote>said</blockquote>"
        '<a href="https://example.com/?q=&quot;x&quot;" onclick="alert(1)">link</a> '
        "or https://shop.example/sale."
    )
    preview = admin.get("/admin/broadcast/preview", params={"text": text}).text
    for element in ("<b>bold</b>", "<i>it</i>", "<u>u</u>", "<s>s</s>", "<blockquote>said"):
        assert element in preview, element
    assert '<a href="https://example.com/?q=&quot;x&quot;"' in preview
    assert '<a href="https://shop.example/sale"' in preview  # found in the text, as Telegram does
    assert "onclick" not in preview
    hostile = [
        "<img src=x onerror=alert(1)>",
        "x <script>alert(1)</script>",
        '<a href="https://x.example/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">x</a>',
        '<code>&lt;script&gt;alert(1)&lt;/script&gt;</code> <a href="tg://user?id=1">me</a>',
    ]
    for text in hostile:
        for page in (
            admin.get("/admin/broadcast/preview", params={"text": text}).text,
            admin.post("/admin/broadcast", {"text": text}).text,
        ):
            assert "<script>alert" not in page and "<img src=x" not in page
    me = admin.get("/admin/broadcast/preview", params={"text": hostile[-1]}).text
    assert '<span class="tg-link" title="tg://user?id=1">me</span>' in me  # shown, not opened
    r = admin.broadcast(text)
    status = admin.http.get(r.headers["Location"], timeout=10).text
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in status
    assert "<script>alert" not in status


def test_a_test_send_reaches_only_the_owners_chats(make_shop, fake_tg):
    admin = start(make_shop, fake_tg, ADMIN_IDS="900,901")
    conn = admin.shop.conn
    for uid in (900, 901, 41):
        fake_tg.user_sends(uid, "/start")
        fake_tg.wait_message(uid, "Welcome")
    r = admin.post(
        "/admin/broadcast/test",
        {"text": "<b>Tea</b> is back"},
        files={"photo": ("tea.png", png(), "image/png")},
    )
    assert r.status_code == 200
    assert "Test sent to the 2 owner chats (ADMIN_IDS 900, 901)" in shown(r)
    assert html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", r.text, re.S).group(1)) == (
        "<b>Tea</b> is back"
    )
    assert re.search(r'name="photo_ref" value="[0-9a-f]{32}\.png"', r.text)  # photo and all
    for owner in (900, 901):
        message = fake_tg.wait_message(owner, "Tea is back")
        assert message.kind == "photo" and message.parse_mode == "HTML"
        assert message.entities == [{"type": "bold", "offset": 0, "length": 3}]
    rows = conn.execute("SELECT chat_id, broadcast_id FROM outbox WHERE text LIKE '%Tea%'")
    assert sorted(tuple(row) for row in rows) == [(900, None), (901, None)]
    assert not [m for m in fake_tg.messages(41) if "Tea" in m.content]
    assert queued(conn)[1] == 0  # no broadcast: nobody else gets it
    audit = "SELECT details FROM audit_log WHERE action = 'broadcast test sent'"
    assert conn.execute(audit).fetchone()[0].startswith("to 900, 901: Tea is back")
    conn.close()


def test_without_admin_ids_the_test_send_says_so(admin):
    user(admin.shop.conn, 21)
    r = admin.post("/admin/broadcast/test", {"text": "Hello"})
    assert r.status_code == 400 and "No owner chat is set" in shown(r) and "ADMIN_IDS" in r.text
    assert queued(admin.shop.conn) == (0, 0)


def test_the_confirmation_shows_the_exact_count_the_send_uses(admin):
    conn = admin.shop.conn
    for uid in (21, 22, 23, 24, 25):
        user(conn, uid)
    shop.set_banned(conn, 23, True)
    with shop.transaction(conn):
        for uid, created in ((24, shop.now_iso()), (25, shop.now_iso(-3600))):
            # Telegram refused a message: 24 blocked the bot; 25 did, but has written since
            conn.execute(
                "INSERT INTO outbox(chat_id, text, status, last_error, next_attempt_at, "
                "created_at) VALUES (?, 'x', 'failed', '403: Forbidden: bot was blocked by the "
                "user', ?, ?)",
                (uid, created, created),
            )
    form = shown(admin.get("/admin/broadcast"))
    assert "It goes to 3 shoppers (left out: 1 banned, 1 who blocked the bot)." in form
    assert "Review and send…" in form
    confirm = admin.post("/admin/broadcast", {"text": "Open <b>late</b> today"})
    assert confirm.status_code == 200
    assert "It goes to 3 shoppers" in shown(confirm) and "Send to 3 shoppers" in confirm.text
    assert 'name="recipients" value="3"' in confirm.text
    assert "<b>late</b>" in confirm.text
    assert queued(conn) == (2, 0)  # asking sends nothing

    user(conn, 26)  # a new shopper while the owner looks
    again = admin.post("/admin/broadcast", {"text": "Open <b>late</b> today", "recipients": "3"})
    assert again.status_code == 409 and "changed since you looked" in again.text
    assert "Send to 4 shoppers" in again.text and queued(conn) == (2, 0)
    edit = admin.post("/admin/broadcast", {"text": "Open <b>late</b> today", "action": "edit"})
    assert edit.status_code == 200 and "Open &lt;b&gt;late&lt;/b&gt; today</textarea>" in edit.text

    r = admin.post("/admin/broadcast", {"text": "Open <b>late</b> today", "recipients": "4"})
    assert r.status_code == 303
    broadcast = int(r.headers["Location"].rsplit("/", 1)[1])
    chats = conn.execute(
        "SELECT chat_id FROM outbox WHERE broadcast_id = ? ORDER BY chat_id", (broadcast,)
    ).fetchall()
    assert [c[0] for c in chats] == [21, 22, 25, 26]
    recipients = "SELECT recipients FROM broadcasts WHERE id = ?"
    assert conn.execute(recipients, (broadcast,)).fetchone()[0] == 4


def test_with_nobody_to_send_to_there_is_no_send_button(admin):
    conn = admin.shop.conn
    form = shown(admin.get("/admin/broadcast"))
    assert "Nobody can get it yet: no shopper has started the bot." in form
    assert "Review and send" not in form and "Send a test to my chat" in form
    confirm = admin.post("/admin/broadcast", {"text": "Hello"})
    assert confirm.status_code == 200
    assert "Nobody can get it yet" in shown(confirm) and "there is no Send button" in confirm.text
    assert 'name="recipients"' not in confirm.text and "Send to" not in confirm.text
    forced = admin.post("/admin/broadcast", {"text": "Hello", "recipients": "0"})
    assert forced.status_code == 400 and "There is nobody to send it to" in shown(forced)

    user(conn, 21)
    shop.set_banned(conn, 21, True)
    form = shown(admin.get("/admin/broadcast"))
    assert "Nobody can get it: every shopper is left out (1 banned)." in form
    assert "Review and send" not in form
    assert queued(conn) == (0, 0)


def test_the_payments_status_filter_says_words_not_provider_codes(admin):
    page = admin.get("/admin/payments", params={"status": "partially_paid"}).text
    select = re.search(r'<select name="status">(.*?)</select>', page, re.S).group(1)
    options = re.findall(r'<option value="([^"]*)"\s*(selected)?\s*>([^<]*)</option>', select)
    assert [(value, words) for value, _, words in options] == [
        ("", "any status"),
        ("waiting", "waiting for payment"),
        ("confirming", "confirming"),
        ("confirmed", "confirmed"),
        ("sending", "being forwarded"),
        ("partially_paid", "partly paid"),
        ("finished", "paid"),
        ("refunded", "refunded"),
        ("failed", "failed"),
        ("expired", "expired"),
    ]
    assert [value for value, selected, _ in options if selected] == ["partially_paid"]
    assert "_" not in "".join(words for _, _, words in options)
