//! Length limits on every free-text field, so no client — hostile or buggy — can make the
//! controller store (and every agent decode) megabytes per object. Checked at apply with the
//! field path, like every other static check; the limits follow Kubernetes' where it has
//! them (annotations: 256 KiB in all) and Docker's practice elsewhere. Label keys and values
//! are limited by their syntax already (validate.rs).

use crate::kinds::Resource;
use crate::validate::{FieldError, field_key};

pub const MAX_LABELS: usize = 64;
pub const MAX_ANNOTATIONS: usize = 64;
pub const MAX_ANNOTATION_VALUE: usize = 64 * 1024;
pub const MAX_ANNOTATIONS_TOTAL: usize = 256 * 1024;
pub const MAX_IMAGE: usize = 512;
pub const MAX_COMMAND_ARGS: usize = 256;
pub const MAX_COMMAND_ARG: usize = 4096;
pub const MAX_ENV: usize = 256;
pub const MAX_ENV_NAME: usize = 256;
pub const MAX_ENV_VALUE: usize = 32 * 1024;
pub const MAX_NETWORKS: usize = 32;
pub const MAX_PORTS: usize = 256;
pub const MAX_RESERVED_PORTS: usize = 1024;
pub const MAX_LISTEN: usize = 64;
/// `resources.memory` and `resources.cpus` as written.
pub const MAX_QUANTITY: usize = 64;
/// `user:group`, each a Linux name of at most 32 bytes.
pub const MAX_USER: usize = 65;
/// Entries of `capabilities.add` and of `capabilities.drop` (Linux has 41 capabilities).
pub const MAX_CAPABILITIES: usize = 64;

fn too_long(field: String, what: &str, len: usize, max: usize) -> FieldError {
    FieldError::new(
        field,
        format!("{what} is {len} bytes long; at most {max} are allowed"),
    )
}

fn too_many(field: &str, what: &str, n: usize, max: usize) -> FieldError {
    FieldError::new(field, format!("{n} {what}; at most {max} are allowed"))
}

/// The length (and count) errors of `r`.
pub fn check(r: &Resource) -> Vec<FieldError> {
    let mut out = Vec::new();
    let meta = r.metadata();
    if meta.labels.len() > MAX_LABELS {
        out.push(too_many(
            "metadata.labels",
            "labels",
            meta.labels.len(),
            MAX_LABELS,
        ));
    }
    if meta.annotations.len() > MAX_ANNOTATIONS {
        out.push(too_many(
            "metadata.annotations",
            "annotations",
            meta.annotations.len(),
            MAX_ANNOTATIONS,
        ));
    }
    let mut total = 0;
    for (k, v) in &meta.annotations {
        total += k.len() + v.len();
        if v.len() > MAX_ANNOTATION_VALUE {
            let f = field_key("metadata.annotations", k);
            out.push(too_long(f, "the value", v.len(), MAX_ANNOTATION_VALUE));
        }
    }
    if total > MAX_ANNOTATIONS_TOTAL {
        out.push(too_long(
            "metadata.annotations".into(),
            "the annotations together",
            total,
            MAX_ANNOTATIONS_TOTAL,
        ));
    }
    match r {
        Resource::Container(c) => check_container(&c.spec, &mut out),
        Resource::Link(l) => {
            if let Some(listen) = &l.spec.listen
                && listen.len() > MAX_LISTEN
            {
                out.push(too_long(
                    "spec.listen".into(),
                    "listen",
                    listen.len(),
                    MAX_LISTEN,
                ));
            }
        }
        Resource::Node(n) => {
            if let Some(ports) = &n.spec.reserved_ports {
                if ports.len() > MAX_RESERVED_PORTS {
                    out.push(too_many(
                        "spec.reservedPorts",
                        "reserved ports",
                        ports.len(),
                        MAX_RESERVED_PORTS,
                    ));
                }
                for (i, p) in ports.iter().enumerate() {
                    if *p == 0 {
                        out.push(FieldError::new(
                            format!("spec.reservedPorts[{i}]"),
                            "0 is not a port (expected 1-65535)",
                        ));
                    }
                }
            }
        }
        Resource::Network(_) | Resource::Tunnel(_) => {}
    }
    out
}

fn check_container(spec: &crate::kinds::ContainerSpec, out: &mut Vec<FieldError>) {
    if spec.image.len() > MAX_IMAGE {
        out.push(too_long(
            "spec.image".into(),
            "the image reference",
            spec.image.len(),
            MAX_IMAGE,
        ));
    }
    if spec.command.len() > MAX_COMMAND_ARGS {
        out.push(too_many(
            "spec.command",
            "arguments",
            spec.command.len(),
            MAX_COMMAND_ARGS,
        ));
    }
    for (i, a) in spec.command.iter().enumerate() {
        if a.len() > MAX_COMMAND_ARG {
            out.push(too_long(
                format!("spec.command[{i}]"),
                "the argument",
                a.len(),
                MAX_COMMAND_ARG,
            ));
        }
    }
    if spec.env.len() > MAX_ENV {
        out.push(too_many("spec.env", "variables", spec.env.len(), MAX_ENV));
    }
    for (k, v) in &spec.env {
        let f = field_key("spec.env", k);
        if k.len() > MAX_ENV_NAME {
            out.push(too_long(f.clone(), "the name", k.len(), MAX_ENV_NAME));
        }
        if v.len() > MAX_ENV_VALUE {
            out.push(too_long(f, "the value", v.len(), MAX_ENV_VALUE));
        }
    }
    if spec.networks.len() > MAX_NETWORKS {
        out.push(too_many(
            "spec.networks",
            "networks",
            spec.networks.len(),
            MAX_NETWORKS,
        ));
    }
    if spec.ports.len() > MAX_PORTS {
        out.push(too_many("spec.ports", "ports", spec.ports.len(), MAX_PORTS));
    }
    check_hardening(spec, out);
}

fn check_hardening(spec: &crate::kinds::ContainerSpec, out: &mut Vec<FieldError>) {
    if let Some(r) = &spec.resources {
        for (field, q) in [
            ("spec.resources.memory", &r.memory),
            ("spec.resources.cpus", &r.cpus),
        ] {
            if let Some(q) = q
                && q.as_str().len() > MAX_QUANTITY
            {
                out.push(too_long(
                    field.into(),
                    "the quantity",
                    q.as_str().len(),
                    MAX_QUANTITY,
                ));
            }
        }
    }
    if let Some(u) = &spec.user
        && u.len() > MAX_USER
    {
        out.push(too_long("spec.user".into(), "the user", u.len(), MAX_USER));
    }
    if let Some(c) = &spec.capabilities {
        for (field, list) in [
            ("spec.capabilities.add", &c.add),
            ("spec.capabilities.drop", &c.drop),
        ] {
            if list.len() > MAX_CAPABILITIES {
                out.push(too_many(
                    field,
                    "capabilities",
                    list.len(),
                    MAX_CAPABILITIES,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(extra: &str) -> Resource {
        let y = format!(
            "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: c}}\nspec:\n  node: n\n  image: busybox\n{extra}"
        );
        Resource::from_value(serde_yaml::from_str(&y).unwrap()).unwrap()
    }

    #[test]
    fn long_fields_are_refused_with_their_path() {
        let mut r = container(&format!(
            "  env: {{BIG: {}}}\n  command: [sh, {}]\n",
            "x".repeat(MAX_ENV_VALUE + 1),
            "y".repeat(MAX_COMMAND_ARG + 1)
        ));
        r.metadata_mut()
            .annotations
            .insert("note".into(), "z".repeat(MAX_ANNOTATION_VALUE + 1));
        let errs = check(&r);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations.note",
                "spec.command[1]",
                "spec.env.BIG"
            ],
            "{errs:?}"
        );
        assert!(errs[2].message.contains("at most 32768"), "{errs:?}");
        assert!(check(&container("  env: {A: b}\n")).is_empty());
    }
}
