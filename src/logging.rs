//! Logging through the `log` crate to stderr, off unless SQLITE_ATTACHMENTS_LOG
//! is set (`error`, `warn`, `info`, `debug` or `trace`). Messages never contain
//! credentials or signed URLs: every line, at every level, passes through
//! [`crate::redact`] on its way out, so a server's words repeated in an error
//! cannot carry a token into a log.

use log::{LevelFilter, Metadata, Record};

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.target().starts_with("attachments")
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let line = crate::redact::redact(&record.args().to_string());
            eprintln!("[sqlite-attachments {}] {}", record.level(), line);
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

pub fn init() {
    let level = match std::env::var("SQLITE_ATTACHMENTS_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" | "1" | "true" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return,
    };
    // Another library in the process may own the logger already; then we stay quiet.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
