//! Address reservations: an address of a network's IPAM held for an owner
//! before any endpoint exists, as Docker's IPAM protocol needs (it asks for
//! an address first and creates the endpoint later).
//!
//! A reservation lives in the same IPAM keys as the endpoints' addresses,
//! owned by `reservation:<owner>`, so an address is never both reserved and
//! allocated. An endpoint created with `owner.reservation = <owner>` adopts
//! the addresses that owner holds, and gives them back when it is deleted.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::FieldError;

/// The prefix of the IPAM owner of a reserved address: `reservation:<owner>`.
pub const RESERVATION_OWNER_PREFIX: &str = "reservation:";

/// Request to reserve an address (`POST /v1/networks/{id}/reservations`).
///
/// Retry-safe: when `owner` already holds the requested address (or, with no
/// address, any address of the subnet), that reservation is returned again
/// instead of a second one being made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationCreate {
    /// An opaque token naming who holds the reservation: letters, digits,
    /// `-`, `_` and `.`, at most 128 characters.
    pub owner: String,
    /// The subnet (one of the network's, as a CIDR) to take the lowest free
    /// address of. Needed unless `address` is given.
    #[serde(default)]
    pub subnet: Option<String>,
    /// A chosen address; it must be allocatable and free (or held by `from`).
    #[serde(default)]
    pub address: Option<String>,
    /// Takes the chosen `address` over from the reservation of this owner
    /// (for example to gather the addresses of one endpoint, reserved one by
    /// one, under a single owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// An address held by a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    #[schema(value_type = String, format = Uuid)]
    pub network: Uuid,
    /// The subnet the address belongs to (its prefix length is the one to configure).
    #[schema(value_type = String, example = "192.168.4.0/24")]
    pub subnet: IpNet,
    #[schema(value_type = String, example = "192.168.4.2")]
    pub address: IpAddr,
    /// The owner token given at creation.
    pub owner: String,
}

impl Reservation {
    /// The address with its subnet's prefix length, as an interface holds it.
    pub fn address_with_prefix(&self) -> IpNet {
        IpNet::new(self.address, self.subnet.prefix_len()).expect("the prefix of a valid subnet")
    }
}

/// The IPAM owner string of a reservation held by `owner`.
pub fn reservation_owner(owner: &str) -> String {
    format!("{RESERVATION_OWNER_PREFIX}{owner}")
}

/// Checks an owner token: the rules of a name component.
pub fn check_owner(field: &str, owner: &str) -> Result<(), FieldError> {
    crate::names::check_component(owner).map_err(|r| FieldError::new(field, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_round_trips_through_json() {
        let r = Reservation {
            network: Uuid::from_u128(7),
            subnet: "2002:1::/64".parse().unwrap(),
            address: "2002:1::2".parse().unwrap(),
            owner: "docker.h1.1700000000000.0a1b".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reservation>(&json).unwrap(), r);
        assert_eq!(r.address_with_prefix().to_string(), "2002:1::2/64");
    }

    #[test]
    fn create_request_rejects_unknown_fields() {
        assert!(serde_json::from_str::<ReservationCreate>(r#"{"owner":"a","color":"red"}"#).is_err());
        let r: ReservationCreate = serde_json::from_str(r#"{"owner":"a","subnet":"10.0.0.0/24"}"#).unwrap();
        assert_eq!(r.subnet.as_deref(), Some("10.0.0.0/24"));
    }

    #[test]
    fn owner_tokens_follow_the_name_rules() {
        assert!(check_owner("owner", "docker.h1.1.ab").is_ok());
        assert_eq!(check_owner("owner", "a b").unwrap_err().field, "owner");
        assert!(check_owner("owner", "").is_err());
        assert_eq!(reservation_owner("t1"), "reservation:t1");
    }
}
