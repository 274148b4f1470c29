//! Privileged tier: the local API sockets (the agent's, the Docker
//! plugin's) are mode 0660 and answer only root, their own user, or their
//! group: another user's `tessera vif list` reaches nothing.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const NOBODY: u32 = 65534;

fn vif_list_as(uid: u32, socket: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["vif", "list", "--socket"])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("run tessera vif list");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn privileged_a_local_socket_answers_root_and_refuses_other_users() {
    assert!(nix::unistd::geteuid().is_root(), "privileged test: run as root (it runs a client as another user)");
    let dir = tempfile::tempdir().unwrap();
    // Let another user walk to the socket: only the socket itself keeps it out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("agent.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async { tessera_api::local::LocalListener::bind(&socket, None) }).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is rw for its owner and group only");
    let app = axum::Router::new().route("/v1/vifs", axum::routing::get(|| async { axum::Json(serde_json::json!([])) }));
    rt.spawn(async move { axum::serve(listener, app).await });

    let (ok, err) = vif_list_as(0, &socket);
    assert!(ok, "root is answered: {err}");
    let (ok, err) = vif_list_as(NOBODY, &socket);
    assert!(!ok, "another user must not be answered");
    assert!(err.contains("unreachable"), "{err}");
}
