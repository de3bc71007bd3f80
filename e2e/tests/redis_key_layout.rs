//! The tenant key layout from `crds/` holds on a real Redis: one tenant's `SCAN MATCH` pattern
//! finds exactly that tenant's keys, even next to tenants whose ids extend or contain its id,
//! and only the tenant's data keys count as data.

use cellstack_api::{
    keys::{ItemName, KeyKind, TenantKeys, tenant_of_key},
    tenant::TenantId,
};
use cellstack_testkit::{redis_url, unique_name};
use redis::AsyncCommands;
use std::collections::BTreeSet;

async fn connection() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(redis_url()?)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut iter: redis::AsyncIter<String> = conn.scan_match(pattern).await?;
    while let Some(key) = iter.next_item().await {
        found.insert(key?);
    }
    Ok(found)
}

#[tokio::test]
async fn a_tenants_scan_pattern_finds_exactly_its_keys() -> anyhow::Result<()> {
    let mut conn = connection().await?;
    // Ids that prefix, extend and contain each other, unique to this run.
    let base = unique_name("t");
    let ids = [
        base.clone(),
        format!("{base}0"),
        format!("{base}-x"),
        format!("x-{base}"),
    ];
    let tenants: Vec<TenantId> = ids
        .iter()
        .map(|i| TenantId::parse(i))
        .collect::<Result<_, _>>()?;

    let mut written: Vec<BTreeSet<String>> = vec![];
    for tenant in &tenants {
        let keys = TenantKeys::new(tenant);
        let mut mine = BTreeSet::new();
        for i in 0..25 {
            let name = ItemName::parse(&format!("item-{i}"))?;
            let (item, counter) = (keys.item(&name), keys.counter(&name));
            let _: () = conn.set(&item, i).await?;
            let _: i64 = conn.incr(&counter, 1).await?;
            mine.extend([item, counter]);
        }
        let _: () = conn.hset(keys.meta(), "epoch", 1).await?;
        mine.insert(keys.meta());
        written.push(mine);
    }

    for (tenant, mine) in tenants.iter().zip(&written) {
        let keys = TenantKeys::new(tenant);
        let found = scan(&mut conn, &keys.scan_pattern()).await?;
        assert_eq!(
            &found, mine,
            "SCAN for {tenant} returned another tenant's keys or missed its own"
        );
        for key in &found {
            assert_eq!(tenant_of_key(key).as_ref(), Some(tenant), "{key}");
            assert!(keys.classify(key).is_some(), "{key} not classified");
        }
        let data = found
            .iter()
            .filter(|k| keys.classify(k).is_some_and(KeyKind::is_data))
            .count();
        assert_eq!(data, 50, "items and counters are data, meta is not");
    }

    for mine in &written {
        let _: i64 = conn.del(mine.iter().collect::<Vec<_>>()).await?;
    }
    Ok(())
}
