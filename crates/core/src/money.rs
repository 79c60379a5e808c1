//! Money in integer minor units, and proration.
//!
//! Amounts are `i64` minor units (cents for USD, yen for JPY) with an ISO 4217 code; arithmetic that
//! could overflow runs in `i128` and is checked on the way back. There is no floating point anywhere.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::input::InputError;

/// Largest amount accepted on input: 10^15 minor units (ten trillion dollars), far below `i64::MAX`,
/// so sums of a few amounts never overflow.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000_000;

/// ISO 4217 codes marketgov accepts. Kept to currencies cloud marketplaces settle in.
pub const CURRENCIES: &[&str] = &[
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "IDR", "ILS", "INR",
    "JPY", "KRW", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "TRY", "TWD", "USD", "ZAR",
];

/// An ISO 4217 currency code from [`CURRENCIES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Currency(String);

impl Currency {
    /// Validates a currency code (upper case, one of [`CURRENCIES`]).
    pub fn new(code: impl Into<String>) -> Result<Self, InputError> {
        let code = code.into();
        check_currency(&code)?;
        Ok(Self(code))
    }

    /// Checks a code that arrived through deserialization.
    pub fn validate(&self) -> Result<(), InputError> {
        check_currency(&self.0)
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// US dollars, the usual default in examples and tests.
    pub fn usd() -> Self {
        Self("USD".to_owned())
    }
}

fn check_currency(code: &str) -> Result<(), InputError> {
    if CURRENCIES.contains(&code) {
        Ok(())
    } else {
        Err(InputError::UnknownCurrency {
            code: code.chars().take(16).collect(),
        })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an amount of money on input: not negative and at most [`AMOUNT_MAX`].
pub fn check_amount(field: &'static str, amount: i64) -> Result<(), InputError> {
    if amount < 0 {
        return Err(InputError::NegativeAmount { field, amount });
    }
    if amount > AMOUNT_MAX {
        return Err(InputError::AmountTooLarge {
            field,
            amount,
            max: AMOUNT_MAX,
        });
    }
    Ok(())
}

/// The money lines of a plan change inside a billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProrationQuote {
    /// Unused part of the old price, credited.
    pub credit: i64,
    /// Remaining part of the new price, charged.
    pub charge: i64,
    /// `charge - credit`: positive is charged, negative kept as account credit.
    pub net: i64,
    /// Currency of all three lines.
    pub currency: Currency,
}

/// Errors of proration arithmetic. They mean a caller passed an impossible period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProrationError {
    /// The period does not have a positive length.
    #[error("billing period is empty or reversed")]
    EmptyPeriod,
    /// A result does not fit in `i64` minor units.
    #[error("prorated amount overflows")]
    Overflow,
}

/// Prorates a plan change at `at` inside the period `[start, end)`.
///
/// Each line is `price * remaining / length` in whole seconds, rounded half-up to the minor unit in
/// 128-bit integers; the net is the sum of the rounded lines (SPEC 2.2). An instant before the
/// period counts as the whole period remaining, one at or after its end as nothing remaining.
pub fn prorate(
    old_price: i64,
    new_price: i64,
    currency: &Currency,
    start: Timestamp,
    end: Timestamp,
    at: Timestamp,
) -> Result<ProrationQuote, ProrationError> {
    let length = end.as_second() - start.as_second();
    if length <= 0 {
        return Err(ProrationError::EmptyPeriod);
    }
    let remaining = (end.as_second() - at.as_second()).clamp(0, length);
    let credit = share_half_up(old_price, remaining, length)?;
    let charge = share_half_up(new_price, remaining, length)?;
    let net = charge.checked_sub(credit).ok_or(ProrationError::Overflow)?;
    Ok(ProrationQuote {
        credit,
        charge,
        net,
        currency: currency.clone(),
    })
}

/// `amount * part / whole`, rounded half-up, for `amount >= 0` and `0 <= part <= whole`.
pub fn share_half_up(amount: i64, part: i64, whole: i64) -> Result<i64, ProrationError> {
    if whole <= 0 || part < 0 || part > whole || amount < 0 {
        return Err(ProrationError::EmptyPeriod);
    }
    let numerator = i128::from(amount) * i128::from(part);
    let whole = i128::from(whole);
    // Half-up for non-negative values: floor((2n + d) / 2d).
    let rounded = (2 * numerator + whole) / (2 * whole);
    i64::try_from(rounded).map_err(|_| ProrationError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_checked() {
        assert!(Currency::new("USD").is_ok());
        assert_eq!(
            Currency::new("usd"),
            Err(InputError::UnknownCurrency { code: "usd".into() })
        );
        assert!(Currency::new("XXX").is_err());
    }

    #[test]
    fn amounts_are_bounded() {
        assert!(check_amount("amount", 0).is_ok());
        assert!(check_amount("amount", -1).is_err());
        assert!(check_amount("amount", AMOUNT_MAX + 1).is_err());
    }

    #[test]
    fn share_rounds_half_up() {
        assert_eq!(share_half_up(1, 1, 2), Ok(1)); // 0.5 -> 1
        assert_eq!(share_half_up(1, 1, 3), Ok(0)); // 0.33 -> 0
        assert_eq!(share_half_up(2, 1, 3), Ok(1)); // 0.67 -> 1
        assert_eq!(share_half_up(i64::MAX, 1, 1), Ok(i64::MAX));
    }
}
