//! attachment_generate_key: a new key for the `encryption` config, in the text form its
//! environment variable holds. Nothing is stored: the app hands it to the user or a
//! secret store, and sets the variable in every syncing process.

use super::{scalar, Context, EFFECTFUL};
use crate::crypt::Key;
use crate::error::{Error, Result};
use rusqlite::Connection;

pub fn register(db: &Connection) -> rusqlite::Result<()> {
    // Random, so not deterministic; direct calls only, like every function with effects.
    scalar(db, "attachment_generate_key", "attachment_generate_key()", 0..=0, EFFECTFUL, generate_key)
}

fn generate_key(_ctx: &Context) -> Result<String> {
    Key::generate().map_err(|e| Error::Argument(format!("no randomness from the operating system: {e}")))
}
