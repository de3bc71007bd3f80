//! Benchmark: a routing table of 1M tenants — encoded and stored (zstd) size and chunk count,
//! the time to compress it (operator side) and to expand, decode,
//! validate and index it and to free the table it replaces (what a swap costs, off the request
//! path), lookup latency on the request path, and the router's memory for it. Prints figures.

use std::{
    hint::black_box,
    time::{Duration, Instant, SystemTime},
};

use cellstack_api::{
    routing::{
        CellRoute, CellState, Compression, EdgeLimit, PackedTable, RoutingTable, TenantRoute,
        chunk, publication::CHUNK_BUDGET_BYTES, table::FORMAT_VERSION,
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

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2`: arenas plus mmapped
/// blocks; the bench runs on the system allocator). Unlike the RSS, it does not depend on whether
/// memory freed earlier in the bench happened to be reused.
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2(3) only reads the allocator's counters; it has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
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
    let (manifest, chunks) = chunk::split(
        1,
        FORMAT_VERSION,
        &bytes,
        Compression::None,
        CHUNK_BUDGET_BYTES,
    )
    .unwrap();
    // As the operator publishes it by default: compressed, then split; and what a reader does
    // with it before decoding: join, check every digest, expand, check the whole.
    let ((zstd_manifest, zstd_chunks), compress) = measure(|| {
        chunk::split(
            1,
            FORMAT_VERSION,
            &bytes,
            Compression::Zstd,
            CHUNK_BUDGET_BYTES,
        )
        .unwrap()
    });
    let (expanded, expand) = measure(|| chunk::reassemble(&zstd_manifest, &zstd_chunks).unwrap());
    assert_eq!(expanded, bytes);
    drop(expanded);
    // The bench's ids are sequential and its tenants' fields cyclic, which zstd compresses far
    // better than real ids: the same table with random UUID-shaped ids, random cells and
    // epochs, for the other end of the range.
    let random = random_ids_table(&table.cells, &table.edge_limits);
    let random_bytes = random.encode().unwrap();
    drop(random);
    let (random_manifest, _) = chunk::split(
        1,
        FORMAT_VERSION,
        &random_bytes,
        Compression::Zstd,
        CHUNK_BUDGET_BYTES,
    )
    .unwrap();
    let (joined, verify_plain) = measure(|| chunk::reassemble(&manifest, &chunks).unwrap());
    assert_eq!(joined, bytes);
    drop(joined);
    drop(table);

    // The two halves of a swap, alone: decode + validate, then building the snapshot (the
    // index); and the cost of freeing the snapshot a swap replaces (on the retiring thread).
    let (decoded, decode) = measure(|| PackedTable::decode(&bytes).unwrap());
    let (indexed, index) =
        measure(|| Snapshot::new(decoded, Origin::File, SystemTime::now()).unwrap());
    let ((), free) = measure(|| drop(indexed));

    let (rss_before, heap_before) = (rss_bytes(), heap_bytes());
    let store = TableStore::new(None);
    let (_, swap) = measure(|| store.offer(&bytes, Origin::File).unwrap());
    let (rss_after, heap_after) = (rss_bytes(), heap_bytes());

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

    // The router's decoder (every id in one buffer) against the owned one (a `String` per id),
    // on both id shapes, and what freeing each costs. After the memory figure above, which
    // what these allocate and free would disturb.
    let mut decoders = Vec::new();
    for (shape, encoded) in [("sequential", &bytes), ("random UUID", &random_bytes)] {
        let heap = heap_bytes();
        let (owned, owned_time) = measure(|| RoutingTable::decode(encoded).unwrap());
        let owned_heap = heap_bytes().saturating_sub(heap);
        let ((), owned_free) = measure(|| drop(owned));
        let heap = heap_bytes();
        let (packed, packed_time) = measure(|| PackedTable::decode(encoded).unwrap());
        let packed_heap = heap_bytes().saturating_sub(heap);
        let ((), packed_free) = measure(|| drop(packed));
        decoders.push(Decoders {
            shape,
            packed: (packed_time, packed_free, packed_heap),
            owned: (owned_time, owned_free, owned_heap),
        });
    }

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
        "  stored (zstd)           {:>10.1} MiB in {} chunks ({:.1}x smaller)",
        zstd_manifest.stored_bytes() as f64 / 1048576.0,
        zstd_chunks.len(),
        bytes.len() as f64 / zstd_manifest.stored_bytes().max(1) as f64
    );
    println!(
        "  random UUID ids instead {:>10.1} MiB encoded, {:.1} MiB stored (zstd, {:.1}x smaller)",
        random_bytes.len() as f64 / 1048576.0,
        random_manifest.stored_bytes() as f64 / 1048576.0,
        random_bytes.len() as f64 / random_manifest.stored_bytes().max(1) as f64
    );
    println!(
        "  compile + encode        {:>10.1} ms (operator side)",
        ms(compile)
    );
    println!(
        "  compress + split (zstd) {} (operator side)",
        compress.ms()
    );
    println!(
        "  join + verify: stored as it is {}; zstd, expanded {}",
        verify_plain.ms(),
        expand.ms()
    );
    println!("  swap (decode+validate+snapshot) {}", swap.ms());
    println!(
        "    of which decode + validate {}, snapshot (index) {}",
        decode.ms(),
        index.ms()
    );
    println!("  free a replaced snapshot {} (retiring thread)", free.ms());
    for Decoders {
        shape,
        packed,
        owned,
    } in &decoders
    {
        println!("  {shape} ids: the router's decoder (one buffer of ids) vs a String per id");
        println!(
            "    decode + validate {} vs {}; free {} vs {}; heap {:.1} vs {:.1} MiB",
            packed.0.ms(),
            owned.0.ms(),
            packed.1.ms(),
            owned.1.ms(),
            packed.2 as f64 / 1048576.0,
            owned.2 as f64 / 1048576.0
        );
    }
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
        "  router memory for table {:>10.1} MiB (heap in use; RSS growth {:.1} MiB)",
        heap_after.saturating_sub(heap_before) as f64 / 1048576.0,
        rss_after.saturating_sub(rss_before) as f64 / 1048576.0
    );
}

/// What decoding a table costs with each decoder: time, the time to free it, heap it holds.
struct Decoders {
    shape: &'static str,
    packed: (Took, Took, u64),
    owned: (Took, Took, u64),
}

/// A table of [`TENANTS`] tenants with random UUID-shaped ids (122 random bits each), each on a
/// random cell with a random epoch below 1,000 and every other one with an edge limit.
fn random_ids_table(cells: &[CellRoute], limits: &[EdgeLimit]) -> RoutingTable {
    let tenants: Vec<TenantRoute> = (0..TENANTS as u64)
        .map(|i| {
            let id = cellstack_testkit::ids::uuid_like(i);
            // Past the numbers the ids are made of: bits of their own.
            let r = cellstack_testkit::ids::mix(2 * TENANTS as u64 + i);
            TenantRoute {
                id: TenantId::parse(&id).unwrap(),
                cell: (r % cells.len() as u64) as u32,
                epoch: (r >> 16) % 1000,
                shard_variant: 0,
                edge_limit: (r >> 40)
                    .is_multiple_of(2)
                    .then_some(((r >> 41) % limits.len() as u64) as u32),
            }
        })
        .collect();
    RoutingTable::canonical(
        1,
        1_700_000_000_000,
        cells.to_vec(),
        limits.to_vec(),
        tenants,
    )
    .unwrap()
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
