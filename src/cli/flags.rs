//! Hand-rolled flag parsing: `--name value` pairs and bare switches, each command listing the
//! flags it accepts so that a typo is an error, not a silently ignored option.

use std::collections::BTreeMap;

/// Switches take no value.
const SWITCHES: &[&str] = &["--allow-unsafe"];

/// Parsed flags of one command.
#[derive(Debug, Default)]
pub struct Flags {
    values: BTreeMap<String, Vec<String>>,
}

impl Flags {
    /// Parses `args`, accepting the Kafka flags and `accepted`.
    pub fn parse(args: &[String], accepted: &[&str]) -> Result<Flags, String> {
        let known = |flag: &str| super::KAFKA_FLAGS.contains(&flag) || accepted.contains(&flag);
        let mut flags = Flags::default();
        let mut index = 0;
        while index < args.len() {
            let flag = args[index].as_str();
            if !known(flag) {
                return Err(format!(
                    "unknown option `{flag}` (run `holdfast help` for the list)"
                ));
            }
            if SWITCHES.contains(&flag) {
                flags.values.entry(flag.to_owned()).or_default();
                index += 1;
                continue;
            }
            let value = args
                .get(index + 1)
                .filter(|value| !value.starts_with("--"))
                .ok_or_else(|| format!("{flag} needs a value"))?;
            flags
                .values
                .entry(flag.to_owned())
                .or_default()
                .push(value.clone());
            index += 2;
        }
        Ok(flags)
    }

    /// The last value of `flag`, if given.
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.values
            .get(flag)
            .and_then(|values| values.last())
            .map(String::as_str)
    }

    /// Every value of a repeatable flag.
    pub fn all(&self, flag: &str) -> impl Iterator<Item = &str> {
        self.values
            .get(flag)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    pub fn switch(&self, flag: &str) -> bool {
        self.values.contains_key(flag)
    }

    pub fn text(&self, flag: &str, default: &str) -> String {
        self.get(flag).unwrap_or(default).to_owned()
    }

    /// A required value.
    pub fn required(&self, flag: &str) -> Result<String, String> {
        self.get(flag)
            .map(str::to_owned)
            .ok_or_else(|| format!("{flag} is required"))
    }

    /// A non-negative integer, or `default`.
    pub fn number(&self, flag: &str, default: u64) -> Result<u64, String> {
        match self.get(flag) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("{flag} expects a non-negative integer, got `{value}`")),
        }
    }

    /// A service address from the flag, else from the environment variable `env`.
    pub fn address(&self, flag: &str, env: &str) -> Result<String, String> {
        if let Some(value) = self.get(flag) {
            return Ok(value.to_owned());
        }
        std::env::var(env).map_err(|_| {
            format!("{flag} not given and ${env} not set (scripts/services-up, then `source .services/env`)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    /// Goal: known flags parse, repeats accumulate, bad input is an error naming the flag.
    #[test]
    fn flags_parse_and_refuse_bad_input() {
        let flags = Flags::parse(
            &args(&[
                "--batch",
                "7",
                "--set",
                "a=1",
                "--set",
                "b=2",
                "--allow-unsafe",
            ]),
            &["--batch"],
        )
        .unwrap();
        assert_eq!(flags.number("--batch", 1).unwrap(), 7);
        assert_eq!(flags.number("--workers", 3).unwrap(), 3);
        assert_eq!(flags.all("--set").collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert!(flags.switch("--allow-unsafe"));
        let error = Flags::parse(&args(&["--bogus", "1"]), &[]).unwrap_err();
        assert!(error.contains("--bogus"), "{error}");
        let error = Flags::parse(&args(&["--batch"]), &["--batch"]).unwrap_err();
        assert!(error.contains("needs a value"), "{error}");
        let flags = Flags::parse(&args(&["--batch", "x"]), &["--batch"]).unwrap();
        assert!(flags.number("--batch", 1).is_err());
        assert!(flags.required("--truth").is_err());
    }
}
