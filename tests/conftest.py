"""Fixtures: real database files, the Bot API stand-in, and the real shop as a subprocess."""

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import shop  # noqa: E402
import harness  # noqa: E402
from harness import ROOT, TESTERS, TESTS, TOKEN, ShopProcess, free_port, png  # noqa: E402,F401


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chaos: kill -9, outages and full disks (slow; CI runs them)"
    )
    config.addinivalue_line(
        "markers", "fuzz: generated inputs for everything the shop parses (CI runs them)"
    )


try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture says so
    expect = sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BROWSER_WAIT_MS = 10000


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through Playwright. Without it the browser tests are skipped with a
    loud warning, except in CI, where that is a failure."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif sync_playwright is None:
        reason = "the playwright package is missing (pip install -r requirements-dev.txt)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"The browser tests cannot run in CI: {reason}")
        message = f"!!! BROWSER TESTS SKIPPED: {reason} !!!"
        warnings.warn(pytest.PytestWarning(message))
        pytest.skip(message)
    expect.set_options(timeout=BROWSER_WAIT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def write_catalog(folder, data, images=()):
    """Write a catalog file (and the named PNG images) into folder; return its path."""
    folder = Path(folder)
    for i, name in enumerate(images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png(rgb=(i * 40 % 256, 100, 200)))
    path = folder / "catalog.json"
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


# A catalog whose names would break an unescaped message: non-Latin letters,
# HTML specials, Markdown specials; plus a city without stock and a product
# that has none.
HOSTILE = {
    "cities": [
        {"name": "Łódź <Centrum>", "districts": ["Bałuty & Widzew", "Śródmieście"]},
        {"name": "Berlin", "districts": ["Mitte", "Kreuzberg_36"]},
        {"name": "Empty town", "districts": ["Nowhere"]},
    ],
    "products": [
        {
            "name": "gift_card *25*",
            "description": "A <b>bold</b> claim & [link](x) _under_",
            "price": "25.00",
            "photo": "img/gift.png",
            "stock": [
                {"city": "Łódź <Centrum>", "district": "Bałuty & Widzew", "content": "CODE-<1>&_*"},
                {"city": "Łódź <Centrum>", "district": "Bałuty & Widzew", "content": "CODE-2"},
                {"city": "Berlin", "district": "Mitte", "content": "CODE-3"},
            ],
        },
        {
            "name": "Kaffee «Grün» 250g",
            "description": "Bohnen.",
            "price": "12.90",
            "stock": [
                {
                    "city": "Berlin",
                    "district": "Kreuzberg_36",
                    "content": "Locker 7 <door>\nCode: 11&22",
                    "media": "img/locker.png",
                }
            ],
        },
        {
            "name": "Плакат A2",
            "description": "",
            "price": 9.5,
            "stock": [
                {
                    "city": "Łódź <Centrum>",
                    "district": "Śródmieście",
                    "content": "https://example.com/p?a=1&b=2",
                },
                {
                    "city": "Łódź <Centrum>",
                    "district": "Śródmieście",
                    "content": "https://example.com/p?a=2&b=3",
                },
            ],
        },
        {"name": "Sold-out e-book", "description": "None left.", "price": "5", "stock": []},
    ],
}
HOSTILE_IMAGES = ("img/gift.png", "img/locker.png")


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "shop.db"
    shop.init_db(str(path)).close()
    return path


@pytest.fixture
def conn(db_path):
    """A connection to a fresh shop database; after the test every balance must equal its ledger sum."""
    c = shop.connect(str(db_path))
    yield c
    assert shop.check_ledger(c) == []
    c.close()


@pytest.fixture
def hostile_catalog(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    return write_catalog(folder, HOSTILE, HOSTILE_IMAGES)


@pytest.fixture
def fake_tg():
    from fake_telegram import FakeTelegram

    fake = FakeTelegram(token=TOKEN).start()
    yield fake
    fake.stop()


@pytest.fixture
def shop_env(tmp_path, fake_tg):
    """Environment for a shop subprocess talking to the Bot API stand-in."""
    return harness.shop_env(tmp_path, fake_tg.base_url)


@pytest.fixture
def run_shop(tmp_path, shop_env):
    """Factory: start the real shop (no demo catalog) against the stand-in; stopped at teardown."""
    procs = []

    def start(*args, env=None, ready="bot: @", **kw):
        p = ShopProcess(tmp_path, {**shop_env, **(env or {})})
        procs.append(p)
        return p.start("--no-demo", *args, ready=ready, **kw)

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def make_shop(tmp_path):
    """Factory: the real shop started in this process (web server, jobs, and the bot when BOT_TOKEN is
    given) on its own database; stopped at teardown, after checking every balance against its ledger."""
    shops = []

    def make(env=None, demo=False, name="shop"):
        base = {
            "SHOP_DB": str(tmp_path / f"{name}.db"),
            "PORT": str(free_port()),
            "TESTER_IDS": TESTERS,
        }
        config = shop.load_config(environ={**base, **(env or {})}, env_file=None)
        s = shop.Shop(config, demo=demo).start()
        shops.append(s)
        return s

    yield make
    for s in shops:
        s.stop()
        conn = shop.connect(s.config.shop_db)
        assert shop.check_ledger(conn) == []
        conn.close()
