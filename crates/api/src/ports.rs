//! Whether a port about to be published is free on this host: a program of
//! the host (not Tessera) may be listening on it, which the controller
//! cannot know. Checked where ports are published from (the Docker plugin,
//! the agent's attach), in the host's namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};

use tessera_model::{PortProtocol, PublishedPort};

/// `Err` with the reason when a program of this host holds `p`'s host port
/// (binding it fails with "address in use"); other bind failures (an
/// address this host does not have) are the data plane's to meet.
pub fn check_free(p: &PublishedPort) -> Result<(), String> {
    if p.host_port == 0 {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match p.host_ip {
        Some(ip) => vec![ip],
        None => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
    };
    for ip in addrs {
        let bound = match p.protocol {
            PortProtocol::Tcp => TcpListener::bind((ip, p.host_port)).map(drop),
            PortProtocol::Udp => UdpSocket::bind((ip, p.host_port)).map(drop),
        };
        if let Err(e) = bound {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(format!("host port {}/{} is in use by a program of this host", p.host_port, p.protocol.name()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_a_program_listens_on_is_not_free() {
        let held = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let p = |host_ip| PublishedPort { protocol: PortProtocol::Tcp, host_ip, host_port: port, container_port: 80 };
        assert!(check_free(&p(None)).unwrap_err().contains("in use"));
        assert!(check_free(&p(Some("127.0.0.1".parse().unwrap()))).is_err());
        drop(held);
        assert!(check_free(&p(None)).is_ok());
    }
}
