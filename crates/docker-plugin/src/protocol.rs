//! The wire types of Docker's plugin protocols that Tessera serves: plugin
//! activation, libnetwork's remote `NetworkDriver` and `IpamDriver`, and the
//! `authz` request hook (pure: types and their JSON, nothing else).
//!
//! Spelling follows Docker's Go structs (`NetworkID`, `IPv4Data`, `PoolID`,
//! `RequestUri`). Docker sends no `Content-Type`; bodies are decoded from
//! bytes with [`decode`], whose error names the offending field. Docker sends
//! absent addresses as empty strings; those decode to `None`. The network
//! driver reports failure in `Err`, the IPAM driver in `Error`, the authz hook
//! by `Allow: false` with `Msg`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_model::MacAddr;

/// The plugin's Docker name: `-d tessera`, `--ipam-driver tessera`,
/// `--authorization-plugin tessera`.
pub const PLUGIN_NAME: &str = "tessera";

/// Where dockerd looks for plugin sockets.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/tessera.sock";

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `Options` key holding the `-o KEY=VALUE` driver options of `docker network create`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// `Options` key telling whether `--ipv6` was given.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `RequestAddress` option naming the request for a network's gateway.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// Why a body could not be decoded: the field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    pub field: String,
    pub reason: String,
}

/// Decodes a request body (any `Content-Type`, possibly empty for requests
/// without fields) into `T`, naming the field at fault.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" { "body".to_string() } else { path };
        DecodeError { field, reason: e.into_inner().to_string() }
    })
}

// ------------------------------------------------------------------ helpers

/// `""` or absent as `None`, anything else parsed with `FromStr`.
mod empty_as_none {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))),
        }
    }

    pub fn serialize<S: Serializer, T: std::fmt::Display>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_str(""),
        }
    }
}

/// A `map[string]string` that Docker may send as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go's `[]byte`: base64 in JSON.
mod base64_bytes {
    use base64::Engine;

    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
}

/// Free-form `Options` (`map[string]interface{}`).
pub type Options = BTreeMap<String, serde_json::Value>;

// --------------------------------------------------------------- activation

/// `POST /Plugin.Activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<String>,
}

impl ActivateResponse {
    /// What Tessera implements: both libnetwork drivers and the authz hook
    /// (used only when dockerd runs with `--authorization-plugin tessera`).
    pub fn tessera() -> Self {
        ActivateResponse { implements: vec!["NetworkDriver".into(), "IpamDriver".into(), "authz".into()] }
    }
}

// ------------------------------------------------------------ NetworkDriver

/// `NetworkDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    /// `local`: each dockerd keeps its own copy of the network; Tessera's
    /// controller (not Docker's cluster store) makes it one network.
    pub scope: String,
    pub connectivity_scope: String,
}

/// One pool of a network as Docker's IPAM handed it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub address_space: String,
    /// The subnet.
    pub pool: IpNet,
    /// The gateway with the pool's prefix length.
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpNet>,
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, IpNet>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: Options,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_as_empty")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_as_empty")]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetworkRequest {
    /// The `-o KEY=VALUE` options (values that are not strings are kept as JSON text).
    pub fn driver_options(&self) -> BTreeMap<String, String> {
        match self.options.get(GENERIC_OPTIONS) {
            Some(serde_json::Value::Object(m)) => {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect()
            }
            _ => BTreeMap::new(),
        }
    }

    pub fn ipv6_enabled(&self) -> bool {
        self.options.get(ENABLE_IPV6).and_then(serde_json::Value::as_bool).unwrap_or(false)
    }

    /// Every pool, IPv4 first.
    pub fn pools(&self) -> impl Iterator<Item = &IpamData> {
        self.ipv4_data.iter().chain(&self.ipv6_data)
    }
}

/// A request naming a network only (`DeleteNetwork`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The interface part of `CreateEndpoint`, in both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub address: Option<IpNet>,
    #[serde(rename = "AddressIPv6", default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub address_ipv6: Option<IpNet>,
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<MacAddr>,
}

impl EndpointInterface {
    pub fn is_empty(&self) -> bool {
        self.address.is_none() && self.address_ipv6.is_none() && self.mac_address.is_none()
    }
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: Options,
}

/// The answer to `CreateEndpoint`: only what the driver sets (Docker refuses
/// a value for a field it already has).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// A request naming an endpoint (`DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `RevokeExternalConnectivity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `NetworkDriver.EndpointOperInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    pub value: BTreeMap<String, serde_json::Value>,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The path of the container's network namespace.
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: Options,
}

/// An interface Docker should move into the sandbox (Tessera names none:
/// its agent creates the interface inside the sandbox itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    pub src_name: String,
    pub dst_prefix: String,
}

/// A route Docker should add in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    pub destination: IpNet,
    /// 0: via `NextHop`; 1: connected.
    pub route_type: u8,
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<IpAddr>,
}

/// The answer to `Join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<InterfaceName>,
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(rename = "GatewayIPv6", default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub gateway_ipv6: Option<IpAddr>,
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    /// Tells Docker not to add its own gateway network (`docker_gwbridge`):
    /// the Tessera network provides the container's default routes.
    pub disable_gateway_service: bool,
}

/// `NetworkDriver.DiscoverNew` and `DiscoverDelete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiscoveryNotification {
    pub discovery_type: i64,
    #[serde(default)]
    pub discovery_data: serde_json::Value,
}

/// `NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_as_empty")]
    pub options: Options,
}

/// A network driver's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

// --------------------------------------------------------------- IpamDriver

/// `IpamDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilitiesResponse {
    pub requires_mac_address: bool,
    /// `false`: Docker keeps its pools and addresses across its restarts
    /// without asking again; Tessera's controller keeps them too.
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpacesResponse {
    pub local_default_address_space: String,
    pub global_default_address_space: String,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolRequest {
    #[serde(default)]
    pub address_space: String,
    /// The `--subnet`, absent when none was given.
    #[serde(default, with = "empty_as_none")]
    pub pool: Option<IpNet>,
    /// The `--ip-range`.
    #[serde(default, with = "empty_as_none")]
    pub sub_pool: Option<IpNet>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: IpNet,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A chosen address (`--ip`, `--ip6`, `--gateway`).
    #[serde(default, with = "empty_as_none")]
    pub address: Option<IpAddr>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub options: BTreeMap<String, String>,
}

impl RequestAddressRequest {
    /// Whether Docker asks for the network's gateway (not an endpoint's address).
    pub fn is_gateway(&self) -> bool {
        self.options.get(REQUEST_ADDRESS_TYPE).is_some_and(|t| t == GATEWAY_ADDRESS_TYPE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    /// The address with the pool's prefix length.
    pub address: IpNet,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: IpAddr,
}

/// An IPAM driver's failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamErrorResponse {
    #[serde(rename = "Error")]
    pub error: String,
}

// -------------------------------------------------------------------- authz

/// `AuthZPlugin.AuthZReq` and `AuthZPlugin.AuthZRes`: one API request to
/// dockerd (and, for the latter, its response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzRequest {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "RequestMethod", default)]
    pub request_method: String,
    #[serde(rename = "RequestUri", default)]
    pub request_uri: String,
    #[serde(rename = "RequestBody", default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub request_body: Vec<u8>,
    #[serde(rename = "ResponseStatusCode", default, skip_serializing_if = "Option::is_none")]
    pub response_status_code: Option<u16>,
}

/// The authz hook's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthzResponse {
    pub allow: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
}

impl AuthzResponse {
    pub fn allow() -> Self {
        AuthzResponse { allow: true, msg: String::new(), err: String::new() }
    }

    pub fn deny(msg: impl Into<String>) -> Self {
        AuthzResponse { allow: false, msg: msg.into(), err: String::new() }
    }
}

/// The part of a Docker Engine `POST /networks/create` body the authz hook reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineNetworkCreate {
    pub name: String,
    #[serde(default)]
    pub driver: String,
    #[serde(rename = "IPAM", default)]
    pub ipam: Option<EngineIpam>,
    #[serde(rename = "EnableIPv6", default)]
    pub enable_ipv6: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The IPAM section of a Docker network (create request and inspect output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineIpam {
    #[serde(default)]
    pub driver: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub config: Vec<EngineIpamConfig>,
}

/// One `--subnet` with its `--gateway` and `--ip-range`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineIpamConfig {
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    #[serde(default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(rename = "IPRange", default, with = "empty_as_none", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip: Docker's bytes decode, re-encode, and decode to the same value.
    fn round_trip<T>(json: &str) -> T
    where
        T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
    {
        let v: T = decode(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"));
        let again: T = decode(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(again, v);
        v
    }

    // Bodies as dockerd 20.10.24 sent them (captured in this repository's docker tests).
    const CREATE_NETWORK: &str = r#"{"NetworkID":"f7b52a1a214cd4fc43d9f89d271463a83153484530be512adfb32d67a9afd508","Options":{"com.docker.network.enable_ipv6":true,"com.docker.network.generic":{"vni":"77"}},"IPv4Data":[{"AddressSpace":"tl","Gateway":"192.168.4.1/24","Pool":"192.168.4.0/24"}],"IPv6Data":[{"AddressSpace":"tl","Gateway":"2002:1::1/64","Pool":"2002:1::/64"}]}"#;
    const CREATE_ENDPOINT: &str = r#"{"NetworkID":"f7b5","EndpointID":"50edfb99","Interface":{"Address":"192.168.4.11/24","AddressIPv6":"2002:1::12/64","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}"#;
    const JOIN: &str = r#"{"NetworkID":"f7b5","EndpointID":"50edfb99","SandboxKey":"/var/run/docker/netns/2d6fca9fc70f","Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}"#;
    const REQUEST_POOL: &str = r#"{"AddressSpace":"tl","Pool":"192.168.4.0/24","SubPool":"","Options":{},"V6":false}"#;
    const REQUEST_GATEWAY: &str =
        r#"{"PoolID":"tessera/192.168.4.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#;
    const REQUEST_ADDRESS: &str = r#"{"PoolID":"tessera/2002:1::/64","Address":"","Options":null}"#;
    const RELEASE_ADDRESS: &str = r#"{"PoolID":"tessera/192.168.4.0/24","Address":"192.168.4.11"}"#;

    #[test]
    fn create_network_round_trips_with_its_pools_and_options() {
        let r: CreateNetworkRequest = round_trip(CREATE_NETWORK);
        assert!(r.ipv6_enabled());
        assert_eq!(r.driver_options().get("vni").map(String::as_str), Some("77"));
        let pools: Vec<String> = r.pools().map(|p| p.pool.to_string()).collect();
        assert_eq!(pools, ["192.168.4.0/24", "2002:1::/64"]);
        assert_eq!(r.ipv4_data[0].gateway.unwrap().addr().to_string(), "192.168.4.1");
    }

    #[test]
    fn create_endpoint_round_trips_and_an_empty_mac_is_none() {
        let r: CreateEndpointRequest = round_trip(CREATE_ENDPOINT);
        let i = r.interface.unwrap();
        assert_eq!(i.address.unwrap().to_string(), "192.168.4.11/24");
        assert_eq!(i.address_ipv6.unwrap().to_string(), "2002:1::12/64");
        assert_eq!(i.mac_address, None);
    }

    #[test]
    fn join_round_trips() {
        let r: JoinRequest = round_trip(JOIN);
        assert_eq!(r.sandbox_key, "/var/run/docker/netns/2d6fca9fc70f");
    }

    #[test]
    fn join_response_names_no_interface_and_no_gateway() {
        let r = JoinResponse { disable_gateway_service: true, ..Default::default() };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"DisableGatewayService":true}"#);
        let full = JoinResponse {
            interface_name: Some(InterfaceName { src_name: "tv1".into(), dst_prefix: "eth".into() }),
            gateway: Some("10.0.0.1".parse().unwrap()),
            gateway_ipv6: Some("2002:1::1".parse().unwrap()),
            static_routes: vec![StaticRoute { destination: "10.1.0.0/16".parse().unwrap(), route_type: 0, next_hop: None }],
            disable_gateway_service: false,
        };
        let _: JoinResponse = round_trip(&serde_json::to_string(&full).unwrap());
    }

    #[test]
    fn ipam_requests_round_trip() {
        let p: RequestPoolRequest = round_trip(REQUEST_POOL);
        assert_eq!((p.pool.unwrap().to_string(), p.sub_pool, p.v6), ("192.168.4.0/24".to_string(), None, false));
        let g: RequestAddressRequest = round_trip(REQUEST_GATEWAY);
        assert!(g.is_gateway());
        let a: RequestAddressRequest = round_trip(REQUEST_ADDRESS);
        assert!(!a.is_gateway() && a.address.is_none() && a.options.is_empty());
        let r: ReleaseAddressRequest = round_trip(RELEASE_ADDRESS);
        assert_eq!(r.address.to_string(), "192.168.4.11");
        let _: RequestPoolResponse = round_trip(r#"{"PoolID":"tessera/10.0.0.0/24","Pool":"10.0.0.0/24","Data":{}}"#);
        let _: RequestAddressResponse = round_trip(r#"{"Address":"10.0.0.2/24","Data":null}"#);
    }

    #[test]
    fn errors_use_err_for_the_network_driver_and_error_for_ipam() {
        let n = serde_json::to_string(&NetworkErrorResponse { err: "boom".into() }).unwrap();
        let i = serde_json::to_string(&IpamErrorResponse { error: "boom".into() }).unwrap();
        assert_eq!((n.as_str(), i.as_str()), (r#"{"Err":"boom"}"#, r#"{"Error":"boom"}"#));
    }

    #[test]
    fn activation_announces_both_drivers_and_authz() {
        let a: ActivateResponse = round_trip(&serde_json::to_string(&ActivateResponse::tessera()).unwrap());
        assert_eq!(a.implements, ["NetworkDriver", "IpamDriver", "authz"]);
    }

    #[test]
    fn authz_request_decodes_its_base64_body() {
        let body = r#"{"Name":"net4","Driver":"tessera","Labels":{"rt":"64512:100"},"IPAM":{"Driver":"tessera","Config":[{"Subnet":"192.168.4.0/24"}]}}"#;
        let json = serde_json::json!({
            "User": "", "RequestMethod": "POST", "RequestUri": "/v1.41/networks/create",
            "RequestBody": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, body),
            "RequestHeaders": {"Content-Type": "application/json"}
        });
        let r: AuthzRequest = round_trip(&json.to_string());
        let create: EngineNetworkCreate = decode(&r.request_body).unwrap();
        assert_eq!(create.name, "net4");
        assert_eq!(create.labels["rt"], "64512:100");
        assert_eq!(create.ipam.unwrap().config[0].subnet.unwrap().to_string(), "192.168.4.0/24");
        let deny = serde_json::to_string(&AuthzResponse::deny("no")).unwrap();
        assert_eq!(deny, r#"{"Allow":false,"Msg":"no"}"#);
    }

    #[test]
    fn decode_names_the_field_at_fault() {
        let e = decode::<RequestAddressRequest>(br#"{"PoolID":"p","Address":"10.0.0.300"}"#).unwrap_err();
        assert_eq!(e.field, "Address");
        assert!(e.reason.contains("10.0.0.300"), "{e}");
        let e = decode::<CreateNetworkRequest>(b"{").unwrap_err();
        assert_eq!(e.field, "body");
    }

    #[test]
    fn empty_bodies_decode_requests_without_fields() {
        let _: BTreeMap<String, String> = decode(b"").unwrap();
    }

    proptest::proptest! {
        /// The decoders never panic, whatever the bytes.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode::<CreateNetworkRequest>(&bytes);
            let _ = decode::<CreateEndpointRequest>(&bytes);
            let _ = decode::<JoinRequest>(&bytes);
            let _ = decode::<RequestPoolRequest>(&bytes);
            let _ = decode::<RequestAddressRequest>(&bytes);
            let _ = decode::<ReleaseAddressRequest>(&bytes);
            let _ = decode::<AuthzRequest>(&bytes);
            let _ = decode::<EngineNetworkCreate>(&bytes);
        }

        /// Well-formed requests with arbitrary strings and addresses never panic either.
        #[test]
        fn json_shaped_inputs_never_panic(a in "\\PC{0,40}", b in "\\PC{0,40}", n in proptest::prelude::any::<u32>()) {
            let body = serde_json::json!({"PoolID": a, "Address": b, "Options": {"RequestAddressType": n.to_string()}});
            let _ = decode::<RequestAddressRequest>(body.to_string().as_bytes());
            let body = serde_json::json!({"NetworkID": a, "Options": {GENERIC_OPTIONS: {b.clone(): n}}, "IPv4Data": [{"Pool": b}]});
            if let Ok(r) = decode::<CreateNetworkRequest>(body.to_string().as_bytes()) {
                let _ = r.driver_options();
            }
        }
    }
}
