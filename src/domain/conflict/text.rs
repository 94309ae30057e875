//! Three-way merge of long text (`merge_text`), line by line, with `diffy`.
//!
//! Line granularity is deliberate: notes and descriptions are edited a
//! paragraph at a time, and a line-level merge never splices half a word
//! from each side. Edits to the same or adjacent lines overlap and are left
//! for review rather than guessed.

use serde_json::Value;

/// Why a text merge did not produce a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMergeError {
    /// A side (or a present base) is not a JSON string.
    NotText,
    /// Both sides edited overlapping lines.
    Overlap,
}

/// Merges `local` and `remote` against `base` line by line; edits to the
/// same or adjacent lines overlap. A missing or null base is
/// merged as the empty text: both sides then inserted at the same place, so
/// only identical or one-sided text merges cleanly.
pub fn merge_text(
    base: Option<&Value>,
    local: &Value,
    remote: &Value,
) -> Result<String, TextMergeError> {
    let base = match base {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(TextMergeError::NotText),
    };
    let (Value::String(local), Value::String(remote)) = (local, remote) else {
        return Err(TextMergeError::NotText);
    };
    diffy::merge(base, local, remote).map_err(|_| TextMergeError::Overlap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edits_to_different_lines_merge() {
        let base = json!("one\ntwo\nthree\nfour\nfive\n");
        let local = json!("ONE\ntwo\nthree\nfour\nfive\n");
        let remote = json!("one\ntwo\nthree\nfour\nFIVE\n");
        assert_eq!(
            merge_text(Some(&base), &local, &remote).unwrap(),
            "ONE\ntwo\nthree\nfour\nFIVE\n"
        );
    }

    #[test]
    fn an_insertion_and_a_distant_deletion_merge() {
        let base = json!("a\nb\nc\nd\ne\n");
        let local = json!("a\nnew\nb\nc\nd\ne\n");
        let remote = json!("a\nb\nc\nd\n");
        assert_eq!(
            merge_text(Some(&base), &local, &remote).unwrap(),
            "a\nnew\nb\nc\nd\n"
        );
    }

    #[test]
    fn the_same_edit_on_both_sides_merges_once() {
        let base = json!("a\nb\nc\n");
        let both = json!("a\nB\nc\n");
        assert_eq!(merge_text(Some(&base), &both, &both).unwrap(), "a\nB\nc\n");
    }

    #[test]
    fn edits_to_the_same_line_overlap() {
        let base = json!("a\nb\nc\n");
        assert_eq!(
            merge_text(Some(&base), &json!("a\nB1\nc\n"), &json!("a\nB2\nc\n")),
            Err(TextMergeError::Overlap)
        );
    }

    #[test]
    fn edits_to_adjacent_lines_overlap() {
        let base = json!("a\nb\nc\nd\n");
        assert_eq!(
            merge_text(Some(&base), &json!("a\nB\nc\nd\n"), &json!("a\nb\nC\nd\n")),
            Err(TextMergeError::Overlap)
        );
    }

    #[test]
    fn a_single_line_text_edited_on_both_sides_overlaps() {
        assert_eq!(
            merge_text(
                Some(&json!("hello")),
                &json!("hello world"),
                &json!("hello there")
            ),
            Err(TextMergeError::Overlap)
        );
    }

    #[test]
    fn a_missing_base_merges_as_empty_text() {
        assert_eq!(
            merge_text(None, &json!("x\n"), &json!("y\n")),
            Err(TextMergeError::Overlap)
        );
        assert_eq!(
            merge_text(Some(&Value::Null), &json!("x\n"), &json!("")).unwrap(),
            "x\n"
        );
    }

    #[test]
    fn values_that_are_not_text_are_refused() {
        assert_eq!(
            merge_text(Some(&json!("a")), &json!(1), &json!("b")),
            Err(TextMergeError::NotText)
        );
        assert_eq!(
            merge_text(Some(&json!(1)), &json!("a"), &json!("b")),
            Err(TextMergeError::NotText)
        );
        assert_eq!(
            merge_text(Some(&json!("a")), &json!("b"), &json!(null)),
            Err(TextMergeError::NotText)
        );
    }
}
