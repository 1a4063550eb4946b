"""Builds the Python wheel from the release library, like other SQLite
extensions ship (sqlite-vec's sqlite-dist): the shared library inside a
pure-Python package, tagged for the platform the library itself says it is for
(binary_info.py reads its ELF or Mach-O headers: architecture, the newest glibc
symbol version it needs, the oldest macOS). Standard library only, so it works
offline:

    python3 python/build_wheel.py dist/attachments.so dist/
    python3 python/build_wheel.py dist/linux-aarch64/attachments.so dist/
"""
import base64
import hashlib
import os
import re
import sys
import zipfile

NAME, DIST_NAME = "sqlite_attachments", "sqlite_attachments"
HERE = os.path.dirname(os.path.abspath(__file__))


def platform_tag(lib):
    """manylinux_2_17_x86_64.manylinux2014_x86_64, macosx_11_0_arm64, ...: from the library."""
    sys.path.insert(0, HERE)
    import binary_info
    return binary_info.wheel_platform_tag(binary_info.read(lib))


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


ROOT = os.path.join(HERE, "..")


def cargo_version():
    """The release number, from Cargo.toml: the one place it is written."""
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def docs():
    """README.md, CHANGELOG.md and docs/*.md, by their path in the repository: shipped inside
    the package beside the library, so the README's relative links resolve there too."""
    names = ["README.md", "CHANGELOG.md"] + sorted(
        "docs/" + n for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))
    out = {}
    for name in names:
        with open(os.path.join(ROOT, name), "rb") as f:
            out[name] = f.read()
    return out


def main(lib, out_dir):
    version = cargo_version()
    tag = f"py3-none-{platform_tag(lib)}"
    wheel = os.path.join(out_dir, f"{DIST_NAME}-{version}-{tag}.whl")
    info = f"{DIST_NAME}-{version}.dist-info"
    files = {}
    with open(os.path.join(HERE, NAME, "__init__.py"), "rb") as f:
        init = f.read().decode()
    files[f"{NAME}/__init__.py"] = re.sub(r'(?m)^__version__ = .*$', f'__version__ = "{version}"', init).encode()
    with open(lib, "rb") as f:
        files[f"{NAME}/attachments{os.path.splitext(lib)[1]}"] = f.read()
    for name, data in docs().items():
        files[f"{NAME}/{name}"] = data
    readme = files[f"{NAME}/README.md"].decode()
    files[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: {DIST_NAME}\nVersion: {version}\n"
        "Summary: Offline-first file attachments for any SQLite application (loadable extension)\n"
        "License: MIT\nRequires-Python: >=3.8\n"
        "Description-Content-Type: text/markdown\n\n" + readme
    ).encode()
    # One Tag line per platform of a compressed tag set (manylinux_2_17_x86_64.manylinux2014_x86_64).
    tag_lines = "".join(f"Tag: py3-none-{plat}\n" for plat in tag[len("py3-none-"):].split("."))
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: sqlite-attachments build_wheel.py\nRoot-Is-Purelib: false\n{tag_lines}"
    ).encode()
    record = [record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            zi = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            zi.external_attr = (0o755 if name.endswith((".so", ".dylib")) else 0o644) << 16
            z.writestr(zi, data, zipfile.ZIP_DEFLATED)
    print(wheel)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
