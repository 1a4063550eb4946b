'use strict';
// sqlite-attachments for Node: the extension's path, and a loader for any
// driver with loadExtension(path) (better-sqlite3, and others alike).
// The package carries one library per platform, in lib/<process.platform>-<process.arch>/.
const path = require('path');
const fs = require('fs');

const ENTRY_POINT = 'sqlite3_attachments_init';
const LIB_DIR = path.join(__dirname, 'lib');

/** The platforms this package has a library for, e.g. ['darwin-arm64', 'linux-arm64', 'linux-x64']. */
function supportedPlatforms() {
  let names = [];
  try { names = fs.readdirSync(LIB_DIR); } catch (_) { /* no lib/ at all */ }
  return names.filter((n) => /^[a-z0-9]+-[a-z0-9]+$/.test(n)).sort();
}

/** True on Linux with musl (Alpine): the Linux libraries need glibc. */
function isMusl() {
  if (process.platform !== 'linux') return false;
  try {
    const report = process.report && process.report.getReport();
    const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
    return Boolean(header) && !header.glibcVersionRuntime;
  } catch (_) {
    return false;
  }
}

/** Path of the extension for this platform, without its suffix (SQLite adds .so/.dylib). */
function getLoadablePath() {
  const platform = `${process.platform}-${process.arch}`;
  const suffix = process.platform === 'darwin' ? '.dylib' : '.so';
  const base = path.join(LIB_DIR, platform, 'attachments');
  const supported = supportedPlatforms();
  if (!fs.existsSync(base + suffix)) {
    throw new Error(`sqlite-attachments: no build for ${platform}; this package supports ` +
      `${supported.join(', ') || 'no platform (its lib/ folder is empty)'}` +
      (process.platform === 'linux' ? ' (Linux: glibc 2.17 or newer)' : ''));
  }
  if (isMusl()) {
    throw new Error(`sqlite-attachments: ${platform} with musl libc (e.g. Alpine) is not supported; ` +
      `the Linux builds need glibc 2.17 or newer. This package supports ${supported.join(', ')} (glibc)`);
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

module.exports = { getLoadablePath, load, supportedPlatforms, ENTRY_POINT };
