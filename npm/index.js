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

/** attachment_progress() as an object (see the README's "Progress" section). */
function progress(db) {
  return JSON.parse(db.prepare('SELECT attachment_progress()').pluck().get());
}

function size(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}

/** One plain line for a progress report: percent, files, bytes, rate, time left. By bytes
 * when every size is known (downloads learn theirs when they finish), else by files. */
function progressLine(p) {
  const { upload: up, download: down } = p;
  const filesDone = up.files_done + down.files_done;
  const filesTotal = up.files_total + down.files_total;
  const moved = up.bytes_moved + down.bytes_moved;
  const total = up.bytes_total + down.bytes_total;
  const byBytes = up.files_size_unknown + down.files_size_unknown === 0 && total > 0;
  let fraction = byBytes ? moved / total : (filesTotal ? filesDone / filesTotal : 1);
  fraction = Math.min(Math.max(fraction, 0), 1);
  let line = `${Math.round(fraction * 100)}% ${filesDone}/${filesTotal} files`;
  if (total) line += `, ${size(moved)}/${size(total)}`;
  if (p.rate) line += `, ${size(p.rate)}/s`;
  if (p.eta_seconds && p.active) line += `, ${Math.round(p.eta_seconds)} s left`;
  if (p.files_failing) line += `, ${p.files_failing} failing`;
  return line;
}

/** Calls onLine(line, progress) every `interval` ms until nothing is queued or in flight;
 * resolves with the last progress object. Transfers run in the worker
 * (attachment_start_sync) or in another process. */
function watchProgress(db, { interval = 200, onLine = (line) => process.stderr.write(`\r${line}`), timeout } = {}) {
  const deadline = timeout === undefined ? Infinity : Date.now() + timeout;
  return new Promise((resolve, reject) => {
    const tick = () => {
      try {
        const p = progress(db);
        onLine(progressLine(p), p);
        if (!p.active || Date.now() >= deadline) return resolve(p);
        setTimeout(tick, interval);
      } catch (e) {
        reject(e);
      }
    };
    tick();
  });
}

module.exports = { getLoadablePath, load, supportedPlatforms, ENTRY_POINT, progress, progressLine, watchProgress };
