//! JSON Schema (draft 2020-12) of change sets and policies, for editors and
//! other tools. Generated from the model types, so it cannot drift from them.

use schemars::{schema_for, Schema};

use super::{ChangeSet, Policy};

/// Which document a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// `changes/<id>.yaml`
    ChangeSet,
    /// `policies/<name>.yaml`
    Policy,
}

/// The JSON Schema of one kind of file.
pub fn json_schema(kind: SchemaKind) -> Schema {
    let (mut schema, id) = match kind {
        SchemaKind::ChangeSet => (
            schema_for!(ChangeSet),
            "https://changegate.dev/schema/v1/change-set.json",
        ),
        SchemaKind::Policy => (
            schema_for!(Policy),
            "https://changegate.dev/schema/v1/policy.json",
        ),
    };
    schema.insert("$id".into(), id.into());
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decode::*;

    fn properties(schema: &serde_json::Value, pointer: &str) -> Vec<String> {
        let mut keys: Vec<String> = schema
            .pointer(pointer)
            .and_then(|p| p.as_object())
            .unwrap_or_else(|| panic!("no properties at {pointer}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn schema_is_draft_2020_12_and_closed() {
        let s = json_schema(SchemaKind::ChangeSet).to_value();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(
            s["required"].as_array().unwrap().len(),
            3,
            "title, kind, steps: {}",
            s["required"]
        );
        assert_eq!(
            s["anyOf"],
            serde_json::json!([{"required": ["targets"]}, {"required": ["targets_from"]}]),
            "targets, targets_from or both"
        );
    }

    #[test]
    fn decoder_keys_match_the_schema() {
        let c = json_schema(SchemaKind::ChangeSet).to_value();
        assert_eq!(properties(&c, "/properties"), sorted(CHANGE_SET_KEYS));
        assert_eq!(properties(&c, "/$defs/Step/properties"), sorted(STEP_KEYS));
        assert_eq!(
            properties(&c, "/$defs/Rollout/properties"),
            sorted(ROLLOUT_KEYS)
        );
        let p = json_schema(SchemaKind::Policy).to_value();
        assert_eq!(properties(&p, "/properties"), sorted(POLICY_KEYS));
        assert_eq!(
            properties(&p, "/$defs/Match/properties"),
            sorted(MATCH_KEYS)
        );
        assert_eq!(
            properties(&p, "/$defs/Approvals/properties"),
            sorted(APPROVALS_KEYS)
        );
        assert_eq!(
            properties(&p, "/$defs/Execution/properties"),
            sorted(EXECUTION_KEYS)
        );
        assert_eq!(
            properties(&p, "/$defs/ActionBudget/properties"),
            sorted(ACTION_BUDGET_KEYS)
        );
    }
}
