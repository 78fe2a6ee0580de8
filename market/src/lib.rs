//! The Clawbernetes GPU market: offers, bids, matching, leases and settlement in MOLT.
//!
//! It starts with MOLT amounts. MOLT is an SPL token with 6 decimals; every price and payment is
//! held in base units (`u64`), and text is parsed exactly, never through floating point.

use std::fmt;
use std::str::FromStr;

pub mod book;
pub mod history;
pub mod lease;
pub mod order;
pub mod settlement;

/// Decimal places of the MOLT mint.
pub const MOLT_DECIMALS: u32 = 6;
const BASE_UNITS_PER_MOLT: u64 = 10u64.pow(MOLT_DECIMALS);

/// An amount of MOLT in base units (1 MOLT = 1,000,000 base units). On the wire it is the bare
/// count of base units.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Molt(u64);

/// Text that is not a MOLT amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoltParseError {
    /// Not a decimal number.
    #[error("{0:?} is not a MOLT amount (expected digits with at most 6 decimals, e.g. 1.25)")]
    Invalid(String),
    /// More than six decimal places.
    #[error("{0:?} has more than 6 decimal places")]
    TooPrecise(String),
    /// Larger than a u64 of base units.
    #[error("{0:?} is too large")]
    Overflow(String),
}

impl Molt {
    /// An amount in base units.
    pub const fn from_base_units(units: u64) -> Self {
        Self(units)
    }

    /// The amount in base units.
    pub const fn base_units(self) -> u64 {
        self.0
    }

    /// Adds, or `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// Multiplies by a count (GPUs, hours), or `None` on overflow.
    pub fn checked_mul(self, factor: u64) -> Option<Self> {
        self.0.checked_mul(factor).map(Self)
    }
}

impl FromStr for Molt {
    type Err = MoltParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || MoltParseError::Invalid(text.to_owned());
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        if text.contains('.') && fraction.is_empty()
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid());
        }
        if fraction.len() > MOLT_DECIMALS as usize {
            return Err(MoltParseError::TooPrecise(text.to_owned()));
        }
        let overflow = || MoltParseError::Overflow(text.to_owned());
        let whole: u64 = whole.parse().map_err(|_| overflow())?;
        let padded = format!("{fraction:0<6}");
        let fraction: u64 = padded.parse().map_err(|_| invalid())?;
        whole
            .checked_mul(BASE_UNITS_PER_MOLT)
            .and_then(|w| w.checked_add(fraction))
            .map(Self)
            .ok_or_else(overflow)
    }
}

impl fmt::Display for Molt {
    /// Whole MOLT, then the fraction without trailing zeros: `1.25`, `3`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / BASE_UNITS_PER_MOLT;
        let fraction = self.0 % BASE_UNITS_PER_MOLT;
        if fraction == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{fraction:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_and_prints_back() {
        for (text, units) in [
            ("1.25", 1_250_000),
            ("0.000001", 1),
            ("3", 3_000_000),
            ("18446744073709.551615", u64::MAX),
        ] {
            let molt: Molt = text.parse().unwrap();
            assert_eq!(molt.base_units(), units, "{text}");
            assert_eq!(molt.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_is_not_an_amount() {
        for bad in ["", ".5", "1.", "-1", "1e3", "1,5", " 1", "0x10"] {
            assert!(
                matches!(bad.parse::<Molt>(), Err(MoltParseError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "0.0000001".parse::<Molt>(),
            Err(MoltParseError::TooPrecise(_))
        ));
        assert!(matches!(
            "18446744073709.551616".parse::<Molt>(),
            Err(MoltParseError::Overflow(_))
        ));
    }

    #[test]
    fn arithmetic_is_checked() {
        let price = Molt::from_base_units(1_200_000);
        assert_eq!(price.checked_mul(8).unwrap().to_string(), "9.6");
        assert!(Molt::from_base_units(u64::MAX).checked_mul(2).is_none());
        assert!(Molt::from_base_units(u64::MAX).checked_add(price).is_none());
    }
}
