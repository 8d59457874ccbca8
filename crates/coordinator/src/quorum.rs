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

#[cfg(test)]
mod tests {
    use super::*;

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
