//! `topoctl edit KIND/NAME`: the object as YAML in the user's editor ($KUBE_EDITOR, else
//! $EDITOR, else vi), written back on save, as kubectl does it.
//!
//! One round is: compose the file (a comment header, the errors of the last round if any,
//! the YAML), run the editor, judge what was saved ([`judge`]: empty, unchanged, the same
//! invalid text again, or changed), and submit a change: parsed and validated here first,
//! then a PUT carrying the resourceVersion the object had when it was opened. An invalid
//! object reopens the editor with the errors as comments at the top; a conflict (someone
//! changed the object meanwhile) ends with an error naming it and the edited copy kept in
//! its temporary file. The editor is run without a shell: its setting is split at spaces.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use topo_schema::api::{ApiError, ErrorReason, SourceFile};
use topo_schema::{ObjectRef, Resource};

use super::{CliError, Ctx, emit, parse_refs, warn};
use crate::args;
use crate::client::Client;
use crate::output::{self, Format};

/// The editor when neither $KUBE_EDITOR nor $EDITOR is set.
pub const DEFAULT_EDITOR: &str = "vi";

const HEADER: &str = "\
# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
# status and the server-set fields of metadata (uid, generation, creationTimestamp) are
# written by the controller: changes to them are ignored.
#
";

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("failed to write the file to edit {path}: {source}")]
    WriteFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the edited file {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the editor {editor:?}: {source} (set KUBE_EDITOR or EDITOR)")]
    EditorStart {
        editor: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the editor {editor:?} failed ({status}); nothing was changed")]
    EditorFailed { editor: String, status: String },
}

/// What was saved, compared with what was opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing but comments and blanks: the edit is cancelled.
    Empty,
    /// The object as it was opened.
    Unchanged,
    /// The same text that was just refused: the user gave up.
    SameInvalid,
    Changed,
}

/// How a submitted change ended.
enum Submitted {
    Done,
    /// Refused as invalid (here or by the controller): one line per error, to show in the
    /// reopened file.
    Invalid(Vec<String>),
    /// Refused otherwise (conflict, forbidden, ...): the edit ends.
    Refused(CliError),
}

pub(crate) async fn edit(ctx: &Ctx, a: args::EditArgs) -> Result<i32, CliError> {
    let target = match parse_refs(&a.objects)?.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(CliError::Usage(
                "edit one object at a time: KIND/NAME or KIND NAME".into(),
            ));
        }
    };
    let client = ctx.client()?;
    let original = match client.get(target.kind, &target.name).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Err(CliError::NotFound(target)),
        Err(e) => return Err(CliError::object(&target, e)),
    };
    let opened = output::document(&original, Format::Yaml)?;
    let file = EditFile::create(&target)?;
    let editor = ctx.env.editor.as_deref().unwrap_or(DEFAULT_EDITOR);
    let mut body = opened.clone();
    let mut errors: Vec<String> = Vec::new();
    loop {
        file.write(&compose(&target, &errors, &body))?;
        run_editor(editor, file.path())?;
        let edited = strip_comments(&file.read()?);
        match judge(&edited, &opened, &body, !errors.is_empty()) {
            Verdict::Empty => return cancelled(&file, "Edit cancelled, saved file was empty."),
            Verdict::Unchanged => return cancelled(&file, "Edit cancelled, no changes made."),
            Verdict::SameInvalid => {
                return Err(CliError::Object {
                    object: target,
                    message: format!(
                        "Edit cancelled, no valid changes were saved; your edited copy is in {}",
                        file.shown()
                    ),
                });
            }
            Verdict::Changed => body = edited,
        }
        let rv = original.metadata().resource_version.clone();
        match submit(&client, &target, &body, rv).await {
            Submitted::Done => {
                file.remove();
                emit(&format!("{target} edited\n"))?;
                return Ok(0);
            }
            Submitted::Invalid(why) => errors = why,
            Submitted::Refused(e) => {
                file.write(&body)?;
                return Err(kept_copy(e, &file));
            }
        }
    }
}

fn cancelled(file: &EditFile, message: &str) -> Result<i32, CliError> {
    file.remove();
    warn(message);
    Ok(0)
}

/// A refusal that ends the edit, naming where the edited copy is.
fn kept_copy(e: CliError, file: &EditFile) -> CliError {
    match e {
        CliError::Object { object, message } => CliError::Object {
            object,
            message: format!("{message}; your edited copy is saved in {}", file.shown()),
        },
        other => other,
    }
}

/// The file the editor opens: the header, the errors of the last round, the object.
pub(crate) fn compose(target: &ObjectRef, errors: &[String], body: &str) -> String {
    let mut s = HEADER.to_string();
    if !errors.is_empty() {
        s.push_str(&format!("# {target} was not valid:\n"));
        for e in errors {
            for (i, line) in e.lines().enumerate() {
                s.push_str(if i == 0 { "# * " } else { "#   " });
                s.push_str(line);
                s.push('\n');
            }
        }
        s.push_str("#\n");
    }
    s.push_str(body);
    s
}

/// The saved text without its comment lines (kubectl drops lines starting with '#').
pub(crate) fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What the saved text (comments stripped) amounts to. `refused`: `last` was just refused.
pub(crate) fn judge(edited: &str, opened: &str, last: &str, refused: bool) -> Verdict {
    let same = |a: &str, b: &str| {
        a.trim_end() == b.trim_end()
            || matches!(
                (serde_yaml::from_str::<serde_yaml::Value>(a), serde_yaml::from_str::<serde_yaml::Value>(b)),
                (Ok(x), Ok(y)) if x == y
            )
    };
    if edited.trim().is_empty() {
        Verdict::Empty
    } else if refused && same(edited, last) {
        Verdict::SameInvalid
    } else if same(edited, opened) {
        Verdict::Unchanged
    } else {
        Verdict::Changed
    }
}

/// Parses and checks the edited text here, then writes it with the resourceVersion the
/// object had when the edit began.
async fn submit(
    client: &Client,
    target: &ObjectRef,
    body: &str,
    resource_version: Option<String>,
) -> Submitted {
    let source = SourceFile {
        name: format!("{target} (edited)"),
        content: body.to_string(),
    };
    let mut object: Resource = match crate::manifests::parse(&[source]) {
        Err(api) => return Submitted::Invalid(error_lines(&api)),
        Ok(objects) => match <[Resource; 1]>::try_from(objects) {
            Ok([one]) => one,
            Err(_) => {
                return Submitted::Invalid(vec![format!(
                    "the file must hold exactly one object, {target}"
                )]);
            }
        },
    };
    if object.object_ref() != *target {
        return Submitted::Invalid(vec![format!(
            "the kind and name cannot be changed: the file holds {}, the edit is of {target}",
            object.object_ref()
        )]);
    }
    object.metadata_mut().resource_version = resource_version;
    match client.replace(&object, false).await {
        Ok(_) => Submitted::Done,
        Err(e) if e.reason() == Some(ErrorReason::Invalid) => {
            Submitted::Invalid(e.api().map(error_lines).unwrap_or_default())
        }
        Err(e) => Submitted::Refused(CliError::object(target, e)),
    }
}

/// An invalid object's errors as the reopened file shows them: `field: message`, without
/// file positions (the file is recomposed, so its lines move).
fn error_lines(e: &ApiError) -> Vec<String> {
    if e.causes.is_empty() {
        return vec![e.message.clone()];
    }
    e.causes
        .iter()
        .map(|c| match &c.field {
            Some(f) => format!("{f}: {}", c.message),
            None => c.message.clone(),
        })
        .collect()
}

/// Runs the editor on `path` and waits for it. The setting is split at spaces (`code
/// -w`), never handed to a shell.
fn run_editor(editor: &str, path: &Path) -> Result<(), EditError> {
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or(DEFAULT_EDITOR);
    let status = std::process::Command::new(program)
        .args(words)
        .arg(path)
        .status()
        .map_err(|source| EditError::EditorStart {
            editor: editor.to_string(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(EditError::EditorFailed {
            editor: editor.to_string(),
            status: status.to_string(),
        })
    }
}

/// The temporary file of one edit: private to the user (0600), removed when the edit ends
/// well, kept when the edited copy is all the user has left.
struct EditFile {
    path: PathBuf,
}

impl EditFile {
    fn create(target: &ObjectRef) -> Result<EditFile, EditError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "topoctl-edit-{}-{}-{}-{stamp}.yaml",
            target.kind.as_str().to_ascii_lowercase(),
            target.name,
            std::process::id()
        ));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| EditError::WriteFile {
                path: path.display().to_string(),
                source,
            })?;
        Ok(EditFile { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn write(&self, text: &str) -> Result<(), EditError> {
        std::fs::File::create(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| EditError::WriteFile {
                path: self.shown(),
                source,
            })
    }

    fn read(&self) -> Result<String, EditError> {
        std::fs::read_to_string(&self.path).map_err(|source| EditError::ReadFile {
            path: self.shown(),
            source,
        })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topo_schema::Kind;

    #[test]
    fn the_file_and_its_errors() {
        let r = ObjectRef::new(Kind::Container, "db");
        let text = compose(&r, &[], "kind: Container\n");
        assert!(text.starts_with("# Please edit the object below."));
        assert_eq!(strip_comments(&text), "kind: Container\n");
        let text = compose(
            &r,
            &["spec.node: is required\nsecond line".into()],
            "kind: Container\n",
        );
        assert!(
            text.contains("# container/db was not valid:\n# * spec.node: is required\n#   second line\n#\nkind: Container\n"),
            "{text}"
        );
        assert_eq!(strip_comments(&text), "kind: Container\n");
    }

    #[test]
    fn what_was_saved() {
        let opened = "a: 1\nb: [x, y]\n";
        assert_eq!(judge("\n  \n", opened, opened, false), Verdict::Empty);
        assert_eq!(judge(opened, opened, opened, false), Verdict::Unchanged);
        assert_eq!(
            judge("b:   [x, y]\na: 1\n", opened, opened, false),
            Verdict::Unchanged,
            "the same YAML written differently"
        );
        assert_eq!(judge("a: 2\n", opened, opened, false), Verdict::Changed);
        assert_eq!(
            judge("a: 2\n", opened, "a: 2\n", true),
            Verdict::SameInvalid
        );
        assert_eq!(judge("a: 3\n", opened, "a: 2\n", true), Verdict::Changed);
    }
}
