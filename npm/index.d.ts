/** Path of the bundled extension, without its suffix. */
export function getLoadablePath(): string;
/** Loads the extension into a database with loadExtension(path[, entryPoint]), e.g. better-sqlite3. */
export function load(db: { loadExtension(path: string, entryPoint?: string): unknown }): void;
/** The platforms this package carries a library for, as `${process.platform}-${process.arch}`. */
export function supportedPlatforms(): string[];
export const ENTRY_POINT: string;
