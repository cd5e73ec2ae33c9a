"""The shop under Litestream (the real binary, from requirements-litestream.txt): replicated to a
file replica and to an S3-compatible store (moto's server), killed with its disk lost, restored,
started again. Skipped where Litestream or moto's server is not installed; CI installs both."""

import calendar
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

import shop
from conftest import ROOT, free_port
from harness import AdminClient, ShopProcess, shop_env
from test_chaos import api, live_env, prepare_db, simulate, wait_until

pytestmark = pytest.mark.skipif(
    not (shutil.which("litestream") and shutil.which("moto_server")),
    reason="Litestream or moto's server is not installed (requirements-litestream.txt)",
)

S3_KEYS = {"LITESTREAM_ACCESS_KEY_ID": "test", "LITESTREAM_SECRET_ACCESS_KEY": "test"}


@pytest.fixture
def s3_bucket():
    """moto's S3 server on a free port, with an empty bucket: its endpoint."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return requests.get(endpoint, timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, 20, "moto's server to answer")
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="shop-backups")
        yield endpoint
    finally:
        server.kill()
        server.wait()


def litestream_config(folder, db, kind, endpoint=None):
    """litestream.yml as the README gives it, for this database and one replica of that kind."""
    replica = (
        f"      type: file\n      path: {folder / 'replica'}\n"
        if kind == "file"
        else "      type: s3\n      bucket: shop-backups\n      path: shop\n"
        f"      endpoint: {endpoint}\n      region: us-east-1\n"
    )
    path = folder / "litestream.yml"
    path.write_text(
        f"socket:\n  enabled: true\n  path: {folder / 'ls.sock'}\n"
        f"dbs:\n  - path: {db}\n    replica:\n{replica}",
        encoding="utf-8",
    )
    return path


def litestream_env(env):
    """Litestream's environment: S3 keys, and no AWS_CA_BUNDLE (it makes Litestream's S3 client
    fail to start)."""
    return {k: v for k, v in {**env, **S3_KEYS}.items() if k != "AWS_CA_BUNDLE"}


def children_of(pid):
    return [
        int(task.name)
        for task in Path("/proc").iterdir()
        if task.name.isdigit() and _parent(task) == pid
    ]


def child_of(pid):
    """The process Litestream started with -exec (any of its threads may have started it)."""
    children = children_of(pid)
    assert len(children) == 1, children
    return children[0]


def _parent(task):
    try:
        return int((task / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def synced_at(socket_path, db):
    """When Litestream last copied the database (seconds since the epoch; 0: not yet)."""
    found = shop.litestream_status(str(socket_path), str(db)).get("last_sync_at")
    return calendar.timegm(time.strptime(found, "%Y-%m-%dT%H:%M:%SZ")) if found else 0


def rows(db, table):
    c = sqlite3.connect(db)
    try:
        return {r[0]: r for r in c.execute(f"SELECT * FROM {table}")}
    finally:
        c.close()


def order_status(db, order_id):
    c = sqlite3.connect(db)
    try:
        return c.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()[0]
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_a_shop_whose_disk_is_lost_comes_back_from_its_replica(kind, make_shop, fake_tg, request):
    """Balance and crypto sales under Litestream; Litestream is killed, a payment arrives (so the
    replica never sees it), the shop is killed and its database and WAL deleted; restored from the
    replica, the shop starts, says what it found, and has every order and ledger row committed
    more than 5 s before the kill, the ledger equal to the balances and no unit sold twice;
    reconciliation then applies the payment made after the last replicated moment, once."""
    endpoint = request.getfixturevalue("s3_bucket") if kind == "s3" else None
    folder = Path(tempfile.mkdtemp(prefix="ls-"))  # short: a Unix socket's path has 107 bytes
    np_shop = make_shop(name="provider")
    shoppers = [1001, 1002, 1003]
    for uid in shoppers:
        fake_tg.user_sends(uid, "hello")
    db = folder / "shop.db"
    ids = prepare_db(db, shoppers)
    config = litestream_config(folder, db, kind, endpoint)
    env = {
        **shop_env(folder, fake_tg.base_url),
        **live_env(np_shop, ADMIN_IDS=""),
        "LITESTREAM_SOCKET": str(folder / "ls.sock"),
    }
    command = ["litestream", "replicate", "-config", str(config), "-exec"]
    proc = ShopProcess(
        folder, litestream_env(env), [*command, f"{sys.executable} {ROOT / 'shop.py'} --no-demo"]
    )
    shop_pid = None
    try:
        proc.start(ready="bot: @", timeout=30)
        assert "replicated by Litestream" in proc.log
        shop_pid = child_of(proc.proc.pid)
        coffee = {
            "type": "product",
            "product_id": ids["Coffee"][0],
            "district_id": ids["Coffee"][1],
            "quantity": 1,
        }
        for uid in shoppers:  # a balance sale each
            r = api(
                proc.url, "POST", "/api/payment/create", uid, json={**coffee, "currency": "balance"}
            )
            assert r.status_code == 200, r.text
        paid = api(
            proc.url, "POST", "/api/payment/create", 1001, json={**coffee, "currency": "btc"}
        )
        simulate(np_shop, paid.json()["payment_id"], "full").raise_for_status()
        wait_until(lambda: order_status(db, paid.json()["order_id"]) == "paid", 20, "the paid IPN")
        late = api(
            proc.url, "POST", "/api/payment/create", 1002, json={**coffee, "currency": "btc"}
        )
        assert late.status_code == 200, late.text  # its invoice is made now; it is paid later
        before = {t: rows(db, t) for t in ("orders", "ledger")}
        committed = time.time()
        # Litestream's own word that it copied what came after that moment, 5 s on.
        wait_until(
            lambda: synced_at(folder / "ls.sock", db) > committed + 5,
            30,
            "Litestream to sync 5 s after the sales",
        )
        assert proc.health().json()["replication"]["state"] == "replicating"
        proc.kill()  # Litestream dies; the shop it started runs on
        simulate(np_shop, late.json()["payment_id"], "full").raise_for_status()
        wait_until(lambda: order_status(db, late.json()["order_id"]) == "paid", 20, "the late IPN")
        os.kill(shop_pid, signal.SIGKILL)
        wait_until(
            lambda: not Path(f"/proc/{shop_pid}").exists() or _zombie(shop_pid), 10, "the kill"
        )
        for lost in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            lost.unlink(missing_ok=True)
        shutil.rmtree(folder / ".shop.db-litestream", ignore_errors=True)

        restored = subprocess.run(
            ["litestream", "restore", "-config", str(config), str(db)],
            env=litestream_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert restored.returncode == 0, restored.stderr
        for table, kept in before.items():
            now = rows(db, table)
            assert {k: now.get(k) for k in kept} == kept, f"{table} lost rows"
        assert order_status(db, late.json()["order_id"]) == "pending"  # the replica never saw it
        conn = shop.connect(str(db))
        assert shop.check_ledger(conn) == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

        again = ShopProcess(folder, {k: v for k, v in env.items() if k != "LITESTREAM_SOCKET"})
        again.start("--no-demo", ready="bot: @", timeout=30)
        try:
            found = again.wait_log("database: integrity ok")
            assert "ledger = balances" in found and "1 payment(s) open" in found, found
            wait_until(
                lambda: order_status(db, late.json()["order_id"]) == "paid", 30, "reconciliation"
            )
            conn = shop.connect(str(db))
            assert shop.check_ledger(conn) == []
            twice = conn.execute(
                "SELECT unit_id FROM order_items i JOIN orders o ON o.id = i.order_id "
                "WHERE o.status = 'paid' GROUP BY unit_id HAVING count(*) > 1"
            ).fetchall()
            assert twice == []
            payment = conn.execute(
                "SELECT status, final_source FROM payments WHERE order_id = ?",
                (late.json()["order_id"],),
            ).fetchone()
            assert tuple(payment) == ("finished", "poll")
            conn.close()
        finally:
            again.kill()
    finally:
        if proc.proc and proc.proc.poll() is None:
            shop_pid = shop_pid or next(iter(children_of(proc.proc.pid)), None)
            proc.kill()
        if shop_pid and Path(f"/proc/{shop_pid}").exists():
            try:
                os.kill(shop_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def outbox_texts(db, chat_id):
    c = sqlite3.connect(db)
    try:
        return [r[0] for r in c.execute("SELECT text FROM outbox WHERE chat_id = ?", (chat_id,))]
    finally:
        c.close()


def test_health_the_data_page_and_the_owners_follow_the_replication(make_shop, tmp_path):
    """/healthz and the Data page say whether Litestream replicates and how far behind; when it
    stops, the owners are told once, and once again when it is back."""
    folder = Path(tempfile.mkdtemp(prefix="ls-"))
    db = tmp_path / "shop.db"
    config = litestream_config(folder, db, "file")
    command = ["litestream", "replicate", "-config", str(config)]

    def replicate():
        return subprocess.Popen(
            command,
            env=litestream_env(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    litestream = replicate()  # it waits for the database the shop is about to make
    try:
        s = make_shop(
            env={
                "LITESTREAM_SOCKET": str(folder / "ls.sock"),
                "ADMIN_IDS": "900",
                "ADMIN_PASSWORD": "litestream admin pass",
            },
            name="shop",
        )
        wait_until(lambda: s.replication().get("last_sync_at"), 30, "Litestream's first sync")
        health = requests.get(s.url + "/healthz", timeout=5)
        assert health.status_code == 200, health.json()["replication"]
        assert health.json()["replication"]["behind_seconds"] < 60
        assert "checkpoint" not in s.threads  # Litestream does them
        s.watch_replication()
        assert outbox_texts(str(db), 900) == []

        litestream.kill()
        litestream.wait()
        [health] = wait_until(  # (a list: a 503 Response is falsy)
            lambda: (
                [h] if (h := requests.get(s.url + "/healthz", timeout=5)).status_code == 503 else []
            ),
            20,
            "/healthz to see it",
        )
        assert health.json()["status"] == "degraded"
        assert health.json()["replication"]["state"] == "unreachable"
        assert "ls.sock" not in health.text  # no paths in the public answer
        s.watch_replication()
        s.watch_replication()  # still stopped: told once
        told = outbox_texts(str(db), 900)
        assert len(told) == 1 and "Replication stopped" in told[0]
        admin = AdminClient(s.url, "litestream admin pass")
        admin.login()
        page = admin.get("/admin/data").text
        assert "stopped or behind" in page and "unreachable" in page

        litestream = replicate()
        wait_until(lambda: s.replication().get("last_sync_at"), 30, "Litestream again")
        s.watch_replication()
        assert len(outbox_texts(str(db), 900)) == 1  # back for one check only: not yet told
        s.watch_replication()
        told = outbox_texts(str(db), 900)
        assert len(told) == 2 and "running again" in told[1]
        assert "running" in admin.get("/admin/data").text
    finally:
        litestream.kill()
        litestream.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_replica_that_never_gets_its_first_copy_is_a_problem_too(
    make_shop, tmp_path, monkeypatch
):
    """Litestream lists the database as replicating before its first copy, and goes on doing so
    when it can never make one (here: its folder cannot be created): once that has lasted longer
    than the lag the shop allows, it is a problem like any other."""
    folder = Path(tempfile.mkdtemp(prefix="ls-"))
    (folder / "not-a-folder").write_text("a file where the replica's folder should be")
    db = tmp_path / "shop.db"
    config = folder / "litestream.yml"
    config.write_text(
        f"socket:\n  enabled: true\n  path: {folder / 'ls.sock'}\n"
        f"dbs:\n  - path: {db}\n    replica:\n      type: file\n"
        f"      path: {folder / 'not-a-folder' / 'replica'}\n",
        encoding="utf-8",
    )
    litestream = subprocess.Popen(
        ["litestream", "replicate", "-config", str(config)],
        env=litestream_env(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    monkeypatch.setattr(shop, "REPLICATION_LAG_SECONDS", 2)
    try:
        s = make_shop(env={"LITESTREAM_SOCKET": str(folder / "ls.sock"), "ADMIN_IDS": "900"})
        first = wait_until(
            lambda: s.replication().get("state") == "replicating" and s.replication(),
            30,
            "Litestream to list it",
        )
        assert first["last_sync_at"] is None  # listed, never copied
        problem = wait_until(lambda: shop.replication_problem(s.replication()), 30, "the problem")
        assert problem.startswith("replication: no copy made in ")
        s.watch_replication()
        told = outbox_texts(str(db), 900)
        assert len(told) == 1 and "Replication stopped" in told[0]
    finally:
        litestream.kill()
        litestream.wait()
        shutil.rmtree(folder, ignore_errors=True)
