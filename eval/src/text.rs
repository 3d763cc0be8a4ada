//! Text normalization and the per-answer text metrics: fact matching, token
//! F1 and ROUGE-L.

/// Normalizes text for phrase matching (evidence and facts): lowercase,
/// drop the Markdown emphasis characters `*`, `_` and `` ` ``, collapse every
/// run of whitespace to one space, trim.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if matches!(c, '*' | '_' | '`') {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// Whether `fact` appears in `answer`, both [`normalize`]d (so matching is
/// case-insensitive, whitespace-insensitive and ignores Markdown emphasis).
/// No number or unit normalization: "1,8 L" does not match "1.8 L".
pub fn contains_fact(answer: &str, fact: &str) -> bool {
    let fact = normalize(fact);
    !fact.is_empty() && normalize(answer).contains(&fact)
}

/// The numbers of `answer` (maximal digit runs, inner `.`, `,` or `:`
/// kept; citation markers `[n]` left out) found in none of `sources` nor
/// in `question` as a whole run. Kept apart from the device's own
/// faithfulness check so that the measure does not share its blind spots.
pub fn unsupported_numbers(answer: &str, sources: &[&str], question: &str) -> Vec<String> {
    let known: std::collections::BTreeSet<String> = sources
        .iter()
        .chain(std::iter::once(&question))
        .flat_map(|s| digit_runs(s))
        .collect();
    let mut missing = Vec::new();
    for run in digit_runs(&without_markers(answer)) {
        if !known.contains(&run) && !missing.contains(&run) {
            missing.push(run);
        }
    }
    missing
}

fn without_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '[' {
            if let Some(close) = text[i..].find(']') {
                let inner = &text[i + 1..i + close];
                if !inner.is_empty()
                    && inner
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                {
                    while chars.peek().is_some_and(|(j, _)| *j <= i + close) {
                        chars.next();
                    }
                    out.push(' ');
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

fn digit_runs(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_digit()
                || (matches!(chars[i], '.' | ',' | ':')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
        {
            i += 1;
        }
        runs.push(chars[start..i].iter().collect());
    }
    runs
}

/// SQuAD-style answer tokens: lowercase, delete every character that is
/// neither alphanumeric nor whitespace (so "1.8" becomes "18"), split on
/// whitespace, drop the articles "a", "an" and "the".
pub fn answer_tokens(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    cleaned
        .split_whitespace()
        .filter(|t| !matches!(*t, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

/// SQuAD token F1 between a candidate and a reference: the harmonic mean of
/// precision (overlap / candidate tokens) and recall (overlap / reference
/// tokens), where overlap counts shared tokens as a multiset. Two texts with
/// no tokens score 1.0; one empty side scores 0.0. Symmetric, in `[0, 1]`.
pub fn token_f1(candidate: &str, reference: &str) -> f64 {
    let candidate = answer_tokens(candidate);
    let reference = answer_tokens(reference);
    if candidate.is_empty() || reference.is_empty() {
        return if candidate.is_empty() && reference.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for token in &reference {
        *counts.entry(token.as_str()).or_default() += 1;
    }
    let mut overlap = 0usize;
    for token in &candidate {
        if let Some(n) = counts.get_mut(token.as_str()) {
            if *n > 0 {
                *n -= 1;
                overlap += 1;
            }
        }
    }
    f_measure(overlap, candidate.len(), reference.len())
}

/// ROUGE-L F-measure (β = 1) over [`answer_tokens`]: with `l` the length of
/// the longest common subsequence, precision = `l` / candidate tokens,
/// recall = `l` / reference tokens, F = 2PR / (P + R). Same empty-text rules
/// as [`token_f1`]. Symmetric, in `[0, 1]`.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let candidate = answer_tokens(candidate);
    let reference = answer_tokens(reference);
    if candidate.is_empty() || reference.is_empty() {
        return if candidate.is_empty() && reference.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let lcs = lcs_len(&candidate, &reference);
    f_measure(lcs, candidate.len(), reference.len())
}

/// Longest common subsequence length, two-row dynamic programme.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                current[j].max(previous[j + 1])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// 2PR/(P+R) with P = overlap/candidate, R = overlap/reference, written as
/// 2·overlap/(candidate+reference) so it is exactly symmetric.
fn f_measure(overlap: usize, candidate: usize, reference: usize) -> f64 {
    if overlap == 0 {
        return 0.0;
    }
    (2 * overlap) as f64 / (candidate + reference) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalize_lowercases_strips_emphasis_and_collapses_whitespace() {
        assert_eq!(
            normalize("  Descale **every**\n\t_4_   `weeks`. "),
            "descale every 4 weeks."
        );
        assert_eq!(normalize(" * _ ` "), "");
    }

    #[test]
    fn facts_match_case_and_whitespace_insensitively_but_not_numbers() {
        assert!(contains_fact("Descale it every **4\nWeeks**.", "4 weeks"));
        assert!(!contains_fact("The tank holds 1,8 L.", "1.8 L"));
        assert!(!contains_fact("anything", "  "));
    }

    #[test]
    fn tokens_drop_punctuation_and_articles() {
        assert_eq!(
            answer_tokens("The tank holds 1.8 L, an A-grade tank!"),
            vec!["tank", "holds", "18", "l", "agrade", "tank"]
        );
    }

    #[test]
    fn token_f1_matches_a_hand_computed_example() {
        // candidate: [descale, every, 4, weeks, please] (5 tokens)
        // reference: [descale, machine, every, 4, weeks] (5 tokens)
        // overlap 4 -> P = R = 4/5 -> F1 = 0.8
        let f1 = token_f1(
            "Descale every 4 weeks, please.",
            "Descale the machine every 4 weeks.",
        );
        assert!((f1 - 0.8).abs() < 1e-12, "{f1}");
        // multiset overlap: candidate [x, x, y] vs reference [x, z]:
        // overlap 1, P = 1/3, R = 1/2, F1 = 2/5
        assert!((token_f1("x x y", "x z") - 0.4).abs() < 1e-12);
        assert_eq!(token_f1("the", "a an"), 1.0);
        assert_eq!(token_f1("", "something"), 0.0);
        assert_eq!(token_f1("unrelated", "something"), 0.0);
    }

    #[test]
    fn rouge_l_matches_a_hand_computed_example() {
        // candidate: [police, killed, gunman] (3), reference: [police, kill,
        // gunman] (3); LCS = [police, gunman] = 2 -> P = R = 2/3
        let r = rouge_l("police killed the gunman", "the police kill the gunman");
        assert!((r - 2.0 / 3.0).abs() < 1e-12, "{r}");
        // order matters: [a1 b c] vs [c b a1] has LCS 1 -> 1/3, while token
        // F1 sees all three.
        assert!((rouge_l("a1 b c", "c b a1") - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("a1 b c", "c b a1"), 1.0);
        // candidate 2 tokens, reference 4, LCS 2: P = 1, R = 1/2, F = 2/3
        assert!((rouge_l("w x", "w y x z") - 2.0 / 3.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn f1_and_rouge_l_are_bounded_and_symmetric(a in ".{0,80}", b in ".{0,80}") {
            for metric in [token_f1, rouge_l] {
                let ab = metric(&a, &b);
                prop_assert!((0.0..=1.0).contains(&ab));
                prop_assert_eq!(ab, metric(&b, &a));
            }
        }

        #[test]
        fn f1_and_rouge_l_are_one_for_identical_texts(a in "[a-z0-9 .,]{1,80}|.{1,40}") {
            prop_assert_eq!(token_f1(&a, &a), 1.0);
            prop_assert_eq!(rouge_l(&a, &a), 1.0);
        }

        #[test]
        fn word_texts_overlap_bounded(words_a in proptest::collection::vec("[a-d]{1,2}", 1..12), words_b in proptest::collection::vec("[a-d]{1,2}", 1..12)) {
            let a = words_a.join(" ");
            let b = words_b.join(" ");
            // LCS never exceeds the multiset overlap, so ROUGE-L <= token F1.
            prop_assert!(rouge_l(&a, &b) <= token_f1(&a, &b) + 1e-12);
        }
    }
}
