//! Properties of the merge that must hold for any rules and any values.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::{
    Just, ProptestConfig, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
// Imported anonymously: the engine has its own `Strategy`.
use proptest::strategy::Strategy as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::*;

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::LocalWins),
        Just(Strategy::RemoteWins),
        Just(Strategy::LastWriteWins),
        Just(Strategy::Merge),
        Just(Strategy::Manual),
        Just(Strategy::MergeText),
    ]
}

fn fallback() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::LocalWins),
        Just(Strategy::RemoteWins),
        Just(Strategy::Manual),
    ]
}

/// Any valid rules over the field names.
fn entity_rules() -> impl proptest::strategy::Strategy<Value = EntityRules> {
    (
        strategy(),
        fallback(),
        0u64..600,
        proptest::collection::btree_set(proptest::sample::select(NAMES.to_vec()), 0..3),
        proptest::collection::btree_map(proptest::sample::select(NAMES.to_vec()), strategy(), 0..6),
    )
        .prop_map(|(strategy, fallback, skew, critical, fields)| EntityRules {
            strategy,
            fallback,
            clock_skew_tolerance: Duration::from_secs(skew),
            critical_fields: critical.into_iter().map(str::to_owned).collect(),
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })
}

/// Text made of a few short lines, so that line merges both succeed and
/// overlap often.
fn text() -> impl proptest::strategy::Strategy<Value = Value> {
    proptest::collection::vec(proptest::sample::select(vec!["x", "y", "z", "w"]), 0..6)
        .prop_map(|lines| Value::String(lines.iter().map(|l| format!("{l}\n")).collect()))
}

fn value() -> impl proptest::strategy::Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        (-5i64..5).prop_map(|n| json!(n as f64 * 10.0)),
        "[a-c]{0,2}".prop_map(Value::String),
        text(),
    ]
}

fn field_map() -> impl proptest::strategy::Strategy<Value = Fields> {
    proptest::collection::btree_map(proptest::sample::select(NAMES.to_vec()), value(), 0..8)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn time() -> impl proptest::strategy::Strategy<Value = Option<OffsetDateTime>> {
    proptest::option::of(
        (0i64..1200)
            .prop_map(|s| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + s)),
    )
}

/// Which side, if any, changes a field in a disjoint change.
#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    Local,
    Remote,
}

fn disjoint() -> impl proptest::strategy::Strategy<Value = (Fields, Fields, Fields)> {
    let who = prop_oneof![Just(Who::Nobody), Just(Who::Local), Just(Who::Remote)];
    proptest::collection::btree_map(
        proptest::sample::select(NAMES.to_vec()),
        (value(), value(), who, any::<bool>()),
        0..8,
    )
    .prop_map(|per_field: BTreeMap<&str, (Value, Value, Who, bool)>| {
        let (mut base, mut local, mut remote) = (Fields::new(), Fields::new(), Fields::new());
        for (name, (old, new, who, echo_base)) in per_field {
            base.insert(name.to_owned(), old.clone());
            // A side may carry an unchanged field explicitly or omit it.
            if echo_base {
                local.insert(name.to_owned(), old.clone());
                remote.insert(name.to_owned(), old.clone());
            }
            match who {
                Who::Nobody => {}
                Who::Local => {
                    local.insert(name.to_owned(), new);
                }
                Who::Remote => {
                    remote.insert(name.to_owned(), new);
                }
            }
        }
        (base, local, remote)
    })
}

/// `current` with `changes` written over it.
fn apply(current: &Fields, changes: &Fields) -> Fields {
    let mut out = current.clone();
    out.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn disjoint_changes_lose_no_field_and_raise_no_conflict(
        rules in entity_rules(),
        (base, local, remote) in disjoint(),
        lt in time(),
        rt in time(),
    ) {
        let out = resolve(&rules, &base, Side::new(&local, lt), Side::new(&remote, rt));
        prop_assert!(out.conflicts.is_empty());
        for side in [&local, &remote] {
            for (name, v) in side {
                let b = base.get(name).unwrap_or(&Value::Null);
                if !same_value(v, b) {
                    prop_assert_eq!(out.fields.get(name), Some(v), "field {} lost", name);
                }
            }
        }
        // What each side must write brings both to the same record.
        let l2 = apply(&apply(&base, &local), &out.changes_against(&apply(&base, &local)));
        let r2 = apply(&apply(&base, &remote), &out.changes_against(&apply(&base, &remote)));
        prop_assert!(same_value(&Value::Object(l2.clone()), &Value::Object(r2.clone())), "{:?} != {:?}", l2, r2);
    }

    #[test]
    fn disjoint_changes_merge_the_same_whichever_side_is_local(
        rules in entity_rules(),
        (base, local, remote) in disjoint(),
        lt in time(),
        rt in time(),
    ) {
        let ab = resolve(&rules, &base, Side::new(&local, lt), Side::new(&remote, rt));
        let ba = resolve(&rules, &base, Side::new(&remote, rt), Side::new(&local, lt));
        prop_assert_eq!(ab, ba);
    }

    #[test]
    fn merging_the_same_change_again_writes_nothing(
        rules in entity_rules(),
        base in field_map(),
        local in field_map(),
        remote in field_map(),
        lt in time(),
        rt in time(),
    ) {
        let first = resolve(&rules, &base, Side::new(&local, lt), Side::new(&remote, rt));
        let written = apply(&remote, &first.changes_against(&remote));
        let second = resolve(&rules, &base, Side::new(&local, lt), Side::new(&written, rt));
        prop_assert!(
            second.changes_against(&written).is_empty(),
            "second merge would write {:?}",
            second.changes_against(&written)
        );
        // Nothing resolved the first time is reopened the second time.
        let open = |o: &MergeOutcome| o.unresolved().map(|c| c.field.clone()).collect::<Vec<_>>();
        prop_assert_eq!(open(&first), open(&second));
    }

    #[test]
    fn a_manual_field_in_conflict_is_never_overwritten(
        mut rules in entity_rules(),
        manual in proptest::sample::select(NAMES.to_vec()),
        base in field_map(),
        local in field_map(),
        remote in field_map(),
        lt in time(),
        rt in time(),
    ) {
        rules.fields.insert(manual.to_owned(), Strategy::Manual);
        let out = resolve(&rules, &base, Side::new(&local, lt), Side::new(&remote, rt));
        if let Some(c) = out.conflicts.iter().find(|c| c.field == manual) {
            prop_assert!(!out.fields.contains_key(manual));
            prop_assert_eq!(c.status, ConflictStatus::Unresolved);
            prop_assert!(c.value.is_none());
            prop_assert_eq!(Some(&c.local), local.get(manual));
            prop_assert_eq!(Some(&c.remote), remote.get(manual));
            prop_assert!(out.changes_against(&remote).get(manual).is_none());
        }
    }

    #[test]
    fn every_changed_field_is_decided_or_left_for_review(
        rules in entity_rules(),
        base in field_map(),
        local in field_map(),
        remote in field_map(),
    ) {
        let out = resolve(&rules, &base, Side::new(&local, None), Side::new(&remote, None));
        for name in local.keys().chain(remote.keys()) {
            let b = base.get(name).unwrap_or(&Value::Null);
            let l = local.get(name).unwrap_or(b);
            let r = remote.get(name).unwrap_or(b);
            let changed = !same_value(l, b) || !same_value(r, b);
            let decided = out.fields.contains_key(name);
            let open = out.unresolved().any(|c| &c.field == name);
            prop_assert_eq!(changed, decided || open, "field {}", name);
            prop_assert!(!(decided && open), "field {}", name);
        }
    }
}
