//! Opaque identifiers with a validated length and character set.
//!
//! Identifiers arrive from outside (HTTP bodies, agent envelopes, Pub/Sub pushes), so they are
//! checked once at the edge: 1 to [`ID_LEN_MAX`] characters of `[A-Za-z0-9._:@-]`. The set keeps ids
//! safe to put in URLs, log lines and composite keys without escaping.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::input::InputError;

/// Longest identifier accepted, in bytes (all allowed characters are ASCII).
pub const ID_LEN_MAX: usize = 128;

/// Checks an identifier; `field` names it in the error.
pub fn check_id(field: &'static str, value: &str) -> Result<(), InputError> {
    if value.is_empty() {
        return Err(InputError::Empty { field });
    }
    if value.len() > ID_LEN_MAX {
        return Err(InputError::TooLong {
            field,
            len: value.len(),
            max: ID_LEN_MAX,
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')))
    {
        return Err(InputError::BadCharacter {
            field,
            character: bad,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        ///
        /// Shared text: a clone (every decision clones the customer holding its ids) counts a
        /// reference instead of copying the bytes.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
                let value = value.into();
                check_id($field, &value)?;
                Ok(Self(value.into()))
            }

            /// Checks an identifier that arrived through deserialization.
            pub fn validate(&self) -> Result<(), InputError> {
                check_id($field, &self.0)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // As its text (what `#[serde(transparent)]` over a `String` gave); checked by
        // `validate`, not here, as before.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(SharedText).map(Self)
            }
        }
    };
}

/// Reads an identifier's text into one shared allocation (a borrowed string is not first
/// copied into a `String`).
struct SharedText;

impl serde::de::Visitor<'_> for SharedText {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Arc::from(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Arc::from(v))
    }
}

id_type!(
    /// A customer stream: one subscriber of one subscription (see `docs/domain.md`).
    CustomerId,
    "customer_id"
);
id_type!(
    /// A product's stock-keeping unit.
    Sku,
    "sku"
);
id_type!(
    /// A payment processor's id for one payment attempt or settlement.
    PaymentId,
    "payment_id"
);
id_type!(
    /// A subscription's id, assigned when the customer subscribes.
    SubscriptionId,
    "subscription_id"
);
id_type!(
    /// A metered resource or usage dimension (`api_calls`, `storage_gb`).
    Resource,
    "resource"
);
id_type!(
    /// A refund's id at the payment processor.
    RefundId,
    "refund_id"
);

impl SubscriptionId {
    /// The `n`th subscription of a customer: `sub-<n>`. Valid by construction.
    pub fn numbered(n: u64) -> Self {
        Self(format!("sub-{n}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_and_writes_as_its_text_and_is_checked_by_validate() {
        let id: CustomerId = serde_json::from_str("\"cust-1\"").unwrap();
        assert_eq!(id, CustomerId::new("cust-1").unwrap());
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"cust-1\"");
        // An escaped string is read through an owned copy.
        let escaped: Sku = serde_json::from_str("\"a\\u0062\"").unwrap();
        assert_eq!(escaped.as_str(), "ab");
        let odd: CustomerId = serde_json::from_value(serde_json::json!("a b")).unwrap();
        assert!(odd.validate().is_err());
        assert!(serde_json::from_str::<CustomerId>("7").is_err());
    }

    #[test]
    fn accepts_the_documented_character_set() {
        assert!(CustomerId::new("cust-1.a_b:c@d").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_odd_ids_with_typed_errors() {
        assert_eq!(
            CustomerId::new(""),
            Err(InputError::Empty {
                field: "customer_id"
            })
        );
        let long = "a".repeat(ID_LEN_MAX + 1);
        assert_eq!(
            Sku::new(long),
            Err(InputError::TooLong {
                field: "sku",
                len: ID_LEN_MAX + 1,
                max: ID_LEN_MAX
            })
        );
        assert_eq!(
            CustomerId::new("a b"),
            Err(InputError::BadCharacter {
                field: "customer_id",
                character: ' '
            })
        );
        assert!(CustomerId::new("ünï").is_err());
    }
}
