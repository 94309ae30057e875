//! Conflict rules: which strategy decides a field changed on both sides,
//! per entity and per field, and how they are read from the configuration
//! (the TOML shape is on [`ConflictRules`]).
//!
//! Strategy names are parsed into [`Strategy`] at the edge, so an unknown
//! name is refused while the file is read, with the list of valid names;
//! [`ConflictRules::validate`] refuses what the types cannot (empty names, a
//! fallback that could itself need a fallback, an absurd tolerance).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rule deciding a field that both sides changed to different values.
///
/// A field changed on one side only always takes that side's value, whatever
/// the rule: the rules only ever see true conflicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The local side (the client, or synchub when pushing to Zoho) wins.
    LocalWins,
    /// The remote side (the stored record, or Zoho when pushing) wins.
    RemoteWins,
    /// The side modified later wins, unless the two modification times are
    /// within the clock-skew tolerance or one is unknown: then the entity's
    /// `fallback` decides, because clocks that far apart cannot order edits.
    LastWriteWins,
    /// As an entity default: a field with a rule of its own uses it, any
    /// other field changed on both sides goes to the entity's `fallback`.
    /// As a field's rule: the field goes to the `fallback`.
    Merge,
    /// Queued for review; neither side is overwritten.
    Manual,
    /// Three-way line merge of text; overlapping hunks, or values that are
    /// not text, are left for manual review.
    MergeText,
}

impl Strategy {
    /// The name used in the configuration and in serialized conflicts.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LocalWins => "local_wins",
            Strategy::RemoteWins => "remote_wins",
            Strategy::LastWriteWins => "last_write_wins",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
            Strategy::MergeText => "merge_text",
        }
    }

    /// Whether the strategy always decides by itself; only these may be a
    /// fallback, so falling back never needs another fallback.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Strategy::LocalWins | Strategy::RemoteWins | Strategy::Manual
        )
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default clock-skew tolerance: servers on NTP agree within milliseconds,
/// but Zoho's `Modified_Time` has one-second resolution and phone clocks
/// drift by seconds, so anything closer than this is not a real ordering.
pub const DEFAULT_CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(5);

/// Largest accepted tolerance: beyond an hour last_write_wins would almost
/// never decide, which is a misconfiguration rather than a policy.
pub const MAX_CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(3600);

/// The rules for one entity (`[conflicts.<entity>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntityRules {
    /// Rule for a field changed on both sides that has no rule of its own.
    pub strategy: Strategy,
    /// What decides when `merge` meets a field changed on both sides without
    /// a rule of its own, and when `last_write_wins` cannot order the edits.
    /// One of `local_wins`, `remote_wins`, `manual`.
    pub fallback: Strategy,
    /// `last_write_wins` treats modification times at most this far apart
    /// as a tie.
    #[serde(with = "humantime_serde")]
    pub clock_skew_tolerance: Duration,
    /// Fields whose conflicts are always of critical severity.
    pub critical_fields: BTreeSet<String>,
    /// Per-field rules, overriding `strategy`.
    pub fields: BTreeMap<String, Strategy>,
}

impl Default for EntityRules {
    /// DESIGN.md §3: one-sided changes merge silently, true conflicts go to
    /// review unless a rule says otherwise.
    fn default() -> Self {
        Self {
            strategy: Strategy::Merge,
            fallback: Strategy::Manual,
            clock_skew_tolerance: DEFAULT_CLOCK_SKEW_TOLERANCE,
            critical_fields: BTreeSet::new(),
            fields: BTreeMap::new(),
        }
    }
}

impl EntityRules {
    /// The rule configured for `field`: its own, or the entity's default.
    pub fn strategy_for(&self, field: &str) -> Strategy {
        self.fields.get(field).copied().unwrap_or(self.strategy)
    }

    /// Whether conflicts on `field` are critical.
    pub fn is_critical(&self, field: &str) -> bool {
        self.critical_fields.contains(field)
    }

    /// Refuses rules that parse but cannot mean anything sensible.
    /// `entity` only names the table in the message.
    pub fn validate(&self, entity: &str) -> Result<(), RulesError> {
        let at = format!("conflicts.{entity}");
        if !self.fallback.is_terminal() {
            return Err(RulesError(format!(
                "{at}.fallback = \"{}\": a fallback must decide by itself; use local_wins, remote_wins or manual",
                self.fallback
            )));
        }
        if self.clock_skew_tolerance > MAX_CLOCK_SKEW_TOLERANCE {
            return Err(RulesError(format!(
                "{at}.clock_skew_tolerance = {:?}: at most {}s; a larger tolerance turns last_write_wins into the fallback",
                self.clock_skew_tolerance,
                MAX_CLOCK_SKEW_TOLERANCE.as_secs()
            )));
        }
        for field in &self.critical_fields {
            check_field_name(&at, "critical_fields", field)?;
        }
        for field in self.fields.keys() {
            check_field_name(&at, "fields", field)?;
        }
        Ok(())
    }
}

fn check_field_name(at: &str, key: &str, field: &str) -> Result<(), RulesError> {
    if field.trim().is_empty() {
        return Err(RulesError(format!(
            "{at}.{key}: a field name is empty or blank"
        )));
    }
    if field.trim() != field {
        return Err(RulesError(format!(
            "{at}.{key}: field name {field:?} has leading or trailing spaces"
        )));
    }
    Ok(())
}

/// All entities' rules (the `[conflicts]` table), keyed by entity name.
/// An entity without a table gets [`EntityRules::default`].
///
/// One `[conflicts.<entity>]` table per entity; every key is optional:
///
/// ```toml
/// [conflicts.contacts]
/// strategy = "merge"              # rule for a field changed on both sides (default "merge")
/// fallback = "manual"             # when merge or last_write_wins cannot decide (default "manual")
/// clock_skew_tolerance = "5s"     # last_write_wins: this close or closer is a tie (default "5s", at most "1h")
/// critical_fields = ["Email", "Owner"]
///
/// [conflicts.contacts.fields]     # per-field rules, overriding `strategy`
/// Description = "merge_text"
/// Phone = "last_write_wins"
/// Lead_Status = "remote_wins"
/// ```
///
/// Strategies: `local_wins`, `remote_wins`, `last_write_wins`, `merge`,
/// `manual`, `merge_text`; a fallback is one of `local_wins`,
/// `remote_wins`, `manual`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConflictRules {
    pub entities: BTreeMap<String, EntityRules>,
}

impl ConflictRules {
    /// The rules for `entity`, or the defaults when it has none.
    pub fn for_entity(&self, entity: &str) -> Cow<'_, EntityRules> {
        self.entities
            .get(entity)
            .map(Cow::Borrowed)
            .unwrap_or_default()
    }

    /// Validates every entity's rules; the first problem is reported.
    pub fn validate(&self) -> Result<(), RulesError> {
        for (entity, rules) in &self.entities {
            if entity.trim().is_empty() {
                return Err(RulesError(
                    "conflicts: an entity name is empty or blank".to_owned(),
                ));
            }
            rules.validate(entity)?;
        }
        Ok(())
    }
}

/// A configuration problem in the conflict rules, phrased for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        conflicts: ConflictRules,
    }

    fn parse(text: &str) -> Result<ConflictRules, String> {
        toml::from_str::<File>(text)
            .map(|f| f.conflicts)
            .map_err(|e| e.to_string())
    }

    const EXAMPLE: &str = r#"
[conflicts.contacts]
strategy = "merge"
fallback = "manual"
clock_skew_tolerance = "5s"
critical_fields = ["Email", "Owner"]

[conflicts.contacts.fields]
Description = "merge_text"
Phone = "last_write_wins"
Lead_Status = "remote_wins"

[conflicts.deals]
strategy = "last_write_wins"
fallback = "remote_wins"
clock_skew_tolerance = "1500ms"
"#;

    #[test]
    fn the_documented_toml_shape_parses_and_validates() {
        let rules = parse(EXAMPLE).unwrap();
        rules.validate().unwrap();
        let contacts = rules.for_entity("contacts");
        assert_eq!(contacts.strategy, Strategy::Merge);
        assert_eq!(contacts.fallback, Strategy::Manual);
        assert_eq!(contacts.clock_skew_tolerance, Duration::from_secs(5));
        assert!(contacts.is_critical("Email"));
        assert!(!contacts.is_critical("Phone"));
        assert_eq!(contacts.strategy_for("Description"), Strategy::MergeText);
        assert_eq!(contacts.strategy_for("Phone"), Strategy::LastWriteWins);
        assert_eq!(contacts.strategy_for("Lead_Status"), Strategy::RemoteWins);
        assert_eq!(contacts.strategy_for("First_Name"), Strategy::Merge);
        let deals = rules.for_entity("deals");
        assert_eq!(deals.strategy, Strategy::LastWriteWins);
        assert_eq!(deals.clock_skew_tolerance, Duration::from_millis(1500));
    }

    #[test]
    fn an_entity_without_a_table_gets_merge_with_a_manual_fallback() {
        let rules = parse("").unwrap();
        let r = rules.for_entity("accounts");
        assert_eq!(*r, EntityRules::default());
        assert_eq!(r.strategy, Strategy::Merge);
        assert_eq!(r.fallback, Strategy::Manual);
        assert_eq!(r.clock_skew_tolerance, DEFAULT_CLOCK_SKEW_TOLERANCE);
    }

    #[test]
    fn an_empty_entity_table_gets_every_default() {
        let rules = parse("[conflicts.leads]\n").unwrap();
        assert_eq!(*rules.for_entity("leads"), EntityRules::default());
    }

    #[test]
    fn an_unknown_strategy_name_is_refused_with_the_valid_names() {
        let err = parse("[conflicts.contacts]\nstrategy = \"newest_wins\"\n").unwrap_err();
        assert!(err.contains("newest_wins"), "{err}");
        assert!(err.contains("last_write_wins"), "{err}");
        let err = parse("[conflicts.contacts.fields]\nPhone = \"LocalWins\"\n").unwrap_err();
        assert!(err.contains("LocalWins"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = parse("[conflicts.contacts]\nstrategys = \"merge\"\n").unwrap_err();
        assert!(err.contains("strategys"), "{err}");
    }

    #[test]
    fn a_negative_or_unparseable_tolerance_is_refused() {
        assert!(parse("[conflicts.c]\nclock_skew_tolerance = \"-1s\"\n").is_err());
        assert!(parse("[conflicts.c]\nclock_skew_tolerance = \"soon\"\n").is_err());
        assert!(parse("[conflicts.c]\nclock_skew_tolerance = 5\n").is_err());
    }

    #[test]
    fn a_tolerance_over_an_hour_is_refused() {
        let rules = parse("[conflicts.c]\nclock_skew_tolerance = \"2h\"\n").unwrap();
        let err = rules.validate().unwrap_err().to_string();
        assert!(err.contains("conflicts.c.clock_skew_tolerance"), "{err}");
        let ok = parse("[conflicts.c]\nclock_skew_tolerance = \"1h\"\n").unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn a_zero_tolerance_is_allowed() {
        let rules = parse("[conflicts.c]\nclock_skew_tolerance = \"0s\"\n").unwrap();
        rules.validate().unwrap();
    }

    #[test]
    fn a_fallback_that_needs_a_fallback_is_refused() {
        for bad in ["merge", "merge_text", "last_write_wins"] {
            let rules = parse(&format!("[conflicts.c]\nfallback = \"{bad}\"\n")).unwrap();
            let err = rules.validate().unwrap_err().to_string();
            assert!(err.contains("conflicts.c.fallback"), "{err}");
            assert!(err.contains(bad), "{err}");
        }
        for good in ["local_wins", "remote_wins", "manual"] {
            let rules = parse(&format!("[conflicts.c]\nfallback = \"{good}\"\n")).unwrap();
            rules.validate().unwrap();
        }
    }

    #[test]
    fn empty_or_padded_field_names_are_refused() {
        let cases = [
            "[conflicts.c]\ncritical_fields = [\"\"]\n",
            "[conflicts.c]\ncritical_fields = [\" Email\"]\n",
            "[conflicts.c.fields]\n\"\" = \"manual\"\n",
            "[conflicts.c.fields]\n\"  \" = \"manual\"\n",
        ];
        for text in cases {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.starts_with("conflicts.c."), "{text}: {err}");
        }
    }

    #[test]
    fn an_empty_entity_name_is_refused() {
        let rules = parse("[conflicts.\"\"]\n").unwrap();
        let err = rules.validate().unwrap_err().to_string();
        assert!(err.contains("entity name"), "{err}");
    }

    #[test]
    fn rules_serialize_back_to_the_same_toml_shape() {
        let rules = parse(EXAMPLE).unwrap();
        #[derive(Serialize)]
        struct Out<'a> {
            conflicts: &'a ConflictRules,
        }
        let text = toml::to_string(&Out { conflicts: &rules }).unwrap();
        assert_eq!(parse(&text).unwrap(), rules);
    }
}
