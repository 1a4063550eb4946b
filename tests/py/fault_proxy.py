"""An HTTP proxy for fault injection, used only where a real server cannot
misbehave on demand. It forwards each request to 127.0.0.1:$UPSTREAM_PORT
(keeping the Host header, so SigV4 signatures stay valid) and, by $MODE:

  pass            forward untouched (just log)
  truncate        GET bodies: the full Content-Length, then half the body, then close
  truncate_close  GET bodies: no Content-Length (close-delimited), half the body, then close
  truncate_chunked GET bodies: chunked, half the body, then close without the last chunk
  flaky           every other request: 500, or a reset connection
  fail_put        the $FAIL_PUT_NUMBER-th PUT (1-based) is answered 500 after its body is read
  slow            each response waits $DELAY seconds first
  slow_big        only requests with a body over $BIG bytes wait $DELAY seconds
  redirect        requests whose method is in $METHODS (default all) are answered $STATUS with
                  `Location: $LOCATION` (default `/moved<path>`, same origin). `/moved<path>` is
                  forwarded as `<path>`; `/login` answers 200 with an HTML login page, any method.
  status          requests whose method is in $METHODS are answered $STATUS (with
                  `Retry-After: $RETRY_AFTER` when set) after their body is read
  silent          requests whose method is in $METHODS are read, then never answered
  never_read      PUTs: the body is never read and nothing is answered
  stall_body      GET: headers with the full Content-Length and half the body, then silence
  trickle         GET: the body goes out $TRICKLE_BYTES bytes every $TRICKLE_DELAY s;
                  PUT: the body is read at that pace
  short_length    GET 200 bodies: only the first half, with a Content-Length that matches it
  gzip            GET 200 bodies are gzip-compressed with `Content-Encoding: gzip` (never asked for)
  echo            requests whose method is in $METHODS are answered $STATUS (default 400) with a
                  body repeating the request line, every header and the query string
  cut             the first $CUT_TIMES (default 1) GET answers with a body (200 or 206) send their
                  headers and $CUT_BYTES bytes of the body, then close; later ones pass
  lying_206       GET 200 answers are cut as in `cut` (the first $CUT_TIMES); a 206 answer to
                  `Range: bytes=N-` claims the object ends 100 bytes later
                  (`Content-Range: bytes N-(N+99)/(N+100)`) and sends those 100 bytes
  echo_validator  GET 200 answers carry the request's credential (the bearer token, or the
                  presigned URL's X-Amz-Security-Token) as their ETag and Last-Modified, and are
                  cut as in `cut`, so a client would keep them to resume
Each request line is appended to $LOG with the number of requests in flight, the
Host header, whether an Authorization header came along and the Range header (or -).
Each answer is appended to $LOG.sent as `METHOD STATUS BODY_BYTES_SENT range=RANGE`.
"""
import gzip
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
METHODS = os.environ.get("METHODS", "GET,PUT,POST,DELETE,HEAD").split(",")
STATUS = int(os.environ.get("STATUS", "400" if MODE == "echo" else "302"))
TRICKLE_BYTES = int(os.environ.get("TRICKLE_BYTES", "1"))
TRICKLE_DELAY = float(os.environ.get("TRICKLE_DELAY", "0.2"))
LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action=/login>Please sign in</form></body></html>"
counter = itertools.count(1)
put_counter = itertools.count(1)
get_counter = itertools.count(1)
cut_counter = itertools.count(1)
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
                auth = "yes" if self.headers.get("Authorization") else "no"
                f.write(f"{self.command} {self.path.split('?')[0]} inflight={in_flight} "
                        f"host={self.headers.get('Host')} auth={auth} range={self.headers.get('Range', '-')}\n")
        try:
            self.forward(n)
        finally:
            with lock:
                in_flight -= 1

    def read_body(self):
        length = int(self.headers.get("Content-Length", 0) or 0)
        if not length:
            return None
        if MODE == "trickle" and self.command == "PUT":
            data = bytearray()
            while len(data) < length:
                chunk = self.rfile.read(min(TRICKLE_BYTES, length - len(data)))
                if not chunk:
                    break
                data += chunk
                time.sleep(TRICKLE_DELAY)
            return bytes(data)
        return self.rfile.read(length)

    def silence(self):
        """Holds the connection open without a word until the client gives up."""
        self.close_connection = True
        self.connection.settimeout(120)
        try:
            while self.connection.recv(65536):
                pass
        except OSError:
            pass

    def forward(self, n):
        applies = self.command in METHODS
        if MODE == "never_read" and self.command == "PUT":
            return self.silence()
        if MODE == "redirect" and self.path.split("?")[0] == "/login":
            self.read_body()
            return self.reply(200, LOGIN_PAGE, content_type="text/html; charset=utf-8")
        path = self.path
        if MODE == "redirect" and path.startswith("/moved/"):
            path = path[len("/moved"):]
        elif MODE == "redirect" and applies:
            self.read_body()
            location = os.environ.get("LOCATION", "/moved{path}").replace("{path}", self.path)
            return self.reply(STATUS, b"moved", location=location)
        body = self.read_body()
        if MODE == "silent" and applies:
            return self.silence()
        # The first GET gets no answer at all (not even headers); later ones go through.
        if MODE == "silent_first_get" and self.command == "GET" and next(get_counter) == 1:
            return self.silence()
        if MODE == "status" and applies:
            extra = {"Retry-After": os.environ["RETRY_AFTER"]} if os.environ.get("RETRY_AFTER") else {}
            return self.reply(STATUS, b"injected failure", **extra)
        if MODE == "echo" and applies:
            # Credentials first, so no cut of a long body can hide them.
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            auth = self.headers.get("Authorization", "")
            echo = (f"{query} Authorization: {auth}\n{self.command} {self.path} HTTP/1.1\n"
                    + "".join(f"{k}: {v}\n" for k, v in self.headers.items()))
            return self.reply(STATUS, echo.encode())
        if MODE == "slow" or (MODE == "slow_big" and len(body or b"") > int(os.environ.get("BIG", "0"))):
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
        upstream.request(self.command, path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        upstream.close()
        if os.environ.get("LOG_BODIES"):
            with lock, open(LOG + ".bodies", "a") as f:
                f.write(f"{self.command} {resp.status} {data[:2000]!r}\n")
        if MODE == "lying_206" and self.command == "GET" and resp.status == 206:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            lie = data[:100]
            self.send_response(206)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "content-range"):
                    self.send_header(k, v)
            self.send_header("Content-Range", f"bytes {start}-{start + len(lie) - 1}/{start + len(lie)}")
            self.send_header("Content-Length", str(len(lie)))
            self.end_headers()
            self.wfile.write(lie)
            self.log_sent(206, len(lie))
            return
        if MODE == "short_200_tail" and self.command == "GET" and resp.status == 206:
            # The range ignored, yet only the object's tail sent, as a whole 200 under the
            # same validator the first (cut) answer had.
            self.send_response(200)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "content-range"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.log_sent(200, len(data))
            return
        echoed = {}
        if MODE == "echo_validator" and self.command == "GET" and resp.status == 200:
            import urllib.parse
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            secret = query.get("X-Amz-Security-Token", [""])[0] or self.headers.get("Authorization", "").split(" ")[-1]
            echoed = {"etag": f'"{secret}"', "last-modified": secret}
        if MODE in ("cut", "lying_206", "echo_validator", "short_200_tail") and self.command == "GET" and resp.status in (200, 206) \
                and len(data) > 1 and next(cut_counter) <= int(os.environ.get("CUT_TIMES", "1")):
            sent = data[: int(os.environ["CUT_BYTES"])]
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", *echoed):
                    self.send_header(k, v)
            for k, v in echoed.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(sent)
            self.wfile.flush()
            self.log_sent(resp.status, len(sent))
            self.close_connection = True
            return
        if MODE != "trickle":
            self.log_sent(resp.status, len(data))
        faulty_get = self.command == "GET" and resp.status == 200 and len(data) > 1
        if faulty_get and MODE == "gzip":
            data = gzip.compress(data)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        if faulty_get and MODE == "gzip":
            self.send_header("Content-Encoding", "gzip")
        if faulty_get and MODE in ("truncate_close", "truncate_chunked"):
            self.send_header("Connection", "close")
            if MODE == "truncate_chunked":
                self.send_header("Transfer-Encoding", "chunked")
                half = data[: len(data) // 2]
                self.end_headers()
                self.wfile.write(b"%x\r\n" % len(half) + half + b"\r\n")
            else:
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if faulty_get and MODE == "short_length":
            data = data[: len(data) // 2]
        self.send_header("Content-Length", str(len(data)))
        if faulty_get and MODE in ("truncate", "stall_body"):
            if MODE == "truncate":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if MODE == "stall_body":
                return self.silence()
            self.close_connection = True
            return
        self.end_headers()
        if faulty_get and MODE == "trickle":
            try:
                for i in range(0, len(data), TRICKLE_BYTES):
                    self.wfile.write(data[i:i + TRICKLE_BYTES])
                    self.wfile.flush()
                    time.sleep(TRICKLE_DELAY)
            except OSError:
                self.close_connection = True
            return
        self.wfile.write(data)

    def log_sent(self, status, n):
        with lock, open(LOG + ".sent", "a") as f:
            f.write(f"{self.command} {status} {n} range={self.headers.get('Range', '-')}\n")

    def reply(self, status, data, content_type="text/plain", **headers):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-").title() if k == "location" else k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    # Python's default listen backlog is 5: a client opening a few dozen connections at once
    # (the worker doubling its transfers in flight) would see resets no real server gives.
    request_queue_size = 128


Server(("127.0.0.1", int(os.environ["PORT"])), Proxy).serve_forever()
