"""The documents match the code: docs/sql-reference.md documents exactly the functions the
built library registers, its config keys with the defaults attachment_init reports, and the
columns of its tables; every relative link in README.md and docs/ resolves, in the
repository and in the packages `make dist` builds."""
import glob
import io
import json
import os
import re
import sqlite3
import tarfile
import unittest
import zipfile

from helpers import ROOT, Case, connect, one

DOCS = os.path.join(ROOT, "docs")
REFERENCE = os.path.join(DOCS, "sql-reference.md")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(text, heading):
    """The lines under `## heading` up to the next `## `."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == heading
            continue
        if inside:
            lines.append(line)
    if not lines:
        raise AssertionError(f"docs/sql-reference.md has no section '## {heading}'")
    return lines


def table_rows(lines):
    """First cells (without backticks) and the other cells of each Markdown table row."""
    rows = {}
    for line in lines:
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([^`]+)`", cells[0])
        if m:
            rows[m.group(1)] = cells[1:]
    return rows


def mismatch(what, documented, actual):
    """A message listing both differences, or None."""
    extra, missing = sorted(set(documented) - set(actual)), sorted(set(actual) - set(documented))
    if not extra and not missing:
        return None
    return (f"{what}: documented in docs/sql-reference.md but not in the library: {extra or 'none'}; "
            f"in the library but not documented: {missing or 'none'}")


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text):
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def relative_links(text):
    """Targets of Markdown links that are neither absolute URLs nor mail links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def broken_links(files):
    """`files` maps a path (posix, relative to the package root) to its text (None for
    non-text files); returns the links in README.md and docs/*.md that name nothing in it."""
    broken = []
    for path, text in files.items():
        if not (path == "README.md" or path.startswith("docs/")) or not path.endswith(".md") or text is None:
            continue
        for target in relative_links(text):
            file_part, _, fragment = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if resolved not in files:
                broken.append(f"{path}: {target} (no file {resolved})")
            elif fragment and resolved.endswith(".md") and fragment not in anchors(files[resolved]):
                broken.append(f"{path}: {target} (no heading #{fragment})")
    return broken


def repo_files():
    """README.md, docs/ and every file a link in them could name, from the working tree."""
    files = {}
    for root, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", "target", "dist", "node_modules", "__pycache__")]
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, ROOT).replace(os.sep, "/")
            files[rel] = read(full) if name.endswith(".md") else None
    return files


class Reference(Case):
    def setUp(self):
        super().setUp()
        self.text = read(REFERENCE)
        self.conn = connect(os.path.join(self.dir, "app.db"))

    def effective_config(self):
        """attachment_init's answer with only the required keys, found by asking it."""
        config, required = {}, []
        for _ in range(10):
            try:
                return required, json.loads(one(self.conn, "SELECT attachment_init(?)", json.dumps(config)))
            except sqlite3.Error as e:  # SQLITE_MISUSE: InterfaceError in Python
                m = re.search(r"config key '(\w+)': is required", str(e))
                if not m:
                    raise
                key = m.group(1)
                required.append(key)
                config[key] = "file://" + self.remote if key == "remote" else "files"
        self.fail("attachment_init keeps asking for keys")

    def test_functions(self):
        registered = [r[0] for r in self.conn.execute(
            "SELECT DISTINCT name FROM pragma_function_list WHERE name LIKE 'attachment%'")]
        documented = []
        for line in section(self.text, "Functions"):
            if line.startswith("### "):
                documented += re.findall(r"\battachment_\w+", line)
        self.assertIsNone(mismatch("functions", documented, registered))

    def test_config_keys_and_defaults(self):
        required, effective = self.effective_config()
        rows = table_rows(section(self.text, "Config keys"))
        problems = [mismatch("config keys", rows, effective)]
        for key, value in effective.items():
            if key not in rows:
                continue
            default = rows[key][0]
            if key in required:
                expected = "required"
            else:
                shown = value if isinstance(value, str) else json.dumps(value)
                expected = f"`{shown}`"
            if default != expected:
                problems.append(f"config key {key}: the default column says {default}, attachment_init reports {expected}")
        problems = [p for p in problems if p]
        self.assertEqual(problems, [], "\n".join(problems))

    def test_columns(self):
        self.effective_config()
        problems = []
        for heading, table in (("The queue table", "attachments"), ("attachment_queue", "attachment_queue"),
                               ("attachment_watches", "attachment_watches")):
            actual = [r[0] for r in self.conn.execute("SELECT name FROM pragma_table_info(?)", (table,))]
            self.assertTrue(actual, table)
            problems.append(mismatch(f"columns of {table}", table_rows(section(self.text, heading)), actual))
        problems = [p for p in problems if p]
        self.assertEqual(problems, [], "\n".join(problems))


class Links(unittest.TestCase):
    def test_readme_and_docs_links_resolve_in_the_repository(self):
        files = repo_files()
        self.assertIn("docs/sql-reference.md", files)
        self.assertEqual(broken_links(files), [])
        readme = files["README.md"]
        for doc in ("docs/sql-reference.md", "docs/internals.md", "docs/remotes.md"):
            self.assertIn(f"]({doc}", readme, f"README.md links to {doc}")
        self.assertNotRegex(readme, r"\.\./shared|SQL-API\.md", "README.md names a file outside the repository")

    def packages(self):
        dist = os.path.join(ROOT, "dist")
        wheels = glob.glob(os.path.join(dist, "sqlite_attachments-*.whl"))
        tarballs = glob.glob(os.path.join(dist, "sqlite-attachments-*.tgz"))
        if not wheels or not tarballs:
            self.skipTest("no packages in dist/: `make dist` builds them (`make test` does)")
        return wheels[0], tarballs[0]

    def cargo_version(self):
        return re.search(r'^version = "([^"]+)"', read(os.path.join(ROOT, "Cargo.toml")), re.M).group(1)

    def test_links_resolve_in_the_wheel(self):
        wheel, _ = self.packages()
        with zipfile.ZipFile(wheel) as z:
            prefix = "sqlite_attachments/"
            files = {n[len(prefix):]: (z.read(n).decode() if n.endswith(".md") else None)
                     for n in z.namelist() if n.startswith(prefix)}
            metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        self.assertIn("README.md", files)
        self.assertIn("docs/sql-reference.md", files)
        self.assertEqual(broken_links(files), [])
        version = self.cargo_version()
        self.assertIn(f"-{version}-", os.path.basename(wheel))
        self.assertIn(f"\nVersion: {version}\n", metadata)

    def test_links_resolve_in_the_npm_package(self):
        _, tarball = self.packages()
        with tarfile.open(tarball) as t:
            prefix = "package/"
            files = {}
            for m in t.getmembers():
                if m.isfile() and m.name.startswith(prefix):
                    data = t.extractfile(m).read()
                    files[m.name[len(prefix):]] = data.decode() if m.name.endswith((".md", ".json")) else None
        self.assertIn("README.md", files)
        self.assertIn("docs/sql-reference.md", files)
        self.assertEqual(broken_links(files), [])
        version = self.cargo_version()
        self.assertEqual(json.loads(files["package.json"])["version"], version)
        self.assertIn(f"-{version}.tgz", os.path.basename(tarball))


if __name__ == "__main__":
    unittest.main()
