//! Reading a set from disk: a folder (its `prompt-set.toml` plus the
//! template files it names) or one file, within [`MAX_PROMPT_SET_BYTES`].
//!
//! This is the only module that touches the filesystem, and only on the path
//! its caller gave. Template file names are plain names inside the set's
//! folder, so a set cannot read files elsewhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::PromptSetError;
use crate::set::BuildError;
use crate::{PromptSet, MANIFEST_FILE, MAX_PROMPT_SET_BYTES};

/// Reads the set at `path`; see [`PromptSet::load`].
pub(crate) fn load(path: &Path) -> Result<PromptSet, PromptSetError> {
    let meta = std::fs::metadata(path).map_err(|source| PromptSetError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (file, dir) = if meta.is_dir() {
        (path.join(MANIFEST_FILE), path.to_owned())
    } else {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        (path.to_owned(), dir)
    };
    let text = read_limited(&file)?;
    let mut total = text.len() as u64;
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let built = PromptSet::build(&text, &mut |template: &str, name: &str| {
        let template_path = dir.join(name);
        files.insert(template.to_owned(), template_path.clone());
        let source = read_limited(&template_path).map_err(BuildError::Load)?;
        total += source.len() as u64;
        if total > MAX_PROMPT_SET_BYTES {
            return Err(BuildError::Load(PromptSetError::TooLarge {
                path: dir.clone(),
                size: total,
                total: true,
            }));
        }
        Ok(source)
    });
    built.map_err(|e| match e {
        BuildError::Invalid(detail) => PromptSetError::Invalid { path: file, detail },
        BuildError::Template(error) => PromptSetError::Template {
            path: files.get(&error.template).cloned().unwrap_or(file),
            error,
        },
        BuildError::Load(e) => e,
    })
}

/// The UTF-8 text of `path`, refused when larger than [`MAX_PROMPT_SET_BYTES`]
/// (checked before reading and while reading, so a growing file cannot slip
/// past).
fn read_limited(path: &Path) -> Result<String, PromptSetError> {
    let read = |source| PromptSetError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let size = file.metadata().map_err(read)?.len();
    let too_large = |size| PromptSetError::TooLarge {
        path: path.to_owned(),
        size,
        total: false,
    };
    if size > MAX_PROMPT_SET_BYTES {
        return Err(too_large(size));
    }
    let mut text = String::new();
    file.take(MAX_PROMPT_SET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_PROMPT_SET_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}
