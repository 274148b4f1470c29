//! A headless Chromium (Debian's `chromium`) driven over WebDriver
//! through `chromedriver`, for the tests of the web page `/ui`. The browser
//! runs as root here, so without its sandbox, and accepts the fabric CA's
//! certificate as insecure. Without `chromium` or `chromedriver` a test
//! fails saying so (`./x setup` installs them).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// Opens a TCP connection to chromedriver (in the namespace where it runs).
type Connect = Arc<dyn Fn(SocketAddr) -> io::Result<TcpStream> + Send + Sync>;

/// `program` on the PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A `chromedriver` process, reached through a relay on this process's
/// loopback (so it may run in another network namespace); killed on drop
/// with its process group, which holds the browsers it started (they
/// outlive chromedriver otherwise).
pub struct Chromedriver {
    child: Child,
    /// The relay's address, where WebDriver commands go.
    url: String,
    stop: Arc<AtomicBool>,
}

impl Chromedriver {
    /// chromedriver in this process's network namespace.
    #[allow(dead_code)] // each test binary starts it in one namespace or the other
    pub fn start() -> Self {
        Self::start_with(|mut cmd| cmd.spawn(), Arc::new(TcpStream::connect::<SocketAddr>))
    }

    /// chromedriver, and the browser it starts, inside `netns` (a host of
    /// a test fabric, where that host's addresses are reachable).
    #[allow(dead_code)] // each test binary starts it in one namespace or the other
    pub fn start_in(netns: tessera_fabric::Netns) -> Self {
        let netns = Arc::new(netns);
        let inside = netns.clone();
        let connect: Connect =
            Arc::new(move |addr| tessera_fabric::run_in(&inside, || TcpStream::connect(addr)).map_err(io::Error::other)?);
        Self::start_with(|cmd| tessera_fabric::spawn_in(&netns, cmd), connect)
    }

    fn start_with(spawn: impl FnOnce(Command) -> io::Result<Child>, connect: Connect) -> Self {
        let driver = on_path("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not installed: install Debian's chromium-driver (./x setup)"));
        let port = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port();
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = spawn(cmd).unwrap_or_else(|e| panic!("cannot run {}: {e}", driver.display()));
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let mut d = Chromedriver { child, url: String::new(), stop: Arc::new(AtomicBool::new(false)) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while connect(target).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 10 s");
            thread::sleep(Duration::from_millis(50));
        }
        d.url = relay(target, connect, d.stop.clone());
        d
    }

    /// A new headless Chromium session with its own profile in `profile`.
    pub async fn session(&self, profile: &Path) -> Client {
        let chromium =
            on_path("chromium").unwrap_or_else(|| panic!("chromium is not installed: install Debian's chromium (./x setup)"));
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--ignore-certificate-errors",
                         "--no-first-run", "--disable-crash-reporter", "--disable-breakpad",
                         format!("--user-data-dir={}", profile.display())],
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("a JSON object") };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start chromium ({}): {e}", chromium.display()))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Relays each connection to a new listener on this process's loopback
/// to `target` (reached with `connect`), until `stop`; returns its URL.
fn relay(target: SocketAddr, connect: Connect, stop: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let client = match listener.accept() {
                Ok((client, _)) => client,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(_) => return,
            };
            let Ok(upstream) = connect(target) else { continue };
            let _ = client.set_nonblocking(false);
            let (Ok(client_back), Ok(upstream_back)) = (client.try_clone(), upstream.try_clone()) else { continue };
            pipe(client, upstream_back);
            pipe(upstream, client_back);
        }
    });
    url
}

/// Copies `from` to `to` on a thread of its own until `from` ends, then
/// ends `to`'s writing side.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// How long the page has to show what a test waits for (a bound, not a
/// measure: a loaded machine may take seconds to start the browser's work).
pub const PAGE_WAIT: Duration = Duration::from_secs(30);

/// Waits at most `wait` for `locator` on the page; on a timeout, fails
/// saying what the page showed (its address, error, notice, follow state
/// and network table), so a failure tells why.
pub async fn wait_for(
    browser: &Client,
    locator: fantoccini::Locator<'_>,
    wait: Duration,
    what: &str,
) -> fantoccini::elements::Element {
    match browser.wait().at_most(wait).for_element(locator).await {
        Ok(e) => e,
        Err(e) => panic!("{what}: not within {wait:?} ({e}); the page showed: {}", page_state(browser).await),
    }
}

/// The page's address and the text of its status elements.
async fn page_state(browser: &Client) -> String {
    let mut out = format!("url {}", browser.current_url().await.map(|u| u.to_string()).unwrap_or_else(|e| format!("? ({e})")));
    if browser.find(fantoccini::Locator::Id("networks")).await.is_err() {
        // Not the page at all (a browser error page): show what it is.
        let body = match browser.find(fantoccini::Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(e) => format!("no body ({e})"),
        };
        return format!("{out}; not the page: {:?}", body.chars().take(600).collect::<String>());
    }
    for id in ["error", "notice", "live", "networks", "hosts"] {
        let text = match browser.find(fantoccini::Locator::Id(id)).await {
            Ok(e) => e.text().await.unwrap_or_else(|e| format!("? ({e})")),
            Err(e) => format!("absent ({e})"),
        };
        out.push_str(&format!("; #{id}: {text:?}"));
    }
    out
}

/// Opens `url`, again when Chromium abandoned the load because the
/// namespace's interfaces changed meanwhile (`ERR_NETWORK_CHANGED`: an
/// agent programs the host's interfaces while the page loads), at most
/// three times.
pub async fn open(browser: &Client, url: &str) {
    for _ in 0..3 {
        browser.goto(url).await.expect("open the page");
        let body = match browser.find(fantoccini::Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if !body.contains("ERR_NETWORK_CHANGED") {
            return;
        }
        eprintln!("the browser saw the network change while loading {url}; loading it again");
    }
}
