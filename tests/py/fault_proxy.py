"""An HTTP proxy for fault injection, used only where a real server cannot
misbehave on demand. It forwards each request to 127.0.0.1:$UPSTREAM_PORT
(keeping the Host header, so SigV4 signatures stay valid) and, by $MODE:

  pass         forward untouched (just log)
  truncate     GET bodies: send the headers with the full Content-Length, then half the body, then close
  flaky        every other request: 500, or a reset connection
  fail_put     the $FAIL_PUT_NUMBER-th PUT (1-based) is answered 500 after its body is read
  slow         each response waits $DELAY seconds first
  slow_big     only requests with a body over $BIG bytes wait $DELAY seconds
Each request line is appended to $LOG with the number of requests in flight.
"""
import http.client
import itertools
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = int(os.environ["UPSTREAM_PORT"])
MODE = os.environ["MODE"]
LOG = os.environ["LOG"]
counter = itertools.count(1)
in_flight = 0
put_counter = itertools.count(1)
in_flight = 0
lock = threading.Lock()


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        global in_flight
        n = next(counter)
        with lock:
            in_flight += 1
            with open(LOG, "a") as f:
                f.write(f"{self.command} {self.path.split('?')[0]} inflight={in_flight}\n")
        try:
            self.forward(n)
        finally:
            with lock:
                in_flight -= 1

    def forward(self, n):
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else None
        if MODE == "slow" or (MODE == "slow_big" and length > int(os.environ.get("BIG", "0"))):
            time.sleep(float(os.environ.get("DELAY", "1")))
        if MODE == "flaky" and n % 2 == 0:
            if n % 4 == 0:
                # Reset: close with SO_LINGER 0 so the client sees ECONNRESET.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            return self.reply(500, b"injected failure")
        if MODE == "fail_put" and self.command == "PUT" and next(put_counter) == int(os.environ["FAIL_PUT_NUMBER"]):
            return self.reply(500, b"injected failure")
        upstream = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream.request(self.command, self.path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        if os.environ.get("LOG_BODIES"):
            with lock, open(LOG + ".bodies", "a") as f:
                f.write(f"{self.command} {resp.status} {data[:2000]!r}\n")
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if MODE == "truncate" and self.command == "GET" and resp.status == 200 and len(data) > 1:
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def reply(self, status, data):
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Proxy).serve_forever()
