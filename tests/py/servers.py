"""Real servers on 127.0.0.1, started by the tests themselves.

- nginx with WebDAV for http:// remotes (Debian's nginx-light)
- s3s-fs for s3:// remotes: a real S3 implementation that checks SigV4
- signing_backend.py for signed+http:// remotes: presigns s3s-fs URLs
- fault_proxy.py: only for faults a real server cannot produce (truncation, 500s, resets)
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
S3S_FS = os.environ.get(
    "S3S_FS", os.path.expanduser("~/.cache/sqlite-attachments/s3s-fs-0.14.1/bin/s3s-fs"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"
ACCESS_KEY = "AKTESTACCESSKEY"
SECRET_KEY = "test-secret-key-never-stored"
BUCKET = "attachments-test"
TOKEN = "good-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server on port {port} did not start: {proc.args}")


class Server:
    """A child process listening on self.port; stop() ends it."""

    def __init__(self, args, port, env=None):
        self.port = port
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, self.proc)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Nginx(Server):
    """nginx serving WebDAV from `root`; PUT/DELETE need `Authorization: Bearer <token>` when token is set."""

    def __init__(self, root, token=None, propfind=False):
        self.dir = tempfile.mkdtemp(prefix="att-nginx-")
        port = free_port()
        auth = f'if ($http_authorization != "Bearer {token}") {{ return 401; }}' if token else ""
        # PROPFIND (Debian's libnginx-mod-http-dav-ext): only the benchmarks' rclone rows need it.
        load = f"load_module {DAV_EXT};" if propfind else ""
        propfind_methods = "dav_ext_methods PROPFIND OPTIONS;" if propfind else ""
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
{load}
daemon off;
master_process off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log {self.dir}/access.log;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
      {auth}
      dav_methods PUT DELETE MKCOL;
      {propfind_methods}
      create_full_put_path on;
    }}
  }}
}}
""")
        super().__init__([NGINX, "-c", conf, "-p", self.dir], port)

    def stop(self):
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class S3(Server):
    """s3s-fs storing under `root`, with one bucket."""

    def __init__(self, root):
        if not os.path.exists(S3S_FS):
            raise RuntimeError(f"s3s-fs not found at {S3S_FS}; run tests/install-deps.sh")
        os.makedirs(os.path.join(root, BUCKET), exist_ok=True)
        port = free_port()
        super().__init__([S3S_FS, "--host", "127.0.0.1", "--port", str(port),
                          "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, root], port)


class SigningBackend(Server):
    """The app backend of the signed-URL pattern, presigning URLs of an S3 endpoint."""

    def __init__(self, s3_url, token=TOKEN):
        port = free_port()
        env = dict(os.environ, S3_URL=s3_url, S3_BUCKET=BUCKET, S3_ACCESS_KEY=ACCESS_KEY,
                   S3_SECRET_KEY=SECRET_KEY, BACKEND_TOKEN=token, PORT=str(port))
        super().__init__([sys.executable, os.path.join(HERE, "signing_backend.py")], port, env=env)


class FaultProxy(Server):
    """Forwards to `upstream`, injecting `mode` faults; logs request lines to self.log."""

    def __init__(self, upstream_port, mode, **options):
        port = free_port()
        self.log = tempfile.mktemp(prefix="att-proxy-log-")
        env = dict(os.environ, UPSTREAM_PORT=str(upstream_port), MODE=mode, PORT=str(port), LOG=self.log,
                   **{k.upper(): str(v) for k, v in options.items()})
        super().__init__([sys.executable, os.path.join(HERE, "fault_proxy.py")], port, env=env)

    def requests(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.rstrip("\n") for line in f]

    def answers(self):
        """(method, status, body bytes sent, Range header or '-') of each answer forwarded."""
        if not os.path.exists(self.log + ".sent"):
            return []
        with open(self.log + ".sent") as f:
            return [(m, int(s), int(n), r.split("=", 1)[1]) for m, s, n, r in (line.split() for line in f)]
