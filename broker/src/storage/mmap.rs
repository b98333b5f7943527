//! Memory maps: the only module of the broker that uses `unsafe`.
//!
//! Why the maps below are sound: `memmap2` is unsafe because another writer could change
//! or shrink the file under the map. Fjord holds these rules, written down in
//! `docs/design/on-disk-format.md`:
//! - a `.log` file is mapped only once it is sealed, and a sealed `.log` is never written
//!   or shrunk again: truncation and compaction write a new file and rename it over the old
//!   name, so the mapped inode keeps its bytes until the last map is dropped;
//! - an index file is mapped by exactly one owner (its `Segment`), which unmaps before it
//!   resizes the file (`set_len`) and maps again afterwards;
//! - the data directory belongs to one broker process (other processes must not write it).
#![allow(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// A read-only map of a whole file, shareable: [`bytes::Bytes`] slices keep it alive.
#[derive(Clone, Debug)]
pub struct ReadMap {
    map: Option<Arc<Mmap>>,
}

impl ReadMap {
    /// Maps the first `len` bytes of `file` read-only. `len == 0` maps nothing.
    pub fn open(file: &File, len: usize) -> std::io::Result<ReadMap> {
        if len == 0 {
            return Ok(ReadMap { map: None });
        }
        // SAFETY: the file is a sealed segment, an index owned by the caller, or a file
        // being recovered before anyone else can see it; none is written or shrunk while
        // this map lives (module docs).
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        Ok(ReadMap {
            map: Some(Arc::new(map)),
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().map(|m| &m[..]).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A zero-copy slice that keeps the map alive.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> bytes::Bytes {
        match &self.map {
            Some(map) => bytes::Bytes::from_owner(SharedMap(map.clone())).slice(range),
            None => {
                assert!(range.is_empty(), "slice {range:?} of an empty map");
                bytes::Bytes::new()
            }
        }
    }

    /// Whether two maps are the same mapping (used to detect a replaced segment).
    pub fn same_as(&self, other: &ReadMap) -> bool {
        match (&self.map, &other.map) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0[..]
    }
}

/// A writable map of a whole file, with one owner.
#[derive(Debug)]
pub struct WriteMap {
    map: Option<MmapMut>,
}

impl WriteMap {
    pub fn open(file: &File, len: usize) -> std::io::Result<WriteMap> {
        if len == 0 {
            return Ok(WriteMap { map: None });
        }
        // SAFETY: index files are mapped writable only by their one owning `Segment`,
        // which holds `&mut self` for every write and drops this map before any `set_len`.
        let map = unsafe { MmapOptions::new().len(len).map_mut(file)? };
        Ok(WriteMap { map: Some(map) })
    }

    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }

    pub fn flush(&self) -> std::io::Result<()> {
        match &self.map {
            Some(map) => map.flush(),
            None => Ok(()),
        }
    }
}
