"""A minimal app backend for the signed-URL pattern, used only by the tests.

POST /upload-url {"id","filename","contentType"} -> {"uploadUrl"}
GET  /{id}/download-url                          -> {"downloadUrl"}
DELETE /{id}                                     -> deletes the object
It signs S3 URLs (SigV4 query authentication) for a real S3 server and remembers
each id's filename. Requests need `Authorization: Bearer $BACKEND_TOKEN`.
"""
import datetime
import hashlib
import hmac
import json
import os
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

S3_URL = os.environ["S3_URL"].rstrip("/")
BUCKET = os.environ["S3_BUCKET"]
AK, SK = os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"]
TOKEN = os.environ["BACKEND_TOKEN"]
REGION = "us-east-1"
names = {}


def presign(method, key, expires=600):
    """SigV4 query-string signature, path-style, UNSIGNED-PAYLOAD."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = urllib.parse.urlparse(S3_URL).netloc
    path = f"/{BUCKET}/{urllib.parse.quote(key)}"
    scope = f"{day}/{REGION}/s3/aws4_request"
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{AK}/{scope}",
        "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host",
    }
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}"
                               for k, v in sorted(query.items()))
    canonical = "\n".join([method, path, canonical_query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key_ = ("AWS4" + SK).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key_ = hmac.new(key_, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{S3_URL}{path}?{canonical_query}&X-Amz-Signature={signature}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.answer(401, {"error": "bad token"})
            return False
        return True

    def do_POST(self):
        if not self.authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/upload-url" or not body.get("id") or not body.get("filename"):
            return self.answer(400, {"error": "bad request"})
        names[body["id"]] = body["filename"]
        self.answer(200, {"uploadUrl": presign("PUT", body["filename"])})

    def do_GET(self):
        if not self.authorized():
            return
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "download-url":
            return self.answer(404, {"error": "no route"})
        filename = names.get(parts[0])
        if filename is None:
            return self.answer(404, {"error": "unknown id"})
        self.answer(200, {"downloadUrl": presign("GET", filename)})

    def do_DELETE(self):
        if not self.authorized():
            return
        filename = names.pop(self.path.strip("/"), None)
        if filename is None:
            return self.answer(404, {"error": "unknown id"})
        req = urllib.request.Request(presign("DELETE", filename), method="DELETE")
        try:
            urllib.request.urlopen(req).read()
        except urllib.error.HTTPError as e:
            if e.code != 404:
                return self.answer(502, {"error": f"storage said {e.code}"})
        self.answer(204)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
