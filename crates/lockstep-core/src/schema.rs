//! The JSON Schema of the definition format, generated from the Rust types so that editors
//! can check and complete workflow files. The committed copy lives in
//! `schema/workflow.schema.json`; a test keeps it current.

use crate::definition::Definition;

/// The schema as pretty-printed JSON, with a trailing newline.
pub fn definition_schema() -> String {
    let schema = schemars::schema_for!(Definition);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}
