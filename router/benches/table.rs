//! Benchmark: a routing table of 1M tenants — encoded size and chunk count, the time to decode,
//! validate and index it and to free the table it replaces (what a swap costs, off the request
//! path), lookup latency on the request path, and the router's memory for it. Prints figures.

use std::{
    hint::black_box,
    time::{Duration, Instant, SystemTime},
};

use cellstack_api::{
    routing::{
        CellRoute, CellState, EdgeLimit, RoutingTable, TenantRoute, chunk,
        publication::CHUNK_BUDGET_BYTES, table::FORMAT_VERSION,
    },
    shard::{self, MAX_LANES, ShardParams},
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

    // The two halves of a swap, alone: decode + validate, then building the snapshot (the
    // index); and the cost of freeing the snapshot a swap replaces (on the retiring thread).
    let (decoded, decode) = measure(|| RoutingTable::decode(&bytes).unwrap());
    let (indexed, index) =
        measure(|| Snapshot::new(decoded, Origin::File, SystemTime::now()).unwrap());
    let ((), free) = measure(|| drop(indexed));

    let rss_before = rss_bytes();
    let store = TableStore::new(None);
    let (_, swap) = measure(|| store.offer(&bytes, Origin::File).unwrap());
    let rss_after = rss_bytes();

    let snap = store.current().unwrap();
    let ids: Vec<String> = (0..100_000)
        .map(|i| format!("tenant-{:07}", (i * 7919) % TENANTS))
        .collect();
    let (found, lookups) = measure(|| {
        ids.iter()
            .filter(|id| black_box(snap.route(id)).is_some())
            .count()
    });
    assert_eq!(found, ids.len());
    // Lookup including loading the current snapshot, as the request path does.
    let ((), requests) = measure(|| {
        for id in &ids {
            let s = store.current().unwrap();
            black_box(s.route(id));
        }
    });

    // One tenant's lanes, as a lookup computes them: in the bench's cells (8 lanes), and in
    // the largest cell a table may have (64 lanes), which hashes eight times as many lanes.
    let lanes = |n| {
        let params = ShardParams::new(n, 2, 7).unwrap();
        let ((), t) = measure(|| {
            for id in &ids {
                black_box(shard::lanes_for(black_box(id), 0, params));
            }
        });
        t.per(ids.len())
    };
    let (lanes_8, lanes_widest) = (lanes(8), lanes(MAX_LANES));

    println!();
    println!("routing table of {TENANTS} tenants, 100 cells × 8 lanes");
    println!("  (times: wall / CPU time of the thread doing the work)");
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
    println!("  swap (decode+validate+snapshot) {}", swap.ms());
    println!(
        "    of which decode + validate {}, snapshot (index) {}",
        decode.ms(),
        index.ms()
    );
    println!("  free a replaced snapshot {} (retiring thread)", free.ms());
    println!(
        "  lookup                  {} (hash probe + lanes)",
        lookups.per(ids.len()).ns()
    );
    println!(
        "  lanes of one tenant     {} (8 lanes); {} ({MAX_LANES} lanes)",
        lanes_8.ns(),
        lanes_widest.ns()
    );
    println!(
        "  lookup + load snapshot  {} (request path)",
        requests.per(ids.len()).ns()
    );
    println!(
        "  router memory for table {:>10.1} MiB (RSS growth)",
        (rss_after.saturating_sub(rss_before)) as f64 / 1048576.0
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Wall time and the calling thread's CPU time of one piece of work. On a busy machine the
/// wall time includes waiting for a core; the CPU time is what the work takes from others.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl Took {
    fn per(self, n: usize) -> Self {
        let n = n as u32;
        Self {
            wall: self.wall / n,
            cpu: self.cpu / n,
        }
    }

    fn ms(self) -> String {
        format!("{:.1} / {:.1} ms", ms(self.wall), ms(self.cpu))
    }

    fn ns(self) -> String {
        format!("{} / {} ns", self.wall.as_nanos(), self.cpu.as_nanos())
    }
}

fn measure<T>(work: impl FnOnce() -> T) -> (T, Took) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = work();
    let took = Took {
        wall: wall.elapsed(),
        cpu: thread_cpu().saturating_sub(cpu),
    };
    (out, took)
}

/// Time the calling thread has spent on a CPU (Linux: the first field of its schedstat, in
/// nanoseconds); zero where that cannot be read.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}
