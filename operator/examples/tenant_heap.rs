//! Heap held by one cached TenantAssignment, as the operator's store holds it: a placed tenant
//! as the API server sends it (two managed-fields entries, one label, three conditions whose
//! messages are the same for every tenant placed on the same cell; the data marker differs
//! from tenant to tenant, as it does in a real run) deserialized 10,000 times as a whole `TenantAssignment` and as the operator caches it
//! ([`CachedTenant`]), with a counting allocator. Prints bytes requested and heap blocks per
//! object (the allocator's own overhead per block comes on top). `cargo run --release -p cellstack-operator --example tenant_heap`
//! (docs/operator.md, memory at 100k tenants).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
};

use cellstack_api::v1alpha1::TenantAssignment;
use cellstack_operator::cached_tenant::CachedTenant;
use kube::core::DeserializeGuard;
use serde::de::DeserializeOwned;

struct Counting;
static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TENANT: &str = r#"{"apiVersion":"cellstack.dev/v1alpha1","kind":"TenantAssignment","metadata":{"creationTimestamp":"2026-12-07T07:16:30Z","generation":1,"labels":{"cellstack.dev/bench":"ab5bab"},"managedFields":[{"apiVersion":"cellstack.dev/v1alpha1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:cellstack.dev/bench":{}}},"f:spec":{".":{},"f:automatic":{},"f:tenantId":{}}},"manager":"bench","operation":"Apply","time":"2026-12-07T07:16:30Z"},{"apiVersion":"cellstack.dev/v1alpha1","fieldsType":"FieldsV1","fieldsV1":{"f:status":{".":{},"f:cell":{},"f:conditions":{},"f:dataMarker":{},"f:epoch":{},"f:observedGeneration":{},"f:phase":{},"f:shardVariant":{}}},"manager":"cellstack-operator","operation":"Update","subresource":"status","time":"2026-12-07T07:16:30Z"}],"name":"ab5bab-0","resourceVersion":"165662","uid":"905b3bbd-8f22-4770-90b5-afc747e17da5"},"spec":{"automatic":{},"tenantId":"ab5bab-0","tier":"standard"},"status":{"cell":"ab5bab-c0","conditions":[{"lastTransitionTime":"2026-12-07T07:16:30Z","message":"placed on ab5bab-c0: least utilized of 3 eligible cells (weight 100)","observedGeneration":1,"reason":"Placed","status":"True","type":"Placed"},{"lastTransitionTime":"2026-12-07T07:16:30Z","message":"served by ab5bab-c0","observedGeneration":1,"reason":"Stable","status":"False","type":"Progressing"},{"lastTransitionTime":"2026-12-07T07:16:30Z","message":"cell ab5bab-c0 holds the tenant's data (the marker in status.dataMarker)","observedGeneration":1,"reason":"DataIntact","status":"False","type":"DataLost"}],"dataMarker":"64a42eb652c90e375ec8cfaac256bb9c","epoch":1,"observedGeneration":1,"phase":"Placed","shardVariant":0}}"#;

const OBJECTS: isize = 10_000;

/// Tenant `i`: its own data marker.
fn tenant(i: isize) -> String {
    TENANT.replace("64a42eb652c90e375ec8cfaac256bb9c", &format!("{i:032x}"))
}

/// Bytes and blocks per object held, of `OBJECTS` deserialized as `K`.
fn measure<K: DeserializeOwned + kube::Resource>(label: &str) -> anyhow::Result<()> {
    let texts: Vec<String> = (0..OBJECTS).map(tenant).collect();
    let (bytes, blocks) = (
        BYTES.load(Ordering::Relaxed),
        BLOCKS.load(Ordering::Relaxed),
    );
    let mut held = Vec::with_capacity(OBJECTS as usize);
    for text in &texts {
        let ta: DeserializeGuard<K> = serde_json::from_str(text)?;
        held.push(Arc::new(ta));
    }
    // The Vec of pointers is this program's, not the store's.
    let pointers = OBJECTS * std::mem::size_of::<Arc<()>>() as isize;
    let per_object = (BYTES.load(Ordering::Relaxed) - bytes - pointers) / OBJECTS;
    let per_blocks = (BLOCKS.load(Ordering::Relaxed) - blocks - 1) / OBJECTS;
    println!(
        "{label}: {per_object} bytes in {per_blocks} heap blocks per cached tenant ({} inline)",
        std::mem::size_of::<DeserializeGuard<K>>()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    measure::<TenantAssignment>("a whole TenantAssignment")?;
    measure::<CachedTenant>("as the operator caches it")?;
    Ok(())
}
