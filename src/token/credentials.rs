//! The Lengow API credentials: an access token and a secret, both redacted in `Debug`.

use std::fmt;

use crate::error::Error;

/// The environment variable [`Credentials::from_env`] reads the access token from.
pub(crate) const ACCESS_TOKEN_ENV: &str = "LENGOW_ACCESS_TOKEN";
/// The environment variable [`Credentials::from_env`] reads the secret from.
pub(crate) const SECRET_ENV: &str = "LENGOW_SECRET";

/// The access token and secret of a Lengow API user.
///
/// They are sent only to `POST /access/get_token`, form-encoded, and never appear in
/// `Debug`, an error or a log line.
///
/// ```
/// use lengow_auth::Credentials;
///
/// let credentials = Credentials::new("my-access-token", "my-secret");
/// assert_eq!(format!("{credentials:?}"), "Credentials { access_token: ** redacted **, secret: ** redacted ** }");
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) access_token: String,
    pub(crate) secret: String,
}

impl Credentials {
    /// Credentials from an access token and a secret.
    pub fn new(access_token: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            access_token: access_token.into(),
            secret: secret.into(),
        }
    }

    /// Credentials from `LENGOW_ACCESS_TOKEN` and `LENGOW_SECRET`.
    ///
    /// Fails with an error naming the variable that is missing, empty or not unicode.
    pub fn from_env() -> Result<Self, Error> {
        let read = |name: &'static str| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(Error::config(format!(
                "environment variable {name} is not set (set {ACCESS_TOKEN_ENV} and {SECRET_ENV} to your Lengow API credentials)"
            ))),
        };
        Ok(Self::new(read(ACCESS_TOKEN_ENV)?, read(SECRET_ENV)?))
    }

    /// The access token (the public half of the credentials).
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// The secret, for code that must hand it on; never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &crate::token::Redacted)
            .field("secret", &crate::token::Redacted)
            .finish()
    }
}
