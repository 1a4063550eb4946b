//! The `attachment_init` config: parsed and checked here, stored as JSON in
//! `_attachments_config`, read back by every function that needs it.
//! Secrets are never part of it: they come from the environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Stored config texts already parsed (and checked) by this process.
static PARSED: LazyLock<Mutex<HashMap<String, Config>>> = LazyLock::new(Default::default);

pub const DEFAULT_MAX_ATTEMPTS: i64 = 10;
/// The default upper bound of transfers in flight; the worker adapts below it (see
/// `concurrency.rs`). High enough for links with 150 ms of latency.
pub const DEFAULT_MAX_CONCURRENCY: i64 = 32;
pub const MAX_CONCURRENCY: i64 = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// As given; see [`Config::local_dir_for`] for the resolved path.
    pub local_dir: String,
    pub remote: Remote,
    pub table: String,
    pub download_attachments: bool,
    pub archived_cache_limit: i64,
    /// Bytes of ARCHIVED local files kept; None: no limit by size.
    pub archived_cache_bytes: Option<i64>,
    pub sync_interval_ms: i64,
    pub max_concurrency: i64,
    /// Cap on transfer bandwidth (uploads and downloads together), bytes per second.
    pub max_bytes_per_second: Option<i64>,
    pub max_attempts: i64,
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    /// End-to-end encryption: the names of the variables holding the keys, never a key.
    pub encryption: Option<Encryption>,
}

/// The `encryption` key: where the keys are (environment variable names), not the keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Encryption {
    pub key_env: String,
    pub old_key_envs: Vec<String>,
    pub accept_plaintext: bool,
}

impl Encryption {
    fn parse(value: &Value) -> Result<Encryption> {
        let bad = |why: String| Error::config("encryption", why);
        let Value::Object(obj) = value else {
            return Err(bad(r#"expected an object like {"key_env": "ATTACHMENTS_KEY"}"#.into()));
        };
        const KEYS: [&str; 3] = ["key_env", "old_key_envs", "accept_plaintext"];
        // Not repeated either: it could be a key pasted in the wrong place.
        if obj.keys().any(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!("has an unknown member; known ones are {}", KEYS.join(", "))));
        }
        // The value is never repeated: a key pasted where its variable's name belongs must not
        // reach an error message (nor, being refused, the database).
        let name = |v: &Value, what: &str| -> Result<String> {
            match v.as_str() {
                Some(s) if env_name_ok(s) => Ok(s.to_string()),
                Some(_) => Err(bad(format!(
                    "{what} must be the name of an environment variable (letters, digits and '_', not starting with a digit, at most 128), \
                     not the key itself; the variable holds the key"
                ))),
                None => Err(bad(format!("{what} must be a string, the name of an environment variable"))),
            }
        };
        let key_env = match obj.get("key_env") {
            None | Some(Value::Null) => return Err(bad("key_env is required: the name of the environment variable holding the key".into())),
            Some(v) => name(v, "key_env")?,
        };
        let old_key_envs = match obj.get("old_key_envs") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(|v| name(v, "each of old_key_envs")).collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(bad("old_key_envs must be an array of environment variable names".into())),
        };
        if let Some(dup) = old_key_envs.iter().enumerate().find(|(i, n)| **n == key_env || old_key_envs[..*i].contains(n)) {
            return Err(bad(format!("old_key_envs names {} twice (or as key_env too)", dup.1)));
        }
        let accept_plaintext = match obj.get("accept_plaintext") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("accept_plaintext must be true or false".into())),
        };
        Ok(Encryption { key_env, old_key_envs, accept_plaintext })
    }

    fn to_json(&self) -> Value {
        json!({"key_env": self.key_env, "old_key_envs": self.old_key_envs, "accept_plaintext": self.accept_plaintext})
    }
}

fn env_name_ok(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
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
        // Errors show the URL without credentials or query string: neither may be repeated.
        let bad = |why: &str| Error::config("remote", format!("{why} (got '{}')", redacted(url)));
        // The URL parser would silently drop tabs and line breaks; in a path or key they are never meant.
        if url.chars().any(char::is_control) {
            return Err(bad("control characters (tab, CR, LF, NUL) are not allowed"));
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// remote needs an absolute path, like file:///var/attachments"));
            }
            return Ok(Remote::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.contains('@') {
                return Err(bad("credentials in the URL are not allowed, they would be stored in the database; give them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"));
            }
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !bucket_ok {
                return Err(bad("an s3:// remote needs a bucket name of 3 to 63 lowercase letters, digits, '-' or '.'"));
            }
            if prefix.contains(['?', '#']) {
                return Err(bad("a query string or fragment is not allowed"));
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
        if !(http.starts_with("http://") || http.starts_with("https://")) {
            return Err(bad("expected file:///dir, http(s)://host/prefix/, s3://bucket/prefix or signed+http(s)://backend/base"));
        }
        let parsed = http_url(http).map_err(|why| bad(&why))?;
        let base = parsed.as_str();
        Ok(if signed {
            Remote::Signed(base.trim_end_matches('/').to_string())
        } else if base.ends_with('/') {
            Remote::Http(base.to_string())
        } else {
            Remote::Http(format!("{base}/"))
        })
    }
}

/// Parses an http(s) URL that must work as a base for requests: a valid ASCII host,
/// a port that exists, no credentials (they would be stored), no query or fragment.
/// Returns the URL in its normal form (path percent-encoded).
fn http_url(text: &str) -> std::result::Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => "the URL has no host".to_string(),
        url::ParseError::InvalidPort => "the port must be a number from 1 to 65535".to_string(),
        url::ParseError::InvalidDomainCharacter | url::ParseError::IdnaError => {
            "the host is not a valid host name (no spaces or other special characters)".to_string()
        }
        e => format!("not a valid URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("expected an http:// or https:// URL".into());
    }
    // WHATWG parsing reads "http:///x" as host "x"; an empty authority is a mistake.
    let authority = text.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    if authority.starts_with(['/', '?', '#']) || authority.is_empty() {
        return Err("the URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed, they would be stored in the database; \
                    give them in the environment (ATTACHMENTS_HTTP_TOKEN, or AWS_ACCESS_KEY_ID for S3)"
            .into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a query string or fragment is not allowed".into());
    }
    if url.port() == Some(0) {
        return Err("the port must be a number from 1 to 65535".into());
    }
    if !text.is_ascii() {
        let host = url.host_str().unwrap_or("");
        return Err(format!(
            "the URL must be ASCII: write a host name in its ASCII form (here '{host}') and percent-encode the path"
        ));
    }
    Ok(url)
}

/// `url` as safe to show in an error: userinfo and any query string or fragment
/// replaced by `***`. Works on text that is not a valid URL as well.
fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (before_query, hidden_query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_string(),
    };
    let query = if hidden_query { "?***" } else { "" };
    format!("{scheme}{authority}{path}{query}")
}

/// Table names the extension's own objects use (compared without case).
fn reserved_table_name(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    ["attachment_queue", "attachment_watches"].contains(&t.as_str())
        || t.starts_with("sqlite_")
        || t.starts_with("_attachments_")
}

/// The top-level members of a JSON object, in order and with duplicates kept
/// (serde_json's `Map` keeps the last of two equal keys without a word).
struct Members(Vec<String>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Members, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Members, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Members(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

/// The first key given twice in the JSON object `text`, if any.
pub(crate) fn duplicate_key(text: &str) -> Option<String> {
    let Members(keys) = serde_json::from_str(text).ok()?;
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().find(|k| !seen.insert(k.clone()))
}

impl Config {
    /// Parses and checks `attachment_init`'s JSON. Unknown keys and bad values name the key.
    pub fn parse(text: &str) -> Result<Config> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Argument(format!("config_json is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Error::Argument("config_json must be a JSON object, like {\"local_dir\":\"files\",\"remote\":\"file:///srv/att\"}".into()));
        };
        if let Some(key) = duplicate_key(text) {
            return Err(Error::config(&key, "is given more than once; give each key once"));
        }
        const KEYS: [&str; 13] = [
            "local_dir", "remote", "table", "download_attachments", "archived_cache_limit", "archived_cache_bytes",
            "sync_interval_ms", "max_concurrency", "max_bytes_per_second", "max_attempts", "s3_endpoint", "s3_region",
            "encryption",
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
            && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !table_ok {
            return Err(Error::config("table", format!(
                "'{table}' is not a usable table name: use up to 64 letters, digits and '_', starting with a letter or '_'")));
        }
        if reserved_table_name(&table) {
            return Err(Error::config("table", format!(
                "'{table}' is reserved for the extension's own objects (attachment_queue, attachment_watches, \
                 _attachments_*, sqlite_*); choose another name, like the default 'attachments'")));
        }
        let s3_endpoint = optional_string(&obj, "s3_endpoint")?;
        if let Some(ep) = &s3_endpoint {
            http_url(ep).map_err(|why| Error::config("s3_endpoint", format!("{why} (got '{}')", redacted(ep))))?;
        }
        let s3_region = optional_string(&obj, "s3_region")?.unwrap_or_else(|| "us-east-1".into());
        // It becomes part of every request's signature scope, and of the host name on AWS.
        if s3_region.len() > 64 || !s3_region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::config("s3_region", format!(
                "'{s3_region}' is not a region name: use letters, digits, '-' and '_', like us-east-1")));
        }
        Ok(Config {
            local_dir,
            remote,
            table,
            download_attachments: optional_bool(&obj, "download_attachments")?.unwrap_or(true),
            archived_cache_limit: optional_int(&obj, "archived_cache_limit", 0, i64::MAX)?.unwrap_or(100),
            archived_cache_bytes: optional_int(&obj, "archived_cache_bytes", 0, i64::MAX)?,
            sync_interval_ms: optional_int(&obj, "sync_interval_ms", 10, 86_400_000)?.unwrap_or(30_000),
            max_concurrency: optional_int(&obj, "max_concurrency", 1, MAX_CONCURRENCY)?.unwrap_or(DEFAULT_MAX_CONCURRENCY),
            max_bytes_per_second: optional_int(&obj, "max_bytes_per_second", crate::throttle::MIN_BYTES_PER_SECOND, i64::MAX)?,
            max_attempts: optional_int(&obj, "max_attempts", 1, 1_000_000)?.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            s3_endpoint,
            s3_region,
            encryption: match obj.get("encryption") {
                None | Some(Value::Null) => None,
                Some(v) => Some(Encryption::parse(v)?),
            },
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
            "archived_cache_bytes": self.archived_cache_bytes,
            "sync_interval_ms": self.sync_interval_ms,
            "max_concurrency": self.max_concurrency,
            "max_bytes_per_second": self.max_bytes_per_second,
            "max_attempts": self.max_attempts,
            "s3_endpoint": self.s3_endpoint,
            "s3_region": self.s3_region,
            "encryption": self.encryption.as_ref().map(Encryption::to_json),
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
        let stored: Option<(String, Option<i64>)> = match conn
            .query_row("SELECT config, schema_version FROM main._attachments_config WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        {
            Ok(v) => v,
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.starts_with("no such table") => None,
            Err(e) => return Err(e.into()),
        };
        let (stored, version) = stored.ok_or(Error::NotInitialized)?;
        // Every function loads the config: none of them works on a layout it does not know.
        crate::schema::check_not_newer(version)?;
        // Every save and read loads the config: parse each distinct stored text once.
        if let Some(config) = PARSED.lock().ok().and_then(|cache| cache.get(&stored).cloned()) {
            return Ok(config);
        }
        let config = Config::parse(&stored).map_err(|e| match e {
            Error::Config { key, why } => {
                Error::config(&key, format!("{why} (in the stored config, main._attachments_config: run attachment_init again)"))
            }
            other => other,
        })?;
        if let Ok(mut cache) = PARSED.lock() {
            // A handful of databases per process is the norm; a config edited in a loop must not grow it.
            if cache.len() >= 64 {
                cache.clear();
            }
            cache.insert(stored, config.clone());
        }
        Ok(config)
    }

    /// Stores this config (replacing any earlier one); the schema must exist.
    pub fn store(&self, conn: &Connection) -> Result<()> {
        conn.execute(
            "INSERT INTO main._attachments_config(id, config, schema_version) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET config = excluded.config",
            (self.to_json().to_string(), crate::schema::SCHEMA_VERSION),
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
        assert_eq!((c.archived_cache_limit, c.sync_interval_ms, c.max_concurrency), (100, 30_000, 32));
        assert_eq!(c.max_bytes_per_second, None);
        assert_eq!(c.remote, Remote::Dir("/tmp/r".into()));
        assert_eq!(Config::parse(&c.to_json().to_string()).unwrap(), c);
    }

    #[test]
    fn archived_cache_bytes_is_checked_and_has_no_default() {
        let parse = |extra: &str| Config::parse(&format!(r#"{{"local_dir":"a","remote":"file:///x"{extra}}}"#));
        let c = parse("").unwrap();
        assert_eq!(c.archived_cache_bytes, None);
        assert_eq!(c.to_json()["archived_cache_bytes"], Value::Null);
        let c = parse(r#","archived_cache_bytes":1048576"#).unwrap();
        assert_eq!(c.archived_cache_bytes, Some(1_048_576));
        assert_eq!(Config::parse(&c.to_json().to_string()).unwrap(), c);
        assert_eq!(parse(r#","archived_cache_bytes":0"#).unwrap().archived_cache_bytes, Some(0));
        assert_eq!(parse(r#","archived_cache_bytes":null"#).unwrap().archived_cache_bytes, None);
        for bad in ["-1", "1.5", "\"1GB\"", "true"] {
            let e = parse(&format!(r#","archived_cache_bytes":{bad}"#)).unwrap_err().to_string();
            assert!(e.contains("'archived_cache_bytes'") && e.contains("expected an integer of at least 0"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = |j: &str| Config::parse(j).unwrap_err().to_string();
        assert!(err(r#"{"remote":"file:///x"}"#).contains("'local_dir': is required"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","colour":1}"#).contains("'colour': unknown key"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","max_concurrency":0}"#).contains("'max_concurrency'"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","max_bytes_per_second":100}"#).contains("'max_bytes_per_second'"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","max_bytes_per_second":"1M"}"#).contains("'max_bytes_per_second'"));
        let capped = Config::parse(r#"{"local_dir":"a","remote":"file:///x","max_bytes_per_second":262144}"#).unwrap();
        assert_eq!(capped.max_bytes_per_second, Some(262144));
        assert_eq!(capped.to_json()["max_bytes_per_second"], 262144);
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","download_attachments":"yes"}"#).contains("'download_attachments'"));
        assert!(err(r#"{"local_dir":"a","remote":"ftp://x"}"#).contains("'remote'"));
        assert!(err(r#"{"local_dir":"a","remote":"file://relative"}"#).contains("absolute"));
        assert!(err(r#"{"local_dir":"a","remote":"https://u:p@host/x/"}"#).contains("credentials"));
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","table":"x;drop"}"#).contains("'table'"));
        assert!(err("[1]").contains("JSON object"));
    }

    #[test]
    fn values_that_can_never_work_are_refused_at_the_door() {
        let err = |j: &str| Config::parse(j).unwrap_err().to_string();
        let with = |extra: &str| format!(r#"{{"local_dir":"a","remote":"s3://bkt/p"{extra}}}"#);
        for remote in ["http://my host/x/", "http://hôst.example/x/", "https://h:99999/x/", "https://h:0/x/", "http:///x", "signed+http://a b/x"] {
            assert!(err(&format!(r#"{{"local_dir":"a","remote":"{remote}"}}"#)).contains("'remote'"), "{remote}");
        }
        assert!(err(&with(r#","s3_endpoint":"http://my host:9000""#)).contains("'s3_endpoint'"));
        assert!(err(&with(r#","s3_endpoint":"ftp://h""#)).contains("'s3_endpoint'"));
        for region in ["us/east", "us#1", "a@b", "a b"] {
            assert!(err(&with(&format!(r#","s3_region":"{region}""#))).contains("'s3_region'"), "{region}");
        }
        for table in ["attachment_queue", "Attachment_Queue", "attachment_watches", "_attachments_x", "sqlite_x"] {
            assert!(err(&format!(r#"{{"local_dir":"a","remote":"file:///x","table":"{table}"}}"#)).contains("reserved"), "{table}");
        }
        assert!(err(r#"{"local_dir":"a","remote":"file:///x","table":"a","table":"b"}"#).contains("'table': is given more than once"));
        assert!(Config::parse(&with(r#","s3_endpoint":"http://127.0.0.1:9000","s3_region":"eu-west-3""#)).is_ok());
    }

    #[test]
    fn errors_never_repeat_credentials() {
        for remote in ["https://u:hunter2@h/x/", "https://h/x/?sig=hunter2", "signed+https://u:hunter2@h/x", "s3://u:hunter2@bkt/x", "https://u:hunter2@h:99999/"] {
            let e = Config::parse(&format!(r#"{{"local_dir":"a","remote":"{remote}"}}"#)).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && e.contains("'remote'"), "{e}");
        }
        assert_eq!(redacted("https://u:p@h:1/x/?a=b#c"), "https://***@h:1/x/?***");
        assert_eq!(redacted("http://h/x"), "http://h/x");
    }

    #[test]
    fn encryption_names_variables_and_never_repeats_a_key() {
        let with = |enc: &str| Config::parse(&format!(r#"{{"local_dir":"a","remote":"file:///x","encryption":{enc}}}"#));
        let c = with(r#"{"key_env":"K1","old_key_envs":["K0"],"accept_plaintext":true}"#).unwrap();
        let e = c.encryption.clone().unwrap();
        assert_eq!((e.key_env.as_str(), e.old_key_envs, e.accept_plaintext), ("K1", vec!["K0".to_string()], true));
        assert_eq!(Config::parse(&c.to_json().to_string()).unwrap(), c);
        assert!(!with(r#"{"key_env":"K1"}"#).unwrap().encryption.unwrap().accept_plaintext);
        let key = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
        for enc in [
            format!(r#"{{"key_env":"{key}"}}"#),
            format!(r#"{{"key_env":"K","old_key_envs":["{key}"]}}"#),
            "{}".to_string(),
            r#"{"key_env":"K","colour":1}"#.to_string(),
            r#"{"key_env":"K","old_key_envs":"K0"}"#.to_string(),
            r#"{"key_env":"K","old_key_envs":["K"]}"#.to_string(),
            r#"{"key_env":"K","accept_plaintext":"yes"}"#.to_string(),
            r#""K""#.to_string(),
            r#"{"key_env":"1K"}"#.to_string(),
        ] {
            let err = with(&enc).unwrap_err().to_string();
            assert!(err.contains("'encryption'") && !err.contains(key), "{enc}: {err}");
        }
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
