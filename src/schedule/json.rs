//! Schedules from and to JSON, with torch's keyword names.

use super::*;

struct Args<'a> {
    kind: String,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Args<'a> {
    fn err(&self, msg: String) -> Error {
        Error::InvalidOptions(format!("schedule `{}`: {msg}", self.kind))
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn f64_or(&mut self, key: &'static str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
            None => default.ok_or_else(|| self.err(format!("`{key}` is required"))),
        }
    }

    fn u64_opt(&mut self, key: &'static str) -> Result<Option<u64>> {
        match self.get(key) {
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
            None => Ok(None),
        }
    }

    fn u64_or(&mut self, key: &'static str, default: Option<u64>) -> Result<u64> {
        self.u64_opt(key)?
            .or(default)
            .ok_or_else(|| self.err(format!("`{key}` is required")))
    }

    fn bool_or(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
            None => Ok(default),
        }
    }

    fn str_or(&mut self, key: &'static str, default: &'static str) -> Result<&'a str> {
        match self.get(key) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(format!("`{key}` must be a string, got {v}"))),
            None => Ok(default),
        }
    }

    fn milestones(&mut self, key: &'static str) -> Result<Vec<u64>> {
        match self.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64().ok_or_else(|| {
                        self.err(format!("`{key}` must hold non-negative integers, got {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(self.err(format!("`{key}` must be a list, got {v}"))),
            None => Err(self.err(format!("`{key}` is required"))),
        }
    }

    fn finish(&self) -> Result<()> {
        for k in self.map.keys() {
            if k != "kind" && !self.used.contains(&k.as_str()) {
                return Err(self.err(format!(
                    "unknown argument `{k}` (it takes: {})",
                    self.used.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// The sub-schedules listed under `key`.
fn schedule_list(a: &mut Args<'_>, key: &'static str, closures: bool) -> Result<Vec<Schedule>> {
    match a.get(key) {
        Some(Value::Array(v)) => v.iter().map(|s| parse_json(s, closures)).collect(),
        Some(v) => Err(a.err(format!("`{key}` must be a list, got {v}"))),
        None => Err(a.err(format!("`{key}` is required"))),
    }
}

/// Parses a schedule. With `closures`, `lambda` and `multiplicative` get a
/// stand-in closure (checkpoint checks); without, they are refused.
pub(super) fn parse_json(value: &Value, closures: bool) -> Result<Schedule> {
    let map = value.as_object().ok_or_else(|| {
        Error::InvalidOptions(format!("a schedule must be a JSON object, got {value}"))
    })?;
    parse_map(map, closures)
}

pub(super) fn parse_map(map: &Map<String, Value>, closures: bool) -> Result<Schedule> {
    let kind = map.get("kind").and_then(Value::as_str).ok_or_else(|| {
        Error::InvalidOptions(format!(
            "a schedule needs a string `kind`, got {}",
            Value::Object(map.clone())
        ))
    })?;
    let mut a = Args {
        kind: kind.to_string(),
        map,
        used: Vec::new(),
    };
    let s = match kind {
        "none" => Schedule::Constant,
        "step" => Schedule::Step {
            step_size: a.u64_or("step_size", None)?,
            gamma: a.f64_or("gamma", Some(0.1))?,
        },
        "multistep" | "multi_step" => Schedule::MultiStep {
            milestones: a.milestones("milestones")?,
            gamma: a.f64_or("gamma", Some(0.1))?,
        },
        "exponential" => Schedule::Exponential {
            gamma: a.f64_or("gamma", None)?,
        },
        "cosine" => Schedule::CosineAnnealing {
            t_max: a.u64_or("T_max", None)?,
            eta_min: a.f64_or("eta_min", Some(0.0))?,
        },
        "linear" => Schedule::Linear {
            start_factor: a.f64_or("start_factor", Some(1.0 / 3.0))?,
            end_factor: a.f64_or("end_factor", Some(1.0))?,
            total_iters: a.u64_or("total_iters", Some(5))?,
        },
        "constant" => Schedule::ConstantFactor {
            factor: a.f64_or("factor", Some(1.0 / 3.0))?,
            total_iters: a.u64_or("total_iters", Some(5))?,
        },
        "polynomial" => Schedule::Polynomial {
            total_iters: a.u64_or("total_iters", Some(5))?,
            power: a.f64_or("power", Some(1.0))?,
        },
        "cosine_warm_restarts" => Schedule::CosineAnnealingWarmRestarts {
            t_0: a.u64_or("T_0", None)?,
            t_mult: a.u64_or("T_mult", Some(1))?,
            eta_min: a.f64_or("eta_min", Some(0.0))?,
        },
        "lambda" | "multiplicative" if closures => {
            let f = LrLambda::placeholder();
            if kind == "lambda" {
                Schedule::Lambda(f)
            } else {
                Schedule::Multiplicative(f)
            }
        }
        "lambda" | "multiplicative" => {
            let (class, ctor) = if kind == "lambda" {
                ("LambdaLR", "lambda")
            } else {
                ("MultiplicativeLR", "multiplicative")
            };
            return Err(a.err(format!(
                "{class} holds a Rust closure, which JSON cannot carry: build it in code \
                 with Schedule::{ctor}"
            )));
        }
        "warmup_cosine" => Schedule::warmup_cosine(
            a.f64_or("start_factor", Some(1.0 / 3.0))?,
            a.u64_or("warmup_steps", None)?,
            a.u64_or("T_max", None)?,
            a.f64_or("eta_min", Some(0.0))?,
        ),
        "sequential" => {
            // FORMAT.md's `schedulers`, or this crate's earlier `schedules`.
            let key = if map.contains_key("schedules") {
                if map.contains_key("schedulers") {
                    return Err(a.err("give `schedulers` or `schedules`, not both".into()));
                }
                "schedules"
            } else {
                "schedulers"
            };
            Schedule::Sequential {
                schedules: schedule_list(&mut a, key, closures)?,
                milestones: a.milestones("milestones")?,
            }
        }
        "chained" => Schedule::Chained {
            schedules: schedule_list(&mut a, "schedulers", closures)?,
        },
        "cyclic" => {
            let mut c = CyclicLr::new(a.f64_or("base_lr", None)?, a.f64_or("max_lr", None)?);
            c.step_size_up = a.u64_or("step_size_up", Some(c.step_size_up))?;
            c.step_size_down = a.u64_opt("step_size_down")?;
            let mode = a.str_or("mode", "triangular")?;
            c.mode = CyclicMode::parse(mode).ok_or_else(|| {
                a.err(format!(
                    "mode `{mode}` is not one of triangular, triangular2, exp_range"
                ))
            })?;
            c.gamma = a.f64_or("gamma", Some(c.gamma))?;
            c.cycle_momentum = a.bool_or("cycle_momentum", c.cycle_momentum)?;
            c.base_momentum = a.f64_or("base_momentum", Some(c.base_momentum))?;
            c.max_momentum = a.f64_or("max_momentum", Some(c.max_momentum))?;
            Schedule::Cyclic(c)
        }
        "one_cycle" => {
            let mut c = OneCycleLr::new(a.f64_or("max_lr", None)?, a.u64_or("total_steps", None)?);
            c.pct_start = a.f64_or("pct_start", Some(c.pct_start))?;
            let strategy = a.str_or("anneal_strategy", "cos")?;
            c.anneal_strategy = AnnealStrategy::parse(strategy).ok_or_else(|| {
                a.err(format!(
                    "anneal_strategy `{strategy}` is not one of cos, linear"
                ))
            })?;
            c.cycle_momentum = a.bool_or("cycle_momentum", c.cycle_momentum)?;
            c.base_momentum = a.f64_or("base_momentum", Some(c.base_momentum))?;
            c.max_momentum = a.f64_or("max_momentum", Some(c.max_momentum))?;
            c.div_factor = a.f64_or("div_factor", Some(c.div_factor))?;
            c.final_div_factor = a.f64_or("final_div_factor", Some(c.final_div_factor))?;
            c.three_phase = a.bool_or("three_phase", c.three_phase)?;
            Schedule::OneCycle(c)
        }
        "plateau" => {
            let d = ReduceLrOnPlateau::default();
            let mode = a.str_or("mode", d.mode.name())?;
            let mode = PlateauMode::parse(mode)
                .ok_or_else(|| a.err(format!("mode `{mode}` is not one of min, max")))?;
            let threshold_mode = a.str_or("threshold_mode", d.threshold_mode.name())?;
            let threshold_mode = ThresholdMode::parse(threshold_mode).ok_or_else(|| {
                a.err(format!(
                    "threshold_mode `{threshold_mode}` is not one of rel, abs"
                ))
            })?;
            let p = ReduceLrOnPlateau {
                mode,
                factor: a.f64_or("factor", Some(d.factor))?,
                patience: a.u64_or("patience", Some(d.patience))?,
                threshold: a.f64_or("threshold", Some(d.threshold))?,
                threshold_mode,
                cooldown: a.u64_or("cooldown", Some(d.cooldown))?,
                min_lr: a.f64_or("min_lr", Some(d.min_lr))?,
                eps: a.f64_or("eps", Some(d.eps))?,
            };
            // A case's recorded metrics: data for the run, not an argument.
            match a.get("metrics") {
                None => {}
                Some(Value::Array(v)) if v.iter().all(Value::is_number) => {}
                Some(v) => {
                    return Err(a.err(format!("`metrics` must be a list of numbers, got {v}")))
                }
            }
            Schedule::ReduceOnPlateau(p)
        }
        other => {
            return Err(Error::InvalidOptions(format!(
                "unknown schedule kind `{other}` (known: none, step, multistep, exponential, \
                 cosine, linear, constant, polynomial, cosine_warm_restarts, warmup_cosine, \
                 sequential, chained, cyclic, one_cycle, plateau)"
            )))
        }
    };
    a.finish()?;
    Ok(s)
}
