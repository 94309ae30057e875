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
//! Selective sync filters sit beside the fields as
//! `[[sync.entities.<entity>.filters]]`; `super::filters` shows their shape.
//!
//! How the sync uses it:
//!
//! ```text
//! let mappings = config.sync.entities.validate()?;          // once, at start
//! let deals = mappings.entity("deals").unwrap();            // or by_module("Deals")
//! // push: the whole local record, and the names of the fields that changed
//! if deals.passes_filters(Flow::ToZoho, &local) {
//!     let body = deals.to_zoho_changed(&local, &changed)?;  // Zoho names and values
//! }
//! // pull: ask for deals.zoho_fields_to_request(known_local_fields), then
//! let local = deals.from_zoho(&zoho)?;
//! if deals.passes_filters(Flow::FromZoho, &local) { /* apply */ }
//! // shadows: deals.zoho_name_of("status") == Some("Stage"), and back with local_name_of
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
    /// `values_from_zoho` is given. Maps match string values; null crosses
    /// as null; any other value is unmapped (see `unmapped_value`).
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
        // evalexpr builds a tree for `x +` or an empty text and only fails
        // when evaluating it; catch that here, before any record meets it.
        if let Some(message) = incomplete(&node) {
            fail(ProblemKind::BadExpression {
                key,
                expression: text.to_owned(),
                message,
            });
            return None;
        }
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

/// Why a parsed tree cannot evaluate whatever the record holds, if it cannot.
fn incomplete(node: &Node) -> Option<String> {
    use evalexpr::Operator as Op;
    let wanted = match node.operator() {
        Op::RootNode if node.children().is_empty() => return Some("it is empty".to_owned()),
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Mod
        | Op::Exp
        | Op::Eq
        | Op::Neq
        | Op::Gt
        | Op::Lt
        | Op::Geq
        | Op::Leq
        | Op::And
        | Op::Or => Some(2),
        Op::Not | Op::Neg | Op::FunctionIdentifier { .. } => Some(1),
        _ => None,
    };
    if let Some(wanted) = wanted
        && node.children().len() != wanted
    {
        return Some(format!("`{}` is missing an operand", node.operator()));
    }
    node.children().iter().find_map(incomplete)
}

/// A field by name, or a dotted path into a Zoho lookup object (`Owner.name`).
pub(crate) fn lookup<'r>(record: &'r Record, name: &str) -> Option<&'r Value> {
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
    /// conditions may read fields that did not change. A field computed
    /// from no field at all (a constant) never changes, so only `to_zoho`
    /// (a create or a full push) carries it.
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
            if source.as_deref() == Some(name)
                && field.direction.crosses(flow)
                && let Some(target) = target
            {
                return Some(target);
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
        // A dotted read (`Owner.name`) is a path into a field, not a field;
        // its top-level field is among the reads already.
        out.retain(|name| !name.contains('.'));
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
                // `values` still serves the way back, unless that has its own map.
                (
                    "values",
                    flow == Flow::ToZoho
                        && self.values.is_some()
                        && self.values_from_zoho.is_some(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The config as the lead embeds it: `[sync.entities.<entity>]`.
    #[derive(Debug, Deserialize)]
    struct Root {
        sync: SyncSection,
    }

    #[derive(Debug, Deserialize)]
    struct SyncSection {
        entities: EntitiesConfig,
    }

    fn parse(toml_text: &str) -> EntitiesConfig {
        toml::from_str::<Root>(toml_text)
            .expect("valid TOML")
            .sync
            .entities
    }

    fn mappings(toml_text: &str) -> SyncMappings {
        match parse(toml_text).validate() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    fn deals(toml_text: &str) -> EntityMapping {
        mappings(toml_text).entity("deals").expect("deals").clone()
    }

    fn problems(toml_text: &str) -> Vec<Problem> {
        parse(toml_text)
            .validate()
            .expect_err("the configuration is refused")
            .problems
    }

    fn kinds(toml_text: &str) -> Vec<ProblemKind> {
        problems(toml_text).into_iter().map(|p| p.kind).collect()
    }

    fn record(value: Value) -> Record {
        value.as_object().expect("a JSON object").clone()
    }

    const DEALS: &str = r#"
        [sync.entities.deals]
        exclude = ["internal_notes"]

        [[sync.entities.deals.fields]]
        local = "name"
        zoho = "Deal_Name"

        [[sync.entities.deals.fields]]
        local = "status"
        zoho = "Stage"
        values = { open = "Qualification", won = "Closed Won", lost = "Closed Lost" }

        [[sync.entities.deals.fields]]
        local = "amount_cents"
        zoho = "Amount"
        to_zoho_formula = "amount_cents / 100"
        from_zoho_formula = "round(Amount * 100)"

        [[sync.entities.deals.fields]]
        local = "probability"
        zoho = "Probability"
        direction = "from_zoho"

        [[sync.entities.deals.fields]]
        local = "owner_name"
        direction = "from_zoho"
        from_zoho_formula = "Owner.name"

        [[sync.entities.deals.fields]]
        zoho = "Rating"
        direction = "to_zoho"
        to_zoho_when = "amount_cents >= 10000000"
        to_zoho_formula = '"Hot"'

        [[sync.entities.deals.fields]]
        zoho = "Rating"
        direction = "to_zoho"
        to_zoho_formula = 'if(amount_cents > 0, "Warm", "Cold")'
    "#;

    // -- defaults and pass-through ------------------------------------------

    #[test]
    fn no_configuration_syncs_the_four_default_entities_with_their_modules() {
        let m = parse("[sync.entities]").validate().unwrap();
        let names: Vec<(&str, &str)> = m.iter().map(|e| (e.name(), e.module())).collect();
        assert_eq!(
            names,
            vec![
                ("accounts", "Accounts"),
                ("contacts", "Contacts"),
                ("deals", "Deals"),
                ("leads", "Leads"),
            ]
        );
        let deals = m.entity("deals").unwrap();
        assert_eq!(deals.schedule(), Schedule::Realtime);
        assert_eq!(deals.direction(), Direction::Both);
        assert_eq!(m.by_module("Leads").unwrap().name(), "leads");
    }

    #[test]
    fn with_no_mapping_every_field_keeps_its_name_both_ways() {
        let leads = mappings("[sync.entities]").entity("leads").unwrap().clone();
        let fields =
            record(json!({ "Last_Name": "Boyle", "Email": "p@z.com", "No_of_Employees": 12 }));
        assert_eq!(leads.to_zoho(&fields).unwrap(), fields);
        assert_eq!(leads.from_zoho(&fields).unwrap(), fields);
    }

    #[test]
    fn configuring_one_entity_keeps_the_other_defaults() {
        let m = mappings(
            r#"
            [sync.entities.deals]
            schedule = "hourly"
            [sync.entities.tickets]
            module = "Cases"
            direction = "from_zoho"
            schedule = "manual"
            "#,
        );
        assert_eq!(m.iter().count(), 5);
        assert_eq!(m.entity("deals").unwrap().schedule(), Schedule::Hourly);
        let tickets = m.entity("tickets").unwrap();
        assert_eq!(tickets.module(), "Cases");
        assert_eq!(tickets.schedule(), Schedule::Manual);
        assert!(!tickets.crosses(Flow::ToZoho) && tickets.crosses(Flow::FromZoho));
    }

    #[test]
    fn every_schedule_parses() {
        for (name, schedule) in [
            ("realtime", Schedule::Realtime),
            ("hourly", Schedule::Hourly),
            ("daily", Schedule::Daily),
            ("manual", Schedule::Manual),
        ] {
            let m = deals(&format!("[sync.entities.deals]\nschedule = \"{name}\""));
            assert_eq!(m.schedule(), schedule);
        }
    }

    #[test]
    fn identity_metadata_and_system_fields_do_not_pass_through() {
        let m = deals("[sync.entities]");
        let zoho = record(json!({
            "id": "5725767000000524157",
            "Deal_Name": "Big one",
            "$approval_state": "approved",
            "Modified_Time": "2023-05-10T01:10:47-07:00",
        }));
        assert_eq!(
            m.from_zoho(&zoho).unwrap(),
            record(json!({ "Deal_Name": "Big one", "Modified_Time": "2023-05-10T01:10:47-07:00" }))
        );
        let local = record(json!({
            "id": "d1",
            "Deal_Name": "Big one",
            "Created_Time": "2023-05-10T01:10:47-07:00",
            "Modified_By": { "id": "1" },
        }));
        assert_eq!(
            m.to_zoho(&local).unwrap(),
            record(json!({ "Deal_Name": "Big one" }))
        );
    }

    #[test]
    fn only_named_fields_drops_every_other_field_both_ways() {
        let m = deals(
            r#"
            [sync.entities.deals]
            only_named_fields = true
            [[sync.entities.deals.fields]]
            local = "name"
            zoho = "Deal_Name"
            "#,
        );
        let local = record(json!({ "name": "A", "notes": "n" }));
        assert_eq!(
            m.to_zoho(&local).unwrap(),
            record(json!({ "Deal_Name": "A" }))
        );
        let zoho = record(json!({ "Deal_Name": "A", "Description": "d" }));
        assert_eq!(m.from_zoho(&zoho).unwrap(), record(json!({ "name": "A" })));
    }

    #[test]
    fn an_excluded_field_does_not_pass_through_either_way() {
        let m = deals(DEALS);
        let local = record(json!({ "internal_notes": "secret", "Description": "d" }));
        assert_eq!(
            m.to_zoho(&local).unwrap(),
            record(json!({ "Description": "d" }))
        );
        assert_eq!(
            m.from_zoho(&local).unwrap(),
            record(json!({ "Description": "d" }))
        );
    }

    // -- renames and directions ---------------------------------------------

    #[test]
    fn a_rename_crosses_under_the_zoho_name_and_comes_back_under_the_local_name() {
        let m = deals(DEALS);
        assert_eq!(
            m.to_zoho(&record(json!({ "name": "Big one" }))).unwrap(),
            record(json!({ "Deal_Name": "Big one" }))
        );
        assert_eq!(
            m.from_zoho(&record(json!({ "Deal_Name": "Big one" })))
                .unwrap(),
            record(json!({ "name": "Big one" }))
        );
    }

    #[test]
    fn a_renamed_field_does_not_also_pass_through_under_its_other_name() {
        let m = deals(DEALS);
        // A stray local `Deal_Name` must not clobber or duplicate the mapped one.
        let local = record(json!({ "Deal_Name": "stray" }));
        assert_eq!(m.to_zoho(&local).unwrap(), Record::new());
        let zoho = record(json!({ "name": "stray" }));
        assert_eq!(m.from_zoho(&zoho).unwrap(), Record::new());
    }

    #[test]
    fn a_from_zoho_field_is_received_but_never_sent() {
        let m = deals(DEALS);
        assert_eq!(
            m.from_zoho(&record(json!({ "Probability": 60 }))).unwrap(),
            record(json!({ "probability": 60 }))
        );
        assert_eq!(
            m.to_zoho(&record(json!({ "probability": 60 }))).unwrap(),
            Record::new()
        );
        assert_eq!(
            m.to_zoho(&record(json!({ "Probability": 60 }))).unwrap(),
            Record::new()
        );
    }

    #[test]
    fn a_to_zoho_field_is_sent_but_dropped_coming_back() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "source"
            zoho = "Lead_Source"
            direction = "to_zoho"
            "#,
        );
        assert_eq!(
            m.to_zoho(&record(json!({ "source": "web" }))).unwrap(),
            record(json!({ "Lead_Source": "web" }))
        );
        assert_eq!(
            m.from_zoho(&record(json!({ "Lead_Source": "web" })))
                .unwrap(),
            Record::new()
        );
    }

    #[test]
    fn an_entity_that_only_sends_takes_nothing_from_zoho() {
        let m = deals(
            r#"
            [sync.entities.deals]
            direction = "to_zoho"
            "#,
        );
        let fields = record(json!({ "Deal_Name": "A" }));
        assert_eq!(m.to_zoho(&fields).unwrap(), fields);
        assert_eq!(m.from_zoho(&fields).unwrap(), Record::new());
        assert_eq!(m.local_name_of("Deal_Name"), None);
        assert!(!m.passes_filters(Flow::FromZoho, &fields));
    }

    #[test]
    fn an_entity_that_only_receives_sends_nothing_to_zoho() {
        let m = deals(
            r#"
            [sync.entities.deals]
            direction = "from_zoho"
            "#,
        );
        let fields = record(json!({ "Deal_Name": "A" }));
        assert_eq!(m.to_zoho(&fields).unwrap(), Record::new());
        assert_eq!(m.from_zoho(&fields).unwrap(), fields);
    }

    // -- value maps -----------------------------------------------------------

    #[test]
    fn a_value_map_translates_status_to_stage_and_back() {
        let m = deals(DEALS);
        for (local, zoho) in [
            ("open", "Qualification"),
            ("won", "Closed Won"),
            ("lost", "Closed Lost"),
        ] {
            assert_eq!(
                m.to_zoho(&record(json!({ "status": local }))).unwrap(),
                record(json!({ "Stage": zoho }))
            );
            assert_eq!(
                m.from_zoho(&record(json!({ "Stage": zoho }))).unwrap(),
                record(json!({ "status": local }))
            );
        }
    }

    #[test]
    fn values_from_zoho_maps_several_stages_to_one_status() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            values = { open = "Qualification", won = "Closed Won" }
            values_from_zoho = { "Qualification" = "open", "Needs Analysis" = "open", "Closed Won" = "won" }
            "#,
        );
        assert_eq!(
            m.from_zoho(&record(json!({ "Stage": "Needs Analysis" })))
                .unwrap(),
            record(json!({ "status": "open" }))
        );
        assert_eq!(
            m.to_zoho(&record(json!({ "status": "open" }))).unwrap(),
            record(json!({ "Stage": "Qualification" }))
        );
    }

    #[test]
    fn an_unmapped_value_is_an_error_by_default_both_ways() {
        let m = deals(DEALS);
        let err = m
            .to_zoho(&record(json!({ "status": "stalled" })))
            .unwrap_err();
        assert_eq!(
            err,
            TransformError::UnmappedValue {
                entity: "deals".into(),
                field: "status".into(),
                value: json!("stalled"),
                flow: Flow::ToZoho,
            }
        );
        assert_eq!(
            err.to_string(),
            "deals: value \"stalled\" of `status` is not in its value map to Zoho"
        );
        let err = m
            .from_zoho(&record(json!({ "Stage": "Negotiation" })))
            .unwrap_err();
        assert!(matches!(
            err,
            TransformError::UnmappedValue {
                flow: Flow::FromZoho,
                ..
            }
        ));
        // A value of another kind is unmapped too.
        assert!(m.to_zoho(&record(json!({ "status": 3 }))).is_err());
    }

    #[test]
    fn an_unmapped_value_passes_through_when_configured() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            values = { open = "Qualification" }
            unmapped_value = "pass"
            "#,
        );
        assert_eq!(
            m.to_zoho(&record(json!({ "status": "stalled" }))).unwrap(),
            record(json!({ "Stage": "stalled" }))
        );
        assert_eq!(
            m.from_zoho(&record(json!({ "Stage": "Negotiation" })))
                .unwrap(),
            record(json!({ "status": "Negotiation" }))
        );
    }

    #[test]
    fn null_crosses_a_value_map_as_null() {
        let m = deals(DEALS);
        assert_eq!(
            m.to_zoho(&record(json!({ "status": null }))).unwrap(),
            record(json!({ "Stage": null }))
        );
    }

    #[test]
    fn a_field_absent_from_the_record_does_not_cross() {
        let m = deals(DEALS);
        assert_eq!(m.to_zoho(&Record::new()).unwrap(), Record::new());
        assert_eq!(m.from_zoho(&Record::new()).unwrap(), Record::new());
    }

    // -- formulas -------------------------------------------------------------

    #[test]
    fn a_number_formula_computes_the_value_each_way() {
        let m = deals(DEALS);
        let zoho = m
            .to_zoho(&record(json!({ "amount_cents": 12345 })))
            .unwrap();
        assert_eq!(zoho["Amount"], json!(123.45));
        let local = m.from_zoho(&record(json!({ "Amount": 123.45 }))).unwrap();
        assert_eq!(local, record(json!({ "amount_cents": 12345 })));
        // A whole result leaves as an integer.
        let zoho = m.to_zoho(&record(json!({ "amount_cents": 500 }))).unwrap();
        assert_eq!(zoho["Amount"], json!(5));
        assert!(zoho["Amount"].is_i64());
    }

    #[test]
    fn a_string_formula_builds_text_from_several_fields() {
        let m = mappings(
            r#"
            [[sync.entities.contacts.fields]]
            zoho = "Full_Name"
            direction = "to_zoho"
            to_zoho_formula = 'first + " " + str::to_uppercase(last)'

            [[sync.entities.contacts.fields]]
            local = "email"
            zoho = "Email"
            from_zoho_formula = "str::to_lowercase(Email)"
            "#,
        );
        let contacts = m.entity("contacts").unwrap();
        let zoho = contacts
            .to_zoho(&record(
                json!({ "first": "Ada", "last": "Lovelace", "email": "a@x.io" }),
            ))
            .unwrap();
        assert_eq!(
            zoho,
            record(json!({
                "Full_Name": "Ada LOVELACE",
                "Email": "a@x.io",
                "first": "Ada",
                "last": "Lovelace",
            }))
        );
        let local = contacts
            .from_zoho(&record(json!({ "Email": "A@X.IO" })))
            .unwrap();
        assert_eq!(local, record(json!({ "email": "a@x.io" })));
    }

    #[test]
    fn a_formula_with_an_absent_input_leaves_its_target_out() {
        let m = deals(DEALS);
        let zoho = m.to_zoho(&record(json!({ "name": "A" }))).unwrap();
        assert!(!zoho.contains_key("Amount"));
    }

    #[test]
    fn a_formula_with_a_null_input_gives_null() {
        let m = deals(DEALS);
        let zoho = m.to_zoho(&record(json!({ "amount_cents": null }))).unwrap();
        assert_eq!(zoho["Amount"], Value::Null);
    }

    #[test]
    fn a_formula_reads_a_zoho_lookup_with_a_dotted_name() {
        let m = deals(DEALS);
        let local = m
            .from_zoho(&record(
                json!({ "Owner": { "id": "1", "name": "Patricia Boyle" } }),
            ))
            .unwrap();
        assert_eq!(local["owner_name"], json!("Patricia Boyle"));
        // `Owner` is read by a formula but not named, so it passes through too.
        assert!(local.contains_key("Owner"));
    }

    #[test]
    fn a_formula_that_fails_on_real_data_is_an_error_naming_entity_and_target() {
        let m = deals(DEALS);
        let err = m
            .to_zoho(&record(json!({ "amount_cents": "lots" })))
            .unwrap_err();
        let TransformError::Expression {
            entity,
            target,
            flow,
            expression,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(
            (entity.as_str(), target.as_str(), *flow, expression.as_str()),
            ("deals", "Amount", Flow::ToZoho, "amount_cents / 100")
        );
    }

    #[test]
    fn a_formula_that_divides_by_zero_is_an_error_not_infinity() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "ratio"
            zoho = "Ratio"
            to_zoho_formula = "ratio / 0"
            "#,
        );
        assert!(m.to_zoho(&record(json!({ "ratio": 1.5 }))).is_err());
    }

    // -- conditional mappings -------------------------------------------------

    #[test]
    fn a_conditional_mapping_applies_only_while_its_condition_holds() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "discount"
            zoho = "Discount"
            to_zoho_when = 'status == "won"'
            from_zoho_when = "Discount > 0"
            "#,
        );
        let on = record(json!({ "status": "won", "discount": 10 }));
        let off = record(json!({ "status": "open", "discount": 10 }));
        assert_eq!(m.to_zoho(&on).unwrap()["Discount"], json!(10));
        assert!(!m.to_zoho(&off).unwrap().contains_key("Discount"));
        assert_eq!(
            m.from_zoho(&record(json!({ "Discount": 5 }))).unwrap(),
            record(json!({ "discount": 5 }))
        );
        assert_eq!(
            m.from_zoho(&record(json!({ "Discount": 0 }))).unwrap(),
            Record::new()
        );
    }

    #[test]
    fn the_first_conditional_mapping_that_holds_wins_and_the_last_is_the_fallback() {
        let m = deals(DEALS);
        let big = m
            .to_zoho(&record(json!({ "amount_cents": 20_000_000 })))
            .unwrap();
        assert_eq!(big["Rating"], json!("Hot"));
        let small = m.to_zoho(&record(json!({ "amount_cents": 100 }))).unwrap();
        assert_eq!(small["Rating"], json!("Warm"));
        let zero = m.to_zoho(&record(json!({ "amount_cents": 0 }))).unwrap();
        assert_eq!(zero["Rating"], json!("Cold"));
        // The fields they read are absent: the condition is false and the
        // fallback's formula has nothing to compute from.
        let unknown = m.to_zoho(&record(json!({ "name": "A" }))).unwrap();
        assert!(!unknown.contains_key("Rating"));
        // Null input: the condition is false and the fallback gives null,
        // rather than a failed sync.
        let null = m.to_zoho(&record(json!({ "amount_cents": null }))).unwrap();
        assert_eq!(null["Rating"], Value::Null);
    }

    #[test]
    fn a_condition_that_gives_no_boolean_is_an_error() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "A"
            to_zoho_when = "a + 1"
            "#,
        );
        let err = m.to_zoho(&record(json!({ "a": 1 }))).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
    }

    // -- field-level information for deltas -----------------------------------

    #[test]
    fn a_delta_push_carries_only_the_zoho_fields_the_change_affects() {
        let m = deals(DEALS);
        let local = record(json!({
            "name": "A",
            "status": "won",
            "amount_cents": 20_000_000,
            "Description": "d",
        }));
        assert_eq!(
            m.to_zoho_changed(&local, ["status"]).unwrap(),
            record(json!({ "Stage": "Closed Won" }))
        );
        assert_eq!(
            m.to_zoho_changed(&local, ["amount_cents", "Description"])
                .unwrap(),
            record(json!({ "Amount": 200000, "Rating": "Hot", "Description": "d" }))
        );
        assert_eq!(
            m.to_zoho_changed(&local, ["probability"]).unwrap(),
            Record::new()
        );
        assert_eq!(
            m.zoho_fields_affected_by(["amount_cents", "internal_notes", "x"]),
            BTreeSet::from(["Amount".to_owned(), "Rating".to_owned(), "x".to_owned()])
        );
    }

    #[test]
    fn a_delta_pull_carries_only_the_local_fields_the_change_affects() {
        let m = deals(DEALS);
        let zoho = record(json!({
            "Deal_Name": "A",
            "Stage": "Closed Lost",
            "Owner": { "id": "1", "name": "P" },
        }));
        assert_eq!(
            m.from_zoho_changed(&zoho, ["Owner"]).unwrap(),
            record(json!({ "owner_name": "P", "Owner": { "id": "1", "name": "P" } }))
        );
        assert_eq!(
            m.local_fields_affected_by(["Stage", "Deal_Name"]),
            BTreeSet::from(["status".to_owned(), "name".to_owned()])
        );
    }

    #[test]
    fn name_lookups_follow_renames_directions_and_pass_through() {
        let m = deals(DEALS);
        assert_eq!(m.zoho_name_of("name"), Some("Deal_Name"));
        assert_eq!(m.zoho_name_of("status"), Some("Stage"));
        assert_eq!(m.zoho_name_of("amount_cents"), Some("Amount"));
        assert_eq!(m.zoho_name_of("probability"), None, "from_zoho only");
        assert_eq!(m.zoho_name_of("internal_notes"), None, "excluded");
        assert_eq!(m.zoho_name_of("Description"), Some("Description"));
        assert_eq!(m.zoho_name_of("Modified_Time"), None, "system field");
        assert_eq!(m.local_name_of("Deal_Name"), Some("name"));
        assert_eq!(m.local_name_of("Probability"), Some("probability"));
        assert_eq!(m.local_name_of("Rating"), None, "to_zoho only");
        assert_eq!(m.local_name_of("name"), None, "claimed by a rename");
        assert_eq!(m.local_name_of("$approval_state"), None);
    }

    #[test]
    fn the_fields_to_request_are_what_the_mapping_reads_and_writes() {
        let m = deals(DEALS);
        assert_eq!(
            m.zoho_fields_to_request(["Description", "name", "internal_notes"]),
            vec![
                "Amount",
                "Deal_Name",
                "Description",
                "Owner",
                "Probability",
                "Rating",
                "Stage",
            ]
        );
    }

    #[test]
    fn filters_see_the_local_shape_in_both_directions() {
        let m = deals(
            r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            values = { open = "Qualification", lost = "Closed Lost" }

            [[sync.entities.deals.filters]]
            conditions = [{ field = "status", op = "not_equals", value = "lost" }]
            "#,
        );
        let lost = m
            .from_zoho(&record(json!({ "Stage": "Closed Lost" })))
            .unwrap();
        assert!(!m.passes_filters(Flow::FromZoho, &lost));
        assert!(!m.passes_filters(Flow::ToZoho, &record(json!({ "status": "lost" }))));
        assert!(m.passes_filters(Flow::ToZoho, &record(json!({ "status": "open" }))));
    }

    // -- round trip -----------------------------------------------------------

    const ONE_TO_ONE: &str = r#"
        [[sync.entities.deals.fields]]
        local = "name"
        zoho = "Deal_Name"

        [[sync.entities.deals.fields]]
        local = "status"
        zoho = "Stage"
        values = { open = "Qualification", won = "Closed Won", lost = "Closed Lost" }

        [[sync.entities.deals.fields]]
        local = "closes_on"
        zoho = "Closing_Date"
    "#;

    #[test]
    fn local_to_zoho_to_local_is_the_identity_for_a_one_to_one_mapping() {
        let m = deals(ONE_TO_ONE);
        let local = record(json!({
            "name": "Big one",
            "status": "won",
            "closes_on": "2026-12-31",
            "Description": "passes through",
            "tags": ["a", "b"],
            "seats": 12,
        }));
        let zoho = m.to_zoho(&local).unwrap();
        assert_ne!(zoho, local);
        assert_eq!(m.from_zoho(&zoho).unwrap(), local);
    }

    mod round_trip {
        use proptest::prelude::*;
        use proptest::sample::select;

        use super::*;

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                select(vec!["", "x", "Closed Won", "é ü", "2026-01-01T00:00:00Z"])
                    .prop_map(Value::from),
            ]
        }

        fn local_record() -> impl Strategy<Value = Record> {
            let pass_through = proptest::collection::btree_map(
                select(vec!["Description", "seats", "Email", "tags", "Lead_Source"]),
                scalar(),
                0..5,
            );
            let status = proptest::option::of(prop_oneof![
                Just(Value::Null),
                select(vec!["open", "won", "lost"]).prop_map(Value::from),
            ]);
            (
                pass_through,
                proptest::option::of(scalar()),
                status,
                proptest::option::of(scalar()),
            )
                .prop_map(|(rest, name, status, closes_on)| {
                    let mut r: Record = rest.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    let named = [("name", name), ("status", status), ("closes_on", closes_on)];
                    for (k, v) in named {
                        if let Some(v) = v {
                            r.insert(k.to_owned(), v);
                        }
                    }
                    r
                })
        }

        proptest! {
            #[test]
            fn local_to_zoho_to_local_is_the_identity(local in local_record()) {
                let m = deals(ONE_TO_ONE);
                let zoho = m.to_zoho(&local).unwrap();
                prop_assert_eq!(m.from_zoho(&zoho).unwrap(), local);
            }

            #[test]
            fn cents_to_amount_and_back_is_the_identity(cents in -1_000_000_000_000_i64..1_000_000_000_000) {
                let m = deals(DEALS);
                let local = record(json!({ "amount_cents": cents }));
                let zoho = m.to_zoho(&local).unwrap();
                prop_assert_eq!(m.from_zoho(&zoho).unwrap(), local);
            }

            #[test]
            fn a_delta_of_every_field_is_the_whole_transform(local in local_record()) {
                let m = deals(DEALS_NO_STATUS);
                let keys: Vec<String> = local.keys().cloned().collect();
                let whole = m.to_zoho(&local).unwrap();
                let delta = m.to_zoho_changed(&local, &keys).unwrap();
                // Rating's fallback reads nothing, so only a full push carries it.
                let mut whole = whole;
                if !keys.iter().any(|k| k == "amount_cents") {
                    whole.remove("Rating");
                }
                prop_assert_eq!(delta, whole);
            }
        }

        /// `DEALS` without the value map, so any generated status maps.
        const DEALS_NO_STATUS: &str = r#"
            [[sync.entities.deals.fields]]
            local = "name"
            zoho = "Deal_Name"

            [[sync.entities.deals.fields]]
            zoho = "Rating"
            direction = "to_zoho"
            to_zoho_when = "amount_cents >= 10000000"
            to_zoho_formula = '"Hot"'

            [[sync.entities.deals.fields]]
            zoho = "Rating"
            direction = "to_zoho"
            to_zoho_formula = '"Warm"'
        "#;
    }

    // -- validation -----------------------------------------------------------

    /// The first TOML block of a module's `//!` docs.
    fn doc_toml(source: &str) -> String {
        source
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_example_in_the_filters_docs_is_valid() {
        let m = deals(&doc_toml(include_str!("filters.rs")));
        assert_eq!(m.filters().len(), 1);
        let ok = record(json!({
            "status": "open",
            "amount_cents": 5,
            "closes_at": "2026-06-01T00:00:00+02:00",
            "region": "emea",
        }));
        assert!(m.passes_filters(Flow::ToZoho, &ok));
        assert!(
            m.passes_filters(Flow::FromZoho, &record(json!({}))),
            "to_zoho only"
        );
    }

    #[test]
    fn the_example_in_the_module_docs_is_valid() {
        let m = deals(&doc_toml(include_str!("mapping.rs")));
        assert_eq!(m.module(), "Deals");
        assert_eq!(
            m.to_zoho(&record(json!({ "status": "won" }))).unwrap()["Stage"],
            json!("Closed Won")
        );
    }

    #[test]
    fn the_configuration_serializes_back_to_the_same_toml() {
        let config = parse(DEALS);
        let text = toml::to_string(&config).unwrap();
        let again: EntitiesConfig = toml::from_str(&text).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_keys_are_refused_when_parsing() {
        let err = toml::from_str::<Root>(
            r#"
            [sync.entities.deals]
            modul = "Deals"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("modul"), "{err}");
        let err = toml::from_str::<Root>(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "A"
            formula = "a"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("formula"), "{err}");
    }

    #[test]
    fn unknown_directions_schedules_and_policies_are_refused_naming_entity_and_field() {
        let problems = problems(
            r#"
            [sync.entities.deals]
            direction = "two_way"
            schedule = "weekly"

            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            direction = "up"
            values = { open = "Qualification" }
            unmapped_value = "ignore"
            "#,
        );
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            vec![
                "sync.entities.deals: unknown schedule `weekly` (expected one of: realtime, hourly, daily, manual)",
                "sync.entities.deals: unknown direction `two_way` (expected one of: both, to_zoho, from_zoho)",
                "sync.entities.deals.fields[0] (local `status`, zoho `Stage`): unknown direction `up` (expected one of: both, to_zoho, from_zoho)",
                "sync.entities.deals.fields[0] (local `status`, zoho `Stage`): unknown unmapped_value `ignore` (expected one of: error, pass)",
            ]
        );
        let error = MappingConfigError { problems };
        assert!(
            error
                .to_string()
                .starts_with("invalid sync mapping configuration:\n  - ")
        );
    }

    #[test]
    fn an_entity_without_a_default_needs_a_module() {
        assert_eq!(
            kinds("[sync.entities.tickets]\nschedule = \"daily\""),
            vec![ProblemKind::MissingModule]
        );
        assert_eq!(
            kinds("[sync.entities.deals]\nmodule = \" \""),
            vec![ProblemKind::EmptyName { key: "module" }]
        );
    }

    #[test]
    fn two_entities_cannot_sync_with_one_module() {
        let kinds = kinds("[sync.entities.opportunities]\nmodule = \"Deals\"");
        assert!(
            matches!(&kinds[..], [ProblemKind::DuplicateModule { .. }]),
            "{kinds:?}"
        );
    }

    #[test]
    fn an_expression_that_does_not_parse_is_refused() {
        let problems = problems(
            r#"
            [[sync.entities.deals.fields]]
            local = "amount_cents"
            zoho = "Amount"
            to_zoho_formula = "amount_cents / (100"
            "#,
        );
        assert_eq!(problems.len(), 1);
        let message = problems[0].to_string();
        assert!(
            message.starts_with(
                "sync.entities.deals.fields[0] (local `amount_cents`, zoho `Amount`): \
                 `to_zoho_formula` = `amount_cents / (100` does not parse"
            ),
            "{message}"
        );
    }

    #[test]
    fn an_incomplete_or_empty_expression_is_refused() {
        for text in ["amount_cents +", "", "-", "!", "round()", "a * (b -)"] {
            let kinds = kinds(&format!(
                "[[sync.entities.deals.fields]]\nlocal = \"a\"\nzoho = \"A\"\nto_zoho_formula = \"{text}\""
            ));
            assert!(
                matches!(&kinds[..], [ProblemKind::BadExpression { .. }]),
                "{text:?}: {kinds:?}"
            );
        }
    }

    #[test]
    fn a_formula_that_assigns_is_refused_with_a_hint() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "amount_cents"
            zoho = "Amount"
            to_zoho_formula = "Amount = amount_cents / 100"
            "#,
        );
        assert_eq!(
            kinds,
            vec![ProblemKind::Assignment {
                key: "to_zoho_formula",
                expression: "Amount = amount_cents / 100".into(),
                variable: "Amount".into(),
            }]
        );
    }

    #[test]
    fn a_misspelt_function_is_refused_at_start() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "A"
            from_zoho_when = "str::to_upper(A) == \"X\""
            "#,
        );
        assert!(
            matches!(&kinds[..], [ProblemKind::UnknownFunction { function, .. }] if function == "str::to_upper"),
            "{kinds:?}"
        );
    }

    #[test]
    fn a_value_map_used_both_ways_must_be_one_to_one() {
        let many_to_one = r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            values = { open = "Qualification", new = "Qualification" }
        "#;
        assert_eq!(
            kinds(many_to_one),
            vec![ProblemKind::NotOneToOne {
                zoho: "Qualification".into(),
                first: "new".into(),
                second: "open".into(),
            }]
        );
        // Fine one way only, or with the way back given.
        deals(&format!("{many_to_one}direction = \"to_zoho\""));
        deals(&format!(
            "{many_to_one}values_from_zoho = {{ \"Qualification\" = \"open\" }}"
        ));
    }

    #[test]
    fn a_target_set_twice_without_a_condition_is_refused() {
        let problems = problems(
            r#"
            [[sync.entities.deals.fields]]
            local = "name"
            zoho = "Deal_Name"

            [[sync.entities.deals.fields]]
            local = "title"
            zoho = "Deal_Name"
            "#,
        );
        // Both ways: two fields set Deal_Name in Zoho; coming back they have
        // different local targets, so that way is fine.
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "sync.entities.deals.fields[1] (local `title`, zoho `Deal_Name`): `Deal_Name` is \
             already the target to Zoho of fields[0], which has no `to_zoho_when`; only the \
             last mapping of a target may be unconditional"
        );
    }

    #[test]
    fn an_unconditional_mapping_before_a_conditional_one_is_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            zoho = "Rating"
            direction = "to_zoho"
            to_zoho_formula = '"Warm"'

            [[sync.entities.deals.fields]]
            zoho = "Rating"
            direction = "to_zoho"
            to_zoho_when = "amount_cents > 1"
            to_zoho_formula = '"Hot"'
            "#,
        );
        assert!(
            matches!(&kinds[..], [ProblemKind::DuplicateTarget { .. }]),
            "{kinds:?}"
        );
    }

    #[test]
    fn two_local_fields_from_one_zoho_field_are_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "A"
            direction = "from_zoho"

            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "B"
            direction = "from_zoho"
            "#,
        );
        assert!(
            matches!(
                &kinds[..],
                [ProblemKind::DuplicateTarget {
                    flow: Flow::FromZoho,
                    ..
                }]
            ),
            "{kinds:?}"
        );
    }

    #[test]
    fn a_formula_and_a_value_map_for_one_direction_are_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            direction = "to_zoho"
            values = { open = "Qualification" }
            to_zoho_formula = "status"
            "#,
        );
        assert_eq!(
            kinds,
            vec![ProblemKind::FormulaAndValueMap {
                key: "to_zoho_formula",
                flow: Flow::ToZoho,
            }]
        );
    }

    #[test]
    fn settings_for_a_direction_the_field_never_takes_are_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "p"
            zoho = "P"
            direction = "from_zoho"
            to_zoho_formula = "p * 2"
            to_zoho_when = "p > 1"
            "#,
        );
        assert_eq!(
            kinds,
            vec![
                ProblemKind::Unused {
                    key: "to_zoho_formula",
                    flow: Flow::ToZoho,
                },
                ProblemKind::Unused {
                    key: "to_zoho_when",
                    flow: Flow::ToZoho,
                },
            ]
        );
    }

    #[test]
    fn values_for_a_field_that_only_receives_and_has_its_own_way_back_are_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            direction = "from_zoho"
            values = { open = "Qualification" }
            values_from_zoho = { "Qualification" = "open" }
            "#,
        );
        assert_eq!(
            kinds,
            vec![ProblemKind::Unused {
                key: "values",
                flow: Flow::ToZoho,
            }]
        );
    }

    #[test]
    fn validated_mappings_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<SyncMappings>();
        shareable::<EntityMapping>();
        shareable::<TransformError>();
        shareable::<MappingConfigError>();
    }

    #[test]
    fn a_field_direction_the_entity_never_syncs_is_refused() {
        let kinds = kinds(
            r#"
            [sync.entities.deals]
            direction = "to_zoho"
            [[sync.entities.deals.fields]]
            local = "p"
            zoho = "P"
            direction = "from_zoho"
            "#,
        );
        assert_eq!(
            kinds,
            vec![ProblemKind::NeverApplies {
                what: "field",
                direction: "from_zoho",
                entity_direction: "to_zoho",
            }]
        );
    }

    #[test]
    fn a_field_without_a_target_or_source_is_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"

            [[sync.entities.deals.fields]]
            zoho = "B"
            direction = "to_zoho"

            [[sync.entities.deals.fields]]
            direction = "to_zoho"
            "#,
        );
        assert!(
            matches!(
                &kinds[..],
                [
                    // `local` alone: no Zoho target, and nothing to read from Zoho.
                    ProblemKind::Missing {
                        flow: Flow::ToZoho,
                        ..
                    },
                    ProblemKind::Missing {
                        flow: Flow::FromZoho,
                        ..
                    },
                    ProblemKind::Missing {
                        flow: Flow::ToZoho,
                        ..
                    },
                    ProblemKind::NoNames,
                    ProblemKind::Missing {
                        flow: Flow::ToZoho,
                        ..
                    },
                ]
            ),
            "{kinds:?}"
        );
    }

    #[test]
    fn unmapped_value_without_a_value_map_is_refused() {
        let kinds = kinds(
            r#"
            [[sync.entities.deals.fields]]
            local = "a"
            zoho = "A"
            unmapped_value = "pass"
            "#,
        );
        assert_eq!(kinds, vec![ProblemKind::UnmappedWithoutMap]);
    }

    #[test]
    fn a_field_both_excluded_and_mapped_is_refused() {
        let kinds = kinds(
            r#"
            [sync.entities.deals]
            exclude = ["Stage"]
            [[sync.entities.deals.fields]]
            local = "status"
            zoho = "Stage"
            "#,
        );
        assert_eq!(
            kinds,
            vec![ProblemKind::ExcludedAndMapped {
                name: "Stage".into()
            }]
        );
    }

    #[test]
    fn every_problem_in_every_entity_is_reported_at_once() {
        let problems = problems(
            r#"
            [sync.entities.deals]
            schedule = "weekly"
            [[sync.entities.deals.filters]]
            conditions = [{ field = "a", op = "like", value = 1 }]

            [sync.entities.leads]
            direction = "none"
            [[sync.entities.leads.fields]]
            local = "x"
            zoho = "X"
            to_zoho_formula = "(x"
            "#,
        );
        let entities: Vec<&str> = problems.iter().map(|p| p.entity.as_str()).collect();
        assert_eq!(entities, vec!["deals", "deals", "leads", "leads"]);
    }
}
