//! Compiling a set's templates: one minijinja [`Environment`] per set, with
//! auto-escaping off (prompts are plain text) and strict undefined values,
//! checked at load so that a broken set is refused before any customer asks.
//!
//! Checks, in order, for every template: it parses; it names only variables
//! its scope can see (static analysis, so branches not taken are covered
//! too); it renders with a sample question, with and without sources and
//! history; and a route template's output contains the question.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use crate::error::TemplateError;
use crate::render::{answer_context, prefix_context, ContextChunk, Message};

/// Instructions one render may execute. A kiosk prompt needs a few hundred;
/// the cap turns a runaway loop into an error instead of a hung kiosk.
const FUEL: u64 = 2_000_000;

/// Names templates see besides the set's variables.
pub(crate) const ANSWER_NAMES: [&str; 3] = ["question", "context", "history"];

/// Variable names a set may not define: the per-answer values and words
/// minijinja gives a meaning of its own.
pub(crate) const RESERVED: [&str; 12] = [
    "question", "context", "history", "loop", "self", "super", "caller", "varargs", "kwargs",
    "true", "false", "none",
];

/// A fresh environment with the settings every set uses.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Block tags on their own lines leave no blank lines behind.
    if let Ok(syntax) = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_fuel(Some(FUEL));
    env
}

/// Turns a minijinja error into one that names the template and line. An
/// error inside an included template is reported where it happened.
pub(crate) fn template_error(fallback: &str, e: &minijinja::Error) -> TemplateError {
    let mut innermost = e;
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(jinja) = inner.downcast_ref::<minijinja::Error>() {
            innermost = jinja;
        }
        source = inner.source();
    }
    let mut detail = match innermost.detail() {
        Some(d) => format!("{}: {d}", innermost.kind()),
        None => innermost.kind().to_string(),
    };
    let mut source = std::error::Error::source(innermost);
    while let Some(inner) = source {
        detail.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    TemplateError {
        template: innermost.name().or(e.name()).unwrap_or(fallback).to_owned(),
        line: innermost.line(),
        detail,
    }
}

/// Where a template's names come from, for the unknown-variable check.
pub(crate) enum Scope<'a> {
    /// System template and examples: variables only.
    Prefix(&'a BTreeMap<String, String>),
    /// Route templates and partials: variables and the answer values.
    Answer(&'a BTreeMap<String, String>),
}

impl Scope<'_> {
    fn allowed(&self) -> BTreeSet<&str> {
        match self {
            Scope::Prefix(vars) => vars.keys().map(String::as_str).collect(),
            Scope::Answer(vars) => vars
                .keys()
                .map(String::as_str)
                .chain(ANSWER_NAMES)
                .collect(),
        }
    }

    fn explain(&self) -> String {
        let names: Vec<&str> = self.allowed().into_iter().collect();
        let names = if names.is_empty() {
            "none (the set has no [variables])".to_owned()
        } else {
            names.join(", ")
        };
        match self {
            Scope::Prefix(_) => format!(
                "the system template and examples are rendered once, with [variables] only, \
                 so that they are the same for every question; they can use: {names}"
            ),
            Scope::Answer(_) => format!("route templates can use: {names}"),
        }
    }
}

/// Refuses a template that names a variable its scope does not define.
pub(crate) fn check_names(
    env: &Environment<'static>,
    name: &str,
    scope: &Scope<'_>,
) -> Result<(), TemplateError> {
    let template = env
        .get_template(name)
        .map_err(|e| template_error(name, &e))?;
    let allowed = scope.allowed();
    let globals: BTreeSet<&str> = env.globals().map(|(k, _)| k).collect();
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !allowed.contains(v.as_str()) && !globals.contains(v.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(var) => Err(TemplateError {
            template: name.to_owned(),
            line: line_of(template.source(), var),
            detail: format!(
                "unknown variable `{var}`; {} (add it to [variables] or correct the spelling)",
                scope.explain()
            ),
        }),
    }
}

/// The first line where `word` occurs as a whole word, 1-based.
fn line_of(source: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    source
        .lines()
        .position(|line| {
            line.match_indices(word).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + word.len()..].chars().next();
                !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
            })
        })
        .map(|i| i + 1)
}

/// Renders the system template once: the first message of every chat.
pub(crate) fn render_prefix_template(
    env: &Environment<'static>,
    name: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    check_names(env, name, &Scope::Prefix(variables))?;
    let text = env
        .get_template(name)
        .and_then(|t| t.render(prefix_context(variables)))
        .map_err(|e| template_error(name, &e))?;
    non_empty(name, text)
}

/// Renders a one-off prefix template (an example's user or assistant text)
/// that is not kept in the environment.
pub(crate) fn render_prefix_str(
    env: &mut Environment<'static>,
    name: &str,
    source: &str,
    variables: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    env.add_template_owned(name.to_owned(), source.to_owned())
        .map_err(|e| template_error(name, &e))?;
    let rendered = render_prefix_template(env, name, variables);
    env.remove_template(name);
    rendered
}

fn non_empty(name: &str, text: String) -> Result<String, TemplateError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TemplateError {
            template: name.to_owned(),
            line: None,
            detail: "renders to nothing".into(),
        });
    }
    Ok(text.to_owned())
}

/// The question used to try route templates at load.
const SAMPLE_QUESTION: &str = "Sample question: how do I descale the machine?";

/// Checks a route template or partial against sample answers. `is_route`
/// adds the rule that the output must contain the question.
pub(crate) fn check_answer_template(
    env: &Environment<'static>,
    name: &str,
    variables: &BTreeMap<String, String>,
    is_route: bool,
) -> Result<(), TemplateError> {
    check_names(env, name, &Scope::Answer(variables))?;
    let template = env
        .get_template(name)
        .map_err(|e| template_error(name, &e))?;
    let context = [
        ContextChunk {
            marker: 1,
            source: "Sample manual".into(),
            section: "Sample section".into(),
            text: "Sample passage one.".into(),
        },
        ContextChunk {
            marker: 2,
            source: "Sample FAQ".into(),
            section: String::new(),
            text: "Sample passage two.".into(),
        },
    ];
    let history = [
        Message::new("user", "Sample earlier question?"),
        Message::new("assistant", "Sample earlier answer [1]."),
    ];
    let samples: [(&[ContextChunk], &[Message]); 2] = [(&context, &history), (&[], &[])];
    for (context, history) in samples {
        let values: Value = answer_context(variables, SAMPLE_QUESTION, context, history);
        let text = template
            .render(values)
            .map_err(|e| template_error(name, &e))?;
        if is_route && !text.contains(SAMPLE_QUESTION) {
            return Err(TemplateError {
                template: name.to_owned(),
                line: None,
                detail: "the output does not contain the question; a route template must \
                         render `{{ question }}` (last, after the sources)"
                    .into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_finds_whole_words_only() {
        assert_eq!(
            line_of("a\n{{ questions }}\n{{ question }}", "question"),
            Some(3)
        );
        assert_eq!(line_of("nothing here", "question"), None);
    }
}
