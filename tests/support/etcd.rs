//! Test harness for coordination: real `etcd` servers (Debian's `etcd-server`) on free
//! loopback ports with temporary data folders, one member or a three-member cluster.
//! Every server is killed when its handle is dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str = "install it with `apt-get install etcd-server etcd-client` \
     (./scripts/test.sh, the README's test command, does)";

/// The path of `name` (`etcd`, `etcdctl`); a missing tool fails the test, saying how to
/// install it.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()));
    match found {
        Some(path) => path,
        None => panic!("`{name}` was not found on PATH nor in /usr/bin: {INSTALL}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member. Killed on drop; its data folder is removed then.
pub struct Etcd {
    child: Option<Child>,
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    initial_cluster: String,
    state: &'static str,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    /// A single-member cluster, healthy.
    pub fn start() -> Etcd {
        let mut one = Self::cluster(1);
        one.pop().unwrap()
    }

    /// A cluster of `n` members on loopback, each healthy.
    pub fn cluster(n: usize) -> Vec<Etcd> {
        tool("etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Etcd {
                child: None,
                name: format!("n{i}"),
                client_port: *client,
                peer_port: *peer,
                initial_cluster: initial_cluster.clone(),
                state: "new",
                dir: tempfile::tempdir().unwrap(),
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        for member in &members {
            member.wait_healthy(Duration::from_secs(20));
        }
        members
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(tool("etcd"))
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(self.endpoint())
            .arg("--advertise-client-urls")
            .arg(self.endpoint())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(self.state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}; {INSTALL}"));
        self.child = Some(child);
    }

    /// Waits until `etcdctl endpoint health` says so.
    pub fn wait_healthy(&self, within: Duration) {
        let started = Instant::now();
        loop {
            let healthy = Command::new(tool("etcdctl"))
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint(),
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return;
            }
            if started.elapsed() > within {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!(
                    "etcd {} not healthy after {within:?}; its log ends:\n{tail}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.state = "existing";
        self.spawn();
        self.wait_healthy(Duration::from_secs(20));
    }

    /// `etcdctl` with the endpoint set, its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
