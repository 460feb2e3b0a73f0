//! The real `userhooks run` binary as a child process: environment, signals, captured stderr
//! and a `/metrics` scrape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{SEQUIN_DB, TOKEN};

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Send a signal (`-KILL`, `-TERM`, `-STOP`, `-CONT`...) to a process.
pub fn send_signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A running `userhooks run` process. Killed when dropped.
pub struct WorkerProcess {
    child: tokio::process::Child,
    pid: u32,
    stderr: Arc<Mutex<String>>,
    pub metrics_addr: Option<SocketAddr>,
    pub worker_id: String,
}

impl WorkerProcess {
    /// Start a worker against `database_url` and the Sequin API at `api_url`. `extra`
    /// overrides the defaults below (e.g. `("USERHOOKS_LEASE", "3s")`). Set
    /// `USERHOOKS_METRICS_ADDR` to `"auto"` to get a free port (see `metrics_addr`).
    pub fn spawn(database_url: &str, api_url: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let mut env = worker_env(database_url, api_url, extra);
        let mut metrics_addr = None;
        if env.get("USERHOOKS_METRICS_ADDR").map(String::as_str) == Some("auto") {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            env.insert("USERHOOKS_METRICS_ADDR".into(), addr.to_string());
            metrics_addr = Some(addr);
        }
        let worker_id = env["USERHOOKS_WORKER_ID"].clone();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"));
        cmd.arg("run")
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn userhooks run");
        let pid = child.id().expect("child pid");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        let echo = std::env::var_os("USERHOOKS_TEST_ECHO").is_some();
        // Always drain the pipe, or a chatty worker would block on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[{pid}] {line}");
                }
                let mut buf = sink.lock().unwrap();
                buf.push_str(&line);
                buf.push('\n');
            }
        });
        WorkerProcess {
            child,
            pid,
            stderr,
            metrics_addr,
            worker_id,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Panics if the process printed a Rust panic.
    pub fn assert_no_panic(&self) {
        let text = self.stderr();
        assert!(
            !text.contains("panicked"),
            "worker {} panicked:\n{text}",
            self.pid
        );
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        send_signal(self.pid, "-KILL");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a SIGKILLed worker is reaped within 10s")
            .expect("wait for the SIGKILLed worker");
    }

    /// SIGTERM, then wait up to `timeout` for the exit. Returns the status and how long
    /// the exit took.
    pub async fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        assert!(send_signal(self.pid, "-TERM"), "SIGTERM {}", self.pid);
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                )
            })
            .expect("wait for worker");
        (status, started.elapsed())
    }

    /// SIGTERM, expect exit 0 within 30s and no panic in the logs.
    pub async fn stop_cleanly(mut self) {
        let (status, _) = self.terminate(Duration::from_secs(30)).await;
        assert!(
            status.success(),
            "exit status {status:?}; stderr:\n{}",
            self.stderr()
        );
        self.assert_no_panic();
    }

    /// The `/metrics` text, or `None` when the endpoint does not answer.
    pub async fn scrape(&self) -> Option<String> {
        let addr = self
            .metrics_addr
            .expect("started with USERHOOKS_METRICS_ADDR=auto");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// The value of an unlabelled metric, e.g. `userhooks_listener_connected`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.scrape().await?;
        metric_value(&text, name)
    }
}

/// The worker's environment: test defaults, overridden by `extra`.
fn worker_env(
    database_url: &str,
    api_url: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let worker_id = format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("SEQUIN_API_URL", api_url),
        ("SEQUIN_API_TOKEN", TOKEN),
        ("SEQUIN_DATABASE", SEQUIN_DB),
        ("USERHOOKS_METRICS_ADDR", "off"),
        ("USERHOOKS_ALLOW_PRIVATE_URLS", "true"),
        ("USERHOOKS_CONCURRENCY", "32"),
        ("USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND", "unlimited"),
        ("USERHOOKS_POLL_INTERVAL", "500ms"),
        ("USERHOOKS_LEASE", "30s"),
        ("USERHOOKS_HTTP_TIMEOUT", "5s"),
        ("USERHOOKS_SHUTDOWN_GRACE", "10s"),
        ("USERHOOKS_LOG", "info"),
        ("USERHOOKS_WORKER_ID", worker_id.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Run `userhooks <args>` with the worker's environment (see [`WorkerProcess::spawn`]) to
/// its end, within 60 s.
pub async fn run_to_end(
    args: &[&str],
    database_url: &str,
    api_url: &str,
    extra: &[(&str, &str)],
) -> Finished {
    let env = worker_env(database_url, api_url, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_userhooks(args, &env).await
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// How a finished `userhooks` command exited and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The only line on stderr: panics if there are several (an error must be one line).
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr:\n{}",
            self.stderr
        );
        lines[0]
    }
}

/// `userhooks <args>` with exactly `env` (and PATH), as a person runs it; the exit code and
/// the output once it exits (within 60 s).
pub async fn run_userhooks(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        command(args, env).stdout(Stdio::piped()).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("userhooks {args:?} did not exit within 60s"))
    .expect("run userhooks");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A long-running `userhooks` command (serve, dev-stack) with stdout and stderr captured line
/// by line. Killed when dropped.
pub struct Running {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Leads a process group (a shell) that has not been signalled yet: dropping kills the
    /// group, so a failed test leaves nothing of its own running.
    group: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let (true, Some(pid)) = (self.group, self.child.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn capture(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tag: &'static str,
) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let buf = sink.clone();
    let echo = std::env::var_os("USERHOOKS_TEST_ECHO").is_some();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if echo {
                eprintln!("[{tag}] {line}");
            }
            let mut buf = buf.lock().unwrap();
            buf.push_str(&line);
            buf.push('\n');
        }
    });
    sink
}

impl Running {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        Running::spawn_command(command(args, env))
    }

    /// Run `cmd` (any program) with its output captured.
    pub fn spawn_command(mut cmd: tokio::process::Command) -> Running {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn");
        let stdout = capture(child.stdout.take().expect("stdout"), "out");
        let stderr = capture(child.stderr.take().expect("stderr"), "err");
        Running {
            child,
            stdout,
            stderr,
            group: false,
        }
    }

    /// Run a [`shell`] command: the group it leads is killed if the test ends early.
    pub fn spawn_shell(cmd: tokio::process::Command) -> Running {
        let mut running = Running::spawn_command(cmd);
        running.group = true;
        running
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until stdout or stderr contains `needle`; panics with both after `timeout`, or a
    /// second after the process exited without printing it (what it started may still write).
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let mut deadline = Instant::now() + timeout;
        let mut exited = None;
        loop {
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return;
            }
            if exited.is_none() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    exited = Some(status);
                    deadline = deadline.min(Instant::now() + Duration::from_secs(1));
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?} (exit: {exited:?})\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait for the process to exit by itself within `timeout`.
    pub async fn exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                )
            })
            .expect("wait");
        tokio::time::sleep(Duration::from_millis(200)).await;
        status
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            send_signal(pid, "-TERM");
        }
        self.exit(Duration::from_secs(30)).await
    }
}

/// `sh -c <script>` as a person would run it in a terminal where `userhooks` is installed: the
/// binary under test first on PATH, only `env` besides, in a process group of its own (so
/// `terminate_group` reaches whatever the script started).
pub fn shell(script: &str, env: &[(&str, &str)]) -> tokio::process::Command {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_userhooks"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let mut path = vec![bin_dir];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

impl Running {
    /// SIGTERM to the whole process group (a shell and what it started), as Ctrl-C in a
    /// terminal would; then wait for the shell.
    pub async fn terminate_group(&mut self) -> ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        self.group = false;
        self.exit(Duration::from_secs(30)).await
    }
}

impl Running {
    /// Wait for the exit; the status with everything printed to stdout and stderr.
    pub async fn exit_with_output(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let status = self.exit(timeout).await;
        self.group = false;
        (status, self.stdout(), self.stderr())
    }
}
