//! Synthetic tenant ids, for the benches that need a million of them.

/// splitmix64 of `x`: deterministic, evenly spread bits.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id of synthetic tenant `i`, shaped like a random (version 4) UUID: the same in every run,
/// with letters and digits mixed at random as in real random ids. Sequential ids
/// (`tenant-0000000` on) flatter a compressed table about 40 times and the id check's branch
/// prediction (`cargo bench -p cellstack-router --bench table` prints both).
pub fn uuid_like(i: u64) -> String {
    let hex = format!("{:016x}{:016x}", mix(2 * i), mix(2 * i + 1));
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use cellstack_api::tenant::TenantId;

    use super::*;

    #[test]
    fn ids_are_distinct_valid_tenant_ids_shaped_like_version_4_uuids() {
        let ids: Vec<String> = (0..10_000).map(uuid_like).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        for id in &ids {
            TenantId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert_eq!(&id[14..15], "4", "{id}: version nibble");
        }
        // Pinned: the benches' figures (table sizes, compression, decode times) are of these
        // ids, so a change to the generator must show here, not only in the figures.
        assert_eq!(uuid_like(0), "e220a839-7b1d-4daf-a10a-2dec89025cc1");
        assert_eq!(uuid_like(1), "975835de-1c97-46ce-ad0b-14e4db018fed");
    }
}
