"""Configuration, logging, the database layer and money parsing, on real files and processes."""

import io
import logging
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import shop
from conftest import ROOT, ShopProcess, free_port
from harness import AdminClient


def clean_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in shop.ENV_VARS and not k.startswith(("NOWPAYMENTS_", "BOT_"))
    }
    env.update(extra)
    return env


# Configuration


def test_defaults_run_the_offline_sandbox():
    c = shop.load_config(environ={}, env_file=None)
    assert c.sandbox and not c.bot_token
    assert (c.host, c.port, c.shop_db) == ("127.0.0.1", 8080, "shop.db")
    assert c.webhook_url == "http://127.0.0.1:8080"
    assert c.min_deposit_cents == 500 and c.reservation_minutes == 30
    assert c.telegram_api_url == "https://api.telegram.org"
    assert c.nowpayments_api_url == "https://api.nowpayments.io/v1"


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=9001\nMIN_DEPOSIT_EUR=7,50\nADMIN_IDS=1, 2 ,3\nHOST=0.0.0.0\n"
        "WEBHOOK_URL=https://shop.example.com/\n"
    )
    c = shop.load_config(environ={"PORT": "9002"}, env_file=str(env_file))
    assert c.port == 9002
    assert c.min_deposit_cents == 750
    assert c.admin_ids == (1, 2, 3)
    assert c.webhook_url == "https://shop.example.com"


def test_webhook_url_defaults_to_host_and_port():
    c = shop.load_config(environ={"HOST": "10.0.0.5", "PORT": "9000"}, env_file=None)
    assert c.webhook_url == "http://10.0.0.5:9000"


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("MIN_DEPOSIT_EUR", "-1"),
        ("MIN_DEPOSIT_EUR", "five"),
        ("MIN_DEPOSIT_EUR", "0"),
        ("RESERVATION_MINUTES", "0"),
        ("RESERVATION_MINUTES", "1.5"),
        ("ADMIN_IDS", "12,abc"),
        ("WEBHOOK_URL", "ftp://x.example"),
        ("WEBHOOK_URL", "shop.example.com"),
        ("TELEGRAM_API_URL", "not a url"),
        ("BOT_TOKEN", "hello world"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(shop.ConfigError) as e:
        shop.load_config(environ={name: value}, env_file=None)
    assert name in str(e.value)


def test_bad_config_stops_startup_with_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "shop.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(PORT="abc"),
        timeout=30,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0] and "abc" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_help_documents_flags_and_variables(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert r.returncode == 0
    for word in ("--port", "--db", "--no-demo", "--env-file", *shop.ENV_VARS):
        assert word in r.stdout


def test_importing_shop_has_no_side_effects(tmp_path):
    code = (
        "import threading, shop; extra = [t.name for t in threading.enumerate() "
        "if t is not threading.main_thread()]; print(repr(extra))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=str(ROOT)),
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert r.stderr == ""
    assert os.listdir(tmp_path) == []


def test_port_in_use_is_one_clear_line_and_does_not_use_up_the_password(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, str(ROOT / "shop.py"), "--no-demo"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(PORT=str(port), SHOP_DB=str(tmp_path / "s.db")),
        )
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    # The password shown once is made only once the shop listens: this failed start did not use it
    # up.
    assert "Admin password" not in r.stderr
    conn = shop.connect(str(tmp_path / "s.db"))
    assert (
        conn.execute("SELECT count(*) FROM settings WHERE key = 'admin_password_hash'").fetchone()[
            0
        ]
        == 0
    )
    conn.close()
    proc = ShopProcess(
        tmp_path,
        clean_env(PORT=str(free_port()), SHOP_DB=str(tmp_path / "s.db"), PYTHONUNBUFFERED="1"),
    ).start("--no-demo")
    try:
        proc.wait_log("Admin password (shown once")
        lines = proc.lines
        running = next(i for i, line in enumerate(lines) if "shop is running" in line)
        assert running < next(i for i, line in enumerate(lines) if "Admin password" in line)
    finally:
        proc.stop()


def test_a_second_shop_on_the_same_database_refuses_and_a_killed_one_never_blocks(tmp_path):
    env = clean_env(
        SHOP_DB=str(tmp_path / "s.db"), PYTHONUNBUFFERED="1", ADMIN_PASSWORD="a long password"
    )
    first = ShopProcess(tmp_path, {**env, "PORT": str(free_port())}).start("--no-demo")
    try:
        second = subprocess.run(
            [sys.executable, str(ROOT / "shop.py"), "--no-demo"],
            cwd=tmp_path,
            timeout=30,
            env={**env, "PORT": str(free_port())},
            capture_output=True,
            text=True,
        )
        assert second.returncode == 1
        refusal = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(refusal) == 1 and "another shop is already running on" in refusal[0], (
            second.stderr
        )
        assert f"pid {first.proc.pid}" in refusal[0] and first.url in refusal[0]
        assert first.health().status_code == 200  # the running one goes on
        first.kill()  # kill -9: no clean-up at all
        third = ShopProcess(tmp_path, {**env, "PORT": str(free_port())}).start("--no-demo")
        assert third.health().status_code == 200
        third.stop()
    finally:
        first.kill()


def test_the_shops_files_are_for_its_own_user_only(tmp_path):
    """The database holds the goods and the balances: nobody else on the machine may read it (nor
    its companions, copies, backups and media). Files an older version left open are closed once,
    with a line."""
    db = tmp_path / "shop.db"
    shop.init_db(str(db)).close()
    for path in (
        tmp_path / "shop.db.v3.bak",
        tmp_path / "backups" / "shop-20261201-031700.db",
        tmp_path / "media" / "private" / ("a" * 32 + ".png"),
        tmp_path / "media" / "public" / ("b" * 32 + ".png"),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for path in [db, *tmp_path.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    env = clean_env(
        SHOP_DB=str(db),
        PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        ADMIN_PASSWORD="a long password",
    )
    proc = ShopProcess(tmp_path, env).start("--no-demo")
    try:
        assert "were readable by other users of this machine" in proc.wait_log("files: ")
        config = shop.load_config(environ=env, env_file=None)
        admin = AdminClient(proc.url, "a long password")
        admin.login(token_page="/admin")  # and on to the dashboard, as a browser goes
        assert admin.get("/admin/backup").status_code == 200  # writes and removes a copy
        open_to_others = {
            str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
            for p in [db, *tmp_path.rglob("*")]
            if p.stat().st_mode & 0o077
        }
        assert open_to_others == {}
        assert (tmp_path / "shop.db-wal").exists() and (tmp_path / "shop.db.lock").exists()
        assert config.media_dir == tmp_path / "media"
    finally:
        proc.stop()
    # The owner's commands create what they create for the shop's user only too.
    fresh = tmp_path / "new" / "other.db"
    fresh.parent.mkdir()
    r = subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), "set", "shop_name", "Paper & Ink"],
        cwd=tmp_path,
        env=clean_env(SHOP_DB=str(fresh)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert fresh.stat().st_mode & 0o777 == 0o600


# Logging


def test_secrets_never_reach_the_log():
    config = shop.load_config(
        environ={"BOT_TOKEN": "987654:SECRET-token-value", "NOWPAYMENTS_API_KEY": "np-key-123456"},
        env_file=None,
    )
    out = io.StringIO()
    shop.setup_logging(config, stream=out)
    try:
        logger = logging.getLogger("test")
        logger.error("url http://api/bot%s/sendMessage failed", config.bot_token)
        logger.error("quoted %s", "987654%3ASECRET-token-value")
        try:
            raise RuntimeError("key np-key-123456 refused")
        except RuntimeError:
            logger.exception("provider said")
    finally:
        logging.getLogger().handlers[:] = []
    text = out.getvalue()
    assert "SECRET-token-value" not in text and "np-key-123456" not in text
    assert text.count("[redacted]") == 4


def test_the_object_stores_keys_litestream_passes_on_never_reach_the_log():
    config = shop.load_config(
        environ={
            "LITESTREAM_SECRET_ACCESS_KEY": "ls-secret-key-987",
            "AWS_SECRET_ACCESS_KEY": "aws-secret-key-654",
        },
        env_file=None,
    )
    out = io.StringIO()
    shop.setup_logging(config, stream=out)
    try:
        logging.getLogger("test").error("keys %s and %s", "ls-secret-key-987", "aws-secret-key-654")
    finally:
        logging.getLogger().handlers[:] = []
    assert "secret-key" not in out.getvalue() and out.getvalue().count("[redacted]") == 2


# Database


def test_fresh_database_has_the_schema_and_settings(db_path):
    conn = shop.connect(str(db_path))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "users",
        "cities",
        "districts",
        "products",
        "stock_units",
        "basket_items",
        "orders",
        "order_items",
        "ledger",
        "outbox",
        "settings",
        "telegram_files",
    } <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    shop.init_db(str(db_path)).close()  # idempotent
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION


def test_every_lookup_uses_an_index(conn):
    """The bot's catalog queries and the outbox scan never scan a whole table."""
    plans = {
        "cities": f"SELECT c.id FROM stock_units u {shop._AVAILABLE} GROUP BY c.id",
        "products": f"SELECT p.id FROM stock_units u {shop._AVAILABLE} AND d.id = 1 GROUP BY p.id",
        "outbox": "SELECT chat_id, min(id) FROM outbox WHERE status = 'pending' GROUP BY chat_id",
        "orders": "SELECT * FROM orders WHERE user_id = 1 AND id < 9 ORDER BY id DESC LIMIT 9",
        "ledger": "SELECT * FROM ledger WHERE user_id = 1 ORDER BY id",
    }
    for name, sql in plans.items():
        scans = [
            r["detail"]
            for r in conn.execute("EXPLAIN QUERY PLAN " + sql)
            if r["detail"].startswith("SCAN")
        ]
        # A scan is fine only over a partial index that holds just the live rows.
        assert all(s.split()[-1] in ("stock_units_available", "outbox_pending") for s in scans), (
            name,
            scans,
        )


def test_an_old_database_is_migrated_in_place(tmp_path):
    path = str(tmp_path / "old.db")
    conn = shop.init_db(path)
    with shop.transaction(conn):
        conn.execute("INSERT INTO cities(name) VALUES ('Berlin')")
    conn.close()
    v = shop.SCHEMA_VERSION + 1
    migrations = {
        v: "ALTER TABLE cities ADD COLUMN note TEXT NOT NULL DEFAULT '';\n"
        "UPDATE cities SET note = 'migrated';"
    }
    conn = shop.init_db(path, migrations=migrations, schema_version=v)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == v
    assert conn.execute("SELECT name, note FROM cities").fetchone()[:] == ("Berlin", "migrated")
    backup = sqlite3.connect(f"{path}.v{v - 1}.bak")
    assert backup.execute("PRAGMA user_version").fetchone()[0] == v - 1
    assert backup.execute("SELECT name FROM cities").fetchall() == [("Berlin",)]


def test_a_version_1_database_gets_the_payment_tables(tmp_path):
    """A shop.db made by the first release (its schema kept in tests/data) upgrades with its data
    intact."""
    path = str(tmp_path / "v1.db")
    raw = sqlite3.connect(path)
    raw.executescript((ROOT / "tests" / "data" / "schema_v1.sql").read_text())
    now = shop.now_iso()
    raw.execute(
        "INSERT INTO users(id, balance_cents, created_at, last_seen_at) VALUES (7, 0, ?, ?)",
        (now, now),
    )
    raw.execute(
        "INSERT INTO outbox(chat_id, text, next_attempt_at, created_at) VALUES (7, 'hello', ?, ?)",
        (now, now),
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    conn = shop.init_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION
    assert conn.execute("SELECT id, awaiting FROM users").fetchall()[0][:] == (7, None)
    assert conn.execute("SELECT text, edit_message_id FROM outbox").fetchall()[0][:] == (
        "hello",
        None,
    )
    assert conn.execute("SELECT count(*) FROM payments").fetchone()[0] == 0
    fresh = shop.init_db(str(tmp_path / "fresh.db"))

    def columns(c, table):
        return [(r["name"], r["type"]) for r in c.execute(f"PRAGMA table_info({table})")]

    for table in ("users", "outbox", "orders", "payments"):
        assert sorted(columns(conn, table)) == sorted(columns(fresh, table)), table


def test_a_failing_migration_changes_nothing(tmp_path):
    path = str(tmp_path / "old.db")
    shop.init_db(path).close()
    with pytest.raises(sqlite3.OperationalError):
        shop.init_db(
            path,
            migrations={
                shop.SCHEMA_VERSION + 1: "ALTER TABLE cities ADD COLUMN x TEXT;\n"
                "SELECT * FROM nope;"
            },
            schema_version=shop.SCHEMA_VERSION + 1,
        )
    conn = shop.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION
    assert "x" not in [r["name"] for r in conn.execute("PRAGMA table_info(cities)")]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda c: c.execute("PRAGMA user_version = 99"), "newer than this shop.py"),
        (lambda c: c.execute("CREATE TABLE other(x)"), "not created by shop.py"),
    ],
)
def test_databases_the_shop_cannot_use_are_refused(tmp_path, setup, message):
    path = str(tmp_path / "x.db")
    raw = sqlite3.connect(path)
    setup(raw)
    raw.commit()
    raw.close()
    with pytest.raises(shop.DatabaseError, match=message):
        shop.init_db(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(shop.DatabaseError, match="cannot be opened"):
        shop.init_db(str(path))


def test_transactions_roll_back_and_nest(conn):
    with pytest.raises(ZeroDivisionError):
        with shop.transaction(conn):
            conn.execute("INSERT INTO cities(name) VALUES ('A')")
            raise ZeroDivisionError
    assert conn.execute("SELECT count(*) FROM cities").fetchone()[0] == 0
    with shop.transaction(conn):
        conn.execute("INSERT INTO cities(name) VALUES ('B')")
        with pytest.raises(sqlite3.IntegrityError):
            with shop.transaction(conn):
                conn.execute("INSERT INTO cities(name) VALUES ('C')")
                conn.execute("INSERT INTO cities(name) VALUES ('B')")
    assert [r[0] for r in conn.execute("SELECT name FROM cities")] == ["B"]


def test_constraints_guard_money_and_statuses(conn):
    now = shop.now_iso()
    conn.execute("INSERT INTO users(id, created_at, last_seen_at) VALUES (1, ?, ?)", (now, now))
    bad = [
        "UPDATE users SET balance_cents = -1 WHERE id = 1",
        "INSERT INTO products(name, price_cents, created_at) VALUES ('x', 0, '')",
        "INSERT INTO orders(user_id, status, total_cents, payment_method, created_at) "
        "VALUES (1, 'shipped', 100, 'balance', '')",
        "INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, idempotency_key, "
        "created_at) VALUES (1, 0, 0, 'topup', 'k', '')",
    ]
    for sql in bad:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(sql)
    with shop.transaction(conn):
        shop.post_ledger(conn, 1, 500, "topup", "k1")
    for sql in ("UPDATE ledger SET amount_cents = 1", "DELETE FROM ledger"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)


# Money and text


@pytest.mark.parametrize(
    "text, cents",
    [
        ("20", 2000),
        ("20.5", 2050),
        ("20,50", 2050),
        ("€20", 2000),
        ("20 €", 2000),
        ("20 EUR", 2000),
        (" 0.01 ", 1),
        (Decimal("25.00"), 2500),
        (7, 700),
        ("999999", 99999900),
    ],
)
def test_amounts_parse_exactly(text, cents):
    assert shop.parse_eur(text) == cents


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-5",
        "abc",
        "1.234",
        "1,000.00",
        "1e3",
        "NaN",
        "0",
        "0.00",
        "20.",
        ".5",
        None,
        2.5,
        True,
        "10000001",
    ],
)
def test_bad_amounts_are_refused(text):
    with pytest.raises(shop.InvalidInput):
        shop.parse_eur(text)


def test_money_formats_at_the_edges():
    assert shop.fmt_eur(2550) == "€25.50"
    assert shop.fmt_eur(5) == "€0.05"
    assert shop.cents_to_str(-1999) == "-19.99"
    assert (
        shop.esc("Łódź <Centrum> & gift_card *25*") == "Łódź &lt;Centrum&gt; &amp; gift_card *25*"
    )
    assert shop.tg_len("a😀") == 3


def test_a_version_4_database_keeps_its_payments_and_learns_their_providers(tmp_path):
    """Schema 5 rebuilds payments with a provider column, unique with the provider's id: every
    payment, the rows pointing at it, and the daily totals come through; the sandbox's own
    payments become the sandbox's."""
    path = str(tmp_path / "v4.db")
    raw = sqlite3.connect(path)
    raw.executescript((ROOT / "tests" / "data" / "schema_v4.sql").read_text())
    now = shop.now_iso()
    raw.execute(
        "INSERT INTO users(id, balance_cents, created_at, last_seen_at) VALUES (7, 500, ?, ?)",
        (now, now),
    )
    columns = (
        "id, provider_id, kind, user_id, parent_id, reference, price_cents, pay_currency, "
        "pay_amount, pay_address, status, expires_at, created_at, updated_at, final_at"
    )
    rows = [
        (
            1,
            "5001",
            "topup",
            7,
            None,
            "topup-ab",
            500,
            "btc",
            "0.0001",
            "a",
            "finished",
            now,
            now,
            now,
            now,
        ),
        (
            2,
            "5002",
            "topup",
            7,
            1,
            "topup-ab",
            500,
            "btc",
            "0.0001",
            "a",
            "waiting",
            now,
            now,
            now,
            None,
        ),
        (
            3,
            "6001",
            "topup",
            7,
            None,
            "topup-cd",
            900,
            "ltc",
            "0.2",
            "b",
            "waiting",
            now,
            now,
            now,
            None,
        ),
    ]
    raw.executemany(f"INSERT INTO payments({columns}) VALUES ({', '.join('?' * 15)})", rows)
    raw.execute("INSERT INTO sandbox_payments(id, data) VALUES (6001, '{}')")
    raw.execute(
        "INSERT INTO ledger(user_id, amount_cents, balance_after_cents, kind, idempotency_key, "
        "created_at) VALUES (7, 500, 500, 'topup', 'payment:5001:credit', ?)",
        (now,),
    )
    raw.execute(
        "INSERT INTO outbox(chat_id, text, next_attempt_at, created_at, payment_id) "
        "VALUES (7, 'Paid', ?, ?, 1)",
        (now, now),
    )
    raw.execute("PRAGMA user_version = 4")
    raw.commit()
    before_daily = raw.execute("SELECT * FROM daily_payments").fetchall()
    raw.close()
    conn = shop.init_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shop.SCHEMA_VERSION
    got = conn.execute(
        "SELECT id, provider, provider_id, parent_id, status FROM payments ORDER BY id"
    ).fetchall()
    assert [tuple(r) for r in got] == [
        (1, "nowpayments", "5001", None, "finished"),
        (2, "nowpayments", "5002", 1, "waiting"),
        (3, "sandbox", "6001", None, "waiting"),
    ]
    assert conn.execute("SELECT payment_id FROM outbox").fetchone()[0] == 1
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert [tuple(r) for r in conn.execute("SELECT * FROM daily_payments")] == before_daily
    shop.check_ledger(conn)
    # The same id may come from two providers, but not twice from one.
    with shop.transaction(conn):
        conn.execute(
            "INSERT INTO payments(provider, provider_id, kind, user_id, reference, price_cents, "
            "pay_currency, pay_amount, status, expires_at, created_at, updated_at) "
            "VALUES ('sandbox', '5001', 'topup', 7, 'topup-ef', 100, 'btc', '1', 'waiting', "
            "?, ?, ?)",
            (now, now, now),
        )
    with pytest.raises(sqlite3.IntegrityError), shop.transaction(conn):
        conn.execute(
            "INSERT INTO payments(provider, provider_id, kind, user_id, reference, price_cents, "
            "pay_currency, pay_amount, status, expires_at, created_at, updated_at) "
            "VALUES ('sandbox', '5001', 'topup', 7, 'topup-gh', 100, 'btc', '1', 'waiting', "
            "?, ?, ?)",
            (now, now, now),
        )
    # The triggers came back with the table: a payment that becomes final is counted.
    with shop.transaction(conn):
        conn.execute("UPDATE payments SET status = 'expired', final_at = ? WHERE id = 3", (now,))
    assert sum(r["payments"] for r in conn.execute("SELECT payments FROM daily_payments")) == (
        sum(r[-1] for r in before_daily) + 1
    )
    # The webhooks' record names providers too.
    assert "provider" in [r[1] for r in conn.execute("PRAGMA table_info(ipn_events)")]


def test_python_shop_py_runs_as_this_module_in_the_same_process(tmp_path):
    """`python shop.py` starts itself again as `python -P -m shop` (CPython then frees the syntax
    tree it would keep for a script): the same pid, and never a shop.py of the current folder."""
    (tmp_path / "shop.py").write_text('raise SystemExit("the wrong shop.py ran")\n')
    env = clean_env(
        SHOP_DB=str(tmp_path / "s.db"),
        PYTHONUNBUFFERED="1",
        ADMIN_PASSWORD="a long password",
        PORT=str(free_port()),
    )
    proc = ShopProcess(tmp_path, env).start("--no-demo")
    try:
        cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:5] == [b"-P", b"-m", b"shop", b"--no-demo"]
        assert proc.health().status_code == 200
    finally:
        proc.stop()


# Command line


def owner_command(db, *args):
    """`python shop.py ARGS` as the owner runs it, on the database file `db`."""
    return subprocess.run(
        [sys.executable, str(ROOT / "shop.py"), *args],
        cwd=db.parent,
        env=clean_env(SHOP_DB=str(db)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_lists_each_command_once_with_what_it_does(tmp_path):
    out = owner_command(tmp_path / "shop.db", "--help").stdout
    lines = out.splitlines()
    for command, usage in (
        ("balance", "balance ID AMOUNT REASON"),
        ("admin-password", "admin-password [NEW]"),
        ("set", "set [KEY [VALUE]]"),
    ):
        listed = [line for line in lines if line.split()[:1] == [command]]
        assert len(listed) == 1, (command, listed)
        assert listed[0].strip().startswith(usage) and len(listed[0].split()) > 3
    assert not [line for line in lines if line and not line.strip()]  # no line of blanks
    keys = owner_command(tmp_path / "shop.db", "set", "--help").stdout
    for key in SETTINGS_PAGE:
        assert f"\n  {key} " in keys, key
    assert not (tmp_path / "shop.db").exists()


# The Settings page's fields, by the names `shop.py set` takes.
SETTINGS_PAGE = (
    "shop_name",
    "welcome_text",
    "help_text",
    "support_contact",
    "min_deposit",
    "reservation_minutes",
    "max_unpaid_units",
    "referral_percent",
    "coins",
    "underpayment_tolerance",
    "low_stock_threshold",
    "telegram_rule",
    "stars_per_euro",
    "terms_text",
    "paysupport_text",
    "default_language",
)


def stored(db):
    conn = sqlite3.connect(db)
    try:
        settings = dict(
            conn.execute("SELECT key, value FROM settings WHERE key NOT LIKE '%secret'")
        )
        audit = conn.execute("SELECT action, details, remote_addr FROM audit_log").fetchall()
        return settings, audit
    finally:
        conn.close()


def test_set_takes_every_setting_of_the_settings_page_checked_and_stored_alike(tmp_path):
    """`shop.py set KEY VALUE` takes what the admin's Settings page takes, checks it the same way,
    stores it in the same form, with an audit row; `shop.py set` lists them as the owner types
    them."""
    db = tmp_path / "shop.db"
    for key, value, said in (
        ("shop_name", " Paper & Ink ", "'Paper & Ink'"),
        ("support_contact", "@paperink", "'@paperink'"),
        ("min_deposit", "7,5", "7.50 EUR"),
        ("reservation_minutes", "045", "45"),
        ("max_unpaid_units", "12", "12"),
        ("referral_percent", "07", "7"),
        ("coins", "LTC, btc", "btc,ltc"),
        ("underpayment_tolerance", "0.50", "0.5"),
        ("low_stock_threshold", "05", "5"),
        ("telegram_rule", "OFF", "off"),
        ("stars_per_euro", "62.50", "62.5"),
        (
            "paysupport_text",
            "Write to @paperink with your order number.",
            "'Write to @paperink with your order number.'",
        ),
    ):
        r = owner_command(db, "set", key, value)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{key} set to {said}\n", ""), key
    settings, audit = stored(db)
    assert settings == {
        "shop_name": "Paper & Ink",
        "support_contact": "@paperink",
        "min_deposit_cents": "750",
        "reservation_minutes": "45",
        "max_unpaid_units": "12",
        "referral_percent": "7",
        "enabled_coins": "btc,ltc",
        "underpayment_tolerance": "0.5",
        "low_stock_threshold": "5",
        "telegram_rule": "0",
        "stars_per_euro": "62.5",
        "paysupport_text": "Write to @paperink with your order number.",
    }
    assert audit[-1] == ("settings changed", "paysupport_text", "command line")
    assert len(audit) == 12
    config = shop.load_config(environ={"SHOP_DB": str(db)}, env_file=None)
    conn = shop.connect(str(db))
    assert shop.get_setting(conn, "min_deposit_cents", config) == 750
    assert shop.get_setting(conn, "enabled_coins", config) == {"btc", "ltc"}
    conn.close()
    every = owner_command(db, "set").stdout.splitlines()
    listed = [line for line in every if "." not in line.split(":")[0]]
    assert [line.split(":")[0] for line in listed] == list(SETTINGS_PAGE)
    # then the owner's texts in each other language, none written yet
    assert [line for line in every if line not in listed] == [
        f"{text}.{code}: ''"
        for code in shop.available_languages()[1:]
        for text in ("welcome_text", "help_text", "terms_text", "paysupport_text")
    ]
    assert listed[4:] == [
        "min_deposit: 7.50 EUR",
        "reservation_minutes: 45",
        "max_unpaid_units: 12",
        "referral_percent: 7",
        "coins: btc,ltc",
        "underpayment_tolerance: 0.5",
        "low_stock_threshold: 5",
        "telegram_rule: off",
        "stars_per_euro: 62.5",
        "terms_text: ''",
        "paysupport_text: 'Write to @paperink with your order number.'",
        "default_language: en",
    ]
    assert owner_command(db, "set", "min_deposit").stdout == "7.50 EUR\n"
    for args, said in (
        (("min_deposit", "0"), "The minimum top-up must be at least 0.01 EUR, got '0'."),
        (("min_deposit", "20000"), "The minimum top-up must be at most 10000.00 EUR, got '20000'."),
        (("reservation_minutes", "1441"), "The reservation must be 1 to 1440 minutes."),
        (
            ("max_unpaid_units", "many"),
            "The items one shopper may hold unpaid must be a number from 1 to 10000.",
        ),
        (("coins", ","), "Enable at least one coin."),
        (("coins", "btc,doge"), "Unknown coin 'doge'; the coins are: btc, eth, ltc, usdttrc20, "),
        (("shop_name", " "), "The shop name is empty"),
        (
            ("underpayment_tolerance", "12"),
            "The underpayment tolerance must be a percentage from 0 to 10, like 0.5",
        ),
        (
            ("low_stock_threshold", "1001"),
            "The low-stock threshold must be a whole number from 0 to 1000 (0 turns the ",
        ),
        (("telegram_rule", "maybe"), "Telegram's rule is on or off; got 'maybe'."),
        (("stars_per_euro", "0"), "The Stars rate must be a number of Stars per euro from 1"),
        (("stars_per_euro", "1e3"), "The Stars rate must be a number of Stars per euro from 1"),
    ):
        r = owner_command(db, "set", *args)
        assert r.returncode == 1 and r.stdout == "", args
        assert r.stderr.startswith(f"shop.py: {said}"), r.stderr
    r = owner_command(db, "set", "min_deposit_cents", "750")
    assert r.returncode == 2 and "invalid choice: 'min_deposit_cents'" in r.stderr
    assert all(f"'{key}'" in r.stderr for key in SETTINGS_PAGE)
    assert stored(db) == (settings, audit)  # nothing changed


def test_balance_errors_speak_to_the_owner(tmp_path):
    db = tmp_path / "shop.db"
    conn = shop.init_db(str(db))
    shop.touch_user(conn, {"id": 2005, "first_name": "Ann"})
    shop.adjust_balance(conn, 2005, 46700, "cash")
    for args, said in (
        (
            ("2005", "-500", "refund"),
            "The shopper's balance is €467.00; a debit of €500.00 would take it below zero. "
            "Nothing was changed.",
        ),
        (
            ("2005", "0", "x"),
            "The amount is zero, which changes nothing: give 20.00 to add or -5.00 to take off.",
        ),
        (
            ("2005", "-0.00", "x"),
            "The amount is zero, which changes nothing: give 20.00 to add or -5.00 to take off.",
        ),
        (
            ("2005", "twenty", "x"),
            "The amount must be in EUR, like 20.00 to add or -5.00 to take off; got 'twenty'.",
        ),
        (
            ("99", "5", "x"),
            "No shopper has the Telegram id 99: they have not talked to the bot yet (a shopper "
            "appears once they send /start).",
        ),
    ):
        r = owner_command(db, "balance", *args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"shop.py: {said}\n"), args
    assert shop.get_user(conn, 2005)["balance_cents"] == 46700
    r = owner_command(db, "balance", "2005", "-467", "closing")
    assert r.returncode == 0 and "balance now €0.00" in r.stdout
    conn.close()
