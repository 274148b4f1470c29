//! Privileged tier: a controller whose disk fills up. Its store is on a
//! small tmpfs; a filler file takes the space. Writes are then refused with
//! 507 and a clear error, `/readyz` says not ready, and once the filler is
//! gone writes succeed again without a restart, with nothing acknowledged
//! lost.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use support::{assert_error, Api, ControllerProcess};

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(nix::unistd::geteuid().is_root(), "privileged test: run as root to mount a tmpfs");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {}: {e}", dir.display()));
        SmallDisk { dir, _tmp: tmp }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills what is left of the disk with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

#[test]
fn privileged_a_full_disk_refuses_writes_with_507_and_recovers_without_a_restart() {
    let disk = SmallDisk::mount("8m");
    let c = ControllerProcess::start_on(&disk.dir, support::free_port());
    let api = Api::new(&c);
    assert_eq!(api.post("/v1/networks", json!({"name": "kept", "subnets": [{"cidr": "10.8.0.0/24"}]})).0, 201);

    let filler = fill(&disk.dir);
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..60).map(|i| (format!("k{i}"), json!("v".repeat(1000)))).collect();
    let mut refused = None;
    let mut acked = Vec::new();
    for i in 0..400 {
        let name = format!("n{i}");
        let cidr = format!("10.{}.{}.0/24", 20 + i / 256, i % 256);
        let r = api.post("/v1/networks", json!({"name": name, "subnets": [{"cidr": cidr}], "labels": labels}));
        match r.0 {
            201 => acked.push(name),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("a write is refused once the disk is full");
    assert_error(&refused, 507, "insufficient_storage", None);
    assert!(refused.1["error"]["message"].as_str().unwrap().contains("full"), "{}", refused.1);
    let (s, body) = api.get("/readyz");
    assert_eq!(s, 503, "not ready while writes fail: {body}");
    assert_eq!(api.get("/healthz").0, 200, "alive all the same");

    std::fs::remove_file(filler).unwrap();
    let (s, body) = api.get("/readyz");
    assert_eq!(s, 200, "ready again once there is space, without a restart: {body}");
    let (s, body) = api.post("/v1/networks", json!({"name": "after", "subnets": [{"cidr": "10.9.0.0/24"}]}));
    assert_eq!(s, 201, "{body}");
    let (_, list) = api.get("/v1/networks");
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|n| n["fq_name"].as_str().unwrap()).collect();
    for n in acked.iter().map(String::as_str).chain(["kept", "after"]) {
        assert!(names.iter().any(|f| f.ends_with(&format!(":{n}"))), "{n} was acknowledged and is there: {names:?}");
    }
    drop(c);
}
