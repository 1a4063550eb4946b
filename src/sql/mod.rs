//! The SQL surface: thin wrappers that check arguments, call the logic
//! elsewhere, and turn errors into SQL errors prefixed with the function name.

mod cache;
mod control;
mod fetch;
mod keys;
mod queue_vtab;
mod read;
mod retry;
mod save;
mod snapshot;
mod watch;
mod watches_vtab;

use std::ffi::CString;
use std::marker::PhantomData;
use std::ops::{Deref, RangeInclusive};
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{ffi, Connection};

use crate::error::{Error, Result};

/// Registers every function and virtual table on `db`.
pub fn register(db: &Connection) -> rusqlite::Result<()> {
    save::register(db)?;
    read::register(db)?;
    watch::register(db)?;
    control::register(db)?;
    queue_vtab::register(db)?;
    retry::register(db)?;
    fetch::register(db)?;
    watches_vtab::register(db)?;
    cache::register(db)?;
    keys::register(db)?;
    Ok(())
}

/// Functions that read or write the queue: never deterministic, never from triggers or views.
pub const EFFECTFUL: FunctionFlags = FunctionFlags::SQLITE_UTF8.union(FunctionFlags::SQLITE_DIRECTONLY);
/// Pure helpers, safe anywhere.
pub const PURE: FunctionFlags = FunctionFlags::SQLITE_UTF8
    .union(FunctionFlags::SQLITE_DETERMINISTIC)
    .union(FunctionFlags::SQLITE_INNOCUOUS);

/// The arguments of one call of a SQL function, and the connection that made it.
///
/// Our own, rather than rusqlite's `functions::Context`, because reporting an error
/// with its own result code needs the raw `sqlite3_context`, which rusqlite keeps
/// private (and its wrapper resets every code to SQLITE_ERROR when it sets a message).
pub struct Context<'a> {
    ctx: *mut ffi::sqlite3_context,
    args: &'a [*mut ffi::sqlite3_value],
}

impl Context<'_> {
    /// The number of arguments.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` as SQLite holds it. Panics if `i >= len()` (caught at the boundary).
    pub fn get_raw(&self, i: usize) -> ValueRef<'_> {
        // Safety: SQLite keeps the values valid for the whole call, which outlives `self`.
        unsafe { value_ref(self.args[i]) }
    }

    /// The connection that called the function.
    ///
    /// # Safety
    /// The returned connection must not leave this call or this thread.
    pub unsafe fn get_connection(&self) -> rusqlite::Result<CallerConnection<'_>> {
        let handle = ffi::sqlite3_context_db_handle(self.ctx);
        Ok(CallerConnection { conn: Connection::from_handle(handle)?, phantom: PhantomData })
    }
}

/// The calling connection, borrowed for one call (never closed by us).
pub struct CallerConnection<'a> {
    conn: Connection,
    phantom: PhantomData<&'a ()>,
}

impl Deref for CallerConnection<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// Reads a protected `sqlite3_value` (what rusqlite does internally, which it does not export).
unsafe fn value_ref<'a>(value: *mut ffi::sqlite3_value) -> ValueRef<'a> {
    match ffi::sqlite3_value_type(value) {
        ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(value)),
        ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(value)),
        ffi::SQLITE_TEXT => {
            // Text first, then its length: the order SQLite documents for a stable pointer.
            let text = ffi::sqlite3_value_text(value);
            let len = ffi::sqlite3_value_bytes(value);
            if text.is_null() {
                ValueRef::Text(&[])
            } else {
                ValueRef::Text(std::slice::from_raw_parts(text.cast::<u8>(), len.max(0) as usize))
            }
        }
        ffi::SQLITE_BLOB => {
            let blob = ffi::sqlite3_value_blob(value);
            let len = ffi::sqlite3_value_bytes(value);
            if blob.is_null() || len <= 0 {
                ValueRef::Blob(&[])
            } else {
                ValueRef::Blob(std::slice::from_raw_parts(blob.cast::<u8>(), len as usize))
            }
        }
        _ => ValueRef::Null,
    }
}

/// What `scalar` registers: the function and how it describes itself in errors.
struct Function<T> {
    name: &'static str,
    signature: &'static str,
    arity: RangeInclusive<usize>,
    f: fn(&Context) -> Result<T>,
}

impl<T> Function<T> {
    fn call(&self, ctx: &Context) -> Result<T> {
        if !self.arity.contains(&ctx.len()) {
            let expected = if self.arity.start() == self.arity.end() {
                format!("{}", self.arity.start())
            } else {
                format!("{} to {}", self.arity.start(), self.arity.end())
            };
            let (signature, got) = (self.signature, ctx.len());
            return Err(Error::Argument(format!("expected {expected} argument(s): {signature}; got {got}")));
        }
        (self.f)(ctx)
    }
}

/// Registers `name` taking `arity` arguments. Any other count is an error that
/// shows `signature`; errors from `f` are prefixed with `name` and keep their
/// SQLite result code (see [`Error::sqlite_code`]).
pub fn scalar<T: ToSql + 'static>(
    db: &Connection,
    name: &'static str,
    signature: &'static str,
    arity: RangeInclusive<usize>,
    flags: FunctionFlags,
    f: fn(&Context) -> Result<T>,
) -> rusqlite::Result<()> {
    let c_name = CString::new(name).map_err(rusqlite::Error::NulError)?;
    let function = Box::into_raw(Box::new(Function { name, signature, arity, f }));
    // Safety: `function` is freed by `drop_function` exactly once, which SQLite
    // calls when the function is replaced, the connection closes, or registration fails.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db.handle(),
            c_name.as_ptr(),
            -1,
            flags.bits(),
            function.cast(),
            Some(call_function::<T>),
            None,
            None,
            Some(drop_function::<T>),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(format!("cannot register {name}"))))
    }
}

unsafe extern "C" fn drop_function<T>(p: *mut std::os::raw::c_void) {
    drop(Box::from_raw(p.cast::<Function<T>>()));
}

/// SQLite's entry into a function registered by `scalar`. No panic crosses it.
unsafe extern "C" fn call_function<T: ToSql>(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    let function = &*ffi::sqlite3_user_data(ctx).cast::<Function<T>>();
    let args = if argc <= 0 || argv.is_null() { &[][..] } else { std::slice::from_raw_parts(argv, argc as usize) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let result = function.call(&Context { ctx, args });
        match result {
            Ok(value) => set_result(ctx, &value),
            Err(e) => report_error(ctx, e.sqlite_code(), &e.sql_message(function.name)),
        }
    }));
    if outcome.is_err() {
        report_error(ctx, ffi::SQLITE_INTERNAL, &format!("{}: internal error (a bug: please report it)", function.name));
    }
}

/// Sets the message first and the code second: `sqlite3_result_error` resets the
/// code to SQLITE_ERROR, while `sqlite3_result_error_code` keeps a message already set.
unsafe fn report_error(ctx: *mut ffi::sqlite3_context, code: c_int, message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    ffi::sqlite3_result_error(ctx, message.as_ptr(), -1);
    ffi::sqlite3_result_error_code(ctx, code);
}

unsafe fn set_result<T: ToSql>(ctx: *mut ffi::sqlite3_context, value: &T) {
    let output = match value.to_sql() {
        Ok(o) => o,
        Err(e) => return report_error(ctx, ffi::SQLITE_ERROR, &e.to_string()),
    };
    let value = match &output {
        ToSqlOutput::Borrowed(v) => *v,
        ToSqlOutput::Owned(v) => ValueRef::from(v),
        _ => return report_error(ctx, ffi::SQLITE_INTERNAL, "unsupported result kind"),
    };
    match value {
        ValueRef::Null => ffi::sqlite3_result_null(ctx),
        ValueRef::Integer(i) => ffi::sqlite3_result_int64(ctx, i),
        ValueRef::Real(r) => ffi::sqlite3_result_double(ctx, r),
        ValueRef::Text(t) => match c_int::try_from(t.len()) {
            Ok(n) => ffi::sqlite3_result_text(ctx, t.as_ptr().cast(), n, ffi::SQLITE_TRANSIENT()),
            Err(_) => ffi::sqlite3_result_error_toobig(ctx),
        },
        ValueRef::Blob(b) => match c_int::try_from(b.len()) {
            Ok(n) => ffi::sqlite3_result_blob(ctx, b.as_ptr().cast(), n, ffi::SQLITE_TRANSIENT()),
            Err(_) => ffi::sqlite3_result_error_toobig(ctx),
        },
    }
}

/// The connection that called the function.
pub fn caller<'a>(ctx: &'a Context<'_>) -> Result<CallerConnection<'a>> {
    // Safety: the reference lives only for this call, on the calling thread.
    Ok(unsafe { ctx.get_connection()? })
}

fn type_name(v: &ValueRef) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Argument `i` as text; `what` names it in the error.
pub fn text_arg(ctx: &Context, i: usize, what: &str) -> Result<String> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => String::from_utf8(t.to_vec()).map_err(|_| Error::Argument(format!("{what} is not valid UTF-8"))),
        other => Err(Error::Argument(format!("{what} must be TEXT, got {}", type_name(&other)))),
    }
}

/// Optional text argument: absent or NULL gives None.
pub fn opt_text_arg(ctx: &Context, i: usize, what: &str) -> Result<Option<String>> {
    if i >= ctx.len() || matches!(ctx.get_raw(i), ValueRef::Null) {
        return Ok(None);
    }
    text_arg(ctx, i, what).map(Some)
}

/// Argument `i` as bytes: a BLOB, or TEXT taken as its UTF-8 bytes.
pub fn bytes_arg<'a>(ctx: &'a Context, i: usize, what: &str) -> Result<&'a [u8]> {
    match ctx.get_raw(i) {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b),
        other => Err(Error::Argument(format!("{what} must be a BLOB, got {}", type_name(&other)))),
    }
}
