//! What the control-plane benchmarks (`topo-bench`, `scale-bench`) share: a cluster on the
//! secure path ([`cluster`]: the PKI, etcd with TLS, client certificates and per-node users,
//! the real `topo-controller` binary), the generated manifest and its applies of up to 6 MiB
//! ([`manifest`]), a bare HTTPS client with one of the PKI's identities ([`https`]) and a
//! process's figures from /proc ([`procfs`]).
//!
//! It sits beside the binaries rather than in the controller library because only the
//! benchmarks use it; each binary includes it with `mod bench_support;`.

pub mod cluster;
pub mod https;
pub mod manifest;
pub mod procfs;
