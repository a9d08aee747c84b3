//! Container hardening, the settings users expect from `docker run`: `resources` (memory,
//! cpus, pids), `user`, `readOnlyRootFilesystem`, `capabilities` and
//! `allowPrivilegeEscalation` (no-new-privileges unless it is true).
//!
//! One module owns both readings of these fields — the checks at apply ([`check`], with field
//! paths) and the resolution into the slice's [`Hardening`] ([`resolve`]) — so a value the
//! apply accepted is exactly a value the agent can hand to Docker.

use crate::kinds::{ContainerSpec, Quantity};
use crate::limits;
use crate::slice::Hardening;
use crate::validate::FieldError;

/// Docker refuses a memory limit below 6 MiB.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// 0.01 CPU, Docker's smallest `--cpus`.
pub const MIN_NANO_CPUS: i64 = 10_000_000;
/// Linux's PID_MAX_LIMIT on 64-bit: no pids limit above it means anything.
pub const MAX_PIDS: i64 = 4_194_304;
/// `CAP_CHECKPOINT_RESTORE`, the longest, has 22.
const MAX_CAPABILITY_NAME: usize = 32;
/// Linux user and group names are at most 32 bytes.
const MAX_USER_PART: usize = 32;

/// The capabilities of `capabilities(7)`, without the `CAP_` prefix.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Splits `"1.5Gi"` into its number and its suffix.
fn split_suffix(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s.split_at(at)
}

/// `int.frac` × `scale`, exactly, when it fits an i64 (integer part and up to 9 decimals).
fn scaled(number: &str, scale: i64) -> Option<i64> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        || frac.len() > 9
    {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_value: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let denom = 10i128.pow(u32::try_from(frac.len()).ok()?);
    let total = int * i128::from(scale) + frac_value * i128::from(scale) / denom;
    i64::try_from(total).ok()
}

/// Bytes of a memory quantity: `268435456`, `256Mi`, `1Gi`, `1.5G`, `512k`.
pub fn memory_bytes(q: &str) -> Result<i64, String> {
    const EXPECTED: &str =
        "expected bytes or a number with Ki, Mi, Gi, Ti, k, M, G or T, e.g. \"256Mi\"";
    let (number, suffix) = split_suffix(q.trim());
    let scale: i64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(format!("{q:?} is not a memory quantity ({EXPECTED})")),
    };
    let bytes = scaled(number, scale)
        .ok_or_else(|| format!("{q:?} is not a memory quantity ({EXPECTED})"))?;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "{q} is less than Docker's minimum of 6Mi (expected at least \"6Mi\")"
        ));
    }
    Ok(bytes)
}

/// Docker's NanoCpus of a CPU quantity: `"0.5"` → 500000000.
pub fn nano_cpus(q: &str) -> Result<i64, String> {
    let nano = scaled(q.trim(), 1_000_000_000).ok_or_else(|| {
        format!(
            "{q:?} is not a number of CPUs (expected e.g. \"0.5\" for half a CPU, \"2\" for two)"
        )
    })?;
    if nano < MIN_NANO_CPUS {
        return Err(format!("{q} CPUs is too little (expected at least 0.01)"));
    }
    Ok(nano)
}

/// The canonical `CAP_X` form of a capability name (any case, with or without `CAP_`), or
/// `ALL`.
pub fn capability(name: &str) -> Result<String, String> {
    if name.len() > MAX_CAPABILITY_NAME {
        return Err(format!(
            "a name of {} bytes is not a Linux capability (expected a name of capabilities(7) such as NET_ADMIN, or ALL)",
            name.len()
        ));
    }
    let upper = name.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        return Ok(format!("CAP_{bare}"));
    }
    let hint = strsim_closest(bare)
        .map(|c| format!("; did you mean {c}?"))
        .unwrap_or_default();
    Err(format!(
        "{name:?} is not a Linux capability (expected a name of capabilities(7) such as NET_ADMIN or CAP_NET_BIND_SERVICE, or ALL){hint}"
    ))
}

fn strsim_closest(bare: &str) -> Option<&'static str> {
    CAPABILITIES
        .iter()
        .map(|c| (strsim::levenshtein(bare, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

/// A name (`app`, `www-data`, `nobody`) or a numeric id.
fn check_user_part(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.chars().all(|c| c.is_ascii_digit()) {
        return match part.parse::<u32>() {
            Ok(id) if id < u32::MAX => Ok(()),
            _ => Err(format!(
                "{what} id {part} is out of range (expected 0-4294967294)"
            )),
        };
    }
    let first_ok = part
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !first_ok || !rest_ok || part.len() > MAX_USER_PART {
        return Err(format!(
            "{what} {part:?} is neither a numeric id nor a user name (expected letters, digits, '_', '-' and '.', starting with a letter or '_', at most {MAX_USER_PART})"
        ));
    }
    Ok(())
}

/// `user`, `user:group`, with names or numeric ids.
pub fn check_user(user: &str) -> Result<(), String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let r = check_user_part(u, "user").and_then(|()| match g {
        Some(g) => check_user_part(g, "group"),
        None => Ok(()),
    });
    r.map_err(|why| format!("{why}; expected USER or USER:GROUP, e.g. \"1000:1000\" or \"nobody\""))
}

/// The canonical names of `names`, and the errors of those that are not capabilities or
/// come twice, under `field[i]`.
fn capability_list(names: &[String], field: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match capability(n) {
            Ok(c) if out.contains(&c) => errors.push(FieldError::new(
                format!("{field}[{i}]"),
                format!("{c} is listed twice"),
            )),
            Ok(c) => out.push(c),
            Err(why) => errors.push(FieldError::new(format!("{field}[{i}]"), why)),
        }
    }
    out
}

fn quantity(
    q: Option<&Quantity>,
    field: &str,
    read: fn(&str) -> Result<i64, String>,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    // An oversized value is refused by `limits` alone, and never echoed.
    let q = q.filter(|q| q.as_str().len() <= limits::MAX_QUANTITY)?;
    match read(q.as_str()) {
        Ok(v) => Some(v),
        Err(why) => {
            errors.push(FieldError::new(field, why));
            None
        }
    }
}

/// The spec's hardening as the slice carries it, and every problem with it (field paths from
/// the object's root). Empty problems: the hardening is complete.
pub fn read(spec: &ContainerSpec) -> (Hardening, Vec<FieldError>) {
    let mut errors = Vec::new();
    let mut h = Hardening {
        user: spec.user.clone(),
        read_only_root_filesystem: spec.read_only_root_filesystem,
        allow_privilege_escalation: spec.allow_privilege_escalation,
        ..Hardening::default()
    };
    if let Some(r) = &spec.resources {
        h.memory_bytes = quantity(
            r.memory.as_ref(),
            "spec.resources.memory",
            memory_bytes,
            &mut errors,
        );
        h.nano_cpus = quantity(
            r.cpus.as_ref(),
            "spec.resources.cpus",
            nano_cpus,
            &mut errors,
        );
        if let Some(p) = r.pids {
            if (1..=MAX_PIDS).contains(&p) {
                h.pids_limit = Some(p);
            } else {
                errors.push(FieldError::new(
                    "spec.resources.pids",
                    format!("{p} is out of range (expected 1 to {MAX_PIDS}; leave pids out for no limit)"),
                ));
            }
        }
    }
    if let Some(u) = &spec.user
        && u.len() <= limits::MAX_USER
        && let Err(why) = check_user(u)
    {
        errors.push(FieldError::new("spec.user", why));
    }
    if let Some(caps) = spec.capabilities.as_ref().filter(|c| {
        c.add.len() <= limits::MAX_CAPABILITIES && c.drop.len() <= limits::MAX_CAPABILITIES
    }) {
        h.cap_add = capability_list(&caps.add, "spec.capabilities.add", &mut errors);
        h.cap_drop = capability_list(&caps.drop, "spec.capabilities.drop", &mut errors);
        for (i, c) in caps.add.iter().enumerate() {
            let Ok(c) = capability(c) else { continue };
            if c != "ALL" && h.cap_drop.contains(&c) {
                errors.push(FieldError::new(
                    format!("spec.capabilities.add[{i}]"),
                    format!("{c} is both added and dropped; keep it in one list (drop ALL and add back what the container needs)"),
                ));
            }
        }
    }
    (h, errors)
}

/// The apply-time problems of the spec's hardening.
pub fn check(spec: &ContainerSpec) -> Vec<FieldError> {
    read(spec).1
}

/// The slice's hardening of a spec; Err with the first problem when the spec has one (the
/// apply refuses those, so only an object stored under older rules can).
pub fn resolve(spec: &ContainerSpec) -> Result<Hardening, FieldError> {
    let (h, errors) = read(spec);
    match errors.into_iter().next() {
        None => Ok(h),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{Capabilities, Resources};

    #[test]
    fn memory_quantities() {
        let table = [
            ("256Mi", Ok(256 << 20)),
            ("1Gi", Ok(1 << 30)),
            ("1.5Gi", Ok(3 << 29)),
            ("1G", Ok(1_000_000_000)),
            ("6291456", Ok(6_291_456)),
            ("10M", Ok(10_000_000)),
            ("0.5Ti", Ok(1 << 39)),
        ];
        for (q, want) in table {
            assert_eq!(memory_bytes(q), want, "{q}");
        }
        for bad in ["", "Mi", "256MB", "256 Mi", "-1Gi", "1..5Gi", "abc", "1e9"] {
            let e = memory_bytes(bad).unwrap_err();
            assert!(e.contains("is not a memory quantity"), "{bad}: {e}");
        }
        assert_eq!(
            memory_bytes("4Mi").unwrap_err(),
            "4Mi is less than Docker's minimum of 6Mi (expected at least \"6Mi\")"
        );
        assert!(
            memory_bytes("99999999999Ti").is_err(),
            "overflow is refused"
        );
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(nano_cpus("1.25"), Ok(1_250_000_000));
        assert_eq!(nano_cpus(".5"), Ok(500_000_000));
        assert_eq!(nano_cpus("0.01"), Ok(10_000_000));
        assert_eq!(
            nano_cpus("0.001").unwrap_err(),
            "0.001 CPUs is too little (expected at least 0.01)"
        );
        for bad in ["", "half", "500m", "-1", "0.1234567891", "."] {
            assert!(nano_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability("NET_ADMIN").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("cap_net_raw").unwrap(), "CAP_NET_RAW");
        assert_eq!(capability("all").unwrap(), "ALL");
        let e = capability("NET_ADMN").unwrap_err();
        assert!(
            e.starts_with("\"NET_ADMN\" is not a Linux capability"),
            "{e}"
        );
        assert!(e.ends_with("did you mean NET_ADMIN?"), "{e}");
        assert!(!capability("FLY").unwrap_err().contains("did you mean"));
    }

    #[test]
    fn users() {
        for ok in [
            "1000",
            "1000:1000",
            "nobody",
            "www-data:www-data",
            "_app",
            "0:0",
        ] {
            assert_eq!(check_user(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ":",
            "1000:",
            ":1000",
            "a b",
            "1000:1000:1",
            "4294967295",
            "-x",
            "root;id",
        ] {
            let e = check_user(bad).unwrap_err();
            assert!(e.contains("expected USER or USER:GROUP"), "{bad}: {e}");
        }
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            node: "node1".into(),
            image: "topo/busybox:latest".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_spec_without_hardening_resolves_to_the_default() {
        assert_eq!(resolve(&spec()), Ok(Hardening::default()));
    }

    #[test]
    fn a_hardened_spec_resolves_to_dockers_values() {
        let mut s = spec();
        s.resources = Some(Box::new(Resources {
            memory: Some(Quantity("256Mi".into())),
            cpus: Some(Quantity("0.5".into())),
            pids: Some(64),
        }));
        s.user = Some("1000:1000".into());
        s.read_only_root_filesystem = true;
        s.capabilities = Some(Box::new(Capabilities {
            add: vec!["net_bind_service".into()],
            drop: vec!["ALL".into()],
        }));
        let h = resolve(&s).unwrap();
        assert_eq!(
            h,
            Hardening {
                memory_bytes: Some(268_435_456),
                nano_cpus: Some(500_000_000),
                pids_limit: Some(64),
                user: Some("1000:1000".into()),
                read_only_root_filesystem: true,
                cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
                cap_drop: vec!["ALL".into()],
                allow_privilege_escalation: false,
            }
        );
        assert_eq!(h.security_opt(), vec!["no-new-privileges".to_string()]);
        s.allow_privilege_escalation = true;
        assert!(resolve(&s).unwrap().security_opt().is_empty());
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut s = spec();
        s.resources = Some(Box::new(Resources {
            memory: Some(Quantity("lots".into())),
            cpus: Some(Quantity("0".into())),
            pids: Some(0),
        }));
        s.user = Some("a b".into());
        s.capabilities = Some(Box::new(Capabilities {
            add: vec!["NET_ADMIN".into(), "WIZARD".into(), "net_admin".into()],
            drop: vec!["CAP_NET_ADMIN".into()],
        }));
        let fields: Vec<String> = check(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec![
                "spec.resources.memory",
                "spec.resources.cpus",
                "spec.resources.pids",
                "spec.user",
                "spec.capabilities.add[1]",
                "spec.capabilities.add[2]",
                "spec.capabilities.add[0]",
                "spec.capabilities.add[2]",
            ]
        );
        assert!(resolve(&s).is_err());
    }
}
