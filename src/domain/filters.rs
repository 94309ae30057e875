//! Selective sync filters: which records of an entity cross to or from Zoho.
//!
//! A filter is a list of conditions on fields, combined with `all` or `any`,
//! that applies to one direction or both. An entity may have several filters;
//! a record crosses only when every filter that applies to the direction
//! matches. That gives "(A and B) and (C or D)" without a nested grammar.
//!
//! Filters always speak local field names (a dotted name such as
//! `owner.name` reads inside an object): going to Zoho they see the local
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

use super::mapping::{Direction, Flow, Place, Problem, ProblemKind, Record, lookup};

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
        let actual = lookup(record, &self.field).unwrap_or(&Value::Null);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Record {
        value.as_object().expect("a JSON object").clone()
    }

    fn condition(field: &str, op: &str, value: Value) -> Condition {
        Condition {
            field: field.to_owned(),
            op: Operator::parse(op).expect("a known operator"),
            value,
        }
    }

    fn holds(op: &str, actual: Value, expected: Value) -> bool {
        condition("f", op, expected).matches(&record(json!({ "f": actual })))
    }

    fn compile(toml_text: &str, entity_direction: Direction) -> Result<Filter, Vec<Problem>> {
        let config: FilterConfig = toml::from_str(toml_text).expect("valid TOML");
        let mut problems = Vec::new();
        config
            .compile("deals", 0, entity_direction, &mut problems)
            .ok_or(problems)
    }

    #[test]
    fn equals_compares_strings_as_strings() {
        assert!(holds("equals", json!("open"), json!("open")));
        assert!(!holds("equals", json!("open"), json!("Open")));
    }

    #[test]
    fn equals_compares_numbers_as_numbers() {
        assert!(holds("equals", json!(1), json!(1.0)));
        assert!(holds("equals", json!(-3), json!(-3)));
        assert!(!holds("equals", json!(1), json!(2)));
    }

    #[test]
    fn a_numeric_string_compares_as_a_number_against_a_number() {
        // Zoho sends Long Integer fields as strings (ZOHO-API.md §3.2).
        assert!(holds("equals", json!("42"), json!(42)));
        assert!(holds(
            "greater_than",
            json!("123456789012345678"),
            json!(123456789012345677_i64)
        ));
        assert!(!holds("equals", json!("42"), json!("42.0")));
    }

    #[test]
    fn equals_compares_booleans_and_nulls() {
        assert!(holds("equals", json!(true), json!(true)));
        assert!(!holds("equals", json!(true), json!(false)));
        assert!(holds("equals", json!(null), json!(null)));
    }

    #[test]
    fn values_of_different_kinds_are_never_equal() {
        assert!(!holds("equals", json!(true), json!(1)));
        assert!(!holds("equals", json!("yes"), json!(true)));
        assert!(!holds("equals", json!("abc"), json!(1)));
        assert!(!holds("equals", json!(["a"]), json!("a")));
    }

    #[test]
    fn equals_treats_two_spellings_of_one_instant_as_equal() {
        assert!(holds(
            "equals",
            json!("2024-01-15T15:26:49+05:30"),
            json!("2024-01-15T09:56:49Z")
        ));
    }

    #[test]
    fn not_equals_is_the_negation_of_equals_even_for_missing_fields() {
        assert!(holds("not_equals", json!("open"), json!("lost")));
        assert!(!holds("not_equals", json!("lost"), json!("lost")));
        assert!(holds("not_equals", json!(true), json!(1)));
        let no_status = record(json!({ "name": "x" }));
        assert!(condition("status", "not_equals", json!("lost")).matches(&no_status));
    }

    #[test]
    fn a_dotted_field_reads_inside_an_object() {
        let deal = record(json!({ "Owner": { "name": "Patricia Boyle", "id": "1" } }));
        assert!(condition("Owner.name", "contains", json!("Boyle")).matches(&deal));
        assert!(!condition("Owner.email", "equals", json!("x")).matches(&deal));
    }

    #[test]
    fn contains_is_a_substring_test_on_strings() {
        assert!(holds("contains", json!("Acme Corp"), json!("Corp")));
        assert!(!holds("contains", json!("Acme Corp"), json!("corp")));
    }

    #[test]
    fn contains_is_a_membership_test_on_arrays() {
        assert!(holds("contains", json!(["emea", "apac"]), json!("apac")));
        assert!(holds("contains", json!([1, 2, 3]), json!(2.0)));
        assert!(!holds("contains", json!(["emea"]), json!("amer")));
    }

    #[test]
    fn contains_on_a_number_or_boolean_is_false() {
        assert!(!holds("contains", json!(12345), json!("23")));
        assert!(!holds("contains", json!(true), json!(true)));
        assert!(!holds("contains", json!("abc"), json!(1)));
    }

    #[test]
    fn greater_and_less_than_compare_numbers_as_numbers() {
        assert!(holds("greater_than", json!(10), json!(9.5)));
        assert!(!holds("greater_than", json!(9), json!(9)));
        assert!(holds("less_than", json!(9), json!(10)));
        assert!(holds("less_than", json!(-1.5), json!(0)));
        // As strings "10" < "9"; as numbers it is not.
        assert!(holds("greater_than", json!("10"), json!(9)));
    }

    #[test]
    fn greater_and_less_than_compare_strings_as_strings() {
        assert!(holds("greater_than", json!("beta"), json!("alpha")));
        assert!(holds("less_than", json!("2024-01-31"), json!("2024-02-01")));
    }

    #[test]
    fn greater_and_less_than_compare_dates_as_instants() {
        // As strings "2024-01-15T10:00:00+05:30" > "2024-01-15T09:00:00Z"; as
        // instants it is 04:30 UTC, earlier.
        assert!(holds(
            "less_than",
            json!("2024-01-15T10:00:00+05:30"),
            json!("2024-01-15T09:00:00Z")
        ));
        assert!(holds(
            "greater_than",
            json!("2023-05-10T01:10:47-07:00"),
            json!("2023-05-10T08:10:46Z")
        ));
    }

    #[test]
    fn ordering_across_kinds_is_false_both_ways() {
        for op in ["greater_than", "less_than"] {
            assert!(!holds(op, json!("abc"), json!(5)), "{op}");
            assert!(!holds(op, json!(true), json!(5)), "{op}");
            assert!(!holds(op, json!(5), json!("abc")), "{op}");
            assert!(!holds(op, json!([5]), json!(1)), "{op}");
        }
    }

    #[test]
    fn a_missing_or_null_field_satisfies_no_positive_operator() {
        let empty = record(json!({ "other": 1, "f": null }));
        for (op, value) in [
            ("equals", json!("x")),
            ("contains", json!("x")),
            ("greater_than", json!(0)),
            ("less_than", json!(0)),
            ("in", json!(["x"])),
        ] {
            assert!(
                !condition("missing", op, value.clone()).matches(&empty),
                "{op}"
            );
            assert!(!condition("f", op, value).matches(&empty), "{op} null");
        }
        assert!(condition("missing", "not_in", json!(["x"])).matches(&empty));
    }

    #[test]
    fn in_and_not_in_test_membership_of_a_list() {
        assert!(holds("in", json!("emea"), json!(["emea", "apac"])));
        assert!(!holds("in", json!("amer"), json!(["emea", "apac"])));
        assert!(holds("in", json!(2), json!([1, 2.0])));
        assert!(holds("not_in", json!("amer"), json!(["emea", "apac"])));
        assert!(!holds("not_in", json!("emea"), json!(["emea", "apac"])));
        assert!(holds("not_in", json!(true), json!([1])));
    }

    #[test]
    fn all_needs_every_condition_and_any_needs_one() {
        let conditions = vec![
            condition("status", "equals", json!("open")),
            condition("amount", "greater_than", json!(100)),
        ];
        let all = Filter {
            direction: Direction::Both,
            combine: Combine::All,
            conditions: conditions.clone(),
        };
        let any = Filter {
            combine: Combine::Any,
            ..all.clone()
        };
        let both = record(json!({ "status": "open", "amount": 500 }));
        let one = record(json!({ "status": "open", "amount": 5 }));
        let neither = record(json!({ "status": "won", "amount": 5 }));
        assert!(all.matches(&both) && any.matches(&both));
        assert!(!all.matches(&one) && any.matches(&one));
        assert!(!all.matches(&neither) && !any.matches(&neither));
    }

    #[test]
    fn a_filter_guards_only_its_direction() {
        let to_zoho = compile(
            r#"
            direction = "to_zoho"
            conditions = [{ field = "status", op = "not_equals", value = "lost" }]
            "#,
            Direction::Both,
        )
        .unwrap();
        let lost = record(json!({ "status": "lost" }));
        assert!(!passes(std::slice::from_ref(&to_zoho), Flow::ToZoho, &lost));
        assert!(passes(&[to_zoho], Flow::FromZoho, &lost));
    }

    #[test]
    fn every_applicable_filter_must_match() {
        let a = compile(
            r#"conditions = [{ field = "region", op = "in", value = ["emea", "apac"] }]"#,
            Direction::Both,
        )
        .unwrap();
        let b = compile(
            r#"
            match = "any"
            conditions = [
              { field = "amount", op = "greater_than", value = 1000 },
              { field = "vip", op = "equals", value = true },
            ]
            "#,
            Direction::Both,
        )
        .unwrap();
        let filters = [a, b];
        let pass = record(json!({ "region": "emea", "amount": 10, "vip": true }));
        let wrong_region = record(json!({ "region": "amer", "amount": 5000 }));
        let small = record(json!({ "region": "apac", "amount": 10, "vip": false }));
        assert!(passes(&filters, Flow::ToZoho, &pass));
        assert!(!passes(&filters, Flow::ToZoho, &wrong_region));
        assert!(!passes(&filters, Flow::FromZoho, &small));
        assert!(passes(&[], Flow::ToZoho, &small));
    }

    #[test]
    fn a_filter_parses_from_toml_with_its_defaults() {
        let filter = compile(
            r#"conditions = [{ field = "closes_at", op = "less_than", value = "2027-01-01T00:00:00Z" }]"#,
            Direction::Both,
        )
        .unwrap();
        assert_eq!(filter.direction, Direction::Both);
        assert_eq!(filter.combine, Combine::All);
        assert_eq!(
            filter.conditions,
            vec![condition(
                "closes_at",
                "less_than",
                json!("2027-01-01T00:00:00Z")
            )]
        );
    }

    fn kinds(result: Result<Filter, Vec<Problem>>) -> Vec<ProblemKind> {
        result
            .expect_err("the filter is refused")
            .into_iter()
            .map(|p| p.kind)
            .collect()
    }

    #[test]
    fn an_unknown_operator_is_refused_naming_the_condition() {
        let problems = compile(
            r#"conditions = [{ field = "a", op = "equals", value = 1 }, { field = "b", op = "like", value = "x" }]"#,
            Direction::Both,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "sync.entities.deals.filters[0].conditions[1]: unknown op `like` (expected one of: \
             equals, not_equals, contains, greater_than, less_than, in, not_in)"
        );
    }

    #[test]
    fn an_unknown_direction_or_match_is_refused() {
        let kinds = kinds(compile(
            r#"
            direction = "sideways"
            match = "most"
            conditions = [{ field = "a", op = "equals", value = 1 }]
            "#,
            Direction::Both,
        ));
        assert_eq!(
            kinds,
            vec![
                ProblemKind::unknown("direction", "sideways", Direction::NAMES),
                ProblemKind::unknown("match", "most", "all, any"),
            ]
        );
    }

    #[test]
    fn a_filter_with_no_conditions_is_refused() {
        assert_eq!(
            kinds(compile("conditions = []", Direction::Both)),
            vec![ProblemKind::EmptyFilter]
        );
    }

    #[test]
    fn a_filter_for_a_direction_the_entity_never_syncs_is_refused() {
        let kinds = kinds(compile(
            r#"
            direction = "from_zoho"
            conditions = [{ field = "a", op = "equals", value = 1 }]
            "#,
            Direction::ToZoho,
        ));
        assert!(matches!(kinds[..], [ProblemKind::NeverApplies { .. }]));
    }

    #[test]
    fn malformed_filter_values_are_refused() {
        for (op, value) in [
            ("in", "\"emea\""),
            ("not_in", "[]"),
            ("in", "[[1]]"),
            ("equals", "[1, 2]"),
            ("greater_than", "true"),
            ("contains", "{ a = 1 }"),
            // A TOML date literal: dates are written as RFC 3339 strings.
            ("less_than", "2027-01-01T00:00:00Z"),
        ] {
            let text = format!(r#"conditions = [{{ field = "f", op = "{op}", value = {value} }}]"#);
            let kinds = kinds(compile(&text, Direction::Both));
            assert!(
                matches!(&kinds[..], [ProblemKind::FilterValue { .. }]),
                "{op} {value}: {kinds:?}"
            );
        }
    }

    #[test]
    fn an_unknown_key_in_a_filter_is_a_parse_error() {
        let parsed: Result<FilterConfig, _> = toml::from_str(
            r#"conditions = [{ field = "f", op = "equals", value = 1, negate = true }]"#,
        );
        assert!(parsed.unwrap_err().to_string().contains("negate"));
    }
}
