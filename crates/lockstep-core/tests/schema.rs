//! The committed JSON Schema of the definition format must match the Rust types.

#[test]
fn committed_schema_is_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schema/workflow.schema.json"
    );
    let generated = lockstep_core::schema::definition_schema();
    if std::env::var_os("LOCKSTEP_UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &generated).expect("write schema");
    }
    let committed = std::fs::read_to_string(path).expect("schema/workflow.schema.json exists");
    assert!(
        committed == generated,
        "schema/workflow.schema.json is stale; regenerate it with `LOCKSTEP_UPDATE_SCHEMA=1 cargo test -p lockstep-core --test schema`"
    );
}

#[test]
fn examples_validate_against_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&lockstep_core::schema::definition_schema()).unwrap();
    let validator =
        jsonschema::validator_for(&schema).expect("the generated schema is itself valid");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workflows");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let value: serde_json::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema: {errors:?}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 1);
}
