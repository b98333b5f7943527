//! Retention: which sealed segments to delete. [`plan`] is pure (no I/O, no clock); the
//! executor is `Log::apply_retention`.
//!
//! Kafka's three rules, applied from the oldest segment and never to the active one:
//! - a segment wholly below the log start offset (after delete-records) goes;
//! - `retention.ms`: a segment whose newest record is older than `now - retention.ms` goes;
//! - `retention.bytes`: the oldest segments go while the log stays at or above the limit
//!   without them.

/// What the planner needs to know of each segment, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: i64,
    /// Offset after the segment's last batch.
    pub next_offset: i64,
    pub size_bytes: u64,
    /// Newest timestamp in the segment (-1 when unknown or empty).
    pub max_timestamp: i64,
    pub sealed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
    /// `cleanup.policy` includes `delete` (time and size rules apply only then).
    pub delete_enabled: bool,
}

/// Why a segment is deleted (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    BelowLogStart,
    Time,
    Size,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPlan {
    /// Base offsets of the segments to delete, with the reason, oldest first.
    pub delete: Vec<(i64, Reason)>,
    /// The log start offset after the deletion, if it moves.
    pub new_log_start_offset: Option<i64>,
}

/// Where the log stands when retention plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub log_start_offset: i64,
    /// Segments are deleted only when wholly below it (as Kafka: never unreplicated data).
    pub high_watermark: i64,
    pub now_ms: i64,
}

/// Decides what retention deletes. `segments` is ordered by base offset.
pub fn plan(
    segments: &[SegmentSummary],
    at: LogPosition,
    policy: &RetentionPolicy,
) -> RetentionPlan {
    let LogPosition {
        log_start_offset,
        high_watermark,
        now_ms,
    } = at;
    let mut result = RetentionPlan::default();
    let mut total: u64 = segments.iter().map(|s| s.size_bytes).sum();
    for (i, segment) in segments.iter().enumerate() {
        // The active segment and everything after it stay.
        if !segment.sealed || i + 1 == segments.len() {
            break;
        }
        let next_base = segments[i + 1].base_offset;
        let reason = if next_base > high_watermark {
            None
        } else if next_base <= log_start_offset {
            Some(Reason::BelowLogStart)
        } else if policy.delete_enabled
            && policy.retention_ms >= 0
            && segment.max_timestamp < now_ms.saturating_sub(policy.retention_ms)
        {
            Some(Reason::Time)
        } else if policy.delete_enabled
            && policy.retention_bytes >= 0
            && total - segment.size_bytes >= policy.retention_bytes as u64
        {
            Some(Reason::Size)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                result.delete.push((segment.base_offset, reason));
                total -= segment.size_bytes;
                result.new_log_start_offset = Some(next_base.max(log_start_offset));
            }
            None => break,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, next: i64, size: u64, ts: i64, sealed: bool) -> SegmentSummary {
        SegmentSummary {
            base_offset: base,
            next_offset: next,
            size_bytes: size,
            max_timestamp: ts,
            sealed,
        }
    }

    fn at(log_start_offset: i64, now_ms: i64) -> LogPosition {
        LogPosition {
            log_start_offset,
            high_watermark: i64::MAX,
            now_ms,
        }
    }

    #[test]
    fn never_deletes_above_the_high_watermark() {
        let segments = [
            seg(0, 10, 100, 0, true),
            seg(10, 20, 100, 0, true),
            seg(20, 25, 100, 0, false),
        ];
        let policy = RetentionPolicy {
            retention_ms: 1,
            ..KEEP
        };
        let position = LogPosition {
            log_start_offset: 0,
            high_watermark: 15,
            now_ms: 1_000,
        };
        assert_eq!(
            plan(&segments, position, &policy).delete,
            vec![(0, Reason::Time)]
        );
    }

    const KEEP: RetentionPolicy = RetentionPolicy {
        retention_ms: -1,
        retention_bytes: -1,
        delete_enabled: true,
    };

    #[test]
    fn time_rule_deletes_old_sealed_segments_only() {
        let segments = [
            seg(0, 10, 100, 1_000, true),
            seg(10, 20, 100, 5_000, true),
            seg(20, 25, 50, 1, false),
        ];
        let policy = RetentionPolicy {
            retention_ms: 2_000,
            ..KEEP
        };
        let plan = plan(&segments, at(0, 6_000), &policy);
        assert_eq!(plan.delete, vec![(0, Reason::Time)]);
        assert_eq!(plan.new_log_start_offset, Some(10));
    }

    #[test]
    fn size_rule_keeps_the_log_at_or_above_the_limit() {
        let segments = [
            seg(0, 10, 100, 0, true),
            seg(10, 20, 100, 0, true),
            seg(20, 25, 100, 0, false),
        ];
        let policy = RetentionPolicy {
            retention_bytes: 150,
            ..KEEP
        };
        let plan = plan(&segments, at(0, 0), &policy);
        assert_eq!(plan.delete, vec![(0, Reason::Size)]);
        let policy = RetentionPolicy {
            retention_bytes: 100,
            ..KEEP
        };
        assert_eq!(super::plan(&segments, at(0, 0), &policy).delete.len(), 2);
    }

    #[test]
    fn log_start_rule_applies_without_delete_policy() {
        let segments = [
            seg(0, 10, 100, 0, true),
            seg(10, 20, 100, 0, true),
            seg(20, 25, 100, 0, false),
        ];
        let policy = RetentionPolicy {
            retention_ms: 1,
            delete_enabled: false,
            ..KEEP
        };
        let plan = plan(&segments, at(15, 1_000_000), &policy);
        assert_eq!(plan.delete, vec![(0, Reason::BelowLogStart)]);
        assert_eq!(plan.new_log_start_offset, Some(15));
    }

    #[test]
    fn never_deletes_the_active_segment() {
        let segments = [seg(0, 10, 100, 0, false)];
        let policy = RetentionPolicy {
            retention_ms: 0,
            retention_bytes: 0,
            delete_enabled: true,
        };
        assert!(plan(&segments, at(0, 1_000_000), &policy).delete.is_empty());
    }
}
