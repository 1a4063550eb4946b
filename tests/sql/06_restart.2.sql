-- Process 2 needs only .load: the config is stored in the database. The queue resumes.
.open app.db
.load @LIB@
.mode box
SELECT attachment_sync() AS summary;
SELECT state_name, count(*) AS n FROM attachment_queue GROUP BY 1;
SELECT count(*) AS remote_files FROM fsdir('@TMP@/remote') WHERE name != '@TMP@/remote';
