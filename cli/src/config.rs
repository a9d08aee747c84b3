//! Where the controller is and who we are: `--server`, then `TOPO_SERVER`, then the config
//! file's `server`; the credentials (the cluster CA, a client certificate and key, or a
//! bearer token) always come from the config file (`$TOPO_CONFIG`, else
//! `~/.config/topo/config.yaml`). Relative paths in it are relative to the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const ENV_SERVER: &str = "TOPO_SERVER";
pub const ENV_CONFIG: &str = "TOPO_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no controller address: pass --server https://HOST:PORT, set {ENV_SERVER}, or write `server: https://HOST:PORT` to {path}"
    )]
    NoServer { path: String },
    #[error(
        "no certificate authority to check the controller with: write `certificate-authority: /path/ca.crt` to {path}\nhint: `eval \"$(make -s lab-up)\"` exports TOPO_CONFIG for the lab; topo-pki init writes admin.yaml"
    )]
    NoCa { path: String },
    #[error(
        "no credentials: write `client-certificate:` and `client-key:`, or `token:`, to {path}\nhint: topo-pki init writes admin.yaml and viewer.yaml; point TOPO_CONFIG at one"
    )]
    NoCredentials { path: String },
    #[error("{path}: client-certificate and client-key go together; one is missing")]
    HalfPair { path: String },
    #[error("failed to read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid controller address {0:?}: expected https://HOST:PORT")]
    BadUrl(String),
    #[error("controller address {0:?} uses plain HTTP; topo's API speaks HTTPS only: use https://")]
    PlainHttp(String),
}

/// `~/.config/topo/config.yaml` (or `$TOPO_CONFIG`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub certificate_authority: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub token: Option<String>,
}

/// How to reach and prove ourselves to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub server: String,
    pub ca: PathBuf,
    pub credentials: Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Certificate { cert: PathBuf, key: PathBuf },
    Token(String),
}

/// Where the config file is looked for; `explicit` is `$TOPO_CONFIG`.
pub fn config_path(
    explicit: Option<PathBuf>,
    xdg_config_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Some(p);
    }
    let base = xdg_config_home.filter(|p| p.is_absolute()).or_else(|| {
        home.filter(|h| !h.as_os_str().is_empty())
            .map(|h| h.join(".config"))
    })?;
    Some(base.join("topo").join("config.yaml"))
}

/// Reads the config file. A missing default file is no error; a missing `$TOPO_CONFIG` is.
pub fn read_config(path: &Path, must_exist: bool) -> Result<ConfigFile, ConfigError> {
    let display = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            return Ok(ConfigFile::default());
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: display,
                source,
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: display,
        source,
    })
}

/// What the environment holds, gathered once so resolution is a pure function.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub topo_server: Option<String>,
    pub topo_config: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// The editor of `topoctl edit`: $KUBE_EDITOR, else $EDITOR (kubectl's order).
    pub editor: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            topo_server: std::env::var(ENV_SERVER).ok(),
            topo_config: std::env::var_os(ENV_CONFIG).map(PathBuf::from),
            xdg_config_home: std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            home: std::env::var_os("HOME").map(PathBuf::from),
            editor: ["KUBE_EDITOR", "EDITOR"]
                .into_iter()
                .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty())),
        }
    }
}

/// The config file in force and where it is (shown in errors).
fn load(env: &Env) -> Result<(ConfigFile, String, Option<PathBuf>), ConfigError> {
    let explicit = env
        .topo_config
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    let must_exist = explicit.is_some();
    let path = config_path(explicit, env.xdg_config_home.clone(), env.home.clone());
    let shown = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.config/topo/config.yaml".into());
    let cfg = match &path {
        Some(p) => read_config(p, must_exist)?,
        None => ConfigFile::default(),
    };
    Ok((cfg, shown, path))
}

/// The controller's base URL: the flag, then `TOPO_SERVER`, then the config file.
pub fn resolve_server(flag: Option<&str>, env: &Env) -> Result<String, ConfigError> {
    let nonempty = |s: &&str| !s.trim().is_empty();
    if let Some(s) = flag.filter(nonempty) {
        return normalize_url(s);
    }
    if let Some(s) = env.topo_server.as_deref().filter(nonempty) {
        return normalize_url(s);
    }
    let (cfg, shown, _) = load(env)?;
    match cfg.server.as_deref().filter(nonempty) {
        Some(s) => normalize_url(s),
        None => Err(ConfigError::NoServer { path: shown }),
    }
}

/// The server and the credentials.
pub fn resolve(flag: Option<&str>, env: &Env) -> Result<Connection, ConfigError> {
    let server = resolve_server(flag, env)?;
    let (cfg, shown, path) = load(env)?;
    let base = path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let ca = cfg
        .certificate_authority
        .map(abs)
        .ok_or_else(|| ConfigError::NoCa {
            path: shown.clone(),
        })?;
    let credentials = match (cfg.client_certificate, cfg.client_key, cfg.token) {
        (Some(cert), Some(key), _) => Credentials::Certificate {
            cert: abs(cert),
            key: abs(key),
        },
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(ConfigError::HalfPair { path: shown });
        }
        (None, None, Some(t)) if !t.trim().is_empty() => Credentials::Token(t.trim().to_string()),
        _ => return Err(ConfigError::NoCredentials { path: shown }),
    };
    Ok(Connection {
        server,
        ca,
        credentials,
    })
}

/// `host:port` → `https://host:port`; no trailing slash; `http://` is refused.
pub fn normalize_url(s: &str) -> Result<String, ConfigError> {
    let s = s.trim();
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|_| ConfigError::BadUrl(s.to_string()))?;
    if url.scheme() == "http" {
        return Err(ConfigError::PlainHttp(s.to_string()));
    }
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(ConfigError::BadUrl(s.to_string()));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(server: Option<&str>, config: Option<&Path>, home: Option<&Path>) -> Env {
        Env {
            topo_server: server.map(str::to_string),
            topo_config: config.map(Path::to_path_buf),
            xdg_config_home: None,
            home: home.map(Path::to_path_buf),
            editor: None,
        }
    }

    #[test]
    fn flag_beats_env_beats_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, "server: https://from-file:1\n").unwrap();

        let env = env_with(Some("https://from-env:2"), Some(&cfg), None);
        assert_eq!(
            resolve_server(Some("https://from-flag:3"), &env).unwrap(),
            "https://from-flag:3"
        );
        assert_eq!(resolve_server(None, &env).unwrap(), "https://from-env:2");
        let env = env_with(None, Some(&cfg), None);
        assert_eq!(resolve_server(None, &env).unwrap(), "https://from-file:1");
        // An empty flag or variable counts as unset.
        let env = env_with(Some(""), Some(&cfg), None);
        assert_eq!(
            resolve_server(Some(""), &env).unwrap(),
            "https://from-file:1"
        );
    }

    #[test]
    fn default_config_file_under_home() {
        let home = tempfile::tempdir().unwrap();
        let env = env_with(None, None, Some(home.path()));
        let err = resolve_server(None, &env).unwrap_err().to_string();
        assert!(
            err.contains("--server") && err.contains("TOPO_SERVER"),
            "{err}"
        );
        assert!(err.contains(".config/topo/config.yaml"), "{err}");

        std::fs::create_dir_all(home.path().join(".config/topo")).unwrap();
        std::fs::write(
            home.path().join(".config/topo/config.yaml"),
            "server: 127.0.0.1:8080/\n",
        )
        .unwrap();
        assert_eq!(
            resolve_server(None, &env).unwrap(),
            "https://127.0.0.1:8080"
        );

        let xdg = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(xdg.path().join("topo")).unwrap();
        std::fs::write(
            xdg.path().join("topo/config.yaml"),
            "server: https://xdg:1\n",
        )
        .unwrap();
        let env = Env {
            xdg_config_home: Some(xdg.path().to_path_buf()),
            ..env
        };
        assert_eq!(resolve_server(None, &env).unwrap(), "https://xdg:1");
    }

    #[test]
    fn explicit_config_must_exist_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let env = env_with(None, Some(&missing), None);
        assert!(matches!(
            resolve_server(None, &env),
            Err(ConfigError::Read { .. })
        ));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "server: [unclosed\n").unwrap();
        let env = env_with(None, Some(&bad), None);
        assert!(matches!(
            resolve_server(None, &env),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("localhost:8443").unwrap(),
            "https://localhost:8443"
        );
        assert_eq!(normalize_url("https://a:1/").unwrap(), "https://a:1");
        assert!(normalize_url("ftp://a").is_err());
        assert!(normalize_url("https://").is_err());
        let e = normalize_url("http://a:1").unwrap_err().to_string();
        assert!(e.contains("HTTPS only"), "{e}");
    }

    #[test]
    fn credentials_come_from_the_config_file_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("admin.yaml");
        std::fs::write(
            &cfg,
            "server: https://s:1\ncertificate-authority: ca.crt\nclient-certificate: a.crt\nclient-key: /abs/a.key\n",
        )
        .unwrap();
        let env = env_with(Some("https://other:2"), Some(&cfg), None);
        let c = resolve(None, &env).unwrap();
        assert_eq!(c.server, "https://other:2");
        assert_eq!(c.ca, dir.path().join("ca.crt"));
        assert_eq!(
            c.credentials,
            Credentials::Certificate {
                cert: dir.path().join("a.crt"),
                key: PathBuf::from("/abs/a.key")
            }
        );
        std::fs::write(
            &cfg,
            "server: https://s:1\ncertificate-authority: ca.crt\ntoken: abc\n",
        )
        .unwrap();
        assert_eq!(
            resolve(None, &env).unwrap().credentials,
            Credentials::Token("abc".into())
        );
        std::fs::write(&cfg, "server: https://s:1\ntoken: abc\n").unwrap();
        assert!(matches!(resolve(None, &env), Err(ConfigError::NoCa { .. })));
        std::fs::write(&cfg, "server: https://s:1\ncertificate-authority: ca.crt\n").unwrap();
        assert!(matches!(
            resolve(None, &env),
            Err(ConfigError::NoCredentials { .. })
        ));
        std::fs::write(
            &cfg,
            "server: https://s:1\ncertificate-authority: ca.crt\nclient-key: k\n",
        )
        .unwrap();
        assert!(matches!(
            resolve(None, &env),
            Err(ConfigError::HalfPair { .. })
        ));
    }
}
