//! Tessera's domain model.
//!
//! Pure types and validation: no IO, no async, no database. Every address is a
//! `std::net` or `ipnet` value, every identifier a checked newtype, so that code
//! above this crate cannot hold an invalid VNI, route target or name.
#![forbid(unsafe_code)]

pub mod counters;
pub mod endpoint;
pub mod error;
pub mod floating_ip;
pub mod flow;
pub mod host;
pub mod limits;
pub mod names;
pub mod network;
pub mod policy;
pub mod reservation;
pub mod route_target;
pub mod rules;
pub mod service;
pub mod shadow;
pub mod vif;
pub mod watch;

pub use counters::{HostCounters, PolicyCounters, RuleCount, RuleHits};
pub use endpoint::{
    Endpoint, EndpointCreate, EndpointNetns, EndpointPorts, EndpointStatus, EndpointStatusUpdate, MacAddr, Owner, PortProtocol,
    PublishedPort,
};
pub use error::{ErrorCode, FieldError};
pub use floating_ip::{FloatingIp, FloatingIpAssociate, FloatingIpCreate, Snat};
pub use flow::{FlowRecord, FlowReport, FlowVerdict, TcpFlag};
pub use host::{GatewayRegister, Host, HostGateway, HostRegister};
pub use names::{FqName, ProjectName, Vni, DEFAULT_DOMAIN, DEFAULT_PROJECT};
pub use network::{Network, NetworkCreate, NetworkUpdate, Subnet, SubnetCreate};
pub use policy::{
    Direction, Endpoint as RuleEndpoint, Policy, PolicyCreate, PolicyUpdate, PolicyView, PolicyWarning, PortRange, Protocol,
    Rule, RuleAction, RuleChange, RuleInsert, RuleSpec,
};
pub use reservation::{Reservation, ReservationCreate};
pub use route_target::RouteTarget;
pub use rules::{RuleChunk, Rules, RULE_CHUNK};
pub use service::{
    FailMode, Health, HealthReport, InstancePort, InstanceView, InterfaceRole, PortTraffic, Probe, Service, ServiceCreate,
    ServiceMode, ServicePort, ServiceRun, ServiceTemplate, ServiceTemplateCreate, ServiceView,
};
pub use shadow::ShadowedRule;
pub use uuid::Uuid;

/// OpenAPI schemas of the types that travel as strings or numbers.
mod schemas {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::{RefOr, Schema};

    fn scalar(ty: Type, description: &str, example: serde_json::Value) -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(SchemaType::new(ty)).description(Some(description)).examples([example]).into()
    }

    macro_rules! schema {
        ($t:ty, $ty:expr, $desc:literal, $example:expr) => {
            impl utoipa::PartialSchema for $t {
                fn schema() -> RefOr<Schema> {
                    scalar($ty, $desc, serde_json::json!($example))
                }
            }
            impl utoipa::ToSchema for $t {}
        };
    }

    schema!(crate::ProjectName, Type::String, "A project, DOMAIN:PROJECT", "default-domain:admin");
    schema!(crate::FqName, Type::String, "A fully qualified name, DOMAIN:PROJECT:NAME", "default-domain:admin:red");
    schema!(crate::Vni, Type::Integer, "A VXLAN network identifier, 1 to 16777215", 4096);
    schema!(crate::RouteTarget, Type::String, "A route target, target:ASN:N or target:IPV4:N", "target:64512:100");
    schema!(crate::MacAddr, Type::String, "A MAC address", "02:1a:74:99:fe:5f");
    schema!(crate::Protocol, Type::String, "any, tcp, udp, icmp, icmpv6 or a protocol number", "tcp");
    schema!(crate::RuleEndpoint, Type::String, "any, a CIDR, or a network name", "default-domain:admin:red");
    schema!(crate::Probe, Type::String, "ping or tcp:PORT", "tcp:80");
}
