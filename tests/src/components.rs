//! Real components for integration tests: a private CUPS scheduler with an
//! `ippeveprinter` printer behind it, `snmpd` serving Printer-MIB values the
//! test rewrites, a network namespace with `dnsmasq` and nftables, and an
//! SMTP server keeping the mail it accepts, and a small loop-mounted ext4
//! disk a test fills.
//!
//! Each starts its daemons as children and stops them by PID on drop. Each
//! `start` returns `Err(reason)` when it cannot run here (not root, a
//! package missing); the test then prints `SKIP` with that reason. Under
//! `CI=true` a skip fails the test instead: CI installs every component,
//! so a skip there means an install step is missing, and it must not pass
//! unnoticed.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Prints a skip where it is seen even with captured output, or, under
/// `CI=true` (or `CI=1`), fails the test with the same reason.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    if in_ci() {
        panic!("SKIP {test}: {why} (CI=true: every real component must run in CI)");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Whether this run is CI, where no real-component test may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Checks that the test may run: root, and every program on PATH or in sbin.
pub fn require(programs: &[&str]) -> Result<(), String> {
    if !is_root() {
        return Err("needs root".into());
    }
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (.ci/run installs them)",
            missing.join(", ")
        ))
    }
}

pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Runs a command to completion; true on success. Output goes to the
/// test's stderr only on failure.
pub fn sh(program: &str, args: &[&str]) -> bool {
    match Command::new(find(program).unwrap_or_else(|| program.into()))
        .args(args)
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "{program} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            false
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    pub fn spawn(program: &str, args: &[&str], log: &Path) -> Result<Daemon, String> {
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(find(program).ok_or(format!("{program} not found"))?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        Ok(Daemon {
            name: program.to_owned(),
            child,
        })
    }

    /// Fails if the process has already exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback, for a daemon (or a collector process) to
/// bind after this returns. It is picked below the kernel's ephemeral
/// range, so no outgoing connection or `bind(0)` of a test running beside
/// it takes the port in the meantime, or while a daemon restarts on it.
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 12_000 {
        for _ in 0..200 {
            let port = fastrand::u16(10_000..ephemeral_low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts connections at `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < within {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listening at {addr} after {within:?}"))
}

/// A plain HTTP GET on loopback; returns the status line.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// An SMTP server (Python's aiosmtpd, the Debian package) on loopback that
/// keeps every mail it accepts in a Maildir. Needs no root.
pub struct SmtpSink {
    pub addr: SocketAddr,
    maildir: PathBuf,
    _daemon: Daemon,
}

impl SmtpSink {
    const PYTHON: &str = "/usr/bin/python3";

    /// Whether it can run here; the reason when not.
    pub fn available() -> Result<(), String> {
        let ok = Command::new(Self::PYTHON)
            .args(["-c", "import aiosmtpd.handlers"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err("missing python3-aiosmtpd (.ci/run installs it)".into())
        }
    }

    /// Starts on `port` (chosen beforehand, so a test can point a sender at
    /// it before it runs).
    pub fn start(dir: &Path, port: u16) -> Result<SmtpSink, String> {
        Self::available()?;
        let dir = dir.join("smtp");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let maildir = dir.join("maildir");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let daemon = Daemon::spawn(
            Self::PYTHON,
            &[
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &addr.to_string(),
                "-c",
                "aiosmtpd.handlers.Mailbox",
                &maildir.to_string_lossy(),
            ],
            &dir.join("aiosmtpd.log"),
        )?;
        wait_listening(addr, Duration::from_secs(10))?;
        Ok(SmtpSink {
            addr,
            maildir,
            _daemon: daemon,
        })
    }

    /// Every mail accepted so far, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
            .collect()
    }
}

/// The system D-Bus and Avahi, which `ippeveprinter` needs for DNS-SD.
/// Started only if not already running; Avahi is confined to loopback.
struct Dnssd {
    dbus: Option<u32>,
    avahi: Option<Daemon>,
}

impl Dnssd {
    fn start(dir: &Path) -> Result<Dnssd, String> {
        let socket = Path::new("/run/dbus/system_bus_socket");
        let mut dbus = None;
        if !socket.exists() {
            std::fs::create_dir_all("/run/dbus").map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file("/run/dbus/pid");
            let out = Command::new("dbus-daemon")
                .args(["--system", "--fork", "--print-pid"])
                .output()
                .map_err(|e| format!("dbus-daemon: {e}"))?;
            let pid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "dbus-daemon printed no pid".to_string())?;
            dbus = Some(pid);
        }
        let mut avahi = None;
        if !avahi_running() {
            let conf = dir.join("avahi.conf");
            std::fs::write(
                &conf,
                "[server]\nallow-interfaces=lo\nuse-ipv6=no\n[wide-area]\nenable-wide-area=no\n\
                 [publish]\npublish-addresses=no\npublish-hinfo=no\npublish-workstation=no\n",
            )
            .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file("/run/avahi-daemon/pid");
            avahi = Some(Daemon::spawn(
                "avahi-daemon",
                &["-f", &conf.to_string_lossy(), "--no-chroot", "--no-rlimits"],
                &dir.join("avahi.log"),
            )?);
            let start = Instant::now();
            while !avahi_running() {
                if start.elapsed() > Duration::from_secs(5) {
                    return Err("avahi-daemon did not start".into());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Dnssd { dbus, avahi })
    }
}

impl Drop for Dnssd {
    fn drop(&mut self) {
        drop(self.avahi.take());
        let _ = std::fs::remove_file("/run/avahi-daemon/pid");
        if let Some(pid) = self.dbus {
            sh("kill", &[&pid.to_string()]);
            std::thread::sleep(Duration::from_millis(100));
            let _ = std::fs::remove_file("/run/dbus/pid");
            let _ = std::fs::remove_file("/run/dbus/system_bus_socket");
        }
    }
}

fn avahi_running() -> bool {
    Command::new("avahi-daemon")
        .arg("--check")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One CUPS set-up at a time in this process: they share the system's
/// D-Bus and Avahi, which the first to finish would stop under the other.
static CUPS_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A private CUPS scheduler on a loopback port with one queue per name,
/// all printing to one `ippeveprinter`.
pub struct Cups {
    pub url: String,
    host: String,
    pub printer: SocketAddr,
    // Dropped in order: scheduler, printer, then DNS-SD.
    _cupsd: Daemon,
    _ippeve: Daemon,
    _dnssd: Dnssd,
    dir: PathBuf,
    // Released last, once the daemons above are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Cups {
    pub const PROGRAMS: &'static [&'static str] = &[
        "cupsd",
        "ippeveprinter",
        "lpadmin",
        "cupsdisable",
        "cupsenable",
        "lp",
        "avahi-daemon",
        "dbus-daemon",
    ];

    pub fn start(dir: &Path, queues: &[&str]) -> Result<Cups, String> {
        require(Self::PROGRAMS)?;
        let turn = CUPS_ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The test's text jobs need CUPS's filters to reach the printer.
        if !Path::new("/usr/lib/cups/filter/texttopdf").exists() {
            return Err("missing cups-filters (.ci/run installs it)".into());
        }
        let dir = dir.join("cups");
        for d in ["spool", "cache", "state", "tmp", "log", "ipp"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        let dnssd = Dnssd::start(&dir)?;
        let ipp_port = free_port();
        let printer: SocketAddr = ([127, 0, 0, 1], ipp_port).into();
        let ippeve = Daemon::spawn(
            "ippeveprinter",
            &[
                "-p",
                &ipp_port.to_string(),
                "-d",
                &dir.join("ipp").to_string_lossy(),
                "-f",
                "application/pdf,image/pwg-raster,text/plain",
                "-M",
                "Vitals",
                "-m",
                "Test",
                "VitalsTestPrinter",
            ],
            &dir.join("ippeveprinter.log"),
        )?;
        wait_listening(printer, Duration::from_secs(10)).map_err(|e| {
            let log = std::fs::read_to_string(dir.join("ippeveprinter.log")).unwrap_or_default();
            format!("ippeveprinter: {e}: {log}")
        })?;
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("cupsd.conf"),
            format!(
                "Listen 127.0.0.1:{port}\nLogLevel warn\nWebInterface No\nBrowsing Off\n\
                 DefaultAuthType None\n<Location />\n  Order allow,deny\n  Allow all\n</Location>\n\
                 <Location /admin>\n  Order allow,deny\n  Allow all\n</Location>\n\
                 <Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("cups-files.conf"),
            format!(
                "ServerRoot {d}\nRequestRoot {d}/spool\nCacheDir {d}/cache\nStateDir {d}/state\n\
                 TempDir {d}/tmp\nAccessLog {d}/log/access_log\nErrorLog {d}/log/error_log\n\
                 PageLog {d}/log/page_log\nUser lp\nGroup lp\nSandboxing Relaxed\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        sh("chmod", &["1777", &dir.join("tmp").to_string_lossy()]);
        let cupsd = Daemon::spawn(
            "cupsd",
            &[
                "-f",
                "-c",
                &dir.join("cupsd.conf").to_string_lossy(),
                "-s",
                &dir.join("cups-files.conf").to_string_lossy(),
            ],
            &dir.join("cupsd.log"),
        )?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_listening(addr, Duration::from_secs(10))?;
        let cups = Cups {
            url: format!("http://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            printer,
            _cupsd: cupsd,
            _ippeve: ippeve,
            _dnssd: dnssd,
            dir,
            _turn: turn,
        };
        let device = format!("ipp://127.0.0.1:{ipp_port}/ipp/print");
        for q in queues {
            if !sh(
                "lpadmin",
                &[
                    "-h",
                    &cups.host,
                    "-p",
                    q,
                    "-E",
                    "-v",
                    &device,
                    "-m",
                    "everywhere",
                ],
            ) {
                return Err(format!("lpadmin could not add queue {q}"));
            }
        }
        Ok(cups)
    }

    pub fn disable(&self, queue: &str, reason: &str) {
        assert!(sh("cupsdisable", &["-h", &self.host, "-r", reason, queue]));
    }

    pub fn enable(&self, queue: &str) {
        assert!(sh("cupsenable", &["-h", &self.host, queue]));
    }

    /// Sends a small text job to `queue`.
    pub fn print(&self, queue: &str) {
        let file = self.dir.join("job.txt");
        std::fs::write(&file, "Vitals test page\n").expect("job file");
        assert!(sh(
            "lp",
            &["-h", &self.host, "-d", queue, &file.to_string_lossy()]
        ));
    }

    /// Sets the printer's black toner level (percent) through its web form.
    pub fn set_toner(&self, percent: u8) {
        let line = http_get(
            self.printer,
            &format!("/supplies?supply0=25&supply1={percent}"),
        )
        .expect("supplies form");
        assert!(line.contains("200"), "{line}");
    }

    /// Sets the sheets in the main tray through the printer's web form.
    pub fn set_paper(&self, sheets: u16) {
        let line = http_get(
            self.printer,
            &format!(
                "/media?size1=na_letter_8.5x11in&type1=stationery&level1={sheets}\
                 &size3=na_number-10_4.125x9.5in&type3=envelope&level3=-2"
            ),
        )
        .expect("media form");
        assert!(line.contains("200"), "{line}");
    }
}

/// `snmpd` on a loopback UDP port answering the Host Resources printer
/// table and the Printer MIB from a values file the test rewrites, through
/// the `vitals-snmp-pass` helper.
pub struct Snmpd {
    pub addr: SocketAddr,
    values: PathBuf,
    _daemon: Daemon,
}

impl Snmpd {
    pub fn start(dir: &Path, pass_helper: &Path, values: &str) -> Result<Snmpd, String> {
        require(&["snmpd"])?;
        let dir = dir.join("snmpd");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let values_path = dir.join("values.txt");
        std::fs::write(&values_path, values).map_err(|e| e.to_string())?;
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            s.local_addr().map_err(|e| e.to_string())?.port()
        };
        let pass = format!("{} {}", pass_helper.display(), values_path.display());
        std::fs::write(
            dir.join("snmpd.conf"),
            format!(
                "agentAddress udp:127.0.0.1:{port}\nrocommunity public 127.0.0.1\n\
                 pass .1.3.6.1.2.1.25.3.5 {pass}\npass .1.3.6.1.2.1.43 {pass}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let conf = dir.join("snmpd.conf");
        let mut daemon = Daemon::spawn(
            "snmpd",
            &[
                "-f",
                "-Lo",
                "-C",
                "-c",
                &conf.to_string_lossy(),
                "-p",
                &dir.join("snmpd.pid").to_string_lossy(),
                "-M",
                "/nonexistent",
                "-m",
                "",
            ],
            &dir.join("snmpd.log"),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        daemon.alive().map_err(|e| {
            let log = std::fs::read_to_string(dir.join("snmpd.log")).unwrap_or_default();
            format!("{e}: {log}")
        })?;
        Ok(Snmpd {
            addr: ([127, 0, 0, 1], port).into(),
            values: values_path,
            _daemon: daemon,
        })
    }

    /// Replaces the served values (atomically, so a walk never sees half a file).
    pub fn set(&self, values: &str) {
        let tmp = self.values.with_extension("new");
        std::fs::write(&tmp, values).expect("values");
        std::fs::rename(&tmp, &self.values).expect("rename values");
    }
}

/// A network namespace standing in for a workstation: one veth to the
/// host side, which plays its gateway and runs `dnsmasq` as its DNS
/// server. Faults are made with nftables inside the namespace only.
pub struct DeskNamespace {
    pub name: String,
    pub gateway: String,
    /// An address on the host that the desk reaches through its gateway
    /// (not on the desk's own network): where its key services listen.
    pub behind: String,
    host_if: String,
    dir: PathBuf,
    _dnsmasq: Daemon,
}

impl DeskNamespace {
    /// A desk on 10.231.`subnet`.2/24 behind gateway 10.231.`subnet`.1;
    /// namespaces started side by side need subnets of their own.
    pub fn start(
        dir: &Path,
        tag: &str,
        subnet: u8,
        hosts: &[(&str, &str)],
    ) -> Result<DeskNamespace, String> {
        require(&["ip", "nft", "dnsmasq"])?;
        let name = format!("vt-{tag}");
        let host_if = format!("vth-{tag}");
        let desk_if = format!("vtd-{tag}");
        let gateway = format!("10.231.{subnet}.1");
        let behind = format!("10.232.{subnet}.1");
        let desk = format!("10.231.{subnet}.2/24");
        let dir = dir.join("netns");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // Leftovers of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ok = sh("ip", &["netns", "add", &name])
            && sh(
                "ip",
                &[
                    "link", "add", &host_if, "type", "veth", "peer", "name", &desk_if,
                ],
            )
            && sh("ip", &["link", "set", &desk_if, "netns", &name])
            && sh(
                "ip",
                &["addr", "add", &format!("{gateway}/24"), "dev", &host_if],
            )
            && sh(
                "ip",
                &["addr", "add", &format!("{behind}/32"), "dev", &host_if],
            )
            && sh("ip", &["link", "set", &host_if, "up"])
            && sh("ip", &["-n", &name, "addr", "add", &desk, "dev", &desk_if])
            && sh("ip", &["-n", &name, "link", "set", &desk_if, "up"])
            && sh("ip", &["-n", &name, "link", "set", "lo", "up"])
            && sh(
                "ip",
                &["-n", &name, "route", "add", "default", "via", &gateway],
            );
        if !ok {
            return Err("cannot set up the namespace (see above)".into());
        }
        // `ip netns exec` mounts this over /etc/resolv.conf inside.
        let etc = Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {gateway}\noptions timeout:1 attempts:1\n"),
        )
        .map_err(|e| e.to_string())?;
        let hosts_file = dir.join("hosts");
        let text: String = hosts
            .iter()
            .map(|(ip, host)| format!("{ip} {host}\n"))
            .collect();
        std::fs::write(&hosts_file, text).map_err(|e| e.to_string())?;
        let dnsmasq = Daemon::spawn(
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={gateway}"),
                "--except-interface=lo",
                &format!("--addn-hosts={}", hosts_file.display()),
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
            ],
            &dir.join("dnsmasq.log"),
        )?;
        let ns = DeskNamespace {
            name,
            gateway,
            behind,
            host_if,
            dir,
            _dnsmasq: dnsmasq,
        };
        std::thread::sleep(Duration::from_millis(300));
        ns.nft("add table inet vitals_test")?;
        ns.nft("add chain inet vitals_test out { type filter hook output priority 0 ; }")?;
        ns.nft("add chain inet vitals_test in { type filter hook input priority 0 ; }")?;
        Ok(ns)
    }

    /// Runs an nft command inside the namespace.
    pub fn nft(&self, rule: &str) -> Result<(), String> {
        let file = self.dir.join("rule.nft");
        std::fs::write(&file, format!("{rule}\n")).map_err(|e| e.to_string())?;
        if sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "nft",
                "-f",
                &file.to_string_lossy(),
            ],
        ) {
            Ok(())
        } else {
            Err(format!("nft: {rule}"))
        }
    }

    /// Drops every outgoing packet the rule text matches, such as
    /// `udp dport 53`; `clear` removes all such drops.
    pub fn drop_matching(&self, matches: &str) {
        self.nft(&format!("add rule inet vitals_test out {matches} drop"))
            .expect("nft rule");
    }

    /// Drops every incoming packet the rule text matches, as a lossy
    /// link would: what was sent goes unanswered (a drop on the way out
    /// fails the send at once instead, with "operation not permitted").
    pub fn drop_incoming(&self, matches: &str) {
        self.nft(&format!("add rule inet vitals_test in {matches} drop"))
            .expect("nft rule");
    }

    pub fn clear(&self) {
        self.nft("flush chain inet vitals_test out")
            .and_then(|()| self.nft("flush chain inet vitals_test in"))
            .expect("nft flush");
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for DeskNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// What the console's browser scenarios need: Node, the system Chromium,
/// and `playwright-core` and `axe-core` installed next to the scenarios
/// (`npm ci` in `tests/console`, which `.ci/run` does).
pub struct BrowserKit {
    pub node: PathBuf,
    pub chromium: PathBuf,
    /// `tests/console`.
    pub dir: PathBuf,
}

impl BrowserKit {
    pub fn find() -> Result<Self, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let node = find("node").ok_or("node not installed (Debian package nodejs)")?;
        let chromium = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| find("chromium"))
            .ok_or("chromium not installed (Debian package chromium)")?;
        for module in ["playwright-core", "axe-core", "oidc-provider"] {
            if !dir.join("node_modules").join(module).is_dir() {
                return Err(format!(
                    "{module} not installed (npm ci --prefix {})",
                    dir.display()
                ));
            }
        }
        Ok(BrowserKit {
            node,
            chromium,
            dir,
        })
    }
}

/// A small ext4 file system, loop-mounted, unmounted when dropped.
pub struct LoopDisk {
    pub mount: PathBuf,
}

impl LoopDisk {
    /// `Err` says why it cannot be made here (not root, no mkfs.ext4, no
    /// loop devices).
    pub fn new(dir: &Path) -> Result<Self, String> {
        if !is_root() {
            return Err("not root (loop mounts need root)".into());
        }
        if find("mkfs.ext4").is_none() {
            return Err("mkfs.ext4 not installed (Debian package e2fsprogs)".into());
        }
        let img = dir.join("disk.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let img_s = img.to_string_lossy().into_owned();
        let mount_s = mount.to_string_lossy().into_owned();
        if !sh("truncate", &["-s", "64M", &img_s]) || !sh("mkfs.ext4", &["-q", "-m", "0", &img_s]) {
            return Err("cannot make the ext4 image".into());
        }
        if !sh("mount", &["-o", "loop", &img_s, &mount_s]) {
            return Err("loop mount failed (no loop devices?)".into());
        }
        Ok(LoopDisk { mount })
    }

    /// Fills the file system to `percent` used, as `df` counts it.
    pub fn fill_to(&self, percent: f64) {
        let out = Command::new("df")
            .args(["--output=size,avail", "-B1"])
            .arg(&self.mount)
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .lines()
            .nth(1)
            .expect("df line")
            .split_whitespace()
            .map(|n| n.parse().expect("number"))
            .collect();
        let (size, avail) = (nums[0] as f64, nums[1] as f64);
        let want_used = size * percent / 100.0;
        let used = size - avail;
        let fill = (want_used - used).max(0.0) as u64;
        let path = self.mount.join("fill");
        assert!(
            sh(
                "fallocate",
                &["-l", &fill.to_string(), &path.to_string_lossy()]
            ),
            "fallocate"
        );
    }

    /// Removes what [`LoopDisk::fill_to`] wrote.
    pub fn empty(&self) {
        std::fs::remove_file(self.mount.join("fill")).expect("remove fill");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        sh("umount", &[&self.mount.to_string_lossy()]);
    }
}

/// A private PostgreSQL cluster on a loopback port, made with `initdb` in a
/// temporary folder and started with `pg_ctl`, shared by every test of one
/// test process (each test takes a database of its own). A watchdog shell
/// stops the cluster and removes its folder once the test process is gone.
/// As root, the cluster runs as the `postgres` user (`initdb` refuses
/// root).
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> Result<&'static Postgres, String> {
        static SHARED: std::sync::OnceLock<Result<Postgres, String>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(Postgres::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The folder holding `initdb`, `pg_ctl` and `postgres`:
    /// `VITALS_PG_BIN`, else the newest Debian version installed.
    fn bin_dir() -> Result<PathBuf, String> {
        if let Ok(dir) = std::env::var("VITALS_PG_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "PostgreSQL is not installed (Debian package postgresql)".to_owned())?
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin)| bin)
            .ok_or_else(|| "PostgreSQL is not installed (Debian package postgresql)".to_owned())
    }

    fn start() -> Result<Postgres, String> {
        Self::start_in("shared")
    }

    /// A cluster of one test's own, which it may stop and start again
    /// ([`Postgres::pause`], [`Postgres::resume`]) without touching the
    /// tests sharing the other.
    pub fn private(name: &str) -> Result<Postgres, String> {
        Self::start_in(name)
    }

    /// Stops the server (fast shutdown: sessions cut, nothing lost).
    pub fn pause(&self) -> Result<(), String> {
        let data = self.dir.join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
    }

    /// Starts it again on its port.
    pub fn resume(&self) -> Result<(), String> {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-o",
                &self.options(),
                "-l",
                &self.dir.join("postgres.log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    fn options(&self) -> String {
        // Durability is not under test here (the collector's acks follow
        // the database's commit either way): skip the flushes.
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        )
    }

    fn start_in(name: &str) -> Result<Postgres, String> {
        let bin = Self::bin_dir()?;
        let as_postgres = is_root();
        if as_postgres && find("runuser").is_none() {
            return Err("runuser missing (util-linux)".into());
        }
        let dir = std::env::temp_dir().join(format!("vitals-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let pg = Postgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres
            && !sh(
                "chown",
                &["postgres:postgres", &pg.dir.display().to_string()],
            )
        {
            return Err("cannot give the cluster folder to the postgres user".into());
        }
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "vitals",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        // The watchdog first, so a failed start is cleaned up too. It runs
        // as this process's user (to see it), the stop as the cluster's.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {as_owner}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            as_owner = if as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = pg.bin.join("pg_ctl").display(),
            data = data.display(),
            dir = pg.dir.display(),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().map_err(|e| format!("watchdog: {e}"))?;
        pg.resume()?;
        Ok(pg)
    }

    /// A command run as the cluster's owner.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program).args(args);
            cmd
        } else {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(&self.bin.join(tool), args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs SQL on a database of the cluster as its superuser.
    pub fn sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let out = Command::new(psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "vitals",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// A new, empty database; its `postgres://` URL.
    pub fn database(&self, name: &str) -> Result<String, String> {
        let name: Vec<char> = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        // At most 63 characters, starting with a letter; the end of a long
        // name (its unique suffix) is kept.
        let tail: String = name[name.len().saturating_sub(60)..].iter().collect();
        let name = format!("db_{tail}");
        self.sql("postgres", &format!("DROP DATABASE IF EXISTS {name}"))?;
        self.sql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://vitals@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A NATS server (Debian `nats-server`) on a loopback port: the bus the
/// collector replicas route live traffic through. It can be stopped and
/// started again on the same port, for the tests of a bus outage. Needs
/// no root.
pub struct Nats {
    pub port: u16,
    dir: PathBuf,
    daemon: Option<Daemon>,
}

impl Nats {
    pub fn start(dir: &Path) -> Result<Nats, String> {
        if find("nats-server").is_none() {
            return Err("missing nats-server (.ci/run installs it)".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mut nats = Nats {
            port: free_port(),
            dir: dir.to_path_buf(),
            daemon: None,
        };
        nats.resume()?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL): every replica loses the bus at once.
    pub fn pause(&mut self) {
        self.daemon = None;
    }

    /// Starts it again on its port.
    pub fn resume(&mut self) -> Result<(), String> {
        let log = self.dir.join("nats.log");
        let port = self.port.to_string();
        self.daemon = Some(Daemon::spawn(
            "nats-server",
            &[
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "-l",
                &log.display().to_string(),
            ],
            &self.dir.join("nats.out"),
        )?);
        let addr: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        wait_listening(addr, Duration::from_secs(10))
    }
}

/// HAProxy (Debian `haproxy`) in TCP mode in front of collector replicas:
/// TLS passes through untouched, so agents and specialists keep their
/// mutual TLS with whichever replica they land on. A replica that stops
/// answering is out of rotation within a second; a connection to it that
/// fails is sent to another. Needs no root.
pub struct Haproxy {
    pub addr: SocketAddr,
    _daemon: Daemon,
}

impl Haproxy {
    pub fn start(dir: &Path, backends: &[SocketAddr]) -> Result<Haproxy, String> {
        if find("haproxy").is_none() {
            return Err("missing haproxy (.ci/run installs it)".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .map_err(|e| format!("{e}"))?;
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "    server r{i} {b} check check-ssl verify none inter 300ms fall 2 rise 2\n"
                )
            })
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 4096\n\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
                 timeout client 1h\n    timeout server 1h\n    retries 3\n    option redispatch\n\n\
                 frontend collectors\n    bind {addr}\n    default_backend replicas\n\n\
                 backend replicas\n    balance roundrobin\n{servers}"
            ),
        )
        .map_err(|e| e.to_string())?;
        let daemon = Daemon::spawn(
            "haproxy",
            &["-db", "-f", &config.display().to_string()],
            &dir.join("haproxy.log"),
        )?;
        wait_listening(addr, Duration::from_secs(10))?;
        Ok(Haproxy {
            addr,
            _daemon: daemon,
        })
    }
}
