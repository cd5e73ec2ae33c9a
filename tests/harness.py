"""What the tests and the benchmarks share (standard library plus the shop's own dependencies, so
tests/bench.py needs no pytest): ports, images, `python shop.py` as a subprocess with its log
captured, the owner's admin client over HTTP, the benchmarks' table rows and their timed Bot API
stand-in."""

import html
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import requests

from fake_telegram import FakeTelegram, _to_int

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TOKEN = "123456:TEST-token"
# The Telegram ids the tests shop as. A sandbox shop with a bot is in test mode, where only owners
# and the testers they name may buy: the tests' shops name these (TESTER_IDS), as an owner names the
# friends who try their bot. A test of what everyone else sees uses an id outside them (or sets
# TESTER_IDS itself).
TESTERS = ",".join(
    str(i)
    for r in (
        range(1, 10),
        range(100, 120),
        range(300, 340),
        range(500, 510),
        range(700, 720),
        range(1000, 1100),
        range(2000, 2010),
        range(3000, 3010),
        range(4000, 4010),
        range(5000, 5010),
    )
    for i in r
)


def png(width=4, height=3, rgb=(200, 120, 40)):
    """A small valid PNG image."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShopProcess:
    """`python shop.py` in a subprocess, with its log captured line by line."""

    def __init__(self, workdir, env, command=None):
        self.workdir, self.env = Path(workdir), env
        # What runs the shop (under Litestream: `litestream replicate -exec "python shop.py"`).
        self.command = command or [sys.executable, str(ROOT / "shop.py")]
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.lines, self.cond = [], threading.Condition()

    def start(self, *args, ready="shop is running", timeout=20):
        if self.proc is not None:  # the previous process's reader finishes first
            with self.cond:
                self.cond.wait_for(lambda: self.eof, 10)
        self.lines.clear()
        self.eof = False
        self.proc = subprocess.Popen(
            [*self.command, *args],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if ready:
            self.wait_log(ready, timeout)
        return self

    def _read(self, proc):
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    @property
    def log(self):
        with self.cond:
            return "\n".join(self.lines)

    def wait_log(self, text, timeout=10):
        """Wait for a log line containing text and return it; fail if the shop exits first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.eof:
                    raise AssertionError(
                        f"shop exited ({self.proc.wait()}) before logging {text!r}:\n"
                        + "\n".join(self.lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"shop did not log {text!r} within {timeout}s:\n" + "\n".join(self.lines)
                    )
                self.cond.wait(left)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Send sig and wait; returns (exit code, seconds it took)."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), 0.0
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - start

    def kill(self):
        return self.stop(signal.SIGKILL)

    def health(self):
        return requests.get(self.url + "/healthz", timeout=5)


def shop_env(folder, telegram_url, **extra):
    """Environment for `python shop.py` in `folder` against a Bot API at telegram_url: sandbox
    payments, no admin password, none of the caller's shop settings (extra ones override)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOWPAYMENTS_", "BOT_", "ADMIN_", "TESTER_"))
    }
    env.update(
        {
            "SHOP_DB": str(Path(folder) / "shop.db"),
            "PORT": str(free_port()),
            "HOST": "127.0.0.1",
            "BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": telegram_url,
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
            "TESTER_IDS": TESTERS,
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


# The admin over HTTP #########################################################

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class AdminClient:
    """The owner's session on the admin over HTTP, as a browser keeps it: the session cookie and the
    CSRF token of the forms. `shop` is the Shop under test when it runs in this process (else None).

    login() posts the password and, when it is accepted (303), reads the CSRF token off token_page;
    post() adds that token to every form unless csrf=False."""

    def __init__(self, url, password, shop=None):
        self.url, self.password, self.shop = url, password, shop
        self.http, self.csrf = requests.Session(), None

    def login(self, password=None, next_path="/admin", token_page="/admin/catalog", timeout=10):
        """POST /admin/login (with this client's password unless told otherwise); the response."""
        r = self.http.post(
            self.url + "/admin/login",
            data={"password": self.password if password is None else password, "next": next_path},
            allow_redirects=False,
            timeout=timeout,
        )
        if r.status_code == 303 and token_page:
            self.csrf = CSRF_FIELD.search(self.get(token_page).text).group(1)
        return r

    def get(self, path, timeout=10, **kw):
        return self.http.get(self.url + path, timeout=timeout, **kw)

    def post(self, path, data=None, csrf=True, files=None, timeout=30, **kw):
        """POST a form (with the CSRF token unless csrf=False); redirects are not followed."""
        data = dict(data or {})
        if csrf:
            data["csrf_token"] = self.csrf
        return self.http.post(
            self.url + path, data=data, files=files, allow_redirects=False, timeout=timeout, **kw
        )

    def flash(self, path):
        """The flash message that the page at path shows."""
        return html.unescape(
            re.search(r'class="flash[^"]*"[^>]*>([^<]*)<', self.get(path).text).group(1)
        )

    def broadcast(self, text, timeout=10):
        """Send a broadcast to every shopper as the owner does: POST /admin/broadcast answers with
        the confirmation, which holds the number of recipients; the same POST with that number
        sends it (303 to its progress page). A refusal (400) is the first answer."""
        r = self.post("/admin/broadcast", {"text": text}, timeout=timeout)
        count = re.search(r'name="recipients" value="(\d+)"', r.text)
        if r.status_code != 200 or count is None:
            return r
        data = {"text": text, "recipients": count.group(1)}
        return self.post("/admin/broadcast", data, timeout=timeout)


# What the benchmarks share ####################################################


@dataclass
class Row:
    benchmark: str  # "1. Mini App catalog API"
    figure: str  # "requests/s, 32 keep-alive clients"
    shop: str  # the shop's figure, formatted
    baseline: str  # the baseline's figure, formatted ("" when there is none)
    ratio: str  # shop/baseline, formatted ("" when there is none)
    goal: str  # "≥ 0.6x"
    met: str  # "yes", "no", or "" for figures without a goal


@dataclass
class Context:
    tmp: Path  # a scratch folder for this benchmark, removed afterwards
    quick: bool  # smoke run with less load


def pct(values, fraction):
    """The shop's own percentile (nearest rank), NaN for no values."""
    import shop

    found = shop.percentile(values, fraction)
    return float("nan") if found is None else found


def ratio(value, base):
    return f"{value / base:.2f}x" if base else ""


def table(rows):
    out = [
        "| Benchmark | Figure | Shop | Baseline | Ratio | Goal | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    out += [
        f"| {r.benchmark} | {r.figure} | {r.shop} | {r.baseline} | {r.ratio} | {r.goal} | {r.met} |"
        for r in rows
    ]
    return "\n".join(out)


def bench_catalog(cities=20, districts=5, products=10, units=2):
    """The catalog benchmark 1 uses: 20 cities x 5 districts x 10 products, every product
    everywhere."""
    cs = [
        {"name": f"City {c:02d}", "districts": [f"District {c:02d}-{d}" for d in range(districts)]}
        for c in range(cities)
    ]
    ps = [
        {
            "name": f"Product {p:02d}",
            "description": f"A fine product number {p}.",
            "price": f"{5 + p}.50",
            "stock": [
                {"city": c["name"], "district": d, "content": f"CODE-{p}-{d}-{u}"}
                for c in cs
                for d in c["districts"]
                for u in range(units)
            ],
        }
        for p in range(products)
    ]
    return {"cities": cs, "products": ps}


# What counts as "the bot answered": the first of these calls for the chat after the update was
# pushed.
ANSWERS = (
    "sendMessage",
    "sendPhoto",
    "editMessageText",
    "editMessageCaption",
    "editMessageMedia",
    "answerCallbackQuery",
)


# The Bot API stand-in with timestamps


class TimedTelegram(FakeTelegram):
    """FakeTelegram that timestamps each pushed update and the first answer to it in its chat, and
    wakes the simulated shopper waiting in that chat when the bot has finished answering.

    Pushed: inside _push_update (under the stand-in's lock, the moment getUpdates can return it).
    Answered: when the stand-in starts handling the first
    sendMessage/editMessageText/answerCallbackQuery (or photo equivalents) for that chat, i.e. after
    the request has arrived and been parsed."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.pending = {}  # chat -> (pushed at, kind) of the update waiting for its first answer
        self.samples = []  # (kind, seconds)
        self.waiters = {}  # chat -> (what finishes the exchange: "message" | query id, Event)
        self.sends = []  # (perf_counter, chat, ok) of every sendMessage, for the delivery benchmark

    def expect(self, chat, done):
        event = threading.Event()
        with self._lock:
            self.waiters[chat] = (done, event)
        return event

    def _push_update(self, kind, obj):
        chat = (
            (obj.get("chat") or {}).get("id")
            if kind == "message"
            else (obj.get("from") or {}).get("id")
        )
        if chat is not None:
            self.pending[chat] = (time.perf_counter(), kind)
        return super()._push_update(kind, obj)

    def _timed(self, method, params, fn):
        now = time.perf_counter()
        if method == "answerCallbackQuery":
            query = self._callback_queries.get(str(params.get("callback_query_id")))
            chat = query["user_id"] if query else None
        else:
            chat = _to_int(params.get("chat_id"))
        started = self.pending.pop(chat, None)
        if started is not None:
            self.samples.append((started[1], now - started[0]))
        try:
            result = fn(params, None)
        except Exception:
            if method == "sendMessage":
                self.sends.append((now, chat, False))
            raise
        if method == "sendMessage":
            self.sends.append((now, chat, True))
        waiter = self.waiters.get(chat)
        if waiter is not None:
            done, event = waiter
            if (done == "message" and method in ("sendMessage", "sendPhoto")) or (
                method == "answerCallbackQuery" and done == str(params.get("callback_query_id"))
            ):
                del self.waiters[chat]
                event.set()
        return result


def _timed_method(name):
    base = getattr(FakeTelegram, "_m_" + name)

    def method(self, params, files):
        return self._timed(name, params, lambda p, _: base(self, p, files))

    method.__name__ = "_m_" + name
    return method


for _name in ANSWERS:
    setattr(TimedTelegram, "_m_" + _name, _timed_method(_name))
