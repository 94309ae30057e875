//! How much a conflict matters, so reviewers see the dangerous ones first
//! (the rule is on [`severity`], where the public docs show it).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Conflict severity, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Relative change above which a numeric conflict is medium.
pub const MEDIUM_ABOVE: f64 = 0.10;
/// Relative change above which a numeric conflict is high.
pub const HIGH_ABOVE: f64 = 0.20;

/// The severity of a conflict on a field. The rule, in order:
/// 1. a field listed in `critical_fields` is [`Severity::Critical`];
/// 2. otherwise, when the base value is a JSON number, each side that is
///    also a number has a relative change `|side - base| / |base|`; the
///    larger of the two decides: over 20% is [`Severity::High`], over 10%
///    [`Severity::Medium`] (strictly over: exactly 10% is low). A base of
///    zero has no scale, so any change away from zero counts as unbounded
///    (high). Arithmetic is `f64`, so a boundary like 1.0 -> 1.1 may land
///    on either side of 10% by one ulp;
/// 3. everything else is [`Severity::Low`]: text, booleans, objects, and a
///    number replacing or replaced by a non-number (no scale to compare).
pub fn severity(critical: bool, base: Option<&Value>, local: &Value, remote: &Value) -> Severity {
    if critical {
        return Severity::Critical;
    }
    let Some(base) = base.and_then(Value::as_f64) else {
        return Severity::Low;
    };
    let change = [local, remote]
        .into_iter()
        .filter_map(Value::as_f64)
        .map(|side| relative_change(base, side))
        .fold(0.0_f64, f64::max);
    if change > HIGH_ABOVE {
        Severity::High
    } else if change > MEDIUM_ABOVE {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// `|side - base| / |base|`, infinite when the base is zero and the side is
/// not, because any move away from zero is unbounded relative to it.
pub fn relative_change(base: f64, side: f64) -> f64 {
    let delta = (side - base).abs();
    if delta == 0.0 {
        0.0
    } else if base == 0.0 {
        f64::INFINITY
    } else {
        delta / base.abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(base: Value, local: Value, remote: Value) -> Severity {
        severity(false, Some(&base), &local, &remote)
    }

    #[test]
    fn a_critical_field_is_critical_whatever_the_values() {
        assert_eq!(
            severity(true, Some(&json!("a")), &json!("b"), &json!("c")),
            Severity::Critical
        );
        assert_eq!(
            severity(true, Some(&json!(100)), &json!(100.5), &json!(101)),
            Severity::Critical
        );
        assert_eq!(
            severity(true, None, &json!(null), &json!(1)),
            Severity::Critical
        );
    }

    #[test]
    fn a_numeric_change_of_ten_percent_or_less_is_low() {
        assert_eq!(num(json!(100), json!(105), json!(110)), Severity::Low);
        assert_eq!(num(json!(100), json!(90), json!(100.0)), Severity::Low);
    }

    #[test]
    fn a_numeric_change_over_ten_percent_is_medium() {
        assert_eq!(num(json!(100), json!(111), json!(100)), Severity::Medium);
        assert_eq!(num(json!(100), json!(101), json!(80)), Severity::Medium);
    }

    #[test]
    fn exactly_twenty_percent_is_still_medium() {
        assert_eq!(num(json!(100), json!(120), json!(101)), Severity::Medium);
    }

    #[test]
    fn a_numeric_change_over_twenty_percent_is_high() {
        assert_eq!(num(json!(100), json!(121), json!(100)), Severity::High);
        assert_eq!(num(json!(100), json!(99), json!(-100)), Severity::High);
    }

    #[test]
    fn the_larger_of_the_two_sides_changes_decides() {
        assert_eq!(num(json!(1000), json!(1050), json!(1250)), Severity::High);
        assert_eq!(num(json!(1000), json!(1250), json!(1050)), Severity::High);
    }

    #[test]
    fn the_change_is_relative_to_the_base_not_between_the_sides() {
        // The sides are 1% apart, but both moved 50% from the base.
        assert_eq!(num(json!(100), json!(150), json!(151)), Severity::High);
    }

    #[test]
    fn a_negative_base_uses_its_magnitude() {
        assert_eq!(num(json!(-100), json!(-115), json!(-100)), Severity::Medium);
    }

    #[test]
    fn any_change_away_from_a_zero_base_is_high() {
        assert_eq!(num(json!(0), json!(0.001), json!(0)), Severity::High);
        assert_eq!(num(json!(0.0), json!(0), json!(-5)), Severity::High);
    }

    #[test]
    fn text_and_other_non_numbers_are_low() {
        assert_eq!(num(json!("a"), json!("b"), json!("c")), Severity::Low);
        assert_eq!(num(json!(true), json!(false), json!(null)), Severity::Low);
        assert_eq!(
            num(json!({"a": 1}), json!({"a": 100}), json!([])),
            Severity::Low
        );
    }

    #[test]
    fn a_number_against_a_missing_or_non_numeric_base_is_low() {
        assert_eq!(
            severity(false, None, &json!(1), &json!(1000)),
            Severity::Low
        );
        assert_eq!(num(json!(null), json!(1), json!(1000)), Severity::Low);
        assert_eq!(num(json!("100"), json!(1), json!(1000)), Severity::Low);
    }

    #[test]
    fn a_side_that_is_no_longer_a_number_does_not_count() {
        assert_eq!(num(json!(100), json!(null), json!(105)), Severity::Low);
        assert_eq!(num(json!(100), json!("n/a"), json!(150)), Severity::High);
    }

    #[test]
    fn severities_order_from_low_to_critical() {
        assert!(Severity::Low < Severity::Medium);
        assert!(Severity::Medium < Severity::High);
        assert!(Severity::High < Severity::Critical);
    }
}
