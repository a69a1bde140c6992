//! A command's priority class. Every hop keeps one queue per class (a lane) and serves
//! urgent before normal before bulk, so an urgent command overtakes a routine backlog.

use serde::{Deserialize, Serialize};

/// A command's priority class. On the wire `"urgent"`, `"normal"` or `"bulk"`; the numbers
/// 0–9 of the earlier scale are read too (see the `Deserialize` impl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Ahead of everything else (a deteriorating patient, a recall).
    Urgent,
    /// The default.
    #[default]
    Normal,
    /// Behind everything else (statistics, bulk uploads).
    Bulk,
}

/// Number of priority classes, hence lanes (queues) per destination.
pub const LANES: usize = 3;

crate::names::wire_names!(Priority, UnknownPriority, "priority" {
    Urgent => "urgent",
    Normal => "normal",
    Bulk => "bulk",
});

impl Priority {
    /// Index of the class's lane, 0 = urgent (`ALL` is most urgent first: the order in which
    /// lanes are served).
    pub fn lane(self) -> usize {
        self as usize
    }
}

impl<'de> Deserialize<'de> for Priority {
    /// Accepts the class names and, for older clients, the numbers 0–9 of the earlier scale
    /// (0 = routine, 9 = most urgent): 0–6 normal, 7–9 urgent. Bulk has no number, so nothing
    /// that was routine before becomes bulk now. A visitor, not an untagged enum: every hop
    /// reads a priority per envelope, and an untagged enum buffers the value first.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Priority, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Priority;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("urgent, normal or bulk (or 0..=9)")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Priority, E> {
                name.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Priority, E> {
                match n {
                    0..=6 => Ok(Priority::Normal),
                    7..=9 => Ok(Priority::Urgent),
                    n => Err(E::custom(format!(
                        "priority {n} out of range: use urgent, normal or bulk (or 0..=9)"
                    ))),
                }
            }
        }

        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_lanes() {
        let p = |j: &str| serde_json::from_str::<Priority>(j).map_err(|e| e.to_string());
        assert_eq!(p(r#""urgent""#), Ok(Priority::Urgent));
        assert_eq!(p(r#""bulk""#), Ok(Priority::Bulk));
        assert_eq!(p("0"), Ok(Priority::Normal), "the old routine stays normal");
        assert_eq!(p("6"), Ok(Priority::Normal));
        assert_eq!(p("9"), Ok(Priority::Urgent));
        assert!(p(r#""high""#)
            .unwrap_err()
            .starts_with("unknown priority `high`: use urgent, normal or bulk"));
        assert!(p("10").unwrap_err().starts_with("priority 10 out of range"));
        assert!(p("-1").is_err() && p("true").is_err());
        for q in Priority::ALL {
            assert_eq!(Priority::ALL[q.lane()], q);
            assert_eq!(q.to_string().parse::<Priority>(), Ok(q));
            assert_eq!(serde_json::to_string(&q).unwrap(), format!("\"{q}\""));
        }
        assert!(Priority::Urgent < Priority::Normal && Priority::Normal < Priority::Bulk);
    }
}
