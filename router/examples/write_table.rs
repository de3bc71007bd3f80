//! Writes an encoded routing table file for `cellstack-router --table-file`: one cell whose
//! lanes are the given addresses, and the given tenants in it.
//!
//!   cargo run -p cellstack-router --example write_table -- OUT.bin CELL LANE_ADDR[,LANE_ADDR...] TENANT...

use cellstack_api::{
    routing::{CellRoute, CellState, RoutingTable, TenantRoute},
    tenant::TenantId,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, cell, lanes, tenants @ ..] = args.as_slice() else {
        return Err("usage: write_table OUT.bin CELL LANE_ADDR[,LANE_ADDR...] TENANT...".into());
    };
    let lanes: Vec<String> = lanes.split(',').map(str::to_owned).collect();
    let routes = tenants
        .iter()
        .map(|t| {
            Ok(TenantRoute {
                id: TenantId::parse(t)?,
                cell: 0,
                epoch: 1,
                shard_variant: 0,
                edge_limit: None,
            })
        })
        .collect::<Result<Vec<_>, cellstack_api::tenant::TenantIdError>>()?;
    let version = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let cell = CellRoute {
        name: cell.clone(),
        zone: None,
        state: CellState::Active,
        shard_size: 1,
        shard_seed: 0,
        lanes,
    };
    let table = RoutingTable::canonical(version, version * 1000, vec![cell], vec![], routes)?;
    std::fs::write(out, table.encode()?)?;
    Ok(())
}
