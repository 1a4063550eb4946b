"""A fault-injecting HTTP proxy for the reliability suite (a copy grown from
tests/py/fault_proxy.py). It forwards to 127.0.0.1:$UPSTREAM_PORT, keeping the
Host header so SigV4 signatures stay valid. While the file $CONTROL holds
"faults", each request gets a fault drawn from $SEED and the request number;
any other content (or no file) passes everything through.

Faults: reset before answering; reset mid-body; body truncated with the full
Content-Length, or without any Content-Length (close-delimited); redirects
301/302/303/307/308 to /login, which answers 200 text/html (a captive portal or
an SSO login page); 500 and 503 with Retry-After; a PUT stored upstream but
answered 500 or reset; a stall of a few seconds; a slow trickle of the body.
Each request is logged to $LOG as "METHOD path fault status"."""
import http.client
import itertools
import os
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = int(os.environ["UPSTREAM_PORT"])
PORT = int(os.environ["PORT"])
LOG = os.environ["LOG"]
CONTROL = os.environ["CONTROL"]
SEED = os.environ.get("SEED", "0")
FAULTS = [
    ("none", 30), ("reset", 6), ("reset_mid_body", 6), ("truncate_cl", 6), ("truncate_nocl", 6),
    ("redirect_301", 3), ("redirect_302", 3), ("redirect_303", 3), ("redirect_307", 3), ("redirect_308", 3),
    ("status_500", 5), ("status_503", 5), ("stored_then_500", 4), ("stored_then_reset", 4),
    ("stall", 3), ("trickle", 4),
]
LOGIN_PAGE = b"<!doctype html><html><body><form action=/login method=post>Please sign in</form></body></html>\n"
counter = itertools.count(1)
lock = threading.Lock()


def faults_on():
    try:
        with open(CONTROL) as f:
            return f.read().strip() == "faults"
    except FileNotFoundError:
        return False


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log(self, fault, status):
        with lock, open(LOG, "a") as f:
            f.write(f"{self.command} {self.path.split('?')[0]} {fault} {status}\n")

    def handle_any(self):
        n = next(counter)
        length = int(self.headers.get("Content-Length", 0) or 0)
        if self.path.startswith("/login"):
            self.rfile.read(length)
            self.log("login_page", 200)
            return self.reply(200, LOGIN_PAGE, [("Content-Type", "text/html; charset=utf-8")])
        fault = "none"
        if faults_on():
            rng = random.Random(f"{SEED}/{n}")
            fault = rng.choices([f for f, _ in FAULTS], [w for _, w in FAULTS])[0]
        else:
            rng = random.Random(n)
        if fault == "reset_mid_body" and self.command == "PUT" and length > 1:
            self.rfile.read(length // 2)
            self.log(fault, "reset")
            return self.reset()
        body = self.rfile.read(length) if length else None
        if fault == "reset":
            self.log(fault, "reset")
            return self.reset()
        if fault.startswith("redirect_"):
            status = int(fault.split("_")[1])
            self.log(fault, status)
            return self.reply(status, b"", [("Location", f"http://127.0.0.1:{PORT}/login?next={self.path}")])
        if fault in ("status_500", "status_503"):
            status = int(fault.split("_")[1])
            self.log(fault, status)
            return self.reply(status, b"injected failure", [("Retry-After", "1")])
        if fault == "stall":
            time.sleep(rng.uniform(1.0, 3.0))
        status, headers, data = self.upstream(body)
        if fault == "stored_then_500" and self.command == "PUT":
            self.log(fault, 500)
            return self.reply(500, b"injected failure after storing", [])
        if fault == "stored_then_reset" and self.command == "PUT":
            self.log(fault, "reset")
            return self.reset()
        cut = self.command == "GET" and status == 200 and len(data) > 1
        self.log(fault if (cut or fault in ("stall", "trickle", "none")) else "none", status)
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        if cut and fault == "truncate_nocl":
            # No Content-Length: the body ends when the connection closes, so only a
            # checksum or a known size can tell that it is short.
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if cut and fault == "truncate_cl":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if cut and fault == "reset_mid_body":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            return self.reset()
        if cut and fault == "trickle":
            step = max(1, len(data) // 100)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(0.01)
            return
        self.wfile.write(data)

    def upstream(self, body):
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, resp.getheaders(), data

    def reset(self):
        # SO_LINGER 0: close with RST, so the client sees ECONNRESET.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def reply(self, status, data, headers):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", PORT), Proxy).serve_forever()
