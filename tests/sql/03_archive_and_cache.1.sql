-- Unreferenced attachments are archived; beyond archived_cache_limit the oldest
-- lose their local file and row (the remote copy stays). A reference brings an
-- ARCHIVED row back.
.open app.db
.load @LIB@
.mode box
CREATE TABLE docs(name TEXT PRIMARY KEY, file_id TEXT);
SELECT attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote","archived_cache_limit":1}') IS NOT NULL AS initialized;
SELECT attachment_watch('docs', 'SELECT file_id AS id, ''pdf'' AS file_extension FROM docs') AS referenced;
INSERT INTO docs VALUES ('a', attachment_save(x'AA', 'pdf'));
INSERT INTO docs VALUES ('b', attachment_save(x'BBBB', 'pdf'));
INSERT INTO docs VALUES ('c', attachment_save(x'CCCCCC', 'pdf'));
SELECT json_extract(attachment_sync(), '$.uploaded') AS uploaded;
-- Keep the ids, then drop the references to b and c.
CREATE TEMP TABLE ids AS SELECT name, file_id FROM docs;
UPDATE docs SET file_id = NULL WHERE name = 'b';
SELECT json_extract(attachment_sync(), '$.archived') AS archived;
UPDATE docs SET file_id = NULL WHERE name = 'c';
SELECT attachment_sync() AS summary;
SELECT i.name, q.state_name, q.local_uri IS NOT NULL AS local_copy
FROM temp.ids i LEFT JOIN attachment_queue q ON q.id = i.file_id ORDER BY i.name;
SELECT count(*) AS local_files FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner');
SELECT count(*) AS remote_files FROM fsdir('@TMP@/remote') WHERE name != '@TMP@/remote';
-- c is referenced again while ARCHIVED with its local copy: straight back to SYNCED.
UPDATE docs SET file_id = (SELECT file_id FROM temp.ids WHERE name = 'c') WHERE name = 'c';
-- b was expired (row and local file gone): referenced again, it downloads.
UPDATE docs SET file_id = (SELECT file_id FROM temp.ids WHERE name = 'b') WHERE name = 'b';
SELECT attachment_sync() AS summary;
SELECT i.name, q.state_name, q.local_uri IS NOT NULL AS local_copy, hex(attachment_data(i.file_id)) AS data
FROM temp.ids i LEFT JOIN attachment_queue q ON q.id = i.file_id ORDER BY i.name;
-- attachment_expire_cache() applies the limit on demand, e.g. after lowering it.
SELECT json_extract(attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote","archived_cache_limit":10}'), '$.archived_cache_limit') AS cache_limit;
DELETE FROM docs;
SELECT json_extract(attachment_sync(), '$.archived') AS archived;
SELECT json_extract(attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote","archived_cache_limit":1}'), '$.archived_cache_limit') AS cache_limit;
SELECT attachment_expire_cache() AS removed;
SELECT count(*) AS archived_rows, (SELECT count(*) FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner')) AS local_files FROM attachment_queue WHERE state = 4;
SELECT count(*) AS remote_files FROM fsdir('@TMP@/remote') WHERE name != '@TMP@/remote';
