//! Extractive answers: the sentence(s) of a source that answer the
//! question, quoted with their citation.
//!
//! The fallback when a generated answer fails the faithfulness check
//! ([`super::faithful`]), and a mode of its own (`[answer] style =
//! "extract"`): nothing is invented because nothing is written. A
//! sentence scores the weight of the question's words it holds (a word
//! written as a name, `SystemMaxUse=` or `E07`, weighs double, as in
//! retrieval's reranker), plus half the weight found in its chunk's
//! heading path (the option a definition is about), minus a little per
//! rank of its chunk, so that among equals the best-retrieved source wins.
//! Words match on their first five letters (`limits`, `limited`).
//!
//! The best sentence is quoted, with the next one when it is short (under
//! 80 characters) or ends in `:`; no extract is offered when the best
//! sentence holds under [`MIN_SHARE`] of the question's weight.

use outpost_kb::rerank::is_distinctive;
use outpost_kb::retrieve::query_words;

/// Least share of the question's word weight an extract must hold.
pub const MIN_SHARE: f64 = 0.25;

/// Score lost per rank of the chunk a sentence comes from.
const RANK_PENALTY: f64 = 0.05;

/// One source offered to the extractor.
#[derive(Debug, Clone, Copy)]
pub struct Passage<'a> {
    /// The citation number the answer will carry.
    pub marker: usize,
    /// The chunk's heading path.
    pub section: &'a str,
    pub text: &'a str,
}

/// The quoted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Extract {
    /// The sentence(s) and the citation: `… [2]`.
    pub text: String,
    pub marker: usize,
    /// Share of the question's word weight the quoted sentence holds.
    pub share: f64,
}

/// The best extract from `passages` (ranked best first) for `question`.
pub fn extract(question: &str, passages: &[Passage<'_>]) -> Option<Extract> {
    let terms = weighted_stems(question);
    let total: f64 = terms.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return None;
    }
    let mut best: Option<(f64, f64, usize, usize, Vec<&str>)> = None;
    for (rank, passage) in passages.iter().enumerate() {
        let heading = stems(passage.section);
        let heading_weight: f64 = terms
            .iter()
            .filter(|(s, _)| heading.contains(s))
            .map(|(_, w)| w)
            .sum();
        let sentences = sentences(passage.text);
        for (i, sentence) in sentences.iter().enumerate() {
            let words = stems(sentence);
            let held: f64 = terms
                .iter()
                .filter(|(s, _)| words.contains(s))
                .map(|(_, w)| w)
                .sum();
            let score = held + 0.5 * heading_weight - RANK_PENALTY * total * rank as f64;
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, held / total, rank, i, sentences.clone()));
            }
        }
    }
    let (_, share, rank, i, sentences) = best?;
    if share < MIN_SHARE {
        return None;
    }
    let mut quoted = sentences[i].to_owned();
    if quoted.chars().count() < 80 || quoted.ends_with(':') {
        if let Some(next) = sentences.get(i + 1) {
            quoted.push(' ');
            quoted.push_str(next);
        }
    }
    let marker = passages[rank].marker;
    // A definition's sentences rarely repeat the option they define: its
    // name is the heading (`KillUserProcesses=`), so it leads the quote.
    if let Some(term) = defined_term(passages[rank].section) {
        let named = term
            .split([',', '|', ' '])
            .any(|name| name.len() > 1 && quoted.contains(name));
        if !named {
            quoted = format!("{term}: {quoted}");
        }
    }
    Some(Extract {
        text: format!("{quoted} [{marker}]"),
        marker,
        share,
    })
}

/// The innermost heading of `section` when it names things rather than
/// titles a topic: a definition's term, such as `Storage=` or
/// `SystemMaxUse=, SystemKeepFree=` (every word written as a name).
fn defined_term(section: &str) -> Option<&str> {
    let term = section.rsplit(" > ").next()?.trim();
    let names = term
        .split([',', '|', ' '])
        .filter(|w| !w.is_empty() && *w != "or");
    let mut any = false;
    for word in names {
        if !is_distinctive(word) {
            return None;
        }
        any = true;
    }
    any.then_some(term)
}

/// The question's words as stems, with their weights.
fn weighted_stems(question: &str) -> Vec<(String, f64)> {
    let distinctive: Vec<String> = question
        .split_whitespace()
        .filter(|t| is_distinctive(t.trim_matches(|c: char| !c.is_alphanumeric() && c != '=')))
        .flat_map(query_words)
        .collect();
    let mut out: Vec<(String, f64)> = Vec::new();
    for word in query_words(question) {
        let weight = if distinctive.contains(&word) {
            2.0
        } else {
            1.0
        };
        let stem = stem(&word);
        if !out.iter().any(|(s, _)| *s == stem) {
            out.push((stem, weight));
        }
    }
    out
}

fn stem(word: &str) -> String {
    word.chars().take(5).collect()
}

fn stems(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| stem(&w.to_lowercase()))
        .collect()
}

/// Sentences of `text`: split after `.`, `!` or `?` (and a closing quote
/// or bracket) followed by whitespace and not after a one- or two-letter
/// abbreviation (`e.g.`, `i.e.`); also at line breaks (paragraphs).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let mut start = 0;
        let bytes: Vec<(usize, char)> = paragraph.char_indices().collect();
        for (n, &(at, c)) in bytes.iter().enumerate() {
            if !matches!(c, '.' | '!' | '?') {
                continue;
            }
            let mut end = n + 1;
            while bytes
                .get(end)
                .is_some_and(|(_, c)| matches!(c, '"' | '\'' | ')' | ']' | '”' | '’'))
            {
                end += 1;
            }
            if !bytes.get(end).is_some_and(|(_, c)| c.is_whitespace()) {
                continue;
            }
            let word_start = paragraph[..at]
                .rfind(|c: char| c.is_whitespace())
                .map_or(0, |i| i + 1);
            let word = &paragraph[word_start..at];
            if c == '.' && word.chars().count() <= 3 && word.contains('.') {
                continue;
            }
            let cut = bytes.get(end).map_or(paragraph.len(), |(i, _)| *i);
            let sentence = paragraph[start..cut].trim();
            if !sentence.is_empty() {
                out.push(sentence);
            }
            start = cut;
        }
        let rest = paragraph[start..].trim();
        if !rest.is_empty() {
            out.push(rest);
        }
    }
    out
}

/// How answers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerStyle {
    /// By the model, from the retrieved sources.
    Generate,
    /// Quoted from the best source ([`extract`]), without the model.
    Extract,
}

impl std::str::FromStr for AnswerStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "generate" => Ok(Self::Generate),
            "extract" => Ok(Self::Extract),
            other => Err(format!("{other:?}: must be \"generate\" or \"extract\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: &str = "Enforce size limits on the journal files stored. The options prefixed \
        with \"System\" apply to the journal files when stored on a persistent file system. \
        SystemMaxUse= and RuntimeMaxUse= control how much disk space the journal may use up at \
        most. SystemKeepFree= and RuntimeKeepFree= control how much disk space systemd-journald \
        shall leave free for other uses.";
    const STORAGE: &str = "Controls where to store journal data. One of \"volatile\", \
        \"persistent\", \"auto\" and \"none\". Defaults to \"auto\" in the default journal namespace.";

    fn passages() -> Vec<Passage<'static>> {
        vec![
            Passage {
                marker: 1,
                section: "journald.conf(5) > OPTIONS > Storage=",
                text: STORAGE,
            },
            Passage {
                marker: 2,
                section: "journald.conf(5) > OPTIONS > SystemMaxUse=, SystemKeepFree=",
                text: SIZES,
            },
        ]
    }

    #[test]
    fn the_sentence_that_answers_is_quoted_with_its_citation() {
        let found = extract(
            "How much disk space may the journal use at most?",
            &passages(),
        )
        .expect("an extract");
        assert_eq!(found.marker, 2);
        assert!(
            found
                .text
                .starts_with("SystemMaxUse= and RuntimeMaxUse= control how much disk"),
            "{}",
            found.text
        );
        assert!(found.text.ends_with("[2]"));

        let found = extract(
            "Where does the journal store its data by default?",
            &passages(),
        )
        .expect("an extract");
        assert_eq!(found.marker, 1, "{found:?}");
        // Short first sentence: the next one comes with it.
        assert!(found
            .text
            .contains("Controls where to store journal data. One of"));
    }

    #[test]
    fn a_question_the_sources_do_not_address_gets_no_extract() {
        assert_eq!(
            extract("Which nginx directive rotates access logs?", &passages()),
            None
        );
        assert_eq!(extract("?!", &passages()), None);
    }

    #[test]
    fn a_definition_quote_leads_with_the_option_it_defines() {
        let passages = [Passage {
            marker: 3,
            section: "logind.conf(5) > OPTIONS > KillUserProcesses=",
            text: "Takes a boolean argument. Configures whether the processes of a user should be killed when the user logs out.",
        }];
        let found = extract("Are my processes killed when I log out?", &passages).unwrap();
        assert_eq!(
            found.text,
            "KillUserProcesses=: Configures whether the processes of a user should be killed when the user logs out. [3]"
        );
        assert_eq!(defined_term("Manual > Descaling"), None);
        assert_eq!(
            defined_term("x > SystemMaxUse=, SystemKeepFree="),
            Some("SystemMaxUse=, SystemKeepFree=")
        );
    }

    #[test]
    fn abbreviations_do_not_end_sentences() {
        assert_eq!(
            sentences("Use a unit, e.g. foo.service. Then restart.\nNext paragraph"),
            [
                "Use a unit, e.g. foo.service.",
                "Then restart.",
                "Next paragraph"
            ]
        );
    }
}
