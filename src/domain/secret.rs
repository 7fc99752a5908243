//! A string that must never be printed: PINs, passwords, tokens.

use std::fmt;

/// Holds a secret. `Debug` prints `[redacted]`, there is no `Display` and no
/// `Serialize`, so a secret cannot reach a log line or a response by accident;
/// reading it takes an explicit [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, utoipa::ToSchema)]
#[schema(value_type = String, format = Password, description = "A password, PIN or passphrase")]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Overwrite before the allocation is freed so the secret does not
        // linger in freed heap memory.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("1234-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "1234-very-secret");
        let wrapped: Secret = serde_json::from_str("\"pw\"").unwrap();
        assert_eq!(format!("{:?}", Some(wrapped)), "Some([redacted])");
    }
}
