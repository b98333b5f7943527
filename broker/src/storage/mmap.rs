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

    /// A zero-copy slice that keeps the map alive. Once its last `Bytes` is dropped, the
    /// pages it covers leave this process's page tables (see [`MapSlice`]).
    pub fn bytes(&self, range: std::ops::Range<usize>) -> bytes::Bytes {
        match &self.map {
            Some(map) => {
                assert!(
                    range.start <= range.end && range.end <= map.len(),
                    "{range:?}"
                );
                bytes::Bytes::from_owner(MapSlice {
                    map: map.clone(),
                    range,
                })
            }
            None => {
                assert!(range.is_empty(), "slice {range:?} of an empty map");
                bytes::Bytes::new()
            }
        }
    }

    /// Drops `range` from this process's page tables, as a finished read slice does
    /// ([`MapSlice`]); the page cache keeps the pages (until it is asked to drop them).
    pub fn unmap_pages(&self, range: std::ops::Range<usize>) {
        if let Some(map) = &self.map {
            drop_page_tables(map, range.start, range.end.min(map.len()));
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

/// How far beside a slice its reader's page faults may have mapped pages: the header
/// lookups before and after it, widened by the kernel's fault-around (64 KiB) and by
/// large page-cache folios, which are mapped whole (up to 2 MiB). With a 64 KiB margin,
/// W6 still left 6-9 MB of each segment it read mapped.
const FAULT_AROUND: usize = 2 * 1024 * 1024;

/// A range of a map handed out as `Bytes`.
///
/// A page of a file map that a read touched stays mapped, and counted in the broker's
/// RSS, for as long as the map lives (a sealed segment's whole life): a consumer reading
/// a backlog grew the RSS by every byte it read (up to 1.3 GB in W6). When the last
/// `Bytes` of a slice goes, its pages are dropped from the page tables
/// (`MADV_DONTNEED`), with a margin on each side ([`FAULT_AROUND`]), where the reader
/// looked up the slice's first batch and the header after its last; the page cache
/// keeps them, and the next read maps them again with a minor fault.
struct MapSlice {
    map: Arc<Mmap>,
    range: std::ops::Range<usize>,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

impl Drop for MapSlice {
    fn drop(&mut self) {
        if self.range.is_empty() {
            return;
        }
        let start = (self.range.start / FAULT_AROUND).saturating_sub(1) * FAULT_AROUND;
        let end = (self.range.end.div_ceil(FAULT_AROUND) + 1) * FAULT_AROUND;
        drop_page_tables(&self.map, start, end.min(self.map.len()));
    }
}

/// `madvise(MADV_DONTNEED)` of `start..end` of a read-only map (nothing if empty).
fn drop_page_tables(map: &Mmap, start: usize, end: usize) {
    if start >= end {
        return;
    }
    // SAFETY: the map is a read-only, shared map of a file that is not written while it
    // lives (module docs). On such a map MADV_DONTNEED only drops page-table entries: a
    // later access, also through other slices of the same map still in use, faults the
    // same bytes in again from the page cache, as after the kernel reclaimed clean pages
    // on its own. No byte any reader sees changes.
    let dropped = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
    if let Err(e) = dropped {
        tracing::debug!(error = %e, "madvise(DONTNEED) of a read map failed");
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
        // No read-around on a fault: an active index is a sparse preallocated file, and
        // the kernel read up to `read_ahead_kb` (8 MiB on this project's VM) of holes
        // into fresh zeroed pages at its first entry, 3-5 ms an index with the log's
        // lock held, so the first appends of every new segment waited ~10 ms.
        if let Err(e) = map.advise(memmap2::Advice::Random) {
            tracing::debug!(error = %e, "madvise(RANDOM) of an index failed");
        }
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
