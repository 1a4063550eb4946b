#!/usr/bin/env bash
# make demo: two devices share a photo through a directory remote, in the sqlite3 CLI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib="$root/dist/attachments"
work=$(mktemp -d /tmp/attachments-demo.XXXXXX)
cd "$work"
echo "Demo directory: $work (device A: a.db + files-a/, device B: b.db + files-b/, remote: remote/)"
printf 'a tiny photo, pretend it is a JPEG' > photo.jpg

run() { # run DB: feeds stdin to the sqlite3 CLI with the extension loaded
  { echo ".open $1"; echo ".load $lib"; echo ".mode box"; cat; } | sqlite3 -batch
}

run a.db <<SQL
.print '== Device A: set up the app schema and the attachment queue'
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT);
INSERT INTO users(id, name) VALUES (1, 'ann');
SELECT attachment_init('{"local_dir":"files-a","remote":"file://$work/remote"}') AS effective_config;
SELECT attachment_watch('user_photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users WHERE photo_id IS NOT NULL') AS referenced_ids;
.print '== Device A: save photo.jpg and link it to ann, in one transaction'
BEGIN;
UPDATE users SET photo_id = attachment_save_file('photo.jpg', 'jpg') WHERE id = 1;
COMMIT;
SELECT id, state_name, size, media_type, local_uri FROM attachment_queue;
.print '== Device A: sync (uploads to the remote)'
SELECT attachment_sync() AS summary;
SELECT id, state_name, has_synced FROM attachment_queue;
SQL

echo "== Remote storage now holds:"; ls -l remote


run b.db <<SQL
.print '== Device B: same app schema, its own queue and files'
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT);
SELECT attachment_init('{"local_dir":"files-b","remote":"file://$work/remote"}') IS NOT NULL AS initialized;
SELECT attachment_watch('user_photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users WHERE photo_id IS NOT NULL') AS referenced_ids;
.print '== Device B: the users row arrives through the app data sync (copied here)'
ATTACH 'a.db' AS a;
INSERT INTO users SELECT * FROM a.users;
DETACH a;
.print '== Device B: sync (the watch sees the new reference and downloads it)'
SELECT attachment_sync() AS summary;
SELECT id, state_name, size, local_uri FROM attachment_queue;
SELECT name, attachment_local_uri(photo_id) AS photo_path, CAST(attachment_data(photo_id) AS TEXT) AS photo_bytes FROM users;
.print '== Device B: ann removes her photo; the attachment is archived, its file kept as cache'
UPDATE users SET photo_id = NULL;
SELECT json_extract(attachment_sync(), '$.archived') AS archived;
SELECT id, state_name, local_uri FROM attachment_queue;
SQL

run a.db <<SQL
.print '== Device A: delete the attachment everywhere'
SELECT attachment_delete(photo_id) AS deleting FROM users;
UPDATE users SET photo_id = NULL;
SELECT id, state_name FROM attachment_queue;
SELECT attachment_sync() AS summary;
SELECT count(*) AS rows_left FROM attachment_queue;
SQL

echo "== Remote storage now holds: $(ls remote | wc -l) files"
cmp -s photo.jpg files-b/*.jpg && echo "== Device B's cached copy is byte-identical to the original."
echo "== Device A: a bigger file (a 100 MB video) uploads in another process; this one draws a progress line from attachment_progress()"
head -c 100000000 /dev/urandom > video.mp4
run a.db <<SQL >/dev/null
INSERT INTO users(id, name, photo_id) VALUES (2, 'bo', attachment_save_file('video.mp4', 'mp4'));
SQL
rm video.mp4  # saved: the extension holds its own copy
# Capped at 25 MB/s so the line has time to move (a build without max_bytes_per_second refuses the key: no cap).
run a.db <<SQL >/dev/null 2>&1 || true
SELECT attachment_init(json_set((SELECT config FROM _attachments_config), '\$.max_bytes_per_second', 25000000));
SQL
# The pass runs in the background; every process sees the same progress (the database holds it).
{ echo ".open a.db"; echo ".load $lib"; echo "SELECT attachment_sync();"; } | sqlite3 -batch >/dev/null &
sync_pid=$!
progress_line() {
  sqlite3 -batch a.db -cmd ".timeout 2000" -cmd ".load $lib" "
    WITH p(j) AS (SELECT attachment_progress()),
         v AS (SELECT j, json_extract(j, '\$.upload.bytes_moved') AS moved, json_extract(j, '\$.upload.bytes_total') AS total FROM p)
    SELECT printf('[%-30s] %3d%%  %6.1f / %.1f MB  %s  %s',
                  substr('##############################', 1, CAST(30 * moved / max(total, 1) AS INT)),
                  CAST(100 * moved / max(total, 1) AS INT), moved / 1e6, total / 1e6,
                  CASE WHEN NOT json_extract(j, '\$.active') THEN ''
                       WHEN json_extract(j, '\$.rate') IS NULL THEN 'measuring the rate'
                       ELSE printf('%.1f MB/s', json_extract(j, '\$.rate') / 1e6) END,
                  CASE WHEN NOT json_extract(j, '\$.active') THEN 'done'
                       WHEN json_extract(j, '\$.eta_seconds') IS NOT NULL THEN printf('%.0f s left', json_extract(j, '\$.eta_seconds'))
                       ELSE '' END)
    FROM v;"
}
while kill -0 "$sync_pid" 2>/dev/null; do printf '\r  %s ' "$(progress_line)"; sleep 0.2; done
wait "$sync_pid"
printf '\r  %s \n' "$(progress_line)"
echo "Done. Look around in $work"
