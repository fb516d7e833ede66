//! CEL guards and permission predicates.
//!
//! Expressions are compiled once per definition ([`compile_expr`]) and checked statically:
//! size, number of AST nodes, nesting of comprehensions, and every variable and field they
//! reference. Together with the JSON shape limits on data and payloads (at most
//! `json_collection_items_max` items per collection) this bounds the work one evaluation can
//! do to roughly `expression_nodes_max × json_collection_items_max` steps per comprehension
//! level. At run time an expression that errors, or yields something other than a boolean,
//! refuses the transition with that error; it never panics the engine.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::{Key, Map};
use cel::{Context, Env, IdedExpr, Program, Value};

use crate::diagnostic::{Code, Diagnostic};
use crate::limits::Limits;
use crate::time::Timestamp;

/// The variables an expression may use.
pub const ROOT_VARIABLES: [&str; 4] = ["actor", "instance", "payload", "now"];
/// Fields of `actor`.
pub const ACTOR_FIELDS: [&str; 5] = ["id", "kind", "roles", "claims", "authn"];
/// Fields of `instance`.
pub const INSTANCE_FIELDS: [&str; 8] = [
    "id",
    "workflow",
    "key",
    "state",
    "data",
    "created_by",
    "entered_at",
    "version",
];

/// Why an expression did not evaluate to a boolean; it refuses the transition (or leaves an
/// SLA unstarted) with this message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("`{expression}` evaluated to {value:?}, not a boolean")]
    NotABoolean { expression: String, value: Value },
    #[error("`{expression}` failed: {error}")]
    Failed {
        expression: String,
        error: cel::ExecutionError,
    },
}

/// A compiled, statically checked CEL expression.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Expression {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads the root variable `name` (e.g. `payload`): an inbox
    /// cannot decide an expression that reads the payload of an attempt not yet made.
    pub fn reads(&self, name: &str) -> bool {
        self.program.references().has_variable(name)
    }

    /// Evaluates to a boolean, or explains why it could not.
    pub fn eval_bool(&self, scope: &Scope) -> Result<bool, EvalError> {
        match self.program.execute(scope.context()) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(value) => Err(EvalError::NotABoolean {
                expression: self.source.clone(),
                value,
            }),
            Err(error) => Err(EvalError::Failed {
                expression: self.source.clone(),
                error,
            }),
        }
    }
}

/// What the static checker knows about instance data: the declared top-level properties, or
/// `None` when the data schema does not list them (any field may then be referenced).
#[derive(Clone, Debug, Default)]
pub struct DataFields(pub Option<BTreeSet<String>>);

/// Compiles `source` found at `path`, checking its cost bounds and references.
pub fn compile_expr(
    source: &str,
    path: &str,
    data: &DataFields,
    limits: &Limits,
) -> Result<Expression, Diagnostic> {
    if source.len() > limits.expression_bytes_max {
        return Err(Diagnostic::error(
            Code::CelTooCostly,
            path,
            format!(
                "expression is {} bytes, more than expression_bytes_max ({})",
                source.len(),
                limits.expression_bytes_max
            ),
            "split the rule into several transitions or move the logic into data prepared by a worker",
        ));
    }
    let nesting = nesting_depth(source);
    if nesting > limits.expression_nesting_max {
        return Err(Diagnostic::error(
            Code::CelTooCostly,
            path,
            format!(
                "brackets and conditionals nest {nesting} deep, more than expression_nesting_max ({})",
                limits.expression_nesting_max
            ),
            "flatten the expression: split it with && / || or across guard and allow",
        ));
    }
    let program = Program::compile(source).map_err(|e| {
        let first = e
            .errors
            .first()
            .map(|e| e.msg.clone())
            .unwrap_or_else(|| e.to_string());
        Diagnostic::error(
            Code::CelSyntax,
            path,
            format!("CEL does not compile: {first} in `{source}`"),
            "check the CEL syntax: operators are &&, ||, !, ==, in; strings use quotes",
        )
    })?;
    let mut walk = Walk {
        data,
        nodes: 0,
        depth_max: 0,
        problems: Vec::new(),
        bound: Vec::new(),
    };
    walk.expr(program.expression(), 0);
    if walk.nodes > limits.expression_nodes_max {
        return Err(Diagnostic::error(
            Code::CelTooCostly,
            path,
            format!(
                "expression has {} AST nodes, more than expression_nodes_max ({})",
                walk.nodes, limits.expression_nodes_max
            ),
            "simplify the expression",
        ));
    }
    if walk.depth_max > limits.expression_comprehension_depth_max {
        return Err(Diagnostic::error(
            Code::CelTooCostly,
            path,
            format!(
                "comprehensions (all/exists/map/filter) nest {} deep, more than expression_comprehension_depth_max ({})",
                walk.depth_max, limits.expression_comprehension_depth_max
            ),
            "avoid nesting all/exists/map/filter; precompute the inner collection in the data",
        ));
    }
    if let Some(problem) = walk.problems.into_iter().next() {
        return Err(Diagnostic::error(
            Code::CelUnknownReference,
            path,
            format!("{problem} in `{source}`"),
            reference_hint(),
        ));
    }
    Ok(Expression {
        source: source.to_string(),
        program: Arc::new(program),
    })
}

/// The deepest nesting of `(`, `[`, `{` and `?` outside string literals. A conditional counts
/// as one level until the end of its enclosing bracket.
fn nesting_depth(source: &str) -> usize {
    let mut stack: Vec<usize> = vec![0];
    let mut deepest = 0;
    let mut quote: Option<char> = None;
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => stack.push(0),
            ')' | ']' | '}' if stack.len() > 1 => {
                stack.pop();
            }
            '?' => {
                if let Some(top) = stack.last_mut() {
                    *top += 1;
                }
            }
            _ => {}
        }
        deepest = deepest.max(stack.len() - 1 + stack.last().copied().unwrap_or(0));
    }
    deepest
}

fn reference_hint() -> String {
    format!(
        "use only {}; actor has {}, instance has {}, and instance.data has the properties of the data schema",
        ROOT_VARIABLES.join(", "),
        ACTOR_FIELDS.join(", "),
        INSTANCE_FIELDS.join(", ")
    )
}

struct Walk<'a> {
    data: &'a DataFields,
    nodes: usize,
    depth_max: usize,
    problems: Vec<String>,
    /// Variables bound by enclosing comprehensions.
    bound: Vec<String>,
}

impl Walk<'_> {
    fn expr(&mut self, e: &IdedExpr, depth: usize) {
        self.nodes += 1;
        match &e.expr {
            Expr::Ident(name) => self.ident(name),
            Expr::Select(select) => {
                if !self.select_path(e) {
                    self.expr(&select.operand, depth);
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.expr(target, depth);
                }
                for arg in &call.args {
                    self.expr(arg, depth);
                }
            }
            Expr::List(list) => list.elements.iter().for_each(|x| self.expr(x, depth)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.expr(&m.key, depth);
                        self.expr(&m.value, depth);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.expr(&f.value, depth);
                    }
                }
            }
            Expr::Comprehension(c) => {
                let depth = depth + 1;
                self.depth_max = self.depth_max.max(depth);
                self.expr(&c.iter_range, depth - 1);
                self.expr(&c.accu_init, depth - 1);
                let before = self.bound.len();
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                self.bound.push(c.accu_var.clone());
                self.expr(&c.loop_cond, depth);
                self.expr(&c.loop_step, depth);
                self.expr(&c.result, depth);
                self.bound.truncate(before);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn ident(&mut self, name: &str) {
        if !ROOT_VARIABLES.contains(&name) && !self.bound.iter().any(|b| b == name) {
            self.problems.push(format!("unknown variable `{name}`"));
        }
    }

    /// Checks a chain of field selections rooted at an identifier, like `instance.data.amount`.
    /// Returns true if the chain was fully handled.
    fn select_path(&mut self, e: &IdedExpr) -> bool {
        let mut fields = Vec::new();
        let mut cursor = e;
        while let Expr::Select(select) = &cursor.expr {
            fields.push(select.field.as_str());
            cursor = &select.operand;
        }
        let Expr::Ident(root) = &cursor.expr else {
            return false;
        };
        fields.reverse();
        self.nodes += fields.len();
        if self.bound.iter().any(|b| b == root) {
            return true;
        }
        self.ident(root);
        let known: &[&str] = match root.as_str() {
            "actor" => &ACTOR_FIELDS,
            "instance" => &INSTANCE_FIELDS,
            _ => return true,
        };
        let Some(first) = fields.first() else {
            return true;
        };
        if !known.contains(first) {
            self.problems
                .push(format!("`{root}` has no field `{first}`"));
            return true;
        }
        if root == "instance"
            && *first == "data"
            && let (Some(field), Some(declared)) = (fields.get(1), &self.data.0)
            && !declared.contains(*field)
        {
            self.problems.push(format!(
                "`instance.data.{field}` is not a property of the data schema"
            ));
        }
        true
    }
}

/// The bindings of one evaluation: `actor`, `instance`, `payload` and `now` as CEL values,
/// converted into a CEL context once and shared by every predicate of the evaluation.
pub struct Scope {
    context: Context<'static, 'static>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scope")
    }
}

impl Scope {
    pub fn new(actor: Value, instance: Value, payload: Value, now: Timestamp) -> Scope {
        static ENV: OnceLock<Arc<Env>> = OnceLock::new();
        let env = ENV.get_or_init(|| Arc::new(Env::stdlib()));
        let mut context = Context::with_env(Arc::clone(env));
        for (name, value) in [
            ("actor", actor),
            ("instance", instance),
            ("payload", payload),
            ("now", timestamp_value(now)),
        ] {
            context.add_variable_from_value(name, value);
        }
        Scope { context }
    }

    fn context(&self) -> &Context<'static, 'static> {
        &self.context
    }
}

/// Converts a timestamp into a CEL `google.protobuf.Timestamp` value (UTC).
pub fn timestamp_value(at: Timestamp) -> Value {
    let micros = at.as_micros();
    let utc = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    Value::Timestamp(utc.fixed_offset())
}

/// Converts JSON into a CEL value. Integers stay integers, other numbers become doubles.
pub fn json_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_value).collect()))
        }
        serde_json::Value::Object(map) => {
            let entries: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_value(v)))
                .collect();
            Value::Map(Map {
                map: Arc::new(entries),
            })
        }
    }
}

/// Builds a CEL map from string keys.
pub fn map_value(entries: Vec<(&str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.to_string())), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

pub fn string_value(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(names: &[&str]) -> DataFields {
        DataFields(Some(names.iter().map(|s| s.to_string()).collect()))
    }

    fn check(source: &str, expected: Result<(), &str>) {
        let got = compile_expr(
            source,
            "t",
            &fields(&["amount", "requester", "items"]),
            &Limits::default(),
        );
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(d), Err(fragment)) => {
                assert!(d.message.contains(fragment), "{source}: {}", d.message)
            }
            (got, want) => panic!("{source}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn static_checks() {
        check(
            "'approver' in actor.roles && actor.id != instance.data.requester",
            Ok(()),
        );
        check("instance.data.items.all(i, i.price < 100.0)", Ok(()));
        check("has(instance.data.amount)", Ok(()));
        check(
            "instance.data.colour == 'red'",
            Err("`instance.data.colour` is not a property"),
        );
        check("actor.name == 'x'", Err("`actor` has no field `name`"));
        check("user.id == 'x'", Err("unknown variable `user`"));
        check(
            "instance.data.items.all(i, instance.data.items.exists(j, j == i))",
            Err("nest 2 deep"),
        );
        check("1 +", Err("does not compile"));
        check(
            "((((((((((((true))))))))))))",
            Err("nest 12 deep, more than expression_nesting_max (8)"),
        );
        check(
            "instance.data.amount > 0 ? (1 > 0 ? true : false) : false",
            Ok(()),
        );
        check("'((((((((((((' == instance.data.requester", Ok(()));
    }

    #[test]
    fn runtime_errors_are_errors_not_panics() {
        let e = compile_expr(
            "instance.data.amount > 10",
            "t",
            &DataFields(None),
            &Limits::default(),
        )
        .unwrap();
        let instance = map_value(vec![(
            "data",
            json_value(&serde_json::json!({"amount": "ten"})),
        )]);
        let scope = Scope::new(
            Value::Null,
            instance,
            Value::Null,
            Timestamp::from_micros(0),
        );
        let err = e.eval_bool(&scope).unwrap_err();
        assert!(matches!(err, EvalError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("failed"), "{err}");
    }
}
