//! Objects with a status the test writes itself, as the operator would: for tests of what
//! reads them (the kubectl plugin, its dashboard) without an operator running.

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub async fn create<K>(api: &Api<K>, doc: Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(doc)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

pub async fn set_status<K>(api: &Api<K>, name: &str, status: Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-12-05T00:00:00Z", "observedGeneration": 1
    })
}

/// An 8-hex-digit id derived from `name` (a test namespace's), for object names whose length
/// does not vary between runs.
pub fn fixed_id(name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}
