//! Field mapping between local records and Zoho modules: which fields cross,
//! under which names, in which direction, and with which value.
//!
//! This module owns the `[sync.entities.<entity>]` configuration: it parses
//! it (serde), validates all of it at start (`EntitiesConfig::validate`,
//! which reports every problem at once, naming the entity and field), and
//! turns records from one side's shape into the other's. It must not do I/O:
//! callers bring records in and take records out.
//!
//! DESIGN.md §4: local entities `deals`, `contacts`, `accounts` and `leads`
//! sync with the Zoho modules `Deals`, `Contacts`, `Accounts` and `Leads`
//! unless configured otherwise, and a field keeps its Zoho API name unless a
//! mapping renames or transforms it. So with no configuration at all, every
//! field crosses both ways under its own name.
//!
//! ```toml
//! [sync.entities.deals]
//! module = "Deals"             # default: the DESIGN table; required for other entities
//! schedule = "realtime"        # realtime (default) | hourly | daily | manual
//! direction = "both"           # both (default) | to_zoho | from_zoho
//! only_named_fields = false    # true: fields not named below do not cross at all
//! exclude = ["internal_notes"] # names that never pass through unnamed, either way
//!
//! # A rename.
//! [[sync.entities.deals.fields]]
//! local = "name"
//! zoho = "Deal_Name"
//!
//! # A value map: `values` is local -> Zoho; its inverse is used from Zoho,
//! # so it must be one-to-one unless `values_from_zoho` says the way back.
//! [[sync.entities.deals.fields]]
//! local = "status"
//! zoho = "Stage"
//! values = { open = "Qualification", won = "Closed Won", lost = "Closed Lost" }
//! values_from_zoho = { "Qualification" = "open", "Needs Analysis" = "open", "Closed Won" = "won", "Closed Lost" = "lost" }
//! unmapped_value = "error"     # error (default) | pass: what a value missing from the map does
//!
//! # Formulas (evalexpr): computed from the source record's fields, local
//! # names going to Zoho, Zoho names coming back.
//! [[sync.entities.deals.fields]]
//! local = "amount_cents"
//! zoho = "Amount"
//! to_zoho_formula = "amount_cents / 100"
//! from_zoho_formula = "round(Amount * 100)"
//!
//! # One direction only: never sent back to Zoho.
//! [[sync.entities.deals.fields]]
//! local = "probability"
//! zoho = "Probability"
//! direction = "from_zoho"      # both (default) | to_zoho | from_zoho
//!
//! # Conditional mappings: the first mapping of a target whose condition
//! # holds applies; a target whose conditions all fail does not cross.
//! [[sync.entities.deals.fields]]
//! zoho = "Rating"
//! direction = "to_zoho"
//! to_zoho_when = "amount_cents >= 10000000"
//! to_zoho_formula = '"Hot"'
//! [[sync.entities.deals.fields]]
//! zoho = "Rating"
//! direction = "to_zoho"
//! to_zoho_formula = '"Warm"'
//! ```
//!
//! Expression rules (formulas and conditions):
//! - every record number enters as a 64-bit float, so `amount_cents / 100`
//!   is `123.45`, not evalexpr's integer division; a whole result within
//!   ±2^53 leaves as a JSON integer;
//! - a Zoho lookup object is read with a dotted name (`Owner.name`);
//! - a field absent from the record leaves a formula's target out and makes
//!   a condition false (a partial record says nothing about that field);
//! - null reads as `()`; an expression that fails with a null input gives
//!   null (formula) or false (condition), so `amount_cents / 100` of a deal
//!   with no amount clears `Amount` instead of stopping the sync;
//! - formulas and conditions compute a value: they cannot assign.
//!
//! Pass-through (fields not named by any mapping) never carries `id` (the
//! record identity is the caller's business) or Zoho's `$`-prefixed
//! per-record metadata, and never sends Zoho's system-maintained fields
//! (`Created_Time`, `Modified_Time`, `Created_By`, `Modified_By`) to Zoho
//! (ZOHO-API.md §10).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::filters::{self, Filter, FilterConfig};

/// A record's fields, as JSON values keyed by field name (local or Zoho).
pub type Record = serde_json::Map<String, Value>;

/// The local entities DESIGN.md §4 syncs by default, with their Zoho modules.
pub const DEFAULT_ENTITIES: [(&str, &str); 4] = [
    ("deals", "Deals"),
    ("contacts", "Contacts"),
    ("accounts", "Accounts"),
    ("leads", "Leads"),
];

/// Zoho fields no write may carry (system-maintained; ZOHO-API.md §10).
const ZOHO_SYSTEM_FIELDS: [&str; 4] =
    ["Created_Time", "Modified_Time", "Created_By", "Modified_By"];

/// evalexpr 11's built-in functions, so a misspelt function fails at start
/// rather than on the first record that reaches it.
const BUILTIN_FUNCTIONS: &[&str] = &[
    "math::ln",
    "math::log",
    "math::log2",
    "math::log10",
    "math::exp",
    "math::exp2",
    "math::pow",
    "math::cos",
    "math::acos",
    "math::cosh",
    "math::acosh",
    "math::sin",
    "math::asin",
    "math::sinh",
    "math::asinh",
    "math::tan",
    "math::atan",
    "math::tanh",
    "math::atanh",
    "math::atan2",
    "math::sqrt",
    "math::cbrt",
    "math::hypot",
    "math::is_nan",
    "math::is_finite",
    "math::is_infinite",
    "math::is_normal",
    "math::abs",
    "floor",
    "round",
    "ceil",
    "typeof",
    "min",
    "max",
    "if",
    "contains",
    "contains_any",
    "len",
    "str::to_lowercase",
    "str::to_uppercase",
    "str::trim",
    "str::from",
    "str::substring",
    "bitand",
    "bitor",
    "bitxor",
    "bitnot",
    "shl",
    "shr",
];

// ---------------------------------------------------------------------------
// Directions

/// Which way a record or field moves in one sync step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    ToZoho,
    FromZoho,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flow::ToZoho => "to Zoho",
            Flow::FromZoho => "from Zoho",
        })
    }
}

/// Which ways an entity, a field or a filter is configured to cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Both,
    ToZoho,
    FromZoho,
}

impl Direction {
    pub const NAMES: &'static str = "both, to_zoho, from_zoho";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "both" => Self::Both,
            "to_zoho" => Self::ToZoho,
            "from_zoho" => Self::FromZoho,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::ToZoho => "to_zoho",
            Self::FromZoho => "from_zoho",
        }
    }

    pub fn crosses(self, flow: Flow) -> bool {
        matches!(
            (self, flow),
            (Self::Both, _) | (Self::ToZoho, Flow::ToZoho) | (Self::FromZoho, Flow::FromZoho)
        )
    }

    pub fn overlaps(self, other: Direction) -> bool {
        self.intersect(other).is_some()
    }

    /// The ways both `self` and `other` allow.
    pub fn intersect(self, other: Direction) -> Option<Direction> {
        match (self, other) {
            (Self::Both, d) | (d, Self::Both) => Some(d),
            (a, b) if a == b => Some(a),
            _ => None,
        }
    }
}

/// When an entity syncs on its own (DESIGN.md §4; issue 8 item 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    Realtime,
    Hourly,
    Daily,
    Manual,
}

impl Schedule {
    pub const NAMES: &'static str = "realtime, hourly, daily, manual";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "realtime" => Self::Realtime,
            "hourly" => Self::Hourly,
            "daily" => Self::Daily,
            "manual" => Self::Manual,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// Configuration as written

/// `[sync.entities]`: one entry per local entity. Entities in
/// `DEFAULT_ENTITIES` that are not named still sync with their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntitiesConfig(pub BTreeMap<String, EntityConfig>);

/// `[sync.entities.<entity>]` (see the module docs for the TOML shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntityConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    pub only_named_fields: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
}

/// `[[sync.entities.<entity>.fields]]`: one field mapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldConfig {
    /// Local field name: the source going to Zoho, the target coming back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    /// Zoho API name: the target going to Zoho, the source coming back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zoho: Option<String>,
    /// `both` (default), `to_zoho` or `from_zoho`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Local value -> Zoho value; inverted for the way back unless
    /// `values_from_zoho` is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeMap<String, String>>,
    /// Zoho value -> local value, when the way back is not the inverse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values_from_zoho: Option<BTreeMap<String, String>>,
    /// `error` (default) or `pass`: a value missing from the value map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmapped_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_zoho_formula: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_zoho_formula: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_zoho_when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_zoho_when: Option<String>,
}

// ---------------------------------------------------------------------------
// Validation problems

/// Where in `[sync.entities.<entity>]` a problem is.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    Entity,
    Field {
        index: usize,
        local: Option<String>,
        zoho: Option<String>,
    },
    Filter {
        index: usize,
        condition: Option<usize>,
    },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Entity => Ok(()),
            Place::Field { index, local, zoho } => {
                write!(f, ".fields[{index}] (")?;
                match (local, zoho) {
                    (Some(l), Some(z)) => write!(f, "local `{l}`, zoho `{z}`")?,
                    (Some(l), None) => write!(f, "local `{l}`")?,
                    (None, Some(z)) => write!(f, "zoho `{z}`")?,
                    (None, None) => write!(f, "no names")?,
                }
                f.write_str(")")
            }
            Place::Filter { index, condition } => {
                write!(f, ".filters[{index}]")?;
                match condition {
                    Some(c) => write!(f, ".conditions[{c}]"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("sync.entities.{entity}{place}: {kind}")]
pub struct Problem {
    pub entity: String,
    pub place: Place,
    pub kind: ProblemKind,
}

impl Problem {
    pub(crate) fn new(entity: &str, place: Place, kind: ProblemKind) -> Self {
        Self {
            entity: entity.to_owned(),
            place,
            kind,
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProblemKind {
    #[error("unknown {key} `{value}` (expected one of: {expected})")]
    Unknown {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("`{key}` must not be empty")]
    EmptyName { key: &'static str },
    #[error(
        "`module` is required: there is no default Zoho module for this entity \
         (defaults exist for deals, contacts, accounts and leads)"
    )]
    MissingModule,
    #[error("a field mapping needs `local`, `zoho` or both")]
    NoNames,
    #[error(
        "the {what} is {direction} but the entity syncs {entity_direction} only, so it never applies"
    )]
    NeverApplies {
        what: &'static str,
        direction: &'static str,
        entity_direction: &'static str,
    },
    #[error("the field crosses {flow}, so it needs {needs}")]
    Missing { flow: Flow, needs: &'static str },
    #[error("`{key}` is never used: the field does not cross {flow}")]
    Unused { key: &'static str, flow: Flow },
    #[error("`unmapped_value` is set but the field has no value map")]
    UnmappedWithoutMap,
    #[error("`{key}` = `{expression}` does not parse: {message}")]
    BadExpression {
        key: &'static str,
        expression: String,
        message: String,
    },
    #[error(
        "`{key}` = `{expression}` assigns to `{variable}`; write only the value, \
         the field's `zoho` or `local` name is the target"
    )]
    Assignment {
        key: &'static str,
        expression: String,
        variable: String,
    },
    #[error("`{key}` = `{expression}` calls unknown function `{function}`")]
    UnknownFunction {
        key: &'static str,
        expression: String,
        function: String,
    },
    #[error("both `{key}` and a value map set the value {flow}; use one of them")]
    FormulaAndValueMap { key: &'static str, flow: Flow },
    #[error(
        "the value map is not one-to-one: local `{first}` and `{second}` both map to Zoho \
         `{zoho}`, so the way back is ambiguous (make it one-to-one, or say the way back \
         with `values_from_zoho`, or make the field `to_zoho`)"
    )]
    NotOneToOne {
        zoho: String,
        first: String,
        second: String,
    },
    #[error(
        "`{target}` is already the target {flow} of fields[{earlier}], which has no \
         `{when_key}`; only the last mapping of a target may be unconditional"
    )]
    DuplicateTarget {
        flow: Flow,
        target: String,
        earlier: usize,
        when_key: &'static str,
    },
    #[error("module `{module}` already syncs with entity `{other}`")]
    DuplicateModule { module: String, other: String },
    #[error("`{name}` is in `exclude` and also named by a field mapping")]
    ExcludedAndMapped { name: String },
    #[error("a filter needs at least one condition")]
    EmptyFilter,
    #[error("`{op}` {message}")]
    FilterValue { op: String, message: String },
}

impl ProblemKind {
    pub(crate) fn unknown(key: &'static str, value: &str, expected: &'static str) -> Self {
        Self::Unknown {
            key,
            value: value.to_owned(),
            expected,
        }
    }
}

/// The configuration is not usable; every problem found is listed.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for MappingConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid sync mapping configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MappingConfigError {}

// ---------------------------------------------------------------------------
// Transform errors

/// A record could not be mapped. Configuration is valid by then, so these
/// come from the record's data: the sync of that record needs review.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    #[error("{entity}: value {value} of `{field}` is not in its value map {flow}")]
    UnmappedValue {
        entity: String,
        field: String,
        value: Value,
        flow: Flow,
    },
    #[error("{entity}: `{expression}` for `{target}` {flow} failed: {message}")]
    Expression {
        entity: String,
        target: String,
        flow: Flow,
        expression: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------
// Compiled mapping

/// A parsed evalexpr expression and the record fields it reads.
#[derive(Debug, Clone)]
struct Expr {
    text: String,
    node: Node,
    reads: BTreeSet<String>,
}

/// What an expression gave for one record.
enum Outcome {
    /// A field it reads is not in the record.
    Absent,
    Value(evalexpr::Value),
    /// It failed, and at least one input was null.
    FailedOnNull,
    Failed(String),
}

impl Expr {
    fn compile(
        key: &'static str,
        text: &str,
        entity: &str,
        place: &Place,
        problems: &mut Vec<Problem>,
    ) -> Option<Expr> {
        let mut fail = |kind| problems.push(Problem::new(entity, place.clone(), kind));
        let node = match evalexpr::build_operator_tree(text) {
            Ok(node) => node,
            Err(e) => {
                fail(ProblemKind::BadExpression {
                    key,
                    expression: text.to_owned(),
                    message: e.to_string(),
                });
                return None;
            }
        };
        if let Some(variable) = node.iter_write_variable_identifiers().next() {
            fail(ProblemKind::Assignment {
                key,
                expression: text.to_owned(),
                variable: variable.to_owned(),
            });
            return None;
        }
        if let Some(function) = node
            .iter_function_identifiers()
            .find(|f| !BUILTIN_FUNCTIONS.contains(f))
        {
            fail(ProblemKind::UnknownFunction {
                key,
                expression: text.to_owned(),
                function: function.to_owned(),
            });
            return None;
        }
        let reads = node
            .iter_read_variable_identifiers()
            .map(str::to_owned)
            .collect();
        Some(Expr {
            text: text.to_owned(),
            node,
            reads,
        })
    }

    fn eval(&self, record: &Record) -> Outcome {
        let mut context = HashMapContext::new();
        let mut null_input = false;
        for name in &self.reads {
            let Some(value) = lookup(record, name) else {
                return Outcome::Absent;
            };
            let value = to_eval(value);
            null_input |= matches!(value, evalexpr::Value::Empty);
            if let Err(e) = context.set_value(name.clone(), value) {
                return Outcome::Failed(e.to_string());
            }
        }
        match self.node.eval_with_context(&context) {
            Ok(value) => Outcome::Value(value),
            Err(_) if null_input => Outcome::FailedOnNull,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// A field by name, or a dotted path into a Zoho lookup object (`Owner.name`).
fn lookup<'r>(record: &'r Record, name: &str) -> Option<&'r Value> {
    if let Some(value) = record.get(name) {
        return Some(value);
    }
    let (head, rest) = name.split_once('.')?;
    match record.get(head)? {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

fn to_eval(value: &Value) -> evalexpr::Value {
    match value {
        Value::Null | Value::Object(_) => evalexpr::Value::Empty,
        Value::Bool(b) => evalexpr::Value::Boolean(*b),
        // Floats, so that `cents / 100` means what a person configuring it means.
        Value::Number(n) => evalexpr::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => evalexpr::Value::String(s.clone()),
        Value::Array(items) => evalexpr::Value::Tuple(items.iter().map(to_eval).collect()),
    }
}

/// The largest float below which every integer is exact.
const EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0;

fn from_eval(value: evalexpr::Value) -> Result<Value, String> {
    Ok(match value {
        evalexpr::Value::String(s) => Value::String(s),
        evalexpr::Value::Int(i) => Value::from(i),
        evalexpr::Value::Float(f) if !f.is_finite() => {
            return Err(format!("the result {f} is not a finite number"));
        }
        evalexpr::Value::Float(f) if f.fract() == 0.0 && f.abs() <= EXACT_FLOAT_INT => {
            // Whole and exact, so the cast is lossless; integer fields stay integers.
            Value::from(f as i64)
        }
        evalexpr::Value::Float(f) => Value::from(f),
        evalexpr::Value::Boolean(b) => Value::Bool(b),
        evalexpr::Value::Empty => Value::Null,
        evalexpr::Value::Tuple(items) => Value::Array(
            items
                .into_iter()
                .map(from_eval)
                .collect::<Result<Vec<_>, _>>()?,
        ),
    })
}

#[derive(Debug, Clone)]
enum ValueRule {
    Copy,
    Map {
        map: BTreeMap<String, String>,
        pass_unmapped: bool,
    },
    Formula(Expr),
}

/// One field mapping, seen from one flow.
#[derive(Debug, Clone)]
struct Way {
    source: Option<String>,
    when: Option<Expr>,
    value: ValueRule,
    /// Every source-side field whose change can change the target.
    inputs: BTreeSet<String>,
}

/// The ordered mappings of one target field in one flow: the first whose
/// condition holds applies.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    chain: Vec<Way>,
}

/// How one flow turns a source record into a target record.
#[derive(Debug, Clone)]
struct Plan {
    flow: Flow,
    active: bool,
    passthrough: bool,
    /// Names that never pass through unnamed in this flow.
    blocked: BTreeSet<String>,
    targets: Vec<Target>,
}

impl Plan {
    fn passes_through(&self, name: &str) -> bool {
        self.active && self.passthrough && !name.starts_with('$') && !self.blocked.contains(name)
    }

    fn apply(
        &self,
        entity: &str,
        source: &Record,
        only: Option<&BTreeSet<String>>,
    ) -> Result<Record, TransformError> {
        let mut out = Record::new();
        if !self.active {
            return Ok(out);
        }
        let wanted = |name: &str| only.is_none_or(|set| set.contains(name));
        for (name, value) in source {
            if self.passes_through(name) && wanted(name) {
                out.insert(name.clone(), value.clone());
            }
        }
        for target in &self.targets {
            if let Some(changed) = only
                && !target.chain.iter().any(|w| !w.inputs.is_disjoint(changed))
            {
                continue;
            }
            if let Some(value) = self.resolve(entity, target, source)? {
                out.insert(target.name.clone(), value);
            }
        }
        Ok(out)
    }

    /// The value of one target, or `None` when it does not cross.
    fn resolve(
        &self,
        entity: &str,
        target: &Target,
        source: &Record,
    ) -> Result<Option<Value>, TransformError> {
        let expression_error = |expr: &Expr, message: String| TransformError::Expression {
            entity: entity.to_owned(),
            target: target.name.clone(),
            flow: self.flow,
            expression: expr.text.clone(),
            message,
        };
        for way in &target.chain {
            if let Some(when) = &way.when {
                let holds = match when.eval(source) {
                    Outcome::Absent | Outcome::FailedOnNull => false,
                    Outcome::Value(evalexpr::Value::Boolean(b)) => b,
                    Outcome::Value(other) => {
                        return Err(expression_error(
                            when,
                            format!("a condition must give true or false, not {other}"),
                        ));
                    }
                    Outcome::Failed(message) => return Err(expression_error(when, message)),
                };
                if !holds {
                    continue;
                }
            }
            return match &way.value {
                ValueRule::Formula(expr) => match expr.eval(source) {
                    Outcome::Absent => Ok(None),
                    Outcome::FailedOnNull => Ok(Some(Value::Null)),
                    Outcome::Value(v) => from_eval(v)
                        .map(Some)
                        .map_err(|message| expression_error(expr, message)),
                    Outcome::Failed(message) => Err(expression_error(expr, message)),
                },
                ValueRule::Copy => Ok(way.source.as_ref().and_then(|s| source.get(s)).cloned()),
                ValueRule::Map { map, pass_unmapped } => {
                    let Some(field) = &way.source else {
                        return Ok(None);
                    };
                    let Some(value) = source.get(field) else {
                        return Ok(None);
                    };
                    let mapped = match value {
                        // Null clears the field on the other side; no map is needed for that.
                        Value::Null => Some(Value::Null),
                        Value::String(s) => map.get(s).cloned().map(Value::String),
                        _ => None,
                    };
                    match mapped {
                        Some(v) => Ok(Some(v)),
                        None if *pass_unmapped => Ok(Some(value.clone())),
                        None => Err(TransformError::UnmappedValue {
                            entity: entity.to_owned(),
                            field: field.clone(),
                            value: value.clone(),
                            flow: self.flow,
                        }),
                    }
                }
            };
        }
        Ok(None)
    }

    /// Target fields whose value can change when `changed` source fields do.
    fn affected(&self, changed: &BTreeSet<String>) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = changed
            .iter()
            .filter(|name| self.passes_through(name))
            .cloned()
            .collect();
        if self.active {
            for target in &self.targets {
                if target.chain.iter().any(|w| !w.inputs.is_disjoint(changed)) {
                    out.insert(target.name.clone());
                }
            }
        }
        out
    }

    /// Every source field some mapping of this flow reads.
    fn reads(&self) -> BTreeSet<String> {
        if !self.active {
            return BTreeSet::new();
        }
        self.targets
            .iter()
            .flat_map(|t| &t.chain)
            .flat_map(|w| w.inputs.iter().cloned())
            .collect()
    }
}

/// A field mapping's names and effective direction, for name look-ups.
#[derive(Debug, Clone)]
struct NamedField {
    local: Option<String>,
    zoho: Option<String>,
    direction: Direction,
}

/// The validated mapping of every synced entity.
#[derive(Debug, Clone)]
pub struct SyncMappings {
    entities: BTreeMap<String, EntityMapping>,
}

impl SyncMappings {
    pub fn entity(&self, name: &str) -> Option<&EntityMapping> {
        self.entities.get(name)
    }

    /// The entity that syncs with a Zoho module (for webhooks and pulls).
    pub fn by_module(&self, module: &str) -> Option<&EntityMapping> {
        self.entities.values().find(|e| e.module == module)
    }

    pub fn iter(&self) -> impl Iterator<Item = &EntityMapping> {
        self.entities.values()
    }
}

/// The validated mapping of one entity: names, transforms, filters.
#[derive(Debug, Clone)]
pub struct EntityMapping {
    name: String,
    module: String,
    schedule: Schedule,
    direction: Direction,
    to_zoho: Plan,
    from_zoho: Plan,
    named: Vec<NamedField>,
    filters: Vec<Filter>,
}

impl EntityMapping {
    /// The local entity name (`deals`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Zoho module API name (`Deals`).
    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether records of this entity move in `flow` at all.
    pub fn crosses(&self, flow: Flow) -> bool {
        self.direction.crosses(flow)
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// Whether a record, in local field names, may move in `flow` (see
    /// `filters`). Give it the whole record: a filter on a field the record
    /// lacks treats the field as missing.
    pub fn passes_filters(&self, flow: Flow, local: &Record) -> bool {
        self.crosses(flow) && filters::passes(&self.filters, flow, local)
    }

    /// The Zoho fields for a local record. Empty when the entity does not
    /// sync to Zoho.
    pub fn to_zoho(&self, local: &Record) -> Result<Record, TransformError> {
        self.to_zoho.apply(&self.name, local, None)
    }

    /// The local fields for a Zoho record. Empty when the entity does not
    /// sync from Zoho.
    pub fn from_zoho(&self, zoho: &Record) -> Result<Record, TransformError> {
        self.from_zoho.apply(&self.name, zoho, None)
    }

    /// Only the Zoho fields that `changed` local fields can affect, for a
    /// delta push. `local` must be the whole record: formulas and
    /// conditions may read fields that did not change.
    pub fn to_zoho_changed<S: AsRef<str>>(
        &self,
        local: &Record,
        changed: impl IntoIterator<Item = S>,
    ) -> Result<Record, TransformError> {
        let changed = names(changed);
        self.to_zoho.apply(&self.name, local, Some(&changed))
    }

    /// Only the local fields that `changed` Zoho fields can affect.
    pub fn from_zoho_changed<S: AsRef<str>>(
        &self,
        zoho: &Record,
        changed: impl IntoIterator<Item = S>,
    ) -> Result<Record, TransformError> {
        let changed = names(changed);
        self.from_zoho.apply(&self.name, zoho, Some(&changed))
    }

    /// The Zoho fields whose outgoing value can change when the given local
    /// fields change.
    pub fn zoho_fields_affected_by<S: AsRef<str>>(
        &self,
        changed_local: impl IntoIterator<Item = S>,
    ) -> BTreeSet<String> {
        self.to_zoho.affected(&names(changed_local))
    }

    /// The local fields whose incoming value can change when the given Zoho
    /// fields change.
    pub fn local_fields_affected_by<S: AsRef<str>>(
        &self,
        changed_zoho: impl IntoIterator<Item = S>,
    ) -> BTreeSet<String> {
        self.from_zoho.affected(&names(changed_zoho))
    }

    /// The Zoho field a local field is sent as, or `None` when it is not
    /// sent. The first mapping that names the field wins.
    pub fn zoho_name_of<'a>(&'a self, local: &'a str) -> Option<&'a str> {
        self.name_of(Flow::ToZoho, local)
    }

    /// The local field a Zoho field is received as, or `None`.
    pub fn local_name_of<'a>(&'a self, zoho: &'a str) -> Option<&'a str> {
        self.name_of(Flow::FromZoho, zoho)
    }

    fn name_of<'a>(&'a self, flow: Flow, name: &'a str) -> Option<&'a str> {
        let plan = match flow {
            Flow::ToZoho => &self.to_zoho,
            Flow::FromZoho => &self.from_zoho,
        };
        if !plan.active {
            return None;
        }
        for field in &self.named {
            let (source, target) = match flow {
                Flow::ToZoho => (&field.local, &field.zoho),
                Flow::FromZoho => (&field.zoho, &field.local),
            };
            if source.as_deref() == Some(name) && field.direction.crosses(flow) {
                if let Some(target) = target {
                    return Some(target);
                }
            }
        }
        plan.passes_through(name).then_some(name)
    }

    /// The Zoho fields a pull should request (`fields=`): those the mapping
    /// reads coming back, those it writes going out (so a conflict check sees
    /// them), and the pass-through names of `local_fields` the store knows.
    /// Zoho allows 50 per call (ZOHO-API.md §3.1); splitting is the caller's.
    pub fn zoho_fields_to_request<S: AsRef<str>>(
        &self,
        local_fields: impl IntoIterator<Item = S>,
    ) -> Vec<String> {
        let mut out = self.from_zoho.reads();
        if self.to_zoho.active {
            out.extend(self.to_zoho.targets.iter().map(|t| t.name.clone()));
        }
        for local in local_fields {
            let local = local.as_ref();
            if self.from_zoho.passes_through(local) {
                out.insert(local.to_owned());
            }
        }
        out.into_iter().collect()
    }
}

fn names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    names.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

// ---------------------------------------------------------------------------
// Validation

impl EntitiesConfig {
    /// Checks the whole configuration and builds the mappings, adding the
    /// DESIGN.md §4 defaults for entities not named. Reports every problem,
    /// each naming its entity and field.
    pub fn validate(&self) -> Result<SyncMappings, MappingConfigError> {
        let mut problems = Vec::new();
        let mut entities = BTreeMap::new();
        let defaults = DEFAULT_ENTITIES
            .iter()
            .filter(|(name, _)| !self.0.contains_key(*name))
            .map(|(name, _)| ((*name).to_owned(), EntityConfig::default()));
        let all: Vec<(String, EntityConfig)> = self
            .0
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .chain(defaults)
            .collect();
        for (name, config) in &all {
            if let Some(mapping) = config.compile(name, &mut problems) {
                entities.insert(name.clone(), mapping);
            }
        }
        let mut modules: BTreeMap<&str, &str> = BTreeMap::new();
        for mapping in entities.values() {
            if let Some(other) = modules.insert(&mapping.module, &mapping.name) {
                problems.push(Problem::new(
                    &mapping.name,
                    Place::Entity,
                    ProblemKind::DuplicateModule {
                        module: mapping.module.clone(),
                        other: other.to_owned(),
                    },
                ));
            }
        }
        if problems.is_empty() {
            Ok(SyncMappings { entities })
        } else {
            Err(MappingConfigError { problems })
        }
    }
}

fn default_module(entity: &str) -> Option<&'static str> {
    DEFAULT_ENTITIES
        .iter()
        .find(|(name, _)| *name == entity)
        .map(|(_, module)| *module)
}

impl EntityConfig {
    fn compile(&self, entity: &str, problems: &mut Vec<Problem>) -> Option<EntityMapping> {
        let before = problems.len();
        let mut push = |kind| problems.push(Problem::new(entity, Place::Entity, kind));

        if entity.trim().is_empty() {
            push(ProblemKind::EmptyName { key: "entity name" });
        }
        let module = match (&self.module, default_module(entity)) {
            (Some(m), _) if m.trim().is_empty() => {
                push(ProblemKind::EmptyName { key: "module" });
                String::new()
            }
            (Some(m), _) => m.clone(),
            (None, Some(m)) => m.to_owned(),
            (None, None) => {
                push(ProblemKind::MissingModule);
                String::new()
            }
        };
        let schedule = match self.schedule.as_deref() {
            None => Schedule::Realtime,
            Some(s) => Schedule::parse(s).unwrap_or_else(|| {
                push(ProblemKind::unknown("schedule", s, Schedule::NAMES));
                Schedule::Realtime
            }),
        };
        let direction = match self.direction.as_deref() {
            None => Direction::Both,
            Some(d) => Direction::parse(d).unwrap_or_else(|| {
                push(ProblemKind::unknown("direction", d, Direction::NAMES));
                Direction::Both
            }),
        };
        for name in &self.exclude {
            if name.trim().is_empty() {
                push(ProblemKind::EmptyName { key: "exclude" });
            }
        }

        let fields: Vec<CompiledField> = self
            .fields
            .iter()
            .enumerate()
            .filter_map(|(index, field)| field.compile(entity, index, direction, problems))
            .collect();
        check_duplicate_targets(entity, &fields, problems);

        let mut named_names = BTreeSet::new();
        for field in &self.fields {
            named_names.extend(field.local.iter().cloned());
            named_names.extend(field.zoho.iter().cloned());
        }
        for name in &self.exclude {
            if named_names.contains(name) {
                problems.push(Problem::new(
                    entity,
                    Place::Entity,
                    ProblemKind::ExcludedAndMapped { name: name.clone() },
                ));
            }
        }

        let filters: Vec<Filter> = self
            .filters
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.compile(entity, i, direction, problems))
            .collect();

        if problems.len() != before {
            return None;
        }

        // Named fields never pass through under their own name: a mapping
        // claimed them, even when it does not cross this way or its
        // condition fails, or they would leak past a direction or a rename.
        let mut blocked: BTreeSet<String> = named_names;
        blocked.extend(self.exclude.iter().cloned());
        blocked.insert("id".to_owned());
        let mut blocked_to_zoho = blocked.clone();
        blocked_to_zoho.extend(ZOHO_SYSTEM_FIELDS.iter().map(|s| (*s).to_owned()));

        let plan = |flow: Flow, blocked: BTreeSet<String>| Plan {
            flow,
            active: direction.crosses(flow),
            passthrough: !self.only_named_fields,
            blocked,
            targets: targets(&fields, flow),
        };
        Some(EntityMapping {
            name: entity.to_owned(),
            module,
            schedule,
            direction,
            to_zoho: plan(Flow::ToZoho, blocked_to_zoho),
            from_zoho: plan(Flow::FromZoho, blocked),
            named: fields
                .iter()
                .map(|f| NamedField {
                    local: f.local.clone(),
                    zoho: f.zoho.clone(),
                    direction: f.direction,
                })
                .collect(),
            filters,
        })
    }
}

/// A validated field mapping: its ways, keyed by flow.
struct CompiledField {
    index: usize,
    local: Option<String>,
    zoho: Option<String>,
    direction: Direction,
    to_zoho: Option<(String, Way)>,
    from_zoho: Option<(String, Way)>,
}

impl CompiledField {
    fn way(&self, flow: Flow) -> Option<&(String, Way)> {
        match flow {
            Flow::ToZoho => self.to_zoho.as_ref(),
            Flow::FromZoho => self.from_zoho.as_ref(),
        }
    }
}

fn when_key(flow: Flow) -> &'static str {
    match flow {
        Flow::ToZoho => "to_zoho_when",
        Flow::FromZoho => "from_zoho_when",
    }
}

fn check_duplicate_targets(entity: &str, fields: &[CompiledField], problems: &mut Vec<Problem>) {
    for flow in [Flow::ToZoho, Flow::FromZoho] {
        // target -> (index of its latest mapping, whether that one had a condition)
        let mut seen: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
        for field in fields {
            let Some((target, way)) = field.way(flow) else {
                continue;
            };
            if let Some(&(earlier, false)) = seen.get(target.as_str()) {
                problems.push(Problem::new(
                    entity,
                    Place::Field {
                        index: field.index,
                        local: field.local.clone(),
                        zoho: field.zoho.clone(),
                    },
                    ProblemKind::DuplicateTarget {
                        flow,
                        target: target.clone(),
                        earlier,
                        when_key: when_key(flow),
                    },
                ));
            }
            seen.insert(target, (field.index, way.when.is_some()));
        }
    }
}

fn targets(fields: &[CompiledField], flow: Flow) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for field in fields {
        let Some((name, way)) = field.way(flow) else {
            continue;
        };
        match out.iter_mut().find(|t| &t.name == name) {
            Some(target) => target.chain.push(way.clone()),
            None => out.push(Target {
                name: name.clone(),
                chain: vec![way.clone()],
            }),
        }
    }
    out
}

impl FieldConfig {
    fn compile(
        &self,
        entity: &str,
        index: usize,
        entity_direction: Direction,
        problems: &mut Vec<Problem>,
    ) -> Option<CompiledField> {
        let before = problems.len();
        let place = Place::Field {
            index,
            local: self.local.clone(),
            zoho: self.zoho.clone(),
        };
        let mut push = |kind| problems.push(Problem::new(entity, place.clone(), kind));

        if self.local.is_none() && self.zoho.is_none() {
            push(ProblemKind::NoNames);
        }
        if self.local.as_deref().is_some_and(|s| s.trim().is_empty()) {
            push(ProblemKind::EmptyName { key: "local" });
        }
        if self.zoho.as_deref().is_some_and(|s| s.trim().is_empty()) {
            push(ProblemKind::EmptyName { key: "zoho" });
        }
        let configured = match self.direction.as_deref() {
            None => Direction::Both,
            Some(d) => Direction::parse(d).unwrap_or_else(|| {
                push(ProblemKind::unknown("direction", d, Direction::NAMES));
                Direction::Both
            }),
        };
        let direction = configured.intersect(entity_direction).unwrap_or_else(|| {
            push(ProblemKind::NeverApplies {
                what: "field",
                direction: configured.name(),
                entity_direction: entity_direction.name(),
            });
            configured
        });
        let pass_unmapped = match self.unmapped_value.as_deref() {
            None | Some("error") => false,
            Some("pass") => true,
            Some(other) => {
                push(ProblemKind::unknown("unmapped_value", other, "error, pass"));
                false
            }
        };
        if self.unmapped_value.is_some() && self.values.is_none() && self.values_from_zoho.is_none()
        {
            push(ProblemKind::UnmappedWithoutMap);
        }

        let mut ways = [None, None];
        for (slot, flow) in ways.iter_mut().zip([Flow::ToZoho, Flow::FromZoho]) {
            *slot = self.compile_way(entity, &place, flow, direction, pass_unmapped, problems);
        }
        if problems.len() != before {
            return None;
        }
        let [to_zoho, from_zoho] = ways;
        Some(CompiledField {
            index,
            local: self.local.clone(),
            zoho: self.zoho.clone(),
            direction,
            to_zoho,
            from_zoho,
        })
    }

    fn compile_way(
        &self,
        entity: &str,
        place: &Place,
        flow: Flow,
        direction: Direction,
        pass_unmapped: bool,
        problems: &mut Vec<Problem>,
    ) -> Option<(String, Way)> {
        let (source, target, formula_key, formula, when) = match flow {
            Flow::ToZoho => (
                &self.local,
                &self.zoho,
                "to_zoho_formula",
                &self.to_zoho_formula,
                &self.to_zoho_when,
            ),
            Flow::FromZoho => (
                &self.zoho,
                &self.local,
                "from_zoho_formula",
                &self.from_zoho_formula,
                &self.from_zoho_when,
            ),
        };
        let push = |problems: &mut Vec<Problem>, kind| {
            problems.push(Problem::new(entity, place.clone(), kind));
        };

        if !direction.crosses(flow) {
            // Settings for a way the field never takes are mistakes, not no-ops.
            let unused = [
                (formula_key, formula.is_some()),
                (when_key(flow), when.is_some()),
                (
                    "values_from_zoho",
                    flow == Flow::FromZoho && self.values_from_zoho.is_some(),
                ),
            ];
            for (key, set) in unused {
                if set {
                    push(problems, ProblemKind::Unused { key, flow });
                }
            }
            return None;
        }

        let Some(target) = target.clone() else {
            let needs = match flow {
                Flow::ToZoho => "`zoho` (the Zoho field it sets)",
                Flow::FromZoho => "`local` (the local field it sets)",
            };
            push(problems, ProblemKind::Missing { flow, needs });
            return None;
        };
        let formula = formula
            .as_deref()
            .and_then(|text| Expr::compile(formula_key, text, entity, place, problems));
        let when = when
            .as_deref()
            .and_then(|text| Expr::compile(when_key(flow), text, entity, place, problems));
        if source.is_none() && formula.is_none() {
            let needs = match flow {
                Flow::ToZoho => "`local` or `to_zoho_formula` (where its value comes from)",
                Flow::FromZoho => "`zoho` or `from_zoho_formula` (where its value comes from)",
            };
            push(problems, ProblemKind::Missing { flow, needs });
            return None;
        }

        let map = match flow {
            Flow::ToZoho => self.values.clone(),
            Flow::FromZoho => match (&self.values_from_zoho, &self.values) {
                (Some(back), _) => Some(back.clone()),
                (None, Some(forth)) => invert(forth, entity, place, problems),
                (None, None) => None,
            },
        };
        let value = match (formula, map) {
            (Some(_), Some(_)) => {
                push(
                    problems,
                    ProblemKind::FormulaAndValueMap {
                        key: formula_key,
                        flow,
                    },
                );
                return None;
            }
            (Some(expr), None) => ValueRule::Formula(expr),
            (None, Some(map)) => ValueRule::Map { map, pass_unmapped },
            (None, None) => ValueRule::Copy,
        };

        let mut inputs: BTreeSet<String> = source.iter().cloned().collect();
        if let ValueRule::Formula(expr) = &value {
            inputs.extend(expr.reads.iter().cloned());
        }
        if let Some(when) = &when {
            inputs.extend(when.reads.iter().cloned());
        }
        // A dotted read (`Owner.name`) changes when its top-level field does.
        let tops: Vec<String> = inputs
            .iter()
            .filter_map(|n| n.split_once('.').map(|(head, _)| head.to_owned()))
            .collect();
        inputs.extend(tops);
        Some((
            target,
            Way {
                source: source.clone(),
                when,
                value,
                inputs,
            },
        ))
    }
}

/// The way back of a one-to-one value map, or a problem when it is not one-to-one.
fn invert(
    forth: &BTreeMap<String, String>,
    entity: &str,
    place: &Place,
    problems: &mut Vec<Problem>,
) -> Option<BTreeMap<String, String>> {
    let mut back: BTreeMap<String, String> = BTreeMap::new();
    let mut ok = true;
    for (local, zoho) in forth {
        if let Some(first) = back.insert(zoho.clone(), local.clone()) {
            ok = false;
            problems.push(Problem::new(
                entity,
                place.clone(),
                ProblemKind::NotOneToOne {
                    zoho: zoho.clone(),
                    first,
                    second: local.clone(),
                },
            ));
        }
    }
    ok.then_some(back)
}
