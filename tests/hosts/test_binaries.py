"""The libraries and packages `make dist` builds, checked as another machine would see them.

Each Linux library (x86_64 in dist/attachments.so, aarch64 in dist/linux-aarch64/): its ELF
header (64-bit, architecture), the newest GLIBC_ symbol version it needs (at most 2.17:
manylinux2014), no libsqlite3; each wheel: its manylinux tag, confirmed by `auditwheel show`;
the npm tarball: one library per platform, the right one picked by process.platform and
process.arch, and a clear error on a platform it lacks; the aarch64 library loaded for real by
Debian's arm64 sqlite3 CLI under qemu-aarch64-static, syncing a file to a file:// remote;
the macOS libraries (Mach-O headers) when Rust's standard library for them is installed.

    /usr/bin/python3 tests/hosts/test_binaries.py      (after `make dist` and tests/install-deps.sh)
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIST = os.path.join(ROOT, "dist")
sys.path.insert(0, os.path.join(ROOT, "python"))
import binary_info  # noqa: E402

CACHE = os.environ.get("SQLITE_ATTACHMENTS_CACHE", os.path.expanduser("~/.cache/sqlite-attachments"))
TOOLS = os.environ.get("SQLITE_ATTACHMENTS_BUILD_TOOLS", os.path.join(CACHE, "build-tools"))
GLIBC_CEILING = (2, 17)

LINUX = {  # library → (ELF machine, manylinux tag, npm folder)
    "attachments.so": ("x86_64", "manylinux_2_17_x86_64.manylinux2014_x86_64", "linux-x64"),
    "linux-aarch64/attachments.so": ("aarch64", "manylinux_2_17_aarch64.manylinux2014_aarch64", "linux-arm64"),
}
MACOS = {  # Rust target → (library, Mach-O cpu, oldest macOS, wheel tag, npm folder)
    "aarch64-apple-darwin": ("macos-aarch64/attachments.dylib", "arm64", "11.0", "macosx_11_0_arm64", "darwin-arm64"),
    "x86_64-apple-darwin": ("macos-x86_64/attachments.dylib", "x86_64", "10.12", "macosx_10_12_x86_64", "darwin-x64"),
}


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def installed_rust_targets():
    try:
        return set(run("rustup", "target", "list", "--installed").split())
    except (OSError, subprocess.CalledProcessError):
        return set()


def macos_expected():
    """The macOS libraries to check: those `make dist` builds here (Rust's std for the target
    is installed), or under `make test`, which leaves them out (CROSS_MACOS=0), those a
    `make dist` left in dist/."""
    if os.environ.get("CROSS_MACOS") == "0":
        return {t: v for t, v in MACOS.items() if os.path.isfile(os.path.join(DIST, v[0]))}
    installed = installed_rust_targets()
    return {t: v for t, v in MACOS.items() if t in installed}


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def wheel_for(tag):
    return os.path.join(DIST, f"sqlite_attachments-{cargo_version()}-py3-none-{tag}.whl")


class LinuxLibraries(unittest.TestCase):
    def test_elf_header_architecture_and_64_bit(self):
        for rel, (machine, _tag, _npm) in LINUX.items():
            path = os.path.join(DIST, rel)
            with self.subTest(rel):
                self.assertTrue(os.path.isfile(path), f"{path} is missing: run make dist")
                header = run("readelf", "-h", path)
                self.assertRegex(header, r"Class:\s+ELF64")
                self.assertRegex(header, r"Type:\s+DYN")
                want = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}[machine]
                self.assertRegex(header, rf"Machine:\s+{re.escape(want)}")
                info = binary_info.read(path)  # the parser build_wheel.py tags wheels with agrees
                self.assertEqual((info["bits"], info["machine"], info["shared_object"]), (64, machine, True))

    def test_newest_glibc_symbol_version_is_at_most_2_17(self):
        for rel in LINUX:
            path = os.path.join(DIST, rel)
            with self.subTest(rel):
                versions = set(re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", run("objdump", "-T", path)))
                self.assertTrue(versions, "no GLIBC_ versions found: is this a glibc build?")
                newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
                self.assertLessEqual(tuple(map(int, newest.split("."))), GLIBC_CEILING,
                                     f"{rel} needs GLIBC_{newest}, newer than manylinux2014's 2.17")
                self.assertEqual(binary_info.read(path)["glibc_max"], newest)

    def test_no_sqlite_inside_or_linked(self):
        for rel in LINUX:
            path = os.path.join(DIST, rel)
            with self.subTest(rel):
                needed = run("readelf", "-d", path)
                self.assertNotIn("libsqlite3", needed)
                dynsyms = run("nm", "-D", path).splitlines()
                sqlite_syms = [line.split()[-1] for line in dynsyms if re.search(r"\bsqlite3_", line)]
                self.assertEqual(sqlite_syms, ["sqlite3_attachments_init"])
                self.assertNotIn("sqlite3VdbeExec", run("nm", "-D", "--defined-only", path))


class Wheels(unittest.TestCase):
    def test_each_linux_wheel_carries_its_library_and_auditwheel_agrees(self):
        auditwheel = os.path.join(TOOLS, "bin", "auditwheel")
        self.assertTrue(os.access(auditwheel, os.X_OK), f"{auditwheel} is missing: run tests/install-deps.sh")
        for rel, (machine, tag, _npm) in LINUX.items():
            wheel = wheel_for(tag)
            with self.subTest(wheel=os.path.basename(wheel)):
                self.assertTrue(os.path.isfile(wheel), f"{wheel} is missing: run make dist")
                with zipfile.ZipFile(wheel) as z:
                    with open(os.path.join(DIST, rel), "rb") as f:
                        self.assertEqual(z.read("sqlite_attachments/attachments.so"), f.read())
                    meta = z.read(f"sqlite_attachments-{cargo_version()}.dist-info/WHEEL").decode()
                self.assertIn(f"Tag: py3-none-manylinux_2_17_{machine}\n", meta)
                self.assertIn(f"Tag: py3-none-manylinux2014_{machine}\n", meta)
                shown = run(auditwheel, "show", wheel)
                self.assertIn(f'"manylinux_2_17_{machine}"', " ".join(shown.split()),
                              f"auditwheel show said:\n{shown}")

    def test_no_wheel_with_a_plain_linux_tag(self):
        # A package index refuses linux_x86_64; every wheel make dist leaves is installable from one.
        plain = [w for w in glob.glob(os.path.join(DIST, "*.whl")) if re.search(r"-linux_[^.]+\.whl$", w)]
        self.assertEqual(plain, [])


class AArch64UnderQemu(unittest.TestCase):
    """Debian's arm64 sqlite3 CLI loads the aarch64 library and syncs a file, under qemu-user."""

    def test_save_and_sync_to_a_file_remote(self):
        qemu = shutil.which("qemu-aarch64-static")
        self.assertIsNotNone(qemu, "qemu-aarch64-static is missing: run tests/install-deps.sh")
        sysroot = run(os.path.join(ROOT, "tests", "hosts", "arm64-sysroot.sh")).strip()
        lib = os.path.join(DIST, "linux-aarch64", "attachments")
        with tempfile.TemporaryDirectory(prefix="att-arm64-") as tmp:
            remote = os.path.join(tmp, "remote")
            os.mkdir(remote)
            payload = os.urandom(100_000)
            with open(os.path.join(tmp, "photo.jpg"), "wb") as f:
                f.write(payload)
            cfg = json.dumps({"local_dir": "files", "remote": "file://" + remote})
            script = "\n".join([
                f".load {lib}",
                "CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT);",
                f"SELECT 'init', json_valid(attachment_init('{cfg}'));",
                "SELECT 'watch', attachment_watch('photos', 'SELECT photo_id AS id FROM users');",
                "BEGIN; INSERT INTO users VALUES (1, attachment_save_file('photo.jpg', 'jpg')); COMMIT;",
                "SELECT 'sync', json_extract(attachment_sync(), '$.uploaded');",
                "SELECT 'row', id, state_name FROM attachment_queue;",
                "SELECT 'arch', sqlite_version();",
            ]) + "\n"
            out = subprocess.run(
                [qemu, "-L", sysroot, os.path.join(sysroot, "usr/bin/sqlite3"), "-batch", "-bail", "app.db"],
                input=script, capture_output=True, text=True, cwd=tmp, timeout=120)
            self.assertEqual(out.returncode, 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}")
            lines = out.stdout.splitlines()
            self.assertIn("init|1", lines)
            self.assertIn("sync|1", lines)
            rows = [line.split("|") for line in lines if line.startswith("row|")]
            self.assertEqual(len(rows), 1, out.stdout)
            att_id, state = rows[0][1], rows[0][2]
            self.assertEqual(state, "SYNCED")
            with open(os.path.join(remote, f"{att_id}.jpg"), "rb") as f:
                self.assertEqual(f.read(), payload)
            with open(os.path.join(tmp, "files", f"{att_id}.jpg"), "rb") as f:
                self.assertEqual(f.read(), payload)


class MacLibraries(unittest.TestCase):
    """Linked by zig without an SDK; nothing here can load them, so their headers are checked."""

    def test_mach_o_headers(self):
        expected = macos_expected()
        if not expected:
            self.skipTest("no macOS library to check: `make dist` builds them (Rust's std for the target must be installed)")
        for target, (rel, cpu, minos, tag, _npm) in expected.items():
            path = os.path.join(DIST, rel)
            with self.subTest(target):
                self.assertTrue(os.path.isfile(path), f"{path} is missing: run make dist")
                info = binary_info.read(path)
                self.assertEqual((info["format"], info["bits"], info["machine"], info["shared_object"]),
                                 ("Mach-O", 64, cpu, True))
                self.assertEqual(info["macos_min"], minos)
                self.assertIn("_sqlite3_attachments_init", info["exported"])
                self.assertFalse([e for e in info["exported"] if e.startswith("_sqlite3_") and
                                  e != "_sqlite3_attachments_init"])
                # Only libraries every macOS has; no libsqlite3.
                self.assertTrue(all(d.startswith("/usr/lib/") for d in info["needed"]), info["needed"])
                self.assertFalse([d for d in info["needed"] if "sqlite" in d])
                # arm64 macOS kills a process that maps unsigned code: the linker's ad-hoc signature.
                # (Intel Macs load unsigned libraries, and zig signs only arm64 ones.)
                if cpu == "arm64":
                    self.assertTrue(info["code_signature"])
                self.assertTrue(os.path.isfile(wheel_for(tag)), f"{wheel_for(tag)} is missing")


class NpmPackage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tarballs = glob.glob(os.path.join(DIST, "sqlite-attachments-*.tgz"))
        if len(tarballs) != 1:
            raise AssertionError(f"want one npm tarball in dist/, found {tarballs}")
        cls.tmp = tempfile.TemporaryDirectory(prefix="att-npm-")
        with tarfile.open(tarballs[0]) as t:
            cls.names = set(t.getnames())
            t.extractall(cls.tmp.name)
        cls.pkg = os.path.join(cls.tmp.name, "package")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def folders(self):
        want = {npm: rel for rel, (_m, _t, npm) in LINUX.items()}
        want.update({npm: rel for rel, _c, _v, _t, npm in macos_expected().values()})
        return want

    def test_one_library_per_platform(self):
        for folder, rel in self.folders().items():
            ext = os.path.splitext(rel)[1]
            with self.subTest(folder):
                self.assertIn(f"package/lib/{folder}/attachments{ext}", self.names)
                with open(os.path.join(self.pkg, "lib", folder, f"attachments{ext}"), "rb") as a, \
                        open(os.path.join(DIST, rel), "rb") as b:
                    self.assertEqual(a.read(), b.read())

    def node(self, platform, arch):
        """getLoadablePath() in Node with process.platform/arch set as on another machine."""
        if not shutil.which("node"):
            self.skipTest("node is missing")
        js = ("for (const [k, v] of [['platform', process.argv[1]], ['arch', process.argv[2]]])"
              " Object.defineProperty(process, k, { value: v });"
              f"const m = require({json.dumps(self.pkg)});"
              "try { console.log(JSON.stringify({ path: m.getLoadablePath(), supported: m.supportedPlatforms() })); }"
              "catch (e) { console.log(JSON.stringify({ error: e.message })); }")
        return json.loads(run("node", "-e", js, platform, arch))

    def test_picks_the_library_by_platform_and_arch(self):
        for folder in self.folders():
            platform, arch = folder.split("-")
            with self.subTest(folder):
                got = self.node(platform, arch)
                self.assertEqual(got.get("path"), os.path.join(self.pkg, "lib", folder, "attachments"), got)
                self.assertEqual(sorted(got["supported"]), sorted(self.folders()))

    def test_clear_error_naming_supported_platforms_elsewhere(self):
        for platform, arch in [("linux", "ppc64"), ("win32", "x64"), ("freebsd", "x64")]:
            with self.subTest(f"{platform}-{arch}"):
                err = self.node(platform, arch).get("error", "")
                self.assertIn(f"no build for {platform}-{arch}", err)
                for folder in self.folders():
                    self.assertIn(folder, err)

    def test_real_load_error_is_ours_not_dlopen(self):
        # load() on an unsupported platform throws before calling loadExtension at all.
        if not shutil.which("node"):
            self.skipTest("node is missing")
        js = ("Object.defineProperty(process, 'arch', { value: 's390x' });"
              f"const m = require({json.dumps(self.pkg)});"
              "let called = false;"
              "try { m.load({ loadExtension() { called = true; } }); } catch (e) { console.log(called, e.message); }")
        out = run("node", "-e", js)
        self.assertTrue(out.startswith("false sqlite-attachments: no build for linux-s390x"), out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
