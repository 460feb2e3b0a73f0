//! The docker compose stack cannot run here (no Docker engine), so its configuration is
//! checked instead: every file it mounts exists, the services are wired to each other, the
//! Prometheus rules and Grafana provisioning are well formed, and every `userhooks_*` metric
//! that the dashboard and the alerts query is one a real worker exports.

mod common;
mod prom;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use userhooks::cli::{Cli, Command};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.is_mapping(),
        "docker-compose.yml has no service {name}"
    );
    service
}

fn str_list(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("a string item").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A service's environment as `KEY -> value`, from either compose form (map or `K=V` list).
fn environment(service: &Yaml) -> std::collections::BTreeMap<String, String> {
    let env = &service["environment"];
    let mut out = std::collections::BTreeMap::new();
    if let Some(map) = env.as_mapping() {
        for (k, v) in map {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Bool(b) => b.to_string(),
                other => panic!("unexpected environment value {other:?}"),
            };
            out.insert(k.as_str().unwrap().to_string(), value);
        }
    } else {
        for item in str_list(env) {
            let (k, v) = item.split_once('=').expect("K=V");
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

/// Bind mounts of a service: (host path relative to the repo, container path).
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    str_list(&service["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap().trim_start_matches("./").to_string();
            let container = parts.next().expect("container path").to_string();
            (host, container)
        })
        .collect()
}

/// Where a container path of `service` comes from in the repo (through its bind mounts).
fn host_path_of(service: &Yaml, container_path: &str) -> Option<String> {
    bind_mounts(service).into_iter().find_map(|(host, target)| {
        if container_path == target {
            Some(host)
        } else {
            container_path
                .strip_prefix(&format!("{target}/"))
                .map(|rest| format!("{host}/{rest}"))
        }
    })
}

#[test]
fn compose_defines_the_whole_stack_and_every_mounted_file_exists() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    for name in [
        "postgres",
        "redis",
        "sequin",
        "migrate",
        "worker",
        "prometheus",
        "grafana",
    ] {
        service(&compose, name);
    }
    let named_volumes = compose["volumes"].as_mapping().cloned().unwrap_or_default();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(image) = svc["image"].as_str() {
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "{name}: image {image} is not pinned"
            );
        }
        for volume in str_list(&svc["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                assert!(
                    repo(path).exists(),
                    "{name} mounts {path}, which is not in the repository"
                );
            } else {
                assert!(
                    named_volumes.contains_key(Yaml::from(source)),
                    "{name} uses volume {source}, not declared under volumes:"
                );
            }
        }
        for port in str_list(&svc["ports"]) {
            let (host, container) = port.split_once(':').expect("HOST:CONTAINER port");
            host.parse::<u16>().expect("host port");
            container.parse::<u16>().expect("container port");
        }
        if let Some(depends) = svc["depends_on"].as_mapping() {
            for dep in depends.keys() {
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown {dep:?}"
                );
            }
        }
        for dep in str_list(&svc["depends_on"]) {
            assert!(
                services.contains_key(Yaml::from(dep.as_str())),
                "{name} depends on unknown {dep}"
            );
        }
    }
}

#[test]
fn postgres_runs_with_logical_wal_and_the_example_app_schema() {
    let compose = compose();
    let postgres = service(&compose, "postgres");
    let command = str_list(&postgres["command"]).join(" ");
    assert!(command.contains("wal_level=logical"), "command: {command}");
    let init: Vec<String> = bind_mounts(postgres)
        .into_iter()
        .filter(|(_, target)| target.starts_with("/docker-entrypoint-initdb.d/"))
        .map(|(host, _)| host)
        .collect();
    assert!(
        init.contains(&"sql/example_app.sql".to_string()),
        "{init:?}"
    );
    // Sequin keeps its state in its own database on the same server.
    let sequin_env = environment(service(&compose, "sequin"));
    let creates_sequin_db = init.iter().any(|f| {
        read(f)
            .to_lowercase()
            .contains(&format!("create database {}", sequin_env["PG_DATABASE"]))
    });
    assert!(
        creates_sequin_db,
        "no init script creates Sequin's database"
    );
    assert_eq!(sequin_env["PG_HOSTNAME"], "postgres");
}

#[test]
fn postgres_leaves_5432_to_a_local_server_is_checked_over_tcp_and_migrate_waits_for_it() {
    let compose = compose();
    let postgres = service(&compose, "postgres");
    // The README's local setup (and the tests) use a Postgres on host port 5432.
    let ports = str_list(&postgres["ports"]);
    assert_eq!(ports, ["5433:5432"]);
    assert!(
        read("README.md").contains("-p 5433"),
        "the README names the stack's port"
    );
    // pg_isready over the Unix socket says "ready" while initdb's temporary server runs,
    // before the network listener is up.
    let check = str_list(&postgres["healthcheck"]["test"]).join(" ");
    assert!(check.contains("pg_isready -h 127.0.0.1"), "{check}");
    let migrate = service(&compose, "migrate");
    assert_eq!(
        migrate["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(migrate["restart"].as_str(), Some("on-failure"));
}

#[test]
fn sequin_is_pinned_and_configured_with_database_slot_publication_and_the_worker_token() {
    let compose = compose();
    let sequin = service(&compose, "sequin");
    assert_eq!(sequin["image"].as_str(), Some("sequin/sequin:v0.14.6"));
    let env = environment(sequin);
    let redis_url = &env["REDIS_URL"];
    assert!(redis_url.starts_with("redis://redis:"), "{redis_url}");
    for key in ["SECRET_KEY_BASE", "VAULT_KEY", "PG_DATABASE", "PG_PASSWORD"] {
        assert!(env.contains_key(key), "sequin needs {key}");
    }
    let config_path = host_path_of(sequin, &env["CONFIG_FILE_PATH"])
        .expect("CONFIG_FILE_PATH is a file mounted from the repository");
    let config = yaml(&config_path);

    let worker_env = environment(service(&compose, "worker"));
    let database = config["databases"]
        .as_sequence()
        .expect("databases")
        .iter()
        .find(|d| d["name"].as_str() == Some(worker_env["SEQUIN_DATABASE"].as_str()))
        .expect("sequin.yml defines the database the worker names in SEQUIN_DATABASE");
    assert_eq!(database["hostname"].as_str(), Some("postgres"));
    let app_db = environment(service(&compose, "postgres"))["POSTGRES_DB"].clone();
    assert_eq!(database["database"].as_str(), Some(app_db.as_str()));
    assert!(database["slot"]["name"].is_string());
    assert_eq!(
        database["slot"]["create_if_not_exists"].as_bool(),
        Some(true)
    );
    let publication = &database["publication"];
    let publication_name = publication["name"].as_str().expect("publication name");
    assert_eq!(publication["create_if_not_exists"].as_bool(), Some(true));
    let init_sql = publication["init_sql"].as_str().unwrap_or_default();
    assert!(
        init_sql.contains(publication_name)
            && init_sql.contains(&worker_env["USERHOOKS_SOURCE_TABLE"]),
        "the publication must include the source table: {init_sql}"
    );
    let tokens: Vec<&str> = config["api_tokens"]
        .as_sequence()
        .expect("api_tokens")
        .iter()
        .filter_map(|t| t["token"].as_str())
        .collect();
    assert!(
        tokens.contains(&worker_env["SEQUIN_API_TOKEN"].as_str()),
        "the worker's SEQUIN_API_TOKEN is not created by sequin.yml"
    );
}

#[test]
fn worker_is_built_from_the_dockerfile_migrated_first_and_serves_metrics_on_all_interfaces() {
    let compose = compose();
    let migrate = service(&compose, "migrate");
    let worker = service(&compose, "worker");
    assert_eq!(migrate["build"]["context"].as_str(), Some("."));
    let dockerfile = migrate["build"]["dockerfile"]
        .as_str()
        .unwrap_or("Dockerfile");
    assert!(repo(dockerfile).is_file());
    assert_eq!(
        worker["image"], migrate["image"],
        "worker runs the image migrate builds"
    );
    assert_eq!(str_list(&migrate["command"]), ["migrate"]);
    assert_eq!(str_list(&worker["command"]), ["run"]);
    assert_eq!(
        worker["depends_on"]["migrate"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    let env = environment(worker);
    assert_eq!(env["USERHOOKS_METRICS_ADDR"], "0.0.0.0:9610");
    assert_eq!(env["SEQUIN_API_URL"], "http://sequin:7376/api");
    assert!(env["DATABASE_URL"].contains("@postgres:5432/"));
    // The environment the worker gets must pass its own validation: turn each variable into
    // the flag that falls back to it, and parse the command line as `userhooks run` would.
    let command = <Cli as clap::CommandFactory>::command();
    let run = command.find_subcommand("run").expect("run subcommand");
    let mut argv = vec!["userhooks".to_string(), "run".to_string()];
    for (key, value) in &env {
        let arg = run
            .get_arguments()
            .chain(command.get_arguments())
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(key.as_str()))
            .unwrap_or_else(|| {
                panic!("worker environment sets {key}, which `userhooks run` does not read")
            });
        let long = arg.get_long().expect("long flag");
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={value}"));
        } else if ["true", "1"].contains(&value.as_str()) {
            argv.push(format!("--{long}"));
        }
    }
    let cli = <Cli as clap::Parser>::try_parse_from(&argv).expect("the worker's flags parse");
    let Command::Run(args) = cli.command else {
        panic!("not the run command")
    };
    let config = args
        .into_config()
        .expect("the worker's configuration is valid");
    assert_eq!(config.metrics_addr, Some("0.0.0.0:9610".parse().unwrap()));
    assert!(
        config.allow_private_urls,
        "the demo receiver is on the compose network"
    );
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_a_non_root_user() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.to_uppercase().starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "not a multi-stage build");
    let runtime = &lines[*stages.last().unwrap()..];
    let base = runtime[0].split_whitespace().nth(1).unwrap();
    assert!(
        base.contains("slim") || base.contains("distroless"),
        "runtime base {base}"
    );
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")),
        "the runtime stage copies the binary from the build stage"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap().trim();
    assert!(name != "root" && name != "0", "runs as {user}");
    let entrypoint = runtime
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(entrypoint.contains("userhooks"));
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("CMD") && l.contains("run")));
}

fn prometheus_config() -> Yaml {
    yaml("prometheus/prometheus.yml")
}

#[test]
fn prometheus_scrapes_sequin_and_the_worker_and_loads_the_alert_rules() {
    let config = prometheus_config();
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        for static_config in job["static_configs"].as_sequence().expect("static_configs") {
            for target in str_list(&static_config["targets"]) {
                targets.insert((job["job_name"].as_str().unwrap().to_string(), target));
            }
        }
    }
    assert!(
        targets.contains(&("sequin".to_string(), "sequin:8376".to_string())),
        "{targets:?}"
    );
    assert!(
        targets.contains(&("userhooks".to_string(), "worker:9610".to_string())),
        "{targets:?}"
    );
    // The worker target matches the port the worker listens on in compose.
    let compose = compose();
    let metrics_addr = environment(service(&compose, "worker"))["USERHOOKS_METRICS_ADDR"].clone();
    assert!(metrics_addr.ends_with(":9610"));

    let prometheus = service(&compose, "prometheus");
    for rule_file in str_list(&config["rule_files"]) {
        let host = host_path_of(prometheus, &rule_file)
            .unwrap_or_else(|| panic!("rule file {rule_file} is not mounted"));
        assert!(repo(&host).is_file(), "{host}");
    }
    assert_eq!(
        host_path_of(prometheus, "/etc/prometheus/prometheus.yml").as_deref(),
        Some("prometheus/prometheus.yml")
    );
    assert!(!str_list(&config["rule_files"]).is_empty());
}

fn alert_rules() -> Vec<Yaml> {
    let alerts = yaml("prometheus/alerts.yml");
    alerts["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| {
            assert!(g["name"].is_string(), "a rule group without a name");
            g["rules"].as_sequence().expect("rules").clone()
        })
        .collect()
}

#[test]
fn alert_rules_are_well_formed_and_cover_the_failure_modes() {
    let rules = alert_rules();
    let duration = regex::Regex::new(r"^\d+[smhd]$").unwrap();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name.to_string()), "duplicate alert {name}");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(!expr.trim().is_empty());
        assert_eq!(
            expr.matches('(').count(),
            expr.matches(')').count(),
            "{name}: {expr}"
        );
        assert_eq!(
            expr.matches('{').count(),
            expr.matches('}').count(),
            "{name}: {expr}"
        );
        let r#for = rule["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: for"));
        assert!(duration.is_match(r#for), "{name}: for {for}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity}"
        );
        assert!(
            rule["annotations"]["summary"].is_string(),
            "{name}: summary"
        );
        assert!(
            rule["annotations"]["description"].is_string(),
            "{name}: description"
        );
    }
    let expr_of = |pattern: &str| -> Vec<String> {
        rules
            .iter()
            .filter_map(|r| r["expr"].as_str())
            .filter(|e| e.contains(pattern))
            .map(String::from)
            .collect()
    };
    // One alert per failure mode of the issue.
    assert!(
        !expr_of("userhooks_oldest_pending_age_seconds").is_empty(),
        "oldest pending age"
    );
    assert!(
        !expr_of("userhooks_sequin_auth_ok").is_empty(),
        "auth failing"
    );
    assert!(!expr_of("outcome=\"failed\"").is_empty(), "failure ratio");
    assert!(
        !expr_of("userhooks_listener_connected").is_empty(),
        "listener down"
    );
    let job = prometheus_config()["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| str_list(&j["static_configs"][0]["targets"]).contains(&"worker:9610".to_string()))
        .and_then(|j| j["job_name"].as_str().map(String::from))
        .unwrap();
    assert!(
        !expr_of(&format!("up{{job=\"{job}\"}}")).is_empty(),
        "worker down (up of the scrape job {job})"
    );
}

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboards/userhooks.json")).expect("dashboard JSON")
}

fn dashboard_exprs(dashboard: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                target["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .to_string(),
            ));
        }
    }
    out
}

#[test]
fn grafana_provisions_the_prometheus_datasource_and_both_dashboards() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let datasources = yaml("grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"));
    let uid = datasource["uid"].as_str().expect("datasource uid");
    // Sequin's own dashboard queries the data source by this uid.
    assert_eq!(uid, "sqpds");
    assert!(read("grafana/dashboards/sequin/README.md").contains("`sqpds`"));
    assert_eq!(
        host_path_of(
            grafana,
            "/etc/grafana/provisioning/datasources/prometheus.yml"
        )
        .as_deref(),
        Some("grafana/provisioning/datasources/prometheus.yml")
    );

    let providers = yaml("grafana/provisioning/dashboards/dashboards.yml");
    assert!(host_path_of(
        grafana,
        "/etc/grafana/provisioning/dashboards/dashboards.yml"
    )
    .is_some());
    let providers = providers["providers"].as_sequence().expect("providers");
    let mut names = BTreeSet::new();
    for provider in providers {
        assert_eq!(provider["type"].as_str(), Some("file"));
        let path = provider["options"]["path"].as_str().expect("provider path");
        // Either the folder itself is mounted, or files inside it are.
        let mounted: Vec<String> = bind_mounts(grafana)
            .into_iter()
            .filter(|(_, target)| target == path || target.starts_with(&format!("{path}/")))
            .map(|(host, _)| host)
            .collect();
        assert!(
            !mounted.is_empty(),
            "dashboard path {path} is not mounted into grafana"
        );
        for host in mounted {
            assert!(repo(&host).exists(), "{host} is not in the repository");
        }
        names.insert(provider["name"].as_str().unwrap().to_string());
    }
    assert!(
        names.contains("userhooks") && names.contains("sequin"),
        "{names:?}"
    );
    // The userhooks dashboard is what the userhooks provider serves.
    let userhooks_path = providers
        .iter()
        .find(|p| p["name"].as_str() == Some("userhooks"))
        .unwrap()["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        host_path_of(grafana, &format!("{userhooks_path}/userhooks.json")).as_deref(),
        Some("grafana/dashboards/userhooks.json")
    );

    let dashboard = dashboard();
    assert_eq!(dashboard["uid"].as_str(), Some("userhooks"));
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().expect("panel id")),
            "duplicate panel id"
        );
        assert!(panel["gridPos"]["w"].is_number() && panel["gridPos"]["h"].is_number());
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some(uid),
                "{}",
                panel["title"]
            );
        }
    }
    let exprs = dashboard_exprs(&dashboard);
    let has = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    for needle in [
        "userhooks_requests_total",
        "userhooks_queue_depth",
        "userhooks_oldest_pending_age_seconds",
        "histogram_quantile(0.5, sum by (le, operation) (rate(userhooks_sequin_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, operation) (rate(userhooks_sequin_request_duration_seconds_bucket",
        "userhooks_sequin_requests_total{status!~\"2..\"}",
        "userhooks_backfills",
        "userhooks_subscriptions",
        "userhooks_listener_connected",
        "userhooks_sequin_auth_ok",
    ] {
        assert!(has(needle), "the dashboard has no panel querying {needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_dashboard_and_alerts_is_exported_by_a_real_worker() {
    let mut queried = BTreeSet::new();
    for (title, expr) in dashboard_exprs(&dashboard()) {
        for name in prom::metric_names_in(&expr) {
            queried.insert((name, format!("dashboard panel {title:?}")));
        }
    }
    for rule in alert_rules() {
        for name in prom::metric_names_in(rule["expr"].as_str().unwrap()) {
            queried.insert((name, format!("alert {}", rule["alert"].as_str().unwrap())));
        }
    }
    assert!(queried.len() >= 10, "too few metrics found: {queried:?}");

    let app = TestApp::builder().metrics().spawn().await;
    let addr = app.worker().metrics_addr.expect("metrics server bound");
    // One request, so that the per-call Sequin series exist too.
    let id = app
        .subscribe(
            "u-stack",
            "https://hooks.example.com/stack",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(app.finished(id).await.status, "succeeded");
    let exported = prom::scrape(addr).await.names();
    app.stop().await;

    let missing: Vec<_> = queried
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
}
