//! Checked numbers for settings read with serde: each rejects what cannot mean anything,
//! with a message that says what was expected (serde adds the field's path).

use serde::{Deserialize, Deserializer};

/// A probability, between 0 and 1.
pub fn probability<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a probability between 0 and 1, got {value}"
        )))
    }
}

/// A finite ratio of at least 1 (1: no spread).
pub fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value >= 1.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a finite number >= 1 (1: no spread), got {value}"
        )))
    }
}

/// A finite number, 0 or more.
pub fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a finite number >= 0, got {value}"
        )))
    }
}
