//! A COQL subset (`POST /crm/v8/coql`, ZOHO-API.md §5): `select` of plain
//! fields `from` one module, `where` with comparisons, `like`, `in`,
//! `between`, `is [not] null` combined by `and`/`or` and parentheses,
//! `order by`, and `limit [offset,] count`. Joins and aggregates are refused
//! with Zoho's error codes rather than half-supported.

use std::cmp::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use time::UtcOffset;

use super::criteria::{compare, field_type, matches_exact};
use super::model::Module;
use super::state::SimState;
use super::wire::{SimError, empty_reply, json_reply};

/// Rows per call and rows reachable through offset.
const MAX_LIMIT: usize = 2_000;
const MAX_REACH: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Cmp(String, String, String),
    Like(String, String, bool),
    In(String, Vec<String>, bool),
    Between(String, String, String, bool),
    Null(String, bool),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
struct Select {
    fields: Vec<String>,
    module: String,
    filter: Option<Cond>,
    order: Vec<(String, bool)>,
    offset: usize,
    limit: usize,
}

fn syntax(near: &str) -> SimError {
    SimError::new(
        StatusCode::BAD_REQUEST,
        "SYNTAX_ERROR",
        "error occurred while parsing the query",
    )
    .with_details(json!({"near": near}))
}

fn tokenize(text: &str) -> Result<Vec<Tok>, SimError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(syntax("'")),
                    Some('\\') => {
                        if let Some(&n) = chars.get(i + 1) {
                            s.push(n);
                        }
                        i += 2;
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        s.push(other);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '.' || *c == '$')
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["!=", "<>", ">=", "<="].contains(&two.as_str()) {
                out.push(Tok::Sym(two));
                i += 2;
            } else if "=<>(),*".contains(c) {
                out.push(Tok::Sym(c.to_string()));
                i += 1;
            } else {
                return Err(syntax(&c.to_string()));
            }
        }
    }
    Ok(out)
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 32;

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn near(&self) -> String {
        match self.peek() {
            Some(Tok::Word(w) | Tok::Str(w) | Tok::Num(w) | Tok::Sym(w)) => w.clone(),
            None => "end of query".into(),
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), SimError> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(syntax(&self.near()))
        }
    }

    fn symbol(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(s)) if s == sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, SimError> {
        match self.peek().cloned() {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Ok(w)
            }
            _ => Err(syntax(&self.near())),
        }
    }

    fn value(&mut self) -> Result<String, SimError> {
        match self.peek().cloned() {
            Some(Tok::Str(s) | Tok::Num(s)) => {
                self.pos += 1;
                Ok(s)
            }
            Some(Tok::Word(w))
                if ["true", "false", "null"].contains(&w.to_ascii_lowercase().as_str()) =>
            {
                self.pos += 1;
                Ok(w.to_ascii_lowercase())
            }
            _ => Err(syntax(&self.near())),
        }
    }

    fn number(&mut self) -> Result<usize, SimError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                n.parse().map_err(|_| syntax(&n))
            }
            _ => Err(syntax(&self.near())),
        }
    }

    fn select(&mut self) -> Result<Select, SimError> {
        self.expect_keyword("select")?;
        let mut fields = vec![self.ident()?];
        while self.symbol(",") {
            fields.push(self.ident()?);
        }
        self.expect_keyword("from")?;
        let module = self.ident()?;
        let filter = if self.keyword("where") {
            Some(self.or_expr()?)
        } else {
            None
        };
        let mut order = vec![];
        if self.keyword("order") {
            self.expect_keyword("by")?;
            loop {
                let field = self.ident()?;
                let desc = self.keyword("desc");
                if !desc {
                    self.keyword("asc");
                }
                order.push((field, desc));
                if !self.symbol(",") {
                    break;
                }
            }
        }
        let (mut offset, mut limit) = (0, 200);
        if self.keyword("limit") {
            let first = self.number()?;
            if self.symbol(",") {
                offset = first;
                limit = self.number()?;
            } else {
                limit = first;
                if self.keyword("offset") {
                    offset = self.number()?;
                }
            }
        }
        if self.pos != self.toks.len() {
            return Err(syntax(&self.near()));
        }
        Ok(Select {
            fields,
            module,
            filter,
            order,
            offset,
            limit,
        })
    }

    fn or_expr(&mut self) -> Result<Cond, SimError> {
        let mut left = self.and_expr()?;
        while self.keyword("or") {
            left = Cond::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Cond, SimError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            left = Cond::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Cond, SimError> {
        if self.symbol("(") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(syntax("("));
            }
            let inner = self.or_expr()?;
            self.depth -= 1;
            if !self.symbol(")") {
                return Err(syntax(&self.near()));
            }
            return Ok(inner);
        }
        let field = self.ident()?;
        if self.keyword("is") {
            let negated = self.keyword("not");
            self.expect_keyword("null")?;
            return Ok(Cond::Null(field, negated));
        }
        let negated = self.keyword("not");
        if self.keyword("like") {
            return Ok(Cond::Like(field, self.value()?, negated));
        }
        if self.keyword("in") {
            if !self.symbol("(") {
                return Err(syntax(&self.near()));
            }
            let mut values = vec![self.value()?];
            while self.symbol(",") {
                values.push(self.value()?);
            }
            if !self.symbol(")") {
                return Err(syntax(&self.near()));
            }
            return Ok(Cond::In(field, values, negated));
        }
        if self.keyword("between") {
            let low = self.value()?;
            self.expect_keyword("and")?;
            return Ok(Cond::Between(field, low, self.value()?, negated));
        }
        if negated {
            return Err(syntax(&self.near()));
        }
        for op in ["=", "!=", "<>", ">=", "<=", ">", "<"] {
            if self.symbol(op) {
                return Ok(Cond::Cmp(field, op.into(), self.value()?));
            }
        }
        Err(syntax(&self.near()))
    }
}

fn parse(text: &str) -> Result<Select, SimError> {
    let toks = tokenize(text)?;
    Parser {
        toks,
        pos: 0,
        depth: 0,
    }
    .select()
}

fn invalid_column(name: &str) -> SimError {
    SimError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_QUERY",
        "column given seems to be invalid",
    )
    .with_details(json!({"column_name": name, "reason": "column given seems to be invalid"}))
}

impl Cond {
    fn fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Cond::And(a, b) | Cond::Or(a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Cond::Cmp(f, ..)
            | Cond::Like(f, ..)
            | Cond::In(f, ..)
            | Cond::Between(f, ..)
            | Cond::Null(f, _) => out.push(f),
        }
    }

    fn eval(&self, module: &Module, rec: &Map<String, Value>, zone: UtcOffset) -> bool {
        let ty = |f: &str| field_type(module, f).unwrap_or("text");
        let get = |f: &str| rec.get(f).cloned().unwrap_or(Value::Null);
        match self {
            Cond::And(a, b) => a.eval(module, rec, zone) && b.eval(module, rec, zone),
            Cond::Or(a, b) => a.eval(module, rec, zone) || b.eval(module, rec, zone),
            Cond::Null(f, negated) => get(f).is_null() != *negated,
            Cond::Cmp(f, op, lit) => {
                let value = get(f);
                if value.is_null() {
                    return false;
                }
                let ord = compare(ty(f), &value, lit, zone);
                match op.as_str() {
                    "=" => matches_exact(ty(f), &value, lit, zone),
                    "!=" | "<>" => !matches_exact(ty(f), &value, lit, zone),
                    ">" => ord == Some(Ordering::Greater),
                    ">=" => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                    "<" => ord == Some(Ordering::Less),
                    "<=" => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                    _ => false,
                }
            }
            Cond::Like(f, pattern, negated) => {
                let text = get(f).as_str().map(str::to_lowercase).unwrap_or_default();
                let p = pattern.to_lowercase();
                let hit = match (p.strip_prefix('%'), p.strip_suffix('%')) {
                    (Some(rest), _) if rest.ends_with('%') => {
                        text.contains(rest.trim_end_matches('%'))
                    }
                    (Some(rest), _) => text.ends_with(rest),
                    (None, Some(rest)) => text.starts_with(rest),
                    (None, None) => text == p,
                };
                hit != *negated
            }
            Cond::In(f, values, negated) => {
                let value = get(f);
                values.iter().any(|v| matches_exact(ty(f), &value, v, zone)) != *negated
            }
            Cond::Between(f, low, high, negated) => {
                let value = get(f);
                let inside = matches!(
                    compare(ty(f), &value, low, zone),
                    Some(Ordering::Greater | Ordering::Equal)
                ) && matches!(
                    compare(ty(f), &value, high, zone),
                    Some(Ordering::Less | Ordering::Equal)
                );
                inside != *negated
            }
        }
    }
}

pub async fn query(State(state): State<Arc<SimState>>, body: Bytes) -> Result<Response, SimError> {
    let whole: Value = serde_json::from_slice(&body).map_err(|_| SimError::invalid_body())?;
    let text = whole
        .get("select_query")
        .and_then(Value::as_str)
        .ok_or_else(|| SimError::mandatory_missing("select_query"))?;
    let select = parse(text)?;
    if select.limit > MAX_LIMIT
        || select.offset.saturating_add(select.limit) > MAX_REACH
        || select.fields.len() > 50
    {
        return Err(
            SimError::new(StatusCode::BAD_REQUEST, "LIMIT_EXCEEDED", "limit exceeded")
                .with_details(json!({"limit": MAX_LIMIT})),
        );
    }
    let zone = state.config.time_zone;
    let world = state.world();
    let module = world.module(&select.module).ok_or_else(|| {
        SimError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "invalid query formed",
        )
        .with_details(
            json!({"reason": "module given seems to be invalid", "module": select.module}),
        )
    })?;
    let mut used: Vec<&str> = select.fields.iter().map(String::as_str).collect();
    if let Some(filter) = &select.filter {
        filter.fields(&mut used);
    }
    used.extend(select.order.iter().map(|(f, _)| f.as_str()));
    if let Some(bad) = used.iter().find(|f| field_type(module, f).is_none()) {
        return Err(invalid_column(bad));
    }
    let mut rows: Vec<Map<String, Value>> = module
        .records
        .values()
        .map(|rec| {
            module.render(rec, None, &world.users, zone, &|m, id| {
                world.display_name(m, id)
            })
        })
        .filter(|rec| {
            select
                .filter
                .as_ref()
                .is_none_or(|f| f.eval(module, rec, zone))
        })
        .collect();
    if !select.order.is_empty() {
        rows.sort_by(|a, b| {
            for (field, desc) in &select.order {
                let ty = field_type(module, field).unwrap_or("text");
                let right = b.get(field).cloned().unwrap_or(Value::Null);
                let literal = match &right {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let ord = compare(ty, a.get(field).unwrap_or(&Value::Null), &literal, zone)
                    .unwrap_or(Ordering::Equal);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
    }
    let total = rows.len();
    let end = select.offset.saturating_add(select.limit).min(total);
    if select.offset >= end {
        return Ok(empty_reply(StatusCode::NO_CONTENT));
    }
    let data: Vec<Value> = rows[select.offset..end]
        .iter()
        .map(|row| {
            let mut out = Map::new();
            for field in &select.fields {
                let value = row.get(field).cloned().unwrap_or(Value::Null);
                // COQL returns lookups as bare ids.
                let value = match value {
                    Value::Object(o) => json!({"id": o.get("id").cloned().unwrap_or(Value::Null)}),
                    other => other,
                };
                out.insert(field.clone(), value);
            }
            out.insert("id".into(), row.get("id").cloned().unwrap_or(Value::Null));
            Value::Object(out)
        })
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": data, "info": {"count": end - select.offset, "more_records": end < total}}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_query_parses() {
        let s = parse("select Last_Name, Email from Leads where (Last_Name is not null and Email like '%@x.io') or No_of_Employees between 1 and 10 order by Modified_Time desc limit 10, 200").unwrap();
        assert_eq!(s.fields, vec!["Last_Name", "Email"]);
        assert_eq!(s.module, "Leads");
        assert_eq!((s.offset, s.limit), (10, 200));
        assert_eq!(s.order, vec![("Modified_Time".to_owned(), true)]);
    }

    #[test]
    fn malformed_queries_are_syntax_errors() {
        for bad in [
            "select from Leads",
            "select a from",
            "select a from Leads where",
            "select a from Leads where b = 'x",
            "select a from Leads limit x",
        ] {
            assert_eq!(parse(bad).unwrap_err().code, "SYNTAX_ERROR", "{bad}");
        }
    }
}
