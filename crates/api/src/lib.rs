//! Tessera's APIs as the code sees them: the wire types of the controller's
//! REST API and of the agent's local API, and one client of each.
//!
//! - [`error`]: the error body both APIs answer refusals with;
//! - [`auth`]: who calls the controller (certificate names, token roles) and
//!   a client's [`auth::Credentials`];
//! - [`controller`]: [`ControllerClient`], the one client of the controller
//!   (the request and object types are `tessera_model`'s, re-exported as
//!   [`model`]);
//! - [`agent`] and [`agent_client`]: the agent's local API and
//!   [`AgentClient`], its one client, over the unix socket ([`uds`]); the
//!   servers' side of local sockets ([`local`]: mode 0660, peers checked);
//! - [`mirror`]: a host's copy of the controller's intent (snapshot, then
//!   watch), kept on disk by [`saved`]; the agent and the Docker plugin run it.
//!
//! The controller and the agent serve these same types, so a drift between a
//! server and its clients does not compile.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_client;
pub mod auth;
pub mod controller;
pub mod error;
pub mod local;
pub mod mirror;
pub mod ports;
pub mod saved;
pub mod scope;
pub mod targets;
pub mod uds;
pub mod version;

pub use agent_client::{AgentClient, AgentError};
pub use controller::{ClientError, ClockReading, ControllerClient};
pub use error::{ErrorBody, ErrorDetail};
pub use tessera_model as model;
