//! The conflict engine: a field-level three-way merge of a local change and
//! the remote state against their common base (DESIGN.md §2-§3).
//!
//! It owns the decision per field and nothing else: the caller loads the
//! record, supplies the base values the client started from, writes the
//! merged fields and stores the conflicts. It performs no I/O and reads no
//! clock; modification times come in with the sides.
//!
//! Per field, with `base`, `local` and `remote` values:
//! - changed on one side only: that side's value, whatever the rules;
//! - changed on both sides to the same value: that value, no conflict;
//! - changed on both sides differently: a [`FieldConflict`], decided by the
//!   field's [`Strategy`] (its own, else the entity's), or left unresolved
//!   for review, in which case neither side is overwritten.
//!
//! Detection is never a whole-record compare (research/sync-locks.md §4.3:
//! whole-record last-writer-wins is what makes Heroku Connect flip-flop).
//!
//! Choices the contract left open:
//! - a field missing from `base` started as `null`; a field missing from a
//!   side was not changed by it; numbers compare by value (`1` = `1.0`);
//! - `last_write_wins` decides by time only when the two modification times
//!   are more than the clock-skew tolerance apart; a tie, or an unknown
//!   time, goes to the entity's `fallback` (default `manual`), because a
//!   clock difference that small orders nothing;
//! - `merge_text` sends overlapping hunks to review whatever the fallback
//!   (DESIGN.md §3), and so does a value that is not text;
//! - severity: see [`severity()`].
//!
//! Rules come from [`ConflictRules`] (`[conflicts.<entity>]` in the TOML
//! configuration).

mod rules;
mod severity;
mod text;

#[cfg(test)]
mod props;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

pub use rules::{
    ConflictRules, DEFAULT_CLOCK_SKEW_TOLERANCE, EntityRules, MAX_CLOCK_SKEW_TOLERANCE, RulesError,
    Strategy,
};
pub use severity::{HIGH_ABOVE, MEDIUM_ABOVE, Severity, relative_change, severity};
pub use text::{TextMergeError, merge_text};

/// Record fields by name, as they travel in JSON.
pub type Fields = serde_json::Map<String, Value>;

/// One side of the merge: the fields it wrote and when it last modified the
/// record.
///
/// A field the side does not carry is one it did not change: its value is
/// the base value. So either side may be a change set (the client's
/// mutation, Zoho's changed fields) or a whole record; to clear a field a
/// side carries `null`.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub fields: &'a Fields,
    /// The record's modification time on this side (a mutation's `at`, the
    /// stored `updated_at`, Zoho's `Modified_Time`); only
    /// `last_write_wins` reads it.
    pub modified_at: Option<OffsetDateTime>,
}

impl<'a> Side<'a> {
    pub fn new(fields: &'a Fields, modified_at: Option<OffsetDateTime>) -> Self {
        Self {
            fields,
            modified_at,
        }
    }
}

/// Whether a conflict still needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    Resolved,
    Unresolved,
}

/// Why the configured strategy did not decide by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// `merge` only merges fields changed on one side; this one changed on
    /// both, so the entity's fallback decided.
    ChangedOnBothSides,
    /// `last_write_wins`: the modification times are within the clock-skew
    /// tolerance, so they do not order the edits.
    WithinClockSkew,
    /// `last_write_wins`: a side's modification time is unknown.
    MissingModificationTime,
    /// `merge_text`: both sides edited overlapping lines.
    OverlappingHunks,
    /// `merge_text`: a value is not text.
    NotText,
}

/// A field both sides changed to different values, and what became of it.
/// Stored in the conflict history and sent to clients as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldConflict {
    pub field: String,
    /// The value both sides started from (`null` when there was none).
    pub base: Value,
    pub local: Value,
    pub remote: Value,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub local_modified_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub remote_modified_at: Option<OffsetDateTime>,
    /// The rule configured for the field (its own or the entity's).
    pub strategy: Strategy,
    pub status: ConflictStatus,
    /// The rule that decided: the strategy itself, or the fallback it used.
    /// `None` while unresolved.
    pub resolved_by: Option<Strategy>,
    /// Set when `strategy` could not decide by itself.
    pub fallback_reason: Option<FallbackReason>,
    /// The value written; `None` while unresolved.
    pub value: Option<Value>,
    pub severity: Severity,
}

impl FieldConflict {
    pub fn is_resolved(&self) -> bool {
        self.status == ConflictStatus::Resolved
    }
}

/// The result of a merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeOutcome {
    /// The decided value of every field changed on either side, except the
    /// unresolved conflicts, which keep whatever each side has.
    pub fields: Fields,
    /// Every field changed on both sides to different values, resolved or
    /// not, in field-name order.
    pub conflicts: Vec<FieldConflict>,
}

impl MergeOutcome {
    /// The conflicts still waiting for a person.
    pub fn unresolved(&self) -> impl Iterator<Item = &FieldConflict> {
        self.conflicts.iter().filter(|c| !c.is_resolved())
    }

    pub fn has_unresolved(&self) -> bool {
        self.unresolved().next().is_some()
    }

    /// The decided fields whose value differs from `current`'s: what must be
    /// written to bring that side up to date (a missing field counts as
    /// `null`).
    pub fn changes_against(&self, current: &Fields) -> Fields {
        self.fields
            .iter()
            .filter(|(name, value)| {
                !same_value(current.get(name.as_str()).unwrap_or(&Value::Null), value)
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

/// Merges `local` and `remote` against `base` under `rules`.
///
/// `base` holds, per changed field, the value both sides started from; a
/// field missing from it started as `null`. Rules are expected to have
/// passed [`EntityRules::validate`]; a fallback that could not decide by
/// itself is treated as `manual`, because leaving a field for review is the
/// one outcome that never loses data.
pub fn resolve(
    rules: &EntityRules,
    base: &Fields,
    local: Side<'_>,
    remote: Side<'_>,
) -> MergeOutcome {
    let names: BTreeSet<&str> = local
        .fields
        .keys()
        .chain(remote.fields.keys())
        .map(String::as_str)
        .collect();
    let mut outcome = MergeOutcome::default();
    for name in names {
        let b = base.get(name).unwrap_or(&Value::Null);
        let l = local.fields.get(name).unwrap_or(b);
        let r = remote.fields.get(name).unwrap_or(b);
        let local_changed = !same_value(l, b);
        let remote_changed = !same_value(r, b);
        let taken = match (local_changed, remote_changed) {
            (false, false) => continue,
            (true, false) => l,
            (false, true) => r,
            (true, true) if same_value(l, r) => l,
            (true, true) => {
                let conflict = decide(rules, name, b, l, r, local, remote);
                if let Some(value) = &conflict.value {
                    outcome.fields.insert(name.to_owned(), value.clone());
                }
                outcome.conflicts.push(conflict);
                continue;
            }
        };
        outcome.fields.insert(name.to_owned(), taken.clone());
    }
    outcome
}

/// What a strategy made of one conflict.
enum Decision {
    Take(Value, Strategy),
    Review,
}

fn decide(
    rules: &EntityRules,
    name: &str,
    b: &Value,
    l: &Value,
    r: &Value,
    local: Side<'_>,
    remote: Side<'_>,
) -> FieldConflict {
    let strategy = rules.strategy_for(name);
    let fallback = |reason| (fall_back(rules.fallback, l, r), Some(reason));
    let (decision, fallback_reason) = match strategy {
        Strategy::LocalWins => (Decision::Take(l.clone(), Strategy::LocalWins), None),
        Strategy::RemoteWins => (Decision::Take(r.clone(), Strategy::RemoteWins), None),
        Strategy::Manual => (Decision::Review, None),
        Strategy::Merge => fallback(FallbackReason::ChangedOnBothSides),
        Strategy::LastWriteWins => match (local.modified_at, remote.modified_at) {
            (Some(lt), Some(rt)) if (lt - rt).unsigned_abs() > rules.clock_skew_tolerance => {
                let newer = if lt > rt { l } else { r };
                (Decision::Take(newer.clone(), Strategy::LastWriteWins), None)
            }
            (Some(_), Some(_)) => fallback(FallbackReason::WithinClockSkew),
            _ => fallback(FallbackReason::MissingModificationTime),
        },
        // DESIGN.md §3 sends overlapping text to review whatever the
        // entity's fallback: picking one side would drop the other's prose.
        Strategy::MergeText => match merge_text(Some(b), l, r) {
            Ok(text) => (
                Decision::Take(Value::String(text), Strategy::MergeText),
                None,
            ),
            Err(TextMergeError::Overlap) => {
                (Decision::Review, Some(FallbackReason::OverlappingHunks))
            }
            Err(TextMergeError::NotText) => (Decision::Review, Some(FallbackReason::NotText)),
        },
    };
    let (status, resolved_by, value) = match decision {
        Decision::Take(value, by) => (ConflictStatus::Resolved, Some(by), Some(value)),
        Decision::Review => (ConflictStatus::Unresolved, None, None),
    };
    FieldConflict {
        field: name.to_owned(),
        base: b.clone(),
        local: l.clone(),
        remote: r.clone(),
        local_modified_at: local.modified_at,
        remote_modified_at: remote.modified_at,
        strategy,
        status,
        resolved_by,
        fallback_reason,
        value,
        severity: severity(rules.is_critical(name), Some(b), l, r),
    }
}

fn fall_back(fallback: Strategy, l: &Value, r: &Value) -> Decision {
    match fallback {
        Strategy::LocalWins => Decision::Take(l.clone(), Strategy::LocalWins),
        Strategy::RemoteWins => Decision::Take(r.clone(), Strategy::RemoteWins),
        Strategy::Manual | Strategy::Merge | Strategy::LastWriteWins | Strategy::MergeText => {
            Decision::Review
        }
    }
}

/// JSON equality where numbers compare by value, so `1` from one system and
/// `1.0` from another are not a change.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests;
