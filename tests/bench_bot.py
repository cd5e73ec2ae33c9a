"""Benchmarks 2, 2b and 3: bot reply latency against a bare telebot echo bot, paced and under
bursts, and outbox delivery throughput against Telegram's flood limits. They run the real shop
(`python shop.py --no-demo`) as a subprocess against the Bot API stand-in
(tests/fake_telegram.py), subclassed by TimedTelegram (tests/harness.py) only to timestamp what
passes through it. Standard library plus the shop's own dependencies.

    python tests/bench.py --only bot,burst,delivery [--quick]
"""

import collections
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import shop  # noqa: E402
from harness import (  # noqa: E402
    TOKEN,
    Context,
    Row,
    ShopProcess,
    TimedTelegram,
    bench_catalog,
    pct,
    ratio,
    shop_env,
    table,
)

# --------------------------------------------------------------------------------------------
# 2. bot reply latency

# The baseline: a bare telebot bot with the shop's polling settings (shop.py, Shop.start_bot and
# _run_bot: PollingBot(token, threaded=True, num_threads=BOT_WORKERS); infinity_polling(timeout=30,
# long_polling_timeout=25, allowed_updates=["message", "callback_query"])). It answers a message
# with a message carrying inline buttons and a button press by editing that message and answering
# the query: the calls the shop makes.
ECHO_BOT = textwrap.dedent("""
    import html, itertools, logging, os
    import telebot
    from telebot import apihelper, types
    base = os.environ["TELEGRAM_API_URL"]
    apihelper.API_URL = base + "/bot{0}/{1}"
    apihelper.FILE_URL = base + "/file/bot{0}/{1}"
    bot = telebot.TeleBot(os.environ["BOT_TOKEN"], threaded=True,
                          num_threads=int(os.environ["BOT_WORKERS"]))
    counter = itertools.count()
    def keyboard():
        kb = types.InlineKeyboardMarkup()
        kb.row(types.InlineKeyboardButton("one", callback_data="pick:1"))
        kb.row(types.InlineKeyboardButton("two", callback_data="pick:2"))
        kb.row(types.InlineKeyboardButton("⬅️ Back", callback_data="back"))
        return kb
    @bot.message_handler(func=lambda m: True)
    def echo(m):
        bot.send_message(m.chat.id, "<b>echo</b> " + html.escape(m.text or ""), parse_mode="HTML",
                         reply_markup=keyboard())
    @bot.callback_query_handler(func=lambda c: True)
    def press(c):
        bot.edit_message_text(f"<b>echo</b> {html.escape(c.data)} {next(counter)}",
                              c.message.chat.id, c.message.message_id, parse_mode="HTML",
                              reply_markup=keyboard())
        bot.answer_callback_query(c.id)
    bot._user = bot.get_me()
    print("echo bot polling", flush=True)
    bot.infinity_polling(timeout=30, long_polling_timeout=25, logger_level=logging.ERROR,
                         allowed_updates=["message", "callback_query"])
""")

# One shopper's session: messages are sent as text, "pick" presses a catalog button (a city, a
# district, a product) on the current screen, "back" presses ⬅️ Back.
SESSION = [
    "/start",
    "🛒 Shop",
    "pick",
    "pick",
    "pick",
    "back",
    "pick",
    "back",
    "back",
    "pick",
    "pick",
    "back",
    "👤 Profile",
]
NAV = ("city:", "dist:", "prod:")


def seed_catalog(db, media):
    conn = shop.init_db(str(db))
    try:
        shop.import_catalog(conn, bench_catalog(), Path(media).parent, Path(media))
    finally:
        conn.close()


def pick_button(fake, chat, step, is_shop, rng):
    """(message id, callback data) of the button a shopper presses for step ("pick", "add",
    "back") on their screen."""
    screen = fake.last_message(chat)
    buttons = [b for row in (screen.buttons if screen else []) for b in row if "callback_data" in b]
    if is_shop and step == "add":
        buttons = [b for b in buttons if b["callback_data"].startswith("add:")]
    elif is_shop and step == "back":
        buttons = [b for b in buttons if b["text"] == "⬅️ Back"]
    elif is_shop:
        buttons = [
            b
            for b in buttons
            if b["callback_data"].startswith(NAV) and b["text"] not in ("◀️", "▶️", "⬅️ Back")
        ]
    else:
        buttons = [b for b in buttons if (b["callback_data"] == "back") == (step == "back")]
    if not buttons:
        raise AssertionError(f"chat {chat}: no {step!r} button on {screen!r}")
    return screen.message_id, rng.choice(buttons)["callback_data"]


class Shopper(threading.Thread):
    def __init__(self, fake, user_id, steps, think, rng, is_shop, failures):
        super().__init__(daemon=True, name=f"shopper-{user_id}")
        self.fake, self.id, self.steps, self.think, self.rng = fake, user_id, steps, think, rng
        self.is_shop, self.failures = is_shop, failures

    def button(self, step):
        return pick_button(self.fake, self.id, step, self.is_shop, self.rng)

    def run(self):
        try:
            time.sleep(
                self.rng.uniform(0, self.think[1])
            )  # staggered arrivals (think time, not sync)
            for step in self.steps:
                if step in ("pick", "back"):
                    message_id, data = self.button(step)
                    query = self.fake.user_clicks(self.id, message_id, data)
                    done = self.fake.expect(self.id, query)
                    # expect() after the push is fine: the answer needs a poll + a handler, and the
                    # stand-in's waiter check runs under its lock; but guard the race anyway:
                    if query in self.fake.callback_answers:
                        done.set()
                else:
                    done = self.fake.expect(self.id, "message")
                    self.fake.user_sends(self.id, step, first_name=f"Shopper{self.id}")
                if not done.wait(30):
                    raise AssertionError(f"chat {self.id}: no answer to {step!r} within 30 s")
                time.sleep(self.rng.uniform(*self.think))  # the shopper reads the screen
        except Exception as e:  # reported, not raised: a thread
            self.failures.append(f"{type(e).__name__}: {e}")


def run_shoppers(fake, is_shop, shoppers, steps, think, seed):
    failures = []
    threads = [
        Shopper(
            fake, 9_000_000 + i, steps, think, random.Random(seed * 1000 + i), is_shop, failures
        )
        for i in range(shoppers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return failures, time.monotonic() - started


def measure_bot(tmp, is_shop, warm, run, seed_db=seed_catalog):
    """Run one bot (the shop or the echo bot) against a fresh stand-in: warm(fake, is_shop) ->
    failures first (not measured), then run(fake, is_shop) -> (failures, seconds). Returns the
    run's latency samples, failures, seconds and Bot API calls by method (getUpdates aside)."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    fake = TimedTelegram(token=TOKEN).start()
    proc = echo = None
    try:
        env = shop_env(tmp, fake.base_url, BOT_WORKERS=shop.BOT_WORKERS)
        if is_shop:
            seed_db(env["SHOP_DB"], tmp / "media")
            proc = ShopProcess(tmp, env).start("--no-demo", ready="bot: @", timeout=30)
        else:
            script = tmp / "echo_bot.py"
            script.write_text(ECHO_BOT, encoding="utf-8")
            echo = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        fake.wait_for(lambda: fake.calls_to("getUpdates"), timeout=30, what="the bot polling")
        # Warm-up (not measured): one shopper's first screens, so imports and caches are loaded.
        failures = warm(fake, is_shop)
        if failures:
            raise AssertionError(f"warm-up failed: {failures}")
        fake.samples.clear()
        calls_before = len(fake.calls)
        failures, seconds = run(fake, is_shop)
        samples = list(fake.samples)
        with fake._lock:
            calls = collections.Counter(
                name for name, _ in fake.calls[calls_before:] if name != "getUpdates"
            )
        if fake.errors:
            failures.append(f"stand-in errors: {fake.errors[:2]}")
        if proc is not None and " ERROR " in proc.log:
            failures.append(
                "shop logged errors:\n"
                + "\n".join(line for line in proc.lines if " ERROR " in line)[:2000]
            )
        return samples, failures, seconds, calls
    finally:
        if proc is not None:
            proc.stop()
        if echo is not None:
            echo.send_signal(signal.SIGTERM)
            try:
                echo.wait(5)
            except subprocess.TimeoutExpired:
                echo.kill()
                echo.wait()
        fake.stop()


def bench_bot(ctx):
    shoppers = 50
    steps = SESSION if not ctx.quick else SESSION[:6]
    think = (0.3, 0.9)  # seconds a shopper looks at a screen before the next tap
    results = {}
    for name, is_shop in (("echo", False), ("shop", True)):
        samples, failures, seconds, _ = measure_bot(
            ctx.tmp / name,
            is_shop,
            warm=lambda fake, bot: run_shoppers(fake, bot, 1, steps[:5], (0.0, 0.0), 100)[0],
            run=lambda fake, is_shop: run_shoppers(fake, is_shop, shoppers, steps, think, 1),
        )
        results[name] = summary(samples, failures)
        r = results[name]
        print(
            f"#   bot/{name}: {r['n']} answers in {seconds:.1f} s ({r['n'] / seconds:.0f}/s); "
            f"median {r['median'] * 1000:.1f} ms (messages "
            f"{pct([s for k, s in samples if k == 'message'], 0.5) * 1000:.1f}, buttons "
            f"{pct([s for k, s in samples if k == 'callback_query'], 0.5) * 1000:.1f}), "
            f"p99 {r['p99'] * 1000:.1f} ms" + (f"; FAILURES: {failures[:3]}" if failures else ""),
            file=sys.stderr,
            flush=True,
        )
    shop_, echo = results["shop"], results["echo"]
    ok = all_answered(results, shoppers * len(steps))

    label = "2. Bot reply latency"
    what = f"{shoppers} shoppers, {len(steps)} taps each, {think[0]}-{think[1]} s apart"
    return latency_rows(label, what, shop_, echo, ok) + failure_rows(label, shop_, echo, ok)


def summary(samples, failures):
    """A bot's figures from its latency samples [(kind, seconds)]."""
    latencies = [s for _, s in samples]
    return {
        "median": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "n": len(latencies),
        "failures": failures,
    }


def all_answered(results, expected):
    """Both bots answered every tap, without a failure."""
    return all(not r["failures"] and r["n"] == expected for r in results.values())


def latency_rows(label, what, shop_, echo, ok):
    """The median and p99 rows of a bot benchmark, against the echo bot's, with the goals."""

    def ms(v):
        return f"{v * 1000:.1f} ms"

    return [
        Row(
            label,
            f"median update → answer ({what})",
            ms(shop_["median"]),
            ms(echo["median"]) + " (echo bot)",
            ratio(shop_["median"], echo["median"]),
            "≤ 1.2x",
            "yes" if ok and shop_["median"] <= 1.2 * echo["median"] else "no",
        ),
        Row(
            label,
            "p99 update → answer",
            ms(shop_["p99"]),
            ms(echo["p99"]) + " (echo bot)",
            ratio(shop_["p99"], echo["p99"]),
            "≤ 1.5x",
            "yes" if ok and shop_["p99"] <= 1.5 * echo["p99"] else "no",
        ),
    ]


def failure_rows(label, shop_, echo, ok):
    if ok:
        return []
    failures = "; ".join((shop_["failures"] + echo["failures"])[:3])[:300]
    return [Row(label, "failures", failures, "", "", "none", "no")]


# --------------------------------------------------------------------------------------------
# 2b. bot replies under bursts

# Every shopper taps at the same moment, round after round: what a broadcast or a restock alert
# brings. The taps go through real screens: the catalog, product cards with photos (a text screen
# becoming a photo card and back), adding to the basket, the basket and the profile. "pick" presses
# a catalog button, "add" the card's 🧺 Add to basket, "back" ⬅️ Back; the echo bot answers the same
# kinds of updates (a message or a button press) in its one way.
BURST = [
    "/start",
    "🛒 Shop",
    "pick",
    "pick",
    "pick",
    "add",
    "back",
    "pick",
    "add",
    "back",
    "back",
    "pick",
    "pick",
    "add",
    "🧺 Basket",
    "🛒 Shop",
    "pick",
    "pick",
    "pick",
    "👤 Profile",
]


def seed_photo_catalog(db, media):
    """bench_web's catalog on 4 cities: 4 x 5 districts x 10 products with photos, 3 units
    each."""
    from bench_web import seed_catalog as seed_with_photos

    conn = shop.init_db(str(db))
    try:
        seed_with_photos(conn, Path(media), cities=4)
    finally:
        conn.close()


def run_bursts(fake, is_shop, shoppers, steps, seed, first=9_100_000):
    """Each round, every shopper's next tap is pushed in one go (one getUpdates answer holds them
    all); the round ends when every one is answered. Returns (failures, seconds)."""
    chats = [first + i for i in range(shoppers)]
    rngs = {chat: random.Random(seed * 1000 + chat) for chat in chats}
    started = time.monotonic()
    for step in steps:
        events = []
        try:  # the buttons first, so that pushing the round takes no longer than pushing
            buttons = [
                pick_button(fake, chat, step, is_shop, rngs[chat])
                if step in ("pick", "add", "back")
                else None
                for chat in chats
            ]
        except AssertionError as e:
            return [str(e)], time.monotonic() - started
        with fake._cond:  # the stand-in's lock: no poll sees the round until it is all there
            for chat, button in zip(chats, buttons, strict=True):
                if button:
                    query = fake.user_clicks(chat, *button)
                    events.append((chat, step, fake.expect(chat, query)))
                else:
                    events.append((chat, step, fake.expect(chat, "message")))
                    fake.user_sends(chat, step, first_name=f"Shopper{chat}")
        deadline = time.monotonic() + 30
        late = [(c, s) for c, s, e in events if not e.wait(max(0.0, deadline - time.monotonic()))]
        if late:
            return [f"no answer within 30 s to {late[:3]}"], time.monotonic() - started
    return [], time.monotonic() - started


def bench_burst(ctx):
    shoppers = 50
    steps = BURST if not ctx.quick else BURST[:10]
    results = {}
    for name, is_shop in (("echo", False), ("shop", True)):
        samples, failures, seconds, calls = measure_bot(
            ctx.tmp / name,
            is_shop,
            warm=lambda fake, is_shop: run_bursts(fake, is_shop, 1, steps, 99, 9_099_000)[0],
            run=lambda fake, is_shop: run_bursts(fake, is_shop, shoppers, steps, 1),
            seed_db=seed_photo_catalog,
        )
        taps = shoppers * len(steps)
        results[name] = r = {**summary(samples, failures), "calls": calls.total() / taps}
        print(
            f"#   burst/{name}: {r['n']} answers in {seconds:.1f} s; median "
            f"{r['median'] * 1000:.1f} ms, p99 {r['p99'] * 1000:.1f} ms; Bot API calls per tap "
            f"{r['calls']:.2f} "
            + ", ".join(f"{m} {n}" for m, n in calls.most_common())
            + (f"; FAILURES: {failures[:3]}" if failures else ""),
            file=sys.stderr,
            flush=True,
        )
    shop_, echo = results["shop"], results["echo"]
    ok = all_answered(results, taps)

    label = "2b. Bot replies under bursts"
    what = (
        f"{shoppers} shoppers tapping at once, {len(steps)} rounds, {shop.BOT_WORKERS} workers each"
    )
    calls = Row(
        label,
        "Bot API calls per tap (photo cards, basket, answers)",
        f"{shop_['calls']:.2f}",
        f"{echo['calls']:.2f} (echo bot)",
        "",
        "",
        "",
    )
    return (
        latency_rows(label, what, shop_, echo, ok) + [calls] + failure_rows(label, shop_, echo, ok)
    )


# --------------------------------------------------------------------------------------------
# 3. delivery throughput

DELIVERY_MESSAGES = 3000


def bench_delivery(ctx):
    count = 300 if ctx.quick else DELIVERY_MESSAGES
    tmp = ctx.tmp
    fake = TimedTelegram(token=TOKEN).start()
    proc = None
    try:
        env = shop_env(tmp, fake.base_url)
        shop.init_db(env["SHOP_DB"]).close()
        proc = ShopProcess(tmp, env).start("--no-demo", ready="bot: @", timeout=30)
        fake.wait_for(lambda: fake.calls_to("getUpdates"), timeout=30, what="the shop polling")
        chats = [7_000_000 + i for i in range(count)]
        with (
            fake._cond
        ):  # chats the stand-in knows (each user once wrote to the bot), without updates
            for chat in chats:
                fake._ensure_chat(chat, "Ann", None, "en")
        fake.enforce_limits(per_second=30, per_chat_per_second=1.0, per_chat_burst=3)
        conn = shop.connect(env["SHOP_DB"])
        with shop.transaction(conn):
            for i, chat in enumerate(chats):
                shop.enqueue_message(conn, chat, f"Delivery {i} for you")
        queued = time.perf_counter()

        def ok_sends():
            return sum(1 for _, _, ok in fake.sends if ok)

        fake.wait_for(
            lambda: ok_sends() >= count, timeout=count / 20 + 30, what=f"{count} messages delivered"
        )
        fake.wait_for(
            lambda: (
                conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
                == 0
            ),
            timeout=30,
            what="every outbox row marked sent",
        )
        sends = list(fake.sends)
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        )
        conn.close()
        got = {chat: [m.content for m in fake.messages(chat)] for chat in chats}
    finally:
        if proc is not None:
            proc.stop()
        fake.stop()
    times = sorted(t for t, _, ok in sends if ok)
    lost = sum(1 for i, chat in enumerate(chats) if f"Delivery {i} for you" not in got[chat])
    duplicated = sum(1 for texts in got.values() if len(texts) > 1)
    limited = sum(1 for _, _, ok in sends if not ok)
    # Steady part: between the 5th and the 95th percentile of arrivals (leaves out the sender
    # noticing the new rows and the stand-in's initial burst allowance of 30, and the tail).
    a, b = int(0.05 * len(times)), int(0.95 * len(times)) - 1
    sustained = (b - a) / (times[b] - times[a])
    overall = len(times) / (times[-1] - queued)
    share = limited / len(sends) if sends else 0
    print(
        f"#   delivery: {len(times)} delivered, {limited} answered 429, "
        f"outbox {statuses}; sustained {sustained:.2f}/s, "
        f"whole run {overall:.2f}/s ({times[-1] - queued:.1f} s from commit to last)",
        file=sys.stderr,
        flush=True,
    )
    label = "3. Delivery throughput"
    return [
        Row(
            label,
            f"sustained messages/s, {count} chats (5th-95th percentile of arrivals)",
            f"{sustained:.1f}/s",
            "30/s (the limit)",
            ratio(sustained, 30.0),
            "≥ 0.94x",
            "yes" if sustained >= 0.94 * 30 else "no",
        ),
        Row(
            label,
            "whole run, commit to last arrival",
            f"{overall:.1f}/s",
            "30/s (the limit)",
            ratio(overall, 30.0),
            "",
            "",
        ),
        Row(
            label,
            "lost / duplicated / left pending",
            f"{lost} / {duplicated} / {statuses.get('pending', 0)}",
            "",
            "",
            "0 / 0 / 0",
            "yes" if lost == duplicated == statuses.get("pending", 0) == 0 else "no",
        ),
        Row(
            label,
            "429 answers, share of sends",
            f"{limited} of {len(sends)} ({share:.2%})",
            "",
            "",
            "< 1%",
            "yes" if share < 0.01 else "no",
        ),
    ]


BENCHMARKS = {"bot": bench_bot, "burst": bench_burst, "delivery": bench_delivery}


if __name__ == "__main__":  # python tests/bench_bot.py [bot|delivery] [--quick]
    import tempfile

    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(BENCHMARKS)
    rows = []
    for n in names:
        with tempfile.TemporaryDirectory() as d:
            rows += BENCHMARKS[n](Context(Path(d), "--quick" in sys.argv))
    print(table(rows))
