//! Opaque identifiers with a validated length and character set.
//!
//! Identifiers arrive from outside (HTTP bodies, agent envelopes, Pub/Sub pushes), so they are
//! checked once at the edge: 1 to [`ID_LEN_MAX`] characters of `[A-Za-z0-9._:@-]`. The set keeps ids
//! safe to put in URLs, log lines and composite keys without escaping.

use std::fmt;

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
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, InputError> {
                let value = value.into();
                check_id($field, &value)?;
                Ok(Self(value))
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
    };
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
        Self(format!("sub-{n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
