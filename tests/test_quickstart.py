"""The README's quick start, exactly as written, as a new owner runs it: a fresh clone, a fresh
virtual environment, `pip install` from the package index, `python shop.py`. (A fresh clone has what
is committed: run this after committing.)"""

import os
import re
import signal
import subprocess
import threading

import requests

from conftest import ROOT, free_port


def quick_start():
    """The commands of the README's "## Start" section: its first ```sh block."""
    section = (
        (ROOT / "README.md")
        .read_text(encoding="utf-8")
        .split("\n## Start\n", 1)[1]
        .split("\n## ", 1)[0]
    )
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_readme_names_what_a_bare_server_needs():
    section = (
        (ROOT / "README.md")
        .read_text(encoding="utf-8")
        .split("\n## Start\n", 1)[1]
        .split("\n## ", 1)[0]
    )
    assert "python3-venv" in section  # Debian's python3 cannot make a venv without it
    commands = quick_start()
    assert commands.startswith(
        "python3 -m venv "
    )  # no `python` on Debian before the venv; no pip outside one
    assert "python shop.py" in commands


def test_the_quick_start_works_as_written_on_a_fresh_clone(tmp_path):
    clone = tmp_path / "shop"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # A clean environment: nothing of this test run's own Python or shop settings leaks in.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not k.startswith(("SHOP_", "BOT_", "NOWPAYMENTS_", "ADMIN_", "TESTER_", "PORT", "HOST"))
    }
    port = free_port()
    env.update(PORT=str(port), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ["bash", "-ec", quick_start()],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines, ready = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "Admin password (shown once" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(600), "\n".join(lines[-40:])
        log = "\n".join(lines)
        assert proc.poll() is None, log[-4000:]
        base = f"http://127.0.0.1:{port}"
        for what, path in (
            ("shop is running", "/"),
            ("admin", "/admin"),
            ("Mini App preview", "/app"),
            ("health", "/healthz"),
        ):
            assert any(what in line and f"{base}{path}" in line for line in lines), (
                what,
                log[-3000:],
            )
        assert (clone / ".venv" / "bin" / "python").exists() and (clone / "shop.db").exists()
        page = requests.get(base + "/", timeout=10)
        assert page.status_code == 200 and "Berlin" in page.text and 'href="/app"' in page.text
        assert requests.get(base + "/healthz", timeout=10).json()["status"] == "ok"
        assert requests.get(base + "/app/preview", timeout=10).json()["initData"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert lines[-1].endswith("INFO shop: stopped"), "\n".join(
        lines[-20:]
    )  # Ctrl+C stops it cleanly
