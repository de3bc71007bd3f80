//! Benchmark: a routing table of 1M tenants — encoded size and chunk count, the time to decode,
//! validate and index it (what a swap costs, off the request path), lookup latency on the
//! request path, and the router's memory for it. Prints figures.

use std::{
    hint::black_box,
    time::{Duration, Instant, SystemTime},
};

use cellstack_api::{
    routing::{
        CellRoute, CellState, EdgeLimit, RoutingTable, TenantRoute, chunk,
        publication::CHUNK_BUDGET_BYTES, table::FORMAT_VERSION,
    },
    tenant::TenantId,
};
use cellstack_router::{
    snapshot::{Origin, Snapshot},
    table_store::TableStore,
};

const TENANTS: usize = 1_000_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let cells: Vec<CellRoute> = (0..100)
        .map(|c| CellRoute {
            name: format!("cell-{c:03}"),
            zone: Some(format!("zone-{}", c % 3)),
            state: CellState::Active,
            lanes: (0..8)
                .map(|l| format!("cell-{c:03}-lane-{l}.cellstack.svc:8080"))
                .collect(),
            shard_size: 2,
            shard_seed: c,
        })
        .collect();
    let limits = vec![
        EdgeLimit {
            requests: 100,
            period_ms: 1000,
            burst: 200,
        },
        EdgeLimit {
            requests: 1000,
            period_ms: 1000,
            burst: 2000,
        },
    ];
    let tenants: Vec<TenantRoute> = (0..TENANTS)
        .map(|i| TenantRoute {
            id: TenantId::parse(&format!("tenant-{i:07}")).unwrap(),
            cell: (i % 100) as u32,
            epoch: (i % 7) as u64,
            shard_variant: 0,
            edge_limit: Some((i % 2) as u32),
        })
        .collect();
    let start = Instant::now();
    let table = RoutingTable::canonical(1, 1_700_000_000_000, cells, limits, tenants).unwrap();
    let bytes = table.encode().unwrap();
    let compile = start.elapsed();
    let (_, chunks) = chunk::split(1, FORMAT_VERSION, &bytes, CHUNK_BUDGET_BYTES).unwrap();
    drop(table);

    // The two halves of a swap, alone: decode + validate, then indexing.
    let start = Instant::now();
    let decoded = RoutingTable::decode(&bytes).unwrap();
    let decode = start.elapsed();
    let start = Instant::now();
    let indexed = Snapshot::new(decoded, Origin::File, SystemTime::now());
    let index = start.elapsed();
    drop(indexed);

    let rss_before = rss_bytes();
    let store = TableStore::new(None);
    let start = Instant::now();
    store.offer(&bytes, Origin::File).unwrap();
    let swap = start.elapsed();
    let rss_after = rss_bytes();

    let snap = store.current().unwrap();
    let ids: Vec<String> = (0..100_000)
        .map(|i| format!("tenant-{:07}", (i * 7919) % TENANTS))
        .collect();
    let start = Instant::now();
    let mut found = 0usize;
    for id in &ids {
        found += black_box(snap.route(id)).is_some() as usize;
    }
    let per_lookup = start.elapsed() / ids.len() as u32;
    assert_eq!(found, ids.len());
    // Lookup including loading the current snapshot, as the request path does.
    let start = Instant::now();
    for id in &ids {
        let s = store.current().unwrap();
        black_box(s.route(id));
    }
    let per_request = start.elapsed() / ids.len() as u32;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("routing table of {TENANTS} tenants, 100 cells × 8 lanes");
    println!(
        "  encoded size            {:>10.1} MiB in {} chunks of ≤ {} KiB",
        bytes.len() as f64 / 1048576.0,
        chunks.len(),
        CHUNK_BUDGET_BYTES / 1024
    );
    println!(
        "  compile + encode        {:>10.1} ms (operator side)",
        ms(compile)
    );
    println!(
        "  swap (decode+validate+index+precompute lanes) {:>8.1} ms",
        ms(swap)
    );
    println!(
        "    of which decode + validate {:>5.1} ms, index + precompute lanes {:.1} ms",
        ms(decode),
        ms(index)
    );
    println!(
        "  lookup                  {:>10.0} ns (hash probe)",
        per_lookup.as_nanos()
    );
    println!(
        "  lookup + load snapshot  {:>10.0} ns (request path)",
        per_request.as_nanos()
    );
    println!(
        "  router memory for table {:>10.1} MiB (RSS growth)",
        (rss_after.saturating_sub(rss_before)) as f64 / 1048576.0
    );
    let _ = SystemTime::now();
}
