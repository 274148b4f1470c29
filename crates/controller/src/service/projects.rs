//! Projects (`domain:project`): the namespaces of networks and policies.
//! A project can be deleted only once it holds neither.

use serde::{Deserialize, Serialize};
use tessera_model::{FieldError, ProjectName};
use tessera_store::Compare;
use uuid::Uuid;

use super::controller::{Controller, Created};
use super::txn::{del, put, Guard, GuardedTxn, Outcome};
use crate::error::{Error, Result};
use crate::keys;

/// A project, `domain:project`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub fq_name: ProjectName,
}

/// Request to create a project (`POST /v1/projects`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// `domain:project`, or a bare project name in `default-domain`.
    pub name: String,
}

// ---------------------------------------------------------------- validation

/// The project a create request names (field `name`).
fn validate_create(req: &ProjectCreate) -> Result<ProjectName> {
    Ok(req.name.parse().map_err(|r| FieldError::new("name", r))?)
}

/// The project a path or query names (field `project`).
pub(super) fn parse_project(name: &str) -> Result<ProjectName> {
    Ok(name.parse().map_err(|r| FieldError::new("project", r))?)
}

/// The project a request's optional `project` (reported as `field`) names:
/// the default project when it is missing or empty.
pub(super) fn project_of(field: &str, p: &Option<String>) -> Result<ProjectName> {
    match p {
        Some(p) if !p.is_empty() => p.parse().map_err(|r| FieldError::new(field, r).into()),
        _ => Ok(ProjectName::default_project()),
    }
}

// ---------------------------------------------------------------- operations

impl Controller {
    /// Makes sure the default project exists. Idempotent.
    pub async fn create_project(&self, req: ProjectCreate) -> Result<Created<Project>> {
        let fq_name = validate_create(&req)?;
        let key = keys::project(&fq_name);
        let project = Project { id: Uuid::new_v4(), fq_name };
        let txn = GuardedTxn::new().guard(Guard::NameTaken, Compare::Absent(key.clone())).then(put(key.clone(), &project));
        match self.commit(txn).await? {
            Outcome::Committed => Ok(Created { object: project, created: true }),
            Outcome::Refused(_) => {
                // Guard::NameTaken: the project exists; a create is a safe retry.
                let (existing, _) = self.get_json::<Project>(&key).await?.ok_or_else(|| Error::Conflict(key))?;
                Ok(Created { object: existing, created: false })
            }
        }
    }

    pub async fn get_project(&self, name: &str) -> Result<Project> {
        let fq = parse_project(name)?;
        Ok(self.get_json(&keys::project(&fq)).await?.ok_or_else(|| Error::not_found("project", name))?.0)
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        self.list_json(keys::PROJECTS).await
    }

    /// Deletes a project that holds no networks or policies. Deleting a
    /// missing project is Ok.
    pub async fn delete_project(&self, name: &str) -> Result<()> {
        let fq = parse_project(name)?;
        let nets = keys::network_names_of(&fq);
        let pols = keys::policy_names_of(&fq);
        let txn = GuardedTxn::new()
            .guard(Guard::ProjectHasNetworks, Compare::PrefixEmpty(nets.clone()))
            .guard(Guard::ProjectHasPolicies, Compare::PrefixEmpty(pols.clone()))
            .then(del(keys::project(&fq)));
        if self.commit(txn).await?.is_committed() {
            return Ok(());
        }
        // Guard::ProjectHasNetworks or ProjectHasPolicies: name them all.
        let mut users = Vec::new();
        for prefix in [nets, pols] {
            for kv in self.store.range(&prefix).await?.kvs {
                users.push(kv.key.rsplit('/').next().unwrap_or_default().to_string());
            }
        }
        Err(Error::InUse { kind: "project", name: fq.to_string(), users })
    }

    /// Fails with `not_found` (at `field`) unless project `p` exists.
    pub(super) async fn require_project(&self, field: &str, p: &ProjectName) -> Result<()> {
        if self.store.get(&keys::project(p)).await?.is_none() {
            return Err(Error::NotFound { kind: "project", name: p.to_string(), field: Some(field.into()) });
        }
        Ok(())
    }
}
