//! The glibc malloc settings the `fjord-broker` binary runs with.
//!
//! A produce stream's requests arrive as HTTP/2 frames of up to 1 MiB, and hyper, tonic
//! and the append each hold a buffer of about that size for a moment. With glibc's
//! defaults a worker thread's arena gave the free space at its top back to the kernel
//! (`heap_trim`, `madvise(MADV_DONTNEED)`) as soon as it passed the trim threshold, and
//! the next buffers faulted in fresh zeroed pages: 28,000-89,000 page faults per 500 MB
//! produced, a quarter of the broker's CPU in W1 (docs/BENCHMARKS.md, ninth sitting).
//! Fixed thresholds keep that memory for reuse: each arena keeps up to
//! [`TRIM_THRESHOLD`] free at its top (glibc makes at most eight arenas per core, so
//! 256 MiB on this project's two cores, and more on larger machines).
//!
//! glibc reads its settings from `GLIBC_TUNABLES` once, when the process starts, and
//! changing them later takes `mallopt`, an `unsafe` call this project keeps out of its
//! code. So the binary starts itself again with the variable set ([`tunables`] says
//! what it needs, and [`MARKER`] that it did so once). Settings an operator gives, in
//! `GLIBC_TUNABLES` or in glibc's older `MALLOC_MMAP_THRESHOLD_` and
//! `MALLOC_TRIM_THRESHOLD_`, win over these.

use std::ffi::OsString;

/// Allocations from this size up get their own mapping (glibc's dynamic threshold stops
/// at the same value, 32 MiB, but starts at 128 KiB).
pub const MMAP_THRESHOLD: u64 = 32 * 1024 * 1024;

/// Free space at the top of an arena that is kept rather than given back.
pub const TRIM_THRESHOLD: u64 = 16 * 1024 * 1024;

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";

/// Set on the new start: a process that has it never starts again, even where glibc
/// hides `GLIBC_TUNABLES` from the program (some versions do for privileged binaries).
pub const MARKER: &str = "FJORD_MALLOC_SETTINGS";

/// The value `GLIBC_TUNABLES` should have, given the environment (`env(name)` is a
/// variable's value): its value now with the broker's malloc settings added for the
/// ones the environment does not set. `None` when there is nothing to add (the operator
/// set them all) or when [`MARKER`] says this process was started again already.
pub fn tunables(env: impl Fn(&str) -> Option<OsString>) -> Option<OsString> {
    // (tunable, glibc's older variable for it, the broker's setting)
    let wanted = [
        (
            "glibc.malloc.mmap_threshold",
            "MALLOC_MMAP_THRESHOLD_",
            MMAP_THRESHOLD,
        ),
        (
            "glibc.malloc.trim_threshold",
            "MALLOC_TRIM_THRESHOLD_",
            TRIM_THRESHOLD,
        ),
    ];
    if env(MARKER).is_some() {
        return None;
    }
    let current = env(VARIABLE).unwrap_or_default();
    let text = current.to_string_lossy().into_owned();
    let set = |name: &str| {
        text.split(':')
            .any(|item| item.split_once('=').is_some_and(|(key, _)| key == name))
    };
    let mut value = current;
    let mut added = false;
    for (name, legacy, setting) in wanted {
        if set(name) || env(legacy).is_some() {
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

    /// With `GLIBC_TUNABLES` set to `current` and the other variables in `others`.
    fn with(current: Option<&str>, others: &[&str]) -> Option<String> {
        let env = |name: &str| match name {
            VARIABLE => current.map(OsString::from),
            name if others.contains(&name) => Some(OsString::from("1")),
            _ => None,
        };
        tunables(env).map(|v| v.into_string().unwrap())
    }

    fn of(current: Option<&str>) -> Option<String> {
        with(current, &[])
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
    fn the_older_variables_count_as_set() {
        assert_eq!(
            with(None, &["MALLOC_TRIM_THRESHOLD_"]).as_deref(),
            Some("glibc.malloc.mmap_threshold=33554432")
        );
        let both = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"];
        assert_eq!(with(Some("glibc.malloc.arena_max=2"), &both), None);
    }

    #[test]
    fn never_twice_even_when_the_variable_is_hidden() {
        assert_eq!(with(None, &[MARKER]), None);
        assert_eq!(with(Some("glibc.malloc.arena_max=2"), &[MARKER]), None);
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
