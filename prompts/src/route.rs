//! Routes: which kind of answer a question gets, chosen by plain phrase
//! rules before the model sees anything.
//!
//! Routes are tried in file order; the first whose `any` phrases match the
//! question wins, and the one `default` route takes every question that no
//! rule matched. Matching is case-insensitive substring search with runs of
//! whitespace collapsed, as a support desk's keyword rules would be: cheap,
//! predictable and easy to audit. Substrings also match inside words
//! (`"fire"` matches "firmware"), so phrases are written with that in mind.

/// What a route does with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteAction {
    /// Answer with the model, the final user message rendered from this
    /// template (a key of `[templates]`).
    Answer {
        /// The template's name.
        template: String,
    },
    /// Do not answer; the device hands over to a person.
    Escalate {
        /// Why, as a stable label (`asked_for_person`, `safety`), for the
        /// device's hand-over screen and for metrics.
        reason: String,
    },
}

/// One validated routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub(crate) name: String,
    pub(crate) action: RouteAction,
    /// The phrases as written in the set (trimmed), kept for [`crate::PromptSet::pack`].
    pub(crate) any: Vec<String>,
    /// The same phrases, normalised for matching.
    pub(crate) needles: Vec<String>,
    pub(crate) default: bool,
}

impl Route {
    pub(crate) fn new(name: String, action: RouteAction, any: Vec<String>, default: bool) -> Self {
        let any: Vec<String> = any.into_iter().map(|p| p.trim().to_owned()).collect();
        let needles = any.iter().map(|p| normalise(p)).collect();
        Route {
            name,
            action,
            any,
            needles,
            default,
        }
    }

    /// Its name, unique in the set (`handover`, `technical`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does.
    pub fn action(&self) -> &RouteAction {
        &self.action
    }

    /// The hand-over reason, when this route escalates.
    pub fn escalate(&self) -> Option<&str> {
        match &self.action {
            RouteAction::Escalate { reason } => Some(reason),
            RouteAction::Answer { .. } => None,
        }
    }

    /// The phrases it matches, as written in the set.
    pub fn phrases(&self) -> &[String] {
        &self.any
    }

    /// Whether it takes the questions no other route matched.
    pub fn is_default(&self) -> bool {
        self.default
    }

    /// Whether one of its phrases occurs in `question` (already normalised).
    pub(crate) fn matches(&self, question: &str) -> bool {
        self.needles.iter().any(|n| question.contains(n.as_str()))
    }
}

/// Lower-cases `text` and collapses whitespace runs to one space, so that
/// "Talk  to a\nPerson" matches the phrase "talk to a person".
pub(crate) fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The route for `question`: the first rule that matches, else the default.
pub(crate) fn pick<'r>(routes: &'r [Route], default: usize, question: &str) -> &'r Route {
    let question = normalise(question);
    routes
        .iter()
        .find(|r| r.matches(&question))
        .unwrap_or(&routes[default])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_lowercases_and_collapses_whitespace() {
        assert_eq!(normalise("  Talk\tto  a\nPERSON "), "talk to a person");
        assert_eq!(normalise("ÉCLAIR"), "éclair");
    }
}
