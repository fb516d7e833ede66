//! Data-driven validation tests: one fixture per diagnostic code under `fixtures/invalid/`,
//! each breaking exactly one rule, compared diagnostic by diagnostic (code, severity, line,
//! column and message); then bad inputs that must give a located diagnostic, never a panic or
//! a hang; then the examples, which must produce no diagnostic at all.

use std::path::{Path, PathBuf};

use lockstep_core::{Code, Limits, Severity, check as validate};

/// One expected diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expect {
    code: &'static str,
    severity: Severity,
    line: usize,
    column: usize,
    message: String,
}

fn error(code: Code, line: usize, column: usize, message: &str) -> Expect {
    Expect {
        code: code.as_str(),
        severity: Severity::Error,
        line,
        column,
        message: message.to_string(),
    }
}

fn warning(code: Code, line: usize, column: usize, message: &str) -> Expect {
    Expect {
        code: code.as_str(),
        severity: Severity::Warning,
        line,
        column,
        message: message.to_string(),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid")
}

/// Validates `text` and returns a description of every difference from `expected`.
fn differences(file: &str, text: &str, limits: &Limits, expected: &[Expect]) -> Option<String> {
    let checked = validate(Some(file), text, limits);
    let actual: Vec<Expect> = checked
        .diagnostics
        .iter()
        .map(|d| Expect {
            code: d.code.as_str(),
            severity: d.severity,
            line: d.line,
            column: d.column,
            message: d.message.clone(),
        })
        .collect();
    let mut problems = Vec::new();
    if actual != expected {
        let list = |v: &[Expect]| {
            v.iter()
                .map(|e| format!("    {e:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        problems.push(format!(
            "diagnostics differ\n  expected:\n{}\n  actual:\n{}",
            list(expected),
            list(&actual)
        ));
    }
    for d in &checked.diagnostics {
        if d.file.as_deref() != Some(file) {
            problems.push(format!("{d}: file is {:?}, expected {file:?}", d.file));
        }
        if d.line == 0 || d.column == 0 {
            problems.push(format!("{d}: not located"));
        }
        if d.hint.is_empty() {
            problems.push(format!("{d}: no hint"));
        }
    }
    let has_errors = checked
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error);
    if checked.compiled.is_some() == has_errors {
        problems.push(format!(
            "compiled is {}, but has_errors is {has_errors}",
            checked.compiled.is_some()
        ));
    }
    (!problems.is_empty()).then(|| format!("{file}: {}", problems.join("\n")))
}

/// Validates a source given inline and panics with every difference from `expected`.
fn check_text(file: &str, text: &str, limits: &Limits, expected: &[Expect]) {
    if let Some(problem) = differences(file, text, limits, expected) {
        panic!("{problem}");
    }
}

// ---------------------------------------------------------------------------------------------
// One fixture per code.

struct Case {
    /// The fixture's file name without `.yaml`: the slug of the code it breaks.
    fixture: &'static str,
    /// Tightens the default limits, for the rules that are about limits.
    limits: fn(&mut Limits),
    expected: fn() -> Vec<Expect>,
}

fn default_limits(_: &mut Limits) {}

fn tiny_file(limits: &mut Limits) {
    limits.definition_bytes_max = 128;
}

fn two_states(limits: &mut Limits) {
    limits.states_max = 2;
}

const CASES: &[Case] = &[
    Case {
        fixture: "yaml-syntax",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::YamlSyntax,
                7,
                1,
                "malformed YAML: while parsing a flow mapping, did not find expected ',' or '}'",
            )]
        },
    },
    Case {
        fixture: "unknown-key",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::UnknownKey,
                9,
                5,
                "transitions.close: unknown field `alow`, expected one of `from`, `to`, `description`, `on`, `allow`, `guard`, `system`, `not_before`, `not_after`, `payload`, `effects`",
            )]
        },
    },
    Case {
        fixture: "duplicate-key",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::DuplicateKey,
                7,
                3,
                "the key `close` appears twice in the same mapping",
            )]
        },
    },
    Case {
        fixture: "file-too-large",
        limits: tiny_file,
        expected: || {
            vec![error(
                Code::FileTooLarge,
                1,
                1,
                "the definition is 255 bytes, more than definition_bytes_max (128 bytes)",
            )]
        },
    },
    Case {
        fixture: "nesting-too-deep",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::NestingTooDeep,
                2,
                45,
                "the YAML nests deeper than definition_depth_max (32)",
            )]
        },
    },
    Case {
        fixture: "yaml-alias",
        limits: default_limits,
        expected: || {
            vec![
                error(
                    Code::YamlAlias,
                    6,
                    48,
                    "YAML anchors (`&name`) are not supported in definitions",
                ),
                error(
                    Code::YamlAlias,
                    7,
                    42,
                    "YAML aliases (`*name`) are not supported in definitions",
                ),
            ]
        },
    },
    Case {
        fixture: "invalid-value",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidValue,
                11,
                9,
                "an effect must have exactly one of `task` or `emit`",
            )]
        },
    },
    Case {
        fixture: "limit-exceeded",
        limits: two_states,
        expected: || {
            vec![error(
                Code::LimitExceeded,
                3,
                1,
                "3 states is more than states_max (2)",
            )]
        },
    },
    Case {
        fixture: "invalid-name",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidName,
                4,
                3,
                "`in review` is not a valid state name",
            )]
        },
    },
    Case {
        fixture: "unknown-state",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::UnknownState,
                7,
                23,
                "`nowhere` is not a declared state",
            )]
        },
    },
    Case {
        fixture: "unreachable-state",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::UnreachableState,
                5,
                3,
                "state `archived` cannot be reached from the initial state `open`",
            )]
        },
    },
    Case {
        fixture: "dead-end-state",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::DeadEndState,
                4,
                3,
                "state `stuck` is not terminal but no transition leaves it",
            )]
        },
    },
    Case {
        fixture: "transition-from-terminal",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::TransitionFromTerminal,
                7,
                13,
                "transition `reopen` leaves `done`, which is terminal",
            )]
        },
    },
    Case {
        fixture: "no-initial-state",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::NoInitialState,
                2,
                1,
                "no state is marked `initial: true`",
            )]
        },
    },
    Case {
        fixture: "several-initial-states",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::SeveralInitialStates,
                3,
                11,
                "several states are initial: `draft`, `open`",
            )]
        },
    },
    Case {
        fixture: "cel-syntax",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::CelSyntax,
                6,
                34,
                "CEL does not compile: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} in `'clerk' in actor.roles &&`",
            )]
        },
    },
    Case {
        fixture: "cel-unknown-reference",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::CelUnknownReference,
                10,
                67,
                "`instance.data.total` is not a property of the data schema in `instance.data.total < 100.0`",
            )]
        },
    },
    Case {
        fixture: "cel-too-costly",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::CelTooCostly,
                10,
                5,
                "comprehensions (all/exists/map/filter) nest 2 deep, more than expression_comprehension_depth_max (1)",
            )]
        },
    },
    Case {
        fixture: "unknown-transition",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::UnknownTransition,
                3,
                48,
                "`timeout` is not a declared transition",
            )]
        },
    },
    Case {
        fixture: "action-not-system",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::ActionNotSystem,
                3,
                48,
                "`close` is taken by the engine but is not `system: true`",
            )]
        },
    },
    Case {
        fixture: "ambiguous-event",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::AmbiguousEvent,
                8,
                35,
                "event `order.shipped` in state `open` would take both `close` and `fail`",
            )]
        },
    },
    Case {
        fixture: "action-not-applicable",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::ActionNotApplicable,
                12,
                61,
                "`ship` is `system: true`, so the worker completing the task could never take it",
            )]
        },
    },
    Case {
        fixture: "invalid-duration",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidDuration,
                9,
                5,
                "`16x` is not a duration: unknown unit `x`",
            )]
        },
    },
    Case {
        fixture: "invalid-calendar",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidCalendar,
                3,
                3,
                "calendar `business`: `Mars/Olympus` is not an IANA time zone; write e.g. Europe/Berlin or America/New_York",
            )]
        },
    },
    Case {
        fixture: "unknown-calendar",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::UnknownCalendar,
                10,
                5,
                "`business` is not a declared calendar",
            )]
        },
    },
    Case {
        fixture: "invalid-percent",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidPercent,
                10,
                20,
                "`150%` is not a percentage between 1% and 99%",
            )]
        },
    },
    Case {
        fixture: "invalid-retry",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidRetry,
                15,
                20,
                "max_attempts is 0; it must be between 1 and 100",
            )]
        },
    },
    Case {
        fixture: "invalid-data-schema",
        limits: default_limits,
        expected: || {
            vec![error(
                Code::InvalidDataSchema,
                3,
                3,
                "the data schema at `/type` is not a valid JSON Schema: \"objekt\" is not valid under any of the schemas listed in the 'anyOf' keyword",
            )]
        },
    },
    Case {
        fixture: "allow-missing",
        limits: default_limits,
        expected: || {
            vec![warning(
                Code::AllowMissing,
                6,
                3,
                "transition `close` has no `allow`, so every human actor is refused",
            )]
        },
    },
];

#[test]
fn every_fixture_gives_exactly_its_diagnostics() {
    let mut failures = Vec::new();
    for case in CASES {
        let file = format!("{}.yaml", case.fixture);
        let text = std::fs::read_to_string(fixtures().join(&file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut limits = Limits::default();
        (case.limits)(&mut limits);
        if let Some(problem) = differences(&file, &text, &limits, &(case.expected)()) {
            failures.push(problem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_code_has_a_fixture_that_breaks_only_its_rule() {
    let mut missing = Vec::new();
    for code in Code::ALL {
        let Some(case) = CASES.iter().find(|c| c.fixture == code.slug()) else {
            missing.push(format!("{} ({}): no case", code.as_str(), code.slug()));
            continue;
        };
        if !fixtures().join(format!("{}.yaml", case.fixture)).is_file() {
            missing.push(format!(
                "{}: no fixture file {}.yaml",
                code.as_str(),
                case.fixture
            ));
        }
        let expected = (case.expected)();
        if expected.is_empty() || expected.iter().any(|e| e.code != code.as_str()) {
            missing.push(format!(
                "{}: fixture {} must give only {} diagnostics, expects {expected:?}",
                code.as_str(),
                case.fixture,
                code.as_str()
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_fixture_file_has_a_case() {
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let slug = name.strip_suffix(".yaml").unwrap_or(&name);
        if !CASES.iter().any(|c| c.fixture == slug) {
            orphans.push(name);
        }
    }
    assert!(orphans.is_empty(), "fixtures without a case: {orphans:?}");
}

// ---------------------------------------------------------------------------------------------
// Bad inputs.

const BASE: &str = "workflow: w
states:
  open: { initial: true }
  done: { terminal: true }
transitions:
  close: { from: open, to: done, allow: \"'clerk' in actor.roles\" }
";

/// A definition whose transition `close` has the given guard (line 14, column 5), with a data
/// schema declaring `amount`.
fn with_guard(guard: &str) -> String {
    format!(
        "workflow: w
data:
  type: object
  properties:
    amount: {{ type: number }}
states:
  open: {{ initial: true }}
  done: {{ terminal: true }}
transitions:
  close:
    from: open
    to: done
    allow: \"'clerk' in actor.roles\"
    guard: '{guard}'
"
    )
}

/// `BASE` with `open` expiring after `after` through a system transition `timeout`.
fn with_expiry(after: &str) -> String {
    BASE.replace(
        "open: { initial: true }",
        &format!("open: {{ initial: true, expires: {{ after: {after}, transition: timeout }} }}"),
    ) + "  timeout: { from: open, to: done, system: true }\n"
}

/// `BASE` with one calendar `biz` given by the flow mapping `calendar` (line 3, column 3).
fn with_calendar(calendar: &str) -> String {
    BASE.replace(
        "states:",
        &format!("calendars:\n  biz: {calendar}\nstates:"),
    )
}

/// `BASE` with one SLA `s` on `open` given by the flow mapping entries `fields` (line 6).
fn with_sla(fields: &str) -> String {
    BASE.replace(
        "transitions:",
        &format!("slas:\n  s: {{ start: {{ enter: open }}, {fields} }}\ntransitions:"),
    )
}

fn defaults() -> Limits {
    Limits::default()
}

#[test]
fn base_is_valid() {
    check_text("base.yaml", BASE, &defaults(), &[]);
    check_text(
        "guard.yaml",
        &with_guard("instance.data.amount < 100.0"),
        &defaults(),
        &[],
    );
    check_text("expiry.yaml", &with_expiry("30d"), &defaults(), &[]);
    check_text(
        "calendar.yaml",
        &with_calendar("{ timezone: UTC, weekly: { mon-fri: \"09:00-17:00\" } }"),
        &defaults(),
        &[],
    );
    check_text(
        "sla.yaml",
        &with_sla("within: 1h, warn_at: [50%, 75%]"),
        &defaults(),
        &[],
    );
}

#[test]
fn malformed_yaml() {
    check_text(
        "tabs.yaml",
        "workflow: w\nstates:\n\topen: {}\n",
        &defaults(),
        &[error(
            Code::YamlSyntax,
            3,
            2,
            "malformed YAML: tabs disallowed within this context (block indentation)",
        )],
    );
    check_text(
        "unclosed.yaml",
        &BASE.replace("\"'clerk' in actor.roles\" }", "\"'clerk' in actor.roles }"),
        &defaults(),
        &[error(
            Code::YamlSyntax,
            6,
            41,
            "malformed YAML: while scanning a quoted scalar, found unexpected end of stream",
        )],
    );
    check_text(
        "scalar.yaml",
        "hello\n",
        &defaults(),
        &[error(
            Code::InvalidValue,
            1,
            1,
            "invalid type: string \"hello\", expected struct Definition",
        )],
    );
    check_text(
        "list.yaml",
        "- a\n- b\n",
        &defaults(),
        &[error(
            Code::InvalidValue,
            1,
            1,
            "invalid type: sequence, expected struct Definition",
        )],
    );
    check_text(
        "complex-key.yaml",
        &BASE.replace(
            "  done: { terminal: true }",
            "  ? [a, b]\n  : { terminal: true }",
        ),
        &defaults(),
        &[error(
            Code::InvalidValue,
            4,
            5,
            "a mapping key must be a plain string, not a list or mapping",
        )],
    );
    // Problems found before a syntax error are reported with it.
    check_text(
        "alias-then-syntax.yaml",
        "workflow: &w w\nstates: [\n",
        &defaults(),
        &[
            error(
                Code::YamlAlias,
                1,
                14,
                "YAML anchors (`&name`) are not supported in definitions",
            ),
            error(
                Code::YamlSyntax,
                3,
                1,
                "malformed YAML: while parsing a node, did not find expected node content",
            ),
        ],
    );
    check_text(
        "two-documents.yaml",
        &format!("{BASE}---\n{BASE}"),
        &defaults(),
        &[error(
            Code::YamlSyntax,
            7,
            1,
            "a second YAML document starts here; a definition file holds exactly one",
        )],
    );
}

#[test]
fn missing_and_mistyped_values() {
    check_text(
        "missing-to.yaml",
        &BASE.replace("to: done, ", ""),
        &defaults(),
        &[error(
            Code::InvalidValue,
            6,
            10,
            "transitions.close: missing field `to`",
        )],
    );
    check_text(
        "missing-states.yaml",
        "workflow: w\ntransitions: {}\n",
        &defaults(),
        &[error(Code::InvalidValue, 1, 1, "missing field `states`")],
    );
    check_text(
        "wrong-type.yaml",
        &BASE.replace("initial: true", "initial: yes please"),
        &defaults(),
        &[error(
            Code::InvalidValue,
            3,
            20,
            "states.open.initial: invalid type: string \"yes please\", expected a boolean",
        )],
    );
    check_text(
        "gate-field.yaml",
        &with_guard("true").replace(
            "    guard: 'true'\n",
            "    not_after: { field: deadline }\n",
        ),
        &defaults(),
        &[error(
            Code::InvalidValue,
            14,
            18,
            "`deadline` is not a property of the data schema",
        )],
    );
}

#[test]
fn unknown_keys() {
    check_text(
        "top.yaml",
        &format!("{BASE}colour: red\n"),
        &defaults(),
        &[error(
            Code::UnknownKey,
            7,
            1,
            "unknown field `colour`, expected one of `workflow`, `description`, `data`, `create`, `calendars`, `states`, `slas`, `transitions`, `ignore_events`, `index`",
        )],
    );
    check_text(
        "merge-key.yaml",
        &BASE.replace(
            "done: { terminal: true }",
            "done: { <<: { terminal: true } }",
        ),
        &defaults(),
        &[error(
            Code::UnknownKey,
            4,
            11,
            "states.done: unknown field `<<`, expected one of `initial`, `terminal`, `description`, `expires`",
        )],
    );
}

#[test]
fn duplicate_keys() {
    check_text(
        "top.yaml",
        &format!("{BASE}workflow: x\n"),
        &defaults(),
        &[error(
            Code::DuplicateKey,
            7,
            1,
            "the key `workflow` appears twice in the same mapping",
        )],
    );
    check_text(
        "state.yaml",
        &BASE.replace(
            "  done: { terminal: true }",
            "  open: {}\n  done: { terminal: true }",
        ),
        &defaults(),
        &[error(
            Code::DuplicateKey,
            4,
            3,
            "the key `open` appears twice in the same mapping",
        )],
    );
    check_text(
        "inner.yaml",
        &BASE.replace("{ initial: true }", "{ initial: true, initial: false }"),
        &defaults(),
        &[error(
            Code::DuplicateKey,
            3,
            26,
            "the key `initial` appears twice in the same mapping",
        )],
    );
}

#[test]
fn file_over_definition_bytes_max() {
    let text = format!("{BASE}description: \"{}\"\n", "x".repeat(300 * 1024));
    let message = format!(
        "the definition is {} bytes, more than definition_bytes_max (262144 bytes)",
        text.len()
    );
    check_text(
        "large.yaml",
        &text,
        &defaults(),
        &[error(Code::FileTooLarge, 1, 1, &message)],
    );
}

#[test]
fn nesting_beyond_definition_depth_max() {
    let mut block = String::from("workflow: w\ndescription:\n");
    for level in 1..=40 {
        block.push_str(&format!("{}k:\n", "  ".repeat(level)));
    }
    check_text(
        "block.yaml",
        &block,
        &defaults(),
        &[error(
            Code::NestingTooDeep,
            34,
            66,
            "the YAML nests deeper than definition_depth_max (32)",
        )],
    );
    let flow = format!(
        "workflow: w\ndescription: {}deep{}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    check_text(
        "flow.yaml",
        &flow,
        &defaults(),
        &[error(
            Code::NestingTooDeep,
            2,
            45,
            "the YAML nests deeper than definition_depth_max (32)",
        )],
    );
    // Far deeper than the YAML scanner's own limit (256 flow levels), which stops first; nothing
    // overflows.
    let flow = format!(
        "workflow: w\ndescription: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    check_text(
        "very-deep.yaml",
        &flow,
        &defaults(),
        &[error(
            Code::YamlSyntax,
            2,
            269,
            "malformed YAML: recursion limit exceeded",
        )],
    );
}

#[test]
fn anchors_and_aliases_are_refused() {
    let laughs = "a: &a [lol, lol, lol]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n";
    let anchor = "YAML anchors (`&name`) are not supported in definitions";
    let alias = "YAML aliases (`*name`) are not supported in definitions";
    check_text(
        "laughs.yaml",
        laughs,
        &defaults(),
        &[
            error(Code::YamlAlias, 1, 7, anchor),
            error(Code::YamlAlias, 2, 7, anchor),
            error(Code::YamlAlias, 2, 8, alias),
            error(Code::YamlAlias, 2, 12, alias),
            error(Code::YamlAlias, 2, 16, alias),
            error(Code::YamlAlias, 3, 5, alias),
            error(Code::YamlAlias, 3, 9, alias),
            error(Code::YamlAlias, 3, 13, alias),
        ],
    );
    // A real billion laughs stays bounded: at most 50 diagnostics, no expansion.
    let mut bomb = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for (name, prev) in [
        ("b", "a"),
        ("c", "b"),
        ("d", "c"),
        ("e", "d"),
        ("f", "e"),
        ("g", "f"),
        ("h", "g"),
        ("i", "h"),
    ] {
        bomb.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
    }
    let checked = validate(Some("bomb.yaml"), &bomb, &defaults());
    assert!(checked.compiled.is_none());
    assert_eq!(checked.diagnostics.len(), 50);
    assert!(
        checked
            .diagnostics
            .iter()
            .all(|d| d.code == Code::YamlAlias && d.line > 0 && d.column > 0)
    );
}

#[test]
fn cel_over_expression_bytes_max() {
    let guard = format!("instance.data.amount < {}", "1".repeat(3000));
    check_text(
        "huge.yaml",
        &with_guard(&guard),
        &defaults(),
        &[error(
            Code::CelTooCostly,
            14,
            5,
            "expression is 3023 bytes, more than expression_bytes_max (2048)",
        )],
    );
}

#[test]
fn costly_cel() {
    check_text(
        "nodes.yaml",
        &with_guard(&vec!["instance.data.amount == 1.0"; 60].join(" || ")),
        &defaults(),
        &[error(
            Code::CelTooCostly,
            14,
            5,
            "expression has 359 AST nodes, more than expression_nodes_max (256)",
        )],
    );
    check_text(
        "chain.yaml",
        &with_guard(&format!("{} > 0", vec!["1"; 600].join("+"))),
        &defaults(),
        &[error(
            Code::CelTooCostly,
            14,
            5,
            "expression has 1201 AST nodes, more than expression_nodes_max (256)",
        )],
    );
    check_text(
        "comprehensions.yaml",
        &with_guard("[1, 2].all(x, [3].exists(y, [4].all(z, x < y)))"),
        &defaults(),
        &[error(
            Code::CelTooCostly,
            14,
            5,
            "comprehensions (all/exists/map/filter) nest 3 deep, more than expression_comprehension_depth_max (1)",
        )],
    );
}

#[test]
fn cel_that_does_not_compile() {
    check_text(
        "token.yaml",
        &with_guard("instance.data.amount ~ 3"),
        &defaults(),
        &[error(
            Code::CelSyntax,
            14,
            5,
            "CEL does not compile: Syntax error: token recognition error at: '~' in `instance.data.amount ~ 3`",
        )],
    );
}

#[test]
fn cel_unknown_references() {
    let cases = [
        (
            "user.amount > 3.0",
            "unknown variable `user` in `user.amount > 3.0`",
        ),
        (
            "actor.name == \"x\"",
            "`actor` has no field `name` in `actor.name == \"x\"`",
        ),
        (
            "instance.status == \"x\"",
            "`instance` has no field `status` in `instance.status == \"x\"`",
        ),
        (
            "instance.data.total > 3.0",
            "`instance.data.total` is not a property of the data schema in `instance.data.total > 3.0`",
        ),
    ];
    for (guard, message) in cases {
        check_text(
            "reference.yaml",
            &with_guard(guard),
            &defaults(),
            &[error(Code::CelUnknownReference, 14, 5, message)],
        );
    }
}

#[test]
fn invalid_durations() {
    let cases = [
        ("3y", "`3y` is not a duration: unknown unit `y`"),
        ("\"\"", "empty duration"),
        ("30", "`30` is not a duration: `30` has no unit"),
        ("99999d", "`99999d` is longer than duration_ms_max (3660d)"),
        (
            "99999999999999999999d",
            "`99999999999999999999d` is not a duration: number too large",
        ),
    ];
    for (after, message) in cases {
        check_text(
            "expiry.yaml",
            &with_expiry(after),
            &defaults(),
            &[error(Code::InvalidDuration, 3, 37, message)],
        );
    }
    check_text(
        "gate.yaml",
        &BASE.replace("to: done,", "to: done, not_before: soon,"),
        &defaults(),
        &[error(
            Code::InvalidDuration,
            6,
            34,
            "`soon` is not a duration: expected a number at `soon`",
        )],
    );
    check_text(
        "zero-budget.yaml",
        &with_sla("within: 0s"),
        &defaults(),
        &[error(
            Code::InvalidDuration,
            6,
            32,
            "an SLA budget of zero would breach at once",
        )],
    );
}

#[test]
fn invalid_calendars() {
    let cases = [
        (
            "{ timezone: UTC, weekly: { mon-fri: \"9-17\" } }",
            "calendar `biz`: `9` is not a time of day; write HH:MM between 00:00 and 24:00",
        ),
        (
            "{ timezone: UTC, weekly: { monday: \"09:00-17:00\" } }",
            "calendar `biz`: `monday` is not a weekday; use mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, or a list like sat,sun",
        ),
        (
            "{ timezone: UTC, weekly: { mon-fri: \"09:00-17:00\" }, holidays: [2026-13-45] }",
            "calendar `biz`: holiday `2026-13-45` is not a date; write YYYY-MM-DD, e.g. 2026-12-24",
        ),
    ];
    for (calendar, message) in cases {
        check_text(
            "calendar.yaml",
            &with_calendar(calendar),
            &defaults(),
            &[error(Code::InvalidCalendar, 3, 3, message)],
        );
    }
}

#[test]
fn invalid_percentages() {
    check_text(
        "no-sign.yaml",
        &with_sla("within: 1h, warn_at: [50]"),
        &defaults(),
        &[error(
            Code::InvalidPercent,
            6,
            54,
            "`50` is not a percentage between 1% and 99%",
        )],
    );
    check_text(
        "zero.yaml",
        &with_sla("within: 1h, warn_at: [0%]"),
        &defaults(),
        &[error(
            Code::InvalidPercent,
            6,
            54,
            "`0%` is not a percentage between 1% and 99%",
        )],
    );
    check_text(
        "descending.yaml",
        &with_sla("within: 1h, warn_at: [75%, 50%]"),
        &defaults(),
        &[error(
            Code::InvalidPercent,
            6,
            59,
            "`50%` is not above the previous threshold",
        )],
    );
}

#[test]
fn invalid_schemas_point_at_the_offending_keyword() {
    check_text(
        "payload.yaml",
        &BASE.replace(
            "to: done,",
            "to: done, payload: { type: object, properties: { n: { minimum: x } } },",
        ),
        &defaults(),
        &[error(
            Code::InvalidDataSchema,
            6,
            78,
            "the payload schema at `/properties/n/minimum` is not a valid JSON Schema: \"x\" is not of type \"number\"",
        )],
    );
}

#[test]
fn empty_and_odd_text() {
    let empty = [error(Code::YamlSyntax, 1, 1, "the file is empty")];
    check_text("empty.yaml", "", &defaults(), &empty);
    check_text("blank.yaml", "  \n\n", &defaults(), &empty);
    check_text("comment.yaml", "# nothing here\n", &defaults(), &empty);
    // A byte-order mark is not content.
    check_text("bom.yaml", &format!("\u{feff}{BASE}"), &defaults(), &[]);
    check_text(
        "nul.yaml",
        &BASE.replace("workflow: w", "workflow: w\u{0}"),
        &defaults(),
        &[error(
            Code::YamlSyntax,
            1,
            12,
            "control character U+0000 is not allowed in YAML",
        )],
    );
    check_text(
        "escape.yaml",
        &BASE.replace(
            "done: { terminal: true }",
            "done: { terminal: true }\u{1b}[0m",
        ),
        &defaults(),
        &[error(
            Code::YamlSyntax,
            4,
            27,
            "control character U+001B is not allowed in YAML",
        )],
    );
    // What a lossy decoding of invalid UTF-8 leaves behind.
    check_text(
        "replacement.yaml",
        &BASE.replace("workflow: w", "workflow: w\u{fffd}"),
        &defaults(),
        &[error(
            Code::InvalidName,
            1,
            1,
            "`w\u{fffd}` is not a valid workflow name",
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// The examples.

#[test]
fn examples_have_no_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        check_text(&file, &text, &defaults(), &[]);
        seen += 1;
    }
    assert!(seen > 0, "no examples in {}", dir.display());
}

#[test]
fn index_names_data_fields_within_bounds() {
    let base = "workflow: w\ndata:\n  type: object\n  properties:\n    customer_id: { type: string }\nstates:\n  a: { initial: true }\n  b: { terminal: true }\ntransitions:\n  t: { from: a, to: b }\n";
    let good = format!("{base}index: {{ customer_id: string }}\n");
    assert!(
        validate(Some("w.yaml"), &good, &Limits::default())
            .compiled
            .is_some()
    );
    let checked = validate(
        Some("w.yaml"),
        &format!("{base}index: {{ amount: number, \"a..b\": string }}\n"),
        &Limits::default(),
    );
    let messages: Vec<String> = checked.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`amount` is not a property of the data schema")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("not an indexable field name")),
        "{messages:?}"
    );
    let bad_type = validate(
        Some("w.yaml"),
        &format!("{base}index: {{ customer_id: text }}\n"),
        &Limits::default(),
    );
    assert!(bad_type.compiled.is_none());
}
