//! topoctl's command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::timefmt::duration_arg;

/// topoctl talks to topo-controller: apply manifests, see what runs where, wait for it.
#[derive(Debug, Parser)]
#[command(
    name = "topoctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The controller's address, https://HOST:PORT. When absent: $TOPO_SERVER, then `server:` in
    /// the config file ($TOPO_CONFIG, else ~/.config/topo/config.yaml), which also names the
    /// cluster CA (certificate-authority) and the credentials (client-certificate and
    /// client-key, or token).
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,

    /// How long one request to the controller may take (30s, 1m; 0 = no limit). Watches are
    /// not limited.
    #[arg(long, global = true, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
    pub request_timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update every object in the files, all or nothing.
    #[command(after_help = examples::APPLY)]
    Apply(ApplyArgs),
    /// List objects as a table, or print them as YAML, JSON, names, JSONPath or columns.
    #[command(after_help = examples::GET)]
    Get(GetArgs),
    /// Show one object in detail: spec, status, conditions and recent events.
    #[command(after_help = examples::DESCRIBE)]
    Describe(DescribeArgs),
    /// Delete objects named on the command line or in files.
    #[command(after_help = examples::DELETE)]
    Delete(DeleteArgs),
    /// Show what apply would change. Exit status: 0 no change, 1 changes, 2 error.
    #[command(after_help = examples::DIFF)]
    Diff(DiffArgs),
    /// Block until objects meet a condition (or are deleted).
    #[command(after_help = examples::WAIT)]
    Wait(WaitArgs),
    /// Recent events: object, type, reason, age, count, message (newest last).
    #[command(after_help = examples::EVENTS)]
    Events(EventsArgs),
    /// Print a container's log (through the controller, from its node's agent).
    #[command(after_help = examples::LOGS)]
    Logs(LogsArgs),
    /// Run a command in a container (through the controller, by its node's agent).
    #[command(after_help = examples::EXEC)]
    Exec(ExecArgs),
    /// Set (KEY=VALUE) or remove (KEY-) labels of objects.
    #[command(after_help = examples::LABEL)]
    Label(MetaArgs),
    /// Set (KEY=VALUE) or remove (KEY-) annotations of objects.
    #[command(after_help = examples::ANNOTATE)]
    Annotate(MetaArgs),
    /// Edit an object in $KUBE_EDITOR or $EDITOR (else vi) and write it back on save.
    #[command(after_help = examples::EDIT)]
    Edit(EditArgs),
    /// Describe a kind or one of its fields: type, description and fields, from the schema.
    #[command(after_help = examples::EXPLAIN)]
    Explain(ExplainArgs),
    /// Draw the topology: nodes, networks, containers, links, tunnels, coloured by Ready.
    #[command(after_help = examples::GRAPH)]
    Graph(GraphArgs),
    /// Test the live dataplane from inside the containers: gateways, peers across nodes,
    /// links, published ports, the MTU of every tunnel. Exit status: 0 all pass, 1 one fails.
    #[command(after_help = examples::VERIFY)]
    Verify(VerifyArgs),
    /// Print the JSON Schema of the manifests, for editors and CI validation.
    #[command(after_help = examples::SCHEMA)]
    Schema(SchemaArgs),
    /// Print a shell completion script.
    #[command(after_help = examples::COMPLETION)]
    Completion(CompletionArgs),
    /// Print topoctl's version (and whether the controller answers).
    #[command(after_help = examples::VERSION)]
    Version(VersionArgs),
}

/// The examples each verb's `--help` ends with.
pub mod examples {
    pub const APPLY: &str = "\
Examples:
  topoctl apply -f manifests/demo.yaml          # create or update what the file declares
  topoctl apply -f manifests/ -R --wait         # a directory tree, then wait until Ready
  cat app.yaml | topoctl apply -f -             # from standard input
  topoctl apply -f app.yaml --dry-run=server    # let the controller check it, store nothing";

    pub const GET: &str = "\
Examples:
  topoctl get containers -o wide                # more columns
  topoctl get container/db network/overlay      # kinds mixed, KIND/NAME
  topoctl get c,net -l app=web                  # several kinds, a label selector
  topoctl get c db -o yaml                      # one object as YAML
  topoctl get c -o jsonpath='{.items[*].metadata.name}'
  topoctl get c -o jsonpath='{range .items[*]}{.metadata.name}{\"\\t\"}{.spec.node}{\"\\n\"}{end}'
  topoctl get c -o jsonpath='{.items[?(@.spec.node==\"node1\")].metadata.name}'
  topoctl get c -o custom-columns=NAME:.metadata.name,NODE:.spec.node
  topoctl get c --sort-by=.status.restartCount  # numbers sort as numbers
  topoctl get c -w                              # keep printing changes
  topoctl get --raw /apis/topo.dev/v1alpha1/networks";

    pub const LOGS: &str = "\
Examples:
  topoctl logs db                               # the whole log of container db
  topoctl logs db --tail 20                     # its last 20 lines
  topoctl logs db -f --since 5m                 # the last five minutes, then follow
  topoctl logs db --since 2026-11-28T19:00:00Z  # since a point in time";

    pub const EXEC: &str = "\
Examples:
  topoctl exec db -- ls /                       # run a command, print its output
  topoctl exec -it db -- sh                     # an interactive shell on a terminal
  echo hello | topoctl exec -i db -- cat        # stdin passed to the command
  topoctl exec db -- sh -c 'exit 3'; echo $?    # 3: the command's exit code";

    pub const DESCRIBE: &str = "\
Examples:
  topoctl describe container db                 # spec, status, conditions, events
  topoctl describe networks -l tier=back        # every network the selector picks";

    pub const DELETE: &str = "\
Examples:
  topoctl delete container db web               # by name
  topoctl delete container/db link/app-to-db    # KIND/NAME, kinds mixed
  topoctl delete -f app.yaml --wait             # what the file declares, until nodes removed it
  topoctl delete c -l app=web --dry-run=server  # what a selector would delete";

    pub const DIFF: &str = "\
Examples:
  topoctl diff -f app.yaml; echo $?             # 0 no change, 1 changes, 2 error";

    pub const WAIT: &str = "\
Examples:
  topoctl wait container/db --for=condition=Ready --timeout=60s
  topoctl wait c db web --for=delete";

    pub const EVENTS: &str = "\
Examples:
  topoctl events                                # recent events, newest last
  topoctl events --for container/db -w          # one object's, then as they happen";

    pub const LABEL: &str = "\
Examples:
  topoctl label container/db tier=back          # add a label
  topoctl label c db tier=front --overwrite     # change one that has a value
  topoctl label c db tier-                      # remove it
  topoctl label c -l app=web canary=true        # every container the selector picks
  topoctl label c --all owner=ops --dry-run=server";

    pub const ANNOTATE: &str = "\
Examples:
  topoctl annotate container/db description='the orders database'
  topoctl annotate c db description='the main one' --overwrite
  topoctl annotate c db description-            # remove it";

    pub const EDIT: &str = "\
Examples:
  topoctl edit container/db                     # in $KUBE_EDITOR, else $EDITOR, else vi
  KUBE_EDITOR='code -w' topoctl edit network overlay

An invalid object reopens the editor with the errors at the top; saving it unchanged
cancels. If the object changed meanwhile, the edit fails and the edited copy is kept.";

    pub const EXPLAIN: &str = "\
Examples:
  topoctl explain containers                    # the kind and its fields
  topoctl explain container.spec.networks       # one field: type, description, fields
  topoctl explain network.spec.blockSize
  topoctl explain link --recursive              # every field, nested";

    pub const VERIFY: &str = "\
Examples:
  topoctl verify                                # every container; one PASS/FAIL line per check
  topoctl verify -l app=web                     # the containers the selector picks
  topoctl verify -o json | jq '.[] | select(.passed | not)'   # the failed checks";

    pub const GRAPH: &str = "\
Examples:
  topoctl graph | dot -Tpng > topo.png          # Graphviz DOT (the default)
  topoctl graph -o svg > topo.svg               # SVG, no Graphviz needed
  topoctl graph -l app=web -o svg               # only the containers and links picked";

    pub const SCHEMA: &str = "\
Examples:
  topoctl schema > topo.schema.json             # any manifest document
  topoctl schema Container                      # one kind";

    pub const COMPLETION: &str = "\
Examples:
  source <(topoctl completion bash)
  topoctl completion zsh > \"${fpath[1]}/_topoctl\"
  topoctl completion fish > ~/.config/fish/completions/topoctl.fish";

    pub const VERSION: &str = "\
Examples:
  topoctl version                               # and whether the controller answers
  topoctl version --client";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Send nothing: check the files here and compare them with the live objects.
    Client,
    /// Let the controller validate and allocate, without storing anything.
    Server,
    /// Apply for real.
    None,
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// A manifest file, a directory (its *.yaml, *.yml and *.json files, sorted), or - for
    /// standard input. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub filename: Vec<String>,

    /// Also read the subdirectories of directories given with -f.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: FileArgs,

    /// client: check here only; server: the controller checks without storing; none: apply.
    #[arg(long, value_enum, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: DryRun,

    /// After applying, wait until every applied object is Ready, showing progress.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits (e.g. 60s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to get: KIND [NAME...], KIND/NAME... (kinds may be mixed: container/db
    /// network/overlay), or KIND,KIND. Kinds: nodes, networks, containers, links, tunnels
    /// or all (also singular, and the short forms no, net, c, ln, tun).
    #[arg(value_name = "KIND[/NAME]", required_unless_present = "raw")]
    pub targets: Vec<String>,

    /// Output format: wide (more columns), yaml, json, name (kind/name),
    /// jsonpath=TEMPLATE, jsonpath-file=FILE, custom-columns=HEADER:JSONPATH,...,
    /// custom-columns-file=FILE. Default: a table.
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = OutputFormatParser, hide_possible_values = true)]
    pub output: Option<String>,

    /// Label selector: key=value, key!=value, key, !key; comma-separated requirements all hold.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// After listing, keep printing objects as they change.
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// Sort by the value a JSONPath reaches in each object (.metadata.name,
    /// '{.status.restartCount}'); numbers sort as numbers, objects without the field first.
    #[arg(long, value_name = "JSONPATH")]
    pub sort_by: Option<String>,

    /// With -o jsonpath: a field the template names but an object lacks prints nothing
    /// (true) or is an error (false).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_missing_template_keys: bool,

    /// GET this path of the controller's API and print the body as it comes, e.g.
    /// /apis/topo.dev/v1alpha1/containers or /readyz.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["targets", "output", "selector", "watch", "sort_by"])]
    pub raw: Option<String>,
}

/// `-o`'s values: any string (checked by the verb, which reads the `-file=` forms), with the
/// formats listed for shell completion.
#[derive(Debug, Clone, Copy)]
pub struct OutputFormatParser;

impl clap::builder::TypedValueParser for OutputFormatParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            crate::printer::FORMATS
                .iter()
                .map(|f| clap::builder::PossibleValue::new(*f)),
        ))
    }
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The kind (as for get, but not all).
    pub kind: String,

    /// The objects; all of the kind when none is named.
    pub names: Vec<String>,

    /// Label selector, when no name is given.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub files: FileArgs,

    /// The kind of the objects to delete (when not deleting by -f).
    pub kind: Option<String>,

    /// The objects to delete.
    pub names: Vec<String>,

    /// Delete the objects of KIND that match this label selector.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Wait until the objects are gone (and the node agents have removed what they ran).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
    pub timeout: Duration,

    /// An object that does not exist is no error.
    #[arg(long)]
    pub ignore_not_found: bool,

    /// client: print what would be deleted; server: the controller checks the deletion
    /// without doing it; none: delete.
    #[arg(long, value_enum, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: DryRun,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub files: FileArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// KIND/NAME of each object (or KIND NAME...).
    #[arg(required = true)]
    pub objects: Vec<String>,

    /// condition=TYPE (e.g. condition=Ready), condition=TYPE=STATUS, or delete.
    #[arg(long = "for", value_name = "CONDITION")]
    pub for_: String,

    /// How long to wait before giving up.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The container (NAME or container/NAME).
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Keep printing new lines as the container writes them.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,

    /// Only lines written within DURATION (5s, 2m, 3h) or since TIME (RFC 3339, e.g.
    /// 2026-11-28T19:00:00Z).
    #[arg(long, value_name = "DURATION|TIME", value_parser = since_arg)]
    pub since: Option<Since>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The container (NAME or container/NAME).
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Pass stdin to the command (end of file closes the command's stdin).
    #[arg(short = 'i', long)]
    pub stdin: bool,

    /// Run the command on a terminal: the local one in raw mode, its size followed.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// kubectl's container of a pod. A topo container is one container, so this may only
    /// name NAME itself (accepted for scripts written for kubectl).
    #[arg(short = 'c', long = "container", value_name = "NAME")]
    pub container: Option<String>,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--since`: a duration back from now, or a point in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    Duration(Duration),
    Time(chrono::DateTime<chrono::Utc>),
}

pub fn since_arg(s: &str) -> Result<Since, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Since::Time(t.to_utc()));
    }
    duration_arg(s).map(Since::Duration).map_err(|e| {
        format!("{e}; expected a duration such as 5m or a time such as 2026-11-28T19:00:00Z")
    })
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// After listing, keep printing events as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// Only the events of this object (KIND/NAME).
    #[arg(long = "for", value_name = "KIND/NAME")]
    pub for_: Option<String>,
}

#[derive(Debug, Args)]
pub struct MetaArgs {
    /// The objects, then the changes: KIND NAME... or KIND/NAME... (or KIND with -l or
    /// --all), then KEY=VALUE to set and KEY- to remove.
    #[arg(value_name = "KIND/NAME|KEY=VALUE|KEY-", required = true)]
    pub args: Vec<String>,

    /// Change a key that already has another value (without it, that is an error).
    #[arg(long)]
    pub overwrite: bool,

    /// With KIND: every object this label selector picks.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// With KIND: every object of the kind.
    #[arg(long)]
    pub all: bool,

    /// client: only print what would change; server: the controller checks the change
    /// without storing it; none: change.
    #[arg(long, value_enum, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: DryRun,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The object: KIND/NAME, or KIND NAME.
    #[arg(value_name = "KIND/NAME", required = true)]
    pub objects: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// KIND, or KIND.FIELD.SUBFIELD... (e.g. container.spec.networks).
    pub path: String,

    /// List every field below, nested, with its type.
    #[arg(long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Output format: dot (Graphviz) or svg (laid out here, no Graphviz needed).
    #[arg(short, long, value_enum, default_value = "dot")]
    pub output: GraphFormat,

    /// Only the containers and links whose labels match (nodes, networks, tunnels always).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only the containers whose labels match (peers may be any container).
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,

    /// Output format: lines (one per check) or json (the checks as a list).
    #[arg(short, long, value_enum, default_value = "lines")]
    pub output: VerifyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyFormat {
    Lines,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Svg,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// One kind's schema; the schema of any manifest document when absent.
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only topoctl's version; do not contact the controller.
    #[arg(long)]
    pub client: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_is_documented() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no --help text");
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no --help text",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "topoctl");
    }

    #[test]
    fn every_verb_has_examples() {
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Examples:\n  ") && help.contains("topoctl "),
                "topoctl {} --help has no examples",
                sub.get_name()
            );
        }
    }

    #[test]
    fn completion_knows_the_new_verbs_and_formats() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "topoctl", &mut buf);
            let script = String::from_utf8_lossy(&buf);
            for word in [
                "label",
                "annotate",
                "edit",
                "explain",
                "sort-by",
                "raw",
                "overwrite",
                "jsonpath=",
                "custom-columns=",
            ] {
                assert!(script.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }

    #[test]
    fn parses_kubectl_like_lines() {
        let c = Cli::try_parse_from([
            "topoctl",
            "apply",
            "-f",
            "a.yaml",
            "-f",
            "dir",
            "--dry-run=server",
            "--wait",
        ])
        .unwrap();
        let Command::Apply(a) = c.command else {
            panic!("not apply")
        };
        assert_eq!(a.files.filename, ["a.yaml", "dir"]);
        assert_eq!(a.dry_run, DryRun::Server);
        assert!(a.wait);
        assert_eq!(a.timeout, Duration::from_secs(60));

        let c = Cli::try_parse_from([
            "topoctl",
            "--server",
            "https://x:1",
            "get",
            "c",
            "redis",
            "-o",
            "wide",
        ])
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("https://x:1"));
        let c = Cli::try_parse_from([
            "topoctl",
            "wait",
            "container/redis",
            "--for=condition=Ready",
            "--timeout=5s",
        ])
        .unwrap();
        let Command::Wait(w) = c.command else {
            panic!("not wait")
        };
        assert_eq!(w.timeout, Duration::from_secs(5));

        let c = Cli::try_parse_from(["topoctl", "get", "--raw", "/readyz"]).unwrap();
        let Command::Get(g) = c.command else {
            panic!("not get")
        };
        assert_eq!((g.raw.as_deref(), g.targets.len()), (Some("/readyz"), 0));
        assert!(
            Cli::try_parse_from(["topoctl", "get"]).is_err(),
            "a kind or --raw"
        );
        assert!(Cli::try_parse_from(["topoctl", "get", "c", "--raw", "/x"]).is_err());
        let c = Cli::try_parse_from(["topoctl", "get", "c", "--allow-missing-template-keys=false"])
            .unwrap();
        let Command::Get(g) = c.command else {
            panic!("not get")
        };
        assert!(!g.allow_missing_template_keys);
        let c =
            Cli::try_parse_from(["topoctl", "label", "c/db", "a=b", "c-", "--overwrite"]).unwrap();
        let Command::Label(l) = c.command else {
            panic!("not label")
        };
        assert_eq!((l.args.len(), l.overwrite), (3, true));
    }
}
