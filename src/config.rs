//! The `attachment_init` config: parsed and checked here, stored as JSON in
//! `_attachments_config`, read back by every function that needs it.
//! Secrets are never part of it: they come from the environment.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

pub const DEFAULT_MAX_ATTEMPTS: i64 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// As given; see [`Config::local_dir_for`] for the resolved path.
    pub local_dir: String,
    pub remote: Remote,
    pub table: String,
    pub download_attachments: bool,
    pub archived_cache_limit: i64,
    pub sync_interval_ms: i64,
    pub max_concurrency: i64,
    pub max_attempts: i64,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
}

/// Where files are stored, parsed from the `remote` URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    Dir(PathBuf),
    /// Base URL ending in `/`; objects are `{base}{filename}`.
    Http(String),
    S3 { bucket: String, prefix: String },
    /// The backend's base URL, without a trailing `/`.
    Signed(String),
}

impl Remote {
    pub fn url(&self) -> String {
        match self {
            Remote::Dir(p) => format!("file://{}", p.display()),
            Remote::Http(base) => base.clone(),
            Remote::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Remote::Signed(base) => format!("signed+{base}"),
        }
    }

    fn parse(url: &str) -> Result<Remote> {
        let bad = |why: &str| Error::config("remote", format!("{why} (got '{url}')"));
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// remote needs an absolute path, like file:///var/attachments"));
            }
            return Ok(Remote::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !bucket_ok {
                return Err(bad("an s3:// remote needs a bucket name of 3 to 63 lowercase letters, digits, '-' or '.'"));
            }
            let prefix = match prefix.trim_end_matches('/') {
                "" => String::new(),
                p => format!("{p}/"),
            };
            return Ok(Remote::S3 { bucket: bucket.to_string(), prefix });
        }
        let (signed, http) = match url.strip_prefix("signed+") {
            Some(rest) => (true, rest),
            None => (false, url),
        };
        let after_scheme = http.strip_prefix("http://").or_else(|| http.strip_prefix("https://"));
        let Some(after_scheme) = after_scheme else {
            return Err(bad("expected file:///dir, http(s)://host/prefix/, s3://bucket/prefix or signed+http(s)://backend/base"));
        };
        let host = after_scheme.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(bad("the URL has no host"));
        }
        if host.contains('@') {
            return Err(bad("credentials in the URL are not allowed, they would be stored in the database; use ATTACHMENTS_HTTP_TOKEN"));
        }
        if url.contains(['?', '#']) {
            return Err(bad("a query string or fragment is not allowed"));
        }
        Ok(if signed {
            Remote::Signed(http.trim_end_matches('/').to_string())
        } else if http.ends_with('/') {
            Remote::Http(http.to_string())
        } else {
            Remote::Http(format!("{http}/"))
        })
    }
}

impl Config {
    /// Parses and checks `attachment_init`'s JSON. Unknown keys and bad values name the key.
    pub fn parse(text: &str) -> Result<Config> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Argument(format!("config_json is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Error::Argument("config_json must be a JSON object, like {\"local_dir\":\"files\",\"remote\":\"file:///srv/att\"}".into()));
        };
        const KEYS: [&str; 10] = [
            "local_dir", "remote", "table", "download_attachments", "archived_cache_limit",
            "sync_interval_ms", "max_concurrency", "max_attempts", "s3_endpoint", "s3_region",
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(Error::config(k, format!("unknown key; known keys are {}", KEYS.join(", "))));
        }
        let local_dir = required_string(&obj, "local_dir")?;
        if local_dir.contains('\0') {
            return Err(Error::config("local_dir", "contains a NUL byte"));
        }
        let remote = Remote::parse(&required_string(&obj, "remote")?)?;
        let table = optional_string(&obj, "table")?.unwrap_or_else(|| "attachments".into());
        let table_ok = table.len() <= 64
            && table.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !table.to_ascii_lowercase().starts_with("sqlite_")
            && !table.to_ascii_lowercase().starts_with("_attachments_");
        if !table_ok {
            return Err(Error::config("table", format!(
                "'{table}' is not a usable table name: use letters, digits and '_', not starting with sqlite_ or _attachments_")));
        }
        let s3_endpoint = optional_string(&obj, "s3_endpoint")?;
        if let Some(ep) = &s3_endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.contains('@') {
                return Err(Error::config("s3_endpoint", "expected an http(s):// URL without credentials"));
            }
        }
        Ok(Config {
            local_dir,
            remote,
            table,
            download_attachments: optional_bool(&obj, "download_attachments")?.unwrap_or(true),
            archived_cache_limit: optional_int(&obj, "archived_cache_limit", 0, i64::MAX)?.unwrap_or(100),
            sync_interval_ms: optional_int(&obj, "sync_interval_ms", 10, 86_400_000)?.unwrap_or(30_000),
            max_concurrency: optional_int(&obj, "max_concurrency", 1, 64)?.unwrap_or(4),
            max_attempts: optional_int(&obj, "max_attempts", 1, 1_000_000)?.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            s3_endpoint,
            s3_region: optional_string(&obj, "s3_region")?.unwrap_or_else(|| "us-east-1".into()),
        })
    }

    /// The effective config, every key present; nothing secret is in it.
    pub fn to_json(&self) -> Value {
        json!({
            "local_dir": self.local_dir,
            "remote": self.remote.url(),
            "table": self.table,
            "download_attachments": self.download_attachments,
            "archived_cache_limit": self.archived_cache_limit,
            "sync_interval_ms": self.sync_interval_ms,
            "max_concurrency": self.max_concurrency,
            "max_attempts": self.max_attempts,
            "s3_endpoint": self.s3_endpoint,
            "s3_region": self.s3_region,
        })
    }

    /// `local_dir` made absolute: a relative path is relative to the database file's directory.
    pub fn local_dir_for(&self, db_file: Option<&str>) -> Result<PathBuf> {
        let dir = Path::new(&self.local_dir);
        if dir.is_absolute() {
            return Ok(dir.to_path_buf());
        }
        match db_file.filter(|f| !f.is_empty()) {
            Some(f) => Ok(Path::new(f).parent().unwrap_or(Path::new("/")).join(dir)),
            None => Err(Error::config("local_dir", "a relative local_dir needs a database file; this database is in memory or temporary, so give an absolute path")),
        }
    }

    /// Reads the stored config of `conn`'s main database.
    pub fn load(conn: &Connection) -> Result<Config> {
        let stored: Option<String> = match conn
            .query_row("SELECT config FROM main._attachments_config WHERE id = 1", [], |r| r.get(0))
            .optional()
        {
            Ok(v) => v,
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => None,
            Err(e) => return Err(e.into()),
        };
        Config::parse(&stored.ok_or(Error::NotInitialized)?)
    }

    /// Stores this config (replacing any earlier one); the schema must exist.
    pub fn store(&self, conn: &Connection) -> Result<()> {
        conn.execute(
            "INSERT INTO main._attachments_config(id, config) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET config = excluded.config",
            [self.to_json().to_string()],
        )?;
        Ok(())
    }
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String> {
    optional_string(obj, key)?.ok_or_else(|| Error::config(key, "is required"))
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(Error::config(key, "must not be empty")),
        Some(other) => Err(Error::config(key, format!("expected a string, got {other}"))),
    }
}

fn optional_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::config(key, format!("expected true or false, got {other}"))),
    }
}

fn optional_int(obj: &Map<String, Value>, key: &str, min: i64, max: i64) -> Result<Option<i64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ if max == i64::MAX => Err(Error::config(key, format!("expected an integer of at least {min}, got {v}"))),
            _ => Err(Error::config(key, format!("expected an integer from {min} to {max}, got {v}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let c = Config::parse(r#"{"local_dir":"files","remote":"file:///tmp/r"}"#).unwrap();
        assert_eq!(c.table, "attachments");
        assert!(c.download_attachments);
        assert_eq!((c.archived_cache_limit, c.sync_interval_ms, c.max_concurrency), (100, 30_000, 4));
        assert_eq!(c.remote, Remote::Dir("/tmp/r".into()));
        assert_eq!(Config::parse(&c.to_json().to_string()).unwrap(), c);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |j: &str| Config::parse(j).unwrap_err().to_string();
        assert!(err(r#"{"remote":"file:///x"}"#).contains("'local_dir': is required"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","colour":1}"#).contains("'colour': unknown key"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","max_concurrency":0}"#).contains("'max_concurrency'"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","download_attachments":"yes"}"#).contains("'download_attachments'"));
        assert!(err(r#"{"local_dir":"a","remote":"ftp://x"}"#).contains("'remote'"));
        assert!(err(r#"{"local_dir":"a","remote":"file://relative"}"#).contains("absolute"));
        assert!(err(r#"{"local_dir":"a","remote":"https://u:p@host/x/"}"#).contains("credentials"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","table":"x;drop"}"#).contains("'table'"));
        assert!(err("[1]").contains("JSON object"));
    }

    #[test]
    fn remotes_parse() {
        assert_eq!(Remote::parse("http://h:8/p").unwrap(), Remote::Http("http://h:8/p/".into()));
        assert_eq!(
            Remote::parse("s3://my-bucket/a/b/").unwrap(),
            Remote::S3 { bucket: "my-bucket".into(), prefix: "a/b/".into() }
        );
        assert_eq!(Remote::parse("signed+https://api/att/").unwrap(), Remote::Signed("https://api/att".into()));
        assert!(Remote::parse("s3://A").is_err());
    }

    #[test]
    fn relative_local_dir_follows_the_database() {
        let c = Config::parse(r#"{"local_dir":"files","remote":"file:///r"}"#).unwrap();
        assert_eq!(c.local_dir_for(Some("/data/app.db")).unwrap(), PathBuf::from("/data/files"));
        assert!(c.local_dir_for(Some("")).is_err());
    }
}
