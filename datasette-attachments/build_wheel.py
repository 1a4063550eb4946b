"""Builds the datasette-attachments wheel (pure Python, any platform): the plugin
package, its template, and the `datasette` entry point. Standard library only, like
python/build_wheel.py: python3 datasette-attachments/build_wheel.py dist/

It is released with the extension: its version is Cargo.toml's, and it requires the
sqlite_attachments wheel of that same version (which carries the library it loads).
"""
import base64
import hashlib
import os
import re
import sys
import zipfile

NAME, DIST_NAME = "datasette_attachments", "datasette_attachments"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def cargo_version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def main(out_dir):
    version = cargo_version()
    tag = "py3-none-any"
    wheel = os.path.join(out_dir, f"{DIST_NAME}-{version}-{tag}.whl")
    info = f"{DIST_NAME}-{version}.dist-info"
    files = {}
    for folder, _, names in sorted(os.walk(os.path.join(HERE, NAME))):
        for name in sorted(names):
            if name.endswith((".py", ".html")):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    data = f.read()
                if name == "__init__.py":
                    data = re.sub(rb'(?m)^__version__ = .*$', f'__version__ = "{version}"'.encode(), data)
                files[os.path.relpath(path, HERE).replace(os.sep, "/")] = data
    with open(os.path.join(HERE, "README.md"), "rb") as f:
        readme = f.read().decode()
    files[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: datasette-attachments\nVersion: {version}\n"
        "Summary: See sqlite-attachments' files in Datasette: thumbnails, downloads, the sync queue\n"
        "License: MIT\nRequires-Python: >=3.8\n"
        "Requires-Dist: datasette>=0.64,<1.0\n"
        f"Requires-Dist: sqlite_attachments=={version}\n"
        "Description-Content-Type: text/markdown\n\n" + readme
    ).encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: datasette-attachments build_wheel.py\nRoot-Is-Purelib: true\nTag: {tag}\n"
    ).encode()
    files[f"{info}/entry_points.txt"] = b"[datasette]\nattachments = datasette_attachments\n"
    record = [record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            zi = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data, zipfile.ZIP_DEFLATED)
    print(wheel)


if __name__ == "__main__":
    main(sys.argv[1])
