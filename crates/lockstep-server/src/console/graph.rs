//! A definition's state machine as SVG, laid out by layout-rs (a layered, Graphviz-style
//! layout): one box per state, one arrow per (transition, from-state). The definition page
//! labels states with their instance counts; an instance page marks its current state and
//! the transitions it took.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;
use lockstep_core::CompiledDefinition;

/// What to mark on the graph.
#[derive(Default)]
pub(crate) struct Marks<'a> {
    /// Instances per state, shown in the boxes.
    pub(crate) counts: Option<&'a BTreeMap<String, u64>>,
    /// The state an instance is in.
    pub(crate) current: Option<&'a str>,
    /// Transitions taken, as (transition, from) pairs.
    pub(crate) taken: BTreeSet<(String, String)>,
}

/// States with more outgoing arrows than this are drawn with one arrow per target state.
const LABELLED_EDGES_MAX: usize = 200;

/// The SVG of `definition`'s graph (without an XML header or inline style: the page's
/// Content-Security-Policy forbids inline style, and console.css styles the text).
pub(crate) fn svg(definition: &CompiledDefinition, marks: &Marks<'_>) -> String {
    let mut graph = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = HashMap::new();
    let max = marks
        .counts
        .and_then(|c| c.values().copied().max())
        .unwrap_or(0);
    for (name, spec) in &definition.states {
        let mut label = name.clone();
        if let Some(n) = marks.counts.map(|c| c.get(name).copied().unwrap_or(0)) {
            label.push_str(&format!("\n{n}"));
        }
        let shape = if spec.terminal {
            ShapeKind::new_double_circle(&label)
        } else {
            ShapeKind::new_box(&label)
        };
        let (fill, line) = if marks.current == Some(name.as_str()) {
            (Color::fast("#bfdbfe"), "#1d4ed8")
        } else if let Some(counts) = marks.counts {
            (heat(counts.get(name).copied().unwrap_or(0), max), "#334155")
        } else if name == &definition.initial {
            (Color::fast("#eef2ff"), "#4338ca")
        } else {
            (Color::fast("#ffffff"), "#334155")
        };
        let look = StyleAttr::new(Color::fast(line), 2, Some(fill), 6, 14);
        let class = if marks.current == Some(name.as_str()) {
            "class=\"state current\""
        } else {
            "class=\"state\""
        };
        let size = Point::new(
            (name.len() as f64 * 9.0 + 40.0).max(90.0),
            if marks.counts.is_some() { 56.0 } else { 40.0 },
        );
        let element =
            Element::create_with_properties(shape, look, Orientation::LeftToRight, size, class);
        handles.insert(name.clone(), graph.add_node(element));
    }
    let edges: usize = definition.transitions.values().map(|t| t.from.len()).sum();
    let mut drawn = BTreeSet::new();
    for t in definition.transitions.values() {
        for from in &t.from {
            let (Some(&a), Some(&b)) = (handles.get(from), handles.get(&t.to)) else {
                continue;
            };
            let taken = marks.taken.contains(&(t.name.clone(), from.clone()));
            let label = if edges > LABELLED_EDGES_MAX {
                if !drawn.insert((from.clone(), t.to.clone())) {
                    continue;
                }
                String::new()
            } else {
                t.name.clone()
            };
            let (color, width) = if taken {
                ("#1d4ed8", 3)
            } else if t.system {
                ("#94a3b8", 1)
            } else {
                ("#475569", 1)
            };
            let look = StyleAttr::new(Color::fast(color), width, None, 0, 12);
            let style = if t.system {
                LineStyleKind::Dashed
            } else {
                LineStyleKind::Normal
            };
            let arrow = Arrow::with_properties(
                LineEndKind::None,
                LineEndKind::Arrow,
                style,
                &label,
                &look,
                if taken {
                    "class=\"edge taken\""
                } else {
                    "class=\"edge\""
                },
                &None,
                &None,
            );
            graph.add_edge(arrow, a, b);
        }
    }
    let mut writer = SVGWriter::new();
    graph.do_it(false, false, false, &mut writer);
    strip(&writer.finalize())
}

/// A state's fill by its share of the busiest state's instances: white (none) to a strong
/// amber (the most).
fn heat(count: u64, max: u64) -> Color {
    if count == 0 || max == 0 {
        return Color::fast("#ffffff");
    }
    let share = (count as f64 / max as f64).clamp(0.0, 1.0);
    // From #fff7ed (light) to #fb923c (strong).
    let mix = |light: u8, strong: u8| {
        (f64::from(light) + (f64::from(strong) - f64::from(light)) * (0.25 + 0.75 * share)) as u32
    };
    let (r, g, b) = (mix(0xff, 0xfb), mix(0xf7, 0x92), mix(0xed, 0x3c));
    Color::new((r << 24) | (g << 16) | (b << 8) | 0xff)
}

/// Drops the XML declaration and the inline `<style>` block layout-rs writes (font classes
/// are in console.css).
fn strip(svg: &str) -> String {
    let svg = svg.find("<svg").map(|i| &svg[i..]).unwrap_or(svg);
    match (svg.find("<style>"), svg.find("</style>")) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}", &svg[..a], &svg[b + "</style>".len()..])
        }
        _ => svg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
workflow: po
states:
  draft: { initial: true }
  submitted: {}
  approved: { terminal: true }
transitions:
  submit: { from: draft, to: submitted }
  approve: { from: submitted, to: approved }
"#;

    fn definition() -> CompiledDefinition {
        lockstep_core::compile(None, SOURCE, &lockstep_core::Limits::default()).unwrap()
    }

    #[test]
    fn the_graph_names_every_state_and_transition_without_inline_style() {
        let svg = svg(&definition(), &Marks::default());
        for name in ["draft", "submitted", "approved", "submit", "approve"] {
            assert!(svg.contains(name), "{name} missing from {svg}");
        }
        assert!(svg.starts_with("<svg"));
        assert!(!svg.contains("<style"));
    }

    #[test]
    fn the_current_state_and_the_path_taken_are_marked() {
        let counts = BTreeMap::from([("submitted".to_string(), 7)]);
        let marks = Marks {
            counts: Some(&counts),
            current: Some("submitted"),
            taken: BTreeSet::from([("submit".to_string(), "draft".to_string())]),
        };
        let svg = svg(&definition(), &marks);
        assert!(svg.contains("state current"));
        assert_eq!(svg.matches("edge taken").count(), 1);
        assert!(svg.contains(">7<"), "{svg}");
        // The busiest state is the strongest colour; an empty one stays white.
        assert_eq!(heat(7, 7).to_web_color(), "#fb923cff");
        assert_eq!(heat(0, 7).to_web_color(), "#ffffffff");
    }
}
