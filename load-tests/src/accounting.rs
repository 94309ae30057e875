//! Loss and duplicate accounting: what each subscriber should have received
//! against what it did receive.
//!
//! Publish `seq` goes to channel `seq % channels` (round-robin), so a
//! subscriber of channel `c` only ever expects seqs congruent to `c`, and
//! `seq / channels` is a dense index into a per-connection bit set: a few
//! hundred bytes per connection, no hashing on the hot path.
//!
//! Only publishes the HTTP API acknowledged are expected. A publish that
//! failed on our side (timeout) may still have been delivered; such a delivery
//! is counted as `unexpected`, never as `delivered`, so that
//! `delivered + lost == expected` always holds.

/// Where one publish sits in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpace {
    /// Number of channels the publishes rotate over.
    pub channels: u64,
    /// Number of publishes in the whole run (warmup included).
    pub total: u64,
    /// Publishes below this seq are warmup: accounted, but not in latency.
    pub warmup: u64,
}

impl SeqSpace {
    pub fn channel_of(&self, seq: u64) -> u64 {
        seq % self.channels
    }

    pub fn is_measured(&self, seq: u64) -> bool {
        seq >= self.warmup
    }
}

/// What happened when a connection recorded a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The first copy of a publish on this connection.
    First,
    /// A copy this connection had already received.
    Duplicate,
    /// A seq that cannot belong to this connection's channel or run.
    Foreign,
}

/// The seqs one connection received on its channel.
#[derive(Debug, Clone)]
pub struct ReceivedSeqs {
    channel: u64,
    space: SeqSpace,
    bits: Vec<u64>,
    unique: u64,
    duplicates: u64,
    foreign: u64,
}

impl ReceivedSeqs {
    pub fn new(channel: u64, space: SeqSpace) -> Self {
        let per_channel = space.total.div_ceil(space.channels.max(1));
        let words = usize::try_from(per_channel.div_ceil(64)).unwrap_or(0);
        Self {
            channel,
            space,
            bits: vec![0; words],
            unique: 0,
            duplicates: 0,
            foreign: 0,
        }
    }

    pub fn channel(&self) -> u64 {
        self.channel
    }

    pub fn record(&mut self, seq: u64) -> Receipt {
        if seq >= self.space.total || self.space.channel_of(seq) != self.channel {
            self.foreign += 1;
            return Receipt::Foreign;
        }
        let (word, mask) = self.slot(seq);
        if self.bits[word] & mask != 0 {
            self.duplicates += 1;
            Receipt::Duplicate
        } else {
            self.bits[word] |= mask;
            self.unique += 1;
            Receipt::First
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        if seq >= self.space.total || self.space.channel_of(seq) != self.channel {
            return false;
        }
        let (word, mask) = self.slot(seq);
        self.bits[word] & mask != 0
    }

    /// Distinct publishes of this channel received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let index = seq / self.space.channels;
        // The index is below total / channels, which sized `bits`.
        ((index / 64) as usize, 1u64 << (index % 64))
    }
}

/// The publishes the HTTP API acknowledged, grouped by channel.
#[derive(Debug, Clone, Default)]
pub struct AckedSeqs {
    by_channel: Vec<Vec<u64>>,
}

impl AckedSeqs {
    pub fn new(channels: u64) -> Self {
        Self {
            by_channel: vec![Vec::new(); usize::try_from(channels).unwrap_or(0)],
        }
    }

    pub fn ack(&mut self, channel: u64, seq: u64) {
        if let Some(list) = self.by_channel.get_mut(channel as usize) {
            list.push(seq);
        }
    }

    /// Folds another partial list (one publisher worker's) into this one.
    pub fn merge(&mut self, other: AckedSeqs) {
        for (mine, theirs) in self.by_channel.iter_mut().zip(other.by_channel) {
            mine.extend(theirs);
        }
    }

    pub fn total(&self) -> u64 {
        self.by_channel.iter().map(|l| l.len() as u64).sum()
    }

    pub fn channel(&self, channel: u64) -> &[u64] {
        self.by_channel
            .get(channel as usize)
            .map_or(&[], Vec::as_slice)
    }
}

/// The outcome over all subscribed connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Acknowledged publishes of a channel times its subscribers, summed.
    pub expected: u64,
    /// Expected deliveries that arrived (first copies only).
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Extra copies of a publish on the same connection.
    pub duplicated: u64,
    /// Deliveries of unacknowledged publishes, or of another channel's.
    pub unexpected: u64,
    /// `delivered` restricted to the measured (post-warmup) publishes.
    pub delivered_measured: u64,
}

/// Counts expected, delivered, lost and duplicated deliveries. `receivers`
/// are the connections that completed their subscription; one that was
/// disconnected later still expected everything published to its channel.
pub fn tally<'a>(
    acked: &AckedSeqs,
    space: SeqSpace,
    receivers: impl IntoIterator<Item = &'a ReceivedSeqs>,
) -> Tally {
    let mut t = Tally::default();
    for received in receivers {
        let mut delivered_here = 0;
        for &seq in acked.channel(received.channel()) {
            t.expected += 1;
            if received.contains(seq) {
                delivered_here += 1;
                if space.is_measured(seq) {
                    t.delivered_measured += 1;
                }
            } else {
                t.lost += 1;
            }
        }
        t.delivered += delivered_here;
        t.duplicated += received.duplicates;
        t.unexpected += received.unique() - delivered_here + received.foreign;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: SeqSpace = SeqSpace {
        channels: 3,
        total: 300,
        warmup: 30,
    };

    fn acked_all() -> AckedSeqs {
        let mut acked = AckedSeqs::new(SPACE.channels);
        for seq in 0..SPACE.total {
            acked.ack(SPACE.channel_of(seq), seq);
        }
        acked
    }

    fn receiver_with(channel: u64, seqs: impl IntoIterator<Item = u64>) -> ReceivedSeqs {
        let mut r = ReceivedSeqs::new(channel, SPACE);
        for seq in seqs {
            r.record(seq);
        }
        r
    }

    fn all_of(channel: u64) -> impl Iterator<Item = u64> {
        (0..SPACE.total).filter(move |s| s % SPACE.channels == channel)
    }

    #[test]
    fn every_acknowledged_publish_received_once_means_no_loss() {
        let receivers: Vec<_> = (0..6)
            .map(|k| receiver_with(k % 3, all_of(k % 3)))
            .collect();
        let t = tally(&acked_all(), SPACE, &receivers);
        assert_eq!(t.expected, 600, "300 publishes x 2 subscribers per channel");
        assert_eq!(t.delivered, 600);
        assert_eq!((t.lost, t.duplicated, t.unexpected), (0, 0, 0));
        assert_eq!(t.delivered_measured, 600 - 2 * 30);
    }

    #[test]
    fn a_missing_publish_is_lost_only_for_the_subscriber_that_missed_it() {
        let complete = receiver_with(1, all_of(1));
        let missing_two = receiver_with(1, all_of(1).filter(|s| *s != 4 && *s != 7));
        let t = tally(&acked_all(), SPACE, [&complete, &missing_two]);
        assert_eq!(t.expected, 200);
        assert_eq!(t.lost, 2);
        assert_eq!(t.delivered + t.lost, t.expected);
    }

    #[test]
    fn a_second_copy_is_a_duplicate_and_not_a_second_delivery() {
        let mut r = receiver_with(2, all_of(2));
        assert_eq!(r.record(5), Receipt::Duplicate);
        assert_eq!(r.record(5), Receipt::Duplicate);
        let t = tally(&acked_all(), SPACE, [&r]);
        assert_eq!((t.delivered, t.duplicated, t.lost), (100, 2, 0));
    }

    #[test]
    fn a_publish_the_api_did_not_acknowledge_is_not_expected() {
        let mut acked = AckedSeqs::new(SPACE.channels);
        for seq in all_of(0).filter(|s| *s != 9) {
            acked.ack(0, seq);
        }
        // Seq 9 timed out on our side but reached the subscriber anyway.
        let r = receiver_with(0, all_of(0));
        let t = tally(&acked, SPACE, [&r]);
        assert_eq!(
            (t.expected, t.delivered, t.lost, t.unexpected),
            (99, 99, 0, 1)
        );
    }

    #[test]
    fn a_publish_of_another_channel_is_foreign() {
        let mut r = ReceivedSeqs::new(0, SPACE);
        assert_eq!(r.record(1), Receipt::Foreign);
        assert_eq!(r.record(SPACE.total), Receipt::Foreign);
        assert!(!r.contains(1));
        let t = tally(&AckedSeqs::new(SPACE.channels), SPACE, [&r]);
        assert_eq!(t.unexpected, 2);
    }

    #[test]
    fn a_channel_without_subscribers_expects_nothing() {
        let r = receiver_with(0, all_of(0));
        let t = tally(&acked_all(), SPACE, [&r]);
        assert_eq!(t.expected, 100, "channels 1 and 2 have no subscriber");
    }

    #[test]
    fn merged_worker_acks_keep_every_seq() {
        let mut a = AckedSeqs::new(2);
        let mut b = AckedSeqs::new(2);
        a.ack(0, 0);
        b.ack(1, 1);
        b.ack(0, 2);
        a.merge(b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.channel(0), &[0, 2]);
    }

    #[test]
    fn the_bit_set_holds_the_last_seq_of_an_uneven_run() {
        let space = SeqSpace {
            channels: 7,
            total: 1000,
            warmup: 0,
        };
        let mut r = ReceivedSeqs::new(999 % 7, space);
        assert_eq!(r.record(999), Receipt::First);
        assert!(r.contains(999));
    }
}
