"""What both the tests and the benchmarks use to run the real shop: ports, images, `python shop.py`
as a subprocess with its log captured (standard library only, so tests/bench.py needs no pytest)."""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TOKEN = "123456:TEST-token"
# The Telegram ids the tests shop as. A sandbox shop with a bot is in test mode, where only owners and the
# testers they name may buy: the tests' shops name these (TESTER_IDS), as an owner names the friends who try
# their bot. A test of what everyone else sees uses an id outside them (or sets TESTER_IDS itself).
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

    def __init__(self, workdir, env):
        self.workdir, self.env = Path(workdir), env
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
            [sys.executable, str(ROOT / "shop.py"), *args],
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
    """Environment for `python shop.py` in `folder` against a Bot API at telegram_url: sandbox payments,
    no admin password, none of the caller's shop settings (extra ones override)."""
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
