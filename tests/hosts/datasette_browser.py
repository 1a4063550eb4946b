"""datasette-attachments in a real browser: Debian's chromium, headless, driven by Selenium.

One app database with a PNG, a PDF and a 16 MiB file, the app's worker uploading them
to nginx through a proxy that reads PUT bodies at a trickle, and Datasette serving the
database with the plugin from dist/ (installed by test-datasette.sh):
- the PNG is an <img> in the table view that loads (its natural size is the PNG's);
- the PDF, in a column nobody configured, is a link that downloads its exact bytes;
- the queue page shows the big upload's bytes_done growing between two readings of the
  page as it refreshes itself, and a failed download with its error class.
Screenshots go to $DATASETTE_SCREENSHOTS (docs/images for the README) or a temp folder.
"""
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "py"))
import servers  # noqa: E402

import sqlite_attachments  # noqa: E402  (from the wheel in dist/)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MiB = 1024 * 1024
BIG = 16 * MiB


def png(width, height, blue=160):
    """A real RGB PNG with a gradient, standard library only."""
    raw = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, blue)) for x in range(width))
                   for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def get(url):
    """(status, headers, body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class DatasettePlugin(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cleanups = []
        try:
            cls.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start(cls):
        cls.dir = tempfile.mkdtemp(prefix="att-datasette-")
        cls.cleanups.append(lambda: shutil.rmtree(cls.dir, ignore_errors=True))
        cls.shots = os.environ.get("DATASETTE_SCREENSHOTS") or os.path.join(cls.dir, "shots")
        os.makedirs(cls.shots, exist_ok=True)
        root = os.path.join(cls.dir, "remote")
        os.makedirs(root)
        nginx = servers.Nginx(root)
        cls.cleanups.append(nginx.stop)
        # PUT bodies are read 32 KiB every 0.1 s (320 KiB/s; the kernel's socket buffers take the
        # first few MiB at once): the 16 MiB upload takes about 40 s, well above the
        # extension's minimum rate, so the upload is slow but never cut.
        proxy = servers.FaultProxy(nginx.port, "trickle", trickle_bytes=32768, trickle_delay=0.1)
        cls.cleanups.append(proxy.stop)

        cls.db_path = os.path.join(cls.dir, "app.db")
        app = sqlite3.connect(cls.db_path, isolation_level=None, check_same_thread=False)
        sqlite_attachments.load(app)
        app.execute("SELECT attachment_init(?)", (json.dumps({"local_dir": "files", "remote": proxy.url + "/"}),))
        app.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT)")
        app.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT, file_id TEXT)")
        app.execute("CREATE TABLE videos (id INTEGER PRIMARY KEY, title TEXT, file_id TEXT)")
        cls.png = png(96, 64)
        cls.pdf = b"%PDF-1.4\n" + os.urandom(3000) + b"\n%%EOF\n"
        with app:
            app.execute("BEGIN")
            for i, (name, blue) in enumerate((("Ada", 160), ("Grace", 40), ("Edsger", 240))):
                app.execute("INSERT INTO users VALUES (?, ?, attachment_save(?, 'png'))",
                            (i + 1, name, cls.png if i == 0 else png(96, 64, blue)))
            app.execute("INSERT INTO documents VALUES (1, 'Report', attachment_save(?, 'pdf'))", (cls.pdf,))
            app.execute("INSERT INTO documents VALUES (3, 'Page', attachment_save(?, 'html'))",
                        (b"<script>document.title = 'ran'</script>",))
            # Referenced but in no remote: its download is answered 404.
            app.execute("INSERT INTO documents VALUES (2, 'Lost scan', 'lost-scan')")
            app.execute("INSERT INTO videos VALUES (1, 'Talk', attachment_save(?, 'bin'))", (os.urandom(BIG),))
        cls.photo_id = app.execute("SELECT photo_id FROM users WHERE id = 1").fetchone()[0]
        cls.pdf_id = app.execute("SELECT file_id FROM documents WHERE id = 1").fetchone()[0]
        cls.html_id = app.execute("SELECT file_id FROM documents WHERE id = 3").fetchone()[0]
        cls.big_id = app.execute("SELECT file_id FROM videos").fetchone()[0]
        app.execute("SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''png'' AS file_extension FROM users')")
        app.execute("SELECT attachment_watch('documents', 'SELECT file_id AS id, ''pdf'' AS file_extension FROM documents')")
        app.execute("SELECT attachment_watch('videos', 'SELECT file_id AS id, ''bin'' AS file_extension FROM videos')")
        app.execute("SELECT attachment_start_sync()")
        cls.app = app
        cls.cleanups.append(lambda: (app.execute("SELECT attachment_stop_sync()"), app.close()))

        # Only users.photo_id is configured: documents.file_id is found by the UUID rule.
        meta = os.path.join(cls.dir, "metadata.json")
        with open(meta, "w") as f:
            json.dump({"plugins": {"datasette-attachments": {"columns": {"users": ["photo_id"]}}}}, f)
        port = servers.free_port()
        datasette = os.path.join(os.path.dirname(sys.executable), "datasette")
        cls.log = open(os.path.join(cls.dir, "datasette.log"), "w")
        proc = subprocess.Popen([datasette, "serve", cls.db_path, "-m", meta, "-h", "127.0.0.1", "-p", str(port)],
                                stdout=cls.log, stderr=subprocess.STDOUT)
        cls.cleanups.append(lambda: (proc.terminate(), proc.wait(10)))
        servers.wait_for_port(port, proc)
        cls.base = f"http://127.0.0.1:{port}"

        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1100"):
            options.add_argument(arg)
        cls.browser = webdriver.Chrome(
            service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=options)
        cls.cleanups.append(cls.browser.quit)

    @classmethod
    def tearDownClass(cls):
        for cleanup in reversed(cls.cleanups):
            try:
                cleanup()
            except Exception as e:  # every cleanup runs
                print(f"cleanup: {e!r}", file=sys.stderr)

    def wait(self, condition, timeout=15):
        return WebDriverWait(self.browser, timeout, poll_frequency=0.1).until(lambda b: condition())

    def test_an_image_is_a_thumbnail_that_loads(self):
        self.browser.get(f"{self.base}/app/users")
        imgs = self.browser.find_elements(By.CSS_SELECTOR, "td.col-photo_id img")
        self.assertEqual(len(imgs), 3)
        self.assertEqual(imgs[0].get_attribute("src"), f"{self.base}/-/attachments/app/{self.photo_id}")
        for img in imgs:
            size = self.wait(lambda: self.browser.execute_script(
                "const i = arguments[0]; return i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null",
                img))
            self.assertEqual(size, [96, 64])
        self.browser.save_screenshot(os.path.join(self.shots, "datasette-table.png"))

    def test_another_file_is_a_link_to_its_exact_bytes(self):
        self.browser.get(f"{self.base}/app/documents")
        link = self.browser.find_element(By.CSS_SELECTOR, "td.col-file_id a.attachment-file")
        self.assertEqual(link.text, f"{self.pdf_id}.pdf")
        status, headers, body = get(link.get_attribute("href"))
        self.assertEqual(status, 200)
        self.assertEqual(body, self.pdf)
        self.assertEqual(headers["Content-Type"], "application/pdf")
        self.assertTrue(headers["Content-Disposition"].startswith("attachment;"), headers["Content-Disposition"])
        # An id that is no UUID and in no configured column stays plain text.
        cells = [c.text for c in self.browser.find_elements(By.CSS_SELECTOR, "td.col-file_id")]
        self.assertIn("lost-scan", cells)
        self.browser.save_screenshot(os.path.join(self.shots, "datasette-documents.png"))

    def test_the_route_serves_only_local_copies_the_extension_names(self):
        status, headers, body = get(f"{self.base}/-/attachments/app/{self.photo_id}")
        self.assertEqual((status, headers["Content-Type"], body), (200, "image/png", self.png))
        for path in ("/-/attachments/app/lost-scan",          # a row, no local copy
                     "/-/attachments/app/no-such-id",         # no row
                     "/-/attachments/app/..~2Fapp.db",        # not an id
                     "/-/attachments/nodb/" + self.photo_id):  # no such database
            status, _, body = get(self.base + path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"SQLite format", body)

    def test_an_html_attachment_never_runs_on_datasettes_origin(self):
        url = f"{self.base}/-/attachments/app/{self.html_id}"
        status, headers, _ = get(url)
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Disposition"].startswith("attachment;"), headers["Content-Disposition"])
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertIn("sandbox", headers["Content-Security-Policy"])
        # Opened directly, the browser downloads it (or shows it sandboxed): its script never runs.
        self.browser.get(f"{self.base}/app/documents")
        self.browser.get(url)
        time.sleep(0.5)
        self.assertNotEqual(self.browser.title, "ran")

    def test_the_queue_page_shows_a_transfer_moving(self):
        self.browser.get(f"{self.base}/-/attachments/app")
        cell = f'#att-in-flight tr[data-id="{self.big_id}"] td.bytes-done'

        def bytes_done():
            # Read in one script: the page swaps its live part in every second, so an element
            # found by one WebDriver call may be gone by the next.
            value = self.browser.execute_script(
                "const e = document.querySelector(arguments[0]); return e && e.getAttribute('data-bytes');", cell)
            return int(value) if value is not None else None

        def changed():
            now = bytes_done()
            return (now or BIG) if now != first else False

        # The page is never reloaded here: it refreshes itself. An upload's bytes_done moves
        # in steps (what the HTTP client and the socket buffers take at once: about 1.4 MiB,
        # every 4 s at this pace), so the second reading is the first one that differs.
        first = self.wait(bytes_done)
        started = time.monotonic()
        second = self.wait(changed, timeout=20)
        print(f"\nbytes_done of the 16 MiB upload on the page: {first:,}, then {second:,} "
              f"{time.monotonic() - started:.1f} s later", file=sys.stderr)
        self.assertLess(first, second)
        self.assertLess(second, BIG, "the upload finished (or left the page) before a second reading")
        # The failed download shows with its class, and the JSON endpoint has the same data.
        error_class = self.wait(lambda: self.browser.execute_script(
            "const e = document.querySelector(arguments[0]); return e && e.textContent.trim();",
            '#att-errors tr[data-id="lost-scan"] td.error-class'))
        self.assertEqual(error_class, "not_found")
        status, _, body = get(f"{self.base}/-/attachments/app.json")
        self.assertEqual(status, 200)
        data = json.loads(body)
        self.assertIn(self.big_id, [t["id"] for t in data["in_flight"]])
        self.browser.save_screenshot(os.path.join(self.shots, "datasette-queue.png"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
