"""The web server over real HTTP: the offline demo, health, public pages and what must stay
private."""

import os
import signal

import pytest
import requests

import shop
from conftest import ShopProcess, free_port


@pytest.fixture
def demo(tmp_path):
    """`python shop.py` as a new user runs it: an empty directory, nothing configured."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in shop.ENV_VARS and not k.startswith("NOWPAYMENTS_")
    }
    env.update(PORT=str(free_port()), PYTHONUNBUFFERED="1")
    proc = ShopProcess(tmp_path, env).start()
    yield proc
    proc.kill()


def test_the_offline_demo_starts_on_an_empty_directory(demo, tmp_path):
    assert demo.wait_log("bot: off")
    assert demo.wait_log("SANDBOX mode")
    assert f"{demo.url}/" in demo.wait_log("shop is running")
    for what, path in (("admin", "/admin"), ("Mini App preview", "/app"), ("health", "/healthz")):
        assert f"{demo.url}{path}" in demo.wait_log(f"{what} "), what
    health = demo.health()
    assert health.status_code == 200
    assert health.json() | {"outbox": None} == {
        "status": "ok",
        "mode": "sandbox",
        "version": shop.__version__,
        "database": "ok",
        "scheduler": "running",
        "bot": "off",
        "payments": "ok",
        "outbox": None,
    }
    page = requests.get(demo.url + "/", timeout=5)
    assert page.status_code == 200 and "Sandbox mode" in page.text and "not connected" in page.text
    assert 'href="/app"' in page.text and 'href="/admin"' in page.text
    for city in ("Berlin", "Lisbon", "Kraków"):
        assert city in page.text
    assert (tmp_path / "shop.db").exists()
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    code, seconds = demo.stop(signal.SIGINT)
    assert code == 0 and seconds < 5


@pytest.fixture
def web(tmp_path):
    config = shop.load_config(
        environ={"SHOP_DB": str(tmp_path / "shop.db"), "PORT": str(free_port())}, env_file=None
    )
    s = shop.Shop(config).start()
    yield s
    s.stop()


def test_product_photos_are_public_and_unit_photos_are_not(web):
    conn = shop.connect(web.config.shop_db)
    photo = conn.execute("SELECT photo FROM products WHERE photo IS NOT NULL").fetchone()[0]
    media = conn.execute("SELECT media FROM stock_units WHERE media IS NOT NULL").fetchone()[0]
    r = requests.get(f"{web.url}/media/{photo}", timeout=5)
    assert (
        r.status_code == 200 and r.content == (web.config.media_dir / "public" / photo).read_bytes()
    )
    for path in (
        f"/media/{media}",
        f"/media/private/{media}",
        f"/media/../private/{media}",
        f"/media/%2e%2e/private/{media}",
        f"/static/../media/private/{media}",
        "/static/../shop.db",
        "/static/%2e%2e/shop.py",
        "/media/..%2fshop.db",
    ):
        r = requests.get(web.url + path, timeout=5)
        assert r.status_code in (403, 404), path
        assert r.content != (web.config.media_dir / "private" / media).read_bytes()


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/nope"),
        ("POST", "/healthz"),
        ("GET", "/media/x.jpg"),
        ("GET", "/static/nothing.css"),
        ("DELETE", "/"),
    ],
)
def test_bad_requests_get_clear_errors_not_500(web, method, path):
    r = requests.request(method, web.url + path, timeout=5)
    assert 400 <= r.status_code < 500
    assert "Traceback" not in r.text


def test_static_files_are_served(web):
    r = requests.get(web.url + "/static/css/site.css", timeout=5)
    assert r.status_code == 200 and "text/css" in r.headers["Content-Type"]


def test_scripts_and_styles_are_served_gzipped_to_who_takes_gzip(web):
    import gzip

    path = shop.STATIC_DIR / "app" / "app.js"
    plain = requests.get(
        web.url + "/static/app/app.js", headers={"Accept-Encoding": "identity"}, timeout=5
    )
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers
    assert plain.content == path.read_bytes()
    raw = requests.get(
        web.url + "/static/app/app.js", headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True
    )
    body = raw.raw.read()
    assert raw.headers["Content-Encoding"] == "gzip" and raw.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == path.read_bytes() and len(body) < path.stat().st_size / 2
    assert raw.headers["Content-Type"].startswith("text/javascript")
    again = requests.get(
        web.url + "/static/app/app.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": raw.headers["ETag"]},
        timeout=5,
    )
    assert again.status_code == 304 and again.content == b""
    # Not a text asset, or not there: as before.
    for target, status in (("/static/img/nothing.js", 404), ("/static/%2e%2e/shop.py", 403)):
        r = requests.get(web.url + target, headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert r.status_code == status and "Content-Encoding" not in r.headers


def test_the_storefront_speaks_the_shops_default_language(web, shop_languages):
    shop_languages(
        "pl",
        pl={
            "In stock now in:": "Teraz dostępne w:",
            "{n} item": ["{n} produkt", "{n} produkty", "{n} produktów"],
            "Sandbox mode: no real payments are taken.": "Tryb piaskownicy: bez prawdziwych "
            "płatności.",
        },
    )
    page = requests.get(web.url + "/", timeout=5).text
    assert '<html lang="en">' in page and "In stock now in:" in page and " items)" in page
    conn = shop.connect(web.config.shop_db)
    shop.save_settings(conn, {"default_language": "pl"})
    conn.close()
    page = requests.get(web.url + "/", timeout=5).text
    assert '<html lang="pl">' in page and "Teraz dostępne w:" in page
    assert "Tryb piaskownicy" in page and "produktów)" in page
