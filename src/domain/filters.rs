//! Selective sync filters: which records of an entity cross to or from Zoho.
//!
//! A filter is a list of conditions on fields, combined with `all` or `any`,
//! that applies to one direction or both. An entity may have several filters;
//! a record crosses only when every filter that applies to the direction
//! matches. That gives "(A and B) and (C or D)" without a nested grammar.
//!
//! Filters always speak local field names: going to Zoho they see the local
//! record, coming from Zoho they see the record after the field mapping has
//! turned it into the local shape (`EntityMapping::from_zoho`). One filter
//! with `direction = "both"` can then guard both ways.
//!
//! ```toml
//! [[sync.entities.deals.filters]]
//! direction = "to_zoho"          # both (default) | to_zoho | from_zoho
//! match = "all"                  # all (default) | any
//! conditions = [
//!   { field = "status", op = "not_equals", value = "lost" },
//!   { field = "amount_cents", op = "greater_than", value = 0 },
//!   { field = "closes_at", op = "less_than", value = "2027-01-01T00:00:00Z" },
//!   { field = "region", op = "in", value = ["emea", "apac"] },
//! ]
//! ```
//!
//! Comparison rules, chosen so that a filter never errors at run time:
//! - numbers compare as numbers (`1 == 1.0`); a string holding a number
//!   compares as that number against a number, because Zoho sends Long
//!   Integer fields as strings (ZOHO-API.md §3.2);
//! - two strings that are both RFC 3339 date-times compare as instants, so
//!   `+05:30` and `Z` spellings of one moment are equal (ZOHO-API.md §10);
//!   other strings compare as strings (so `yyyy-MM-dd` dates order correctly);
//! - `contains` is a substring test on strings and a membership test on
//!   arrays (multi-select picklists);
//! - a missing field, a null, or values of kinds that cannot be compared
//!   (a boolean against a number, say) satisfy no positive operator, and
//!   `not_equals` / `not_in` are exactly the negations of `equals` / `in`,
//!   so "status is not lost" keeps records that have no status.
//!
//! Pure: no I/O. Filter values are checked once by `validate`, so a running
//! sync never meets a malformed filter.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::mapping::{Direction, Flow, Place, Problem, ProblemKind, Record};

/// One filter as written in the configuration (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// `both` (default), `to_zoho` or `from_zoho`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `all` (default) or `any`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub combine: Option<String>,
    pub conditions: Vec<ConditionConfig>,
}

/// One condition as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// Local field name.
    pub field: String,
    /// `equals`, `not_equals`, `contains`, `greater_than`, `less_than`, `in`, `not_in`.
    pub op: String,
    /// A scalar, or an array of scalars for `in` / `not_in`. Dates are
    /// written as quoted RFC 3339 strings.
    pub value: Value,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    Contains,
    GreaterThan,
    LessThan,
    In,
    NotIn,
}

impl Operator {
    pub const NAMES: &'static str =
        "equals, not_equals, contains, greater_than, less_than, in, not_in";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "equals" => Self::Equals,
            "not_equals" => Self::NotEquals,
            "contains" => Self::Contains,
            "greater_than" => Self::GreaterThan,
            "less_than" => Self::LessThan,
            "in" => Self::In,
            "not_in" => Self::NotIn,
            _ => return None,
        })
    }
}

/// How a filter combines its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    All,
    Any,
}

/// A validated condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub op: Operator,
    pub value: Value,
}

impl Condition {
    /// Whether `record` satisfies this condition. Never fails: see the
    /// module docs for missing fields and mismatched kinds.
    pub fn matches(&self, record: &Record) -> bool {
        let actual = record.get(&self.field).unwrap_or(&Value::Null);
        match self.op {
            Operator::Equals => equals(actual, &self.value),
            Operator::NotEquals => !equals(actual, &self.value),
            Operator::Contains => contains(actual, &self.value),
            Operator::GreaterThan => compare(actual, &self.value) == Some(Ordering::Greater),
            Operator::LessThan => compare(actual, &self.value) == Some(Ordering::Less),
            Operator::In => is_in(actual, &self.value),
            Operator::NotIn => !is_in(actual, &self.value),
        }
    }
}

/// A validated filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub direction: Direction,
    pub combine: Combine,
    pub conditions: Vec<Condition>,
}

impl Filter {
    /// Whether this filter guards records moving in `flow`.
    pub fn applies_to(&self, flow: Flow) -> bool {
        self.direction.crosses(flow)
    }

    /// Whether `record` (in local field names) satisfies this filter.
    pub fn matches(&self, record: &Record) -> bool {
        match self.combine {
            Combine::All => self.conditions.iter().all(|c| c.matches(record)),
            Combine::Any => self.conditions.iter().any(|c| c.matches(record)),
        }
    }
}

/// Whether `record` may move in `flow`: every filter that applies matches.
pub fn passes(filters: &[Filter], flow: Flow, record: &Record) -> bool {
    filters
        .iter()
        .filter(|f| f.applies_to(flow))
        .all(|f| f.matches(record))
}

impl FilterConfig {
    /// Checks this filter and builds it; every problem found is pushed to
    /// `problems` (all of them, not just the first, so one start shows them all).
    pub(crate) fn compile(
        &self,
        entity: &str,
        index: usize,
        entity_direction: Direction,
        problems: &mut Vec<Problem>,
    ) -> Option<Filter> {
        let before = problems.len();
        let place = |condition: Option<usize>| Place::Filter { index, condition };
        let mut push = |condition: Option<usize>, kind: ProblemKind| {
            problems.push(Problem::new(entity, place(condition), kind));
        };

        let direction = match self.direction.as_deref() {
            None => Direction::Both,
            Some(name) => Direction::parse(name).unwrap_or_else(|| {
                push(
                    None,
                    ProblemKind::unknown("direction", name, Direction::NAMES),
                );
                Direction::Both
            }),
        };
        if !direction.overlaps(entity_direction) {
            push(
                None,
                ProblemKind::NeverApplies {
                    what: "filter",
                    direction: direction.name(),
                    entity_direction: entity_direction.name(),
                },
            );
        }
        let combine = match self.combine.as_deref() {
            None | Some("all") => Combine::All,
            Some("any") => Combine::Any,
            Some(other) => {
                push(None, ProblemKind::unknown("match", other, "all, any"));
                Combine::All
            }
        };
        if self.conditions.is_empty() {
            push(None, ProblemKind::EmptyFilter);
        }

        let mut conditions = Vec::with_capacity(self.conditions.len());
        for (i, c) in self.conditions.iter().enumerate() {
            if c.field.trim().is_empty() {
                push(Some(i), ProblemKind::EmptyName { key: "field" });
            }
            let Some(op) = Operator::parse(&c.op) else {
                push(Some(i), ProblemKind::unknown("op", &c.op, Operator::NAMES));
                continue;
            };
            if let Err(message) = check_value(op, &c.value) {
                push(
                    Some(i),
                    ProblemKind::FilterValue {
                        op: c.op.clone(),
                        message,
                    },
                );
            }
            conditions.push(Condition {
                field: c.field.clone(),
                op,
                value: c.value.clone(),
            });
        }

        (problems.len() == before).then_some(Filter {
            direction,
            combine,
            conditions,
        })
    }
}

fn check_value(op: Operator, value: &Value) -> Result<(), String> {
    let scalar = |v: &Value| match v {
        Value::Array(_) => Err("expects a single value, not an array".to_owned()),
        Value::Object(_) => Err(
            "expects a scalar value (write dates as quoted RFC 3339 strings, not TOML dates)"
                .to_owned(),
        ),
        _ => Ok(()),
    };
    match op {
        Operator::In | Operator::NotIn => match value {
            Value::Array(items) if !items.is_empty() => items.iter().try_for_each(|item| {
                scalar(item).map_err(|_| "expects an array of scalar values".to_owned())
            }),
            Value::Array(_) => Err("expects a non-empty array".to_owned()),
            _ => Err("expects an array of values".to_owned()),
        },
        Operator::GreaterThan | Operator::LessThan => match value {
            Value::Number(_) | Value::String(_) => Ok(()),
            Value::Object(_) => scalar(value),
            _ => Err("expects a number or a string (dates as RFC 3339 strings)".to_owned()),
        },
        Operator::Equals | Operator::NotEquals | Operator::Contains => scalar(value),
    }
}

/// A number read from JSON or from a numeric string. Integers stay exact so
/// 18-digit Long Integers compare correctly.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n
                .as_i64()
                .map(|i| Num::Int(i.into()))
                .or_else(|| n.as_u64().map(|u| Num::Int(u.into())))
                .or_else(|| n.as_f64().map(Num::Float)),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<i128>().map(Num::Int).ok().or_else(|| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Num::Float)
                })
            }
            _ => None,
        }
    }

    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            // Precision loss only past 2^53, where a float operand had none to give.
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

fn instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Orders two scalars, or `None` when they cannot be compared.
fn compare(actual: &Value, expected: &Value) -> Option<Ordering> {
    match (actual, expected) {
        (Value::String(a), Value::String(b)) => match (instant(a), instant(b)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(a.as_str().cmp(b.as_str())),
        },
        // At least one side is a number here: a numeric string joins it.
        (Value::Number(_), Value::Number(_) | Value::String(_))
        | (Value::String(_), Value::Number(_)) => Num::of(actual)?.cmp(Num::of(expected)?),
        _ => None,
    }
}

fn equals(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(_) | Value::String(_), Value::Number(_) | Value::String(_)) => {
            compare(actual, expected) == Some(Ordering::Equal)
        }
        _ => false,
    }
}

fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::String(haystack), Value::String(needle)) => haystack.contains(needle.as_str()),
        (Value::Array(items), _) => items.iter().any(|item| equals(item, expected)),
        _ => false,
    }
}

fn is_in(actual: &Value, expected: &Value) -> bool {
    match expected {
        Value::Array(options) => options.iter().any(|option| equals(actual, option)),
        _ => false,
    }
}
