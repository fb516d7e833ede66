//! Erasure: named data fields replaced by digests of their values (`lockstep redact`).
//!
//! A redacted value becomes the string `redacted:sha256:<hex>`, the SHA-256 of the value's
//! canonical JSON: the value is gone, and whoever still holds it can show that it was the one
//! redacted. Fields are dotted paths into JSON objects (`customer.email`). The engine redacts
//! an instance's data and the copies its tasks keep (input `data` and `payload.data`, result
//! `data`) (`Command::Redact`, audited as `redacted`); apply redacts the same paths
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
    fn the_engine_redacts_the_data_and_the_copies_its_tasks_keep() {
        use crate::engine::{Actor, ActorKind, Command, Instance, Outcome, evaluate};
        use crate::time::Timestamp;
        let definition = crate::validate::compile(
            Some("purchase-order.yaml"),
            include_str!("../../../examples/workflows/purchase-order.yaml"),
            &crate::Limits::default(),
        )
        .unwrap();
        let alice = Actor::new("alice", ActorKind::Human, &["requester"]);
        let bob = Actor::new("bob", ActorKind::Human, &["approver"]);
        let applied = |i: Option<&Instance>, c: Command, ms: i64| match evaluate(
            &definition,
            i,
            &c,
            Timestamp::from_millis(1_000_000 + ms),
        ) {
            Outcome::Applied(change) => change.instance,
            Outcome::Refused(r) => panic!("{r:?}"),
        };
        let take = |name: &str, who: &Actor| Command::Transition {
            transition: name.into(),
            payload: json!({"data": {"note": "urgent"}}),
            actor: who.clone(),
            expected_version: None,
        };
        let create = Command::Create {
            instance_id: "i-1".into(),
            key: None,
            data: json!({"amount": 10, "requester": "alice", "note": "secret"}),
            actor: alice.clone(),
        };
        let i = applied(None, create, 0);
        let i = applied(Some(&i), take("submit", &alice), 1);
        // Approving makes the erp task, whose input copies the data and the payload.
        let i = applied(Some(&i), take("approve", &bob), 2);
        let task = i.tasks.values().next().expect("the erp task");
        assert_eq!(task.input["data"]["note"], json!("urgent"));
        let redact = Command::Redact {
            fields: vec!["note".into()],
            actor: Actor::new("root", ActorKind::Human, &["admin"]),
        };
        let after = applied(Some(&i), redact, 3);
        let digest = digest(&json!("urgent"));
        assert_eq!(after.data["note"], json!(digest));
        let task = after.tasks.values().next().unwrap();
        assert_eq!(task.input["data"]["note"], json!(digest));
        assert_eq!(task.input["payload"]["data"]["note"], json!(digest));
        assert_eq!(after.data["requester"], json!("alice"));
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
