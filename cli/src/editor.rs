//! How running the user's editor can fail (`topoctl edit`). Its own module so that
//! [`crate::cmd::CliError`] can carry it without the verbs' shared module depending on the
//! edit verb, which depends on it.

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
