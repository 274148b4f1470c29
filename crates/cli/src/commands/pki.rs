//! `tessera pki init|issue-host`: the fabric's certificates.
//!
//! One directory holds a fabric's authority: the CA that signs every
//! certificate (`ca.pem`, `ca-key.pem`), the controller's serving
//! certificate (`controller.pem`), an administrator's client certificate
//! (`admin.pem`) and one client certificate per host (`hosts/NAME.pem`),
//! which the host's agent and Docker plugin present. A certificate names
//! who it is for in its common name: `tessera-admin` or `tessera-host:NAME`
//! (`tessera_api::auth` reads it back). Keys are written with mode 0600, and
//! nothing that exists is overwritten: running `init` again is safe.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tessera_api::auth::{admin_common_name, host_common_name};

use super::Ctx;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Make a fabric's CA, the controller's certificate and an admin client certificate.
    Init(InitArgs),
    /// Issue the client certificate of one host (for its agent and Docker plugin).
    IssueHost(IssueHostArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// The directory to write to (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Names and addresses the controller is reached at, besides localhost,
    /// 127.0.0.1 and ::1.
    #[arg(long = "san")]
    sans: Vec<String>,
}

#[derive(clap::Args)]
pub struct IssueHostArgs {
    /// The host's name in the fabric, as its agent is started with.
    name: String,
    /// The directory `init` wrote.
    #[arg(long)]
    dir: PathBuf,
}

/// Certificates are valid this long (the CA a little longer).
const VALID_DAYS: i64 = 825;

pub fn run(ctx: &Ctx, cmd: Cmd) -> anyhow::Result<()> {
    let written = match cmd {
        Cmd::Init(a) => init(&a.dir, &a.sans)?,
        Cmd::IssueHost(a) => issue_host(&a.dir, &a.name)?,
    };
    let out = serde_json::json!({ "written": written });
    ctx.print(&out, || {
        if written.is_empty() {
            "nothing to write: every file exists\n".to_string()
        } else {
            written.iter().map(|p| format!("wrote {}\n", p.display())).collect()
        }
    })
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `bytes` to a new file `path` with `mode`; an existing file is kept.
fn write_new(path: &Path, bytes: &[u8], mode: u32, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path.to_path_buf());
    Ok(())
}

/// The CA of `dir`, made when missing.
fn ca(dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if !cert.exists() && !key.exists() {
        let key_pair = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = named("tessera fabric CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, VALID_DAYS + 30);
        let ca_cert = params.self_signed(&key_pair)?;
        write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600, written)?;
        write_new(&cert, ca_cert.pem().as_bytes(), 0o644, written)?;
    }
    let key_pem = std::fs::read_to_string(&key).with_context(|| format!("cannot read the CA key {}", key.display()))?;
    let cert_pem = std::fs::read_to_string(&cert).with_context(|| format!("cannot read the CA {}", cert.display()))?;
    let key_pair = KeyPair::from_pem(&key_pem).context("the CA key is not a PEM private key")?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).context("the CA certificate cannot be read")
}

/// Issues a leaf certificate for `common_name` with `sans`, for serving
/// (`server`) or for a client, into `name.pem` and `name-key.pem` of `dir`
/// unless both exist.
fn leaf(
    dir: &Path,
    name: &str,
    common_name: &str,
    sans: &[String],
    server: bool,
    issuer: &Issuer<'static, KeyPair>,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    if cert.exists() && key.exists() {
        return Ok(());
    }
    if cert.exists() != key.exists() {
        bail!("{} and {} must both exist or both be missing", cert.display(), key.display());
    }
    let key_pair = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = named(common_name);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    validity(&mut params, VALID_DAYS);
    let signed = params.signed_by(&key_pair, issuer)?;
    write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600, written)?;
    write_new(&cert, signed.pem().as_bytes(), 0o644, written)?;
    Ok(())
}

/// Makes what `dir` lacks of a fabric's CA, controller certificate and
/// admin certificate; returns the files written.
pub fn init(dir: &Path, extra_sans: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let issuer = ca(dir, &mut written)?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    sans.extend(extra_sans.iter().cloned());
    leaf(dir, "controller", "tessera controller", &sans, true, &issuer, &mut written)?;
    leaf(dir, "admin", &admin_common_name(), &[], false, &issuer, &mut written)?;
    Ok(written)
}

/// Issues host `name`'s client certificate into `dir/hosts/`.
pub fn issue_host(dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    tessera_model::names::check_component(name).map_err(|r| anyhow::anyhow!("host name {name:?} {r}"))?;
    let mut written = Vec::new();
    if !dir.join("ca.pem").exists() {
        bail!("{} holds no CA: run `tessera pki init --dir {}` first", dir.display(), dir.display());
    }
    let issuer = ca(dir, &mut written)?;
    leaf(&dir.join("hosts"), name, &host_common_name(name), &[], false, &issuer, &mut written)?;
    Ok(written)
}
