//! Manifest files named by `-f`: files, directories (their *.yaml, *.yml, *.json, sorted), `-`.

use std::io::Read;
use std::path::{Path, PathBuf};

use topo_schema::api::SourceFile;

/// How standard input is named in error messages.
pub const STDIN_NAME: &str = "<stdin>";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("{path} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("standard input (-f -) can be given only once")]
    StdinTwice,
    #[error("no manifest files in directory {0} (looked for *.yaml, *.yml, *.json)")]
    EmptyDir(String),
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read_dir_sorted(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let err = |source| InputError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                read_dir_sorted(&p, true, out)?;
            }
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The files to send, in order. `stdin` is read only when `-` is named.
pub fn collect(
    args: &[String],
    recursive: bool,
    stdin: &mut dyn Read,
) -> Result<Vec<SourceFile>, InputError> {
    let mut files = Vec::new();
    let mut stdin_used = false;
    for arg in args {
        if arg == "-" {
            if stdin_used {
                return Err(InputError::StdinTwice);
            }
            stdin_used = true;
            let mut content = String::new();
            stdin
                .read_to_string(&mut content)
                .map_err(InputError::Stdin)?;
            files.push(SourceFile {
                name: STDIN_NAME.into(),
                content,
            });
            continue;
        }
        let path = Path::new(arg);
        if path.is_dir() {
            let mut found = Vec::new();
            read_dir_sorted(path, recursive, &mut found)?;
            if found.is_empty() {
                return Err(InputError::EmptyDir(arg.clone()));
            }
            for p in found {
                files.push(read_file(&p)?);
            }
        } else {
            files.push(read_file(path)?);
        }
    }
    Ok(files)
}

fn read_file(p: &Path) -> Result<SourceFile, InputError> {
    let name = p.display().to_string();
    let bytes = std::fs::read(p).map_err(|source| InputError::Read {
        path: name.clone(),
        source,
    })?;
    let content =
        String::from_utf8(bytes).map_err(|_| InputError::NotUtf8 { path: name.clone() })?;
    Ok(SourceFile { name, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_sorted_and_filtered() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b.yaml"), "b").unwrap();
        std::fs::write(d.path().join("a.json"), "a").unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/c.yml"), "c").unwrap();
        let dir = d.path().display().to_string();
        let got = collect(std::slice::from_ref(&dir), false, &mut std::io::empty()).unwrap();
        let contents: Vec<&str> = got.iter().map(|f| f.content.as_str()).collect();
        assert_eq!(contents, ["a", "b"]);
        let got = collect(&[dir], true, &mut std::io::empty()).unwrap();
        let contents: Vec<&str> = got.iter().map(|f| f.content.as_str()).collect();
        assert_eq!(contents, ["a", "b", "c"]);
    }

    #[test]
    fn stdin_and_missing_files() {
        let got = collect(&["-".into()], false, &mut "kind: Node".as_bytes()).unwrap();
        assert_eq!(got[0].name, STDIN_NAME);
        assert_eq!(got[0].content, "kind: Node");
        assert!(matches!(
            collect(&["-".into(), "-".into()], false, &mut std::io::empty()),
            Err(InputError::StdinTwice)
        ));
        assert!(matches!(
            collect(
                &["/nonexistent/x.yaml".into()],
                false,
                &mut std::io::empty()
            ),
            Err(InputError::Read { .. })
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            collect(
                &[d.path().display().to_string()],
                false,
                &mut std::io::empty()
            ),
            Err(InputError::EmptyDir(_))
        ));
    }
}
