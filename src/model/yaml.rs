//! A small YAML loader that keeps the position of every node.
//!
//! Validation must report *every* problem as `path:line:column`, and a
//! derived-serde parse stops at the first error without positions for
//! well-formed but wrong nodes. So change sets and policies are read into
//! this position-carrying tree and decoded by hand (`decode.rs`).
//!
//! The loader refuses what a change set never needs and an attacker would
//! use: anchors and aliases (exponential "billion laughs" expansion), tags,
//! non-scalar keys, more than one document, and nesting deeper than
//! [`MAX_DEPTH`].

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The deepest nesting a change set or policy can need is four levels;
/// anything far deeper is refused before it costs memory or stack.
pub const MAX_DEPTH: usize = 32;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Self {
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A YAML node with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What the node holds.
    pub value: Value,
}

/// The content of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar; `quoted` is true when it was written in quotes, so `"1"`
    /// stays a string while a plain `1` is a number.
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order; keys are scalars with their positions.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key's text.
    pub text: String,
    /// Where the key starts.
    pub pos: Pos,
}

/// Why a document could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong, for a person.
    pub message: String,
}

impl Node {
    /// A plain (unquoted) scalar equal to YAML's null: empty, `~` or `null`.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if text.is_empty() || text == "~" || text == "null")
    }

    /// The name of this node's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Key, Node)>, Option<Key>),
}

/// Loads one YAML document. An empty document loads as `None`.
pub fn load(text: &str) -> Result<Option<Node>, LoadError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    loop {
        let (event, marker) = parser.next_token().map_err(|e| LoadError {
            pos: Pos::from_marker(e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let pos = Pos::from_marker(&marker);
        let refuse = |message: &str| {
            Err(LoadError {
                pos,
                message: message.to_string(),
            })
        };
        let node = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => return Ok(root),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return refuse("a change set or policy file holds exactly one YAML document; remove the extra `---`");
                }
                continue;
            }
            Event::Alias(_) => {
                return refuse("YAML aliases (`*name`) are not allowed: write the value out")
            }
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return refuse("YAML anchors (`&name`) are not allowed: write the value out")
            }
            Event::Scalar(_, _, _, Some(_))
            | Event::SequenceStart(_, Some(_))
            | Event::MappingStart(_, Some(_)) => {
                return refuse("YAML tags (`!name`) are not allowed")
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return refuse(&format!("nesting is deeper than {MAX_DEPTH} levels"));
                }
                if let Some(Frame::Map(_, _, None)) = stack.last() {
                    return refuse("mapping keys must be plain strings, not lists or mappings");
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq(pos, Vec::new()),
                    _ => Frame::Map(pos, Vec::new(), None),
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(pos, items)) => Node {
                    pos,
                    value: Value::Seq(items),
                },
                Some(Frame::Map(pos, entries, _)) => Node {
                    // A block mapping's start event is marked at its first
                    // `:`; people expect the first key.
                    pos: entries.first().map_or(pos, |(k, _)| k.pos.min(pos)),
                    value: Value::Map(entries),
                },
                None => return refuse("unbalanced YAML structure"),
            },
            Event::Scalar(text, style, _, None) => Node {
                pos,
                value: Value::Scalar {
                    text,
                    quoted: style != TScalarStyle::Plain,
                },
            },
        };
        // Attach the finished node to its parent.
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => {
                    let Value::Scalar { text, .. } = node.value else {
                        unreachable!("non-scalar keys are refused when they start")
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == text) {
                        return Err(LoadError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{text}` (first written at {}:{})",
                                first.pos.line, first.pos.col
                            ),
                        });
                    }
                    *pending = Some(Key {
                        text,
                        pos: node.pos,
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let node = load("a: 1\nb:\n  - x\n").unwrap().unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn empty_document_is_none() {
        assert_eq!(load("").unwrap(), None);
        assert_eq!(load("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn aliases_and_anchors_are_refused() {
        let err = load("a: &x [1, 2]\nb: *x\n").unwrap_err();
        assert!(err.message.contains("anchors"), "{err:?}");
    }

    #[test]
    fn duplicate_keys_name_the_first() {
        let err = load("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 1 });
        assert!(err.message.contains("first written at 1:1"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(200) + &"]".repeat(200);
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("deeper"), "{err:?}");
    }

    #[test]
    fn quoted_scalars_are_marked() {
        let node = load("a: \"1\"\n").unwrap().unwrap();
        let Value::Map(entries) = node.value else {
            panic!()
        };
        assert!(matches!(
            entries[0].1.value,
            Value::Scalar { quoted: true, .. }
        ));
    }
}
