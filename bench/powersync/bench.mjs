// PowerSync's attachment queue (@powersync/common 2.x via @powersync/node 1.1.0) on the
// same cases as sqlite-attachments: small-file uploads and downloads against the same
// nginx, and reconciling many referenced ids. Prints one JSON line of figures.
//   node bench.mjs NGINX_URL WORKDIR SMALL_N RECONCILE_N
import fs from 'node:fs';
import path from 'node:path';
import {
  AttachmentQueue, AttachmentTable, AttachmentState, column, NodeFileSystemAdapter, PowerSyncDatabase, Schema, Table,
} from '@powersync/node';

const [base, work, smallN, reconcileN] = [process.argv[2], process.argv[3], +process.argv[4], +process.argv[5]];
const SIZE = 16 * 1024;
const schema = new Schema({ items: new Table({ file_id: column.text }), attachments: new AttachmentTable() });

// The remote storage adapter: plain PUT/GET/DELETE on the nginx WebDAV server, like ours.
const remote = (prefix) => ({
  async uploadFile(data, a) {
    const r = await fetch(`${base}/${prefix}/${a.filename}`, { method: 'PUT', body: data });
    if (!r.ok) throw new Error(`upload ${r.status}`);
  },
  async downloadFile(a) {
    const r = await fetch(`${base}/${prefix}/${a.filename}`);
    if (!r.ok) throw new Error(`download ${r.status}`);
    return r.arrayBuffer();
  },
  async deleteFile(a) {
    await fetch(`${base}/${prefix}/${a.filename}`, { method: 'DELETE' });
  },
});

async function device(name, prefix, adapter) {
  const dir = path.join(work, name);
  fs.mkdirSync(dir, { recursive: true });
  const db = new PowerSyncDatabase({ schema, database: { dbFilename: 'db.sqlite', dbLocation: dir } });
  await db.init();
  const queue = new AttachmentQueue({
    db,
    localStorage: new NodeFileSystemAdapter(path.join(dir, 'files')),
    remoteStorage: adapter ?? remote(prefix),
    syncIntervalMs: 3_600_000,
    archivedCacheLimit: 100,
    errorHandler: {
      onDownloadError: async () => false, onUploadError: async () => true, onDeleteError: async () => true,
    },
    watchAttachments: (onUpdate, signal) => {
      db.watch('SELECT file_id FROM items WHERE file_id IS NOT NULL', [], {
        onResult: async (r) => onUpdate((r.rows?._array ?? []).map((row) => ({ id: row.file_id, fileExtension: 'bin' }))),
      }, { signal });
    },
  });
  return { db, queue };
}

const count = async (db, state) =>
  (await db.get('SELECT count(*) AS n FROM attachments WHERE state = ?', [state])).n;

async function until(db, state, n) {
  while ((await count(db, state)) < n) await new Promise((r) => setTimeout(r, 5));
}

const out = {};
// Uploads: a pre-filled queue (saved before the queue starts, as for sqlite-attachments),
// then drained by syncStorage() (startSync() ignores rows queued before it).
const a = await device('a', 'ps');
await a.queue.localStorage.initialize(); // startSync() would do it; the saves come first here
const ids = [];
for (let i = 0; i < smallN; i++) {
  const data = new Uint8Array(SIZE).map(() => (Math.random() * 256) | 0).buffer;
  const rec = await a.queue.saveFile({
    data, fileExtension: 'bin',
    updateHook: async (tx, att) => { await tx.execute('INSERT INTO items(id, file_id) VALUES (uuid(), ?)', [att.id]); },
  });
  ids.push(rec.id);
}
let t0 = performance.now();
await a.queue.startSync();
while ((await count(a.db, AttachmentState.SYNCED)) < smallN) {
  await a.queue.syncStorage();
}
out.upload_files_per_s = smallN / ((performance.now() - t0) / 1000);
await a.queue.stopSync();

// Downloads: a second database receives the references.
const b = await device('b', 'ps');
await b.queue.startSync();
t0 = performance.now();
await b.db.writeTransaction(async (tx) => {
  for (const id of ids) await tx.execute('INSERT INTO items(id, file_id) VALUES (uuid(), ?)', [id]);
});
while ((await count(b.db, AttachmentState.SYNCED)) < smallN) {
  await b.queue.syncStorage();
  await new Promise((r) => setTimeout(r, 5));
}
out.download_files_per_s = smallN / ((performance.now() - t0) / 1000);
await b.queue.stopSync();

// RECONCILE_N 0: transfers only (the real-link rows).
let c = null;
if (reconcileN > 0) {
  // Reconcile: many referenced ids from scratch, then one changed reference. Downloads are
  // made to fail at once (and archive), so only the queueing is measured.
  const never = { uploadFile: async () => {}, downloadFile: async () => { throw new Error('404'); }, deleteFile: async () => {} };
  c = await device('c', 'ps-none', never);
  await c.db.writeTransaction(async (tx) => {
    for (let i = 0; i < reconcileN; i++) await tx.execute('INSERT INTO items(id, file_id) VALUES (uuid(), uuid())');
  });
  t0 = performance.now();
  await c.queue.startSync();
  while ((await c.db.get('SELECT count(*) AS n FROM attachments')).n < reconcileN) await new Promise((r) => setTimeout(r, 5));
  out.reconcile_ms = performance.now() - t0;
  const before = (await c.db.get('SELECT count(*) AS n FROM attachments')).n;
  t0 = performance.now();
  await c.db.execute("UPDATE items SET file_id = uuid() WHERE id = (SELECT id FROM items LIMIT 1)");
  while ((await c.db.get('SELECT count(*) AS n FROM attachments')).n < before + 1) await new Promise((r) => setTimeout(r, 1));
  out.reconcile_one_change_ms = performance.now() - t0;
  await c.queue.stopSync();
}
for (const d of [a, b, c]) if (d) await d.db.close();
console.log(JSON.stringify(out));
process.exit(0);
