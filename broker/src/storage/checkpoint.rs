//! Fjord's checkpoint files: a few `key value` lines, then a CRC-32 (crc32fast) line.
//!
//! ```text
//! fjord-checkpoint 1
//! log_start_offset 0
//! recovery_point 1234
//! crc32 8c2b4f1a
//! ```
//! Written to `NAME.tmp`, fsync'd, renamed over `NAME`, and the directory fsync'd, so a
//! reader sees the old file or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::{IoContext, Result, StorageError};

const HEADER: &str = "fjord-checkpoint 1";

/// Writes `entries` atomically to `path`.
pub fn write(path: &Path, entries: &[(&str, String)]) -> Result<()> {
    let mut body = String::from(HEADER);
    body.push('\n');
    for (key, value) in entries {
        body.push_str(key);
        body.push(' ');
        body.push_str(value);
        body.push('\n');
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("crc32 {crc:08x}\n"));
    write_atomically(path, body.as_bytes())
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync'd, renamed into place,
/// and the directory fsync'd.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at(&tmp)?;
        file.write_all(bytes).at(&tmp)?;
        file.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads a checkpoint; `Ok(None)` when the file does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<(String, String)>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let corrupt = |reason: &str| StorageError::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
    let crc_at = text
        .rfind("crc32 ")
        .ok_or_else(|| corrupt("no crc32 line"))?;
    let (body, crc_line) = text.split_at(crc_at);
    let stored = u32::from_str_radix(crc_line.trim_start_matches("crc32 ").trim(), 16)
        .map_err(|e| corrupt(&format!("bad crc32 line: {e}")))?;
    if crc32fast::hash(body.as_bytes()) != stored {
        return Err(corrupt("crc32 mismatch"));
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(corrupt("unknown header"));
    }
    let mut entries = Vec::new();
    for line in lines {
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| corrupt("line without value"))?;
        entries.push((key.to_owned(), value.to_owned()));
    }
    Ok(Some(entries))
}

/// fsyncs a directory so that file creations and renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.checkpoint");
        assert!(read(&path).unwrap().is_none());
        write(&path, &[("a", "1".into()), ("b", "22".into())]).unwrap();
        let entries = read(&path).unwrap().unwrap();
        assert_eq!(
            entries,
            vec![("a".into(), "1".into()), ("b".into(), "22".into())]
        );
        let text = fs::read_to_string(&path).unwrap().replace("22", "23");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            read(&path),
            Err(StorageError::CorruptCheckpoint { .. })
        ));
    }
}
