//! Drawing a definition: Mermaid `stateDiagram-v2` and Graphviz DOT.
//!
//! Edges are labelled with the transition name and what else governs it: the event that takes
//! it, its gates, `system` for engine-only moves, and the SLAs and expiries that act on it.

use std::fmt::Write;

use crate::definition::GateDef;
use crate::validate::CompiledDefinition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Mermaid,
    Dot,
}

struct Edge {
    from: String,
    to: String,
    label: String,
}

fn gate_text(gate: &GateDef) -> String {
    match gate {
        GateDef::AfterEntering(d) => d.0.clone(),
        GateDef::Field(f) => match &f.offset {
            Some(o) => format!("data.{} + {}", f.field, o.0),
            None => format!("data.{}", f.field),
        },
    }
}

fn edges(def: &CompiledDefinition) -> Vec<Edge> {
    let d = &def.definition;
    let mut out = Vec::new();
    for (name, t) in &d.transitions {
        let mut parts = vec![name.clone()];
        if let Some(on) = &t.on {
            parts.push(format!("on {on}"));
        }
        if let Some(g) = &t.not_before {
            parts.push(format!("not before {}", gate_text(g)));
        }
        if let Some(g) = &t.not_after {
            parts.push(format!("not after {}", gate_text(g)));
        }
        for (sla_name, sla) in &d.slas {
            if sla
                .on_breach
                .as_ref()
                .is_some_and(|a| a.transition == *name)
            {
                parts.push(format!("SLA {sla_name} breach ({})", sla.within.0));
            }
        }
        for state in d.states.values() {
            if let Some(e) = state.expires.as_ref().filter(|e| e.transition == *name) {
                parts.push(format!("expires after {}", e.after.0));
            }
        }
        if t.system {
            parts.push("system".into());
        }
        for from in t.from.iter() {
            out.push(Edge {
                from: from.clone(),
                to: t.to.clone(),
                label: parts.join(" · "),
            });
        }
    }
    out
}

/// Renders the definition as a diagram.
pub fn render(def: &CompiledDefinition, format: Format) -> String {
    match format {
        Format::Mermaid => mermaid(def),
        Format::Dot => dot(def),
    }
}

fn mermaid(def: &CompiledDefinition) -> String {
    let d = &def.definition;
    let mut s = String::from("stateDiagram-v2\n");
    let _ = writeln!(s, "    %% {} @ {}", d.workflow, &def.version[..12]);
    let _ = writeln!(s, "    [*] --> {}", def.initial);
    for e in edges(def) {
        let _ = writeln!(
            s,
            "    {} --> {}: {}",
            e.from,
            e.to,
            e.label.replace(':', "#58;")
        );
    }
    for (name, state) in &d.states {
        if state.terminal {
            let _ = writeln!(s, "    {name} --> [*]");
        }
    }
    for (name, sla) in &d.slas {
        let starts: Vec<&str> = sla.start.enter.iter().map(String::as_str).collect();
        if let Some(first) = starts.first() {
            let _ = writeln!(
                s,
                "    note right of {first}: SLA {name} starts, {}{}",
                sla.within.0,
                sla.calendar
                    .as_ref()
                    .map(|c| format!(" ({c} hours)"))
                    .unwrap_or_default()
            );
        }
    }
    s
}

fn dot(def: &CompiledDefinition) -> String {
    let d = &def.definition;
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", d.workflow);
    let _ = writeln!(s, "  rankdir=LR;\n  node [shape=box, style=rounded];");
    let _ = writeln!(
        s,
        "  \"__start\" [shape=point];\n  \"__start\" -> \"{}\";",
        def.initial
    );
    for (name, state) in &d.states {
        let shape = if state.terminal {
            ", peripheries=2"
        } else {
            ""
        };
        let _ = writeln!(s, "  \"{name}\" [label=\"{name}\"{shape}];");
    }
    for e in edges(def) {
        let _ = writeln!(
            s,
            "  \"{}\" -> \"{}\" [label=\"{}\"];",
            e.from,
            e.to,
            e.label.replace('"', "\\\"")
        );
    }
    s.push_str("}\n");
    s
}
