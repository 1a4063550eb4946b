// The host flow in Node with better-sqlite3, sqlite-attachments installed from dist/.
// node flow.js WORKDIR
'use strict';
const assert = require('assert');
const fs = require('fs');
const path = require('path');
const Database = require('better-sqlite3');
const attachments = require('sqlite-attachments');

const work = process.argv[2];
const one = (db, sql, ...args) => db.prepare(sql).pluck().get(...args);

function device(name) {
  const db = new Database(path.join(work, `${name}.db`));
  attachments.load(db);
  one(db, 'SELECT attachment_init(?)', JSON.stringify({ local_dir: `files-${name}`, remote: `file://${work}/remote` }));
  db.exec('CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)');
  one(db, "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users')");
  return db;
}

(async () => {
  const a = device('a');
  const b = device('b');
  const save = (db, id, bytes) => db.prepare("INSERT INTO users VALUES (?, attachment_save(?, 'jpg'))").run(id, bytes);
  // Save in the app's own transaction; a rollback leaves nothing behind.
  assert.throws(() => a.transaction(() => { save(a, 1, Buffer.from('rolled back')); throw new Error('rollback'); })());
  assert.strictEqual(one(a, 'SELECT count(*) FROM attachments'), 0);
  a.transaction(() => save(a, 1, Buffer.from('photo bytes')))();
  assert.strictEqual(JSON.parse(one(a, 'SELECT attachment_sync()')).uploaded, 1);
  // The second database downloads through its reference.
  b.prepare('INSERT INTO users VALUES (1, ?)').run(one(a, 'SELECT photo_id FROM users'));
  assert.strictEqual(JSON.parse(one(b, 'SELECT attachment_sync()')).downloaded, 1);
  assert.strictEqual(fs.readFileSync(one(b, 'SELECT attachment_local_uri(photo_id) FROM users'), 'utf8'), 'photo bytes');
  // The background worker moves a file by itself.
  assert.strictEqual(one(a, 'SELECT attachment_start_sync()'), 1);
  save(a, 2, Buffer.from('second photo'));
  const deadline = Date.now() + 30000;
  while (one(a, 'SELECT state FROM attachments WHERE id = (SELECT photo_id FROM users WHERE id = 2)') !== 3) {
    assert.ok(Date.now() < deadline, 'the worker did not upload the file');
    await new Promise((r) => setTimeout(r, 50));
  }
  // A plain progress line fed by attachment_progress() while the worker moves three files.
  // They are saved in one transaction: done counts restart whenever the queue drains, and
  // the worker may finish one file before a separate save of the next commits.
  a.transaction(() => { for (let i = 0; i < 3; i += 1) save(a, 10 + i, require('crypto').randomBytes(300000)); })();
  const lines = [];
  const last = await attachments.watchProgress(a, { interval: 50, onLine: (line) => lines.push(line), timeout: 30000 });
  assert.ok(!last.active && last.upload.files_queued === 0, JSON.stringify(last));
  assert.ok(last.upload.files_done >= 3 && last.upload.bytes_done >= 900000, JSON.stringify(last));
  assert.match(lines[lines.length - 1], /^100% \d+\/\d+ files/);
  one(a, 'SELECT attachment_stop_sync()');
  console.log('ok   node/better-sqlite3: load, save in a transaction, rollback, sync, second device, worker, progress line');
})().catch((e) => { console.error(e); process.exit(1); });
