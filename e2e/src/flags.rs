//! The benches' command lines: `--name N` pairs of whole numbers, each with a default. One
//! parser so every bench says the same thing about a bad flag.

use std::collections::BTreeMap;

/// `--name N` pairs from `args` over `defaults` (names without the dashes); an unknown flag,
/// a flag without a value or a value that is not a whole number is an error naming it.
pub fn numeric(
    defaults: &[(&'static str, u64)],
    args: impl IntoIterator<Item = String>,
) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut out: BTreeMap<&'static str, u64> = defaults.iter().copied().collect();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").unwrap_or(&flag);
        let Some(slot) = out.iter_mut().find(|(k, _)| **k == name).map(|(_, v)| v) else {
            return Err(format!("unknown flag {flag}"));
        };
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BTreeMap<&'static str, u64>, String> {
        numeric(
            &[("secs", 10), ("rounds", 3)],
            args.iter().map(|s| s.to_string()),
        )
    }

    #[test]
    fn flags_override_defaults_and_bad_ones_are_named() {
        let m = parse(&["--rounds", "5"]).unwrap();
        assert_eq!((m["secs"], m["rounds"]), (10, 5));
        assert_eq!(parse(&["--laps", "1"]).unwrap_err(), "unknown flag --laps");
        assert_eq!(parse(&["--secs"]).unwrap_err(), "--secs needs a value");
        assert_eq!(
            parse(&["--secs", "x"]).unwrap_err(),
            "--secs: \"x\" is not a number"
        );
    }
}
