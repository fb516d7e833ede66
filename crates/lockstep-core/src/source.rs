//! Reading definitions from YAML with precise locations.
//!
//! Parsing happens in two passes. The first walks yaml-rust2's marked events to check the
//! limits (size, depth), refuse anchors and duplicate keys, and remember where every key is, so
//! that later diagnostics can point at a line and column. The second deserializes into
//! [`Definition`] with serde, whose errors carry their own location.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::definition::Definition;
use crate::diagnostic::{Code, Diagnostic};
use crate::limits::Limits;

/// Where each element of a definition was written, by dotted path.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    file: Option<String>,
    spans: HashMap<String, (usize, usize)>,
}

impl SourceMap {
    /// The line and column of `path`, or of its nearest located ancestor.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut current = path;
        loop {
            if let Some(&span) = self.spans.get(current) {
                return span;
            }
            match current.rfind(['.', '[']) {
                Some(cut) => current = &current[..cut],
                None => return self.spans.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    /// Fills in file, line and column of a diagnostic from its path.
    pub fn place(&self, mut diagnostic: Diagnostic) -> Diagnostic {
        let (line, column) = self.locate(&diagnostic.path);
        diagnostic.file = self.file.clone();
        diagnostic.line = line;
        diagnostic.column = column;
        diagnostic
    }

    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }
}

/// What kind of file [`parse_yaml`] reads, for its messages.
#[derive(Clone, Copy, Debug)]
pub struct FileKind {
    /// What the file holds, e.g. `definition`.
    pub noun: &'static str,
    /// The JSON Schema that lists its keys, e.g. `schema/workflow.schema.json`.
    pub schema: &'static str,
    /// How to start an empty file.
    pub empty_hint: &'static str,
    /// Largest file in bytes, and deepest nesting, with the names of those limits.
    pub bytes_max: usize,
    pub depth_max: usize,
    pub bytes_limit: &'static str,
    pub depth_limit: &'static str,
}

impl FileKind {
    /// A workflow definition, within `limits`.
    pub fn definition(limits: &Limits) -> FileKind {
        FileKind {
            noun: "definition",
            schema: "schema/workflow.schema.json",
            empty_hint: "start with `workflow: <name>`, `states:` and `transitions:`",
            bytes_max: limits.definition_bytes_max,
            depth_max: limits.definition_depth_max,
            bytes_limit: "definition_bytes_max",
            depth_limit: "definition_depth_max",
        }
    }
}

/// Parses a definition from YAML. On failure, every diagnostic is already located.
pub fn parse_definition(
    file: Option<&str>,
    text: &str,
    limits: &Limits,
) -> Result<(Definition, SourceMap), Vec<Diagnostic>> {
    parse_yaml(file, text, &FileKind::definition(limits))
}

/// Parses a YAML file of `kind` into `T` (whose serde errors carry their location), with the
/// checks of definitions: size and depth limits, no anchors or aliases, no duplicate keys,
/// one document. On failure every diagnostic is located; on success the [`SourceMap`] locates
/// any element by path, for the caller's own checks.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: Option<&str>,
    text: &str,
    kind: &FileKind,
) -> Result<(T, SourceMap), Vec<Diagnostic>> {
    let mut map = SourceMap {
        file: file.map(str::to_owned),
        spans: HashMap::new(),
    };
    if text.len() > kind.bytes_max {
        let d = Diagnostic::error(
            Code::FileTooLarge,
            "",
            format!(
                "the {} is {} bytes, more than {} ({} bytes)",
                kind.noun,
                text.len(),
                kind.bytes_limit,
                kind.bytes_max
            ),
            "split it into smaller files, or move bulky descriptions into your repository's docs",
        );
        return Err(vec![map.place(d)]);
    }
    // Editors on Windows often start files with a byte-order mark; it is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some((line, column, c)) = control_character(text) {
        let d = Diagnostic {
            line,
            column,
            file: map.file.clone(),
            ..Diagnostic::error(
                Code::YamlSyntax,
                "",
                format!(
                    "control character U+{:04X} is not allowed in YAML",
                    u32::from(c)
                ),
                "remove it; the file must be plain UTF-8 text",
            )
        };
        return Err(vec![d]);
    }
    let mut scan = Scan::new(kind);
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut scan, true) {
        let marker = e.marker();
        let d = Diagnostic {
            line: marker.line(),
            column: marker.col() + 1,
            file: map.file.clone(),
            ..Diagnostic::error(
                Code::YamlSyntax,
                "",
                format!("malformed YAML: {}", e.info()),
                "fix the YAML syntax at this position (indentation, quotes, colons)",
            )
        };
        // Problems found before the syntax error (e.g. nesting too deep) are reported first.
        let mut all: Vec<Diagnostic> = scan
            .problems
            .into_iter()
            .map(|p| Diagnostic {
                file: map.file.clone(),
                ..p
            })
            .collect();
        all.push(d);
        return Err(all);
    }
    map.spans = std::mem::take(&mut scan.spans);
    if !scan.problems.is_empty() {
        let file = map.file.clone();
        return Err(scan
            .problems
            .into_iter()
            .map(|d| Diagnostic {
                file: file.clone(),
                ..d
            })
            .collect());
    }
    if !scan.saw_document {
        let d = Diagnostic::error(Code::YamlSyntax, "", "the file is empty", kind.empty_hint);
        return Err(vec![map.place(d)]);
    }
    match serde_yaml_ng::from_str::<T>(text) {
        Ok(value) => Ok((value, map)),
        Err(e) => Err(vec![serde_diagnostic(&map, &e, kind.schema)]),
    }
}

/// The 1-based line and column of the first character YAML does not allow (C0 controls other
/// than tab, newline and carriage return, DEL, C1 controls).
fn control_character(text: &str) -> Option<(usize, usize, char)> {
    text.lines().enumerate().find_map(|(i, line)| {
        line.chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\r' | '\u{85}'))
            .map(|(j, c)| (i + 1, j + 1, c))
    })
}

fn serde_diagnostic(map: &SourceMap, e: &serde_yaml_ng::Error, schema: &str) -> Diagnostic {
    let message = e.to_string();
    // serde_yaml_ng appends " at line L column C"; keep the message itself clean.
    let clean = match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.clone(),
    };
    let (code, hint) = if clean.contains("unknown field") {
        (
            Code::UnknownKey,
            format!(
                "remove the key or correct its spelling; see {schema} for the keys each element takes"
            ),
        )
    } else if clean.contains("missing field") {
        (Code::InvalidValue, "add the required key".to_string())
    } else if clean.contains("duplicate field") {
        (Code::DuplicateKey, "keep one of the keys".to_string())
    } else {
        (
            Code::InvalidValue,
            format!("give this key a value of the expected type; see {schema}"),
        )
    };
    let (line, column) = match e.location() {
        Some(location) => (location.line(), location.column()),
        None => map.locate(""),
    };
    let mut d = Diagnostic::error(code, "", clean, hint);
    d.file = map.file.clone();
    d.line = line;
    d.column = column;
    d
}

enum Frame {
    Mapping {
        path: String,
        key: Option<String>,
        seen: HashSet<String>,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

struct Scan {
    depth_max: usize,
    /// What the file holds and its depth limit's name, for messages.
    noun: &'static str,
    depth_limit: &'static str,
    stack: Vec<Frame>,
    spans: HashMap<String, (usize, usize)>,
    problems: Vec<Diagnostic>,
    saw_document: bool,
    deepest_reported: bool,
}

impl Scan {
    fn new(kind: &FileKind) -> Self {
        Scan {
            depth_max: kind.depth_max,
            noun: kind.noun,
            depth_limit: kind.depth_limit,
            stack: Vec::new(),
            spans: HashMap::new(),
            problems: Vec::new(),
            saw_document: false,
            deepest_reported: false,
        }
    }

    fn problem(&mut self, code: Code, path: &str, mark: Marker, message: String, hint: &str) {
        if self.problems.len() < 50 {
            let mut d = Diagnostic::error(code, path, message, hint);
            d.line = mark.line();
            d.column = mark.col() + 1;
            self.problems.push(d);
        }
    }

    /// Called for every node that is a value (not a mapping key); returns the node's path.
    fn enter_value(&mut self, mark: Marker) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Mapping { path, key, .. }) => {
                let key = key.take().unwrap_or_default();
                if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                }
            }
            Some(Frame::Sequence { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.spans.insert(p.clone(), (mark.line(), mark.col() + 1));
                p
            }
        }
    }

    /// A scalar in key position of a mapping records the key; returns false if not a key.
    fn take_key(&mut self, value: &str, mark: Marker) -> bool {
        let Some(Frame::Mapping { path, key, seen }) = self.stack.last_mut() else {
            return false;
        };
        if key.is_some() {
            return false;
        }
        // yaml-rust2 marks a block mapping at the `:` after its first key; point at the key.
        let here = (mark.line(), mark.col() + 1);
        if let Some(span) = self
            .spans
            .get_mut(path.as_str())
            .filter(|span| seen.is_empty() && **span > here)
        {
            *span = here;
        }
        let full = if path.is_empty() {
            value.to_string()
        } else {
            format!("{path}.{value}")
        };
        if !seen.insert(value.to_string()) {
            let message = format!("the key `{value}` appears twice in the same mapping");
            self.problem(
                Code::DuplicateKey,
                &full,
                mark,
                message,
                "keep one of the two entries; YAML would silently drop the first",
            );
        }
        if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
            *key = Some(value.to_string());
        }
        self.spans
            .entry(full)
            .or_insert((mark.line(), mark.col() + 1));
        true
    }

    fn push(&mut self, frame: Frame, mark: Marker) {
        if self.stack.len() >= self.depth_max && !self.deepest_reported {
            self.deepest_reported = true;
            let message = format!(
                "the YAML nests deeper than {} ({})",
                self.depth_limit, self.depth_max
            );
            self.problem(
                Code::NestingTooDeep,
                "",
                mark,
                message,
                &format!(
                    "flatten the structure; {}s never need this much nesting",
                    self.noun
                ),
            );
        }
        self.stack.push(frame);
    }

    fn key_is_collection(&mut self, mark: Marker) -> bool {
        if let Some(Frame::Mapping {
            key: key @ None, ..
        }) = self.stack.last_mut()
        {
            // The next node is this key's value, not another key.
            *key = Some("?".into());
            self.problem(
                Code::InvalidValue,
                "",
                mark,
                "a mapping key must be a plain string, not a list or mapping".into(),
                "use a string key",
            );
            return true;
        }
        false
    }
}

impl MarkedEventReceiver for Scan {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                if self.saw_document {
                    self.problem(
                        Code::YamlSyntax,
                        "",
                        mark,
                        format!(
                            "a second YAML document starts here; a {} file holds exactly one",
                            self.noun
                        ),
                        "remove the `---` and what follows, or move it into its own file",
                    );
                }
                self.saw_document = true;
            }
            Event::Alias(_) => {
                let message = format!("YAML aliases (`*name`) are not supported in {}s", self.noun);
                self.problem(
                    Code::YamlAlias,
                    "",
                    mark,
                    message,
                    "write the value out in full; these files are reviewed as code and must read plainly",
                );
            }
            Event::Scalar(value, _, anchor, _) => {
                if anchor > 0 {
                    self.problem(
                        Code::YamlAlias,
                        "",
                        mark,
                        format!("YAML anchors (`&name`) are not supported in {}s", self.noun),
                        "write the value out in full",
                    );
                }
                if !self.take_key(&value, mark) {
                    self.enter_value(mark);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if anchor > 0 {
                    self.problem(
                        Code::YamlAlias,
                        "",
                        mark,
                        format!("YAML anchors (`&name`) are not supported in {}s", self.noun),
                        "write the value out in full",
                    );
                }
                let is_map = matches!(event, Event::MappingStart(..));
                let path = if self.key_is_collection(mark) {
                    "?".to_string()
                } else {
                    self.enter_value(mark)
                };
                if path.is_empty() {
                    self.spans
                        .insert(String::new(), (mark.line(), mark.col() + 1));
                }
                let frame = if is_map {
                    Frame::Mapping {
                        path,
                        key: None,
                        seen: HashSet::new(),
                    }
                } else {
                    Frame::Sequence { path, index: 0 }
                };
                self.push(frame, mark);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys() {
        let text = "workflow: w\nstates:\n  a: { initial: true }\ntransitions:\n  go:\n    from: a\n    to: b\n";
        let (_, map) = parse_definition(Some("w.yaml"), text, &Limits::default()).unwrap();
        assert_eq!(map.locate("transitions.go.to"), (7, 5));
        assert_eq!(map.locate("states.a.initial"), (3, 8));
        assert_eq!(map.locate("transitions.go.nothing"), (5, 3));
    }
}
