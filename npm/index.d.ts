/** Path of the bundled extension, without its suffix. */
export function getLoadablePath(): string;
/** Loads the extension into a database with loadExtension(path[, entryPoint]), e.g. better-sqlite3. */
export function load(db: { loadExtension(path: string, entryPoint?: string): unknown }): void;
/** The platforms this package carries a library for, as `${process.platform}-${process.arch}`. */
export function supportedPlatforms(): string[];
export const ENTRY_POINT: string;
/** attachment_progress(): files and bytes queued, in flight and done per direction, rate, eta. */
export interface Direction {
  files_queued: number; bytes_queued: number; files_size_unknown: number;
  files_in_flight: number; bytes_in_flight: number; bytes_in_flight_done: number;
  files_done: number; bytes_done: number; files_total: number; bytes_total: number; bytes_moved: number;
  rate: number | null; eta_seconds: number | null;
}
export interface Progress {
  upload: Direction; download: Direction; deletes_queued: number; files_failing: number;
  rate: number | null; eta_seconds: number | null; concurrency: number; active: boolean; since: number | null;
  failed_watches: { count: number; names: string[] };
  last_error: { id: string; class: string | null; error: string; at: number | null } | null;
}
interface Db { prepare(sql: string): { pluck(): { get(...args: unknown[]): unknown } } }
export function progress(db: Db): Progress;
/** One plain line: percent, files, bytes, rate, time left. */
export function progressLine(p: Progress): string;
/** Calls onLine every `interval` ms until nothing is queued or in flight; resolves with the last progress. */
export function watchProgress(db: Db, options?: { interval?: number; onLine?: (line: string, p: Progress) => void; timeout?: number }): Promise<Progress>;
