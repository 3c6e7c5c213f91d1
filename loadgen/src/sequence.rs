//! Per-sender sequence tracking: tells in-order, late (reordered) and duplicate arrivals
//! apart, and what never came.

use std::collections::BTreeSet;

/// Skipped sequence numbers remembered per sender, to tell late from duplicate. A sender
/// that loses more needs no exact list: what is not received is lost.
const MAX_GAPS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected, or a later one (the skipped ones become gaps).
    InOrder,
    /// One that was skipped earlier: it arrived out of order.
    Late,
    /// Already received.
    Duplicate,
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// The sequence number expected next.
    expected: u32,
    gaps: BTreeSet<u32>,
    /// Distinct messages received.
    received: u32,
}

impl Tracker {
    pub fn record(&mut self, sequence: u32) -> Arrival {
        if sequence == self.expected {
            // Nearly every arrival: the next one, nothing skipped.
            self.expected += 1;
            self.received += 1;
            return Arrival::InOrder;
        }
        let arrival = if sequence < self.expected {
            if !self.gaps.remove(&sequence) {
                return Arrival::Duplicate;
            }
            Arrival::Late
        } else {
            let room = MAX_GAPS.saturating_sub(self.gaps.len()) as u32;
            let skipped_until = sequence.min(self.expected.saturating_add(room));
            self.gaps.extend(self.expected..skipped_until);
            self.expected = sequence + 1;
            Arrival::InOrder
        };
        self.received += 1;
        arrival
    }

    pub fn received(&self) -> u32 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_duplicate_and_missing_are_told_apart() {
        let mut t = Tracker::default();
        assert_eq!(t.record(0), Arrival::InOrder);
        assert_eq!(t.record(2), Arrival::InOrder);
        assert_eq!(t.record(1), Arrival::Late);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.record(5), Arrival::InOrder);
        assert_eq!(t.received(), 4);
    }
}
