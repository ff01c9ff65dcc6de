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

pub(super) fn parse_json(value: &Value) -> Result<Schedule> {
    let map = value.as_object().ok_or_else(|| {
        Error::InvalidOptions(format!("a schedule must be a JSON object, got {value}"))
    })?;
    parse_map(map)
}

pub(super) fn parse_map(map: &Map<String, Value>) -> Result<Schedule> {
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
        "constant" => Schedule::Constant,
        "step" => Schedule::Step {
            step_size: a.u64_or("step_size", None)?,
            gamma: a.f64_or("gamma", Some(0.1))?,
        },
        "multi_step" => Schedule::MultiStep {
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
        "warmup_cosine" => Schedule::warmup_cosine(
            a.f64_or("start_factor", Some(1.0 / 3.0))?,
            a.u64_or("warmup_steps", None)?,
            a.u64_or("T_max", None)?,
            a.f64_or("eta_min", Some(0.0))?,
        ),
        "sequential" => {
            let schedules = match a.get("schedules") {
                Some(Value::Array(v)) => v.iter().map(parse_json).collect::<Result<Vec<_>>>()?,
                Some(v) => return Err(a.err(format!("`schedules` must be a list, got {v}"))),
                None => return Err(a.err("`schedules` is required".into())),
            };
            Schedule::Sequential {
                schedules,
                milestones: a.milestones("milestones")?,
            }
        }
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
        other => {
            return Err(Error::InvalidOptions(format!(
                "unknown schedule kind `{other}` (known: constant, step, multi_step, exponential, \
                 cosine, linear, warmup_cosine, sequential, cyclic, one_cycle)"
            )))
        }
    };
    a.finish()?;
    Ok(s)
}
