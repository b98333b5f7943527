//! The glibc malloc settings the `fjord-broker` binary runs with.
//!
//! A produce stream's requests arrive as HTTP/2 frames of up to 1 MiB, and hyper, tonic
//! and the append each hold a buffer of about that size for a moment. With glibc's
//! defaults a worker thread's arena gave the free space at its top back to the kernel
//! (`heap_trim`, `madvise(MADV_DONTNEED)`) as soon as it passed the trim threshold, and
//! the next buffers faulted in fresh zeroed pages: 40,000-90,000 page faults per 500 MB
//! produced, a quarter of the broker's CPU in W1 (docs/BENCHMARKS.md, ninth sitting).
//! Fixed thresholds keep that memory for reuse: at most [`TRIM_THRESHOLD`] of free space
//! per arena (glibc keeps at most eight arenas per core).
//!
//! glibc reads its settings from `GLIBC_TUNABLES` once, when the process starts, and
//! changing them later takes `mallopt`, an `unsafe` call this project keeps out of its
//! code. So the binary starts itself again with the variable set
//! ([`tunables`] says what it needs); settings an operator gives in `GLIBC_TUNABLES`
//! win over these.

use std::ffi::{OsStr, OsString};

/// Allocations from this size up get their own mapping (glibc's dynamic threshold stops
/// at the same value, 32 MiB, but starts at 128 KiB).
pub const MMAP_THRESHOLD: u64 = 32 * 1024 * 1024;

/// Free space at the top of an arena that is kept rather than given back.
pub const TRIM_THRESHOLD: u64 = 16 * 1024 * 1024;

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";

/// The value `GLIBC_TUNABLES` should have, given its value now: `current` with the
/// broker's malloc settings added for the ones it does not set. `None` when it sets them
/// all already (the operator did, or this process was started again with them).
pub fn tunables(current: Option<&OsStr>) -> Option<OsString> {
    let wanted = [
        ("glibc.malloc.mmap_threshold", MMAP_THRESHOLD),
        ("glibc.malloc.trim_threshold", TRIM_THRESHOLD),
    ];
    let current = current.unwrap_or_default();
    let text = current.to_string_lossy();
    let set = |name: &str| {
        text.split(':')
            .any(|item| item.split_once('=').is_some_and(|(key, _)| key == name))
    };
    let mut value = current.to_os_string();
    let mut added = false;
    for (name, setting) in wanted {
        if set(name) {
            continue;
        }
        if !value.is_empty() {
            value.push(":");
        }
        value.push(format!("{name}={setting}"));
        added = true;
    }
    added.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=16777216";

    fn of(current: Option<&str>) -> Option<String> {
        tunables(current.map(OsStr::new)).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn adds_the_settings_to_an_empty_or_unrelated_value() {
        assert_eq!(of(None).as_deref(), Some(OURS));
        assert_eq!(of(Some("")).as_deref(), Some(OURS));
        assert_eq!(
            of(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{OURS}"))
        );
    }

    #[test]
    fn keeps_what_the_operator_set_and_adds_only_the_rest() {
        assert_eq!(
            of(Some("glibc.malloc.trim_threshold=1000")).as_deref(),
            Some("glibc.malloc.trim_threshold=1000:glibc.malloc.mmap_threshold=33554432")
        );
        // A key that merely starts like ours is another key.
        assert_eq!(
            of(Some("glibc.malloc.mmap_threshold_x=1")),
            Some(format!("glibc.malloc.mmap_threshold_x=1:{OURS}"))
        );
    }

    #[test]
    fn nothing_to_do_once_both_are_set() {
        // After the restart with our value, and when the operator set both.
        assert_eq!(of(Some(OURS)), None);
        assert_eq!(
            of(Some(
                "glibc.malloc.trim_threshold=1:glibc.cpu.x86_rep_movsb_threshold=2048:\
                 glibc.malloc.mmap_threshold=2"
            )),
            None
        );
    }
}
