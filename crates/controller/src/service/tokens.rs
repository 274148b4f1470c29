//! Bearer tokens: made by a fabric administrator for people and automation,
//! each acting in one project with a role (or, an admin token without a
//! project, in the whole fabric). The controller keeps a token's SHA-256
//! hash, never its secret: the store names a token by the hash of the
//! secret, so a lookup is one read.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tessera_api::auth::{Role, Token, TokenCreate, TokenCreated};
use tessera_model::{limits, FieldError, ProjectName};
use tessera_store::Compare;

use super::controller::Controller;
use super::txn::{del, put, Guard, GuardedTxn};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::keys;

/// The prefix of every secret, so that one is recognisable in a leak scan.
const SECRET_PREFIX: &str = "tsr_";
/// Characters of the hash that name a token.
const ID_LEN: usize = 12;

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- validation

fn validate_create(req: &TokenCreate) -> Result<Option<ProjectName>> {
    tessera_model::names::check_component(&req.name).map_err(|r| FieldError::new("name", r))?;
    let project = match &req.project {
        Some(p) => Some(p.parse::<ProjectName>().map_err(|r| FieldError::new("project", r))?),
        None if req.role != Role::Admin => {
            return Err(FieldError::new("project", "a reader or member token acts in a project; name it").into())
        }
        None => None,
    };
    limits::check_text("name", &req.name, limits::MAX_ID)?;
    Ok(project)
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Makes a token and returns it with its secret, this once.
    pub async fn create_token(&self, req: TokenCreate) -> Result<TokenCreated> {
        let project = validate_create(&req)?;
        if let Some(p) = &project {
            self.get_json::<serde_json::Value>(&keys::project(p)).await?.ok_or_else(|| Error::NotFound {
                kind: "project",
                name: p.to_string(),
                field: Some("project".into()),
            })?;
        }
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret = format!("{SECRET_PREFIX}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let hash = sha256_hex(&secret);
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let token = Token {
            id: hash[..ID_LEN].to_string(),
            name: req.name,
            project: project.map(|p| p.to_string()),
            role: req.role,
            created,
        };
        let key = keys::token(&hash);
        let txn = GuardedTxn::new().guard(Guard::NameTaken, Compare::Absent(key.clone())).then(put(key, &token));
        if !self.commit(txn).await?.is_committed() {
            return Err(Error::Conflict("token".into()));
        }
        tracing::info!(token = %token.id, name = %token.name, role = ?token.role, "token created");
        Ok(TokenCreated { token, secret })
    }

    pub async fn list_tokens(&self) -> Result<Vec<Token>> {
        self.list_json(keys::TOKENS).await
    }

    /// Revokes the token named `id`; revoking a missing one is Ok.
    pub async fn delete_token(&self, id: &str) -> Result<()> {
        let keys: Vec<String> = self
            .store()
            .range_keys(keys::TOKENS)
            .await?
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .filter(|k| k[keys::TOKENS.len()..].starts_with(id) && id.len() >= ID_LEN)
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        self.commit(GuardedTxn::new().then_all(keys.into_iter().map(del))).await?;
        Ok(())
    }

    /// The principal a bearer `secret` stands for; `None` for an unknown one.
    pub async fn token_principal(&self, secret: &str) -> Result<Option<Principal>> {
        if !secret.starts_with(SECRET_PREFIX) || secret.len() > 256 {
            return Ok(None);
        }
        let Some((token, _)) = self.get_json::<Token>(&keys::token(&sha256_hex(secret))).await? else { return Ok(None) };
        Ok(Some(match token.project.and_then(|p| p.parse().ok()) {
            None => Principal::Admin,
            Some(project) => Principal::Project { project, role: token.role },
        }))
    }
}
