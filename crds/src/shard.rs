//! The shuffle-shard function: which k of a cell's N lanes serve a tenant.
//!
//! Rendezvous (highest-random-weight) hashing: every (tenant, lane) pair gets a score from a
//! stable hash, and a tenant is served by its k highest-scoring lanes. A lane's score does not
//! depend on N, so growing a cell from N to N+1 lanes only changes the tenants whose top k now
//! includes the new lane — about k/(N+1) of them — and each of those swaps exactly one lane.
//!
//! The hash is XXH3-64, a specified, platform-independent function: the operator, the router and
//! the cells compute the same lanes on any machine and any version of cellstack.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Most lanes a cell may have. Lane sets are bitmasks in a `u64`.
pub const MAX_LANES: u32 = 64;

/// Parameters of one cell's sharding, as published in the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardParams {
    /// N: lanes in the cell, 1..=64.
    pub lanes: u32,
    /// k: lanes per tenant, 1..=N.
    pub shard_size: u32,
    /// Salt of the hash; changing it reshuffles every tenant.
    pub seed: u32,
}

/// Parameters that cannot describe a shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardParamsError {
    #[error("lanes must be between 1 and {MAX_LANES}, got {0}")]
    Lanes(u32),
    #[error("shard size must be between 1 and lanes ({lanes}), got {shard_size}")]
    ShardSize { lanes: u32, shard_size: u32 },
}

impl ShardParams {
    pub fn new(lanes: u32, shard_size: u32, seed: u32) -> Result<Self, ShardParamsError> {
        if lanes == 0 || lanes > MAX_LANES {
            return Err(ShardParamsError::Lanes(lanes));
        }
        if shard_size == 0 || shard_size > lanes {
            return Err(ShardParamsError::ShardSize { lanes, shard_size });
        }
        Ok(Self {
            lanes,
            shard_size,
            seed,
        })
    }

    /// C(N, k): how many distinct lane sets exist.
    pub fn combinations(&self) -> u64 {
        combinations(self.lanes, self.shard_size)
    }
}

/// A set of lanes of one cell, as a bitmask (bit i = lane i).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LaneSet(pub u64);

impl LaneSet {
    pub fn contains(self, lane: u32) -> bool {
        lane < MAX_LANES && self.0 & (1 << lane) != 0
    }

    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Lanes both sets share.
    pub fn overlap(self, other: Self) -> u32 {
        (self.0 & other.0).count_ones()
    }

    /// Lane indices in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_LANES).filter(move |&i| self.contains(i))
    }
}

/// Score of `lane` for a tenant. Independent of N by construction.
fn score(tenant: &[u8], variant: u32, lane: u32, seed: u32) -> u64 {
    // Seed, variant and lane are packed into the 64-bit hash seed, so each (tenant, variant,
    // lane) pair draws an independent XXH3 value without allocating a combined key.
    let mixed = ((u64::from(seed) << 32) | u64::from(variant))
        ^ (u64::from(lane) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    xxh3_64_with_seed(tenant, mixed)
}

/// The k lanes serving `tenant` in a cell sharded by `params`.
///
/// `variant` is 0 unless placement picked another of the tenant's candidate shards to honour a
/// pool's overlap bound; it is published per tenant in the routing table.
pub fn lanes_for(tenant: &str, variant: u32, params: ShardParams) -> LaneSet {
    // On the stack (lanes <= MAX_LANES): a router computes this for every tenant of a table.
    let mut all = [(0u64, 0u32); MAX_LANES as usize];
    let scored = &mut all[..params.lanes.min(MAX_LANES) as usize];
    for (lane, slot) in (0..params.lanes).zip(scored.iter_mut()) {
        *slot = (score(tenant.as_bytes(), variant, lane, params.seed), lane);
    }
    // Highest score first; on a tie the lower lane wins, so the order is total.
    let k = params.shard_size as usize;
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    LaneSet(
        scored[..k]
            .iter()
            .fold(0, |mask, &(_, lane)| mask | 1 << lane),
    )
}

/// C(n, k), saturating at `u64::MAX` (never reached for n ≤ 64).
pub fn combinations(n: u32, k: u32) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut acc: u128 = 1;
    for i in 0..k {
        // acc * (n - i) / (i + 1) stays an integer at every step.
        acc = acc * u128::from(n - i) / u128::from(i + 1);
        if acc > u128::from(u64::MAX) {
            return u64::MAX;
        }
    }
    acc as u64
}

/// The largest number of lanes any two of `sets` share: the worst case of one tenant's lane
/// failures touching another. `k` when two tenants have the same set; 0 for fewer than two sets.
///
/// Exact. Two sets share at least j lanes iff they share a j-subset, so the answer is the largest
/// j for which two sets have a common j-subset; with k ≤ 16 that needs T·2^k subset lookups
/// instead of T² comparisons. Above that it compares distinct sets pairwise.
pub fn worst_overlap(sets: &[LaneSet]) -> u32 {
    if sets.len() < 2 {
        return 0;
    }
    let k = sets.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut distinct: Vec<LaneSet> = sets.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < sets.len() {
        // Two tenants on the same lanes.
        return distinct.iter().map(|s| s.len()).max().unwrap_or(0);
    }
    if k > 16 {
        return worst_overlap_pairwise(&distinct);
    }
    for j in (1..k).rev() {
        let mut seen = std::collections::HashMap::<u64, usize>::new();
        for (owner, set) in distinct.iter().enumerate() {
            let mut found = false;
            for_each_subset(*set, j, &mut |subset| {
                if let Some(&other) = seen.get(&subset)
                    && other != owner
                {
                    found = true;
                }
                seen.insert(subset, owner);
            });
            if found {
                return j;
            }
        }
    }
    0
}

/// Pairwise comparison, O(T²); the reference the fast path is tested against.
pub fn worst_overlap_pairwise(sets: &[LaneSet]) -> u32 {
    let mut worst = 0;
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            worst = worst.max(a.overlap(*b));
        }
    }
    worst
}

/// Calls `f` with every j-element subset of `set`, as a bitmask.
fn for_each_subset(set: LaneSet, j: u32, f: &mut impl FnMut(u64)) {
    let lanes: Vec<u32> = set.iter().collect();
    fn go(lanes: &[u32], j: u32, acc: u64, f: &mut impl FnMut(u64)) {
        if j == 0 {
            f(acc);
            return;
        }
        for (i, lane) in lanes.iter().enumerate() {
            if (lanes.len() - i) < j as usize {
                break;
            }
            go(&lanes[i + 1..], j - 1, acc | 1 << lane, f);
        }
    }
    go(&lanes, j, 0, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(n: u32, k: u32) -> ShardParams {
        ShardParams::new(n, k, 7).unwrap()
    }

    #[test]
    fn combinations_match_known_values() {
        assert_eq!(combinations(8, 2), 28);
        assert_eq!(combinations(10, 3), 120);
        assert_eq!(combinations(64, 32), 1_832_624_140_942_590_534);
        assert_eq!(combinations(5, 0), 1);
        assert_eq!(combinations(3, 4), 0);
        assert_eq!(params(8, 2).combinations(), 28);
    }

    #[test]
    fn params_refuse_impossible_shards() {
        assert_eq!(ShardParams::new(0, 1, 0), Err(ShardParamsError::Lanes(0)));
        assert_eq!(ShardParams::new(65, 1, 0), Err(ShardParamsError::Lanes(65)));
        assert!(matches!(
            ShardParams::new(4, 5, 0),
            Err(ShardParamsError::ShardSize { .. })
        ));
        assert!(ShardParams::new(4, 0, 0).is_err());
    }

    #[test]
    fn known_vector_pins_the_function_across_versions() {
        // If this changes, every deployed router and operator disagree about lanes: the shard
        // function is part of the wire contract and must never change silently.
        let vectors: Vec<String> = [
            ("acme", 0, 8, 2),
            ("acme", 1, 8, 2),
            ("globex", 0, 16, 3),
            ("initech", 0, 64, 5),
        ]
        .into_iter()
        .map(|(tenant, variant, n, k)| {
            let lanes: Vec<u32> = lanes_for(tenant, variant, params(n, k)).iter().collect();
            format!("{tenant} variant={variant} N={n} k={k} seed=7 -> {lanes:?}")
        })
        .collect();
        insta::assert_debug_snapshot!(vectors);
    }

    #[test]
    fn worst_overlap_counts_shared_lanes() {
        assert_eq!(worst_overlap(&[]), 0);
        assert_eq!(worst_overlap(&[LaneSet(0b0011)]), 0);
        assert_eq!(worst_overlap(&[LaneSet(0b0011), LaneSet(0b1100)]), 0);
        assert_eq!(worst_overlap(&[LaneSet(0b0111), LaneSet(0b1101)]), 2);
        assert_eq!(worst_overlap(&[LaneSet(0b0011), LaneSet(0b0011)]), 2);
    }

    proptest! {
        #[test]
        fn a_tenant_gets_exactly_k_distinct_lanes_below_n(
            tenant in "[a-z0-9]{1,20}", n in 1u32..=64, k_frac in 0.0f64..1.0, variant in 0u32..4,
        ) {
            let k = 1 + ((f64::from(n) - 1.0) * k_frac) as u32;
            let set = lanes_for(&tenant, variant, params(n, k));
            prop_assert_eq!(set.len(), k);
            prop_assert!(set.iter().all(|lane| lane < n));
            prop_assert_eq!(set, lanes_for(&tenant, variant, params(n, k)));
        }

    }

    proptest! {
        // Each case hashes 8,000 tenants: fewer cases keep the suite quick.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Growing N by one moves about k/(N+1) of the tenants — never more than twice k/N —
        /// and a tenant that moves swaps exactly one lane, for the new one.
        #[test]
        fn growing_n_by_one_moves_about_k_over_n(n in 2u32..=40, k_frac in 0.0f64..0.5, seed in any::<u32>()) {
            let k = 1 + ((f64::from(n) - 1.0) * k_frac) as u32;
            let before = ShardParams::new(n, k, seed).unwrap();
            let after = ShardParams::new(n + 1, k, seed).unwrap();
            let tenants = 4000;
            let mut moved = 0u32;
            for i in 0..tenants {
                let id = format!("tenant-{i}");
                let (a, b) = (lanes_for(&id, 0, before), lanes_for(&id, 0, after));
                if a != b {
                    moved += 1;
                    prop_assert!(b.contains(n), "a moved tenant must gain the new lane");
                    prop_assert_eq!(a.overlap(b), k - 1, "a moved tenant keeps all but one lane");
                }
            }
            let fraction = f64::from(moved) / f64::from(tenants);
            let k_over_n = f64::from(k) / f64::from(n);
            prop_assert!(fraction <= 2.0 * k_over_n, "moved {fraction} > 2·k/N = {}", 2.0 * k_over_n);
            prop_assert!(fraction >= 0.5 * k_over_n * f64::from(n) / f64::from(n + 1),
                "moved {fraction}, expected about k/(N+1) = {}", f64::from(k) / f64::from(n + 1));
        }

    }

    proptest! {
        #[test]
        fn fast_worst_overlap_equals_pairwise(masks in proptest::collection::vec(any::<u16>(), 0..60), k in 1u32..6) {
            // Random k-subsets of 16 lanes, with duplicates possible.
            let sets: Vec<LaneSet> = masks.iter().map(|m| {
                let p = ShardParams::new(16, k, u32::from(*m)).unwrap();
                lanes_for("t", 0, p)
            }).collect();
            prop_assert_eq!(worst_overlap(&sets), worst_overlap_pairwise(&sets));
        }
    }
}
