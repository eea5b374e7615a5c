//! `rollout:` and the per-target block (SPEC §10).

use super::*;
use crate::model::rollout::{Rollout, Share};

/// Where the parts of a `rollout:` were written, for errors that need the
/// rest of the change (its targets, its steps).
pub(crate) struct RolloutPositions {
    canary: Option<Pos>,
}

/// Decodes `rollout:`: each share, wave order and the final 100%.
pub(crate) fn decode_rollout(
    d: &mut Decoder<'_>,
    node: &Node,
) -> Option<(Rollout, RolloutPositions)> {
    let f = d.mapping(node, "`rollout`", ROLLOUT_KEYS)?;
    let mut r = Rollout::default();
    if let Some(canary) = d.optional(&f, "canary", |d, n| share(d, n, "rollout.canary")) {
        r.canary = canary;
    }
    if let Some(n) = f.get("waves") {
        r.waves = waves(d, n)?;
    }
    r.bake = d.optional(&f, "bake", |d, n| d.parsed::<Duration>(n, "rollout.bake"));
    if let Some(n) = f.get("parallel") {
        r.parallel = d.positive_int(n, "rollout.parallel")?;
    }
    let positions = RolloutPositions {
        canary: f.get("canary").map(|n| n.pos),
    };
    Some((r, positions))
}

/// A count or a quoted `"N%"`.
fn share(d: &mut Decoder<'_>, node: &Node, what: &str) -> Option<Share> {
    let text = d.string(node, what)?;
    text.parse()
        .map_err(|e: String| d.error(node.pos, format!("`{what}`: {e}")))
        .ok()
}

/// Cumulative percentages, increasing, ending at `"100%"`.
fn waves(d: &mut Decoder<'_>, node: &Node) -> Option<Vec<Share>> {
    let Value::Seq(items) = &node.value else {
        d.wrong_type(
            node,
            "rollout.waves",
            "a list of percentages such as \"25%\"",
        );
        return None;
    };
    let mut out = Vec::new();
    let mut last: Option<u8> = None;
    for item in items {
        let Some(s) = share(d, item, "rollout.waves") else {
            continue;
        };
        let Share::Percent(p) = s else {
            d.error(
                item.pos,
                format!("`rollout.waves`: `{s}` is a count; each wave is the cumulative share of targets done after it, such as \"25%\""),
            );
            continue;
        };
        if let Some(before) = last.filter(|b| p <= *b) {
            d.error(
                item.pos,
                format!("`rollout.waves` must increase: {p}% comes after {before}%"),
            );
        }
        last = Some(p);
        out.push(s);
    }
    match (items.last(), last) {
        (None, _) => d.error(
            node.pos,
            "`rollout.waves` must end at \"100%\"; it is empty",
        ),
        (Some(item), Some(p)) if p != 100 => d.error(
            item.pos,
            format!(
                "`rollout.waves` must end at \"100%\", not {p}%: the last wave finishes the fleet"
            ),
        ),
        _ => {}
    }
    Some(out)
}

/// The rules that need the whole change: the per-target steps form one
/// contiguous block, a rollout has such a block, and the canary fits the
/// fleet.
pub(crate) fn check_rollout(
    d: &mut Decoder<'_>,
    rollout: Option<&(Rollout, RolloutPositions)>,
    rollout_pos: Option<Pos>,
    steps: &[(Step, Pos)],
    targets: usize,
) {
    let per_target: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].0.per_target)
        .collect();
    if let Some(gap) = per_target.windows(2).find(|w| w[1] != w[0] + 1) {
        let (step, pos) = &steps[gap[1]];
        let between = &steps[gap[0] + 1].0.id;
        d.error(
            *pos,
            format!("per-target steps form one contiguous block: `{}` is per-target, but `{between}` before it is not", step.id),
        );
    }
    let Some((r, at)) = rollout else {
        return;
    };
    if per_target.is_empty() {
        d.error(
            rollout_pos.unwrap_or(Pos { line: 1, col: 1 }),
            "`rollout` without a `per_target: true` step: there is nothing to run per target",
        );
    }
    if let (Share::Count(c), Some(pos)) = (r.canary, at.canary) {
        if c as usize > targets && targets > 0 {
            d.error(
                pos,
                format!("`rollout.canary` is {c} targets, but the change has {targets}"),
            );
        }
    }
}
