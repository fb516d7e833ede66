//! Erasure: named data fields replaced by digests of their values (`lockstep redact`).
//!
//! A redacted value becomes the string `redacted:sha256:<hex>`, the SHA-256 of the value's
//! canonical JSON: the value is gone, and whoever still holds it can show that it was the one
//! redacted. Fields are dotted paths into JSON objects (`customer.email`). The engine redacts
//! an instance's data (`Command::Redact`, audited as `redacted`); apply redacts the same paths
//! in the instance's command journal (creation data, payload `data` patches, task results),
//! so the values leave every copy the cluster keeps. Audit records hold payload digests,
//! never values, so the hash chains still verify.

use serde_json::Value;

use crate::canonical::{canonical_json, sha256_hex};

/// Most fields one redaction names.
pub const REDACT_FIELDS_MAX: usize = 64;
/// Longest field path, in bytes.
pub const REDACT_FIELD_BYTES_MAX: usize = 256;
/// What a redacted value starts with.
pub const REDACTED_PREFIX: &str = "redacted:sha256:";

/// The digest that replaces `value`.
pub fn digest(value: &Value) -> String {
    format!("{REDACTED_PREFIX}{}", sha256_hex(&canonical_json(value)))
}

/// Whether `value` is already a redaction digest.
pub fn is_redacted(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.starts_with(REDACTED_PREFIX))
}

/// Checks the field paths a redaction names: how many, how long, and well formed.
pub fn check_fields(fields: &[String]) -> Result<(), String> {
    if fields.is_empty() {
        return Err("name at least one field to redact (e.g. --fields email,phone)".into());
    }
    if fields.len() > REDACT_FIELDS_MAX {
        return Err(format!(
            "{} fields named, more than {REDACT_FIELDS_MAX} (REDACT_FIELDS_MAX): redact in several steps",
            fields.len()
        ));
    }
    for field in fields {
        if field.len() > REDACT_FIELD_BYTES_MAX {
            return Err(format!(
                "field path `{}…` is longer than {REDACT_FIELD_BYTES_MAX} bytes",
                field.chars().take(32).collect::<String>()
            ));
        }
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(format!(
                "field path `{field}` is malformed: write names separated by dots, e.g. customer.email"
            ));
        }
    }
    Ok(())
}

/// Replaces the value at each path of `fields` in `value` by its digest (a value already
/// redacted stays as it is); paths `value` does not have are skipped. Returns the paths it
/// found.
pub fn redact(value: &mut Value, fields: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for field in fields {
        let pointer: String = field
            .split('.')
            .map(|name| format!("/{}", name.replace('~', "~0").replace('/', "~1")))
            .collect();
        if let Some(at) = value.pointer_mut(&pointer) {
            if !is_redacted(at) {
                *at = Value::String(digest(at));
            }
            found.push(field.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_paths_become_digests_of_their_values_and_others_stay() {
        let mut data =
            json!({"email": "a@b.c", "customer": {"phone": "+49 1", "tier": "gold"}, "amount": 5});
        let found = redact(
            &mut data,
            &["email".into(), "customer.phone".into(), "missing".into()],
        );
        assert_eq!(found, ["email", "customer.phone"]);
        assert_eq!(data["email"], json!(digest(&json!("a@b.c"))));
        assert!(is_redacted(&data["customer"]["phone"]));
        assert_eq!(data["customer"]["tier"], json!("gold"));
        assert_eq!(data["amount"], json!(5));
        // Redacting again changes nothing: a digest is not digested twice.
        let before = data.clone();
        redact(&mut data, &["email".into()]);
        assert_eq!(data, before);
    }

    #[test]
    fn field_paths_are_bounded_and_well_formed() {
        assert!(check_fields(&["a".into(), "b.c".into()]).is_ok());
        assert!(
            check_fields(&[])
                .unwrap_err()
                .contains("at least one field")
        );
        assert!(
            check_fields(&["a..b".into()])
                .unwrap_err()
                .contains("malformed")
        );
        let many: Vec<String> = (0..=REDACT_FIELDS_MAX).map(|i| format!("f{i}")).collect();
        assert!(
            check_fields(&many)
                .unwrap_err()
                .contains("REDACT_FIELDS_MAX")
        );
    }
}
