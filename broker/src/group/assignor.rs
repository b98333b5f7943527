//! Server-side assignors (KIP-848): given the members' subscriptions and the topics'
//! partition counts, the target assignment. Pure and deterministic: the same input always
//! gives the same output, whatever the order members joined in.

use std::collections::{BTreeMap, BTreeSet};

pub use fjord_protocol::TopicPartition;

/// Which assignor a group uses (`group.remote.assignor` in KIP-848 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to the members subscribed to it, in
    /// member-id order (Kafka's `range`): co-partitioned topics line up.
    #[default]
    Range,
    /// All subscribed partitions spread evenly over the members, round robin over the
    /// members that can take each one (Kafka's `uniform`).
    Uniform,
}

impl Assignor {
    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "uniform" => Some(Assignor::Uniform),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::Uniform => "uniform",
        }
    }
}

pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// The target assignment. `subscriptions`: member id -> subscribed topics; `partitions`:
/// topic -> partition count (topics that do not exist are skipped). Every member gets an
/// entry, possibly empty.
pub fn assign(
    assignor: Assignor,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    let mut out: Assignment = subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    match assignor {
        Assignor::Range => {
            for (topic, &count) in partitions {
                let members: Vec<&String> = subscriptions
                    .iter()
                    .filter(|(_, t)| t.contains(topic))
                    .map(|(m, _)| m)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let n = members.len() as u32;
                let (base, extra) = (count / n, count % n);
                let mut next = 0;
                for (i, member) in members.iter().enumerate() {
                    let take = base + u32::from((i as u32) < extra);
                    let set = out.get_mut(*member).expect("member present");
                    for p in next..next + take {
                        set.insert(TopicPartition::new(topic, p));
                    }
                    next += take;
                }
            }
        }
        Assignor::Uniform => {
            // Each partition to the eligible member holding the fewest so far (ties: the
            // lowest member id): balanced, and deterministic.
            for (topic, &count) in partitions {
                for p in 0..count {
                    let best = subscriptions
                        .iter()
                        .filter(|(_, t)| t.contains(topic))
                        .map(|(m, _)| m)
                        .min_by_key(|m| (out[*m].len(), (*m).clone()));
                    if let Some(member) = best {
                        out.get_mut(member)
                            .expect("member present")
                            .insert(TopicPartition::new(topic, p));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        entries
            .iter()
            .map(|(m, t)| (m.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_contiguous_ranges_per_topic() {
        let s = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let parts = BTreeMap::from([("t".to_string(), 7)]);
        let a = assign(Assignor::Range, &s, &parts);
        let ps = |m: &str| a[m].iter().map(|tp| tp.partition).collect::<Vec<_>>();
        assert_eq!(ps("a"), [0, 1, 2]);
        assert_eq!(ps("b"), [3, 4]);
        assert_eq!(ps("c"), [5, 6]);
    }

    #[test]
    fn uniform_balances_across_topics_and_respects_subscriptions() {
        let s = subs(&[("a", &["x", "y"]), ("b", &["y"])]);
        let parts = BTreeMap::from([("x".to_string(), 2), ("y".to_string(), 4)]);
        let a = assign(Assignor::Uniform, &s, &parts);
        assert_eq!(a["a"].len(), 3);
        assert_eq!(a["b"].len(), 3);
        assert!(a["b"].iter().all(|tp| tp.topic == "y"));
        let all: BTreeSet<_> = a.values().flatten().collect();
        assert_eq!(all.len(), 6, "every partition once");
    }

    #[test]
    fn unknown_topics_and_unsubscribed_members_get_nothing() {
        let s = subs(&[("a", &["nope"]), ("b", &[])]);
        let parts = BTreeMap::from([("t".to_string(), 3)]);
        for assignor in [Assignor::Range, Assignor::Uniform] {
            let a = assign(assignor, &s, &parts);
            assert!(a["a"].is_empty() && a["b"].is_empty());
        }
    }
}
