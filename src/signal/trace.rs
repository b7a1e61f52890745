//! A recorded trace (one CSV column) played as a live signal.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use super::{SignalError, SignalSource};

/// A trace file that could not be used, naming the file and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no column named {column:?} (columns: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}:{line}: {message}")]
    BadRow {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads one column of a CSV file (with a header row) as a series of finite,
/// non-negative numbers. Any other value is an error naming the line: nothing is skipped.
pub fn load_column(path: &Path, column: &str) -> Result<Vec<f64>, TraceError> {
    let io = |source| TraceError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    read_column(file, path, column)
}

/// [`load_column`] over any reader; `path` only names the source in errors.
pub fn read_column(
    reader: impl std::io::Read,
    path: &Path,
    column: &str,
) -> Result<Vec<f64>, TraceError> {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(reader);
    let bad = |line: u64, message: String| TraceError::BadRow {
        path: path.to_owned(),
        line,
        message,
    };
    let headers = csv
        .headers()
        .map_err(|e| bad(1, format!("cannot read the header row: {e}")))?
        .clone();
    let index =
        headers
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| TraceError::MissingColumn {
                path: path.to_owned(),
                column: column.to_owned(),
                available: headers.iter().collect::<Vec<_>>().join(", "),
            })?;
    let mut values = Vec::new();
    for record in csv.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            bad(line, format!("malformed row: {e}"))
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let cell = record.get(index).ok_or_else(|| {
            bad(
                line,
                format!("row has no {column:?} column ({} fields)", record.len()),
            )
        })?;
        let value: f64 = cell
            .parse()
            .map_err(|_| bad(line, format!("{column:?} is {cell:?}, not a number")))?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad(
                line,
                format!("{column:?} is {cell}, not a finite non-negative number"),
            ));
        }
        values.push(value);
    }
    if values.is_empty() {
        return Err(TraceError::Invalid {
            path: path.to_owned(),
            message: "the trace has no data rows".into(),
        });
    }
    Ok(values)
}

/// `[fleets.signal] kind = "trace"`: plays a column of a CSV trace as a live signal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The CSV file (relative paths are relative to the working directory).
    pub path: PathBuf,
    /// The value column.
    pub column: String,
    /// How much of the value one instance serves at its service-level limit.
    pub per_instance: f64,
    /// The trace's step length (one row per step).
    #[serde(with = "humantime_serde", default = "default_trace_step")]
    pub step: Duration,
    /// Playback speed: 60 plays a minute of trace per second.
    #[serde(default = "default_speedup")]
    pub speedup: f64,
    /// Start again from the first row after the last.
    #[serde(default = "default_true", rename = "loop")]
    pub repeat: bool,
    /// The row (0: the first data row) that plays when the agent starts. The rows
    /// before it are the signal's past: the history read at start.
    #[serde(default)]
    pub start_row: Option<u64>,
    /// Or how far into the trace, in the trace's own time, playing starts (rounded down
    /// to a row), e.g. `"1d"` to start with a day of history.
    #[serde(with = "humantime_serde", default)]
    pub start_at: Option<Duration>,
}

impl TraceConfig {
    /// The row that plays first: `start_row`, or `start_at` in rows, or 0.
    pub fn first_row(&self) -> u64 {
        let by_offset = self.start_at.map(|at| {
            (at.as_nanos() / self.step.as_nanos().max(1)).min(u128::from(u64::MAX)) as u64
        });
        self.start_row.or(by_offset).unwrap_or(0)
    }
}

/// `trace` among the signal kinds.
impl super::SignalKind for TraceConfig {
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(self.per_instance.is_finite() && self.per_instance > 0.0) {
            problems.push((
                "per_instance",
                format!("must be a positive number, not {}", self.per_instance),
            ));
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            problems.push((
                "speedup",
                format!("must be a positive number, not {}", self.speedup),
            ));
        }
        if self.step.is_zero() {
            problems.push(("step", "must be longer than 0s".into()));
        }
        if self.start_row.is_some() && self.start_at.is_some() {
            problems.push(("start_at", "give start_row or start_at, not both".into()));
        }
        if !self.path.is_file() {
            problems.push((
                "path",
                format!("{} is not a readable file", self.path.display()),
            ));
        }
        problems
    }

    fn build(
        &self,
        clock: &dyn fleetscale_adapters::Clock,
    ) -> anyhow::Result<Box<dyn SignalSource>> {
        Ok(Box::new(TraceSignal::from_config(self, clock.now())?))
    }

    fn may_start_empty(&self) -> bool {
        true
    }
}

fn default_trace_step() -> Duration {
    Duration::from_secs(60)
}
fn default_speedup() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}

/// Plays trace values against a clock: at `now`, the latest complete row is the one that
/// ended at or before `now`, with the trace starting at `start` and sped up by `speedup`.
#[derive(Debug, Clone)]
pub struct TraceSignal {
    demand: Vec<f64>,
    start: SystemTime,
    /// Wall time one row lasts (the trace's step divided by the speedup).
    row: Duration,
    repeat: bool,
    /// Rows the signal lost (a scraper down, a gap in the store): read as missing.
    lost: Vec<bool>,
}

impl TraceSignal {
    /// `values` are in the trace's own units; `per_instance` converts them to instances.
    pub fn new(
        values: &[f64],
        per_instance: f64,
        start: SystemTime,
        row: Duration,
        repeat: bool,
    ) -> Self {
        let conversion = super::Conversion::Throughput { per_instance };
        let demand = values.iter().map(|v| conversion.demand(*v, 0)).collect();
        TraceSignal {
            demand,
            start,
            row,
            repeat,
            lost: Vec::new(),
        }
    }

    /// The same trace with the rows marked `true` lost: `latest` reports them missing
    /// and `history` gives `NaN` for them, as a Prometheus range query leaves a gap.
    pub fn losing_rows(mut self, lost: Vec<bool>) -> Self {
        self.lost = lost;
        self
    }

    fn is_lost(&self, index: u64) -> bool {
        let len = self.demand.len().max(1) as u64;
        let index = if self.repeat { index % len } else { index };
        self.lost.get(index as usize).copied().unwrap_or(false)
    }

    /// Plays `config`'s trace from its first row (`start_row`, `start_at`) at `start`:
    /// the rows before it are past by then, and serve as history.
    pub fn from_config(config: &TraceConfig, start: SystemTime) -> Result<Self, TraceError> {
        let values = load_column(&config.path, &config.column)?;
        let invalid = |message: String| TraceError::Invalid {
            path: config.path.clone(),
            message,
        };
        let first = config.first_row();
        if first >= values.len() as u64 {
            return Err(invalid(format!(
                "starts at row {first} (start_row, start_at), but the trace has {} rows",
                values.len()
            )));
        }
        let row = config.step.div_f64(config.speedup);
        // The trace began `first` rows before `start`, in wall time.
        let played = u32::try_from(first)
            .ok()
            .and_then(|first| row.checked_mul(first));
        let Some(began) = played.and_then(|played| start.checked_sub(played)) else {
            return Err(invalid(format!(
                "row {first} is too far into the trace to start at (rows of {row:?})"
            )));
        };
        Ok(Self::new(
            &values,
            config.per_instance,
            began,
            row,
            config.repeat,
        ))
    }

    /// Completed rows at `now`.
    fn completed(&self, now: SystemTime) -> u64 {
        let elapsed = now.duration_since(self.start).unwrap_or_default();
        (elapsed.as_nanos() / self.row.as_nanos().max(1)) as u64
    }

    fn value(&self, index: u64) -> Option<f64> {
        let len = self.demand.len() as u64;
        let index = if self.repeat { index % len } else { index };
        self.demand.get(index as usize).copied()
    }
}

#[async_trait]
impl SignalSource for TraceSignal {
    fn kind(&self) -> &'static str {
        "trace"
    }

    async fn history(
        &mut self,
        now: SystemTime,
        step: Duration,
        steps: usize,
        _serving: u32,
    ) -> Result<Vec<f64>, SignalError> {
        // Sample the row that was latest at each of the `steps` step ends before now.
        let mut values = Vec::with_capacity(steps);
        for back in (0..steps as u32).rev() {
            let Some(at) = now.checked_sub(step * back) else {
                continue;
            };
            if at < self.start {
                continue;
            }
            let done = self.completed(at);
            if done == 0 {
                continue;
            }
            let value = if self.is_lost(done - 1) {
                None
            } else {
                self.value(done - 1)
            };
            values.push(value.unwrap_or(f64::NAN));
        }
        Ok(values)
    }

    async fn latest(&mut self, now: SystemTime, _serving: u32) -> Result<f64, SignalError> {
        match self.completed(now) {
            0 => Err(SignalError::Missing(format!(
                "the trace has not completed its first row yet (a row lasts {:?}: its step \
                 over the speedup); start_row or start_at starts later in the trace, with \
                 the rows before as history",
                self.row
            ))),
            done if self.is_lost(done - 1) => Err(SignalError::Missing(format!(
                "row {} of the trace is lost",
                done - 1
            ))),
            done => self.value(done - 1).ok_or_else(|| {
                SignalError::Missing(format!("the trace ended after {} rows", self.demand.len()))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> TraceConfig {
        let path = dir.join("trace.csv");
        std::fs::write(&path, "t,count\n0,10\n1,20\n2,30\n3,40\n4,50\n").unwrap();
        let text = format!(
            "path = {:?}\ncolumn = \"count\"\nper_instance = 10.0\nstep = \"60s\"\nloop = false\n{extra}",
            path.display().to_string()
        );
        toml::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn a_trace_started_later_serves_the_rows_before_as_history() {
        let dir = std::env::temp_dir().join(format!("fleetscale-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let minute = Duration::from_secs(60);
        for extra in [
            "start_row = 3",
            "start_at = \"3m\"",
            "start_at = \"3m 30s\"",
        ] {
            let config = config(&dir, extra);
            assert_eq!(config.first_row(), 3, "{extra}");
            let mut trace = TraceSignal::from_config(&config, start).unwrap();
            let past = trace.history(start, minute, 10, 0).await.unwrap();
            assert_eq!(past, [1.0, 2.0, 3.0], "{extra}");
            assert_eq!(trace.latest(start + minute, 0).await.unwrap(), 4.0);
        }
        // From the first row, a start has no history and no value until a row is done.
        let mut cold = TraceSignal::from_config(&config(&dir, ""), start).unwrap();
        assert!(cold.history(start, minute, 10, 0).await.unwrap().is_empty());
        let missing = cold.latest(start, 0).await.unwrap_err().to_string();
        assert!(missing.contains("start_row or start_at"), "{missing}");
        // A start beyond the trace is refused, naming both settings.
        let beyond = TraceSignal::from_config(&config(&dir, "start_row = 5"), start)
            .unwrap_err()
            .to_string();
        assert!(
            beyond.contains("start_row") && beyond.contains("5 rows"),
            "{beyond}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
