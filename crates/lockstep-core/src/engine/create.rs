//! A new instance; the data, payload and JSON-shape checks and predicate evaluation that
//! every command shares.

use super::*;

pub(super) fn create(
    definition: &CompiledDefinition,
    id: &str,
    key: Option<&str>,
    data: &serde_json::Value,
    actor: &Actor,
    at: Timestamp,
) -> Result<Change, Refusal> {
    check_data(definition, data)?;
    let mut instance = Instance {
        id: id.to_string(),
        workflow: definition.name().to_string(),
        definition_version: definition.version.clone(),
        key: key.map(str::to_owned),
        state: definition.initial.clone(),
        data: data.clone(),
        created_by: actor.id.clone(),
        created_at: at,
        entered_at: at,
        updated_at: at,
        version: 1,
        slas: BTreeMap::new(),
        timers: BTreeMap::new(),
        tasks: BTreeMap::new(),
        incidents: BTreeMap::new(),
    };
    let mut predicates = Vec::new();
    if let Some(allow) = &definition.create_allow {
        let scope = Scope::new(actor.cel(), instance.cel(), cel::Value::Null, at);
        predicate(
            allow,
            &scope,
            "create.allow",
            RefusalCode::Forbidden,
            &mut predicates,
        )?;
    }
    let mut work = Work {
        definition,
        at,
        instance: &mut instance,
        effects: Vec::new(),
        predicates,
        notes: Vec::new(),
    };
    work.enter_state(None);
    let Work {
        effects,
        predicates,
        notes,
        ..
    } = work;
    let audit = AuditRecord {
        kind: AuditKind::Created,
        workflow: instance.workflow.clone(),
        instance_id: instance.id.clone(),
        definition_version: instance.definition_version.clone(),
        transition: None,
        from: None,
        to: Some(instance.state.clone()),
        actor: actor.record(),
        at,
        instance_version: instance.version,
        payload_digest: Some(sha256_hex(&canonical_json(data))),
        predicates,
        timer: None,
        task_id: None,
        sla: None,
        note: join_notes(notes),
    };
    let timers_armed = instance.timers.values().cloned().collect();
    Ok(Change {
        instance,
        audit,
        timers_armed,
        timers_cancelled: Vec::new(),
        effects,
    })
}

/// Size and shape limits shared by instance data and payloads; `what` and `bytes_max` name
/// which limit applies.
pub(super) fn check_json_limits(
    what: &str,
    value: &serde_json::Value,
    bytes_max: (&str, usize),
    definition: &CompiledDefinition,
) -> Result<(), Refusal> {
    let (limit_name, limit) = bytes_max;
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(Refusal::new(
            RefusalCode::LimitExceeded,
            format!("{what} is {size} bytes, more than {limit_name} ({limit})"),
        ));
    }
    check_json_shape(value, &definition.limits)
        .map_err(|e| Refusal::new(RefusalCode::LimitExceeded, format!("{what}: {e}")))
}

pub(crate) fn check_data(
    definition: &CompiledDefinition,
    data: &serde_json::Value,
) -> Result<(), Refusal> {
    check_json_limits(
        "instance data",
        data,
        ("data_bytes_max", definition.limits.data_bytes_max),
        definition,
    )?;
    if !data.is_object() {
        return Err(Refusal::new(
            RefusalCode::PayloadInvalid,
            "instance data must be a JSON object",
        ));
    }
    if let Some(schema) = &definition.data_schema {
        schema.check(data).map_err(|e| {
            Refusal::new(
                RefusalCode::PayloadInvalid,
                format!("instance data does not match the data schema {e}"),
            )
        })?;
    }
    Ok(())
}

pub(super) fn check_payload(
    definition: &CompiledDefinition,
    payload: &serde_json::Value,
) -> Result<(), Refusal> {
    check_json_limits(
        "payload",
        payload,
        ("payload_bytes_max", definition.limits.payload_bytes_max),
        definition,
    )
}

pub(super) fn predicate(
    expr: &Expression,
    scope: &Scope,
    role: &str,
    code: RefusalCode,
    trace: &mut Vec<PredicateTrace>,
) -> Result<(), Refusal> {
    match expr.eval_bool(scope) {
        Ok(result) => {
            trace.push(PredicateTrace {
                role: role.into(),
                expression: expr.source().into(),
                result,
            });
            if result {
                Ok(())
            } else {
                let what = if code == RefusalCode::Forbidden {
                    "permission predicate"
                } else {
                    "guard"
                };
                Err(Refusal::new(
                    code,
                    format!("the {what} `{}` ({role}) is false", expr.source()),
                )
                .with_predicate(expr.source()))
            }
        }
        Err(e) => Err(
            Refusal::new(RefusalCode::PredicateError, format!("{role}: {e}"))
                .with_predicate(expr.source()),
        ),
    }
}

pub(crate) fn join_notes(notes: Vec<String>) -> Option<String> {
    (!notes.is_empty()).then(|| notes.join("; "))
}
