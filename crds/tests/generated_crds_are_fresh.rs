//! The committed CRD YAML equals what the types generate, so nobody ships a schema the code no
//! longer matches.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, yaml) in cellstack_api::crd::files().expect("CRDs render") {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{name} is stale: run `cargo run -p cellstack-api --bin crdgen` and commit the result"
        );
    }
}
