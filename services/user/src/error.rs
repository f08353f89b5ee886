//! Everything the user service can refuse, with the text the client sees.

use chatmesh_common::BackendError;
use chatmesh_common::grpc::{CallError, ServiceFailure};

use crate::sms::SmsError;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("nickname must be 1 to 21 bytes of printable text")]
    InvalidNickname,
    #[error("password must be 6 to 15 letters, digits, '_' or '-'")]
    InvalidPassword,
    #[error("phone number must be 11 digits starting with 13-19")]
    InvalidPhone,
    #[error("nickname is already taken")]
    NicknameTaken,
    #[error("phone number is already bound to an account")]
    PhoneTaken,
    #[error("nickname or password is wrong")]
    WrongCredentials,
    #[error("too many failed logins for this account; retry in {0} s")]
    LoginDelayed(u64),
    #[error("too many requests from this address; try again later")]
    TooManyFromAddress,
    #[error("verification SMS are paused for a while; try again later")]
    SmsBudget,
    #[error("server busy, please retry")]
    Busy,
    #[error("{0}")]
    Avatar(#[from] crate::avatar::AvatarError),

    #[error("a code was sent to this phone moments ago; wait before asking again")]
    CodeTooFrequent,
    #[error("verification code is expired or unknown; request a new one")]
    CodeInvalid,
    #[error("verification code is wrong")]
    CodeWrong,
    #[error("too many wrong verification codes; request a new one")]
    CodeExhausted,
    #[error("phone number is not registered")]
    PhoneNotRegistered,
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("avatar is empty")]
    AvatarEmpty,
    #[error("avatar is larger than {0} bytes")]
    AvatarTooLarge(usize),
    #[error("description is longer than {0} bytes")]
    DescriptionTooLong(usize),
    #[error("request carries no user id")]
    NoCaller,
    #[error("could not send the verification SMS: {0}")]
    Sms(#[from] SmsError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("file service: {0}")]
    Files(#[from] CallError),
    #[error("password hashing: {0}")]
    Hash(String),
}

impl From<sqlx::Error> for UserError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(e.into())
    }
}

impl ServiceFailure for UserError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Files(CallError::Unavailable(_)) | Self::Hash(_) | Self::NoCaller)
    }
}
