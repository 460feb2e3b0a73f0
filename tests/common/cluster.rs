//! A throwaway Postgres cluster (`initdb` + `pg_ctl`) on a free port in a temporary
//! directory, for tests that restart Postgres. Stopped and deleted on drop, also when the
//! test fails. As root it runs the Postgres tools as the `postgres` OS user (initdb refuses
//! root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::binary::free_port;

pub struct TempCluster {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`: `PG_BINDIR`, or the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// TLS for a [`TempCluster`]: the server's certificate and key (PEM files, copied into the
/// data directory) and more `postgresql.conf` settings (`name=value`, no spaces).
pub struct ServerTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub settings: &'a [&'a str],
}

impl TempCluster {
    /// Create and start a cluster; `None` when no Postgres binaries are installed.
    pub fn start() -> Option<TempCluster> {
        TempCluster::start_with(None)
    }

    /// A cluster with `ssl=on`, presenting `tls.cert`.
    pub fn start_with_tls(tls: ServerTls<'_>) -> Option<TempCluster> {
        TempCluster::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Option<TempCluster> {
        let bindir = find_bindir()?;
        let dir = std::env::temp_dir().join(format!(
            "userhooks-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("create cluster directory");
        let as_postgres = is_root();
        let cluster = TempCluster {
            dir,
            bindir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=60",
            cluster.port,
            path_str(&cluster.dir)
        );
        if let Some(tls) = tls {
            cluster.install_server_key(tls.cert, tls.key);
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
            for setting in tls.settings {
                options.push_str(" -c ");
                options.push_str(setting);
            }
        }
        let log = cluster.dir.join("postgres.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(cluster)
    }

    /// The server reads its key only if no one else can (mode 0600, owned by the server).
    fn install_server_key(&self, cert: &Path, key: &Path) {
        let data = self.data();
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = data.join(name);
            std::fs::copy(from, &to).expect("copy the server certificate");
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the server key");
            if self.as_postgres {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&to)
                    .status()
                    .expect("chown");
                assert!(status.success(), "chown {name} to postgres");
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server comes back.
    pub fn restart_fast(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
        );
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool, args)
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command(
                "pg_ctl",
                &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
            )
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
