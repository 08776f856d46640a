//! The embedded store's product images (OP-14): one file per image under `images/` in the
//! data directory, named by its sale and the SHA-256 of its bytes (`7-<hex>.png`).
//!
//! Files, not a SQLite table: an image is up to megabytes written once and read rarely (the
//! browser caches it for good), and keeping it out of the database keeps it out of the
//! group-committing writer's transactions and the WAL that every purchase waits to fsync.
//!
//! Invariants: a file is whole or absent under its final name (written to a unique temporary
//! name, fsynced, renamed, the directory fsynced), so a crash leaves at most a stray temporary
//! file and never a torn image; a name's bytes never change (it is their digest), so a second
//! write of the same image keeps the first.

use bytes::Bytes;
use flashsale_core::{ImageRef, SaleId};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The directory inside the data directory.
pub const IMAGES_DIR: &str = "images";

/// The image files of one data directory.
pub(crate) struct ImageFiles {
    dir: PathBuf,
}

impl ImageFiles {
    /// The images of `data_dir`, creating their directory if needed.
    pub(crate) fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join(IMAGES_DIR);
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, id: SaleId, image: ImageRef) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.{}",
            id.0,
            image.sha256_hex(),
            image.kind().as_str()
        ))
    }

    /// Writes the image durably unless it is there already. Blocking.
    pub(crate) fn put(&self, id: SaleId, image: ImageRef, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(id, image);
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(format!(".{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// The image's bytes, or `None` if there is no such file. Blocking.
    pub(crate) fn get(&self, id: SaleId, image: ImageRef) -> io::Result<Option<Bytes>> {
        match fs::read(self.path(id, image)) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
