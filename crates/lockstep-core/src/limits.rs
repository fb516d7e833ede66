//! Named bounds on everything that grows (STYLE: "a limit on everything").
//!
//! The defaults are what a cluster enforces; tests may tighten them. Every limit that a user
//! can hit is reported with its name, so an error says which knob was exceeded.

use serde::{Deserialize, Serialize};

/// Limits applied while parsing, compiling and evaluating definitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest definition source file accepted, in bytes.
    pub definition_bytes_max: usize,
    /// Deepest nesting of YAML collections in a definition.
    pub definition_depth_max: usize,
    /// Most states in one definition.
    pub states_max: usize,
    /// Most transitions in one definition.
    pub transitions_max: usize,
    /// Longest CEL expression, in bytes.
    pub expression_bytes_max: usize,
    /// Most AST nodes in one CEL expression (bounds evaluation cost together with
    /// `json_array_items_max`: a comprehension visits at most that many items).
    pub expression_nodes_max: usize,
    /// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter`) in one expression.
    pub expression_comprehension_depth_max: usize,
    /// Deepest nesting of brackets (`(`, `[`, `{`) and conditionals (`?`) in one expression.
    /// The CEL parser recurses deeply per level (about 170 KiB of stack each in debug builds),
    /// so this is checked on the text before parsing.
    pub expression_nesting_max: usize,
    /// Largest payload of one command (JSON, in bytes).
    pub payload_bytes_max: usize,
    /// Largest instance data document (JSON, in bytes).
    pub data_bytes_max: usize,
    /// Deepest nesting of JSON objects and arrays in payloads and data.
    pub json_depth_max: usize,
    /// Most items in one JSON array or object in payloads and data.
    pub json_collection_items_max: usize,
    /// Most tasks kept on one instance (finished tasks included).
    pub instance_tasks_max: usize,
    /// Longest duration accepted anywhere in a definition, in milliseconds (10 years).
    pub duration_ms_max: u64,
    /// Most holidays in one calendar.
    pub calendar_holidays_max: usize,
    /// Most days a business-time computation may scan before it gives up.
    pub calendar_scan_days_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            definition_bytes_max: 256 * 1024,
            definition_depth_max: 32,
            states_max: 256,
            transitions_max: 1024,
            expression_bytes_max: 2048,
            expression_nodes_max: 256,
            expression_comprehension_depth_max: 1,
            expression_nesting_max: 8,
            payload_bytes_max: 64 * 1024,
            data_bytes_max: 256 * 1024,
            json_depth_max: 32,
            json_collection_items_max: 1000,
            instance_tasks_max: 256,
            duration_ms_max: 10 * 366 * 24 * 3600 * 1000,
            calendar_holidays_max: 2000,
            calendar_scan_days_max: 20 * 366,
        }
    }
}

/// The first place where a JSON value exceeds a shape limit, by its path (`$.a[3]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("nesting at `{path}` is deeper than json_depth_max ({max})")]
    TooDeep { path: String, max: usize },
    #[error("array at `{path}` has {items} items, more than json_collection_items_max ({max})")]
    TooManyItems {
        path: String,
        items: usize,
        max: usize,
    },
    #[error("object at `{path}` has {keys} keys, more than json_collection_items_max ({max})")]
    TooManyKeys {
        path: String,
        keys: usize,
        max: usize,
    },
}

/// Checks a JSON value against the depth and collection-size limits; returns the first
/// violation.
pub fn check_json_shape(value: &serde_json::Value, limits: &Limits) -> Result<(), ShapeError> {
    fn walk(
        v: &serde_json::Value,
        depth: usize,
        limits: &Limits,
        path: &mut String,
    ) -> Result<(), ShapeError> {
        if depth > limits.json_depth_max {
            return Err(ShapeError::TooDeep {
                path: path.clone(),
                max: limits.json_depth_max,
            });
        }
        match v {
            serde_json::Value::Array(items) => {
                if items.len() > limits.json_collection_items_max {
                    return Err(ShapeError::TooManyItems {
                        path: path.clone(),
                        items: items.len(),
                        max: limits.json_collection_items_max,
                    });
                }
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, depth + 1, limits, path)?;
                    path.truncate(len);
                }
            }
            serde_json::Value::Object(map) => {
                if map.len() > limits.json_collection_items_max {
                    return Err(ShapeError::TooManyKeys {
                        path: path.clone(),
                        keys: map.len(),
                        max: limits.json_collection_items_max,
                    });
                }
                for (k, item) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(item, depth + 1, limits, path)?;
                    path.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
    walk(value, 1, limits, &mut String::from("$"))
}
