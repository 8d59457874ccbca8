//! N, R and W: cluster defaults and per-request overrides.

use crate::Error;

/// Replication settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Replicas per key.
    pub n: usize,
    /// Replies a read waits for.
    pub r: usize,
    /// Acknowledgements a write waits for.
    pub w: usize,
}

impl Quorum {
    /// Checks `1 <= r, w <= n`.
    pub fn new(n: usize, r: usize, w: usize) -> Result<Quorum, String> {
        if n == 0 {
            return Err("replicas (N) must be at least 1".into());
        }
        for (name, value) in [("read quorum (R)", r), ("write quorum (W)", w)] {
            if value == 0 || value > n {
                return Err(format!("{name} must be 1 to N = {n}, got {value}"));
            }
        }
        Ok(Quorum { n, r, w })
    }

    /// Parses a per-request `r` or `w`: `1..=N`, `one`, `quorum` (N/2 + 1) or `all`.
    pub fn parse(&self, name: &str, text: &str) -> Result<usize, Error> {
        let value = match text.to_ascii_lowercase().as_str() {
            "one" => 1,
            "quorum" => self.n / 2 + 1,
            "all" => self.n,
            number => number.parse::<usize>().map_err(|_| {
                Error::BadQuorum(format!("{name} must be 1 to {}, one, quorum or all; got {number:?}", self.n))
            })?,
        };
        if value == 0 || value > self.n {
            return Err(Error::BadQuorum(format!("{name} must be 1 to N = {}; got {value}", self.n)));
        }
        Ok(value)
    }
}

/// What one request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// This many distinct nodes (with sloppy quorum, fallbacks holding hints count for writes).
    Count(usize),
    /// A majority of the key's replicas in the coordinator's zone (`local_quorum`): the answer
    /// never waits on another data center. Only the key's own replicas count.
    LocalQuorum,
    /// A majority of the key's replicas in every zone they span (`each_quorum`). Only the key's
    /// own replicas count.
    EachQuorum,
}

impl Quorum {
    /// Parses a per-request `r`, `w` or `pw`: what [`Quorum::parse`] takes, or `local_quorum`
    /// and `each_quorum` where `zones` is true.
    pub fn parse_need(&self, name: &str, text: &str, zones: bool) -> Result<Need, Error> {
        match text.to_ascii_lowercase().as_str() {
            "local_quorum" if zones => Ok(Need::LocalQuorum),
            "each_quorum" if zones => Ok(Need::EachQuorum),
            _ => self.parse(name, text).map(Need::Count),
        }
    }
}

/// Who has answered a request, against what it needs.
#[derive(Debug, Clone)]
pub struct Tally {
    need: Need,
    /// Least answers from the key's own replicas (`pw`; 0 for reads).
    primary: usize,
    /// The key's replicas: id and zone, in preference order.
    replicas: Vec<(String, String)>,
    /// The coordinator's zone.
    local: String,
    /// Distinct nodes that answered, and whether each is one of the key's replicas.
    answered: Vec<(String, bool)>,
}

impl Tally {
    /// A tally for `replicas` (id, zone) needing `need`, at least `primary` of them among the
    /// key's replicas, the coordinator being in zone `local`. Errs with how many are required
    /// and how many could answer when the need can never be met by these replicas.
    pub fn new(
        need: Need,
        primary: usize,
        replicas: Vec<(String, String)>,
        local: &str,
    ) -> Result<Tally, (usize, usize)> {
        let tally = Tally { need, primary, replicas, local: local.to_owned(), answered: Vec::new() };
        let replicas = tally.replicas.len();
        let possible = primary <= replicas
            && match need {
                Need::Count(n) => n <= replicas,
                Need::LocalQuorum => tally.in_zone(&tally.local) > 0,
                Need::EachQuorum => replicas > 0,
            };
        if possible {
            Ok(tally)
        } else {
            Err((tally.required(), tally.replicas.len()))
        }
    }

    fn in_zone(&self, zone: &str) -> usize {
        self.replicas.iter().filter(|(_, z)| z == zone).count()
    }

    fn zone_of(&self, id: &str) -> Option<&str> {
        self.replicas.iter().find(|(r, _)| r == id).map(|(_, z)| z.as_str())
    }

    fn zones(&self) -> Vec<&str> {
        let mut zones: Vec<&str> = self.replicas.iter().map(|(_, z)| z.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        zones
    }

    /// Answers needed in all (for errors): W or R, or the sum of the zone majorities.
    pub fn required(&self) -> usize {
        let need = match self.need {
            Need::Count(n) => n,
            Need::LocalQuorum => self.in_zone(&self.local) / 2 + 1,
            Need::EachQuorum => self.zones().iter().map(|z| self.in_zone(z) / 2 + 1).sum(),
        };
        need.max(self.primary)
    }

    /// Records an answer from node `id`: `counts` says whether a fallback's answer counts
    /// (sloppy quorum); the key's own replicas always count. A node counts once.
    pub fn add(&mut self, id: &str, counts: bool) {
        let primary = self.zone_of(id).is_some();
        self.record(id, primary || counts, primary);
    }

    /// Records that node `id` keeps the write as a hint for a replica that did not take it:
    /// it counts toward W when `counts` (sloppy quorum, a fallback), and never as one of the
    /// key's own replicas, even if it is one (a hint is not its copy).
    pub fn add_hint(&mut self, id: &str, counts: bool) {
        self.record(id, counts, false);
    }

    fn record(&mut self, id: &str, counts: bool, primary: bool) {
        if !counts {
            return;
        }
        match self.answered.iter_mut().find(|(a, _)| a == id) {
            Some((_, was)) => *was |= primary,
            None => self.answered.push((id.to_owned(), primary)),
        }
    }

    /// Distinct nodes that answered and count.
    pub fn acks(&self) -> usize {
        self.answered.len()
    }

    /// Node ids that answered and count, in order.
    pub fn ids(&self) -> Vec<String> {
        self.answered.iter().map(|(id, _)| id.clone()).collect()
    }

    fn primaries_in(&self, zone: &str) -> usize {
        self.answered.iter().filter(|(id, primary)| *primary && self.zone_of(id) == Some(zone)).count()
    }

    /// Whether the request has what it needs.
    pub fn met(&self) -> bool {
        let primaries = self.answered.iter().filter(|(_, p)| *p).count();
        if primaries < self.primary {
            return false;
        }
        match self.need {
            Need::Count(n) => self.answered.len() >= n,
            Need::LocalQuorum => self.primaries_in(&self.local) > self.in_zone(&self.local) / 2,
            Need::EachQuorum => self.zones().iter().all(|z| self.primaries_in(z) > self.in_zone(z) / 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(zones: &[&str]) -> Vec<(String, String)> {
        zones.iter().enumerate().map(|(i, z)| (format!("n{i}"), (*z).to_owned())).collect()
    }

    #[test]
    fn tallies_count_distinct_nodes_zones_and_primaries() {
        // Sloppy quorum: a fallback counts toward W when allowed, never twice, and never
        // toward pw.
        let mut t = Tally::new(Need::Count(2), 2, replicas(&["a", "a", "b"]), "a").unwrap();
        t.add("n0", true);
        t.add("n0", true);
        t.add("f1", true);
        assert_eq!(t.acks(), 2);
        assert!(!t.met(), "pw = 2 needs two of the key's replicas");
        t.add("n2", true);
        assert!(t.met());
        let mut strict = Tally::new(Need::Count(2), 0, replicas(&["a", "a", "b"]), "a").unwrap();
        strict.add("f1", false);
        strict.add("n1", false);
        assert!(!strict.met());
        // local_quorum: a majority of the local zone's replicas (2 of 2 in zone a).
        let mut local = Tally::new(Need::LocalQuorum, 0, replicas(&["a", "a", "b"]), "a").unwrap();
        local.add("n2", true);
        local.add("n0", true);
        assert!(!local.met());
        local.add("n1", true);
        assert!(local.met());
        // each_quorum: a majority in every zone.
        let mut each = Tally::new(Need::EachQuorum, 0, replicas(&["a", "a", "b"]), "a").unwrap();
        each.add("n0", true);
        each.add("n1", true);
        assert!(!each.met());
        each.add("n2", true);
        assert!(each.met());
        assert_eq!(each.required(), 3);
        // A zone with no replica of the key cannot form a local quorum; W above the replicas
        // is refused.
        assert!(Tally::new(Need::LocalQuorum, 0, replicas(&["a"]), "b").is_err());
        assert!(Tally::new(Need::Count(3), 0, replicas(&["a", "b"]), "a").is_err());
    }

    #[test]
    fn parses_names_and_numbers_within_n() {
        let q = Quorum::new(3, 2, 2).unwrap();
        assert_eq!(q.parse("r", "one").unwrap(), 1);
        assert_eq!(q.parse("r", "quorum").unwrap(), 2);
        assert_eq!(q.parse("w", "all").unwrap(), 3);
        assert_eq!(q.parse("w", "ALL").unwrap(), 3);
        assert_eq!(q.parse("w", "3").unwrap(), 3);
        assert!(q.parse("w", "4").is_err());
        assert!(q.parse("w", "0").is_err());
        assert!(q.parse("w", "most").is_err());
        assert!(Quorum::new(3, 4, 1).is_err());
        assert!(Quorum::new(0, 1, 1).is_err());
    }
}
