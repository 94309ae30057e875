use std::time::Duration;

use serde_json::json;
use time::macros::datetime;

use super::*;

fn fields(v: Value) -> Fields {
    match v {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn rules(strategy: Strategy) -> EntityRules {
    EntityRules {
        strategy,
        ..EntityRules::default()
    }
}

const EARLY: OffsetDateTime = datetime!(2026-11-21 10:00:00 UTC);
const LATE: OffsetDateTime = datetime!(2026-11-21 10:05:00 UTC);

/// Both sides changed `Phone` from the base; nothing else.
fn phone_conflict(
    rules: &EntityRules,
    lt: Option<OffsetDateTime>,
    rt: Option<OffsetDateTime>,
) -> MergeOutcome {
    let base = fields(json!({"Phone": "111"}));
    let local = fields(json!({"Phone": "222"}));
    let remote = fields(json!({"Phone": "333", "Name": "Ada"}));
    resolve(rules, &base, Side::new(&local, lt), Side::new(&remote, rt))
}

fn only(outcome: &MergeOutcome) -> &FieldConflict {
    assert_eq!(outcome.conflicts.len(), 1, "{outcome:?}");
    &outcome.conflicts[0]
}

#[test]
fn a_field_changed_locally_only_takes_the_local_value() {
    let base = fields(json!({"Phone": "111"}));
    let local = fields(json!({"Phone": "222"}));
    let remote = fields(json!({"Phone": "111", "Name": "Ada"}));
    let out = resolve(
        &rules(Strategy::Manual),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    // `Name` is not in the base, so it started as null and the remote side
    // set it: it is decided too, and already in place on the remote side.
    assert_eq!(out.fields, fields(json!({"Phone": "222", "Name": "Ada"})));
    assert_eq!(out.changes_against(&local), fields(json!({"Name": "Ada"})));
    assert!(out.conflicts.is_empty());
    assert_eq!(
        out.changes_against(&remote),
        fields(json!({"Phone": "222"}))
    );
}

#[test]
fn a_field_changed_remotely_only_keeps_the_remote_value() {
    let base = fields(json!({"Phone": "111"}));
    let local = fields(json!({"Phone": "111"}));
    let remote = fields(json!({"Phone": "999"}));
    let out = resolve(
        &rules(Strategy::LocalWins),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert_eq!(out.fields, fields(json!({"Phone": "999"})));
    assert!(out.conflicts.is_empty());
    assert!(out.changes_against(&remote).is_empty());
    assert_eq!(out.changes_against(&local), fields(json!({"Phone": "999"})));
}

#[test]
fn a_field_absent_from_a_side_is_unchanged_on_that_side() {
    let base = fields(json!({"Phone": "111"}));
    let local = fields(json!({"Phone": "222"}));
    let remote = fields(json!({"Name": "Ada"}));
    let out = resolve(
        &rules(Strategy::Manual),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert_eq!(out.fields, fields(json!({"Phone": "222", "Name": "Ada"})));
    assert!(out.conflicts.is_empty());
}

#[test]
fn the_same_change_on_both_sides_is_not_a_conflict() {
    let base = fields(json!({"Phone": "111", "Amount": 10}));
    let local = fields(json!({"Phone": "222", "Amount": 12}));
    let remote = fields(json!({"Phone": "222", "Amount": 12.0}));
    let out = resolve(
        &rules(Strategy::Manual),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert!(out.conflicts.is_empty(), "{out:?}");
    assert!(out.changes_against(&remote).is_empty());
}

#[test]
fn a_number_written_as_a_float_is_the_same_number() {
    assert!(same_value(&json!(1), &json!(1.0)));
    assert!(same_value(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!same_value(&json!(1), &json!("1")));
    assert!(!same_value(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    assert!(!same_value(&json!(u64::MAX), &json!(u64::MAX - 1)));
}

#[test]
fn a_field_missing_from_the_base_started_as_null() {
    let base = Fields::new();
    let local = fields(json!({"Phone": "222"}));
    let remote = fields(json!({"Phone": null}));
    let out = resolve(
        &rules(Strategy::Manual),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert_eq!(out.fields, fields(json!({"Phone": "222"})));
    assert!(out.conflicts.is_empty());
}

#[test]
fn local_wins_takes_the_local_value_and_records_both_sides() {
    let out = phone_conflict(&rules(Strategy::LocalWins), None, None);
    assert_eq!(out.fields, fields(json!({"Phone": "222", "Name": "Ada"})));
    let c = only(&out);
    assert_eq!(c.field, "Phone");
    assert_eq!(
        (&c.base, &c.local, &c.remote),
        (&json!("111"), &json!("222"), &json!("333"))
    );
    assert_eq!(c.strategy, Strategy::LocalWins);
    assert_eq!(c.status, ConflictStatus::Resolved);
    assert_eq!(c.resolved_by, Some(Strategy::LocalWins));
    assert_eq!(c.fallback_reason, None);
    assert_eq!(c.value, Some(json!("222")));
    assert_eq!(c.severity, Severity::Low);
}

#[test]
fn remote_wins_keeps_the_remote_value() {
    let out = phone_conflict(&rules(Strategy::RemoteWins), None, None);
    assert_eq!(out.fields["Phone"], json!("333"));
    let c = only(&out);
    assert_eq!(c.resolved_by, Some(Strategy::RemoteWins));
    assert_eq!(c.value, Some(json!("333")));
    assert!(
        out.changes_against(&fields(json!({"Phone": "333", "Name": "Ada"})))
            .is_empty()
    );
}

#[test]
fn manual_writes_nothing_and_leaves_the_conflict_for_review() {
    let out = phone_conflict(&rules(Strategy::Manual), None, None);
    assert!(!out.fields.contains_key("Phone"));
    let c = only(&out);
    assert_eq!(c.status, ConflictStatus::Unresolved);
    assert_eq!(c.resolved_by, None);
    assert_eq!(c.value, None);
    assert_eq!((&c.local, &c.remote), (&json!("222"), &json!("333")));
    assert!(out.has_unresolved());
    assert_eq!(out.unresolved().count(), 1);
}

#[test]
fn last_write_wins_takes_the_later_side() {
    let r = rules(Strategy::LastWriteWins);
    let out = phone_conflict(&r, Some(LATE), Some(EARLY));
    let c = only(&out);
    assert_eq!(c.value, Some(json!("222")));
    assert_eq!(c.resolved_by, Some(Strategy::LastWriteWins));
    assert_eq!(
        (c.local_modified_at, c.remote_modified_at),
        (Some(LATE), Some(EARLY))
    );

    let out = phone_conflict(&r, Some(EARLY), Some(LATE));
    assert_eq!(only(&out).value, Some(json!("333")));
}

#[test]
fn last_write_wins_within_the_clock_skew_falls_back_to_the_entity_rule() {
    let mut r = rules(Strategy::LastWriteWins);
    r.clock_skew_tolerance = Duration::from_secs(300);
    let out = phone_conflict(&r, Some(LATE), Some(EARLY));
    let c = only(&out);
    assert_eq!(c.status, ConflictStatus::Unresolved);
    assert_eq!(c.strategy, Strategy::LastWriteWins);
    assert_eq!(c.fallback_reason, Some(FallbackReason::WithinClockSkew));

    r.fallback = Strategy::RemoteWins;
    let out = phone_conflict(&r, Some(LATE), Some(EARLY));
    let c = only(&out);
    assert_eq!(c.resolved_by, Some(Strategy::RemoteWins));
    assert_eq!(c.value, Some(json!("333")));
    assert_eq!(c.fallback_reason, Some(FallbackReason::WithinClockSkew));
}

#[test]
fn last_write_wins_just_past_the_tolerance_decides_by_time() {
    let mut r = rules(Strategy::LastWriteWins);
    r.clock_skew_tolerance = Duration::from_secs(299);
    let c = phone_conflict(&r, Some(EARLY), Some(LATE))
        .conflicts
        .remove(0);
    assert_eq!(c.resolved_by, Some(Strategy::LastWriteWins));
    assert_eq!(c.value, Some(json!("333")));
}

#[test]
fn last_write_wins_with_equal_times_and_no_tolerance_is_a_tie() {
    let mut r = rules(Strategy::LastWriteWins);
    r.clock_skew_tolerance = Duration::ZERO;
    r.fallback = Strategy::LocalWins;
    let c = phone_conflict(&r, Some(EARLY), Some(EARLY))
        .conflicts
        .remove(0);
    assert_eq!(c.resolved_by, Some(Strategy::LocalWins));
    assert_eq!(c.fallback_reason, Some(FallbackReason::WithinClockSkew));
}

#[test]
fn last_write_wins_without_both_times_falls_back() {
    let r = rules(Strategy::LastWriteWins);
    for (lt, rt) in [(None, Some(LATE)), (Some(LATE), None), (None, None)] {
        let c = phone_conflict(&r, lt, rt).conflicts.remove(0);
        assert_eq!(c.status, ConflictStatus::Unresolved);
        assert_eq!(
            c.fallback_reason,
            Some(FallbackReason::MissingModificationTime)
        );
    }
}

#[test]
fn merge_takes_one_sided_changes_and_sends_both_sided_ones_to_the_fallback() {
    let base = fields(json!({"Phone": "111", "City": "Oslo", "Title": "Dr"}));
    let local = fields(json!({"Phone": "222", "City": "Oslo", "Title": "Prof"}));
    let remote = fields(json!({"Phone": "333", "City": "Bergen", "Title": "Dr"}));
    let out = resolve(
        &EntityRules::default(),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert_eq!(
        out.fields,
        fields(json!({"City": "Bergen", "Title": "Prof"}))
    );
    let c = only(&out);
    assert_eq!(c.field, "Phone");
    assert_eq!(c.strategy, Strategy::Merge);
    assert_eq!(c.status, ConflictStatus::Unresolved);
    assert_eq!(c.fallback_reason, Some(FallbackReason::ChangedOnBothSides));
}

#[test]
fn merge_uses_a_field_rule_of_its_own_before_the_fallback() {
    let mut r = EntityRules::default();
    r.fields.insert("Phone".into(), Strategy::LocalWins);
    let out = phone_conflict(&r, None, None);
    let c = only(&out);
    assert_eq!(c.strategy, Strategy::LocalWins);
    assert_eq!(c.resolved_by, Some(Strategy::LocalWins));
    assert_eq!(c.fallback_reason, None);
}

#[test]
fn merge_with_a_remote_wins_fallback_resolves_by_it() {
    let r = EntityRules {
        fallback: Strategy::RemoteWins,
        ..EntityRules::default()
    };
    let c = phone_conflict(&r, None, None).conflicts.remove(0);
    assert_eq!(c.strategy, Strategy::Merge);
    assert_eq!(c.resolved_by, Some(Strategy::RemoteWins));
    assert_eq!(c.value, Some(json!("333")));
}

#[test]
fn an_unvalidated_fallback_that_cannot_decide_is_treated_as_manual() {
    for fb in [
        Strategy::Merge,
        Strategy::LastWriteWins,
        Strategy::MergeText,
    ] {
        let r = EntityRules {
            fallback: fb,
            ..EntityRules::default()
        };
        let out = phone_conflict(&r, None, None);
        assert!(!out.fields.contains_key("Phone"));
        assert_eq!(only(&out).status, ConflictStatus::Unresolved);
    }
}

#[test]
fn a_field_rule_overrides_the_entity_strategy() {
    let mut r = rules(Strategy::LocalWins);
    r.fields.insert("Phone".into(), Strategy::Manual);
    let out = phone_conflict(&r, None, None);
    assert_eq!(only(&out).strategy, Strategy::Manual);
    assert!(!out.fields.contains_key("Phone"));
}

fn notes_conflict(base: &str, local: &str, remote: &str) -> MergeOutcome {
    let mut r = EntityRules::default();
    r.fields.insert("Notes".into(), Strategy::MergeText);
    let base = fields(json!({ "Notes": base }));
    let local = fields(json!({ "Notes": local }));
    let remote = fields(json!({ "Notes": remote }));
    resolve(&r, &base, Side::new(&local, None), Side::new(&remote, None))
}

#[test]
fn merge_text_merges_edits_to_different_lines() {
    let out = notes_conflict("a\nb\nc\nd\n", "A\nb\nc\nd\n", "a\nb\nc\nD\n");
    assert_eq!(out.fields["Notes"], json!("A\nb\nc\nD\n"));
    let c = only(&out);
    assert_eq!(c.resolved_by, Some(Strategy::MergeText));
    assert_eq!(c.value, Some(json!("A\nb\nc\nD\n")));
}

#[test]
fn merge_text_with_overlapping_hunks_goes_to_review_whatever_the_fallback() {
    let mut r = EntityRules {
        fallback: Strategy::LocalWins,
        ..EntityRules::default()
    };
    r.fields.insert("Notes".into(), Strategy::MergeText);
    let base = fields(json!({"Notes": "a\nb\nc\n"}));
    let local = fields(json!({"Notes": "a\nB1\nc\n"}));
    let remote = fields(json!({"Notes": "a\nB2\nc\n"}));
    let out = resolve(&r, &base, Side::new(&local, None), Side::new(&remote, None));
    let c = only(&out);
    assert_eq!(c.status, ConflictStatus::Unresolved);
    assert_eq!(c.fallback_reason, Some(FallbackReason::OverlappingHunks));
    assert!(!out.fields.contains_key("Notes"));
}

#[test]
fn merge_text_on_values_that_are_not_text_goes_to_review() {
    let mut r = EntityRules::default();
    r.fields.insert("Notes".into(), Strategy::MergeText);
    let base = fields(json!({"Notes": "a"}));
    let local = fields(json!({"Notes": 5}));
    let remote = fields(json!({"Notes": "b"}));
    let out = resolve(&r, &base, Side::new(&local, None), Side::new(&remote, None));
    assert_eq!(only(&out).fallback_reason, Some(FallbackReason::NotText));
}

#[test]
fn a_conflict_on_a_critical_field_is_critical() {
    let mut r = rules(Strategy::LocalWins);
    r.critical_fields.insert("Phone".into());
    assert_eq!(
        phone_conflict(&r, None, None).conflicts[0].severity,
        Severity::Critical
    );
}

#[test]
fn a_numeric_conflict_gets_its_severity_from_the_relative_change() {
    let r = rules(Strategy::RemoteWins);
    let base = fields(json!({"A": 100, "B": 100, "C": 100, "Z": 0}));
    let local = fields(json!({"A": 105, "B": 115, "C": 125, "Z": 1}));
    let remote = fields(json!({"A": 95, "B": 100.5, "C": 99, "Z": 2}));
    let out = resolve(&r, &base, Side::new(&local, None), Side::new(&remote, None));
    let sev: Vec<_> = out
        .conflicts
        .iter()
        .map(|c| (c.field.as_str(), c.severity))
        .collect();
    assert_eq!(
        sev,
        [
            ("A", Severity::Low),
            ("B", Severity::Medium),
            ("C", Severity::High),
            ("Z", Severity::High)
        ]
    );
}

#[test]
fn conflicts_come_in_field_name_order() {
    let base = fields(json!({"b": 0, "a": 0, "c": 0}));
    let local = fields(json!({"c": 1, "b": 1, "a": 1}));
    let remote = fields(json!({"a": 2, "c": 2, "b": 2}));
    let out = resolve(
        &EntityRules::default(),
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    let names: Vec<_> = out.conflicts.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn a_conflict_serializes_with_both_sides_the_base_and_the_rule() {
    let mut r = rules(Strategy::LastWriteWins);
    r.critical_fields.insert("Phone".into());
    let out = phone_conflict(&r, Some(LATE), Some(EARLY));
    let wire = serde_json::to_value(&out).unwrap();
    assert_eq!(
        wire,
        json!({
            "fields": {"Phone": "222", "Name": "Ada"},
            "conflicts": [{
                "field": "Phone",
                "base": "111",
                "local": "222",
                "remote": "333",
                "local_modified_at": "2026-11-21T10:05:00Z",
                "remote_modified_at": "2026-11-21T10:00:00Z",
                "strategy": "last_write_wins",
                "status": "resolved",
                "resolved_by": "last_write_wins",
                "fallback_reason": null,
                "value": "222",
                "severity": "critical"
            }]
        })
    );
    let back: MergeOutcome = serde_json::from_value(wire).unwrap();
    assert_eq!(back, out);
}

#[test]
fn an_unresolved_conflict_serializes_without_a_value() {
    let out = phone_conflict(&EntityRules::default(), None, None);
    let wire = serde_json::to_value(&out.conflicts[0]).unwrap();
    assert_eq!(wire["status"], json!("unresolved"));
    assert_eq!(wire["resolved_by"], Value::Null);
    assert_eq!(wire["value"], Value::Null);
    assert_eq!(wire["fallback_reason"], json!("changed_on_both_sides"));
    assert_eq!(wire["local_modified_at"], Value::Null);
}

#[test]
fn nothing_changed_on_either_side_gives_an_empty_outcome() {
    let base = fields(json!({"Phone": "111"}));
    let same_fields = base.clone();
    let out = resolve(
        &EntityRules::default(),
        &base,
        Side::new(&same_fields, None),
        Side::new(&same_fields, None),
    );
    assert_eq!(out, MergeOutcome::default());
}

#[test]
fn rules_read_from_toml_drive_the_merge() {
    #[derive(serde::Deserialize)]
    struct File {
        conflicts: ConflictRules,
    }
    let file: File = toml::from_str(
        r#"
        [conflicts.contacts]
        fallback = "remote_wins"
        critical_fields = ["Email"]
        [conflicts.contacts.fields]
        Phone = "local_wins"
        "#,
    )
    .unwrap();
    file.conflicts.validate().unwrap();
    let rules = file.conflicts.for_entity("contacts");
    let base = fields(json!({"Phone": "1", "Email": "a@x", "City": "Oslo"}));
    let local = fields(json!({"Phone": "2", "Email": "b@x", "City": "Bergen"}));
    let remote = fields(json!({"Phone": "3", "Email": "c@x", "City": "Oslo"}));
    let out = resolve(
        &rules,
        &base,
        Side::new(&local, None),
        Side::new(&remote, None),
    );
    assert_eq!(
        out.fields,
        fields(json!({"Phone": "2", "Email": "c@x", "City": "Bergen"}))
    );
    let by: Vec<_> = out
        .conflicts
        .iter()
        .map(|c| (c.field.as_str(), c.strategy, c.resolved_by, c.severity))
        .collect();
    assert_eq!(
        by,
        [
            (
                "Email",
                Strategy::Merge,
                Some(Strategy::RemoteWins),
                Severity::Critical
            ),
            (
                "Phone",
                Strategy::LocalWins,
                Some(Strategy::LocalWins),
                Severity::Low
            ),
        ]
    );
    assert_eq!(
        out.changes_against(&remote),
        fields(json!({"Phone": "2", "City": "Bergen"}))
    );
}
