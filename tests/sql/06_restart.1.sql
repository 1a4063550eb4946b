-- Process 1 saves three files and exits without syncing.
.open app.db
.load @LIB@
SELECT attachment_init('{"local_dir":"files","remote":"file://@TMP@/remote"}') IS NOT NULL AS initialized;
CREATE TABLE t(id TEXT);
INSERT INTO t SELECT attachment_save(randomblob(1000), 'bin') FROM generate_series(1, 3);
SELECT state_name, count(*) FROM attachment_queue GROUP BY 1;
