'use strict';
// sqlite-attachments for Node: the extension's path, and a loader for any
// driver with loadExtension(path) (better-sqlite3, and others alike).
const path = require('path');
const fs = require('fs');

const ENTRY_POINT = 'sqlite3_attachments_init';

/** Path of the bundled extension, without its suffix (SQLite adds .so/.dylib). */
function getLoadablePath() {
  const base = path.join(__dirname, 'lib', 'attachments');
  const suffix = process.platform === 'darwin' ? '.dylib' : '.so';
  if (!fs.existsSync(base + suffix)) {
    throw new Error(`sqlite-attachments: ${base + suffix} is missing; this package has no build for ${process.platform}-${process.arch}`);
  }
  return base;
}

/** Loads the extension into `db` (a better-sqlite3 Database, or any object with loadExtension). */
function load(db) {
  if (!db || typeof db.loadExtension !== 'function') {
    throw new TypeError('sqlite-attachments: load(db) needs a database with loadExtension(path), e.g. a better-sqlite3 Database');
  }
  db.loadExtension(getLoadablePath(), ENTRY_POINT);
}

module.exports = { getLoadablePath, load, ENTRY_POINT };
