//! Loading the fast path's programs, attaching them and making its device.

use aya::maps::MapData;
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::Ebpf;
use rtnetlink::packet_route::tc::TcFilterBpfOption;

use crate::fastpath::{maps, FASTPATH_PORT, FROM_CONTAINER, FROM_TUNNEL, FROM_UNDERLAY, MD_DEVICE, TO_UNDERLAY};

/// Why the fast path cannot run.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error("{0}: {1}")]
    Kernel(String, String),
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, FastPathError> {
    ebpf.program_mut(name)
        .ok_or_else(|| FastPathError::Kernel(name.into(), "not in the object".into()))?
        .try_into()
        .map_err(|e| FastPathError::Program(name, e))
}

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| FastPathError::Map(name, "not in the object".into()))?;
    T::try_from(map).map_err(|e| FastPathError::Map(name, e.to_string()))
}

/// Attaches program `name` at the tcx ingress of `dev` (egress for
/// [`TO_UNDERLAY`]): the link goes with the agent, and coexists with the
/// queueing disciplines of others.
pub(super) fn attach_tcx(ebpf: &mut Ebpf, name: &'static str, dev: &str) -> Result<SchedClassifierLinkId, FastPathError> {
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let at = if name == TO_UNDERLAY { TcAttachType::Egress } else { TcAttachType::Ingress };
    program(ebpf, name)?.attach_with_options(dev, at, options).map_err(|e| FastPathError::Program(name, e))
}

/// Attaches program `name` at the ingress of `dev` with netlink, at
/// `priority`; the attachment outlives the agent.
pub(super) fn attach(ebpf: &mut Ebpf, name: &'static str, dev: &str, priority: u16) -> Result<(), FastPathError> {
    let kernel = |e: tc::TcError| FastPathError::Kernel(format!("tc on {dev}"), e.to_string());
    match tc::qdisc_add_clsact(dev) {
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        r => r.map_err(kernel)?,
    }
    let prog = program(ebpf, name)?;
    let options = TcAttachOptions::Netlink(NlOptions { priority, ..Default::default() });
    let id = prog.attach_with_options(dev, TcAttachType::Ingress, options).map_err(|e| FastPathError::Program(name, e))?;
    let link = prog.take_link(id).map_err(|e| FastPathError::Program(name, e))?;
    // Dropping the link would detach it: it stays until the device goes or
    // the next agent replaces it.
    std::mem::forget(link);
    Ok(())
}

/// The ingress filters of program `name` on the link at `index`.
pub(super) async fn filters(
    netlink: &rtnetlink::Handle,
    index: u32,
    name: &str,
) -> Result<Vec<rtnetlink::packet_route::tc::TcMessage>, FastPathError> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    let mut dump = netlink.clone().traffic_filter(index as i32).get().ingress().execute();
    while let Some(f) = dump.try_next().await.map_err(|e| FastPathError::Kernel("tc filter list".into(), e.to_string()))? {
        if bpf_option(&f, |o| matches!(o, TcFilterBpfOption::ProgName(n) if n == name)).is_some() {
            out.push(f);
        }
    }
    Ok(out)
}

fn bpf_option(
    f: &rtnetlink::packet_route::tc::TcMessage,
    pick: impl Fn(&TcFilterBpfOption) -> bool,
) -> Option<&TcFilterBpfOption> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcOption};
    f.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(b) if pick(b) => Some(b),
            _ => None,
        }),
        _ => None,
    })
}

pub(super) async fn delete_filter(
    netlink: &rtnetlink::Handle,
    f: rtnetlink::packet_route::tc::TcMessage,
) -> Result<(), FastPathError> {
    use futures::StreamExt;
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    use rtnetlink::packet_route::tc::TcMessage;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let mut msg = TcMessage::with_index(f.header.index);
    msg.header = f.header;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let kernel = |e: String| FastPathError::Kernel("tc filter del".into(), e);
    let mut answers = netlink.clone().request(req).map_err(|e| kernel(e.to_string()))?;
    while let Some(answer) = answers.next().await {
        if let NetlinkPayload::Error(e) = answer.payload {
            if e.code.is_some() {
                return Err(kernel(e.to_string()));
            }
        }
    }
    Ok(())
}

/// The maps of the program of the earlier agent's filter, by name.
pub(super) fn earlier_maps(earlier: &[rtnetlink::packet_route::tc::TcMessage]) -> Vec<(String, MapData)> {
    let ids: Vec<u32> = earlier
        .iter()
        .filter_map(|f| match bpf_option(f, |o| matches!(o, TcFilterBpfOption::ProgId(_))) {
            Some(TcFilterBpfOption::ProgId(id)) => Some(*id),
            _ => None,
        })
        .collect();
    let Some(info) = aya::programs::loaded_programs().filter_map(Result::ok).find(|p| ids.contains(&p.id())) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for id in info.map_ids().ok().flatten().unwrap_or_default() {
        let Ok(data) = MapData::from_id(id) else { continue };
        if let Some(name) = data.info().ok().and_then(|i| i.name_as_str().map(str::to_string)) {
            if maps::ALL.contains(&name.as_str()) {
                out.push((name, data));
            }
        }
    }
    out
}

/// Loads the programs, with the earlier agent's maps when there are any
/// (and they fit these programs), so that its flows, entries and counts
/// carry on; with new maps otherwise.
pub(super) fn load(earlier: Vec<(String, MapData)>) -> Result<Ebpf, FastPathError> {
    let programs = |mut ebpf: Ebpf| -> Result<Ebpf, FastPathError> {
        for name in [FROM_CONTAINER, FROM_TUNNEL, FROM_UNDERLAY, TO_UNDERLAY] {
            program(&mut ebpf, name)?.load().map_err(|e| FastPathError::Program(name, e))?;
        }
        Ok(ebpf)
    };
    if !earlier.is_empty() {
        let reused = BpfMount::new().and_then(|mount| {
            let mut paths = Vec::new();
            for (name, data) in &earlier {
                let path = mount.0.join(name);
                data.pin(&path).map_err(|e| FastPathError::Map("pin", e.to_string()))?;
                paths.push((name.as_str(), path));
            }
            let mut loader = aya::EbpfLoader::new();
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
            programs(loader.load(OBJECT)?)
        });
        match reused {
            Ok(ebpf) => {
                tracing::info!(maps = earlier.len(), "the fast path carries on with the earlier agent's maps");
                return Ok(ebpf);
            }
            Err(e) => tracing::warn!(error = %e, "the earlier agent's maps do not fit; the fast path starts afresh"),
        }
    }
    programs(Ebpf::load(OBJECT)?)
}

/// A bpf file system of the agent's own, mounted while the earlier maps
/// are handed to the new programs (by pinning them there), unmounted (and
/// its pins gone) when dropped.
struct BpfMount(std::path::PathBuf);

impl BpfMount {
    fn new() -> Result<BpfMount, FastPathError> {
        // A directory of its own, made anew (never one someone put there
        // first: root mounts on it).
        let template = std::env::temp_dir().join("tessera-bpf-XXXXXX");
        let kernel = |e: String| FastPathError::Kernel(format!("bpf file system in {}", template.display()), e);
        let dir = nix::unistd::mkdtemp(&template).map_err(|e| kernel(e.to_string()))?;
        if let Err(e) = nix::mount::mount(Some("bpf"), &dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>) {
            let _ = std::fs::remove_dir(&dir);
            return Err(kernel(e.to_string()));
        }
        Ok(BpfMount(dir))
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes the metadata-mode VXLAN device (`ip link add tfast type vxlan
/// external dstport 4799 nolearning`, alias `tessera`, up) unless it is
/// there; its index.
pub(super) async fn md_device(handle: &rtnetlink::Handle, mtu: u32) -> Result<u32, FastPathError> {
    let kernel = |e: rtnetlink::Error| FastPathError::Kernel(format!("link {MD_DEVICE}"), e.to_string());
    if ifindex(MD_DEVICE).is_none() {
        let msg = rtnetlink::LinkVxlan::new(MD_DEVICE, 0)
            .port(FASTPATH_PORT)
            .learning(false)
            .collect_metadata(true)
            .mtu(mtu)
            .up()
            .build();
        handle.link().add(msg).execute().await.map_err(kernel)?;
    }
    let index = ifindex(MD_DEVICE).ok_or_else(|| FastPathError::Kernel(MD_DEVICE.into(), "not made".into()))?;
    let set = rtnetlink::LinkUnspec::new_with_index(index)
        .mtu(mtu)
        .up()
        .append_extra_attribute(rtnetlink::packet_route::link::LinkAttribute::IfAlias(crate::names::LINK_MARK.into()))
        .build();
    handle.link().set(set).execute().await.map_err(kernel)?;
    Ok(index)
}

/// Whether this namespace has the fast path's device, marked as Tessera's
/// (what `tessera purge` removes; its programs and maps go with it and with
/// the endpoints' veths).
pub async fn md_device_present() -> Result<bool, FastPathError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let Some(index) = ifindex(MD_DEVICE) else { return Ok(false) };
    let kernel = |e: rtnetlink::Error| FastPathError::Kernel(format!("link {MD_DEVICE}"), e.to_string());
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| FastPathError::Kernel("netlink".into(), e.to_string()))?;
    tokio::spawn(conn);
    let link = handle.link().get().match_index(index).execute().try_next().await.map_err(kernel)?;
    Ok(link.is_some_and(|l| {
        l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(alias) if alias == crate::names::LINK_MARK))
    }))
}

/// Attaches `from_underlay` to `dev`, the device that holds the underlay
/// address, when it is an Ethernet device (the program reads an Ethernet
/// header before the tunnel's).
pub(super) async fn attach_underlay(ebpf: &mut Ebpf, handle: &rtnetlink::Handle, dev: &str) -> Result<(), FastPathError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkLayerType;
    let kernel = |e: rtnetlink::Error| FastPathError::Kernel(format!("link {dev}"), e.to_string());
    let link = handle.link().get().match_name(dev.to_string()).execute().try_next().await.map_err(kernel)?;
    match link.map(|l| l.header.link_layer_type) {
        Some(LinkLayerType::Ether) => attach_tcx(ebpf, FROM_UNDERLAY, dev).map(drop),
        Some(other) => Err(FastPathError::Kernel(dev.into(), format!("not an Ethernet device ({other:?})"))),
        None => Err(FastPathError::Kernel(dev.into(), "no such device".into())),
    }
}
