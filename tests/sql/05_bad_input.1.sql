-- Bad input gets a clear SQL error, never a crash or a file outside local_dir.
.open app.db
.load @LIB@
-- Before attachment_init:
SELECT attachment_save(x'00', 'txt');
SELECT * FROM attachment_queue;
-- Config errors name the key.
SELECT attachment_init('not json');
SELECT attachment_init('{"remote":"file:///x"}');
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","max_concurrency":0}');
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","colour":"red"}');
SELECT attachment_init('{"local_dir":"f","remote":"ftp://host/x"}');
SELECT attachment_init('{"local_dir":"f","remote":"https://user:secret@host/x/"}');
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","table":"a; DROP TABLE b"}');
-- Values that can never work are refused here, not at the first sync; no error repeats a credential.
SELECT attachment_init('{"local_dir":"f","remote":"http://my host/x/"}');
SELECT attachment_init('{"local_dir":"f","remote":"http://hôst.example/x/"}');
SELECT attachment_init('{"local_dir":"f","remote":"https://host:99999/x/"}');
SELECT attachment_init('{"local_dir":"f","remote":"https://user:secret@host:99999/x/?token=secret2"}');
SELECT attachment_init('{"local_dir":"f","remote":"http://host/x/?X-Amz-Signature=secret3"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://user:secret@bucket/x"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://bucket/x","s3_endpoint":"http://my host:9000"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://bucket/x","s3_endpoint":"http://ak:secret@host:9000"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://bucket/x","s3_region":"us/east"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://bucket/x","s3_region":"eu#1"}');
SELECT attachment_init('{"local_dir":"f","remote":"s3://bucket/x","s3_region":"a@b"}');
-- Names of the extension's own objects are reserved.
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","table":"attachment_queue"}');
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","table":"_attachments_config"}');
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","table":"sqlite_stat1"}');
-- A key given twice is refused, not silently taken with its last value.
SELECT attachment_init('{"local_dir":"f","remote":"file:///x","table":"a","table":"b"}');
SELECT attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote"}') IS NOT NULL AS initialized;
-- Argument counts and types.
SELECT attachment_save();
SELECT attachment_save(x'00', 'txt', 'text/plain', '{}', 'extra');
SELECT attachment_save(NULL, 'txt');
SELECT attachment_save(x'00', 42);
SELECT attachment_local_uri();
SELECT attachment_delete(1);
SELECT attachment_watch('w');
SELECT attachment_sync(1);
-- Hostile extensions: separators, dot-dot, NUL, absurd lengths.
SELECT attachment_save(x'00', '../../etc/passwd');
SELECT attachment_save(x'00', '/abs');
SELECT attachment_save(x'00', 'a' || char(0) || 'b');
SELECT attachment_save(x'00', printf('%.5000c', 'x'));
-- Unreadable paths.
SELECT attachment_save_file('@TMP@/no-such-file', 'txt');
SELECT attachment_save_file('@TMP@', 'txt');
-- Watch queries must be read-only and return an id column.
SELECT attachment_watch('w', 'DELETE FROM sqlite_schema');
SELECT attachment_watch('w', 'SELECT 1 AS x');
SELECT attachment_watch('w', 'SELECT id FROM no_such_table');
SELECT attachment_watch('bad name!', 'SELECT 1 AS id');
-- attachment_sync commits its own transactions, so not inside the caller's.
BEGIN;
SELECT attachment_sync();
ROLLBACK;
-- Ids that arrive through synced data are untrusted: unsafe ones are skipped.
CREATE TABLE docs(id TEXT, ext TEXT);
INSERT INTO docs VALUES ('../../escape', 'txt'), ('ok-1', '../x'), ('/abs', 'txt'), ('a' || char(0) || 'b', 'txt'), (printf('%.300c', 'x'), 'txt'), (NULL, 'txt'), ('ok-2', 'pdf');
SELECT attachment_watch('docs', 'SELECT id, ext AS file_extension FROM docs') AS referenced;
SELECT attachment_sync() AS summary;
SELECT id, state_name, last_error FROM attachment_queue;
SELECT count(*) AS files_outside FROM fsdir('@TMP@') WHERE name NOT LIKE '@TMP@/files%' AND name NOT LIKE '@TMP@/app.db%' AND name != '@TMP@/remote' AND name NOT IN ('@TMP@', '@TMP@/actual.out');
SELECT count(*) AS local_files FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner');
-- A stored config edited by hand with a key given twice is refused with a clear error.
UPDATE _attachments_config SET config = substr(config, 1, length(config) - 1) || ',"table":"other"}';
SELECT attachment_save(x'00', 'txt');
