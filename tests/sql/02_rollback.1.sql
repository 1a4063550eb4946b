-- A save whose transaction rolls back leaves no row; verify removes its file.
.open app.db
.load @LIB@
.mode box
CREATE TABLE notes(id INTEGER PRIMARY KEY, attachment_id TEXT);
SELECT attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote"}') IS NOT NULL AS initialized;
BEGIN;
INSERT INTO notes(attachment_id) VALUES (attachment_save(x'0102030405', 'bin'));
SELECT count(*) AS rows_inside_transaction FROM attachment_queue;
ROLLBACK;
SELECT count(*) AS rows_after_rollback FROM attachment_queue;
SELECT count(*) AS files_on_disk FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner');
-- Verify removes it at once: it holds the write lock, so no transaction can still
-- commit a row naming the file (see verify.rs); no waiting period is needed.
SELECT attachment_verify() AS verify;
SELECT count(*) AS files_on_disk FROM fsdir('files') WHERE name NOT IN ('files', 'files/.attachments-owner');
