"""A TCP forwarder that can fail on command, for the chaos tests (standard library only).

Put it in front of an HTTP service (the Bot API stand-in, the NOWPayments stand-in, or the shop's
own /webhook as the provider sees it) and switch its mode at any time:

- "pass":   bytes go through both ways, untouched (keep-alive and long polls included);
- "refuse": the listening socket is closed, so connecting fails with ECONNREFUSED;
- "502":    every request is read and answered `502 Bad Gateway` (JSON body), connection closed;
- "drop":   connections are accepted and closed at once, without an answer.

Every mode change cuts the connections already open, so a kept-alive client sees the new mode on its
next request, as it would when a real upstream went away.
"""

import socket
import threading


class FlakyProxy:
    MODES = ("pass", "refuse", "502", "drop")

    def __init__(self, target_host, target_port, host="127.0.0.1", port=0):
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = port
        self.mode = "pass"
        self.lock = threading.Lock()
        self.listener = None
        self.conns = set()
        self.accepted = 0  # connections accepted (any mode)
        self.answered_502 = 0
        self.stopped = False

    # lifecycle

    def start(self):
        self._listen()
        return self

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def stop(self):
        with self.lock:
            self.stopped = True
        self._close_listener()
        self._cut()

    def set_mode(self, mode):
        assert mode in self.MODES, mode
        with self.lock:
            old, self.mode = self.mode, mode
        if mode == "refuse" and old != "refuse":
            self._close_listener()
        self._cut()
        if old == "refuse" and mode != "refuse":
            self._listen()

    # internals

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        with self.lock:
            self.listener = s
        threading.Thread(target=self._accept, args=(s,), name="flaky-proxy", daemon=True).start()

    def _close_listener(self):
        with self.lock:
            s, self.listener = self.listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
            except OSError:
                pass
            s.close()

    def _track(self, *socks):
        with self.lock:
            self.conns.update(socks)

    def _cut(self):
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                mode, stopped = self.mode, self.stopped
                self.accepted += 1
            if stopped or mode in ("refuse", "drop"):
                client.close()
                continue
            self._track(client)
            target = self._pipe if mode == "pass" else self._bad_gateway
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _bad_gateway(self, client):
        try:
            client.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            while len(rest) < length:
                chunk = client.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body = b'{"ok":false,"error_code":502,"description":"Bad Gateway"}'
            client.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            with self.lock:
                self.answered_502 += 1
        except (OSError, ValueError):
            pass
        finally:
            try:
                client.close()
            except OSError:
                pass

    def _pipe(self, client):
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        try:
            upstream.settimeout(None)
            client.settimeout(None)  # (the client may have been cut by a mode change meanwhile)
        except OSError:
            upstream.close()
            client.close()
            return
        self._track(upstream)
        with self.lock:
            if self.mode != "pass":  # the mode changed while we connected
                upstream.close()
                client.close()
                return

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        for s in (client, upstream):
            try:
                s.close()
            except OSError:
                pass
        with self.lock:
            self.conns.discard(client)
            self.conns.discard(upstream)
