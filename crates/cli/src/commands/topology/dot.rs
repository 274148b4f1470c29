//! The topology as a Graphviz digraph (pure): a cluster per host holding
//! its endpoints, a node per network, an edge from each endpoint to its
//! network, dashed edges between the networks a policy connects, and
//! traffic edges between networks labelled with their bytes.
//! `tessera topology --dot | dot -Tsvg > fabric.svg`.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::graph::{bytes, count, Topology};

/// `s` for inside a double-quoted DOT string: `"` and `\` escaped, line
/// breaks made spaces.
fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A double-quoted DOT string: every identifier and label goes through it.
fn quoted(s: &str) -> String {
    format!("\"{}\"", escaped(s))
}

/// A label of several lines (DOT's `\n` between them).
fn lines(parts: &[String]) -> String {
    let parts: Vec<String> = parts.iter().map(|p| escaped(p)).collect();
    format!("\"{}\"", parts.join("\\n"))
}

fn network_id(name: &str) -> String {
    quoted(&format!("net:{name}"))
}

/// The digraph of `t`.
pub fn render(t: &Topology) -> String {
    let mut out = String::from("digraph tessera {\n  rankdir=LR;\n  graph [fontname=\"Helvetica\", fontsize=11];\n");
    out.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
    for (i, h) in t.hosts.iter().enumerate() {
        let mut label = vec![format!("host {}", h.name)];
        label.extend(h.underlay_ip.map(|ip| ip.to_string()));
        let _ = writeln!(out, "  subgraph cluster_host_{i} {{\n    label={};\n    style=rounded;", lines(&label));
        for e in &h.endpoints {
            let mut label = vec![e.name.clone()];
            label.extend(e.ips.iter().map(|ip| ip.addr().to_string()));
            let _ = writeln!(out, "    {} [label={}, shape=box];", quoted(&format!("ep:{}", e.id)), lines(&label));
        }
        out.push_str("  }\n");
    }
    let mut known = BTreeSet::new();
    for n in &t.networks {
        known.insert(n.name.as_str());
        let mut label = vec![n.name.clone(), format!("VNI {}", n.vni)];
        label.extend(n.subnets.iter().map(ToString::to_string));
        let fill = if n.external { "lightyellow" } else { "lightblue" };
        let _ =
            writeln!(out, "  {} [label={}, shape=ellipse, style=filled, fillcolor={fill}];", network_id(&n.name), lines(&label));
    }
    // Networks named by a policy or by traffic but not listed: another
    // project's, or the outside.
    let named = t.policies.iter().flat_map(|p| p.connects.iter().flat_map(|l| [&l.src, &l.dst]));
    let unlisted: BTreeSet<&str> =
        named.chain(t.traffic.iter().flat_map(|x| [&x.src, &x.dst])).map(String::as_str).filter(|n| !known.contains(n)).collect();
    for n in unlisted {
        let _ = writeln!(out, "  {} [label={}, shape=ellipse, style=dotted];", network_id(n), quoted(n));
    }
    for h in &t.hosts {
        for e in &h.endpoints {
            let _ = writeln!(out, "  {} -> {};", quoted(&format!("ep:{}", e.id)), network_id(&e.network));
        }
    }
    for p in &t.policies {
        for l in &p.connects {
            let dir = if l.both_ways { "both" } else { "forward" };
            let _ = writeln!(
                out,
                "  {} -> {} [style=dashed, dir={dir}, color=gray40, fontcolor=gray40, label={}];",
                network_id(&l.src),
                network_id(&l.dst),
                quoted(&format!("policy {}", p.name))
            );
        }
    }
    for x in &t.traffic {
        let _ = writeln!(
            out,
            "  {} -> {} [color=firebrick, fontcolor=firebrick, penwidth=2, label={}];",
            network_id(&x.src),
            network_id(&x.dst),
            lines(&[bytes(x.bytes), count(x.flows, "flow")])
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::graph::{EndpointNode, HostNode, NetworkNode, PolicyLink, PolicyNode, Traffic};
    use super::*;

    fn fabric() -> Topology {
        let net = |name: &str, vni: u32, cidr: &str| NetworkNode {
            name: name.into(),
            vni,
            subnets: vec![cidr.parse().unwrap()],
            external: false,
            shared: false,
            policies: vec!["default-domain:admin:web".into()],
        };
        Topology {
            hosts: vec![HostNode {
                name: "h1".into(),
                underlay_ip: Some("10.99.0.1".parse().unwrap()),
                endpoints: vec![EndpointNode {
                    id: uuid::Uuid::nil(),
                    name: "c\"1".into(),
                    network: "default-domain:admin:red".into(),
                    ips: vec!["10.1.0.2/24".parse().unwrap()],
                    status: "active".into(),
                }],
            }],
            networks: vec![
                net("default-domain:admin:green", 5, "10.2.0.0/24"),
                net("default-domain:admin:red", 4, "10.1.0.0/24"),
            ],
            policies: vec![PolicyNode {
                name: "default-domain:admin:web".into(),
                attached_to: vec!["default-domain:admin:green".into(), "default-domain:admin:red".into()],
                connects: vec![PolicyLink {
                    src: "default-domain:admin:green".into(),
                    dst: "default-domain:admin:red".into(),
                    both_ways: true,
                }],
            }],
            traffic: vec![Traffic {
                src: "default-domain:admin:red".into(),
                dst: "outside".into(),
                flows: 2,
                packets: 9,
                bytes: 1300,
            }],
        }
    }

    #[test]
    fn hosts_are_clusters_policies_dashed_and_traffic_labelled_with_bytes() {
        let dot = render(&fabric());
        let expected = [
            "  subgraph cluster_host_0 {\n    label=\"host h1\\n10.99.0.1\";",
            "    \"ep:00000000-0000-0000-0000-000000000000\" [label=\"c\\\"1\\n10.1.0.2\", shape=box];",
            "  \"net:default-domain:admin:red\" [label=\"default-domain:admin:red\\nVNI 4\\n10.1.0.0/24\", shape=ellipse, style=filled, fillcolor=lightblue];",
            "  \"net:outside\" [label=\"outside\", shape=ellipse, style=dotted];",
            "  \"ep:00000000-0000-0000-0000-000000000000\" -> \"net:default-domain:admin:red\";",
            "  \"net:default-domain:admin:green\" -> \"net:default-domain:admin:red\" [style=dashed, dir=both, color=gray40, fontcolor=gray40, label=\"policy default-domain:admin:web\"];",
            "  \"net:default-domain:admin:red\" -> \"net:outside\" [color=firebrick, fontcolor=firebrick, penwidth=2, label=\"1.3 kB\\n2 flows\"];",
        ];
        for line in expected {
            assert!(dot.contains(line), "missing {line}\nin\n{dot}");
        }
        assert!(dot.starts_with("digraph tessera {") && dot.ends_with("}\n"));
    }

    #[test]
    fn bytes_read_in_powers_of_a_thousand() {
        assert_eq!(bytes(950), "950 B");
        assert_eq!(bytes(1300), "1.3 kB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(4_200_000_000), "4.2 GB");
    }
}
