//! [`PromptSet`]: a validated, compiled set, built from either TOML form,
//! and what it does per question (route, render) and for the fleet (pack).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use minijinja::Environment;

use crate::compile::{self, check_answer_template, render_prefix_str, render_prefix_template};
use crate::error::{PromptSetError, RenderError, TemplateError};
use crate::manifest::{self, Example, Form, LegacyFile, Manifest, RouteEntry, TemplateEntry};
use crate::render::{
    answer_context, check_markers, AnswerPrompt, HistoryLimits, Message, Rendered,
};
use crate::route::{self, Route, RouteAction};

/// The question template of legacy sets and of [`PromptSet::builtin`]:
/// numbered sources first, the question last.
const ANSWER_TEMPLATE: &str = include_str!("../builtin/answer.j2");
const BUILTIN_MANIFEST: &str = include_str!("../builtin/prompt-set.toml");
const BUILTIN_FILES: [(&str, &str); 2] = [
    ("system.j2", include_str!("../builtin/system.j2")),
    ("answer.j2", ANSWER_TEMPLATE),
];

/// The name legacy sets give their one route and its template.
const LEGACY_ROUTE: &str = "default";
const LEGACY_TEMPLATE: &str = "answer";

/// A validated prompt set: system prompt, examples, routes and compiled
/// templates. Two sets are equal when their sources are (compiled state is
/// derived from them), so a folder equals its packed form.
#[derive(Clone)]
pub struct PromptSet {
    name: String,
    version: String,
    variables: BTreeMap<String, String>,
    history: HistoryLimits,
    routes: Vec<Route>,
    default_route: usize,
    source: Source,
    /// System message and examples, rendered once at load.
    prefix: Vec<Message>,
    env: Environment<'static>,
}

/// What the set was written as, for [`PromptSet::pack`] and equality.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Legacy {
        system: String,
        examples: Vec<Example>,
    },
    Templated {
        templates: BTreeMap<String, String>,
        examples: Vec<Example>,
    },
}

impl PartialEq for PromptSet {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.variables == other.variables
            && self.history == other.history
            && self.routes == other.routes
            && self.source == other.source
    }
}

impl Eq for PromptSet {}

impl fmt::Debug for PromptSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptSet")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("variables", &self.variables)
            .field("history", &self.history)
            .field("routes", &self.routes)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why building a set failed, before the caller attaches a path.
pub(crate) enum BuildError {
    /// A TOML or format-rule problem.
    Invalid(String),
    /// A template problem.
    Template(TemplateError),
    /// A template file could not be read.
    Load(PromptSetError),
}

impl From<TemplateError> for BuildError {
    fn from(e: TemplateError) -> Self {
        BuildError::Template(e)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Invalid(detail) => f.write_str(detail),
            BuildError::Template(e) => write!(f, "{e}; fix the template"),
            BuildError::Load(e) => write!(f, "{e}"),
        }
    }
}

/// Supplies a template file's text: `(template key, file name) -> source`.
pub(crate) type Resolve<'a> = dyn FnMut(&str, &str) -> Result<String, BuildError> + 'a;

fn invalid<T>(detail: impl Into<String>) -> Result<T, BuildError> {
    Err(BuildError::Invalid(detail.into()))
}

impl PromptSet {
    /// Reads and validates the set at `path`: a folder holding
    /// `prompt-set.toml` and its template files, or one TOML file (legacy or
    /// packed; a manifest file's named templates are read from beside it).
    /// Every file, and all of a folder's files together, must fit in
    /// [`MAX_PROMPT_SET_BYTES`](crate::MAX_PROMPT_SET_BYTES).
    pub fn load(path: &Path) -> Result<Self, PromptSetError> {
        crate::load::load(path)
    }

    /// Parses and validates a single-file set: the legacy form or the packed
    /// form. A `[templates]` entry naming a file is refused, as there is no
    /// folder to read it from. The error is one line saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::build(text, &mut |template: &str, file: &str| {
            invalid(format!(
                "templates.{template} names the file `{file}`, but a single-file set carries \
                 its templates inline; ship the output of PromptSet::pack, or load the folder"
            ))
        })
        .map_err(|e| e.to_string())
    }

    /// The generic set used when none is configured: a short system prompt
    /// about answering from numbered sources, no examples, one route.
    pub fn builtin() -> PromptSet {
        let mut resolve = |_: &str, file: &str| match BUILTIN_FILES.iter().find(|(f, _)| *f == file)
        {
            Some((_, source)) => Ok((*source).to_owned()),
            None => invalid(format!("no built-in file {file}")),
        };
        match Self::build(BUILTIN_MANIFEST, &mut resolve) {
            Ok(set) => set,
            // Compiled-in text, checked by `the_builtin_set_is_valid_and_matches_its_folder`.
            Err(e) => panic!("the built-in prompt set is invalid: {e}"),
        }
    }

    /// Its name in the hub's catalog.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version label.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Its `[variables]` (empty for legacy sets).
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }

    /// Its routes, in matching order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The system message and examples, the same for every request: put in
    /// front of plain chats that bring no system message of their own.
    pub fn chat_prefix(&self) -> Vec<Message> {
        self.prefix.clone()
    }

    /// The route for `question`: the first whose phrases occur in it
    /// (case-insensitive), else the default route.
    pub fn route(&self, question: &str) -> &Route {
        route::pick(&self.routes, self.default_route, question)
    }

    /// The messages that answer `prompt`: the chat prefix, the latest
    /// history turns (cut to the set's `[history]` limits), and one user
    /// message rendered from the route's template. When the route
    /// escalates, `escalate` carries its reason and `messages` is empty.
    pub fn render_answer(&self, prompt: &AnswerPrompt<'_>) -> Result<Rendered, RenderError> {
        let route = self.route(prompt.question);
        let template = match &route.action {
            RouteAction::Escalate { reason } => {
                return Ok(Rendered {
                    route: route.name.clone(),
                    escalate: Some(reason.clone()),
                    messages: Vec::new(),
                })
            }
            RouteAction::Answer { template } => template,
        };
        check_markers(prompt.context)?;
        let history = self.history.apply(prompt.history)?;
        let values = answer_context(&self.variables, prompt.question, prompt.context, &history);
        let text = self
            .env
            .get_template(template)
            .and_then(|t| t.render(values))
            .map_err(|e| RenderError::Template {
                route: route.name.clone(),
                error: compile::template_error(template, &e),
            })?;
        let mut messages = Vec::with_capacity(self.prefix.len() + history.len() + 1);
        messages.extend(self.prefix.iter().cloned());
        messages.extend(history);
        messages.push(Message::new("user", text.trim()));
        Ok(Rendered {
            route: route.name.clone(),
            escalate: None,
            messages,
        })
    }

    /// The set as one TOML file, templates inline, that [`PromptSet::parse`]
    /// reads back into an equal set: what the hub signs and ships. A legacy
    /// set packs to the legacy form.
    pub fn pack(&self) -> String {
        let body = match &self.source {
            Source::Legacy { system, examples } => toml::to_string(&LegacyFile {
                name: self.name.clone(),
                version: self.version.clone(),
                system: system.clone(),
                examples: examples.clone(),
            }),
            Source::Templated {
                templates,
                examples,
            } => toml::to_string(&Manifest {
                name: self.name.clone(),
                version: self.version.clone(),
                variables: self.variables.clone(),
                history: self.history,
                templates: templates
                    .iter()
                    .map(|(k, v)| (k.clone(), TemplateEntry::Inline(v.clone())))
                    .collect(),
                examples: examples.clone(),
                routes: self.routes.iter().map(route_entry).collect(),
            }),
        };
        // Strings, maps and arrays of tables always serialize; only types
        // TOML lacks (unit, top-level None) can fail.
        let body = body.unwrap_or_else(|e| panic!("a prompt set always serializes: {e}"));
        format!(
            "# Packed prompt set {} version {}, written by outpost-prompts.\n\
             # Edit the folder it was packed from, not this file.\n\n{body}",
            self.name, self.version
        )
    }

    /// Builds a set from a text, reading named template files via `resolve`.
    pub(crate) fn build(text: &str, resolve: &mut Resolve<'_>) -> Result<Self, BuildError> {
        match manifest::read(text).map_err(BuildError::Invalid)? {
            Form::Legacy(file) => Self::from_legacy(file),
            Form::Templated(manifest) => Self::from_manifest(manifest, resolve),
        }
    }

    fn from_legacy(file: LegacyFile) -> Result<Self, BuildError> {
        // The checks and messages of the single-file format, unchanged.
        if file.system.trim().is_empty() {
            return invalid("`system` must not be empty");
        }
        check_identity(&file.name, &file.version)?;
        check_examples(&file.examples)?;
        let mut env = compile::environment();
        env.add_template_owned(LEGACY_TEMPLATE, ANSWER_TEMPLATE)
            .map_err(|e| compile::template_error(LEGACY_TEMPLATE, &e))?;
        let variables = BTreeMap::new();
        check_answer_template(&env, LEGACY_TEMPLATE, &variables, true)?;
        let mut prefix = vec![Message::new("system", file.system.clone())];
        for e in &file.examples {
            prefix.push(Message::new("user", e.user.clone()));
            prefix.push(Message::new("assistant", e.assistant.clone()));
        }
        let route = Route::new(
            LEGACY_ROUTE.to_owned(),
            RouteAction::Answer {
                template: LEGACY_TEMPLATE.to_owned(),
            },
            Vec::new(),
            true,
        );
        Ok(PromptSet {
            name: file.name,
            version: file.version,
            variables,
            history: HistoryLimits::default(),
            routes: vec![route],
            default_route: 0,
            source: Source::Legacy {
                system: file.system,
                examples: file.examples,
            },
            prefix,
            env,
        })
    }

    fn from_manifest(m: Manifest, resolve: &mut Resolve<'_>) -> Result<Self, BuildError> {
        check_identity(&m.name, &m.version)?;
        for name in m.variables.keys() {
            check_variable_name(name)?;
        }
        if m.history.max_chars == 0 {
            return invalid(
                "history.max_chars must be at least 1; to send no history, set history.max_messages = 0",
            );
        }
        check_examples(&m.examples)?;
        if !m.templates.contains_key("system") {
            return invalid("[templates] has no `system`; add system = \"system.j2\"");
        }
        let mut templates = BTreeMap::new();
        for (key, entry) in &m.templates {
            check_template_key(key)?;
            let source = match entry {
                TemplateEntry::Inline(source) => source.clone(),
                TemplateEntry::File(file) => {
                    check_file_name(key, file)?;
                    resolve(key, file)?
                }
            };
            templates.insert(key.clone(), source);
        }
        let (routes, default_route) = build_routes(&m.routes, &templates)?;

        let mut env = compile::environment();
        for (key, source) in &templates {
            env.add_template_owned(key.clone(), source.clone())
                .map_err(|e| compile::template_error(key, &e))?;
        }
        let mut prefix = vec![Message::new(
            "system",
            render_prefix_template(&env, "system", &m.variables)?,
        )];
        for (i, e) in m.examples.iter().enumerate() {
            for (role, source) in [("user", &e.user), ("assistant", &e.assistant)] {
                let name = format!("examples[{i}].{role}");
                let text = render_prefix_str(&mut env, &name, source, &m.variables)?;
                prefix.push(Message::new(role, text));
            }
        }
        let route_templates: BTreeSet<&str> = routes
            .iter()
            .filter_map(|r| match &r.action {
                RouteAction::Answer { template } => Some(template.as_str()),
                RouteAction::Escalate { .. } => None,
            })
            .collect();
        // Partials first, so an error inside one is reported there rather
        // than through the route template that includes it.
        let mut answer_templates: Vec<(bool, &String)> = templates
            .keys()
            .filter(|k| *k != "system")
            .map(|k| (route_templates.contains(k.as_str()), k))
            .collect();
        answer_templates.sort();
        for (is_route, key) in answer_templates {
            check_answer_template(&env, key, &m.variables, is_route)?;
        }
        Ok(PromptSet {
            name: m.name,
            version: m.version,
            variables: m.variables,
            history: m.history,
            routes,
            default_route,
            source: Source::Templated {
                templates,
                examples: m.examples,
            },
            prefix,
            env,
        })
    }
}

fn check_identity(name: &str, version: &str) -> Result<(), BuildError> {
    if name.trim().is_empty() || version.trim().is_empty() {
        return invalid("`name` and `version` must not be empty");
    }
    Ok(())
}

fn check_examples(examples: &[Example]) -> Result<(), BuildError> {
    match examples
        .iter()
        .position(|e| e.user.trim().is_empty() || e.assistant.trim().is_empty())
    {
        Some(i) => invalid(format!(
            "examples[{i}]: `user` and `assistant` must not be empty"
        )),
        None => Ok(()),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_variable_name(name: &str) -> Result<(), BuildError> {
    if !is_identifier(name) {
        return invalid(format!(
            "variables.{name}: a variable name is letters, digits and `_`, not starting with a digit"
        ));
    }
    if compile::RESERVED.contains(&name) {
        return invalid(format!(
            "variables.{name}: `{name}` is reserved (question, context and history are set per \
             answer); choose another name"
        ));
    }
    Ok(())
}

fn check_template_key(key: &str) -> Result<(), BuildError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return invalid(format!(
            "templates.{key}: a template name is letters, digits, `_` and `-`"
        ));
    }
    Ok(())
}

fn check_file_name(key: &str, file: &str) -> Result<(), BuildError> {
    let ok = !file.is_empty() && !file.starts_with('.') && !file.contains(['/', '\\', '\0', ':']);
    if !ok {
        return invalid(format!(
            "templates.{key}: `{file}` must be the plain name of a file in the set's folder \
             (no directories, not hidden)"
        ));
    }
    Ok(())
}

/// Validates `[[routes]]`; returns them and the index of the default route.
fn build_routes(
    entries: &[RouteEntry],
    templates: &BTreeMap<String, String>,
) -> Result<(Vec<Route>, usize), BuildError> {
    let mut routes = Vec::with_capacity(entries.len());
    let mut default = None;
    let mut names = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!("routes[{i}] (`{}`)", e.name);
        if e.name.trim().is_empty() {
            return invalid(format!("routes[{i}]: `name` must not be empty"));
        }
        if !names.insert(e.name.as_str()) {
            return invalid(format!(
                "{at}: another route has the same name; names must be unique"
            ));
        }
        if let Some(j) = e.any.iter().position(|p| route::normalise(p).is_empty()) {
            return invalid(format!(
                "{at}: any[{j}] is empty; it would match every question"
            ));
        }
        if !e.default && e.any.is_empty() {
            return invalid(format!(
                "{at}: no `any` phrases and not `default = true`, so it can never match"
            ));
        }
        let action = if e.escalate {
            if e.template.is_some() {
                return invalid(format!(
                    "{at}: escalate = true hands over without answering; remove `template`"
                ));
            }
            match e.reason.as_deref().map(str::trim) {
                Some(reason) if !reason.is_empty() => RouteAction::Escalate {
                    reason: reason.to_owned(),
                },
                _ => {
                    return invalid(format!(
                        "{at}: escalate = true needs a `reason` label, e.g. reason = \"asked_for_person\""
                    ))
                }
            }
        } else {
            if e.reason.is_some() {
                return invalid(format!(
                    "{at}: `reason` is for escalating routes; add escalate = true or remove it"
                ));
            }
            let Some(template) = &e.template else {
                return invalid(format!(
                    "{at}: needs `template` (a key of [templates]) or escalate = true"
                ));
            };
            if template == "system" || !templates.contains_key(template) {
                let known: Vec<&str> = templates
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != "system")
                    .collect();
                return invalid(format!(
                    "{at}: template `{template}` is not a route template of [templates] (known: {})",
                    known.join(", ")
                ));
            }
            RouteAction::Answer {
                template: template.clone(),
            }
        };
        if e.default {
            if let Some(first) = default {
                return invalid(format!(
                    "{at}: routes[{first}] is already the default; exactly one route has default = true"
                ));
            }
            default = Some(i);
        }
        routes.push(Route::new(e.name.clone(), action, e.any.clone(), e.default));
    }
    match default {
        Some(d) => Ok((routes, d)),
        None => invalid(
            "no route has default = true; add a catch-all route last, e.g. \
             [[routes]] name = \"general\", template = \"general\", default = true",
        ),
    }
}

fn route_entry(route: &Route) -> RouteEntry {
    let (escalate, reason, template) = match &route.action {
        RouteAction::Escalate { reason } => (true, Some(reason.clone()), None),
        RouteAction::Answer { template } => (false, None, Some(template.clone())),
    };
    RouteEntry {
        name: route.name.clone(),
        any: route.any.clone(),
        default: route.default,
        escalate,
        reason,
        template,
    }
}
