-- attachment_delete: the sync removes the remote object, the local file and the row.
.open app.db
.load @LIB@
.mode box
SELECT attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote"}') IS NOT NULL AS initialized;
CREATE TABLE t(id TEXT);
INSERT INTO t VALUES (attachment_save(x'DEADBEEF', 'bin'));
SELECT json_extract(attachment_sync(), '$.uploaded') AS uploaded;
SELECT count(*) AS remote_files FROM fsdir('@TMP@/remote') WHERE name != '@TMP@/remote';
SELECT attachment_delete(id) = id AS marked FROM t;
SELECT state_name FROM attachment_queue;
SELECT attachment_sync() AS summary;
SELECT count(*) AS rows FROM attachment_queue;
SELECT count(*) AS local_files FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner');
SELECT count(*) AS remote_files FROM fsdir('@TMP@/remote') WHERE name != '@TMP@/remote';
SELECT attachment_local_uri(id) AS local_uri FROM t;
-- Deleting an id that has no row returns NULL.
SELECT attachment_delete(id) IS NULL AS unknown_gives_null FROM t;
-- A delete before the first upload never needs the remote object.
INSERT INTO t VALUES (attachment_save(x'01', 'bin'));
SELECT count(attachment_delete(id)) AS marked FROM t;
SELECT json_extract(attachment_sync(), '$.deleted') AS deleted;
SELECT count(*) AS rows FROM attachment_queue;
