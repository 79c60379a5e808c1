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
///
/// A known code is held as the list's own text, so a clone (every decision clones the customer,
/// whose billing and payments carry currencies) copies a reference; a code that arrived through
/// deserialization and is not on the list is held as read, and refused by [`Self::validate`].
#[derive(Debug, Clone)]
pub struct Currency(Code);

#[derive(Debug, Clone)]
enum Code {
    Known(&'static str),
    Unknown(Box<str>),
}

impl Currency {
    /// Validates a currency code (upper case, one of [`CURRENCIES`]).
    pub fn new(code: impl Into<String>) -> Result<Self, InputError> {
        let code = code.into();
        check_currency(&code)?;
        Ok(Self::read(&code))
    }

    /// The code as read, unchecked.
    fn read(code: &str) -> Self {
        match CURRENCIES.iter().find(|known| **known == code) {
            Some(known) => Self(Code::Known(known)),
            None => Self(Code::Unknown(code.into())),
        }
    }

    /// Checks a code that arrived through deserialization.
    pub fn validate(&self) -> Result<(), InputError> {
        check_currency(self.as_str())
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Code::Known(code) => code,
            Code::Unknown(code) => code,
        }
    }

    /// US dollars, the usual default in examples and tests.
    pub fn usd() -> Self {
        Self::read("USD")
    }
}

impl PartialEq for Currency {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Currency {}

impl PartialOrd for Currency {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Currency {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Currency {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

// As its text (what `#[serde(transparent)]` over a `String` gave); checked by `validate`.
impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CodeText;
        impl serde::de::Visitor<'_> for CodeText {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a currency code")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Currency, E> {
                Ok(Currency::read(v))
            }
        }
        d.deserialize_str(CodeText)
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
        f.write_str(self.as_str())
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
    fn a_currency_reads_and_writes_as_its_code_and_an_unknown_one_is_refused_by_validate() {
        let usd: Currency = serde_json::from_str("\"USD\"").unwrap();
        assert_eq!(usd, Currency::usd());
        assert_eq!(serde_json::to_string(&usd).unwrap(), "\"USD\"");
        let odd: Currency = serde_json::from_value(serde_json::json!("usd")).unwrap();
        assert_eq!(odd.as_str(), "usd");
        assert_ne!(odd, usd);
        assert_eq!(
            odd.validate(),
            Err(InputError::UnknownCurrency { code: "usd".into() })
        );
        assert!(usd.validate().is_ok());
        assert!(Currency::new("EUR").unwrap() < usd);
    }

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
