-- Device A saves a photo, links it to a user in the same transaction, and syncs.
.open a.db
.load @LIB@
.mode box
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT);
INSERT INTO users(id, name) VALUES (1, 'ann');
SELECT json_extract(attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote"}'), '$.table') AS queue_table;
SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''txt'' AS file_extension FROM users WHERE photo_id IS NOT NULL') AS referenced;
-- The save and the link commit together (the reference docs' updateHook).
BEGIN;
UPDATE users SET photo_id = attachment_save(CAST('hello from device A' AS BLOB), 'txt', NULL, '{"caption":"hi"}') WHERE id = 1;
COMMIT;
SELECT state_name, size, media_type, meta_data, local_uri = filename AS has_local_copy FROM attachment_queue;
SELECT attachment_sync() AS summary;
SELECT state_name, has_synced, bytes_done FROM attachment_queue;
SELECT CAST(readfile('@TMP@/remote/' || photo_id || '.txt') AS TEXT) AS remote_copy FROM users;
