//! What every handler of the HTTP edge shares: the controller as state,
//! the result type, the JSON body extractor whose errors name the field
//! path at fault, and the answer to a create.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_api::version::CallerVersion;
use tessera_model::FieldError;

use crate::error::{ApiError, Error};
use crate::service::{Controller, Created};

/// The largest request body the API reads (larger ones are refused with
/// 413): a policy of 50,000 rules is about 2 MiB of JSON, over axum's
/// default limit, and the most rules a policy may hold fit well within.
pub const MAX_BODY_BYTES: usize = 16 << 20;

pub type Ctl = State<Arc<Controller>>;

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body decoded whatever its Content-Type, with errors that name the
/// offending field path.
pub struct Body<T>(pub T);

/// Bodies larger than this are decoded on a blocking thread: parsing
/// megabytes of JSON would otherwise hold a request worker for tens of
/// milliseconds, and `/healthz` and small calls would wait behind it.
const DECODE_ASIDE_BYTES: usize = 64 << 10;

impl<S: Send + Sync, T: DeserializeOwned + Send + 'static> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let caller = req.extensions().get::<CallerVersion>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError(Error::TooLarge { limit: MAX_BODY_BYTES }),
            _ => ApiError(FieldError::new("body", e.body_text()).into()),
        })?;
        if bytes.len() > DECODE_ASIDE_BYTES {
            return tokio::task::spawn_blocking(move || decode(&bytes, caller))
                .await
                .map_err(|e| ApiError(FieldError::new("body", format!("cannot decode: {e}")).into()))?;
        }
        decode(&bytes, caller)
    }
}

/// The request body as `T`, or an error naming the field path at fault
/// (from a newer caller, fields `T` does not know are dropped instead).
fn decode<T: DeserializeOwned>(bytes: &[u8], caller: Option<CallerVersion>) -> Result<Body<T>, ApiError> {
    tessera_api::version::decode(bytes, caller).map(Body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" { "body".to_string() } else { path };
        ApiError(FieldError::new(field, e.into_inner().to_string()).into())
    })
}

pub fn created<T: Serialize>(c: Created<T>) -> Response {
    let status = if c.created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(c.object)).into_response()
}
