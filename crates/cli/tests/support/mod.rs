//! Test support: a real controller process on loopback with its own data
//! directory, serving HTTPS with the certificates `tessera pki init` makes
//! there; tests call it as the administrator (`pki/admin.pem`) unless they
//! choose other credentials.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A `tessera controller` child process; killed on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The fabric's certificates (`tessera pki init`).
    pub pki: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The etcd cluster of a fresh controller under `TESSERA_TEST_STORE=etcd`
    /// (dropped after the controller: fields drop in order).
    _etcd: Option<tessera_testkit::etcd::EtcdCluster>,
}

/// Who a test calls the controller as.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `pki/admin.pem`.
    Admin,
    /// `pki/hosts/NAME.pem` (issued on first use).
    Host(String),
    /// A bearer token.
    Token(String),
    /// Nothing but the CA to verify the controller.
    Nobody,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

impl ControllerProcess {
    /// Starts a controller on a fresh data directory and waits until it is ready.
    ///
    /// With `TESSERA_TEST_STORE=etcd` in the environment, its store is a
    /// fresh single-member etcd instead: the API tests then run on etcd.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().to_path_buf();
        let mut c = if std::env::var("TESSERA_TEST_STORE").as_deref() == Ok("etcd") {
            let etcd = tessera_testkit::etcd::EtcdCluster::start(1);
            let mut c = Self::start_on_etcd(&dir, free_port(), &etcd.endpoints_arg(), &["--init"]);
            c._etcd = Some(etcd);
            c
        } else {
            Self::start_on(&dir, free_port())
        };
        c._tmp = Some(tmp);
        c
    }

    /// Starts a controller on a fresh data directory with `extra` arguments
    /// (over HTTPS), or plain HTTP on loopback with `insecure`.
    pub fn start_with(extra: &[&str], insecure: bool) -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut args = vec!["--init"];
        args.extend_from_slice(extra);
        let mut c = if insecure {
            args.push("--insecure-loopback");
            Self::spawn(tmp.path(), free_port(), &args, None)
        } else {
            Self::spawn_on(tmp.path(), free_port(), &args)
        };
        c._tmp = Some(tmp);
        c
    }

    /// Starts a controller serving plain HTTP on loopback
    /// (`--insecure-loopback`: every caller acts as an administrator), on a
    /// fresh data directory: the baseline of the TLS benchmark.
    pub fn start_insecure() -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut c = Self::spawn(tmp.path(), free_port(), &["--init", "--insecure-loopback"], None);
        c._tmp = Some(tmp);
        c
    }

    /// Starts a controller on `data_dir` (kept by the caller) and `port`,
    /// making a new fabric there if the store is missing (`--init`).
    pub fn start_on(data_dir: &Path, port: u16) -> Self {
        Self::spawn_on(data_dir, port, &["--init"])
    }

    /// Starts a controller again on the store of `data_dir`, which must
    /// hold a fabric (no `--init`).
    pub fn restart_on(data_dir: &Path, port: u16) -> Self {
        Self::spawn_on(data_dir, port, &[])
    }

    /// Starts a controller over HTTPS on `port` with its store in etcd
    /// (`--store etcd --etcd-endpoints ENDPOINTS`) and `extra` arguments;
    /// `dir` (kept by the caller) holds its certificates, made there on
    /// first use.
    pub fn start_on_etcd(dir: &Path, port: u16, endpoints: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--store", "etcd", "--etcd-endpoints", endpoints];
        args.extend_from_slice(extra);
        if dir.join("pki").join("ca.pem").exists() {
            Self::spawn(dir, port, &args, Some(dir.join("pki")))
        } else {
            Self::spawn_on(dir, port, &args)
        }
    }

    fn spawn_on(data_dir: &Path, port: u16, extra: &[&str]) -> Self {
        let pki = data_dir.join("pki");
        let made = Command::new(BIN).args(["pki", "init", "--dir"]).arg(&pki).output().expect("run tessera pki init");
        assert!(made.status.success(), "tessera pki init: {}", String::from_utf8_lossy(&made.stderr));
        Self::spawn(data_dir, port, extra, Some(pki))
    }

    /// Spawns `tessera controller` on `data_dir` and `port`, over HTTPS with
    /// the certificates of `pki`, or plain HTTP without, and waits until it
    /// is ready.
    fn spawn(data_dir: &Path, port: u16, extra: &[&str], pki: Option<PathBuf>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("controller").args(extra).args(["--listen", &format!("127.0.0.1:{port}")]);
        if !extra.contains(&"--store") {
            cmd.arg("--data-dir").arg(data_dir);
        }
        if let Some(dir) = &pki {
            cmd.arg("--pki").arg(dir);
        }
        let child = cmd
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera controller");
        let scheme = if pki.is_some() { "https" } else { "http" };
        let c = ControllerProcess {
            child: Some(child),
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            data_dir: data_dir.to_path_buf(),
            pki: pki.unwrap_or_else(|| data_dir.join("no-pki")),
            _tmp: None,
            _etcd: None,
        };
        c.wait_ready();
        c
    }

    /// The CA's certificate and `caller`'s identity or token, for an HTTPS client.
    fn tls_parts(&self, caller: &Caller) -> (reqwest::Certificate, Option<reqwest::Identity>, Option<String>) {
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        let ca = reqwest::Certificate::from_pem(&read(self.pki.join("ca.pem"))).expect("the CA is PEM");
        let identity = |name: &str| {
            let mut pem = read(self.pki.join(format!("{name}.pem")));
            pem.push(b'\n');
            pem.extend(read(self.pki.join(format!("{name}-key.pem"))));
            reqwest::Identity::from_pem(&pem).expect("a PEM identity")
        };
        match caller {
            Caller::Admin => (ca, Some(identity("admin")), None),
            Caller::Host(h) => {
                let made = Command::new(BIN).args(["pki", "issue-host", h, "--dir"]).arg(&self.pki).output().unwrap();
                assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
                (ca, Some(identity(&format!("hosts/{h}"))), None)
            }
            Caller::Token(t) => (ca, None, Some(format!("Bearer {t}"))),
            Caller::Nobody => (ca, None, None),
        }
    }

    /// A blocking HTTPS client builder with `caller`'s credentials.
    pub fn http_builder(&self, caller: &Caller) -> reqwest::blocking::ClientBuilder {
        let (ca, identity, bearer) = self.tls_parts(caller);
        let mut b = reqwest::blocking::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(ca);
        if let Some(i) = identity {
            b = b.identity(i);
        }
        if let Some(v) = bearer {
            b = b.default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, v.parse().unwrap())]));
        }
        b
    }

    /// A blocking HTTPS client that presents `caller`'s credentials.
    pub fn http(&self, caller: &Caller) -> reqwest::blocking::Client {
        self.http_builder(caller).build().expect("an HTTPS client")
    }

    /// An async HTTPS client that presents `caller`'s credentials.
    pub fn async_http(&self, caller: &Caller) -> reqwest::Client {
        let (ca, identity, bearer) = self.tls_parts(caller);
        let mut b = reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).add_root_certificate(ca);
        if let Some(i) = identity {
            b = b.identity(i);
        }
        if let Some(v) = bearer {
            b = b.default_headers(reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, v.parse().unwrap())]));
        }
        b.build().expect("an HTTPS client")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = if self.url.starts_with("https") { self.http(&Caller::Nobody) } else { reqwest::blocking::Client::new() };
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.url)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("controller at {} did not become ready within 20 s", self.url);
    }

    /// The controller's process ID.
    #[allow(dead_code)] // used by the benchmarks only
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this controller; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_via(&self.url, args)
    }

    /// Runs the CLI with `controllers` as its controller list (several
    /// URLs, dead ones among them) and this controller's administrator
    /// credentials; returns (exit code, stdout, stderr).
    pub fn cli_via(&self, controllers: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("TESSERA_CONTROLLER", controllers)
            .env("TESSERA_CA", self.pki.join("ca.pem"))
            .env("TESSERA_CERT", self.pki.join("admin.pem"))
            .env("TESSERA_KEY", self.pki.join("admin-key.pem"))
            .env("TESSERA_LOG", "warn")
            .output()
            .expect("run tessera CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI with `--json`, asserts success and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.cli(&a);
        assert_eq!(code, 0, "tessera {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tessera {args:?} printed non-JSON ({e}): {out}"))
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking JSON client of the API that returns (status, body).
pub struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    /// The API as the administrator.
    pub fn new(c: &ControllerProcess) -> Self {
        Self::as_caller(c, &Caller::Admin)
    }

    /// The API of a plain-HTTP controller ([`ControllerProcess::start_insecure`]).
    pub fn plain(c: &ControllerProcess) -> Self {
        Api { base: c.url.clone(), http: reqwest::blocking::Client::new() }
    }

    /// The API as `caller`.
    pub fn as_caller(c: &ControllerProcess, caller: &Caller) -> Self {
        Api { base: c.url.clone(), http: c.http(caller) }
    }

    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        let r = rb.send().expect("request reaches the controller");
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) })
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body.to_string()))
    }

    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.put(format!("{}{path}", self.base)).json(&body))
    }

    pub fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(&body))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
    }
}

/// Every allocation of a network's IPAM: (address, owner).
pub fn allocations(api: &Api, network: &str) -> Vec<(String, String)> {
    let (_, ipam) = api.get(&format!("/v1/networks/{network}/ipam"));
    ipam["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["allocations"].as_array().unwrap().clone())
        .map(|a| (a["address"].as_str().unwrap().to_string(), a["owner"].as_str().unwrap().to_string()))
        .collect()
}

/// Asserts an error response: status, stable code, and the field it names.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str, field: Option<&str>) {
    let (s, body) = resp;
    assert_eq!(*s, status, "unexpected status; body: {body}");
    assert_eq!(body["error"]["code"], code, "unexpected code; body: {body}");
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "unexpected field; body: {body}");
    }
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {body}");
}

/// Runs `tessera ARGS` (a controller) with its standard error in a file,
/// without `TESSERA_LOG` or `TESSERA_LOG_FORMAT` from the caller, until it
/// logged that it serves (at most 20 s); returns what it logged. Panics
/// with the log when it did not start.
pub fn controller_log(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controller.log");
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TESSERA_LOG")
        .env_remove("TESSERA_LOG_FORMAT")
        .env_remove("TESSERA_CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run tessera controller");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("controller serving") || Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break std::fs::read_to_string(&log).unwrap_or(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("controller serving"), "the controller did not start:\n{text}");
    text
}
