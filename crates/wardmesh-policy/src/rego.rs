//! Native Rego handling with regorus: loading a policy directory, checking it (parse and
//! compile every entrypoint, errors with `file:line:col`), and the data document.
//!
//! The same regorus version and features as the wasm guest, so a policy that checks here
//! behaves the same inside `policy.wasm`.

use std::fs;
use std::path::{Path, PathBuf};

use regorus::Engine;

mod calls;
mod testing;

pub use testing::{RegoTestOutcome, RegoTestReport, RegoTestResult, run_rego_tests};

/// Errors in a policy directory: each names the file (and line) to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegoError {
    #[error("{file}:{line}:{col}: {message}")]
    Syntax {
        file: String,
        line: u32,
        col: u32,
        message: String,
        /// regorus' full report, with the offending line and a caret.
        detail: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("entrypoint {entrypoint}: {message}")]
    Entrypoint { entrypoint: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{0} has no .rego files")]
    NoPolicies(PathBuf),
}

/// One Rego source file, named by its path relative to the policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoFile {
    pub path: String,
    pub content: String,
}

impl RegoFile {
    /// `*_test.rego` files hold unit tests: checked and run, never shipped in a bundle.
    pub fn is_test(&self) -> bool {
        self.path.ends_with("_test.rego")
    }
}

/// Every `.rego` file under `dir` (recursively, sorted, hidden entries skipped).
pub fn load_rego_files(dir: &Path) -> Result<Vec<RegoFile>, RegoError> {
    let mut out = Vec::new();
    for path in walk(dir)? {
        if path.extension().is_some_and(|e| e == "rego") {
            let content = fs::read_to_string(&path).map_err(|source| RegoError::Io {
                path: path.clone(),
                source,
            })?;
            out.push(RegoFile {
                path: relative(dir, &path),
                content,
            });
        }
    }
    if out.is_empty() {
        return Err(RegoError::NoPolicies(dir.to_path_buf()));
    }
    Ok(out)
}

/// The data document: every `data.json` / `data.yaml` / `data.yml` under `dir`, mounted
/// at its directory's path like `opa build` does (`consent/data.json` → `data.consent`).
/// `{}` when there is none.
pub fn load_data(dir: &Path) -> Result<serde_json::Value, RegoError> {
    let mut root = serde_json::Value::Object(serde_json::Map::new());
    for path in walk(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let value: serde_json::Value = match name {
            "data.json" => {
                let bytes = fs::read(&path).map_err(|source| RegoError::Io {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_slice(&bytes).map_err(|e| RegoError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            "data.yaml" | "data.yml" => {
                let text = fs::read_to_string(&path).map_err(|source| RegoError::Io {
                    path: path.clone(),
                    source,
                })?;
                yaml_serde::from_str(&text).map_err(|e| RegoError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            _ => continue,
        };
        let rel = relative(dir, path.parent().unwrap_or(dir));
        let mount: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        merge_at(&mut root, &mount, value).map_err(|message| RegoError::Data {
            path: path.clone(),
            message,
        })?;
    }
    Ok(root)
}

fn merge_at(
    root: &mut serde_json::Value,
    mount: &[&str],
    value: serde_json::Value,
) -> Result<(), String> {
    let mut cur = root;
    for key in mount {
        let obj = cur
            .as_object_mut()
            .ok_or("data conflicts with a non-object value")?;
        cur = obj
            .entry((*key).to_string())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    merge(cur, value)
}

fn merge(into: &mut serde_json::Value, value: serde_json::Value) -> Result<(), String> {
    match (into, value) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v).map_err(|e| format!("{k}: {e}"))?,
                    None => {
                        a.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (slot, v) if slot.as_object().is_some_and(|o| o.is_empty()) => {
            *slot = v;
            Ok(())
        }
        _ => Err("two data files set the same path".into()),
    }
}

/// A regorus engine with `files` added (Rego v1, OPA's non-strict builtin errors) and
/// `data` loaded. Parse errors name the file, line and column.
pub fn engine_with(files: &[RegoFile], data: &serde_json::Value) -> Result<Engine, RegoError> {
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(false);
    for f in files {
        engine
            .add_policy(f.path.clone(), f.content.clone())
            .map_err(|e| located(&f.path, &e))?;
    }
    let data = regorus::Value::from(data.clone());
    engine.add_data(data).map_err(|e| RegoError::File {
        file: "data.json".into(),
        message: e.to_string(),
    })?;
    Ok(engine)
}

/// Parses `files`, checks that every called function exists in the guest, and compiles
/// each entrypoint (`wardmesh/authz/decision`), so such mistakes and missing rules fail
/// here and not in the agent.
pub fn check(
    files: &[RegoFile],
    data: &serde_json::Value,
    entrypoints: &[String],
) -> Result<(), RegoError> {
    let mut engine = engine_with(files, data)?;
    calls::check_calls(&mut engine)?;
    for ep in entrypoints {
        validate_entrypoint(ep)?;
        let rule: regorus::Rc<str> = rule_path(ep).into();
        let mut e = engine.clone();
        e.compile_with_entrypoint(&rule)
            .map_err(|err| match located_opt(&err) {
                Some(loc) => loc,
                None => RegoError::Entrypoint {
                    entrypoint: ep.clone(),
                    message: first_line(&err.to_string()),
                },
            })?;
    }
    Ok(())
}

/// Entrypoints are `/`-separated rule paths below `data`: `wardmesh/authz/decision`.
pub fn validate_entrypoint(ep: &str) -> Result<(), RegoError> {
    let ok = !ep.is_empty()
        && ep.split('/').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(RegoError::Entrypoint {
            entrypoint: ep.to_string(),
            message: "must look like package/path/rule (letters, digits, `_`, `-`)".into(),
        })
    }
}

/// `wardmesh/authz/decision` → `data.wardmesh.authz.decision` (the guest does the same).
pub fn rule_path(entrypoint: &str) -> String {
    let mut out = String::from("data");
    for part in entrypoint.split('/').filter(|p| !p.is_empty()) {
        let ident = part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            out.push('.');
            out.push_str(part);
        } else {
            out.push_str(&format!("[{part:?}]"));
        }
    }
    out
}

/// Turns a regorus error (`--> file:line:col` … `error: message`) into a [`RegoError`].
fn located(file: &str, err: &anyhow::Error) -> RegoError {
    located_opt(err).unwrap_or_else(|| RegoError::File {
        file: file.to_string(),
        message: first_line(&err.to_string()),
    })
}

fn located_opt(err: &anyhow::Error) -> Option<RegoError> {
    let text = err.to_string();
    let at = text.find("--> ")?;
    let loc = text[at + 4..].lines().next()?.trim();
    let mut parts = loc.rsplitn(3, ':');
    let col = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?.to_string();
    let message = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| first_line(&text));
    Some(RegoError::Syntax {
        file,
        line,
        col,
        message,
        detail: text.trim().to_string(),
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, RegoError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).map_err(|source| RegoError::Io {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| RegoError::Io {
                path: d.clone(),
                source,
            })?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let ty = entry.file_type().map_err(|source| RegoError::Io {
                path: entry.path(),
                source,
            })?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn relative(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}
