//! The normalised form of a text that dedupe, the evaluation guard and
//! example ids compare: lowercase, every run of whitespace one space, no
//! leading or trailing whitespace. "How do I  descale?" and "how do I
//! descale?" are the same question.

use sha2::{Digest, Sha256};

/// `text` lowercased with its whitespace collapsed.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// SHA-256 over the normalised `parts`, each followed by a NUL byte (so
/// that `("ab", "c")` and `("a", "bc")` differ).
pub fn text_hash(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(normalise(part).as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_whitespace_do_not_matter_but_words_do() {
        assert_eq!(normalise("  How do I\n\tDescale?  "), "how do i descale?");
        assert_eq!(
            text_hash(&["How do I descale?"]),
            text_hash(&["how  do i DESCALE?"])
        );
        assert_ne!(text_hash(&["ab", "c"]), text_hash(&["a", "bc"]));
        assert_ne!(text_hash(&["descale"]), text_hash(&["de-scale"]));
    }
}
