-- Device B (another process, another database) receives the users row and downloads the photo.
.open b.db
.load @LIB@
.mode box
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, photo_id TEXT);
SELECT json_extract(attachment_init('{"local_dir":"files-b","remote":"file://@TMP@/remote"}'), '$.local_dir') AS local_dir;
SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''txt'' AS file_extension FROM users WHERE photo_id IS NOT NULL') AS referenced;
-- The app's own sync delivers the row (here: copied from device A's database).
ATTACH 'a.db' AS a;
INSERT INTO users SELECT * FROM a.users;
SELECT state_name FROM attachment_queue;
SELECT attachment_sync() AS summary;
SELECT state_name, size, media_type, has_synced FROM attachment_queue;
-- Byte-identical to device A's copy.
SELECT readfile(attachment_local_uri(u.photo_id)) = readfile('files/' || q.filename) AS identical,
       attachment_local_uri(u.photo_id) = '@TMP@/files-b/' || q.filename AS path
FROM users u JOIN a.attachments q ON q.id = u.photo_id;
SELECT CAST(attachment_data(photo_id) AS TEXT) AS content FROM users;
