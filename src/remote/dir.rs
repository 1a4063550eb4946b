//! `file:///dir`: a directory as remote storage (a network mount, or the
//! stand-in for a server in demos and tests). Writes are atomic like local ones.

use std::{fs, fs::File, io::Write, path::PathBuf};

use super::{copy_with_progress, ErrorKind, Fetched, Object, Progress, RemoteError, RemoteStorage};
use crate::store::sync_dir;

pub struct DirRemote {
    root: PathBuf,
}

impl DirRemote {
    pub fn new(root: PathBuf) -> DirRemote {
        DirRemote { root }
    }
}

fn io_err(what: &str, e: std::io::Error) -> RemoteError {
    RemoteError::from_io(what, &e)
}

impl RemoteStorage for DirRemote {
    fn upload(&self, obj: &Object, mut file: File, _len: u64, progress: Progress) -> Result<(), RemoteError> {
        fs::create_dir_all(&self.root).map_err(|e| io_err("creating the remote directory", e))?;
        let tmp = self.root.join(format!(".{}.tmp-{}", obj.filename, uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut out = File::create_new(&tmp)?;
            copy_with_progress(&mut file, &mut out, progress)?;
            out.sync_all()?;
            fs::rename(&tmp, self.root.join(obj.filename))?;
            sync_dir(&self.root)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| io_err("writing to the remote directory", e))
    }

    fn download(&self, obj: &Object, out: &mut dyn Write, progress: Progress) -> Result<Fetched, RemoteError> {
        let mut file = File::open(self.root.join(obj.filename)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RemoteError::new(ErrorKind::NotFound, "not in the remote directory"),
            _ => io_err("opening the remote file", e),
        })?;
        let length = file.metadata().map_err(|e| io_err("reading the remote file", e))?.len();
        copy_with_progress(&mut file, out, progress).map_err(|e| io_err("reading the remote file", e))?;
        Ok(Fetched { length: Some(length), sha256: None })
    }

    fn delete(&self, obj: &Object) -> Result<(), RemoteError> {
        match fs::remove_file(self.root.join(obj.filename)) {
            Ok(()) => sync_dir(&self.root).map_err(|e| io_err("deleting from the remote directory", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting from the remote directory", e)),
        }
    }
}
