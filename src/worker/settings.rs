//! The worker's settings, one table: each has an environment variable (the Lambda, and the
//! defaults of `edgethumb work`), a flag of `edgethumb work`, and one parser that checks the
//! value and puts it into a [`WorkerConfig`]. Both ways in go through the same parser, so a
//! value is accepted or refused, with the same reason, whichever way it came.
//!
//! No CLI parser here (the worker Lambda does not build one): the CLI turns this table into
//! its flags and hands their raw values back to [`WorkerConfig::from_sources`].

use std::time::Duration;

use super::WorkerConfig;

/// One worker setting.
#[derive(Debug)]
pub struct Setting {
    /// The environment variable, e.g. `EDGETHUMB_TARGET_SCORE`.
    pub env: &'static str,
    /// The `edgethumb work` flag without its dashes, e.g. `target-score`.
    pub flag: &'static str,
    /// What the value means (the flag's help).
    pub help: &'static str,
    /// What a valid value looks like: the reason given when a value is refused.
    pub expects: &'static str,
    apply: fn(&mut WorkerConfig, &str) -> Option<()>,
}

/// Where a value came from, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Env,
    Flag,
}

/// A setting given a value it does not accept. Refused at start-up, so a misconfigured
/// worker fails its first invocation loudly instead of writing wrong variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {value:?} is invalid: {reason}", describe(.setting, *.origin))]
    Invalid {
        setting: &'static Setting,
        origin: Origin,
        value: String,
        reason: &'static str,
    },
    #[error("unknown worker setting {0:?}")]
    Unknown(String),
}

impl PartialEq for Setting {
    fn eq(&self, other: &Self) -> bool {
        self.env == other.env
    }
}

impl Eq for Setting {}

impl ConfigError {
    /// Why the value was refused, the same whichever way it came in.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigError::Invalid { reason, .. } => reason,
            ConfigError::Unknown(_) => "unknown setting",
        }
    }
}

fn describe(setting: &Setting, origin: Origin) -> String {
    match origin {
        Origin::Env => format!("environment variable {}", setting.env),
        Origin::Flag => format!("--{} (or {})", setting.flag, setting.env),
    }
}

fn number<T: std::str::FromStr>(value: &str, valid: impl Fn(&T) -> bool) -> Option<T> {
    value.trim().parse::<T>().ok().filter(valid)
}

/// Every worker setting (documented in `docs/worker.md`).
pub static SETTINGS: &[Setting] = &[
    Setting {
        env: "EDGETHUMB_CACHE_CONTROL",
        flag: "cache-control",
        help: "Cache-Control written on variants",
        expects: "a non-empty single-line ASCII header value",
        apply: |c, v| {
            let ok = !v.trim().is_empty() && v.is_ascii() && !v.contains(['\r', '\n']);
            ok.then(|| c.cache_control = v.trim().to_string())
        },
    },
    Setting {
        env: "EDGETHUMB_TARGET_SCORE",
        flag: "target-score",
        help: "SSIMULACRA2 score the quality search aims for when the URL sets no `q`",
        expects: "a number in 0..=100",
        apply: |c, v| {
            number(v, |s: &f64| (0.0..=100.0).contains(s)).map(|s| c.tuning.target_score = s)
        },
    },
    Setting {
        env: "EDGETHUMB_MAX_ENCODES",
        flag: "max-encodes",
        help: "encodes per quality search",
        expects: "an integer in 1..=20",
        apply: |c, v| number(v, |n: &u32| (1..=20).contains(n)).map(|n| c.tuning.max_encodes = n),
    },
    Setting {
        env: "EDGETHUMB_CONCURRENCY",
        flag: "concurrency",
        help: "renders at once (default: the cores the process may use)",
        expects: "an integer in 1..=64",
        apply: |c, v| number(v, |n: &usize| (1..=64).contains(n)).map(|n| c.concurrency = n),
    },
    Setting {
        env: "EDGETHUMB_MEMORY_BUDGET_MB",
        flag: "memory-budget-mb",
        help: "working memory renders may hold at once, in MiB (default: 60 % of the Lambda's memory, else 1024)",
        expects: "an integer >= 64",
        apply: |c, v| number(v, |n: &u32| *n >= 64).map(|n| c.memory_budget_mib = n),
    },
    Setting {
        env: "EDGETHUMB_MAX_SOURCE_PIXELS",
        flag: "max-source-pixels",
        help: "originals with more pixels are refused (permanently)",
        expects: "a positive integer",
        apply: |c, v| number(v, |n: &u64| *n > 0).map(|n| c.limits.max_pixels = n),
    },
    Setting {
        env: "EDGETHUMB_MAX_SOURCE_BYTES",
        flag: "max-source-bytes",
        help: "originals larger than this are refused (permanently)",
        expects: "a positive integer",
        apply: |c, v| number(v, |n: &u64| *n > 0).map(|n| c.limits.max_bytes = n),
    },
    Setting {
        env: "EDGETHUMB_TIME_RESERVE_MS",
        flag: "time-reserve-ms",
        help: "a render starts only while this much invocation time remains (plus the longest render so far)",
        expects: "an integer number of milliseconds",
        apply: |c, v| number(v, |_: &u64| true).map(|n| c.time_reserve = Duration::from_millis(n)),
    },
    Setting {
        env: "EDGETHUMB_BUCKET",
        flag: "bucket",
        help: "comma-separated buckets; jobs for any other bucket are refused (permanently)",
        expects: "a comma-separated list of bucket names",
        apply: |c, v| {
            let buckets: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(String::from)
                .collect();
            // An empty list means "unset" (every bucket), as an unset variable does.
            c.allowed_buckets = (!buckets.is_empty()).then_some(buckets);
            Some(())
        },
    },
    Setting {
        env: "EDGETHUMB_DISTRIBUTION_ID",
        flag: "distribution-id",
        help: "CloudFront distribution to invalidate after an original is replaced or deleted (unset: variants are refreshed, no CDN is invalidated)",
        expects: "a CloudFront distribution id (upper-case letters and digits)",
        apply: |c, v| {
            let id = v.trim();
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            ok.then(|| c.distribution_id = Some(id.to_string()))
        },
    },
];

impl Setting {
    /// The setting with environment variable or flag `name`.
    pub fn named(name: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.env == name || s.flag == name)
    }

    /// Check `value` and put it into `config`.
    pub fn apply(
        &'static self,
        config: &mut WorkerConfig,
        value: &str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        (self.apply)(config, value).ok_or_else(|| ConfigError::Invalid {
            setting: self,
            origin,
            value: value.to_string(),
            reason: self.expects,
        })
    }
}

impl WorkerConfig {
    /// Read `EDGETHUMB_*` variables; unset ones keep their defaults.
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` sizes the memory budget on Lambda.
    pub fn from_env() -> Result<WorkerConfig, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`WorkerConfig::from_env`] over any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<WorkerConfig, ConfigError> {
        Self::from_sources(get, std::iter::empty::<(&str, &str)>())
    }

    /// The environment (through `get`), then `flags` over it: `(flag or variable name,
    /// value)` pairs, e.g. from `edgethumb work --target-score 70`. Every value goes through
    /// the same check, whichever way it came.
    pub fn from_sources<'a>(
        get: impl Fn(&str) -> Option<String>,
        flags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<WorkerConfig, ConfigError> {
        let mut config = WorkerConfig::default();
        if let Some(mib) =
            get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|v| v.trim().parse::<u32>().ok())
        {
            // Leave room for the runtime, the AWS SDK and the allocator's slack.
            config.memory_budget_mib = (mib / 10 * 6).max(64);
        }
        for setting in SETTINGS {
            if let Some(value) = get(setting.env) {
                setting.apply(&mut config, &value, Origin::Env)?;
            }
        }
        for (name, value) in flags {
            let setting = Setting::named(name.trim_start_matches('-'))
                .ok_or_else(|| ConfigError::Unknown(name.to_string()))?;
            setting.apply(&mut config, value, Origin::Flag)?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{DEFAULT_CACHE_CONTROL, tuning};
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = WorkerConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c.cache_control, DEFAULT_CACHE_CONTROL);
        assert_eq!(c.tuning.target_score, tuning::DEFAULT_TARGET_SCORE);
        assert!(c.concurrency >= 1);
        assert!(c.allowed_buckets.is_none());
        assert!(c.distribution_id.is_none());
    }

    #[test]
    fn reads_every_variable() {
        let c = WorkerConfig::from_lookup(lookup(&[
            ("EDGETHUMB_CACHE_CONTROL", "public, max-age=60"),
            ("EDGETHUMB_TARGET_SCORE", "72.5"),
            ("EDGETHUMB_MAX_ENCODES", "4"),
            ("EDGETHUMB_CONCURRENCY", "3"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
            ("EDGETHUMB_MAX_SOURCE_PIXELS", "1000"),
            ("EDGETHUMB_MAX_SOURCE_BYTES", "2000"),
            ("EDGETHUMB_TIME_RESERVE_MS", "1500"),
            ("EDGETHUMB_BUCKET", "a, b"),
            ("EDGETHUMB_DISTRIBUTION_ID", "E2QWRUHEXAMPLE"),
        ]))
        .unwrap();
        assert_eq!(c.cache_control, "public, max-age=60");
        assert_eq!(c.tuning.target_score, 72.5);
        assert_eq!(c.tuning.max_encodes, 4);
        assert_eq!(c.concurrency, 3);
        assert_eq!(c.memory_budget_mib, 1224);
        assert_eq!(c.limits.max_pixels, 1000);
        assert_eq!(c.limits.max_bytes, 2000);
        assert_eq!(c.time_reserve, Duration::from_millis(1500));
        assert_eq!(c.allowed_buckets, Some(vec!["a".into(), "b".into()]));
        assert_eq!(c.distribution_id.as_deref(), Some("E2QWRUHEXAMPLE"));
        let c = WorkerConfig::from_lookup(lookup(&[
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
            ("EDGETHUMB_MEMORY_BUDGET_MB", "512"),
        ]))
        .unwrap();
        assert_eq!(c.memory_budget_mib, 512);
    }

    #[test]
    fn flags_override_the_environment() {
        let c = WorkerConfig::from_sources(
            lookup(&[
                ("EDGETHUMB_TARGET_SCORE", "60"),
                ("EDGETHUMB_CONCURRENCY", "2"),
            ]),
            [("target-score", "75"), ("--cache-control", "no-cache")],
        )
        .unwrap();
        assert_eq!(c.tuning.target_score, 75.0);
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.cache_control, "no-cache");
        assert!(matches!(
            WorkerConfig::from_sources(lookup(&[]), [("colour", "red")]),
            Err(ConfigError::Unknown(_))
        ));
    }

    const BAD: &[(&str, &str)] = &[
        ("EDGETHUMB_TARGET_SCORE", "high"),
        ("EDGETHUMB_TARGET_SCORE", "101"),
        ("EDGETHUMB_CONCURRENCY", "0"),
        ("EDGETHUMB_CONCURRENCY", "65"),
        ("EDGETHUMB_MAX_ENCODES", "0"),
        ("EDGETHUMB_MEMORY_BUDGET_MB", "10"),
        ("EDGETHUMB_MAX_SOURCE_BYTES", "0"),
        ("EDGETHUMB_TIME_RESERVE_MS", "-1"),
        ("EDGETHUMB_CACHE_CONTROL", "a\nb"),
        ("EDGETHUMB_CACHE_CONTROL", " "),
        ("EDGETHUMB_DISTRIBUTION_ID", "e2qwr/uh"),
    ];

    #[test]
    fn refuses_bad_values_naming_the_variable() {
        for (name, value) in BAD {
            let err = WorkerConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_bad_value_is_refused_alike_from_the_environment_and_the_flag() {
        for (name, value) in BAD {
            let setting = Setting::named(name).unwrap();
            let from_env = WorkerConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            let from_flag =
                WorkerConfig::from_sources(lookup(&[]), [(setting.flag, *value)]).unwrap_err();
            assert_eq!(from_env.reason(), from_flag.reason());
            assert_eq!(from_env.reason(), setting.expects);
            // The same words after the origin.
            let tail = |e: &ConfigError| {
                let text = e.to_string();
                text[text.find(&format!("{value:?}")).unwrap()..].to_string()
            };
            assert_eq!(tail(&from_env), tail(&from_flag));
            assert!(
                from_flag
                    .to_string()
                    .contains(&format!("--{}", setting.flag))
            );
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert!(a.env != b.env && a.flag != b.flag, "{} / {}", a.env, b.env);
            }
        }
    }
}
