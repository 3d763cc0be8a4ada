//! The TOML side: the raw forms a set is written in, telling them apart, and
//! writing the packed form back.
//!
//! A text with a top-level `system` key is a legacy set and is read exactly
//! as before templates existed (same struct, same `deny_unknown_fields`,
//! same messages). Any other text must have `[templates]` and is a templated
//! set: a folder's `prompt-set.toml` (templates named by file) or a packed
//! file (templates inline as `{ source = "…" }`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::render::HistoryLimits;

/// One user/assistant example pair. In a templated set both strings are
/// templates rendered once with `[variables]`; in a legacy set they are
/// used as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The example question.
    pub user: String,
    /// The answer the model should imitate.
    pub assistant: String,
}

/// The legacy single-file set, unchanged.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LegacyFile {
    pub name: String,
    pub version: String,
    pub system: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Example>,
}

/// A templated set as written (folder manifest or packed file).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_default_history")]
    pub history: HistoryLimits,
    pub templates: BTreeMap<String, TemplateEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Example>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteEntry>,
}

fn is_default_history(h: &HistoryLimits) -> bool {
    *h == HistoryLimits::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub escalate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A `[templates]` value: a file next to the manifest, or the source inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateEntry {
    /// `system = "system.j2"`.
    File(String),
    /// `system = { source = "…" }` (what `pack` writes).
    Inline(String),
}

impl Serialize for TemplateEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Inline<'a> {
            source: &'a str,
        }
        match self {
            TemplateEntry::File(file) => s.serialize_str(file),
            TemplateEntry::Inline(source) => Inline { source }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TemplateEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = TemplateEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a template file name ("system.j2") or a table { source = "…" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TemplateEntry, E> {
                Ok(TemplateEntry::File(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TemplateEntry, A::Error> {
                let mut source = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "source" {
                        return Err(de::Error::unknown_field(&key, &["source"]));
                    }
                    if source.is_some() {
                        return Err(de::Error::duplicate_field("source"));
                    }
                    source = Some(map.next_value::<String>()?);
                }
                source
                    .map(TemplateEntry::Inline)
                    .ok_or_else(|| de::Error::missing_field("source"))
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

/// A parsed text, before validation.
pub(crate) enum Form {
    Legacy(LegacyFile),
    Templated(Manifest),
}

fn toml_message(e: toml::de::Error) -> String {
    e.to_string().trim().to_owned()
}

/// Tells the forms apart and deserializes the text.
pub(crate) fn read(text: &str) -> Result<Form, String> {
    let table: toml::Table = toml::from_str(text).map_err(toml_message)?;
    if table.contains_key("system") {
        return toml::from_str(text).map(Form::Legacy).map_err(toml_message);
    }
    if !table.contains_key("templates") {
        return Err(
            "neither `system` (a legacy single-file set) nor `[templates]` \
                    (a templated set) is present; add one of them"
                .into(),
        );
    }
    toml::from_str(text)
        .map(Form::Templated)
        .map_err(toml_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_entry_is_a_file_name_or_an_inline_source() {
        let m: BTreeMap<String, TemplateEntry> =
            toml::from_str("a = \"a.j2\"\nb = { source = \"hi\" }\n").unwrap();
        assert_eq!(m["a"], TemplateEntry::File("a.j2".into()));
        assert_eq!(m["b"], TemplateEntry::Inline("hi".into()));
        let err = toml::from_str::<BTreeMap<String, TemplateEntry>>("a = { src = \"x\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("src"), "{err}");
        let err = toml::from_str::<BTreeMap<String, TemplateEntry>>("a = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("template file name"), "{err}");
    }
}
