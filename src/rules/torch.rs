//! torch's keyword arguments of a rule, read from a checkpoint's
//! `param_groups[0]` or a case file's `hyper` by one [`Rule::from_torch`]
//! per rule.
//!
//! [`Rule::from_torch`]: super::Rule::from_torch

use serde_json::{Map, Value};

use super::RuleKind;
use crate::error::{Error, Result};

/// Where the keyword arguments come from; it decides what an absent key
/// means and how an error reads.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A checkpoint's `param_groups[0]`, as torch's `state_dict` writes it:
    /// every torch key present, this crate's own options optional
    /// ([`Error::Checkpoint`]).
    Checkpoint,
    /// A case file's `hyper`: torch's keyword arguments as a call passes
    /// them, the absent ones at torch's defaults, this crate's own options
    /// not among them ([`Error::InvalidOptions`]). With `round_f32` every
    /// number is rounded to `f32`.
    Case { round_f32: bool },
}

/// Typed access to one rule's keyword arguments. Each read names its key,
/// so the keys a rule takes are those its `from_torch` reads.
pub(crate) struct TorchArgs<'a> {
    rule: RuleKind,
    map: &'a Map<String, Value>,
    source: Source,
    /// The keys read so far.
    used: Vec<&'static str>,
}

/// Keys torch writes in a `state_dict` that do not change the arithmetic.
const IGNORED_KEYS: &[&str] = &[
    "params",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "initial_lr",
];

impl<'a> TorchArgs<'a> {
    /// The configuration of `rule` a checkpoint's `param_groups[0]`
    /// describes; a key the rule does not read (torch's inert ones aside)
    /// is an error.
    pub(crate) fn checkpoint_config(
        rule: RuleKind,
        map: &'a Map<String, Value>,
    ) -> Result<super::Config> {
        let mut args = TorchArgs {
            rule,
            map,
            source: Source::Checkpoint,
            used: Vec::new(),
        };
        let config = rule.config_from_torch(&mut args)?;
        for k in map.keys() {
            if !args.used.contains(&k.as_str()) && !IGNORED_KEYS.contains(&k.as_str()) {
                return Err(Error::Checkpoint(format!(
                    "param_groups[0] has `{k}`, which rule {rule} does not know"
                )));
            }
        }
        Ok(config)
    }

    /// The configuration of the rule named `rule` (exactly) that a case
    /// file's `hyper` describes; `Err` names the unknown rule or key, or
    /// the ill-typed value.
    pub(crate) fn case_config(
        rule: &str,
        hyper: &'a Map<String, Value>,
        round_f32: bool,
    ) -> std::result::Result<super::Config, String> {
        let kind = RuleKind::ALL
            .into_iter()
            .find(|k| k.name() == rule)
            .ok_or_else(|| format!("unknown rule `{rule}` (known: {})", super::NAMES.join(", ")))?;
        let source = Source::Case { round_f32 };
        // The keys the rule takes: those it reads from no keys at all.
        let empty = Map::new();
        let mut probe = TorchArgs {
            rule: kind,
            map: &empty,
            source,
            used: Vec::new(),
        };
        kind.config_from_torch(&mut probe).map_err(message)?;
        let known = probe.used;
        let unknown: Vec<&str> = hyper
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown hyperparameter{} {} for rule {rule} (it takes: {})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                known.join(", ")
            ));
        }
        let mut args = TorchArgs {
            rule: kind,
            map: hyper,
            source,
            used: Vec::new(),
        };
        kind.config_from_torch(&mut args).map_err(message)
    }

    /// An error about these arguments, of the kind their source gives.
    pub(crate) fn error(&self, message: String) -> Error {
        match self.source {
            Source::Checkpoint => Error::Checkpoint(message),
            Source::Case { .. } => Error::InvalidOptions(message),
        }
    }

    fn round(&self, v: f64) -> f64 {
        match self.source {
            Source::Case { round_f32: true } => v as f32 as f64,
            _ => v,
        }
    }

    fn missing(&self, key: &str) -> Error {
        self.error(format!("param_groups[0] has no `{key}`"))
    }

    fn ill_typed(&self, key: &str, v: &Value, checkpoint: &str, case: &str) -> Error {
        self.error(match self.source {
            Source::Checkpoint => format!("param_groups[0].{key}: {v} {checkpoint}"),
            Source::Case { .. } => {
                format!("hyperparameter `{key}` of {} {case}, got {v}", self.rule)
            }
        })
    }

    /// A number of torch's: required in a checkpoint, `default` when a
    /// case leaves it out.
    pub(crate) fn num(&mut self, key: &'static str, default: f64) -> Result<f64> {
        self.used.push(key);
        match (self.map.get(key), self.source) {
            (None, Source::Checkpoint) => Err(self.missing(key)),
            (None, Source::Case { .. }) => Ok(default),
            (Some(v), _) => v
                .as_f64()
                .map(|x| self.round(x))
                .ok_or_else(|| self.ill_typed(key, v, "is not a number", "must be a number")),
        }
    }

    /// A boolean of torch's: required in a checkpoint, `default` when a
    /// case leaves it out.
    pub(crate) fn flag(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match (self.optional_flag(key)?, self.source) {
            (Some(b), _) => Ok(b),
            (None, Source::Checkpoint) => Err(self.missing(key)),
            (None, Source::Case { .. }) => Ok(default),
        }
    }

    /// A boolean of torch's that may be absent (torch's own files of older
    /// versions leave it out).
    pub(crate) fn optional_flag(&mut self, key: &'static str) -> Result<Option<bool>> {
        self.used.push(key);
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.ill_typed(key, v, "is not a boolean", "must be true or false")),
        }
    }

    /// torch's `betas`: required in a checkpoint, `default` when a case
    /// leaves it out.
    pub(crate) fn betas(&mut self, default: (f64, f64)) -> Result<(f64, f64)> {
        self.num_pair("betas", default)
    }

    /// A pair of torch's numbers (`betas`, Rprop's `etas` and
    /// `step_sizes`): required in a checkpoint, `default` when a case
    /// leaves it out.
    pub(crate) fn num_pair(
        &mut self,
        key: &'static str,
        default: (f64, f64),
    ) -> Result<(f64, f64)> {
        match self.source {
            Source::Checkpoint => self.pair(key)?.ok_or_else(|| self.missing(key)),
            Source::Case { .. } => {
                self.used.push(key);
                let Some(v) = self.map.get(key) else {
                    return Ok(default);
                };
                match v.as_array().map(|a| a.as_slice()) {
                    Some([a, b]) => match (a.as_f64(), b.as_f64()) {
                        (Some(a), Some(b)) => Ok((self.round(a), self.round(b))),
                        _ => Err(self.error(format!(
                            "`{key}` of {} must be two numbers, got {v}",
                            self.rule
                        ))),
                    },
                    _ => Err(self.error(format!(
                        "`{key}` of {} must be a list of two numbers, got {v}",
                        self.rule
                    ))),
                }
            }
        }
    }

    /// A list of `N` numbers of the reference's (AdEMAMix's three `betas`):
    /// required in a checkpoint, `default` when a case leaves it out.
    pub(crate) fn numbers<const N: usize>(
        &mut self,
        key: &'static str,
        default: [f64; N],
    ) -> Result<[f64; N]> {
        self.used.push(key);
        let Some(v) = self.map.get(key) else {
            return match self.source {
                Source::Checkpoint => Err(self.missing(key)),
                Source::Case { .. } => Ok(default),
            };
        };
        let values: Option<Vec<f64>> = v
            .as_array()
            .filter(|a| a.len() == N)
            .and_then(|a| a.iter().map(Value::as_f64).collect());
        match values {
            Some(values) => {
                let mut out = default;
                for (o, x) in out.iter_mut().zip(values) {
                    *o = self.round(x);
                }
                Ok(out)
            }
            None => {
                let want = format!("must be a list of {N} numbers");
                Err(self.ill_typed(key, v, &format!("is not a list of {N} numbers"), &want))
            }
        }
    }

    /// A number of the reference's that may be `null` (off): the key
    /// required in a checkpoint, `default` when a case leaves it out.
    pub(crate) fn nullable_num(
        &mut self,
        key: &'static str,
        default: Option<f64>,
    ) -> Result<Option<f64>> {
        self.used.push(key);
        match (self.map.get(key), self.source) {
            (None, Source::Checkpoint) => Err(self.missing(key)),
            (None, Source::Case { .. }) => Ok(default),
            (Some(Value::Null), _) => Ok(None),
            (Some(v), _) => v.as_f64().map(|x| Some(self.round(x))).ok_or_else(|| {
                self.ill_typed(
                    key,
                    v,
                    "is not a number or null",
                    "must be a number or null",
                )
            }),
        }
    }

    /// A string of torch's that may be `null` (Muon's `adjust_lr_fn`): the
    /// key required in a checkpoint, `default` when a case leaves it out.
    pub(crate) fn nullable_str(
        &mut self,
        key: &'static str,
        default: Option<&str>,
    ) -> Result<Option<String>> {
        self.used.push(key);
        match (self.map.get(key), self.source) {
            (None, Source::Checkpoint) => Err(self.missing(key)),
            (None, Source::Case { .. }) => Ok(default.map(str::to_string)),
            (Some(Value::Null), _) => Ok(None),
            (Some(Value::String(s)), _) => Ok(Some(s.clone())),
            (Some(v), _) => Err(self.ill_typed(
                key,
                v,
                "is not a string or null",
                "must be a string or null",
            )),
        }
    }

    /// A pair of numbers whose first may be `null` (Adafactor's `eps`):
    /// required in a checkpoint, `default` when a case leaves it out.
    pub(crate) fn nullable_first_pair(
        &mut self,
        key: &'static str,
        default: (Option<f64>, f64),
    ) -> Result<(Option<f64>, f64)> {
        self.used.push(key);
        let Some(v) = self.map.get(key) else {
            return match self.source {
                Source::Checkpoint => Err(self.missing(key)),
                Source::Case { .. } => Ok(default),
            };
        };
        let pair = match v.as_array().map(|a| a.as_slice()) {
            Some([first, second]) => match (first, second.as_f64()) {
                (Value::Null, Some(b)) => Some((None, self.round(b))),
                (a, Some(b)) => a.as_f64().map(|a| (Some(self.round(a)), self.round(b))),
                _ => None,
            },
            _ => None,
        };
        pair.ok_or_else(|| {
            self.ill_typed(
                key,
                v,
                "is not a pair of a number or null and a number",
                "must be a list of a number or null and a number",
            )
        })
    }

    /// A non-negative integer of torch's (Muon's `ns_steps`): required in a
    /// checkpoint, `default` when a case leaves it out.
    pub(crate) fn count(&mut self, key: &'static str, default: u32) -> Result<u32> {
        self.used.push(key);
        match (self.map.get(key), self.source) {
            (None, Source::Checkpoint) => Err(self.missing(key)),
            (None, Source::Case { .. }) => Ok(default),
            (Some(v), _) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| {
                    self.ill_typed(
                        key,
                        v,
                        "is not a non-negative integer",
                        "must be a non-negative integer",
                    )
                }),
        }
    }

    /// One of this crate's own boolean options (not torch's): optional in
    /// a checkpoint, never in a case file (`default` there).
    pub(crate) fn own_flag(&mut self, key: &'static str, default: bool) -> Result<bool> {
        Ok(self.own_optional_flag(key)?.unwrap_or(default))
    }

    /// As [`TorchArgs::own_flag`], `None` when absent.
    pub(crate) fn own_optional_flag(&mut self, key: &'static str) -> Result<Option<bool>> {
        match self.source {
            Source::Checkpoint => self.optional_flag(key),
            Source::Case { .. } => Ok(None),
        }
    }

    /// One of this crate's own options that is a pair of numbers or
    /// `null`: optional in a checkpoint, never in a case file.
    pub(crate) fn own_pair(&mut self, key: &'static str) -> Result<Option<(f64, f64)>> {
        match self.source {
            Source::Checkpoint => self.pair(key),
            Source::Case { .. } => Ok(None),
        }
    }

    fn pair(&mut self, key: &'static str) -> Result<Option<(f64, f64)>> {
        self.used.push(key);
        let bad = |m: String| Error::Checkpoint(m);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => match a.as_slice() {
                [x, y] => match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => Ok(Some((x, y))),
                    _ => Err(bad(format!("param_groups[0].{key}: not two numbers"))),
                },
                _ => Err(bad(format!("param_groups[0].{key}: not two numbers"))),
            },
            Some(v) => Err(bad(format!("param_groups[0].{key}: {v} is not a pair"))),
        }
    }
}

fn message(e: Error) -> String {
    match e {
        Error::InvalidOptions(m) => m,
        e => e.to_string(),
    }
}
