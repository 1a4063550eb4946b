"""datasette-attachments: see sqlite-attachments' files in Datasette.

- Loads the extension (from the `sqlite_attachments` package) into every connection.
- Renders cells that hold attachment ids as thumbnails (image/*) or links (anything
  else), served by /-/attachments/<database>/<id> from the local copy.
- Adds /-/attachments/<database> (and .json): the queue by state, transfers in
  flight, errors and the local cache, refreshed every second.

Which cells are attachments: the columns named in the plugin's config
(`{"plugins": {"datasette-attachments": {"columns": {"users": ["photo_id"]}}}}`, at
the top level or per database), and, unless `"auto": false`, any text value shaped
like the UUIDs `attachment_save` mints that is an id in the queue (one primary-key
lookup per such cell; other values cost nothing).
"""
import os
import re
import time

import aiofiles
import markupsafe
from datasette import hookimpl
from datasette.utils import tilde_decode, tilde_encode
from datasette.utils.asgi import NotFound, Response

import sqlite_attachments

__version__ = "0.1.0"  # datasette-attachments/build_wheel.py writes Cargo.toml's version here
PLUGIN = "datasette-attachments"
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# The extension's own rule for ids (README, Reference: ids); anything else is never looked up.
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
# Shown inline (thumbnails, opened in a tab); everything else is sent as a download,
# so an attachment that is HTML or SVG never runs on Datasette's origin.
INLINE = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"}
CHUNK = 256 * 1024
REFRESH_MS = 1000


def config(datasette, database=None):
    return datasette.plugin_config(PLUGIN, database=database) or {}


def configured_columns(datasette, database, table):
    columns = config(datasette, database).get("columns") or {}
    return set(columns.get(table) or []) if table else set()


def attachment_url(datasette, database, id):
    return datasette.urls.path(f"/-/attachments/{tilde_encode(database)}/{id}")


def queue_url(datasette, database):
    return datasette.urls.path(f"/-/attachments/{tilde_encode(database)}")


def safe_media_type(media_type):
    media_type = (media_type or "").strip().lower()
    return media_type if MEDIA_TYPE.match(media_type) else "application/octet-stream"


def human_size(n):
    if n is None:
        return ""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


# -- loading -------------------------------------------------------------------


@hookimpl
def prepare_connection(conn, database, datasette):
    # Raises sqlite_attachments.ExtensionLoadingUnavailable (which says what to use
    # instead) when this Python's sqlite3 cannot load extensions.
    sqlite_attachments.load(conn)


# -- cells ---------------------------------------------------------------------


async def lookup(datasette, database, id):
    """The queue row of `id` and its local path, or None (no row, or no queue here)."""
    try:
        db = datasette.get_database(database)
        rows = await db.execute(
            "SELECT filename, media_type, size, state_name, attachment_local_uri(id) AS path "
            "FROM attachment_queue WHERE id = ?",
            [id],
        )
    except Exception:
        return None  # a database without attachment_init, or not loaded
    row = rows.first()
    return dict(row) if row else None


def render(datasette, database, id, row):
    if row is None:
        return markupsafe.Markup('<span class="attachment attachment-unknown" title="no attachment row">{}</span>').format(id)
    url = attachment_url(datasette, database, id)
    media_type = safe_media_type(row["media_type"])
    if row["path"] is None:
        return markupsafe.Markup(
            '<span class="attachment attachment-absent" title="{} (no local copy)">{} <small>{}</small></span>'
        ).format(row["state_name"], row["filename"], row["state_name"])
    if media_type.startswith("image/"):
        return markupsafe.Markup(
            '<a class="attachment attachment-image" href="{}" title="{} ({})">'
            '<img src="{}" alt="{}" loading="lazy" style="max-width:120px;max-height:120px"></a>'
        ).format(url, row["filename"], human_size(row["size"]), url, row["filename"])
    return markupsafe.Markup(
        '<a class="attachment attachment-file" href="{}" download="{}">{}</a> <small>{}, {}</small>'
    ).format(url, row["filename"], row["filename"], media_type, human_size(row["size"]))


@hookimpl
def render_cell(value, column, table, database, datasette):
    if not isinstance(value, str) or not ID.match(value):
        return None
    configured = column in configured_columns(datasette, database, table)
    auto = config(datasette, database).get("auto", True) and UUID.match(value)
    if not configured and not auto:
        return None

    async def inner():
        row = await lookup(datasette, database, value)
        if row is None and not configured:
            return None
        return render(datasette, database, value, row)

    return inner


# -- pages ---------------------------------------------------------------------


async def database_for(datasette, request):
    name = tilde_decode(request.url_vars["database"])
    try:
        db = datasette.get_database(name)
    except KeyError:
        raise NotFound(f"Database not found: {name}")
    await datasette.ensure_permissions(request.actor, [("view-database", name), "view-instance"])
    return name, db


class FileResponse:
    """Streams an open file: the length is the open file's, so a file replaced meanwhile
    is sent whole or not at all."""

    def __init__(self, fp, size, headers):
        self.fp, self.size, self.headers = fp, size, headers

    async def asgi_send(self, send):
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        headers.append((b"content-length", str(self.size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        left = self.size
        try:
            while left > 0:
                chunk = await self.fp.read(min(CHUNK, left))
                if not chunk:
                    break  # truncated under us: the client sees a short body, never wrong bytes
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            if left > 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.fp.close()


async def serve_attachment(datasette, request):
    name, db = await database_for(datasette, request)
    id = request.url_vars["id"]
    row = await lookup(datasette, name, id) if ID.match(id) else None
    if row is None or row["path"] is None:
        raise NotFound("No local copy of this attachment")
    # The path comes from the extension (attachment_local_uri), never from the request.
    try:
        fp = await aiofiles.open(row["path"], "rb")
    except OSError:
        raise NotFound("No local copy of this attachment")
    size = os.fstat(fp.fileno()).st_size
    media_type = safe_media_type(row["media_type"])
    disposition = "inline" if media_type in INLINE else "attachment"
    return FileResponse(fp, size, {
        "content-type": media_type,
        "content-disposition": f'{disposition}; filename="{row["filename"]}"',
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
        "cache-control": "private, max-age=60",
    })


def status_from(conn):
    """Everything the queue page shows, read on one connection in one go."""
    def one(sql, *args):
        return conn.execute(sql, args).fetchone()[0]

    if not one("SELECT count(*) FROM sqlite_master WHERE name = '_attachments_config'"):
        return {"initialised": False}
    functions = {r[0] for r in conn.execute(
        "SELECT name FROM pragma_function_list WHERE name IN ('attachment_progress', 'attachment_cache')")}
    states = [dict(zip(("state", "files", "bytes", "local_files", "local_bytes"), r)) for r in conn.execute(
        """SELECT state_name, count(*), coalesce(sum(size), 0),
                  count(local_uri), coalesce(sum(CASE WHEN local_uri IS NOT NULL THEN size END), 0)
           FROM attachment_queue GROUP BY state ORDER BY state""")]
    in_flight = [dict(zip(("id", "filename", "state", "size", "bytes_done", "attempts"), r)) for r in conn.execute(
        """SELECT id, filename, state_name, size, bytes_done, attempts FROM attachment_queue
           WHERE state IN (0, 1) AND bytes_done > 0 AND (size IS NULL OR bytes_done < size)
           ORDER BY bytes_done DESC LIMIT 100""")]
    errors = [dict(zip(("id", "filename", "state", "attempts", "next_attempt_at", "error_class", "last_error"), r))
              for r in conn.execute(
        """SELECT id, filename, state_name, attempts, next_attempt_at, error_class, last_error
           FROM attachment_queue WHERE last_error IS NOT NULL ORDER BY next_attempt_at DESC LIMIT 100""")]
    if "attachment_progress" in functions:
        progress = one("SELECT attachment_progress()")
    else:
        progress = {}
        for direction, state in (("upload", 0), ("download", 1)):
            files, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM attachment_queue WHERE state = ?", (state,)).fetchone()
            moving = [t for t in in_flight if t["state"] == ("QUEUED_UPLOAD", "QUEUED_DOWNLOAD")[state]]
            moving_size = sum(t["size"] or 0 for t in moving)
            # Queued means waiting, as in attachment_progress(): what is moving is apart.
            progress[direction] = {"files_queued": files - len(moving), "bytes_queued": size - moving_size,
                                   "files_in_flight": len(moving), "bytes_in_flight": moving_size,
                                   "bytes_in_flight_done": sum(t["bytes_done"] for t in moving)}
    if "attachment_cache" in functions:
        cache = one("SELECT attachment_cache()")
    else:
        limit = one("SELECT coalesce(json_extract(config, '$.archived_cache_limit'), 100) "
                    "FROM _attachments_config WHERE id = 1")
        archived = [s for s in states if s["state"] == "ARCHIVED"]
        cache = {"local": {"files": sum(s["local_files"] for s in states),
                           "bytes": sum(s["local_bytes"] for s in states)},
                 "archived": {"rows": sum(s["files"] for s in archived),
                              "files": sum(s["local_files"] for s in archived),
                              "bytes": sum(s["local_bytes"] for s in archived)},
                 "limits": {"archived_cache_limit": limit}}
    return {"initialised": True, "states": states, "in_flight": in_flight, "errors": errors,
            "progress": progress, "cache": cache, "source": sorted(functions)}


async def status(db):
    import json

    result = await db.execute_fn(status_from)
    for key in ("progress", "cache"):
        if isinstance(result.get(key), str):
            result[key] = json.loads(result[key])
    return result


def shown(key, value):
    """A summary value as people read it: sizes in KiB/MiB, rates per second, lists joined."""
    name = key.rsplit(".", 1)[-1]
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, (int, float)) and "bytes" in name:
        return human_size(value)
    if isinstance(value, (int, float)) and name == "rate":
        return human_size(value) + "/s"
    if isinstance(value, int) and (name in ("at", "since") or name.endswith("_at")):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value / 1000))
    if isinstance(value, (int, float)) and name.endswith("_seconds"):
        return f"{value:,.1f} s"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def flatten(value, prefix=""):
    """A JSON object as (key path, shown value) rows, for a summary table of any shape."""
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            rows.extend(flatten(v, f"{prefix}{k}."))
        return rows
    key = prefix.rstrip(".")
    return [(key, shown(key, value))]


def directions(progress):
    """The per-direction part of a progress object as rows of (key, [(shown, raw) per
    direction]), the directions, and the rest of the object flattened."""
    parts = [(d, progress[d]) for d in ("upload", "download") if isinstance(progress.get(d), dict)]
    keys = []
    for _, part in parts:
        keys += [k for k in part if k not in keys]
    rows = [(k, [(shown(k, part.get(k)), part.get(k)) for _, part in parts]) for k in keys]
    rest = {k: v for k, v in progress.items() if k not in ("upload", "download")}
    return [d for d, _ in parts], rows, flatten(rest)


async def queue_page(datasette, request):
    name, db = await database_for(datasette, request)
    data = await status(db)
    if request.url_vars.get("format") == "json":
        return Response.json(data)
    return Response.html(await datasette.render_template(
        "attachments_queue.html",
        {
            "database": name,
            "data": data,
            "progress_table": directions(data.get("progress") or {}),
            # By state is the table at the top of the page already.
            "cache_rows": flatten({k: v for k, v in (data.get("cache") or {}).items() if k != "states"}),
            "human_size": human_size,
            "json_url": queue_url(datasette, name) + ".json",
            "database_url": datasette.urls.database(name),
            "attachment_url": lambda id: attachment_url(datasette, name, id),
            "refresh_ms": REFRESH_MS,
        },
        request=request,
    ))


@hookimpl
def register_routes(datasette):
    return [
        (r"^/-/attachments/(?P<database>[^/]+?)\.(?P<format>json)$", queue_page),
        (r"^/-/attachments/(?P<database>[^/]+)$", queue_page),
        (r"^/-/attachments/(?P<database>[^/]+)/(?P<id>[^/]+)$", serve_attachment),
    ]


@hookimpl
def database_actions(datasette, actor, database, request):
    return [{"href": queue_url(datasette, database), "label": "Attachments: queue and cache"}]
