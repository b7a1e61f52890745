//! Reading a benchmark trace with the standard library only (shared by the examples).

/// Seconds in `60s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1.0),
        Some((i, 'm')) => (&text[..i], 60.0),
        Some((i, 'h')) => (&text[..i], 3600.0),
        _ => (text, 1.0),
    };
    match number.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x * unit),
        _ => Err(format!("{text:?} is not a duration like 60s, 5m or 1h")),
    }
}

/// `L = ceil(boot / step)`.
pub fn boot_steps(boot_seconds: f64, step_seconds: f64) -> u32 {
    (boot_seconds / step_seconds).ceil() as u32
}

/// The named column divided by `per_instance`, one value per data line.
pub fn read_demand(path: &str, column: &str, per_instance: f64) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| format!("{path}: empty file"))?;
    let index = header
        .split(',')
        .position(|name| name.trim() == column)
        .ok_or_else(|| format!("{path}: line 1: no column named {column:?}"))?;
    let mut demand = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let field = line.split(',').nth(index).map(str::trim).unwrap_or("");
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => demand.push(v / per_instance),
            _ => {
                return Err(format!(
                    "{path}: line {line_no}: {column} is {field:?}, not a finite non-negative number"
                ));
            }
        }
    }
    if demand.is_empty() {
        return Err(format!("{path}: no data lines"));
    }
    Ok(demand)
}
