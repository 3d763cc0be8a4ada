//! The faithfulness check: every number and name an answer states must be
//! in the sources it was given (or the question).
//!
//! A 135M model paraphrases well and invents confidently: a "UK policies
//! page", a 30-day limit where the manual says 14. Those inventions are
//! almost always *specific*: numbers, option names, codes, quoted values,
//! proper names. This check extracts them from the answer ([`claims`]) and
//! looks each up in the shown sources and the question, after the same
//! normalisation on both sides (case folded, whitespace collapsed,
//! typographic quotes and dashes made plain). What it does not catch is a
//! wrong claim made of ordinary words ("it is safe to"): that is left to
//! retrieval and the prompt.
//!
//! Claims:
//! - numbers: each maximal run of digits (with inner `.`, `,` or `:`), found
//!   when the sources hold the same run not inside a longer one (`10` is
//!   not found in `100`); a number and a unit glued together (`512M`) is
//!   checked as its digits;
//! - names: tokens written as names ([`outpost_kb::rerank::is_distinctive`]:
//!   `SystemMaxUse=`, `E07`, `NTP`, `snake_case`), quoted values
//!   (`"persistent"`), and capitalised words inside a sentence (`Lumen`,
//!   `UK`), found as a whole word or token in the sources.
//!
//! Citation markers (`[2]`) are not claims. [`Unfaithful`] is what the
//! answer pipeline does with an answer that fails.

use std::collections::BTreeSet;

use outpost_kb::rerank::is_distinctive;

/// The verdict on one answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Faithfulness {
    /// Claims of the answer found in no source and not in the question.
    pub unsupported: Vec<String>,
    /// How many claims were checked.
    pub checked: usize,
}

impl Faithfulness {
    pub fn is_faithful(&self) -> bool {
        self.unsupported.is_empty()
    }
}

/// Words that start many sentences or are capitalised by habit, never a
/// claim on their own.
const ORDINARY_CAPITALISED: &[&str] = &[
    "i", "if", "the", "a", "an", "to", "you", "your", "yes", "no", "it", "this", "that", "for",
    "when", "then", "set", "use", "see", "note", "by", "in", "on", "or", "and", "ok",
];

/// Checks `answer` against `sources` (the texts the model was shown) and
/// the customer's `question`.
pub fn check(answer: &str, sources: &[&str], question: &str) -> Faithfulness {
    let haystack: String = sources
        .iter()
        .chain(std::iter::once(&question))
        .map(|s| normalise(s))
        .collect::<Vec<_>>()
        .join("\n");
    let numbers = numbers_in(&haystack);
    let words = words_in(&haystack);
    let mut unsupported = Vec::new();
    let mut checked = 0;
    for claim in claims(answer) {
        checked += 1;
        let found = match &claim {
            Claim::Number(n) => numbers.contains(n),
            Claim::Name(name) => {
                let name = normalise(name);
                words.contains(&name) || contains_token(&haystack, &name)
            }
        };
        if !found {
            let shown = match claim {
                Claim::Number(n) | Claim::Name(n) => n,
            };
            if !unsupported.contains(&shown) {
                unsupported.push(shown);
            }
        }
    }
    Faithfulness {
        unsupported,
        checked,
    }
}

/// One specific statement of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Number(String),
    Name(String),
}

/// The numbers and names `answer` states, citation markers left out.
pub fn claims(answer: &str) -> Vec<Claim> {
    let text = strip_markers(&normalise_quotes(answer));
    let mut out = Vec::new();
    for number in numbers_in(&text) {
        out.push(Claim::Number(number));
    }
    // Quoted values: "persistent", 'auto'.
    for quoted in quoted_spans(&text) {
        if quoted.chars().any(char::is_alphanumeric) && quoted.chars().count() <= 40 {
            out.push(Claim::Name(quoted));
        }
    }
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let token =
            raw.trim_matches(|c: char| !c.is_alphanumeric() && !matches!(c, '=' | '_' | '/'));
        let ends_sentence = raw.ends_with(['.', '!', '?', ':']);
        if token.is_empty() {
            sentence_start |= ends_sentence;
            continue;
        }
        let has_letters = token.chars().any(char::is_alphabetic);
        let capitalised = token.chars().next().is_some_and(char::is_uppercase);
        let ordinary = ORDINARY_CAPITALISED.contains(&token.to_lowercase().as_str());
        if has_letters && is_distinctive(token) && !is_quantity(token) {
            out.push(Claim::Name(token.trim_end_matches('=').to_owned()));
        } else if capitalised && !sentence_start && !ordinary && token.chars().count() > 1 {
            out.push(Claim::Name(token.to_owned()));
        }
        sentence_start = ends_sentence;
    }
    out
}

/// A number with a unit glued on (`8G`, `512M`, `30s`, `10%`): its number
/// is the claim.
fn is_quantity(token: &str) -> bool {
    let unit = token.trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ','));
    unit.len() < token.len() && unit.chars().count() <= 3 && unit.chars().all(char::is_alphabetic)
}

/// Lower-cased, typographic quotes and dashes made plain, whitespace
/// collapsed.
fn normalise(text: &str) -> String {
    normalise_quotes(text)
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalise_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201B}' | '`' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' => '"',
            '\u{2010}'..='\u{2015}' | '\u{2212}' => '-',
            '\u{00A0}' | '\u{202F}' => ' ',
            other => other,
        })
        .collect()
}

/// `text` without `[1]`, `[1, 2]` citation markers.
fn strip_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close)
                if !after[..close].is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Maximal digit runs with inner `.`, `,` or `:` (`1.5`, `10:30`,
/// `1,000`), trailing separators dropped.
fn numbers_in(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = BTreeSet::new();
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
        found.insert(chars[start..i].iter().collect());
    }
    found
}

/// Whole words (alphanumeric runs, `=`/`_`/`-`/`.`/`/` kept inside) of
/// normalised text.
fn words_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '"' | '\''))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `needle` occurs in `haystack` not glued to letters or digits
/// on either side.
fn contains_token(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Text between matching straight double quotes.
fn quoted_spans(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What becomes of a generated answer that states something its sources
/// do not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unfaithful {
    /// Replaced by a quotation of its best source, or handed over.
    Extract,
    /// Handed over.
    Handover,
    /// Shown anyway (for measuring what the check saves).
    Keep,
}

impl std::str::FromStr for Unfaithful {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "extract" => Ok(Self::Extract),
            "handover" => Ok(Self::Handover),
            "keep" => Ok(Self::Keep),
            other => Err(format!(
                "{other:?}: must be \"extract\", \"handover\" or \"keep\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOURNALD: &str = "Enforce size limits on the journal files stored. SystemMaxUse= and \
        RuntimeMaxUse= control how much disk space the journal may use up at most. \
        SystemMaxUse= defaults to 10% of the size of the file system, capped to 4G. \
        Defaults to \"auto\" in the default journal namespace.";
    const WARRANTY: &str = "Returns are accepted within 14 days of delivery. \
        See the EU/UK warranty page for the two-year legal guarantee.";

    fn faithful(answer: &str, source: &str) -> Faithfulness {
        check(answer, &[source], "How much disk may the journal use?")
    }

    #[test]
    fn correct_paraphrases_pass() {
        for answer in [
            "The journal uses at most 10% of the file system, and never more than 4G [1].",
            "Set SystemMaxUse= to limit it; by default it is 10% of the disk, capped at 4G.",
            "It defaults to “auto” [1].",
            "By default, journald picks \"auto\".",
        ] {
            let verdict = faithful(answer, JOURNALD);
            assert!(verdict.is_faithful(), "{answer}: {verdict:?}");
            assert!(verdict.checked > 0, "{answer}: nothing checked");
        }
        assert!(check("You have 14 days [1].", &[WARRANTY], "").is_faithful());
    }

    #[test]
    fn planted_wrong_numbers_are_caught() {
        for (answer, wrong) in [
            ("The journal uses at most 15% of the file system [1].", "15"),
            ("It is capped at 8G.", "8"),
            ("Returns are accepted within 30 days.", "30"),
            ("The limit is 1.5 times the disk.", "1.5"),
            // 10 is in the source only inside 100? no: as 10%; 100 is not.
            ("At most 100% of the disk.", "100"),
        ] {
            let source = if answer.contains("Returns") {
                WARRANTY
            } else {
                JOURNALD
            };
            let verdict = faithful(answer, source);
            assert_eq!(verdict.unsupported, [wrong], "{answer}");
        }
    }

    #[test]
    fn invented_names_are_caught() {
        for (answer, invented) in [
            ("Set SystemMaxSize= to 4G.", "SystemMaxSize"),
            ("See the UK policies page on the Lumen Portal.", "Lumen"),
            ("Set it to \"persistent\" [1].", "persistent"),
            ("Error E42 means the journal is full.", "E42"),
            ("Use journal_max_use instead.", "journal_max_use"),
        ] {
            let verdict = faithful(answer, JOURNALD);
            assert!(
                verdict.unsupported.iter().any(|u| u == invented),
                "{answer}: {verdict:?}"
            );
        }
        // UK is in the warranty text, Lumen and Portal are not.
        let verdict = check(
            "See the UK policies page on the Lumen Portal.",
            &[WARRANTY],
            "",
        );
        assert_eq!(verdict.unsupported, ["Lumen", "Portal"]);
    }

    #[test]
    fn the_question_counts_as_a_source_and_markers_are_not_claims() {
        let verdict = check(
            "Setting 2G is fine [3].",
            &[JOURNALD],
            "Can I set SystemMaxUse=2G?",
        );
        assert!(verdict.is_faithful(), "{verdict:?}");
        assert!(claims("See [1, 2] and [3].").is_empty());
    }

    #[test]
    fn numbers_are_whole_runs() {
        assert_eq!(
            numbers_in("1,000 and 10:30, v2.5. and 7"),
            ["1,000", "10:30", "2.5", "7"].map(String::from).into()
        );
        assert!(!numbers_in("100").contains("10"));
    }
}
