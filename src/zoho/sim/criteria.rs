//! Search criteria (`((Field:operator:value)and(...))`, ZOHO-API.md §4) and
//! the typed value comparisons that search, COQL and bulk read share.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};
use time::UtcOffset;

use super::model::Module;
use super::wire::parse_time;

/// Zoho allows this many conditions in one criteria string.
pub const MAX_CONDITIONS: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub enum Criteria {
    Cond {
        field: String,
        op: String,
        values: Vec<String>,
    },
    And(Box<Criteria>, Box<Criteria>),
    Or(Box<Criteria>, Box<Criteria>),
}

/// Why a criteria string was refused: Zoho's INVALID_QUERY details.
#[derive(Debug, Clone, PartialEq)]
pub struct CriteriaError {
    pub code: &'static str,
    pub details: Value,
}

fn invalid(reason: &str) -> CriteriaError {
    CriteriaError {
        code: "INVALID_QUERY",
        details: json!({"reason": reason}),
    }
}

impl Criteria {
    pub fn parse(text: &str) -> Result<Self, CriteriaError> {
        let chars: Vec<char> = text.trim().chars().collect();
        let mut parser = Parser {
            chars,
            pos: 0,
            depth: 0,
        };
        let criteria = parser.expr()?;
        parser.skip_ws();
        if parser.pos != parser.chars.len() {
            return Err(invalid("invalid criteria syntax"));
        }
        if criteria.count() > MAX_CONDITIONS {
            return Err(CriteriaError {
                code: "LIMIT_EXCEEDED",
                details: json!({"limit": MAX_CONDITIONS}),
            });
        }
        Ok(criteria)
    }

    fn count(&self) -> usize {
        match self {
            Self::Cond { .. } => 1,
            Self::And(a, b) | Self::Or(a, b) => a.count() + b.count(),
        }
    }

    /// Checks fields and operators against the module before any record is read.
    pub fn check(&self, module: &Module) -> Result<(), CriteriaError> {
        match self {
            Self::And(a, b) | Self::Or(a, b) => {
                a.check(module)?;
                b.check(module)
            }
            Self::Cond { field, op, values } => {
                let data_type = field_type(module, field).ok_or_else(|| CriteriaError {
                    code: "INVALID_QUERY",
                    details: json!({"api_name": field, "reason": "the field is not available"}),
                })?;
                let allowed: &[&str] = match data_type {
                    "integer" | "double" | "currency" | "percent" | "bigint" | "decimal"
                    | "date" | "datetime" => &[
                        "equals",
                        "not_equal",
                        "greater_equal",
                        "greater_than",
                        "less_equal",
                        "less_than",
                        "between",
                        "in",
                    ],
                    "boolean" => &["equals", "not_equal"],
                    "textarea" => &["equals", "not_equal", "starts_with"],
                    "ownerlookup" | "userlookup" | "lookup" | "picklist" | "autonumber" => {
                        &["equals", "not_equal", "in"]
                    }
                    _ => &["equals", "not_equal", "starts_with", "in"],
                };
                if !allowed.contains(&op.as_str()) {
                    return Err(CriteriaError {
                        code: "INVALID_QUERY",
                        details: json!({"api_name": field, "operator": op, "reason": "invalid operator found"}),
                    });
                }
                if op == "between" && values.len() != 2 {
                    return Err(invalid("between needs two values"));
                }
                if op == "in" && values.len() > 100 {
                    return Err(invalid("too many values for in"));
                }
                Ok(())
            }
        }
    }

    /// Evaluates against a rendered record.
    pub fn matches(&self, module: &Module, record: &Map<String, Value>, zone: UtcOffset) -> bool {
        match self {
            Self::And(a, b) => a.matches(module, record, zone) && b.matches(module, record, zone),
            Self::Or(a, b) => a.matches(module, record, zone) || b.matches(module, record, zone),
            Self::Cond { field, op, values } => {
                let data_type = field_type(module, field).unwrap_or("text");
                let value = record.get(field).unwrap_or(&Value::Null);
                let first = values.first().map(String::as_str).unwrap_or_default();
                let cmp = |literal: &str| compare(data_type, value, literal, zone);
                match op.as_str() {
                    "equals" if is_text(data_type) => text_of(value)
                        .is_some_and(|t| t.to_lowercase().contains(&first.to_lowercase())),
                    "equals" => matches_exact(data_type, value, first, zone),
                    "not_equal" => !matches_exact(data_type, value, first, zone),
                    "starts_with" => text_of(value)
                        .is_some_and(|t| t.to_lowercase().starts_with(&first.to_lowercase())),
                    "in" => values
                        .iter()
                        .any(|v| matches_exact(data_type, value, v, zone)),
                    "greater_than" => cmp(first) == Some(Ordering::Greater),
                    "greater_equal" => {
                        matches!(cmp(first), Some(Ordering::Greater | Ordering::Equal))
                    }
                    "less_than" => cmp(first) == Some(Ordering::Less),
                    "less_equal" => matches!(cmp(first), Some(Ordering::Less | Ordering::Equal)),
                    "between" => {
                        let low = values.first().map(String::as_str).unwrap_or_default();
                        let high = values.get(1).map(String::as_str).unwrap_or_default();
                        matches!(cmp(low), Some(Ordering::Greater | Ordering::Equal))
                            && matches!(cmp(high), Some(Ordering::Less | Ordering::Equal))
                    }
                    _ => false,
                }
            }
        }
    }
}

/// The data type of a field, including `id` which every module has.
pub fn field_type<'a>(module: &'a Module, field: &str) -> Option<&'a str> {
    if field == "id" {
        return Some("bigint");
    }
    module.field(field).map(|f| f.data_type.as_str())
}

fn is_text(data_type: &str) -> bool {
    matches!(
        data_type,
        "text" | "textarea" | "email" | "phone" | "website" | "autonumber"
    )
}

/// Text of a value for text comparisons; lookups compare by name.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(";"),
        ),
        Value::Null => None,
    }
}

/// Exact (case-insensitive) equality by type; lookups match id or name, and
/// multi-select lists match any of their values.
pub fn matches_exact(data_type: &str, value: &Value, literal: &str, zone: UtcOffset) -> bool {
    match value {
        Value::Object(o) => ["id", "name"].iter().any(|k| {
            o.get(*k)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(literal))
        }),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|v| v.eq_ignore_ascii_case(literal)),
        Value::Null => literal.eq_ignore_ascii_case("null") || literal.is_empty(),
        _ => compare(data_type, value, literal, zone) == Some(Ordering::Equal),
    }
}

/// Orders a record value against a literal, by the field's type.
pub fn compare(data_type: &str, value: &Value, literal: &str, zone: UtcOffset) -> Option<Ordering> {
    match data_type {
        "integer" | "double" | "currency" | "percent" | "decimal" | "bigint" => {
            let left = match value {
                Value::Number(n) => n.as_f64()?,
                Value::String(s) => s.parse().ok()?,
                _ => return None,
            };
            let right: f64 = literal.trim().parse().ok()?;
            left.partial_cmp(&right)
        }
        "datetime" => {
            let left = parse_time(value.as_str()?, zone)?;
            let right = parse_time(literal, zone)?;
            Some(left.cmp(&right))
        }
        "boolean" => {
            let left = value.as_bool()?;
            let right: bool = literal.trim().to_ascii_lowercase().parse().ok()?;
            Some(left.cmp(&right))
        }
        _ => {
            let left = text_of(value)?.to_lowercase();
            Some(left.as_str().cmp(literal.to_lowercase().as_str()))
        }
    }
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 32;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn expr(&mut self) -> Result<Criteria, CriteriaError> {
        let mut left = self.term()?;
        loop {
            self.skip_ws();
            let rest: String = self.chars[self.pos..].iter().take(3).collect();
            let rest = rest.to_ascii_lowercase();
            if rest.starts_with("and") {
                self.pos += 3;
                let right = self.term()?;
                left = Criteria::And(Box::new(left), Box::new(right));
            } else if rest.starts_with("or") {
                self.pos += 2;
                let right = self.term()?;
                left = Criteria::Or(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn term(&mut self) -> Result<Criteria, CriteriaError> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(invalid("criteria nested too deeply"));
            }
            let inner = self.expr()?;
            self.depth -= 1;
            self.skip_ws();
            if self.chars.get(self.pos) != Some(&')') {
                return Err(invalid("unbalanced parentheses"));
            }
            self.pos += 1;
            Ok(inner)
        } else {
            self.condition()
        }
    }

    fn condition(&mut self) -> Result<Criteria, CriteriaError> {
        let field = self.until_colon()?;
        let op = self.until_colon()?.to_ascii_lowercase();
        // The value runs to the first unescaped `)`; it may hold `:` (times).
        let mut raw = String::new();
        while let Some(&c) = self.chars.get(self.pos) {
            if c == '\\' {
                raw.push(c);
                if let Some(&next) = self.chars.get(self.pos + 1) {
                    raw.push(next);
                }
                self.pos += 2;
                continue;
            }
            if c == ')' {
                break;
            }
            raw.push(c);
            self.pos += 1;
        }
        if field.is_empty() || op.is_empty() {
            return Err(invalid("invalid criteria syntax"));
        }
        let values = if op == "in" || op == "between" {
            split_unescaped(&raw)
        } else {
            vec![unescape(&raw)]
        };
        Ok(Criteria::Cond {
            field: field.trim().to_owned(),
            op,
            values,
        })
    }

    fn until_colon(&mut self) -> Result<String, CriteriaError> {
        let mut out = String::new();
        while let Some(&c) = self.chars.get(self.pos) {
            self.pos += 1;
            if c == ':' {
                return Ok(out);
            }
            if c == '(' || c == ')' {
                break;
            }
            out.push(c);
        }
        Err(invalid("invalid criteria syntax"))
    }
}

fn split_unescaped(raw: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

fn unescape(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(field: &str, op: &str, values: &[&str]) -> Criteria {
        Criteria::Cond {
            field: field.into(),
            op: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn a_single_condition_may_omit_parentheses() {
        assert_eq!(
            Criteria::parse("Campaign_Name:equals:CRM").unwrap(),
            cond("Campaign_Name", "equals", &["CRM"])
        );
    }

    #[test]
    fn nested_groups_and_datetime_values_parse() {
        let c = Criteria::parse(
            "((Last_Name:equals:Burns\\,B)and(Created_Time:between:2024-02-01T18:52:56+00:00,2024-02-20T18:52:56+00:00))",
        )
        .unwrap();
        assert_eq!(
            c,
            Criteria::And(
                Box::new(cond("Last_Name", "equals", &["Burns,B"])),
                Box::new(cond(
                    "Created_Time",
                    "between",
                    &["2024-02-01T18:52:56+00:00", "2024-02-20T18:52:56+00:00"]
                )),
            )
        );
    }

    #[test]
    fn broken_criteria_are_refused_not_panicked_on() {
        for bad in [
            "(Last_Name:equals:x",
            "Last_Name",
            "((a:equals:b)xor(c:equals:d))",
            "",
        ] {
            assert!(Criteria::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_compare_numerically_and_text_ignores_case() {
        let zone = UtcOffset::UTC;
        assert_eq!(
            compare("integer", &json!(9), "10", zone),
            Some(Ordering::Less)
        );
        assert!(matches_exact("text", &json!("ABC"), "abc", zone));
    }
}
